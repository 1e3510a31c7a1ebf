//! The binary's life: health, metrics, and a graceful drain on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use url2png_core::job::{ImageFormat, RenderOptions};
use url2png_core::{JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws, moto::free_port};

use crate::support::*;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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

/// Chromium processes whose command line names this worker's profiles.
fn chromium_of(pid: u32) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("url2png-chromium-{pid}-")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
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
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_url2png-worker"))
        .env("AWS_ENDPOINT_URL", aws.moto.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("URL2PNG_QUEUE_URL", &aws.queue.url)
        .env("URL2PNG_BUCKET", &aws.bucket)
        .env(
            "URL2PNG_WORKER_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("URL2PNG_WAIT_TIME_SECONDS", "1")
        .env("URL2PNG_SHUTDOWN_GRACE_SECONDS", grace.to_string())
        .env("URL2PNG_PAGES_PER_BROWSER", "4")
        .env("URL2PNG_LOG_FORMAT", "text")
        .env("URL2PNG_EGRESS_ALLOW", "127.0.0.1/32")
        .stdin(Stdio::null())
        .kill_on_drop(true)
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
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
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
