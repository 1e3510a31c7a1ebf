//! `url2png-scaler simulate`: the fleet under a load profile, second by
//! second, scaled by target tracking on backlog per task plus this
//! scaler's wake from zero, against the ideal capacity.
//!
//! The model, and where it approximates:
//! - Arrivals are deterministic: a rate of 2.5 jobs/s brings 2 and 3 jobs
//!   in turn. Processing times are drawn from the chosen distribution with
//!   a fixed seed, so a run is reproducible.
//! - Jobs start on whole seconds; a task takes up to `concurrency` at once,
//!   once it has started (`startup` seconds after it was asked for).
//! - The metric is published once a minute, from a sample at the end of
//!   the minute (the real scaler publishes a sample every interval).
//! - Target tracking follows AWS's description: a scale-out alarm after
//!   `scale_out_periods` datapoints above the target, a scale-in alarm after
//!   `scale_in_periods` below `target × 0.9`, new capacity = current ×
//!   metric ÷ target (rounded up, within min and max), cool-downs as in
//!   [`crate::policy::Tracker`]. AWS's alarm evaluation and its exact
//!   scale-in threshold are not published; these are approximations.
//! - A task that is scaled in stops taking jobs and finishes those it has
//!   (the worker drains on SIGTERM); it is billed until it is empty.

use std::collections::VecDeque;
use std::fmt::Write as _;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::policy::{Reading, TargetTracking, Tracker, wake};

/// One part of the arrival profile; rates are jobs per second.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Segment {
    /// A constant rate.
    Steady { rate: f64, seconds: u64 },
    /// A linear change from one rate to another.
    Ramp { from: f64, to: f64, seconds: u64 },
    /// `base` with a burst at `peak` for `spike_seconds` in the middle.
    Spike {
        base: f64,
        peak: f64,
        seconds: u64,
        spike_seconds: u64,
    },
}

impl Segment {
    fn seconds(&self) -> u64 {
        match self {
            Self::Steady { seconds, .. }
            | Self::Ramp { seconds, .. }
            | Self::Spike { seconds, .. } => *seconds,
        }
    }

    fn rate_at(&self, t: u64) -> f64 {
        match *self {
            Self::Steady { rate, .. } => rate,
            Self::Ramp { from, to, seconds } => {
                from + (to - from) * t as f64 / seconds.max(1) as f64
            }
            Self::Spike {
                base,
                peak,
                seconds,
                spike_seconds,
            } => {
                let start = seconds.saturating_sub(spike_seconds) / 2;
                if (start..start + spike_seconds).contains(&t) {
                    peak
                } else {
                    base
                }
            }
        }
    }
}

/// The arrival profile: segments one after another.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile(pub Vec<Segment>);

