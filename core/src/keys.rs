//! The S3 key layout and the failure record.
//!
//! The producer promises a key when it accepts a job, the worker writes to
//! it, and the status endpoint reads it back; all three go through
//! [`KeyLayout`], so the layout lives in one place:
//!
//! - the image at `<prefix><id>.<ext>` (`png`, `jpg` or `webp`);
//! - a failure record at `<prefix><id>.error.json` when the job can never
//!   succeed;
//! - the render report of a stored image at `<prefix><id>.report.json`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::job::ImageFormat;

/// Longest accepted key prefix, in bytes. S3 keys are at most 1024 bytes; a
/// UUID and the longest suffix (`.report.json`) take 48.
pub const MAX_PREFIX_BYTES: usize = 512;

/// Where a job's objects live in the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

/// A key prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key prefix {prefix:?}: {reason}")]
pub struct PrefixError {
    pub prefix: String,
    pub reason: &'static str,
}

impl KeyLayout {
    /// A layout under `prefix`, which is used as given (`shots/` gives
    /// `shots/<id>.png`; an empty prefix puts objects at the bucket root).
    pub fn new(prefix: impl Into<String>) -> Result<Self, PrefixError> {
        let prefix = prefix.into();
        let fail = |reason| {
            Err(PrefixError {
                prefix: prefix.clone(),
                reason,
            })
        };
        if prefix.len() > MAX_PREFIX_BYTES {
            return fail("longer than 512 bytes");
        }
        if prefix.starts_with('/') {
            return fail("must not start with `/`");
        }
        if prefix.chars().any(char::is_control) {
            return fail("contains control characters");
        }
        if prefix.split('/').any(|segment| segment == "..") {
            return fail("contains a `..` segment");
        }
        Ok(Self { prefix })
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Key of the rendered image.
    pub fn image(&self, id: Uuid, format: ImageFormat) -> String {
        format!("{}{}.{}", self.prefix, id, format.extension())
    }

    /// Key of the failure record.
    pub fn failure(&self, id: Uuid) -> String {
        format!("{}{}.error.json", self.prefix, id)
    }

    /// Key of the render report of a stored image.
    pub fn report(&self, id: Uuid) -> String {
        format!("{}{}.report.json", self.prefix, id)
    }

    /// Key of the webhook delivery record.
    pub fn webhook(&self, id: Uuid) -> String {
        format!("{}{}.webhook.json", self.prefix, id)
    }

    /// Every key a job may have written, image formats first.
    pub fn all(&self, id: Uuid) -> [String; 5] {
        [
            self.image(id, ImageFormat::Png),
            self.image(id, ImageFormat::Jpeg),
            self.image(id, ImageFormat::Webp),
            self.image(id, ImageFormat::Pdf),
            self.failure(id),
        ]
    }
}

/// Why a job failed for good. Stable snake_case names in JSON.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The message body broke the contract (see the message for the field).
    InvalidMessage,
    /// The message claims a contract version this build does not read.
    UnsupportedVersion,
    /// The URL policy refused an address the page needed (the URL's own
    /// host, a redirect's, or what a name resolves to); `refused` names it.
    BlockedByPolicy,
    /// The page's host name does not exist (NXDOMAIN or no addresses).
    DnsError,
    /// The TLS handshake failed or the certificate is not valid.
    TlsError,
    /// The host could not be reached: refused, reset, unreachable, timed
    /// out (after every attempt), or DNS kept failing to answer.
    ConnectionFailed,
    /// The browser could not load the page for another reason (a
    /// redirect loop, an invalid response, a download, credentials asked).
    NavigationFailed,
    /// The page answered with an HTTP error status and the job asked to
    /// fail on that (`fail_on_http_error`); `http_status` has it.
    HttpError,
    /// The job's timeout ran out in every attempt; `phase` says where.
    Timeout,
    /// The wait condition never held (the selector never matched, the
    /// network never went quiet) within the timeout, in every attempt.
    WaitFailed,
    /// The element to capture (`selector`) was not in the page, or had no
    /// box, when the page was ready.
    ElementNotFound,
    /// The job's `script` threw, or its `wait_for_expression` is not
    /// valid JavaScript; `detail` has the exception.
    ScriptError,
    /// Chromium could not capture or encode the image.
    RenderFailed,
    /// The browser or the page's renderer crashed in every attempt.
    BrowserCrashed,
    /// The job failed every attempt for reasons that may pass (the store,
    /// the browser not answering); `detail` has the last one.
    AttemptsExhausted,
}

impl FailureReason {
    /// Every reason, for documentation and tests.
    pub const ALL: [Self; 15] = [
        Self::InvalidMessage,
        Self::UnsupportedVersion,
        Self::BlockedByPolicy,
        Self::DnsError,
        Self::TlsError,
        Self::ConnectionFailed,
        Self::NavigationFailed,
        Self::HttpError,
        Self::Timeout,
        Self::WaitFailed,
        Self::ElementNotFound,
        Self::ScriptError,
        Self::RenderFailed,
        Self::BrowserCrashed,
        Self::AttemptsExhausted,
    ];

