//! The receive loop: polls only for free capacity and hands each message to its own task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::backoff::{EMPTY_PAUSE_MAX, empty_receive_pause, receive_backoff};
use crate::dispatch::Dispatcher;
use crate::queue::{Queue, QueueError, ReceiveRequest, SystemAttributeNames};

pub(crate) struct Poller {
    pub(crate) queue: Queue,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) tracker: TaskTracker,
    pub(crate) intake: CancellationToken,
    pub(crate) wait_time: Duration,
    pub(crate) visibility_timeout: Duration,
    /// How many slots one receive fills: the poller's part of the concurrency, ten at most.
    /// The parts of a queue's pollers add up to its share, so each can fill its batch.
    pub(crate) batch_target: usize,
    pub(crate) batch_window: Duration,
    /// Held by the one poller of the queue gathering slots: freed slots go to it until its
    /// batch is full, not a few to each poller, which would each wait out the batch window.
    pub(crate) gathering: Arc<Mutex<()>>,
    /// The receives the queue may have in flight at once (`receive_concurrency`), shared by
    /// its pollers.
    pub(crate) receives: Arc<Semaphore>,
    /// When a receive last returned messages, for exit-when-idle.
    pub(crate) activity: Arc<Activity>,
    /// How long a receive in flight at shutdown may take to finish (zero: dropped at once).
    pub(crate) shutdown_receive: Duration,
    /// The system attributes each receive asks for.
    pub(crate) system_attributes: SystemAttributeNames,
}

