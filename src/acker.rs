//! Batched acknowledgements: deletes and visibility changes, ten per call.
//!
//! Handlers' results arrive on a channel. Each kind waits in its own batch until ten are
//! waiting or the oldest has waited the flush interval, then goes out as one
//! `DeleteMessageBatch` or `ChangeMessageVisibilityBatch`. Entries that fail for a reason
//! that can heal (throttling, a server error, a dropped connection) are retried with
//! backoff; entries SQS refuses for good (a stale receipt handle) are logged. When every
//! sender is gone, whatever is pending is flushed before the task ends.
//!
//! The requests in flight run inside the acker's own task, not as tasks of their own, and a
//! request that panics loses only its batch (whose messages come back after their
//! visibility timeout).
//!
//! Acknowledgements not yet answered by SQS are counted ([`Backlog`]): when deletes fall
//! behind the handlers (a slow or failing SQS, too few requests in flight for the rate), the
//! pollers stop taking messages until half the backlog is gone, instead of piling up
//! messages whose visibility runs out before their delete is sent.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::Message;
use crate::queue::{BATCH_MAX, BatchEntry, Queue};
use crate::telemetry::Telemetry;

/// Attempts per batch entry before it is given up (the message then comes back after its
/// visibility timeout, so nothing is lost, it is only delivered again).
const MAX_ATTEMPTS: u32 = 5;

/// A batch's entry ids: each entry's place in it.
const ENTRY_IDS: [&str; BATCH_MAX] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Acknowledgements taken off the channel at one wake of the acker.
const RECEIVE_AT_ONCE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Delete,
    Visibility,
}

#[derive(Debug)]
struct Request {
    kind: Kind,
    message_id: Arc<str>,
    receipt_handle: Arc<str>,
    visibility: Duration,
}

/// Counts of what the acker achieved.
#[derive(Debug, Default)]
pub(crate) struct AckStats {
    pub(crate) deleted: AtomicU64,
    pub(crate) delete_failed: AtomicU64,
}

/// The acknowledgements sent to the acker and not yet settled (answered by SQS, or given
/// up): queued, batching, or in a request. At `limit` the pollers wait until it is down to
/// `resume`.
#[derive(Debug)]
pub(crate) struct Backlog {
    waiting: AtomicUsize,
    limit: usize,
    resume: usize,
    behind: AtomicBool,
    settled: Notify,
    /// Milliseconds since `start` of the last warning about it, so that a saturated acker
    /// logs once a minute, not at every pause.
    warned_ms: AtomicU64,
    start: Instant,
}

/// At most one warning a minute about acknowledgements behind.
const BEHIND_WARN_EVERY: Duration = Duration::from_secs(60);

impl Backlog {
    /// A backlog that holds the pollers at `limit` acknowledgements, until half are settled.
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(BATCH_MAX);
        Self {
            waiting: AtomicUsize::new(0),
            limit,
            resume: limit / 2,
            behind: AtomicBool::new(false),
            settled: Notify::new(),
            warned_ms: AtomicU64::new(u64::MAX),
            start: Instant::now(),
        }
    }

    /// Acknowledgements not yet settled.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn settle(&self, n: usize) {
        let left = self.waiting.fetch_sub(n, Ordering::SeqCst) - n;
        if left <= self.resume && self.behind.swap(false, Ordering::SeqCst) {
            tracing::debug!(waiting = left, "acknowledgements caught up: receiving again");
            self.settled.notify_waiters();
        }
    }

    /// Whether a poller should wait before it takes more messages.
    pub(crate) fn is_behind(&self) -> bool {
        self.behind.load(Ordering::SeqCst) || self.waiting() >= self.limit
    }

    /// Returns once there is room for more messages: at once below the limit; else when the
    /// backlog is down to half (each request ends within its retries, so this is bounded).
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.behind.load(Ordering::SeqCst) {
                let waiting = self.waiting();
                if waiting < self.limit {
                    return;
                }
                if !self.behind.swap(true, Ordering::SeqCst) {
                    self.report(waiting);
                }
            }
            // Settled meanwhile, before `behind` was set: nobody else will say so.
            if self.waiting() <= self.resume && self.behind.swap(false, Ordering::SeqCst) {
                self.settled.notify_waiters();
                return;
            }
            notified.await;
        }
    }

    fn report(&self, waiting: usize) {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.warned_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= BEHIND_WARN_EVERY.as_millis() as u64;
        if due && self.warned_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(
                waiting,
                resume_at = self.resume,
                "acknowledgements are behind the handlers: receives paused until half are sent (SQS slow or failing, or too few requests in flight for the rate: raise HOLDFAST_ACK_CONCURRENCY); said at most once a minute"
            );
        } else {
            tracing::debug!(waiting, resume_at = self.resume, "acknowledgements behind: receives paused");
        }
    }
}