    /// The stable snake_case name, as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidMessage => "invalid_message",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BlockedByPolicy => "blocked_by_policy",
            Self::DnsError => "dns_error",
            Self::TlsError => "tls_error",
            Self::ConnectionFailed => "connection_failed",
            Self::NavigationFailed => "navigation_failed",
            Self::HttpError => "http_error",
            Self::Timeout => "timeout",
            Self::WaitFailed => "wait_failed",
            Self::ElementNotFound => "element_not_found",
            Self::ScriptError => "script_error",
            Self::RenderFailed => "render_failed",
            Self::BrowserCrashed => "browser_crashed",
            Self::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

/// Where a job's time ran out.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for a page of the browser pool.
    Page,
    /// Loading the page, up to its `load` event.
    Navigation,
    /// The wait condition and the delay after it.
    Wait,
    /// Capturing and encoding the image.
    Capture,
}

impl Phase {
    /// The stable snake_case name, as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Page => "page",
            Self::Navigation => "navigation",
            Self::Wait => "wait",
            Self::Capture => "capture",
        }
    }
}

/// What is stored at [`KeyLayout::failure`] when a job can never succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The job id (for a body too broken to carry one, the SQS message id).
    pub id: Uuid,
    /// The URL the job asked for, when the body had one.
    pub url: Option<String>,
    /// Machine-readable reason.
    pub reason: FailureReason,
    /// One sentence for a person, e.g. `options.width: 0 is outside 1..=7680`.
    pub message: String,
    /// What an operator needs beyond the message: the browser's error
    /// code, the proxy's answer, the last retryable error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `timeout`: the phase that ran out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// For `http_error`: the main document's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// For `blocked_by_policy`: the host or address the policy refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// How many times the message was received (SQS `ApproximateReceiveCount`).
    pub attempts: u32,
    /// When the worker gave up.
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
    /// What the last attempt saw, as far as it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<crate::report::RenderReport>>,
    /// The job's webhook, whose deliveries are recorded at
    /// [`KeyLayout::webhook`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

impl FailureRecord {
    /// Serialise for storage.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("record serialises: {e}"))
    }

    /// Parse a stored record.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Uuid = uuid::uuid!("6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11");

    #[test]
    fn keys_follow_the_layout() {
        let layout = KeyLayout::new("shots/").unwrap();
        assert_eq!(
            layout.image(ID, ImageFormat::Png),
            "shots/6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11.png"
        );
        assert_eq!(
            layout.image(ID, ImageFormat::Jpeg),
            "shots/6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11.jpg"
        );
        assert_eq!(
            layout.image(ID, ImageFormat::Webp),
            "shots/6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11.webp"
        );
        assert_eq!(
            layout.failure(ID),
            "shots/6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11.error.json"
        );
        assert_eq!(
            KeyLayout::default().image(ID, ImageFormat::Png),
            "6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11.png"
        );
        assert_eq!(layout.all(ID)[4], layout.failure(ID));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in [
            "/abs/",
            "a/../b/",
            "..",
            "a\nb/",
            &"p".repeat(MAX_PREFIX_BYTES + 1),
        ] {
            assert!(KeyLayout::new(bad).is_err(), "{bad:?}");
        }
        for good in ["", "a", "a/b/", "shots-2026/", "..a/"] {
            KeyLayout::new(good).unwrap();
        }
        let longest = KeyLayout::new("p".repeat(MAX_PREFIX_BYTES)).unwrap();
        assert!(longest.failure(ID).len() <= 1024);
    }

    #[test]
    fn failure_record_round_trips() {
        let record = FailureRecord {
            id: ID,
            url: Some("https://example.com/".into()),
            reason: FailureReason::BlockedByPolicy,
            message: "169.254.169.254 is link-local".into(),
            detail: None,
            phase: None,
            http_status: None,
            refused: Some("169.254.169.254:80".into()),
            attempts: 3,
            failed_at: time::macros::datetime!(2026-11-25 11:00:00 UTC),
            report: None,
            webhook_url: None,
        };
        let json = record.to_json();
        assert_eq!(FailureRecord::from_json(json.as_bytes()).unwrap(), record);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["reason"], "blocked_by_policy");
        assert_eq!(v["failed_at"], "2026-11-25T11:00:00Z");
        assert_eq!(v["attempts"], 3);
    }

    #[test]
    fn reason_names_match_serde() {
        for reason in FailureReason::ALL {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::from(reason.as_str())
            );
        }
        for phase in [Phase::Page, Phase::Navigation, Phase::Wait, Phase::Capture] {
            assert_eq!(
                serde_json::to_value(phase).unwrap(),
                serde_json::Value::from(phase.as_str())
            );
        }
    }

    #[test]
    fn records_without_the_newer_fields_still_parse() {
        let old = r#"{"id":"6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11","url":null,"reason":"timeout","message":"m","attempts":1,"failed_at":"2026-11-25T11:00:00Z"}"#;
        let record = FailureRecord::from_json(old.as_bytes()).unwrap();
        assert_eq!(record.reason, FailureReason::Timeout);
        assert_eq!(record.phase, None);
        let json = record.to_json();
        assert!(!json.contains("detail"), "{json}");
    }
}
