//! The arithmetic the scaler and the simulator share: backlog per task, the
//! recommended target, waking from zero, and target tracking as AWS
//! documents it. Pure functions, tested against hand-computed cases.

/// What the scaler reads each tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// `ApproximateNumberOfMessages`: waiting, visible.
    pub visible: u64,
    /// `ApproximateNumberOfMessagesNotVisible`: received, in flight.
    pub in_flight: u64,
    /// `ApproximateNumberOfMessagesDelayed`.
    pub delayed: u64,
    /// The service's running task count.
    pub running: u32,
    /// The service's desired task count.
    pub desired: u32,
    /// Webhook deliveries on their queue (waiting, in flight or in
    /// backoff). Only workers deliver them, so they keep the service from
    /// zero; they are not render work, so they are not in the backlog.
    pub deliveries: u64,
}

impl Reading {
    /// The backlog the metric counts: visible, plus in flight when asked.
    pub fn backlog(&self, include_in_flight: bool) -> u64 {
        self.visible + if include_in_flight { self.in_flight } else { 0 }
    }

    /// Backlog ÷ max(running, 1). With no task running the whole backlog
    /// lands on the one task that should start, so target tracking sees a
    /// breach rather than 0 or a division by zero.
    pub fn backlog_per_task(&self, include_in_flight: bool) -> f64 {
        self.backlog(include_in_flight) as f64 / f64::from(self.running.max(1))
    }

    /// No message anywhere: visible, in flight or delayed, and no webhook
    /// delivery.
    pub fn is_idle(&self) -> bool {
        self.visible == 0 && self.in_flight == 0 && self.delayed == 0 && self.deliveries == 0
    }
}

/// The target for `BacklogPerTask`: AWS's rule for queue workers (the
/// backlog one task may hold is the latency the business accepts divided
/// by the time one job takes, times the jobs a task runs at once), capped
/// at the concurrency. The metric counts messages in flight, so a target
/// above the concurrency can only be met by a standing queue on every
/// task, and with whole tasks target tracking then swings between too few
/// and too many (docs/operations.md, the simulator runs). A stricter goal
/// (a smaller result) is kept: it buys headroom.
pub fn recommended_target(
    acceptable_latency_secs: f64,
    mean_processing_secs: f64,
    concurrency_per_task: u32,
) -> Option<f64> {
    let allowed = latency_allows(
        acceptable_latency_secs,
        mean_processing_secs,
        concurrency_per_task,
    )?;
    Some(allowed.min(f64::from(concurrency_per_task)))
}

/// The backlog per task a latency goal allows, uncapped: acceptable
/// latency ÷ mean processing time × concurrency.
pub fn latency_allows(
    acceptable_latency_secs: f64,
    mean_processing_secs: f64,
    concurrency_per_task: u32,
) -> Option<f64> {
    (acceptable_latency_secs > 0.0 && mean_processing_secs > 0.0 && concurrency_per_task > 0)
        .then(|| acceptable_latency_secs / mean_processing_secs * f64::from(concurrency_per_task))
}

/// How many tasks to start when the service sits at zero, or `None`.
///
/// Target tracking cannot leave zero: with no task there is no capacity to
/// multiply. So when nothing is desired and the backlog (visible and
/// delayed: a delayed message is work that is coming) is above the
/// activation threshold, ask for `wake_tasks`, clamped to the scalable
/// target's maximum when there is one.
pub fn wake(
    reading: &Reading,
    activation_threshold: u64,
    wake_tasks: u32,
    max_capacity: Option<u32>,
) -> Option<u32> {
    if reading.desired > 0 || reading.running > 0 {
        return None;
    }
    let pending = reading.visible + reading.in_flight + reading.delayed;
    // A delivery waits for a worker however few there are.
    if pending <= activation_threshold && reading.deliveries == 0 {
        return None;
    }
    let tasks = max_capacity.map_or(wake_tasks, |max| wake_tasks.min(max));
    (tasks > 0).then_some(tasks)
}

