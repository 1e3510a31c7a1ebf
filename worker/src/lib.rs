//! The worker library behind `url2png-worker`: it renders screenshot jobs
//! from the SQS queue with a pool of headless Chromium tabs and stores the
//! images in S3.
//!
//! - [`receive`]: pollers that receive as many messages as there are free
//!   slots;
//! - [`process`]: one message from receipt to acknowledgement;
//! - [`pool`] and [`render`]: the Chromium pool and what is done on a page;
//! - [`heartbeat`] and [`ack`]: visibility extensions, deletes and releases;
//! - [`webhook`]: signed webhook deliveries from their own queue;
//! - [`protection`]: ECS task scale-in protection while messages are held;
//! - [`backoff`]: retry delays; [`config`]: settings; [`metrics`].
//!
//! [`Worker::start`] takes its configuration and AWS clients as values, so
//! tests run the real thing against an emulator on loopback.

pub mod ack;
pub mod attempts;
pub mod backoff;
pub mod blocking;
pub mod cdp;
pub mod config;
pub mod egress;
pub mod failure;
pub mod heartbeat;
pub mod in_page;
pub mod metrics;
pub mod pool;
pub mod process;
pub mod protection;
pub mod receive;
pub mod render;
pub mod rules;
pub mod thumbnail;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url2png_core::aws::Clients;

pub use config::Config;

use crate::ack::Acker;
use crate::attempts::Attempts;
use crate::egress::Egress;
use crate::heartbeat::Heartbeat;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolConfig};
use crate::process::Ctx;
use crate::receive::{ReceiveConfig, ReceiveState, Receiver};
use crate::render::RequestCheck;

/// Run with clients from the default AWS chain until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let clients = Clients::load(&config.common.aws_options().map_err(anyhow::Error::msg)?).await;
    let worker = Worker::start(config, clients).await?;
    worker.run(shutdown).await
}

/// A started worker: browsers launched, operations endpoint bound.
#[derive(Debug)]
pub struct Worker {
    config: Config,
    clients: Clients,
    pool: Pool,
    metrics: Metrics,
    registry: prometheus::Registry,
    listener: tokio::net::TcpListener,
}

