//! What a submit answers when time runs out or SQS answers badly, and what
//! is then in the queue: a 504 leaves nothing queued, a job on the wire is
//! answered with SQS's real outcome, an entry SQS refuses is sent again
//! alone.

use super::*;
use url2png_core::aws::{AwsOptions, Clients};
use url2png_testkit::AwsProxy;
use uuid::Uuid;

/// A producer whose AWS calls go through `proxy`, with `attempt` as the
/// limit on one attempt of a call.
async fn start_behind(
    aws: &TestAws,
    proxy: &AwsProxy,
    attempt: Duration,
    extra: &[&str],
) -> Running {
    let clients = Clients::load(&AwsOptions {
        attempt_timeout: Some(attempt),
        ..AwsOptions::emulator(proxy.endpoint())
    })
    .await;
    start_with(aws, clients, extra).await
}

fn sqs_calls(producer: &Running, operation: &str, outcome: &str) -> f64 {
    metric(
        &producer.registry,
        "url2png_producer_sqs_requests_total",
        &[("operation", operation), ("result", outcome)],
    )
}

#[tokio::test]
async fn a_body_slower_than_the_request_timeout_gets_504_and_nothing_is_queued() {
    let aws = TestAws::start().await;
    let producer = start(&aws, &["--request-timeout-seconds", "1"]).await;
    let body = json!({"url": "https://example.com/"}).to_string();
    let mut stream = tokio::net::TcpStream::connect(producer.addr).await.unwrap();
    let head = format!(
        "POST /v1/screenshots HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Half the body, then nothing: the rest never comes.
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut answer))
        .await
        .expect("answered while the body was still missing")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
    assert_eq!(queued(&aws).await, 0);
    let calls = sqs_calls(&producer, "SendMessageBatch", "ok")
        + sqs_calls(&producer, "SendMessageBatch", "error");
    assert_eq!(calls, 0.0, "no send was attempted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_slower_than_the_request_timeout_gets_its_real_answer_not_504() {
    let aws = TestAws::start().await;
    let proxy = AwsProxy::start(aws.moto.endpoint()).await;
    proxy.delay_answers("SendMessageBatch", Duration::from_millis(2500));
    let producer = start_behind(
        &aws,
        &proxy,
        Duration::from_secs(10),
        &["--request-timeout-seconds", "1"],
    )
    .await;
    let (status, _, body) = post_json(
        producer.addr,
        "/v1/screenshots",
        &json!({"url": "https://example.com/slow-queue"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let queued: Vec<Uuid> = drain(&aws).await.iter().map(|j| j.id).collect();
    assert_eq!(
        queued,
        [body["id"].as_str().unwrap().parse::<Uuid>().unwrap()]
    );
    assert_eq!(proxy.calls("SendMessageBatch"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_answer_never_comes_is_503_unconfirmed_naming_the_job_that_was_queued() {
    let aws = TestAws::start().await;
    let proxy = AwsProxy::start(aws.moto.endpoint()).await;
    proxy.swallow_answers("SendMessageBatch");
    let producer = start_behind(
        &aws,
        &proxy,
        Duration::from_secs(1),
        &["--request-timeout-seconds", "1"],
    )
    .await;
    let (status, headers, body) = tokio::time::timeout(
        Duration::from_secs(60),
        post_json(
            producer.addr,
            "/v1/screenshots",
            &json!({"url": "https://example.com/unanswered"}),
        ),
    )
    .await
    .expect("answered once the SDK gave up");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "queue_unconfirmed");
    assert!(header(&headers, "retry-after").is_some());
    // The message names the status URL of the job that may run; the job
    // is in the queue (once per attempt the SDK made).
    let message = body["error"]["message"].as_str().unwrap();
    let jobs = drain(&aws).await;
    assert!(!jobs.is_empty(), "the call took effect");
    assert!(
        jobs.iter()
            .all(|j| j.url == "https://example.com/unanswered")
    );
    let id = jobs[0].id;
    assert!(
        jobs.iter().all(|j| j.id == id),
        "one job, maybe more copies"
    );
    assert!(
        message.contains(&format!("/v1/screenshots/{id}")),
        "{message}"
    );
    assert_eq!(jobs.len(), proxy.calls("SendMessageBatch"));
}

/// Submit `n` jobs in one batch request; (accepted ids, refused codes).
async fn submit_batch_of(producer: &Running, n: usize) -> (Vec<Uuid>, Vec<String>) {
    let jobs: Vec<Value> = (0..n)
        .map(|i| json!({"url": format!("https://example.com/entry/{i}")}))
        .collect();
    let (status, _, body) = post_json(
        producer.addr,
        "/v1/screenshots/batch",
        &json!({ "jobs": jobs }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let results = body["results"].as_array().unwrap();
    let accepted = results
        .iter()
        .filter(|r| r["accepted"] == true)
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let refused = results
        .iter()
        .filter(|r| r["accepted"] == false)
        .map(|r| r["error"]["code"].as_str().unwrap().to_owned())
        .collect();
    (accepted, refused)
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_entry_sqs_refuses_is_sent_again_alone_and_queued_once() {
    let aws = TestAws::start().await;
    let proxy = AwsProxy::start(aws.moto.endpoint()).await;
    proxy.spoil("SendMessageBatch", &["0"]);
    let producer = start_behind(
        &aws,
        &proxy,
        Duration::from_secs(10),
        &["--send-linger-ms", "200"],
    )
    .await;
    let (accepted, refused) = submit_batch_of(&producer, 4).await;
    assert_eq!(accepted.len(), 4, "refused: {refused:?}");
    let queued: Vec<Uuid> = drain(&aws).await.iter().map(|j| j.id).collect();
    assert_eq!(sorted(queued), sorted(accepted), "each job queued once");
    assert_eq!(sqs_calls(&producer, "SendMessage", "ok"), 1.0);
    assert_eq!(proxy.calls("SendMessage"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sqs_refuses_in_the_batch_and_alone_is_refused_and_the_rest_are_queued() {
    let aws = TestAws::start().await;
    let proxy = AwsProxy::start(aws.moto.endpoint()).await;
    proxy.spoil("SendMessageBatch", &["1"]);
    proxy.spoil("SendMessage", &[]);
    let producer = start_behind(
        &aws,
        &proxy,
        Duration::from_secs(10),
        &["--send-linger-ms", "200"],
    )
    .await;
    let (accepted, refused) = submit_batch_of(&producer, 4).await;
    assert_eq!(accepted.len(), 3, "refused: {refused:?}");
    assert_eq!(refused, ["queue_unavailable"]);
    let queued: Vec<Uuid> = drain(&aws).await.iter().map(|j| j.id).collect();
    assert_eq!(sorted(queued), sorted(accepted));
    assert_eq!(sqs_calls(&producer, "SendMessage", "error"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_waiting_for_its_batch_when_its_request_times_out_is_left_out_of_it() {
    let aws = TestAws::start().await;
    // The batch lingers almost as long as a request may take, so a job
    // whose body came in late is still waiting when its request ends.
    let producer = start(
        &aws,
        &["--request-timeout-seconds", "1", "--send-linger-ms", "999"],
    )
    .await;
    let late = json!({"url": "https://example.com/late"}).to_string();
    let mut stream = tokio::net::TcpStream::connect(producer.addr).await.unwrap();
    let head = format!(
        "POST /v1/screenshots HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        late.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // a slow client, not a wait
    stream.write_all(late.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    // A prompt submit now joins the same batch, which goes without the
    // job whose request ended.
    let (status, _, body) = post_json(
        producer.addr,
        "/v1/screenshots",
        &json!({"url": "https://example.com/prompt"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let batches = sqs_calls(&producer, "SendMessageBatch", "ok");
    assert_eq!(batches, 1.0, "both jobs were in one batch");
    let queued: Vec<String> = drain(&aws).await.into_iter().map(|j| j.url).collect();
    assert_eq!(queued, ["https://example.com/prompt"]);
}
