//! The tasks that run messages: spawned as the work needs them and kept, idle, for the next
//! message instead of ending with each one. A message then costs no task of its own: tokio's
//! task cell is aligned to 128 bytes, and that aligned allocation (glibc's `posix_memalign`)
//! was the largest single cost of a message on the embedded queue.
//!
//! A task never waits for work that is not there: a job goes to an idle task when there is
//! one, else to a new task, so every job starts at once. The tasks are at most as many as
//! jobs ever ran at once (the worker's concurrency bounds them). A task idle through a whole
//! trim interval ([`IDLE_KEEP`]) ends, so a burst's tasks do not keep their memory for the
//! life of the worker; all end when the pool is closed: idle ones at once, busy ones after
//! their job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::Dispatcher;
use crate::Message;

/// What one task runs: the messages of one receive handed out together.
pub(crate) enum Job {
    One(Message, OwnedSemaphorePermit),
    /// The messages of one FIFO group, in order.
    Group(Vec<Message>, Vec<OwnedSemaphorePermit>),
    Batch(Vec<Message>, Vec<OwnedSemaphorePermit>),
}

/// A job and the tracker's count of it: the drain waits for jobs, not for idle tasks.
type Assigned = (Job, TaskTrackerToken);

/// One task's mailbox.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Assigned>>,
    ready: Notify,
}

/// How often idle tasks are trimmed: a task idle through one whole interval ends, so an idle
/// task lives between one and two of these.
pub(crate) const IDLE_KEEP: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Idle {
    /// Last in, first out: the bottom ones have been idle the longest.
    slots: Vec<Arc<Slot>>,
    /// The fewest idle since the last trim: the slots below it were not taken since.
    low: usize,
    closed: bool,
}

/// The idle tasks of one dispatcher.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<Idle>,
    closing: CancellationToken,
}

impl Pool {
    /// Starts `job` at once: on the task that went idle last (its stack and cache are the
    /// warmest), or on a new one.
    pub(super) fn submit(&self, dispatcher: &Arc<Dispatcher>, job: Job, token: TaskTrackerToken) {
        let slot = {
            let mut idle = self.idle.lock().expect("task pool poisoned");
            let slot = if idle.closed { None } else { idle.slots.pop() };
            idle.low = idle.low.min(idle.slots.len());
            slot
        };
        match slot {
            Some(slot) => {
                *slot.job.lock().expect("task slot poisoned") = Some((job, token));
                slot.ready.notify_one();
            }
            None => {
                tokio::spawn(serve(dispatcher.clone(), (job, token)));
            }
        }
    }

    /// Ends the idle tasks now and each busy one after its job. Jobs submitted later (none
    /// should be) still run, each on a task of its own.
    pub(crate) fn close(&self) {
        let slots = {
            let mut idle = self.idle.lock().expect("task pool poisoned");
            idle.closed = true;
            std::mem::take(&mut idle.slots)
        };
        self.closing.cancel();
        // An empty slot tells its task to end.
        slots.iter().for_each(|slot| slot.ready.notify_one());
    }

    /// Ends the tasks that stayed idle since the last trim (none was given a job); returns
    /// how many.
    pub(crate) fn trim(&self) -> usize {
        let ended: Vec<Arc<Slot>> = {
            let mut idle = self.idle.lock().expect("task pool poisoned");
            let untouched = idle.low.min(idle.slots.len());
            let ended = idle.slots.drain(..untouched).collect();
            idle.low = idle.slots.len();
            ended
        };
        ended.iter().for_each(|slot| slot.ready.notify_one());
        ended.len()
    }

    /// Offers `slot`'s task for the next job; `false` once the pool is closed.
    fn park(&self, slot: &Arc<Slot>) -> bool {
        let mut idle = self.idle.lock().expect("task pool poisoned");
        if idle.closed {
            return false;
        }
        idle.slots.push(slot.clone());
        true
    }

    /// Idle tasks now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().expect("task pool poisoned").slots.len()
    }
}

/// Trims `dispatcher`'s idle tasks every `every` until its pool closes.
pub(crate) async fn trim_idle(dispatcher: Arc<Dispatcher>, every: Duration) {
    let closing = dispatcher.pool.closing.clone();
    loop {
        tokio::select! {
            _ = closing.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ended = dispatcher.pool.trim();
        if ended > 0 {
            tracing::debug!(ended, idle_for_s = every.as_secs(), "idle message tasks ended");
        }
    }
}

/// One task: its first job, then whatever it is given while idle, until the pool closes.
async fn serve(dispatcher: Arc<Dispatcher>, first: Assigned) {
    let slot = Arc::new(Slot::default());
    let mut next = Some(first);
    while let Some((job, token)) = next.take() {
        match job {
            Job::One(message, permit) => dispatcher.run_one(message, permit).await,
            Job::Group(group, permits) => dispatcher.run_group(group, permits).await,
            Job::Batch(messages, permits) => dispatcher.run_batch(messages, permits).await,
        }
        drop(token);
        if !dispatcher.pool.park(&slot) {
            return;
        }
        // A job assigned before this wait stored a permit: no wake-up is lost.
        slot.ready.notified().await;
        next = slot.job.lock().expect("task slot poisoned").take();
    }
}
