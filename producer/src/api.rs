//! The HTTP API: submit jobs, read their status, fetch their image.
//!
//! A submission is validated with the job contract and the URL policy
//! before anything is enqueued; bad input is answered 400/413/415/422 with
//! `{"error": {"code", "message", "field"}}`, never a 500 and never a
//! message on the queue. Status comes from S3 alone: the image, the failure
//! record, or neither (pending).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Value, json};
use url2png_core::job::{ContractError, ErrorCode, JobMessage, RenderOptions};
use url2png_core::keys::{FailureRecord, KeyLayout};
use url2png_core::policy::UrlPolicy;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::cache::CacheRequest;
use crate::sender::{Handoff, SendError, Sender};

/// Most jobs in one batch request.
pub const MAX_BATCH: usize = 100;

/// Longest `?wait=`, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub sender: Sender,
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub layout: KeyLayout,
    pub policy: UrlPolicy,
    pub presign_lifetime: Duration,
    /// The client that signs image URLs: `s3`, or one for the S3 endpoint
    /// clients reach when it differs from the producer's.
    pub presign_s3: aws_sdk_s3::Client,
    /// Where this API is reachable from clients, for the URLs it returns
    /// (empty: relative URLs).
    pub public_url: String,
    pub retry_after_secs: u64,
    /// Key of the tag in job ids (`url2png_core::id`).
    pub id_secret: Vec<u8>,
    /// The queue's message retention: how long a job may stay pending.
    pub retention: Duration,
    /// Who may submit jobs with scripts.
    pub scripts: crate::access::Scripts,
    /// The longest a request can take (its timeout and its wait), after
    /// which an unanswered `Idempotency-Key` reservation counts as
    /// abandoned.
    pub longest_request: Duration,
    /// Requests waiting for jobs to finish (`?wait=`, render links).
    pub waiters: crate::wait::Waiters,
    /// Render links' keys and settings.
    pub links: crate::links::LinkSettings,
    /// Whether jobs may name a `webhook_url` (the workers deliver them).
    pub webhooks: bool,
}

/// A validated request: the job, and what it asked of the cache.
#[derive(Debug, Clone)]
pub struct Submission {
    pub job: JobMessage,
    pub cache: Option<CacheRequest>,
}

/// A submission from a request's value, checked as [`job_from_value`]
/// does and for whether this client may run scripts.
fn admit(state: &AppState, headers: &HeaderMap, value: Value) -> Result<Submission, ApiError> {
    admit_as(state, value, state.scripts.allowed(headers))
}

/// A submission from a render link's query: scripts only when the
/// operator allows them to everyone.
pub(crate) fn admit_link(state: &AppState, value: Value) -> Result<Submission, ApiError> {
    admit_as(
        state,
        value,
        matches!(state.scripts, crate::access::Scripts::All),
    )
}

