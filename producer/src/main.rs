//! `url2png-producer`: the HTTP front door. It accepts screenshot requests,
//! validates them and puts jobs on the SQS queue; `url2png-producer submit
//! <URL>` queues one job from a terminal, and `url2png-producer sign-link
//! <URL>` prints a signed render link.
//!
//! Thin on purpose: parse the configuration, start logging, wire the
//! shutdown signals, and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    if std::env::args().nth(1).as_deref() == Some("submit") {
        // `submit` stands in for the program name, so its usage reads right.
        let args = url2png_producer::cli::SubmitArgs::parse_from(std::env::args_os().skip(1));
        return url2png_producer::cli::submit(args).await;
    }
    if std::env::args().nth(1).as_deref() == Some("sign-link") {
        let args = url2png_producer::cli::SignLinkArgs::parse_from(std::env::args_os().skip(1));
        return Ok(url2png_producer::cli::sign_link(&args));
    }
    let config = url2png_producer::Config::parse();
    if config.common.check_config {
        url2png_core::config::exit_after_check(config.validate());
    }
    url2png_core::telemetry::init_tracing(config.common.log_format)?;
    let shutdown = url2png_core::shutdown::on_signals()?;
    url2png_producer::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
