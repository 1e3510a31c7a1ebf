//! One message, from receipt to acknowledgement.
//!
//! The outcome decides what happens to the message:
//! - stored (or already stored, for a redelivery): the image is in S3, so
//!   the message is deleted;
//! - failed for good (a broken body, a refused or unloadable URL, an HTTP
//!   error the job asked to fail on): a failure record is stored, then the
//!   message is deleted;
//! - retryable (timeout, browser crash, S3 trouble): the message is hidden
//!   for a backoff that grows with its receive count; on its last attempt
//!   ([`Attempts`]) the failure record is written instead, and the message
//!   is left to the queue's redrive policy, which moves it to the
//!   dead-letter queue (without one, it is deleted), so every job ends
//!   `done` or `failed`;
//! - cancelled at shutdown: the message is made visible at once.
//!
//! What a failure is called is decided in [`crate::failure`] alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url2png_core::job::JobMessage;
use url2png_core::keys::{FailureRecord, KeyLayout};
use uuid::Uuid;

use crate::ack::Acker;
use crate::attempts::Attempts;
use crate::backoff::retry_visibility_secs;
use crate::failure::JobFailure;
use crate::heartbeat::Heartbeat;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::render::Rendered;
use url2png_core::report::{ImageFacts, RenderReport};

/// What every job needs; shared by all of them.
#[derive(Debug)]
pub struct Ctx {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub layout: KeyLayout,
    pub pool: Pool,
    pub policy: Arc<url2png_core::policy::UrlPolicy>,
    pub heartbeat: Heartbeat,
    pub acker: Acker,
    pub metrics: Metrics,
    pub visibility: Duration,
    pub render_timeout: Duration,
    pub cdp_timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How many attempts a job has.
    pub attempts: Arc<Attempts>,
    /// Job ids being handled in this process. SQS delivers at least once,
    /// and two deliveries of one job can arrive together; the second waits
    /// instead of rendering the same page (or recording the same failure)
    /// twice.
    pub rendering: Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>,
    /// One permit per job that may render at once (the concurrency); the
    /// prefetched jobs beyond it wait here for a page.
    pub renders: Arc<tokio::sync::Semaphore>,
    /// Whether jobs may run their own JavaScript.
    pub allow_scripts: bool,
    /// Ad, tracker and consent pop-up blocking.
    pub blockers: Arc<crate::blocking::Blockers>,
    /// Chromium's product string, read from the first page.
    pub browser: std::sync::OnceLock<String>,
    /// Where the ends of jobs with a `webhook_url` are queued.
    pub webhooks: Option<crate::webhook::Webhooks>,
    /// Messages held: the `jobs_in_flight` gauge and ECS scale-in
    /// protection.
    pub busy: crate::protection::Busy,
}

/// A job id in [`Ctx::rendering`], removed on drop.
struct Claim<'a>(&'a Ctx, Uuid);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut ids) = self.0.rendering.lock() {
            ids.remove(&self.1);
        }
    }
}

impl Ctx {
    /// Claim `id` for handling here; `None` when it already is.
    fn claim(&self, id: Uuid) -> Option<Claim<'_>> {
        let mut ids = self.rendering.lock().ok()?;
        ids.insert(id).then(|| Claim(self, id))
    }
}