fn admit_as(state: &AppState, value: Value, scripts: bool) -> Result<Submission, ApiError> {
    let mut value = value;
    let cache = match &mut value {
        Value::Object(object) => {
            let mut cache = crate::cache::take_fields(object)?;
            if let Some(Value::Object(nested)) = object.get_mut("options")
                && let Some(inner) = crate::cache::take_fields(nested)?
            {
                cache = Some(inner);
            }
            cache
        }
        _ => None,
    };
    let job = job_from_value(value, &state.policy, &state.id_secret)?;
    if job.webhook_url.is_some() && !state.webhooks {
        return Err(ApiError {
            field: Some("webhook_url".into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "webhooks_disabled",
                "this service sends no webhooks: its operator has not set \
                 URL2PNG_WEBHOOK_QUEUE_URL",
            )
        });
    }
    if job.options.uses_scripts() && !scripts {
        let field = if job.options.script.is_some() {
            "script"
        } else {
            "wait_for_expression"
        };
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "scripts_not_allowed".into(),
            message: format!(
                "{field} runs JavaScript in the page, which this service allows only for \
                 the API keys its operator named (URL2PNG_SCRIPT_API_KEYS) or for everyone \
                 (URL2PNG_ALLOW_SCRIPTS)"
            ),
            field: Some(field.into()),
            retry_after: None,
        });
    }
    Ok(Submission { job, cache })
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

    fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.clone(),
            message: self.message.clone(),
            field: self.field.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.detail(),
        };
        let mut response = (self.status, Json(body)).into_response();
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
pub fn job_from_value(
    value: Value,
    policy: &UrlPolicy,
    id_secret: &[u8],
) -> Result<JobMessage, ApiError> {
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
    let webhook_url = match object.remove("webhook_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(webhook)) => Some(webhook),
        Some(_) => {
            return Err(ApiError {
                field: Some("webhook_url".into()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "wrong_type",
                    "expected a string",
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
        "webhook_url": webhook_url,
    });
    let mut job = JobMessage::parse(envelope.to_string().as_bytes())?;
    let refused = |field: &str, e: url2png_core::policy::PolicyError| ApiError {
        field: Some(field.into()),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "blocked_by_policy",
            e.to_string(),
        )
    };
    policy.check_url(&job.url).map_err(|e| refused("url", e))?;
    if let Some(webhook) = &job.webhook_url {
        policy
            .check_url(webhook)
            .map_err(|e| refused("webhook_url", e))?;
    }
    let now = std::time::SystemTime::now();
    job.id = url2png_core::id::mint(id_secret, job.options.format, now);
    job.submitted_at = Some(time::OffsetDateTime::from(now));
    Ok(job)
}

/// A screenshot request: the URL and the render options, at the top level
/// (`{"url": …, "width": 800}`) or in an `options` object.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitRequest {
    /// The page to render: an absolute http or https URL that the URL
    /// policy allows.
    #[schema(max_length = 8192, example = "https://example.com/")]
    pub url: String,
    /// Answer with a result of the same URL and options accepted less
    /// than this many seconds ago, if there is one (200, `cache: hit`), or
    /// share an identical job still pending; otherwise queue a new job and
    /// make it the cached one. Results are shared per API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 2592000)]
    pub cache_ttl: Option<u64>,
    /// Render again even if a fresh result exists, and make the new job
    /// the cached one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Where to POST the job's status document when it ends (`done` or
    /// `failed`), signed with `Url2png-Signature`; checked by the URL
    /// policy now and again when delivered. Needs webhooks on
    /// (`URL2PNG_WEBHOOK_QUEUE_URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 8192, example = "https://example.com/hooks/url2png")]
    pub webhook_url: Option<String>,
    #[serde(flatten)]
    #[schema(inline)]
    pub options: RenderOptions,
}

/// Several screenshot requests; each is accepted or refused on its own.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchRequest {
    #[schema(min_items = 1, max_items = 100)]
    pub jobs: Vec<SubmitRequest>,
}

/// A job that is on the queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    /// Always `pending` on acceptance.
    #[schema(example = "pending")]
    pub status: &'static str,
    /// Where to poll the job's status.
    pub status_url: String,
    /// Where the image will be (303 to it once done).
    pub image_url: String,
    /// With `cache_ttl` or `force`: whether this is a new job (`miss`) or
    /// an identical pending one (`shared`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheAnswer>,
}

/// The error body of every refusal.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What was wrong, in words for people and a code for programs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code, such as `out_of_range` or
    /// `blocked_by_policy`.
    #[schema(example = "out_of_range")]
    pub code: String,
    pub message: String,
    /// The request field at fault, when there is one.
    #[schema(example = "width")]
    pub field: Option<String>,
}

/// The outcome of one job of a batch, in the order sent. An accepted job
/// has the fields of a single submission's answer; a refused one has
/// `error`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    pub accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "pending")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// With `cache_ttl` or `force`: `hit` (status `done`, nothing queued),
    /// `shared` or `miss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheAnswer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

impl BatchItem {
    fn accepted(job: Accepted) -> Self {
        Self {
            accepted: true,
            id: Some(job.id),
            status: Some(job.status),
            status_url: Some(job.status_url),
            image_url: Some(job.image_url),
            cache: job.cache,
            error: None,
        }
    }

    fn of(state: &AppState, outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Queued { job, cache } => Self::accepted(accepted(state, job.id, *cache)),
            Outcome::Shared(id) => Self::accepted(accepted(state, *id, Some(CacheAnswer::Shared))),
            Outcome::Hit(id, _) => Self {
                status: Some("done"),
                ..Self::accepted(accepted(state, *id, Some(CacheAnswer::Hit)))
            },
        }
    }

    fn refused(error: &ApiError) -> Self {
        Self {
            accepted: false,
            id: None,
            status: None,
            status_url: None,
            image_url: None,
            cache: None,
            error: Some(error.detail()),
        }
    }
}

