//! The binary's life: health, metrics, and a graceful drain on SIGTERM.

use std::time::Duration;

use url2png_core::job::{ImageFormat, RenderOptions};
use url2png_core::{JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws, moto::free_port};

use crate::support::*;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    url2png_testkit::metrics::http_get(addr, path)
        .await
        .expect("the ops server answers HTTP")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served() {
    let aws = TestAws::start().await;
    let worker = start_worker(&aws, &[]).await;
    let (status, body) = http_get(worker.ops, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The first receive (a 1 s long poll) is counted once it returns.
    let body = wait_for(
        "a receive in the metrics",
        Duration::from_secs(30),
        || async {
            let (status, body) = http_get(worker.ops, "/metrics").await;
            assert_eq!(status, 200);
            body.contains("operation=\"ReceiveMessage\"")
                .then_some(body)
        },
    )
    .await;
    assert!(body.contains("url2png_worker_aws_requests_total"), "{body}");
    assert!(body.contains("url2png_worker_jobs_in_flight 0"), "{body}");
    worker.stop().await;
}

/// Chromium processes whose command line names this worker's profiles,
/// wherever they are (an orphan would be reparented).
fn chromium_of(pid: u32) -> usize {
    use url2png_testkit::process::{chromium_profile, processes_naming};
    processes_naming(&chromium_profile(pid)).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_hands_back_and_exits_zero() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page(
        "/quick",
        Page::html("<h1>quick</h1>").delay(Duration::from_secs(1)),
    );
    fixtures.page(
        "/stuck",
        Page::html("<h1>stuck</h1>").delay(Duration::from_secs(60)),
    );
    let grace = 4;
    let mut child = url2png_testkit::process::command(env!("CARGO_BIN_EXE_url2png-worker"), &aws)
        .env(
            "URL2PNG_WORKER_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("URL2PNG_WAIT_TIME_SECONDS", "1")
        .env("URL2PNG_SHUTDOWN_GRACE_SECONDS", grace.to_string())
        .env("URL2PNG_PAGES_PER_BROWSER", "4")
        .env("URL2PNG_EGRESS_ALLOW", "127.0.0.1/32")
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let quick: Vec<_> = (0..2)
        .map(|_| JobMessage::new(fixtures.url("/quick"), RenderOptions::default()))
        .collect();
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            JobMessage::new(
                fixtures.url("/stuck"),
                RenderOptions {
                    timeout_ms: 120_000,
                    ..RenderOptions::default()
                },
            )
        })
        .collect();
    send_jobs(&aws, &[quick.clone(), stuck.clone()].concat()).await;
    assert!(
        fixtures
            .wait_for_hits("/quick", 2, Duration::from_secs(60))
            .await
    );
    assert!(
        fixtures
            .wait_for_hits("/stuck", 2, Duration::from_secs(60))
            .await
    );
    assert!(chromium_of(pid) > 0, "the worker runs Chromium");

    let sent = tokio::time::Instant::now();
    assert!(signal("TERM", &pid.to_string()));
    let exit = tokio::time::timeout(Duration::from_secs(grace + 20), child.wait())
        .await
        .expect("the worker exits after its grace period")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        sent.elapsed() >= Duration::from_secs(grace),
        "the stuck jobs had their grace period"
    );

    // The quick jobs finished during the drain; the stuck ones are visible
    // again at once for another worker.
    let layout = KeyLayout::default();
    let stored = keys(&aws).await;
    for job in &quick {
        assert!(
            stored.contains(&layout.image(job.id, ImageFormat::Png)),
            "{stored:?}"
        );
    }
    assert_eq!(
        queue_counts(&aws, &aws.queue.url).await,
        (2, 0),
        "stuck jobs handed back, quick ones deleted"
    );
    assert_eq!(chromium_of(pid), 0, "no Chromium outlives the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_out_at_shutdown_is_heard_out_and_what_it_brings_is_handed_back_at_once() {
    use url2png_core::aws::{AwsOptions, Clients};
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page("/late", Page::html("<h1>late</h1>"));
    // The worker's calls go through a proxy that counts them as they come
    // in, so the test knows when its long poll is out.
    let proxy = url2png_testkit::AwsProxy::start(aws.moto.endpoint()).await;
    let clients = Clients::load(&AwsOptions::emulator(proxy.endpoint())).await;
    let mut settings = config(&aws, &["--receive-pollers", "1"]);
    settings.wait_time_seconds = 6;
    let worker = url2png_worker::Worker::start(settings, clients)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    wait_for("a long poll out", Duration::from_secs(30), || async {
        (proxy.calls("ReceiveMessage") >= 1).then_some(())
    })
    .await;

    // Stop, then queue a job the poll that is out will bring.
    shutdown.cancel();
    let job = JobMessage::new(fixtures.url("/late"), RenderOptions::default());
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the worker stops once the poll is in")
        .unwrap()
        .unwrap();
    assert_eq!(proxy.calls("ReceiveMessage"), 1);
    assert_eq!(proxy.calls("ChangeMessageVisibility"), 1, "handed back");
    assert_eq!(fixtures.hits_on("/late"), 0, "not started");

    // Visible again at once, and received once before.
    let out = aws
        .clients
        .sqs
        .receive_message()
        .queue_url(&aws.queue.url)
        .wait_time_seconds(1)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .unwrap();
    let messages = out.messages.unwrap_or_default();
    assert_eq!(messages.len(), 1, "the job is visible again");
    let body = JobMessage::parse(messages[0].body().unwrap().as_bytes()).unwrap();
    assert_eq!(body.id, job.id);
    let count = messages[0]
        .attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
        })
        .cloned();
    assert_eq!(
        count.as_deref(),
        Some("2"),
        "the worker's poll had taken it"
    );
}