/// The sending side; cheap to clone. The acker task ends once every clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Acker {
    tx: mpsc::UnboundedSender<Request>,
    backlog: Arc<Backlog>,
}

impl Acker {
    #[cfg(test)]
    pub(crate) fn spawn(
        queue: Queue,
        interval: Duration,
        concurrency: usize,
    ) -> (Acker, Arc<AckStats>, tokio::task::JoinHandle<()>) {
        let telemetry = Telemetry::detached(queue.url());
        Self::spawn_observed(queue, interval, concurrency, 1_000, telemetry)
    }

    /// The acker of `queue`, reporting to `telemetry`, for a worker of `slots` handler
    /// slots: it lets the acknowledgements not yet settled reach twice the slots, or twice
    /// what its `concurrency` requests carry, whichever is more, before the pollers wait.
    pub(crate) fn spawn_observed(
        queue: Queue,
        interval: Duration,
        concurrency: usize,
        slots: usize,
        telemetry: Telemetry,
    ) -> (Acker, Arc<AckStats>, tokio::task::JoinHandle<()>) {
        let concurrency = concurrency.max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(AckStats::default());
        let backlog = Arc::new(Backlog::new(2 * slots.max(BATCH_MAX * concurrency)));
        let task = tokio::spawn(run(queue, interval, concurrency, rx, stats.clone(), telemetry, backlog.clone()));
        (Acker { tx, backlog }, stats, task)
    }

    /// The acknowledgements not yet settled, which hold the pollers back when behind.
    pub(crate) fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    /// Deletes the message.
    pub(crate) fn delete(&self, message: &Message) {
        self.send(Kind::Delete, message, Duration::ZERO);
    }

    /// Makes the message visible again after `visibility` (zero: at once).
    pub(crate) fn change_visibility(&self, message: &Message, visibility: Duration) {
        self.send(Kind::Visibility, message, visibility);
    }

