//! An embedded queue with SQS semantics, for local runs and for testing workers without AWS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    BATCH_MAX, BatchEntry, BatchFailure, OutgoingMessage, QueueBackend, QueueError, ReceiveRequest,
    SystemAttributeNames,
};
use crate::Message;
use crate::config::MAX_VISIBILITY;
use crate::message::MemoryDelivery;

mod api;
pub use api::{Delivery, MemoryQueueError, MessageCounts, ReceiveOptions, SentMessage};

/// SQS's largest message: 1 MiB of body and attributes.
const MAX_MESSAGE_BYTES: usize = 1_048_576;
/// SQS's longest delivery delay.
const MAX_DELAY: Duration = Duration::from_secs(900);
/// SQS FIFO's deduplication window.
const DEDUP_WINDOW: Duration = Duration::from_secs(300);

static NEXT_QUEUE: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
struct Stored {
    seq: u64,
    id: Arc<str>,
    body: Arc<str>,
    attributes: Arc<HashMap<String, crate::MessageAttribute>>,
    /// When it was sent, in whole milliseconds (`SentTimestamp`'s precision).
    sent_at: SystemTime,
    group_id: Option<String>,
    /// FIFO: the deduplication id the sender gave.
    dedup_id: Option<Arc<str>>,
    /// When it was sent, on the queue's clock (for the retention period).
    sent: Instant,
    visible_at: Instant,
    receive_count: u32,
    first_received: Option<SystemTime>,
    /// The receipt of the latest delivery, and when it was received.
    receipt: Option<(Arc<str>, Instant)>,
}

impl Stored {
    /// The message a handler sees for this stored one, as last delivered (never delivered:
    /// as if delivered once), without its receipt. Its system attribute map is built only
    /// when asked for.
    fn to_message(&self, fifo: bool, received_at: Instant, names: SystemAttributeNames) -> Message {
        let mut message = Message::shared(
            self.id.clone(),
            self.body.clone(),
            self.attributes.clone(),
            received_at,
            Some(self.sent_at),
        );
        message.receive_count = self.receive_count.max(1);
        message.group_id = self.group_id.clone();
        message.complete_memory_delivery(MemoryDelivery {
            first_received: self.first_received,
            sequence: fifo.then_some(self.seq),
            dedup_id: if fifo { self.dedup_id.clone() } else { None },
            names,
        });
        message
    }
}

#[derive(Debug, Default)]
struct State {
    /// By sequence number: oldest first.
    messages: BTreeMap<u64, Stored>,
    next_seq: u64,
    next_receipt: u64,
    /// Deduplication key to when it was sent, its message id and sequence number.
    dedup: HashMap<String, (Instant, String, u64)>,
    settings: Settings,
    skip: Skip,
}

impl MemoryQueue {
    /// Whether this queue could have issued `receipt_handle` (its form, this instance).
    fn issued(&self, receipt_handle: &str) -> bool {
        receipt_parts(receipt_handle).is_some_and(|(instance, _)| instance == self.inner.instance)
    }
}

impl Stored {
    /// Whether `handle` is the receipt of this message's latest delivery.
    fn latest_receipt_is(&self, handle: &str) -> bool {
        self.receipt.as_ref().is_some_and(|(latest, _)| **latest == *handle)
    }
}

impl State {
    /// Removes the message whose latest delivery `handle` is the receipt of, on queue
    /// `instance`; whether there was one. One search of the map.
    fn remove_delivered(&mut self, instance: u64, handle: &str) -> bool {
        let Some((_, seq)) = receipt_parts(handle).filter(|(i, _)| *i == instance) else { return false };
        match self.messages.entry(seq) {
            std::collections::btree_map::Entry::Occupied(entry) if entry.get().latest_receipt_is(handle) => {
                entry.remove();
                true
            }
            _ => false,
        }
    }
}

/// The message in `messages` whose latest delivery `handle` is the receipt of, on queue
/// `instance`. A function of the map alone, so that the caller can change the queue's
/// [`Skip`] while it holds the message.
fn delivered<'a>(messages: &'a mut BTreeMap<u64, Stored>, instance: u64, handle: &str) -> Option<&'a mut Stored> {
    let (_, seq) = receipt_parts(handle).filter(|(i, _)| *i == instance)?;
    messages.get_mut(&seq).filter(|m| m.latest_receipt_is(handle))
}

/// Where a receive on a standard queue starts looking: every message before `below` is in
/// flight (or delayed) until `until` at the earliest, so a receive steps over none of the
/// messages in flight ahead of the visible ones. Every change of a message's visibility
/// goes through [`Skip::changed`] to keep this true.
#[derive(Debug, Default, Clone, Copy)]
struct Skip {
    below: u64,
    /// `None`: no message before `below` comes back by itself.
    until: Option<Instant>,
}