/// The time of the last receive that returned messages, and the receives in flight.
#[derive(Debug)]
pub(crate) struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
    receiving: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self { start: tokio::time::Instant::now(), last_ms: AtomicU64::new(0), receiving: AtomicUsize::new(0) }
    }

    /// Receives in flight now.
    pub(crate) fn receiving(&self) -> usize {
        self.receiving.load(Ordering::SeqCst)
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since a receive last returned messages (or since start).
    pub(crate) fn quiet_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

static ATTEMPTS: AtomicU64 = AtomicU64::new(0);

impl Poller {
    /// Polls until `intake` is cancelled (then `Ok`) or the queue fails in a way retrying
    /// cannot heal (then the error, saying what to fix).
    pub(crate) async fn run(self) -> Result<(), Error> {
        let mut failures = 0u32;
        let mut backlog = false;
        // Short polling: empty answers in a row.
        let mut empties = 0u32;
        // FIFO: a receive that failed in transit is retried with the same attempt id and
        // size, so SQS returns the messages it may already have handed out.
        let mut retry: Option<(ReceiveRequest, Vec<OwnedSemaphorePermit>)> = None;
        loop {
            let retrying = retry.is_some();
            let (request, mut permits) = match retry.take() {
                Some(pending) => pending,
                None => {
                    // The bounded hold's opening, in either mode: scheduled, with its own way
                    // out, so it is reported as a pause but never as unhealthy.
                    if self.dispatcher.protection.hold_paused() {
                        let _paused = self.dispatcher.telemetry.health().hold_pause();
                        tokio::select! {
                            biased;
                            _ = self.intake.cancelled() => return Ok(()),
                            _ = self.dispatcher.protection.hold_open() => {}
                        }
                    }
                    // Strict protection: take nothing while the task cannot be protected, nor
                    // before the last messages know whether they could be.
                    if self.dispatcher.protection.is_strict() {
                        let _paused = self.dispatcher.telemetry.health().pause();
                        tokio::select! {
                            biased;
                            _ = self.intake.cancelled() => return Ok(()),
                            _ = async {
                                self.dispatcher.protecting.settled().await;
                                self.dispatcher.protection.ready_for_work().await;
                            } => {}
                        }
                    }
                    let Some(permits) = self.take_slots(backlog).await else { return Ok(()) };
                    // Deletes behind the handlers: receive nothing more until half of what
                    // waits for one is settled (each request ends within its retries). Asked
                    // once the slots are free, so the handlers that freed them have acked.
                    let acks = self.dispatcher.acker.backlog();
                    if acks.is_behind() {
                        let _paused = self.dispatcher.telemetry.health().pause();
                        tokio::select! {
                            biased;
                            _ = self.intake.cancelled() => return Ok(()),
                            _ = acks.room() => {}
                        }
                    }
                    let attempt_id = self.queue.is_fifo().then(|| {
                        format!("holdfast-{}-{}", std::process::id(), ATTEMPTS.fetch_add(1, Ordering::Relaxed))
                    });
                    let request = ReceiveRequest {
                        max_messages: permits.len(),
                        wait_time: self.wait_time,
                        visibility_timeout: self.visibility_timeout,
                        attempt_id,
                        system_attributes: self.system_attributes,
                    };
                    (request, permits)
                }
            };
            // One of the queue's receives in flight: each lasts at most the wait time, so the
            // wait for one is bounded. A FIFO retry goes out even at shutdown (its messages
            // may already be on their way), as its receive's first try would have.
            let receive_turn = if retrying {
                self.receives.clone().acquire_owned().await.ok()
            } else {
                tokio::select! {
                    biased;
                    _ = self.intake.cancelled() => return Ok(()),
                    turn = self.receives.clone().acquire_owned() => turn.ok(),
                }
            };
            // SQS keeps serving a receive whose client went away, and what it takes then
            // would stay hidden, counted as received, with nobody handling it. At shutdown the
            // receive is left to finish (within its limit) and what it brings is released.
            self.activity.receiving.fetch_add(1, Ordering::SeqCst);
            let received = {
                let receive = self.queue.receive(&request);
                tokio::pin!(receive);
                tokio::select! {
                biased;
                _ = self.intake.cancelled() => {
                    let last = tokio::time::timeout(self.shutdown_receive, &mut receive).await;
                    self.activity.receiving.fetch_sub(1, Ordering::SeqCst);
                    self.finish_at_shutdown(last.ok());
                    return Ok(());
                }
                received = &mut receive => received,
                }
            };
            self.activity.receiving.fetch_sub(1, Ordering::SeqCst);
            drop(receive_turn);
            match received {
                Ok(mut messages) => {
                    self.dispatcher.telemetry.receive_ok(&messages);
                    failures = 0;
                    // A full answer means more is waiting: worth filling the next receive.
                    backlog = messages.len() >= permits.len();
                    if !messages.is_empty() {
                        self.activity.touch();
                    }
                    // A server that returns more than asked: give the extra back.
                    for extra in messages.split_off(messages.len().min(permits.len())) {
                        self.dispatcher.release(&extra);
                    }
                    let used = permits.split_off(permits.len() - messages.len());
                    drop(permits);
                    let empty = messages.is_empty();
                    if !empty {
                        self.dispatcher.dispatch(messages, used, &self.tracker);
                    }
                    // A long poll waits for messages on the server; a short poll answers at
                    // once, so an empty queue would be asked again and again (each a billed
                    // request on SQS). Pause, longer while it stays empty.
                    if self.wait_time.is_zero() && empty {
                        empties += 1;
                        if empties == 1 {
                            tracing::debug!(
                                max_pause_ms = EMPTY_PAUSE_MAX.as_millis() as u64,
                                "queue empty with short polling (HOLDFAST_WAIT_TIME=0): pausing between receives"
                            );
                        }
                        if !self.pause(empty_receive_pause(empties)).await {
                            return Ok(());
                        }
                    } else if !empty && std::mem::take(&mut empties) > 0 {
                        tracing::debug!("messages again: short polls without a pause");
                    }
                }
                Err(error) if error.is_permanent() => {
                    self.dispatcher.telemetry.receive_failed(&error);
                    return Err(self.fatal(&error));
                }
                Err(error) => {
                    self.dispatcher.telemetry.receive_failed(&error);
                    failures += 1;
                    backlog = false;
                    let pause = receive_backoff(failures);
                    tracing::warn!(%error, failures, pause_ms = pause.as_millis() as u64, "receive failed; backing off");
                    if request.attempt_id.is_some() {
                        retry = Some((request, permits));
                    } else {
                        drop(permits);
                    }
                    if !self.pause(pause).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits `pause`; `false` when shutdown began first.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.intake.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }

    /// Hands back what the receive in flight at shutdown brought (`None`: it was abandoned at
    /// its limit). Released messages are visible again at once and count as no attempt.
    fn finish_at_shutdown(&self, last: Option<Result<Vec<crate::Message>, QueueError>>) {
        match last {
            Some(Ok(messages)) if !messages.is_empty() => {
                self.dispatcher.counters.received.fetch_add(messages.len() as u64, Ordering::Relaxed);
                for message in &messages {
                    self.dispatcher.release(message);
                }
                tracing::info!(messages = messages.len(), "shutting down: released what the receive in flight brought");
            }
            Some(_) => {}
            None if self.shutdown_receive.is_zero() => {}
            None => tracing::warn!(
                limit_ms = self.shutdown_receive.as_millis() as u64,
                "shutting down: the receive in flight did not finish within its limit and was abandoned; a message it takes stays hidden for the visibility timeout"
            ),
        }
    }

    /// Waits for one free slot, then takes every other free one, up to this poller's batch
    /// (ten at most). With a backlog, waits up to the batch window for slots that free up
    /// meanwhile, so that one request fetches a full batch instead of several requests a
    /// message or two each. The queue's pollers gather in turn: one that has just received
    /// waits behind the others instead of taking every slot freed meanwhile.
    async fn take_slots(&self, backlog: bool) -> Option<Vec<OwnedSemaphorePermit>> {
        // A receive answered at once (the embedded queue) gives the other pollers no chance
        // to queue for their turn; let them.
        tokio::task::yield_now().await;
        let _turn = tokio::select! {
            biased;
            _ = self.intake.cancelled() => return None,
            turn = self.gathering.lock() => turn,
        };
        let first = tokio::select! {
            biased;
            _ = self.intake.cancelled() => return None,
            permit = self.slots.clone().acquire_owned() => permit.ok()?,
        };
        let mut permits = Vec::with_capacity(self.batch_target);
        permits.push(first);
        while permits.len() < self.batch_target {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        if backlog && permits.len() < self.batch_target && !self.batch_window.is_zero() {
            let until = tokio::time::Instant::now() + self.batch_window;
            while permits.len() < self.batch_target {
                tokio::select! {
                    biased;
                    _ = self.intake.cancelled() => return None,
                    permit = self.slots.clone().acquire_owned() => permits.push(permit.ok()?),
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        }
        Some(permits)
    }

    fn fatal(&self, error: &QueueError) -> Error {
        let code = error.code.as_deref().unwrap_or_default();
        let fix = if code.contains("NonExistentQueue") || code == "QueueDoesNotExist" {
            "the queue does not exist: check HOLDFAST_QUEUE_URL (or COPILOT_QUEUE_URI) and AWS_REGION"
        } else if code.starts_with("AccessDenied") || code.starts_with("Kms") {
            "access denied: the task role needs sqs:ReceiveMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility on this queue (and kms:Decrypt for an encrypted queue)"
        } else if code.contains("Token") || code.contains("Signature") || code.contains("Security") {
            "the AWS credentials were refused: check the task role or AWS_* credential variables"
        } else {
            "the receive request was refused"
        };
        tracing::error!(%error, "{fix}");
        Error::Queue { queue_url: self.queue.url().to_owned(), message: format!("{fix} ({error})") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acker::Acker;
    use crate::dispatch::{Counters, IDLE_KEEP, Pool};
    use crate::lease::Leases;
    use crate::queue::{BATCH_MAX, Hooked, MemoryQueue, OutgoingMessage};
    use crate::{BoxError, Config, Outcome, handler_fn};
    use std::sync::atomic::AtomicUsize;

    /// What stands around a poller over `queue`: its dispatcher, with a handler that counts
    /// its calls and acknowledges, the message tasks and the acker.
    struct Rig {
        dispatcher: Arc<Dispatcher>,
        tracker: TaskTracker,
        acker_task: tokio::task::JoinHandle<()>,
        handled: Arc<AtomicUsize>,
    }

    impl Rig {
        /// The rig and its poller, with `slots` slots.
        fn new(queue: &Queue, intake: &CancellationToken, slots: usize, wait_time: Duration) -> (Self, Poller) {
            Self::with_acker_for(queue, intake, slots, wait_time, 1_000)
        }

        /// The same, its acker sized for a worker of `ack_slots` slots (its backlog limit).
        fn with_acker_for(
            queue: &Queue,
            intake: &CancellationToken,
            slots: usize,
            wait_time: Duration,
            ack_slots: usize,
        ) -> (Self, Poller) {
            let handled = Arc::new(AtomicUsize::new(0));
            let seen = handled.clone();
            let handler = handler_fn(move |_m, _c| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(Outcome::Ack) }
            });
            let telemetry = crate::telemetry::Telemetry::detached(queue.url());
            let (acker, _, acker_task) =
                Acker::spawn_observed(queue.clone(), Duration::from_millis(100), 1, ack_slots, telemetry);
            let dispatcher = Arc::new(Dispatcher {
                work: crate::dispatch::Work::One(Arc::new(handler)),
                queue: queue.clone(),
                dead_letter: None,
                acker,
                leases: Leases::new(queue.clone(), Duration::from_secs(30), Duration::from_secs(5)),
                protection: crate::Protection::off(),
                protecting: Arc::default(),
                pool: Pool::default(),
                config: Arc::new(Config::default()),
                intake: intake.clone(),
                deadline: CancellationToken::new(),
                counters: Arc::new(Counters::default()),
                telemetry: crate::telemetry::Telemetry::detached(queue.url()),
            });
            let tracker = TaskTracker::new();
            let poller = Poller {
                queue: queue.clone(),
                slots: Arc::new(Semaphore::new(slots)),
                dispatcher: dispatcher.clone(),
                tracker: tracker.clone(),
                intake: intake.clone(),
                wait_time,
                visibility_timeout: Duration::from_secs(30),
                batch_target: slots.min(BATCH_MAX),
                batch_window: Duration::ZERO,
                gathering: Arc::default(),
                receives: Arc::new(Semaphore::new(crate::Config::default().receive_concurrency)),
                activity: Arc::new(Activity::new()),
                shutdown_receive: Duration::from_secs(25),
                system_attributes: SystemAttributeNames::NEEDED,
            };
            (Rig { dispatcher, tracker, acker_task, handled }, poller)
        }

        /// Waits for the message tasks and the acker's last flush (after the poller ended).
        async fn finish(self) {
            self.tracker.close();
            self.tracker.wait().await;
            self.dispatcher.pool.close();
            drop(self.dispatcher);
            self.acker_task.await.unwrap();
        }
    }

    /// Checks `done` every `every` for up to `limit` (of the test's clock); whether it came
    /// true.
    async fn until(limit: Duration, every: Duration, done: impl Fn() -> bool) -> bool {
        let end = tokio::time::Instant::now() + limit;
        while !done() {
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(every).await;
        }
        true
    }

    /// A memory queue whose deletes wait until `open` has permits (one per delete call).
    struct SlowDeletes {
        inner: MemoryQueue,
        open: Arc<Semaphore>,
    }

    #[async_trait::async_trait]
    impl crate::queue::QueueBackend for SlowDeletes {
        async fn receive(&self, r: &ReceiveRequest) -> Result<Vec<crate::Message>, QueueError> {
            self.inner.receive(r).await
        }
        async fn delete_batch(
            &self,
            entries: &[crate::queue::BatchEntry],
        ) -> Result<Vec<crate::queue::BatchFailure>, QueueError> {
            self.open.acquire().await.expect("never closed").forget();
            self.inner.delete_batch(entries).await
        }
        async fn change_visibility_batch(
            &self,
            entries: &[crate::queue::BatchEntry],
        ) -> Result<Vec<crate::queue::BatchFailure>, QueueError> {
            self.inner.change_visibility_batch(entries).await
        }
        async fn send(&self, m: &OutgoingMessage) -> Result<String, QueueError> {
            self.inner.send(m).await
        }
    }

    /// `n` messages on a queue whose deletes wait for permits of the returned semaphore, and a
    /// running poller of ten slots whose acker sends one request at a time: at most
    /// 2 x max(10, 10) = 20 acknowledgements unsettled before it waits, until 10 are left.
    async fn behind(
        name: &str,
        n: usize,
    ) -> (MemoryQueue, Arc<Semaphore>, CancellationToken, Rig, tokio::task::JoinHandle<Result<(), Error>>) {
        let memory = MemoryQueue::new(name);
        let open = Arc::new(Semaphore::new(0));
        let backend = SlowDeletes { inner: memory.clone(), open: open.clone() };
        let queue = Queue::from_backend(format!("memory://{name}"), false, backend);
        for i in 0..n {
            queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let intake = CancellationToken::new();
        let (rig, poller) = Rig::with_acker_for(&queue, &intake, 10, Duration::from_secs(1), 10);
        let polling = tokio::spawn(poller.run());
        (memory, open, intake, rig, polling)
    }

    #[tokio::test(start_paused = true)]
    async fn receives_pause_while_deletes_are_behind_and_resume_as_they_catch_up() {
        let (memory, open, intake, rig, polling) = behind("behind", 500).await;
        let handled = rig.handled.clone();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = handled.load(Ordering::SeqCst);
        assert!(
            (20..30).contains(&before),
            "{before} handled with no delete answered: the poller must stop at the limit (20) plus at most one receive"
        );
        assert_eq!(memory.in_flight_len(), before, "what was handled waits for its delete, and nothing more was taken");
        // One delete answered (10 settled): at most one more receive before the limit holds.
        open.add_permits(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_one = handled.load(Ordering::SeqCst);
        assert!(after_one <= before + 10, "{before} then {after_one}: receives resume only when half are settled");
        // Deletes flow again: everything is handled and deleted.
        open.add_permits(1_000);
        until(Duration::from_secs(20), Duration::from_millis(200), || memory.is_empty()).await;
        assert!(memory.is_empty(), "{} left", memory.len());
        assert_eq!(handled.load(Ordering::SeqCst), 500, "each once");
        intake.cancel();
        polling.await.unwrap().unwrap();
        rig.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_poller_waiting_for_deletes_stops_at_shutdown() {
        let (memory, open, intake, rig, polling) = behind("behind-stop", 100).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(rig.dispatcher.acker.backlog().is_behind());
        intake.cancel();
        tokio::time::timeout(Duration::from_millis(10), polling)
            .await
            .expect("a paused poller ends at once at shutdown")
            .unwrap()
            .unwrap();
        open.add_permits(1_000);
        let handled = rig.handled.load(Ordering::SeqCst);
        rig.finish().await;
        assert_eq!(memory.len(), 100 - handled, "the handled ones were deleted when their deletes were answered");
    }

    #[tokio::test]
    async fn messages_received_as_shutdown_begins_are_released_unstarted() {
        let memory = MemoryQueue::new("race");
        let intake = CancellationToken::new();
        // The receive returns its messages at the very moment shutdown begins: the race
        // every long poll can lose.
        let cancel = intake.clone();
        let queue = Queue::from_backend(
            "memory://race".into(),
            false,
            Hooked {
                inner: memory.clone(),
                before_receive: Box::new(|_| None),
                after_receive: Box::new(move || cancel.cancel()),
            },
        );
        for i in 0..3 {
            queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let (rig, poller) = Rig::new(&queue, &intake, 10, Duration::ZERO);
        let counters = rig.dispatcher.counters.clone();
        let started = rig.handled.clone();
        poller.run().await.unwrap();
        rig.finish().await;
        assert_eq!(started.load(Ordering::SeqCst), 0, "no handler may start after shutdown began");
        assert_eq!(counters.released.load(Ordering::Relaxed), 3);
        assert_eq!(memory.visible_len(), 3, "visible again at once, not after 30 s");
    }

    /// A message task outlives its message: kept idle for the next one (never more tasks than
    /// slots), counted by the drain only while it runs a job, ended when the pool closes.
    #[tokio::test(start_paused = true)]
    async fn message_tasks_are_reused_and_end_when_the_pool_closes() {
        let memory = MemoryQueue::new("pool");
        let queue = Queue::memory(&memory);
        for i in 0..200 {
            queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let intake = CancellationToken::new();
        let (rig, poller) = Rig::new(&queue, &intake, 4, Duration::ZERO);
        let polling = tokio::spawn(poller.run());
        until(Duration::from_secs(10), Duration::from_millis(10), || rig.handled.load(Ordering::SeqCst) == 200).await;
        assert_eq!(rig.handled.load(Ordering::SeqCst), 200);
        intake.cancel();
        polling.await.unwrap().unwrap();
        rig.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), rig.tracker.wait()).await.expect("idle tasks are not waited for");
        let idle = rig.dispatcher.pool.idle();
        assert!((1..=4).contains(&idle), "{idle} tasks kept after 200 messages on 4 slots");
        rig.dispatcher.pool.close();
        assert_eq!(rig.dispatcher.pool.idle(), 0);
        let ended =
            until(Duration::from_secs(5), Duration::from_millis(1), || Arc::strong_count(&rig.dispatcher) == 1).await;
        assert!(ended, "closed, the tasks end");
        rig.finish().await;
    }

    /// A task idle since the last trim ends at the next; one given a job since stays, and a
    /// job after every task ended gets a new one.
    #[tokio::test(start_paused = true)]
    async fn tasks_idle_through_a_trim_interval_end() {
        let memory = MemoryQueue::new("trim");
        let queue = Queue::memory(&memory);
        for i in 0..200 {
            queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let intake = CancellationToken::new();
        let (rig, poller) = Rig::new(&queue, &intake, 4, Duration::from_millis(50));
        let pool = &rig.dispatcher.pool;
        let polling = tokio::spawn(poller.run());
        // Handled, and the task that ran it parked again.
        let handled = |n| {
            let seen = rig.handled.clone();
            async move {
                let done =
                    until(Duration::from_secs(10), Duration::from_millis(10), || seen.load(Ordering::SeqCst) == n)
                        .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                done
            }
        };
        assert!(handled(200).await);
        let idle = pool.idle();
        assert!((1..=4).contains(&idle), "{idle} tasks kept after 200 messages on 4 slots");
        assert_eq!(pool.trim(), 0, "none was idle since the start");
        queue.send(OutgoingMessage::new("one more")).await.unwrap();
        assert!(handled(201).await);
        assert_eq!(pool.trim(), idle - 1, "all but the one that ran the message");
        assert_eq!(pool.idle(), 1);
        assert_eq!(pool.trim(), 1);
        assert_eq!(pool.idle(), 0);
        queue.send(OutgoingMessage::new("after the trims")).await.unwrap();
        assert!(handled(202).await, "a new task runs it");
        assert_eq!(pool.idle(), 1);
        intake.cancel();
        polling.await.unwrap().unwrap();
        assert_eq!(pool.trim(), 0, "started since the last trim");
        assert_eq!(pool.trim(), 1);
        let ended =
            until(Duration::from_secs(5), Duration::from_millis(1), || Arc::strong_count(&rig.dispatcher) == 1).await;
        assert!(ended, "trimmed, the tasks end without the pool closing");
        rig.finish().await;
    }

    /// The trimmer ends idle tasks on its own within two intervals, and stops when the pool
    /// closes.
    #[tokio::test(start_paused = true)]
    async fn the_trimmer_ends_idle_tasks_and_stops_with_the_pool() {
        let memory = MemoryQueue::new("trimmer");
        let queue = Queue::memory(&memory);
        for i in 0..100 {
            queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let intake = CancellationToken::new();
        let (rig, poller) = Rig::new(&queue, &intake, 4, Duration::ZERO);
        let trimmer = tokio::spawn(crate::dispatch::trim_idle(rig.dispatcher.clone(), IDLE_KEEP));
        let polling = tokio::spawn(poller.run());
        let seen = rig.handled.clone();
        until(Duration::from_secs(5), Duration::from_millis(10), || seen.load(Ordering::SeqCst) == 100).await;
        intake.cancel();
        polling.await.unwrap().unwrap();
        assert!(rig.dispatcher.pool.idle() > 0);
        tokio::time::sleep(IDLE_KEEP * 2).await;
        assert_eq!(rig.dispatcher.pool.idle(), 0, "idle through a whole interval, they ended");
        assert!(!trimmer.is_finished());
        rig.dispatcher.pool.close();
        tokio::time::timeout(Duration::from_secs(1), trimmer).await.expect("the trimmer stops").unwrap();
        rig.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_receive_in_flight_at_shutdown_finishes_and_its_messages_are_released() {
        let memory = MemoryQueue::new("in-flight");
        let queue = Queue::memory(&memory);
        let intake = CancellationToken::new();
        let (rig, poller) = Rig::new(&queue, &intake, 10, Duration::from_secs(20));
        let (counters, handled) = (rig.dispatcher.counters.clone(), rig.handled.clone());
        let polling = tokio::spawn(poller.run());
        tokio::time::sleep(Duration::from_secs(1)).await;
        intake.cancel();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!polling.is_finished(), "the poller waits for its receive");
        queue.send(OutgoingMessage::new("sent after the stop")).await.unwrap();
        polling.await.unwrap().unwrap();
        rig.finish().await;
        assert_eq!(handled.load(Ordering::SeqCst), 0, "not handled after shutdown began");
        assert_eq!(counters.released.load(Ordering::Relaxed), 1);
        assert_eq!(memory.visible_len(), 1, "visible again at once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_for_the_receive_is_bounded_and_abandon_does_not_wait() {
        for (limit, waited) in [(Duration::from_secs(3), Duration::from_secs(3)), (Duration::ZERO, Duration::ZERO)] {
            let memory = MemoryQueue::new("bounded");
            let queue = Queue::memory(&memory);
            let intake = CancellationToken::new();
            let (rig, mut poller) = Rig::new(&queue, &intake, 10, Duration::from_secs(20));
            poller.shutdown_receive = limit;
            let polling = tokio::spawn(poller.run());
            tokio::time::sleep(Duration::from_secs(1)).await;
            let stopped = tokio::time::Instant::now();
            intake.cancel();
            polling.await.unwrap().unwrap();
            assert_eq!(stopped.elapsed(), waited);
            rig.finish().await;
            // The abandoned receive goes on in the server and hides what arrives.
            queue.send(OutgoingMessage::new("taken by nobody")).await.unwrap();
            tokio::task::yield_now().await;
            assert_eq!(memory.in_flight_len(), 1, "limit {limit:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fifo_receive_that_failed_in_transit_is_retried_with_the_same_attempt_id() {
        let memory = MemoryQueue::builder("attempt.fifo").fifo().build();
        // The first receive fails in transit; every request is recorded.
        type RequestLog = Arc<std::sync::Mutex<Vec<(usize, Option<String>)>>>;
        let requests = RequestLog::default();
        let log = requests.clone();
        let backend = Hooked {
            inner: memory.clone(),
            before_receive: Box::new(move |request| {
                let mut log = log.lock().unwrap();
                log.push((request.max_messages, request.attempt_id.clone()));
                (log.len() == 1).then(|| QueueError::transient("connection reset"))
            }),
            after_receive: Box::new(|| {}),
        };
        let queue = Queue::from_backend("memory://attempt.fifo".into(), true, backend);
        queue.send(OutgoingMessage::new("a").group_id("g")).await.unwrap();
        let intake = CancellationToken::new();
        let (rig, poller) = Rig::new(&queue, &intake, 4, Duration::from_secs(1));
        let handled = rig.handled.clone();
        let polling = tokio::spawn(poller.run());
        tokio::time::sleep(Duration::from_secs(2)).await;
        intake.cancel();
        polling.await.unwrap().unwrap();
        rig.finish().await;
        let requests = requests.lock().unwrap().clone();
        assert!(requests.len() >= 2, "{requests:?}");
        assert!(requests[0].1.is_some(), "FIFO receives carry an attempt id");
        assert_eq!(requests[1], requests[0], "the retry repeats the failed request exactly");
        assert_ne!(requests.get(2).map(|r| &r.1), Some(&requests[0].1), "a new receive gets a new id");
        assert_eq!(handled.load(Ordering::SeqCst), 1);
        assert!(memory.is_empty());
    }

    /// Short polling (`HOLDFAST_WAIT_TIME=0`) of an empty queue: each empty answer comes back
    /// at once, so the poller must pause before the next, not spin (against SQS, every spin
    /// is a billed request); messages that arrive are still picked up within the pause.
    #[tokio::test]
    async fn short_polls_of_an_empty_queue_pause_between_receives() {
        let memory = MemoryQueue::new("short");
        let queue = Queue::memory(&memory);
        let intake = CancellationToken::new();
        let (rig, poller) = Rig::new(&queue, &intake, 10, Duration::ZERO);
        let handled = rig.handled.clone();
        let polling = tokio::spawn(poller.run());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_receives = queue.request_counts().receive;
        queue.send(OutgoingMessage::new("late")).await.unwrap();
        let sent = tokio::time::Instant::now();
        while handled.load(Ordering::SeqCst) == 0 && sent.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let picked_up = sent.elapsed();
        intake.cancel();
        polling.await.unwrap().unwrap();
        rig.finish().await;
        // Pauses of 50 ms doubling to 1 s: about 7 receives in 3 s, against thousands.
        assert!((3..=12).contains(&idle_receives), "{idle_receives} receives in 3 s of an empty queue");
        assert_eq!(handled.load(Ordering::SeqCst), 1);
        assert!(picked_up <= EMPTY_PAUSE_MAX + Duration::from_millis(500), "picked up after {picked_up:?}");
    }
}
