//! `url2png-bench`: how fast the worker renders, measured in one run
//! against two references on the same machine and pages:
//!
//! - the book-style setting of the same binary: one message per receive,
//!   one job at a time, a fresh browser per job, a 1 s pause between polls;
//! - the ceiling: a bare loop that only navigates and screenshots, with as
//!   many warm tabs as the worker's best setting has slots and no isolation
//!   between jobs.
//!
//! Every job's page is on one of three loopback "sites" (127.0.0.3–5), so
//! reuse is not flattered by a single origin. SQS requests per job are
//! counted twice: by the worker's own metrics and in the emulator's request
//! log. Prints a table; nothing is asserted.
//!
//! Run: `cargo run --release -p url2png-bench -- --help`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, CaptureScreenshotParams,
};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use url2png_core::{JobMessage, RenderOptions};
use url2png_testkit::{Fixtures, TestAws, TestBrowser};
use url2png_worker::{Config, Worker};

#[derive(Debug, Parser)]
#[command(about = "Benchmark the worker against a book-style setting and a bare Chromium loop.")]
struct Args {
    /// Jobs per run of the worker's settings and of the ceiling.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Jobs for the book-style run (it is slow).
    #[arg(long, default_value_t = 10)]
    book_jobs: usize,
    /// Worker settings to try, as BROWSERSxPAGES, comma-separated.
    #[arg(long, default_value = "2x4,2x6,3x4")]
    settings: String,
    /// Chromium executable.
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium_path: String,
}

#[derive(Debug)]
struct Run {
    name: String,
    jobs: usize,
    seconds: f64,
    sqs_by_worker: u64,
    sqs_in_log: Option<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.seconds
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        url2png_core::telemetry::init_tracing(url2png_core::telemetry::LogFormat::Text)?;
    }
    let sites = futures::future::join_all(
        [3u8, 4, 5].map(|last| Fixtures::start_on(IpAddr::from([127, 0, 0, last]))),
    )
    .await;
    let urls = |n: usize, tag: &str| -> Vec<String> {
        (0..n)
            .map(|i| sites[i % sites.len()].url(&format!("/{tag}/{i}")))
            .collect()
    };

    let mut runs = Vec::new();
    eprintln!("book-style: {} jobs", args.book_jobs);
    runs.push(
        worker_run(
            "book-style (batch 1, 1 slot, browser per job, 1 s pause)",
            &urls(args.book_jobs, "book"),
            &[
                "--browsers",
                "1",
                "--pages-per-browser",
                "1",
                "--concurrency",
                "1",
                "--receive-batch-max",
                "1",
                "--receive-pollers",
                "1",
                "--receive-gather-ms",
                "0",
                "--recycle-after",
                "1",
                "--spare-pages",
                "0",
                "--poll-pause-ms",
                "1000",
            ],
            &args.chromium_path,
        )
        .await?,
    );

    let mut shapes = Vec::new();
    for setting in args.settings.split(',') {
        let (browsers, pages) = setting
            .split_once('x')
            .and_then(|(b, p)| {
                Some((
                    b.trim().parse::<usize>().ok()?,
                    p.trim().parse::<usize>().ok()?,
                ))
            })
            .with_context(|| format!("setting `{setting}` is not BROWSERSxPAGES"))?;
        eprintln!("worker {browsers}x{pages}: {} jobs", args.jobs);
        let (b, p) = (browsers.to_string(), pages.to_string());
        let run = worker_run(
            &format!("worker {browsers} browsers x {pages} pages"),
            &urls(args.jobs, &format!("w{setting}")),
            &["--browsers", &b, "--pages-per-browser", &p],
            &args.chromium_path,
        )
        .await?;
        shapes.push((browsers, pages));
        runs.push(run);
    }
    let best = (1..runs.len())
        .max_by(|a, b| runs[*a].rate().total_cmp(&runs[*b].rate()))
        .context("no worker setting ran")?;
    let (browsers, pages) = shapes[best - 1];
    let (b, p) = (browsers.to_string(), pages.to_string());
    eprintln!(
        "worker {browsers}x{pages} without the egress guard: {} jobs",
        args.jobs
    );
    let unguarded = worker_run(
        &format!("worker {browsers} browsers x {pages} pages, egress guard off"),
        &urls(args.jobs, "unguarded"),
        &[
            "--browsers",
            &b,
            "--pages-per-browser",
            &p,
            "--egress-guard",
            "false",
        ],
        &args.chromium_path,
    )
    .await?;
    let tabs = browsers * pages;
    eprintln!("ceiling: {tabs} warm tabs, {} jobs", args.jobs);
    let ceiling = ceiling_run(
        &urls(args.jobs, "ceiling"),
        browsers,
        pages,
        &args.chromium_path,
    )
    .await?;

    let book = &runs[0];
    let best_run = &runs[best];
    println!();
    println!(
        "| run | jobs | seconds | jobs/s | SQS requests/job (worker) | SQS requests/job (emulator log) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for run in runs.iter().chain([&unguarded, &ceiling]) {
        let per_job = |n: u64| format!("{:.3}", n as f64 / run.jobs as f64);
        println!(
            "| {} | {} | {:.1} | {:.2} | {} | {} |",
            run.name,
            run.jobs,
            run.seconds,
            run.rate(),
            if run.sqs_by_worker > 0 {
                per_job(run.sqs_by_worker)
            } else {
                "-".into()
            },
            run.sqs_in_log.map(per_job).unwrap_or_else(|| "-".into()),
        );
    }
    println!();
    println!(
        "best worker setting ({}): {:.1}x the book-style setting, {:.0}% of the ceiling ({} warm tabs), {:.3} SQS requests per job",
        best_run.name,
        best_run.rate() / book.rate(),
        100.0 * best_run.rate() / ceiling.rate(),
        tabs,
        best_run.sqs_in_log.unwrap_or(best_run.sqs_by_worker) as f64 / best_run.jobs as f64,
    );
    println!(
        "egress guard: {:.1}% of throughput ({:.2} jobs/s with it, {:.2} without)",
        100.0 * (1.0 - best_run.rate() / unguarded.rate()),
        best_run.rate(),
        unguarded.rate(),
    );
    Ok(())
}

