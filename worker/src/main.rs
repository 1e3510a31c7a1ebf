//! `url2png-worker`: renders screenshot jobs from the SQS queue with a pool of headless Chromium tabs and stores the images in S3.
//!
//! Thin on purpose: parse the configuration, start logging, wire the
//! shutdown signals, and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = url2png_worker::Config::parse();
    if config.common.check_config {
        url2png_core::config::exit_after_check(config.validate());
    }
    url2png_core::telemetry::init_tracing(config.common.log_format)?;
    let shutdown = url2png_core::shutdown::on_signals()?;
    url2png_worker::run(config, shutdown).await
}