impl Worker {
    /// Launch the browser pool and bind the operations endpoint.
    pub async fn start(config: Config, clients: Clients) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        if !config.egress_guard {
            tracing::warn!("the egress guard is off: pages may reach any address they resolve to");
        }
        let registry = url2png_core::telemetry::new_registry();
        let metrics = Metrics::register(&registry)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let pool = Pool::start(
            PoolConfig {
                chromium_path: config.chromium_path.clone(),
                extra_args: config
                    .chromium_args
                    .split_whitespace()
                    .map(str::to_owned)
                    .chain(
                        config
                            .accept_invalid_certs
                            .then(|| "--ignore-certificate-errors".to_owned()),
                    )
                    .collect(),
                sandbox: config.sandbox(),
                browsers: config.browsers,
                pages_per_browser: config.pages_per_browser,
                recycle_after: config.recycle_after,
                spare_pages: config.spare_pages,
                cdp_timeout: Duration::from_secs(config.cdp_timeout_seconds),
                navigation_timeout: Duration::from_secs(
                    config.render_timeout_seconds + config.cdp_timeout_seconds,
                ),
                probe_interval: Duration::from_secs(5),
                egress: config.egress_guard.then(|| {
                    Egress::new(config.policy.policy().unwrap_or_default(), metrics.clone())
                }),
                request_check: (config.egress_guard && config.browser_request_check).then(|| {
                    RequestCheck {
                        policy: Arc::new(config.policy.policy().unwrap_or_default()),
                        refused: metrics
                            .egress_requests
                            .with_label_values(&["job", "blocked_in_browser"]),
                    }
                }),
            },
            metrics.clone(),
        )
        .await?;
        Ok(Self {
            config,
            clients,
            pool,
            metrics,
            registry,
            listener,
        })
    }

    /// Address of `/healthz` and `/metrics`.
    pub fn ops_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The browser pool, for tests that break it.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The metrics, for tests that read them.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Receive and render until `shutdown`, then drain: stop receiving at
    /// once, give in-flight jobs the grace period, hand back what is left,
    /// send pending deletes, and close every browser. Browsers are closed on
    /// every path out of here.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        let result = self.serve(shutdown).await;
        pool.close().await;
        result
    }

    async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = &self.config;
        let sqs = self.clients.sqs.clone();
        let background = CancellationToken::new();
        let heartbeat = Heartbeat::new(
            sqs.clone(),
            config.store.queue_url.clone(),
            config.visibility(),
            Duration::from_secs(config.heartbeat_seconds),
            self.metrics.clone(),
        );
        let heartbeat_task = tokio::spawn(heartbeat.clone().run(background.clone()));
        let (acker, acker_task) = Acker::start(
            sqs.clone(),
            config.store.queue_url.clone(),
            heartbeat.clone(),
            self.metrics.clone(),
            Duration::from_millis(config.delete_flush_ms),
        );
        let attempts = Attempts::new(config.max_attempts);
        if let Err(e) = attempts.refresh(&sqs, &config.store.queue_url).await {
            tracing::warn!(
                error = %e,
                max_attempts = attempts.max(),
                "reading the queue's redrive policy failed; using the configured attempt limit until it works"
            );
        }
        let attempts_task = tokio::spawn(attempts.clone().run(
            sqs.clone(),
            config.store.queue_url.clone(),
            background.clone(),
        ));
        let webhooks = config.webhooks().map(|settings| {
            crate::webhook::Webhooks::new(
                settings,
                crate::webhook::WebhookParts {
                    sqs: sqs.clone(),
                    s3: self.clients.s3.clone(),
                    presigner: config.links.presigner(&self.clients.s3),
                    bucket: config.store.bucket.clone(),
                    layout: config.store.layout().unwrap_or_default(),
                    // Receivers are checked like pages, whether or not the
                    // browser's guard is on.
                    egress: Egress::new(
                        config.policy.policy().unwrap_or_default(),
                        self.metrics.clone(),
                    ),
                    metrics: self.metrics.clone(),
                },
            )
        });
        let webhook_stop = CancellationToken::new();
        let webhook_task = webhooks
            .clone()
            .map(|webhooks| tokio::spawn(webhooks.run(webhook_stop.clone())));
        let busy = crate::protection::Busy::with_gauge(self.metrics.in_flight.clone());
        let protection_stop = CancellationToken::new();
        let protection_task = config.protection().map(|settings| {
            tracing::info!(agent = %settings.agent_uri, "ECS task scale-in protection on");
            tokio::spawn(
                crate::protection::Protection::new(settings, busy.clone(), self.metrics.clone())
                    .run(protection_stop.clone()),
            )
        });
        let ctx = Arc::new(Ctx {
            busy,
            webhooks,
            s3: self.clients.s3.clone(),
            bucket: config.store.bucket.clone(),
            layout: config.store.layout().map_err(anyhow::Error::msg)?,
            pool: self.pool.clone(),
            policy: Arc::new(config.policy.policy().map_err(anyhow::Error::msg)?),
            heartbeat: heartbeat.clone(),
            acker: acker.clone(),
            metrics: self.metrics.clone(),
            visibility: config.visibility(),
            render_timeout: Duration::from_secs(config.render_timeout_seconds),
            cdp_timeout: Duration::from_secs(config.cdp_timeout_seconds),
            retry_base: Duration::from_secs(config.retry_base_seconds),
            retry_max: Duration::from_secs(config.retry_max_seconds),
            attempts: attempts.clone(),
            rendering: Arc::default(),
            renders: Arc::new(Semaphore::new(config.concurrency())),
            allow_scripts: config.allow_scripts,
            browser: std::sync::OnceLock::new(),
            blockers: Arc::new(crate::blocking::Blockers::new(
                &config.filter_lists_dir,
                &config.consent_script,
            )),
        });
        let state = Arc::new(ReceiveState::default());
        let jobs = TaskTracker::new();
        let job_cancel = CancellationToken::new();
        let receiver = Arc::new(Receiver {
            sqs,
            config: ReceiveConfig {
                queue_url: config.store.queue_url.clone(),
                concurrency: config.concurrency(),
                prefetch: config.prefetch,
                batch_max: config.receive_batch_max,
                wait_time_seconds: config.wait_time_seconds,
                visibility_timeout: config.visibility(),
                pollers: config.receive_pollers,
                gather: Duration::from_millis(config.receive_gather_ms),
                poll_pause: Duration::from_millis(config.poll_pause_ms),
            },
            ctx,
            slots: Arc::new(Semaphore::new(config.concurrency() + config.prefetch)),
            gather_lock: Mutex::new(()),
            state: state.clone(),
            jobs: jobs.clone(),
            job_cancel: job_cancel.clone(),
        });

        let ops = {
            let pool = self.pool.clone();
            let state = state.clone();
            url2png_core::telemetry::metrics_router(self.registry.clone()).route(
                "/healthz",
                get(move || {
                    let healthy = pool.live_browsers() > 0 && state.running();
                    async move {
                        if healthy {
                            (StatusCode::OK, "ok")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
                        }
                    }
                }),
            )
        };
        let ops_stop = CancellationToken::new();
        let ops_task = tokio::spawn(url2png_core::ops::serve(
            self.listener,
            ops,
            ops_stop.clone(),
        ));
        tracing::info!(
            concurrency = config.concurrency(),
            browsers = config.browsers,
            pages_per_browser = config.pages_per_browser,
            "worker started"
        );

        let receiving = receiver.clone().spawn(shutdown.clone());
        shutdown.cancelled().await;

        // Drain: the grace period runs from the signal. The pollers end
        // once their last long poll is in and handed back (at most the wait
        // time), while the jobs in flight go on.
        let grace = Duration::from_secs(config.shutdown_grace_seconds);
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(in_flight = jobs.len(), ?grace, "draining");
        if tokio::time::timeout_at(deadline, receiving).await.is_err() {
            tracing::warn!("grace period over with a receive still out");
        }
        drop(receiver);
        jobs.close();
        if tokio::time::timeout_at(deadline, jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = jobs.len(),
                "grace period over; handing unfinished messages back"
            );
            job_cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), jobs.wait()).await;
        }
        // Every message is deleted or handed back: the task may be
        // scaled in.
        protection_stop.cancel();
        if let Some(task) = protection_task {
            let _ = task.await;
        }
        // Deliveries stop after the jobs, so the ends of jobs finished in
        // the grace period are queued (they are delivered by any worker).
        webhook_stop.cancel();
        if let Some(task) = webhook_task {
            let _ = task.await;
        }
        acker.close();
        drop(acker);
        let _ = tokio::time::timeout(Duration::from_secs(10), acker_task).await;
        background.cancel();
        let _ = heartbeat_task.await;
        let _ = attempts_task.await;
        ops_stop.cancel();
        let _ = ops_task.await;
        tracing::info!("worker stopped");
        Ok(())
    }
}
