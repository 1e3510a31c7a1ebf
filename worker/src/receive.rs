//! The receive loop: slots, not batches.
//!
//! A slot is a semaphore permit for one job. A poller asks SQS for as many
//! messages as it holds free slots (at most the batch maximum), so no
//! message is received that cannot start at once, and each message's job
//! takes its slot with it. Several pollers run, so a slot that frees while
//! one poller sits in a 20-second long poll is picked up by another; only
//! one poller gathers slots at a time. While the queue has a backlog (the
//! last receive came back full), it waits up to the gather window for more
//! slots to free (the prefetch or half the concurrency, at most a batch) so
//! that a busy worker makes few, full receives; otherwise it receives at
//! once. There are `prefetch` slots beyond the concurrency: the jobs in
//! them wait for a page, so pages stay busy while a receive is out, and a
//! gathering poller receives early once a page has no waiting job left.
//!
//! At shutdown a poller waits for the long poll it has out (SQS may be
//! filling it) and hands what it brings straight back, visible at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::retry_delay;
use crate::process::{Ctx, process};

/// How often a gathering poller looks whether a page has run out of
/// prefetched jobs.
const PAGE_IDLE_CHECK: Duration = Duration::from_millis(25);

/// How the pollers behave.
#[derive(Debug, Clone)]
pub struct ReceiveConfig {
    pub queue_url: String,
    pub concurrency: usize,
    /// Slots beyond the concurrency, for jobs received ahead of a page.
    pub prefetch: usize,
    pub batch_max: usize,
    pub wait_time_seconds: u32,
    pub visibility_timeout: Duration,
    pub pollers: usize,
    pub gather: Duration,
    pub poll_pause: Duration,
}

/// Shared state of the pollers, for health and for logging state changes
/// rather than every failed attempt.
#[derive(Debug, Default)]
pub struct ReceiveState {
    running: AtomicUsize,
    failing: AtomicBool,
    /// The last receive returned all it asked for: the queue has a backlog.
    backlog: AtomicBool,
}

impl ReceiveState {
    /// Whether at least one poller runs.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire) > 0
    }

    fn failed(&self, error: &str) {
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(error, "receiving from SQS fails; backing off and retrying");
        } else {
            tracing::debug!(error, "receive still failing");
        }
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!("receiving from SQS works again");
        }
    }
}

/// Everything the pollers share.
#[derive(Debug)]
pub struct Receiver {
    pub sqs: aws_sdk_sqs::Client,
    pub config: ReceiveConfig,
    pub ctx: Arc<Ctx>,
    pub slots: Arc<Semaphore>,
    pub gather_lock: Mutex<()>,
    pub state: Arc<ReceiveState>,
    /// Where job tasks are spawned, to wait for them at shutdown.
    pub jobs: TaskTracker,
    /// Cancelled when the shutdown grace period is over.
    pub job_cancel: CancellationToken,
}