/// SQS calls (JSON protocol: `POST /`) in the emulator's log.
fn sqs_lines(log: Option<&Path>) -> Option<u64> {
    let text = std::fs::read_to_string(log?).ok()?;
    Some(text.lines().filter(|l| l.contains("\"POST / HTTP")).count() as u64)
}

async fn worker_run(
    name: &str,
    urls: &[String],
    flags: &[&str],
    chromium: &str,
) -> anyhow::Result<Run> {
    let aws = TestAws::start().await;
    let jobs: Vec<JobMessage> = urls
        .iter()
        .map(|u| JobMessage::new(u.clone(), RenderOptions::default()))
        .collect();
    let bodies: Vec<String> = jobs.iter().map(JobMessage::to_json).collect();
    aws.send_bodies(&bodies).await;
    let mut args = vec![
        "url2png-worker",
        "--queue-url",
        &aws.queue.url,
        "--bucket",
        &aws.bucket,
        "--listen",
        "127.0.0.1:0",
        "--chromium-path",
        chromium,
        // The three sites are loopback addresses.
        "--egress-allow",
        "127.0.0.0/8",
    ];
    args.extend_from_slice(flags);
    let config = Config::try_parse_from(args)?;
    let worker = Worker::start(config, aws.clients.clone()).await?;
    let metrics = worker.metrics().clone();
    let log_before = sqs_lines(aws.moto.log_path());
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    let stored = || metrics.jobs.with_label_values(&["stored"]).get() as usize;
    while stored() < jobs.len() {
        if task.is_finished() {
            anyhow::bail!("the worker stopped early");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await??;
    let sqs_by_worker: u64 = [
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "ChangeMessageVisibility",
    ]
    .iter()
    .flat_map(|op| {
        [
            "ok",
            "timeout",
            "dispatch",
            "response",
            "service",
            "throttled",
            "invalid",
            "not_found",
            "error",
        ]
        .map(|result| {
            metrics
                .aws_requests
                .with_label_values(&["sqs", op, result])
                .get()
        })
    })
    .sum();
    let sqs_in_log = sqs_lines(aws.moto.log_path())
        .zip(log_before)
        .map(|(after, before)| after - before);
    Ok(Run {
        name: name.into(),
        jobs: jobs.len(),
        seconds,
        sqs_by_worker,
        sqs_in_log,
    })
}

/// Navigate and screenshot in warm tabs, no isolation: the most a browser
/// pool of this size can do on these pages.
async fn ceiling_run(
    urls: &[String],
    browsers: usize,
    pages: usize,
    chromium: &str,
) -> anyhow::Result<Run> {
    let mut launched = Vec::new();
    let mut tabs = Vec::new();
    for _ in 0..browsers {
        let launched_browser = TestBrowser::launch_at(chromium, &[])
            .await
            .map_err(anyhow::Error::msg)?;
        let browser = &launched_browser.browser;
        for _ in 0..pages {
            let page = browser.new_page("about:blank").await?;
            page.execute(SetDeviceMetricsOverrideParams::new(1280, 800, 1.0, false))
                .await?;
            tabs.push(page);
        }
        launched.push(launched_browser);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let urls = Arc::new(urls.to_vec());
    let started = Instant::now();
    let loops = tabs.into_iter().map(|page| {
        let next = next.clone();
        let urls = urls.clone();
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::AcqRel);
                let Some(url) = urls.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                page.goto(url.as_str()).await?;
                let shot = CaptureScreenshotParams {
                    format: Some(CaptureScreenshotFormat::Png),
                    ..CaptureScreenshotParams::default()
                };
                page.execute(shot).await?;
            }
        }
    });
    for result in futures::future::join_all(loops).await {
        result?;
    }
    let seconds = started.elapsed().as_secs_f64();
    for browser in launched {
        browser.close().await;
    }
    Ok(Run {
        name: format!("ceiling: bare loop, {} warm tabs", browsers * pages),
        jobs: urls.len(),
        seconds,
        sqs_by_worker: 0,
        sqs_in_log: None,
    })
}
