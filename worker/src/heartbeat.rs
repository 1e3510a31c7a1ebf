//! One task keeps every in-flight message invisible while it is worked on.
//!
//! The table maps message ids to their receipt handle, when they were
//! received and when their visibility runs out. Each tick extends, in
//! `ChangeMessageVisibilityBatch` calls of at most 10, the messages that
//! would become visible before the next tick plus a margin. A message is
//! removed from the table before it is deleted or released; the table is
//! locked for the whole tick, so no extension is in flight once
//! [`Heartbeat::untrack`] returns. SQS allows a message to stay invisible
//! for at most 12 hours from its receipt: extensions never ask past that.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// SQS's limit on the total time a message may stay invisible.
pub const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 60 * 60);
/// Kept between the 12-hour limit and the last extension, for clock skew.
const LIMIT_SAFETY: Duration = Duration::from_secs(30);

/// One tracked message.
#[derive(Debug, Clone)]
pub struct Entry {
    pub receipt_handle: String,
    pub received: Instant,
    pub expires: Instant,
}

/// Which messages to extend now, and to how many seconds from now.
///
/// A message is due when it would become visible before `now + horizon`
/// (`horizon` = the tick interval plus a margin). The new timeout is
/// `visibility`, shortened so the total stays within 12 hours; a message
/// that cannot be extended further is left out.
pub fn plan(
    entries: &HashMap<String, Entry>,
    now: Instant,
    horizon: Duration,
    visibility: Duration,
) -> Vec<(String, Duration)> {
    let mut due: Vec<_> = entries
        .iter()
        .filter(|(_, e)| e.expires <= now + horizon)
        .filter_map(|(id, e)| {
            let used = now.saturating_duration_since(e.received);
            let left = MAX_INVISIBLE.checked_sub(used + LIMIT_SAFETY)?;
            let timeout = visibility.min(left);
            // Whole seconds, as SQS takes them; an extension shorter than
            // one second buys nothing.
            let timeout = Duration::from_secs(timeout.as_secs());
            (!timeout.is_zero()).then(|| (id.clone(), timeout))
        })
        .collect();
    due.sort();
    due
}

#[derive(Debug)]
struct Inner {
    table: Mutex<HashMap<String, Entry>>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    visibility: Duration,
    interval: Duration,
    margin: Duration,
    metrics: Metrics,
    /// The last extension call failed: log the next success, not each
    /// failure.
    failing: std::sync::atomic::AtomicBool,
}

/// Handle to the heartbeat. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

impl Heartbeat {
    /// `visibility` is the timeout each extension asks for; `interval` is
    /// the time between ticks.
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        visibility: Duration,
        interval: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                table: Mutex::new(HashMap::new()),
                sqs,
                queue_url,
                visibility,
                interval,
                // Enough for a slow extension call and a delete's flush.
                margin: (visibility / 4).min(Duration::from_secs(10)),
                metrics,
                failing: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Start keeping a message invisible. `received` is when the receive
    /// call that returned it was made; its visibility runs out `current`
    /// after that.
    pub async fn track(
        &self,
        message_id: &str,
        receipt_handle: &str,
        received: Instant,
        current: Duration,
    ) {
        self.inner.table.lock().await.insert(
            message_id.to_owned(),
            Entry {
                receipt_handle: receipt_handle.to_owned(),
                received,
                expires: received + current,
            },
        );
    }

    /// Stop extending a message. Once this returns, no extension of it is
    /// in flight. Returns the entry, so a failed delete can track it again.
    pub async fn untrack(&self, message_id: &str) -> Option<Entry> {
        self.inner.table.lock().await.remove(message_id)
    }

    /// Track an entry again (after a failed delete).
    pub async fn retrack(&self, message_id: &str, entry: Entry) {
        self.inner
            .table
            .lock()
            .await
            .insert(message_id.to_owned(), entry);
    }

    /// Messages tracked now.
    pub async fn len(&self) -> usize {
        self.inner.table.lock().await.len()
    }

