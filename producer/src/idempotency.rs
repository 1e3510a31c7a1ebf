//! `Idempotency-Key` on the POST routes: a repeated key gets the first
//! answer, not a second job.
//!
//! The record of a key lives at `<prefix>idempotency/<hash>.json`, where
//! the hash covers the client's scope (its API key), the route and the key,
//! so clients never see each other's keys. A request with a key first
//! *reserves* it with a conditional `PUT` (`If-None-Match: *`): of two
//! concurrent requests with one key exactly one wins, and the other is
//! told `409 idempotency_in_progress`. The winner's answer is then stored
//! in the record (any 2xx or 4xx: a refusal is an answer too), and a
//! repeat within 24 hours gets it back with `Idempotent-Replayed: true`;
//! after a 5xx the reservation is removed, so the client's retry runs. A
//! repeat with another body is refused (`422 idempotency_key_reused`).
//!
//! Once reserved, the request runs in a task of its own, so a client that
//! hangs up does not leave a job queued with no answer recorded for it; a
//! reservation whose producer died is taken over once it is older than
//! the longest a request can take.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::{ApiError, AppState, storage_unavailable};
use crate::cache::hex;

/// How long an answer is replayed.
pub const REPLAY_FOR: Duration = Duration::from_secs(24 * 3600);

/// Longest accepted key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Largest answer stored for replay.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The header a replayed answer carries.
pub const REPLAYED: &str = "idempotent-replayed";

/// The job an answer is about, set by handlers on responses that are not
/// JSON (an image) so that a replay can point at it instead.
#[derive(Debug, Clone)]
pub struct AnswerLink(pub String);

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// Hex SHA-256 of the route and body of the request that reserved it.
    request: String,
    /// Unix seconds when it was reserved.
    reserved_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<Answer>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after: Option<String>,
    body: Value,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The request's `Idempotency-Key`, checked.
fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw.to_str().unwrap_or_default().trim();
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError {
            field: Some("Idempotency-Key".into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "Idempotency-Key must be 1..={MAX_KEY_BYTES} visible ASCII characters \
                     (a UUID is a good choice)"
                ),
            )
        });
    }
    Ok(Some(key.to_owned()))
}

/// Run `work`, the handling of a request to `route` with `body`, at most
/// once per `Idempotency-Key` (or just run it when there is none).
pub async fn run<F>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    route: &str,
    body: &Bytes,
    work: F,
) -> Result<Response, ApiError>
where
    F: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let Some(key) = key_of(headers)? else {
        return work.await;
    };
    let scope = crate::cache::scope_of(headers);
    let mut hash = Sha256::new();
    for part in [scope.as_bytes(), route.as_bytes(), key.as_bytes()] {
        hash.update(part);
        hash.update(b"\0");
    }
    let object = format!(
        "{}idempotency/{}.json",
        state.layout.prefix(),
        hex(&hash.finalize())
    );
    let mut request = Sha256::new();
    request.update(route.as_bytes());
    request.update(b"\0");
    request.update(body);
    let request = hex(&request.finalize());
    if let Some(replay) = reserve(state, &object, &request).await? {
        return Ok(replay);
    }
    let state = state.clone();
    tokio::spawn(async move {
        let response = work.await.into_response();
        finish(&state, &object, request, response).await
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the request failed: {e}"),
        )
    })
}

