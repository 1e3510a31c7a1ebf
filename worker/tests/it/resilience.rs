//! Slow pages, dying browsers and hostile bodies.

use std::time::Duration;

use url2png_core::job::{ImageFormat, RenderOptions};
use url2png_core::{FailureReason, FailureRecord, JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws, TestAwsOptions};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_slow_page_invisible_until_it_is_stored() {
    // Visibility 4 s; the page takes 12 s, three times as long.
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 5,
        visibility_timeout_secs: 4,
    })
    .await;
    let fixtures = Fixtures::start().await;
    fixtures.page(
        "/slow",
        Page::html("<h1>slow</h1>").delay(Duration::from_secs(12)),
    );
    let worker = start_worker(
        &aws,
        &[
            "--visibility-timeout-seconds",
            "4",
            "--heartbeat-seconds",
            "1",
            "--pages-per-browser",
            "2",
        ],
    )
    .await;
    let job = JobMessage::new(
        fixtures.url("/slow"),
        RenderOptions {
            timeout_ms: 60_000,
            ..RenderOptions::default()
        },
    );
    send_jobs(&aws, std::slice::from_ref(&job)).await;

    let key = KeyLayout::default().image(job.id, ImageFormat::Png);
    wait_for("the slow image", Duration::from_secs(60), || async {
        keys(&aws).await.contains(&key).then_some(())
    })
    .await;
    wait_for("the message deleted", Duration::from_secs(10), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    assert_eq!(
        fixtures.hits_on("/slow"),
        1,
        "rendered once: never redelivered"
    );
    assert!(
        worker.metrics.visibility_extensions.get() >= 2,
        "the heartbeat extended it"
    );
    assert_eq!(counter(&worker.metrics.jobs, &["stored"]), 1);
    assert_eq!(counter(&worker.metrics.jobs, &["retried"]), 0);
    assert_eq!(queue_counts(&aws, &aws.queue.dlq_url).await, (0, 0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_killed_mid_render_is_replaced_and_the_job_retried() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page(
        "/held",
        Page::html("<h1>held</h1>").delay(Duration::from_secs(3)),
    );
    let worker = start_worker(
        &aws,
        &["--retry-base-seconds", "1", "--retry-max-seconds", "2"],
    )
    .await;
    let job = JobMessage::new(fixtures.url("/held"), RenderOptions::default());
    send_jobs(&aws, std::slice::from_ref(&job)).await;

    assert!(
        fixtures
            .wait_for_hits("/held", 1, Duration::from_secs(30))
            .await,
        "render started"
    );
    let pids = worker.pool.browser_pids().await;
    assert_eq!(pids.len(), 1);
    assert!(signal("KILL", &pids[0].to_string()));

    let key = KeyLayout::default().image(job.id, ImageFormat::Png);
    wait_for("the retried image", Duration::from_secs(90), || async {
        keys(&aws).await.contains(&key).then_some(())
    })
    .await;
    assert!(counter(&worker.metrics.browser_restarts, &["crash"]) >= 1);
    assert!(counter(&worker.metrics.jobs, &["retried"]) >= 1);
    assert!(
        fixtures.hits_on("/held") >= 2,
        "rendered again after the crash"
    );
    let new_pids = worker.pool.browser_pids().await;
    assert_eq!(new_pids.len(), 1);
    assert_ne!(new_pids, pids, "a new browser process");
    assert_eq!(worker.pool.live_browsers(), 1);
    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    worker.stop().await;
}

/// Bodies that break the contract in every way the parser distinguishes,
/// and some that try harder.
fn poison_bodies() -> Vec<String> {
    let id = "\"7a1f0c3e-5d2b-4c1a-9e8f-0a1b2c3d4e5f\"";
    let mut bodies: Vec<String> = [
        "",
        " ",
        "not json",
        "{",
        "[]",
        "null",
        "42",
        "\"a string\"",
        "{}",
        "{\"version\":1}",
        "{\"version\":2,\"id\":ID,\"url\":\"http://x/\"}",
        "{\"version\":\"1\",\"id\":ID,\"url\":\"http://x/\"}",
        "{\"version\":1,\"id\":\"nope\",\"url\":\"http://x/\"}",
        "{\"version\":1,\"id\":ID,\"url\":\"file:///etc/passwd\"}",
        "{\"version\":1,\"id\":ID,\"url\":\"javascript:alert(1)\"}",
        "{\"version\":1,\"id\":ID,\"url\":\"http://x/\",\"options\":{\"width\":0}}",
        "{\"version\":1,\"id\":ID,\"url\":\"http://x/\",\"options\":{\"width\":1e400}}",
        "{\"version\":1,\"id\":ID,\"url\":\"http://x/\",\"options\":[1,2]}",
        "{\"version\":1,\"id\":ID,\"url\":\"http://x/\",\"options\":{\"wait_for\":{\"selector\":\"\"}}}",
        "{\"version\":1,\"id\":ID,\"url\":\"http://x/\",\"extra\":true}",
    ]
    .iter()
    .map(|b| b.replace("ID", id))
    .collect();
    bodies.push("[".repeat(10_000));
    bodies.push(format!(
        "{{\"version\":1,\"id\":{id},\"url\":\"http://x/{}\"}}",
        "a".repeat(9000)
    ));
    bodies.push("\u{0}\u{1}\u{2}binary\u{7f}".into());
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_bodies_get_failure_records_and_the_worker_keeps_serving() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(&aws, &[]).await;
    let bodies = poison_bodies();
    send_bodies(&aws, &bodies).await;
    let good = JobMessage::new(fixtures.url("/after-poison"), RenderOptions::default());
    send_jobs(&aws, std::slice::from_ref(&good)).await;

    let image = KeyLayout::default().image(good.id, ImageFormat::Png);
    wait_for(
        "every poison body handled and the good job stored",
        Duration::from_secs(60),
        || async {
            let keys = keys(&aws).await;
            (keys.contains(&image)
                && counter(&worker.metrics.jobs, &["failed"])
                    + counter(&worker.metrics.jobs, &["duplicate"])
                    == bodies.len() as u64)
                .then_some(())
        },
    )
    .await;
    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    // Bodies that share a salvaged id share a record: the first one's, and
    // the others are acknowledged as duplicates. Every other body has its own.
    let records: Vec<String> = keys(&aws)
        .await
        .into_iter()
        .filter(|k| k.ends_with(".error.json"))
        .collect();
    assert!(records.len() >= 8, "{records:?}");
    assert_eq!(
        counter(&worker.metrics.jobs, &["failed"]),
        records.len() as u64,
        "one failure per record"
    );
    let mut reasons = std::collections::HashSet::new();
    for key in &records {
        let record = FailureRecord::from_json(&get(&aws, key).await).unwrap();
        assert!(!record.message.is_empty());
        reasons.insert(record.reason);
    }
    assert!(reasons.contains(&FailureReason::InvalidMessage));
    assert!(reasons.iter().all(|r| matches!(
        r,
        FailureReason::InvalidMessage | FailureReason::UnsupportedVersion
    )));
    assert_eq!(counter(&worker.metrics.jobs, &["stored"]), 1);
    assert_eq!(queue_counts(&aws, &aws.queue.dlq_url).await, (0, 0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_browser_is_detected_and_replaced() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(
        &aws,
        &[
            "--cdp-timeout-seconds",
            "2",
            "--retry-base-seconds",
            "1",
            "--retry-max-seconds",
            "2",
        ],
    )
    .await;
    let pids = worker.pool.browser_pids().await;
    // A stopped process keeps its socket open but answers nothing.
    assert!(signal("STOP", &pids[0].to_string()));
    wait_for("the hang detected", Duration::from_secs(60), || async {
        (counter(&worker.metrics.browser_restarts, &["hang"]) >= 1).then_some(())
    })
    .await;
    let job = JobMessage::new(fixtures.url("/after-hang"), RenderOptions::default());
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let key = KeyLayout::default().image(job.id, ImageFormat::Png);
    wait_for(
        "an image from the new browser",
        Duration::from_secs(60),
        || async { keys(&aws).await.contains(&key).then_some(()) },
    )
    .await;
    assert!(!worker.pool.browser_pids().await.contains(&pids[0]));
    // The stopped process is killed and reaped, not left behind (a zombie
    // would keep its /proc entry).
    let proc_entry = format!("/proc/{}", pids[0]);
    wait_for(
        "the hung browser reaped",
        Duration::from_secs(30),
        || async { (!std::path::Path::new(&proc_entry).exists()).then_some(()) },
    )
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_are_recycled_after_their_render_budget() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(&aws, &["--recycle-after", "2", "--pages-per-browser", "1"]).await;
    let jobs: Vec<_> = (0..6)
        .map(|i| JobMessage::new(fixtures.url(&format!("/r/{i}")), RenderOptions::default()))
        .collect();
    send_jobs(&aws, &jobs).await;
    wait_for("six images", Duration::from_secs(90), || async {
        (keys(&aws).await.len() == 6).then_some(())
    })
    .await;
    assert!(counter(&worker.metrics.browser_restarts, &["recycle"]) >= 2);
    assert_eq!(counter(&worker.metrics.browser_restarts, &["crash"]), 0);
    assert_eq!(worker.pool.live_browsers(), 1, "old browsers retired");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_of_a_stored_job_is_acknowledged_without_rendering() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let job = JobMessage::new(fixtures.url("/already"), RenderOptions::default());
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    // A first delivery that "crashed" after storing: receive, store, release.
    let first = aws
        .clients
        .sqs
        .receive_message()
        .queue_url(&aws.queue.url)
        .send()
        .await
        .unwrap();
    let handle = first.messages()[0].receipt_handle().unwrap().to_owned();
    let key = KeyLayout::default().image(job.id, ImageFormat::Png);
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(&key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"stored before",
        ))
        .send()
        .await
        .unwrap();
    aws.clients
        .sqs
        .change_message_visibility()
        .queue_url(&aws.queue.url)
        .receipt_handle(handle)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();

    let worker = start_worker(&aws, &[]).await;
    wait_for(
        "the duplicate acknowledged",
        Duration::from_secs(30),
        || async { (counter(&worker.metrics.jobs, &["duplicate"]) == 1).then_some(()) },
    )
    .await;
    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    assert_eq!(fixtures.hits_on("/already"), 0, "not rendered again");
    assert_eq!(get(&aws, &key).await, b"stored before");
    worker.stop().await;
}

/// At least 200 bodies: every field of a valid job replaced by wrong
/// types and out-of-range values, every prefix of a valid body, and
/// structural attacks. Each carries its own id where it has one.
fn hostile_corpus() -> Vec<String> {
    let valid = |id: uuid::Uuid| {
        serde_json::json!({
            "version": 1,
            "id": id,
            "url": "https://example.com/",
            "options": {"width": 800, "height": 600, "format": "jpeg", "quality": 80},
        })
    };
    let mut bodies = Vec::new();
    let wrong: Vec<(&str, Vec<serde_json::Value>)> = vec![
        (
            "version",
            vec![
                0.into(),
                2.into(),
                (-1).into(),
                1.5.into(),
                "1".into(),
                serde_json::Value::Null,
                true.into(),
            ],
        ),
        (
            "id",
            vec![
                "nope".into(),
                "".into(),
                5.into(),
                serde_json::Value::Null,
                "7a1f0c3e-5d2b-4c1a-9e8f".into(),
            ],
        ),
        (
            "url",
            vec![
                "".into(),
                "relative/path".into(),
                "http://".into(),
                "file:///etc/passwd".into(),
                "data:text/html,<h1>x</h1>".into(),
                "javascript:alert(1)".into(),
                "chrome://settings".into(),
                "view-source:https://example.com/".into(),
                "blob:https://example.com/x".into(),
                "ftp://example.com/".into(),
                "about:blank".into(),
                5.into(),
                serde_json::Value::Null,
                "http://127.0.0.2/".into(),
                "http://169.254.169.254/latest/meta-data/".into(),
                "http://[::ffff:127.0.0.2]/".into(),
                "http://2130706434/".into(),
                "http://0x7f.2/".into(),
                "http://10.0.0.1/".into(),
                "http://[fd00::1]/".into(),
                format!("https://example.com/{}", "a".repeat(9000)).into(),
            ],
        ),
    ];
    for (field, values) in &wrong {
        for value in values {
            let mut body = valid(uuid::Uuid::new_v4());
            body[*field] = value.clone();
            bodies.push(body.to_string());
        }
    }
    let options: Vec<(&str, Vec<serde_json::Value>)> = vec![
        (
            "width",
            vec![
                0.into(),
                (-1).into(),
                7681.into(),
                1.5.into(),
                "800".into(),
                serde_json::Value::Null,
                true.into(),
                serde_json::json!([]),
                4_294_967_296u64.into(),
            ],
        ),
        (
            "height",
            vec![0.into(), 7681.into(), "600".into(), serde_json::json!({})],
        ),
        (
            "device_scale_factor",
            vec![
                0.into(),
                0.5.into(),
                4.01.into(),
                "2".into(),
                serde_json::Value::Null,
                1e300.into(),
            ],
        ),
        (
            "full_page",
            vec!["yes".into(), 1.into(), serde_json::Value::Null],
        ),
        (
            "full_page_max_height",
            vec![0.into(), 32_769.into(), (-5).into()],
        ),
        (
            "format",
            vec![
                "gif".into(),
                "PNG".into(),
                1.into(),
                serde_json::Value::Null,
                "".into(),
            ],
        ),
        (
            "quality",
            vec![0.into(), 101.into(), (-1).into(), "80".into(), 80.5.into()],
        ),
        (
            "wait_for",
            vec![
                "idle".into(),
                5.into(),
                serde_json::json!({"selector": ""}),
                serde_json::json!({"selector": 1}),
                serde_json::json!({"xpath": "//a"}),
                serde_json::json!({"selector": "a".repeat(1025)}),
                serde_json::json!({"selector": "a", "extra": 1}),
                serde_json::json!(["load"]),
            ],
        ),
        (
            "delay_ms",
            vec![(-1).into(), 10_001.into(), "0".into(), 30_000.into()],
        ),
        (
            "timeout_ms",
            vec![999.into(), 120_001.into(), 0.into(), "30000".into()],
        ),
        ("fail_on_http_error", vec!["true".into(), 1.into()]),
        ("colour", vec!["blue".into()]),
    ];
    for (field, values) in &options {
        for value in values {
            let mut body = valid(uuid::Uuid::new_v4());
            body["options"][*field] = value.clone();
            bodies.push(body.to_string());
        }
    }
    // Combinations that are each in range but not together.
    for extra in [
        serde_json::json!({"width": 7680, "height": 7680, "device_scale_factor": 2}),
        serde_json::json!({"format": "png", "quality": 80}),
        serde_json::json!({"delay_ms": 5000, "timeout_ms": 5000}),
    ] {
        let mut body = valid(uuid::Uuid::new_v4());
        body["options"] = extra;
        bodies.push(body.to_string());
    }
    // Every prefix of a valid body is broken JSON.
    let whole = valid(uuid::Uuid::new_v4()).to_string();
    bodies.extend((1..whole.len()).map(|n| whole[..n].to_owned()));
    // Every key misspelled: unknown fields are refused.
    for key in ["version", "id", "url", "options"] {
        let body = valid(uuid::Uuid::new_v4()).to_string();
        bodies.push(body.replacen(
            &format!("\"{key}\""),
            &format!("\"{}\"", key.to_uppercase()),
            1,
        ));
        // A body of its own, with its own id.
        let body = valid(uuid::Uuid::new_v4()).to_string();
        bodies.push(body.replacen(&format!("\"{key}\""), &format!("\"{key} \""), 1));
    }
    for key in ["width", "height", "format", "quality"] {
        let body = valid(uuid::Uuid::new_v4()).to_string();
        bodies.push(body.replacen(&format!("\"{key}\""), &format!("\"{key}_\""), 1));
    }
    // Structure.
    let id = uuid::Uuid::new_v4();
    bodies.extend([
        format!("{{\"version\":1,\"version\":1,\"id\":\"{id}\",\"url\":\"https://example.com/\"}}"),
        format!("\u{feff}{}", valid(uuid::Uuid::new_v4())),
        format!(
            "{}{}",
            valid(uuid::Uuid::new_v4()),
            valid(uuid::Uuid::new_v4())
        ),
        format!("[{}]", valid(uuid::Uuid::new_v4())),
        format!("{{\"a\":{}}}", "[".repeat(5000) + &"]".repeat(5000)),
        "{".repeat(20_000),
        format!(
            "{{\"version\":1,\"id\":\"{}\",\"url\":\"https://example.com/\",\"pad\":\"{}\"}}",
            uuid::Uuid::new_v4(),
            "x".repeat(40_000)
        ),
        "\u{0}".repeat(100),
        "true".into(),
        "-0".into(),
        "\"\\ud800\"".into(),
        "{\"version\":1e999}".into(),
    ]);
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_body_gets_exactly_one_failure_record() {
    let bodies = hostile_corpus();
    assert!(bodies.len() >= 200, "{} bodies", bodies.len());
    for body in &bodies {
        assert!(
            JobMessage::parse(body.as_bytes()).is_err()
                || serde_json::from_str::<JobMessage>(body).is_ok_and(|job| {
                    url2png_core::policy::UrlPolicy::default()
                        .check_url(&job.url)
                        .is_err()
                }),
            "the corpus holds a valid job: {body}"
        );
    }
    // Count panics anywhere in the process (a job task's panic would not
    // fail the test by itself).
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
    let aws = TestAws::start().await;
    // The tests' worker may reach 127.0.0.1 (the fixtures); the corpus's
    // loopback URLs use other loopback addresses.
    let worker = start_worker(&aws, &[]).await;
    send_bodies(&aws, &bodies).await;
    wait_for(
        "every hostile body handled",
        Duration::from_secs(120),
        || async {
            (counter(&worker.metrics.jobs, &["failed"]) >= bodies.len() as u64).then_some(())
        },
    )
    .await;
    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    let records: Vec<String> = keys(&aws)
        .await
        .into_iter()
        .filter(|k| k.ends_with(".error.json"))
        .collect();
    url2png_testkit::Ledger {
        scenario: format!("hostile message bodies ({} kinds)", bodies.len()),
        submitted: bodies.len(),
        images: counter(&worker.metrics.jobs, &["stored"]) as usize,
        failure_records: records.len(),
        lost: bodies.len().saturating_sub(records.len()),
        ..Default::default()
    }
    .note("panics", PANICS.load(std::sync::atomic::Ordering::SeqCst))
    .record(env!("CARGO_TARGET_TMPDIR"));
    assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(records.len(), bodies.len(), "one record per body");
    assert_eq!(
        counter(&worker.metrics.jobs, &["failed"]),
        bodies.len() as u64
    );
    assert_eq!(counter(&worker.metrics.jobs, &["stored"]), 0);
    for key in &records {
        let record = FailureRecord::from_json(&get(&aws, key).await).unwrap();
        assert!(
            matches!(
                record.reason,
                FailureReason::InvalidMessage
                    | FailureReason::UnsupportedVersion
                    | FailureReason::BlockedByPolicy
            ),
            "{key}: {record:?}"
        );
    }
    assert_eq!(queue_counts(&aws, &aws.queue.dlq_url).await, (0, 0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_of_one_job_at_once_render_it_once_and_both_are_acknowledged() {
    // Two messages carrying the same job, received together: the second
    // waits for the first instead of being handed back, so a page slower
    // than the retries cannot push the job to the dead-letter queue.
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 2,
        visibility_timeout_secs: 10,
    })
    .await;
    let fixtures = Fixtures::start().await;
    fixtures.page(
        "/slow-twin",
        Page::html("<h1>twin</h1>").delay(Duration::from_secs(6)),
    );
    let worker = start_worker(
        &aws,
        &[
            "--pages-per-browser",
            "4",
            "--retry-base-seconds",
            "1",
            "--retry-max-seconds",
            "1",
        ],
    )
    .await;
    let job = JobMessage::new(
        fixtures.url("/slow-twin"),
        RenderOptions {
            timeout_ms: 60_000,
            ..RenderOptions::default()
        },
    );
    send_jobs(&aws, &[job.clone(), job.clone()]).await;
    wait_for("both messages handled", Duration::from_secs(60), || async {
        (counter(&worker.metrics.jobs, &["stored"]) + counter(&worker.metrics.jobs, &["duplicate"])
            >= 2)
            .then_some(())
    })
    .await;
    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    assert_eq!(fixtures.hits_on("/slow-twin"), 1, "rendered once");
    assert_eq!(counter(&worker.metrics.jobs, &["stored"]), 1);
    assert_eq!(counter(&worker.metrics.jobs, &["duplicate"]), 1);
    assert_eq!(counter(&worker.metrics.jobs, &["retried"]), 0);
    assert_eq!(queue_counts(&aws, &aws.queue.dlq_url).await, (0, 0));
    assert!(
        keys(&aws)
            .await
            .contains(&KeyLayout::default().image(job.id, ImageFormat::Png))
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_message_delivered_twice_is_one_failure() {
    // SQS may deliver one message twice, even at once; a broken body then
    // gives one failure record and one duplicate, not two failures.
    let aws = TestAws::start().await;
    let worker = start_worker(&aws, &[]).await;
    let id = uuid::Uuid::new_v4();
    let broken =
        format!(r#"{{"version":1,"id":"{id}","url":"http://x/","options":{{"width":0}}}}"#);
    let refused = JobMessage::new(
        "http://169.254.169.254/latest/meta-data/",
        RenderOptions::default(),
    );
    send_bodies(
        &aws,
        &[broken.clone(), broken, refused.to_json(), refused.to_json()],
    )
    .await;
    wait_for("all four handled", Duration::from_secs(30), || async {
        (counter(&worker.metrics.jobs, &["failed"]) + counter(&worker.metrics.jobs, &["duplicate"])
            >= 4)
            .then_some(())
    })
    .await;
    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    assert_eq!(counter(&worker.metrics.jobs, &["failed"]), 2);
    assert_eq!(counter(&worker.metrics.jobs, &["duplicate"]), 2);
    let layout = KeyLayout::default();
    let records: Vec<String> = keys(&aws)
        .await
        .into_iter()
        .filter(|k| k.ends_with(".error.json"))
        .collect();
    let mut expected = vec![layout.failure(id), layout.failure(refused.id)];
    expected.sort();
    let mut records = records;
    records.sort();
    assert_eq!(records, expected);
    worker.stop().await;
}
