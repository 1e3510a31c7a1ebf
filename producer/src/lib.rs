//! The producer library behind `url2png-producer`: the HTTP front door. It
//! validates screenshot requests, puts jobs on the SQS queue (coalescing
//! concurrent requests into batch sends), and reports status from S3.
//!
//! - [`api`]: the routes and their errors;
//! - [`access`]: API keys, rate limit, request timeout;
//! - [`cache`]: `cache_ttl`, `force` and shared identical submits;
//! - [`idempotency`]: `Idempotency-Key` on the POST routes;
//! - [`links`]: signed render links for `<img src>`;
//! - [`sender`]: coalesced `SendMessageBatch` calls;
//! - [`wait`]: waiting for a job inside a request (`?wait=`);
//! - [`openapi`]: `GET /openapi.json`, generated from [`api`];
//! - [`cli`]: `url2png-producer submit`.
//!
//! [`Producer::start`] takes its configuration and AWS clients as values,
//! so tests run the real thing against an emulator on loopback.

pub mod access;
pub mod api;
pub mod cache;
pub mod cli;
pub mod idempotency;
pub mod links;
pub mod openapi;
pub mod sender;
pub mod wait;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use clap::Parser;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;
use url2png_core::aws::Clients;
use url2png_core::config::{CommonArgs, IdArgs, PolicyArgs, StoreArgs, parse_addr};

use crate::api::AppState;
use crate::sender::{Sender, SenderMetrics};

/// Every setting, as a flag and an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "url2png-producer",
    version,
    about = "Accept screenshot requests and queue them."
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    /// HTTP address.
    #[arg(long, env = "URL2PNG_PRODUCER_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub links_out: url2png_core::config::LinkArgs,

    /// Most jobs in one SendMessageBatch call (1..=10).
    #[arg(long, env = "URL2PNG_SEND_BATCH_MAX", default_value_t = 10)]
    pub send_batch_max: usize,

    /// How long the first job of a batch waits for others, in milliseconds
    /// (0..=1000, and shorter than the request timeout).
    #[arg(long, env = "URL2PNG_SEND_LINGER_MS", default_value_t = 5)]
    pub send_linger_ms: u64,

    /// Largest request body, in bytes.
    #[arg(long, env = "URL2PNG_BODY_LIMIT_BYTES", default_value_t = 1024 * 1024)]
    pub body_limit_bytes: usize,

    /// API keys accepted as `Authorization: Bearer <key>`, comma-separated;
    /// empty: no authentication. Health and metrics stay open.
    #[arg(
        long,
        env = "URL2PNG_API_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub api_keys: String,

    /// Let every client submit jobs with their own JavaScript (`script`,
    /// `wait_for_expression`), which runs with the page's privileges.
    #[arg(long, env = "URL2PNG_ALLOW_SCRIPTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_scripts: bool,

    /// API keys whose requests may submit jobs with JavaScript,
    /// comma-separated (with `URL2PNG_ALLOW_SCRIPTS` off).
    #[arg(
        long,
        env = "URL2PNG_SCRIPT_API_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub script_api_keys: String,

    /// Render link keys and their secrets, `<key>:<secret>` comma-separated
    /// (secrets of at least 16 characters); empty: `GET /v1/render` is
    /// off.
    #[arg(
        long,
        env = "URL2PNG_LINK_SECRETS",
        default_value = "",
        hide_env_values = true
    )]
    pub link_secrets: String,

    /// How old a result a render link may be answered with, in seconds,
    /// when the link gives no `cache_ttl` (1..=2592000).
    #[arg(long, env = "URL2PNG_LINK_CACHE_TTL_SECONDS", default_value_t = 86_400)]
    pub link_cache_ttl_seconds: u64,

    /// How long a render link's view waits for its render before 503 with
    /// Retry-After, in seconds (0..=60).
    #[arg(long, env = "URL2PNG_LINK_WAIT_SECONDS", default_value_t = 20)]
    pub link_wait_seconds: u64,

    /// The queue the workers take webhook deliveries from. The producer
    /// sends nothing to it; set, jobs may name a `webhook_url`, and
    /// without it they are refused (`webhooks_disabled`).
    #[arg(long, env = "URL2PNG_WEBHOOK_QUEUE_URL", default_value = "")]
    pub webhook_queue_url: String,

    /// Requests per client per minute on the API (0: no limit).
    #[arg(long, env = "URL2PNG_RATE_LIMIT_PER_MINUTE", default_value_t = 0)]
    pub rate_limit_per_minute: u32,

    /// Identify clients by the last `X-Forwarded-For` entry (behind a load
    /// balancer that appends it, such as an ALB) instead of the peer.
    #[arg(long, env = "URL2PNG_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,

    /// Longest time an API request may take, in seconds (1..=3600). A
    /// submit past it before its job was sent gets 504 and queues nothing;
    /// one whose job is on the wire waits for SQS's answer.
    #[arg(long, env = "URL2PNG_REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,

    /// Retry-After given with 503 and with 404 while pending, in seconds.
    #[arg(long, env = "URL2PNG_RETRY_AFTER_SECONDS", default_value_t = 2)]
    pub retry_after_seconds: u64,

    #[command(flatten)]
    pub ids: IdArgs,

    /// After SIGTERM, how long to keep serving while `/healthz` and
    /// `/readyz` answer 503, so that a load balancer's health checks take
    /// the instance out before it stops accepting, in seconds. At least
    /// the balancer's check interval times its unhealthy threshold; 0 when
    /// the orchestrator deregisters the instance first (ECS with an ALB).
    #[arg(long, env = "URL2PNG_DRAIN_SECONDS", default_value_t = 0)]
    pub drain_seconds: u64,

    /// After the drain period, how long requests in flight get to finish,
    /// in seconds; new connections are refused from then on. Drain plus
    /// grace must stay below the container's stop timeout.
    #[arg(long, env = "URL2PNG_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
}