impl Profile {
    /// Parse the compact form: comma-separated `steady:RATE:SECONDS`,
    /// `ramp:FROM:TO:SECONDS`, `spike:BASE:PEAK:SECONDS:SPIKE_SECONDS`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut segments = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let fields: Vec<&str> = part.split(':').collect();
            let num = |i: usize| -> anyhow::Result<f64> {
                let v: f64 = fields
                    .get(i)
                    .with_context(|| format!("`{part}`: too few fields"))?
                    .parse()
                    .with_context(|| format!("`{part}`: field {} is not a number", i + 1))?;
                if !v.is_finite() || v < 0.0 {
                    bail!("`{part}`: {v} must be a finite number ≥ 0");
                }
                Ok(v)
            };
            let secs = |i: usize| -> anyhow::Result<u64> {
                let v = num(i)?;
                if v < 1.0 || v.fract() != 0.0 {
                    bail!("`{part}`: seconds must be a whole number ≥ 1");
                }
                Ok(v as u64)
            };
            let (segment, arity) = match fields[0] {
                "steady" => (
                    Segment::Steady {
                        rate: num(1)?,
                        seconds: secs(2)?,
                    },
                    3,
                ),
                "ramp" => (
                    Segment::Ramp {
                        from: num(1)?,
                        to: num(2)?,
                        seconds: secs(3)?,
                    },
                    4,
                ),
                "spike" => (
                    Segment::Spike {
                        base: num(1)?,
                        peak: num(2)?,
                        seconds: secs(3)?,
                        spike_seconds: secs(4)?,
                    },
                    5,
                ),
                other => bail!("`{part}`: unknown segment `{other}` (steady, ramp, spike)"),
            };
            if fields.len() != arity {
                bail!("`{part}`: expected {arity} fields separated by `:`");
            }
            segments.push(segment);
        }
        Self::new(segments)
    }

    /// Read a JSON file: an array of segments such as
    /// `{"kind": "steady", "rate": 5, "seconds": 600}`.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let segments: Vec<Segment> = serde_json::from_str(text).context("profile JSON")?;
        Self::new(segments)
    }

    fn new(segments: Vec<Segment>) -> anyhow::Result<Self> {
        if segments.is_empty() {
            bail!("the profile has no segments");
        }
        for s in &segments {
            let rates = match *s {
                Segment::Steady { rate, .. } => vec![rate],
                Segment::Ramp { from, to, .. } => vec![from, to],
                Segment::Spike { base, peak, .. } => vec![base, peak],
            };
            if rates
                .iter()
                .any(|r| !r.is_finite() || *r < 0.0 || *r > 100_000.0)
            {
                bail!("rates must be within 0..=100000 jobs per second");
            }
            if s.seconds() == 0 || s.seconds() > 7 * 86_400 {
                bail!("a segment lasts 1 s to 7 days");
            }
        }
        Ok(Self(segments))
    }

    /// Total length in seconds.
    pub fn seconds(&self) -> u64 {
        self.0.iter().map(Segment::seconds).sum()
    }

    /// The arrival rate at second `t` (0 after the end).
    pub fn rate_at(&self, mut t: u64) -> f64 {
        for s in &self.0 {
            if t < s.seconds() {
                return s.rate_at(t);
            }
            t -= s.seconds();
        }
        0.0
    }
}

/// How long one job takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Processing {
    Fixed(f64),
    Exponential { mean: f64 },
    Uniform { min: f64, max: f64 },
}

impl Processing {
    /// `fixed:SECS`, `exp:MEAN` or `uniform:MIN:MAX`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let fields: Vec<&str> = text.split(':').collect();
        let num = |i: usize| -> anyhow::Result<f64> {
            let v: f64 = fields
                .get(i)
                .with_context(|| format!("`{text}`: too few fields"))?
                .parse()
                .with_context(|| format!("`{text}`: not a number"))?;
            if !v.is_finite() || v <= 0.0 || v > 3600.0 {
                bail!("`{text}`: times are within (0, 3600] seconds");
            }
            Ok(v)
        };
        let (p, arity) = match fields[0] {
            "fixed" => (Self::Fixed(num(1)?), 2),
            "exp" => (Self::Exponential { mean: num(1)? }, 2),
            "uniform" => {
                let (min, max) = (num(1)?, num(2)?);
                if min > max {
                    bail!("`{text}`: min is above max");
                }
                (Self::Uniform { min, max }, 3)
            }
            other => bail!("`{other}`: use fixed:SECS, exp:MEAN or uniform:MIN:MAX"),
        };
        if fields.len() != arity {
            bail!("`{text}`: expected {arity} fields separated by `:`");
        }
        Ok(p)
    }

    pub fn mean(&self) -> f64 {
        match *self {
            Self::Fixed(s) => s,
            Self::Exponential { mean } => mean,
            Self::Uniform { min, max } => (min + max) / 2.0,
        }
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> f64 {
        match *self {
            Self::Fixed(s) => s,
            Self::Exponential { mean } => -mean * (1.0 - rng.f64()).ln(),
            Self::Uniform { min, max } => min + (max - min) * rng.f64(),
        }
    }
}

