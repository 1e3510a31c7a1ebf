//! The ledger a fault scenario ends with: what was submitted and what
//! became of each job, counted from the bucket, the fixture server and the
//! emulator's request log rather than from the worker's own word.
//!
//! [`Ledger::record`] prints the row and keeps it as JSON under
//! `<target tmp>/ledger/`, where `script/test` collects the rows into the
//! results table.

use std::collections::HashMap;
use std::path::Path;

use url2png_core::{JobMessage, KeyLayout};

use crate::{Fixtures, TestAws};

/// What became of a scenario's jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub scenario: String,
    /// Jobs (or bodies) sent to the queue.
    pub submitted: usize,
    /// Jobs whose image is in the bucket.
    pub images: usize,
    /// Jobs with a failure record.
    pub failure_records: usize,
    /// Jobs with both an image and a failure record (must be 0).
    pub both: usize,
    /// Jobs whose page was fetched more than once (retries after a fault).
    pub rendered_more_than_once: usize,
    /// Jobs whose image or record was written more than once.
    pub stored_more_than_once: usize,
    /// Jobs with neither an image nor a failure record (must be 0).
    pub lost: usize,
    /// What else the scenario measured, as `name=value` pairs.
    pub notes: Vec<(String, String)>,
    /// The jobs' fate is counted on the queue (a producer scenario: `lost`
    /// is accepted but not queued), not in the bucket.
    pub queued_only: bool,
}

/// A job and the fixture path its page is served at, if it has one.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub job: JobMessage,
    pub page: Option<String>,
}

impl Ledger {
    /// Count the fate of `jobs`. Call it once the queue is drained.
    pub async fn take(
        scenario: &str,
        aws: &TestAws,
        fixtures: Option<&Fixtures>,
        jobs: &[Tracked],
    ) -> Self {
        let layout = KeyLayout::default();
        let keys: std::collections::HashSet<String> = aws.keys().await.into_iter().collect();
        let puts = put_counts(aws);
        let mut ledger = Ledger {
            scenario: scenario.to_owned(),
            submitted: jobs.len(),
            ..Ledger::default()
        };
        for tracked in jobs {
            let image = layout.image(tracked.job.id, tracked.job.options.format);
            let failure = layout.failure(tracked.job.id);
            let (has_image, has_failure) = (keys.contains(&image), keys.contains(&failure));
            ledger.images += usize::from(has_image);
            ledger.failure_records += usize::from(has_failure);
            ledger.both += usize::from(has_image && has_failure);
            ledger.lost += usize::from(!has_image && !has_failure);
            let writes =
                puts.get(&image).copied().unwrap_or(0) + puts.get(&failure).copied().unwrap_or(0);
            ledger.stored_more_than_once += usize::from(writes > 1);
            if let (Some(fixtures), Some(page)) = (fixtures, &tracked.page) {
                ledger.rendered_more_than_once += usize::from(fixtures.hits_on(page) > 1);
            }
        }
        ledger
    }

    /// Add a measurement to the row.
    pub fn note(mut self, name: &str, value: impl ToString) -> Self {
        self.notes.push((name.to_owned(), value.to_string()));
        self
    }

    /// Whether every job ended as exactly one image or one failure record.
    pub fn nothing_lost(&self) -> bool {
        self.lost == 0 && self.both == 0 && self.images + self.failure_records == self.submitted
    }

    /// Print the row and keep it under `dir/ledger/` (pass
    /// `env!("CARGO_TARGET_TMPDIR")`).
    pub fn record(&self, dir: &str) {
        let json = serde_json::json!({
            "scenario": self.scenario,
            "submitted": self.submitted,
            "images": self.images,
            "failure_records": self.failure_records,
            "both": self.both,
            "rendered_more_than_once": self.rendered_more_than_once,
            "stored_more_than_once": self.stored_more_than_once,
            "lost": self.lost,
            "queued_only": self.queued_only,
            "notes": self.notes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
        });
        println!("ledger: {json}");
        let dir = Path::new(dir).join("ledger");
        let slug: String = self
            .scenario
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(format!("{slug}.json")), json.to_string());
        }
    }
}

/// How many times each key was written, from the emulator's request log
/// (lines such as `"PUT /bucket/key HTTP/1.1" 200`). Empty when the
/// emulator was started elsewhere and its log is not at hand.
fn put_counts(aws: &TestAws) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let Some(log) = aws.moto.log_path() else {
        return counts;
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let prefix = format!("\"PUT /{}/", aws.bucket);
    for line in text.lines() {
        let Some(start) = line.find(&prefix) else {
            continue;
        };
        let rest = &line[start + prefix.len()..];
        let Some((key, tail)) = rest.split_once(' ') else {
            continue;
        };
        // Only writes that took: a 2xx status after the request line.
        let ok = tail
            .split_once("\" ")
            .is_some_and(|(_, status)| status.starts_with('2'));
        if ok {
            *counts.entry(key.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}
