//! The render report: what the worker saw, checked against what a fixture
//! page did (redirects, refused, blocked and failed sub-resources, console
//! errors) and against the stored image.

use std::net::IpAddr;
use std::time::Duration;

use url2png_core::job::ImageFormat;
use url2png_core::report::{RenderReport, sha256_hex};
use url2png_core::{FailureRecord, JobMessage, KeyLayout, RenderOptions};
use url2png_testkit::{Fixtures, Page, TestAws};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_a_stored_image_says_what_the_page_did() {
    let aws = TestAws::start().await;
    let site = Fixtures::start().await;
    // Refused by the policy (only 127.0.0.1 is allowed).
    let refused = Fixtures::start_on(IpAddr::from([127, 0, 0, 2])).await;
    let refused_target = format!("127.0.0.2:{}", refused.addr().port());
    // Nothing listens on this port of 127.0.0.1.
    let (closed, _reserved) = url2png_testkit::moto::refusing_port();
    let closed_target = format!("127.0.0.1:{closed}");
    site.page(
        "/page",
        Page::html(format!(
            r#"<!doctype html><body style="background:#fff">
            <img src="http://{refused_target}/refused.png">
            <img src="/blocked-ad.png">
            <img src="http://{closed_target}/unreachable.png">
            <script>
              console.error("one"); console.error("two");
              setTimeout(() => {{ throw new Error("three"); }}, 0);
            </script></body>"#
        )),
    );
    site.page("/middle", Page::redirect("/page").status(301));
    site.page("/start", Page::redirect("/middle"));
    let options = RenderOptions {
        width: 500,
        height: 400,
        block_urls: vec!["*blocked-ad*".into()],
        ..RenderOptions::default()
    };
    let job = JobMessage::new(site.url("/start"), options.clone());
    let worker = start_worker(&aws, &[]).await;
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let layout = KeyLayout::default();
    let report_key = layout.report(job.id);
    wait_for("the report", Duration::from_secs(60), || async {
        aws.keys().await.contains(&report_key).then_some(())
    })
    .await;
    let report: RenderReport = serde_json::from_slice(&get(&aws, &report_key).await).unwrap();
    let image = get(&aws, &layout.image(job.id, ImageFormat::Png)).await;
    worker.stop().await;

    assert_eq!(report.job_id, job.id);
    assert_eq!(report.attempt, 1);
    assert_eq!(
        report.options_sha256,
        RenderReport::new(job.id, &job.url, &options, 1).options_sha256
    );
    assert_eq!(report.options["width"], 500);
    let documents: Vec<(String, Option<u16>)> = report
        .documents
        .iter()
        .map(|d| (d.url.clone(), d.status))
        .collect();
    assert_eq!(
        documents,
        [
            (site.url("/start"), Some(302)),
            (site.url("/middle"), Some(301)),
            (site.url("/page"), Some(200)),
        ],
        "{report:#?}"
    );
    assert_eq!(
        report.final_url.as_deref(),
        Some(site.url("/page").as_str())
    );
    assert_eq!(report.http_status, Some(200));
    let own = format!("127.0.0.1:{}", site.addr().port());
    assert!(
        report
            .connected
            .iter()
            .any(|c| c.target == own && c.address == own),
        "{:?}",
        report.connected
    );
    assert!(
        report
            .connected
            .iter()
            .all(|c| !c.address.starts_with("127.0.0.2")),
        "{:?}",
        report.connected
    );
    assert!(
        report
            .refused_by_policy
            .iter()
            .any(|r| r.target.contains(&refused_target)),
        "{:?}",
        report.refused_by_policy
    );
    assert_eq!(report.blocked_by_rules, 1, "{report:#?}");
    assert!(report.blocked_urls[0].ends_with("/blocked-ad.png"));
    assert!(
        report
            .failed_requests
            .iter()
            .any(|f| f.target == closed_target && f.kind == "connect"),
        "{:?}",
        report.failed_requests
    );
    assert_eq!(report.console_errors, Some(3), "{report:#?}");
    let t = &report.timings_ms;
    for (phase, value) in [
        ("queue_wait", t.queue_wait),
        ("page", t.page),
        ("navigation", t.navigation),
        ("wait", t.wait),
        ("capture", t.capture),
        ("upload", t.upload),
    ] {
        assert!(value.is_some(), "{phase}: {t:?}");
    }
    assert!(
        report
            .browser
            .as_deref()
            .unwrap_or_default()
            .contains("Chrome/"),
        "{:?}",
        report.browser
    );
    let facts = report.image.clone().unwrap();
    assert_eq!((facts.width, facts.height), png_size(&image));
    assert_eq!((facts.width, facts.height), (500, 400));
    assert_eq!(facts.size_bytes, image.len() as u64);
    assert_eq!(facts.sha256, sha256_hex(&image));
    assert_eq!(facts.content_type, "image/png");
    assert!(!report.truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_record_carries_the_report_of_its_attempt() {
    let aws = TestAws::start().await;
    let site = Fixtures::start().await;
    site.page("/gone", Page::html("gone").status(404));
    let job = JobMessage::new(
        site.url("/gone"),
        RenderOptions {
            fail_on_http_error: true,
            ..RenderOptions::default()
        },
    );
    let worker = start_worker(&aws, &[]).await;
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let key = KeyLayout::default().failure(job.id);
    wait_for("the failure record", Duration::from_secs(60), || async {
        keys(&aws).await.contains(&key).then_some(())
    })
    .await;
    worker.stop().await;
    let record = FailureRecord::from_json(&get(&aws, &key).await).unwrap();
    let report = record.report.expect("a report in the record");
    assert_eq!(report.http_status, Some(404));
    assert_eq!(report.documents.len(), 1, "{report:#?}");
    assert!(report.timings_ms.navigation.is_some());
    assert_eq!(report.timings_ms.upload, None, "nothing was uploaded");
    assert!(report.image.is_none());
    assert!(
        !aws.keys()
            .await
            .contains(&KeyLayout::default().report(job.id)),
        "no report object without an image"
    );
}
