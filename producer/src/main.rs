//! `url2png-producer`: the HTTP front door: accepts screenshot requests, validates them and puts jobs on the SQS queue.
//!
//! Thin on purpose: parse the configuration, start logging, wire the
//! shutdown signals, and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = url2png_producer::Config::parse();
    url2png_core::telemetry::init_tracing(config.common.log_format)?;
    let shutdown = url2png_core::shutdown::on_signals()?;
    url2png_producer::run(config, shutdown).await
}
