//! The real producer binary under a loopback load, bounded in time: no
//! 5xx, and the queue holds exactly the jobs that were accepted. Then three
//! of them behind the HAProxy balancer, restarted one after another and
//! one of them killed, under a steady stream of submissions.

mod balancer;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use url2png_core::JobMessage;
use url2png_testkit::load::{Load, Report, Request};
use url2png_testkit::moto::free_port;
use url2png_testkit::{Ledger, TestAws};

/// The n-th request of the mix: mostly single jobs, every tenth a batch of
/// five with one bad URL in it, every tenth a request that must be refused.
fn request(n: usize) -> Request {
    let job = |i: usize| json!({"url": format!("https://example.com/load/{n}/{i}"), "width": 800});
    match n % 10 {
        9 => Request {
            method: "POST",
            path: "/v1/screenshots/batch".into(),
            body: json!({"jobs": [job(0), job(1), {"url": "ftp://example.com/"}, job(3), job(4)]})
                .to_string()
                .into_bytes(),
        },
        7 => Request {
            method: "POST",
            path: "/v1/screenshots".into(),
            body: match n % 3 {
                0 => b"{\"url\": ".to_vec(),
                1 => json!({"url": "http://169.254.169.254/latest/meta-data/"})
                    .to_string()
                    .into_bytes(),
                _ => json!({"url": "https://example.com/", "width": -1})
                    .to_string()
                    .into_bytes(),
            },
        },
        _ => Request {
            method: "POST",
            path: "/v1/screenshots".into(),
            body: job(0).to_string().into_bytes(),
        },
    }
}

/// Start the producer binary on `addr` and wait until it is healthy.
async fn start_producer(
    aws: &TestAws,
    addr: SocketAddr,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let mut child = url2png_testkit::process::command(env!("CARGO_BIN_EXE_url2png-producer"), aws)
        .env("URL2PNG_PRODUCER_LISTEN", addr.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    url2png_testkit::process::wait_healthy(
        &mut child,
        addr,
        "/healthz",
        Duration::from_secs(30),
        String::new,
    )
    .await;
    child
}

/// Ids of the jobs the answers accepted, and how many jobs were refused.
fn accepted_ids(report: &Report) -> (Vec<String>, usize) {
    let mut accepted = Vec::new();
    let mut refused = 0;
    for exchange in &report.exchanges {
        let (request, Ok(answer)) = (&exchange.request, &exchange.answer) else {
            continue;
        };
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        match (request.path.as_str(), answer.status) {
            ("/v1/screenshots", 202) => accepted.push(body["id"].as_str().unwrap().to_owned()),
            ("/v1/screenshots/batch", 200 | 207 | 202) => {
                for item in body["results"].as_array().unwrap() {
                    if item["accepted"] == true {
                        accepted.push(item["id"].as_str().unwrap().to_owned());
                    } else {
                        refused += 1;
                    }
                }
            }
            (_, 400..=499) => refused += 1,
            _ => {}
        }
    }
    (accepted, refused)
}

/// Ids of every job on the queue (read out, so call it once).
async fn queued_ids(aws: &TestAws) -> Vec<String> {
    aws.drain(&aws.queue.url)
        .await
        .iter()
        .map(|body| JobMessage::parse(body.as_bytes()).unwrap().id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_under_load_loses_nothing() {
    let aws = TestAws::start().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _producer = start_producer(&aws, addr, &[]).await;

    let load = Load {
        target: addr,
        connections: 16,
        duration: Duration::from_secs(8),
        rate: None,
    };
    let report = load.run(request).await;

    let (accepted, refused) = accepted_ids(&report);
    let queued = queued_ids(&aws).await;
    let accepted_set: HashSet<&String> = accepted.iter().collect();
    let queued_set: HashSet<&String> = queued.iter().collect();
    let lost = accepted_set.difference(&queued_set).count();
    let strays = queued_set.difference(&accepted_set).count();
    let ledger = Ledger {
        scenario: "producer under load (16 connections, 8 s)".into(),
        submitted: accepted.len(),
        lost,
        queued_only: true,
        ..Ledger::default()
    }
    .note("requests", report.exchanges.len())
    .note(
        "requests/s",
        format!(
            "{:.0}",
            report.exchanges.len() as f64 / report.elapsed.as_secs_f64()
        ),
    )
    .note("5xx", report.server_errors())
    .note("transport errors", report.transport_errors().len())
    .note("refused (bad input)", refused)
    .note("queued", queued.len())
    .note("queued but not accepted", strays);
    ledger.record(env!("CARGO_TARGET_TMPDIR"));

    assert_eq!(report.server_errors(), 0, "{:?}", report.statuses());
    assert!(
        report.transport_errors().is_empty(),
        "{:?}",
        &report.transport_errors()[..report.transport_errors().len().min(5)]
    );
    assert!(accepted.len() > 100, "{:?}", report.statuses());
    assert!(
        refused > 0,
        "the mix holds bad input: {:?}",
        report.statuses()
    );
    assert_eq!(accepted_set.len(), accepted.len(), "ids are unique");
    assert_eq!((lost, strays, queued.len()), (0, 0, accepted.len()));
}
