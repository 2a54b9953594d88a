//! The visibility heartbeat: one loop keeps every in-flight message invisible.
//!
//! Each handled message holds a lease: its receipt handle and when its visibility runs out.
//! The loop wakes every heartbeat interval, takes the leases with less than half their
//! period left, and extends them with `ChangeMessageVisibilityBatch`, ten per call. SQS
//! refuses (rather than clamps) a visibility that would keep a message in flight more than
//! 12 hours after it was received, so the last extension stops short of that; past it the
//! lease is lost and the handler's token is cancelled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::Message;
use crate::config::MAX_VISIBILITY;
use crate::queue::{BATCH_MAX, BatchEntry, Queue};
use crate::telemetry::Telemetry;

/// Kept between the last extension and SQS's 12-hour limit: our clock starts when the
/// response arrived, SQS's a little earlier.
const CAP_MARGIN: Duration = Duration::from_secs(30);

/// Heartbeat calls in flight at once.
const HEARTBEAT_CONCURRENCY: usize = 4;

#[derive(Debug)]
struct Lease {
    message_id: Arc<str>,
    receipt_handle: Arc<str>,
    received_at: Instant,
    expires_at: Instant,
    period: Duration,
    token: Token,
}

/// A lease's cancellation token, made only when something asks for it: most handlers never
/// look at theirs, and a token costs an allocation and a lock at each clone, cancel and drop.
#[derive(Debug)]
enum Token {
    /// Not asked for yet, not cancelled.
    Unmade,
    /// Cancelled before anyone asked: the token made later starts cancelled.
    Cancelled,
    Made(CancellationToken),
}

impl Token {
    fn get(&mut self) -> CancellationToken {
        let token = match std::mem::replace(self, Token::Unmade) {
            Token::Made(token) => token,
            Token::Unmade => CancellationToken::new(),
            Token::Cancelled => cancelled(),
        };
        *self = Token::Made(token.clone());
        token
    }

    fn cancel(&mut self) {
        match self {
            Token::Made(token) => token.cancel(),
            Token::Unmade => *self = Token::Cancelled,
            Token::Cancelled => {}
        }
    }
}

fn cancelled() -> CancellationToken {
    let token = CancellationToken::new();
    token.cancel();
    token
}

#[derive(Debug)]
struct Shared {
    queue: Queue,
    visibility: Duration,
    interval: Duration,
    /// By lease id. The ids are this process's own counter, so a fast hash will do
    /// (SipHash's resistance to chosen keys buys nothing here, at two hashes a message).
    leases: Mutex<HashMap<u64, Lease, foldhash::fast::RandomState>>,
    next_id: AtomicU64,
    telemetry: Telemetry,
}

/// The registry of in-flight messages and its heartbeat loop.
#[derive(Debug, Clone)]
pub(crate) struct Leases {
    shared: Arc<Shared>,
}

/// One message's lease, held by the task that handles it; dropping it ends the lease (the
/// message was acknowledged, retried or released). Its entry leaves the registry only then
/// or when the lease is lost, so a live handle whose entry is gone has lost its lease.
#[derive(Debug)]
pub(crate) struct LeaseHandle {
    lease: LeaseRef,
}

/// What a handler's [`Context`](crate::Context) holds of a lease: enough to extend it while
/// it lasts, nothing that keeps it alive. A context cloned past its handler's return finds
/// the lease ended (ids are never reused) instead of keeping the heartbeat on a message
/// already settled; and a message's context costs no allocation of its own.
#[derive(Debug, Clone)]
pub(crate) struct LeaseRef {
    shared: Arc<Shared>,
    id: u64,
}

fn cap_left(received_at: Instant, now: Instant) -> Duration {
    (received_at + MAX_VISIBILITY).saturating_duration_since(now).saturating_sub(CAP_MARGIN)
}

/// Whole seconds, as SQS takes them, never rounding past `limit`.
fn whole_seconds(wanted: Duration, limit: Duration) -> Duration {
    Duration::from_secs(wanted.min(limit).as_secs())
}

impl Leases {
    #[cfg(test)]
    pub(crate) fn new(queue: Queue, visibility: Duration, interval: Duration) -> Self {
        let telemetry = Telemetry::detached(queue.url());
        Self::observed(queue, visibility, interval, telemetry)
    }

