//! What a handler asks the runtime to do with its message.

use std::time::Duration;

use crate::BoxError;

/// The result of handling one message.
///
/// A handler that returns `Err` instead has failed: the message comes back after a backoff
/// computed from its receive count, and the queue's redrive policy moves it to the
/// dead-letter queue once it has been received `maxReceiveCount` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: delete the message.
    Ack,
    /// Not now: make the message visible again after this long (whole seconds, at most 12 h).
    /// The attempt counts toward the queue's `maxReceiveCount`.
    Retry(Duration),
}

impl Outcome {
    /// [`Outcome::Retry`] after `delay`.
    pub fn retry_after(delay: Duration) -> Self {
        Outcome::Retry(delay)
    }
}

/// A handler error that retrying cannot fix: a malformed order, a reference to something
/// that does not exist. Return it (`Err(Permanent::new(e).into())`) and the message is
/// dead-lettered at once when the route has a dead-letter queue (sent there with its
/// attributes and the reason, then deleted); without one it backs off like any failure
/// until the queue's redrive policy moves it. Bodies that do not decode
/// ([`DecodeError`](crate::DecodeError)) are treated the same way.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(BoxError);

impl Permanent {
    /// Marks `error` as not worth retrying.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }

    /// The decode error inside, if the permanent failure is one.
    pub(crate) fn decode_error(&self) -> Option<&crate::DecodeError> {
        self.0.downcast_ref::<crate::DecodeError>()
    }
}

/// Whether a handler error says retrying cannot help.
pub(crate) fn is_permanent(error: &BoxError) -> bool {
    error.downcast_ref::<Permanent>().is_some() || error.downcast_ref::<crate::DecodeError>().is_some()
}
