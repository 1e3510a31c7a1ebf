//! The HTTP API: submit jobs, read their status, fetch their image.
//!
//! A submission is validated with the job contract and the URL policy
//! before anything is enqueued; bad input is answered 400/413/415/422 with
//! `{"error": {"code", "message", "field"}}`, never a 500 and never a
//! message on the queue. Status comes from S3 alone: the image, the failure
//! record, or neither (pending).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::presigning::PresigningConfig;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use url2png_core::job::{ContractError, ErrorCode, JobMessage};
use url2png_core::keys::{FailureRecord, KeyLayout};
use url2png_core::policy::UrlPolicy;
use uuid::Uuid;

use crate::sender::Sender;

/// Most jobs in one batch request.
pub const MAX_BATCH: usize = 100;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub sender: Sender,
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub layout: KeyLayout,
    pub policy: UrlPolicy,
    pub presign_lifetime: Duration,
    /// Where this API is reachable from clients, for the URLs it returns
    /// (empty: relative URLs).
    pub public_url: String,
    pub retry_after_secs: u64,
}

/// An API error, as `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "field": self.field}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<ContractError> for ApiError {
    fn from(e: ContractError) -> Self {
        let status = match e.code {
            ErrorCode::Malformed => StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        // The API takes options at the top level; name fields that way.
        let field = e
            .field
            .map(|f| f.strip_prefix("options.").map(str::to_owned).unwrap_or(f));
        Self {
            status,
            code: e.code.as_str().into(),
            message: e.message,
            field,
            retry_after: None,
        }
    }
}

/// Turn one request object into a validated job. The URL and the render
/// options are at the top level (`{"url": …, "width": 800}`); an
/// `options` object is accepted too.
pub fn job_from_value(value: Value, policy: &UrlPolicy) -> Result<JobMessage, ApiError> {
    let Value::Object(mut object) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "expected a JSON object",
        ));
    };
    let url = match object.remove("url") {
        Some(Value::String(url)) => url,
        Some(_) => {
            return Err(ApiError {
                field: Some("url".into()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "wrong_type",
                    "expected a string",
                )
            });
        }
        None => {
            return Err(ApiError {
                field: Some("url".into()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "missing_field",
                    "missing field",
                )
            });
        }
    };
    let options = match object.remove("options") {
        Some(nested) if object.is_empty() => nested,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "give render options either at the top level or in `options`, not both",
            ));
        }
        None => Value::Object(object),
    };
    // Reuse the contract's parser, so the API and the worker agree on every
    // bound and every error.
    let envelope = json!({
        "version": url2png_core::job::CURRENT_VERSION,
        "id": Uuid::new_v4(),
        "url": url,
        "options": options,
    });
    let mut job = JobMessage::parse(envelope.to_string().as_bytes())?;
    if let Err(e) = policy.check_url(&job.url) {
        return Err(ApiError {
            field: Some("url".into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "blocked_by_policy",
                e.to_string(),
            )
        });
    }
    job.submitted_at = Some(time::OffsetDateTime::now_utc());
    Ok(job)
}

#[derive(Debug, Serialize)]
struct Accepted {
    id: Uuid,
    status: &'static str,
    status_url: String,
    image_url: String,
}

fn accepted(state: &AppState, job: &JobMessage) -> Accepted {
    let base = state.public_url.trim_end_matches('/');
    Accepted {
        id: job.id,
        status: "pending",
        status_url: format!("{base}/v1/screenshots/{}", job.id),
        image_url: format!("{base}/v1/screenshots/{}/image", job.id),
    }
}

/// The body, or the API's error for one that is too large or unreadable.
pub type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// Parse a request body as JSON, with the API's error shape.
fn parse_body(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "malformed"
        };
        ApiError::new(status, code, e.body_text())
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the request as application/json",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("body is not valid JSON: {e}"),
        )
    })
}

fn send_failed(state: &AppState, e: &crate::sender::SendError) -> ApiError {
    tracing::warn!(error = %e, "could not enqueue");
    ApiError {
        retry_after: Some(state.retry_after_secs),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_unavailable",
            "the job queue is not reachable; try again later",
        )
    }
}

