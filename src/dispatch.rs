//! Runs one message through the handler and turns the result into an acknowledgement.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::acker::Acker;
use crate::backoff::failure_backoff;
use crate::config::MAX_VISIBILITY;
use crate::lease::Leases;
use crate::{BoxError, Config, Context, Handler, Message, Outcome};

/// Counts for the run's [`Summary`](crate::Summary).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) released: AtomicU64,
}

/// Everything a message task needs, shared by all of them.
pub(crate) struct Dispatcher {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) acker: Acker,
    pub(crate) leases: Leases,
    pub(crate) config: Arc<Config>,
    /// Cancelled when the worker stops taking messages.
    pub(crate) intake: CancellationToken,
    /// Cancelled when the drain deadline passes: running handlers are stopped.
    pub(crate) deadline: CancellationToken,
    pub(crate) counters: Arc<Counters>,
}

enum Attempt {
    Finished(Result<Outcome, BoxError>),
    Panicked(String),
    TimedOut(Duration),
    Interrupted,
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

/// How long the message may still stay in flight under SQS's 12-hour limit.
fn time_left(message: &Message) -> Duration {
    (message.received_at + MAX_VISIBILITY).saturating_duration_since(tokio::time::Instant::now())
}

impl Dispatcher {
    /// Releases a message that will not be handled by this worker: visible again at once.
    pub(crate) fn release(&self, message: &Message) {
        self.counters.released.fetch_add(1, Ordering::Relaxed);
        self.acker.change_visibility(message, Duration::ZERO);
    }

    /// Handles `message`, holding `permit` (its slot in the pool) until done.
    pub(crate) async fn run(self: Arc<Self>, message: Message, permit: OwnedSemaphorePermit) {
        let _permit = permit;
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if self.intake.is_cancelled() {
            tracing::debug!(message_id = %message.id, "shutting down: released unstarted message");
            self.release(&message);
            return;
        }
        let token = self.deadline.child_token();
        let lease = Arc::new(self.leases.register(&message, token.clone()));
        let ctx = Context::new(token.clone(), lease.clone());
        let span = tracing::info_span!("message", message_id = %message.id, receive_count = message.receive_count);
        let attempt = {
            span.in_scope(|| tracing::debug!("handler started"));
            let call = AssertUnwindSafe(self.handler.handle(&message, &ctx).instrument(span.clone())).catch_unwind();
            let timed = async {
                match self.config.handler_timeout {
                    Some(limit) => tokio::time::timeout(limit, call).await.ok(),
                    None => Some(call.await),
                }
            };
            tokio::select! {
                biased;
                _ = self.deadline.cancelled() => Attempt::Interrupted,
                result = timed => match result {
                    Some(Ok(result)) => Attempt::Finished(result),
                    Some(Err(payload)) => Attempt::Panicked(panic_text(payload.as_ref())),
                    None => Attempt::TimedOut(self.config.handler_timeout.unwrap_or_default()),
                },
            }
        };
        token.cancel();
        let lost = lease.is_lost();
        drop(ctx);
        drop(lease);
        let _entered = span.enter();
        match attempt {
            Attempt::Finished(Ok(Outcome::Ack)) => {
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("handled; deleting");
                self.acker.delete(&message);
            }
            Attempt::Finished(Ok(Outcome::Retry(after))) => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                let after = Duration::from_secs(after.min(time_left(&message)).as_secs());
                tracing::info!(retry_in_s = after.as_secs(), "handler asked to retry");
                if !lost {
                    self.acker.change_visibility(&message, after);
                }
            }
            Attempt::Finished(Err(error)) => self.fail(&message, lost, &format!("handler failed: {error}")),
            Attempt::Panicked(text) => self.fail(&message, lost, &format!("handler panicked: {text}")),
            Attempt::TimedOut(limit) => {
                self.fail(&message, lost, &format!("handler timed out after {}", crate::config::human(limit)))
            }
            Attempt::Interrupted => {
                tracing::warn!("drain deadline passed: handler stopped, message released");
                self.release(&message);
            }
        }
    }

    fn fail(&self, message: &Message, lost: bool, reason: &str) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let backoff = failure_backoff(message.receive_count, self.config.backoff_min, self.config.backoff_max);
        let backoff = Duration::from_secs(backoff.min(time_left(message)).as_secs());
        tracing::warn!(retry_in_s = backoff.as_secs(), "{reason}");
        if !lost {
            self.acker.change_visibility(message, backoff);
        }
    }
}
