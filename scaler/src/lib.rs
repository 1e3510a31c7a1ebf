//! The scaler library behind `url2png-scaler`.
//!
//! - [`publish`]: every interval, backlog per task to CloudWatch for ECS
//!   target tracking, wake from zero, optional scale to zero;
//! - [`policy`]: the arithmetic, shared with the simulator;
//! - [`sim`] and [`plot`]: `url2png-scaler simulate`.
//!
//! [`run`] takes its configuration and a shutdown token as values, so
//! tests start the real thing on loopback.

pub mod plot;
pub mod policy;
pub mod publish;
pub mod sim;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use url2png_core::aws::load_config;
use url2png_core::config::{CommonArgs, parse_addr};

use crate::policy::TargetTracking;
use crate::publish::{Clients, Metrics, Publisher, Settings};

/// The command line: the publisher by default, or `simulate`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "url2png-scaler",
    version,
    about = "Publish backlog per task for ECS target tracking, and wake the worker service from zero.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Simulate target tracking on backlog per task under a load profile.
    Simulate(SimulateArgs),
}

/// Every setting of the publisher, as a flag and an environment variable.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Address of the operations endpoint (`/healthz`, `/metrics`).
    #[arg(long, env = "URL2PNG_SCALER_LISTEN", default_value = "127.0.0.1:9092", value_parser = parse_addr)]
    pub listen: SocketAddr,

    /// The job queue's URL.
    #[arg(long, env = "URL2PNG_QUEUE_URL", default_value = "")]
    pub queue_url: String,

    /// The webhook deliveries queue, when webhooks are on: deliveries keep
    /// the worker service from zero (wake it, and hold off the scale to
    /// zero) and are published as `WebhookDeliveries`.
    #[arg(long, env = "URL2PNG_WEBHOOK_QUEUE_URL", default_value = "")]
    pub webhook_queue_url: String,

    /// The ECS cluster of the worker service (name or ARN).
    #[arg(long, env = "URL2PNG_ECS_CLUSTER", default_value = "")]
    pub cluster: String,

    /// The worker service's name.
    #[arg(long, env = "URL2PNG_ECS_SERVICE", default_value = "")]
    pub service: String,

    /// Seconds between ticks (10..=3600); under 60 publishes
    /// high-resolution metrics.
    #[arg(long, env = "URL2PNG_SCALER_INTERVAL_SECONDS", default_value_t = 60)]
    pub interval_seconds: u64,

    /// CloudWatch namespace.
    #[arg(long, env = "URL2PNG_METRIC_NAMESPACE", default_value = "url2png")]
    pub namespace: String,

    /// Dimensions of every datapoint, comma-separated, from cluster,
    /// service, queue.
    #[arg(
        long,
        env = "URL2PNG_METRIC_DIMENSIONS",
        default_value = "cluster,service,queue"
    )]
    pub dimensions: String,

    /// Count in-flight messages in the backlog (work not yet done).
    #[arg(long, env = "URL2PNG_BACKLOG_INCLUDES_IN_FLIGHT", default_value_t = true, action = clap::ArgAction::Set)]
    pub include_in_flight: bool,

    /// Where datapoints go: cloudwatch (PutMetricData), emf (Embedded
    /// Metric Format lines on stdout, no API calls), or both.
    #[arg(long, env = "URL2PNG_METRICS_OUTPUT", default_value = "cloudwatch", value_parser = ["cloudwatch", "emf", "both"])]
    pub output: String,

    /// Wake the service from zero when more than this many messages wait.
    #[arg(long, env = "URL2PNG_ACTIVATION_THRESHOLD", default_value_t = 0)]
    pub activation_threshold: u64,

    /// Tasks to start when waking from zero (at least 1).
    #[arg(long, env = "URL2PNG_WAKE_TASKS", default_value_t = 1)]
    pub wake_tasks: u32,

    /// Scale the service to zero after the queue has been empty (visible,
    /// in flight and delayed) this many seconds; 0: never.
    #[arg(long, env = "URL2PNG_SCALE_TO_ZERO_AFTER_SECONDS", default_value_t = 0)]
    pub scale_to_zero_after_seconds: u64,

    /// The latency a job may wait, in seconds, for the recommended target
    /// (with the mean processing time; the target is capped at the
    /// worker concurrency).
    #[arg(long, env = "URL2PNG_ACCEPTABLE_LATENCY_SECONDS")]
    pub acceptable_latency_seconds: Option<f64>,

    /// Mean time one job takes, in seconds.
    #[arg(long, env = "URL2PNG_MEAN_PROCESSING_SECONDS")]
    pub mean_processing_seconds: Option<f64>,

    /// Jobs one worker task renders at once.
    #[arg(long, env = "URL2PNG_WORKER_CONCURRENCY", default_value_t = 1)]
    pub worker_concurrency: u32,
}

