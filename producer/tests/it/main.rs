//! Integration tests of the producer against a real `moto_server`.

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use url2png_core::{FailureReason, FailureRecord, ImageFormat, JobMessage, KeyLayout};
use url2png_producer::{Config, Producer};
use url2png_testkit::TestAws;

mod delivery;
mod handoff;
mod links;
mod sync;
mod webhooks;

struct Running {
    addr: SocketAddr,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(aws: &TestAws, extra: &[&str]) -> Running {
    start_with(aws, aws.clients.clone(), extra).await
}

/// A producer on the emulator's queue and bucket that calls AWS with
/// `clients`.
async fn start_with(aws: &TestAws, clients: url2png_core::aws::Clients, extra: &[&str]) -> Running {
    launch(aws, clients, &aws.queue.url, extra).await
}

/// A producer whose queue does not exist: every send is refused.
async fn start_on_missing_queue(aws: &TestAws, extra: &[&str]) -> Running {
    let missing = format!("{}/123456789012/missing", aws.moto.endpoint());
    launch(aws, aws.clients.clone(), &missing, extra).await
}

async fn launch(
    aws: &TestAws,
    clients: url2png_core::aws::Clients,
    queue_url: &str,
    extra: &[&str],
) -> Running {
    let mut args = vec![
        "url2png-producer",
        "--queue-url",
        queue_url,
        "--bucket",
        &aws.bucket,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let producer = Producer::start(Config::try_parse_from(args).unwrap(), clients)
        .await
        .unwrap();
    let addr = producer.local_addr();
    let registry = producer.registry().clone();
    let shutdown = CancellationToken::new();
    tokio::spawn(producer.run(shutdown.clone(), Duration::from_secs(5)));
    Running {
        addr,
        registry,
        shutdown,
    }
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let reply = url2png_testkit::http::request(addr, method, path, content_type, body).await;
    (reply.status, reply.headers, reply.body)
}

async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> (u16, Vec<(String, String)>, Value) {
    let (status, headers, body) = http(
        addr,
        "POST",
        path,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, body) = http(addr, "GET", path, None, b"").await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn queued(aws: &TestAws) -> u64 {
    aws.queue_counts(&aws.queue.url).await.0
}

/// Every job in the queue, received once (they stay invisible after).
async fn drain(aws: &TestAws) -> Vec<JobMessage> {
    aws.drain(&aws.queue.url)
        .await
        .iter()
        .map(|body| JobMessage::parse(body.as_bytes()).unwrap())
        .collect()
}

use url2png_testkit::metrics::registered as metric;

#[tokio::test]
async fn a_valid_request_is_queued_and_answered_at_once() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let (status, headers, body) = post_json(
        producer.addr,
        "/v1/screenshots",
        &json!({"url": "https://example.com/", "width": 390, "height": 844, "device_scale_factor": 3, "full_page": true}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["status_url"], format!("/v1/screenshots/{id}"));
    assert_eq!(body["image_url"], format!("/v1/screenshots/{id}/image"));
    assert_eq!(
        header(&headers, "location"),
        Some(format!("/v1/screenshots/{id}").as_str())
    );
    let jobs = drain(&aws).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id.to_string(), id);
    assert_eq!((jobs[0].options.width, jobs[0].options.height), (390, 844));
    assert!(jobs[0].options.full_page);
    assert!(jobs[0].submitted_at.is_some());
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_queued() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &["--body-limit-bytes", "4096"]).await;
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (json!({"width": 100}), 422, "missing_field", Some("url")),
        (json!({"url": 42}), 422, "wrong_type", Some("url")),
        (json!({"url": "not a url"}), 422, "invalid", Some("url")),
        (
            json!({"url": "file:///etc/passwd"}),
            422,
            "invalid",
            Some("url"),
        ),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data/"}),
            422,
            "blocked_by_policy",
            Some("url"),
        ),
        (
            json!({"url": "http://[::ffff:127.0.0.1]/"}),
            422,
            "blocked_by_policy",
            Some("url"),
        ),
        (
            json!({"url": "http://localhost:8080/"}),
            422,
            "blocked_by_policy",
            Some("url"),
        ),
        (
            json!({"url": "https://example.com/", "width": 0}),
            422,
            "out_of_range",
            Some("width"),
        ),
        (
            json!({"url": "https://example.com/", "format": "gif"}),
            422,
            "wrong_type",
            Some("format"),
        ),
        (
            json!({"url": "https://example.com/", "fullpage": true}),
            422,
            "unknown_field",
            Some("fullpage"),
        ),
        (
            json!({"url": "https://example.com/", "quality": 50}),
            422,
            "invalid",
            Some("quality"),
        ),
        (
            json!({"url": "https://example.com/", "options": {}, "width": 5}),
            422,
            "invalid",
            None,
        ),
        (json!([1, 2]), 400, "malformed", None),
    ];
    for (body, status, code, field) in cases {
        let (got, _, answer) = post_json(producer.addr, "/v1/screenshots", &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(answer["error"]["field"].as_str(), field, "{body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, _, body) = http(
        producer.addr,
        "POST",
        "/v1/screenshots",
        Some("application/json"),
        b"{not json",
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = http(
        producer.addr,
        "POST",
        "/v1/screenshots",
        Some("text/plain"),
        b"{\"url\":\"https://example.com/\"}",
    )
    .await;
    assert_eq!(status, 415);
    let (status, _, _) = http(
        producer.addr,
        "POST",
        "/v1/screenshots",
        None,
        b"{\"url\":\"https://example.com/\"}",
    )
    .await;
    assert_eq!(status, 415);
    let big = format!("{{\"url\":\"https://example.com/{}\"}}", "a".repeat(8192));
    let (status, _, body) = http(
        producer.addr,
        "POST",
        "/v1/screenshots",
        Some("application/json"),
        big.as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["error"]["code"], "too_large");
    assert_eq!(queued(&aws).await, 0, "nothing was queued");
}

#[tokio::test]
async fn status_follows_what_the_worker_stores() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let layout = KeyLayout::default();
    let submit = |url: &'static str| {
        let addr = producer.addr;
        async move {
            let (status, _, body) = post_json(addr, "/v1/screenshots", &json!({"url": url})).await;
            assert_eq!(status, 202);
            body["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap()
        }
    };
    let done = submit("https://example.com/done").await;
    let failed = submit("https://example.com/failed").await;

    let (status, body) = get_json(producer.addr, &format!("/v1/screenshots/{done}")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("pending")));
    let (status, headers, _) = http(
        producer.addr,
        "GET",
        &format!("/v1/screenshots/{done}/image"),
        None,
        b"",
    )
    .await;
    assert_eq!(status, 404);
    assert!(header(&headers, "retry-after").is_some());

    // What a worker writes.
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(layout.image(done, ImageFormat::Png))
        .content_type("image/png")
        .metadata("width", "1280")
        .body(ByteStream::from_static(b"\x89PNG fake"))
        .send()
        .await
        .unwrap();
    let record = FailureRecord {
        id: failed,
        url: Some("https://example.com/failed".into()),
        reason: FailureReason::Timeout,
        message: "The job's timeout of 30000 ms ran out during navigation.".into(),
        detail: None,
        phase: Some(url2png_core::keys::Phase::Navigation),
        http_status: None,
        refused: None,
        attempts: 3,
        failed_at: time::OffsetDateTime::now_utc(),
        report: None,
        webhook_url: None,
    };
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(layout.failure(failed))
        .body(ByteStream::from(record.to_json().into_bytes()))
        .send()
        .await
        .unwrap();

    let (status, body) = get_json(producer.addr, &format!("/v1/screenshots/{done}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "done", "{body}");
    assert_eq!(body["size_bytes"], 9);
    assert_eq!(body["render"]["width"], "1280");
    let image_url = body["image_url"].as_str().unwrap();
    assert!(image_url.contains("X-Amz-Signature"), "{image_url}");
    let (status, headers, _) = http(
        producer.addr,
        "GET",
        &format!("/v1/screenshots/{done}/image"),
        None,
        b"",
    )
    .await;
    assert_eq!(status, 303);
    assert!(header(&headers, "location").is_some_and(|l| l.contains("X-Amz-Signature")));

    let (status, body) = get_json(producer.addr, &format!("/v1/screenshots/{failed}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "timeout");
    assert_eq!(body["phase"], "navigation");
    assert_eq!(body["attempts"], 3);

    let (status, body) = get_json(producer.addr, "/v1/screenshots/not-a-uuid").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("id")));

    // Image URLs signed for the endpoint clients reach.
    let public = start(
        &aws,
        &["--presign-endpoint-url", "http://images.example.test:5000"],
    )
    .await;
    let (_, body) = get_json(public.addr, &format!("/v1/screenshots/{done}")).await;
    let url = body["image_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://images.example.test:5000/{}/", aws.bucket)),
        "{url}"
    );
}

