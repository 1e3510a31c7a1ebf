//! Three producers behind HAProxy, configured as `script/server` runs it
//! (`script/haproxy-config`), with health checks ten times as frequent as
//! the target group's so the test is quick; the proportions (unhealthy
//! after 2 failed checks, healthy after 2 good ones, drain longer than
//! that window) are the production ones.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use url2png_testkit::load::{Load, Request};
use url2png_testkit::moto::free_port;
use url2png_testkit::{Ledger, TestAws};

use crate::{accepted_ids, queued_ids, start_producer};

const CHECK_INTERVAL_MS: u64 = 500;
const FALL: u64 = 2;
const RISE: u64 = 2;
/// Longer than FALL checks (and a check in progress), as in compose.
const DRAIN_SECONDS: &str = "3";

struct Balancer {
    child: tokio::process::Child,
    addr: SocketAddr,
    _config: PathBuf,
}

impl Balancer {
    async fn start(backends: &[SocketAddr]) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new(root.join("script/haproxy-config"))
            .args(backends.iter().map(ToString::to_string))
            .output()
            .expect("run script/haproxy-config");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = std::env::temp_dir().join(format!("url2png-haproxy-{}.cfg", free_port()));
        std::fs::write(&config, &out.stdout).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let haproxy = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("haproxy");
        let child = tokio::process::Command::new(haproxy)
            .args(["-db", "-f"])
            .arg(&config)
            .env("URL2PNG_LB_LISTEN", addr.to_string())
            .env(
                "URL2PNG_LB_CHECK_INTERVAL",
                format!("{CHECK_INTERVAL_MS}ms"),
            )
            .env("URL2PNG_LB_HEALTHY_THRESHOLD", RISE.to_string())
            .env("URL2PNG_LB_UNHEALTHY_THRESHOLD", FALL.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run haproxy (script/bootstrap installs it)");
        Self {
            child,
            addr,
            _config: config,
        }
    }

    /// Which producers answer `/healthz` through the balancer, over a few
    /// rounds of round robin.
    async fn serving(&self) -> HashSet<String> {
        let mut names = HashSet::new();
        for _ in 0..9 {
            let load = Load {
                target: self.addr,
                connections: 1,
                duration: Duration::from_millis(1),
                rate: None,
            };
            let report = load
                .run(|_| Request {
                    method: "GET",
                    path: "/healthz".into(),
                    body: Vec::new(),
                })
                .await;
            for e in &report.exchanges {
                if let Ok(a) = &e.answer
                    && a.status == 200
                    && let Some(name) = a.header("x-served-by")
                {
                    names.insert(name.to_owned());
                }
            }
        }
        names
    }

    async fn wait_serving(&self, count: usize) {
        let wait = async {
            while self.serving().await.len() < count {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("{count} producers in service"));
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self._config);
    }
}

/// Mostly submissions, and status reads (idempotent) in between.
fn request(n: usize) -> Request {
    if n % 5 == 4 {
        Request {
            method: "GET",
            path: format!("/v1/screenshots/{}", uuid_like(n)),
            body: Vec::new(),
        }
    } else {
        Request {
            method: "POST",
            path: "/v1/screenshots".into(),
            body: json!({"url": format!("https://example.com/steady/{n}")})
                .to_string()
                .into_bytes(),
        }
    }
}

