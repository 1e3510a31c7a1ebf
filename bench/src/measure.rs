//! What a run costs the machine: busy CPU of the whole machine
//! (`/proc/stat`, so the browser, its renderers, the client, the emulator
//! and S3 are all counted) and the peak private memory of a process tree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Busy jiffies of the whole machine so far.
pub fn machine_busy_jiffies() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(cpu) = stat.lines().next() else {
        return 0;
    };
    // user nice system idle iowait irq softirq steal
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum()
}

/// Milliseconds per jiffy (`USER_HZ` is 100 on Linux).
pub const MS_PER_JIFFY: f64 = 10.0;

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: read after the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// `root` and every process below it, except the emulator.
pub fn tree(root: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut below = vec![root];
    let mut i = 0;
    while i < below.len() {
        let parent = below[i];
        below.extend(all.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    below
        .into_iter()
        .filter(|pid| !cmdline(*pid).contains("moto"))
        .collect()
}

/// Private memory (clean + dirty) of `pids`, in KiB.
pub fn private_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .map(|rollup| {
            rollup
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("Private_Clean:")
                        .or_else(|| l.strip_prefix("Private_Dirty:"))
                })
                .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Samples the private memory of a process tree until stopped; keeps
/// the peak.
pub struct PeakMemory {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakMemory {
    pub fn start(root: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (peak, stop) = (peak.clone(), stop.clone());
            tokio::task::spawn_blocking(move || {
                while !stop.load(Ordering::Acquire) {
                    let kib = private_kib(&tree(root));
                    peak.fetch_max(kib, Ordering::AcqRel);
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        Self { peak, stop, task }
    }

    /// The peak in MiB.
    pub async fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        self.peak.load(Ordering::Acquire) as f64 / 1024.0
    }
}
