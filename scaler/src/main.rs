//! `url2png-scaler`: publishes the queue backlog per worker task to
//! CloudWatch for ECS target tracking and wakes the worker service from
//! zero; `url2png-scaler simulate` tries a scaling policy on a load profile.
//!
//! Thin on purpose: parse the configuration, start logging, wire the
//! shutdown signals, and hand over to the library.

use clap::Parser;
use url2png_scaler::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.config.common.check_config {
        url2png_core::config::exit_after_check(cli.config.settings().map(|_| ()));
    }
    if let Some(Command::Simulate(args)) = &cli.command {
        return url2png_scaler::simulate(args);
    }
    url2png_core::telemetry::init_tracing(cli.config.common.log_format)?;
    let shutdown = url2png_core::shutdown::on_signals()?;
    url2png_scaler::run(cli.config, shutdown).await
}
