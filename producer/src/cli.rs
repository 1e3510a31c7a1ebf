//! `url2png-producer submit`: put one job on the queue from a terminal and,
//! with `--wait`, follow it until its image or failure record exists.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use url2png_core::aws::Clients;
use url2png_core::config::{CommonArgs, IdArgs, PolicyArgs, StoreArgs};
use url2png_core::job::{ImageFormat, JobMessage, RenderOptions, WaitFor};
use url2png_core::keys::FailureRecord;

/// Settings of `url2png-producer submit`.
#[derive(Debug, Clone, Parser)]
#[command(name = "url2png-producer submit", about = "Queue one screenshot job.")]
pub struct SubmitArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// The page to render.
    pub url: String,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub ids: IdArgs,

    #[arg(long, default_value_t = 1280)]
    pub width: u32,

    #[arg(long, default_value_t = 800)]
    pub height: u32,

    #[arg(long, default_value_t = 1.0)]
    pub device_scale_factor: f64,

    #[arg(long)]
    pub full_page: bool,

    /// png, jpeg or webp.
    #[arg(long, default_value = "png")]
    pub format: String,

    #[arg(long)]
    pub quality: Option<u8>,

    /// `load`, `network_idle`, or `selector:<css>`.
    #[arg(long, default_value = "load")]
    pub wait_for: String,

    #[arg(long, default_value_t = 0)]
    pub delay_ms: u32,

    #[arg(long, default_value_t = url2png_core::job::TIMEOUT_DEFAULT_MS)]
    pub timeout_ms: u32,

    #[arg(long)]
    pub fail_on_http_error: bool,

    /// Wait for the image or the failure record.
    #[arg(long)]
    pub wait: bool,

    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_seconds: u64,
}

impl SubmitArgs {
    /// The job these arguments describe, validated like the API does.
    pub fn job(&self) -> Result<JobMessage, String> {
        let format = match self.format.to_ascii_lowercase().as_str() {
            "png" => ImageFormat::Png,
            "jpeg" | "jpg" => ImageFormat::Jpeg,
            "webp" => ImageFormat::Webp,
            other => return Err(format!("--format {other}: use png, jpeg or webp")),
        };
        let wait_for = match self.wait_for.as_str() {
            "load" => WaitFor::Load,
            "network_idle" => WaitFor::NetworkIdle,
            other => match other.strip_prefix("selector:") {
                Some(css) => WaitFor::Selector(css.to_owned()),
                None => {
                    return Err(format!(
                        "--wait-for {other}: use load, network_idle or selector:<css>"
                    ));
                }
            },
        };
        let mut job = JobMessage::new(
            self.url.clone(),
            RenderOptions {
                width: self.width,
                height: self.height,
                device_scale_factor: self.device_scale_factor,
                full_page: self.full_page,
                format,
                quality: self.quality,
                wait_for,
                delay_ms: self.delay_ms,
                timeout_ms: self.timeout_ms,
                fail_on_http_error: self.fail_on_http_error,
                ..RenderOptions::default()
            },
        );
        job.validate().map_err(|e| e.to_string())?;
        job.id = url2png_core::id::mint(
            self.ids.id_secret.as_bytes(),
            job.options.format,
            std::time::SystemTime::now(),
        );
        let policy = self.policy.policy()?;
        policy
            .check_url(&job.url)
            .map_err(|e| format!("url: {e}"))?;
        Ok(job)
    }
}

/// Run `submit`. Exit codes: 0 queued (or, with `--wait`, stored), 1 the job
/// failed, 2 bad arguments or the queue refused, 3 `--wait` timed out.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut job = match args.job() {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    job.submitted_at = Some(time::OffsetDateTime::now_utc());
    let layout = args.store.layout().map_err(anyhow::Error::msg)?;
    let clients = Clients::load(&args.common.aws_options().map_err(anyhow::Error::msg)?).await;
    if let Err(e) = clients
        .sqs
        .send_message()
        .queue_url(&args.store.queue_url)
        .message_body(job.to_json())
        .send()
        .await
    {
        eprintln!(
            "error: the queue did not take the job: {}",
            aws_sdk_sqs::error::DisplayErrorContext(&e)
        );
        return Ok(ExitCode::from(2));
    }
    let image_key = layout.image(job.id, job.options.format);
    let mut out = std::io::stdout();
    writeln!(out, "id: {}", job.id)?;
    writeln!(out, "image: s3://{}/{image_key}", args.store.bucket)?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }

    let started = Instant::now();
    let failure_key = layout.failure(job.id);
    let spinner = ['|', '/', '-', '\\'];
    let tty = std::io::stderr().is_terminal();
    let mut tick = 0usize;
    loop {
        let image = clients
            .s3
            .head_object()
            .bucket(&args.store.bucket)
            .key(&image_key)
            .send()
            .await;
        if image.is_ok() {
            if tty {
                eprint!("\r\x1b[K");
            }
            writeln!(
                out,
                "done after {:.1} s: s3://{}/{image_key}",
                started.elapsed().as_secs_f64(),
                args.store.bucket
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        if let Ok(object) = clients
            .s3
            .get_object()
            .bucket(&args.store.bucket)
            .key(&failure_key)
            .send()
            .await
        {
            let bytes = object.body.collect().await?.into_bytes();
            if tty {
                eprint!("\r\x1b[K");
            }
            match FailureRecord::from_json(&bytes) {
                Ok(record) => eprintln!("failed ({}): {}", record.reason.as_str(), record.message),
                Err(_) => eprintln!("failed: see s3://{}/{failure_key}", args.store.bucket),
            }
            return Ok(ExitCode::from(1));
        }
        if started.elapsed() > Duration::from_secs(args.wait_seconds) {
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("still pending after {} s", args.wait_seconds);
            return Ok(ExitCode::from(3));
        }
        if tty {
            eprint!(
                "\r{} waiting {:.0} s",
                spinner[tick % spinner.len()],
                started.elapsed().as_secs_f64()
            );
            tick += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
