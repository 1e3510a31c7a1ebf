//! The real worker binary as a child process, and what the scenarios share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use url2png_core::JobMessage;
use url2png_core::job::RenderOptions;
use url2png_testkit::metrics::{http_get, metric, scrape};
use url2png_testkit::moto::free_port;
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
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_url2png-worker"));
        command
            .envs(aws.moto.child_env())
            .env("URL2PNG_QUEUE_URL", &aws.queue.url)
            .env("URL2PNG_BUCKET", &aws.bucket)
            .env("URL2PNG_WORKER_LISTEN", ops.to_string())
            .env("URL2PNG_LOG_FORMAT", "text")
            .env("URL2PNG_WAIT_TIME_SECONDS", "1")
            .env("URL2PNG_DELETE_FLUSH_MS", "100")
            .env("URL2PNG_RETRY_BASE_SECONDS", "1")
            .env("URL2PNG_RETRY_MAX_SECONDS", "2")
            .env("URL2PNG_EGRESS_ALLOW", "127.0.0.1/32")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn the worker");
        let pid = child.id().expect("pid");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "worker exited at start with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Some((200, _)) = http_get(ops, "/healthz").await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker not healthy within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let profile = format!("url2png-chromium-{}-", self.pid);
        let mut browsers = Vec::new();
        let mut renderers = Vec::new();
        let tree = descendants(self.pid);
        for pid in tree {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if !cmdline.contains("chromium") {
                continue;
            }
            if cmdline.contains("--type=renderer") {
                renderers.push(pid);
            } else if !cmdline.contains("--type=") && cmdline.contains(&profile) {
                browsers.push(pid);
            }
        }
        (browsers, renderers)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal("KILL", &format!("-{}", self.pid));
        }
    }
}

/// `kill -SIG target` (a pid, or `-pgid` for a process group).
pub fn signal(sig: &str, target: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .stderr(Stdio::null())
        .status();
}

/// Every process below `root`, from `/proc/*/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command may hold spaces and parentheses; fields resume after
        // the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
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

/// Poll `check` every 100 ms until it returns `Some`, or panic after
/// `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
