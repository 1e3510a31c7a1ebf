//! Jobs in, images out: throughput with concurrency, and every render
//! option of the contract.

use std::time::Duration;

use url2png_core::job::{ImageFormat, RenderOptions, WaitFor};
use url2png_core::{FailureReason, FailureRecord, JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jobs_with_concurrency_eight() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(
        &aws,
        &[
            "--browsers",
            "2",
            "--pages-per-browser",
            "4",
            "--concurrency",
            "8",
        ],
    )
    .await;
    let sizes = [
        (320u32, 240u32, 1.0f64),
        (800, 600, 1.0),
        (400, 300, 2.0),
        (1280, 720, 1.0),
        (200, 500, 1.5),
    ];
    let jobs: Vec<JobMessage> = (0..50)
        .map(|i| {
            let (width, height, device_scale_factor) = sizes[i % sizes.len()];
            JobMessage::new(
                fixtures.url(&format!("/page/{i}")),
                RenderOptions {
                    width,
                    height,
                    device_scale_factor,
                    ..RenderOptions::default()
                },
            )
        })
        .collect();
    send_jobs(&aws, &jobs).await;

    let layout = KeyLayout::default();
    wait_for("50 images", Duration::from_secs(240), || async {
        (keys(&aws).await.len() >= 50).then_some(())
    })
    .await;
    let stored = keys(&aws).await;
    assert_eq!(stored.len(), 50, "{stored:?}");
    assert!(
        stored.iter().all(|k| k.ends_with(".png")),
        "no failure records: {stored:?}"
    );
    for job in &jobs {
        let bytes = get(&aws, &layout.image(job.id, ImageFormat::Png)).await;
        let o = &job.options;
        let expected = (
            (f64::from(o.width) * o.device_scale_factor).round() as u32,
            (f64::from(o.height) * o.device_scale_factor).round() as u32,
        );
        assert_eq!(png_size(&bytes), expected, "{}", job.url);
    }
    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    assert_eq!(queue_counts(&aws, &aws.queue.dlq_url).await, (0, 0));
    for i in 0..50 {
        assert_eq!(
            fixtures.hits_on(&format!("/page/{i}")),
            1,
            "page {i} rendered once"
        );
    }
    assert_eq!(counter(&worker.metrics.jobs, &["stored"]), 50);
    worker.stop().await;
}

