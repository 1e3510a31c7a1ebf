//! Synchronous renders (`?wait=`) against a real worker and Chromium.

use super::delivery::post;
use super::*;
use url2png_testkit::{Fixtures, Page};

/// The producer's HEADs of images that are not there (yet).
fn heads_of(producer: &Running) -> usize {
    metric(
        &producer.registry,
        "url2png_producer_s3_requests_total",
        &[("operation", "HeadObject"), ("status", "404")],
    ) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_that_finishes_within_wait_is_answered_with_its_status_or_its_image() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page("/missing", Page::html("gone").status(404));
    let producer = start(&aws, &["--egress-allow", "127.0.0.1/32"]).await;
    let (stop, worker) = start_worker(&aws).await;
    let addr = producer.addr;

    let (reply, body) = post(
        addr,
        "/v1/screenshots?wait=60",
        &[],
        &json!({"url": fixtures.url("/page"), "width": 640, "height": 480}),
    )
    .await;
    assert_eq!(reply.status, 200, "{body}");
    assert_eq!(body["status"], "done");
    assert_eq!(body["content_type"], "image/png");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/screenshots/{id}").as_str())
    );
    // Its render report, by the status's link.
    let report_url = body["report_url"].as_str().unwrap().to_owned();
    assert_eq!(report_url, format!("/v1/screenshots/{id}/report"));
    let (status, report) = get_json(addr, &report_url).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["job_id"], id.as_str());
    assert_eq!(
        (
            report["image"]["width"].as_u64(),
            report["image"]["height"].as_u64()
        ),
        (Some(640), Some(480))
    );
    assert_eq!(report["final_url"], fixtures.url("/page"));

    // By Accept, the image itself.
    let reply = url2png_testkit::http::request_with(
        addr,
        "POST",
        "/v1/screenshots?wait=60",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "image/png, application/json;q=0.5"),
        ],
        json!({"url": fixtures.url("/page"), "width": 320, "height": 200})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("image/png"));
    let image = image::load_from_memory(&reply.body).expect("a PNG");
    assert_eq!((image.width(), image.height()), (320, 200));

    // A job that fails within the wait is answered with its failure.
    let (reply, body) = post(
        addr,
        "/v1/screenshots?wait=60",
        &[],
        &json!({"url": fixtures.url("/missing"), "fail_on_http_error": true}),
    )
    .await;
    assert_eq!(reply.status, 200, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["reason"].as_str()),
        (Some("failed"), Some("http_error"))
    );
    assert_eq!(body["http_status"], 404);
    let (status, report) = get_json(addr, body["report_url"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["http_status"], 404);
    assert!(report.get("image").is_none(), "{report}");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_slower_than_wait_gets_202_and_waiters_of_one_job_share_a_backed_off_poll() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let addr = producer.addr;
    // No worker runs: the job stays pending for as long as the test wants.
    let (reply, body) = post(
        addr,
        "/v1/screenshots?wait=3",
        &[],
        &json!({"url": "https://example.com/slow", "cache_ttl": 600}),
    )
    .await;
    assert_eq!(reply.status, 202, "{body}");
    assert_eq!(body["status"], "pending");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, report) = get_json(addr, &format!("/v1/screenshots/{id}/report")).await;
    assert_eq!(
        (status, report["error"]["code"].as_str()),
        (404, Some("pending"))
    );
    let alone = heads_of(&producer);
    // 200 ms growing by half up to 1 s: 5 polls in 3 s, not a tight loop.
    assert!((3..=7).contains(&alone), "{alone} HEADs in 3 s");

    // Four requests for the same job (sharing it through the cache) wait
    // together on one poll.
    let before = heads_of(&producer);
    let answers = futures::future::join_all((0..4).map(|_| async {
        post(
            addr,
            "/v1/screenshots?wait=3",
            &[],
            &json!({"url": "https://example.com/slow", "cache_ttl": 600}),
        )
        .await
    }))
    .await;
    for (reply, body) in &answers {
        assert_eq!(
            (reply.status, body["cache"].as_str()),
            (202, Some("shared"))
        );
        assert_eq!(body["id"], id.as_str());
    }
    let shared = heads_of(&producer) - before;
    // Each request's own cache lookup is one HEAD; the waiting adds one
    // poll's worth, not four.
    assert!(shared <= 4 + 7, "{shared} HEADs for four waiters");
    assert_eq!(drain(&aws).await.len(), 1);

    // wait is bounded.
    for bad in ["61", "-1", "soon"] {
        let (reply, body) = post(
            addr,
            &format!("/v1/screenshots?wait={bad}"),
            &[],
            &json!({"url": "https://example.com/"}),
        )
        .await;
        assert_eq!(reply.status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["field"], "wait");
    }
    assert_eq!(queued(&aws).await, 0, "a refused wait queued nothing");
}
