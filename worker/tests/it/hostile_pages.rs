//! Pages that fight back: dialogs, endless scripts, popups, downloads,
//! authentication prompts, redirect loops and other hostile content. Each
//! job must end, with an image or a failure record, and the worker must
//! keep serving.

use std::time::Duration;

use url2png_core::job::RenderOptions;
use url2png_core::{FailureRecord, JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws, TestAwsOptions};

use crate::support::*;

/// What a hostile page must end as: an image of whatever it shows, or a
/// failure record when there is nothing to show (no document, a loop, a
/// refused address, credentials asked for).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Image,
    Failure,
}

fn hostile_pages() -> Vec<(&'static str, Page, Expect)> {
    let big = "x".repeat(1 << 20);
    vec![
        (
            "/alert",
            Page::html("<h1>alert</h1><script>alert('hi')</script>"),
            Expect::Image,
        ),
        (
            "/confirm-prompt",
            Page::html(
                "<h1>dialogs</h1><script>if (confirm('ok?')) prompt('name?'); alert('x')</script>",
            ),
            Expect::Image,
        ),
        (
            "/alert-after-load",
            Page::html(
                "<h1>late alert</h1><script>addEventListener('load', () => setTimeout(() => alert('late'), 10))</script>",
            ),
            Expect::Image,
        ),
        (
            "/beforeunload",
            Page::html(
                "<h1>stay</h1><script>addEventListener('beforeunload', e => { e.preventDefault(); e.returnValue = 'stay'; })</script>",
            ),
            Expect::Image,
        ),
        (
            "/print",
            Page::html("<h1>print</h1><script>print()</script>"),
            Expect::Image,
        ),
        (
            "/popups",
            Page::html(
                "<h1>popups</h1><script>for (let i = 0; i < 50; i++) window.open('/popup-target?' + i)</script>",
            ),
            Expect::Image,
        ),
        (
            "/basic-auth",
            Page::html("<h1>no</h1>")
                .status(401)
                .header("www-authenticate", "Basic realm=\"x\""),
            Expect::Failure,
        ),
        (
            "/redirect-loop",
            Page::redirect("/redirect-loop"),
            Expect::Failure,
        ),
        (
            "/tall",
            Page::html(
                "<div style='height:5000000px;background:linear-gradient(red,blue)'>tall</div>",
            ),
            Expect::Image,
        ),
        (
            "/wide",
            Page::html("<div style='width:5000000px;height:100px;background:red'>wide</div>"),
            Expect::Image,
        ),
        (
            "/pdf",
            Page::bytes("application/pdf", "%PDF-1.4\n%%EOF\n"),
            Expect::Image,
        ),
        ("/empty", Page::bytes("text/html", ""), Expect::Image),
        (
            "/binary",
            Page::bytes("image/png", vec![0u8, 1, 2, 3, 255, 254]),
            Expect::Image,
        ),
        (
            "/frames-to-metadata",
            Page::html(
                "<h1>frames</h1><iframe src='http://169.254.169.254/latest/meta-data/'></iframe><img src='http://10.0.0.1/x.png'>",
            ),
            Expect::Image,
        ),
        (
            "/redirect-to-metadata",
            Page::redirect("http://169.254.169.254/latest/meta-data/"),
            Expect::Failure,
        ),
        (
            "/navigate-to-metadata",
            Page::html(
                "<script>location = 'http://169.254.169.254/latest/meta-data/'</script><h1>x</h1>",
            ),
            Expect::Image,
        ),
        (
            "/huge-title",
            Page::html(format!("<title>{big}</title><h1>big title</h1>")),
            Expect::Image,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_page_ends_and_the_worker_keeps_serving() {
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 2,
        visibility_timeout_secs: 30,
    })
    .await;
    let fixtures = Fixtures::start().await;
    fixtures.page("/popup-target", Page::html("<h1>popup</h1>"));
    let pages = hostile_pages();
    let mut jobs = Vec::new();
    for (path, page, expect) in pages {
        fixtures.page(path, page);
        let job = JobMessage::new(
            fixtures.url(path),
            RenderOptions {
                timeout_ms: 20_000,
                full_page: path == "/tall" || path == "/wide",
                ..RenderOptions::default()
            },
        );
        jobs.push((path, job, expect));
    }
    let worker = start_worker(
        &aws,
        &["--retry-base-seconds", "1", "--retry-max-seconds", "1"],
    )
    .await;
    let messages: Vec<JobMessage> = jobs.iter().map(|(_, job, _)| job.clone()).collect();
    send_jobs(&aws, &messages).await;
    let layout = KeyLayout::default();
    let outcome = |keys: &[String], job: &JobMessage| {
        let failure = layout.failure(job.id);
        if keys.contains(&failure) {
            Some(Expect::Failure)
        } else if keys.iter().any(|k| k.contains(&job.id.to_string())) {
            Some(Expect::Image)
        } else {
            None
        }
    };
    let ended = wait_for("every job ended", Duration::from_secs(240), || async {
        let keys = keys(&aws).await;
        let pending: Vec<_> = jobs
            .iter()
            .filter(|(_, job, _)| outcome(&keys, job).is_none())
            .map(|(path, ..)| *path)
            .collect();
        pending.is_empty().then_some(keys)
    })
    .await;
    let mut wrong = Vec::new();
    for (path, job, expect) in &jobs {
        let got = outcome(&ended, job);
        if got != Some(*expect) {
            let detail = if got == Some(Expect::Failure) {
                FailureRecord::from_json(&get(&aws, &layout.failure(job.id)).await)
                    .map(|r| r.message)
                    .unwrap_or_default()
            } else {
                String::new()
            };
            wrong.push(format!("{path}: expected {expect:?}, got {got:?} {detail}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Still serving.
    let good = JobMessage::new(fixtures.url("/after-hostile"), RenderOptions::default());
    send_jobs(&aws, std::slice::from_ref(&good)).await;
    wait_for("a good job after them", Duration::from_secs(60), || async {
        keys(&aws)
            .await
            .contains(&layout.image(good.id, url2png_core::job::ImageFormat::Png))
            .then_some(())
    })
    .await;
    assert_eq!(queue_counts(&aws, &aws.queue.dlq_url).await, (0, 0));
    worker.stop().await;
}