    /// The registry of `queue`'s leases, reporting to `telemetry`.
    pub(crate) fn observed(queue: Queue, visibility: Duration, interval: Duration, telemetry: Telemetry) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue,
                visibility,
                interval,
                leases: Mutex::new(HashMap::default()),
                next_id: AtomicU64::new(0),
                telemetry,
            }),
        }
    }

    /// Registers a received message. Its token (`token`, or one made when first asked for
    /// through [`LeaseRef::token`]) is cancelled when the lease is lost, when
    /// [`LeaseRef::cancel`] is called, and when the lease ends.
    pub(crate) fn register(&self, message: &Message, token: Option<CancellationToken>) -> LeaseHandle {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let lease = Lease {
            message_id: message.id.clone(),
            receipt_handle: message.receipt_handle.clone(),
            received_at: message.received_at,
            expires_at: message.received_at + self.shared.visibility,
            period: self.shared.visibility,
            token: token.map_or(Token::Unmade, Token::Made),
        };
        self.shared.leases.lock().expect("lease registry poisoned").insert(id, lease);
        LeaseHandle { lease: LeaseRef { shared: self.shared.clone(), id } }
    }

    /// Leases held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shared.leases.lock().expect("lease registry poisoned").len()
    }

    /// The heartbeat loop; returns when `stop` is cancelled.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.shared.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.shared.telemetry.heartbeat(self.shared.interval);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = self.beat() => {}
            }
        }
    }

    /// One pass: extend every lease with less than half its period left.
    async fn beat(&self) {
        let now = Instant::now();
        let mut due: Vec<(u64, BatchEntry)> = Vec::new();
        {
            let mut leases = self.shared.leases.lock().expect("lease registry poisoned");
            leases.retain(|&id, lease| {
                if lease.expires_at <= now {
                    lose(&self.shared.telemetry, lease, "its visibility ran out before it could be extended");
                    return false;
                }
                if lease.expires_at.saturating_duration_since(now) > lease.period / 2 {
                    return true;
                }
                let left = cap_left(lease.received_at, now);
                if left < Duration::from_secs(1) {
                    // Nothing more can be asked for; the lease ends when the current
                    // visibility does.
                    return true;
                }
                let visibility = whole_seconds(lease.period, left);
                due.push((
                    id,
                    BatchEntry {
                        id: format!("l{id}").into(),
                        receipt_handle: lease.receipt_handle.clone(),
                        visibility,
                    },
                ));
                true
            });
        }
        if due.is_empty() {
            return;
        }
        let chunks: Vec<Vec<(u64, BatchEntry)>> = due.chunks(BATCH_MAX).map(<[_]>::to_vec).collect();
        futures::stream::iter(chunks)
            .map(|chunk| self.extend_chunk(chunk, now))
            .buffer_unordered(HEARTBEAT_CONCURRENCY)
            .collect::<()>()
            .await;
    }

    async fn extend_chunk(&self, chunk: Vec<(u64, BatchEntry)>, sent_at: Instant) {
        let entries: Vec<BatchEntry> = chunk.iter().map(|(_, e)| e.clone()).collect();
        self.shared.telemetry.ack_request(false);
        let failures = match self.shared.queue.change_visibility_batch(&entries).await {
            Ok(failures) => failures,
            Err(error) => {
                // The leases keep their old expiry; the next beat tries again, and a lease
                // that runs out meanwhile is reported lost.
                tracing::warn!(%error, messages = entries.len(), "visibility heartbeat failed; will retry");
                return;
            }
        };
        let mut leases = self.shared.leases.lock().expect("lease registry poisoned");
        for (id, entry) in chunk {
            let Some(lease) = leases.get_mut(&id) else { continue };
            match failures.iter().find(|f| f.id == entry.id) {
                None => {
                    self.shared.telemetry.leases_extended(1);
                    lease.expires_at = sent_at + entry.visibility;
                    tracing::debug!(message_id = %lease.message_id, visibility_s = entry.visibility.as_secs(), "heartbeat: visibility extended");
                }
                Some(failure) if failure.sender_fault => {
                    let reason = format!("SQS refused to extend it: {}: {}", failure.code, failure.message);
                    lose(&self.shared.telemetry, lease, &reason);
                    leases.remove(&id);
                }
                Some(failure) => {
                    tracing::warn!(message_id = %lease.message_id, code = %failure.code, "lease extension failed; will retry");
                }
            }
        }
    }
}

