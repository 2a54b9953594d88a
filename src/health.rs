//! Whether the worker is healthy, kept in a status file that the worker binary's `health`
//! invocation reads (an ECS container health check in an image without a shell).
//!
//! The worker is unhealthy while, for longer than the threshold: receives keep failing
//! with no success in between; acknowledgements keep failing; a heartbeat loop has not
//! woken on schedule; strict scale-in protection holds polling back. A pause shorter than
//! the threshold is reported (`"state": "paused"`) but healthy. Transitions are logged once
//! each: unhealthy at warn, healthy again at info.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// One queue's heartbeat loop, as the health check sees it.
#[derive(Debug)]
pub(crate) struct Beat {
    pub(crate) queue: Arc<str>,
    /// When the loop last woke, ms on the health clock; `u64::MAX` before it first does.
    pub(crate) at: AtomicU64,
    pub(crate) interval_ms: AtomicU64,
}

/// The worker's health signals.
#[derive(Debug)]
pub(crate) struct Health {
    start: Instant,
    threshold: Duration,
    /// 0, or 1 + the ms when receives began failing with no success since.
    receive_failing: AtomicU64,
    ack_failing: AtomicU64,
    paused: AtomicUsize,
    paused_since: AtomicU64,
    /// Pollers waiting for the bounded hold's opening to end.
    hold_paused: AtomicUsize,
    draining: AtomicBool,
    beats: Mutex<Vec<Arc<Beat>>>,
}

/// What the status file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) healthy: bool,
    /// `polling`, `paused`, `draining` or `stopped`.
    pub(crate) state: String,
    pub(crate) reasons: Vec<String>,
    /// When the worker wrote it, ms since the Unix epoch.
    pub(crate) updated_ms: u64,
}

