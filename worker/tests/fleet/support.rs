//! The real worker binary as a child process, and what the scenarios share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use url2png_core::JobMessage;
use url2png_core::job::RenderOptions;
use url2png_testkit::metrics::{metric, scrape};
use url2png_testkit::moto::free_port;
use url2png_testkit::process;
pub use url2png_testkit::process::signal;
pub use url2png_testkit::wait_for;
use url2png_testkit::{Fixtures, Page, TestAws, Tracked};

/// Where ledgers are kept for `script/test`'s results table.
pub const LEDGER_DIR: &str = env!("CARGO_TARGET_TMPDIR");

/// A worker process in its own process group, as a container would be:
/// killing the group kills its Chromium with it.
pub struct WorkerProcess {
    child: tokio::process::Child,
    pub pid: u32,
    pub ops: SocketAddr,
    pub log: PathBuf,
}

impl WorkerProcess {
    /// Start the worker against `aws` with the test defaults, then `env`
    /// on top, and wait until it serves `/healthz`.
    pub async fn start(aws: &TestAws, name: &str, env: &[(&str, String)]) -> Self {
        let ops = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = PathBuf::from(LEDGER_DIR).join("fleet-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{name}-{}.log", uuid_suffix()));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = process::command(env!("CARGO_BIN_EXE_url2png-worker"), aws);
        command
            .env("URL2PNG_WORKER_LISTEN", ops.to_string())
            .env("URL2PNG_WAIT_TIME_SECONDS", "1")
            .env("URL2PNG_DELETE_FLUSH_MS", "100")
            .env("URL2PNG_RETRY_BASE_SECONDS", "1")
            .env("URL2PNG_RETRY_MAX_SECONDS", "2")
            .env("URL2PNG_EGRESS_ALLOW", "127.0.0.1/32")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let mut child = command.spawn().expect("spawn the worker");
        let pid = child.id().expect("pid");
        process::wait_healthy(&mut child, ops, "/healthz", Duration::from_secs(60), || {
            std::fs::read_to_string(&log).unwrap_or_default()
        })
        .await;
        Self {
            child,
            pid,
            ops,
            log,
        }
    }

    /// A metric's value from the worker's `/metrics` (0 if unreachable).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape(self.ops)
            .await
            .map_or(0.0, |text| metric(&text, name, labels))
    }

    /// Messages the worker holds.
    pub async fn in_flight(&self) -> usize {
        self.metric("url2png_worker_jobs_in_flight", &[]).await as usize
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL the whole process group: the worker and its browsers, with
    /// no chance to clean up.
    pub async fn kill_everything(&mut self) {
        signal("KILL", &format!("-{}", self.pid));
        let _ = self.child.wait().await;
    }

    /// Send SIGTERM to the worker.
    pub fn terminate(&self) {
        signal("TERM", &self.pid.to_string());
    }

    /// Wait for the worker to exit.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the worker did not exit within {within:?}"))
            .unwrap()
    }

    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Chromium processes of this worker: (browser processes, renderers).
    pub fn chromium(&self) -> (Vec<u32>, Vec<u32>) {
        process::chromium_below(self.pid)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal("KILL", &format!("-{}", self.pid));
        }
    }
}

fn uuid_suffix() -> String {
    let id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    id[id.len() - 8..].to_owned()
}

/// `n` jobs, each with a page of its own at `/job/<i>` that answers after
/// `delay`, so fetches per job can be counted.
pub fn jobs_with_pages(fixtures: &Fixtures, n: usize, delay: Duration) -> Vec<Tracked> {
    (0..n)
        .map(|i| {
            let path = format!("/job/{i}");
            fixtures.page(
                &path,
                Page::html(format!(
                    "<!doctype html><body style=\"background:#{:06x}\"><h1>job {i}</h1></body>",
                    i * 997 % 0xff_ffff
                ))
                .delay(delay),
            );
            Tracked {
                job: JobMessage::new(
                    fixtures.url(&path),
                    RenderOptions {
                        width: 320,
                        height: 240,
                        ..RenderOptions::default()
                    },
                ),
                page: Some(path),
            }
        })
        .collect()
}

pub async fn send(aws: &TestAws, jobs: &[Tracked]) {
    let bodies: Vec<String> = jobs.iter().map(|t| t.job.to_json()).collect();
    aws.send_bodies(&bodies).await;
}

/// Wait until the queue and its dead-letter queue are empty.
pub async fn drained(aws: &TestAws, timeout: Duration) {
    wait_for("the queue drained", timeout, || async {
        (aws.queue_counts(&aws.queue.url).await == (0, 0)).then_some(())
    })
    .await;
    assert_eq!(
        aws.queue_counts(&aws.queue.dlq_url).await,
        (0, 0),
        "nothing dead-lettered"
    );
}