/// A page whose top-left pixel turns from white to red when `trigger`
/// (JavaScript) runs.
fn colour_page(trigger: &str) -> Page {
    Page::html(format!(
        "<!doctype html><html><body style=\"margin:0;background:#fff\">\
         <script>function go() {{ document.body.style.background = '#f00'; \
         const d = document.createElement('div'); d.id = 'late'; document.body.appendChild(d); }}\
         {trigger}</script></body></html>"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_render_option_but_the_timeout_is_honoured() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let worker = start_worker(&aws, &["--browsers", "1", "--pages-per-browser", "4"]).await;
    fixtures.page(
        "/tall",
        Page::html("<!doctype html><body style=\"margin:0\"><div style=\"height:3000px;background:linear-gradient(#00f,#0f0)\"></div></body>"),
    );
    fixtures.page("/selector", colour_page("setTimeout(go, 700);"));
    fixtures.page("/delay", colour_page("setTimeout(go, 500);"));
    // Far enough in the future that no scheduling delay under load can
    // let it fire before a screenshot taken at `load`.
    fixtures.page("/much-later", colour_page("setTimeout(go, 60000);"));
    fixtures.page(
        "/idle",
        colour_page(
            "setTimeout(() => fetch('/slow-xhr?delay_ms=800').then(r => r.text()).then(go), 100);",
        ),
    );
    fixtures.page("/missing", Page::html("<h1>not here</h1>").status(404));

    let job = |path: &str, options: RenderOptions| JobMessage::new(fixtures.url(path), options);
    let full = job(
        "/tall",
        RenderOptions {
            width: 500,
            height: 400,
            device_scale_factor: 2.0,
            full_page: true,
            ..RenderOptions::default()
        },
    );
    let clipped = job(
        "/tall",
        RenderOptions {
            width: 300,
            height: 200,
            full_page: true,
            full_page_max_height: 1000,
            ..RenderOptions::default()
        },
    );
    let jpeg = job(
        "/plain",
        RenderOptions {
            format: ImageFormat::Jpeg,
            quality: Some(50),
            ..RenderOptions::default()
        },
    );
    let webp = job(
        "/plain",
        RenderOptions {
            format: ImageFormat::Webp,
            ..RenderOptions::default()
        },
    );
    let selector = job(
        "/selector",
        RenderOptions {
            wait_for: WaitFor::Selector("#late".into()),
            width: 100,
            height: 100,
            ..RenderOptions::default()
        },
    );
    let no_wait = job(
        "/much-later",
        RenderOptions {
            width: 100,
            height: 100,
            ..RenderOptions::default()
        },
    );
    let delay = job(
        "/delay",
        RenderOptions {
            delay_ms: 1500,
            width: 100,
            height: 100,
            ..RenderOptions::default()
        },
    );
    let idle = job(
        "/idle",
        RenderOptions {
            wait_for: WaitFor::NetworkIdle,
            width: 100,
            height: 100,
            ..RenderOptions::default()
        },
    );
    let http_fail = job(
        "/missing",
        RenderOptions {
            fail_on_http_error: true,
            ..RenderOptions::default()
        },
    );
    let http_capture = job("/missing", RenderOptions::default());
    let bad_selector = job(
        "/plain",
        RenderOptions {
            wait_for: WaitFor::Selector("div[".into()),
            ..RenderOptions::default()
        },
    );
    let all = [
        &idle,
        &full,
        &clipped,
        &jpeg,
        &webp,
        &selector,
        &no_wait,
        &delay,
        &http_fail,
        &http_capture,
        &bad_selector,
    ];
    send_jobs(&aws, &all.iter().map(|j| (*j).clone()).collect::<Vec<_>>()).await;
    wait_for("every job finished", Duration::from_secs(120), || async {
        (keys(&aws).await.len() >= all.len()).then_some(())
    })
    .await;

    let layout = KeyLayout::default();
    let image = |j: &JobMessage| layout.image(j.id, j.options.format);
    assert_eq!(
        png_size(&get(&aws, &image(&full)).await),
        (1000, 6000),
        "full page keeps scale 2"
    );
    assert_eq!(
        png_size(&get(&aws, &image(&clipped)).await),
        (300, 1000),
        "clipped at the cap"
    );
    let head = aws
        .clients
        .s3
        .head_object()
        .bucket(&aws.bucket)
        .key(image(&clipped))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata()
            .unwrap()
            .get("truncated")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(head.content_type(), Some("image/png"));

    let jpeg_bytes = get(&aws, &image(&jpeg)).await;
    assert_eq!(&jpeg_bytes[..3], b"\xff\xd8\xff");
    let head = aws
        .clients
        .s3
        .head_object()
        .bucket(&aws.bucket)
        .key(image(&jpeg))
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("image/jpeg"));
    let webp_bytes = get(&aws, &image(&webp)).await;
    assert_eq!(
        (&webp_bytes[..4], &webp_bytes[8..12]),
        (&b"RIFF"[..], &b"WEBP"[..])
    );

    assert_eq!(
        top_left_pixel(&get(&aws, &image(&selector)).await),
        [255, 0, 0],
        "waited for the selector"
    );
    assert_eq!(
        top_left_pixel(&get(&aws, &image(&no_wait)).await),
        [255, 255, 255],
        "load does not wait for the timer"
    );
    assert_eq!(
        top_left_pixel(&get(&aws, &image(&delay)).await),
        [255, 0, 0],
        "the delay let the timer run"
    );
    assert_eq!(
        top_left_pixel(&get(&aws, &image(&idle)).await),
        [255, 0, 0],
        "network idle waited for the fetch"
    );

    let record = FailureRecord::from_json(&get(&aws, &layout.failure(http_fail.id)).await).unwrap();
    assert_eq!(record.reason, FailureReason::HttpError);
    assert!(record.message.contains("404"), "{}", record.message);
    let head = aws
        .clients
        .s3
        .head_object()
        .bucket(&aws.bucket)
        .key(image(&http_capture))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata()
            .unwrap()
            .get("http-status")
            .map(String::as_str),
        Some("404")
    );
    let record =
        FailureRecord::from_json(&get(&aws, &layout.failure(bad_selector.id)).await).unwrap();
    assert_eq!(record.reason, FailureReason::InvalidMessage);
    assert!(record.message.contains("selector"), "{}", record.message);

    wait_for("queue drained", Duration::from_secs(30), || async {
        (queue_counts(&aws, &aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    worker.stop().await;
}