fn since(mark: &AtomicU64, now: u64) -> Option<Duration> {
    match mark.load(Ordering::Relaxed) {
        0 => None,
        at => Some(Duration::from_millis(now.saturating_sub(at - 1))),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub(crate) fn new(threshold: Duration) -> Self {
        Self {
            start: Instant::now(),
            threshold,
            receive_failing: AtomicU64::new(0),
            ack_failing: AtomicU64::new(0),
            paused: AtomicUsize::new(0),
            paused_since: AtomicU64::new(0),
            hold_paused: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            beats: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn mark(&self, mark: &AtomicU64) {
        let _ = mark.compare_exchange(0, self.now_ms() + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(crate) fn watch(&self, beat: Arc<Beat>) {
        self.beats.lock().expect("health poisoned").push(beat);
    }

    pub(crate) fn receive_ok(&self) {
        self.receive_failing.store(0, Ordering::Relaxed);
    }

    pub(crate) fn receive_failed(&self) {
        self.mark(&self.receive_failing);
    }

    pub(crate) fn ack_ok(&self) {
        if self.ack_failing.load(Ordering::Relaxed) != 0 {
            self.ack_failing.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn ack_failed(&self) {
        self.mark(&self.ack_failing);
    }

    /// A poller waits for strict protection until the guard is dropped.
    pub(crate) fn pause(self: &Arc<Self>) -> PauseGuard {
        if self.paused.fetch_add(1, Ordering::Relaxed) == 0 {
            self.paused_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
        PauseGuard(self.clone())
    }

    /// A poller waits for the bounded hold's opening to end, until the guard is dropped: a
    /// pause on a schedule, never a reason to be unhealthy.
    pub(crate) fn hold_pause(self: &Arc<Self>) -> HoldPauseGuard {
        self.hold_paused.fetch_add(1, Ordering::Relaxed);
        HoldPauseGuard(self.clone())
    }

    /// Polling has stopped for shutdown: receive health no longer applies.
    pub(crate) fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The state now.
    pub(crate) fn evaluate(&self) -> Status {
        let now = self.now_ms();
        let over = |d: Option<Duration>| d.filter(|d| *d > self.threshold);
        let draining = self.draining.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        if !draining && let Some(d) = over(since(&self.receive_failing, now)) {
            reasons.push(format!("no successful receive for {} s: receives are failing", d.as_secs()));
        }
        if let Some(d) = over(since(&self.ack_failing, now)) {
            reasons.push(format!("acknowledgements failing for {} s", d.as_secs()));
        }
        for beat in self.beats.lock().expect("health poisoned").iter() {
            let at = beat.at.load(Ordering::Relaxed);
            if at == u64::MAX {
                continue;
            }
            let late = Duration::from_millis(now.saturating_sub(at))
                .saturating_sub(Duration::from_millis(beat.interval_ms.load(Ordering::Relaxed)));
            if late > self.threshold {
                reasons.push(format!("heartbeat of queue {} behind schedule by {} s", beat.queue, late.as_secs()));
            }
        }
        let strict_paused = self.paused.load(Ordering::Relaxed) > 0;
        if strict_paused && let Some(d) = over(since(&self.paused_since, now)) {
            reasons.push(format!("polling paused by strict scale-in protection for {} s", d.as_secs()));
        }
        let paused = strict_paused || self.hold_paused.load(Ordering::Relaxed) > 0;
        let state = if draining {
            "draining"
        } else if paused {
            "paused"
        } else {
            "polling"
        };
        Status { healthy: reasons.is_empty(), state: state.into(), reasons, updated_ms: unix_ms() }
    }

    /// How often the status is evaluated and written.
    pub(crate) fn tick(&self) -> Duration {
        (self.threshold / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Evaluates on every tick until `stop`, logging transitions, setting the health
    /// gauges and writing the status file; writes a last `stopped` status at the end.
    pub(crate) async fn run(self: Arc<Self>, file: Option<PathBuf>, slots: Arc<Semaphore>, stop: CancellationToken) {
        let healthy_gauge = metrics::gauge!(names::HEALTHY);
        let paused_gauge = metrics::gauge!(names::POLLING_PAUSED);
        let free_slots = metrics::gauge!(names::FREE_SLOTS);
        let mut was_healthy = true;
        let mut tick = tokio::time::interval(self.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                biased;
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            let mut status = self.evaluate();
            free_slots.set(slots.available_permits() as f64);
            paused_gauge.set(if status.state == "paused" { 1.0 } else { 0.0 });
            healthy_gauge.set(if status.healthy { 1.0 } else { 0.0 });
            if status.healthy != was_healthy {
                if status.healthy {
                    tracing::info!("healthy again");
                } else {
                    tracing::warn!(reasons = ?status.reasons, "unhealthy");
                }
                was_healthy = status.healthy;
            }
            if stopping {
                status.state = "stopped".into();
            }
            if let Some(path) = &file
                && let Err(error) = write_status(path, &status)
            {
                tracing::warn!(%error, path = %path.display(), "could not write the health status file");
            }
            if stopping {
                return;
            }
        }
    }
}

/// Ends a wait for the bounded hold's opening.
#[derive(Debug)]
pub(crate) struct HoldPauseGuard(Arc<Health>);

impl Drop for HoldPauseGuard {
    fn drop(&mut self) {
        self.0.hold_paused.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ends a strict-protection pause.
#[derive(Debug)]
pub(crate) struct PauseGuard(Arc<Health>);

impl Drop for PauseGuard {
    fn drop(&mut self) {
        if self.0.paused.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.paused_since.store(0, Ordering::Relaxed);
        }
    }
}

/// Writes the status whole: to a temporary file, then renamed over the old one.
fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    std::fs::write(&temp, serde_json::to_vec(status).map_err(std::io::Error::other)?)?;
    std::fs::rename(&temp, path)
}

/// Reads the status file at `path`: `Ok` with a line to print when the worker is healthy,
/// `Err` with the reason when it is not, the file is missing, or it is older than `max_age`
/// (the worker stopped updating it).
pub(crate) fn read_status(path: &Path, max_age: Duration) -> Result<String, String> {
    let text = std::fs::read(path).map_err(|e| format!("no health status at {}: {e}", path.display()))?;
    let status: Status = serde_json::from_slice(&text)
        .map_err(|e| format!("the health status at {} is not readable: {e}", path.display()))?;
    let age = Duration::from_millis(unix_ms().saturating_sub(status.updated_ms));
    if age > max_age {
        return Err(format!(
            "the health status was last written {} s ago (the worker is stuck or stopped)",
            age.as_secs()
        ));
    }
    if status.state == "stopped" {
        return Err("the worker has stopped".into());
    }
    if status.healthy {
        Ok(format!("healthy ({})", status.state))
    } else {
        Err(format!("unhealthy: {}", status.reasons.join("; ")))
    }
}

/// The health check for an ECS container health check in an image without a shell: reads
/// the status file the running worker keeps (`HOLDFAST_HEALTH_FILE`), prints one line and
/// returns success when the worker is healthy, failure when it is not, has stopped, has not
/// updated the file within `HOLDFAST_HEALTH_THRESHOLD`, or no file is configured.
///
/// ```no_run
/// // In the worker binary: `worker health` answers the health check.
/// if std::env::args().nth(1).as_deref() == Some("health") {
///     std::process::exit(if holdfast::health_check() == std::process::ExitCode::SUCCESS { 0 } else { 1 });
/// }
/// ```
pub fn health_check() -> std::process::ExitCode {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let verdict = match crate::config::health_settings(get) {
        Err(error) => Err(error.to_string()),
        Ok((None, _)) => Err("HOLDFAST_HEALTH_FILE is not set: the worker keeps no health status".into()),
        Ok((Some(path), threshold)) => read_status(&path, threshold),
    };
    match verdict {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(line) => {
            println!("{line}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bounded_hold_pause_reads_paused_but_never_unhealthy() {
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let held = health.hold_pause();
        let status = health.evaluate();
        assert!(status.healthy && status.state == "paused", "{status:?}");
        tokio::time::advance(Duration::from_secs(600)).await;
        let status = health.evaluate();
        assert!(status.healthy && status.state == "paused", "a scheduled pause is no stall: {status:?}");
        drop(held);
        assert_eq!(health.evaluate().state, "polling");
        // a strict pause alongside still counts
        let _held = health.hold_pause();
        let _strict = health.pause();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!health.evaluate().healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn each_signal_turns_unhealthy_past_the_threshold_and_heals() {
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        assert!(health.evaluate().healthy);

        health.receive_failed();
        tokio::time::advance(Duration::from_secs(59)).await;
        health.receive_failed();
        assert!(health.evaluate().healthy, "not past the threshold yet");
        tokio::time::advance(Duration::from_secs(2)).await;
        let status = health.evaluate();
        assert!(!status.healthy && status.reasons[0].contains("receive"), "{status:?}");
        health.receive_ok();
        assert!(health.evaluate().healthy);

        health.ack_failed();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(health.evaluate().reasons.iter().any(|r| r.contains("acknowledgements")));
        health.ack_ok();
        assert!(health.evaluate().healthy);

        let beat =
            Arc::new(Beat { queue: "jobs".into(), at: AtomicU64::new(u64::MAX), interval_ms: AtomicU64::new(0) });
        health.watch(beat.clone());
        beat.interval_ms.store(5_000, Ordering::Relaxed);
        beat.at.store(health.now_ms(), Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(64)).await;
        assert!(health.evaluate().healthy, "5 s interval + 60 s threshold not passed");
        tokio::time::advance(Duration::from_secs(2)).await;
        let status = health.evaluate();
        assert!(status.reasons.iter().any(|r| r.contains("heartbeat of queue jobs")), "{status:?}");
        beat.at.store(health.now_ms(), Ordering::Relaxed);
        assert!(health.evaluate().healthy);

        let pause = health.pause();
        let status = health.evaluate();
        assert!(status.healthy && status.state == "paused", "{status:?}");
        tokio::time::advance(Duration::from_secs(61)).await;
        let status = health.evaluate();
        assert!(!status.healthy && status.reasons[0].contains("strict"), "{status:?}");
        drop(pause);
        let status = health.evaluate();
        assert!(status.healthy && status.state == "polling", "{status:?}");
    }

    #[test]
    fn the_status_file_is_read_as_written_and_refused_when_stale() {
        let dir = std::env::temp_dir().join(format!("holdfast-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("status.json");
        assert!(read_status(&path, Duration::from_secs(10)).unwrap_err().contains("no health status"));
        let mut status = Status { healthy: true, state: "polling".into(), reasons: vec![], updated_ms: unix_ms() };
        write_status(&path, &status).unwrap();
        assert_eq!(read_status(&path, Duration::from_secs(10)), Ok("healthy (polling)".into()));
        status.healthy = false;
        status.reasons = vec!["acknowledgements failing for 70 s".into()];
        write_status(&path, &status).unwrap();
        assert_eq!(
            read_status(&path, Duration::from_secs(10)),
            Err("unhealthy: acknowledgements failing for 70 s".into())
        );
        status.healthy = true;
        status.updated_ms -= 20_000;
        write_status(&path, &status).unwrap();
        assert!(read_status(&path, Duration::from_secs(10)).unwrap_err().contains("last written 20 s ago"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
