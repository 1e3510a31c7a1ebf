//! `url2png-bench`: how fast the worker renders, measured in one run
//! against the references a user would compare it with, on the same
//! machine, emulator and pages:
//!
//! - the book-style design (`book.rs`): one message per receive, a browser
//!   launched for each job, a 1 s sleep between polls;
//! - the peer a Node team would deploy (`bench/peer/`): sqs-consumer with
//!   batch size 10, puppeteer-cluster with a context per job, the AWS SDK
//!   v3, `load`, PNG;
//! - the ceilings: a bare CDP loop with a fresh context per job (isolated)
//!   and one with warm tabs (no isolation), with the worker's Chromium
//!   flags and as many tabs as the worker's best shape has pages.
//!
//! Two page sets: the small fixture page, and a realistic set (many
//! images, stylesheets, a web font, scripts; `pages.rs`); every job's page
//! is on one of three loopback sites (127.0.0.3–5). For each run: jobs/s,
//! machine CPU per job, peak private memory of the process tree, SQS
//! requests per job (the worker's metrics and the emulator's log). Prints
//! tables and ratios; nothing is asserted.
//!
//! Run: `cargo run --release -p url2png-bench -- --help`.

mod bare;
mod book;
mod measure;
mod pages;
mod peer;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use url2png_core::{JobMessage, RenderOptions};
use url2png_testkit::{Fixtures, TestAws};
use url2png_worker::{Config, Worker};

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark the worker against a book-style setting, a Node peer and bare CDP loops."
)]
struct Args {
    /// Jobs per run on the small page.
    #[arg(long, default_value_t = 120)]
    jobs: usize,
    /// Jobs per run on the realistic pages.
    #[arg(long, default_value_t = 60)]
    real_jobs: usize,
    /// Jobs for the book-style run (it is slow).
    #[arg(long, default_value_t = 6)]
    book_jobs: usize,
    /// Page sets to run: `small`, `real`, or both.
    #[arg(long, default_value = "small,real", value_delimiter = ',')]
    sets: Vec<String>,
    /// Worker shapes besides the default, as BROWSERSxPAGES.
    #[arg(long, default_value = "2x4,1x6", value_delimiter = ',')]
    settings: Vec<String>,
    /// puppeteer-cluster slot counts for the peer.
    #[arg(long, default_value = "4,6,8", value_delimiter = ',')]
    peer_concurrency: Vec<usize>,
    /// Skip the peer (no Node.js).
    #[arg(long)]
    no_peer: bool,
    /// More worker flags for every worker run (e.g. `--receive-gather-ms 0`).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    worker_args: String,
    /// Extra Chromium flags for the worker and the bare loops alike.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    chromium_args: String,
    /// Chromium executable.
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium_path: String,
}

#[derive(Debug)]
struct Run {
    name: String,
    jobs: usize,
    slots: usize,
    seconds: f64,
    cpu_ms: f64,
    peak_mib: f64,
    sqs_by_worker: Option<u64>,
    sqs_in_log: Option<u64>,
    /// The worker's SQS calls by operation, and the messages its receives
    /// returned.
    sqs_calls: Vec<(&'static str, u64)>,
    received: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.seconds
    }
    fn cpu_per_job(&self) -> f64 {
        self.cpu_ms / self.jobs as f64
    }
    fn sqs_per_job(&self) -> Option<f64> {
        self.sqs_in_log
            .or(self.sqs_by_worker)
            .map(|n| n as f64 / self.jobs as f64)
    }
}