    /// Whether no message is tracked.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Tick until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.inner.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => self.tick().await,
            }
        }
    }

    /// Extend whatever is due now.
    pub async fn tick(&self) {
        let inner = &self.inner;
        let mut table = inner.table.lock().await;
        let now = Instant::now();
        let due = plan(&table, now, inner.interval + inner.margin, inner.visibility);
        if due.is_empty() {
            return;
        }
        let calls = due.chunks(10).map(|chunk| {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (id, timeout))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&table.get(id)?.receipt_handle)
                        .visibility_timeout(i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX))
                        .build()
                        .ok()
                })
                .collect();
            let request = inner
                .sqs
                .change_message_visibility_batch()
                .queue_url(&inner.queue_url)
                .set_entries(Some(entries));
            async move {
                let started = StdInstant::now();
                let result = request.send().await;
                inner
                    .metrics
                    .aws_call("sqs", "ChangeMessageVisibilityBatch", started, &result);
                (chunk, result)
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut call_error = None;
        for (chunk, result) in results {
            match result {
                Ok(out) => {
                    for ok in out.successful {
                        if let Some((id, timeout)) =
                            ok.id.parse::<usize>().ok().and_then(|i| chunk.get(i))
                        {
                            if let Some(entry) = table.get_mut(id) {
                                entry.expires = now + *timeout;
                            }
                            inner.metrics.visibility_extensions.inc();
                        }
                    }
                    for failed in out.failed {
                        let Some((id, _)) =
                            failed.id.parse::<usize>().ok().and_then(|i| chunk.get(i))
                        else {
                            continue;
                        };
                        // The message is gone (deleted elsewhere, or its
                        // handle expired and it was received again): stop.
                        if failed.sender_fault {
                            tracing::warn!(message_id = %id, code = %failed.code, "visibility extension refused; no longer tracking");
                            table.remove(id);
                        } else {
                            tracing::warn!(message_id = %id, code = %failed.code, "visibility extension failed; will retry");
                        }
                    }
                }
                Err(e) => {
                    call_error = Some(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string());
                }
            }
        }
        let was_failing = inner
            .failing
            .swap(call_error.is_some(), std::sync::atomic::Ordering::AcqRel);
        match (call_error, was_failing) {
            (Some(error), false) => {
                tracing::warn!(error, "extending visibility fails; retrying every tick")
            }
            (None, true) => tracing::info!("extending visibility works again"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISIBILITY: Duration = Duration::from_secs(60);
    const INTERVAL: Duration = Duration::from_secs(20);
    const HORIZON: Duration = Duration::from_secs(25);

    fn entry(received: Instant, current: Duration) -> Entry {
        Entry {
            receipt_handle: "h".into(),
            received,
            expires: received + current,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn extends_only_what_would_expire_before_the_next_tick() {
        let start = Instant::now();
        let mut table = HashMap::new();
        table.insert("a".to_owned(), entry(start, VISIBILITY));
        assert!(plan(&table, Instant::now(), HORIZON, VISIBILITY).is_empty());

        tokio::time::advance(Duration::from_secs(34)).await;
        assert!(
            plan(&table, Instant::now(), HORIZON, VISIBILITY).is_empty(),
            "expires in 26 s"
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            plan(&table, Instant::now(), HORIZON, VISIBILITY),
            vec![("a".to_owned(), VISIBILITY)]
        );

        // Once extended from now, it is not due again until it nears expiry.
        let now = Instant::now();
        table.get_mut("a").unwrap().expires = now + VISIBILITY;
        tokio::time::advance(INTERVAL).await;
        assert!(plan(&table, Instant::now(), HORIZON, VISIBILITY).is_empty());
        tokio::time::advance(INTERVAL).await;
        assert_eq!(plan(&table, Instant::now(), HORIZON, VISIBILITY).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_run_never_lets_a_message_lapse() {
        // Tick every INTERVAL for three hours, applying each plan, and
        // check that visibility never runs out between ticks.
        let mut table = HashMap::new();
        table.insert("a".to_owned(), entry(Instant::now(), VISIBILITY));
        for _ in 0..(3 * 60 * 3) {
            tokio::time::advance(INTERVAL).await;
            let now = Instant::now();
            assert!(table["a"].expires > now, "visibility lapsed");
            for (id, timeout) in plan(&table, now, HORIZON, VISIBILITY) {
                table.get_mut(&id).unwrap().expires = now + timeout;
            }
            assert!(
                table["a"].expires > now + INTERVAL,
                "would lapse before the next tick"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_asks_past_twelve_hours() {
        let received = Instant::now();
        let mut table = HashMap::new();
        table.insert("a".to_owned(), entry(received, VISIBILITY));
        // 11 h 59 m 40 s after receipt, only what is left (less the safety
        // margin) may be asked for: nothing.
        tokio::time::advance(MAX_INVISIBLE - Duration::from_secs(20)).await;
        table.get_mut("a").unwrap().expires = Instant::now() + Duration::from_secs(10);
        assert!(plan(&table, Instant::now(), HORIZON, VISIBILITY).is_empty());

        // 11 h 59 m after receipt: 30 s are left under the limit.
        let mut table = HashMap::new();
        let received = Instant::now();
        table.insert("b".to_owned(), entry(received, VISIBILITY));
        tokio::time::advance(MAX_INVISIBLE - Duration::from_secs(60)).await;
        table.get_mut("b").unwrap().expires = Instant::now() + Duration::from_secs(10);
        let due = plan(&table, Instant::now(), HORIZON, VISIBILITY);
        assert_eq!(due, vec![("b".to_owned(), Duration::from_secs(30))]);
        let total = Instant::now() + due[0].1 - received;
        assert!(total <= MAX_INVISIBLE);
    }

    #[tokio::test(start_paused = true)]
    async fn plans_every_due_message() {
        let now = Instant::now();
        let mut table = HashMap::new();
        for i in 0..25 {
            table.insert(
                format!("m{i:02}"),
                entry(now, Duration::from_secs(if i % 2 == 0 { 5 } else { 600 })),
            );
        }
        let due = plan(&table, now, HORIZON, VISIBILITY);
        assert_eq!(due.len(), 13);
        assert!(
            due.iter()
                .all(|(id, _)| id[1..].parse::<u32>().unwrap() % 2 == 0)
        );
    }
}
