//! The bounded hold: a worker that always has work would keep its task protected without a
//! break, and a scale-in or deployment would wait for the protection to expire. With a
//! maximum hold, once the task has been protected that long the worker takes no new work,
//! lets what runs finish (bounded by the drain time), releases protection, stays
//! unprotected for the gap, and then takes work again: an opening ECS can use, on a
//! schedule, without any IAM permission.
//!
//! Pure over milliseconds on the coordinator's clock, like the ledger; the driver steps it
//! after each pass. Each phase has its way out scheduled ([`BoundedHold::next_wake`]).
//!
//! With a shared directory the hold is each process's own: every process measures the same
//! continuous protection (the shared ledger's start), pauses and drains its own work, and
//! withdraws its own demand; the task is released once every process has withdrawn (or is
//! idle), and each process resumes one gap after it saw the release.

use super::ledger::{Ledger, Ms};

/// The hold's settings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HoldLimits {
    /// Continuous protection after which the opening starts.
    pub(crate) max: Ms,
    /// How long the task stays unprotected.
    pub(crate) gap: Ms,
    /// How long the work in flight may take to finish before protection is released anyway.
    pub(crate) drain: Ms,
}

/// Where the hold stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Work is taken as usual.
    Open,
    /// No new work; the work in flight finishes, until `until` at the latest.
    Draining { since: Ms, until: Ms },
    /// This process wants no protection; waiting to see the task released (in shared mode,
    /// by the last process to withdraw), until `give_up` at the latest.
    Releasing { give_up: Ms },
    /// The task is unprotected; work resumes at `until`.
    Gap { until: Ms },
}

/// A change of phase, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The opening starts: protected `held` ms without a break, `running` jobs in flight.
    Paused { held: Ms, running: usize },
    /// Every job finished: protection is released.
    Drained,
    /// The drain bound passed with `running` jobs in flight: protection is released anyway.
    DrainBound { running: usize },
    /// The task is unprotected: the gap runs.
    Released,
    /// The release did not happen in time (the call kept failing, or another process still
    /// holds the task): work resumes without an opening this time.
    GaveUp,
    /// The gap is over: work resumes, `paused` ms after it stopped.
    Resumed { paused: Ms },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BoundedHold {
    limits: HoldLimits,
    phase: Phase,
    /// When the current pause began.
    paused_at: Ms,
    /// Continuous protection is counted from no earlier than this: after giving up, the
    /// next opening is one whole `max` later.
    count_from: Ms,
}

impl BoundedHold {
    pub(crate) fn new(limits: HoldLimits) -> Self {
        Self { limits, phase: Phase::Open, paused_at: 0, count_from: 0 }
    }

    /// How long the task stays unprotected, in ms.
    pub(crate) fn gap(&self) -> Ms {
        self.limits.gap
    }

    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// No new work may start.
    pub(crate) fn paused(&self) -> bool {
        self.phase != Phase::Open
    }

    /// This process wants no protection, whatever its demand.
    pub(crate) fn withdrawn(&self) -> bool {
        matches!(self.phase, Phase::Releasing { .. } | Phase::Gap { .. })
    }

    /// How long the task has been protected without a break at `now`, if it is.
    fn held(&self, ledger: &Ledger, now: Ms) -> Option<Ms> {
        let since = ledger.protected_since.filter(|_| ledger.protected_at(now))?;
        Some(now.saturating_sub(since.max(self.count_from)))
    }

    /// Moves to the next phase if one is due, given what is known of ECS and the jobs in
    /// flight in this process.
    pub(crate) fn step(&mut self, ledger: &Ledger, running: usize, now: Ms) -> Option<Transition> {
        let (phase, transition) = match self.phase {
            Phase::Open => {
                let held = self.held(ledger, now).filter(|h| *h >= self.limits.max)?;
                self.paused_at = now;
                (Phase::Draining { since: now, until: now + self.limits.drain }, Transition::Paused { held, running })
            }
            Phase::Draining { since, until } => {
                // The release may wait for other processes to drain as well, each within
                // the same bound.
                let give_up = since + self.limits.drain + self.limits.gap;
                if running == 0 {
                    (Phase::Releasing { give_up }, Transition::Drained)
                } else if now >= until {
                    (Phase::Releasing { give_up }, Transition::DrainBound { running })
                } else {
                    return None;
                }
            }
            Phase::Releasing { give_up } => {
                if !ledger.protected_at(now) {
                    (Phase::Gap { until: now + self.limits.gap }, Transition::Released)
                } else if now >= give_up {
                    self.count_from = now;
                    (Phase::Open, Transition::GaveUp)
                } else {
                    return None;
                }
            }
            Phase::Gap { until } if now >= until => {
                (Phase::Open, Transition::Resumed { paused: now.saturating_sub(self.paused_at) })
            }
            Phase::Gap { .. } => return None,
        };
        self.phase = phase;
        Some(transition)
    }

