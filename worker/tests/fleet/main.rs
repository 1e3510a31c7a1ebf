//! Fault scenarios on the real worker binary: kill it, kill its browsers,
//! cut it off from SQS or S3, stop it under load, and count what became of
//! every job. Each scenario ends with a [`Ledger`]; `script/test` runs them
//! one at a time and prints the table.

mod support;

use std::time::Duration;

use url2png_testkit::{FaultProxy, Fixtures, Ledger, TestAws, TestAwsOptions};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_twenty_jobs_in_flight() {
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 5,
        visibility_timeout_secs: 10,
    })
    .await;
    let fixtures = Fixtures::start().await;
    let jobs = jobs_with_pages(&fixtures, 40, Duration::from_secs(8));
    let common = |browsers: &str, pages: &str| {
        vec![
            ("URL2PNG_BROWSERS", browsers.to_owned()),
            ("URL2PNG_PAGES_PER_BROWSER", pages.to_owned()),
            ("URL2PNG_VISIBILITY_TIMEOUT_SECONDS", "10".to_owned()),
            ("URL2PNG_HEARTBEAT_SECONDS", "2".to_owned()),
        ]
    };
    let mut doomed = WorkerProcess::start(&aws, "kill9-doomed", &common("2", "10")).await;
    send(&aws, &jobs).await;
    // Twenty messages held and twenty pages loading: killed mid-render.
    wait_for(
        "20 jobs rendering on the doomed worker",
        Duration::from_secs(90),
        || async { (doomed.in_flight().await >= 20 && fixtures.hits().len() >= 20).then_some(()) },
    )
    .await;
    // The survivor starts only now, so the doomed worker holds 20 at once.
    let survivor = WorkerProcess::start(&aws, "kill9-survivor", &common("1", "8")).await;
    let held = doomed.in_flight().await;
    doomed.kill_everything().await;
    assert!(doomed.chromium().0.is_empty());

    drained(&aws, Duration::from_secs(180)).await;
    let ledger = Ledger::take(
        "kill -9 of a worker with 20 jobs in flight",
        &aws,
        Some(&fixtures),
        &jobs,
    )
    .await
    .note("held at the kill", held);
    ledger.record(LEDGER_DIR);
    assert!(ledger.nothing_lost(), "{ledger:?}");
    assert_eq!(ledger.images, jobs.len(), "{ledger:?}");
    assert_eq!(ledger.stored_more_than_once, 0, "{ledger:?}");
    drop(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_killed_repeatedly_under_load() {
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 10,
        visibility_timeout_secs: 30,
    })
    .await;
    let fixtures = Fixtures::start().await;
    let jobs = jobs_with_pages(&fixtures, 40, Duration::from_millis(1500));
    let mut worker = WorkerProcess::start(
        &aws,
        "chromium-kills",
        &[
            ("URL2PNG_BROWSERS", "2".to_owned()),
            ("URL2PNG_PAGES_PER_BROWSER", "4".to_owned()),
        ],
    )
    .await;
    send(&aws, &jobs).await;
    // Alternate: the browser process itself (the whole browser dies) and a
    // renderer (one tab's process, as the OOM killer would pick).
    let (mut browser_kills, mut renderer_kills) = (0, 0);
    for round in 0..6 {
        wait_for("a job in flight", Duration::from_secs(60), || async {
            (worker.in_flight().await > 0).then_some(())
        })
        .await;
        let (browsers, renderers) = worker.chromium();
        let victim = if round % 2 == 0 {
            browser_kills += 1;
            browsers.first().copied()
        } else {
            renderer_kills += 1;
            renderers.first().copied()
        };
        let victim = victim.expect("a Chromium process to kill");
        signal("KILL", &victim.to_string());
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    drained(&aws, Duration::from_secs(180)).await;
    let restarts = worker
        .metric("url2png_worker_browser_restarts_total", &[])
        .await;
    assert!(worker.running(), "the worker survived");
    let ledger = Ledger::take(
        "Chromium killed repeatedly under load",
        &aws,
        Some(&fixtures),
        &jobs,
    )
    .await
    .note("browsers killed", browser_kills)
    .note("renderers killed", renderer_kills)
    .note("browser restarts (metric)", restarts);
    ledger.record(LEDGER_DIR);
    assert!(ledger.nothing_lost(), "{ledger:?}");
    assert_eq!(ledger.images, jobs.len(), "{ledger:?}");
    assert!(restarts >= f64::from(browser_kills), "restarts {restarts}");
}

