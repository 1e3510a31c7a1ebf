//! The binaries under test as processes: started against the emulator,
//! waited for until healthy, signalled, and their Chromium children found
//! through `/proc`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::moto::TestAws;

/// A command for the binary at `path` (`env!("CARGO_BIN_EXE_…")`) pointed
/// at `aws`: the emulator's endpoint and throwaway credentials, its queue
/// and bucket, text logs, no stdin, killed when dropped. Add settings with
/// `.env` before spawning.
pub fn command(path: &str, aws: &TestAws) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(path);
    command
        .envs(aws.moto.child_env())
        .env("URL2PNG_QUEUE_URL", &aws.queue.url)
        .env("URL2PNG_BUCKET", &aws.bucket)
        .env("URL2PNG_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Wait until `addr` answers `GET path` with 200. Panics if `child` exits
/// first (with `log()`'s text) or after `timeout`.
pub async fn wait_healthy(
    child: &mut tokio::process::Child,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    log: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("the process exited at start with {status}:\n{}", log());
        }
        if let Some((200, _)) = crate::metrics::http_get(addr, path).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not healthy at {addr}{path} within {timeout:?}:\n{}",
            log()
        );
        tokio::time::sleep(crate::wait::POLL).await;
    }
}

/// `kill -SIG target`: a pid, or `-pgid` for a process group. Whether the
/// signal was delivered.
pub fn signal(sig: &str, target: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A process's command line, arguments joined by spaces (empty once it
/// is gone). Chromium rewrites its children's titles into one string, so
/// match with `contains`.
pub fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every process but this one whose command line contains `pattern`, as
/// `pgrep -f` finds them.
pub fn processes_naming(pattern: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| *pid != me && cmdline(*pid).contains(pattern))
        .collect()
}

/// Every process below `root`, from `/proc/*/stat`.
pub fn descendants(root: u32) -> Vec<u32> {
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

/// The profile-name prefix a worker with pid `worker` gives its browsers.
pub fn chromium_profile(worker: u32) -> String {
    format!("url2png-chromium-{worker}-")
}

/// Chromium processes below the worker with pid `worker`: (browser
/// processes, renderers).
pub fn chromium_below(worker: u32) -> (Vec<u32>, Vec<u32>) {
    let profile = chromium_profile(worker);
    let mut browsers = Vec::new();
    let mut renderers = Vec::new();
    for pid in descendants(worker) {
        let line = cmdline(pid);
        if !line.contains("chromium") {
            continue;
        }
        if line.contains("--type=renderer") {
            renderers.push(pid);
        } else if !line.contains("--type=") && line.contains(&profile) {
            browsers.push(pid);
        }
    }
    (browsers, renderers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_process_is_found_below_its_parent_with_its_command_line() {
        let me = std::process::id();
        let parent = std::os::unix::process::parent_id();
        let below = descendants(parent);
        assert!(below.contains(&me), "{me} not in {below:?} below {parent}");
        assert!(!cmdline(me).is_empty());
        assert!(cmdline(u32::MAX).is_empty());
        let sleeper = std::process::Command::new("sleep")
            .arg("30.123")
            .spawn()
            .unwrap();
        // Until it has exec'd, the child still shows this command line.
        let found = crate::wait_for("the sleeper", Duration::from_secs(10), || async {
            let found = processes_naming("sleep 30.123");
            (!found.is_empty()).then_some(found)
        })
        .await;
        assert_eq!(
            found,
            [sleeper.id()],
            "{:?}",
            found.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
        );
        let mut sleeper = sleeper;
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }

    #[tokio::test]
    async fn a_signal_reaches_a_child() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        assert!(signal("TERM", &pid.to_string()));
        let status = child.wait().await.unwrap();
        assert!(!status.success());
        assert!(!signal("TERM", &pid.to_string()), "gone now");
    }
}