/// Lines of the emulator's request log.
fn emulator_log(aws: &TestAws) -> Vec<String> {
    let path = aws.moto.log_path().expect("the emulator's log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn status_tells_unknown_expired_and_pending_apart_and_a_finished_poll_is_one_head() {
    use std::time::SystemTime;
    use url2png_core::id;
    let aws = TestAws::start().await;
    let producer = start(&aws, &["--id-secret", "test-secret"]).await;
    let addr = producer.addr;
    let status_of =
        |id: uuid::Uuid| async move { get_json(addr, &format!("/v1/screenshots/{id}")).await };

    // Never accepted here: a random id, and one minted with another secret.
    for unknown in [
        uuid::Uuid::new_v4(),
        id::mint(b"another", ImageFormat::Png, SystemTime::now()),
    ] {
        let (status, body) = status_of(unknown).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
    }
    // Accepted longer ago than the queue keeps messages (the emulator's
    // default, 4 days), with no result.
    let old = id::mint(
        b"test-secret",
        ImageFormat::Png,
        SystemTime::now() - Duration::from_secs(5 * 24 * 3600),
    );
    let (status, body) = status_of(old).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("expired")));
    let (status, _, body) = http(
        producer.addr,
        "GET",
        &format!("/v1/screenshots/{old}/image"),
        None,
        b"",
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("expired"))
    );

    // Accepted through the API: pending, then done with one HEAD a poll.
    let (status, _, body) = post_json(
        producer.addr,
        "/v1/screenshots",
        &json!({"url": "https://example.com/", "format": "jpeg"}),
    )
    .await;
    assert_eq!(status, 202);
    let accepted: uuid::Uuid = body["id"].as_str().unwrap().parse().unwrap();
    assert!(id::verify(b"test-secret", accepted).is_some());
    let (status, body) = status_of(accepted).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("pending")));
    let layout = KeyLayout::default();
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(layout.image(accepted, ImageFormat::Jpeg))
        .content_type("image/jpeg")
        .metadata("width", "1280")
        .body(ByteStream::from_static(b"\xff\xd8 fake"))
        .send()
        .await
        .unwrap();
    let before = emulator_log(&aws).len();
    let (status, body) = status_of(accepted).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("done")),
        "{body}"
    );
    assert_eq!(body["render"]["width"], "1280");
    assert_eq!(body["content_type"], "image/jpeg");
    let mut calls = Vec::new();
    for _ in 0..100 {
        calls = emulator_log(&aws)[before..].to_vec();
        if calls.iter().any(|l| l.contains("\"HEAD /")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s3_calls: Vec<&String> = calls.iter().filter(|l| l.contains(&aws.bucket)).collect();
    assert_eq!(s3_calls.len(), 1, "{s3_calls:?}");
    assert!(s3_calls[0].contains("\"HEAD /"), "{s3_calls:?}");

    // An id sent straight to the queue by someone else is found by a LIST.
    let foreign = uuid::Uuid::new_v4();
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(layout.image(foreign, ImageFormat::Png))
        .body(ByteStream::from_static(b"\x89PNG fake"))
        .send()
        .await
        .unwrap();
    let (status, body) = status_of(foreign).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("done")),
        "{body}"
    );

    // A render report beside a failure record is not taken for an image.
    let failed = uuid::Uuid::new_v4();
    let record = FailureRecord {
        id: failed,
        url: None,
        reason: FailureReason::Timeout,
        message: "m".into(),
        detail: None,
        phase: None,
        http_status: None,
        refused: None,
        attempts: 1,
        failed_at: time::OffsetDateTime::now_utc(),
        report: None,
        webhook_url: None,
    };
    for (key, body) in [
        (layout.failure(failed), record.to_json()),
        (layout.report(failed), "{}".to_owned()),
    ] {
        aws.clients
            .s3
            .put_object()
            .bucket(&aws.bucket)
            .key(key)
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
    let (status, body) = status_of(failed).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("failed")),
        "{body}"
    );
}