/// The answer to a batch: one result per job.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
}

pub use url2png_core::status::JobStatus;

fn accepted(state: &AppState, id: Uuid, cache: Option<CacheAnswer>) -> Accepted {
    let base = state.public_url.trim_end_matches('/');
    Accepted {
        id,
        status: "pending",
        status_url: format!("{base}/v1/screenshots/{id}"),
        image_url: format!("{base}/v1/screenshots/{id}/image"),
        cache,
    }
}

/// What the cache did for a request that gave `cache_ttl` or `force`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheAnswer {
    /// A fresh result existed: no job was queued.
    Hit,
    /// An identical job accepted within `cache_ttl` is still pending:
    /// this answer names it, and no job was queued.
    Shared,
    /// A new job was queued (none was fresh, or `force`).
    Miss,
}

/// How a submission was answered.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Queued as a new job.
    Queued {
        job: Box<JobMessage>,
        cache: Option<CacheAnswer>,
    },
    /// An identical job accepted within `cache_ttl` is still pending.
    Shared(Uuid),
    /// A fresh result exists.
    Hit(Uuid, Status),
}

impl Outcome {
    /// The job that answers the request.
    pub fn id(&self) -> Uuid {
        match self {
            Self::Queued { job, .. } => job.id,
            Self::Shared(id) | Self::Hit(id, _) => *id,
        }
    }
}

/// What a look in the cache found.
enum Look {
    /// Answer with this.
    Use(Outcome),
    /// Nothing usable; replace the stale entry with this ETag.
    Replace(String),
    /// No entry.
    Absent,
}

async fn look(state: &AppState, key: &str, ttl: Duration) -> Result<Look, ApiError> {
    let Some(found) = crate::cache::read(state, key).await? else {
        return Ok(Look::Absent);
    };
    if !crate::cache::fresh(state, found.id, ttl) {
        return Ok(Look::Replace(found.etag));
    }
    Ok(match status_of(state, found.id).await? {
        done @ Status::Done { .. } => Look::Use(Outcome::Hit(found.id, done)),
        Status::Pending => Look::Use(Outcome::Shared(found.id)),
        // A failed or lost job is not a result to reuse.
        _ => Look::Replace(found.etag),
    })
}

/// Queue a submission's job, or answer it from the cache.
///
/// Once the cache entry for a new job is written, the job is sent even if
/// the client hangs up (a task owns both), so an entry never names a job
/// that was not at least offered to SQS; when SQS refused it, the entry is
/// removed.
pub(crate) async fn place(
    state: &Arc<AppState>,
    scope: &str,
    submission: Submission,
    handoff: &Handoff,
) -> Result<Outcome, ApiError> {
    let Submission { job, cache } = submission;
    let Some(cache) = cache else {
        state
            .sender
            .send(job.clone(), handoff)
            .await
            .map_err(|e| send_failed(state, job.id, &e))?;
        return Ok(Outcome::Queued {
            job: Box::new(job),
            cache: None,
        });
    };
    use crate::cache::{Write, WriteError};
    let key = crate::cache::key(scope, &job.url, &job.options, job.webhook_url.as_deref());
    let mut condition = Write::Overwrite;
    if !cache.force
        && let Some(ttl) = cache.ttl
    {
        match look(state, &key, ttl).await? {
            Look::Use(outcome) => return Ok(outcome),
            Look::Replace(etag) => condition = Write::Replace(etag),
            Look::Absent => condition = Write::Create,
        }
    }
    if !handoff.commit() {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request timed out; nothing was queued",
        ));
    }
    let state = state.clone();
    let handoff = handoff.clone();
    let task = tokio::spawn(async move {
        match crate::cache::write(&state, &key, job.id, &job.url, condition).await {
            Ok(()) => {}
            Err(WriteError::Lost) => {
                // Another request made the entry first: share its job.
                let ttl = cache
                    .ttl
                    .unwrap_or(Duration::from_secs(crate::cache::MAX_TTL_SECONDS));
                if let Look::Use(outcome) = look(&state, &key, ttl).await? {
                    return Ok(outcome);
                }
                // Its job is gone already (failed at once): queue this one
                // without an entry.
            }
            Err(WriteError::Storage(e)) => return Err(e),
        }
        match state.sender.send(job.clone(), &handoff).await {
            Ok(()) => Ok(Outcome::Queued {
                job: Box::new(job),
                cache: Some(CacheAnswer::Miss),
            }),
            Err(e) => {
                if matches!(e, SendError::NotSent(_)) {
                    crate::cache::forget(&state, &key, job.id).await;
                }
                Err(send_failed(&state, job.id, &e))
            }
        }
    });
    task.await.unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("submitting failed: {e}"),
        ))
    })
}

