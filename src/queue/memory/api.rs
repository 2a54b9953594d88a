//! Direct use of a [`MemoryQueue`] without a worker: receive, delete and change visibility by
//! receipt handle, read counts, purge, and change the queue's settings while it is in use.
//! This is what a server that serves the queue over a wire protocol needs.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::{BATCH_MAX, MemoryQueue, QueueBackend, ReceiveRequest, State, delivered, sequence_number};
use crate::config::MAX_VISIBILITY;
use crate::{Message, OutgoingMessage};

/// How to receive from a [`MemoryQueue`] with [`MemoryQueue::receive_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveOptions {
    max_messages: usize,
    wait_time: Duration,
    visibility_timeout: Option<Duration>,
    attempt_id: Option<String>,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiveOptions {
    /// One message, no waiting, the queue's visibility timeout.
    pub fn new() -> Self {
        Self { max_messages: 1, wait_time: Duration::ZERO, visibility_timeout: None, attempt_id: None }
    }

    /// At most this many messages (clamped to 1..=10, SQS's range).
    #[must_use]
    pub fn max_messages(mut self, max: usize) -> Self {
        self.max_messages = max.clamp(1, BATCH_MAX);
        self
    }

    /// Waits up to this long for a message when none is visible (a long poll); returns as
    /// soon as one arrives.
    #[must_use]
    pub fn wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait;
        self
    }

    /// Hides the messages received for this long instead of the queue's visibility timeout.
    /// Zero leaves them visible at once (each receive still counts toward redrive).
    #[must_use]
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// FIFO: the `ReceiveRequestAttemptId` of the receive.
    #[must_use]
    pub fn attempt_id(mut self, id: impl Into<String>) -> Self {
        self.attempt_id = Some(id.into());
        self
    }
}

/// One delivery of a message by [`MemoryQueue::receive_messages`]: the message, and the
/// receipt handle that deletes it or changes its visibility until it is received again.
#[derive(Debug, Clone)]
pub struct Delivery {
    message: Message,
}

impl Delivery {
    /// The message, with its system attributes (`ApproximateReceiveCount`, `SentTimestamp`,
    /// `ApproximateFirstReceiveTimestamp`, and for FIFO `MessageGroupId`, `SequenceNumber`,
    /// `MessageDeduplicationId` when the sender gave one).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The receipt handle of this delivery.
    pub fn receipt_handle(&self) -> &str {
        &self.message.receipt_handle
    }

    /// The message, dropping the receipt handle.
    pub fn into_message(self) -> Message {
        self.message
    }
}

/// What [`MemoryQueue::send_message`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    id: String,
    sequence_number: Option<String>,
}

impl SentMessage {
    /// The message id (for a deduplicated FIFO send, the id of the first).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// FIFO: the message's `SequenceNumber`, a 20-digit decimal string.
    pub fn sequence_number(&self) -> Option<&str> {
        self.sequence_number.as_deref()
    }
}

/// How many messages a [`MemoryQueue`] holds, by state (SQS's `ApproximateNumberOfMessages*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageCounts {
    /// Visible: a receive could return them now.
    pub visible: usize,
    /// Received and not yet visible again or deleted.
    pub in_flight: usize,
    /// Sent with a delay that has not passed yet.
    pub delayed: usize,
}

/// A call a [`MemoryQueue`] refused, with SQS's error code (e.g. `ReceiptHandleIsInvalid`,
/// `MessageNotInflight`, `InvalidParameterValue`, `MissingParameter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryQueueError {
    code: String,
    message: String,
}

impl MemoryQueueError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into() }
    }

    /// SQS's error code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for MemoryQueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for MemoryQueueError {}

impl From<super::QueueError> for MemoryQueueError {
    fn from(e: super::QueueError) -> Self {
        Self { code: e.code.unwrap_or_else(|| "InternalError".to_owned()), message: e.message }
    }
}

