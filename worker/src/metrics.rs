//! The worker's Prometheus metrics, registered on the process registry.
//!
//! Names follow `url2png_worker_<name>_<unit>`; labels are few and bounded.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every metric the worker records. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Jobs by outcome: `stored`, `failed` (failure record written),
    /// `retried` (released with backoff), `duplicate` (already stored),
    /// `released` (handed back at shutdown).
    pub jobs: IntCounterVec,
    pub render_seconds: Histogram,
    /// From the message's sending to the image being stored.
    pub queue_to_stored_seconds: Histogram,
    pub in_flight: IntGauge,
    pub receive_batch_size: Histogram,
    pub visibility_extensions: IntCounter,
    /// Browser replacements by reason: `crash`, `hang`, `recycle`.
    pub browser_restarts: IntCounterVec,
    /// AWS calls by service, operation and result (`ok` or an error code).
    pub aws_requests: IntCounterVec,
    pub aws_request_seconds: HistogramVec,
    /// Requests through the egress guard, by scope (`job`, `browser`) and
    /// result (`allowed`, `blocked` by the proxy, `blocked_in_browser` by
    /// the request check inside Chromium, `unreachable`).
    pub egress_requests: IntCounterVec,
    /// Webhook attempts by outcome: `delivered`, `retried`, `refused` (by
    /// the URL policy), `dead_lettered` (the last attempt failed),
    /// `invalid` (not a delivery message).
    pub webhook_deliveries: IntCounterVec,
    /// Time of one webhook attempt, from the bucket reads to the answer.
    pub webhook_seconds: Histogram,
    /// Webhook deliveries that could not be queued when their job ended.
    pub webhook_enqueue_failures: IntCounter,
    /// 1 while the ECS agent was last told to protect this task from
    /// scale-in, else 0.
    pub scale_in_protected: IntGauge,
    /// Calls to the ECS agent's task protection endpoint by outcome:
    /// `set`, `cleared`, `failed`.
    pub scale_in_protection_calls: IntCounterVec,
}

impl Metrics {
    /// Create and register every metric.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let ns = "url2png_worker";
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help).namespace(ns), labels)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace(ns)
                    .buckets(buckets),
            )
        };
        let seconds = vec![
            0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0,
        ];
        let metrics = Self {
            jobs: counter_vec("jobs_total", "Jobs finished, by outcome.", &["outcome"])?,
            render_seconds: histogram(
                "render_duration_seconds",
                "Time from page acquisition to image bytes.",
                seconds.clone(),
            )?,
            queue_to_stored_seconds: histogram(
                "queue_to_stored_duration_seconds",
                "Time from the message being sent to the image being stored.",
                seconds,
            )?,
            in_flight: IntGauge::with_opts(
                Opts::new(
                    "jobs_in_flight",
                    "Messages received and not yet acknowledged or released.",
                )
                .namespace(ns),
            )?,
            receive_batch_size: histogram(
                "receive_batch_size",
                "Messages returned by one ReceiveMessage call.",
                (0..=10).map(f64::from).collect(),
            )?,
            visibility_extensions: IntCounter::with_opts(
                Opts::new(
                    "visibility_extensions_total",
                    "Messages whose visibility the heartbeat extended.",
                )
                .namespace(ns),
            )?,
            browser_restarts: counter_vec(
                "browser_restarts_total",
                "Browsers replaced, by reason.",
                &["reason"],
            )?,
            aws_requests: counter_vec(
                "aws_requests_total",
                "AWS API calls, by service, operation and result.",
                &["service", "operation", "result"],
            )?,
            aws_request_seconds: HistogramVec::new(
                HistogramOpts::new("aws_request_duration_seconds", "AWS API call latency.")
                    .namespace(ns)
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 21.0,
                    ]),
                &["service", "operation"],
            )?,
            egress_requests: counter_vec(
                "egress_requests_total",
                "Requests through the egress guard, by scope and result.",
                &["scope", "result"],
            )?,
            webhook_deliveries: counter_vec(
                "webhook_deliveries_total",
                "Webhook delivery attempts, by outcome.",
                &["outcome"],
            )?,
            webhook_seconds: histogram(
                "webhook_attempt_duration_seconds",
                "Time of one webhook delivery attempt.",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
            )?,
            webhook_enqueue_failures: IntCounter::with_opts(
                Opts::new(
                    "webhook_enqueue_failures_total",
                    "Webhook deliveries that could not be queued when their job ended.",
                )
                .namespace(ns),
            )?,
            scale_in_protected: IntGauge::with_opts(
                Opts::new(
                    "scale_in_protected",
                    "1 while this task is protected from ECS scale-in (jobs in flight).",
                )
                .namespace(ns),
            )?,
            scale_in_protection_calls: IntCounterVec::new(
                Opts::new(
                    "scale_in_protection_calls_total",
                    "Calls to the ECS agent's task protection endpoint, by outcome.",
                )
                .namespace(ns),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(metrics.jobs.clone()))?;
        registry.register(Box::new(metrics.egress_requests.clone()))?;
        registry.register(Box::new(metrics.render_seconds.clone()))?;
        registry.register(Box::new(metrics.queue_to_stored_seconds.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.receive_batch_size.clone()))?;
        registry.register(Box::new(metrics.visibility_extensions.clone()))?;
        registry.register(Box::new(metrics.browser_restarts.clone()))?;
        registry.register(Box::new(metrics.aws_requests.clone()))?;
        registry.register(Box::new(metrics.aws_request_seconds.clone()))?;
        registry.register(Box::new(metrics.webhook_deliveries.clone()))?;
        registry.register(Box::new(metrics.webhook_seconds.clone()))?;
        registry.register(Box::new(metrics.webhook_enqueue_failures.clone()))?;
        registry.register(Box::new(metrics.scale_in_protected.clone()))?;
        registry.register(Box::new(metrics.scale_in_protection_calls.clone()))?;
        Ok(metrics)
    }

    /// A set registered on a throwaway registry, for tests of one part.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("metrics register on a new registry")
    }

    /// Record one AWS call.
    pub fn aws_call<T, E: AwsErrorCode>(
        &self,
        service: &str,
        operation: &str,
        started: std::time::Instant,
        result: &Result<T, E>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.code_label(),
        };
        self.aws_requests
            .with_label_values(&[service, operation, outcome])
            .inc();
        self.aws_request_seconds
            .with_label_values(&[service, operation])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A bounded label for an AWS error: a few known classes, else `error`.
pub trait AwsErrorCode {
    fn code_label(&self) -> &'static str;
}

impl<E, R> AwsErrorCode for aws_sdk_sqs::error::SdkError<E, R>
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
{
    fn code_label(&self) -> &'static str {
        use aws_sdk_sqs::error::SdkError;
        match self {
            SdkError::TimeoutError(_) => "timeout",
            SdkError::DispatchFailure(_) => "dispatch",
            SdkError::ResponseError(_) => "response",
            SdkError::ServiceError(e) => match e.err().code() {
                Some(
                    "ThrottlingException"
                    | "Throttling"
                    | "RequestThrottled"
                    | "SlowDown"
                    | "RequestThrottledException"
                    | "KmsThrottled",
                ) => "throttled",
                Some("ReceiptHandleIsInvalid" | "InvalidParameterValue") => "invalid",
                Some(
                    "NoSuchKey"
                    | "NotFound"
                    | "QueueDoesNotExist"
                    | "AWS.SimpleQueueService.NonExistentQueue",
                ) => "not_found",
                _ => "service",
            },
            _ => "error",
        }
    }
}
