//! The result cache: a submit with `cache_ttl` whose URL and options were
//! rendered recently gets that result instead of a new job, and identical
//! submits that arrive together share one job.
//!
//! No database: a pointer object per cache key, `<prefix>cache/<key>.json`,
//! names the job that renders it. The key is a SHA-256 over the client's
//! scope (its API key, or its link key), the normalised URL and the
//! options as the contract serialises them, so two requests that differ
//! only in spelling (`HTTP://Example.com:80/` and `http://example.com/`, or
//! the order of their fields) share a key, and two clients never do.
//!
//! A lookup is one `GET` of the pointer and, when it names a job accepted
//! within `cache_ttl`, the status poll of that job (one `HEAD` when it is
//! done). A miss creates the pointer with a conditional `PUT`
//! (`If-None-Match: *` for a new key, `If-Match: <etag>` to replace a stale
//! one) *before* the job is queued: of two concurrent misses exactly one
//! write succeeds, and the other reads the winner's pointer and shares its
//! job. SQS may deliver the winner's job more than once; every delivery
//! writes the same key, so the result is the same.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::api::{ApiError, AppState};

/// Longest `cache_ttl`, in seconds (30 days).
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// What a request asked of the cache (`cache_ttl`, `force`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRequest {
    /// Reuse a result accepted less than this long ago.
    pub ttl: Option<Duration>,
    /// Render again even when a fresh result exists (and make the new one
    /// the cached result).
    pub force: bool,
}

/// Take `cache_ttl` and `force` out of a request object (they are about
/// the request, not the render, so the job contract never sees them).
pub fn take_fields(object: &mut Map<String, Value>) -> Result<Option<CacheRequest>, ApiError> {
    let field_error = |field: &str, code: &str, message: String| ApiError {
        field: Some(field.into()),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    };
    let ttl = match object.remove("cache_ttl") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(secs) if (1..=MAX_TTL_SECONDS).contains(&secs) => Some(Duration::from_secs(secs)),
            _ => {
                return Err(field_error(
                    "cache_ttl",
                    "out_of_range",
                    format!("{n} is outside 1..={MAX_TTL_SECONDS} (seconds)"),
                ));
            }
        },
        Some(_) => {
            return Err(field_error(
                "cache_ttl",
                "wrong_type",
                "expected an integer number of seconds".into(),
            ));
        }
    };
    let force = match object.remove("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(field_error(
                "force",
                "wrong_type",
                "expected a boolean".into(),
            ));
        }
    };
    Ok((ttl.is_some() || force).then_some(CacheRequest { ttl, force }))
}

pub use url2png_core::report::hex;

/// Whose results a request may reuse: its API key's, or everyone's when
/// the API has no keys.
pub fn scope_of(headers: &HeaderMap) -> String {
    match crate::access::bearer(headers) {
        Some(token) => format!("key:{}", hex(&Sha256::digest(token.as_bytes()))),
        None => String::new(),
    }
}

/// The cache key of a job for a client `scope`: hex SHA-256 of the scope,
/// the normalised URL and the options in the contract's serialisation
/// (with sorted object keys).
pub fn key(
    scope: &str,
    url: &str,
    options: &url2png_core::RenderOptions,
    webhook_url: Option<&str>,
) -> String {
    let url = url::Url::parse(url)
        .map(String::from)
        .unwrap_or_else(|_| url.to_owned());
    // serde_json's maps are sorted: the same options give the same text.
    let options = serde_json::to_value(options)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(b"url2png cache v1\0");
    hash.update(scope.as_bytes());
    hash.update(b"\0");
    hash.update(url.as_bytes());
    hash.update(b"\0");
    hash.update(options.as_bytes());
    // A job with a webhook is shared only with submits naming the same
    // receiver: sharing it with another would leave that one unnotified.
    if let Some(webhook) = webhook_url {
        hash.update(b"\0webhook\0");
        hash.update(webhook.as_bytes());
    }
    hex(&hash.finalize())
}

/// What the pointer object holds.
#[derive(Debug, Serialize, Deserialize)]
struct Pointer {
    id: Uuid,
    url: String,
}

/// A pointer as read, with the ETag to replace it conditionally.
#[derive(Debug)]
pub struct Found {
    pub id: Uuid,
    pub etag: String,
}

/// How a pointer write is conditioned.
#[derive(Debug, Clone)]
pub enum Write {
    /// Only if there is none (`If-None-Match: *`).
    Create,
    /// Only if it is still the one read (`If-Match`).
    Replace(String),
    /// Whatever is there (`force`).
    Overwrite,
}

/// Why a pointer write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another request wrote the pointer first.
    #[error("another request wrote the cache entry first")]
    Lost,
    #[error(transparent)]
    Storage(ApiError),
}

fn pointer_key(state: &AppState, key: &str) -> String {
    format!("{}cache/{key}.json", state.layout.prefix())
}