/// Whether an S3 error means a conditional write lost to another writer.
pub(crate) fn lost_condition<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
{
    e.as_service_error().is_some_and(|s| {
        matches!(
            s.code(),
            Some("PreconditionFailed" | "ConditionalRequestConflict")
        )
    })
}

/// The body, or the API's error for one that is too large or unreadable.
pub type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// A request body's bytes, or the API's error for one that is too large
/// or unreadable.
fn body_bytes(body: Body) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "malformed"
        };
        ApiError::new(status, code, e.body_text())
    })
}

/// Parse a request body as JSON, with the API's error shape.
fn parse_json(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
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
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("body is not valid JSON: {e}"),
        )
    })
}

fn send_failed(state: &AppState, id: Uuid, e: &SendError) -> ApiError {
    tracing::warn!(job_id = %id, error = %e, "could not enqueue");
    let (code, message) = match e {
        SendError::NotSent(_) => (
            "queue_unavailable",
            "the job queue is not reachable; try again later".to_owned(),
        ),
        SendError::Unconfirmed(_) => (
            "queue_unconfirmed",
            format!(
                "the job queue did not confirm job {id}; it may still run, so poll {} before submitting again",
                accepted(state, id, None).status_url
            ),
        ),
    };
    ApiError {
        retry_after: Some(state.retry_after_secs),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

/// The request's handoff (set by the access guard), or a fresh one.
fn handoff_of(handoff: Option<Extension<Handoff>>) -> Handoff {
    handoff.map(|Extension(h)| h).unwrap_or_default()
}

/// Submit one screenshot job.
///
/// The job is validated (render bounds and the URL policy) and queued; the
/// answer names where its status and image will be.
#[utoipa::path(
    post,
    path = "/v1/screenshots",
    tag = "screenshots",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Answer a repeat of this request (same key, same body, same API key) within 24 hours with the first answer, marked `Idempotent-Replayed: true`, instead of queueing again; 1..=255 visible ASCII characters")),
    request_body(content = SubmitRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "With `cache_ttl`: a fresh result of the same request (`cache: hit`); nothing was queued", body = JobStatus,
            headers(("Location" = String, description = "The status URL"))),
        (status = 202, description = "Queued, or (`cache: shared`) an identical pending job", body = Accepted,
            headers(("Location" = String, description = "The status URL"))),
        (status = 400, description = "Not JSON, or not an object", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still being answered (code `idempotency_in_progress`); see Retry-After", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "A field is out of bounds or the URL is refused, or the Idempotency-Key was used for another body (code `idempotency_key_reused`)", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The queue is unreachable (code `queue_unavailable`: not queued), or did not confirm the job (code `queue_unconfirmed`: it may still run; the message names its status URL); see Retry-After", body = ErrorBody),
        (status = 504, description = "The request took longer than the request timeout before its job was sent; nothing was queued", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    handoff: Option<Extension<Handoff>>,
    axum::extract::Query(query): axum::extract::Query<SubmitQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let wait = query.wait()?;
    let want = Want::from_headers(&headers);
    let body = body_bytes(body)?;
    let handoff = handoff_of(handoff);
    let work = {
        let (state, headers, body) = (state.clone(), headers.clone(), body.clone());
        async move {
            let submission = admit(&state, &headers, parse_json(&headers, &body)?)?;
            let scope = crate::cache::scope_of(&headers);
            let outcome = place(&state, &scope, submission, &handoff).await?;
            answer(&state, outcome, wait, want, &handoff).await
        }
    };
    crate::idempotency::run(&state, &headers, "POST /v1/screenshots", &body, work).await
}

/// The answer to one submission: 202 with where to poll, or, when the job
/// is done (a cache hit, or finished within `wait`), 200 with its status or
/// the image itself (`want`).
async fn answer(
    state: &Arc<AppState>,
    outcome: Outcome,
    wait: Option<Duration>,
    want: Want,
    handoff: &Handoff,
) -> Result<Response, ApiError> {
    let (id, found, cache) = match outcome {
        Outcome::Hit(id, found) => (id, Some(Arc::new(found)), Some(CacheAnswer::Hit)),
        Outcome::Queued { job, cache } => {
            tracing::info!(job_id = %job.id, "job accepted");
            (job.id, None, cache)
        }
        Outcome::Shared(id) => {
            tracing::info!(job_id = %id, "request shares a pending job");
            (id, None, Some(CacheAnswer::Shared))
        }
    };
    let found = match (found, wait) {
        (Some(found), _) => Some(found),
        (None, Some(limit)) if !limit.is_zero() => {
            // Whatever this request queued is queued: from here on the
            // request's own timeout must not answer "nothing was queued".
            handoff.commit();
            crate::wait::finish(state, id, limit).await
        }
        _ => None,
    };
    let mut response = match found {
        None => (
            StatusCode::ACCEPTED,
            Json(accepted(
                state,
                id,
                cache.filter(|c| *c != CacheAnswer::Hit),
            )),
        )
            .into_response(),
        Some(found) if want == Want::Image => finished_image(state, id, &found).await?,
        Some(found) => {
            let mut body =
                serde_json::to_value(document(state, id, &found).await?).unwrap_or_default();
            if let Some(cache) = cache {
                body["cache"] = json!(cache);
            }
            (StatusCode::OK, Json(body)).into_response()
        }
    };
    let location = accepted(state, id, None).status_url;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// What a client asked to get back when its job is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The status document (JSON).
    Status,
    /// The image (or PDF) itself.
    Image,
}

impl Want {
    /// From `Accept`: the image when the client prefers an image or PDF
    /// type over JSON.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
            return Self::Status;
        };
        let (mut image, mut json) = (0.0f32, 0.0f32);
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let range = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            if range.starts_with("image/") || range == "application/pdf" {
                image = image.max(q);
            } else if range == "application/json" || range == "application/*" {
                json = json.max(q);
            }
        }
        if image > 0.0 && image > json {
            Self::Image
        } else {
            Self::Status
        }
    }
}

