//! `url2png-scaler`: publishes the queue backlog per worker to CloudWatch for ECS target tracking, and wakes the worker service from zero.
//!
//! Thin on purpose: parse the configuration, start logging, wire the
//! shutdown signals, and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = url2png_scaler::Config::parse();
    url2png_core::telemetry::init_tracing(config.common.log_format)?;
    let shutdown = url2png_core::shutdown::on_signals()?;
    url2png_scaler::run(config, shutdown).await
}
