//! Runs messages through their handler and turns each result into an acknowledgement.
//!
//! Three shapes share one core: a message alone (standard queues), the messages of one
//! FIFO group in order, and a batch for a [`BatchHandler`].

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::acker::Acker;
use crate::backoff::failure_backoff;
use crate::config::MAX_VISIBILITY;
use crate::context::ContextLeases;
use crate::events::{FailureCause, HandledOutcome};
use crate::lease::{LeaseHandle, Leases};
use crate::outcome::is_permanent;
use crate::queue::OutgoingMessage;
use crate::telemetry::{Telemetry, message_span};
use crate::{
    BatchHandler, BoxError, Config, Context, Handler, Message, MessageAttribute, Outcome, Protection, ProtectionGuard,
    Queue,
};

mod pool;

use pool::Job;
pub(crate) use pool::{IDLE_KEEP, Pool, trim_idle};

/// SQS's limit of message attributes on one message.
const MAX_ATTRIBUTES: usize = 10;
/// Attribute names the dead-letter copy carries.
pub(crate) const REASON_ATTRIBUTE: &str = "holdfast.failure";
pub(crate) const SOURCE_ATTRIBUTE: &str = "holdfast.source";

/// Counts for the run's [`Summary`](crate::Summary).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Deliveries: every message of every receive.
    pub(crate) received: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    /// Put back for a later delivery: a failure backed off, or `Outcome::Retry`.
    pub(crate) retried: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
}

/// The handler of a route.
#[derive(Clone)]
pub(crate) enum Work {
    One(Arc<dyn Handler>),
    Batch(Arc<dyn BatchHandler>),
}

/// Everything the message tasks of one queue need, shared by all of them.
pub(crate) struct Dispatcher {
    pub(crate) work: Work,
    pub(crate) queue: Queue,
    pub(crate) dead_letter: Option<Queue>,
    pub(crate) acker: Acker,
    pub(crate) leases: Leases,
    pub(crate) protection: Protection,
    pub(crate) config: Arc<Config>,
    /// Cancelled when the worker stops taking messages.
    pub(crate) intake: CancellationToken,
    /// Cancelled when the drain deadline passes: running handlers are stopped.
    pub(crate) deadline: CancellationToken,
    pub(crate) counters: Arc<Counters>,
    /// Tasks dispatched that have not yet passed their protection step.
    pub(crate) protecting: Arc<Protecting>,
    pub(crate) telemetry: Telemetry,
    /// The tasks that run the messages; closed when the pollers have stopped.
    pub(crate) pool: Pool,
}

/// Counts message tasks waiting for scale-in protection, so that in strict mode a poller
/// does not receive again before it knows whether the last messages could be protected (a
/// refusal would otherwise hand them straight back to a long poll already in flight, and
/// every receive counts toward the queue's `maxReceiveCount`).
#[derive(Debug, Default)]
pub(crate) struct Protecting {
    pending: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Protecting {
    fn add(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::SeqCst);
    }

