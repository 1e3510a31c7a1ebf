//! Logs and metrics.
//!
//! Logs go to stderr through `tracing`, as JSON lines (one object per
//! event, which CloudWatch Logs Insights can query) or as human-readable
//! text; `URL2PNG_LOG_FORMAT` chooses and `RUST_LOG` filters. Metrics live
//! in one Prometheus registry per process, served at `/metrics`.

use std::fmt;
use std::str::FromStr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// The environment variable that picks the log format.
pub const LOG_FORMAT_ENV: &str = "URL2PNG_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, for CloudWatch Logs.
    #[default]
    Json,
    /// Human-readable text, for a terminal.
    Text,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" | "pretty" | "human" => Ok(Self::Text),
            other => Err(format!("unknown log format `{other}`: use json or text")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Text => "text",
        })
    }
}

/// Install the global tracing subscriber. The filter comes from `RUST_LOG`
/// (default `info`). Fails if a subscriber is already installed.
pub fn init_tracing(format: LogFormat) -> Result<(), tracing_subscriber::util::TryInitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(json_layer(std::io::stderr)).try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    }
}

/// The JSON lines: one object per event with `timestamp`, `level`,
/// `target`, `message` and the event's fields at the top level, and the
/// current span (`span`, with its fields) and its parents (`spans`).
fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_writer(writer)
}

/// A new registry for one process, with the process collector (CPU,
/// resident memory, open files) registered on Linux.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        // Registration fails only for a duplicate, impossible on a new registry.
        let _ = registry.register(Box::new(collector));
    }
    registry
}

/// A router that serves `registry` at `GET /metrics` in the Prometheus
/// text format.
pub fn metrics_router(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(registry)
}

/// Handler for `/metrics`.
pub async fn metrics_handler(State(registry): State<Registry>) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer into a shared buffer, for reading what a layer wrote.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_log_line_is_one_object_with_the_event_and_its_span() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("job", job_id = "6f0c3c53", receive_count = 2);
            let _entered = span.enter();
            tracing::warn!(
                reason = "timeout: navigation",
                retry_in_secs = 5,
                "job failed; will retry"
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "job failed; will retry");
        assert_eq!(line["reason"], "timeout: navigation");
        assert_eq!(line["retry_in_secs"], 5);
        assert_eq!(line["span"]["name"], "job");
        assert_eq!(line["span"]["job_id"], "6f0c3c53");
        assert_eq!(line["span"]["receive_count"], 2);
        assert!(
            line["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("url2png_core"))
        );
        let timestamp = line["timestamp"].as_str().unwrap();
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{timestamp}: {e}"));
    }

    #[test]
    fn log_format_parses() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" TEXT ".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("pretty".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
        for f in [LogFormat::Json, LogFormat::Text] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
        }
    }
}
