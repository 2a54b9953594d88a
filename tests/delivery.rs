//! Delivery semantics — FIFO order, SNS envelopes, dead-lettering, batch handlers, several
//! queues, singleton jobs, exit when idle, sizes and attribute types — tested the same way
//! on the embedded queue and on a real SQS-compatible server.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Calls, Options, TestQueue, eventually, start};
use holdfast::{
    BatchHandler, BoxError, Context, Message, MessageAttribute, Outcome, OutgoingMessage, Permanent, Route, Worker,
    async_trait, handler_fn, json_fn,
};
use tokio::time::Instant;

/// Counts handlers running at once, and the most seen.
#[derive(Default, Clone)]
struct Gauge(Arc<(AtomicUsize, AtomicUsize)>);

impl Gauge {
    fn enter(&self) {
        let now = self.0.0.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.1.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
    fn max(&self) -> usize {
        self.0.1.load(Ordering::SeqCst)
    }
}

async fn fifo_groups_stay_in_order_when_one_fails(backend: Backend) {
    let q = TestQueue::new(backend, "order", Options { fifo: true, ..Options::default() }).await;
    // Interleaved, as producers would send them.
    for (group, n) in
        [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2), ("c", 2), ("a", 3), ("b", 3), ("a", 4), ("b", 4)]
    {
        q.queue.send(OutgoingMessage::new(format!("{group}{n}")).group_id(group)).await.unwrap();
    }
    let calls = Calls::default();
    let gauge = Gauge::default();
    let (seen, g) = (calls.clone(), gauge.clone());
    let mut config = q.config();
    config.concurrency = 6;
    config.backoff_min = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(1);
    let worker = Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
        let (seen, g) = (seen.clone(), g.clone());
        async move {
            seen.record(msg.body(), msg.receive_count());
            g.enter();
            tokio::time::sleep(Duration::from_millis(100)).await;
            g.leave();
            if msg.body() == "a2" && msg.receive_count() == 1 {
                return Err::<Outcome, BoxError>("a2 fails once".into());
            }
            Ok(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    // Eleven calls (a2 twice) as well as an empty queue: moto's two counting scans can both
    // miss a message whose backoff ends between them (see the batch-handler test).
    assert!(
        eventually(Duration::from_secs(30), || async { calls.len() >= 11 && q.counts().await == (0, 0) }).await,
        "{:?}",
        calls.all()
    );
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    let bodies = |group: &str| -> Vec<String> {
        calls.all().into_iter().map(|(b, _)| b).filter(|b| b.starts_with(group)).collect()
    };
    assert_eq!(bodies("a"), ["a1", "a2", "a2", "a3", "a4"], "a3 and a4 waited for a2");
    assert_eq!(bodies("b"), ["b1", "b2", "b3", "b4"]);
    assert_eq!(bodies("c"), ["c1", "c2"]);
    assert!(gauge.max() >= 2, "different groups ran in parallel");
    assert_eq!((summary.failed, summary.deleted), (1, 10));
}

/// A notification exactly as SNS writes it into a subscribed queue (raw delivery off).
const NOTIFICATION: &str = r#"{
  "Type" : "Notification",
  "MessageId" : "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
  "TopicArn" : "arn:aws:sns:us-east-1:123456789012:shop-test-orders-ordersTopic",
  "Subject" : "order",
  "Message" : "{\"order_id\":42,\"total\":\"19.99\"}",
  "Timestamp" : "2026-11-22T12:00:00.000Z",
  "SignatureVersion" : "1",
  "Signature" : "EXAMPLEw6JRN...",
  "SigningCertURL" : "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-EXAMPLE.pem",
  "UnsubscribeURL" : "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:shop-test-orders-ordersTopic:EXAMPLE",
  "MessageAttributes" : {
    "event" : {"Type":"String","Value":"order_placed"},
    "priority" : {"Type":"Number","Value":"2"}
  }
}"#;

async fn an_sns_envelope_reaches_a_typed_handler_unwrapped(backend: Backend) {
    #[derive(serde::Deserialize)]
    struct Order {
        order_id: u32,
        total: String,
    }
    let q = TestQueue::new(backend, "sns", Options::default()).await;
    q.send(NOTIFICATION).await;
    let seen = Arc::new(Mutex::new(None));
    let out = seen.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).handler(json_fn(move |order: Order, msg, _ctx| {
        let out = out.clone();
        async move {
            let sns = msg.sns().expect("came through SNS");
            *out.lock().unwrap() = Some((
                order.order_id,
                order.total,
                sns.topic_arn().to_owned(),
                sns.message_id().to_owned(),
                msg.message_attribute("event").and_then(|a| a.as_str().map(str::to_owned)),
                msg.message_attribute("priority").map(|a| a.data_type().to_owned()),
                msg.raw_body() == NOTIFICATION,
            ));
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(10), || async { seen.lock().unwrap().is_some() }).await);
    stop.notify_one();
    run.await.unwrap().unwrap();
    let got = seen.lock().unwrap().take().unwrap();
    assert_eq!(
        got,
        (
            42,
            "19.99".to_owned(),
            "arn:aws:sns:us-east-1:123456789012:shop-test-orders-ordersTopic".to_owned(),
            "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111".to_owned(),
            Some("order_placed".to_owned()),
            Some("Number".to_owned()),
            true
        )
    );
}

async fn a_permanent_failure_goes_to_the_dead_letter_queue_with_its_reason(backend: Backend) {
    let q = TestQueue::new(backend, "poison", Options { dead_letter: true, ..Options::default() }).await;
    q.queue.send(OutgoingMessage::new("order-7").attribute("tenant", MessageAttribute::string("acme"))).await.unwrap();
    q.send("order-8").await;
    let calls = Calls::default();
    let seen = calls.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).dead_letter_queue(q.dlq.clone().unwrap()).handler(
        handler_fn(move |msg, _ctx| {
            let seen = seen.clone();
            async move {
                seen.record(msg.body(), msg.receive_count());
                if msg.body() == "order-7" {
                    return Err::<Outcome, BoxError>(Permanent::new("order 7 does not exist").into());
                }
                Ok(Outcome::Ack)
            }
        }),
    );
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(10), || async { q.counts().await == (0, 0) }).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(calls.count("order-7"), 1, "not retried");
    let dead = q.dead_letter_messages().await;
    assert_eq!(dead.len(), 1);
    let (body, attributes) = &dead[0];
    assert_eq!(body, "order-7");
    assert_eq!(attributes.get("tenant").map(String::as_str), Some("acme"), "original attributes kept");
    let reason = attributes.get("holdfast.failure").expect("the reason travels with it");
    assert!(reason.contains("order 7 does not exist"), "{reason}");
    assert!(attributes.get("holdfast.source").is_some_and(|s| s.contains(q.queue.url())));
    assert_eq!((summary.dead_lettered, summary.succeeded, summary.deleted), (1, 1, 2));
}

