//! Acknowledging messages: batched deletes, and releases with a new
//! visibility.
//!
//! A delete is queued only after the job's image or failure record is
//! stored. Deletes go out in `DeleteMessageBatch` calls of up to 10, when
//! 10 are waiting or `flush_interval` after the first one was queued. Each
//! message leaves the heartbeat table just before its delete is sent and
//! goes back in if the delete fails, so it stays invisible until a retry
//! succeeds.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::heartbeat::Heartbeat;
use crate::metrics::Metrics;

/// Attempts at deleting one message before it is left to come back (a
/// redelivered message whose image exists is acknowledged without a render).
const DELETE_ATTEMPTS: u32 = 5;

enum Msg {
    Delete(Pending),
    /// Send what is queued and stop.
    Close,
}

struct Pending {
    message_id: String,
    receipt_handle: String,
    attempts: u32,
}

/// Queues deletes; cheap to clone. [`Acker::close`] (or dropping every
/// clone) sends what is queued and stops the task.
#[derive(Debug, Clone)]
pub struct Acker {
    tx: mpsc::UnboundedSender<Msg>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    heartbeat: Heartbeat,
    metrics: Metrics,
}

impl Acker {
    /// Start the delete task.
    pub fn start(
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        heartbeat: Heartbeat,
        metrics: Metrics,
        flush_interval: Duration,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            rx,
            sqs.clone(),
            queue_url.clone(),
            heartbeat.clone(),
            metrics.clone(),
            flush_interval,
        ));
        (
            Self {
                tx,
                sqs,
                queue_url,
                heartbeat,
                metrics,
            },
            task,
        )
    }

    /// Queue a delete. The job is done with the message.
    pub fn delete(&self, message_id: &str, receipt_handle: &str) {
        let _ = self.tx.send(Msg::Delete(Pending {
            message_id: message_id.to_owned(),
            receipt_handle: receipt_handle.to_owned(),
            attempts: 0,
        }));
    }

    /// Send every queued delete, then stop the task.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }

    /// Hand a message back: stop its heartbeat and make it visible again in
    /// `visibility_secs` (0: at once, for another worker).
    pub async fn release(&self, message_id: &str, receipt_handle: &str, visibility_secs: i32) {
        self.heartbeat.untrack(message_id).await;
        let started = Instant::now();
        let result = self
            .sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(visibility_secs)
            .send()
            .await;
        self.metrics
            .aws_call("sqs", "ChangeMessageVisibility", started, &result);
        if let Err(e) = result {
            // It comes back anyway when its current visibility runs out.
            tracing::warn!(message_id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "release failed");
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    heartbeat: Heartbeat,
    metrics: Metrics,
    flush_interval: Duration,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(10);
    let mut retry: Vec<Pending> = Vec::new();
    loop {
        // Wait for the first entry, then fill up to 10 or until the interval.
        if batch.is_empty() {
            if let Some(p) = retry.pop() {
                batch.push(p);
            } else {
                match rx.recv().await {
                    Some(Msg::Delete(p)) => batch.push(p),
                    Some(Msg::Close) | None => return,
                }
            }
        }
        let deadline = tokio::time::Instant::now() + flush_interval;
        let mut closed = false;
        while batch.len() < 10 {
            if let Some(p) = retry.pop() {
                batch.push(p);
                continue;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Delete(p))) => batch.push(p),
                Ok(Some(Msg::Close) | None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let failed = flush(
            &sqs,
            &queue_url,
            &heartbeat,
            &metrics,
            std::mem::take(&mut batch),
        )
        .await;
        for mut p in failed {
            p.attempts += 1;
            if p.attempts < DELETE_ATTEMPTS {
                retry.push(p);
            } else {
                tracing::error!(message_id = %p.message_id, "giving up deleting; the message will be delivered again");
            }
        }
        if closed {
            // Last round: everything left, then stop.
            while !retry.is_empty() {
                let take = retry.len().min(10);
                let chunk: Vec<_> = retry.drain(..take).collect();
                let failed = flush(&sqs, &queue_url, &heartbeat, &metrics, chunk).await;
                retry.extend(failed.into_iter().filter_map(|mut p| {
                    p.attempts += 1;
                    (p.attempts < DELETE_ATTEMPTS).then_some(p)
                }));
            }
            return;
        }
        if !retry.is_empty() {
            // Failing deletes point at SQS trouble: do not spin.
            tokio::time::sleep(flush_interval.max(Duration::from_millis(200))).await;
        }
    }
}

/// Delete `batch` (at most 10); returns the entries to try again.
async fn flush(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    heartbeat: &Heartbeat,
    metrics: &Metrics,
    batch: Vec<Pending>,
) -> Vec<Pending> {
    let mut untracked = Vec::with_capacity(batch.len());
    for p in &batch {
        untracked.push(heartbeat.untrack(&p.message_id).await);
    }
    let entries: Vec<_> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&p.receipt_handle)
                .build()
                .ok()
        })
        .collect();
    let started = Instant::now();
    let result = sqs
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await;
    metrics.aws_call("sqs", "DeleteMessageBatch", started, &result);
    let mut retry_index = Vec::new();
    match result {
        Ok(out) => {
            for failed in out.failed {
                let Ok(i) = failed.id.parse::<usize>() else {
                    continue;
                };
                if failed.sender_fault {
                    // An invalid handle will not become valid: the message
                    // comes back and is acknowledged as a duplicate then.
                    tracing::warn!(message_id = %batch[i].message_id, code = %failed.code, "delete refused");
                } else {
                    retry_index.push(i);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), messages = batch.len(), "delete failed; will retry");
            retry_index.extend(0..batch.len());
        }
    }
    let mut retry = Vec::new();
    for (i, (p, entry)) in batch.into_iter().zip(untracked).enumerate() {
        if retry_index.contains(&i) {
            if let Some(entry) = entry {
                heartbeat.retrack(&p.message_id, entry).await;
            }
            retry.push(p);
        }
    }
    retry
}
