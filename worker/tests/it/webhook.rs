//! Webhook deliveries against the emulator, real Chromium and a receiver
//! on loopback: retried with backoff until the receiver answers, across a
//! worker restart, signed, and refused where the URL policy says so.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use url2png_core::status::{DeliveryState, WebhookState};
use url2png_core::{JobMessage, RenderOptions};
use url2png_testkit::fixtures::{Fixtures, Page};
use url2png_testkit::moto::{TestAwsOptions, TestQueue, create_queue_with_dlq};
use url2png_testkit::{TestAws, wait_for};
use url2png_worker::metrics::Metrics;

use crate::support::{counter, get, send_jobs, start_worker};

const SECRET: &str = "webhook-secret-0123456789";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
    answered: u16,
}

/// A webhook receiver that answers 500 to its first `fail_first`
/// requests and 200 after, recording every request.
#[derive(Clone)]
struct Receiver {
    fail_first: usize,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> (Self, std::net::SocketAddr) {
        let receiver = Self {
            fail_first,
            got: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(take))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }

    fn got(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
}

async fn take(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut got = receiver.got.lock().unwrap();
    let status = if got.len() < receiver.fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    got.push(Delivery {
        headers,
        body,
        answered: status.as_u16(),
    });
    status
}

/// A deliveries queue with its dead-letter queue.
async fn deliveries_queue(aws: &TestAws, max_receive_count: u32) -> TestQueue {
    let name = format!("{}-hooks", aws.bucket);
    create_queue_with_dlq(
        &aws.clients.sqs,
        &name,
        &TestAwsOptions {
            max_receive_count,
            visibility_timeout_secs: 30,
        },
    )
    .await
}

fn webhook_flags(queue: &TestQueue) -> Vec<String> {
    [
        "--webhook-queue-url",
        &queue.url,
        "--webhook-secret",
        SECRET,
        "--webhook-retry-base-seconds",
        "2",
        "--webhook-retry-max-seconds",
        "4",
        "--webhook-timeout-seconds",
        "5",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Waits until the worker has counted `n` deliveries as `label`, then
/// checks it counted no more. A delivery is counted last: after its record
/// is written and its message deleted or hidden.
async fn counted(metrics: &Metrics, label: &str, n: u64) {
    let got = wait_for(
        &format!("{n} deliveries counted as {label}"),
        Duration::from_secs(30),
        || async {
            let got = counter(&metrics.webhook_deliveries, &[label]);
            (got >= n).then_some(got)
        },
    )
    .await;
    assert_eq!(got, n, "deliveries counted as {label}");
}

/// The delivery record of job `id`, once it is in `state`.
async fn record_in(aws: &TestAws, id: uuid::Uuid, state: DeliveryState) -> WebhookState {
    let key = format!("{id}.webhook.json");
    wait_for(
        &format!("a {state:?} delivery record of {id}"),
        Duration::from_secs(60),
        || async {
            let got = aws
                .clients
                .s3
                .get_object()
                .bucket(&aws.bucket)
                .key(&key)
                .send()
                .await
                .ok()?;
            let bytes = got.body.collect().await.ok()?.into_bytes();
            let record: WebhookState = serde_json::from_slice(&bytes).ok()?;
            (record.state == state).then_some(record)
        },
    )
    .await
}

/// Check `Url2png-Signature` as a receiver would, with our own HMAC.
fn signed_by(delivery: &Delivery, secret: &str) -> bool {
    let header = delivery
        .headers
        .get("url2png-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(t) = header
        .split(',')
        .find_map(|part| part.strip_prefix("t="))
        .and_then(|t| t.parse::<u64>().ok())
    else {
        return false;
    };
    url2png_core::status::signature(secret.as_bytes(), t, &delivery.body) == header
}

#[tokio::test]
async fn a_failing_receiver_gets_the_signed_status_again_until_it_answers_across_a_worker_restart()
{
    let aws = TestAws::start().await;
    let hooks = deliveries_queue(&aws, 6).await;
    let fixtures = Fixtures::start().await;
    fixtures.page("/page", Page::html("<h1>hooked</h1>"));
    let (receiver, addr) = Receiver::start(2).await;
    let mut job = JobMessage::new(fixtures.url("/page"), RenderOptions::default());
    job.webhook_url = Some(format!("http://{addr}/hook"));
    let flags = webhook_flags(&hooks);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let first = start_worker(&aws, &flags).await;
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    wait_for("a first delivery", Duration::from_secs(60), || async {
        (!receiver.got().is_empty()).then_some(())
    })
    .await;
    // The delivery waits out its backoff in the queue while no worker runs.
    first.stop().await;
    let retrying = record_in(&aws, job.id, DeliveryState::Retrying).await;
    assert_eq!(retrying.last_status, Some(500));
    assert!(retrying.next_attempt_at.is_some());

    let second = start_worker(&aws, &flags).await;
    let delivered = record_in(&aws, job.id, DeliveryState::Delivered).await;
    assert_eq!(delivered.attempts, 3, "{delivered:?}");
    assert_eq!(delivered.last_status, Some(200));
    counted(&second.metrics, "delivered", 1).await;
    assert_eq!(aws.queue_counts(&hooks.url).await, (0, 0));
    assert_eq!(aws.queue_counts(&hooks.dlq_url).await, (0, 0));

    let got = receiver.got();
    assert_eq!(
        got.iter().map(|d| d.answered).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    let delivery_ids: Vec<_> = got
        .iter()
        .map(|d| d.headers.get("url2png-delivery").cloned())
        .collect();
    assert!(delivery_ids[0].is_some());
    assert!(delivery_ids.iter().all(|id| *id == delivery_ids[0]));
    for delivery in &got {
        assert!(signed_by(delivery, SECRET), "{:?}", delivery.headers);
        assert!(!signed_by(delivery, "another-secret-0123456789"));
        assert_eq!(
            delivery.headers.get("url2png-event").unwrap(),
            "done",
            "{:?}",
            delivery.headers
        );
        let document: Value = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(document["status"], "done");
        assert_eq!(document["id"], job.id.to_string());
        // The image URL in the body fetches the image.
        let image_url = document["image_url"].as_str().unwrap();
        assert!(image_url.contains(&job.id.to_string()), "{image_url}");
    }
    let key = format!("{}.png", job.id);
    let image = get(&aws, &key).await;
    let document: Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(document["size_bytes"], image.len());
    second.stop().await;
}

#[tokio::test]
async fn a_receiver_the_policy_refuses_is_not_contacted_and_the_refusal_is_recorded() {
    let aws = TestAws::start().await;
    let hooks = deliveries_queue(&aws, 6).await;
    let fixtures = Fixtures::start().await;
    fixtures.page("/page", Page::html("<p>refused receiver</p>"));
    let (receiver, addr) = Receiver::start(0).await;
    let flags = webhook_flags(&hooks);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&aws, &flags).await;
    // The metadata endpoint, a private range, and a loopback name whose
    // port the receiver really listens on (only 127.0.0.1 by address is
    // allowed here, not the name).
    let refused = [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.1.2.3/hook".to_owned(),
        format!("http://localhost:{}/hook", addr.port()),
    ];
    let jobs: Vec<JobMessage> = refused
        .iter()
        .map(|webhook| {
            let mut job = JobMessage::new(fixtures.url("/page"), RenderOptions::default());
            job.webhook_url = Some(webhook.clone());
            job
        })
        .collect();
    send_jobs(&aws, &jobs).await;
    for (job, webhook) in jobs.iter().zip(&refused) {
        let record = record_in(&aws, job.id, DeliveryState::Refused).await;
        assert_eq!(&record.url, webhook);
        assert_eq!(record.attempts, 1);
        let error = record.last_error.unwrap_or_default();
        assert!(error.contains("refused"), "{webhook}: {error}");
    }
    counted(&worker.metrics, "refused", 3).await;
    assert_eq!(counter(&worker.metrics.webhook_deliveries, &["retried"]), 0);
    assert_eq!(aws.queue_counts(&hooks.url).await, (0, 0));
    assert!(receiver.got().is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn a_failed_job_sends_its_failure_and_the_readmes_python_verifier_accepts_it() {
    let aws = TestAws::start().await;
    let hooks = deliveries_queue(&aws, 6).await;
    let (receiver, addr) = Receiver::start(0).await;
    let flags = webhook_flags(&hooks);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&aws, &flags).await;
    // Refused by the policy before any browser is involved: failed for good.
    let mut job = JobMessage::new("http://10.9.9.9/", RenderOptions::default());
    job.webhook_url = Some(format!("http://{addr}/hook"));
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    record_in(&aws, job.id, DeliveryState::Delivered).await;
    let got = receiver.got();
    assert_eq!(got.len(), 1);
    let delivery = &got[0];
    assert_eq!(delivery.headers.get("url2png-event").unwrap(), "failed");
    let document: Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(
        (document["status"].as_str(), document["reason"].as_str()),
        (Some("failed"), Some("blocked_by_policy")),
        "{document}"
    );

    let header = delivery.headers["url2png-signature"].to_str().unwrap();
    let t: u64 = header[2..header.find(',').unwrap()].parse().unwrap();
    let verify = |body: &[u8], secret: &str, now: u64| {
        let script = format!(
            "{}\nimport sys\nbody = sys.stdin.buffer.read()\nprint(verify(body, {header:?}, {secret:?}, now={now}))\n",
            readme_verifier()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(body).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(verify(&delivery.body, SECRET, t + 10), "True");
    let mut tampered = delivery.body.to_vec();
    tampered.push(b' ');
    assert_eq!(verify(&tampered, SECRET, t + 10), "False");
    assert_eq!(
        verify(&delivery.body, "not-the-secret-0123456789", t + 10),
        "False"
    );
    // A signature older than the snippet's five minutes is a replay.
    assert_eq!(verify(&delivery.body, SECRET, t + 301), "False");
    worker.stop().await;
}

/// The README's Python verifier, as written there.
fn readme_verifier() -> String {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("### Webhooks").unwrap()..];
    let start = section.find("```python\n").unwrap() + "```python\n".len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].to_owned()
}

#[tokio::test]
async fn an_https_receiver_must_have_a_certificate_the_system_trusts() {
    let aws = TestAws::start().await;
    let hooks = deliveries_queue(&aws, 6).await;
    let port = crate::endings::self_signed_site().await;
    let mut flags = webhook_flags(&hooks);
    // Accepting bad certificates is for the pages a job renders, not for
    // the receivers its results go to.
    flags.extend(["--accept-invalid-certs".to_owned(), "true".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&aws, &flags).await;
    let mut job = JobMessage::new("http://10.9.9.9/", RenderOptions::default());
    job.webhook_url = Some(format!("https://127.0.0.1:{port}/hook"));
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let record = record_in(&aws, job.id, DeliveryState::Retrying).await;
    let error = record.last_error.unwrap_or_default();
    assert!(error.starts_with("TLS:"), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_eq!(record.last_status, None);
    worker.stop().await;
}
