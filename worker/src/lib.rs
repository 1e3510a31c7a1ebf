//! The worker library behind `url2png-worker`: it renders screenshot jobs from the SQS queue with a pool of headless Chromium tabs and stores the images in S3.
//!
//! [`run`] takes its configuration and a shutdown token as values, so
//! tests start the real thing on loopback.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use url2png_core::config::{CommonArgs, parse_addr};

/// Every setting, as a flag and an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "url2png-worker", version, about)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Address of the operations endpoint (`/healthz`, `/metrics`).
    #[arg(long, env = "URL2PNG_WORKER_LISTEN", default_value = "127.0.0.1:9091", value_parser = parse_addr)]
    pub listen: SocketAddr,
}

/// Run until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let registry = url2png_core::telemetry::new_registry();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz and /metrics");
    url2png_core::ops::serve(listener, url2png_core::ops::router(registry), shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_flags() {
        let config = Config::try_parse_from([
            "url2png-worker",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 0);
        assert!(Config::try_parse_from(["url2png-worker", "--listen", "nowhere"]).is_err());
    }
}