    /// When [`step`](Self::step) may next answer differently without anything else changing
    /// (a job ending or a call wakes the driver anyway).
    pub(crate) fn next_wake(&self, ledger: &Ledger, now: Ms) -> Option<Ms> {
        let at = match self.phase {
            Phase::Open => {
                let since = ledger.protected_since.filter(|_| ledger.protected_at(now))?;
                since.max(self.count_from) + self.limits.max
            }
            Phase::Draining { until, .. } => until,
            Phase::Releasing { give_up } => give_up,
            Phase::Gap { until } => until,
        };
        Some(at.max(now))
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::Action;
    use super::*;

    const MINUTE: Ms = 60_000;
    const LIMITS: HoldLimits = HoldLimits { max: 60 * MINUTE, gap: 30_000, drain: 25_000 };

    fn protected_at(since: Ms) -> Ledger {
        let mut l = Ledger::default();
        l.record(Action::Protect { minutes: 60 }, since, &Ok(()), 0.0);
        l
    }

    fn refreshed(mut l: Ledger, at: Ms) -> Ledger {
        l.record(Action::Protect { minutes: 60 }, at, &Ok(()), 0.0);
        l
    }

    fn released(mut l: Ledger, at: Ms) -> Ledger {
        l.record(Action::Release, at, &Ok(()), 0.0);
        l
    }

    #[test]
    fn a_whole_cycle_pauses_drains_releases_and_resumes_on_schedule() {
        let mut h = BoundedHold::new(LIMITS);
        let l = refreshed(protected_at(1_000), 41 * MINUTE);
        assert_eq!(h.step(&l, 4, 30 * MINUTE), None, "not yet");
        assert_eq!(h.next_wake(&l, 30 * MINUTE), Some(60 * MINUTE + 1_000), "scheduled at the max hold");
        let start = 60 * MINUTE + 1_000;
        assert_eq!(h.step(&l, 4, start), Some(Transition::Paused { held: 60 * MINUTE, running: 4 }));
        assert!(h.paused() && !h.withdrawn(), "draining: still protected, no new work");
        assert_eq!(h.next_wake(&l, start), Some(start + 25_000), "the drain bound");
        assert_eq!(h.step(&l, 1, start + 5_000), None, "still draining");
        assert_eq!(h.step(&l, 0, start + 8_000), Some(Transition::Drained));
        assert!(h.withdrawn());
        assert_eq!(h.step(&l, 0, start + 8_001), None, "waiting for the release");
        let l = released(l, start + 8_100);
        assert_eq!(h.step(&l, 0, start + 8_200), Some(Transition::Released));
        assert_eq!(h.phase(), Phase::Gap { until: start + 38_200 });
        assert_eq!(h.next_wake(&l, start + 8_200), Some(start + 38_200));
        assert_eq!(h.step(&l, 0, start + 38_199), None, "the gap is kept whole");
        assert_eq!(h.step(&l, 0, start + 38_200), Some(Transition::Resumed { paused: 38_200 }));
        assert!(!h.paused());
        assert_eq!(h.next_wake(&l, start + 38_200), None, "unprotected: nothing to bound");
        // protected again: the next opening one max hold after that protection began
        let l = protected_at(start + 39_000);
        assert_eq!(h.next_wake(&l, start + 39_000), Some(start + 39_000 + 60 * MINUTE));
    }

    #[test]
    fn work_still_running_at_the_drain_bound_does_not_hold_the_release() {
        let mut h = BoundedHold::new(LIMITS);
        let l = refreshed(protected_at(0), 40 * MINUTE);
        assert!(matches!(h.step(&l, 2, 60 * MINUTE), Some(Transition::Paused { running: 2, .. })));
        assert_eq!(h.step(&l, 2, 60 * MINUTE + 24_999), None);
        assert_eq!(h.step(&l, 2, 60 * MINUTE + 25_000), Some(Transition::DrainBound { running: 2 }));
        assert!(h.withdrawn(), "withdrawn although busy");
    }

    #[test]
    fn a_release_that_keeps_failing_gives_up_and_counts_a_whole_max_hold_again() {
        let mut h = BoundedHold::new(LIMITS);
        let l = refreshed(protected_at(0), 40 * MINUTE);
        assert!(h.step(&l, 0, 60 * MINUTE).is_some());
        assert_eq!(h.step(&l, 0, 60 * MINUTE), Some(Transition::Drained));
        let give_up = 60 * MINUTE + 25_000 + 30_000;
        assert_eq!(h.next_wake(&l, 60 * MINUTE), Some(give_up), "the way out is scheduled");
        // the agent fails: ECS still protects the task
        assert_eq!(h.step(&l, 0, give_up - 1), None);
        assert_eq!(h.step(&l, 0, give_up), Some(Transition::GaveUp));
        assert!(!h.paused(), "work resumes");
        let l = refreshed(l, give_up + 10);
        assert_eq!(h.step(&l, 3, give_up + 20), None, "not paused again at once");
        assert_eq!(h.next_wake(&l, give_up + 20), Some(give_up + 60 * MINUTE));
    }

    #[test]
    fn a_protection_that_lapsed_or_was_released_is_not_held() {
        let mut h = BoundedHold::new(LIMITS);
        let l = protected_at(0);
        // lapsed after 60 min without a refresh: nothing to pause for
        assert_eq!(h.step(&l, 0, 61 * MINUTE), None);
        assert_eq!(h.next_wake(&l, 61 * MINUTE), None);
        let l = released(protected_at(0), 10 * MINUTE);
        assert_eq!(h.step(&l, 0, 70 * MINUTE), None);
        // released and protected again: counted from the new start
        let l = protected_at(20 * MINUTE);
        assert_eq!(h.step(&l, 0, 79 * MINUTE), None);
        assert!(h.step(&refreshed(l, 79 * MINUTE), 0, 80 * MINUTE).is_some());
    }
}
