//! The periodic progress line: what the worker did in the last interval, at info level,
//! written only when something happened, so a busy worker shows it is working and an idle
//! one stays quiet.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::dispatch::Counters;

/// The default interval: often enough that someone watching a deployment sees work moving
/// within seconds, rare enough that a task busy all day writes at most 8,640 lines (about
/// 1.5 MB) and an idle one none.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snapshot {
    deliveries: u64,
    succeeded: u64,
    failed: u64,
    retried: u64,
    dead_lettered: u64,
    released: u64,
}

impl Snapshot {
    fn read(counters: &Counters) -> Self {
        Self {
            deliveries: counters.received.load(Ordering::Relaxed),
            succeeded: counters.succeeded.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            retried: counters.retried.load(Ordering::Relaxed),
            dead_lettered: counters.dead_lettered.load(Ordering::Relaxed),
            released: counters.released.load(Ordering::Relaxed),
        }
    }

    /// Messages received whose delivery has not ended yet: every delivery ends in exactly
    /// one of succeeded, retried, dead-lettered or released.
    fn in_flight(&self) -> u64 {
        self.deliveries.saturating_sub(self.succeeded + self.retried + self.dead_lettered + self.released)
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            deliveries: self.deliveries - earlier.deliveries,
            succeeded: self.succeeded - earlier.succeeded,
            failed: self.failed - earlier.failed,
            retried: self.retried - earlier.retried,
            dead_lettered: self.dead_lettered - earlier.dead_lettered,
            released: self.released - earlier.released,
        }
    }
}

/// Logs a progress line every `every` in which something happened, until `stop`. The
/// counters start at zero with the run; so does the first interval.
pub(crate) async fn report(counters: Arc<Counters>, every: Duration, stop: CancellationToken) {
    let mut last = Snapshot::default();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Snapshot::read(&counters);
        let delta = now.since(&last);
        if delta != Snapshot::default() {
            tracing::info!(
                interval_s = every.as_secs_f64(),
                deliveries = delta.deliveries,
                succeeded = delta.succeeded,
                failed = delta.failed,
                retried = delta.retried,
                dead_lettered = delta.dead_lettered,
                released = delta.released,
                in_flight = now.in_flight(),
                "progress"
            );
        }
        last = now;
    }
}