    fn done(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// Resolves once no dispatched task is waiting for protection.
    pub(crate) async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            if self.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// How long a handler has to return once its token is cancelled (drain deadline, handler
/// timeout) before it is dropped: time to notice `ctx.cancelled()` and stop cleanly.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// What a handler call returns: one result for a message alone, one a message for a batch.
type Answer = Result<Outcome, BoxError>;

/// How a handler call ended; `R` is what the call returns (an [`Answer`], or a batch's).
enum Attempt<R> {
    Finished(R),
    Panicked(String),
    /// The handler timeout passed; `late` is what the handler returned within the grace.
    TimedOut {
        limit: Duration,
        late: Option<R>,
    },
    /// The drain deadline passed; `late` is what the handler returned within the grace.
    Interrupted {
        late: Option<R>,
    },
}

/// Polls `future` once, with the task's own waker: its answer if it has one now.
async fn first_poll<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

impl<R> Attempt<R> {
    /// The handler returned, or panicked.
    fn ended(result: Result<R, Box<dyn Any + Send>>) -> Self {
        match result {
            Ok(results) => Attempt::Finished(results),
            Err(payload) => Attempt::Panicked(panic_text(payload.as_ref())),
        }
    }
}

/// Whether a late answer says the work was done after all.
fn acked_late(late: Option<&Answer>) -> bool {
    matches!(late, Some(Ok(Outcome::Ack)))
}

/// How a message's attempt ended, for FIFO ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Deleted (handled, or copied to the dead-letter queue).
    Done,
    /// Coming back later: later messages of its FIFO group must not overtake it.
    Pending,
}

/// A duration as whole milliseconds, for log fields.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a failed attempt failed. The runtime's own failures (`Err(text)`) are worded in
/// this file: a panic or a timeout, else a batch handler's missing result.
fn failure_cause(result: &Result<Result<Outcome, BoxError>, String>, lost: bool) -> FailureCause {
    match result {
        _ if lost => FailureCause::LeaseLost,
        Ok(Err(error)) if error.downcast_ref::<crate::DecodeError>().is_some() => FailureCause::Decode,
        Err(text) if text.contains("panicked") => FailureCause::Panic,
        Err(text) if text.contains("timed out") => FailureCause::Timeout,
        _ => FailureCause::Error,
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

/// How long the message may still stay in flight under SQS's 12-hour limit, in whole
/// seconds no longer than `wanted`.
fn within_cap(message: &Message, wanted: Duration) -> Duration {
    let left = (message.received_at + MAX_VISIBILITY).saturating_duration_since(tokio::time::Instant::now());
    Duration::from_secs(wanted.min(left).as_secs())
}

impl Dispatcher {
    /// Releases a message that this worker will not handle: visible again at once.
    pub(crate) fn release(&self, message: &Message) {
        self.counters.released.fetch_add(1, Ordering::Relaxed);
        self.telemetry.released(message, true);
        self.acker.change_visibility(message, Duration::ZERO);
    }

    /// Hands out the messages of one receive: each alone, by FIFO group, or as one batch.
    /// `permits` holds one slot per message.
    pub(crate) fn dispatch(
        self: &Arc<Self>,
        messages: Vec<Message>,
        mut permits: Vec<OwnedSemaphorePermit>,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        self.counters.received.fetch_add(messages.len() as u64, Ordering::Relaxed);
        // Each job runs on a task of the pool (a task kept from an earlier job, or a new
        // one), counted by the tracker until it ends.
        if matches!(self.work, Work::Batch(_)) {
            self.protecting.add(1);
            self.pool.submit(self, Job::Batch(messages, permits), tracker.token());
        } else if self.queue.is_fifo() {
            let mut groups: Vec<(Option<String>, Vec<Message>)> = Vec::new();
            let mut index: HashMap<Option<String>, usize> = HashMap::new();
            for message in messages {
                let key = message.group_id.clone();
                let i = *index.entry(key.clone()).or_insert_with(|| {
                    groups.push((key, Vec::new()));
                    groups.len() - 1
                });
                groups[i].1.push(message);
            }
            self.protecting.add(groups.len());
            for (_, group) in groups {
                let slots = permits.split_off(permits.len() - group.len());
                self.pool.submit(self, Job::Group(group, slots), tracker.token());
            }
        } else {
            self.protecting.add(messages.len());
            for (message, permit) in messages.into_iter().zip(permits) {
                self.pool.submit(self, Job::One(message, permit), tracker.token());
            }
        }
    }

    /// Protects the task before work starts. `None` (the messages were released) when
    /// shutdown began first, when strict protection was refused, or when the bounded hold
    /// paused.
    async fn protect(&self, messages: &[Message]) -> Option<ProtectionGuard> {
        // Shutdown first, as the select below would; then a hold that is answered at once
        // (protection off, or the task already protected) needs no place among the
        // intake's waiters.
        let hold = self.protection.hold();
        tokio::pin!(hold);
        let held = if self.intake.is_cancelled() {
            None
        } else if let Poll::Ready(held) = first_poll(hold.as_mut()).await {
            Some(held)
        } else {
            tokio::select! {
                biased;
                _ = self.intake.cancelled() => None,
                held = &mut hold => Some(held),
            }
        };
        self.protecting.done();
        match held {
            Some(Ok(guard)) => Some(guard),
            Some(Err(error)) => {
                // One line when the refusal (or the bounded hold's pause) starts and one when
                // it ends (with this count), not one per message.
                tracing::debug!(
                    reason = error.code(),
                    messages = messages.len(),
                    "task not protected from scale-in (strict mode, or the bounded hold's pause): messages released"
                );
                self.protection.note_released(&error, messages.len());
                messages.iter().for_each(|m| self.release(m));
                None
            }
            None => {
                tracing::debug!(messages = messages.len(), "shutting down: released unstarted messages");
                messages.iter().for_each(|m| self.release(m));
                None
            }
        }
    }

    async fn run_one(&self, message: Message, _permit: OwnedSemaphorePermit) {
        let Some(_guard) = self.protect(std::slice::from_ref(&message)).await else { return };
        // The handler's token is its lease's, made only if the handler asks for it. Not a
        // child of the drain deadline: `attempt` cancels it when the deadline passes, which
        // keeps the deadline's lock out of the message path.
        let lease = self.leases.register(&message, None);
        self.handle(&message, lease).await;
    }

    /// The messages of one FIFO group, in order. A message that does not complete holds
    /// back the rest: they are released so SQS delivers them again, in order, after it.
    async fn run_group(&self, group: Vec<Message>, mut permits: Vec<OwnedSemaphorePermit>) {
        let Some(_guard) = self.protect(&group).await else { return };
        // Every message's visibility clock runs from the receive: lease them all now.
        let mut leases: Vec<Option<LeaseHandle>> = group.iter().map(|m| Some(self.leases.register(m, None))).collect();
        let mut blocked = false;
        for (i, message) in group.iter().enumerate() {
            let lease = leases[i].take().expect("each lease used once");
            // The bounded hold's pause: the rest of the group waits for after the opening.
            if blocked || self.intake.is_cancelled() || self.protection.hold_paused() {
                drop(lease);
                tracing::debug!(message_id = %message.id, "released to keep its FIFO group in order");
                self.release(message);
            } else if self.handle(message, lease).await == Settled::Pending {
                blocked = true;
            }
            permits.pop();
        }
    }

    async fn handle(&self, message: &Message, lease: LeaseHandle) -> Settled {
        let span = message_span(self.telemetry.queue(), message);
        let began = tokio::time::Instant::now();
        self.telemetry.started(message, began);
        let ctx = Context::single(lease.to_ref(), self.protection.clone());
        let Work::One(handler) = &self.work else { unreachable!("batch routes use run_batch") };
        // The handler itself, not `Arc<dyn Handler>`'s forwarding impl, which would box a
        // second future around the handler's own for every message.
        let handler: &dyn Handler = &**handler;
        let call = handler.handle(message, &ctx);
        let attempt = self.attempt(call.instrument(span.clone()), &ctx).await;
        let took = began.elapsed();
        let lost = lease.is_lost();
        drop(ctx);
        // Ends the lease and cancels its token, if the handler made one (a clone of the
        // context kept past the handler sees it cancelled).
        drop(lease);
        let result = match attempt {
            Attempt::Finished(answer) => Ok(answer),
            Attempt::Panicked(text) => Err(format!("handler panicked: {text}")),
            Attempt::TimedOut { late, .. } if acked_late(late.as_ref()) => Ok(Ok(Outcome::Ack)),
            Attempt::TimedOut { limit, .. } => Err(format!("handler timed out after {}", crate::config::human(limit))),
            Attempt::Interrupted { late } if acked_late(late.as_ref()) => Ok(Ok(Outcome::Ack)),
            Attempt::Interrupted { .. } => {
                let _entered = span.enter();
                tracing::warn!(
                    outcome = "released",
                    duration_ms = millis(took),
                    "drain deadline passed: handler stopped, message released"
                );
                self.release(message);
                return Settled::Pending;
            }
        };
        self.settle(message, result, lost, took).instrument(span).await
    }

    async fn run_batch(&self, messages: Vec<Message>, _permits: Vec<OwnedSemaphorePermit>) {
        let Some(_guard) = self.protect(&messages).await else { return };
        let token = CancellationToken::new();
        let leases: Vec<LeaseHandle> = messages.iter().map(|m| self.leases.register(m, Some(token.clone()))).collect();
        let ctx = Context::new(
            token.clone(),
            ContextLeases::Many(leases.iter().map(LeaseHandle::to_ref).collect()),
            self.protection.clone(),
        );
        let Work::Batch(handler) = &self.work else { unreachable!("single routes use run_one") };
        let span = tracing::info_span!("batch", queue = &**self.telemetry.queue(), messages = messages.len());
        let began = tokio::time::Instant::now();
        messages.iter().for_each(|m| self.telemetry.started(m, began));
        let attempt = self.attempt(handler.handle_batch(&messages, &ctx).instrument(span.clone()), &ctx).await;
        let took = began.elapsed();
        token.cancel();
        let lost: Vec<bool> = leases.iter().map(|l| l.is_lost()).collect();
        drop(ctx);
        drop(leases);
        let mut results: Vec<Result<Result<Outcome, BoxError>, String>> = match attempt {
            Attempt::Finished(results) => results.into_iter().map(Ok).collect(),
            Attempt::Panicked(text) => {
                messages.iter().map(|_| Err(format!("batch handler panicked: {text}"))).collect()
            }
            Attempt::TimedOut { limit, late } => (0..messages.len())
                .map(|i| {
                    if acked_late(late.as_ref().and_then(|r| r.get(i))) {
                        Ok(Ok(Outcome::Ack))
                    } else {
                        Err(format!("batch handler timed out after {}", crate::config::human(limit)))
                    }
                })
                .collect(),
            Attempt::Interrupted { late } => {
                tracing::warn!(messages = messages.len(), "drain deadline passed: batch stopped");
                for (i, (message, lost)) in messages.iter().zip(lost).enumerate() {
                    if acked_late(late.as_ref().and_then(|r| r.get(i))) {
                        self.settle(message, Ok(Ok(Outcome::Ack)), lost, took).await;
                    } else {
                        self.release(message);
                    }
                }
                return;
            }
        };
        if results.len() != messages.len() {
            let _entered = span.enter();
            tracing::error!(
                expected = messages.len(),
                got = results.len(),
                "batch handler returned the wrong number of results"
            );
        }
        results.resize_with(messages.len(), || Err("the batch handler returned no result for this message".into()));
        results.truncate(messages.len());
        for ((message, result), lost) in messages.iter().zip(results).zip(lost) {
            let span = message_span(self.telemetry.queue(), message);
            self.settle(message, result, lost, took).instrument(span).await;
        }
    }

    /// Runs the handler call under the timeout, catching panics, stopping at the deadline.
    /// When the timeout or the deadline comes first, `ctx` is cancelled and the handler
    /// gets [`CANCEL_GRACE`] to return before it is dropped.
    async fn attempt<F: Future>(&self, call: F, ctx: &Context) -> Attempt<F::Output> {
        let call = AssertUnwindSafe(call).catch_unwind();
        tokio::pin!(call);
        // The timeout counts from the call, its first poll included.
        let expires_at = self.config.handler_timeout.map(|limit| tokio::time::Instant::now() + limit);
        // A handler that is done at its first poll (no I/O to wait for) needs neither the
        // timeout's timer nor a place among the deadline's waiters.
        if let Poll::Ready(result) = first_poll(call.as_mut()).await {
            return Attempt::ended(result);
        }
        // Boxed, like the grace below: every message task's future holds what it awaits for
        // as long as the message is in flight, and a handler timeout is optional.
        let expired = expires_at.map(|at| Box::pin(tokio::time::sleep_until(at)));
        let expired = async {
            match expired {
                Some(sleep) => sleep.await,
                None => std::future::pending().await,
            }
        };
        let timed_out = tokio::select! {
            biased;
            _ = self.deadline.cancelled() => false,
            _ = expired => true,
            result = &mut call => return Attempt::ended(result),
        };
        ctx.cancel();
        let late = Box::pin(tokio::time::timeout(CANCEL_GRACE, &mut call)).await.ok().and_then(Result::ok);
        if timed_out {
            Attempt::TimedOut { limit: self.config.handler_timeout.unwrap_or_default(), late }
        } else {
            Attempt::Interrupted { late }
        }
    }

    /// Acknowledges, re-times or dead-letters one message after its attempt, which took
    /// `took`. `Err(text)` is a failure the runtime saw (panic, timeout); `Ok(Err(e))` one
    /// the handler returned. Each outcome logs one line (in the message's span, which names
    /// the message id): success at debug level, a retry at info, a failure at warn, a
    /// dead-lettered message at error.
    async fn settle(
        &self,
        message: &Message,
        result: Result<Result<Outcome, BoxError>, String>,
        lost: bool,
        took: Duration,
    ) -> Settled {
        let outcome = match &result {
            Ok(Ok(Outcome::Ack)) => HandledOutcome::Succeeded,
            Ok(Ok(Outcome::Retry(_))) => HandledOutcome::Retried,
            _ => HandledOutcome::Failed,
        };
        self.telemetry.handled(message, outcome, took);
        if outcome == HandledOutcome::Failed {
            self.telemetry.failed(message, failure_cause(&result, lost));
        }
        match result {
            Ok(Ok(Outcome::Ack)) => {
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(outcome = "ack", duration_ms = millis(took), "handled; deleting");
                self.acker.delete(message);
                Settled::Done
            }
            Ok(Ok(Outcome::Retry(after))) => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                let after = within_cap(message, after);
                tracing::info!(
                    outcome = "retry",
                    duration_ms = millis(took),
                    retry_in_s = after.as_secs(),
                    "handler asked to retry"
                );
                if !lost {
                    self.acker.change_visibility(message, after);
                }
                Settled::Pending
            }
            Ok(Err(error)) if is_permanent(&error) && self.dead_letter.is_some() && !lost => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let reason = format!("handler failed, not retryable: {}", self.failure_text(&error));
                // Boxed: the send's state (560 bytes) would otherwise be part of every
                // message task's future, for as long as the message is in flight.
                match Box::pin(self.dead_letter(message, &reason, took)).await {
                    Ok(()) => Settled::Done,
                    Err(()) => self.back_off(message, lost, &reason, took),
                }
            }
            Ok(Err(error)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.back_off(message, lost, &format!("handler failed: {}", self.failure_text(&error)), took)
            }
            Err(text) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.back_off(message, lost, &text, took)
            }
        }
    }