fn lose(telemetry: &Telemetry, lease: &mut Lease, reason: &str) {
    telemetry.lease_lost(&lease.message_id);
    lease.token.cancel();
    let in_flight = lease.received_at.elapsed();
    tracing::error!(
        message_id = %lease.message_id,
        in_flight_s = in_flight.as_secs(),
        "lease lost: {reason}; the message may be delivered again, the handler is asked to stop"
    );
}

impl LeaseHandle {
    /// Whether the lease was lost (the message may already be visible again): its entry
    /// is gone from the registry while this handle lives.
    pub(crate) fn is_lost(&self) -> bool {
        !self.lease.shared.leases.lock().expect("lease registry poisoned").contains_key(&self.lease.id)
    }

    /// The reference a handler's context holds.
    pub(crate) fn to_ref(&self) -> LeaseRef {
        self.lease.clone()
    }
}

impl LeaseRef {
    /// The lease's cancellation token, made at the first call; cancelled already when the
    /// lease is lost or ended.
    pub(crate) fn token(&self) -> CancellationToken {
        match self.shared.leases.lock().expect("lease registry poisoned").get_mut(&self.id) {
            Some(lease) => lease.token.get(),
            None => cancelled(),
        }
    }

    /// Cancels the lease's token (the handler should stop), or has it start cancelled if it
    /// is not made yet.
    pub(crate) fn cancel(&self) {
        if let Some(lease) = self.shared.leases.lock().expect("lease registry poisoned").get_mut(&self.id) {
            lease.token.cancel();
        }
    }