impl MemoryQueue {
    /// Receives up to the asked number of messages, waiting up to the asked time for the
    /// first one; each comes with its receipt handle. The same receive a worker makes on the
    /// queue: visibility timeouts, receive counts, redrive and FIFO group holding apply.
    ///
    /// # Errors
    ///
    /// Only if the queue refused the receive; the embedded queue has no such case today.
    pub async fn receive_messages(&self, options: &ReceiveOptions) -> Result<Vec<Delivery>, MemoryQueueError> {
        let visibility = options.visibility_timeout;
        let request = ReceiveRequest {
            max_messages: options.max_messages,
            wait_time: options.wait_time,
            // Zero asks the queue for its own timeout; an explicit zero is applied below.
            visibility_timeout: visibility.unwrap_or(Duration::ZERO),
            attempt_id: options.attempt_id.clone(),
            system_attributes: crate::queue::SystemAttributeNames::ALL,
        };
        let messages = QueueBackend::receive(self, &request).await?;
        if visibility == Some(Duration::ZERO) && !messages.is_empty() {
            let now = Instant::now();
            let mut state = self.state();
            let State { messages: stored, skip, .. } = &mut *state;
            for m in &messages {
                if let Some(s) = delivered(stored, self.inner.instance, &m.receipt_handle) {
                    s.visible_at = now;
                    skip.changed(s.seq, now);
                }
            }
            drop(state);
            self.inner.arrived.notify_waiters();
        }
        Ok(messages.into_iter().map(|message| Delivery { message }).collect())
    }

    /// Sends a message; returns its id and, on a FIFO queue, its sequence number.
    ///
    /// # Errors
    ///
    /// `InvalidParameterValue` for a message over 1 MiB or a delay over 15 minutes,
    /// `MissingParameter` for a FIFO message without a group id.
    pub fn send_message(&self, message: &OutgoingMessage) -> Result<SentMessage, MemoryQueueError> {
        let (id, seq) = self.send_now(message)?;
        Ok(SentMessage { id, sequence_number: self.inner.fifo.then(|| sequence_number(seq)) })
    }

    /// Deletes the message this receipt handle was issued for. A receipt of an earlier
    /// delivery, or of a message already deleted, deletes nothing and succeeds, as in SQS.
    ///
    /// # Errors
    ///
    /// `ReceiptHandleIsInvalid` for a receipt handle this queue never issued.
    pub fn delete_message(&self, receipt_handle: &str) -> Result<(), MemoryQueueError> {
        self.delete_messages(&[receipt_handle]).pop().expect("one answer per receipt")
    }

    /// [`delete_message`](Self::delete_message) for each receipt handle, under one lock; one
    /// answer per receipt, in order.
    pub fn delete_messages(&self, receipt_handles: &[&str]) -> Vec<Result<(), MemoryQueueError>> {
        let mut state = self.state();
        let answers = receipt_handles
            .iter()
            .map(|r| {
                if state.remove_delivered(self.inner.instance, r) || self.issued(r) {
                    Ok(())
                } else {
                    Err(invalid_receipt(r))
                }
            })
            .collect();
        drop(state);
        if self.inner.fifo {
            self.inner.arrived.notify_waiters();
        }
        answers
    }

    /// Makes the message of this receipt handle visible again after `timeout` from now
    /// (zero: at once).
    ///
    /// # Errors
    ///
    /// `ReceiptHandleIsInvalid` for a receipt this queue never issued; `InvalidParameterValue`
    /// for a receipt that is no longer the latest of a message in the queue, or when the
    /// message would stay invisible more than 12 hours after it was received;
    /// `MessageNotInflight` when the message is visible.
    pub fn change_visibility(&self, receipt_handle: &str, timeout: Duration) -> Result<(), MemoryQueueError> {
        self.change_visibilities(&[(receipt_handle, timeout)]).pop().expect("one answer per receipt")
    }

