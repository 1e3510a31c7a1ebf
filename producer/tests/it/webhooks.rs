//! `webhook_url` at the API: refused unless webhooks are on and the URL
//! policy allows the receiver, kept apart in the cache, and the delivery's
//! state shown in the status document.

use super::delivery::post;
use super::*;
use uuid::Uuid;

const HOOKS: &[&str] = &["--webhook-queue-url", "http://127.0.0.1:1/hooks"];

#[tokio::test]
async fn a_webhook_is_refused_when_webhooks_are_off_or_the_policy_refuses_it() {
    let aws = TestAws::start().await;
    let off = start(&aws, &[]).await;
    let (reply, body) = post(
        off.addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/", "webhook_url": "https://example.com/hook"}),
    )
    .await;
    assert_eq!(reply.status, 422, "{body}");
    assert_eq!(
        (
            body["error"]["code"].as_str(),
            body["error"]["field"].as_str()
        ),
        (Some("webhooks_disabled"), Some("webhook_url"))
    );

    let on = start(&aws, HOOKS).await;
    for (webhook, code) in [
        (
            json!("http://169.254.169.254/latest/meta-data/"),
            "blocked_by_policy",
        ),
        (json!("http://10.0.0.7/hook"), "blocked_by_policy"),
        (json!("http://localhost/hook"), "blocked_by_policy"),
        (json!("http://[::1]:8080/hook"), "blocked_by_policy"),
        (json!("http://0x7f000001/hook"), "blocked_by_policy"),
        (json!("ftp://example.com/hook"), "invalid"),
        (json!("/relative"), "invalid"),
        (json!(42), "wrong_type"),
    ] {
        let (reply, body) = post(
            on.addr,
            "/v1/screenshots",
            &[],
            &json!({"url": "https://example.com/", "webhook_url": webhook}),
        )
        .await;
        assert_eq!(reply.status, 422, "{webhook}: {body}");
        assert_eq!(
            (
                body["error"]["code"].as_str(),
                body["error"]["field"].as_str()
            ),
            (Some(code), Some("webhook_url")),
            "{webhook}: {body}"
        );
    }
    assert_eq!(queued(&aws).await, 0);

    let (reply, body) = post(
        on.addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/", "webhook_url": "https://example.com/hook"}),
    )
    .await;
    assert_eq!(reply.status, 202, "{body}");
    let jobs = drain(&aws).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].webhook_url.as_deref(),
        Some("https://example.com/hook")
    );
}

#[tokio::test]
async fn identical_submits_share_a_job_only_when_they_name_the_same_receiver() {
    let aws = TestAws::start().await;
    let producer = start(&aws, HOOKS).await;
    let submit = |webhook: Option<&str>| {
        let mut body = json!({"url": "https://example.com/shared", "cache_ttl": 600});
        if let Some(webhook) = webhook {
            body["webhook_url"] = json!(webhook);
        }
        async move {
            let (reply, body) = post(producer.addr, "/v1/screenshots", &[], &body).await;
            assert_eq!(reply.status, 202, "{body}");
            (
                body["id"].as_str().unwrap().to_owned(),
                body["cache"].clone(),
            )
        }
    };
    let (a, cache) = submit(Some("https://a.example/hook")).await;
    assert_eq!(cache, "miss");
    let (again, cache) = submit(Some("https://a.example/hook")).await;
    assert_eq!(
        (again.as_str(), cache.as_str()),
        (a.as_str(), Some("shared"))
    );
    let (b, cache) = submit(Some("https://b.example/hook")).await;
    assert_eq!(cache, "miss");
    let (none, cache) = submit(None).await;
    assert_eq!(cache, "miss");
    assert!(a != b && b != none && a != none);
    assert_eq!(drain(&aws).await.len(), 3);
}

#[tokio::test]
async fn the_status_document_shows_where_the_webhook_delivery_stands() {
    let aws = TestAws::start().await;
    let producer = start(&aws, HOOKS).await;
    let (reply, body) = post(
        producer.addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/", "webhook_url": "https://example.com/hook"}),
    )
    .await;
    assert_eq!(reply.status, 202, "{body}");
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    let status_path = format!("/v1/screenshots/{id}");
    let (_, pending) = get_json(producer.addr, &status_path).await;
    assert_eq!(pending["status"], "pending");
    assert!(pending.get("webhook").is_none(), "{pending}");

    // Stored as a worker stores it: the image names its webhook.
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(KeyLayout::default().image(id, ImageFormat::Png))
        .content_type("image/png")
        .metadata(
            url2png_core::status::WEBHOOK_METADATA,
            "https://example.com/hook",
        )
        .body(ByteStream::from_static(b"\x89PNG fake"))
        .send()
        .await
        .unwrap();
    let (_, done) = get_json(producer.addr, &status_path).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        (
            done["webhook"]["state"].as_str(),
            done["webhook"]["attempts"].as_u64()
        ),
        (Some("pending"), Some(0)),
        "{done}"
    );
    assert_eq!(done["webhook"]["url"], "https://example.com/hook");

    let record = url2png_core::status::WebhookState {
        url: "https://example.com/hook".into(),
        state: url2png_core::status::DeliveryState::Retrying,
        attempts: 2,
        last_attempt_at: Some("2026-12-07T06:00:00Z".into()),
        last_status: Some(503),
        last_error: Some("the receiver answered 503".into()),
        next_attempt_at: Some("2026-12-07T06:00:40Z".into()),
    };
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(KeyLayout::default().webhook(id))
        .body(ByteStream::from(serde_json::to_vec(&record).unwrap()))
        .send()
        .await
        .unwrap();
    let (_, done) = get_json(producer.addr, &status_path).await;
    let shown: url2png_core::status::WebhookState =
        serde_json::from_value(done["webhook"].clone()).unwrap();
    assert_eq!(shown, record);
}