    /// Extends the lease by `visibility` from now; an error once the lease is lost or ended.
    pub(crate) async fn extend(&self, visibility: Duration) -> Result<(), crate::Error> {
        let shared = &self.shared;
        let queue_error = |message: String| crate::Error::Queue { queue_url: shared.queue.url().to_owned(), message };
        let now = Instant::now();
        let entry = {
            let leases = shared.leases.lock().expect("lease registry poisoned");
            let lease = leases
                .get(&self.id)
                .ok_or_else(|| queue_error("the message's lease is lost, or ended with its handler's return".into()))?;
            let left = cap_left(lease.received_at, now);
            if visibility > left {
                return Err(queue_error(format!(
                    "cannot extend visibility by {}s: only {}s remain of SQS's 12-hour limit for message {}",
                    visibility.as_secs(),
                    left.as_secs(),
                    lease.message_id
                )));
            }
            BatchEntry {
                id: "extend".into(),
                receipt_handle: lease.receipt_handle.clone(),
                visibility: whole_seconds(visibility, left),
            }
        };
        shared.telemetry.ack_request(false);
        let failures = shared
            .queue
            .change_visibility_batch(std::slice::from_ref(&entry))
            .await
            .map_err(|e| queue_error(format!("ChangeMessageVisibility failed: {e}")))?;
        if let Some(failure) = failures.first() {
            return Err(queue_error(format!("ChangeMessageVisibility refused: {}: {}", failure.code, failure.message)));
        }
        if let Some(lease) = shared.leases.lock().expect("lease registry poisoned").get_mut(&self.id) {
            lease.expires_at = now + entry.visibility;
            lease.period = entry.visibility.max(Duration::from_secs(1));
        }
        Ok(())
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        let ended = self.lease.shared.leases.lock().ok().and_then(|mut leases| leases.remove(&self.lease.id));
        // Outside the lock: a handler's clone of the context, kept past its return, may be
        // waiting on the token.
        if let Some(mut lease) = ended {
            lease.token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OutgoingMessage;
    use crate::queue::MemoryQueue;
    use crate::queue::ReceiveRequest;

    async fn received(queue: &Queue, visibility: Duration) -> Message {
        queue.send(OutgoingMessage::new("job")).await.unwrap();
        let request = ReceiveRequest {
            max_messages: 1,
            wait_time: Duration::ZERO,
            visibility_timeout: visibility,
            attempt_id: None,
            system_attributes: crate::queue::SystemAttributeNames::ALL,
        };
        queue.receive(&request).await.unwrap().pop().unwrap()
    }

    /// `Context::extend_visibility` reaches the lease of a single message's context and every
    /// lease of a batch's; a message whose context did not ask comes back on time.
    #[tokio::test(start_paused = true)]
    async fn a_context_extends_the_visibility_of_each_of_its_messages() {
        use crate::context::ContextLeases;
        let memory = MemoryQueue::new("extend");
        let queue = Queue::memory(&memory);
        let visibility = Duration::from_secs(30);
        let leases = Leases::new(queue.clone(), visibility, Duration::from_secs(3600));
        let mut held = Vec::new();
        for _ in 0..4 {
            let msg = received(&queue, visibility).await;
            held.push(leases.register(&msg, None));
        }
        let context = |leases| crate::Context::new(CancellationToken::new(), leases, crate::Protection::off());
        let one = context(ContextLeases::One(held[0].to_ref()));
        let batch = context(ContextLeases::Many(vec![held[1].to_ref(), held[2].to_ref()].into()));
        one.extend_visibility(Duration::from_secs(600)).await.unwrap();
        batch.extend_visibility(Duration::from_secs(600)).await.unwrap();
        assert_eq!(queue.request_counts().change_visibility, 3, "one call per lease");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(memory.visible_len(), 1, "only the fourth message, never extended, is visible again");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_keeps_a_long_job_invisible_with_few_calls() {
        let memory = MemoryQueue::new("hb");
        let queue = Queue::memory(&memory);
        let visibility = Duration::from_secs(30);
        let msg = received(&queue, visibility).await;
        let leases = Leases::new(queue.clone(), visibility, Duration::from_secs(5));
        let token = CancellationToken::new();
        let lease = leases.register(&msg, Some(token.clone()));
        let stop = CancellationToken::new();
        let beat = tokio::spawn(leases.clone().run(stop.clone()));

        // Three visibility timeouts later the message is still in flight, never visible.
        for _ in 0..18 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(memory.visible_len(), 0, "message became visible");
        }
        assert!(!token.is_cancelled() && !lease.is_lost());
        // One extension per half period: 90 s / 15 s = 6 calls, give or take one.
        let calls = queue.request_counts().change_visibility;
        assert!((5..=7).contains(&calls), "{calls} heartbeat calls");
        drop(lease);
        assert_eq!(leases.len(), 0);
        stop.cancel();
        beat.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_batches_ten_leases_per_call() {
        let memory = MemoryQueue::new("batch");
        let queue = Queue::memory(&memory);
        let visibility = Duration::from_secs(30);
        let leases = Leases::new(queue.clone(), visibility, Duration::from_secs(5));
        let mut held = Vec::new();
        for _ in 0..25 {
            let msg = received(&queue, visibility).await;
            held.push(leases.register(&msg, None));
        }
        let stop = CancellationToken::new();
        let beat = tokio::spawn(leases.clone().run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(16)).await;
        // 25 leases due at once: three calls of 10, 10 and 5.
        assert_eq!(queue.request_counts().change_visibility, 3);
        assert_eq!(memory.visible_len(), 0);
        stop.cancel();
        beat.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_stops_short_of_twelve_hours_then_is_lost() {
        let memory = MemoryQueue::new("cap");
        let queue = Queue::memory(&memory);
        let visibility = Duration::from_secs(3600);
        let msg = received(&queue, visibility).await;
        let leases = Leases::new(queue.clone(), visibility, Duration::from_secs(600));
        let token = CancellationToken::new();
        let lease = leases.register(&msg, Some(token.clone()));
        let stop = CancellationToken::new();
        let beat = tokio::spawn(leases.clone().run(stop.clone()));

        tokio::time::sleep(Duration::from_secs(11 * 3600 + 1800)).await;
        assert!(!token.is_cancelled(), "still within 12 hours");
        assert_eq!(memory.visible_len(), 0);
        // The memory queue, like SQS, refuses any visibility past 12 h: no extension was
        // refused, so every one stayed within the cap.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(token.is_cancelled() && lease.is_lost(), "lease must be lost at the cap");
        assert_eq!(memory.visible_len(), 1, "SQS makes the message visible at 12 h");
        stop.cancel();
        beat.await.unwrap();
    }

    /// A single message's token is made only when its handler asks; whenever that is, it
    /// says what happened to the lease: cancelled before it was made, lost, or ended.
    #[tokio::test(start_paused = true)]
    async fn a_token_made_when_asked_for_follows_its_lease() {
        use crate::Protection;
        let memory = MemoryQueue::new("lazy");
        let queue = Queue::memory(&memory);
        let visibility = Duration::from_secs(30);
        let leases = Leases::new(queue.clone(), visibility, Duration::from_secs(3600));

        // Asked for twice, and by two clones of a context: one token.
        let handle = leases.register(&received(&queue, visibility).await, None);
        let ctx = crate::Context::single(handle.to_ref(), Protection::off());
        let early = ctx.clone();
        let token = ctx.token().clone();
        assert!(!token.is_cancelled());
        ctx.cancel();
        assert!(token.is_cancelled() && early.is_cancelled(), "every clone shares the one token");
        drop((ctx, early, handle));

        // Cancelled (the handler timed out, the drain deadline passed) before the handler
        // asked: the token it gets then starts cancelled.
        let handle = leases.register(&received(&queue, visibility).await, None);
        let ctx = crate::Context::single(handle.to_ref(), Protection::off());
        ctx.cancel();
        assert!(ctx.is_cancelled(), "a token made after the cancel starts cancelled");
        assert!(!handle.is_lost(), "cancelling is not losing the lease");
        drop((ctx, handle));

        // Made while the handler runs: cancelled when the lease ends with it, and one asked
        // for after that (a context kept past its handler) is cancelled already.
        let handle = leases.register(&received(&queue, visibility).await, None);
        let ctx = crate::Context::single(handle.to_ref(), Protection::off());
        let kept = ctx.clone();
        let made = ctx.token().clone();
        drop((ctx, handle));
        assert!(made.is_cancelled(), "the lease's end cancels its token");
        assert!(kept.is_cancelled());
        assert_eq!(leases.len(), 0);

        // Lost (the visibility ran out unextended): made before, cancelled by the loss; made
        // after, cancelled already.
        let before = leases.register(&received(&queue, visibility).await, None);
        let after = leases.register(&received(&queue, visibility).await, None);
        let made = before.to_ref().token();
        tokio::time::advance(visibility + Duration::from_secs(1)).await;
        leases.beat().await;
        assert!(before.is_lost() && after.is_lost());
        assert!(made.is_cancelled(), "the loss cancels a token made before it");
        assert!(after.to_ref().token().is_cancelled(), "a token made after the loss is cancelled");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_extension_cancels_the_handler() {
        let memory = MemoryQueue::new("refused");
        let queue = Queue::memory(&memory);
        let visibility = Duration::from_secs(30);
        let mut msg = received(&queue, visibility).await;
        msg.receipt_handle = "not-a-receipt".into();
        let leases = Leases::new(queue.clone(), visibility, Duration::from_secs(5));
        let token = CancellationToken::new();
        let lease = leases.register(&msg, Some(token.clone()));
        let stop = CancellationToken::new();
        let beat = tokio::spawn(leases.clone().run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(token.is_cancelled() && lease.is_lost());
        stop.cancel();
        beat.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn extend_resets_the_period() {
        let memory = MemoryQueue::new("extend");
        let queue = Queue::memory(&memory);
        let msg = received(&queue, Duration::from_secs(30)).await;
        let leases = Leases::new(queue.clone(), Duration::from_secs(30), Duration::from_secs(5));
        let handle = leases.register(&msg, None);
        // Extended as a handler's context does, through its reference.
        let lease = handle.to_ref();
        lease.extend(Duration::from_secs(600)).await.unwrap();
        let stop = CancellationToken::new();
        let beat = tokio::spawn(leases.clone().run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(290)).await;
        // No heartbeat needed yet: 600 s were granted.
        assert_eq!(queue.request_counts().change_visibility, 1);
        assert_eq!(memory.visible_len(), 0);
        assert!(lease.extend(Duration::from_secs(13 * 3600)).await.is_err(), "past the 12 h cap");
        stop.cancel();
        beat.await.unwrap();
    }
}
