//! Acknowledging messages: batched deletes, and releases with a new
//! visibility.
//!
//! A delete is queued only after the job's image or failure record is
//! stored. Deletes go out in `DeleteMessageBatch` calls of up to 10, when
//! 10 are waiting or `flush_interval` after the first one was queued. Each
//! message leaves the heartbeat table just before its delete is sent and
//! goes back in if the delete fails, so it stays invisible until a retry
//! succeeds.
//!
//! Failed deletes are retried with capped exponential backoff for up to
//! [`DELETE_GIVE_UP`]; an outage shorter than that costs no redelivery.
//! After it, the message leaves the heartbeat table, so it reappears when
//! its visibility runs out and is then acknowledged as a duplicate (its
//! image exists) without a render. Failures are logged when deleting starts
//! failing and when it works again, not per attempt.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backoff::retry_delay;
use crate::heartbeat::Heartbeat;
use crate::metrics::Metrics;

/// How long a message's delete is retried before it is left to come back
/// (a redelivered message whose image exists is acknowledged without a
/// render).
pub const DELETE_GIVE_UP: Duration = Duration::from_secs(120);
/// Attempts at deleting one message while shutting down.
const CLOSING_ATTEMPTS: u32 = 3;

enum Msg {
    Delete(Pending),
    /// Send what is queued and stop.
    Close,
}

struct Pending {
    message_id: String,
    receipt_handle: String,
    attempts: u32,
    /// When its first delete attempt failed.
    failing_since: Option<Instant>,
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
            failing_since: None,
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
    let mut failing = false;
    let mut failed_rounds = 0u32;
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
        let (failed, error) = flush(
            &sqs,
            &queue_url,
            &heartbeat,
            &metrics,
            std::mem::take(&mut batch),
        )
        .await;
        match (&error, failing) {
            (Some(e), false) => {
                tracing::warn!(error = %e, "deleting from SQS fails; retrying with backoff");
                failing = true;
            }
            (None, true) => {
                tracing::info!("deleting from SQS works again");
                failing = false;
            }
            _ => {}
        }
        let now = Instant::now();
        for mut p in failed {
            p.attempts += 1;
            let since = *p.failing_since.get_or_insert(now);
            if now.duration_since(since) < DELETE_GIVE_UP {
                retry.push(p);
            } else {
                give_up(&heartbeat, &p).await;
            }
        }
        if closed {
            // Last round: everything left, a few more tries, then stop.
            while !retry.is_empty() {
                let take = retry.len().min(10);
                let chunk: Vec<_> = retry.drain(..take).collect();
                let (failed, _) = flush(&sqs, &queue_url, &heartbeat, &metrics, chunk).await;
                for mut p in failed {
                    p.attempts += 1;
                    if p.attempts < CLOSING_ATTEMPTS {
                        retry.push(p);
                    } else {
                        give_up(&heartbeat, &p).await;
                    }
                }
            }
            return;
        }
        if retry.is_empty() {
            failed_rounds = 0;
        } else {
            // Failing deletes point at SQS trouble: back off, without
            // holding up new deletes for longer than a few seconds.
            failed_rounds += 1;
            let pause = retry_delay(
                failed_rounds,
                flush_interval.max(Duration::from_millis(200)),
                Duration::from_secs(5),
                fastrand::f64(),
            );
            tokio::time::sleep(pause).await;
        }
    }
}

/// Stop retrying a delete: the message leaves the heartbeat table, so it
/// reappears when its visibility runs out.
async fn give_up(heartbeat: &Heartbeat, p: &Pending) {
    heartbeat.untrack(&p.message_id).await;
    tracing::error!(message_id = %p.message_id, attempts = p.attempts, "giving up deleting; the message will be delivered again");
}

/// Delete `batch` (at most 10); returns the entries to try again, and the
/// error if the call as a whole failed.
async fn flush(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    heartbeat: &Heartbeat,
    metrics: &Metrics,
    batch: Vec<Pending>,
) -> (Vec<Pending>, Option<String>) {
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
    let mut error = None;
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
            error = Some(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string());
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
    (retry, error)
}