/// The finished job's image as the response body, or the error `GET
/// /v1/screenshots/{id}/image` gives when there is none.
pub(crate) async fn finished_image(
    state: &AppState,
    id: Uuid,
    found: &Status,
) -> Result<Response, ApiError> {
    let key = match found {
        Status::Done { key, .. } => key,
        Status::Failed(record) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                record.reason.as_str(),
                record.message.clone(),
            ));
        }
        Status::Expired => return Err(expired()),
        Status::Pending | Status::Unknown => return Err(unknown_id()),
    };
    let object = state
        .s3
        .get_object()
        .bucket(&state.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            storage_unavailable(
                state,
                "reading an image",
                aws_sdk_s3::error::DisplayErrorContext(&e),
            )
        })?;
    let content_type = object
        .content_type()
        .unwrap_or("application/octet-stream")
        .to_owned();
    let length = object.content_length();
    let stream = tokio_util::io::ReaderStream::new(object.body.into_async_read());
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = length.and_then(|n| HeaderValue::from_str(&n.to_string()).ok()) {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    let base = state.public_url.trim_end_matches('/');
    response
        .extensions_mut()
        .insert(crate::idempotency::AnswerLink(format!(
            "{base}/v1/screenshots/{id}/image"
        )));
    Ok(response)
}

fn expired() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "expired",
        "the job is older than the queue keeps messages and has no result",
    )
}

/// The query of `POST /v1/screenshots`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct SubmitQuery {
    /// Seconds to wait for the job to finish, 0..=60.
    pub wait: Option<String>,
}

