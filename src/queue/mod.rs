//! The queue seam: real SQS and the embedded in-memory queue behind one interface.

mod aws;
pub(crate) mod memory;
pub(crate) mod sqs;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{Message, MessageAttribute};
pub use memory::{
    Delivery, MemoryQueue, MemoryQueueBuilder, MemoryQueueError, MessageCounts, ReceiveOptions, SentMessage,
};

/// At most this many messages per receive and entries per batch call (an SQS limit).
pub(crate) const BATCH_MAX: usize = 10;

/// One `ReceiveMessage` call.
#[derive(Debug, Clone)]
pub(crate) struct ReceiveRequest {
    /// 1..=10.
    pub(crate) max_messages: usize,
    pub(crate) wait_time: Duration,
    pub(crate) visibility_timeout: Duration,
    /// FIFO: the same id on a retried receive returns the same messages.
    pub(crate) attempt_id: Option<String>,
    /// The system attributes asked for.
    pub(crate) system_attributes: SystemAttributeNames,
}

/// A set of the message system attributes SQS knows, as a receive asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SystemAttributeNames(u16);

impl SystemAttributeNames {
    /// The names SQS accepts in a receive's `MessageSystemAttributeNames` (besides `All`).
    pub(crate) const KNOWN: [&'static str; 9] = [
        "ApproximateReceiveCount",
        "SentTimestamp",
        "MessageGroupId",
        "AWSTraceHeader",
        "ApproximateFirstReceiveTimestamp",
        "SenderId",
        "MessageDeduplicationId",
        "SequenceNumber",
        "DeadLetterQueueSourceArn",
    ];
    /// Every one (`All`).
    pub(crate) const ALL: Self = Self((1 << Self::KNOWN.len()) - 1);
    /// What the worker reads itself: the receive count (backoff, dead-lettering), the sent
    /// time (message age), the group (FIFO order) and the X-Ray trace header.
    pub(crate) const NEEDED: Self = Self(0b1111);

    /// The needed ones and `extra` (names as SQS spells them, or `All`); an unknown name is
    /// returned as the error.
    pub(crate) fn with<'a>(extra: impl IntoIterator<Item = &'a str>) -> Result<Self, &'a str> {
        let mut set = Self::NEEDED;
        for name in extra {
            if name == "All" {
                set = Self::ALL;
                continue;
            }
            let Some(bit) = Self::KNOWN.iter().position(|k| *k == name) else { return Err(name) };
            set.0 |= 1 << bit;
        }
        Ok(set)
    }

    pub(crate) fn contains(self, name: &str) -> bool {
        Self::KNOWN.iter().position(|k| *k == name).is_some_and(|bit| self.0 & (1 << bit) != 0)
    }

    /// The names in the set, in `KNOWN`'s order.
    pub(crate) fn names(self) -> impl Iterator<Item = &'static str> {
        Self::KNOWN.into_iter().enumerate().filter(move |(bit, _)| self.0 & (1 << bit) != 0).map(|(_, n)| n)
    }
}

/// One entry of a batch call. `id` is the batch entry id (`[A-Za-z0-9_-]{1,80}`, unique in
/// the call); `visibility` is only read by visibility changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchEntry {
    /// Borrowed where it can be: the acker's ids are the entries' places, "0" to "9".
    pub(crate) id: Cow<'static, str>,
    pub(crate) receipt_handle: Arc<str>,
    pub(crate) visibility: Duration,
}

/// An entry that a batch call reported in `Failed[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchFailure {
    pub(crate) id: String,
    pub(crate) code: String,
    pub(crate) message: String,
    /// True when the request was at fault (e.g. an invalid receipt handle): retrying the
    /// same entry cannot succeed.
    pub(crate) sender_fault: bool,
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    pub(crate) body: String,
    pub(crate) delay: Duration,
    pub(crate) group_id: Option<String>,
    pub(crate) deduplication_id: Option<String>,
    pub(crate) attributes: HashMap<String, MessageAttribute>,
}

impl OutgoingMessage {
    /// A message with this body.
    pub fn new(body: impl Into<String>) -> Self {
        Self { body: body.into(), ..Self::default() }
    }

    /// Delivers the message only after `delay` (at most 15 minutes).
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The FIFO `MessageGroupId`.
    #[must_use]
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// The FIFO `MessageDeduplicationId`.
    #[must_use]
    pub fn deduplication_id(mut self, id: impl Into<String>) -> Self {
        self.deduplication_id = Some(id.into());
        self
    }

    /// Adds a message attribute.
    #[must_use]
    pub fn attribute(mut self, name: impl Into<String>, value: MessageAttribute) -> Self {
        self.attributes.insert(name.into(), value);
        self
    }
}