async fn an_undecodable_body_is_dead_lettered_at_once(backend: Backend) {
    #[derive(serde::Deserialize)]
    struct Job {
        _n: u32,
    }
    let q = TestQueue::new(backend, "undecodable", Options { dead_letter: true, ..Options::default() }).await;
    q.send("{not json").await;
    let worker = Worker::new(q.config())
        .queue(q.queue.clone())
        .dead_letter_queue(q.dlq.clone().unwrap())
        .handler(json_fn(|_job: Job, _msg, _ctx| async { Ok::<_, BoxError>(Outcome::Ack) }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(10), || async { q.dead_letter_messages().await.len() == 1 }).await);
    assert!(eventually(Duration::from_secs(5), || async { q.counts().await == (0, 0) }).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    let dead = q.dead_letter_messages().await;
    assert_eq!(dead[0].0, "{not json");
    assert!(dead[0].1["holdfast.failure"].contains("not valid JSON"), "{:?}", dead[0].1);
    assert_eq!((summary.deliveries, summary.dead_lettered), (1, 1));
}

struct EvenOdd(Calls, Arc<Mutex<Vec<usize>>>);

#[async_trait]
impl BatchHandler for EvenOdd {
    async fn handle_batch(&self, messages: &[Message], _ctx: &Context) -> Vec<Result<Outcome, BoxError>> {
        self.1.lock().unwrap().push(messages.len());
        messages
            .iter()
            .map(|m| {
                self.0.record(m.body(), m.receive_count());
                let n: u32 = m.body().parse().unwrap();
                if n % 2 == 1 && m.receive_count() == 1 { Err("odd fails once".into()) } else { Ok(Outcome::Ack) }
            })
            .collect()
    }
}

async fn a_batch_handler_settles_each_message_on_its_own(backend: Backend) {
    let q = TestQueue::new(backend, "batch", Options::default()).await;
    for i in 0..8 {
        q.send(&i.to_string()).await;
    }
    let calls = Calls::default();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let mut config = q.config();
    config.backoff_min = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(1);
    let worker = Worker::new(config).queue(q.queue.clone()).batch_handler(EvenOdd(calls.clone(), sizes.clone()));
    let (run, stop) = start(worker);
    // Every odd message's second attempt first: moto counts visible and invisible messages
    // in two scans of its queue, so a message whose 1 s backoff ends between them is in
    // neither, and an empty-looking queue alone can end the wait before its retry.
    let retried = || (0..8).filter(|i| i % 2 == 1).all(|i| calls.count(&i.to_string()) >= 2);
    assert!(eventually(Duration::from_secs(20), || async { retried() && q.counts().await == (0, 0) }).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    for i in 0..8 {
        let expected = if i % 2 == 1 { 2 } else { 1 };
        assert_eq!(calls.count(&i.to_string()), expected, "message {i}");
    }
    assert!(sizes.lock().unwrap().iter().any(|&n| n > 1), "messages arrived in batches: {:?}", sizes.lock().unwrap());
    assert_eq!((summary.failed, summary.succeeded, summary.deleted), (4, 8, 8));
}

async fn two_queues_share_one_concurrency_limit(backend: Backend) {
    let first = TestQueue::new(backend, "first", Options::default()).await;
    let second = TestQueue::new(backend, "second", Options::default()).await;
    for i in 0..4 {
        first.send(&format!("first-{i}")).await;
        second.send(&format!("second-{i}")).await;
    }
    let gauge = Gauge::default();
    let calls = Calls::default();
    let handler = |gauge: Gauge, calls: Calls| {
        handler_fn(move |msg, _ctx| {
            let (gauge, calls) = (gauge.clone(), calls.clone());
            async move {
                gauge.enter();
                calls.record(msg.body(), msg.receive_count());
                tokio::time::sleep(Duration::from_millis(300)).await;
                gauge.leave();
                Ok::<_, BoxError>(Outcome::Ack)
            }
        })
    };
    let mut config = first.config();
    config.concurrency = 2;
    let worker = Worker::new(config)
        .queue(first.queue.clone())
        .handler(handler(gauge.clone(), calls.clone()))
        .route(Route::new(second.queue.clone(), handler(gauge.clone(), calls.clone())));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(20), || async { calls.len() >= 8 }).await, "{:?}", calls.all());
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert!(gauge.max() <= 2, "{} handlers ran at once over a limit of 2", gauge.max());
    assert_eq!(summary.deleted, 8);
    assert_eq!(first.counts().await, (0, 0));
    assert_eq!(second.counts().await, (0, 0));
}