impl SubmitQuery {
    /// `wait` as a duration, checked.
    pub fn wait(&self) -> Result<Option<Duration>, ApiError> {
        let Some(raw) = self.wait.as_deref() else {
            return Ok(None);
        };
        match raw.trim().parse::<u64>() {
            Ok(secs) if secs <= MAX_WAIT_SECONDS => Ok(Some(Duration::from_secs(secs))),
            _ => Err(ApiError {
                field: Some("wait".into()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "out_of_range",
                    format!("wait={raw:?}: give whole seconds, 0..={MAX_WAIT_SECONDS}"),
                )
            }),
        }
    }
}

/// Submit up to 100 jobs at once; each is accepted or refused on its own.
///
/// Takes `{"jobs": [...]}` (or a bare array). The answer is 202 when at
/// least one job was queued and 422 when none was.
#[utoipa::path(
    post,
    path = "/v1/screenshots/batch",
    tag = "screenshots",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Answer a repeat of this request (same key, same body, same API key) within 24 hours with the first answer, marked `Idempotent-Replayed: true`, instead of queueing again; 1..=255 visible ASCII characters")),
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "At least one job queued", body = BatchResponse),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still being answered (code `idempotency_in_progress`); see Retry-After", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "No job was queued, or `jobs` is not 1..=100 items", body = BatchResponse),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 504, description = "The request took longer than the request timeout before any of its jobs was sent; nothing was queued", body = ErrorBody),
    )
)]
pub async fn submit_batch(
    State(state): State<Arc<AppState>>,
    handoff: Option<Extension<Handoff>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let handoff = handoff_of(handoff);
    let work = {
        let (state, headers, body) = (state.clone(), headers.clone(), body.clone());
        async move {
            let jobs = match parse_json(&headers, &body)? {
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
            let headers = &headers;
            let scope = &crate::cache::scope_of(headers);
            let sends = jobs.into_iter().map(|value| {
                let state = state.clone();
                let handoff = handoff.clone();
                async move {
                    let submission = match admit(&state, headers, value) {
                        Ok(submission) => submission,
                        Err(e) => return BatchItem::refused(&e),
                    };
                    match place(&state, scope, submission, &handoff).await {
                        Ok(outcome) => BatchItem::of(&state, &outcome),
                        Err(e) => BatchItem::refused(&e),
                    }
                }
            });
            let results = futures::future::join_all(sends).await;
            let status = if results.iter().any(|r| r.accepted) {
                StatusCode::ACCEPTED
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            Ok((status, Json(BatchResponse { results })).into_response())
        }
    };
    crate::idempotency::run(&state, &headers, "POST /v1/screenshots/batch", &body, work).await
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError {
        field: Some("id".into()),
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid", "the id is not a UUID")
    })
}

/// What S3 says about a job.
#[derive(Debug)]
pub enum Status {
    Done {
        key: String,
        size: i64,
        content_type: Option<String>,
        metadata: HashMap<String, String>,
    },
    Failed(FailureRecord),
    Pending,
    /// Older than the queue's retention, and no result: there will be none.
    Expired,
    /// Not an id this API accepted, and nothing in the bucket for it.
    Unknown,
}

pub(crate) fn storage_unavailable(
    state: &AppState,
    what: &str,
    error: impl std::fmt::Display,
) -> ApiError {
    tracing::warn!(%error, "{what} failed");
    ApiError {
        retry_after: Some(state.retry_after_secs),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the image store is not reachable; try again later",
        )
    }
}

