//! The publisher: every interval, read the queue and the worker service,
//! publish backlog per task (and its inputs) in one PutMetricData call,
//! wake the service from zero, and optionally scale it to zero when idle.
//!
//! A tick that cannot read both the queue and the service publishes
//! nothing: target tracking treats missing data as missing, but it acts on
//! wrong data.

use std::time::{Duration, SystemTime};

use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace};
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_sqs::types::QueueAttributeName;
use prometheus::{Gauge, IntCounterVec, Opts, Registry};
use serde_json::json;

use crate::policy::{IdleClock, Reading, wake};

/// What the publisher needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub queue_url: String,
    /// The webhook deliveries queue, if any.
    pub webhook_queue_url: Option<String>,
    pub cluster: String,
    pub service: String,
    pub namespace: String,
    /// Dimension names, from `cluster`, `service`, `queue`.
    pub dimensions: Vec<String>,
    pub include_in_flight: bool,
    /// Publish at one-second resolution (intervals under a minute).
    pub high_resolution: bool,
    pub to_cloudwatch: bool,
    /// Also print CloudWatch Embedded Metric Format lines on stdout.
    pub emf: bool,
    pub activation_threshold: u64,
    pub wake_tasks: u32,
    /// Scale to zero after this long idle; `None`: never.
    pub scale_to_zero_after: Option<Duration>,
    pub recommended_target: Option<f64>,
}

impl Settings {
    /// The queue's name: the last path segment of its URL.
    pub fn queue_name(&self) -> &str {
        self.queue_url.rsplit('/').next().unwrap_or(&self.queue_url)
    }

    fn dimension_pairs(&self) -> Vec<(&str, &str)> {
        self.dimensions
            .iter()
            .filter_map(|d| match d.as_str() {
                "cluster" => Some(("cluster", self.cluster.as_str())),
                "service" => Some(("service", self.service.as_str())),
                "queue" => Some(("queue", self.queue_name())),
                _ => None,
            })
            .collect()
    }
}

/// The AWS clients the publisher calls.
#[derive(Debug, Clone)]
pub struct Clients {
    pub sqs: aws_sdk_sqs::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub autoscaling: aws_sdk_applicationautoscaling::Client,
}

impl Clients {
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            sqs: url2png_core::aws::sqs(config),
            ecs: aws_sdk_ecs::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            autoscaling: aws_sdk_applicationautoscaling::Client::new(config),
        }
    }
}

/// The scaler's own metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub ticks: IntCounterVec,
    pub errors: IntCounterVec,
    pub actions: IntCounterVec,
    pub backlog_per_task: Gauge,
    pub recommended_target: Gauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let ns = "url2png_scaler";
        let m = Self {
            ticks: IntCounterVec::new(
                Opts::new("ticks_total", "Ticks by result (published, skipped).").namespace(ns),
                &["result"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "errors_total",
                    "Failed AWS calls by stage (queue, service, publish, wake, scale_to_zero).",
                )
                .namespace(ns),
                &["stage"],
            )?,
            actions: IntCounterVec::new(
                Opts::new(
                    "actions_total",
                    "Capacity changes made (wake, scale_to_zero).",
                )
                .namespace(ns),
                &["action"],
            )?,
            backlog_per_task: Gauge::with_opts(
                Opts::new("backlog_per_task", "The last value published.").namespace(ns),
            )?,
            recommended_target: Gauge::with_opts(
                Opts::new(
                    "recommended_target",
                    "Acceptable latency ÷ mean processing time × concurrency, at most the concurrency (0: not configured).",
                )
                .namespace(ns),
            )?,
        };
        registry.register(Box::new(m.ticks.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.actions.clone()))?;
        registry.register(Box::new(m.backlog_per_task.clone()))?;
        registry.register(Box::new(m.recommended_target.clone()))?;
        Ok(m)
    }
}

