//! Answers without a second render: `cache_ttl`, `force`, identical
//! submits sharing one job and `Idempotency-Key`, against the emulator's S3
//! (conditional writes) and SQS.

use super::*;
use url2png_testkit::http::{Reply, request_with};
use uuid::Uuid;

/// POST `body` to `path` with `headers` besides the JSON content type.
pub(crate) async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (Reply, Value) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let reply = request_with(addr, "POST", path, &all, body.to_string().as_bytes()).await;
    let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply, json)
}

fn id_of(body: &Value) -> Uuid {
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an id in {body}"))
        .parse()
        .unwrap()
}

/// Store an image for `id` as a worker would.
pub(crate) async fn store_image(aws: &TestAws, id: Uuid) {
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(KeyLayout::default().image(id, ImageFormat::Png))
        .content_type("image/png")
        .metadata("width", "1280")
        .body(ByteStream::from_static(b"\x89PNG fake"))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_fresh_result_is_answered_from_the_cache_and_force_renders_again() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let addr = producer.addr;
    let (reply, first) = post(
        addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/a", "width": 800, "cache_ttl": 600}),
    )
    .await;
    assert_eq!(reply.status, 202, "{first}");
    assert_eq!(first["cache"], "miss");
    let id = id_of(&first);
    let jobs = drain(&aws).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id, id);

    // Pending: the same request, spelled otherwise, shares the job.
    let same =
        json!({"url": "HTTPS://Example.com:443/a", "options": {"width": 800, "cache_ttl": 600}});
    let (reply, body) = post(addr, "/v1/screenshots", &[], &same).await;
    assert_eq!(
        (reply.status, body["cache"].as_str()),
        (202, Some("shared")),
        "{body}"
    );
    assert_eq!(id_of(&body), id);

    // Done: the status of the result, and nothing queued.
    store_image(&aws, id).await;
    let (reply, body) = post(addr, "/v1/screenshots", &[], &same).await;
    assert_eq!(reply.status, 200, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["cache"].as_str()),
        (Some("done"), Some("hit"))
    );
    assert_eq!(id_of(&body), id);
    assert!(
        body["image_url"]
            .as_str()
            .unwrap()
            .contains(&id.to_string())
    );
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/screenshots/{id}").as_str())
    );

    // Without cache_ttl, with other options, or with a ttl shorter than the
    // result's age: a new job each.
    let (_, plain) = post(
        addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/a", "width": 800}),
    )
    .await;
    assert!(plain.get("cache").is_none(), "{plain}");
    let (_, other) = post(
        addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/a", "width": 801, "cache_ttl": 600}),
    )
    .await;
    assert_eq!(other["cache"], "miss");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, short) = post(
        addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/a", "width": 800, "cache_ttl": 1}),
    )
    .await;
    assert_eq!(short["cache"], "miss", "the result is older than 1 s");
    let short_id = id_of(&short);
    let queued_ids: Vec<Uuid> = drain(&aws).await.iter().map(|j| j.id).collect();
    assert_eq!(queued_ids.len(), 3, "{queued_ids:?}");
    assert!(!queued_ids.contains(&id));

    // The newest job is the cache entry now; force replaces it again.
    let (reply, forced) = post(
        addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/a", "width": 800, "cache_ttl": 600, "force": true}),
    )
    .await;
    assert_eq!(
        (reply.status, forced["cache"].as_str()),
        (202, Some("miss"))
    );
    let forced_id = id_of(&forced);
    assert!(forced_id != id && forced_id != short_id);
    let (_, after) = post(addr, "/v1/screenshots", &[], &same).await;
    assert_eq!(
        (after["cache"].as_str(), id_of(&after)),
        (Some("shared"), forced_id)
    );
    assert_eq!(drain(&aws).await.len(), 1, "only the forced job was queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_submits_become_one_job() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let addr = producer.addr;
    let body = json!({"url": "https://example.com/same", "cache_ttl": 3600});
    let answers = futures::future::join_all(
        (0..16).map(|_| async { post(addr, "/v1/screenshots", &[], &body).await }),
    )
    .await;
    let mut ids = std::collections::HashSet::new();
    let mut misses = 0;
    for (reply, body) in &answers {
        assert_eq!(reply.status, 202, "{body}");
        ids.insert(id_of(body));
        misses += usize::from(body["cache"] == "miss");
    }
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(misses, 1);
    let jobs = drain(&aws).await;
    assert_eq!(jobs.len(), 1);
    assert!(ids.contains(&jobs[0].id));
}