/// Tracks how long the queue has been idle, for the optional scale to zero.
#[derive(Debug, Clone, Default)]
pub struct IdleClock {
    idle_since: Option<f64>,
}

impl IdleClock {
    /// Record a reading at time `now` (seconds); true when the service
    /// should go to zero: tasks are desired and the queue has been idle for
    /// at least `cool_down` seconds.
    pub fn observe(&mut self, reading: &Reading, now: f64, cool_down: f64) -> bool {
        if !reading.is_idle() {
            self.idle_since = None;
            return false;
        }
        let since = *self.idle_since.get_or_insert(now);
        reading.desired > 0 && now - since >= cool_down
    }
}

/// Target-tracking parameters, as in an ECS service's scaling policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetTracking {
    /// The target value of the metric.
    pub target: f64,
    pub min: u32,
    pub max: u32,
    /// Consecutive one-minute datapoints above the target before scaling
    /// out (AWS: 3).
    pub scale_out_periods: usize,
    /// Consecutive datapoints below the scale-in threshold before scaling
    /// in (AWS: 15).
    pub scale_in_periods: usize,
    /// The scale-in alarm fires below `target × scale_in_ratio` (AWS sets
    /// it a little under the target: 0.9).
    pub scale_in_ratio: f64,
    /// Seconds after a scale-out during which only a larger scale-out may
    /// happen and no scale-in.
    pub scale_out_cooldown: f64,
    /// Seconds after a scale-in before the next scale-in.
    pub scale_in_cooldown: f64,
}

impl Default for TargetTracking {
    fn default() -> Self {
        Self {
            target: 10.0,
            min: 0,
            max: 10,
            scale_out_periods: 3,
            scale_in_periods: 15,
            scale_in_ratio: 0.9,
            scale_out_cooldown: 300.0,
            scale_in_cooldown: 300.0,
        }
    }
}

impl TargetTracking {
    /// The capacity that brings the metric to the target: current × metric
    /// ÷ target, rounded up, within min and max.
    pub fn proportional(&self, current: u32, metric: f64) -> u32 {
        let wanted = (f64::from(current) * metric / self.target).ceil();
        // `as` saturates; the clamp bounds it.
        (wanted.max(0.0) as u32).clamp(self.min, self.max.max(self.min))
    }
}

/// The alarms and cool-downs of one target-tracking policy.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub policy: TargetTracking,
    datapoints: Vec<f64>,
    last_scale_out: Option<(f64, u32)>,
    last_scale_in: Option<f64>,
}

impl Tracker {
    pub fn new(policy: TargetTracking) -> Self {
        Self {
            policy,
            datapoints: Vec::new(),
            last_scale_out: None,
            last_scale_in: None,
        }
    }