/// One CloudWatch Embedded Metric Format record: the datapoints of a tick
/// with their dimensions, for a log pipeline that extracts metrics from
/// logs (no API call).
pub fn emf_line(
    namespace: &str,
    dims: &[(&str, &str)],
    values: &[(&str, f64)],
    at: SystemTime,
    resolution: i32,
) -> serde_json::Value {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut line = json!({
        "_aws": {
            "Timestamp": millis,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dims.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": values.iter().map(|(name, _)| json!({
                    "Name": name, "Unit": "Count", "StorageResolution": resolution,
                })).collect::<Vec<_>>(),
            }],
        },
    });
    for (k, v) in dims {
        line[*k] = json!(v);
    }
    for (name, value) in values {
        line[*name] = json!(value);
    }
    line
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub reading: Reading,
    pub backlog_per_task: f64,
    /// Tasks asked for to wake the service.
    pub woke: Option<u32>,
    pub scaled_to_zero: bool,
}

/// The publisher's state between ticks.
#[derive(Debug)]
pub struct Publisher {
    pub settings: Settings,
    clients: Clients,
    metrics: Metrics,
    idle: IdleClock,
    started: std::time::Instant,
}

fn display<E: std::error::Error>(e: &E) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(e).to_string()
}

impl Publisher {
    pub fn new(settings: Settings, clients: Clients, metrics: Metrics) -> Self {
        metrics
            .recommended_target
            .set(settings.recommended_target.unwrap_or(0.0));
        Self {
            settings,
            clients,
            metrics,
            idle: IdleClock::default(),
            started: std::time::Instant::now(),
        }
    }

    /// Read, publish, act. An error means nothing was published.
    pub async fn tick(&mut self) -> anyhow::Result<Tick> {
        let result = self.tick_inner().await;
        let label = if result.is_ok() {
            "published"
        } else {
            "skipped"
        };
        self.metrics.ticks.with_label_values(&[label]).inc();
        result
    }

    async fn tick_inner(&mut self) -> anyhow::Result<Tick> {
        let reading = self.read().await?;
        let per_task = reading.backlog_per_task(self.settings.include_in_flight);
        self.publish(&reading, per_task).await?;
        self.metrics.backlog_per_task.set(per_task);
        tracing::info!(
            visible = reading.visible,
            in_flight = reading.in_flight,
            delayed = reading.delayed,
            running = reading.running,
            desired = reading.desired,
            backlog_per_task = per_task,
            recommended_target = self.settings.recommended_target,
            "published"
        );
        let mut tick = Tick {
            reading,
            backlog_per_task: per_task,
            woke: None,
            scaled_to_zero: false,
        };
        // Acting on capacity is best effort: a failure is logged and
        // counted, the datapoint stands, the next tick tries again.
        match self.wake(&reading).await {
            Ok(woke) => tick.woke = woke,
            Err(e) => {
                self.metrics.errors.with_label_values(&["wake"]).inc();
                tracing::warn!(error = %e, "could not wake the service");
            }
        }
        if tick.woke.is_none()
            && let Some(after) = self.settings.scale_to_zero_after
            && self.idle.observe(
                &reading,
                self.started.elapsed().as_secs_f64(),
                after.as_secs_f64(),
            )
        {
            match self.scale_to_zero().await {
                Ok(()) => tick.scaled_to_zero = true,
                Err(e) => {
                    self.metrics
                        .errors
                        .with_label_values(&["scale_to_zero"])
                        .inc();
                    tracing::warn!(error = %e, "could not scale to zero");
                }
            }
        }
        Ok(tick)
    }

