//! The peer a Node team would deploy (`bench/peer/worker.js`): sqs-consumer
//! with batch size 10 feeding puppeteer-cluster (`CONCURRENCY_CONTEXT`),
//! the AWS SDK v3 S3 client, `load`, PNG. Installed by `bench/peer/install`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, BufReader};
use url2png_testkit::TestAws;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer")
}

/// Install the peer's packages (quick when they are there).
pub fn install() -> anyhow::Result<()> {
    let status = std::process::Command::new(dir().join("install")).status()?;
    anyhow::ensure!(status.success(), "bench/peer/install failed");
    Ok(())
}

/// Run the peer with `concurrency` slots until `jobs` images are stored;
/// returns the seconds taken and the peak private memory (MiB) of its tree.
pub async fn run(
    aws: &TestAws,
    chromium: &str,
    concurrency: usize,
    jobs: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut child = tokio::process::Command::new("node")
        .arg(dir().join("worker.js"))
        .envs(aws.moto.child_env())
        .env("QUEUE_URL", &aws.queue.url)
        .env("BUCKET", &aws.bucket)
        .env("CONCURRENCY", concurrency.to_string())
        .env("CHROMIUM", chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let memory = crate::measure::PeakMemory::start(pid);
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let started = Instant::now();
    let mut stored = 0;
    while stored < jobs {
        match lines.next_line().await? {
            Some(line) if line.starts_with("stored ") => stored += 1,
            Some(_) => {}
            None => anyhow::bail!("the peer exited after {stored} of {jobs} images"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = memory.finish().await;
    // SIGTERM: the peer stops its consumer and closes its browser.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let _ = child.wait().await;
    Ok((seconds, peak))
}