/// `POST /v1/screenshots`
pub async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let job = job_from_value(parse_body(&headers, body)?, &state.policy)?;
    state
        .sender
        .send(job.clone())
        .await
        .map_err(|e| send_failed(&state, &e))?;
    tracing::info!(job_id = %job.id, "job accepted");
    let accepted = accepted(&state, &job);
    let mut response = (StatusCode::ACCEPTED, Json(&accepted)).into_response();
    if let Ok(location) = HeaderValue::from_str(&accepted.status_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `POST /v1/screenshots/batch` with `{"jobs": [...]}` (or a bare array).
pub async fn submit_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let jobs = match parse_body(&headers, body)? {
        Value::Array(jobs) => jobs,
        Value::Object(mut o) => match o.remove("jobs") {
            Some(Value::Array(jobs)) => jobs,
            _ => {
                return Err(ApiError {
                    field: Some("jobs".into()),
                    ..ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        "expected `jobs`: an array",
                    )
                });
            }
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "expected an object with `jobs`",
            ));
        }
    };
    if jobs.is_empty() || jobs.len() > MAX_BATCH {
        return Err(ApiError {
            field: Some("jobs".into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "out_of_range",
                format!("{} jobs; send 1..={MAX_BATCH}", jobs.len()),
            )
        });
    }
    let sends = jobs.into_iter().map(|value| {
        let state = state.clone();
        async move {
            let job = match job_from_value(value, &state.policy) {
                Ok(job) => job,
                Err(e) => return json!({"accepted": false, "error": e.body()["error"].clone()}),
            };
            match state.sender.send(job.clone()).await {
                Ok(()) => {
                    let mut v = serde_json::to_value(accepted(&state, &job)).unwrap_or_default();
                    v["accepted"] = json!(true);
                    v
                }
                Err(e) => json!({"accepted": false, "error": send_failed(&state, &e).body()["error"].clone()}),
            }
        }
    });
    let results = futures::future::join_all(sends).await;
    let any = results.iter().any(|r| r["accepted"] == json!(true));
    let status = if any {
        StatusCode::ACCEPTED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, Json(json!({"results": results}))).into_response())
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError {
        field: Some("id".into()),
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid", "the id is not a UUID")
    })
}

/// What S3 says about a job.
enum Status {
    Done { key: String, size: i64 },
    Failed(FailureRecord),
    Pending,
}

async fn status_of(state: &AppState, id: Uuid) -> Result<Status, ApiError> {
    let prefix = format!("{}{id}.", state.layout.prefix());
    let started = Instant::now();
    let listed = state
        .s3
        .list_objects_v2()
        .bucket(&state.bucket)
        .prefix(&prefix)
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "listing a job's objects failed");
            ApiError {
                retry_after: Some(state.retry_after_secs),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "the image store is not reachable; try again later")
            }
        })?;
    tracing::debug!(elapsed = ?started.elapsed(), "status lookup");
    let failure_key = state.layout.failure(id);
    let mut failure = false;
    for object in listed.contents() {
        let Some(key) = object.key() else { continue };
        if key == failure_key {
            failure = true;
        } else {
            // An image wins over a failure record: a later attempt succeeded.
            return Ok(Status::Done {
                key: key.to_owned(),
                size: object.size().unwrap_or_default(),
            });
        }
    }
    if failure {
        let record = state
            .s3
            .get_object()
            .bucket(&state.bucket)
            .key(&failure_key)
            .send()
            .await
            .ok();
        if let Some(object) = record
            && let Ok(bytes) = object.body.collect().await
            && let Ok(record) = FailureRecord::from_json(&bytes.into_bytes())
        {
            return Ok(Status::Failed(record));
        }
    }
    Ok(Status::Pending)
}

async fn presign(state: &AppState, key: &str) -> Result<String, ApiError> {
    let config = PresigningConfig::expires_in(state.presign_lifetime)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let request = state
        .s3
        .get_object()
        .bucket(&state.bucket)
        .key(key)
        .presigned(config)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(request.uri().to_owned())
}

/// `GET /v1/screenshots/{id}`
pub async fn status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let body = match status_of(&state, id).await? {
        Status::Done { key, size } => {
            let head = state
                .s3
                .head_object()
                .bucket(&state.bucket)
                .key(&key)
                .send()
                .await
                .ok();
            let facts = head
                .as_ref()
                .and_then(|h| h.metadata())
                .map(|m| json!(m))
                .unwrap_or(json!({}));
            json!({
                "id": id,
                "status": "done",
                "image_url": presign(&state, &key).await?,
                "expires_in_seconds": state.presign_lifetime.as_secs(),
                "content_type": head.as_ref().and_then(|h| h.content_type()),
                "size_bytes": size,
                "render": facts,
            })
        }
        Status::Failed(record) => json!({
            "id": id,
            "status": "failed",
            "reason": record.reason,
            "message": record.message,
            "attempts": record.attempts,
            "failed_at": record.failed_at.format(&time::format_description::well_known::Rfc3339).ok(),
        }),
        Status::Pending => json!({"id": id, "status": "pending"}),
    };
    Ok(Json(body).into_response())
}

/// `GET /v1/screenshots/{id}/image`
pub async fn image(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match status_of(&state, id).await? {
        Status::Done { key, .. } => {
            let url = presign(&state, &key).await?;
            let mut response = StatusCode::SEE_OTHER.into_response();
            if let Ok(v) = HeaderValue::from_str(&url) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            Ok(response)
        }
        Status::Failed(record) => Err(ApiError::new(
            StatusCode::GONE,
            record.reason.as_str(),
            record.message,
        )),
        Status::Pending => Err(ApiError {
            retry_after: Some(state.retry_after_secs),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "pending",
                "the image is not ready yet",
            )
        }),
    }
}
