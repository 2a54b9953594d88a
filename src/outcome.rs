//! What a handler asks the runtime to do with its message.

use std::time::Duration;

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