#[tokio::test]
async fn a_failed_result_is_not_reused_and_clients_do_not_share_results() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &["--api-keys", "alice,bob"]).await;
    let addr = producer.addr;
    let body = json!({"url": "https://example.com/", "cache_ttl": 600});
    let alice = [("Authorization", "Bearer alice")];
    let bob = [("Authorization", "Bearer bob")];
    let (_, first) = post(addr, "/v1/screenshots", &alice, &body).await;
    let id = id_of(&first);
    let (_, other_client) = post(addr, "/v1/screenshots", &bob, &body).await;
    assert_eq!(other_client["cache"], "miss", "{other_client}");
    assert_ne!(id_of(&other_client), id);

    let record = FailureRecord {
        id,
        url: Some("https://example.com/".into()),
        reason: FailureReason::Timeout,
        message: "timed out".into(),
        detail: None,
        phase: None,
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
        .key(KeyLayout::default().failure(id))
        .body(ByteStream::from(record.to_json().into_bytes()))
        .send()
        .await
        .unwrap();
    let (reply, again) = post(addr, "/v1/screenshots", &alice, &body).await;
    assert_eq!(
        (reply.status, again["cache"].as_str()),
        (202, Some("miss")),
        "{again}"
    );
    assert_ne!(id_of(&again), id);
    assert_eq!(drain(&aws).await.len(), 3);
}

#[tokio::test]
async fn a_batch_answers_each_job_from_the_cache_or_the_queue() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let addr = producer.addr;
    let (_, first) = post(
        addr,
        "/v1/screenshots",
        &[],
        &json!({"url": "https://example.com/done", "cache_ttl": 600}),
    )
    .await;
    store_image(&aws, id_of(&first)).await;
    drain(&aws).await;
    let (reply, batch) = post(
        addr,
        "/v1/screenshots/batch",
        &[],
        &json!({"jobs": [
            {"url": "https://example.com/done", "cache_ttl": 600},
            {"url": "https://example.com/new", "cache_ttl": 600},
            {"url": "https://example.com/done", "cache_ttl": "soon"},
        ]}),
    )
    .await;
    assert_eq!(reply.status, 202, "{batch}");
    let results = batch["results"].as_array().unwrap();
    assert_eq!(
        (results[0]["status"].as_str(), results[0]["cache"].as_str()),
        (Some("done"), Some("hit"))
    );
    assert_eq!(id_of(&results[0]), id_of(&first));
    assert_eq!(results[1]["cache"], "miss");
    assert_eq!(results[2]["error"]["field"], "cache_ttl");
    let jobs = drain(&aws).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id, id_of(&results[1]));
}

#[tokio::test]
async fn an_entry_whose_job_was_not_queued_is_removed() {
    let aws = TestAws::start().await;
    let producer = start_on_missing_queue(&aws, &[]).await;
    let addr = producer.addr;
    let body = json!({"url": "https://example.com/", "cache_ttl": 600});
    let (reply, refused) = post(addr, "/v1/screenshots", &[], &body).await;
    assert_eq!(reply.status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "queue_unavailable");
    let entries: Vec<String> = aws
        .keys()
        .await
        .into_iter()
        .filter(|k| k.starts_with("cache/"))
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}

fn idempotency_records(keys: &[String]) -> usize {
    keys.iter()
        .filter(|k| k.starts_with("idempotency/"))
        .count()
}