/// An id this API minted says its format: one `HEAD` of the image key
/// answers a poll for a finished job, a `GET` of the failure record one
/// that failed. Other ids (sent straight to the queue, or minted with
/// another secret) are looked for with a `LIST` of their prefix.
pub(crate) async fn status_of(state: &AppState, id: Uuid) -> Result<Status, ApiError> {
    let Some(minted) = url2png_core::id::verify(&state.id_secret, id) else {
        return match listed_status(state, id).await? {
            Status::Pending => Ok(Status::Unknown),
            found => Ok(found),
        };
    };
    let key = state.layout.image(id, minted.format);
    let head = state
        .s3
        .head_object()
        .bucket(&state.bucket)
        .key(&key)
        .send()
        .await;
    match head {
        Ok(head) => {
            return Ok(Status::Done {
                key,
                size: head.content_length().unwrap_or_default(),
                content_type: head.content_type().map(str::to_owned),
                metadata: head.metadata.unwrap_or_default(),
            });
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
        Err(e) => {
            return Err(storage_unavailable(
                state,
                "looking up a job's image",
                aws_sdk_s3::error::DisplayErrorContext(&e),
            ));
        }
    }
    if let Some(record) = failure_record(state, id).await? {
        return Ok(Status::Failed(record));
    }
    let age = minted.at.elapsed().unwrap_or_default();
    Ok(if age > state.retention {
        Status::Expired
    } else {
        Status::Pending
    })
}

/// The object at `key` and its ETag, or `None` when there is none.
pub(crate) async fn get_if_any(
    state: &AppState,
    key: &str,
    what: &str,
) -> Result<Option<(Bytes, String)>, ApiError> {
    let got = state
        .s3
        .get_object()
        .bucket(&state.bucket)
        .key(key)
        .send()
        .await;
    match got {
        Ok(object) => {
            let etag = object.e_tag().unwrap_or_default().to_owned();
            let bytes = object
                .body
                .collect()
                .await
                .map_err(|e| storage_unavailable(state, what, e))?
                .into_bytes();
            Ok(Some((bytes, etag)))
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
        Err(e) => Err(storage_unavailable(
            state,
            what,
            aws_sdk_s3::error::DisplayErrorContext(&e),
        )),
    }
}

/// The job's failure record, if there is one.
async fn failure_record(state: &AppState, id: Uuid) -> Result<Option<FailureRecord>, ApiError> {
    let got = get_if_any(state, &state.layout.failure(id), "reading a failure record").await?;
    Ok(got.and_then(|(bytes, _)| FailureRecord::from_json(&bytes).ok()))
}

/// The status of a job whose id does not say its format: a `LIST` of its
/// keys.
async fn listed_status(state: &AppState, id: Uuid) -> Result<Status, ApiError> {
    let prefix = format!("{}{id}.", state.layout.prefix());
    let listed = state
        .s3
        .list_objects_v2()
        .bucket(&state.bucket)
        .prefix(&prefix)
        .send()
        .await
        .map_err(|e| {
            storage_unavailable(
                state,
                "listing a job's objects",
                aws_sdk_s3::error::DisplayErrorContext(&e),
            )
        })?;
    let failure_key = state.layout.failure(id);
    let report_key = state.layout.report(id);
    let mut failure = false;
    for object in listed.contents() {
        let Some(key) = object.key() else { continue };
        if key == failure_key {
            failure = true;
        } else if key != report_key {
            // An image wins over a failure record: a later attempt succeeded.
            let head = state
                .s3
                .head_object()
                .bucket(&state.bucket)
                .key(key)
                .send()
                .await
                .ok();
            return Ok(Status::Done {
                key: key.to_owned(),
                size: object.size().unwrap_or_default(),
                content_type: head
                    .as_ref()
                    .and_then(|h| h.content_type())
                    .map(str::to_owned),
                metadata: head.and_then(|h| h.metadata).unwrap_or_default(),
            });
        }
    }
    if failure && let Some(record) = failure_record(state, id).await? {
        return Ok(Status::Failed(record));
    }
    Ok(Status::Pending)
}

fn unknown_id() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no job with this id was accepted here",
    )
}

pub(crate) async fn presign(state: &AppState, key: &str) -> Result<String, ApiError> {
    let config = PresigningConfig::expires_in(state.presign_lifetime)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let request = state
        .presign_s3
        .get_object()
        .bucket(&state.bucket)
        .key(key)
        .presigned(config)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(request.uri().to_owned())
}

/// A job's status: pending, done (with a presigned image URL) or failed.
#[utoipa::path(
    get,
    path = "/v1/screenshots/{id}",
    tag = "screenshots",
    params(("id" = Uuid, Path, description = "The job id")),
    responses(
        (status = 200, description = "Where the job stands", body = JobStatus),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No job with this id was accepted here", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 503, description = "The bucket is unreachable; see Retry-After", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let found = status_of(&state, id).await?;
    Ok(Json(document(&state, id, &found).await?).into_response())
}

