//! What a handler gets besides its message.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::lease::LeaseRef;
use crate::{Protection, ProtectionError};

/// The handler's view of the runtime for one message.
///
/// Cheap to clone. The token is cancelled when the handler should stop: the message's lease
/// was lost (another consumer may receive it), the handler timeout passed, or the drain
/// deadline passed during shutdown. Long handlers should watch it: after the timeout or the
/// deadline, a handler has one second to return before it is dropped. Returning
/// `Ok(Outcome::Ack)` in that second still deletes the message (the work was done); anything
/// else retries it after the backoff (timeout) or releases it at once (deadline).
///
/// The message's lease ends when the handler returns, however long a clone of its context
/// lives: the heartbeat stops, and that clone's [`extend_visibility`](Self::extend_visibility)
/// returns an error.
#[derive(Clone, Debug)]
pub struct Context {
    /// A single message's token is made when the handler first asks for it (through its
    /// lease, so that every clone gets the same one); a batch's and a detached context's are
    /// set from the start.
    token: OnceLock<CancellationToken>,
    leases: ContextLeases,
    protection: Option<Protection>,
}

/// The leases of a context's messages: one message's without a slice of its own (an
/// allocation a message saved), a batch's in one. References only: the lease ends when the
/// runtime is done with the message, however long a clone of the context lives.
#[derive(Clone, Debug)]
pub(crate) enum ContextLeases {
    One(LeaseRef),
    Many(Arc<[LeaseRef]>),
}

impl ContextLeases {
    fn iter(&self) -> impl Iterator<Item = &LeaseRef> {
        let (one, many) = match self {
            ContextLeases::One(lease) => (Some(lease), &[][..]),
            ContextLeases::Many(leases) => (None, &leases[..]),
        };
        one.into_iter().chain(many)
    }
}

impl Context {
    /// A batch's context: one token for all its messages.
    pub(crate) fn new(token: CancellationToken, leases: ContextLeases, protection: Protection) -> Self {
        Self { token: OnceLock::from(token), leases, protection: Some(protection) }
    }

    /// A single message's context, whose token is its lease's.
    pub(crate) fn single(lease: LeaseRef, protection: Protection) -> Self {
        Self { token: OnceLock::new(), leases: ContextLeases::One(lease), protection: Some(protection) }
    }

    /// Asks the handler to stop: cancels the token, or has it start cancelled if the handler
    /// has not asked for it yet.
    pub(crate) fn cancel(&self) {
        match (self.token.get(), &self.leases) {
            (Some(token), _) => token.cancel(),
            (None, ContextLeases::One(lease)) => lease.cancel(),
            (None, ContextLeases::Many(_)) => unreachable!("a batch's context is made with its token"),
        }
    }

    /// A context bound to no queue, for unit tests of handlers: it is never cancelled unless
    /// the test cancels [`token`](Self::token), and lease extensions do nothing.
    pub fn detached() -> Self {
        Self {
            token: OnceLock::from(CancellationToken::new()),
            leases: ContextLeases::Many(Arc::new([])),
            protection: None,
        }
    }

    /// The cancellation token for this message.
    pub fn token(&self) -> &CancellationToken {
        self.token.get_or_init(|| match &self.leases {
            ContextLeases::One(lease) => lease.token(),
            ContextLeases::Many(_) => unreachable!("a batch's and a detached context are made with their token"),
        })
    }

    /// Resolves when the handler should stop.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token().cancelled()
    }

    /// Whether the handler should stop.
    pub fn is_cancelled(&self) -> bool {
        self.token().is_cancelled()
    }

    /// Makes the message (for a batch handler, every message of the batch) invisible for
    /// `visibility` from now, at once, and has the heartbeat keep extending it by that much
    /// from then on. Useful when a handler knows a step will
    /// take long. The time is capped so the message never stays in flight beyond SQS's
    /// 12 hours since it was received.
    ///
    /// # Errors
    ///
    /// The queue refused the change (the lease is lost, or the 12-hour limit is reached).
    pub async fn extend_visibility(&self, visibility: Duration) -> Result<(), crate::Error> {
        for lease in self.leases.iter() {
            lease.extend(visibility).await?;
        }
        Ok(())
    }

    /// Keeps the ECS task protected from scale-in for at least `at_least` from now, for a long
    /// step that must not be interrupted: one ECS call now unless the current protection
    /// already lasts that long; refreshes never shorten it; it ends with the work in flight.
    /// Does nothing with protection off.
    ///
    /// # Errors
    ///
    /// ECS refused or could not be reached (in strict and relaxed mode alike).
    pub async fn extend_protection(&self, at_least: Duration) -> Result<(), ProtectionError> {
        match &self.protection {
            Some(protection) => protection.extend(at_least).await,
            None => Ok(()),
        }
    }
}