impl Config {
    /// Check the settings; the publisher's settings on success.
    pub fn settings(&self) -> Result<Settings, String> {
        self.common.aws_options()?;
        for (value, name) in [
            (&self.queue_url, "URL2PNG_QUEUE_URL"),
            (&self.cluster, "URL2PNG_ECS_CLUSTER"),
            (&self.service, "URL2PNG_ECS_SERVICE"),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{name} is required"));
            }
        }
        if !(10..=3600).contains(&self.interval_seconds) {
            return Err(format!(
                "URL2PNG_SCALER_INTERVAL_SECONDS={} is outside 10..=3600",
                self.interval_seconds
            ));
        }
        if self.namespace.trim().is_empty() || self.namespace.starts_with("AWS/") {
            return Err(format!(
                "URL2PNG_METRIC_NAMESPACE={:?}: give a namespace not starting with AWS/",
                self.namespace
            ));
        }
        let dimensions: Vec<String> = self
            .dimensions
            .split(',')
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect();
        if let Some(bad) = dimensions
            .iter()
            .find(|d| !["cluster", "service", "queue"].contains(&d.as_str()))
        {
            return Err(format!(
                "URL2PNG_METRIC_DIMENSIONS: unknown dimension {bad:?} (cluster, service, queue)"
            ));
        }
        if self.wake_tasks == 0 {
            return Err("URL2PNG_WAKE_TASKS must be at least 1".into());
        }
        let recommended = match (self.acceptable_latency_seconds, self.mean_processing_seconds) {
            (None, None) => None,
            (Some(l), Some(p)) => Some(
                policy::recommended_target(l, p, self.worker_concurrency).ok_or(
                    "URL2PNG_ACCEPTABLE_LATENCY_SECONDS, URL2PNG_MEAN_PROCESSING_SECONDS and URL2PNG_WORKER_CONCURRENCY must be positive",
                )?,
            ),
            _ => {
                return Err("give URL2PNG_ACCEPTABLE_LATENCY_SECONDS and URL2PNG_MEAN_PROCESSING_SECONDS together".into());
            }
        };
        Ok(Settings {
            queue_url: self.queue_url.clone(),
            webhook_queue_url: (!self.webhook_queue_url.is_empty())
                .then(|| self.webhook_queue_url.clone()),
            cluster: self.cluster.clone(),
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            dimensions,
            include_in_flight: self.include_in_flight,
            high_resolution: self.interval_seconds < 60,
            to_cloudwatch: self.output != "emf",
            emf: self.output != "cloudwatch",
            activation_threshold: self.activation_threshold,
            wake_tasks: self.wake_tasks,
            scale_to_zero_after: (self.scale_to_zero_after_seconds > 0)
                .then(|| Duration::from_secs(self.scale_to_zero_after_seconds)),
            recommended_target: recommended,
        })
    }
}

/// Run the publisher with clients from the default AWS chain until
/// `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.settings().map_err(anyhow::Error::msg)?;
    let sdk = load_config(&config.common.aws_options().map_err(anyhow::Error::msg)?).await;
    run_with(config, Clients::from_config(&sdk), shutdown).await
}