/// The status document of job `id`, from what S3 said about it.
async fn document(state: &AppState, id: Uuid, found: &Status) -> Result<JobStatus, ApiError> {
    use url2png_core::status::{StoredImage, WEBHOOK_METADATA};
    let (mut document, webhook) = match found {
        Status::Done {
            key,
            size,
            content_type,
            metadata,
        } => (
            JobStatus::done(
                id,
                StoredImage {
                    url: presign(state, key).await?,
                    expires_in_seconds: state.presign_lifetime.as_secs(),
                    content_type: content_type.clone(),
                    size_bytes: *size,
                    metadata: metadata.clone(),
                },
                &state.public_url,
            ),
            metadata.get(WEBHOOK_METADATA).cloned(),
        ),
        Status::Failed(record) => (
            JobStatus::failed(id, record, &state.public_url),
            record.webhook_url.clone(),
        ),
        Status::Pending => return Ok(JobStatus::Pending { id }),
        Status::Expired => return Ok(JobStatus::Expired { id }),
        Status::Unknown => return Err(unknown_id()),
    };
    if let Some(url) = webhook {
        document.set_webhook(webhook_state(state, id, url).await?);
    }
    Ok(document)
}

/// Where the delivery of job `id`'s webhook to `url` stands: its record,
/// or `pending` before the first attempt wrote one.
async fn webhook_state(
    state: &AppState,
    id: Uuid,
    url: String,
) -> Result<url2png_core::status::WebhookState, ApiError> {
    use url2png_core::status::{DeliveryState, WebhookState};
    let stored = get_if_any(state, &state.layout.webhook(id), "reading a webhook record").await?;
    Ok(stored
        .and_then(|(bytes, _)| serde_json::from_slice::<WebhookState>(&bytes).ok())
        .unwrap_or(WebhookState {
            url,
            state: DeliveryState::Pending,
            attempts: 0,
            last_attempt_at: None,
            last_status: None,
            last_error: None,
            next_attempt_at: None,
        }))
}

/// A job's render report: what the worker saw while rendering it.
#[utoipa::path(
    get,
    path = "/v1/screenshots/{id}/report",
    tag = "screenshots",
    params(("id" = Uuid, Path, description = "The job id")),
    responses(
        (status = 200, description = "The report of the stored image, or of the failed job's last attempt", body = url2png_core::report::RenderReport),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Not finished yet (code `pending`, see Retry-After), no report (code `no_report`: the job failed before rendering, or the report could not be stored), or no job with this id was accepted here (code `not_found`)", body = ErrorBody),
        (status = 410, description = "The job expired without a result", body = ErrorBody),
        (status = 503, description = "The bucket is unreachable; see Retry-After", body = ErrorBody),
    )
)]
pub async fn report(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let no_report = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_report",
            "this job has no render report",
        )
    };
    match status_of(&state, id).await? {
        Status::Done { .. } => {
            let (bytes, _) = get_if_any(&state, &state.layout.report(id), "reading a report")
                .await?
                .ok_or_else(no_report)?;
            let mut response = bytes.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(response)
        }
        Status::Failed(record) => match record.report {
            Some(report) => Ok(Json(report).into_response()),
            None => Err(no_report()),
        },
        Status::Pending => Err(ApiError {
            retry_after: Some(state.retry_after_secs),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "pending",
                "the job has not finished yet",
            )
        }),
        Status::Expired => Err(expired()),
        Status::Unknown => Err(unknown_id()),
    }
}

/// The image: a redirect to a presigned URL once it exists.
#[utoipa::path(
    get,
    path = "/v1/screenshots/{id}/image",
    tag = "screenshots",
    params(("id" = Uuid, Path, description = "The job id")),
    responses(
        (status = 303, description = "Done; Location is a presigned GET URL",
            headers(("Location" = String))),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Not rendered yet (code `pending`, see Retry-After), or no job with this id was accepted here (code `not_found`)", body = ErrorBody),
        (status = 410, description = "The job failed (the code is the failure reason) or expired (code `expired`)", body = ErrorBody),
        (status = 503, description = "The bucket is unreachable; see Retry-After", body = ErrorBody),
    )
)]
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
        Status::Expired => Err(expired()),
        Status::Unknown => Err(unknown_id()),
    }
}