impl Config {
    /// Check settings that only make sense together.
    pub fn validate(&self) -> Result<(), String> {
        self.store.layout()?;
        self.common.aws_options()?;
        self.policy
            .policy()
            .map_err(|e| format!("URL2PNG_EGRESS_ALLOW/DENY/PORTS: {e}"))?;
        if !(1..=10).contains(&self.send_batch_max) {
            return Err(format!(
                "URL2PNG_SEND_BATCH_MAX={} is outside 1..=10",
                self.send_batch_max
            ));
        }
        self.links_out.check()?;
        if self.send_linger_ms > 1000 {
            return Err(format!(
                "URL2PNG_SEND_LINGER_MS={} is over 1000",
                self.send_linger_ms
            ));
        }
        if self.request_timeout_seconds == 0 || self.request_timeout_seconds > 3600 {
            return Err(format!(
                "URL2PNG_REQUEST_TIMEOUT_SECONDS={} is outside 1..=3600",
                self.request_timeout_seconds
            ));
        }
        if self.send_linger_ms >= self.request_timeout_seconds * 1000 {
            return Err(format!(
                "URL2PNG_SEND_LINGER_MS={} must be shorter than URL2PNG_REQUEST_TIMEOUT_SECONDS={}: every submit would time out waiting for its batch",
                self.send_linger_ms, self.request_timeout_seconds
            ));
        }
        self.links()?;
        if !(1..=cache::MAX_TTL_SECONDS).contains(&self.link_cache_ttl_seconds) {
            return Err(format!(
                "URL2PNG_LINK_CACHE_TTL_SECONDS={} is outside 1..={}",
                self.link_cache_ttl_seconds,
                cache::MAX_TTL_SECONDS
            ));
        }
        if self.link_wait_seconds > api::MAX_WAIT_SECONDS {
            return Err(format!(
                "URL2PNG_LINK_WAIT_SECONDS={} is over {}",
                self.link_wait_seconds,
                api::MAX_WAIT_SECONDS
            ));
        }
        if self.body_limit_bytes < 1024 {
            return Err("URL2PNG_BODY_LIMIT_BYTES must be at least 1024".into());
        }
        Ok(())
    }
}

impl Config {
    /// The render link settings.
    pub fn links(&self) -> Result<links::LinkSettings, String> {
        links::LinkSettings::new(
            &self.link_secrets,
            Duration::from_secs(self.link_cache_ttl_seconds),
            Duration::from_secs(self.link_wait_seconds),
        )
    }
}

/// Run with clients from the default AWS chain until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let clients = Clients::load(&config.common.aws_options().map_err(anyhow::Error::msg)?).await;
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let drain = Duration::from_secs(config.drain_seconds);
    Producer::start(config, clients)
        .await?
        .run_with_drain(shutdown, drain, grace)
        .await
}

/// Counts the producer's S3 calls by operation and HTTP status, so that
/// what a request costs in S3 (the cache, idempotency, waiting) is
/// measured rather than assumed.
#[derive(Debug)]
struct CountS3Calls(IntCounterVec);

impl aws_sdk_s3::config::Intercept for CountS3Calls {
    fn name(&self) -> &'static str {
        "CountS3Calls"
    }

    fn read_after_execution(
        &self,
        context: &aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let status = context
            .response()
            .map(|r| r.status().as_u16().to_string())
            .unwrap_or_else(|| "none".into());
        self.0.with_label_values(&[&operation, &status]).inc();
        Ok(())
    }
}