impl Skip {
    /// The first sequence number worth looking at, at `now`.
    fn start(&self, now: Instant) -> u64 {
        if self.until.is_some_and(|until| until <= now) { 0 } else { self.below }
    }

    /// Message `seq` becomes visible at `at`.
    fn changed(&mut self, seq: u64, at: Instant) {
        if seq < self.below {
            self.until = Some(self.until.map_or(at, |until| until.min(at)));
        }
    }
}

/// What can change while the queue is in use (an SQS queue's attributes).
#[derive(Debug, Clone, Default)]
struct Settings {
    default_visibility: Duration,
    redrive: Option<(MemoryQueue, u32)>,
    /// Messages older than this are dropped; `None` keeps them.
    retention: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    fifo: bool,
    state: Mutex<State>,
    arrived: Notify,
    instance: u64,
}

/// An in-memory queue with the semantics a worker relies on: visibility timeouts, receive
/// counts, delivery delays, redrive to a dead-letter queue after `max_receives`, and FIFO
/// group order with group holding. Cheap to clone; clones share the queue.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use holdfast::{MemoryQueue, OutgoingMessage, Queue};
///
/// let dlq = MemoryQueue::new("jobs-dlq");
/// let jobs = MemoryQueue::builder("jobs").redrive(&dlq, 3).build();
/// Queue::memory(&jobs).send(OutgoingMessage::new("hello")).await.unwrap();
/// assert_eq!(jobs.len(), 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

/// Builds a [`MemoryQueue`] with non-default settings.
#[derive(Debug)]
pub struct MemoryQueueBuilder {
    name: String,
    fifo: bool,
    default_visibility: Duration,
    redrive: Option<(MemoryQueue, u32)>,
}

impl MemoryQueueBuilder {
    /// A FIFO queue: one group's messages are delivered in order, and a group is held while
    /// one of its messages is in flight. Sending requires a group id.
    #[must_use]
    pub fn fifo(mut self) -> Self {
        self.fifo = true;
        self
    }

    /// The visibility timeout used when a receive does not name one (default 30 s).
    #[must_use]
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.default_visibility = timeout;
        self
    }

    /// Moves a message to `dead_letter` when it would be received more than `max_receives`
    /// times, like an SQS redrive policy's `maxReceiveCount`.
    #[must_use]
    pub fn redrive(mut self, dead_letter: &MemoryQueue, max_receives: u32) -> Self {
        self.redrive = Some((dead_letter.clone(), max_receives.max(1)));
        self
    }

    /// The queue.
    pub fn build(self) -> MemoryQueue {
        MemoryQueue {
            inner: Arc::new(Inner {
                name: self.name,
                fifo: self.fifo,
                state: Mutex::new(State {
                    settings: Settings {
                        default_visibility: self.default_visibility,
                        redrive: self.redrive,
                        retention: None,
                    },
                    ..State::default()
                }),
                arrived: Notify::new(),
                instance: NEXT_QUEUE.fetch_add(1, Ordering::Relaxed),
            }),
        }
    }
}

impl MemoryQueue {
    /// A standard queue with a 30 s visibility timeout and no redrive.
    pub fn new(name: impl Into<String>) -> Self {
        Self::builder(name).build()
    }