/// Everything a simulation needs.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub profile: Profile,
    pub processing: Processing,
    /// Jobs one task runs at once.
    pub concurrency: u32,
    /// Seconds from asking for a task to its first job.
    pub startup: u64,
    pub policy: TargetTracking,
    /// Count in-flight messages in the metric.
    pub include_in_flight: bool,
    /// Wake from zero when more than this many messages wait.
    pub activation_threshold: u64,
    /// Tasks to start when waking.
    pub wake_tasks: u32,
    /// Tasks at the start.
    pub initial_tasks: u32,
    pub seed: u64,
}

/// One minute of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Minute {
    pub minute: u64,
    pub arrivals: u64,
    /// Visible messages at the end of the minute.
    pub backlog: u64,
    pub in_flight: u64,
    /// Tasks taking jobs at the end of the minute.
    pub running: u32,
    pub desired: u32,
    /// Tasks that would exactly meet this minute's load.
    pub ideal: f64,
    /// Age of the oldest waiting message at the end of the minute, seconds.
    pub oldest_age: u64,
    /// Slowest job finished in this minute, seconds from arrival.
    pub max_latency: f64,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub minutes: Vec<Minute>,
    pub jobs: usize,
    pub p50: f64,
    pub p99: f64,
    pub task_minutes: f64,
    pub ideal_task_minutes: f64,
    /// Seconds after the profile's end until the queue was empty.
    pub drain_seconds: u64,
}

struct Task {
    ready_at: u64,
    stopping: bool,
    /// (finish time, arrival time) of each job in flight.
    jobs: Vec<(f64, f64)>,
}

/// Longest the run continues after the profile to drain the queue.
const MAX_DRAIN: u64 = 6 * 3600;