    /// [`change_visibility`](Self::change_visibility) for each receipt handle, under one lock;
    /// one answer per entry, in order.
    pub fn change_visibilities(&self, entries: &[(&str, Duration)]) -> Vec<Result<(), MemoryQueueError>> {
        let now = Instant::now();
        let mut state = self.state();
        let mut released = false;
        let answers = entries
            .iter()
            .map(|&(r, timeout)| {
                let State { messages, skip, .. } = &mut *state;
                let Some(m) = delivered(messages, self.inner.instance, r) else {
                    return Err(if self.issued(r) {
                        MemoryQueueError::new(
                            "InvalidParameterValue",
                            format!(
                                "Value {r} for parameter ReceiptHandle is invalid. Reason: Message does not exist \
                                 or is not available for visibility timeout change."
                            ),
                        )
                    } else {
                        invalid_receipt(r)
                    });
                };
                let received_at = m.receipt.as_ref().map_or(now, |(_, at)| *at);
                if m.visible_at <= now {
                    Err(MemoryQueueError::new("MessageNotInflight", "The message referred to isn't in flight."))
                } else if now.duration_since(received_at) + timeout > MAX_VISIBILITY {
                    Err(MemoryQueueError::new(
                        "InvalidParameterValue",
                        format!(
                            "Value {} for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout \
                             for the message is beyond the limit [43200 seconds]",
                            timeout.as_secs()
                        ),
                    ))
                } else {
                    m.visible_at = now + timeout;
                    skip.changed(m.seq, m.visible_at);
                    released |= timeout.is_zero();
                    Ok(())
                }
            })
            .collect();
        drop(state);
        if released {
            self.inner.arrived.notify_waiters();
        }
        answers
    }

    /// Messages held, by state, counted in one pass.
    pub fn counts(&self) -> MessageCounts {
        let now = Instant::now();
        let state = self.state();
        let mut counts = MessageCounts::default();
        for m in state.messages.values() {
            if m.visible_at <= now {
                counts.visible += 1;
            } else if m.receipt.is_some() {
                counts.in_flight += 1;
            } else {
                counts.delayed += 1;
            }
        }
        counts
    }

    /// Deletes every message, visible, delayed or in flight; returns how many there were.
    pub fn purge(&self) -> usize {
        let mut state = self.state();
        let n = state.messages.len();
        state.messages.clear();
        n
    }

    /// The visibility timeout used when a receive does not name one.
    pub fn visibility_timeout(&self) -> Duration {
        self.state().settings.default_visibility
    }

    /// Changes the visibility timeout used when a receive does not name one; messages
    /// already in flight keep theirs.
    pub fn set_visibility_timeout(&self, timeout: Duration) {
        self.state().settings.default_visibility = timeout;
    }

    /// The dead-letter queue and `maxReceiveCount`, if the queue redrives.
    pub fn redrive(&self) -> Option<(MemoryQueue, u32)> {
        self.state().settings.redrive.clone()
    }

    /// Sets or removes the redrive: a message that would be received more than
    /// `max_receives` times moves to `dead_letter` instead.
    pub fn set_redrive(&self, redrive: Option<(&MemoryQueue, u32)>) {
        self.state().settings.redrive = redrive.map(|(q, max)| (q.clone(), max.max(1)));
    }

    /// How long a message is kept before it is dropped (`None`: kept until deleted).
    pub fn retention(&self) -> Option<Duration> {
        self.state().settings.retention
    }

    /// Sets how long a message is kept before it is dropped, counted from when it was sent
    /// (SQS's `MessageRetentionPeriod`); `None` keeps messages until they are deleted.
    pub fn set_retention(&self, retention: Option<Duration>) {
        self.state().settings.retention = retention;
    }
}

