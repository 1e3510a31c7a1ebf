//! `producer-load`: the producer under a loopback load generator, with
//! coalesced sends and without (one SendMessage-sized batch per request),
//! in one run. For each: accepted jobs per second at saturation, latency at
//! a fixed request rate below saturation, errors, and whether every `202`
//! has exactly one message on the queue.
//!
//! After each phase the queue is drained and the job id of every message is
//! matched against the ids the `202`s named.
//!
//! Run: `cargo run --release -p url2png-bench --bin producer-load`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use url2png_producer::{Config, Producer};
use url2png_testkit::TestAws;

#[derive(Debug, Parser)]
struct Args {
    /// Requests in the saturation phase.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Requests in flight at once in the saturation phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the fixed-rate phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const BODY: &str = r#"{"url":"https://example.com/","width":800,"height":600}"#;

/// One request; returns the status (0 when the exchange failed) and, for a
/// `202`, the job id.
async fn submit(addr: SocketAddr) -> (u16, Option<String>) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, None);
    };
    let request = format!(
        "POST /v1/screenshots HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, None);
    }
    let mut raw = Vec::new();
    if stream.read_to_end(&mut raw).await.is_err() {
        return (0, None);
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let id = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    (status, id)
}

/// Receive and delete until the queue is empty; the job ids received.
async fn drain(aws: &TestAws) -> anyhow::Result<Vec<String>> {
    let sqs = &aws.clients.sqs;
    let mut ids = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(&aws.queue.url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(300)
            .send()
            .await?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(ids);
        }
        let mut delete = sqs.delete_message_batch().queue_url(&aws.queue.url);
        for (i, m) in messages.iter().enumerate() {
            let job = url2png_core::JobMessage::parse(m.body().unwrap_or_default().as_bytes())?;
            ids.push(job.id.to_string());
            delete = delete.entries(
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()?,
            );
        }
        delete.send().await?;
    }
}

struct Outcome {
    accepted_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    rate: f64,
    errors: usize,
    accepted: usize,
    /// Messages received by the consumer.
    queued: usize,
    /// SQS send calls the producer made.
    sqs_calls: f64,
    /// Whether the received job ids are exactly the accepted ones, each
    /// once.
    matched: bool,
}

async fn measure(args: &Args, flags: &[&str], fixed_rate: Option<f64>) -> anyhow::Result<Outcome> {
    let aws = TestAws::start().await;
    let mut argv = vec![
        "url2png-producer",
        "--queue-url",
        &aws.queue.url,
        "--bucket",
        &aws.bucket,
        "--listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(flags);
    let producer = Producer::start(Config::try_parse_from(argv)?, aws.clients.clone()).await?;
    let addr = producer.local_addr();
    let registry = producer.registry().clone();
    let stop = CancellationToken::new();
    let server = tokio::spawn(producer.run(stop.clone(), Duration::from_secs(5)));

    // Saturation: a fixed number of requests, `concurrency` at a time.
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let loaders: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (next, accepted, errors, ids, total) = (
                next.clone(),
                accepted.clone(),
                errors.clone(),
                ids.clone(),
                args.requests,
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::AcqRel) < total {
                    match submit(addr).await {
                        (202, Some(id)) => {
                            accepted.fetch_add(1, Ordering::AcqRel);
                            ids.lock().unwrap().push(id);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                }
            })
        })
        .collect();
    for loader in loaders {
        loader.await?;
    }
    let accepted_per_second =
        accepted.load(Ordering::Acquire) as f64 / started.elapsed().as_secs_f64();

    // Fixed rate below saturation: a request every 1/rate seconds, each on
    // its own task, latencies recorded.
    let rate = fixed_rate.unwrap_or(accepted_per_second * 0.5).max(1.0);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    while Instant::now() < until {
        ticks.tick().await;
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            (submit(addr).await, t.elapsed())
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        let (answer, latency) = task.await?;
        if let (202, Some(id)) = answer {
            accepted.fetch_add(1, Ordering::AcqRel);
            ids.lock().unwrap().push(id);
            latencies.push(latency.as_secs_f64() * 1000.0);
        } else {
            errors.fetch_add(1, Ordering::AcqRel);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    stop.cancel();
    server.await??;
    let mut received = drain(&aws).await?;
    let mut sent = std::mem::take(&mut *ids.lock().unwrap());
    let queued = received.len();
    received.sort_unstable();
    sent.sort_unstable();
    Ok(Outcome {
        accepted_per_second,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        rate,
        errors: errors.load(Ordering::Acquire),
        accepted: accepted.load(Ordering::Acquire),
        queued,
        matched: received == sent,
        sqs_calls: registry
            .gather()
            .iter()
            .filter(|f| f.name() == "url2png_producer_sqs_requests_total")
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| m.get_counter().get_value())
            .sum(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!("coalesced sends (batch 10, linger 5 ms)");
    let coalesced = measure(
        &args,
        &["--send-batch-max", "10", "--send-linger-ms", "5"],
        None,
    )
    .await?;
    eprintln!("one message per call (batch 1, linger 0)");
    let single = measure(
        &args,
        &["--send-batch-max", "1", "--send-linger-ms", "0"],
        Some(coalesced.rate),
    )
    .await?;
    println!(
        "| sends | accepted/s at saturation | fixed rate (req/s) | p50 ms | p99 ms | errors | 202s | messages | each 202 one message | SQS calls per 202 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
    for (name, o) in [
        ("coalesced (batch 10, linger 5 ms)", &coalesced),
        ("one per call", &single),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {:.2} |",
            o.accepted_per_second,
            o.rate,
            o.p50_ms,
            o.p99_ms,
            o.errors,
            o.accepted,
            o.queued,
            if o.matched { "yes" } else { "NO" },
            o.sqs_calls / o.accepted.max(1) as f64
        );
    }
    println!();
    println!(
        "coalescing: {:.1}x the accepted jobs per second",
        coalesced.accepted_per_second / single.accepted_per_second
    );
    Ok(())
}
