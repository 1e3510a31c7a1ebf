//! Coalesced sends: jobs from concurrent requests share `SendMessageBatch`
//! calls.
//!
//! A request hands its job to the sender and waits for its own entry's
//! result. The sender collects jobs until it has `batch_max` (at most 10)
//! or `linger` has passed since the first, then sends them in one call.
//! Entries a partial failure refused are retried alone, once; a call that
//! fails as a whole (SQS unreachable, throttled) fails every entry in it,
//! and the requests answer 503 rather than wait.
//!
//! A request past its deadline must not leave a job behind that its client
//! was told failed. Each request carries a [`Handoff`]: the sender
//! *commits* it when it puts the request's first job on the wire, and the
//! request's timeout can only *expire* a handoff nobody committed. A job
//! whose request expired (or whose client hung up) before its call is
//! dropped unsent; a request whose job is on the wire waits for SQS's
//! answer, which the SDK's attempt timeouts bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use prometheus::{Histogram, IntCounterVec};
use tokio::sync::{mpsc, oneshot};
use url2png_core::JobMessage;

/// Why a job may not be in the queue. Callers branch on the variant: a job
/// [`NotSent`](SendError::NotSent) is certainly not queued and may be
/// submitted again; an [`Unconfirmed`](SendError::Unconfirmed) one may
/// have been queued, and will then run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// SQS refused the job, could not be reached, or the job never left
    /// the producer.
    #[error("the queue did not take the job: {0}")]
    NotSent(String),
    /// The job was sent but no answer came back (a timeout, a broken
    /// connection, an unreadable response): SQS may have queued it.
    #[error("the queue did not confirm the job: {0}")]
    Unconfirmed(String),
}

impl SendError {
    /// Classify a failed SQS call by whether the request can have reached
    /// the queue.
    fn from_sdk<E, R>(e: &SdkError<E, R>) -> Self
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let message = DisplayErrorContext(e).to_string();
        let sent = match e {
            // Built badly or refused by the service: nothing was queued.
            SdkError::ConstructionFailure(_) | SdkError::ServiceError(_) => false,
            // No connection was made: nothing was sent.
            SdkError::DispatchFailure(d)
                if d.as_connector_error()
                    .is_some_and(|c| refused_connection(c)) =>
            {
                false
            }
            _ => true,
        };
        if sent {
            Self::Unconfirmed(message)
        } else {
            Self::NotSent(message)
        }
    }
}

/// Whether the error's chain holds a refused or unroutable connection,
/// which means the request never left.
fn refused_connection(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        source = error.source();
    }
    false
}

const OPEN: u8 = 0;
const COMMITTED: u8 = 1;
const EXPIRED: u8 = 2;

/// One request's say over its jobs: committed once the sender has put one
/// of them on the wire, expired once the request's time ran out first.
/// Whichever happens first wins; the other then fails. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Handoff(Arc<AtomicU8>);

impl Handoff {
    /// Mark the request's jobs as going on the wire. False when the
    /// request expired first: its jobs must not be sent.
    pub fn commit(&self) -> bool {
        match self
            .0
            .compare_exchange(OPEN, COMMITTED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(state) => state == COMMITTED,
        }
    }

    /// Give up on the request. False when a job of it is already on the
    /// wire: the request must then wait for SQS's answer.
    pub fn expire(&self) -> bool {
        match self
            .0
            .compare_exchange(OPEN, EXPIRED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(state) => state == EXPIRED,
        }
    }
}

struct Pending {
    job: JobMessage,
    handoff: Handoff,
    done: oneshot::Sender<Result<(), SendError>>,
}

impl Pending {
    /// Whether the job may go on the wire: its request has not expired and
    /// someone still waits for the answer. Commits the request if so.
    fn still_wanted(&self) -> bool {
        !self.done.is_closed() && self.handoff.commit()
    }
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

    /// Enqueue one job of the request `handoff` belongs to; resolves when
    /// SQS has taken it (or refused it).
    pub async fn send(&self, job: JobMessage, handoff: &Handoff) -> Result<(), SendError> {
        let (done, result) = oneshot::channel();
        let pending = Pending {
            job,
            handoff: handoff.clone(),
            done,
        };
        self.tx
            .send(pending)
            .await
            .map_err(|_| SendError::NotSent("the producer is shutting down".into()))?;
        result
            .await
            .map_err(|_| SendError::NotSent("the sender stopped".into()))?
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
    let (batch, dropped): (Vec<_>, Vec<_>) = batch.into_iter().partition(Pending::still_wanted);
    for p in dropped {
        let _ = p.done.send(Err(SendError::NotSent(
            "the request ended before its job was sent".into(),
        )));
    }
    if batch.is_empty() {
        return;
    }
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
                let _ = p.done.send(Err(SendError::NotSent(e.to_string())));
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
            let error = SendError::from_sdk(&e);
            tracing::warn!(%error, entries = batch.len(), "SendMessageBatch failed");
            for p in batch {
                let _ = p.done.send(Err(error.clone()));
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
    for (i, p) in slots
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, p?)))
    {
        let id = i.to_string();
        match output.failed.iter().find(|f| f.id == id) {
            Some(failed) => tracing::info!(
                code = %failed.code,
                message = ?failed.message,
                "SQS refused a batch entry; sending it alone"
            ),
            None => tracing::info!("SQS did not report a batch entry; sending it alone"),
        }
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
        let _ = p
            .done
            .send(result.map(|_| ()).map_err(|e| SendError::from_sdk(&e)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_handoff_cannot_expire() {
        let handoff = Handoff::default();
        assert!(handoff.commit());
        assert!(handoff.commit(), "a second job of the request goes too");
        assert!(!handoff.expire());
    }

    #[test]
    fn an_expired_handoff_cannot_commit() {
        let handoff = Handoff::default();
        assert!(handoff.expire());
        assert!(!handoff.commit());
        assert!(handoff.expire());
    }

    #[test]
    fn a_job_whose_client_hung_up_is_not_wanted_and_does_not_commit() {
        let handoff = Handoff::default();
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            job: JobMessage::new("https://example.com/", Default::default()),
            handoff: handoff.clone(),
            done,
        };
        drop(answer);
        assert!(!pending.still_wanted());
        assert!(handoff.expire(), "the request was left open");
    }

    #[test]
    fn a_refused_connection_in_the_chain_means_not_sent() {
        #[derive(Debug, thiserror::Error)]
        #[error("dispatch")]
        struct Outer(#[source] std::io::Error);
        let refused = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(refused_connection(&refused));
        let reset = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!refused_connection(&reset));
    }
}
