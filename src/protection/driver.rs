//! The background task: the only place ECS is called from.
//!
//! It sleeps until one of four things wakes it, and each is named in [`Wake`]:
//!
//! - the demand changed (a `hold`, a guard dropped, an `extend`, a strict-mode poller that
//!   waits for protection, a shutdown): the handles ring [`Shared::wake`];
//! - a time is due that the decision rule itself scheduled ([`next_wake`]: the refresh point,
//!   the end of the maintain window or of an extension, the end of a backoff);
//! - it has just made a call: a call changes what is known of ECS, and the demand may have
//!   changed while it was in flight, so it decides again at once instead of sleeping (this is
//!   what lets a release that succeeded after an outage be followed straight away by the
//!   probe a waiting poller needs);
//! - the bounded hold changed phase (`hold.rs`): what this process wants changed with it, so
//!   it decides again at once;
//! - the handles are all gone (`stop`).
//!
//! So a state in which a poller waits for protection always has its way out scheduled: either
//! a call is wanted now (made at once), or it is held back by a backoff (woken at its end).
//! The bounded hold's phases each end at a time scheduled the same way, or when the last
//! job ends (a guard dropped rings the wake-up).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backend::Backend;
use super::coordination::Coordinator;
use super::hold::{BoundedHold, Transition};
use super::ledger::{Action, Demand, Ledger, Ms, Timing, next_wake};
use super::shared::{Shared, Snapshot};
use super::state::{ProtectionError, ProtectionState};

/// Calls made back to back before the driver insists on a pause: a guard against a decision
/// rule that would keep answering "call now".
const MAX_CALLS_IN_A_ROW: u32 = 8;

/// Why the driver runs a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Start,
    DemandChanged,
    Due,
    AfterCall,
    Hold,
    Stop,
}

/// What a pass did.
struct Pass {
    /// It made a call to ECS.
    called: bool,
    /// When the next pass is due if nothing else happens.
    wake_at: Option<Instant>,
    /// The bounded hold changed phase.
    hold_changed: bool,
}

pub(super) struct Driver {
    pub(super) shared: Arc<Shared>,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) coordinator: Coordinator,
    pub(super) timing: Timing,
    pub(super) snapshot: watch::Sender<Snapshot>,
    pub(super) public: watch::Sender<ProtectionState>,
    pub(super) stop: CancellationToken,
    pub(super) last_error_logged: Option<String>,
    /// The bounded hold, when `max_hold` is set.
    pub(super) hold: Option<BoundedHold>,
}

