//! The render report: what the worker saw while rendering one job.
//!
//! The worker stores it next to the image (`<prefix><id>.report.json`,
//! [`crate::KeyLayout::report`]) and inside every failure record; the API
//! returns it at `GET /v1/screenshots/{id}/report`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::job::RenderOptions;

/// Most entries kept in each list of a report.
pub const MAX_ENTRIES: usize = 50;

/// What one render did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RenderReport {
    pub job_id: Uuid,
    /// The URL the job asked for.
    pub url: String,
    /// The options as the contract reads them, defaults included.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub options: serde_json::Value,
    /// Hex SHA-256 of `options` serialised with sorted keys.
    pub options_sha256: String,
    /// Which attempt (SQS receive) this was.
    pub attempt: u32,
    /// The main frame's document responses in order: the redirects, then
    /// the page (client-side redirects included).
    pub documents: Vec<DocumentResponse>,
    /// The URL of the page that was captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_url: Option<String>,
    /// The HTTP status of the captured page's document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Hosts the egress guard connected to, with the address it chose.
    pub connected: Vec<Connection>,
    /// Requests the URL policy refused: in the egress guard (`host:port`)
    /// or, for an address literal or another scheme, already inside the
    /// browser (the URL).
    pub refused_by_policy: Vec<Refusal>,
    /// Requests the job's own rules (block lists, resource kinds, URL
    /// patterns) kept from loading: how many, and the first URLs.
    pub blocked_by_rules: u32,
    pub blocked_urls: Vec<String>,
    /// Requests that found no host or no connection.
    pub failed_requests: Vec<FailedRequest>,
    /// `console.error` calls and uncaught exceptions in the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_errors: Option<u32>,
    pub timings_ms: Timings,
    /// Chromium's product string, such as `Chrome/131.0.6778.85`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    /// The stored image (or PDF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageFacts>,
    /// A full-page capture was cut at the height limit.
    pub truncated: bool,
}

/// One response of the main frame's document.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentResponse {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// A host the egress guard connected to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Connection {
    /// `host:port` as requested.
    pub target: String,
    /// The checked address connected to.
    pub address: String,
}

/// A request the egress guard refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// `host:port` (or URL) as requested.
    pub target: String,
    pub reason: String,
}

/// A request that could not be carried.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRequest {
    pub target: String,
    /// `name_not_found`, `resolver` or `connect`.
    pub kind: String,
    pub detail: String,
}

/// Milliseconds per phase; a phase the job did not reach is absent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// From the producer's send to the worker's receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_wait: Option<u64>,
    /// Waiting for a render slot and a page of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u64>,
    /// Setting the page up and loading it, to its `load` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub navigation: Option<u64>,
    /// The wait condition, styles, pre-scroll and the delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
    /// Capturing and encoding (and the thumbnail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<u64>,
    /// Storing the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<u64>,
}

/// The stored image.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFacts {
    pub content_type: String,
    pub size_bytes: u64,
    /// Pixels (for a PDF, of the page as laid out).
    pub width: u32,
    pub height: u32,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl RenderReport {
    /// A report for job `id` of `url` with `options`, before rendering.
    pub fn new(job_id: Uuid, url: &str, options: &RenderOptions, attempt: u32) -> Self {
        // serde_json's maps are sorted: the same options give the same text.
        let options = serde_json::to_value(options).unwrap_or_default();
        let options_sha256 = sha256_hex(options.to_string().as_bytes());
        Self {
            job_id,
            url: url.to_owned(),
            options,
            options_sha256,
            attempt,
            ..Self::default()
        }
    }

    /// Serialise for storage.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("report serialises: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_hash_ignores_how_the_options_were_spelled() {
        let id = Uuid::nil();
        let a: RenderOptions =
            serde_json::from_str(r#"{"width": 800, "full_page": true}"#).unwrap();
        let b: RenderOptions =
            serde_json::from_str(r#"{"full_page": true, "width": 800, "height": 800}"#).unwrap();
        let c: RenderOptions = serde_json::from_str(r#"{"width": 801}"#).unwrap();
        let report = |o| RenderReport::new(id, "https://example.com/", o, 1);
        assert_eq!(report(&a).options_sha256, report(&b).options_sha256);
        assert_ne!(report(&a).options_sha256, report(&c).options_sha256);
        assert_eq!(report(&a).options["width"], 800);
        assert_eq!(report(&a).options_sha256.len(), 64);
    }

    #[test]
    fn a_report_round_trips_and_leaves_out_what_it_does_not_know() {
        let report = RenderReport::new(
            Uuid::nil(),
            "https://example.com/",
            &RenderOptions::default(),
            2,
        );
        let json = report.to_json();
        assert!(
            !json.contains("final_url") && !json.contains("\"upload\""),
            "{json}"
        );
        let back: RenderReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