fn invalid_receipt(receipt_handle: &str) -> MemoryQueueError {
    MemoryQueueError::new(
        "ReceiptHandleIsInvalid",
        format!("The input receipt handle \"{receipt_handle}\" is not a valid receipt handle."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(answers: &[Result<(), MemoryQueueError>]) -> Vec<&str> {
        answers.iter().map(|a| a.as_ref().map_or_else(MemoryQueueError::code, |()| "ok")).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_delete_and_change_visibility_with_sqs_codes() {
        let q = MemoryQueue::new("api");
        q.send_message(&OutgoingMessage::new("a")).unwrap();
        let first = q.receive_messages(&ReceiveOptions::new()).await.unwrap().pop().unwrap();
        assert_eq!(first.message().receive_count(), 1);
        q.change_visibility(first.receipt_handle(), Duration::ZERO).unwrap();
        assert_eq!(
            q.change_visibility(first.receipt_handle(), Duration::from_secs(5)).unwrap_err().code(),
            "MessageNotInflight"
        );
        let second = q.receive_messages(&ReceiveOptions::new().max_messages(10)).await.unwrap().pop().unwrap();
        assert_eq!(second.message().receive_count(), 2);
        let stale = q.change_visibility(first.receipt_handle(), Duration::from_secs(5)).unwrap_err();
        assert_eq!(stale.code(), "InvalidParameterValue");
        let long = q.change_visibility(second.receipt_handle(), Duration::from_secs(43_201)).unwrap_err();
        assert_eq!(long.code(), "InvalidParameterValue");
        let answers = q.delete_messages(&[second.receipt_handle(), "made-up", first.receipt_handle()]);
        assert_eq!(codes(&answers), ["ok", "ReceiptHandleIsInvalid", "ok"]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_explicit_zero_visibility_leaves_the_message_visible_and_counts_the_receive() {
        let dlq = MemoryQueue::new("api-dlq");
        let q = MemoryQueue::new("api-zero");
        q.set_redrive(Some((&dlq, 2)));
        q.send_message(&OutgoingMessage::new("a")).unwrap();
        let peek = ReceiveOptions::new().visibility_timeout(Duration::ZERO);
        for n in 1..=2 {
            let got = q.receive_messages(&peek).await.unwrap();
            assert_eq!(got[0].message().receive_count(), n);
            assert_eq!(q.counts().visible, 1);
        }
        assert!(q.receive_messages(&peek).await.unwrap().is_empty(), "redriven on the third receive");
        assert_eq!(dlq.len(), 1);
        assert_eq!(q.redrive().map(|(d, max)| (d.name().to_owned(), max)), Some(("api-dlq".to_owned(), 2)));
    }

    #[tokio::test(start_paused = true)]
    async fn counts_settings_retention_and_purge() {
        let q = MemoryQueue::new("api-counts");
        q.set_visibility_timeout(Duration::from_secs(2));
        assert_eq!(q.visibility_timeout(), Duration::from_secs(2));
        q.send_message(&OutgoingMessage::new("now")).unwrap();
        q.send_message(&OutgoingMessage::new("later").delay(Duration::from_secs(60))).unwrap();
        q.send_message(&OutgoingMessage::new("taken")).unwrap();
        q.receive_messages(&ReceiveOptions::new()).await.unwrap();
        assert_eq!(q.counts(), MessageCounts { visible: 1, in_flight: 1, delayed: 1 });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(q.counts().visible, 2, "the queue's new 2 s timeout applied");
        q.set_retention(Some(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert!(q.receive_messages(&ReceiveOptions::new().max_messages(10)).await.unwrap().is_empty(), "all expired");
        assert!(q.is_empty());
        q.send_message(&OutgoingMessage::new("x")).unwrap();
        assert_eq!(q.purge(), 1);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_sends_carry_sequence_numbers_and_deduplicate() {
        let q = MemoryQueue::builder("api.fifo").fifo().build();
        let a = q.send_message(&OutgoingMessage::new("a").group_id("g").deduplication_id("1")).unwrap();
        let again = q.send_message(&OutgoingMessage::new("a").group_id("g").deduplication_id("1")).unwrap();
        let b = q.send_message(&OutgoingMessage::new("b").group_id("g")).unwrap();
        assert_eq!(a, again);
        assert!(b.sequence_number().unwrap() > a.sequence_number().unwrap());
        assert_eq!(a.sequence_number().unwrap().len(), 20);
        let got = q.receive_messages(&ReceiveOptions::new()).await.unwrap();
        let attributes = got[0].message().attributes();
        assert_eq!(attributes["SequenceNumber"], a.sequence_number().unwrap());
        assert_eq!(attributes["MessageDeduplicationId"], "1");
        assert_eq!(q.send_message(&OutgoingMessage::new("no group")).unwrap_err().code(), "MissingParameter");
    }
}
