//! The decision rule: given what ECS holds and what the holders want, which call to make.
//!
//! Pure functions over milliseconds on one clock (tokio's for a single process, so tests run
//! on paused time; the wall clock when several processes share a directory). The manager
//! feeds them a process's own [`Demand`]; the shared directory feeds them the demands of
//! every live process merged, and the same [`Ledger`] read from the shared file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::MAX_EXPIRY_MINUTES;
use super::state::ProtectionError;

/// Milliseconds on the coordinator's clock.
pub(crate) type Ms = u64;

const MINUTE: Ms = 60_000;

/// What is known of ECS's protection of the task, and of the calls that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    /// ECS protects the task (as of the last successful call).
    pub(crate) enabled: bool,
    /// When that protection lapses.
    pub(crate) expires_at: Option<Ms>,
    /// Failed calls in a row.
    pub(crate) failures: u32,
    /// No call before this time (backoff after a failure).
    pub(crate) retry_at: Option<Ms>,
    /// The last attempt to protect failed; cleared by the next successful protect call only
    /// (a release succeeding does not make protection available again).
    pub(crate) protect_error: Option<ProtectionError>,
    /// The last failed call was a release.
    #[serde(default)]
    pub(crate) release_failed: bool,
    /// When the task was last protected from unprotected: the start of the continuous
    /// protection that the bounded hold measures.
    #[serde(default)]
    pub(crate) protected_since: Option<Ms>,
}

/// What holders want.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Demand {
    /// Work is in flight.
    pub(crate) busy: bool,
    /// Protection is kept until then although idle (the maintain window).
    pub(crate) keep_until: Option<Ms>,
    /// Protection must not lapse before then (a handler's extension).
    pub(crate) extend_until: Option<Ms>,
    /// Someone waits for protection to become available again (strict mode).
    pub(crate) probing: bool,
}

impl Demand {
    pub(crate) fn merge(self, other: Demand) -> Demand {
        Demand {
            busy: self.busy || other.busy,
            keep_until: self.keep_until.max(other.keep_until),
            extend_until: self.extend_until.max(other.extend_until),
            probing: self.probing || other.probing,
        }
    }
}

/// The timing settings the rule needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) expires_in_minutes: u32,
    pub(crate) refresh_before: Ms,
}

/// A call to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Protect { minutes: u32 },
    Release,
}

impl Ledger {
    /// Whether ECS protects the task at `now`.
    pub(crate) fn protected_at(&self, now: Ms) -> bool {
        self.enabled && self.expires_at.is_some_and(|t| t > now)
    }

    /// Records the outcome of `action`, sent at `sent_at`. `jitter` in `0.0..=1.0` spreads
    /// the retries of processes that failed together.
    pub(crate) fn record(&mut self, action: Action, sent_at: Ms, result: &Result<(), ProtectionError>, jitter: f64) {
        match (action, result) {
            (Action::Protect { minutes }, Ok(())) => {
                // A protection adopted from an earlier process has no known start: count from
                // the first call that renews it.
                if !self.protected_at(sent_at) || self.protected_since.is_none() {
                    self.protected_since = Some(sent_at);
                }
                self.enabled = true;
                // ECS counts from when it handled the call, a little after we sent it.
                self.expires_at = Some(sent_at + Ms::from(minutes) * MINUTE);
                self.failures = 0;
                self.retry_at = None;
                self.protect_error = None;
                self.release_failed = false;
            }
            (Action::Release, Ok(())) => {
                self.enabled = false;
                self.expires_at = None;
                self.protected_since = None;
                self.failures = 0;
                self.retry_at = None;
                self.release_failed = false;
            }
            (action, Err(error)) => {
                self.failures = self.failures.saturating_add(1);
                self.retry_at = Some(sent_at + backoff(error, self.failures, jitter).as_millis() as Ms);
                match action {
                    Action::Protect { .. } => self.protect_error = Some(error.clone()),
                    Action::Release => self.release_failed = true,
                }
            }
        }
    }
}