async fn exit_when_idle_returns_once_the_queue_is_drained(backend: Backend) {
    let q = TestQueue::new(backend, "drained", Options::default()).await;
    for i in 0..3 {
        q.send(&i.to_string()).await;
    }
    let mut config = q.config();
    config.exit_when_idle = Some(Duration::from_secs(2));
    let worker = Worker::new(config)
        .queue(q.queue.clone())
        .handler(handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
    let started = Instant::now();
    let summary = tokio::time::timeout(Duration::from_secs(20), worker.run_until(std::future::pending()))
        .await
        .expect("run must return by itself")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "waited for the idle limit");
    assert_eq!((summary.succeeded, summary.deleted), (3, 3));
    assert_eq!(q.counts().await, (0, 0));
}

/// At most one job per key across a fleet, with a hard timeout: a FIFO queue with the key
/// as group id, and the handler timeout.
async fn one_job_per_key_across_workers_with_a_hard_timeout(backend: Backend) {
    let q = TestQueue::new(backend, "singleton", Options { fifo: true, ..Options::default() }).await;
    for (key, n) in [("report", 1), ("billing", 1), ("report", 2), ("billing", 2), ("report", 3)] {
        let job = OutgoingMessage::new(format!("{key}-{n}")).group_id(key).deduplication_id(format!("{key}-{n}"));
        q.queue.send(job).await.unwrap();
    }
    let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let calls = Calls::default();
    let worker = |running: Arc<Mutex<HashMap<String, usize>>>, overlaps: Arc<AtomicUsize>, calls: Calls| {
        let mut config = q.config();
        config.concurrency = 4;
        config.handler_timeout = Some(Duration::from_secs(1));
        config.backoff_min = Duration::from_secs(1);
        config.backoff_max = Duration::from_secs(1);
        Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
            let (running, overlaps, calls) = (running.clone(), overlaps.clone(), calls.clone());
            async move {
                let key = msg.group_id().unwrap().to_owned();
                calls.record(msg.body(), msg.receive_count());
                {
                    let mut running = running.lock().unwrap();
                    let n = running.entry(key.clone()).or_default();
                    *n += 1;
                    if *n > 1 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // The first run of report-1 hangs: the timeout must stop it.
                let work = if msg.body() == "report-1" && msg.receive_count() == 1 { 10_000 } else { 200 };
                let guard = scopeguard(running.clone(), key);
                tokio::time::sleep(Duration::from_millis(work)).await;
                drop(guard);
                Ok::<_, BoxError>(Outcome::Ack)
            }
        }))
    };
    // A fleet of two workers on the embedded queue. moto's ReceiveMessage takes no lock: while
    // one receive briefly drops a message from its pending set to redeliver it, a concurrent
    // receive on the same queue can see the group as free and hand out the next message of it
    // (seen under load: report-2 before report-1's retry), which SQS never does. So against
    // moto one worker (one poller, one receive at a time) reads this queue.
    let fleet = if backend == Backend::Memory { 2 } else { 1 };
    let runs: Vec<_> = (0..fleet).map(|_| start(worker(running.clone(), overlaps.clone(), calls.clone()))).collect();
    // Six calls (report-1 twice) as well as an empty queue (see the batch-handler test).
    assert!(
        eventually(Duration::from_secs(30), || async { calls.len() >= 6 && q.counts().await == (0, 0) }).await,
        "{:?}",
        calls.all()
    );
    let mut summaries = Vec::new();
    for (run, stop) in runs {
        stop.notify_one();
        summaries.push(run.await.unwrap().unwrap());
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two jobs of one key ran at once: {:?}", calls.all());
    assert_eq!(calls.count("report-1"), 2, "timed out once, then ran again");
    assert_eq!(summaries.iter().map(|s| s.failed).sum::<u64>(), 1, "the timeout is a failure");
    assert_eq!(summaries.iter().map(|s| s.deleted).sum::<u64>(), 5);
    let report: Vec<String> = calls.all().into_iter().map(|(b, _)| b).filter(|b| b.starts_with("report")).collect();
    assert_eq!(report, ["report-1", "report-1", "report-2", "report-3"], "in order");
}