#[tokio::test]
async fn a_repeated_idempotency_key_gets_the_first_answer_and_queues_once() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &["--api-keys", "alice,bob"]).await;
    let addr = producer.addr;
    let alice = |key: &'static str| [("Authorization", "Bearer alice"), ("Idempotency-Key", key)];
    let body = json!({"url": "https://example.com/order/17"});
    let (first, first_body) = post(addr, "/v1/screenshots", &alice("order-17"), &body).await;
    assert_eq!(first.status, 202, "{first_body}");
    assert_eq!(first.header(idempotent_replayed()), None);
    let (again, again_body) = post(addr, "/v1/screenshots", &alice("order-17"), &body).await;
    assert_eq!(again.status, 202);
    assert_eq!(again_body, first_body);
    assert_eq!(again.header(idempotent_replayed()), Some("true"));
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(drain(&aws).await.len(), 1, "the repeat queued nothing");

    // The same key with another body is a client error, not a replay.
    let (reused, reused_body) = post(
        addr,
        "/v1/screenshots",
        &alice("order-17"),
        &json!({"url": "https://example.com/order/18"}),
    )
    .await;
    assert_eq!(reused.status, 422, "{reused_body}");
    assert_eq!(reused_body["error"]["code"], "idempotency_key_reused");

    // Another client's key of the same name is its own.
    let (bob, bob_body) = post(
        addr,
        "/v1/screenshots",
        &[
            ("Authorization", "Bearer bob"),
            ("Idempotency-Key", "order-17"),
        ],
        &body,
    )
    .await;
    assert_eq!(bob.status, 202);
    assert_eq!(bob.header(idempotent_replayed()), None);
    assert_ne!(bob_body["id"], first_body["id"]);

    // A refusal is an answer too; a batch is keyed like a single submit.
    let bad = json!({"url": "https://example.com/", "width": 0});
    let (refused, refused_body) = post(addr, "/v1/screenshots", &alice("bad-1"), &bad).await;
    assert_eq!(refused.status, 422);
    let (replayed, replayed_body) = post(addr, "/v1/screenshots", &alice("bad-1"), &bad).await;
    assert_eq!(
        (replayed.status, replayed.header(idempotent_replayed())),
        (422, Some("true"))
    );
    assert_eq!(replayed_body, refused_body);
    let batch =
        json!({"jobs": [{"url": "https://example.com/1"}, {"url": "https://example.com/2"}]});
    let (one, one_body) = post(addr, "/v1/screenshots/batch", &alice("batch-1"), &batch).await;
    let (two, two_body) = post(addr, "/v1/screenshots/batch", &alice("batch-1"), &batch).await;
    assert_eq!((one.status, two.status), (202, 202));
    assert_eq!(one_body, two_body);
    assert_eq!(drain(&aws).await.len(), 1 + 2, "bob's job and one batch");

    let (invalid, invalid_body) = post(
        addr,
        "/v1/screenshots",
        &[
            ("Authorization", "Bearer alice"),
            ("Idempotency-Key", "has spaces"),
        ],
        &body,
    )
    .await;
    assert_eq!(invalid.status, 400, "{invalid_body}");
    assert_eq!(invalid_body["error"]["field"], "Idempotency-Key");
}

fn idempotent_replayed() -> &'static str {
    url2png_producer::idempotency::REPLAYED
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_queue_one_job() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &[]).await;
    let addr = producer.addr;
    let body = json!({"url": "https://example.com/once"});
    let answers = futures::future::join_all((0..12).map(|_| async {
        post(
            addr,
            "/v1/screenshots",
            &[("Idempotency-Key", "k-1")],
            &body,
        )
        .await
    }))
    .await;
    let mut ids = std::collections::HashSet::new();
    for (reply, body) in &answers {
        match reply.status {
            202 => {
                ids.insert(id_of(body));
            }
            409 => {
                assert_eq!(body["error"]["code"], "idempotency_in_progress");
                assert_eq!(reply.header("retry-after"), Some("1"));
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "{answers:?}");
    let jobs = drain(&aws).await;
    assert_eq!(jobs.len(), 1);
    assert!(ids.contains(&jobs[0].id));
}

#[tokio::test]
async fn an_idempotency_key_whose_request_failed_on_the_server_can_be_retried() {
    let aws = TestAws::start().await;
    let producer = start_on_missing_queue(&aws, &[]).await;
    let addr = producer.addr;
    let body = json!({"url": "https://example.com/"});
    for _ in 0..2 {
        let (reply, refused) =
            post(addr, "/v1/screenshots", &[("Idempotency-Key", "k")], &body).await;
        assert_eq!(reply.status, 503, "{refused}");
        assert_eq!(refused["error"]["code"], "queue_unavailable");
        assert_eq!(
            reply.header(idempotent_replayed()),
            None,
            "run again, not replayed"
        );
    }
    assert_eq!(idempotency_records(&aws.keys().await), 0);
}