/// HTTP metrics.
#[derive(Debug, Clone)]
struct HttpMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    in_flight: IntGauge,
}

/// A started producer: listener bound, sender running.
#[derive(Debug)]
pub struct Producer {
    listener: tokio::net::TcpListener,
    router: Router,
    registry: Registry,
    /// Set on SIGTERM while the drain period runs.
    draining: Arc<AtomicBool>,
}

impl Producer {
    /// Bind the listener and build the routes.
    pub async fn start(config: Config, clients: Clients) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let registry = url2png_core::telemetry::new_registry();
        let ns = "url2png_producer";
        let http = HttpMetrics {
            requests: IntCounterVec::new(
                Opts::new("http_requests_total", "HTTP requests by route and status.")
                    .namespace(ns),
                &["route", "status"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "HTTP request latency by route.",
                )
                .namespace(ns)
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
                &["route"],
            )?,
            in_flight: IntGauge::with_opts(
                Opts::new("http_requests_in_flight", "HTTP requests being served now.")
                    .namespace(ns),
            )?,
        };
        let sender_metrics = SenderMetrics {
            batch_size: Histogram::with_opts(
                HistogramOpts::new("send_batch_size", "Entries per SendMessageBatch call.")
                    .namespace(ns)
                    .buckets((1..=10).map(f64::from).collect()),
            )?,
            sqs_requests: IntCounterVec::new(
                Opts::new("sqs_requests_total", "SQS calls by operation and result.").namespace(ns),
                &["operation", "result"],
            )?,
        };
        registry.register(Box::new(http.requests.clone()))?;
        registry.register(Box::new(http.seconds.clone()))?;
        registry.register(Box::new(http.in_flight.clone()))?;
        registry.register(Box::new(sender_metrics.batch_size.clone()))?;
        registry.register(Box::new(sender_metrics.sqs_requests.clone()))?;
        let s3_requests = IntCounterVec::new(
            Opts::new(
                "s3_requests_total",
                "S3 calls by operation and HTTP status (404 and 412 are expected answers of the cache and idempotency lookups).",
            )
            .namespace(ns),
            &["operation", "status"],
        )?;
        registry.register(Box::new(s3_requests.clone()))?;
        let s3 = aws_sdk_s3::Client::from_conf(
            clients
                .s3
                .config()
                .to_builder()
                .interceptor(CountS3Calls(s3_requests))
                .build(),
        );

        let sender = Sender::start(
            clients.sqs.clone(),
            config.store.queue_url.clone(),
            config.send_batch_max,
            Duration::from_millis(config.send_linger_ms),
            sender_metrics,
        );
        let retention = queue_retention(&clients.sqs, &config.store.queue_url).await;
        let state = Arc::new(AppState {
            sender,
            id_secret: config.ids.id_secret.as_bytes().to_vec(),
            retention,
            scripts: crate::access::Scripts::new(config.allow_scripts, &config.script_api_keys),
            s3,
            bucket: config.store.bucket.clone(),
            layout: config.store.layout().map_err(anyhow::Error::msg)?,
            policy: config.policy.policy().map_err(anyhow::Error::msg)?,
            presign_lifetime: config.links_out.presign_lifetime(),
            presign_s3: config.links_out.presigner(&clients.s3),
            public_url: config.links_out.public_url.clone(),
            retry_after_secs: config.retry_after_seconds,
            waiters: wait::Waiters::default(),
            webhooks: !config.webhook_queue_url.is_empty(),
            links: config.links().map_err(anyhow::Error::msg)?,
            longest_request: Duration::from_secs(
                config.request_timeout_seconds + api::MAX_WAIT_SECONDS + 30,
            ),
        });
        let ready = {
            let sqs = clients.sqs.clone();
            let queue_url = config.store.queue_url.clone();
            move || {
                let sqs = sqs.clone();
                let queue_url = queue_url.clone();
                async move {
                    let probe = sqs
                        .get_queue_attributes()
                        .queue_url(queue_url)
                        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                        .send();
                    match tokio::time::timeout(Duration::from_secs(3), probe).await {
                        Ok(Ok(_)) => (StatusCode::OK, "ready"),
                        _ => (StatusCode::SERVICE_UNAVAILABLE, "queue unreachable"),
                    }
                }
            }
        };
        let draining = Arc::new(AtomicBool::new(false));
        let access = Arc::new(access::Access::new(
            &config.api_keys,
            config.rate_limit_per_minute,
            config.trust_forwarded_for,
            Duration::from_secs(config.request_timeout_seconds.max(1)),
        ));
        let api = Router::new()
            .route("/v1/screenshots", post(api::submit))
            .route("/v1/screenshots/batch", post(api::submit_batch))
            .route("/v1/screenshots/{id}", get(api::status))
            .route("/v1/screenshots/{id}/image", get(api::image))
            .route("/v1/screenshots/{id}/report", get(api::report))
            .layer(axum::extract::DefaultBodyLimit::max(
                config.body_limit_bytes,
            ))
            .with_state(state.clone())
            .layer(middleware::from_fn_with_state(
                access.clone(),
                access::guard,
            ))
            // A render link carries its own signature instead of an API
            // key; the rate limit applies all the same.
            .merge(
                Router::new()
                    .route("/v1/render", get(links::render))
                    .with_state(state)
                    .layer(middleware::from_fn_with_state(
                        access.clone(),
                        access::limit,
                    )),
            )
            .route("/", get(index))
            .merge(
                Router::new()
                    .route("/healthz", get(|| async { "ok" }))
                    .route("/readyz", get(ready))
                    .route_layer(middleware::from_fn_with_state(
                        draining.clone(),
                        fail_while_draining,
                    )),
            )
            .merge(openapi::router(access.keys_required()))
            .layer(middleware::from_fn_with_state(http, record))
            .merge(url2png_core::telemetry::metrics_router(registry.clone()));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self {
            listener,
            router: api,
            registry,
            draining,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The metrics registry, for tests that read it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serve until `shutdown`, then give the requests in flight up to
    /// `grace` to finish.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> anyhow::Result<()> {
        self.run_with_drain(shutdown, Duration::ZERO, grace).await
    }