fn parse_shape(setting: &str) -> anyhow::Result<(usize, usize)> {
    setting
        .split_once('x')
        .and_then(|(b, p)| Some((b.trim().parse().ok()?, p.trim().parse().ok()?)))
        .with_context(|| format!("setting `{setting}` is not BROWSERSxPAGES"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        url2png_core::telemetry::init_tracing(url2png_core::telemetry::LogFormat::Text)?;
    }
    if !args.no_peer {
        peer::install()?;
    }
    let sites = futures::future::join_all(
        [3u8, 4, 5].map(|last| Fixtures::start_on(IpAddr::from([127, 0, 0, last]))),
    )
    .await;
    for site in &sites {
        pages::register_real(site)?;
    }
    let chromium_args: Vec<String> = args
        .chromium_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for set in &args.sets {
        let (jobs, real) = match set.as_str() {
            "small" => (args.jobs, false),
            "real" => (args.real_jobs, true),
            other => anyhow::bail!("unknown page set `{other}`"),
        };
        let urls = |n: usize, tag: &str| -> Vec<String> {
            (0..n)
                .map(|i| {
                    let site = &sites[i % sites.len()];
                    if real {
                        site.url(&format!(
                            "/real/page{}?job={tag}-{i}",
                            i % pages::REAL_PAGES
                        ))
                    } else {
                        site.url(&format!("/{tag}/{i}"))
                    }
                })
                .collect()
        };
        let worker_extra = |mut flags: Vec<String>| {
            flags.extend(args.worker_args.split_whitespace().map(str::to_owned));
            if !args.chromium_args.is_empty() {
                flags.push("--chromium-args".into());
                flags.push(args.chromium_args.clone());
            }
            flags
        };
        let mut runs = Vec::new();
        eprintln!("[{set}] book-style: {} jobs", args.book_jobs);
        runs.push(book_run(&urls(args.book_jobs, "book"), &args.chromium_path).await?);
        let defaults =
            Config::try_parse_from(["url2png-worker", "--queue-url", "x", "--bucket", "x"])?;
        let mut shapes = vec![(defaults.browsers, defaults.pages_per_browser, true)];
        for setting in &args.settings {
            let (b, p) = parse_shape(setting)?;
            if (b, p) != (defaults.browsers, defaults.pages_per_browser) {
                shapes.push((b, p, false));
            }
        }
        let mut best = (0.0, 0usize, 1);
        for (b, p, default) in &shapes {
            eprintln!("[{set}] worker {b}x{p}: {jobs} jobs");
            let run = worker_run(
                &format!(
                    "worker {b} browser(s) x {p} pages{}",
                    if *default { " (default)" } else { "" }
                ),
                &urls(jobs, &format!("w{b}x{p}")),
                b * p,
                &worker_extra(vec![
                    "--browsers".into(),
                    b.to_string(),
                    "--pages-per-browser".into(),
                    p.to_string(),
                ]),
                &args.chromium_path,
            )
            .await?;
            if run.rate() > best.0 {
                best = (run.rate(), runs.len(), b * p);
            }
            runs.push(run);
        }
        let mut best_peer: Option<usize> = None;
        if !args.no_peer {
            for &concurrency in &args.peer_concurrency {
                eprintln!("[{set}] peer, {concurrency} slots: {jobs} jobs");
                let run = peer_run(
                    &urls(jobs, &format!("peer{concurrency}")),
                    concurrency,
                    &args.chromium_path,
                )
                .await?;
                if best_peer.is_none_or(|i: usize| run.rate() > runs[i].rate()) {
                    best_peer = Some(runs.len());
                }
                runs.push(run);
            }
        }
        let tabs = best.2;
        let mut ceilings = Vec::new();
        for isolated in [true, false] {
            eprintln!("[{set}] bare CDP loop, {tabs} tabs, isolated {isolated}: {jobs} jobs");
            let list = urls(jobs, if isolated { "bare-iso" } else { "bare-warm" });
            let cpu_before = measure::machine_busy_jiffies();
            let (seconds, peak_mib) =
                bare::run(&args.chromium_path, &chromium_args, &list, tabs, isolated).await?;
            let cpu_ms =
                (measure::machine_busy_jiffies() - cpu_before) as f64 * measure::MS_PER_JIFFY;
            ceilings.push(runs.len());
            runs.push(Run {
                name: format!(
                    "bare CDP loop, {tabs} tabs, {}",
                    if isolated {
                        "fresh context per job"
                    } else {
                        "warm tabs (no isolation)"
                    }
                ),
                jobs,
                slots: tabs,
                seconds,
                cpu_ms,
                peak_mib,
                sqs_by_worker: None,
                sqs_in_log: None,
                sqs_calls: Vec::new(),
                received: 0,
            });
        }

        println!();
        println!(
            "### {} ({jobs} jobs per run, book-style {})",
            if real {
                "realistic pages"
            } else {
                "small page"
            },
            args.book_jobs
        );
        println!();
        println!(
            "| run | jobs/s | machine CPU ms/job | peak private MiB | MiB per slot | SQS requests/job (worker) | SQS requests/job (emulator log) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for run in &runs {
            let per_job = |n: Option<u64>| {
                n.map(|n| format!("{:.3}", n as f64 / run.jobs as f64))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "| {} | {:.2} | {:.0} | {:.0} | {:.0} | {} | {} |",
                run.name,
                run.rate(),
                run.cpu_per_job(),
                run.peak_mib,
                run.peak_mib / run.slots as f64,
                per_job(run.sqs_by_worker),
                per_job(run.sqs_in_log),
            );
        }
        println!();
        for run in runs.iter().filter(|r| !r.sqs_calls.is_empty()) {
            let calls: Vec<String> = run
                .sqs_calls
                .iter()
                .map(|(op, n)| format!("{op} {n}"))
                .collect();
            let receives = run.sqs_calls.first().map_or(0, |(_, n)| *n);
            println!(
                "- {}: SQS calls {}; {:.1} messages per receive",
                run.name,
                calls.join(", "),
                run.received as f64 / receives.max(1) as f64
            );
        }
        let worker = &runs[best.1];
        let iso = &runs[ceilings[0]];
        let warm = &runs[ceilings[1]];
        let book = &runs[0];
        println!();
        println!("best worker shape: {}", worker.name);
        println!(
            "- of the isolated ceiling ({tabs} tabs): {:.0} % (goal >= 90 %)",
            100.0 * worker.rate() / iso.rate()
        );
        println!(
            "- CPU per job / the isolated ceiling's: {:.2} (goal <= 1.15)",
            worker.cpu_per_job() / iso.cpu_per_job()
        );
        println!(
            "- of the warm ceiling: {:.0} %",
            100.0 * worker.rate() / warm.rate()
        );
        if let Some(peer) = best_peer.map(|i| &runs[i]) {
            println!(
                "- vs the best peer ({}): {:.2}x (goal >= 1.5x)",
                peer.name,
                worker.rate() / peer.rate()
            );
            println!(
                "- memory per slot / the peer's: {:.2} (goal <= 1)",
                (worker.peak_mib / worker.slots as f64) / (peer.peak_mib / peer.slots as f64)
            );
        }
        println!(
            "- vs book-style: {:.1}x (goal >= 6x)",
            worker.rate() / book.rate()
        );
        println!(
            "- SQS requests per job: {} (goal <= 0.3)",
            worker
                .sqs_per_job()
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into())
        );
    }
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
    slots: usize,
    flags: &[String],
    chromium: &str,
) -> anyhow::Result<Run> {
    let aws = queued(urls).await;
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
    args.extend(flags.iter().map(String::as_str));
    let config = Config::try_parse_from(args)?;
    let worker = Worker::start(config, aws.clients.clone()).await?;
    let metrics = worker.metrics().clone();
    let log_before = sqs_lines(aws.moto.log_path());
    let shutdown = CancellationToken::new();
    let memory = measure::PeakMemory::start(std::process::id());
    let cpu_before = measure::machine_busy_jiffies();
    let started = Instant::now();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    let stored = || metrics.jobs.with_label_values(&["stored"]).get() as usize;
    while stored() < urls.len() {
        if task.is_finished() {
            anyhow::bail!("the worker stopped early");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_ms = (measure::machine_busy_jiffies() - cpu_before) as f64 * measure::MS_PER_JIFFY;
    let peak_mib = memory.finish().await;
    shutdown.cancel();
    task.await??;
    let sqs_calls: Vec<(&'static str, u64)> = [
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "ChangeMessageVisibility",
    ]
    .into_iter()
    .map(|op| {
        let n = [
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
        .iter()
        .sum();
        (op, n)
    })
    .collect();
    let sqs_by_worker = sqs_calls.iter().map(|(_, n)| n).sum();
    let received = metrics.receive_batch_size.get_sample_sum() as u64;
    let sqs_in_log = sqs_since(&aws, log_before);
    Ok(Run {
        name: name.into(),
        jobs: urls.len(),
        slots,
        seconds,
        cpu_ms,
        peak_mib,
        sqs_by_worker: Some(sqs_by_worker),
        sqs_in_log,
        sqs_calls,
        received,
    })
}

/// A fresh emulator with a job per URL queued.
async fn queued(urls: &[String]) -> TestAws {
    let aws = TestAws::start().await;
    let bodies: Vec<String> = urls
        .iter()
        .map(|u| JobMessage::new(u.clone(), RenderOptions::default()).to_json())
        .collect();
    aws.send_bodies(&bodies).await;
    aws
}

/// SQS calls in the emulator's log since it held `before`.
fn sqs_since(aws: &TestAws, before: Option<u64>) -> Option<u64> {
    sqs_lines(aws.moto.log_path())
        .zip(before)
        .map(|(after, before)| after - before)
}

async fn book_run(urls: &[String], chromium: &str) -> anyhow::Result<Run> {
    let aws = queued(urls).await;
    let log_before = sqs_lines(aws.moto.log_path());
    let memory = measure::PeakMemory::start(std::process::id());
    let cpu_before = measure::machine_busy_jiffies();
    let seconds = book::run(&aws, chromium, urls.len()).await?;
    let cpu_ms = (measure::machine_busy_jiffies() - cpu_before) as f64 * measure::MS_PER_JIFFY;
    let peak_mib = memory.finish().await;
    let sqs_in_log = sqs_since(&aws, log_before);
    Ok(Run {
        name: "book-style (one message, a browser per job, 1 s sleep)".into(),
        jobs: urls.len(),
        slots: 1,
        seconds,
        cpu_ms,
        peak_mib,
        sqs_by_worker: None,
        sqs_in_log,
        sqs_calls: Vec::new(),
        received: 0,
    })
}

async fn peer_run(urls: &[String], concurrency: usize, chromium: &str) -> anyhow::Result<Run> {
    let aws = queued(urls).await;
    let log_before = sqs_lines(aws.moto.log_path());
    let cpu_before = measure::machine_busy_jiffies();
    let (seconds, peak_mib) = peer::run(&aws, chromium, concurrency, urls.len()).await?;
    let cpu_ms = (measure::machine_busy_jiffies() - cpu_before) as f64 * measure::MS_PER_JIFFY;
    // The peer's deletes may still be in flight: count after it stopped.
    let sqs_in_log = sqs_since(&aws, log_before);
    Ok(Run {
        name: format!("peer: sqs-consumer + puppeteer-cluster, {concurrency} slots"),
        jobs: urls.len(),
        slots: concurrency,
        seconds,
        cpu_ms,
        peak_mib,
        sqs_by_worker: None,
        sqs_in_log,
        sqs_calls: Vec::new(),
        received: 0,
    })
}