    /// Starts building a queue.
    pub fn builder(name: impl Into<String>) -> MemoryQueueBuilder {
        MemoryQueueBuilder {
            name: name.into(),
            fifo: false,
            default_visibility: Duration::from_secs(30),
            redrive: None,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether this is a FIFO queue.
    pub fn is_fifo(&self) -> bool {
        self.inner.fifo
    }

    /// `memory://NAME`.
    pub fn url(&self) -> String {
        format!("memory://{}", self.inner.name)
    }

    /// Messages in the queue, visible, delayed or in flight.
    pub fn len(&self) -> usize {
        self.state().messages.len()
    }

    /// Whether the queue holds no message at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages that a receive could return now (visible, not delayed).
    pub fn visible_len(&self) -> usize {
        let now = Instant::now();
        self.state().messages.values().filter(|m| m.visible_at <= now).count()
    }

    /// Messages received and not yet visible again or deleted.
    pub fn in_flight_len(&self) -> usize {
        let now = Instant::now();
        self.state().messages.values().filter(|m| m.visible_at > now && m.receipt.is_some()).count()
    }

    /// The bodies of all messages held, oldest first.
    pub fn bodies(&self) -> Vec<String> {
        self.state().messages.values().map(|m| m.body.to_string()).collect()
    }

    /// Every message held, oldest first, as a handler would see it (a snapshot: nothing is
    /// received). For tests that check what a worker left behind, e.g. in a dead-letter
    /// queue.
    pub fn messages(&self) -> Vec<Message> {
        let now = Instant::now();
        self.state().messages.values().map(|m| m.to_message(self.inner.fifo, now, SystemAttributeNames::ALL)).collect()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("memory queue poisoned")
    }

    /// Stores a message; returns its id and sequence number (a deduplicated send returns
    /// those of the first).
    fn send_now(&self, message: &OutgoingMessage) -> Result<(String, u64), QueueError> {
        let size = message.body.len()
            + message
                .attributes
                .iter()
                .map(|(k, v)| {
                    k.len() + v.data_type().len() + v.as_str().map_or(0, str::len) + v.as_bytes().map_or(0, <[u8]>::len)
                })
                .sum::<usize>();
        if size > MAX_MESSAGE_BYTES {
            return Err(QueueError::permanent(
                "InvalidParameterValue",
                format!("message of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"),
            ));
        }
        if message.delay > MAX_DELAY {
            return Err(QueueError::permanent("InvalidParameterValue", "DelaySeconds must be at most 900"));
        }
        if self.inner.fifo && message.group_id.is_none() {
            return Err(QueueError::permanent("MissingParameter", "FIFO queues require MessageGroupId"));
        }
        let now = Instant::now();
        let mut state = self.state();
        let dedup_key = if self.inner.fifo {
            match &message.deduplication_id {
                Some(id) => Some(id.clone()),
                None => Some(format!("body:{}", message.body)),
            }
        } else {
            None
        };
        if let Some(key) = &dedup_key {
            state.dedup.retain(|_, (at, _, _)| now.duration_since(*at) < DEDUP_WINDOW);
            if let Some((_, id, seq)) = state.dedup.get(key) {
                return Ok((id.clone(), *seq));
            }
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        // Shaped like SQS's ids (a UUID), unique per queue instance and message.
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{seq:012x}",
            fastrand::u32(..),
            self.inner.instance & 0xffff,
            fastrand::u16(..0x1000),
            0x8000 | fastrand::u16(..0x4000)
        );
        if let Some(key) = dedup_key {
            state.dedup.insert(key, (now, id.clone(), seq));
        }
        state.messages.insert(
            seq,
            Stored {
                seq,
                id: id.as_str().into(),
                body: message.body.as_str().into(),
                attributes: Arc::new(message.attributes.clone()),
                sent_at: whole_millis(SystemTime::now()),
                group_id: message.group_id.clone(),
                dedup_id: if self.inner.fifo { message.deduplication_id.as_deref().map(Arc::from) } else { None },
                sent: now,
                visible_at: now + message.delay,
                receive_count: 0,
                first_received: None,
                receipt: None,
            },
        );
        drop(state);
        self.inner.arrived.notify_waiters();
        Ok((id, seq))
    }

    /// Takes up to `max` visible messages now; returns the messages and, when none were
    /// visible, when the next one becomes visible.
    fn take(&self, request: &ReceiveRequest) -> (Vec<Message>, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.state();
        let State { messages, next_receipt, settings, skip, .. } = &mut *state;
        let visibility =
            if request.visibility_timeout.is_zero() { settings.default_visibility } else { request.visibility_timeout };
        let max_receives = settings.redrive.as_ref().map(|(_, max)| *max);
        let expired_before = settings.retention.and_then(|r| now.checked_sub(r));
        let mut expired = Vec::new();
        let mut out = Vec::with_capacity(request.max_messages.min(BATCH_MAX));
        let mut next_visible: Option<Instant> = None;
        let mut dead = Vec::new();
        // FIFO: a group is held from its first message that is not visible (in flight, or
        // waiting to come back), so a group's messages go out in order.
        let mut held: HashSet<&str> = HashSet::new();
        // A standard queue without a retention period leaves nothing visible behind a
        // receive's look (each message seen is in flight, delayed, delivered now or
        // dead-lettered), so the next receive can start where this one stopped.
        let skipping = !self.inner.fifo && expired_before.is_none();
        let start = if skipping { skip.start(now) } else { 0 };
        let mut last_seen = None;
        for (seq, m) in messages.range_mut(start..) {
            if out.len() >= request.max_messages {
                break;
            }
            last_seen = Some(*seq);
            if expired_before.is_some_and(|t| m.sent <= t) {
                expired.push(*seq);
                continue;
            }
            let group = m.group_id.as_deref();
            if m.visible_at > now {
                next_visible = Some(next_visible.map_or(m.visible_at, |n| n.min(m.visible_at)));
                if let (true, Some(g)) = (self.inner.fifo, group) {
                    held.insert(g);
                }
                continue;
            }
            if self.inner.fifo && group.is_some_and(|g| held.contains(g)) {
                continue;
            }
            if max_receives.is_some_and(|max| m.receive_count >= max) {
                dead.push(*seq);
                continue;
            }
            m.receive_count += 1;
            *next_receipt += 1;
            let receipt = receipt_handle(self.inner.instance, m.seq, *next_receipt);
            m.receipt = Some((receipt.clone(), now));
            m.visible_at = now + visibility;
            m.first_received.get_or_insert_with(SystemTime::now);
            let mut message = m.to_message(self.inner.fifo, now, request.system_attributes);
            message.receipt_handle = receipt;
            out.push(message);
        }
        if start > 0 {
            next_visible = [next_visible, skip.until].into_iter().flatten().min();
        }
        if let (true, Some(last)) = (skipping, last_seen) {
            let delivered = (!out.is_empty()).then_some(now + visibility);
            let until = [next_visible, delivered].into_iter().flatten().min();
            *skip = Skip { below: last + 1, until };
        }
        let dead: Vec<Stored> = dead.iter().filter_map(|seq| messages.remove(seq)).collect();
        for seq in expired {
            messages.remove(&seq);
        }
        let dlq = if dead.is_empty() { None } else { settings.redrive.as_ref().map(|(q, _)| q.clone()) };
        drop(state);
        if let Some(dlq) = dlq {
            for m in dead {
                tracing::debug!(queue = %self.inner.name, message_id = %m.id, "moved to the dead-letter queue");
                dlq.push_dead(m);
            }
        }
        (out, next_visible)
    }

    /// Waits until a message can be taken or `deadline` passes; what it takes is received.
    async fn long_poll(&self, request: &ReceiveRequest, deadline: Instant) -> Vec<Message> {
        loop {
            // Register interest before looking, so a send between the look and the wait
            // is not missed.
            let arrived = self.inner.arrived.notified();
            let (messages, next_visible) = self.take(request);
            if !messages.is_empty() || Instant::now() >= deadline {
                return messages;
            }
            let wake = next_visible.map_or(deadline, |n| n.min(deadline));
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn push_dead(&self, mut message: Stored) {
        let mut state = self.state();
        state.next_seq += 1;
        message.seq = state.next_seq;
        message.visible_at = Instant::now();
        message.receipt = None;
        message.receive_count = 0;
        state.messages.insert(message.seq, message);
        drop(state);
        self.inner.arrived.notify_waiters();
    }

    fn check_entries(entries: &[BatchEntry]) -> Result<(), QueueError> {
        if entries.is_empty() || entries.len() > BATCH_MAX {
            return Err(QueueError::permanent("TooManyEntriesInBatchRequest", "a batch holds 1 to 10 entries"));
        }
        for (i, e) in entries.iter().enumerate() {
            let valid = (1..=80).contains(&e.id.len())
                && e.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(QueueError::permanent("InvalidBatchEntryId", format!("bad batch entry id {:?}", e.id)));
            }
            if entries[..i].iter().any(|earlier| earlier.id == e.id) {
                return Err(QueueError::permanent("BatchEntryIdsNotDistinct", format!("id {:?} repeats", e.id)));
            }
        }
        Ok(())
    }
}

/// A FIFO message's `SequenceNumber`: SQS's are 20-digit decimal strings.
/// A FIFO message's `SequenceNumber`, as SQS writes it: 20 digits.
pub(crate) fn sequence_number(seq: u64) -> String {
    format!("{seq:020}")
}

/// `t` to whole milliseconds since the epoch: `SentTimestamp`'s precision, as SQS sends it.
fn whole_millis(t: SystemTime) -> SystemTime {
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// A delivery's receipt handle, `INSTANCE:SEQ:DELIVERY`: the queue instance, the message
/// and the delivery. A message keeps its latest one, so a handle is checked against the
/// message it names ([`delivered`]) instead of being looked up in a map of its own.
fn receipt_handle(instance: u64, seq: u64, delivery: u64) -> Arc<str> {
    // Three u64s and two colons fit in 62 bytes: written on the stack, allocated once.
    let mut buffer = [0u8; 62];
    let mut len = 0;
    for (i, n) in [instance, seq, delivery].into_iter().enumerate() {
        if i > 0 {
            buffer[len] = b':';
            len += 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n).as_bytes();
        buffer[len..len + digits.len()].copy_from_slice(digits);
        len += digits.len();
    }
    std::str::from_utf8(&buffer[..len]).expect("digits and colons").into()
}

/// The queue instance and the message a receipt handle names, if it is one of this queue's
/// form at all.
fn receipt_parts(handle: &str) -> Option<(u64, u64)> {
    let mut numbers = [0u64; 3];
    let mut fields = 0;
    for part in handle.as_bytes().split(|&b| b == b':') {
        if fields == numbers.len() || part.is_empty() {
            return None;
        }
        numbers[fields] = part.iter().try_fold(0u64, |n, &b| {
            let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
            n.checked_mul(10)?.checked_add(digit)
        })?;
        fields += 1;
    }
    (fields == numbers.len()).then_some((numbers[0], numbers[1]))
}

fn invalid_receipt(id: &str) -> BatchFailure {
    BatchFailure {
        id: id.to_owned(),
        code: "ReceiptHandleIsInvalid".into(),
        message: "the receipt handle is not the latest one of a message in the queue".into(),
        sender_fault: true,
    }
}

#[async_trait]
impl QueueBackend for MemoryQueue {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Message>, QueueError> {
        let deadline = Instant::now() + request.wait_time;
        // Fast path: messages visible now, or no wait asked for.
        let (messages, _) = self.take(request);
        if !messages.is_empty() || request.wait_time.is_zero() {
            return Ok(messages);
        }
        // The wait runs on the "server", apart from the caller, as an SQS long poll does: a
        // caller that goes away (drops this future) does not end it, and the messages it
        // takes meanwhile stay in flight, received by nobody, until their visibility timeout.
        let (answer, answered) = tokio::sync::oneshot::channel();
        let queue = self.clone();
        let request = request.clone();
        tokio::spawn(async move {
            let _ = answer.send(queue.long_poll(&request, deadline).await);
        });
        answered.await.map_err(|_| QueueError::transient("the embedded queue's long poll was stopped"))
    }

    async fn delete_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        Self::check_entries(entries)?;
        let mut state = self.state();
        let mut failures = Vec::new();
        for e in entries {
            // SQS accepts a well-formed receipt of an earlier delivery without deleting
            // anything; it refuses one it never issued.
            if !state.remove_delivered(self.inner.instance, &e.receipt_handle) && !self.issued(&e.receipt_handle) {
                failures.push(invalid_receipt(&e.id));
            }
        }
        let freed_group = self.inner.fifo;
        drop(state);
        if freed_group {
            self.inner.arrived.notify_waiters();
        }
        Ok(failures)
    }

    async fn change_visibility_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        Self::check_entries(entries)?;
        let now = Instant::now();
        let mut state = self.state();
        let mut failures = Vec::new();
        // A waiting long poll timed its wake on the old visibility: one made sooner must wake it.
        let mut sooner = false;
        let State { messages, skip, .. } = &mut *state;
        for e in entries {
            let Some(m) = delivered(messages, self.inner.instance, &e.receipt_handle) else {
                failures.push(invalid_receipt(&e.id));
                continue;
            };
            let received_at = m.receipt.as_ref().map_or(now, |(_, at)| *at);
            if m.visible_at <= now {
                failures.push(BatchFailure {
                    id: e.id.to_string(),
                    code: "MessageNotInflight".into(),
                    message: "the message is not in flight".into(),
                    sender_fault: true,
                });
            } else if now.duration_since(received_at) + e.visibility > MAX_VISIBILITY {
                failures.push(BatchFailure {
                    id: e.id.to_string(),
                    code: "InvalidParameterValue".into(),
                    message: "total visibility timeout would exceed 12 hours since receipt".into(),
                    sender_fault: true,
                });
            } else {
                sooner |= now + e.visibility < m.visible_at;
                m.visible_at = now + e.visibility;
                skip.changed(m.seq, now + e.visibility);
            }
        }
        drop(state);
        if sooner {
            self.inner.arrived.notify_waiters();
        }
        Ok(failures)
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<String, QueueError> {
        self.send_now(message).map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(max: usize, wait_s: u64) -> ReceiveRequest {
        ReceiveRequest {
            max_messages: max,
            wait_time: Duration::from_secs(wait_s),
            visibility_timeout: Duration::from_secs(30),
            attempt_id: None,
            system_attributes: crate::queue::SystemAttributeNames::ALL,
        }
    }

    fn entry(id: &str, receipt: &str, visibility_s: u64) -> BatchEntry {
        BatchEntry {
            id: id.to_owned().into(),
            receipt_handle: receipt.into(),
            visibility: Duration::from_secs(visibility_s),
        }
    }

    #[test]
    fn receipt_handles_name_their_queue_and_message_and_nothing_else_passes() {
        let handle = receipt_handle(7, 12_345, u64::MAX);
        assert_eq!(&*handle, "7:12345:18446744073709551615");
        assert_eq!(receipt_parts(&handle), Some((7, 12_345)));
        for bad in ["", "7", "7:1", "7:1:", ":1:2", "7:1:2:3", "7:x:2", "7:+1:2", "7:1:18446744073709551616", "7::2"] {
            assert_eq!(receipt_parts(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn visibility_timeout_hides_then_returns_with_a_higher_count() {
        let q = MemoryQueue::new("v");
        q.send(&OutgoingMessage::new("a")).await.unwrap();
        let first = q.receive(&request(10, 0)).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].receive_count(), 1);
        assert!(q.receive(&request(10, 0)).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_secs(31)).await;
        let again = q.receive(&request(10, 0)).await.unwrap();
        assert_eq!(again[0].receive_count(), 2);
        assert_ne!(again[0].receipt_handle, first[0].receipt_handle, "a new receipt per delivery");
        // The old receipt no longer deletes the message.
        assert!(q.delete_batch(&[entry("a", &first[0].receipt_handle, 0)]).await.unwrap().is_empty());
        assert_eq!(q.len(), 1);
        q.delete_batch(&[entry("a", &again[0].receipt_handle, 0)]).await.unwrap();
        assert!(q.is_empty());
    }

    /// Receives start past the messages in flight (`Skip`): checked against a model of
    /// every message's visibility over random sends, receives (visibility 1 to 4 s),
    /// deletes, visibility changes (heartbeats, releases, both APIs) and waits.
    #[tokio::test(start_paused = true)]
    async fn receives_that_start_past_the_messages_in_flight_miss_none_that_are_visible() {
        struct Model {
            body: String,
            visible_at: Instant,
            receipt: Option<String>,
            deleted: bool,
        }
        let q = MemoryQueue::new("skip");
        let mut model: Vec<Model> = Vec::new();
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut received, mut released) = (0, 0);
        for step in 0..4_000 {
            let now = Instant::now();
            let in_flight: Vec<usize> =
                (0..model.len()).filter(|&i| !model[i].deleted && model[i].receipt.is_some()).collect();
            match rng.u8(0..10) {
                0..=2 => {
                    let body = format!("m{step}");
                    q.send(&OutgoingMessage::new(body.clone())).await.unwrap();
                    model.push(Model { body, visible_at: now, receipt: None, deleted: false });
                }
                3..=4 => {
                    let (max, visibility) = (rng.usize(1..=10), Duration::from_secs(rng.u64(1..=4)));
                    let got =
                        q.receive(&ReceiveRequest { visibility_timeout: visibility, ..request(max, 0) }).await.unwrap();
                    let expected: Vec<usize> = (0..model.len())
                        .filter(|&i| !model[i].deleted && model[i].visible_at <= now)
                        .take(max)
                        .collect();
                    let bodies: Vec<&str> = got.iter().map(|m| m.body()).collect();
                    let wanted: Vec<&str> = expected.iter().map(|&i| model[i].body.as_str()).collect();
                    assert_eq!(bodies, wanted, "step {step}");
                    for (&i, m) in expected.iter().zip(&got) {
                        model[i].visible_at = now + visibility;
                        model[i].receipt = Some(m.receipt_handle.to_string());
                    }
                    received += got.len();
                }
                5 if !in_flight.is_empty() => {
                    let i = in_flight[rng.usize(..in_flight.len())];
                    q.delete_message(model[i].receipt.as_deref().unwrap()).unwrap();
                    model[i].deleted = true;
                }
                6..=7 if !in_flight.is_empty() => {
                    let i = in_flight[rng.usize(..in_flight.len())];
                    // A release (zero) one time in three, else a heartbeat or a retry's backoff.
                    let timeout = Duration::from_millis(if rng.u8(0..3) == 0 { 0 } else { rng.u64(1..3_000) });
                    let receipt = model[i].receipt.clone().unwrap();
                    let answer = if rng.bool() {
                        q.change_visibility(&receipt, timeout).map_err(|e| e.code().to_owned())
                    } else {
                        let entries =
                            [BatchEntry { id: "e".into(), receipt_handle: receipt.into(), visibility: timeout }];
                        match q.change_visibility_batch(&entries).await.unwrap().pop() {
                            None => Ok(()),
                            Some(failure) => Err(failure.code),
                        }
                    };
                    if model[i].visible_at > now {
                        assert_eq!(answer, Ok(()), "step {step}");
                        model[i].visible_at = now + timeout;
                        released += usize::from(timeout.is_zero());
                    } else {
                        assert_eq!(answer, Err("MessageNotInflight".to_owned()), "step {step}");
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(rng.u64(0..1_500))).await,
            }
        }
        assert!(
            received > 1_000 && released > 10,
            "the run exercised the queue: {received} received, {released} released"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_returns_early_when_a_message_arrives() {
        let q = MemoryQueue::new("lp");
        let sender = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            sender.send(&OutgoingMessage::new("late")).await.unwrap();
        });
        let start = Instant::now();
        let got = q.receive(&request(10, 20)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        let start = Instant::now();
        assert!(q.receive(&request(10, 20)).await.unwrap().is_empty());
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    /// A long poll already waiting sees a message whose visibility was shortened while it
    /// waits (a retry's backoff, here 2 s, in place of the 30 s it was received with): it
    /// returns when the message turns visible, not at the end of its 20 s wait.
    #[tokio::test(start_paused = true)]
    async fn long_poll_wakes_for_a_visibility_shortened_while_it_waits() {
        let q = MemoryQueue::new("shortened");
        q.send(&OutgoingMessage::new("retry me")).await.unwrap();
        let first = q.receive(&request(10, 0)).await.unwrap();
        let poller = q.clone();
        let start = Instant::now();
        let poll = tokio::spawn(async move { poller.receive(&request(10, 20)).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(q.change_visibility_batch(&[entry("r", &first[0].receipt_handle, 2)]).await.unwrap().is_empty());
        let got = poll.await.unwrap();
        assert_eq!(got.len(), 1, "the shortened message is delivered to the waiting poll");
        assert_eq!(start.elapsed(), Duration::from_millis(2100));
    }

    /// A long poll whose caller went away, as SQS serves it: the server still waits out the
    /// wait time and takes what arrives meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_long_poll_still_takes_a_message_that_arrives_in_its_wait() {
        let q = MemoryQueue::new("orphan");
        let abandoned = tokio::time::timeout(Duration::from_secs(1), q.receive(&request(10, 20))).await;
        assert!(abandoned.is_err(), "the caller gave up after 1 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        q.send(&OutgoingMessage::new("sent after the caller left")).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!((q.visible_len(), q.in_flight_len()), (0, 1), "taken by the orphaned poll");
        assert!(q.receive(&request(10, 0)).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_secs(30)).await;
        let back = q.receive(&request(10, 0)).await.unwrap();
        assert_eq!(back.len(), 1, "back after the visibility timeout");
        assert_eq!(back[0].receive_count(), 2, "the orphaned delivery counted as a receive");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_long_poll_ends_with_its_wait_time() {
        let q = MemoryQueue::new("orphan-ends");
        let _ = tokio::time::timeout(Duration::from_secs(1), q.receive(&request(10, 5))).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        q.send(&OutgoingMessage::new("after the wait time")).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!((q.visible_len(), q.in_flight_len()), (1, 0), "nobody is polling any more");
        // A receive that finds a message at once needs no wait at all.
        let start = Instant::now();
        assert_eq!(q.receive(&request(10, 20)).await.unwrap().len(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn orphaned_receives_count_toward_the_redrive() {
        let dlq = MemoryQueue::new("orphan-dlq");
        let q = MemoryQueue::builder("orphan-main").redrive(&dlq, 2).build();
        let mut short = request(10, 20);
        short.visibility_timeout = Duration::from_secs(1);
        // Three idle consumers stop with their polls in flight; a message is sent just after.
        for _ in 0..3 {
            let _ = tokio::time::timeout(Duration::from_millis(100), q.receive(&short)).await;
        }
        q.send(&OutgoingMessage::new("never handled")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(q.is_empty());
        assert_eq!(dlq.bodies(), ["never handled"], "dead-lettered without any caller seeing it");
    }

    #[tokio::test(start_paused = true)]
    async fn an_orphaned_fifo_delivery_holds_its_group() {
        let q = MemoryQueue::builder("orphan.fifo").fifo().build();
        let _ = tokio::time::timeout(Duration::from_millis(100), q.receive(&request(10, 20))).await;
        q.send(&OutgoingMessage::new("g1").group_id("g")).await.unwrap();
        q.send(&OutgoingMessage::new("g2").group_id("g")).await.unwrap();
        tokio::task::yield_now().await;
        assert!(q.receive(&request(10, 0)).await.unwrap().is_empty(), "the group is held by nobody");
        tokio::time::sleep(Duration::from_secs(30)).await;
        let back = q.receive(&request(10, 0)).await.unwrap();
        assert_eq!(back.iter().map(Message::body).collect::<Vec<_>>(), ["g1", "g2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_messages_wait_and_wake_a_long_poll() {
        let q = MemoryQueue::new("delay");
        q.send(&OutgoingMessage::new("later").delay(Duration::from_secs(5))).await.unwrap();
        assert_eq!(q.visible_len(), 0);
        let start = Instant::now();
        let got = q.receive(&request(1, 20)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn redrive_moves_a_message_after_max_receives() {
        let dlq = MemoryQueue::new("dlq");
        let q = MemoryQueue::builder("main").redrive(&dlq, 2).visibility_timeout(Duration::from_secs(1)).build();
        q.send(&OutgoingMessage::new("poison")).await.unwrap();
        let mut short = request(1, 0);
        short.visibility_timeout = Duration::ZERO; // the queue default, 1 s
        for n in 1..=2 {
            let got = q.receive(&short).await.unwrap();
            assert_eq!(got[0].receive_count(), n);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        assert!(q.receive(&short).await.unwrap().is_empty());
        assert!(q.is_empty());
        assert_eq!(dlq.bodies(), vec!["poison".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_delivers_in_group_order_and_holds_a_busy_group() {
        let q = MemoryQueue::builder("f.fifo").fifo().build();
        for (g, b) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2")] {
            q.send(&OutgoingMessage::new(b).group_id(g)).await.unwrap();
        }
        let first = q.receive(&request(1, 0)).await.unwrap();
        assert_eq!(first[0].body(), "a1");
        // group a is held while a1 is in flight
        let next: Vec<_> = q.receive(&request(10, 0)).await.unwrap();
        assert_eq!(next.iter().map(Message::body).collect::<Vec<_>>(), ["b1", "b2"]);
        assert!(q.receive(&request(10, 0)).await.unwrap().is_empty());
        // releasing a1 makes it (not a2) the next of group a
        let failures = q.change_visibility_batch(&[entry("r", &first[0].receipt_handle, 0)]).await.unwrap();
        assert!(failures.is_empty());
        let again = q.receive(&request(10, 0)).await.unwrap();
        assert_eq!(again.iter().map(Message::body).collect::<Vec<_>>(), ["a1", "a2"]);
        assert_eq!(again[0].group_id(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_carries_the_system_attributes_sqs_sends() {
        let q = MemoryQueue::builder("attrs.fifo").fifo().visibility_timeout(Duration::from_secs(1)).build();
        q.send(&OutgoingMessage::new("x").group_id("g7").deduplication_id("d-1")).await.unwrap();
        let before = SystemTime::now();
        let mut short = request(1, 0);
        short.visibility_timeout = Duration::ZERO;
        let first = q.receive(&short).await.unwrap().pop().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = q.receive(&short).await.unwrap().pop().unwrap();
        let a = second.attributes();
        assert_eq!(a.get("ApproximateReceiveCount").map(String::as_str), Some("2"));
        assert_eq!(a.get("MessageGroupId").map(String::as_str), Some("g7"));
        assert_eq!(a.get("MessageDeduplicationId").map(String::as_str), Some("d-1"));
        assert_eq!(a.get("SequenceNumber"), first.attributes().get("SequenceNumber"));
        assert_eq!(a.get("SequenceNumber").map(String::len), Some(20));
        // The first receive's time, kept by the second; the send's time in whole milliseconds.
        assert_eq!(
            a.get("ApproximateFirstReceiveTimestamp"),
            first.attributes().get("ApproximateFirstReceiveTimestamp")
        );
        let ms = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
        let sent: u128 = a["SentTimestamp"].parse().unwrap();
        assert_eq!(sent, ms(second.sent_timestamp().unwrap()));
        assert!(sent <= ms(before));
        assert_eq!(a.len(), 6, "{a:?}");
        // The typed fields agree with the map.
        assert_eq!((second.receive_count(), second.group_id()), (2, Some("g7")));
        // A standard queue's delivery: no FIFO fields.
        let plain = MemoryQueue::new("attrs");
        plain.send(&OutgoingMessage::new("y")).await.unwrap();
        let m = plain.receive(&request(1, 0)).await.unwrap().pop().unwrap();
        let mut names: Vec<&str> = m.attributes().keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["ApproximateFirstReceiveTimestamp", "ApproximateReceiveCount", "SentTimestamp"]);
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_deduplicates_within_five_minutes() {
        let q = MemoryQueue::builder("d.fifo").fifo().build();
        let a = q.send(&OutgoingMessage::new("x").group_id("g").deduplication_id("1")).await.unwrap();
        let b = q.send(&OutgoingMessage::new("x").group_id("g").deduplication_id("1")).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(q.len(), 1);
        assert!(q.send(&OutgoingMessage::new("no group")).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn batches_check_ids_and_report_failures_per_entry() {
        let q = MemoryQueue::new("batch");
        q.send(&OutgoingMessage::new("a")).await.unwrap();
        let m = q.receive(&request(1, 0)).await.unwrap().pop().unwrap();
        let dup = [entry("x", &m.receipt_handle, 0), entry("x", "other", 0)];
        assert_eq!(q.delete_batch(&dup).await.unwrap_err().code.as_deref(), Some("BatchEntryIdsNotDistinct"));
        assert!(q.delete_batch(&[entry("bad id!", "r", 0)]).await.is_err());
        let too_many: Vec<_> = (0..11).map(|i| entry(&i.to_string(), "r", 0)).collect();
        assert!(q.delete_batch(&too_many).await.is_err());
        let failures = q.delete_batch(&[entry("ok", &m.receipt_handle, 0), entry("bad", "garbage", 0)]).await.unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].id, "bad");
        assert!(failures[0].sender_fault);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn visibility_beyond_twelve_hours_is_refused() {
        let q = MemoryQueue::new("cap");
        q.send(&OutgoingMessage::new("a")).await.unwrap();
        let m = q.receive(&request(1, 0)).await.unwrap().pop().unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let f = q.change_visibility_batch(&[entry("a", &m.receipt_handle, 43_200)]).await.unwrap();
        assert_eq!(f[0].code, "InvalidParameterValue");
        let f = q.change_visibility_batch(&[entry("a", &m.receipt_handle, 43_190)]).await.unwrap();
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn bodies_up_to_the_sqs_maximum_are_accepted() {
        let q = MemoryQueue::new("size");
        q.send(&OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES))).await.unwrap();
        assert!(q.send(&OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES + 1))).await.is_err());
    }
}
