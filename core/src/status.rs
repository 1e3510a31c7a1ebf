//! The status document: where a job stands, as the status API answers it
//! and as a webhook delivers it; and what a webhook delivery records.
//!
//! The producer builds it on every status request, the worker on every
//! webhook attempt, both with [`JobStatus::done`] and
//! [`JobStatus::failed`], so a receiver gets exactly what a poll would.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::keys::{FailureReason, FailureRecord, Phase};

/// Where a job stands, read from the bucket.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, not rendered yet.
    Pending { id: Uuid },
    /// Accepted longer ago than the queue keeps messages, with no result:
    /// there will be none (submit it again).
    Expired { id: Uuid },
    /// The image exists.
    Done {
        id: Uuid,
        /// A presigned GET URL for the image.
        image_url: String,
        /// How long `image_url` stays valid.
        expires_in_seconds: u64,
        content_type: Option<String>,
        size_bytes: i64,
        /// Facts the worker recorded with the image (its object metadata),
        /// such as the final URL and the rendered size.
        render: HashMap<String, String>,
        /// Where the render report is.
        report_url: String,
        /// The webhook's deliveries, when the job named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook: Option<WebhookState>,
    },
    /// The job failed for good; the failure record says why.
    Failed {
        id: Uuid,
        reason: FailureReason,
        /// One sentence for a person.
        message: String,
        /// What an operator needs beyond the message (the browser's error
        /// code, the proxy's answer, the last retryable error).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// For `timeout`: where the time ran out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<Phase>,
        /// For `http_error`: the page's status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
        /// For `blocked_by_policy`: the host or address refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
        attempts: u32,
        /// RFC 3339.
        failed_at: Option<String>,
        /// Where the render report of the last attempt is (when it got as
        /// far as having one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report_url: Option<String>,
        /// The webhook's deliveries, when the job named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook: Option<WebhookState>,
    },
}

/// A stored image, as a status document shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredImage {
    /// A presigned GET URL.
    pub url: String,
    pub expires_in_seconds: u64,
    pub content_type: Option<String>,
    pub size_bytes: i64,
    /// The object's metadata.
    pub metadata: HashMap<String, String>,
}

/// `<base>/v1/screenshots/<id>/report`.
pub fn report_url(public_url: &str, id: Uuid) -> String {
    format!(
        "{}/v1/screenshots/{id}/report",
        public_url.trim_end_matches('/')
    )
}

impl JobStatus {
    /// A finished job. `public_url` is the API's base URL.
    pub fn done(id: Uuid, image: StoredImage, public_url: &str) -> Self {
        Self::Done {
            id,
            image_url: image.url,
            expires_in_seconds: image.expires_in_seconds,
            content_type: image.content_type,
            size_bytes: image.size_bytes,
            render: image.metadata,
            report_url: report_url(public_url, id),
            webhook: None,
        }
    }

    /// A job that failed for good, from its failure record.
    pub fn failed(id: Uuid, record: &FailureRecord, public_url: &str) -> Self {
        Self::Failed {
            id,
            reason: record.reason,
            message: record.message.clone(),
            detail: record.detail.clone(),
            phase: record.phase,
            http_status: record.http_status,
            refused: record.refused.clone(),
            attempts: record.attempts,
            failed_at: record
                .failed_at
                .format(&time::format_description::well_known::Rfc3339)
                .ok(),
            report_url: record.report.is_some().then(|| report_url(public_url, id)),
            webhook: None,
        }
    }

    /// The job's id.
    pub fn id(&self) -> Uuid {
        match self {
            Self::Pending { id }
            | Self::Expired { id }
            | Self::Done { id, .. }
            | Self::Failed { id, .. } => *id,
        }
    }

    /// `done` or `failed`, or `None` while the job has not ended.
    pub fn event(&self) -> Option<&'static str> {
        match self {
            Self::Done { .. } => Some("done"),
            Self::Failed { .. } => Some("failed"),
            Self::Pending { .. } | Self::Expired { .. } => None,
        }
    }

    /// Show the webhook's deliveries (on `done` and `failed`).
    pub fn set_webhook(&mut self, state: WebhookState) {
        match self {
            Self::Done { webhook, .. } | Self::Failed { webhook, .. } => *webhook = Some(state),
            Self::Pending { .. } | Self::Expired { .. } => {}
        }
    }
}

/// The image object's metadata key naming the job's webhook, so the
/// status API knows to read its delivery record.
pub const WEBHOOK_METADATA: &str = "webhook";

/// Where a job's webhook delivery stands. The worker stores it at
/// [`KeyLayout::webhook`](crate::keys::KeyLayout::webhook) after every
/// attempt; status documents show it as `webhook`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookState {
    /// The receiver.
    pub url: String,
    pub state: DeliveryState,
    /// POSTs made (and refusals: a refused delivery is one attempt).
    pub attempts: u32,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    /// The receiver's HTTP status on the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt did not deliver: no answer, a non-2xx status,
    /// or the URL policy's refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt is due (RFC 3339), while `retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

/// A webhook delivery's state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Queued, not attempted yet.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// An attempt failed; another follows at `next_attempt_at`.
    Retrying,
    /// The URL policy refused the receiver (its name resolved to a refused
    /// address, or the operator's rules changed): never retried.
    Refused,
    /// Every attempt the deliveries queue allows failed: the delivery is
    /// in the deliveries' dead-letter queue.
    DeadLettered,
}

/// Current version of [`WebhookMessage`].
pub const WEBHOOK_MESSAGE_VERSION: u32 = 1;

/// One delivery, as it travels on the deliveries queue. The body is built
/// when it is attempted, from the bucket, so it carries a fresh image URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookMessage {
    pub version: u32,
    /// The job.
    pub id: Uuid,
    /// The receiver.
    pub url: String,
    /// Where the job's image is when it is done (a failed job has its
    /// failure record instead).
    pub image_key: String,
    /// When the job ended.
    #[serde(with = "time::serde::rfc3339")]
    pub ended_at: OffsetDateTime,
}

impl WebhookMessage {
    /// Serialise to the JSON body sent to SQS.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("message serialises: {e}"))
    }

    /// Parse a message body.
    pub fn parse(body: &str) -> Result<Self, String> {
        let message: Self = serde_json::from_str(body).map_err(|e| e.to_string())?;
        if message.version != WEBHOOK_MESSAGE_VERSION {
            return Err(format!(
                "version {} is not supported; this build reads version {WEBHOOK_MESSAGE_VERSION}",
                message.version
            ));
        }
        Ok(message)
    }
}

/// The value of the `Url2png-Signature` header for `body` sent at `unix`
/// seconds: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<unix>.<body>")>`.
pub fn signature(secret: &[u8], unix: u64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix},v1={}",
        crate::report::hex(&mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // Python: hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        assert_ne!(
            signature(b"secret", 1_700_000_000, b"{}"),
            signature(b"secret", 1_700_000_000, b"{ }")
        );
    }

    #[test]
    fn messages_round_trip_and_refuse_other_versions() {
        let message = WebhookMessage {
            version: WEBHOOK_MESSAGE_VERSION,
            id: Uuid::nil(),
            url: "https://example.com/hook".into(),
            image_key: "x.png".into(),
            ended_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            WebhookMessage::parse(&message.to_json()),
            Ok(message.clone())
        );
        let other = message.to_json().replace("\"version\":1", "\"version\":2");
        assert!(
            WebhookMessage::parse(&other)
                .unwrap_err()
                .contains("version 2")
        );
    }
}