/// Run a scenario.
pub fn simulate(s: &Scenario) -> Outcome {
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let mut tracker = Tracker::new(s.policy);
    let mut queue: VecDeque<f64> = VecDeque::new();
    let mut tasks: Vec<Task> = (0..s.initial_tasks)
        .map(|_| Task {
            ready_at: 0,
            stopping: false,
            jobs: Vec::new(),
        })
        .collect();
    let mut desired = s.initial_tasks;
    let mut carry = 0.0;
    let mut latencies = Vec::new();
    let mut minutes = Vec::new();
    let (mut arrivals_minute, mut max_latency_minute, mut ideal_minute) = (0, 0.0f64, 0.0);
    let (mut task_seconds, mut ideal_task_seconds) = (0.0, 0.0);
    let end = s.profile.seconds();
    let concurrency = s.concurrency.max(1) as usize;
    let mut t = 0;
    loop {
        let now = t as f64;
        // Arrivals.
        let rate = s.profile.rate_at(t);
        carry += rate;
        let arriving = carry.floor();
        carry -= arriving;
        for _ in 0..arriving as u64 {
            queue.push_back(now);
        }
        arrivals_minute += arriving as u64;
        ideal_minute += rate * s.processing.mean() / concurrency as f64 / 60.0;
        ideal_task_seconds += rate * s.processing.mean() / concurrency as f64;

        // Completions, then starts.
        for task in &mut tasks {
            task.jobs.retain(|&(finish, arrival)| {
                if finish <= now {
                    latencies.push(finish - arrival);
                    max_latency_minute = max_latency_minute.max(finish - arrival);
                    false
                } else {
                    true
                }
            });
        }
        tasks.retain(|task| !(task.stopping && task.jobs.is_empty()));
        for task in tasks.iter_mut().filter(|k| !k.stopping && k.ready_at <= t) {
            while task.jobs.len() < concurrency {
                let Some(arrival) = queue.pop_front() else {
                    break;
                };
                task.jobs
                    .push((now + s.processing.sample(&mut rng), arrival));
            }
        }
        task_seconds += tasks.len() as f64;

        // Once a minute: the scaler publishes, wakes, and target tracking
        // acts on the datapoint.
        if (t + 1) % 60 == 0 {
            let running = tasks
                .iter()
                .filter(|k| !k.stopping && k.ready_at <= t)
                .count() as u32;
            let reading = Reading {
                visible: queue.len() as u64,
                in_flight: tasks.iter().map(|k| k.jobs.len() as u64).sum(),
                delayed: 0,
                running,
                desired,
                deliveries: 0,
            };
            if let Some(n) = wake(
                &reading,
                s.activation_threshold,
                s.wake_tasks,
                Some(s.policy.max),
            ) {
                desired = n.max(s.policy.min);
            } else if let Some(n) =
                tracker.datapoint(now, reading.backlog_per_task(s.include_in_flight), desired)
            {
                desired = n;
            }
            minutes.push(Minute {
                minute: t / 60,
                arrivals: arrivals_minute,
                backlog: reading.visible,
                in_flight: reading.in_flight,
                running,
                desired,
                ideal: ideal_minute,
                oldest_age: queue.front().map_or(0, |&a| (now - a) as u64),
                max_latency: max_latency_minute,
            });
            arrivals_minute = 0;
            max_latency_minute = 0.0;
            ideal_minute = 0.0;
        }

        // The service converges on the desired count.
        let active: Vec<usize> = (0..tasks.len()).filter(|&i| !tasks[i].stopping).collect();
        if active.len() < desired as usize {
            for _ in active.len()..desired as usize {
                tasks.push(Task {
                    ready_at: t + s.startup,
                    stopping: false,
                    jobs: Vec::new(),
                });
            }
        } else if active.len() > desired as usize {
            // Stop tasks still starting first, then the least busy.
            let mut order = active;
            order.sort_by_key(|&i| (tasks[i].ready_at <= t, tasks[i].jobs.len()));
            for &i in order.iter().take(order.len() - desired as usize) {
                tasks[i].stopping = true;
            }
        }

        t += 1;
        let busy = !queue.is_empty() || tasks.iter().any(|k| !k.jobs.is_empty());
        if t >= end && (!busy || t >= end + MAX_DRAIN) && t % 60 == 0 {
            break;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Outcome {
        jobs: latencies.len(),
        p50: pick(0.5),
        p99: pick(0.99),
        task_minutes: task_seconds / 60.0,
        ideal_task_minutes: ideal_task_seconds / 60.0,
        drain_seconds: t.saturating_sub(end),
        minutes,
    }
}

/// The per-minute table and the totals, as text.
pub fn report(outcome: &Outcome) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>10} {:>11}",
        "minute",
        "arrivals",
        "backlog",
        "in-flight",
        "tasks",
        "desired",
        "ideal",
        "oldest(s)",
        "slowest(s)"
    );
    for m in &outcome.minutes {
        let _ = writeln!(
            out,
            "{:>6} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7.1} {:>10} {:>11.1}",
            m.minute,
            m.arrivals,
            m.backlog,
            m.in_flight,
            m.running,
            m.desired,
            m.ideal,
            m.oldest_age,
            m.max_latency
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "jobs {}; latency p50 {:.1} s, p99 {:.1} s; drained {} s after the profile",
        outcome.jobs, outcome.p50, outcome.p99, outcome.drain_seconds
    );
    let _ = writeln!(
        out,
        "task-minutes {:.1}; ideal {:.1} (the capacity that exactly meets the load); ratio {:.2}",
        outcome.task_minutes,
        outcome.ideal_task_minutes,
        outcome.task_minutes / outcome.ideal_task_minutes.max(f64::EPSILON)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_bad_ones_are_refused_with_the_reason() {
        let p = Profile::parse("steady:5:600, ramp:5:50:300,spike:2:40:600:30").unwrap();
        assert_eq!(p.seconds(), 1500);
        assert_eq!(p.rate_at(0), 5.0);
        assert_eq!(p.rate_at(600), 5.0);
        assert_eq!(p.rate_at(750), 27.5, "half way up the ramp");
        assert_eq!(p.rate_at(900 + 285), 40.0, "the spike is in the middle");
        assert_eq!(p.rate_at(900), 2.0);
        assert_eq!(p.rate_at(1500), 0.0, "after the end");
        for (bad, reason) in [
            ("", "no segments"),
            ("steady:5", "too few"),
            ("steady:5:10:3", "expected 3"),
            ("steady:x:10", "not a number"),
            ("steady:-1:10", "≥ 0"),
            ("steady:5:0", "whole number"),
            ("steady:5:1.5", "whole number"),
            ("climb:1:2", "unknown segment"),
            ("steady:inf:10", "finite"),
        ] {
            let e = Profile::parse(bad).unwrap_err();
            assert!(format!("{e:#}").contains(reason), "{bad}: {e:#}");
        }
        let json = Profile::from_json(r#"[{"kind": "steady", "rate": 3, "seconds": 60}]"#).unwrap();
        assert_eq!(json.rate_at(10), 3.0);
        assert!(Profile::from_json(r#"[{"kind": "steady", "rate": 3}]"#).is_err());
        assert!(Profile::from_json("[]").is_err());
    }

    #[test]
    fn processing_distributions_parse_and_keep_their_mean() {
        assert_eq!(
            Processing::parse("fixed:2").unwrap(),
            Processing::Fixed(2.0)
        );
        assert!(Processing::parse("uniform:3:1").is_err());
        assert!(Processing::parse("exp:0").is_err());
        assert!(Processing::parse("gauss:1").is_err());
        let mut rng = fastrand::Rng::with_seed(7);
        for p in ["exp:2", "uniform:1:3"] {
            let p = Processing::parse(p).unwrap();
            let mean = (0..50_000).map(|_| p.sample(&mut rng)).sum::<f64>() / 50_000.0;
            assert!((mean - 2.0).abs() < 0.05, "{p:?}: {mean}");
        }
    }

    fn scenario(profile: &str) -> Scenario {
        Scenario {
            profile: Profile::parse(profile).unwrap(),
            processing: Processing::Fixed(2.0),
            concurrency: 4,
            startup: 30,
            policy: TargetTracking {
                // In flight counts, so a target above the concurrency can
                // only be met with a standing queue, which grows: the
                // target is the concurrency, full tasks and no queue.
                target: 4.0,
                min: 0,
                max: 50,
                ..TargetTracking::default()
            },
            include_in_flight: true,
            activation_threshold: 0,
            wake_tasks: 1,
            initial_tasks: 0,
            seed: 1,
        }
    }

    #[test]
    fn a_step_load_converges_to_the_ideal_capacity() {
        // 10 jobs/s × 2 s ÷ 4 per task = 5 tasks exactly meet the load.
        let outcome = simulate(&scenario("steady:10:3600"));
        let last = &outcome.minutes[55];
        assert!((last.ideal - 5.0).abs() < 1e-9);
        assert!((5..=7).contains(&last.running), "{}", report(&outcome));
        assert!(last.backlog < 100, "the queue is under control: {last:?}");
        assert_eq!(outcome.jobs, 36_000, "every job is done");
    }

    #[test]
    fn one_message_wakes_the_service_from_zero_and_it_goes_back() {
        let mut s = scenario("steady:0:60,steady:1:1,steady:0:3600");
        s.policy.min = 0;
        let outcome = simulate(&s);
        assert_eq!(outcome.jobs, 1, "{}", report(&outcome));
        assert!(outcome.minutes.iter().any(|m| m.desired == 1));
        assert_eq!(
            outcome.minutes.last().unwrap().desired,
            0,
            "target tracking scales in to zero once idle"
        );
        assert!(outcome.p99 < 200.0, "woken within a couple of minutes");
    }

    #[test]
    fn without_waking_a_service_at_zero_never_serves() {
        let mut s = scenario("steady:1:600");
        s.activation_threshold = u64::MAX;
        let outcome = simulate(&s);
        assert!(outcome.minutes.iter().all(|m| m.desired == 0));
        assert_eq!(outcome.jobs, 0);
    }
}
