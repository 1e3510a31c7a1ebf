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
/// (default `info`, with chromiumoxide's protocol chatter at `error`). Fails if a subscriber is already installed.
pub fn init_tracing(format: LogFormat) -> Result<(), tracing_subscriber::util::TryInitError> {
    // chromiumoxide warns about every CDP message newer than its protocol
    // types; those are noise unless asked for.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,chromiumoxide::handler=error,chromiumoxide::conn=error")
    });
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    }
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