    /// A handler error as the worker writes it in logs and dead-letter reasons. A body that
    /// did not decode is described by the kind of mistake and its place; serde's own text,
    /// which quotes values from the body, only with `HOLDFAST_LOG_MESSAGE_CONTENT=on`.
    fn failure_text(&self, error: &BoxError) -> String {
        let decode = error
            .downcast_ref::<crate::DecodeError>()
            .or_else(|| error.downcast_ref::<crate::Permanent>().and_then(crate::Permanent::decode_error));
        match decode {
            Some(decode) if self.config.log_message_content => format!("{decode}: {}", decode.detail()),
            Some(decode) => decode.to_string(),
            None => error.to_string(),
        }
    }

    fn back_off(&self, message: &Message, lost: bool, reason: &str, took: Duration) -> Settled {
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        let backoff = failure_backoff(message.receive_count, self.config.backoff_min, self.config.backoff_max);
        let backoff = within_cap(message, backoff);
        tracing::warn!(outcome = "failed", duration_ms = millis(took), retry_in_s = backoff.as_secs(), "{reason}");
        if !lost {
            self.acker.change_visibility(message, backoff);
        }
        Settled::Pending
    }

    /// Copies the message, as it sits in the queue, to the dead-letter queue with its
    /// attributes and the reason, then deletes it: in that order, so a failure loses
    /// nothing.
    async fn dead_letter(&self, message: &Message, reason: &str, took: Duration) -> Result<(), ()> {
        let dlq = self.dead_letter.as_ref().expect("checked by the caller");
        let mut copy = OutgoingMessage::new(message.raw_body());
        // As the message sits in the queue: an SNS envelope keeps its own attributes inside.
        copy.attributes = (**message.queue_attributes.as_ref().unwrap_or(&message.message_attributes)).clone();
        let reason_text: String = reason.chars().take(1024).collect();
        for (name, value) in
            [(REASON_ATTRIBUTE, reason_text), (SOURCE_ATTRIBUTE, format!("{} {}", self.queue.url(), message.id))]
        {
            if copy.attributes.len() < MAX_ATTRIBUTES {
                copy.attributes.insert(name.to_owned(), MessageAttribute::string(value));
            }
        }
        if dlq.is_fifo() {
            copy.group_id = Some(message.group_id.clone().unwrap_or_else(|| "holdfast".into()));
            copy.deduplication_id = Some(message.id.to_string());
        }
        match dlq.send(copy).await {
            Ok(id) => {
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.telemetry.dead_lettered(message);
                tracing::error!(
                    outcome = "dead-lettered",
                    duration_ms = millis(took),
                    dead_letter_queue = dlq.url(),
                    dead_letter_id = %id,
                    "{reason}: moved to the dead-letter queue"
                );
                self.acker.delete(message);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "could not copy the message to the dead-letter queue; it stays in its queue");
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
