//! What the worker does, as events a program can subscribe to.
//!
//! Events go out on a bounded broadcast channel. With no subscriber nothing is built or
//! sent (one atomic load per point); a subscriber that falls behind by more than the
//! channel's capacity loses the oldest events, is told how many in an [`Event::Lost`], and
//! the loss is counted (`holdfast_events_lost_total`). Handling never waits for a subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it loses the oldest.
pub const EVENT_CAPACITY: usize = 1024;

/// Something the worker did. Message events carry the queue's name (the last segment of
/// its URL) and the message id, never the body or the receipt handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message was received and is about to be handled.
    Received {
        /// The queue's name.
        queue: Arc<str>,
        /// The SQS message id.
        message_id: String,
        /// How many times SQS has delivered it, this time included.
        receive_count: u32,
    },
    /// A handler returned (or failed) for the message.
    Handled {
        /// The queue's name.
        queue: Arc<str>,
        /// The SQS message id.
        message_id: String,
        /// What became of the message.
        outcome: HandledOutcome,
        /// How long the handler ran.
        duration: Duration,
    },
    /// The attempt failed; the message comes back after a backoff, or is dead-lettered.
    Failed {
        /// The queue's name.
        queue: Arc<str>,
        /// The SQS message id.
        message_id: String,
        /// Why.
        cause: FailureCause,
    },
    /// The message was copied to the dead-letter queue (and is being deleted).
    DeadLettered {
        /// The queue's name.
        queue: Arc<str>,
        /// The SQS message id.
        message_id: String,
    },
    /// The message was given back unhandled: visible again at once.
    Released {
        /// The queue's name.
        queue: Arc<str>,
        /// The SQS message id.
        message_id: String,
    },
    /// The message's visibility could not be kept up: it may be delivered again, and its
    /// handler was asked to stop.
    LeaseLost {
        /// The queue's name.
        queue: Arc<str>,
        /// The SQS message id.
        message_id: String,
    },
    /// Scale-in protection changed.
    Protection(ProtectionEvent),
    /// The worker stepped aside for a deployment (`HOLDFAST_DEPLOYMENT_CHECK`): it takes no
    /// new message, drains what runs, releases protection and waits idle to be stopped.
    SteppedAside(StepAsideReason),
    /// A step of the worker's shutdown.
    Shutdown(ShutdownPhase),
    /// This subscriber fell behind and lost this many events (the oldest).
    Lost {
        /// Events lost.
        count: u64,
    },
}

/// What a handled message became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandledOutcome {
    /// [`Outcome::Ack`](crate::Outcome::Ack): deleted.
    Succeeded,
    /// [`Outcome::Retry`](crate::Outcome::Retry): visible again after the asked delay.
    Retried,
    /// An error, a panic, a timeout or a lost lease (an [`Event::Failed`] follows).
    Failed,
}

impl HandledOutcome {
    /// The metric label value: `succeeded`, `retried` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::Failed => "failed",
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureCause {
    /// The handler returned an error.
    Error,
    /// The handler panicked.
    Panic,
    /// The handler outlived `HOLDFAST_HANDLER_TIMEOUT`.
    Timeout,
    /// The message's lease was lost while it ran.
    LeaseLost,
    /// The body did not decode ([`DecodeError`](crate::DecodeError)).
    Decode,
}

impl FailureCause {
    /// Every cause, in label order.
    pub const ALL: [FailureCause; 5] = [Self::Error, Self::Panic, Self::Timeout, Self::LeaseLost, Self::Decode];

    /// The metric label value: `error`, `panic`, `timeout`, `lease_lost` or `decode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::LeaseLost => "lease_lost",
            Self::Decode => "decode",
        }
    }
}

/// A change of scale-in protection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtectionEvent {
    /// The task is protected from scale-in.
    Protected,
    /// Protection was released: ECS may stop the task.
    Released,
    /// ECS (or the agent) refused or failed a protection call.
    Refused {
        /// The error code, e.g. `DEPLOYMENT_BLOCKED`.
        reason: String,
    },
}

/// Why the worker stepped aside.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepAsideReason {
    /// The service's `PRIMARY` deployment runs another revision than this task.
    Replaced {
        /// This task's `Family:Revision`.
        task_revision: String,
        /// The `Family:Revision` of the service's `PRIMARY` deployment.
        primary_revision: String,
    },
    /// ECS refused protection with `DEPLOYMENT_BLOCKED` (strict mode).
    DeploymentBlocked,
}

/// A step of the shutdown, in this order (steps that do not happen are skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownPhase {
    /// The shutdown future resolved (SIGTERM, SIGINT, the idle limit) or a queue failed.
    /// A worker that stepped aside ([`Event::SteppedAside`]) skips it: its steps follow that
    /// event, and [`ShutdownPhase::Stopped`] comes when the stop signal ends its idle wait.
    SignalReceived,
    /// No receive runs any more; messages received but not started were released.
    PollingStopped,
    /// Handlers are still running: the drain began.
    DrainStarted {
        /// Message tasks still running.
        running: usize,
    },
    /// The drain deadline passed: the remaining handlers are stopped and their messages
    /// released.
    DrainDeadlinePassed {
        /// Message tasks still running.
        running: usize,
    },
    /// Every pending delete and visibility change was sent.
    DeletesFlushed,
    /// Protection released; `run` returns.
    Stopped,
}

/// What subscriptions share with the sender (not the sender itself: the channel closes
/// when the worker drops it).
#[derive(Debug)]
struct Counts {
    subscribers: AtomicUsize,
    lost: metrics::Counter,
}

/// The sending side, shared by the worker's parts.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    tx: broadcast::Sender<Event>,
    counts: Arc<Counts>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(EVENT_CAPACITY);
        let lost = metrics::counter!(crate::telemetry::names::EVENTS_LOST);
        Self { tx, counts: Arc::new(Counts { subscribers: AtomicUsize::new(0), lost }) }
    }
}

impl Events {
    /// Sends the event `make` builds, if anyone listens.
    #[inline]
    pub(crate) fn emit(&self, make: impl FnOnce() -> Event) {
        if self.counts.subscribers.load(Ordering::Relaxed) > 0 {
            let _ = self.tx.send(make());
        }
    }

    pub(crate) fn subscribe(&self) -> Subscription {
        self.counts.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription { rx: self.tx.subscribe(), counts: self.counts.clone() }
    }
}

/// A subscription to a worker's [`Event`]s, from [`Worker::subscribe`](crate::Worker::subscribe).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Event>,
    counts: Arc<Counts>,
}

impl Subscription {
    /// The next event; [`Event::Lost`] when this subscriber fell behind; `None` once the
    /// worker has stopped and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(count)) => {
                self.counts.lost.increment(count);
                Some(Event::Lost { count })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.counts.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}