/// Run the publisher with the given clients until `shutdown`.
pub async fn run_with(
    config: Config,
    clients: Clients,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = config.settings().map_err(anyhow::Error::msg)?;
    let registry = url2png_core::telemetry::new_registry();
    let metrics = Metrics::register(&registry)?;
    if let Some(target) = settings.recommended_target {
        let allowed = config
            .acceptable_latency_seconds
            .zip(config.mean_processing_seconds)
            .and_then(|(l, p)| policy::latency_allows(l, p, config.worker_concurrency));
        tracing::info!(
            target,
            latency_allows = allowed,
            concurrency = config.worker_concurrency,
            "recommended target value for BacklogPerTask: acceptable latency ÷ mean processing time × concurrency, at most the concurrency (above it target tracking oscillates)"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz and /metrics");
    let ops = tokio::spawn(url2png_core::ops::serve(
        listener,
        url2png_core::ops::router(registry),
        shutdown.clone(),
    ));
    let mut publisher = Publisher::new(settings, clients, metrics);
    let mut ticks = tokio::time::interval(Duration::from_secs(config.interval_seconds));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {
                // A tick is short; finish it rather than leave a change half
                // made.
                if let Err(e) = publisher.tick().await {
                    tracing::warn!(error = %format!("{e:#}"), "tick skipped: nothing published");
                }
            }
        }
    }
    tracing::info!("scaler stopped");
    ops.await??;
    Ok(())
}

/// `url2png-scaler simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Arrival profile: comma-separated `steady:RATE:SECONDS`,
    /// `ramp:FROM:TO:SECONDS`, `spike:BASE:PEAK:SECONDS:SPIKE_SECONDS`
    /// (rates in jobs per second).
    #[arg(
        long,
        default_value = "steady:2:600,ramp:2:20:600,spike:5:60:1200:120,steady:0:1800"
    )]
    pub profile: String,

    /// A JSON file with the profile instead: `[{"kind": "steady", "rate":
    /// 5, "seconds": 600}, …]`.
    #[arg(long)]
    pub profile_file: Option<PathBuf>,

    /// Processing time of one job: `fixed:SECS`, `exp:MEAN` or
    /// `uniform:MIN:MAX`.
    #[arg(long, default_value = "exp:2")]
    pub processing: String,

    /// Jobs one task runs at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,

    /// Seconds from asking for a task to its first job.
    #[arg(long, default_value_t = 60)]
    pub startup_seconds: u64,

    /// Target value of backlog per task. With in-flight messages counted,
    /// a target above the concurrency can only be met by a standing queue.
    #[arg(long, default_value_t = 4.0)]
    pub target: f64,

    #[arg(long, default_value_t = 0)]
    pub min_tasks: u32,

    #[arg(long, default_value_t = 20)]
    pub max_tasks: u32,

    #[arg(long, default_value_t = 3)]
    pub scale_out_periods: usize,

    #[arg(long, default_value_t = 15)]
    pub scale_in_periods: usize,

    #[arg(long, default_value_t = 300)]
    pub scale_out_cooldown_seconds: u64,

    #[arg(long, default_value_t = 300)]
    pub scale_in_cooldown_seconds: u64,

    /// Count in-flight messages in the metric.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub include_in_flight: bool,

    #[arg(long, default_value_t = 0)]
    pub activation_threshold: u64,

    #[arg(long, default_value_t = 1)]
    pub wake_tasks: u32,

    #[arg(long, default_value_t = 0)]
    pub initial_tasks: u32,

    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Write an SVG plot of backlog, tasks and latency here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