/// Reserve `object` for this request, or the answer to give instead.
async fn reserve(
    state: &AppState,
    object: &str,
    request: &str,
) -> Result<Option<Response>, ApiError> {
    let reservation = serde_json::to_vec(&Record {
        request: request.to_owned(),
        reserved_at: unix_now(),
        answer: None,
    })
    .unwrap_or_default();
    let put = |condition: Option<String>| {
        let put = state
            .s3
            .put_object()
            .bucket(&state.bucket)
            .key(object)
            .content_type("application/json")
            .body(ByteStream::from(reservation.clone()));
        match condition {
            None => put.if_none_match("*"),
            Some(etag) => put.if_match(etag),
        }
        .send()
    };
    let unavailable = |e| storage_unavailable(state, "reserving an Idempotency-Key", e);
    match put(None).await {
        Ok(_) => return Ok(None),
        Err(e) if crate::api::lost_condition(&e) => {}
        Err(e) => {
            return Err(unavailable(
                aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            ));
        }
    }
    let got = state
        .s3
        .get_object()
        .bucket(&state.bucket)
        .key(object)
        .send()
        .await
        .map_err(|e| unavailable(aws_sdk_s3::error::DisplayErrorContext(&e).to_string()))?;
    let etag = got.e_tag().unwrap_or_default().to_owned();
    let bytes = got
        .body
        .collect()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .into_bytes();
    let record: Option<Record> = serde_json::from_slice(&bytes).ok();
    let age = |r: &Record| Duration::from_secs(unix_now().saturating_sub(r.reserved_at));
    let abandoned = |r: &Record| r.answer.is_none() && age(r) > state.longest_request;
    match record {
        Some(r) if age(&r) <= REPLAY_FOR && !abandoned(&r) => {
            if r.request != request {
                return Err(ApiError {
                    field: Some("Idempotency-Key".into()),
                    ..ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for another request; use a new key for a new request",
                    )
                });
            }
            match r.answer {
                Some(answer) => Ok(Some(replay(answer))),
                None => Err(in_progress()),
            }
        }
        // Expired, abandoned or unreadable: take it over, unless another
        // request just did.
        _ => match put(Some(etag)).await {
            Ok(_) => Ok(None),
            Err(e) if crate::api::lost_condition(&e) => Err(in_progress()),
            Err(e) => Err(unavailable(
                aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            )),
        },
    }
}

fn in_progress() -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being answered; retry shortly",
        )
    }
}

fn replay(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = if answer.body.is_null() {
        status.into_response()
    } else {
        (status, axum::Json(answer.body)).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    for (name, value) in [
        (header::LOCATION, answer.location),
        (header::RETRY_AFTER, answer.retry_after),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, v);
        }
    }
    response
}

/// Record `response` as the answer for `object`, or drop the reservation
/// after a 5xx so that a retry runs; give the response back.
async fn finish(state: &AppState, object: &str, request: String, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let header_text = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let is_json =
        header_text(header::CONTENT_TYPE).is_some_and(|ct| ct.starts_with("application/json"));
    let link = parts.extensions.get::<AnswerLink>().cloned();
    // The body is read to store it (JSON) or passed through (an image).
    let (body, answer) = if is_json {
        match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
            Ok(bytes) => {
                let answer = Answer {
                    status: parts.status.as_u16(),
                    location: header_text(header::LOCATION),
                    retry_after: header_text(header::RETRY_AFTER),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                (axum::body::Body::from(bytes), Some(answer))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read an answer to record it");
                (axum::body::Body::empty(), None)
            }
        }
    } else {
        // An image: a replay redirects to it.
        let answer = link.map(|AnswerLink(location)| Answer {
            status: StatusCode::SEE_OTHER.as_u16(),
            location: Some(location),
            retry_after: None,
            body: Value::Null,
        });
        (body, answer)
    };
    let answer = answer.filter(|_| !parts.status.is_server_error());
    let stored = match answer {
        Some(answer) => {
            let record = Record {
                request,
                reserved_at: unix_now(),
                answer: Some(answer),
            };
            state
                .s3
                .put_object()
                .bucket(&state.bucket)
                .key(object)
                .content_type("application/json")
                .body(ByteStream::from(
                    serde_json::to_vec(&record).unwrap_or_default(),
                ))
                .send()
                .await
                .map(drop)
                .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
        }
        None => state
            .s3
            .delete_object()
            .bucket(&state.bucket)
            .key(object)
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string()),
    };
    if let Err(error) = stored {
        // The reservation stays until it counts as abandoned; a repeat
        // meanwhile is told to retry.
        tracing::warn!(%error, "could not record an Idempotency-Key's answer");
    }
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("idempotency-key", HeaderValue::from_str(v).unwrap());
            key_of(&h)
        };
        assert_eq!(key_of(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            with("3f1c0e2a-order-17").unwrap().as_deref(),
            Some("3f1c0e2a-order-17")
        );
        for bad in ["", "   ", "two words", &"k".repeat(MAX_KEY_BYTES + 1)] {
            let e = with(bad).unwrap_err();
            assert_eq!(
                (e.status, e.field.as_deref()),
                (StatusCode::BAD_REQUEST, Some("Idempotency-Key")),
                "{bad:?}"
            );
        }
        with(&"k".repeat(MAX_KEY_BYTES)).unwrap();
    }
}
