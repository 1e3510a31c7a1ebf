//! Coalesced sends: jobs from concurrent requests share `SendMessageBatch`
//! calls.
//!
//! A request hands its job to the sender and waits for its own entry's
//! result. The sender collects jobs until it has `batch_max` (at most 10)
//! or `linger` has passed since the first, then sends them in one call.
//! Entries a partial failure refused are retried alone, once; a call that
//! fails as a whole (SQS unreachable, throttled) fails every entry in it,
//! and the requests answer 503 rather than wait.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use prometheus::{Histogram, IntCounterVec};
use tokio::sync::{mpsc, oneshot};
use url2png_core::JobMessage;

/// Why a job was not enqueued.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the queue did not take the job: {0}")]
pub struct SendError(pub String);

struct Pending {
    job: JobMessage,
    done: oneshot::Sender<Result<(), SendError>>,
}

/// The sender's metrics.
#[derive(Debug, Clone)]
pub struct SenderMetrics {
    pub batch_size: Histogram,
    /// SQS calls by operation and result.
    pub sqs_requests: IntCounterVec,
}

/// Handle to the sending task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    tx: mpsc::Sender<Pending>,
}

impl Sender {
    /// Start the task. `batch_max` is clamped to 1..=10.
    pub fn start(
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        batch_max: usize,
        linger: Duration,
        metrics: SenderMetrics,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(
            rx,
            sqs,
            queue_url,
            batch_max.clamp(1, 10),
            linger,
            metrics,
        ));
        Self { tx }
    }

    /// Enqueue one job; resolves when SQS has taken it (or refused it).
    pub async fn send(&self, job: JobMessage) -> Result<(), SendError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Pending { job, done })
            .await
            .map_err(|_| SendError("the producer is shutting down".into()))?;
        result
            .await
            .map_err(|_| SendError("the sender stopped".into()))?
    }
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    batch_max: usize,
    linger: Duration,
    metrics: SenderMetrics,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < batch_max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        // Calls run concurrently, so one slow call does not hold the next.
        let sqs = sqs.clone();
        let queue_url = queue_url.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move { send_batch(&sqs, &queue_url, &metrics, batch).await });
    }
}

async fn send_batch(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    metrics: &SenderMetrics,
    batch: Vec<Pending>,
) {
    metrics.batch_size.observe(batch.len() as f64);
    let entries: Result<Vec<_>, _> = batch
        .iter()
        .enumerate()
        .map(|(i, p)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(p.job.to_json())
                .build()
        })
        .collect();
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(SendError(e.to_string())));
            }
            return;
        }
    };
    let started = Instant::now();
    let result = sqs
        .send_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics
        .sqs_requests
        .with_label_values(&["SendMessageBatch", outcome])
        .inc();
    tracing::debug!(entries = batch.len(), elapsed = ?started.elapsed(), outcome, "SendMessageBatch");
    let output = match result {
        Ok(output) => output,
        Err(e) => {
            let message = aws_sdk_sqs::error::DisplayErrorContext(&e).to_string();
            tracing::warn!(error = %message, entries = batch.len(), "SendMessageBatch failed");
            for p in batch {
                let _ = p.done.send(Err(SendError(message.clone())));
            }
            return;
        }
    };
    let mut slots: Vec<Option<Pending>> = batch.into_iter().map(Some).collect();
    for ok in output.successful {
        if let Some(p) = ok
            .id
            .parse::<usize>()
            .ok()
            .and_then(|i| slots.get_mut(i)?.take())
        {
            let _ = p.done.send(Ok(()));
        }
    }
    // Whatever is left failed (or was not reported): retry each alone.
    for p in slots.into_iter().flatten() {
        let result = sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(p.job.to_json())
            .send()
            .await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics
            .sqs_requests
            .with_label_values(&["SendMessage", outcome])
            .inc();
        let _ = p.done.send(
            result
                .map(|_| ())
                .map_err(|e| SendError(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())),
        );
    }
}