    /// Serve until `shutdown`; then keep serving for `drain` while the
    /// health endpoints answer 503 (a load balancer takes the instance
    /// out), then refuse new connections and give the requests in flight
    /// up to `grace` to finish.
    pub async fn run_with_drain(
        self,
        shutdown: CancellationToken,
        drain: Duration,
        grace: Duration,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "producer listening");
        let stop_accepting = CancellationToken::new();
        let draining = self.draining.clone();
        let drained = {
            let shutdown = shutdown.clone();
            let stop_accepting = stop_accepting.clone();
            async move {
                shutdown.cancelled().await;
                if !drain.is_zero() {
                    draining.store(true, Ordering::Release);
                    tracing::info!(
                        ?drain,
                        "draining: health checks fail, requests are still served"
                    );
                    tokio::time::sleep(drain).await;
                }
                stop_accepting.cancel();
            }
        };
        let serve = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
        let deadline = async {
            drained.await;
            tracing::info!(grace = ?grace, "shutting down: no new connections; finishing requests in flight");
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = serve => served?,
            () = deadline => tracing::warn!("requests still in flight after the grace period; exiting"),
        }
        tracing::info!("producer stopped");
        Ok(())
    }
}

/// In front of `/healthz` and `/readyz`: `503 draining` once the drain
/// period has begun, so a load balancer takes this instance out.
async fn fail_while_draining(
    State(draining): State<Arc<AtomicBool>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    if draining.load(Ordering::Acquire) {
        return axum::response::IntoResponse::into_response((
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
        ));
    }
    next.run(request).await
}

/// `GET /`: a small page to submit a URL and see the screenshot.
async fn index() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("web/index.html"))
}

/// Count and time every request by its route pattern (bounded labels).
async fn record(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    metrics.in_flight.inc();
    // Decremented on drop, so a request whose client went away still counts
    // out.
    let _in_flight = InFlight(&metrics.in_flight);
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    metrics
        .seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Decrements a gauge when dropped.
struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// SQS's default message retention, for a queue whose own cannot be read.
const DEFAULT_RETENTION: Duration = Duration::from_secs(4 * 24 * 3600);

/// How long the queue keeps a message: a job older than that without a
/// result will never get one.
async fn queue_retention(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Duration {
    use aws_sdk_sqs::types::QueueAttributeName;
    let read = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::MessageRetentionPeriod)
        .send();
    let seconds = match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(out)) => out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::MessageRetentionPeriod))
            .and_then(|v| v.parse::<u64>().ok()),
        _ => None,
    };
    match seconds {
        Some(s) => Duration::from_secs(s),
        None => {
            tracing::warn!(
                default_seconds = DEFAULT_RETENTION.as_secs(),
                "could not read the queue's message retention; assuming SQS's default"
            );
            DEFAULT_RETENTION
        }
    }
}