    /// Visible, not visible and delayed messages of `queue_url`.
    async fn counts(&self, queue_url: &str) -> anyhow::Result<(u64, u64, u64)> {
        let attributes = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| {
                self.metrics.errors.with_label_values(&["queue"]).inc();
                anyhow::anyhow!("reading the queue {queue_url}: {}", display(&e))
            })?;
        let attributes = attributes.attributes.unwrap_or_default();
        let count = |name: QueueAttributeName| -> anyhow::Result<u64> {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    self.metrics.errors.with_label_values(&["queue"]).inc();
                    anyhow::anyhow!("the queue did not report {}", name.as_str())
                })
        };
        Ok((
            count(QueueAttributeName::ApproximateNumberOfMessages)?,
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
            count(QueueAttributeName::ApproximateNumberOfMessagesDelayed)?,
        ))
    }

    async fn read(&self) -> anyhow::Result<Reading> {
        let (visible, in_flight, delayed) = self.counts(&self.settings.queue_url).await?;
        let deliveries = match &self.settings.webhook_queue_url {
            Some(url) => {
                let (visible, in_flight, delayed) = self.counts(url).await?;
                visible + in_flight + delayed
            }
            None => 0,
        };

        let described = self
            .clients
            .ecs
            .describe_services()
            .cluster(&self.settings.cluster)
            .services(&self.settings.service)
            .send()
            .await
            .map_err(|e| {
                self.metrics.errors.with_label_values(&["service"]).inc();
                anyhow::anyhow!("describing the service: {}", display(&e))
            })?;
        let Some(service) = described
            .services()
            .iter()
            .find(|s| s.status() != Some("INACTIVE"))
        else {
            self.metrics.errors.with_label_values(&["service"]).inc();
            let why = described
                .failures()
                .first()
                .and_then(|f| f.reason())
                .unwrap_or("not found");
            anyhow::bail!(
                "service {} in cluster {}: {why}",
                self.settings.service,
                self.settings.cluster
            );
        };
        let count = |n: i32| u32::try_from(n).unwrap_or(0);
        Ok(Reading {
            visible,
            in_flight,
            delayed,
            running: count(service.running_count()),
            desired: count(service.desired_count()),
            deliveries,
        })
    }

    async fn publish(&self, reading: &Reading, per_task: f64) -> anyhow::Result<()> {
        let s = &self.settings;
        let dims = s.dimension_pairs();
        let values = [
            ("BacklogPerTask", per_task),
            ("ApproximateNumberOfMessagesVisible", reading.visible as f64),
            (
                "ApproximateNumberOfMessagesNotVisible",
                reading.in_flight as f64,
            ),
            ("ApproximateNumberOfMessagesDelayed", reading.delayed as f64),
            ("RunningTaskCount", f64::from(reading.running)),
            ("DesiredTaskCount", f64::from(reading.desired)),
        ]
        .into_iter()
        .chain(
            s.webhook_queue_url
                .is_some()
                .then_some(("WebhookDeliveries", reading.deliveries as f64)),
        )
        .collect::<Vec<_>>();
        let now = SystemTime::now();
        let resolution = if s.high_resolution { 1 } else { 60 };
        if s.emf {
            println!(
                "{}",
                emf_line(&s.namespace, &dims, &values, now, resolution)
            );
        }
        if !s.to_cloudwatch {
            return Ok(());
        }
        let dimensions: Vec<Dimension> = dims
            .iter()
            .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
            .collect();
        let mut request = self
            .clients
            .cloudwatch
            .put_metric_data()
            .namespace(&s.namespace);
        for (name, value) in values {
            request = request.metric_data(
                MetricDatum::builder()
                    .metric_name(name)
                    .set_dimensions(Some(dimensions.clone()))
                    .value(value)
                    .unit(StandardUnit::Count)
                    .timestamp(now.into())
                    .storage_resolution(resolution)
                    .build(),
            );
        }
        request.send().await.map_err(|e| {
            self.metrics.errors.with_label_values(&["publish"]).inc();
            anyhow::anyhow!("PutMetricData: {}", display(&e))
        })?;
        Ok(())
    }

    fn resource_id(&self) -> String {
        let cluster = self
            .settings
            .cluster
            .rsplit('/')
            .next()
            .unwrap_or(&self.settings.cluster);
        format!("service/{cluster}/{}", self.settings.service)
    }

    /// The service's scalable target, if one is registered: (min, max).
    async fn scalable_target(&self) -> anyhow::Result<Option<(i32, i32)>> {
        let out = self
            .clients
            .autoscaling
            .describe_scalable_targets()
            .service_namespace(ServiceNamespace::Ecs)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .resource_ids(self.resource_id())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("describing the scalable target: {}", display(&e)))?;
        Ok(out
            .scalable_targets()
            .first()
            .map(|t| (t.min_capacity(), t.max_capacity())))
    }

    async fn register(&self, min: i32, max: i32) -> anyhow::Result<()> {
        self.clients
            .autoscaling
            .register_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .resource_id(self.resource_id())
            .min_capacity(min)
            .max_capacity(max)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("updating the scalable target: {}", display(&e)))?;
        Ok(())
    }

    async fn set_desired(&self, count: u32) -> anyhow::Result<()> {
        self.clients
            .ecs
            .update_service()
            .cluster(&self.settings.cluster)
            .service(&self.settings.service)
            .desired_count(i32::try_from(count).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("UpdateService: {}", display(&e)))?;
        Ok(())
    }

    /// Raise the service from zero when work waits.
    ///
    /// With a scalable target, its minimum is raised to the wake count, so
    /// Application Auto Scaling starts the tasks and target tracking cannot
    /// take them back to zero before they have served; the desired count is
    /// set as well, so the tasks start without waiting for it. Without one,
    /// UpdateService alone.
    async fn wake(&self, reading: &Reading) -> anyhow::Result<Option<u32>> {
        let s = &self.settings;
        if wake(reading, s.activation_threshold, s.wake_tasks, None).is_none() {
            return Ok(None);
        }
        let target = self.scalable_target().await?;
        let Some(tasks) = wake(
            reading,
            s.activation_threshold,
            s.wake_tasks,
            target.map(|(_, max)| u32::try_from(max).unwrap_or(0)),
        ) else {
            tracing::warn!("work is waiting but the scalable target's maximum is 0");
            return Ok(None);
        };
        let n = i32::try_from(tasks).unwrap_or(i32::MAX);
        if let Some((min, max)) = target
            && min < n
        {
            self.register(n, max).await?;
        }
        self.set_desired(tasks).await?;
        self.metrics.actions.with_label_values(&["wake"]).inc();
        tracing::info!(
            tasks,
            backlog = reading.visible + reading.delayed,
            "woke the service from zero"
        );
        Ok(Some(tasks))
    }

    /// Take the service to zero tasks after the idle cool-down: the
    /// scalable target's minimum to 0 (when registered), then desired 0.
    async fn scale_to_zero(&self) -> anyhow::Result<()> {
        if let Some((min, max)) = self.scalable_target().await?
            && min > 0
        {
            self.register(0, max).await?;
        }
        self.set_desired(0).await?;
        self.metrics
            .actions
            .with_label_values(&["scale_to_zero"])
            .inc();
        tracing::info!("queue idle for the cool-down: scaled the service to zero");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_names_every_metric_and_dimension_with_its_value() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let line = emf_line(
            "url2png",
            &[("cluster", "fleet"), ("queue", "jobs")],
            &[("BacklogPerTask", 4.5), ("RunningTaskCount", 2.0)],
            at,
            1,
        );
        let meta = &line["_aws"];
        assert_eq!(meta["Timestamp"], 1_700_000_000_000u64);
        let directive = &meta["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "url2png");
        assert_eq!(directive["Dimensions"], json!([["cluster", "queue"]]));
        assert_eq!(directive["Metrics"][0]["Name"], "BacklogPerTask");
        assert_eq!(directive["Metrics"][1]["StorageResolution"], 1);
        assert_eq!(line["cluster"], "fleet");
        assert_eq!(line["queue"], "jobs");
        assert_eq!(line["BacklogPerTask"], 4.5);
        assert_eq!(line["RunningTaskCount"], 2.0);
    }
}
