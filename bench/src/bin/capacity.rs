//! `capacity`: throughput and memory of one worker per concurrency setting,
//! the figures the tuning guide (docs/operations.md) derives its rules from.
//!
//! For each BROWSERSxPAGES setting, the worker (in this process) renders
//! `--jobs` pages from a queue with a backlog, while a sampler reads every
//! 200 ms the resident memory of this process and the proportional set
//! size (PSS: shared pages divided among their users, so the sum is not
//! inflated) of every Chromium process below it. Prints one Markdown table;
//! nothing is asserted.
//!
//! Run: `cargo run --release -p url2png-bench --bin capacity -- --help`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use url2png_core::{JobMessage, RenderOptions};
use url2png_testkit::{Fixtures, Page, TestAws};
use url2png_worker::{Config, Worker};

#[derive(Debug, Parser)]
#[command(about = "Throughput and memory of one worker per concurrency setting.")]
struct Args {
    /// Jobs per setting.
    #[arg(long, default_value_t = 120)]
    jobs: usize,
    /// Settings to measure, as BROWSERSxPAGES, comma-separated.
    #[arg(long, default_value = "1x1,1x2,1x4,1x8,2x4,2x6,3x4")]
    settings: String,
    /// Chromium executable.
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium_path: String,
}

/// A page with some weight: text, a grid of styled boxes and an inline
/// SVG, about what a simple landing page asks of the renderer.
fn page(i: usize) -> String {
    let boxes: String = (0..120)
        .map(|b| {
            format!(
                "<div style=\"display:inline-block;width:90px;height:60px;margin:4px;border-radius:8px;background:hsl({},70%,60%);box-shadow:0 2px 6px #0004\">{b}</div>",
                (b * 37 + i) % 360
            )
        })
        .collect();
    format!(
        "<!doctype html><html><head><title>page {i}</title><style>body{{font:16px sans-serif;margin:24px}}</style></head>\
         <body><h1>Page {i}</h1><p>{}</p>{boxes}\
         <svg width=\"600\" height=\"200\"><circle cx=\"100\" cy=\"100\" r=\"80\" fill=\"teal\"/><rect x=\"220\" y=\"40\" width=\"300\" height=\"120\" fill=\"orange\"/></svg></body></html>",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(30)
    )
}

/// Resident memory of this process, in KiB.
fn own_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Summed PSS of every process below this one, in KiB.
fn children_pss_kib() -> u64 {
    let me = std::process::id();
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
        {
            parents.push((pid, ppid));
        }
    }
    let mut below = vec![me];
    let mut i = 0;
    while i < below.len() {
        let parent = below[i];
        below.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    below[1..]
        .iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("chrom"))
        })
        .filter_map(|pid| {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

struct Measured {
    browsers: usize,
    pages: usize,
    seconds: f64,
    jobs: usize,
    worker_peak_kib: u64,
    chromium_peak_kib: u64,
    total_peak_kib: u64,
}

async fn measure(
    args: &Args,
    sites: &[Fixtures],
    browsers: usize,
    pages: usize,
) -> anyhow::Result<Measured> {
    let aws = TestAws::start().await;
    let bodies: Vec<String> = (0..args.jobs)
        .map(|i| {
            // Every setting's URLs differ, so nothing is cached across
            // runs; the page bodies are the same set.
            let site = &sites[i % sites.len()];
            let path = format!("/p/{browsers}x{pages}/{i}");
            site.page(&path, Page::html(page(i)));
            JobMessage::new(site.url(&path), RenderOptions::default()).to_json()
        })
        .collect();
    aws.send_bodies(&bodies).await;
    let (b, p) = (browsers.to_string(), pages.to_string());
    let config = Config::try_parse_from([
        "url2png-worker",
        "--queue-url",
        &aws.queue.url,
        "--bucket",
        &aws.bucket,
        "--listen",
        "127.0.0.1:0",
        "--chromium-path",
        &args.chromium_path,
        "--egress-allow",
        "127.0.0.0/8",
        "--browsers",
        &b,
        "--pages-per-browser",
        &p,
    ])?;
    let worker = Worker::start(config, aws.clients.clone()).await?;
    let metrics = worker.metrics().clone();
    let shutdown = CancellationToken::new();
    let peaks = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let sampler = {
        let (peaks, stop) = (peaks.clone(), shutdown.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let (own, chromium) =
                    tokio::task::spawn_blocking(|| (own_rss_kib(), children_pss_kib()))
                        .await
                        .unwrap_or((0, 0));
                peaks[0].fetch_max(own, Ordering::Relaxed);
                peaks[1].fetch_max(chromium, Ordering::Relaxed);
                peaks[2].fetch_max(own + chromium, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    let done = || {
        metrics.jobs.with_label_values(&["stored"]).get()
            + metrics.jobs.with_label_values(&["failed"]).get()
    };
    while (done() as usize) < args.jobs {
        anyhow::ensure!(!task.is_finished(), "the worker stopped early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await??;
    let _ = sampler.await;
    Ok(Measured {
        browsers,
        pages,
        seconds,
        jobs: args.jobs,
        worker_peak_kib: peaks[0].load(Ordering::Relaxed),
        chromium_peak_kib: peaks[1].load(Ordering::Relaxed),
        total_peak_kib: peaks[2].load(Ordering::Relaxed),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sites = futures::future::join_all(
        [3u8, 4, 5].map(|last| Fixtures::start_on(IpAddr::from([127, 0, 0, last]))),
    )
    .await;
    let mut rows = Vec::new();
    for setting in args.settings.split(',') {
        let (browsers, pages) = setting
            .split_once('x')
            .and_then(|(b, p)| Some((b.trim().parse().ok()?, p.trim().parse().ok()?)))
            .with_context(|| format!("setting `{setting}` is not BROWSERSxPAGES"))?;
        eprintln!("{browsers}x{pages}: {} jobs", args.jobs);
        rows.push(measure(&args, &sites, browsers, pages).await?);
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "| browsers x pages | concurrency | jobs | seconds | jobs/s | worker RSS MiB | Chromium PSS MiB | total MiB (peak) | MiB per slot |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let slots = r.browsers * r.pages;
        println!(
            "| {} x {} | {} | {} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.browsers,
            r.pages,
            slots,
            r.jobs,
            r.seconds,
            r.jobs as f64 / r.seconds,
            mib(r.worker_peak_kib),
            mib(r.chromium_peak_kib),
            mib(r.total_peak_kib),
            mib(r.total_peak_kib) / slots as f64,
        );
    }
    Ok(())
}