fn uuid_like(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn signal(sig: &str, pid: u32) {
    let sent = url2png_testkit::process::signal(sig, &pid.to_string());
    assert!(sent, "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_the_balancer_fails_no_request() {
    let aws = TestAws::start().await;
    let env = [("URL2PNG_DRAIN_SECONDS", DRAIN_SECONDS)];
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut producers = Vec::new();
    for addr in &addrs {
        producers.push(start_producer(&aws, *addr, &env).await);
    }
    let balancer = Balancer::start(&addrs).await;
    balancer.wait_serving(3).await;

    // A steady stream through the balancer for the whole restart round.
    let load = Load {
        target: balancer.addr,
        connections: 8,
        duration: Duration::from_secs(30),
        rate: Some(80.0),
    };
    let stream = tokio::spawn(async move { load.run(request).await });
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, addr) in addrs.iter().enumerate() {
        let pid = producers[i].id().unwrap();
        signal("TERM", pid);
        let exit = tokio::time::timeout(Duration::from_secs(30), producers[i].wait())
            .await
            .expect("the producer stops after its drain")
            .unwrap();
        assert!(exit.success(), "{exit:?}");
        producers[i] = start_producer(&aws, *addr, &env).await;
        balancer.wait_serving(3).await;
    }
    let restarts_took = started.elapsed();
    let report = stream.await.unwrap();
    assert!(
        restarts_took < report.elapsed,
        "the restarts ({restarts_took:?}) ran under load ({:?})",
        report.elapsed
    );
    let failed: Vec<_> = report.exchanges.iter().filter(|e| e.failed()).collect();
    let (accepted, _) = accepted_ids(&report);

    // Then one producer dies without warning.
    let load = Load {
        target: balancer.addr,
        connections: 8,
        duration: Duration::from_secs(8),
        rate: Some(80.0),
    };
    let kill_at = Duration::from_secs(2);
    let stream = tokio::spawn(async move { load.run(request).await });
    tokio::time::sleep(kill_at).await;
    signal("KILL", producers[1].id().unwrap());
    let kill_report = stream.await.unwrap();
    let kill_failed: Vec<_> = kill_report
        .exchanges
        .iter()
        .filter(|e| e.failed())
        .collect();
    let last_failure = kill_failed.iter().map(|e| e.at).max();
    let (kill_accepted, _) = accepted_ids(&kill_report);
    let after_window = kill_failed
        .iter()
        .filter(|e| e.at > kill_at + Duration::from_millis(CHECK_INTERVAL_MS * (FALL + 1) + 5000))
        .count();
    let served_after = balancer.serving().await;

    let queued = queued_ids(&aws).await;
    let queued_set: HashSet<&String> = queued.iter().collect();
    let all_accepted: Vec<&String> = accepted.iter().chain(&kill_accepted).collect();
    let lost = all_accepted
        .iter()
        .filter(|id| !queued_set.contains(*id))
        .count();
    let accepted_set: HashSet<&String> = all_accepted.iter().copied().collect();
    let strays = queued_set.difference(&accepted_set).count();

    Ledger {
        scenario: "rolling restart of 3 producers behind HAProxy".into(),
        submitted: accepted.len(),
        lost: accepted
            .iter()
            .filter(|id| !queued_set.contains(id))
            .count(),
        queued_only: true,
        ..Ledger::default()
    }
    .note("requests", report.exchanges.len())
    .note("failed requests", failed.len())
    .note("restarts", 3)
    .record(env!("CARGO_TARGET_TMPDIR"));
    Ledger {
        scenario: "SIGKILL of 1 of 3 producers behind HAProxy".into(),
        submitted: kill_accepted.len(),
        lost: kill_accepted
            .iter()
            .filter(|id| !queued_set.contains(id))
            .count(),
        queued_only: true,
        ..Ledger::default()
    }
    .note("requests", kill_report.exchanges.len())
    .note("failed requests", kill_failed.len())
    .note(
        "last failure after the kill (ms)",
        last_failure.map_or("-".to_owned(), |t| {
            t.saturating_sub(kill_at).as_millis().to_string()
        }),
    )
    .note("queued but answered with an error", strays)
    .record(env!("CARGO_TARGET_TMPDIR"));

    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling restart: {:?}",
        failed.len(),
        report.exchanges.len(),
        failed
            .iter()
            .take(5)
            .map(|e| (&e.request.path, e.at, e.answer.as_ref().map(|a| a.status)))
            .collect::<Vec<_>>()
    );
    assert!(accepted.len() > 500, "{} accepted", accepted.len());
    assert_eq!(lost, 0, "accepted jobs missing from the queue");
    // A request in flight on the killed producer may have been queued
    // before its answer was lost: the client saw an error, never a lie.
    assert!(
        strays <= kill_failed.len(),
        "{strays} strays, {} failures",
        kill_failed.len()
    );
    assert_eq!(after_window, 0, "failures after the health checks' window");
    assert_eq!(
        served_after.len(),
        2,
        "the killed producer is out: {served_after:?}"
    );
}
