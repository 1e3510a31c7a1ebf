//! How many attempts a job has, so that the last one writes the job's
//! failure record instead of leaving its status `pending`.
//!
//! With a redrive policy, the queue's `maxReceiveCount` is the limit: the
//! receive after it moves the message to the dead-letter queue. It is read
//! at start and every few minutes (an operator may change it). A queue
//! without one gets the configured limit, and the worker deletes a message
//! on its last attempt itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use tokio_util::sync::CancellationToken;

/// How often the redrive policy is read again.
pub const REFRESH: Duration = Duration::from_secs(300);

/// The attempt limit the worker goes by.
#[derive(Debug)]
pub struct Attempts {
    max: AtomicU32,
    redrive: AtomicBool,
    /// The limit for a queue without a redrive policy.
    fallback: u32,
}

impl Attempts {
    /// A limit of `fallback` until the queue's policy is read.
    pub fn new(fallback: u32) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicU32::new(fallback.max(1)),
            redrive: AtomicBool::new(false),
            fallback: fallback.max(1),
        })
    }

    /// Attempts a job has in all.
    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Acquire)
    }

    /// Whether the `receive_count`th receive of a message is its last.
    pub fn is_last(&self, receive_count: u32) -> bool {
        receive_count >= self.max()
    }

    /// Whether the queue moves a message to a dead-letter queue after the
    /// last attempt (otherwise the worker deletes it).
    pub fn has_dead_letter_queue(&self) -> bool {
        self.redrive.load(Ordering::Acquire)
    }

    /// Set the limit from the queue's `RedrivePolicy` attribute, if any.
    pub fn apply(&self, redrive_policy: Option<&str>) {
        match redrive_policy.and_then(max_receive_count) {
            Some(max) => {
                self.max.store(max, Ordering::Release);
                self.redrive.store(true, Ordering::Release);
            }
            None => {
                self.max.store(self.fallback, Ordering::Release);
                self.redrive.store(false, Ordering::Release);
            }
        }
    }

    /// Read the queue's redrive policy.
    pub async fn refresh(&self, sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<(), String> {
        let out = sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
        let policy = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .map(String::as_str);
        let before = (self.max(), self.has_dead_letter_queue());
        self.apply(policy);
        let after = (self.max(), self.has_dead_letter_queue());
        if before != after {
            tracing::info!(
                max_attempts = after.0,
                dead_letter_queue = after.1,
                "attempt limit set from the queue"
            );
        }
        Ok(())
    }

    /// Read the policy every [`REFRESH`] until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(e) = self.refresh(&sqs, &queue_url).await {
                tracing::warn!(error = %e, "reading the queue's redrive policy failed; keeping the last limit");
            }
        }
    }
}

/// `maxReceiveCount` of a redrive policy (SQS writes it as a number or a
/// string of one).
fn max_receive_count(policy: &str) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(policy).ok()?;
    let count = value.get("maxReceiveCount")?;
    let count = match count {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    u32::try_from(count).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_limit_from_a_redrive_policy() {
        let attempts = Attempts::new(4);
        assert_eq!(
            (attempts.max(), attempts.has_dead_letter_queue()),
            (4, false)
        );
        attempts.apply(Some(
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:dlq","maxReceiveCount":"3"}"#,
        ));
        assert_eq!(
            (attempts.max(), attempts.has_dead_letter_queue()),
            (3, true)
        );
        assert!(!attempts.is_last(2));
        assert!(attempts.is_last(3));
        attempts.apply(Some(r#"{"deadLetterTargetArn":"x","maxReceiveCount":7}"#));
        assert_eq!(attempts.max(), 7);
        for broken in [
            "",
            "{}",
            r#"{"maxReceiveCount":0}"#,
            r#"{"maxReceiveCount":"x"}"#,
        ] {
            attempts.apply(Some(broken));
            assert_eq!(
                (attempts.max(), attempts.has_dead_letter_queue()),
                (4, false),
                "{broken}"
            );
        }
        attempts.apply(None);
        assert_eq!(attempts.max(), 4);
    }
}