#[tokio::test]
async fn a_batch_accepts_and_refuses_each_job_on_its_own() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let (status, _, body) = post_json(
        producer.addr,
        "/v1/screenshots/batch",
        &json!({"jobs": [
            {"url": "https://example.com/1"},
            {"url": "http://10.0.0.1/"},
            {"url": "https://example.com/2", "format": "jpeg", "quality": 70},
            {"url": "https://example.com/3", "height": 99999},
            {"url": "https://example.com/4"},
        ]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let results = body["results"].as_array().unwrap();
    let accepted: Vec<bool> = results
        .iter()
        .map(|r| r["accepted"] == json!(true))
        .collect();
    assert_eq!(accepted, [true, false, true, false, true]);
    assert_eq!(results[1]["error"]["code"], "blocked_by_policy");
    assert_eq!(results[3]["error"]["field"], "height");
    let mut queued_ids: Vec<String> = drain(&aws).await.iter().map(|j| j.id.to_string()).collect();
    let mut accepted_ids: Vec<String> = results
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    queued_ids.sort();
    accepted_ids.sort();
    assert_eq!(queued_ids, accepted_ids);

    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"url": format!("https://example.com/{i}")}))
        .collect();
    let (status, _, _) = post_json(
        producer.addr,
        "/v1/screenshots/batch",
        &json!({"jobs": too_many}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(queued(&aws).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batch_sends() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &["--send-linger-ms", "20"]).await;
    // The emulator's request log, when this test started the emulator.
    let sqs_calls_in_log = || {
        aws.moto.log_path().map(|path| {
            let log = std::fs::read_to_string(path).unwrap();
            log.lines().filter(|l| l.contains("\"POST / HTTP")).count()
        })
    };
    let before = sqs_calls_in_log();
    let requests = (0..60).map(|i| {
        let addr = producer.addr;
        async move {
            post_json(
                addr,
                "/v1/screenshots",
                &json!({"url": format!("https://example.com/{i}")}),
            )
            .await
            .0
        }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let batches = metric(
        &producer.registry,
        "url2png_producer_sqs_requests_total",
        &[("operation", "SendMessageBatch")],
    );
    let singles = metric(
        &producer.registry,
        "url2png_producer_sqs_requests_total",
        &[("operation", "SendMessage")],
    );
    assert!(batches <= 20.0, "60 requests took {batches} batch calls");
    assert_eq!(singles, 0.0);
    // The emulator saw exactly the calls the producer counted.
    if let (Some(after), Some(before)) = (sqs_calls_in_log(), before) {
        assert_eq!((after - before) as f64, batches);
    }
    assert_eq!(drain(&aws).await.len(), 60, "every 202 has its message");
    let ok = metric(
        &producer.registry,
        "url2png_producer_http_requests_total",
        &[("route", "/v1/screenshots"), ("status", "202")],
    );
    assert_eq!(ok, 60.0);
}

#[tokio::test]
async fn an_unreachable_queue_gives_503_with_retry_after() {
    let aws = TestAws::start().await;
    let producer = start_on_missing_queue(&aws, &["--retry-after-seconds", "7"]).await;
    let addr = producer.addr;
    let (status, headers, body) = tokio::time::timeout(
        Duration::from_secs(60),
        post_json(
            addr,
            "/v1/screenshots",
            &json!({"url": "https://example.com/"}),
        ),
    )
    .await
    .expect("answered, not hung");
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("7"));
    assert_eq!(body["error"]["code"], "queue_unavailable");
    let (status, _, _) = http(addr, "GET", "/readyz", None, b"").await;
    assert_eq!(status, 503);
    let (status, _, _) = http(addr, "GET", "/healthz", None, b"").await;
    assert_eq!(status, 200);
}

/// A worker on the same emulator that may render loopback fixture pages.
async fn start_worker(
    aws: &TestAws,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = url2png_worker::Config::try_parse_from([
        "url2png-worker",
        "--queue-url",
        &aws.queue.url,
        "--bucket",
        &aws.bucket,
        "--listen",
        "127.0.0.1:0",
        "--wait-time-seconds",
        "1",
        "--egress-allow",
        "127.0.0.1/32",
    ])
    .unwrap();
    let worker = url2png_worker::Worker::start(config, aws.clients.clone())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    (stop.clone(), tokio::spawn(worker.run(stop)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_waits_for_the_worker() {
    use url2png_testkit::{Fixtures, Page};
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page("/missing", Page::html("gone").status(404));
    let (stop, worker) = start_worker(&aws).await;

    let submit = |args: Vec<String>| {
        let mut command =
            url2png_testkit::process::command(env!("CARGO_BIN_EXE_url2png-producer"), &aws);
        command
            .arg("submit")
            .args(args)
            .env("URL2PNG_EGRESS_ALLOW", "127.0.0.1/32");
        async move { command.output().await.unwrap() }
    };
    let out = submit(vec![
        fixtures.url("/page"),
        "--wait".into(),
        "--wait-seconds".into(),
        "90".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_owned();
    assert!(stdout.contains("done after"), "{stdout}");
    assert!(aws.keys().await.contains(&format!("{id}.png")));

    let out = submit(vec![
        fixtures.url("/missing"),
        "--fail-on-http-error".into(),
        "--wait".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http_error"));

    let before = aws.keys().await.len();
    let out = submit(vec![fixtures.url("/x"), "--width".into(), "0".into()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("width"));
    let out = submit(vec!["http://169.254.169.254/".into()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(queued(&aws).await, 0, "refused jobs were not queued");
    assert_eq!(aws.keys().await.len(), before);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

async fn http_with(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn jobs_with_javascript_are_taken_only_from_the_keys_the_operator_named() {
    let aws = TestAws::start().await;
    let producer = start(
        &aws,
        &[
            "--api-keys",
            "plain-key, script-key",
            "--script-api-keys",
            "script-key",
        ],
    )
    .await;
    let post = |auth: &str, body: &str| {
        format!(
            "POST /v1/screenshots HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer {auth}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let script = r#"{"url":"https://example.com/","script":"document.title = 'x'"}"#;
    let expression = r#"{"url":"https://example.com/","wait_for_expression":"window.ready"}"#;
    let plain = r#"{"url":"https://example.com/","css":"body{color:red}"}"#;
    for (body, field) in [(script, "script"), (expression, "wait_for_expression")] {
        let (status, text) = http_with(producer.addr, &post("plain-key", body)).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("scripts_not_allowed"), "{text}");
        assert!(text.contains(&format!("\"field\":\"{field}\"")), "{text}");
    }
    assert_eq!(queued(&aws).await, 0, "nothing refused was queued");
    let (status, text) = http_with(producer.addr, &post("plain-key", plain)).await;
    assert_eq!(status, 202, "a stylesheet is not a script: {text}");
    for body in [script, expression] {
        let (status, text) = http_with(producer.addr, &post("script-key", body)).await;
        assert_eq!(status, 202, "{text}");
    }
    let batch = format!(r#"{{"jobs":[{script},{plain}]}}"#);
    let request = post("plain-key", &batch).replace("/v1/screenshots ", "/v1/screenshots/batch ");
    let (status, text) = http_with(producer.addr, &request).await;
    assert_eq!(status, 202, "{text}");
    assert!(
        text.contains("scripts_not_allowed"),
        "the script entry is refused: {text}"
    );
    let jobs = drain(&aws).await;
    assert_eq!(
        jobs.len(),
        4,
        "two scripts by the script key, two plain jobs"
    );
    assert_eq!(jobs.iter().filter(|j| j.options.uses_scripts()).count(), 2);
}

#[tokio::test]
async fn api_keys_guard_the_api_but_not_health() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &["--api-keys", "k1-secret, k2-secret"]).await;
    let body = r#"{"url":"https://example.com/"}"#;
    let post = |auth: &str| {
        format!(
            "POST /v1/screenshots HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (status, text) = http_with(producer.addr, &post("")).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    let (status, _) = http_with(producer.addr, &post("Authorization: Bearer wrong\r\n")).await;
    assert_eq!(status, 401);
    let (status, _) = http_with(producer.addr, &post("Authorization: Bearer k1-secre\r\n")).await;
    assert_eq!(status, 401, "a prefix of a key is not the key");
    let (status, text) =
        http_with(producer.addr, &post("Authorization: Bearer k2-secret\r\n")).await;
    assert_eq!(status, 202, "{text}");
    let (status, _) = http_with(
        producer.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = http_with(
        producer.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(queued(&aws).await, 1);
}

#[tokio::test]
async fn clients_over_their_rate_get_429() {
    let aws = TestAws::start().await;
    let producer = start(
        &aws,
        &[
            "--rate-limit-per-minute",
            "3",
            "--trust-forwarded-for",
            "true",
        ],
    )
    .await;
    let request = |client: &str| {
        format!(
            "GET /v1/screenshots/6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: 1.2.3.4, {client}\r\n\r\n"
        )
    };
    // The id was never accepted: a 404 is the handler's answer, past the
    // limiter.
    for _ in 0..3 {
        assert_eq!(
            http_with(producer.addr, &request("203.0.113.7")).await.0,
            404
        );
    }
    let (status, text) = http_with(producer.addr, &request("203.0.113.7")).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"));
    assert_eq!(
        http_with(producer.addr, &request("203.0.113.8")).await.0,
        404,
        "another client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_submits_and_shows_the_screenshot() {
    use url2png_testkit::{Fixtures, Page};

    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page(
        "/shot",
        Page::html("<body style='background:#36c'><h1>hello</h1></body>"),
    );
    let (stop, worker) = start_worker(&aws).await;
    let producer = start(&aws, &["--egress-allow", "127.0.0.1/32"]).await;

    let test_browser = url2png_testkit::TestBrowser::launch(&[]).await.unwrap();
    let browser = &test_browser.browser;
    let page = browser
        .new_page(format!("http://{}/", producer.addr))
        .await
        .unwrap();
    page.wait_for_navigation().await.unwrap();
    let url = serde_json::to_string(&fixtures.url("/shot")).unwrap();
    page.evaluate(format!(
        "const u = document.getElementById('url'); u.value = {url}; \
         u.dispatchEvent(new Event('input', {{ bubbles: true }})); \
         document.getElementById('submit').click(); true"
    ))
    .await
    .unwrap();
    // Poll the page's own state until the image element shows a loaded PNG.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let width = loop {
        let width: i64 = page
            .evaluate(
                "(() => { const i = document.getElementById('shot'); \
                 return document.getElementById('result').hidden || !i.complete ? 0 : i.naturalWidth; })()",
            )
            .await
            .unwrap()
            .into_value()
            .unwrap();
        if width > 0 {
            break width;
        }
        let status: String = page
            .evaluate("document.getElementById('status').textContent")
            .await
            .unwrap()
            .into_value()
            .unwrap();
        assert!(
            !status.starts_with("Failed") && !status.starts_with("Refused"),
            "{status}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no screenshot shown; status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(width, 1280, "the desktop viewport's PNG");
    let href: String = page
        .evaluate("document.getElementById('download').href")
        .await
        .unwrap()
        .into_value()
        .unwrap();
    assert!(href.contains("X-Amz-Signature"), "{href}");

    // The job is in the tab's recent jobs with its thumbnail.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let thumbnail: i64 = page
            .evaluate(
                "(() => { const i = document.querySelector('#recent li img');                  return i && i.complete ? i.naturalWidth : 0; })()",
            )
            .await
            .unwrap()
            .into_value()
            .unwrap();
        if thumbnail == 1280 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no thumbnail in the recent jobs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown: String = page
        .evaluate(
            "(async () => { document.querySelector('#recent li').click();              for (let i = 0; i < 100 && document.getElementById('job-status').hidden; i++)                await new Promise((r) => setTimeout(r, 50));              return document.getElementById('job-status').textContent; })()",
        )
        .await
        .unwrap()
        .into_value()
        .unwrap();
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["status"], "done", "{shown}");
    let report: String = page
        .evaluate(
            "(async () => { \
             for (let i = 0; i < 100 && document.getElementById('job-report').hidden; i++) \
               await new Promise((r) => setTimeout(r, 50)); \
             return document.getElementById('job-report').textContent; })()",
        )
        .await
        .unwrap()
        .into_value()
        .unwrap();
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["job_id"], shown["id"], "{report}");
    assert_eq!(report["image"]["width"], 1280);

    // The curl command the page shows does what the form does.
    let command: String = page
        .evaluate("document.getElementById('curl').textContent")
        .await
        .unwrap()
        .into_value()
        .unwrap();
    let out = tokio::process::Command::new("sh")
        .args(["-c", &command])
        .output()
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{command}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(answer["status"], "done", "{command}: {answer}");
    assert_eq!(answer["render"]["width"], shown["render"]["width"]);

    // The form's other options, as the page names them and the API takes
    // them.
    let options: String = page
        .evaluate(
            "(() => { const set = (id, v) => { document.getElementById(id).value = v; }; \
             set('viewport', 'device:pixel_8'); set('format', 'jpeg'); set('selector', 'h1'); \
             set('hide_selectors', '.x, .y'); set('block', 'font'); set('user_agent', 'android'); \
             set('delay_ms', '250'); document.getElementById('dark').checked = true; \
             document.getElementById('scroll_page').checked = true; \
             document.getElementById('block_cookie_banners').checked = true; \
             return JSON.stringify(options()); })()",
        )
        .await
        .unwrap()
        .into_value()
        .unwrap();
    let options: Value = serde_json::from_str(&options).unwrap();
    assert_eq!(
        options,
        serde_json::json!({
            "device": "pixel_8", "format": "jpeg", "selector": "h1", "user_agent": "android",
            "delay_ms": 250, "hide_selectors": [".x", ".y"], "block_resources": ["font"],
            "color_scheme": "dark", "scroll_page": true, "block_cookie_banners": true,
        })
    );
    let answer: i64 = page
        .evaluate(format!(
            "fetch('v1/screenshots', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json' }}, \
             body: JSON.stringify({{ url: {url}, ...options() }}) }}).then((r) => r.status)"
        ))
        .await
        .unwrap()
        .into_value()
        .unwrap();
    assert_eq!(answer, 202, "the API takes what the form sends");

    test_browser.close().await;
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Options with every field that a job may leave out given, so that every
/// field is written.
fn every_option() -> url2png_core::RenderOptions {
    use url2png_core::job::*;
    RenderOptions {
        selector: Some("#a".into()),
        selector_padding: 1,
        thumbnail: Some(Thumbnail {
            width: 10,
            height: None,
            fit: Fit::Contain,
        }),
        pdf: Some(PdfOptions::default()),
        omit_background: true,
        scroll_page: true,
        scroll_step: Some(200),
        scroll_delay_ms: 1,
        wait_for_selector: Some("#b".into()),
        wait_for_selector_state: SelectorState::Hidden,
        wait_for_expression: Some("1".into()),
        network_idle_ms: 200,
        hide_selectors: vec!["#c".into()],
        css: Some("a{}".into()),
        script: Some("1".into()),
        block_resources: vec![ResourceKind::Font],
        block_urls: vec!["*x*".into()],
        block_ads: true,
        block_trackers: true,
        block_cookie_banners: true,
        device: Some("pixel_8".into()),
        landscape: true,
        mobile: true,
        touch: true,
        user_agent: Some("desktop".into()),
        accept_language: Some("de".into()),
        locale: Some("de".into()),
        timezone: Some("UTC".into()),
        geolocation: Some(Geolocation {
            latitude: 0.0,
            longitude: 0.0,
            accuracy: 1.0,
        }),
        color_scheme: Some(ColorScheme::Dark),
        reduced_motion: true,
        media: Some(MediaType::Print),
        headers: [("X-A".to_owned(), "1".to_owned())].into(),
        header_hosts: vec!["a.example".into()],
        cookies: vec![Cookie {
            name: "a".into(),
            value: "b".into(),
            domain: None,
            path: None,
            secure: false,
            http_only: false,
            same_site: None,
        }],
        ..RenderOptions::default()
    }
}

/// Every property of a schema, following `$ref`s.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or(&Value::Null),
        None => schema,
    }
}

#[tokio::test]
async fn the_openapi_document_matches_what_the_api_does() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let (status, headers, body) = http(producer.addr, "GET", "/openapi.json", None, b"").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").is_some_and(|c| c.starts_with("application/json")));
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc.get("security").is_none(), "no keys configured");
    for (path, method) in [
        ("/v1/screenshots", "post"),
        ("/v1/screenshots/batch", "post"),
        ("/v1/screenshots/{id}", "get"),
        ("/v1/screenshots/{id}/image", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is described"
        );
    }

    // The request schema names exactly the fields the API takes.
    let request = resolve(
        &doc,
        &doc["paths"]["/v1/screenshots"]["post"]["requestBody"]["content"]["application/json"]["schema"],
    );
    let properties = request["properties"].as_object().unwrap();
    let mut documented: Vec<&str> = properties.keys().map(String::as_str).collect();
    documented.sort_unstable();
    // A job leaves out the options it does not use; their defaults are
    // the contract's own.
    let mut defaults = serde_json::to_value(url2png_core::RenderOptions::default()).unwrap();
    defaults["selector_padding"] = json!(0);
    defaults["scroll_delay_ms"] = json!(url2png_core::options::SCROLL_DELAY_DEFAULT_MS);
    defaults["network_idle_ms"] = json!(url2png_core::options::NETWORK_IDLE_DEFAULT_MS);
    defaults["wait_for_selector_state"] =
        serde_json::to_value(url2png_core::job::SelectorState::default()).unwrap();
    for list in [
        "hide_selectors",
        "block_resources",
        "block_urls",
        "header_hosts",
        "cookies",
    ] {
        defaults[list] = json!([]);
    }
    defaults["headers"] = json!({});
    for flag in [
        "omit_background",
        "scroll_page",
        "landscape",
        "mobile",
        "touch",
        "reduced_motion",
        "block_ads",
        "block_trackers",
        "block_cookie_banners",
    ] {
        defaults[flag] = json!(false);
    }
    let every = serde_json::to_value(every_option()).unwrap();
    let mut taken: Vec<&str> = every
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .chain(defaults.as_object().unwrap().keys().map(String::as_str))
        .chain([
            "url",
            "quality",
            "clip",
            "cache_ttl",
            "force",
            "webhook_url",
        ])
        .collect();
    taken.sort_unstable();
    taken.dedup();
    assert_eq!(documented, taken);
    assert_eq!(request["required"], json!(["url"]));
    assert_eq!(request["additionalProperties"], json!(false));
    let (status, _, _) = post_json(
        producer.addr,
        "/v1/screenshots",
        &json!({"url": "https://example.com/", "colour": "blue"}),
    )
    .await;
    assert!(
        (400..500).contains(&status),
        "an undocumented field is refused"
    );

    // Every documented default is the contract's default, and every
    // documented bound is the one enforced: the bound is accepted, one step
    // past it is refused with that field named.
    for (name, schema) in properties {
        if let Some(default) = schema.get("default")
            && !default.is_null()
        {
            assert_eq!(default, &defaults[name], "default of {name}");
        }
        // What a field needs beside it to have any effect.
        let mut base = json!({"url": "https://example.com/"});
        match name.as_str() {
            "quality" => base["format"] = json!("jpeg"),
            "scroll_step" => base["scroll_page"] = json!(true),
            "selector_padding" => base["selector"] = json!("#a"),
            "network_idle_ms" => base["wait_for"] = json!("network_idle"),
            _ => {}
        }
        for (bound, step) in [("minimum", -1.0), ("maximum", 1.0)] {
            let Some(limit) = schema.get(bound).and_then(Value::as_f64) else {
                continue;
            };
            let mut at = base.clone();
            at[name] = json!(limit);
            if schema["type"] == "integer" || schema["type"][0] == "integer" {
                at[name] = json!(limit as i64);
            }
            let (status, _, body) = post_json(producer.addr, "/v1/screenshots", &at).await;
            assert_eq!(status, 202, "{name} = {bound} {limit}: {body}");
            let mut past = at.clone();
            past[name] = if at[name].is_i64() {
                json!(at[name].as_i64().unwrap() + step as i64)
            } else {
                json!(limit + step * 0.01)
            };
            let (status, _, body) = post_json(producer.addr, "/v1/screenshots", &past).await;
            assert!(
                (400..500).contains(&status),
                "{name} past its {bound}: {status} {body}"
            );
            if status == 422 {
                assert_eq!(body["error"]["field"], json!(name), "{body}");
            }
        }
    }

    // The answer has the documented shape.
    let accepted = resolve(
        &doc,
        &doc["paths"]["/v1/screenshots"]["post"]["responses"]["202"]["content"]["application/json"]
            ["schema"],
    );
    let (_, _, body) = post_json(
        producer.addr,
        "/v1/screenshots",
        &json!({"url": "https://example.com/"}),
    )
    .await;
    for field in accepted["required"].as_array().unwrap() {
        assert!(
            body.get(field.as_str().unwrap()).is_some(),
            "{field} in {body}"
        );
    }

    // With API keys the document says so, and stays readable without one.
    let keyed = start(&aws, &["--api-keys", "k1"]).await;
    let (status, body) = get_json(keyed.addr, "/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(body["security"], json!([{"api_key": []}]));
    assert_eq!(
        body["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
}

/// The value of an unlabelled metric in a Prometheus text page.
fn scraped(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_exits_zero() {
    let aws = TestAws::start().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], url2png_testkit::moto::free_port()));
    let mut child = url2png_testkit::process::command(env!("CARGO_BIN_EXE_url2png-producer"), &aws)
        .env("URL2PNG_PRODUCER_LISTEN", addr.to_string())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let metrics = || async move {
        let (status, _, body) = http(addr, "GET", "/metrics", None, b"").await;
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    };
    let ready = async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("the producer listens");

    // A request whose body is still arriving when SIGTERM comes.
    let body = json!({"url": "https://example.com/in-flight"}).to_string();
    let (first, rest) = body.as_bytes().split_at(10);
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /v1/screenshots HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(first).await.unwrap();
    let in_flight = async {
        // Scrapes of /metrics are not counted.
        while scraped(&metrics().await, "url2png_producer_http_requests_in_flight") != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the slow request is being served");

    assert!(url2png_testkit::process::signal("TERM", &pid.to_string()));
    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("new connections are refused after SIGTERM");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the producer waits for the request in flight"
    );

    slow.write_all(rest).await.unwrap();
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).await.unwrap();
    let response = String::from_utf8_lossy(&raw);
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the producer exits once the request is done")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let queued = drain(&aws).await;
    assert_eq!(queued.len(), 1);
    assert!(
        response.contains(&queued[0].id.to_string()),
        "the answered job is the queued one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_behind_failing_health_checks_then_stops() {
    let aws = TestAws::start().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], url2png_testkit::moto::free_port()));
    let drain_secs = 3;
    let mut child = url2png_testkit::process::command(env!("CARGO_BIN_EXE_url2png-producer"), &aws)
        .env("URL2PNG_PRODUCER_LISTEN", addr.to_string())
        .env("URL2PNG_DRAIN_SECONDS", drain_secs.to_string())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let up = async {
        while !matches!(
            url2png_testkit::metrics::http_get(addr, "/healthz").await,
            Some((200, _))
        ) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), up)
        .await
        .expect("the producer is healthy");
    assert_eq!(get_json_status(addr, "/readyz").await, 200);

    let sent = tokio::time::Instant::now();
    assert!(
        url2png_testkit::process::signal("TERM", &pid.to_string()),
        "SIGTERM sent"
    );
    // Health fails at once, for the balancer...
    let failing = async {
        while get_json_status(addr, "/healthz").await != 503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), failing)
        .await
        .expect("/healthz fails after SIGTERM");
    assert_eq!(
        url2png_testkit::metrics::http_get(addr, "/readyz").await,
        Some((503, "draining".to_owned()))
    );
    // ...while requests are still served, on new connections too.
    let (status, _, _) = post_json(
        addr,
        "/v1/screenshots",
        &json!({"url": "https://example.com/drain"}),
    )
    .await;
    assert_eq!(status, 202);
    assert!(
        sent.elapsed() < Duration::from_secs(drain_secs),
        "the check above ran within the drain period"
    );

    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(drain_secs + 10), refused)
        .await
        .expect("new connections are refused after the drain period");
    assert!(
        sent.elapsed() >= Duration::from_secs(drain_secs),
        "connections were accepted for the whole drain period"
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the producer exits")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(
        drain(&aws).await.len(),
        1,
        "the job sent while draining is queued"
    );
}

async fn get_json_status(addr: SocketAddr, path: &str) -> u16 {
    url2png_testkit::metrics::http_get(addr, path)
        .await
        .map_or(0, |(status, _)| status)
}
