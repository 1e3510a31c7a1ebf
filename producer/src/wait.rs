//! Waiting for a job to finish inside a request (`?wait=`, render links).
//!
//! A waiting request holds no thread: it awaits a watch channel. One poll
//! task per job id reads the job's status from S3 (the same `HEAD` a
//! client's poll makes) with a backoff from 200 ms to 1 s, and every
//! request waiting for that job on this producer shares it. The task
//! stops when the job has finished or when nobody waits any more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::api::{AppState, Status};

/// First pause between polls.
pub const FIRST_POLL: Duration = Duration::from_millis(200);
/// Longest pause between polls.
pub const LONGEST_POLL: Duration = Duration::from_secs(1);

type Outcome = Option<Arc<Status>>;

/// The poll tasks running now, by job id.
#[derive(Debug, Default)]
pub struct Waiters {
    polls: Mutex<HashMap<Uuid, watch::Receiver<Outcome>>>,
}

impl Waiters {
    /// How many jobs are being polled now.
    pub fn polling(&self) -> usize {
        self.polls.lock().expect("waiters").len()
    }
}

/// Whether a status is final: done, failed, expired or unknown.
fn finished(status: &Status) -> bool {
    !matches!(status, Status::Pending)
}

/// The next pause after `pause`.
pub fn next_pause(pause: Duration) -> Duration {
    pause.mul_f64(1.5).min(LONGEST_POLL)
}

/// Wait up to `limit` for job `id` to finish; `None` if it has not.
pub async fn finish(state: &Arc<AppState>, id: Uuid, limit: Duration) -> Option<Arc<Status>> {
    let mut rx = subscribe(state, id);
    match tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await {
        Ok(Ok(finished)) => finished.clone(),
        _ => None,
    }
}

fn subscribe(state: &Arc<AppState>, id: Uuid) -> watch::Receiver<Outcome> {
    let mut polls = state.waiters.polls.lock().expect("waiters");
    if let Some(rx) = polls.get(&id) {
        return rx.clone();
    }
    let (tx, rx) = watch::channel(None);
    polls.insert(id, rx.clone());
    drop(polls);
    let state = state.clone();
    tokio::spawn(async move {
        let mut pause = FIRST_POLL;
        loop {
            tokio::time::sleep(pause).await;
            if tx.receiver_count() <= 1 {
                // Only the map's own receiver is left: nobody waits.
                break;
            }
            match crate::api::status_of(&state, id).await {
                Ok(status) if finished(&status) => {
                    let _ = tx.send(Some(Arc::new(status)));
                    break;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(job_id = %id, error = %e, "poll failed; polling on"),
            }
            pause = next_pause(pause);
        }
        state.waiters.polls.lock().expect("waiters").remove(&id);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_back_off_to_once_a_second() {
        let mut pause = FIRST_POLL;
        let mut total = Duration::ZERO;
        let mut polls = 0;
        while total < Duration::from_secs(60) {
            total += pause;
            polls += 1;
            pause = next_pause(pause);
        }
        assert_eq!(pause, LONGEST_POLL);
        assert!((60..70).contains(&polls), "{polls} polls in a minute");
    }
}