impl Driver {
    pub(super) async fn run(mut self) {
        self.adopt_earlier_protection().await;
        let mut wake = Wake::Start;
        let mut calls_in_a_row = 0u32;
        loop {
            let (leaving, served) = {
                let local = self.shared.local();
                (local.shutdown || self.stop.is_cancelled(), self.shared.requests.load(Ordering::SeqCst))
            };
            tracing::trace!(?wake, leaving, "protection pass");
            let pass = self.pass(leaving, served).await;
            if leaving {
                break;
            }
            let mut wake_at = pass.wake_at;
            if pass.called {
                calls_in_a_row += 1;
                if calls_in_a_row < MAX_CALLS_IN_A_ROW {
                    wake = Wake::AfterCall;
                    continue;
                }
                tracing::warn!(calls = calls_in_a_row, "scale-in protection: many calls in a row; pausing 1 s");
                wake_at = Some(Instant::now() + Duration::from_secs(1));
            } else if pass.hold_changed {
                wake = Wake::Hold;
                continue;
            }
            calls_in_a_row = 0;
            let due = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            wake = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Wake::Stop,
                _ = self.shared.wake.notified() => Wake::DemandChanged,
                _ = due => Wake::Due,
            };
        }
        self.snapshot.send_modify(|s| {
            s.shut_down = true;
            s.protected_until = None;
        });
        self.public.send_replace(ProtectionState::ShutDown);
        tracing::debug!("scale-in protection manager stopped");
    }

    /// A process killed with work in flight (SIGKILL, out of memory) cannot release the
    /// protection it set; a new process in the same task reads ECS's state once at start-up
    /// and, if the task is protected, treats it as its own idle protection: kept for the
    /// maintain window (work may be about to arrive), then released.
    async fn adopt_earlier_protection(&mut self) {
        if !self.coordinator.is_solo() {
            // The shared directory's ledger already records what the earlier process did.
            return;
        }
        let status = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return,
            status = self.backend.status() => status,
        };
        let remote = match status {
            Ok(remote) => remote,
            Err(error) => {
                tracing::debug!(%error, "could not read the task's protection at start-up");
                return;
            }
        };
        if !remote.enabled {
            return;
        }
        let now = self.shared.clock.now();
        let left = remote.expiration_date.as_deref().and_then(time_left);
        let expires_at = match left {
            Some(left) if left.is_zero() => return,
            Some(left) => now + left.as_millis() as Ms,
            // Protected with no known expiry: assume a full one from now.
            None => now + Ms::from(self.timing.expires_in_minutes) * 60_000,
        };
        self.coordinator.adopt(expires_at);
        {
            let mut local = self.shared.local();
            if local.in_flight == 0 && local.keep_until.is_none() {
                local.keep_until = Some(now + self.shared.maintain.as_millis() as Ms);
            }
        }
        tracing::info!(
            expires = remote.expiration_date.as_deref().unwrap_or("unknown"),
            maintain_s = self.shared.maintain.as_secs(),
            "the task was already protected (left by an earlier process?): released after the maintain window unless work arrives"
        );
        let clock = self.shared.clock;
        self.snapshot.send_modify(|s| s.protected_until = Some(clock.instant(expires_at)));
    }

    /// One pass: register this process's demand, decide, make at most one call, publish.
    async fn pass(&mut self, leaving: bool, served: u64) -> Pass {
        let withdrawn = self.hold.as_ref().is_some_and(BoundedHold::withdrawn);
        // The bounded hold's opening: this process wants nothing, busy or not.
        let local = if withdrawn { Demand::default() } else { self.shared.demand() };
        let plan = match self.coordinator.plan(local, leaving, &self.timing).await {
            Ok(plan) => plan,
            Err(error) => return self.shared_dir_failed(error, served),
        };
        let (now, demand) = (plan.now, plan.demand);
        let mut outcome = None;
        if let Some(action) = plan.action {
            if action == Action::Release && !leaving {
                let mut local = self.shared.local();
                if local.in_flight > 0 && !withdrawn {
                    // Work arrived since the demand was read: decide again with it.
                    drop(local);
                    let ledger = self.coordinator.commit(plan, None);
                    let mut pass = self.publish(ledger, now, demand, served);
                    pass.called = true;
                    return pass;
                }
                local.releasing = true;
                drop(local);
                self.snapshot.send_modify(|s| s.protected_until = None);
            }
            let result = match action {
                Action::Protect { minutes } => self.backend.protect(minutes).await,
                Action::Release => self.backend.release().await,
            };
            self.log_call(action, &result);
            outcome = Some((action, result));
        }
        let called = outcome.is_some();
        let protected = matches!(&outcome, Some((Action::Protect { .. }, Ok(()))));
        let probe_succeeded = protected && !demand.busy && demand.probing;
        let ledger = self.coordinator.commit(plan, outcome);
        {
            let mut local = self.shared.local();
            local.releasing = false;
            local.synced_busy = local.in_flight > 0 && demand.busy;
            if probe_succeeded && local.in_flight == 0 {
                // Give the poller the maintain window to bring work in.
                local.keep_until = Some(now + self.shared.maintain.as_millis() as Ms);
            }
        }
        if protected {
            self.shared.refusal.resolved(&self.shared.clock);
        }
        let mut pass = self.publish(ledger, now, demand, served);
        pass.called = called;
        pass
    }

    /// Publishes what the pass learned, and says when the next one is due.
    fn publish(&mut self, ledger: std::io::Result<Ledger>, now: Ms, demand: Demand, served: u64) -> Pass {
        let ledger = match ledger {
            Ok(ledger) => ledger,
            Err(error) => return self.shared_dir_failed(error, served),
        };
        let clock = self.coordinator.clock();
        let hold_changed = self.step_hold(&ledger, now);
        let (paused, withdrawn) = self.hold.as_ref().map_or((false, false), |h| (h.paused(), h.withdrawn()));
        let protected_until = ledger.expires_at.filter(|t| ledger.enabled && *t > now).map(|t| clock.instant(t));
        self.snapshot.send_modify(|s| {
            s.protected_until = protected_until;
            s.error = ledger.protect_error.clone();
            s.served = s.served.max(served);
            s.paused = paused;
            s.withdrawn = withdrawn;
        });
        let state = match (&ledger.protect_error, protected_until) {
            (Some(error), until) => ProtectionState::Rejected { error: error.clone(), protected_until: until },
            (None, Some(expires_at)) => ProtectionState::Protected { expires_at },
            (None, None) => ProtectionState::Unprotected,
        };
        self.public.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
        let hold_wake = self.hold.as_ref().and_then(|h| h.next_wake(&ledger, now));
        let decision_wake = next_wake(&ledger, &demand, now, &self.timing);
        let mut wake_at = [decision_wake, hold_wake].into_iter().flatten().min().map(|t| clock.instant(t));
        if let Some(every) = self.coordinator.renew_every() {
            let renew = Instant::now() + every;
            wake_at = Some(wake_at.map_or(renew, |w| w.min(renew)));
        }
        Pass { called: false, wake_at, hold_changed }
    }

    /// Moves the bounded hold on, if a phase is due; tells the handles (no new work, or no
    /// demand) in the same lock in which the jobs in flight are counted, so a `hold` either
    /// counts before the pause or is refused. Returns whether the phase changed.
    fn step_hold(&mut self, ledger: &Ledger, now: Ms) -> bool {
        let Some(hold) = &mut self.hold else { return false };
        let mut local = self.shared.local();
        let transition = hold.step(ledger, local.in_flight, now);
        local.paused = hold.paused();
        local.withdrawn = hold.withdrawn();
        let Some(transition) = transition else { return false };
        if hold.withdrawn() || !hold.paused() {
            // What the work before the opening wanted ends with it: the maintain window and
            // extensions do not reach past the gap.
            local.keep_until = None;
            local.extend_until = None;
        }
        drop(local);
        let seconds = |ms: Ms| ms as f64 / 1000.0;
        match transition {
            Transition::Paused { held, running } => tracing::info!(
                held_s = held / 1000,
                running,
                "bounded hold: the task has been protected for {} without a break (HOLDFAST_PROTECTION_MAX_HOLD): \
                 taking no new work; releasing protection once the {running} jobs in flight have finished",
                crate::config::human(Duration::from_secs(held / 1000))
            ),
            Transition::Drained => tracing::info!("bounded hold: the work in flight finished; releasing protection"),
            Transition::DrainBound { running } => tracing::warn!(
                running,
                "bounded hold: {running} jobs still running at the drain bound; releasing protection anyway \
                 (they finish unprotected)"
            ),
            Transition::Released => {
                let gap = self.hold.as_ref().map(|h| h.gap()).unwrap_or_default();
                tracing::info!(
                    gap_s = seconds(gap),
                    "bounded hold: the task is unprotected for {}, an opening for a deployment or scale-in",
                    crate::config::human(Duration::from_millis(gap))
                );
            }
            Transition::GaveUp => tracing::warn!(
                "bounded hold: protection was not released in time (the call kept failing, or another process of \
                 the task still holds it); taking work again, the next opening after another max hold"
            ),
            Transition::Resumed { paused } => {
                let released = self.shared.hold_released.swap(0, Ordering::SeqCst);
                tracing::info!(
                    paused_s = seconds(paused),
                    released,
                    "bounded hold: the opening is over; taking new work again"
                );
            }
        }
        true
    }

    fn shared_dir_failed(&mut self, error: std::io::Error, served: u64) -> Pass {
        tracing::error!(%error, "the shared protection directory failed; retrying in 1 s");
        let error = ProtectionError::Unavailable { message: format!("shared protection directory: {error}") };
        self.snapshot.send_modify(|s| {
            s.error = Some(error.clone());
            s.served = s.served.max(served);
        });
        self.public.send_replace(ProtectionState::Rejected { error, protected_until: None });
        Pass { called: false, wake_at: Some(Instant::now() + Duration::from_secs(1)), hold_changed: false }
    }

    fn log_call(&mut self, action: Action, result: &Result<(), ProtectionError>) {
        crate::telemetry::protection_call(matches!(action, Action::Protect { .. }), result);
        match (action, result) {
            (Action::Protect { minutes }, Ok(())) => {
                if self.last_error_logged.take().is_some() {
                    tracing::info!(minutes, "scale-in protection is available again");
                }
                tracing::info!(minutes, "task protected from scale-in");
            }
            (Action::Release, Ok(())) => tracing::info!("scale-in protection released"),
            (action, Err(error)) => {
                let what = match action {
                    Action::Protect { .. } => "protect the task",
                    Action::Release => "release protection",
                };
                let repeated = self.last_error_logged.as_deref() == Some(error.code());
                if repeated {
                    tracing::debug!(reason = error.code(), "could not {what}: {error}");
                } else {
                    tracing::warn!(
                        reason = error.code(),
                        transient = error.is_transient(),
                        "could not {what}: {error}; retrying with backoff"
                    );
                }
                self.last_error_logged = Some(error.code().to_owned());
            }
        }
    }
}

/// How long is left until `expiration` (RFC 3339, as ECS writes it); zero if it has passed,
/// `None` if it cannot be read.
fn time_left(expiration: &str) -> Option<Duration> {
    use aws_sdk_ecs::primitives::{DateTime, DateTimeFormat};
    let at = SystemTime::try_from(DateTime::from_str(expiration, DateTimeFormat::DateTime).ok()?).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_dates_are_read_as_ecs_writes_them() {
        assert_eq!(time_left("2022-10-06T02:29:16Z"), Some(Duration::ZERO), "in the past");
        let later = SystemTime::now() + Duration::from_secs(600);
        let text = DateTimeText(later).to_string();
        let left = time_left(&text).unwrap();
        assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600), "{left:?}");
        assert_eq!(time_left("soon"), None);
    }

    struct DateTimeText(SystemTime);

    impl std::fmt::Display for DateTimeText {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            use aws_sdk_ecs::primitives::{DateTime, DateTimeFormat};
            f.write_str(&DateTime::from(self.0).fmt(DateTimeFormat::DateTime).unwrap())
        }
    }
}