enum Outcome {
    /// Done with the message: delete it. The label is the `outcome` metric.
    Done(&'static str),
    /// Try again after a backoff; the report of the attempt, if it got as
    /// far as having one, goes into the failure record of a last attempt.
    Retry(JobFailure, Option<Box<RenderReport>>),
    /// The last attempt failed and its record is written: leave the
    /// message to the queue's redrive policy (the dead-letter queue).
    DeadLetter,
    /// Cancelled at shutdown: hand back at once.
    Release,
}

/// Handle one received message. `received` is when its receive call was
/// made; `cancel` fires when the shutdown grace period is over.
pub async fn process(
    ctx: Arc<Ctx>,
    message: Message,
    received: Instant,
    cancel: CancellationToken,
) {
    let (Some(message_id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else {
        tracing::error!("message without id or receipt handle; ignoring it");
        return;
    };
    let attributes = message.attributes();
    let attribute = |name: MessageSystemAttributeName| attributes.and_then(|a| a.get(&name));
    let receive_count: u32 = attribute(MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let sent_at = attribute(MessageSystemAttributeName::SentTimestamp)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));

    ctx.heartbeat
        .track(message_id, receipt, received, ctx.visibility)
        .await;
    let held = ctx.busy.hold();
    let body = message.body().unwrap_or_default();
    let span = tracing::info_span!(
        "job",
        message_id,
        receive_count,
        job_id = tracing::field::Empty
    );
    let outcome = tokio::select! {
        outcome = handle(&ctx, message_id, body, receive_count, sent_at).instrument(span.clone()) => outcome,
        _ = cancel.cancelled() => Outcome::Release,
    };
    let _entered = span.enter();
    match outcome {
        Outcome::Done(label) => {
            ctx.acker.delete(message_id, receipt);
            ctx.metrics.jobs.with_label_values(&[label]).inc();
        }
        Outcome::Retry(failure, _) => {
            let secs = retry_visibility_secs(receive_count, ctx.retry_base, ctx.retry_max);
            tracing::warn!(reason = %failure.describe(), retry_in_secs = secs, "job failed; will retry");
            ctx.acker.release(message_id, receipt, secs).await;
            ctx.metrics.jobs.with_label_values(&["retried"]).inc();
        }
        Outcome::DeadLetter => {
            // Visible again at once: the next receive moves it to the
            // dead-letter queue.
            ctx.acker.release(message_id, receipt, 0).await;
            ctx.metrics.jobs.with_label_values(&["failed"]).inc();
        }
        Outcome::Release => {
            tracing::info!("shutting down; handing the message back");
            ctx.acker.release(message_id, receipt, 0).await;
            ctx.metrics.jobs.with_label_values(&["released"]).inc();
        }
    }
    drop(held);
}

async fn handle(
    ctx: &Ctx,
    message_id: &str,
    body: &str,
    receive_count: u32,
    sent_at: Option<SystemTime>,
) -> Outcome {
    let parsed = JobMessage::parse(body.as_bytes());
    let job = parsed.as_ref().ok().map(|job| (job.id, job.url.clone()));
    let webhook = parsed.as_ref().ok().and_then(|job| {
        let url = job.webhook_url.clone()?;
        Some((job.id, url, ctx.layout.image(job.id, job.options.format)))
    });
    let webhook_url = webhook.as_ref().map(|(_, url, _)| url.clone());
    let outcome = attempt(ctx, message_id, body, parsed, receive_count, sent_at).await;
    let outcome = match (outcome, job) {
        (Outcome::Retry(failure, report), Some((id, url)))
            if ctx.attempts.is_last(receive_count) =>
        {
            let failure = failure.last_attempt();
            tracing::warn!(
                reason = %failure.describe(),
                attempts = receive_count,
                "the job's last attempt failed; recording the failure"
            );
            let record = Recorded {
                url: Some(url),
                webhook_url,
            };
            match store_failure(ctx, id, record, failure, receive_count, report).await {
                Outcome::Done(_) if ctx.attempts.has_dead_letter_queue() => Outcome::DeadLetter,
                other => other,
            }
        }
        (outcome, _) => outcome,
    };
    let (Some((id, url, image_key)), Some(webhooks)) = (webhook, &ctx.webhooks) else {
        return outcome;
    };
    // The job has ended (its image or failure record is stored): queue the
    // delivery before the job's message goes. A redelivery of an ended job
    // queues it again; receivers see a delivery at least once.
    if !matches!(outcome, Outcome::Done(_) | Outcome::DeadLetter) {
        return outcome;
    }
    match webhooks.enqueue(id, &url, image_key).await {
        Ok(()) => outcome,
        Err(e) => {
            ctx.metrics.webhook_enqueue_failures.inc();
            match outcome {
                // Try the job again: its result is found stored, and the
                // delivery queued then.
                Outcome::Done(_) => Outcome::Retry(
                    JobFailure::transient(format!("queueing the webhook delivery: {e}")),
                    None,
                ),
                other => {
                    tracing::error!(error = %e, "queueing the last attempt's webhook delivery failed");
                    other
                }
            }
        }
    }
}

/// What a failure record says about the job besides the failure.
struct Recorded {
    url: Option<String>,
    webhook_url: Option<String>,
}

impl Recorded {
    fn of(job: &JobMessage) -> Self {
        Self {
            url: Some(job.url.clone()),
            webhook_url: job.webhook_url.clone(),
        }
    }
}

async fn attempt(
    ctx: &Ctx,
    message_id: &str,
    body: &str,
    parsed: Result<JobMessage, url2png_core::ContractError>,
    receive_count: u32,
    sent_at: Option<SystemTime>,
) -> Outcome {
    let (id, salvaged_url) = match &parsed {
        Ok(job) => (job.id, None),
        Err(_) => salvage(body, message_id),
    };
    tracing::Span::current().record("job_id", tracing::field::display(id));

    // Another delivery of this job is being handled here: wait for it (this
    // message stays invisible under the heartbeat meanwhile), then
    // acknowledge this one as a duplicate if the other left its result.
    // Handing it back instead would spend a receive per retry, and a page
    // slower than those retries would send the job to the dead-letter queue
    // while it is being rendered. This holds for broken bodies too: two
    // deliveries of one broken message give one failure, not two.
    let mut waited = false;
    let _claim = loop {
        if let Some(claim) = ctx.claim(id) {
            break claim;
        }
        if !waited {
            tracing::info!("another delivery of this job is being handled; waiting for it");
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // An image may be in S3 already when this is a redelivery, or when the
    // delivery waited for above finished. A failure is always looked for
    // first: failures are rare and cheap to check, and a broken body sent
    // twice (or delivered twice) is one failure.
    let seen_before = waited || receive_count > 1;

    let job = match parsed {
        Ok(job) => job,
        Err(e) => {
            if already_failed(ctx, id).await {
                return Outcome::Done("duplicate");
            }
            tracing::warn!(error = %e, "refusing a message that breaks the contract");
            return store_failure(
                ctx,
                id,
                Recorded {
                    url: salvaged_url,
                    webhook_url: None,
                },
                JobFailure::contract(&e),
                receive_count,
                None,
            )
            .await;
        }
    };
    let key = ctx.layout.image(job.id, job.options.format);
    let mut report = RenderReport::new(job.id, &job.url, &job.options, receive_count);
    report.timings_ms.queue_wait = sent_at.and_then(|t| t.elapsed().ok()).map(millis);

    if job.options.uses_scripts() && !ctx.allow_scripts {
        if already_failed(ctx, id).await {
            return Outcome::Done("duplicate");
        }
        tracing::info!("job with a script refused: scripts are off");
        return store_failure(
            ctx,
            job.id,
            Recorded::of(&job),
            JobFailure::scripts_off(),
            receive_count,
            Some(Box::new(report)),
        )
        .await;
    }

    // The first layer of the URL policy, before any browser is involved.
    // The egress guard checks again at connect time, on what the name
    // resolves to then.
    if let Err(e) = ctx.policy.check_url(&job.url) {
        if already_failed(ctx, id).await {
            return Outcome::Done("duplicate");
        }
        tracing::info!(error = %e, "URL refused by policy");
        return store_failure(
            ctx,
            job.id,
            Recorded::of(&job),
            JobFailure::policy(&e),
            receive_count,
            Some(Box::new(report)),
        )
        .await;
    }

    if seen_before && exists(ctx, &key).await {
        tracing::info!("image already stored; acknowledging the redelivery");
        return Outcome::Done("duplicate");
    }

    let started = Instant::now();
    let rendered = match render_job(ctx, &job, &mut report).await {
        Ok(rendered) => rendered,
        Err(failure) if failure.retryable => {
            return Outcome::Retry(failure, Some(Box::new(report)));
        }
        Err(failure) => {
            tracing::info!(reason = %failure.describe(), "job failed for good");
            return store_failure(
                ctx,
                job.id,
                Recorded::of(&job),
                failure,
                receive_count,
                Some(Box::new(report)),
            )
            .await;
        }
    };
    ctx.metrics
        .render_seconds
        .observe(started.elapsed().as_secs_f64());

    let thumbnail_started = Instant::now();
    let rendered = match job.options.thumbnail {
        None => rendered,
        Some(box_) => {
            let (format, quality) = (job.options.format, job.options.effective_quality());
            let mut rendered = rendered;
            let bytes = std::mem::take(&mut rendered.bytes);
            let made = tokio::task::spawn_blocking(move || {
                crate::thumbnail::make(bytes, format, quality, &box_)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|made| made);
            match made {
                Ok((bytes, width, height)) => Rendered {
                    bytes,
                    width,
                    height,
                    ..rendered
                },
                Err(e) => {
                    return Outcome::Retry(JobFailure::thumbnail(e), Some(Box::new(report)));
                }
            }
        }
    };
    if job.options.thumbnail.is_some() {
        let capture = report.timings_ms.capture.unwrap_or_default();
        report.timings_ms.capture = Some(capture + millis(thumbnail_started.elapsed()));
    }
    report.truncated = rendered.truncated;
    report.console_errors = rendered.console_errors;
    report.image = Some(ImageFacts {
        content_type: job.options.format.content_type().to_owned(),
        size_bytes: rendered.bytes.len() as u64,
        width: rendered.width,
        height: rendered.height,
        sha256: url2png_core::report::sha256_hex(&rendered.bytes),
    });
    let render_time = started.elapsed();
    tracing::debug!(elapsed = ?render_time, "rendered");
    let upload_started = Instant::now();
    match store_image(ctx, &job, &key, rendered, render_time).await {
        Ok(()) => {
            report.timings_ms.upload = Some(millis(upload_started.elapsed()));
            store_report(ctx, &report).await;
            if let Some(elapsed) = sent_at.and_then(|t| t.elapsed().ok()) {
                ctx.metrics
                    .queue_to_stored_seconds
                    .observe(elapsed.as_secs_f64());
            }
            tracing::info!(key, elapsed = ?started.elapsed(), "image stored");
            Outcome::Done("stored")
        }
        Err(e) => Outcome::Retry(
            JobFailure::transient(format!("storing the image: {e}")),
            Some(Box::new(report)),
        ),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Write what the lease saw into `report`.
fn observe(ctx: &Ctx, lease: &crate::pool::Lease, report: &mut RenderReport) {
    use url2png_core::report::{Connection, DocumentResponse, FailedRequest, MAX_ENTRIES, Refusal};
    let tab = lease.tab();
    report.documents = tab
        .document_responses()
        .into_iter()
        .map(|(url, status)| DocumentResponse { url, status })
        .collect();
    if let Some(last) = report.documents.last() {
        report.final_url = Some(last.url.clone());
        report.http_status = last.status;
    }
    report.connected = lease
        .connected()
        .into_iter()
        .map(|(target, addr)| Connection {
            target,
            address: addr.to_string(),
        })
        .take(MAX_ENTRIES)
        .collect();
    for event in lease.egress_events() {
        match event {
            crate::egress::EgressEvent::Blocked(b)
                if report.refused_by_policy.len() < MAX_ENTRIES =>
            {
                report.refused_by_policy.push(Refusal {
                    target: b.target,
                    reason: b.reason,
                });
            }
            crate::egress::EgressEvent::Unreached {
                target,
                kind,
                detail,
            } if report.failed_requests.len() < MAX_ENTRIES => {
                report.failed_requests.push(FailedRequest {
                    target,
                    kind: kind.code().to_owned(),
                    detail,
                });
            }
            _ => {}
        }
    }
    for (target, reason) in tab.refused_in_browser() {
        if report.refused_by_policy.len() < MAX_ENTRIES {
            report.refused_by_policy.push(Refusal { target, reason });
        }
    }
    (report.blocked_by_rules, report.blocked_urls) = tab.rules_blocked();
    let times = tab.phase_times();
    report.timings_ms.navigation = times.navigation.map(millis);
    report.timings_ms.wait = times.wait.map(millis);
    report.timings_ms.capture = times.capture.map(millis);
    report.browser = ctx.browser.get().cloned();
}

async fn render_job(
    ctx: &Ctx,
    job: &JobMessage,
    report: &mut RenderReport,
) -> Result<Rendered, JobFailure> {
    let started = Instant::now();
    let budget = Duration::from_millis(job.options.timeout_ms.into()).min(ctx.render_timeout);
    // Slots outnumber pages by the prefetch: a job may wait for the jobs
    // ahead of it, as long as a render may take.
    let wait = ctx.render_timeout.max(ctx.cdp_timeout * 3);
    let no_page = || JobFailure::timeout(url2png_core::keys::Phase::Page, None, wait.as_millis());
    let _render = match tokio::time::timeout(wait, ctx.renders.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        _ => return Err(no_page()),
    };
    let lease = ctx
        .pool
        .acquire(wait)
        .await
        .map_err(|e| JobFailure::transient(e.to_string()))?;
    tracing::debug!(elapsed = ?started.elapsed(), "page acquired");
    report.timings_ms.page = Some(millis(started.elapsed()));
    if ctx.browser.get().is_none()
        && let Some(product) = lease.tab().browser_product().await
    {
        let _ = ctx.browser.set(product);
    }
    let result = tokio::time::timeout(
        budget,
        lease.tab().render(&job.url, &job.options, &ctx.blockers),
    )
    .await;
    observe(ctx, &lease, report);
    match result {
        Ok(Ok(rendered)) => {
            let blocked = lease.blocked();
            if !blocked.is_empty() {
                tracing::info!(
                    count = blocked.len(),
                    first = %blocked[0].target,
                    "sub-resources refused by the egress guard; the page rendered without them"
                );
            }
            Ok(rendered)
        }
        Err(_) if !lease.browser_alive() => Err(JobFailure::browser_died()),
        Err(_) => Err(JobFailure::timeout(
            lease.tab().phase(),
            lease.tab().waiting_for().as_deref(),
            budget.as_millis(),
        )),
        Ok(Err(e)) => {
            if e.suspects_browser() {
                ctx.pool.report_suspect(&lease);
            }
            if !lease.browser_alive() {
                return Err(JobFailure::browser_died());
            }
            Err(JobFailure::render(&e, &lease.egress_events()))
        }
    }
}

/// What can be read from a body that breaks the contract: its `id` if it
/// is a UUID (so the status of that id shows the failure), else the SQS
/// message id; and its `url` if it is a string.
fn salvage(body: &str, message_id: &str) -> (Uuid, Option<String>) {
    let value: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
    };
    let id = field("id")
        .and_then(|s| Uuid::parse_str(s).ok())
        .or_else(|| Uuid::parse_str(message_id).ok())
        .unwrap_or_else(|| Uuid::new_v5(&Uuid::NAMESPACE_OID, message_id.as_bytes()));
    let url = field("url").map(|u| {
        let mut end = u.len().min(url2png_core::job::MAX_URL_BYTES);
        while !u.is_char_boundary(end) {
            end -= 1;
        }
        u[..end].to_owned()
    });
    (id, url)
}

/// Whether job `id`'s failure is recorded already (by another delivery of
/// it, or another message with its id): then this one is a duplicate.
async fn already_failed(ctx: &Ctx, id: Uuid) -> bool {
    let recorded = exists(ctx, &ctx.layout.failure(id)).await;
    if recorded {
        tracing::info!("failure already recorded; acknowledging the redelivery");
    }
    recorded
}

async fn exists(ctx: &Ctx, key: &str) -> bool {
    let started = std::time::Instant::now();
    let result = ctx
        .s3
        .head_object()
        .bucket(&ctx.bucket)
        .key(key)
        .send()
        .await;
    ctx.metrics.aws_call("s3", "HeadObject", started, &result);
    result.is_ok()
}

async fn store_image(
    ctx: &Ctx,
    job: &JobMessage,
    key: &str,
    rendered: Rendered,
    render_time: Duration,
) -> Result<(), String> {
    let options = &job.options;
    let mut request = ctx
        .s3
        .put_object()
        .bucket(&ctx.bucket)
        .key(key)
        .content_type(options.format.content_type())
        .metadata("job-id", job.id.to_string())
        .metadata("width", rendered.width.to_string())
        .metadata("height", rendered.height.to_string())
        .metadata(
            "device-scale-factor",
            options.device_scale_factor.to_string(),
        )
        .metadata("full-page", options.full_page.to_string())
        .metadata("truncated", rendered.truncated.to_string())
        .metadata("render-ms", render_time.as_millis().to_string());
    if let Some(status) = rendered.status {
        request = request.metadata("http-status", status.to_string());
    }
    if rendered.blocked_requests > 0 {
        request = request.metadata("blocked-requests", rendered.blocked_requests.to_string());
    }
    // The status API reads the delivery record only for jobs that have
    // one. The contract keeps it ASCII (encoded) and short.
    if let Some(webhook) = job.webhook_url.as_deref()
        && let Ok(parsed) = url::Url::parse(webhook)
    {
        request = request.metadata(url2png_core::status::WEBHOOK_METADATA, parsed.as_str());
    }
    // A large image may take longer to upload than a small call to answer.
    let timeouts =
        url2png_core::aws::upload_timeouts(ctx.s3.config().timeout_config(), rendered.bytes.len());
    let started = std::time::Instant::now();
    let result = request
        .body(ByteStream::from(rendered.bytes))
        .customize()
        .config_override(aws_sdk_s3::config::Builder::default().timeout_config(timeouts))
        .send()
        .await;
    ctx.metrics.aws_call("s3", "PutObject", started, &result);
    result
        .map(|_| ())
        .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
}

async fn store_failure(
    ctx: &Ctx,
    id: Uuid,
    recorded: Recorded,
    failure: JobFailure,
    attempts: u32,
    report: Option<Box<RenderReport>>,
) -> Outcome {
    let record = FailureRecord {
        id,
        url: recorded.url,
        reason: failure.reason,
        message: failure.message.clone(),
        detail: failure.detail.clone(),
        phase: failure.phase,
        http_status: failure.http_status,
        refused: failure.refused.clone(),
        attempts,
        failed_at: OffsetDateTime::now_utc(),
        report,
        webhook_url: recorded.webhook_url,
    };
    let started = std::time::Instant::now();
    let result = ctx
        .s3
        .put_object()
        .bucket(&ctx.bucket)
        .key(ctx.layout.failure(id))
        .content_type("application/json")
        .body(ByteStream::from(record.to_json().into_bytes()))
        .send()
        .await;
    ctx.metrics.aws_call("s3", "PutObject", started, &result);
    match result {
        Ok(_) => Outcome::Done("failed"),
        Err(e) => Outcome::Retry(
            JobFailure::transient(format!(
                "storing the failure record ({}): {}",
                failure.reason.as_str(),
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )),
            record.report,
        ),
    }
}

/// Store the render report next to the stored image. The image is the
/// job's result, so a report that cannot be stored is logged and counted,
/// not a reason to render again.
async fn store_report(ctx: &Ctx, report: &RenderReport) {
    let started = std::time::Instant::now();
    let result = ctx
        .s3
        .put_object()
        .bucket(&ctx.bucket)
        .key(ctx.layout.report(report.job_id))
        .content_type("application/json")
        .body(ByteStream::from(report.to_json().into_bytes()))
        .send()
        .await;
    ctx.metrics.aws_call("s3", "PutObject", started, &result);
    if let Err(e) = result {
        tracing::warn!(
            error = %aws_sdk_s3::error::DisplayErrorContext(&e),
            "could not store the render report; the image is stored"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvages_what_it_can_from_broken_bodies() {
        let mid = "0b7e5e1c-8a47-4f7e-a0f6-6c1b8a4f3a20";
        let (id, url) = salvage(
            r#"{"id":"6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11","url":"x","version":9}"#,
            mid,
        );
        assert_eq!(id.to_string(), "6f0c3c53-4d3c-4b07-9a8e-0f4b2d8f1a11");
        assert_eq!(url.as_deref(), Some("x"));
        let (id, url) = salvage("not json", mid);
        assert_eq!(id.to_string(), mid);
        assert_eq!(url, None);
        let (id, _) = salvage(r#"{"id": 42}"#, "not-a-uuid");
        assert_eq!(id, salvage("", "not-a-uuid").0, "stable for one message id");
        let long = format!(r#"{{"url":"{}"}}"#, "é".repeat(10_000));
        let (_, url) = salvage(&long, mid);
        assert!(url.unwrap().len() <= url2png_core::job::MAX_URL_BYTES);
    }
}