/// Lines of `log` that contain `needle`.
fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Jobs across a fault: 8 slow ones sent first and held by `worker` when
/// `fault` starts, then `total - 8` quick ones sent during it, then 15 s of
/// the fault. Returns every job sent.
async fn jobs_across_a_fault(
    aws: &TestAws,
    fixtures: &Fixtures,
    worker: &mut WorkerProcess,
    total: usize,
    fault: impl FnOnce(),
) -> Vec<url2png_testkit::Tracked> {
    let jobs = jobs_with_pages(fixtures, 8, Duration::from_secs(3));
    send(aws, &jobs).await;
    wait_for("jobs in flight", Duration::from_secs(60), || async {
        (worker.in_flight().await >= 4).then_some(())
    })
    .await;
    fault();
    let during: Vec<_> = jobs_with_pages(fixtures, total, Duration::ZERO)
        .into_iter()
        .skip(8)
        .collect();
    send(aws, &during).await;
    tokio::time::sleep(Duration::from_secs(15)).await; // the fault itself
    assert!(worker.running(), "the worker stays up through the fault");
    jobs.into_iter().chain(during).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_unreachable_for_fifteen_seconds() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let proxy = FaultProxy::for_endpoint(aws.moto.endpoint()).await;
    let mut worker = WorkerProcess::start(
        &aws,
        "sqs-outage",
        &[
            ("AWS_ENDPOINT_URL_SQS", proxy.endpoint()),
            ("URL2PNG_HEARTBEAT_SECONDS", "2".to_owned()),
            ("URL2PNG_VISIBILITY_TIMEOUT_SECONDS", "10".to_owned()),
        ],
    )
    .await;
    let jobs = jobs_across_a_fault(&aws, &fixtures, &mut worker, 30, || proxy.fail()).await;
    let attempts = proxy.refused();
    let outage_log = worker.log_text();
    proxy.restore();

    drained(&aws, Duration::from_secs(120)).await;
    let log = worker.log_text();
    let down = lines_with(&log, "receiving from SQS fails");
    let up = lines_with(&log, "receiving from SQS works again");
    let warnings = outage_log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    let ledger = Ledger::take("SQS unreachable for 15 s", &aws, Some(&fixtures), &jobs)
        .await
        .note("connections refused during the outage", attempts)
        .note("warning and error lines during the outage", warnings);
    ledger.record(LEDGER_DIR);
    assert!(ledger.nothing_lost(), "{ledger:?}");
    assert_eq!(ledger.images, jobs.len(), "{ledger:?}");
    assert_eq!((down, up), (1, 1), "one line per state change:\n{log}");
    assert!(
        warnings <= 6,
        "logged per attempt, not per state change:\n{outage_log}"
    );
    assert!(
        attempts < 200,
        "{attempts} connections in 15 s: the worker does not back off"
    );
    assert!(worker.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_and_s3_silent_for_fifteen_seconds() {
    // Connections that go quiet instead of failing: nothing is refused, no
    // byte comes back, and the ones open when it starts stay silent for
    // good. Only timeouts get the worker out of its calls.
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 20,
        visibility_timeout_secs: 10,
    })
    .await;
    let fixtures = Fixtures::start().await;
    let sqs = FaultProxy::for_endpoint(aws.moto.endpoint()).await;
    let s3 = FaultProxy::for_endpoint(aws.moto.endpoint()).await;
    let mut worker = WorkerProcess::start(
        &aws,
        "silent",
        &[
            ("AWS_ENDPOINT_URL_SQS", sqs.endpoint()),
            ("AWS_ENDPOINT_URL_S3", s3.endpoint()),
            ("URL2PNG_AWS_TIMEOUT_SECONDS", "3".to_owned()),
            ("URL2PNG_WAIT_TIME_SECONDS", "5".to_owned()),
            ("URL2PNG_HEARTBEAT_SECONDS", "2".to_owned()),
            ("URL2PNG_VISIBILITY_TIMEOUT_SECONDS", "10".to_owned()),
        ],
    )
    .await;
    let jobs = jobs_across_a_fault(&aws, &fixtures, &mut worker, 24, || {
        sqs.stall();
        s3.stall();
    })
    .await;
    let held = sqs.held() + s3.held();
    sqs.restore();
    s3.restore();

    drained(&aws, Duration::from_secs(120)).await;
    let ledger = Ledger::take("SQS and S3 silent for 15 s", &aws, Some(&fixtures), &jobs)
        .await
        .note("connections gone silent", held);
    ledger.record(LEDGER_DIR);
    assert!(held > 0, "the silence was felt");
    assert!(ledger.nothing_lost(), "{ledger:?}");
    assert_eq!(ledger.images, jobs.len(), "{ledger:?}");
    assert!(worker.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_failing_while_rendering() {
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 20,
        visibility_timeout_secs: 30,
    })
    .await;
    let fixtures = Fixtures::start().await;
    let proxy = FaultProxy::for_endpoint(aws.moto.endpoint()).await;
    let mut worker = WorkerProcess::start(
        &aws,
        "s3-outage",
        &[
            ("AWS_ENDPOINT_URL_S3", proxy.endpoint()),
            ("URL2PNG_PAGES_PER_BROWSER", "8".to_owned()),
        ],
    )
    .await;
    let jobs = jobs_with_pages(&fixtures, 24, Duration::from_secs(2));
    send(&aws, &jobs).await;
    wait_for("renders under way", Duration::from_secs(60), || async {
        (fixtures.hits().len() >= 4).then_some(())
    })
    .await;
    proxy.fail();
    // Through the outage and the recovery: a message is deleted only once
    // its image is stored. Counts are read queue first, then bucket, so a
    // deletion seen is never newer than the images seen.
    let total = jobs.len() as u64;
    let mut samples = 0;
    let mut check = async || {
        // The emulator counts visible and invisible messages one after the
        // other, so a message whose visibility runs out in between is in
        // neither count. A deletion is for good: an apparent one that
        // disappears on a second look was such a miss.
        let mut deleted = u64::MAX;
        let mut stored = 0;
        for _ in 0..3 {
            let (visible, in_flight) = aws.queue_counts(&aws.queue.url).await;
            deleted = deleted.min(total.saturating_sub(visible + in_flight));
            stored = aws.results().await.len() as u64;
            if deleted <= stored {
                break;
            }
        }
        assert!(
            deleted <= stored,
            "{deleted} messages deleted with {stored} images stored"
        );
        samples += 1;
        deleted
    };
    let outage_end = tokio::time::Instant::now() + Duration::from_secs(12);
    while tokio::time::Instant::now() < outage_end {
        check().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(worker.running(), "the worker stays up through the outage");
    let refused = proxy.refused();
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while check().await < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all jobs finished"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drained(&aws, Duration::from_secs(30)).await;
    let ledger = Ledger::take(
        "S3 failing while rendering (12 s)",
        &aws,
        Some(&fixtures),
        &jobs,
    )
    .await
    .note("connections refused during the outage", refused)
    .note("deleted-before-stored checks", samples);
    ledger.record(LEDGER_DIR);
    assert!(refused > 0, "the outage was felt");
    assert!(ledger.nothing_lost(), "{ledger:?}");
    assert_eq!(ledger.images, jobs.len(), "{ledger:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load() {
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 5,
        visibility_timeout_secs: 30,
    })
    .await;
    let fixtures = Fixtures::start().await;
    // Mostly quick pages, and some that outlast the grace period.
    let mut jobs = jobs_with_pages(&fixtures, 30, Duration::from_secs(2));
    for tracked in jobs.iter_mut().step_by(5) {
        let path = tracked.page.clone().unwrap();
        fixtures.page(
            &path,
            url2png_testkit::Page::html("<h1>slow</h1>").delay(Duration::from_secs(20)),
        );
        tracked.job.options.timeout_ms = 60_000;
    }
    let grace = 5;
    let mut first = WorkerProcess::start(
        &aws,
        "sigterm-first",
        &[
            ("URL2PNG_BROWSERS", "2".to_owned()),
            ("URL2PNG_PAGES_PER_BROWSER", "5".to_owned()),
            ("URL2PNG_SHUTDOWN_GRACE_SECONDS", grace.to_string()),
        ],
    )
    .await;
    send(&aws, &jobs).await;
    // Ten held and their pages loading, so that the quick ones can finish
    // within the grace period and the slow ones cannot.
    wait_for("ten jobs rendering", Duration::from_secs(60), || async {
        (first.in_flight().await >= 10 && fixtures.hits().len() >= 10).then_some(())
    })
    .await;
    let held = first.in_flight().await;
    let sent = tokio::time::Instant::now();
    first.terminate();
    let status = first.exited(Duration::from_secs(grace + 20)).await;
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        first.chromium(),
        (vec![], vec![]),
        "no Chromium left behind"
    );
    let log = first.log_text();
    assert!(log.contains("draining"), "{log}");
    // Whatever the first worker still held was handed back, not left to
    // time out: a second worker finishes everything well within the
    // 30-second visibility timeout.
    let (visible, in_flight) = aws.queue_counts(&aws.queue.url).await;
    assert_eq!(in_flight, 0, "nothing left invisible after the drain");
    let finished_in_grace = jobs.len() as u64 - visible;
    assert!(
        finished_in_grace > 0 && finished_in_grace < held as u64,
        "quick jobs finish within the grace, slow ones are handed back: {finished_in_grace} of {held} finished"
    );
    let second = WorkerProcess::start(
        &aws,
        "sigterm-second",
        &[("URL2PNG_PAGES_PER_BROWSER", "8".to_owned())],
    )
    .await;
    drained(&aws, Duration::from_secs(120)).await;
    let ledger = Ledger::take(
        "SIGTERM under load (grace 5 s)",
        &aws,
        Some(&fixtures),
        &jobs,
    )
    .await
    .note("held at SIGTERM", held)
    .note("finished within the grace", finished_in_grace)
    .note("handed back", held as u64 - finished_in_grace)
    .note("exit after (s)", format!("{:.1}", took.as_secs_f64()));
    ledger.record(LEDGER_DIR);
    assert!(ledger.nothing_lost(), "{ledger:?}");
    assert_eq!(ledger.images, jobs.len(), "{ledger:?}");
    assert_eq!(ledger.stored_more_than_once, 0, "{ledger:?}");
    drop(second);
}
