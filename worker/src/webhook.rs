//! Webhook deliveries: when a job ends, `done` or `failed`, its status
//! document is POSTed, signed, to the `webhook_url` the job named.
//!
//! - At the job's end the worker puts a [`WebhookMessage`] on the
//!   deliveries queue ([`Webhooks::enqueue`]) before the job's own message
//!   is deleted, so a crash in between sends it again rather than never.
//! - [`Webhooks::run`] takes deliveries from that queue, apart from the
//!   job queue and its slots: a slow or dead receiver holds no render.
//! - Each attempt builds the status document from the bucket (so the image
//!   URL is freshly presigned), checks the receiver with the URL policy and
//!   connects through [`Egress::connect`] to an address it checked, with no
//!   second lookup.
//! - A 2xx answer deletes the delivery. Anything else (no answer in time,
//!   a redirect, a 4xx or 5xx) hides it for a backoff that doubles with its
//!   receive count, and the queue's redrive policy moves it to the
//!   deliveries' dead-letter queue after its last attempt. A refusal by the
//!   policy is final.
//! - After every attempt the delivery's state is written to the bucket
//!   ([`KeyLayout::webhook`]), and the status API shows it.
//!
//! The body is signed with HMAC-SHA256 over `<unix time>.<body>`, sent as
//! `Url2png-Signature: t=<unix time>,v1=<hex>`
//! ([`url2png_core::status::signature`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Position;
use url2png_core::keys::{FailureRecord, KeyLayout};
use url2png_core::status::{
    DeliveryState, JobStatus, StoredImage, WEBHOOK_MESSAGE_VERSION, WebhookMessage, WebhookState,
};
use uuid::Uuid;

use crate::attempts::Attempts;
use crate::backoff::retry_visibility_secs;
use crate::egress::{ConnectError, Egress};
use crate::metrics::Metrics;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "url2png-signature";
/// The event header: `done` or `failed`.
pub const EVENT_HEADER: &str = "url2png-event";
/// The delivery's id (the same on every attempt of one delivery).
pub const DELIVERY_HEADER: &str = "url2png-delivery";
/// Most deliveries one receive asks for.
const RECEIVE_MAX: usize = 10;

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The deliveries queue.
    pub queue_url: String,
    /// The signing secret.
    pub secret: Vec<u8>,
    /// Time for one attempt: connecting, TLS, sending, the answer's head.
    pub timeout: Duration,
    /// First retry delay; it doubles with each receive, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Deliveries attempted at once.
    pub concurrency: usize,
    /// Long-poll wait of a receive, in seconds (0..=20).
    pub wait_time_seconds: u64,
    /// Attempts when the queue has no redrive policy.
    pub max_attempts: u32,
    /// The API's base URL, for the links in the document.
    pub public_url: String,
    /// Lifetime of the presigned image URL in the document.
    pub presign_lifetime: Duration,
}

/// Queues and delivers webhooks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: WebhookSettings,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    presigner: aws_sdk_s3::Client,
    bucket: String,
    layout: KeyLayout,
    egress: Egress,
    tls: Arc<rustls::ClientConfig>,
    attempts: Arc<Attempts>,
    metrics: Metrics,
}

/// Why an attempt did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undelivered {
    /// The URL policy refused the receiver: final.
    Refused(String),
    /// Try again later; the receiver's status when it answered.
    Failed { status: Option<u16>, error: String },
}

impl Undelivered {
    fn failed(error: impl Into<String>) -> Self {
        Self::Failed {
            status: None,
            error: error.into(),
        }
    }
}

/// The clients and settings [`Webhooks::new`] takes.
#[derive(Debug, Clone)]
pub struct WebhookParts {
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    /// Presigns image URLs (aimed where receivers reach S3).
    pub presigner: aws_sdk_s3::Client,
    pub bucket: String,
    pub layout: KeyLayout,
    pub egress: Egress,
    pub metrics: Metrics,
}

impl Webhooks {
    pub fn new(settings: WebhookSettings, parts: WebhookParts) -> Self {
        let attempts = Attempts::new(settings.max_attempts);
        Self {
            inner: Arc::new(Inner {
                settings,
                sqs: parts.sqs,
                s3: parts.s3,
                presigner: parts.presigner,
                bucket: parts.bucket,
                layout: parts.layout,
                egress: parts.egress,
                tls: tls_config(),
                attempts,
                metrics: parts.metrics,
            }),
        }
    }