    /// Feed one datapoint (one per minute) at time `now` with the current
    /// desired capacity; the new desired capacity when an alarm acts.
    pub fn datapoint(&mut self, now: f64, metric: f64, desired: u32) -> Option<u32> {
        let p = self.policy;
        self.datapoints.push(metric);
        let all_last = |n: usize, breach: &dyn Fn(f64) -> bool| {
            n > 0
                && self.datapoints.len() >= n
                && self.datapoints[self.datapoints.len() - n..]
                    .iter()
                    .all(|&m| breach(m))
        };
        let above = all_last(p.scale_out_periods, &|m| m > p.target);
        let below = all_last(p.scale_in_periods, &|m| m < p.target * p.scale_in_ratio);
        let in_scale_out_cool_down = self
            .last_scale_out
            .is_some_and(|(at, _)| now - at < p.scale_out_cooldown);

        if above {
            let wanted = p.proportional(desired, metric);
            // During a scale-out cool-down only a larger scale-out happens.
            let floor = match self.last_scale_out {
                Some((at, to)) if now - at < p.scale_out_cooldown => to,
                _ => desired,
            };
            if wanted > floor.max(desired) {
                self.last_scale_out = Some((now, wanted));
                return Some(wanted);
            }
            return None;
        }
        if below {
            let wanted = p.proportional(desired, metric);
            let cooling = in_scale_out_cool_down
                || self
                    .last_scale_in
                    .is_some_and(|at| now - at < p.scale_in_cooldown);
            if wanted < desired && !cooling {
                self.last_scale_in = Some(now);
                return Some(wanted);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(visible: u64, in_flight: u64, running: u32) -> Reading {
        Reading {
            visible,
            in_flight,
            running,
            desired: running,
            ..Reading::default()
        }
    }

    #[test]
    fn backlog_per_task_counts_in_flight_when_asked_and_never_divides_by_zero() {
        assert_eq!(reading(9, 3, 3).backlog_per_task(true), 4.0);
        assert_eq!(reading(9, 3, 3).backlog_per_task(false), 3.0);
        assert_eq!(reading(7, 0, 0).backlog_per_task(true), 7.0);
        assert_eq!(reading(0, 0, 0).backlog_per_task(true), 0.0);
    }

    #[test]
    fn recommended_target_is_latency_over_processing_times_concurrency() {
        // 10 s acceptable, 0.5 s a job, 8 at once: 160 messages per task.
        assert_eq!(latency_allows(10.0, 0.5, 8), Some(160.0));
        assert_eq!(latency_allows(30.0, 3.0, 1), Some(10.0));
        // Capped at the concurrency: above it the loop oscillates.
        assert_eq!(recommended_target(10.0, 0.5, 8), Some(8.0));
        assert_eq!(recommended_target(30.0, 3.0, 1), Some(1.0));
        // A stricter goal is kept.
        assert_eq!(recommended_target(1.0, 2.0, 8), Some(4.0));
        assert_eq!(latency_allows(0.0, 3.0, 1), None);
        assert_eq!(recommended_target(0.0, 3.0, 1), None);
        assert_eq!(recommended_target(10.0, 0.0, 1), None);
    }

    #[test]
    fn wake_only_from_zero_and_above_the_threshold() {
        let zero = |visible, delayed| Reading {
            visible,
            delayed,
            ..Reading::default()
        };
        assert_eq!(wake(&zero(1, 0), 0, 2, None), Some(2), "one message wakes");
        assert_eq!(wake(&zero(0, 1), 0, 2, None), Some(2), "delayed work too");
        assert_eq!(wake(&zero(0, 0), 0, 2, None), None);
        assert_eq!(wake(&zero(5, 0), 5, 2, None), None, "at the threshold");
        assert_eq!(wake(&zero(6, 0), 5, 2, None), Some(2));
        assert_eq!(wake(&zero(6, 0), 0, 3, Some(1)), Some(1), "clamped to max");
        assert_eq!(wake(&zero(6, 0), 0, 3, Some(0)), None, "max 0: parked");
        let deliveries = Reading {
            deliveries: 1,
            ..Reading::default()
        };
        assert_eq!(
            wake(&deliveries, 5, 2, None),
            Some(2),
            "a webhook delivery wakes under the threshold"
        );
        assert_eq!(wake(&reading(6, 0, 1), 0, 2, None), None, "already running");
        let starting = Reading {
            visible: 6,
            desired: 1,
            ..Reading::default()
        };
        assert_eq!(wake(&starting, 0, 2, None), None, "already asked for");
    }

    #[test]
    fn idle_clock_waits_for_the_cool_down_and_resets_on_work() {
        let mut clock = IdleClock::default();
        let idle = Reading {
            desired: 2,
            running: 2,
            ..Reading::default()
        };
        let busy = Reading {
            in_flight: 1,
            ..idle
        };
        assert!(!clock.observe(&idle, 0.0, 300.0));
        assert!(!clock.observe(&idle, 299.0, 300.0));
        assert!(!clock.observe(&busy, 300.0, 300.0), "work resets it");
        let delivering = Reading {
            deliveries: 1,
            ..idle
        };
        assert!(
            !clock.observe(&delivering, 1.0e6, 300.0),
            "a delivery waits"
        );
        assert!(!clock.observe(&idle, 300.0, 300.0), "and resets it");
        assert!(!clock.observe(&idle, 360.0, 300.0));
        assert!(clock.observe(&idle, 660.0, 300.0));
        let at_zero = Reading {
            desired: 0,
            running: 0,
            ..idle
        };
        assert!(!clock.observe(&at_zero, 1000.0, 300.0), "already zero");
    }

    #[test]
    fn proportional_capacity_rounds_up_within_bounds() {
        let p = TargetTracking {
            target: 10.0,
            min: 1,
            max: 8,
            ..TargetTracking::default()
        };
        assert_eq!(p.proportional(2, 25.0), 5, "2 × 25 / 10");
        assert_eq!(p.proportional(3, 11.0), 4, "3.3 rounds up");
        assert_eq!(p.proportional(4, 100.0), 8, "max");
        assert_eq!(p.proportional(4, 0.0), 1, "min");
        assert_eq!(
            p.proportional(0, 50.0),
            1,
            "zero stays at min: no capacity to scale"
        );
    }

    #[test]
    fn scale_out_after_three_breaches_and_in_after_fifteen() {
        let policy = TargetTracking {
            target: 10.0,
            min: 1,
            max: 20,
            scale_out_cooldown: 0.0,
            scale_in_cooldown: 0.0,
            ..TargetTracking::default()
        };
        let mut t = Tracker::new(policy);
        assert_eq!(t.datapoint(60.0, 30.0, 2), None);
        assert_eq!(t.datapoint(120.0, 30.0, 2), None);
        assert_eq!(t.datapoint(180.0, 30.0, 2), Some(6), "2 × 30 / 10");

        let mut t = Tracker::new(policy);
        for i in 0..14 {
            assert_eq!(t.datapoint(f64::from(i) * 60.0, 4.0, 6), None, "minute {i}");
        }
        assert_eq!(
            t.datapoint(14.0 * 60.0, 4.0, 6),
            Some(3),
            "6 × 4 / 10 = 2.4 → 3"
        );

        // 9.5 is under the target but above the scale-in threshold (9).
        let mut t = Tracker::new(policy);
        for i in 0..30 {
            assert_eq!(t.datapoint(f64::from(i) * 60.0, 9.5, 6), None);
        }
    }

    #[test]
    fn cool_downs_hold_back_scaling() {
        let policy = TargetTracking {
            target: 10.0,
            min: 1,
            max: 50,
            ..TargetTracking::default()
        };
        let mut t = Tracker::new(policy);
        for m in 0..2 {
            t.datapoint(f64::from(m) * 60.0, 20.0, 2);
        }
        assert_eq!(t.datapoint(120.0, 20.0, 2), Some(4));
        // Within the 300 s cool-down: the same breach does not add again…
        assert_eq!(
            t.datapoint(180.0, 20.0, 4),
            Some(8),
            "…unless it asks for more"
        );
        assert_eq!(t.datapoint(240.0, 11.0, 8), Some(9));
        assert_eq!(
            t.datapoint(300.0, 10.0, 9),
            None,
            "at the target: no breach"
        );
        // No scale-in during the scale-out cool-down.
        let mut t = Tracker::new(TargetTracking {
            scale_in_periods: 1,
            ..policy
        });
        for m in 0..3 {
            t.datapoint(f64::from(m) * 60.0, 20.0, 2);
        }
        assert_eq!(t.datapoint(200.0, 1.0, 4), None, "cooling after scale-out");
        assert_eq!(t.datapoint(500.0, 1.0, 4), Some(1));
        assert_eq!(t.datapoint(560.0, 0.0, 4), None, "scale-in cool-down");
    }
}
