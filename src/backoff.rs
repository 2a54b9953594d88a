//! Backoff after a failed attempt, from the message's receive count.

use std::time::Duration;

/// Visibility to give a message whose attempt number `receive_count` failed: `min`
/// doubled per earlier attempt, capped at `max`, with "equal jitter" (half fixed, half
/// random) so a burst of failures does not come back at once. Whole seconds, as SQS takes.
pub(crate) fn failure_backoff(receive_count: u32, min: Duration, max: Duration) -> Duration {
    let doublings = receive_count.saturating_sub(1).min(31);
    let full = min.saturating_mul(1u32 << doublings).min(max);
    let half = full / 2;
    let jittered = half + half.mul_f64(fastrand::f64());
    Duration::from_secs((jittered.as_millis() as u64).div_ceil(1000))
}

/// Pause after the `failures`-th receive error in a row: 100 ms doubling to 20 s, jittered.
pub(crate) fn receive_backoff(failures: u32) -> Duration {
    let full = Duration::from_millis(100).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let full = full.min(Duration::from_secs(20));
    full / 2 + (full / 2).mul_f64(fastrand::f64())
}

/// Short polling: the pause after the `empties`-th empty answer in a row, 50 ms doubling to
/// [`EMPTY_PAUSE_MAX`]. No jitter: it spaces one poller's requests, it does not spread a crowd.
pub(crate) fn empty_receive_pause(empties: u32) -> Duration {
    Duration::from_millis(50).saturating_mul(1u32 << empties.saturating_sub(1).min(16)).min(EMPTY_PAUSE_MAX)
}

/// The longest pause between short polls of an empty queue.
pub(crate) const EMPTY_PAUSE_MAX: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_within_jitter_and_caps() {
        let (min, max) = (Duration::from_secs(4), Duration::from_secs(60));
        for _ in 0..200 {
            let first = failure_backoff(1, min, max);
            assert!((2..=4).contains(&first.as_secs()), "{first:?}");
            let third = failure_backoff(3, min, max);
            assert!((8..=16).contains(&third.as_secs()), "{third:?}");
            let late = failure_backoff(40, min, max);
            assert!((30..=60).contains(&late.as_secs()), "{late:?}");
        }
    }

    #[test]
    fn failure_backoff_spreads_out() {
        let values: std::collections::HashSet<u64> =
            (0..200).map(|_| failure_backoff(5, Duration::from_secs(2), Duration::from_secs(300)).as_secs()).collect();
        assert!(values.len() > 5, "jitter should spread values, got {values:?}");
    }

    #[test]
    fn zero_minimum_means_retry_at_once() {
        assert_eq!(failure_backoff(3, Duration::ZERO, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn empty_receive_pauses_double_and_cap() {
        let pauses: Vec<u64> = (1..=7).map(|n| empty_receive_pause(n).as_millis() as u64).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(empty_receive_pause(u32::MAX), EMPTY_PAUSE_MAX);
    }

    #[test]
    fn receive_backoff_grows_and_caps() {
        assert!(receive_backoff(1) <= Duration::from_millis(100));
        assert!(receive_backoff(4) >= Duration::from_millis(400));
        assert!(receive_backoff(100) <= Duration::from_secs(20));
    }
}