    fn send(&self, kind: Kind, message: &Message, visibility: Duration) {
        let request = Request {
            kind,
            message_id: message.id.clone(),
            receipt_handle: message.receipt_handle.clone(),
            visibility,
        };
        self.backlog.waiting.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(request).is_err() {
            self.backlog.settle(1);
            // Only possible if the acker task died; the message comes back after its
            // visibility timeout.
            tracing::error!(message_id = %message.id, "acknowledgement dropped: the acker has stopped");
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    requests: VecDeque<Request>,
    since: Option<Instant>,
}

impl Pending {
    fn push(&mut self, request: Request) {
        self.since.get_or_insert_with(Instant::now);
        self.requests.push_back(request);
    }

    fn ready(&self, now: Instant, interval: Duration, closing: bool) -> bool {
        self.requests.len() >= BATCH_MAX
            || self.since.is_some_and(|since| closing || now.duration_since(since) >= interval)
    }

    fn take(&mut self) -> Vec<Request> {
        let n = self.requests.len().min(BATCH_MAX);
        let batch: Vec<Request> = self.requests.drain(..n).collect();
        self.since = if self.requests.is_empty() { None } else { Some(Instant::now()) };
        batch
    }

    fn due(&self, interval: Duration) -> Option<Instant> {
        self.since.map(|since| since + interval)
    }
}

async fn run(
    queue: Queue,
    interval: Duration,
    concurrency: usize,
    mut rx: mpsc::UnboundedReceiver<Request>,
    stats: Arc<AckStats>,
    telemetry: Telemetry,
    backlog: Arc<Backlog>,
) {
    let mut incoming = Vec::with_capacity(RECEIVE_AT_ONCE);
    let mut deletes = Pending::default();
    let mut changes = Pending::default();
    // The requests in flight run inside this task, not as tasks of their own: a batch costs
    // no task spawn, and a request the queue answers at once (the memory queue) is done at
    // its first poll.
    let mut in_flight = FuturesUnordered::new();
    let settle = |(outcome, sent): (std::thread::Result<()>, usize)| {
        if outcome.is_err() {
            // Its messages come back after their visibility timeout.
            tracing::error!(
                entries = sent,
                "an acknowledgement request panicked; its messages will be delivered again"
            );
        }
        backlog.settle(sent);
    };
    // One timer for the flush interval, moved when the oldest pending entry changes, rather
    // than a timer made and dropped at every wake.
    let flush = tokio::time::sleep_until(Instant::now());
    tokio::pin!(flush);
    let mut open = true;
    loop {
        let now = Instant::now();
        // Send what is ready while there is room; requests the queue answers at once (the
        // memory queue) are settled here, making room for the next without another wake.
        loop {
            for pending in [&mut deletes, &mut changes] {
                while in_flight.len() < concurrency && pending.ready(now, interval, !open) {
                    let batch = pending.take();
                    let sent = batch.len();
                    let send = send_batch(queue.clone(), batch, stats.clone(), telemetry.clone());
                    in_flight
                        .push(std::panic::AssertUnwindSafe(send).catch_unwind().map(move |outcome| (outcome, sent)));
                }
            }
            let mut settled = false;
            while let Some(Some(done)) = in_flight.next().now_or_never() {
                settle(done);
                settled = true;
            }
            if !settled {
                break;
            }
        }
        if !open && deletes.requests.is_empty() && changes.requests.is_empty() && in_flight.is_empty() {
            return;
        }
        let next_due = [deletes.due(interval), changes.due(interval)].into_iter().flatten().min();
        if let Some(due) = next_due.filter(|due| *due != flush.deadline()) {
            flush.as_mut().reset(due);
        }
        tokio::select! {
            biased;
            // Polled with this task's waker before it waits, so a request finishing later
            // wakes it.
            Some(done) = in_flight.next(), if !in_flight.is_empty() => settle(done),
            received = rx.recv_many(&mut incoming, RECEIVE_AT_ONCE), if open => {
                open = received > 0;
                for r in incoming.drain(..) {
                    if r.kind == Kind::Delete { deletes.push(r) } else { changes.push(r) }
                }
                // Part of a batch: let the tasks ready now run first (a handler that finishes
                // meanwhile adds its acknowledgement without waking this task), then take
                // theirs. With nothing new after that, this task waits as before.
                if open && [&deletes, &changes].iter().any(|p| p.requests.len() % BATCH_MAX != 0) {
                    tokio::task::yield_now().await;
                }
            }
            _ = &mut flush, if next_due.is_some() && in_flight.len() < concurrency => {}
        }
    }
}

async fn send_batch(queue: Queue, mut batch: Vec<Request>, stats: Arc<AckStats>, telemetry: Telemetry) {
    let kind = batch[0].kind;
    let give_up = |kind, batch: &[Request], reason: &str, stats: &AckStats| {
        telemetry.ack_given_up(kind == Kind::Delete, batch.len());
        give_up(kind, batch, reason, stats);
    };
    for attempt in 1..=MAX_ATTEMPTS {
        let entries: Vec<BatchEntry> = batch
            .iter()
            .enumerate()
            .map(|(i, r)| BatchEntry {
                id: Cow::Borrowed(ENTRY_IDS[i]),
                receipt_handle: r.receipt_handle.clone(),
                visibility: r.visibility,
            })
            .collect();
        telemetry.ack_request(kind == Kind::Delete);
        let result = match kind {
            Kind::Delete => queue.delete_batch(&entries).await,
            Kind::Visibility => queue.change_visibility_batch(&entries).await,
        };
        telemetry.ack_result(result.as_ref().is_ok_and(|f| f.iter().all(|f| f.sender_fault)));
        let failures = match result {
            Ok(failures) => failures,
            Err(error) if error.is_permanent() => {
                give_up(kind, &batch, &error.to_string(), &stats);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, attempt, entries = batch.len(), "{} batch failed; retrying", name(kind));
                tokio::time::sleep(Duration::from_millis(100) * 2u32.pow(attempt - 1)).await;
                continue;
            }
        };
        let mut retry = Vec::new();
        for (i, request) in batch.into_iter().enumerate() {
            match failures.iter().find(|f| f.id == ENTRY_IDS[i]) {
                None => {
                    if kind == Kind::Delete {
                        stats.deleted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(f) if f.sender_fault => {
                    give_up(kind, std::slice::from_ref(&request), &format!("{}: {}", f.code, f.message), &stats)
                }
                Some(f) => {
                    tracing::warn!(message_id = %request.message_id, code = %f.code, attempt, "{} entry failed; retrying", name(kind));
                    retry.push(request);
                }
            }
        }
        if retry.is_empty() {
            return;
        }
        batch = retry;
        tokio::time::sleep(Duration::from_millis(100) * 2u32.pow(attempt - 1)).await;
    }
    give_up(kind, &batch, &format!("still failing after {MAX_ATTEMPTS} attempts"), &stats);
}

fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Delete => "DeleteMessageBatch",
        Kind::Visibility => "ChangeMessageVisibilityBatch",
    }
}

fn give_up(kind: Kind, batch: &[Request], reason: &str, stats: &AckStats) {
    for request in batch {
        match kind {
            Kind::Delete => {
                stats.delete_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(message_id = %request.message_id, "delete failed, the message will be delivered again: {reason}");
            }
            Kind::Visibility => {
                tracing::warn!(message_id = %request.message_id, "visibility change failed, the message keeps its current timeout: {reason}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{BatchFailure, MemoryQueue, OutgoingMessage, QueueBackend, QueueError, ReceiveRequest};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// A queue whose deletes fail the first time for chosen receipts (as SQS does with
    /// `InternalError` entries in `Failed[]`), recording every call.
    struct Flaky {
        inner: MemoryQueue,
        fail_once: Mutex<Vec<String>>,
        calls: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl QueueBackend for Flaky {
        async fn receive(&self, r: &ReceiveRequest) -> Result<Vec<Message>, QueueError> {
            self.inner.receive(r).await
        }
        async fn delete_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
            self.calls.lock().unwrap().push(entries.len());
            let (failing, passing): (Vec<_>, Vec<_>) = {
                let mut fail_once = self.fail_once.lock().unwrap();
                let split: (Vec<_>, Vec<_>) =
                    entries.iter().cloned().partition(|e| fail_once.iter().any(|r| **r == *e.receipt_handle));
                fail_once.retain(|r| !split.0.iter().any(|e| *e.receipt_handle == **r));
                split
            };
            let mut failures = if passing.is_empty() { Vec::new() } else { self.inner.delete_batch(&passing).await? };
            failures.extend(failing.into_iter().map(|e| BatchFailure {
                id: e.id.into_owned(),
                code: "InternalError".into(),
                message: "try again".into(),
                sender_fault: false,
            }));
            Ok(failures)
        }
        async fn change_visibility_batch(&self, e: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
            self.inner.change_visibility_batch(e).await
        }
        async fn send(&self, m: &OutgoingMessage) -> Result<String, QueueError> {
            self.inner.send(m).await
        }
    }

    async fn receive_all(queue: &Queue, n: usize) -> Vec<Message> {
        let mut out = Vec::new();
        while out.len() < n {
            let request = ReceiveRequest {
                max_messages: 10,
                wait_time: Duration::ZERO,
                visibility_timeout: Duration::from_secs(30),
                attempt_id: None,
                system_attributes: crate::queue::SystemAttributeNames::ALL,
            };
            out.extend(queue.receive(&request).await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn deletes_go_out_in_batches_of_ten_and_the_rest_on_the_interval() {
        let memory = MemoryQueue::new("ack");
        let queue = Queue::memory(&memory);
        for i in 0..25 {
            queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let messages = receive_all(&queue, 25).await;
        let (acker, stats, task) = Acker::spawn(queue.clone(), Duration::from_millis(100), 4);
        for m in &messages {
            acker.delete(m);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(queue.request_counts().delete, 2, "two full batches go at once");
        assert_eq!(memory.len(), 5);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(queue.request_counts().delete, 3, "the remaining 5 go after the interval");
        assert!(memory.is_empty());
        drop(acker);
        task.await.unwrap();
        assert_eq!(stats.deleted.load(Ordering::Relaxed), 25);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_deletes_are_flushed_when_the_senders_are_gone() {
        let memory = MemoryQueue::new("flush");
        let queue = Queue::memory(&memory);
        queue.send(OutgoingMessage::new("x")).await.unwrap();
        let messages = receive_all(&queue, 1).await;
        let (acker, _, task) = Acker::spawn(queue.clone(), Duration::from_secs(5), 1);
        acker.delete(&messages[0]);
        drop(acker);
        task.await.unwrap();
        assert!(memory.is_empty(), "flushed without waiting for the interval");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_failure_is_retried_by_receipt() {
        let memory = MemoryQueue::new("partial");
        let seed = Queue::memory(&memory);
        for i in 0..10 {
            seed.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let messages = receive_all(&seed, 10).await;
        let flaky = Flaky {
            inner: memory.clone(),
            fail_once: Mutex::new(vec![messages[3].receipt_handle.to_string(), messages[7].receipt_handle.to_string()]),
            calls: Mutex::new(Vec::new()),
        };
        let queue = Queue::from_backend("memory://partial".into(), false, flaky);
        let (acker, stats, task) = Acker::spawn(queue.clone(), Duration::from_millis(100), 4);
        for m in &messages {
            acker.delete(m);
        }
        drop(acker);
        task.await.unwrap();
        assert!(memory.is_empty(), "the two failed entries were retried and deleted");
        assert_eq!(stats.deleted.load(Ordering::Relaxed), 10);
        assert_eq!(stats.delete_failed.load(Ordering::Relaxed), 0);
        assert_eq!(queue.request_counts().delete, 2, "one batch of 10, one retry of the 2 failed");
    }

    /// A queue whose first delete panics.
    struct Panicky {
        inner: MemoryQueue,
        panicked: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl QueueBackend for Panicky {
        async fn receive(&self, r: &ReceiveRequest) -> Result<Vec<Message>, QueueError> {
            self.inner.receive(r).await
        }
        async fn delete_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
            if !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("a bug in a queue client");
            }
            self.inner.delete_batch(entries).await
        }
        async fn change_visibility_batch(&self, e: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
            self.inner.change_visibility_batch(e).await
        }
        async fn send(&self, m: &OutgoingMessage) -> Result<String, QueueError> {
            self.inner.send(m).await
        }
    }

    /// A request that panics loses only its own batch (delivered again later): the acker goes
    /// on, and the backlog that holds the pollers back counts that batch as settled.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_request_settles_its_batch_and_the_acker_goes_on() {
        let memory = MemoryQueue::new("panicky");
        let seed = Queue::memory(&memory);
        for i in 0..20 {
            seed.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let messages = receive_all(&seed, 20).await;
        let queue = Queue::from_backend(
            "memory://panicky".into(),
            false,
            Panicky { inner: memory.clone(), panicked: Default::default() },
        );
        let (acker, stats, task) = Acker::spawn(queue.clone(), Duration::from_millis(100), 4);
        let backlog = acker.backlog().clone();
        for m in &messages[..10] {
            acker.delete(m);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(backlog.waiting(), 0, "the panicked batch is settled");
        for m in &messages[10..] {
            acker.delete(m);
        }
        drop(acker);
        task.await.expect("the acker survives the panic");
        assert_eq!(stats.deleted.load(Ordering::Relaxed), 10, "the second batch is deleted");
        assert_eq!(memory.len(), 10, "the first batch's messages stay, to come back");
        assert_eq!(backlog.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_receipt_is_given_up_not_retried() {
        let memory = MemoryQueue::new("stale");
        let queue = Queue::memory(&memory);
        let mut bogus = Message::new("m", "b");
        bogus.receipt_handle = "garbage".into();
        let (acker, stats, task) = Acker::spawn(queue.clone(), Duration::from_millis(100), 4);
        acker.delete(&bogus);
        drop(acker);
        task.await.unwrap();
        assert_eq!(queue.request_counts().delete, 1);
        assert_eq!(stats.delete_failed.load(Ordering::Relaxed), 1);
    }
}