/// How long to wait after the `failures`-th failure in a row: exponential, with a base and
/// cap that depend on the kind of error, then between half and all of it by `jitter`.
pub(crate) fn backoff(error: &ProtectionError, failures: u32, jitter: f64) -> Duration {
    let (base, cap) = match error {
        ProtectionError::Unavailable { .. } => (Duration::from_secs(1), Duration::from_secs(60)),
        ProtectionError::Throttled { .. } => (Duration::from_secs(2), Duration::from_secs(120)),
        // Refusals and rejections do not heal in seconds; DEPLOYMENT_BLOCKED in particular
        // needs time without protection for the deployment or scale-in to act.
        _ => (Duration::from_secs(15), Duration::from_secs(300)),
    };
    let doubled = base.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(cap);
    doubled / 2 + doubled.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// Which call, if any, to make now.
pub(crate) fn decide(ledger: &Ledger, demand: &Demand, now: Ms, timing: &Timing) -> Option<Action> {
    let action = wanted_action(ledger, demand, now, timing)?;
    if ledger.retry_at.is_none_or(|t| now >= t) {
        return Some(action);
    }
    backoff_allows(ledger, action).then_some(action)
}

/// Which call to make now as this process leaves (shutdown): the release is its last chance,
/// so a backoff does not hold it back.
pub(crate) fn decide_leaving(ledger: &Ledger, demand: &Demand, now: Ms, timing: &Timing) -> Option<Action> {
    match wanted_action(ledger, demand, now, timing)? {
        Action::Release => Some(Action::Release),
        action => decide(ledger, demand, now, timing).filter(|a| *a == action),
    }
}

fn backoff_allows(ledger: &Ledger, action: Action) -> bool {
    // In backoff. A refused protection does not hold back the release: that is what the
    // refusal asks for. Throttling and outages hold back every call.
    let refused = ledger.protect_error.as_ref().is_some_and(|e| !e.is_transient());
    action == Action::Release && refused && !ledger.release_failed
}

fn wanted_action(ledger: &Ledger, demand: &Demand, now: Ms, timing: &Timing) -> Option<Action> {
    let protected = ledger.protected_at(now);
    let refused = ledger.protect_error.is_some();
    let future = |t: Option<Ms>| t.is_some_and(|t| t > now);
    // After a refusal the maintain window is skipped: whatever ECS wants to do with the task
    // can happen as soon as the work in flight is done. Strict mode then probes while
    // unprotected, so that protection is only sought again after a real release.
    let wanted = demand.busy
        || future(demand.extend_until)
        || (!refused && future(demand.keep_until))
        || (refused && demand.probing && !protected);
    if !wanted {
        return protected.then_some(Action::Release);
    }
    let extension = demand.extend_until.filter(|t| *t > now).map(|t| (t - now).div_ceil(MINUTE)).unwrap_or(0);
    let minutes = (timing.expires_in_minutes as Ms).max(extension).min(MAX_EXPIRY_MINUTES as Ms) as u32;
    let Some(expires_at) = ledger.expires_at.filter(|_| protected) else {
        return Some(Action::Protect { minutes });
    };
    let refresh_due = expires_at.saturating_sub(now) <= timing.refresh_before;
    let extension_due =
        demand.extend_until.is_some_and(|t| t > expires_at) && expires_at < now + minutes as Ms * MINUTE;
    (refresh_due || extension_due).then_some(Action::Protect { minutes })
}

/// The next time at which [`decide`] may answer differently without anything else changing.
pub(crate) fn next_wake(ledger: &Ledger, demand: &Demand, now: Ms, timing: &Timing) -> Option<Ms> {
    let refresh = ledger.expires_at.filter(|_| ledger.enabled).map(|t| t.saturating_sub(timing.refresh_before));
    [ledger.retry_at, demand.keep_until, demand.extend_until, refresh, ledger.expires_at.filter(|_| ledger.enabled)]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing { expires_in_minutes: 60, refresh_before: 20 * MINUTE };

    fn busy() -> Demand {
        Demand { busy: true, ..Demand::default() }
    }

    fn protected_until(at: Ms) -> Ledger {
        Ledger { enabled: true, expires_at: Some(at), ..Ledger::default() }
    }

    #[test]
    fn work_starting_protects_and_idle_with_nothing_held_calls_nothing() {
        assert_eq!(decide(&Ledger::default(), &busy(), 0, &T), Some(Action::Protect { minutes: 60 }));
        assert_eq!(decide(&Ledger::default(), &Demand::default(), 0, &T), None);
    }

    #[test]
    fn refreshes_only_at_the_refresh_point() {
        let l = protected_until(60 * MINUTE);
        assert_eq!(decide(&l, &busy(), 39 * MINUTE, &T), None);
        assert_eq!(decide(&l, &busy(), 40 * MINUTE, &T), Some(Action::Protect { minutes: 60 }));
        assert_eq!(next_wake(&l, &busy(), 0, &T), Some(40 * MINUTE));
    }

    #[test]
    fn the_maintain_window_keeps_protection_then_releases() {
        let l = protected_until(60 * MINUTE);
        let idle = Demand { keep_until: Some(30_000), ..Demand::default() };
        assert_eq!(decide(&l, &idle, 29_999, &T), None);
        assert_eq!(next_wake(&l, &idle, 0, &T), Some(30_000));
        assert_eq!(decide(&l, &idle, 30_000, &T), Some(Action::Release));
    }

    #[test]
    fn an_extension_asks_for_more_minutes_at_once_and_caps_at_48_hours() {
        let l = protected_until(60 * MINUTE);
        let d = Demand { extend_until: Some(3 * 60 * MINUTE + 1), ..busy() };
        assert_eq!(decide(&l, &d, 0, &T), Some(Action::Protect { minutes: 181 }));
        let d = Demand { extend_until: Some(100 * 60 * MINUTE), ..busy() };
        assert_eq!(decide(&l, &d, 0, &T), Some(Action::Protect { minutes: 2880 }));
        // covered already: nothing to do
        let d = Demand { extend_until: Some(30 * MINUTE), ..busy() };
        assert_eq!(decide(&l, &d, 0, &T), None);
    }

    #[test]
    fn a_refusal_backs_off_and_skips_the_maintain_window() {
        let mut l = protected_until(60 * MINUTE);
        l.record(
            Action::Protect { minutes: 60 },
            40 * MINUTE,
            &Err(ProtectionError::refusal(Some("DEPLOYMENT_BLOCKED".into()), None)),
            1.0,
        );
        assert_eq!(l.retry_at, Some(40 * MINUTE + 15_000));
        assert!(l.protected_at(40 * MINUTE), "the earlier protection still holds");
        assert_eq!(decide(&l, &busy(), 40 * MINUTE + 1, &T), None, "in backoff");
        assert_eq!(decide(&l, &busy(), 40 * MINUTE + 15_000, &T), Some(Action::Protect { minutes: 60 }));
        let idle = Demand { keep_until: Some(50 * MINUTE), probing: true, ..Demand::default() };
        assert_eq!(decide(&l, &idle, 40 * MINUTE + 1, &T), Some(Action::Release), "in backoff, yet released");
        assert_eq!(decide(&l, &idle, 41 * MINUTE, &T), Some(Action::Release), "released without waiting");
        l.record(Action::Release, 41 * MINUTE, &Ok(()), 0.0);
        assert!(l.protect_error.is_some(), "a release does not clear the refusal");
        assert_eq!(decide(&l, &idle, 41 * MINUTE + 1, &T), Some(Action::Protect { minutes: 60 }), "probe");
        let not_probing = Demand { probing: false, ..idle };
        assert_eq!(decide(&l, &not_probing, 41 * MINUTE + 1, &T), None);
    }

    #[test]
    fn leaving_releases_even_in_backoff() {
        let mut l = protected_until(60 * MINUTE);
        let outage = Err(ProtectionError::Unavailable { message: String::new() });
        l.record(Action::Protect { minutes: 60 }, 40 * MINUTE, &outage, 1.0);
        let idle = Demand::default();
        assert_eq!(decide(&l, &idle, 40 * MINUTE + 1, &T), None, "in backoff");
        assert_eq!(decide_leaving(&l, &idle, 40 * MINUTE + 1, &T), Some(Action::Release));
        // another process of the task still busy: nothing to release
        assert_eq!(decide_leaving(&l, &busy(), 40 * MINUTE + 1, &T), None);
    }

    #[test]
    fn backoff_grows_per_kind_and_is_capped() {
        let unavailable = ProtectionError::Unavailable { message: String::new() };
        assert_eq!(backoff(&unavailable, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&unavailable, 3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(&unavailable, 3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(&unavailable, 40, 1.0), Duration::from_secs(60));
        let throttled = ProtectionError::Throttled { message: String::new() };
        assert_eq!(backoff(&throttled, 1, 1.0), Duration::from_secs(2));
        let blocked = ProtectionError::DeploymentBlocked { detail: None };
        assert_eq!(backoff(&blocked, 10, 1.0), Duration::from_secs(300));
    }

    #[test]
    fn continuous_protection_is_counted_from_the_protect_that_found_the_task_unprotected() {
        let mut l = Ledger::default();
        l.record(Action::Protect { minutes: 60 }, 1_000, &Ok(()), 0.0);
        assert_eq!(l.protected_since, Some(1_000));
        l.record(Action::Protect { minutes: 60 }, 40 * MINUTE, &Ok(()), 0.0);
        assert_eq!(l.protected_since, Some(1_000), "a refresh continues the same protection");
        let outage = Err(ProtectionError::Unavailable { message: String::new() });
        l.record(Action::Protect { minutes: 60 }, 80 * MINUTE, &outage, 0.0);
        assert_eq!(l.protected_since, Some(1_000), "a failed refresh changes nothing");
        l.record(Action::Protect { minutes: 60 }, 200 * MINUTE, &Ok(()), 0.0);
        assert_eq!(l.protected_since, Some(200 * MINUTE), "it had lapsed: a new protection");
        l.record(Action::Release, 201 * MINUTE, &Ok(()), 0.0);
        assert_eq!(l.protected_since, None);
        let mut adopted = protected_until(60 * MINUTE);
        adopted.record(Action::Protect { minutes: 60 }, 5 * MINUTE, &Ok(()), 0.0);
        assert_eq!(adopted.protected_since, Some(5 * MINUTE), "an adopted protection counts from its renewal");
    }

    #[test]
    fn a_lapsed_protection_is_not_released_and_demands_merge() {
        let l = protected_until(MINUTE);
        assert_eq!(decide(&l, &Demand::default(), 2 * MINUTE, &T), None);
        let merged = busy().merge(Demand { keep_until: Some(5), probing: true, ..Demand::default() });
        assert_eq!(merged, Demand { busy: true, keep_until: Some(5), extend_until: None, probing: true });
    }
}