/// Decrements the running count for a key when dropped (also when the timeout drops the
/// handler's future).
fn scopeguard(running: Arc<Mutex<HashMap<String, usize>>>, key: String) -> impl Drop {
    struct Guard(Arc<Mutex<HashMap<String, usize>>>, String);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(n) = self.0.lock().unwrap().get_mut(&self.1) {
                *n -= 1;
            }
        }
    }
    Guard(running, key)
}

async fn every_attribute_type_and_a_one_mebibyte_message_arrive_intact(backend: Backend) {
    let q = TestQueue::new(backend, "types", Options::default()).await;
    // SQS's maximum message is 1 MiB, body and attributes together.
    let large = "x".repeat(1_048_576 - 200);
    let message = OutgoingMessage::new(large.clone())
        .attribute("s", MessageAttribute::string("text"))
        .attribute("n", MessageAttribute::number(12.5))
        .attribute("b", MessageAttribute::binary(vec![0u8, 159, 146, 150]))
        .attribute("f", MessageAttribute::with_type("Number.float", Some("1.25".into()), None).unwrap());
    q.queue.send(message).await.unwrap();
    let seen = Arc::new(Mutex::new(None));
    let out = seen.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
        let out = out.clone();
        async move {
            *out.lock().unwrap() = Some(msg);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(10), || async { seen.lock().unwrap().is_some() }).await);
    stop.notify_one();
    run.await.unwrap().unwrap();
    let msg = seen.lock().unwrap().take().unwrap();
    assert_eq!(msg.body().len(), large.len());
    assert_eq!(msg.message_attribute("s").unwrap().as_str(), Some("text"));
    assert_eq!(msg.message_attribute("n").unwrap().data_type(), "Number");
    assert_eq!(msg.message_attribute("n").unwrap().as_str(), Some("12.5"));
    assert_eq!(msg.message_attribute("b").unwrap().as_bytes(), Some(&[0u8, 159, 146, 150][..]));
    assert_eq!(msg.message_attribute("f").unwrap().data_type(), "Number.float");
    assert!(msg.sent_timestamp().is_some());
}

on_both_backends!(
    fifo_groups_stay_in_order_when_one_fails,
    an_sns_envelope_reaches_a_typed_handler_unwrapped,
    a_permanent_failure_goes_to_the_dead_letter_queue_with_its_reason,
    an_undecodable_body_is_dead_lettered_at_once,
    a_batch_handler_settles_each_message_on_its_own,
    two_queues_share_one_concurrency_limit,
    exit_when_idle_returns_once_the_queue_is_drained,
    one_job_per_key_across_workers_with_a_hard_timeout,
    every_attribute_type_and_a_one_mebibyte_message_arrive_intact,
);
