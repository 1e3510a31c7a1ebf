//! How long a message stays hidden after a retryable failure.
//!
//! The delay doubles with each receive (from `base`), is capped, and keeps
//! half of itself as random jitter so that messages failing together do not
//! come back together. The queue's redrive policy then moves a message that
//! keeps failing to the dead-letter queue.

use std::time::Duration;

/// The visibility timeout for a message received `receive_count` times
/// (1 for the first delivery). `unit` is a random number in `[0, 1)`.
pub fn retry_delay(receive_count: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let doublings = receive_count.saturating_sub(1).min(30);
    let full = base.saturating_mul(1 << doublings).min(cap);
    let half = full / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// [`retry_delay`] with a fresh random number, in whole seconds as SQS
/// takes them (at least 1).
pub fn retry_visibility_secs(receive_count: u32, base: Duration, cap: Duration) -> i32 {
    let delay = retry_delay(receive_count, base, cap, fastrand::f64());
    i32::try_from(delay.as_secs().max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(2);
    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn doubles_per_receive_within_jitter_bounds() {
        for (count, full) in [(1, 2), (2, 4), (3, 8), (4, 16), (6, 64)] {
            let full = Duration::from_secs(full);
            assert_eq!(
                retry_delay(count, BASE, CAP, 0.0),
                full / 2,
                "count {count}"
            );
            assert_eq!(retry_delay(count, BASE, CAP, 1.0), full, "count {count}");
            let mid = retry_delay(count, BASE, CAP, 0.5);
            assert!(mid > full / 2 && mid < full);
        }
    }

    #[test]
    fn is_capped_and_never_overflows() {
        assert_eq!(retry_delay(9, BASE, CAP, 1.0), CAP);
        assert_eq!(retry_delay(u32::MAX, BASE, CAP, 1.0), CAP);
        assert_eq!(retry_delay(u32::MAX, BASE, CAP, 0.0), CAP / 2);
        // A zero count is treated as the first delivery.
        assert_eq!(retry_delay(0, BASE, CAP, 1.0), BASE);
        assert_eq!(
            retry_delay(3, BASE, CAP, f64::NAN.max(2.0)),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn visibility_is_whole_seconds_at_least_one() {
        let tiny = Duration::from_millis(100);
        assert_eq!(retry_visibility_secs(1, tiny, CAP), 1);
        for count in 1..20 {
            let secs = retry_visibility_secs(count, BASE, CAP);
            assert!((1..=300).contains(&secs), "{count}: {secs}");
        }
    }
}