/// Read the pointer for `key`.
pub async fn read(state: &AppState, key: &str) -> Result<Option<Found>, ApiError> {
    let got =
        crate::api::get_if_any(state, &pointer_key(state, key), "reading a cache entry").await?;
    Ok(got.map(|(bytes, etag)| {
        // A pointer that does not parse is replaced like a stale one.
        let id = serde_json::from_slice::<Pointer>(&bytes)
            .map(|p| p.id)
            .unwrap_or_else(|_| Uuid::nil());
        Found { id, etag }
    }))
}

/// Whether a job accepted as `id` is younger than `ttl`.
pub fn fresh(state: &AppState, id: Uuid, ttl: Duration) -> bool {
    url2png_core::id::verify(&state.id_secret, id).is_some_and(|minted| {
        SystemTime::now()
            .duration_since(minted.at)
            .unwrap_or_default()
            < ttl
    })
}

/// Point `key` at job `id` (whose URL is `url`), under `condition`.
pub async fn write(
    state: &AppState,
    key: &str,
    id: Uuid,
    url: &str,
    condition: Write,
) -> Result<(), WriteError> {
    let body = serde_json::to_vec(&Pointer {
        id,
        url: url.to_owned(),
    })
    .unwrap_or_default();
    let put = state
        .s3
        .put_object()
        .bucket(&state.bucket)
        .key(pointer_key(state, key))
        .content_type("application/json")
        .body(ByteStream::from(body));
    let put = match condition {
        Write::Create => put.if_none_match("*"),
        Write::Replace(etag) => put.if_match(etag),
        Write::Overwrite => put,
    };
    match put.send().await {
        Ok(_) => Ok(()),
        Err(e) if crate::api::lost_condition(&e) => Err(WriteError::Lost),
        Err(e) => Err(WriteError::Storage(crate::api::storage_unavailable(
            state,
            "writing a cache entry",
            aws_sdk_s3::error::DisplayErrorContext(&e),
        ))),
    }
}

/// Remove the pointer for `key` if it still names `id` (after its job
/// could not be queued), so that no later request waits for a job that
/// does not exist.
pub async fn forget(state: &AppState, key: &str, id: Uuid) {
    match read(state, key).await {
        Ok(Some(found)) if found.id == id => {
            let deleted = state
                .s3
                .delete_object()
                .bucket(&state.bucket)
                .key(pointer_key(state, key))
                .if_match(found.etag)
                .send()
                .await;
            if let Err(e) = deleted {
                tracing::warn!(
                    job_id = %id,
                    error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                    "could not remove the cache entry of a job that was not queued"
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(value: Value) -> url2png_core::RenderOptions {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn spellings_of_one_request_share_a_key_and_differences_do_not() {
        let base = key("", "http://example.com/a?b=1", &options(json!({})), None);
        assert_eq!(
            key("", "HTTP://Example.COM:80/a?b=1", &options(json!({})), None),
            base
        );
        assert_eq!(
            key(
                "",
                "http://example.com/a?b=1",
                &options(json!({"width": 1280})),
                None
            ),
            base,
            "a default spelled out is the same render"
        );
        let headers = |a, b| {
            key(
                "",
                "http://example.com/",
                &options(json!({"headers": {"x-a": a, "x-b": b}})),
                None,
            )
        };
        assert_eq!(headers("1", "2"), headers("1", "2"));
        for other in [
            key("", "http://example.com/a?b=2", &options(json!({})), None),
            key(
                "",
                "http://example.com/a?b=1",
                &options(json!({"width": 800})),
                None,
            ),
            key(
                "key:x",
                "http://example.com/a?b=1",
                &options(json!({})),
                None,
            ),
            key("", "https://example.com/a?b=1", &options(json!({})), None),
            key(
                "",
                "http://example.com/a?b=1",
                &options(json!({})),
                Some("https://example.com/hook"),
            ),
        ] {
            assert_ne!(other, base);
        }
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn request_fields_are_taken_and_checked() {
        let mut o = json!({"url": "x", "cache_ttl": 60, "force": true, "width": 5});
        let got = take_fields(o.as_object_mut().unwrap()).unwrap();
        assert_eq!(
            got,
            Some(CacheRequest {
                ttl: Some(Duration::from_secs(60)),
                force: true
            })
        );
        assert_eq!(o, json!({"url": "x", "width": 5}));
        let mut none = json!({"url": "x"});
        assert_eq!(take_fields(none.as_object_mut().unwrap()).unwrap(), None);
        for (bad, field, code) in [
            (json!({"cache_ttl": 0}), "cache_ttl", "out_of_range"),
            (json!({"cache_ttl": -5}), "cache_ttl", "out_of_range"),
            (json!({"cache_ttl": 2.5}), "cache_ttl", "out_of_range"),
            (
                json!({"cache_ttl": MAX_TTL_SECONDS + 1}),
                "cache_ttl",
                "out_of_range",
            ),
            (json!({"cache_ttl": "60"}), "cache_ttl", "wrong_type"),
            (json!({"force": "yes"}), "force", "wrong_type"),
        ] {
            let mut bad = bad;
            let e = take_fields(bad.as_object_mut().unwrap()).unwrap_err();
            assert_eq!(
                (e.field.as_deref(), e.code.as_str()),
                (Some(field), code),
                "{bad}"
            );
        }
    }
}
