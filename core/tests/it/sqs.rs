//! SQS through the clients `core` builds: batches, long polling, batch
//! deletes, visibility changes and redrive to the dead-letter queue.

use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use url2png_core::{JobMessage, RenderOptions};
use url2png_testkit::{TestAws, TestAwsOptions};

async fn send_jobs(aws: &TestAws, count: usize) -> Vec<JobMessage> {
    let jobs: Vec<JobMessage> = (0..count)
        .map(|i| JobMessage::new(format!("https://example.com/{i}"), RenderOptions::default()))
        .collect();
    for chunk in jobs.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, job)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(job.to_json())
                    .build()
                    .unwrap()
            })
            .collect();
        let out = aws
            .clients
            .sqs
            .send_message_batch()
            .queue_url(&aws.queue.url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed.is_empty(), "{:?}", out.failed);
        assert_eq!(out.successful.len(), chunk.len());
    }
    jobs
}

async fn receive(aws: &TestAws, queue: &str, max: i32, wait: i32) -> Vec<Message> {
    aws.clients
        .sqs
        .receive_message()
        .queue_url(queue)
        .max_number_of_messages(max)
        .wait_time_seconds(wait)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

fn receive_count(m: &Message) -> u32 {
    m.attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .expect("ApproximateReceiveCount")
}

async fn visible_count(aws: &TestAws, queue: &str) -> u64 {
    aws.clients
        .sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap()
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn batch_send_receive_and_delete() {
    let aws = TestAws::start().await;
    let sent = send_jobs(&aws, 15).await;

    let mut received = Vec::new();
    while received.len() < sent.len() {
        let batch = receive(&aws, &aws.queue.url, 10, 1).await;
        assert!(!batch.is_empty(), "queue ran dry after {}", received.len());
        assert!(batch.len() <= 10);
        received.extend(batch);
    }
    let mut ids: Vec<_> = received
        .iter()
        .map(|m| JobMessage::parse(m.body().unwrap().as_bytes()).unwrap().id)
        .collect();
    ids.sort();
    let mut expected: Vec<_> = sent.iter().map(|j| j.id).collect();
    expected.sort();
    assert_eq!(ids, expected, "every job arrives intact");

    for chunk in received.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap())
                    .build()
                    .unwrap()
            })
            .collect();
        let out = aws
            .clients
            .sqs
            .delete_message_batch()
            .queue_url(&aws.queue.url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed.is_empty(), "{:?}", out.failed);
        assert_eq!(out.successful.len(), chunk.len());
    }
    assert_eq!(visible_count(&aws, &aws.queue.url).await, 0);
    // Deleted for good: nothing comes back even once visibility would lapse.
    aws.clients
        .sqs
        .change_message_visibility()
        .queue_url(&aws.queue.url)
        .receipt_handle(received[0].receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .ok();
    assert!(receive(&aws, &aws.queue.url, 10, 0).await.is_empty());
}

#[tokio::test]
async fn long_poll_returns_a_message_sent_while_it_waits() {
    let aws = TestAws::start().await;
    let sqs = aws.clients.sqs.clone();
    let queue = aws.queue.url.clone();
    let poll = tokio::spawn(async move {
        sqs.receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(20)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    });
    // The scenario under test is a message that arrives while a poll waits,
    // so the send comes well inside the poll's 20 s. A receive that ignored
    // WaitTimeSeconds would already have returned empty.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = send_jobs(&aws, 1).await;
    let got = tokio::time::timeout(Duration::from_secs(25), poll)
        .await
        .expect("long poll returned")
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        JobMessage::parse(got[0].body().unwrap().as_bytes())
            .unwrap()
            .id,
        sent[0].id
    );
}

#[tokio::test]
async fn visibility_changes_hide_and_release_messages() {
    let aws = TestAws::start().await;
    send_jobs(&aws, 3).await;
    let first = receive(&aws, &aws.queue.url, 10, 1).await;
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|m| receive_count(m) == 1));

    // Extend two of them, release one at once.
    let entries = first
        .iter()
        .enumerate()
        .map(|(i, m)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap())
                .visibility_timeout(if i == 0 { 0 } else { 600 })
                .build()
                .unwrap()
        })
        .collect();
    let out = aws
        .clients
        .sqs
        .change_message_visibility_batch()
        .queue_url(&aws.queue.url)
        .set_entries(Some(entries))
        .send()
        .await
        .unwrap();
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    assert_eq!(out.successful.len(), 3);

    let again = receive(&aws, &aws.queue.url, 10, 1).await;
    assert_eq!(again.len(), 1, "only the released message is visible");
    assert_eq!(again[0].message_id(), first[0].message_id());
    assert_eq!(receive_count(&again[0]), 2);
}

#[tokio::test]
async fn redrive_moves_a_message_to_the_dead_letter_queue() {
    let aws = TestAws::start_with(TestAwsOptions {
        max_receive_count: 2,
        visibility_timeout_secs: 30,
    })
    .await;
    let sent = send_jobs(&aws, 1).await;
    for attempt in 1..=2 {
        let got = receive(&aws, &aws.queue.url, 1, 1).await;
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(receive_count(&got[0]), attempt);
        aws.clients
            .sqs
            .change_message_visibility()
            .queue_url(&aws.queue.url)
            .receipt_handle(got[0].receipt_handle().unwrap())
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
    }
    // A third receive exceeds maxReceiveCount: the message moves instead.
    assert!(receive(&aws, &aws.queue.url, 1, 1).await.is_empty());
    let dead = receive(&aws, &aws.queue.dlq_url, 1, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        JobMessage::parse(dead[0].body().unwrap().as_bytes())
            .unwrap()
            .id,
        sent[0].id
    );
}
