//! What the handles and the driver share: this process's demand, the wake-up signal, and
//! the snapshot the driver publishes after each pass.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::config::{ProtectionBackend, ProtectionMode};
use super::coordination::Clock;
use super::ledger::{Demand, Ms};
use super::state::{ProtectionError, ProtectionState};

pub(super) struct Shared {
    pub(super) backend: ProtectionBackend,
    pub(super) mode: ProtectionMode,
    pub(super) maintain: Duration,
    pub(super) clock: Clock,
    local: Mutex<Local>,
    /// Rung by handles whenever the demand changes; the driver's only wake-up from outside.
    pub(super) wake: Notify,
    /// Bumped by every `hold`/`extend`; the driver reports which it has served.
    pub(super) requests: AtomicU64,
    pub(super) snapshot: watch::Receiver<Snapshot>,
    pub(super) public: watch::Receiver<ProtectionState>,
    /// What happened while protection was refused, for the one log line at the end of it.
    pub(super) refusal: RefusalTally,
    /// Messages handed back unstarted during the bounded hold's current pause.
    pub(super) hold_released: AtomicU64,
}

/// This process's demand.
#[derive(Debug, Default)]
pub(super) struct Local {
    pub(super) in_flight: usize,
    pub(super) keep_until: Option<Ms>,
    pub(super) extend_until: Option<Ms>,
    pub(super) probers: usize,
    pub(super) shutdown: bool,
    /// The driver is releasing: a `hold` must wait for it rather than trust the snapshot.
    pub(super) releasing: bool,
    /// The last pass that reached the shared state had this process busy.
    pub(super) synced_busy: bool,
    /// The bounded hold takes no new work (set by the driver).
    pub(super) paused: bool,
    /// The bounded hold wants no protection, whatever the demand (set by the driver).
    pub(super) withdrawn: bool,
}

/// What the driver knows after its last pass.
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    pub(super) protected_until: Option<Instant>,
    pub(super) error: Option<ProtectionError>,
    pub(super) served: u64,
    pub(super) shut_down: bool,
    /// The bounded hold takes no new work.
    pub(super) paused: bool,
    /// The bounded hold has withdrawn this process's demand.
    pub(super) withdrawn: bool,
}

impl Snapshot {
    pub(super) fn protected(&self) -> bool {
        self.protected_until.is_some_and(|t| t > Instant::now())
    }
}

/// Counts, while protection is refused, what the worker did about it: one line when the
/// refusal starts, one when it ends, with the counts, instead of a line per message.
#[derive(Debug, Default)]
pub(super) struct RefusalTally {
    /// Strict mode: pollers are waiting for protection.
    paused: AtomicBool,
    paused_at_ms: AtomicU64,
    /// Relaxed mode: work started without protection.
    unprotected: AtomicU64,
    /// Strict mode: messages handed back unstarted.
    released: AtomicU64,
}

impl RefusalTally {
    /// Strict mode: the first poller to wait logs the pause.
    pub(super) fn pause(&self, clock: &Clock, error: &ProtectionError) {
        if !self.paused.swap(true, Ordering::SeqCst) {
            self.paused_at_ms.store(clock.now(), Ordering::SeqCst);
            tracing::warn!(
                reason = error.code(),
                "taking no new work until the task can be protected again (strict mode): {error}"
            );
        }
    }

    /// Relaxed mode: work starts unprotected; the first one logs.
    pub(super) fn unprotected_start(&self, error: &ProtectionError) {
        if self.unprotected.fetch_add(1, Ordering::SeqCst) == 0 {
            tracing::warn!(
                reason = error.code(),
                "working without scale-in protection (relaxed mode) until ECS protects the task again: {error}"
            );
        }
    }

    pub(super) fn released(&self, messages: u64) {
        self.released.fetch_add(messages, Ordering::SeqCst);
    }

    /// Protection is back: logs what the refusal cost, once.
    pub(super) fn resolved(&self, clock: &Clock) {
        let paused = self.paused.swap(false, Ordering::SeqCst);
        let unprotected = self.unprotected.swap(0, Ordering::SeqCst);
        let released = self.released.swap(0, Ordering::SeqCst);
        if paused {
            let paused_s = clock.now().saturating_sub(self.paused_at_ms.load(Ordering::SeqCst)) / 1000;
            tracing::info!(paused_s, released, "the task is protected again: taking new work (strict mode)");
        } else if unprotected > 0 {
            tracing::info!(unprotected, "the task is protected again (relaxed mode)");
        } else if released > 0 {
            tracing::info!(released, "the task is protected again");
        }
    }
}

impl Shared {
    pub(super) fn new(
        backend: ProtectionBackend,
        mode: ProtectionMode,
        maintain: Duration,
        clock: Clock,
        snapshot: watch::Receiver<Snapshot>,
        public: watch::Receiver<ProtectionState>,
    ) -> Self {
        Self {
            backend,
            mode,
            maintain,
            clock,
            local: Mutex::new(Local::default()),
            wake: Notify::new(),
            requests: AtomicU64::new(0),
            snapshot,
            public,
            refusal: RefusalTally::default(),
            hold_released: AtomicU64::new(0),
        }
    }

    pub(super) fn local(&self) -> MutexGuard<'_, Local> {
        // The lock is never held across a panic-prone call; recover rather than cascade.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn work_ended(&self) {
        {
            let mut local = self.local();
            local.in_flight = local.in_flight.saturating_sub(1);
            if local.in_flight == 0 {
                local.keep_until = Some(self.clock.now() + self.maintain.as_millis() as Ms);
                // An extension is for the work that asked for it.
                local.extend_until = None;
            }
        }
        self.wake.notify_one();
    }

    pub(super) fn demand(&self) -> Demand {
        let local = self.local();
        Demand {
            busy: local.in_flight > 0,
            keep_until: local.keep_until,
            extend_until: local.extend_until,
            probing: local.probers > 0,
        }
    }
}

/// Counts a strict-mode waiter for as long as it waits.
pub(super) struct Probe<'a>(pub(super) &'a Shared);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let mut local = self.0.local();
        local.probers = local.probers.saturating_sub(1);
    }
}