impl Receiver {
    /// Start `pollers` pollers, which run until `shutdown`; the task ends
    /// when the last has stopped. They count as running from this call on,
    /// so health never reads a worker that is starting as stopped.
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let pollers: Vec<_> = (0..self.config.pollers)
            .map(|_| {
                self.state.running.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(self.clone().poll_loop(shutdown.clone()))
            })
            .collect();
        tokio::spawn(async move {
            for poller in pollers {
                let _ = poller.await;
            }
        })
    }

    async fn poll_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut first = true;
        while let Some(mut permits) = self.gather(&shutdown).await {
            // A pause between polls (benchmarks of a sleep-between-polls
            // design): taken once the slots are free, before the receive.
            if !first && !self.config.poll_pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.poll_pause) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            first = false;
            let received = Instant::now();
            let receive = self.receive(permits.len());
            tokio::pin!(receive);
            let result = tokio::select! {
                r = &mut receive => r,
                _ = shutdown.cancelled() => {
                    // SQS may already be filling this long poll; dropping it
                    // would leave what it took invisible for the visibility
                    // timeout. Hear it out and hand its messages back now.
                    if let Ok(messages) = receive.await {
                        self.hand_back(messages).await;
                    }
                    break;
                }
            };
            match result {
                Ok(messages) => {
                    failures = 0;
                    self.state
                        .backlog
                        .store(messages.len() == permits.len(), Ordering::Release);
                    self.state.succeeded();
                    self.ctx
                        .metrics
                        .receive_batch_size
                        .observe(messages.len() as f64);
                    for message in messages {
                        let Some(permit) = permits.pop() else {
                            // SQS returned more than asked; never happens,
                            // but a job without a slot must not start.
                            tracing::error!(
                                "more messages than slots; leaving the rest to reappear"
                            );
                            break;
                        };
                        let ctx = self.ctx.clone();
                        let cancel = self.job_cancel.clone();
                        self.jobs.spawn(async move {
                            process(ctx, message, received, cancel).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    drop(permits);
                    self.state.failed(&e);
                    failures += 1;
                    let delay = retry_delay(
                        failures,
                        Duration::from_millis(500),
                        Duration::from_secs(20),
                        fastrand::f64(),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            }
            drop(permits);
        }
        self.state.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// Wait for at least one free slot, then gather more: up to half the
    /// concurrency (at most a batch) within the gather window, and then
    /// whatever else is free at once. `None` at shutdown.
    async fn gather(&self, shutdown: &CancellationToken) -> Option<Vec<OwnedSemaphorePermit>> {
        let _turn = tokio::select! {
            guard = self.gather_lock.lock() => guard,
            _ = shutdown.cancelled() => return None,
        };
        let mut permits = Vec::with_capacity(self.config.batch_max);
        tokio::select! {
            permit = self.slots.clone().acquire_owned() => permits.push(permit.ok()?),
            _ = shutdown.cancelled() => return None,
        }
        // Waiting for slots pays only when the queue has a backlog: then a
        // fuller receive saves requests and the jobs wait in the queue
        // anyway. Otherwise receive now, for latency.
        let target = if self.state.backlog.load(Ordering::Acquire) {
            (self.config.concurrency / 2)
                .max(self.config.prefetch)
                .clamp(1, self.config.batch_max)
        } else {
            1
        };
        // ...but not while a page has nothing to start: once no prefetched
        // job waits (a render permit is free), receive with what is free.
        let deadline = Instant::now() + self.config.gather;
        while permits.len() < target && self.ctx.renders.available_permits() == 0 {
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => permits.push(permit.ok()?),
                _ = tokio::time::sleep(PAGE_IDLE_CHECK) => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => return None,
            }
        }
        while permits.len() < self.config.batch_max {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    /// Make messages received during shutdown visible again at once, for
    /// another worker, without starting them.
    async fn hand_back(&self, messages: Vec<aws_sdk_sqs::types::Message>) {
        if messages.is_empty() {
            return;
        }
        tracing::info!(
            messages = messages.len(),
            "stopping: handing back what the last receive brought"
        );
        let releases = messages.iter().filter_map(|m| {
            let id = m.message_id()?;
            let receipt = m.receipt_handle()?;
            Some(self.ctx.acker.release(id, receipt, 0))
        });
        futures::future::join_all(releases).await;
        self.ctx
            .metrics
            .jobs
            .with_label_values(&["released"])
            .inc_by(messages.len() as u64);
    }

    async fn receive(&self, max: usize) -> Result<Vec<aws_sdk_sqs::types::Message>, String> {
        let started = std::time::Instant::now();
        let result = self
            .sqs
            .receive_message()
            .queue_url(&self.config.queue_url)
            .max_number_of_messages(i32::try_from(max).unwrap_or(10))
            .wait_time_seconds(i32::try_from(self.config.wait_time_seconds).unwrap_or(20))
            .visibility_timeout(
                i32::try_from(self.config.visibility_timeout.as_secs()).unwrap_or(i32::MAX),
            )
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::default().timeout_config(
                url2png_core::aws::long_poll_timeouts(
                    self.sqs.config().timeout_config(),
                    Duration::from_secs(u64::from(self.config.wait_time_seconds)),
                ),
            ))
            .send()
            .await;
        self.ctx
            .metrics
            .aws_call("sqs", "ReceiveMessage", started, &result);
        result
            .map(|out| out.messages.unwrap_or_default())
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
    }
}
