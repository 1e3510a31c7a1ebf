//! `delivery-cost`: what a submit costs the producer, per accepted request,
//! with and without the cache and `Idempotency-Key`: CPU of the producer
//! process, and the SQS and S3 requests it made (its own metrics).
//!
//! The producer runs as a child process (this binary again, with
//! `--serve`), so its CPU time is its own and not the load generator's.
//!
//! Run: `cargo run --release -p url2png-bench --bin delivery-cost`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use clap::Parser;
use serde_json::{Value, json};
use url2png_testkit::TestAws;
use url2png_testkit::metrics::{metric, scrape};

#[derive(Debug, Parser)]
struct Args {
    /// Requests per scenario.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Run as the producer (internal: the child process).
    #[arg(long, hide = true)]
    serve: Option<String>,
}

/// One POST; the status and the JSON body.
async fn post(addr: SocketAddr, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    let reply = url2png_testkit::http::request_with(
        addr,
        "POST",
        "/v1/screenshots",
        &headers,
        body.to_string().as_bytes(),
    )
    .await;
    (
        reply.status,
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    )
}

/// CPU time (user + system) of process `pid` so far.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line (11 and 12 here).
    let hz = 100.0;
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
}

struct Row {
    name: &'static str,
    accepted: usize,
    statuses: String,
    cpu_ms: f64,
    sqs: f64,
    s3: f64,
    s3_by_operation: String,
    seconds: f64,
}

/// Run `requests` requests made by `make(i)` and measure the producer.
async fn scenario(
    name: &'static str,
    producer: (SocketAddr, u32),
    args: &Args,
    make: impl Fn(usize) -> (Value, Option<String>) + Sync,
) -> Row {
    let (addr, pid) = producer;
    let before = scrape(addr).await.unwrap_or_default();
    let cpu_before = cpu(pid);
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for chunk in (0..args.requests)
        .collect::<Vec<_>>()
        .chunks(args.concurrency)
    {
        let answers = futures::future::join_all(chunk.iter().map(|&i| {
            let (body, key) = make(i);
            async move { post(addr, &body, key.as_deref()).await }
        }))
        .await;
        for (status, _) in answers {
            *statuses.entry(status).or_default() += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_ms = (cpu(pid) - cpu_before).as_secs_f64() * 1000.0;
    let after = scrape(addr).await.unwrap_or_default();
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    let s3_by_operation = ["GetObject", "HeadObject", "PutObject", "DeleteObject"]
        .iter()
        .map(|op| {
            (
                op,
                delta("url2png_producer_s3_requests_total", &[("operation", op)]),
            )
        })
        .filter(|(_, n)| *n > 0.0)
        .map(|(op, n)| format!("{op} {:.2}", n / args.requests as f64))
        .collect::<Vec<_>>()
        .join(", ");
    let accepted = statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    Row {
        name,
        accepted,
        statuses: statuses
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect::<Vec<_>>()
            .join(" "),
        cpu_ms,
        sqs: delta("url2png_producer_sqs_requests_total", &[]),
        s3: delta("url2png_producer_s3_requests_total", &[]),
        s3_by_operation,
        seconds,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(listen) = &args.serve {
        let config = url2png_producer::Config::try_parse_from([
            "url2png-producer",
            "--listen",
            listen,
            "--log-format",
            "text",
        ])?;
        let shutdown = url2png_core::shutdown::on_signals()?;
        return url2png_producer::run(config, shutdown).await;
    }
    let aws = TestAws::start().await;
    let port = url2png_testkit::moto::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let exe = std::env::current_exe()?;
    let mut child = url2png_testkit::process::command(&exe.to_string_lossy(), &aws)
        .args(["--serve", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .spawn()?;
    url2png_testkit::process::wait_healthy(
        &mut child,
        addr,
        "/readyz",
        Duration::from_secs(30),
        String::new,
    )
    .await;
    let pid = child.id().unwrap_or_default();
    let producer = (addr, pid);

    // A result to hit: one job made the cached one, and its image stored.
    let hit_body = json!({"url": "https://example.com/cached", "cache_ttl": 3600});
    let (_, first) = post(addr, &hit_body, None).await;
    let id: uuid::Uuid = first["id"].as_str().unwrap_or_default().parse()?;
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.bucket)
        .key(url2png_core::KeyLayout::default().image(id, url2png_core::ImageFormat::Png))
        .content_type("image/png")
        .body(ByteStream::from_static(b"\x89PNG"))
        .send()
        .await?;
    // A pending job to share.
    let shared_body = json!({"url": "https://example.com/pending", "cache_ttl": 3600});
    post(addr, &shared_body, None).await;

    let url = |i: usize| format!("https://example.com/page/{i}");
    let mut rows = Vec::new();
    rows.push(
        scenario("plain submit", producer, &args, |i| {
            (json!({"url": url(i)}), None)
        })
        .await,
    );
    rows.push(
        scenario("cache_ttl, miss (new URL)", producer, &args, |i| {
            (
                json!({"url": url(i), "width": 801, "cache_ttl": 3600}),
                None,
            )
        })
        .await,
    );
    rows.push(
        scenario("cache_ttl, hit (done)", producer, &args, |_| {
            (hit_body.clone(), None)
        })
        .await,
    );
    rows.push(
        scenario("cache_ttl, shared (pending)", producer, &args, |_| {
            (shared_body.clone(), None)
        })
        .await,
    );
    rows.push(
        scenario("Idempotency-Key, first", producer, &args, |i| {
            (json!({"url": url(i), "width": 802}), Some(format!("k-{i}")))
        })
        .await,
    );
    rows.push(
        scenario("Idempotency-Key, replay", producer, &args, |i| {
            (json!({"url": url(i), "width": 802}), Some(format!("k-{i}")))
        })
        .await,
    );
    let _ = child.kill().await;

    println!(
        "| scenario | answers | producer CPU ms per request | SQS requests per request | S3 requests per request | S3 by operation | requests/s (emulator-bound) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | --- | ---: |");
    for r in &rows {
        let n = args.requests as f64;
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.0} |",
            r.name,
            r.statuses,
            r.cpu_ms / n,
            r.sqs / n,
            r.s3 / n,
            if r.s3_by_operation.is_empty() {
                "none".into()
            } else {
                r.s3_by_operation.clone()
            },
            r.accepted as f64 / r.seconds
        );
    }
    Ok(())
}