    /// Queue the delivery of job `id`'s end to `url`; `image_key` is where
    /// its image is when it is done.
    pub async fn enqueue(&self, id: Uuid, url: &str, image_key: String) -> Result<(), String> {
        let inner = &self.inner;
        let message = WebhookMessage {
            version: WEBHOOK_MESSAGE_VERSION,
            id,
            url: url.to_owned(),
            image_key,
            ended_at: OffsetDateTime::now_utc(),
        };
        let started = Instant::now();
        let result = inner
            .sqs
            .send_message()
            .queue_url(&inner.settings.queue_url)
            .message_body(message.to_json())
            .send()
            .await;
        inner
            .metrics
            .aws_call("sqs", "SendMessage", started, &result);
        result
            .map(|_| ())
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
    }

    /// Deliver until `shutdown`, then let the attempts in flight finish
    /// (each is bounded by the attempt timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        if let Err(e) = inner
            .attempts
            .refresh(&inner.sqs, &inner.settings.queue_url)
            .await
        {
            tracing::warn!(error = %e, "reading the deliveries queue's redrive policy failed");
        }
        let refresh = tokio::spawn(inner.attempts.clone().run(
            inner.sqs.clone(),
            inner.settings.queue_url.clone(),
            shutdown.clone(),
        ));
        let permits = Arc::new(Semaphore::new(inner.settings.concurrency.max(1)));
        let tasks = TaskTracker::new();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let mut held = vec![first];
            while held.len() < RECEIVE_MAX {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => held.push(permit),
                    Err(_) => break,
                }
            }
            // A receive cut short by the shutdown leaves what it took
            // invisible until the receive's visibility runs out: late, not
            // lost.
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.receive(held.len()) => received,
            };
            match received {
                Ok(messages) => {
                    for message in messages {
                        let Some(permit) = held.pop() else { break };
                        let this = self.clone();
                        tasks.spawn(async move {
                            this.handle(message).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receiving webhook deliveries failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        tasks.close();
        let _ = tokio::time::timeout(inner.settings.timeout * 2, tasks.wait()).await;
        let _ = refresh.await;
    }

    /// How long a received delivery stays hidden: enough for its attempt,
    /// its bucket reads and its record.
    fn receive_visibility(&self) -> Duration {
        self.inner.settings.timeout * 2 + Duration::from_secs(30)
    }

    async fn receive(&self, max: usize) -> Result<Vec<Message>, String> {
        let inner = &self.inner;
        let wait = inner.settings.wait_time_seconds.min(20);
        let started = Instant::now();
        let result = inner
            .sqs
            .receive_message()
            .queue_url(&inner.settings.queue_url)
            .max_number_of_messages(i32::try_from(max).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait).unwrap_or(20))
            .visibility_timeout(
                i32::try_from(self.receive_visibility().as_secs()).unwrap_or(i32::MAX),
            )
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::default().timeout_config(
                url2png_core::aws::long_poll_timeouts(
                    inner.sqs.config().timeout_config(),
                    Duration::from_secs(wait),
                ),
            ))
            .send()
            .await;
        inner
            .metrics
            .aws_call("sqs", "ReceiveMessage", started, &result);
        result
            .map(|out| out.messages.unwrap_or_default())
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
    }

    async fn handle(&self, message: Message) {
        let inner = &self.inner;
        let (Some(message_id), Some(receipt)) = (message.message_id(), message.receipt_handle())
        else {
            return;
        };
        let receive_count: u32 = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let delivery = match WebhookMessage::parse(message.body().unwrap_or_default()) {
            Ok(delivery) => delivery,
            Err(e) => {
                tracing::error!(message_id, error = %e, "dropping a delivery that is not one");
                inner
                    .metrics
                    .webhook_deliveries
                    .with_label_values(&["invalid"])
                    .inc();
                self.acknowledge(receipt, None).await;
                return;
            }
        };
        let span = tracing::info_span!("webhook", job_id = %delivery.id, receive_count);
        let _entered = span.enter();
        let started = Instant::now();
        let result = self.attempt(&delivery, message_id).await;
        inner
            .metrics
            .webhook_seconds
            .observe(started.elapsed().as_secs_f64());
        let now = OffsetDateTime::now_utc();
        let mut state = WebhookState {
            url: delivery.url.clone(),
            state: DeliveryState::Pending,
            attempts: receive_count,
            last_attempt_at: now.format(&Rfc3339).ok(),
            last_status: None,
            last_error: None,
            next_attempt_at: None,
        };
        // The record first, then the message: the status never shows a
        // delivery as pending that is gone from the queue.
        let (label, visibility) = match result {
            Ok(status) => {
                tracing::info!(status, "webhook delivered");
                state.state = DeliveryState::Delivered;
                state.last_status = Some(status);
                ("delivered", None)
            }
            Err(Undelivered::Refused(reason)) => {
                tracing::warn!(%reason, "webhook refused by the URL policy; not retrying");
                state.state = DeliveryState::Refused;
                state.last_error = Some(reason);
                ("refused", None)
            }
            Err(Undelivered::Failed { status, error }) => {
                state.last_status = status;
                state.last_error = Some(error.clone());
                if inner.attempts.is_last(receive_count) {
                    tracing::warn!(%error, "webhook's last attempt failed");
                    state.state = DeliveryState::DeadLettered;
                    // Visible at once: the next receive moves it to the
                    // dead-letter queue. Without one it is dropped here.
                    let keep = inner.attempts.has_dead_letter_queue().then_some(0);
                    ("dead_lettered", keep)
                } else {
                    let secs = retry_visibility_secs(
                        receive_count,
                        inner.settings.retry_base,
                        inner.settings.retry_max,
                    );
                    tracing::info!(%error, retry_in_secs = secs, "webhook not delivered; will retry");
                    state.state = DeliveryState::Retrying;
                    state.next_attempt_at = (now + Duration::from_secs(secs.max(0) as u64))
                        .format(&Rfc3339)
                        .ok();
                    ("retried", Some(secs))
                }
            }
        };
        self.record(delivery.id, &state).await;
        self.acknowledge(receipt, visibility).await;
        inner
            .metrics
            .webhook_deliveries
            .with_label_values(&[label])
            .inc();
    }

    /// Delete the delivery (`None`) or hide it for `Some(seconds)`.
    async fn acknowledge(&self, receipt: &str, visibility: Option<i32>) {
        let inner = &self.inner;
        let queue = &inner.settings.queue_url;
        let started = Instant::now();
        let failed = match visibility {
            None => {
                let result = inner
                    .sqs
                    .delete_message()
                    .queue_url(queue)
                    .receipt_handle(receipt)
                    .send()
                    .await;
                inner
                    .metrics
                    .aws_call("sqs", "DeleteMessage", started, &result);
                result
                    .err()
                    .map(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
            }
            Some(secs) => {
                let result = inner
                    .sqs
                    .change_message_visibility()
                    .queue_url(queue)
                    .receipt_handle(receipt)
                    .visibility_timeout(secs)
                    .send()
                    .await;
                inner
                    .metrics
                    .aws_call("sqs", "ChangeMessageVisibility", started, &result);
                result
                    .err()
                    .map(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
            }
        };
        if let Some(error) = failed {
            // It comes back when its visibility runs out, and is tried
            // again: at least once, maybe twice.
            tracing::warn!(%error, "acknowledging a delivery failed");
        }
    }

    /// Store the delivery's state where the status API reads it.
    async fn record(&self, id: Uuid, state: &WebhookState) {
        let inner = &self.inner;
        let body = serde_json::to_vec(state).unwrap_or_default();
        let started = Instant::now();
        let result = inner
            .s3
            .put_object()
            .bucket(&inner.bucket)
            .key(inner.layout.webhook(id))
            .content_type("application/json")
            .body(body.into())
            .send()
            .await;
        inner.metrics.aws_call("s3", "PutObject", started, &result);
        if let Err(e) = result {
            tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "storing the webhook's state failed");
        }
    }

    /// One POST: the receiver's status when it answered 2xx.
    async fn attempt(
        &self,
        delivery: &WebhookMessage,
        delivery_id: &str,
    ) -> Result<u16, Undelivered> {
        let inner = &self.inner;
        let document = self.document(delivery).await.map_err(Undelivered::failed)?;
        let event = document.event().unwrap_or("done");
        let body = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
        let (url, _) = inner
            .egress
            .policy()
            .check_url(&delivery.url)
            .map_err(|e| Undelivered::Refused(e.to_string()))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let unix = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(&url[Position::BeforePath..Position::AfterQuery])
            .header(
                header::HOST,
                &url[Position::BeforeHost..Position::AfterPort],
            )
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("url2png-webhook/", env!("CARGO_PKG_VERSION")),
            )
            .header(
                SIGNATURE_HEADER,
                url2png_core::status::signature(&inner.settings.secret, unix, &body),
            )
            .header(EVENT_HEADER, event)
            .header(DELIVERY_HEADER, delivery_id);
        if !url.username().is_empty() {
            use base64::Engine;
            let user = percent_decoded(url.username());
            let password = percent_decoded(url.password().unwrap_or_default());
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            if let Ok(value) = HeaderValue::from_str(&format!("Basic {token}")) {
                request = request.header(header::AUTHORIZATION, value);
            }
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Undelivered::failed(e.to_string()))?;
        let https = url.scheme() == "https";
        let post = async {
            let (stream, peer) = inner
                .egress
                .connect(&host, port)
                .await
                .map_err(|e| match e {
                    ConnectError::Refused(e) => Undelivered::Refused(e.to_string()),
                    ConnectError::Unreached(e) => Undelivered::failed(e),
                })?;
            tracing::debug!(%peer, "webhook receiver connected");
            if https {
                let bare = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let name = rustls::pki_types::ServerName::try_from(bare)
                    .map_err(|e| Undelivered::failed(format!("TLS server name: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(inner.tls.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| Undelivered::failed(format!("TLS: {e}")))?;
                send(stream, request).await
            } else {
                send(stream, request).await
            }
        };
        let status = tokio::time::timeout(inner.settings.timeout, post)
            .await
            .map_err(|_| {
                Undelivered::failed(format!(
                    "no answer within {} s",
                    inner.settings.timeout.as_secs()
                ))
            })??;
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(Undelivered::Failed {
                status: Some(status),
                error: format!("the receiver answered {status}"),
            })
        }
    }

    /// The status document of the delivery's job, from the bucket.
    async fn document(&self, delivery: &WebhookMessage) -> Result<JobStatus, String> {
        let inner = &self.inner;
        let settings = &inner.settings;
        let started = Instant::now();
        let head = inner
            .s3
            .head_object()
            .bucket(&inner.bucket)
            .key(&delivery.image_key)
            .send()
            .await;
        inner.metrics.aws_call("s3", "HeadObject", started, &head);
        match head {
            Ok(head) => {
                let config = PresigningConfig::expires_in(settings.presign_lifetime)
                    .map_err(|e| e.to_string())?;
                let presigned = inner
                    .presigner
                    .get_object()
                    .bucket(&inner.bucket)
                    .key(&delivery.image_key)
                    .presigned(config)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(JobStatus::done(
                    delivery.id,
                    StoredImage {
                        url: presigned.uri().to_owned(),
                        expires_in_seconds: settings.presign_lifetime.as_secs(),
                        content_type: head.content_type().map(str::to_owned),
                        size_bytes: head.content_length().unwrap_or_default(),
                        metadata: head.metadata.unwrap_or_default(),
                    },
                    &settings.public_url,
                ));
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
            Err(e) => {
                return Err(format!(
                    "reading the job's image: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ));
            }
        }
        let started = Instant::now();
        let got = inner
            .s3
            .get_object()
            .bucket(&inner.bucket)
            .key(inner.layout.failure(delivery.id))
            .send()
            .await;
        inner.metrics.aws_call("s3", "GetObject", started, &got);
        let object = got.map_err(|e| match e.as_service_error() {
            Some(s) if s.is_no_such_key() => {
                "neither the job's image nor its failure record is in the bucket".to_owned()
            }
            _ => format!(
                "reading the job's failure record: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        })?;
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| format!("reading the job's failure record: {e}"))?
            .into_bytes();
        let record = FailureRecord::from_json(&bytes)
            .map_err(|e| format!("the job's failure record does not parse: {e}"))?;
        Ok(JobStatus::failed(
            delivery.id,
            &record,
            &settings.public_url,
        ))
    }
}

/// Send `request` on `stream`: the answer's status. The body is not read.
async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<u16, Undelivered>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Undelivered::failed(e.to_string()))?;
    let connection = tokio::spawn(connection);
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| Undelivered::failed(format!("sending: {e}")));
    connection.abort();
    Ok(answer?.status().as_u16())
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// TLS with the system's roots, on the AWS SDK's crypto provider.
fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading a system certificate failed");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system root certificates: https webhooks will fail");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|e| unreachable!("the default provider has the default versions: {e}"));
    Arc::new(config)
}