impl SimulateArgs {
    pub fn scenario(&self) -> anyhow::Result<sim::Scenario> {
        let profile = match &self.profile_file {
            Some(path) => sim::Profile::from_json(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )?,
            None => sim::Profile::parse(&self.profile)?,
        };
        anyhow::ensure!(
            self.target.is_finite() && self.target > 0.0,
            "--target must be positive"
        );
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(
            self.min_tasks <= self.max_tasks && self.max_tasks <= 10_000,
            "--min-tasks ≤ --max-tasks ≤ 10000"
        );
        anyhow::ensure!(
            self.scale_out_periods > 0 && self.scale_in_periods > 0,
            "evaluation periods must be at least 1"
        );
        Ok(sim::Scenario {
            profile,
            processing: sim::Processing::parse(&self.processing)?,
            concurrency: self.concurrency,
            startup: self.startup_seconds,
            policy: TargetTracking {
                target: self.target,
                min: self.min_tasks,
                max: self.max_tasks,
                scale_out_periods: self.scale_out_periods,
                scale_in_periods: self.scale_in_periods,
                scale_out_cooldown: self.scale_out_cooldown_seconds as f64,
                scale_in_cooldown: self.scale_in_cooldown_seconds as f64,
                ..TargetTracking::default()
            },
            include_in_flight: self.include_in_flight,
            activation_threshold: self.activation_threshold,
            wake_tasks: self.wake_tasks.max(1),
            initial_tasks: self.initial_tasks.clamp(self.min_tasks, self.max_tasks),
            seed: self.seed,
        })
    }
}

/// Run `simulate`: the table and totals on stdout, the plot if asked.
pub fn simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    let scenario = args.scenario()?;
    let outcome = sim::simulate(&scenario);
    print!("{}", sim::report(&outcome));
    if let Some(path) = &args.svg {
        plot::svg(&outcome, path)?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("url2png-scaler").chain(args.iter().copied()))
    }

    #[test]
    fn publisher_settings_are_checked() {
        let base = [
            "--queue-url",
            "http://localhost/123/jobs",
            "--cluster",
            "c",
            "--service",
            "s",
        ];
        let ok = cli(&base).unwrap().config.settings().unwrap();
        assert_eq!(ok.queue_name(), "jobs");
        assert!(!ok.high_resolution);
        assert!(ok.to_cloudwatch && !ok.emf);
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            cli(&args).unwrap().config.settings()
        };
        assert!(with(&["--interval-seconds", "10"]).unwrap().high_resolution);
        assert!(
            with(&["--interval-seconds", "5"])
                .unwrap_err()
                .contains("10..=3600")
        );
        assert!(
            with(&["--dimensions", "cluster,region"])
                .unwrap_err()
                .contains("region")
        );
        assert!(with(&["--namespace", "AWS/ECS"]).is_err());
        assert!(with(&["--wake-tasks", "0"]).is_err());
        assert!(
            with(&["--acceptable-latency-seconds", "10"])
                .unwrap_err()
                .contains("together")
        );
        let r = with(&[
            "--acceptable-latency-seconds",
            "30",
            "--mean-processing-seconds",
            "1.5",
            "--worker-concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!(r.recommended_target, Some(4.0), "capped at the concurrency");
        let both = with(&["--output", "both"]).unwrap();
        assert!(both.emf && both.to_cloudwatch);
        assert!(cli(&["--output", "statsd"]).is_err());
        let e = cli(&[]).unwrap().config.settings().unwrap_err();
        assert!(e.contains("URL2PNG_QUEUE_URL"), "{e}");
    }

    #[test]
    fn simulate_is_a_subcommand_with_checked_arguments() {
        let Some(Command::Simulate(args)) = cli(&["simulate", "--profile", "steady:1:60"])
            .unwrap()
            .command
        else {
            panic!("simulate parsed");
        };
        assert!(args.scenario().is_ok());
        let Some(Command::Simulate(bad)) =
            cli(&["simulate", "--min-tasks", "5", "--max-tasks", "2"])
                .unwrap()
                .command
        else {
            panic!("simulate parsed");
        };
        assert!(bad.scenario().is_err());
    }
}