/// Whether retrying a failed queue call can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// Network trouble, throttling, a server error: back off and try again.
    Transient,
    /// The queue does not exist, access is denied, the request is malformed: retrying will
    /// not heal it.
    Permanent,
}

/// A failed queue call.
#[derive(Debug, Clone)]
pub(crate) struct QueueError {
    pub(crate) kind: FailureKind,
    /// The service's error code, when it sent one.
    pub(crate) code: Option<String>,
    pub(crate) message: String,
}

impl QueueError {
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Transient, code: None, message: message.into() }
    }

    pub(crate) fn permanent(code: &str, message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Permanent, code: Some(code.to_owned()), message: message.into() }
    }

    pub(crate) fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// How long an SQS call may go unanswered, beyond a receive's wait, by default
/// (`HOLDFAST_SQS_TIMEOUT`).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The calls the runtime makes on a queue.
#[async_trait]
pub(crate) trait QueueBackend: Send + Sync + 'static {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Message>, QueueError>;
    async fn delete_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError>;
    async fn change_visibility_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError>;
    async fn send(&self, message: &OutgoingMessage) -> Result<String, QueueError>;
}

/// How many requests of each kind a [`Queue`] has made: SQS bills per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestCounts {
    /// `ReceiveMessage` calls.
    pub receive: u64,
    /// `DeleteMessageBatch` calls.
    pub delete: u64,
    /// `ChangeMessageVisibilityBatch` calls (heartbeats, retries, releases).
    pub change_visibility: u64,
    /// `SendMessage` calls.
    pub send: u64,
}

impl RequestCounts {
    /// All requests together.
    pub fn total(&self) -> u64 {
        self.receive + self.delete + self.change_visibility + self.send
    }
}

#[derive(Debug, Default)]
struct Counters {
    receive: AtomicU64,
    delete: AtomicU64,
    change_visibility: AtomicU64,
    send: AtomicU64,
}

/// A queue a worker consumes: an SQS queue (or any SQS-compatible server) or an embedded
/// [`MemoryQueue`]. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    url: Arc<str>,
    fifo: bool,
    backend: Arc<dyn QueueBackend>,
    counters: Arc<Counters>,
    /// How long a call may go unanswered (beyond a receive's wait) before it is abandoned
    /// as a transient failure; `None` for the embedded queue, which answers or waits by design.
    call_timeout: Option<Duration>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Queue {
    /// An SQS queue, reached with `client` (which carries region, credentials and endpoint).
    ///
    /// A call that gets no answer is abandoned after 10 s (a receive: after its wait time and
    /// 10 s), besides any limit `client` sets itself; a worker running the queue uses its
    /// `HOLDFAST_SQS_TIMEOUT` instead.
    pub fn sqs(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        let url: String = queue_url.into();
        let fifo = url.ends_with(".fifo");
        let mut queue = Self::from_backend(url.clone(), fifo, sqs::SqsBackend::new(client, url));
        queue.call_timeout = Some(CALL_TIMEOUT);
        queue
    }

    /// The embedded in-memory queue.
    pub fn memory(queue: &MemoryQueue) -> Self {
        Self::from_backend(queue.url(), queue.is_fifo(), queue.clone())
    }

    /// Opens the queue at `url`: `memory://NAME` is a new embedded queue, anything else is SQS
    /// with a client from aws-config's standard chain (`AWS_REGION`, `AWS_ENDPOINT_URL_SQS`,
    /// credentials, …). A URL on a host that is not AWS's is its own endpoint unless
    /// `AWS_ENDPOINT_URL_SQS` says otherwise; a missing region is read from an AWS URL.
    ///
    /// # Errors
    ///
    /// A mistake that retrying cannot heal: no region, no credentials anywhere, an endpoint
    /// host that does not resolve, a malformed URL.
    pub async fn from_url(url: &str) -> Result<Self, crate::Error> {
        Opener::default().open(url, "the queue URL").await
    }

    pub(crate) fn from_backend(url: String, fifo: bool, backend: impl QueueBackend) -> Self {
        Self { url: url.into(), fifo, backend: Arc::new(backend), counters: Arc::default(), call_timeout: None }
    }

    /// This queue (sharing its request counts) with SQS calls abandoned after `limit`
    /// without an answer (a receive: after its wait time and `limit`). No change for the
    /// embedded queue.
    pub(crate) fn with_call_timeout(&self, limit: Duration) -> Self {
        let mut queue = self.clone();
        if queue.call_timeout.is_some() {
            queue.call_timeout = Some(limit);
        }
        queue
    }

    /// `call`, abandoned (a transient failure, so retried like any other) once it has gone
    /// `waits` plus the call timeout without an answer.
    async fn bounded<T>(
        &self,
        action: &str,
        waits: Duration,
        call: impl Future<Output = Result<T, QueueError>>,
    ) -> Result<T, QueueError> {
        let Some(limit) = self.call_timeout else { return call.await };
        let limit = waits + limit;
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(QueueError::transient(format!(
                "{action}: no answer within {} ms (HOLDFAST_SQS_TIMEOUT beyond the call's own wait); the call was abandoned and its connection closed",
                limit.as_millis()
            )))
        })
    }

    /// Whether this is a FIFO queue (its name ends in `.fifo`, or a FIFO [`MemoryQueue`]).
    pub fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// The queue's URL (`memory://NAME` for an embedded queue).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests made through this handle and its clones so far.
    pub fn request_counts(&self) -> RequestCounts {
        RequestCounts {
            receive: self.counters.receive.load(Ordering::Relaxed),
            delete: self.counters.delete.load(Ordering::Relaxed),
            change_visibility: self.counters.change_visibility.load(Ordering::Relaxed),
            send: self.counters.send.load(Ordering::Relaxed),
        }
    }

    /// Sends a message; returns its message id.
    ///
    /// # Errors
    ///
    /// The queue refused the message, could not be reached, or (SQS) did not answer within
    /// 10 s.
    pub async fn send(&self, message: OutgoingMessage) -> Result<String, crate::Error> {
        self.counters.send.fetch_add(1, Ordering::Relaxed);
        self.bounded("SendMessage", Duration::ZERO, self.backend.send(&message)).await.map_err(|e| {
            crate::Error::Queue { queue_url: self.url.to_string(), message: format!("SendMessage failed: {e}") }
        })
    }

    pub(crate) async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Message>, QueueError> {
        self.counters.receive.fetch_add(1, Ordering::Relaxed);
        self.bounded("ReceiveMessage", request.wait_time, self.backend.receive(request)).await
    }

    pub(crate) async fn delete_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        self.counters.delete.fetch_add(1, Ordering::Relaxed);
        self.bounded("DeleteMessageBatch", Duration::ZERO, self.backend.delete_batch(entries)).await
    }

    pub(crate) async fn change_visibility_batch(
        &self,
        entries: &[BatchEntry],
    ) -> Result<Vec<BatchFailure>, QueueError> {
        self.counters.change_visibility.fetch_add(1, Ordering::Relaxed);
        self.bounded("ChangeMessageVisibilityBatch", Duration::ZERO, self.backend.change_visibility_batch(entries))
            .await
    }
}

