//! Shared set-up: an emulator, fixtures, a worker, and ways to wait for
//! what it stores.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use url2png_core::JobMessage;
use url2png_testkit::TestAws;
pub use url2png_testkit::process::signal;
pub use url2png_testkit::wait_for;
use url2png_worker::{Config, Worker};

/// Worker settings for tests: the emulator's queue and bucket, an ephemeral
/// ops port, and `extra` flags on top.
pub fn config(aws: &TestAws, extra: &[&str]) -> Config {
    let mut args = vec![
        "url2png-worker".to_owned(),
        "--queue-url".into(),
        aws.queue.url.clone(),
        "--bucket".into(),
        aws.bucket.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--log-format".into(),
        "text".into(),
        "--wait-time-seconds".into(),
        "1".into(),
        "--delete-flush-ms".into(),
        "100".into(),
        // Fixture pages are on loopback, which the policy refuses by default.
        "--egress-allow".into(),
        "127.0.0.1/32".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Config::try_parse_from(args).expect("test config parses")
}

/// A running worker.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub pool: url2png_worker::pool::Pool,
    pub metrics: url2png_worker::metrics::Metrics,
    pub ops: std::net::SocketAddr,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("worker task").expect("worker run");
    }
}

pub async fn start_worker(aws: &TestAws, extra: &[&str]) -> Running {
    start_worker_with(config(aws, extra), aws).await
}

/// A worker with these settings (for those a flag cannot add twice).
pub async fn start_worker_with(config: Config, aws: &TestAws) -> Running {
    let _ = tracing_subscriber_init();
    let worker = Worker::start(config, aws.clients.clone())
        .await
        .expect("worker starts");
    let pool = worker.pool().clone();
    let metrics = worker.metrics().clone();
    let ops = worker.ops_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    Running {
        shutdown,
        task,
        pool,
        metrics,
        ops,
    }
}

fn tracing_subscriber_init() -> Result<(), ()> {
    url2png_core::telemetry::init_tracing(url2png_core::telemetry::LogFormat::Text).map_err(|_| ())
}

/// Send raw bodies in batches of 10.
pub async fn send_bodies(aws: &TestAws, bodies: &[String]) {
    aws.send_bodies(bodies).await;
}

pub async fn send_jobs(aws: &TestAws, jobs: &[JobMessage]) {
    let bodies: Vec<String> = jobs.iter().map(JobMessage::to_json).collect();
    send_bodies(aws, &bodies).await;
}

/// Every job result in the bucket: images and failure records (the render
/// reports beside the images are left out).
pub async fn keys(aws: &TestAws) -> Vec<String> {
    aws.results().await
}

pub async fn get(aws: &TestAws, key: &str) -> Vec<u8> {
    aws.object(key).await
}

/// (visible, in flight) counts of a queue.
pub async fn queue_counts(aws: &TestAws, url: &str) -> (u64, u64) {
    aws.queue_counts(url).await
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && &bytes[..8] == b"\x89PNG\r\n\x1a\n",
        "not a PNG"
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// Current value of a counter with these label values.
pub fn counter(vec: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
    vec.with_label_values(labels).get()
}

/// The colour of a PNG's top-left pixel.
pub fn top_left_pixel(png_bytes: &[u8]) -> [u8; 3] {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(step >= 3);
    [buf[0], buf[1], buf[2]]
}