/// Opens queues by URL, loading (and checking) the AWS configuration once.
#[derive(Default)]
pub(crate) struct Opener {
    aws: Option<aws_config::SdkConfig>,
    credentials_checked: bool,
}

impl Opener {
    /// Opens `url`, read from `variable` (named in errors).
    pub(crate) async fn open(&mut self, url: &str, variable: &'static str) -> Result<Queue, crate::Error> {
        if let Some(name) = url.strip_prefix("memory://") {
            return Ok(Queue::memory(&MemoryQueue::new(name)));
        }
        if self.aws.is_none() {
            self.aws = Some(aws_config::load_from_env().await);
        }
        let aws = self.aws.as_ref().expect("loaded above");
        let client = aws::client(url, variable, aws, &mut self.credentials_checked).await?;
        Ok(Queue::sqs(client, url))
    }
}

/// A memory queue with hooks around `receive`, for tests of what the runtime does when a
/// receive fails or races with shutdown.
/// Runs before a [`Hooked`] receive; an error it returns is the receive's answer.
#[cfg(test)]
pub(crate) type BeforeReceive = Box<dyn Fn(&ReceiveRequest) -> Option<QueueError> + Send + Sync>;

#[cfg(test)]
pub(crate) struct Hooked {
    pub(crate) inner: MemoryQueue,
    /// Runs first; an error it returns is the receive's answer (the queue is not asked).
    pub(crate) before_receive: BeforeReceive,
    /// Runs after the queue answered, before the answer is returned.
    pub(crate) after_receive: Box<dyn Fn() + Send + Sync>,
}

#[cfg(test)]
#[async_trait]
impl QueueBackend for Hooked {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Message>, QueueError> {
        if let Some(error) = (self.before_receive)(request) {
            return Err(error);
        }
        let answer = self.inner.receive(request).await;
        (self.after_receive)();
        answer
    }
    async fn delete_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        self.inner.delete_batch(entries).await
    }
    async fn change_visibility_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        self.inner.change_visibility_batch(entries).await
    }
    async fn send(&self, message: &OutgoingMessage) -> Result<String, QueueError> {
        self.inner.send(message).await
    }
}
