//! The worker's behaviour, tested the same way on the embedded queue and on a real
//! SQS-compatible server over the SQS wire protocol.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Calls, Options, TestQueue, eventually, start};
use holdfast::{BoxError, Outcome, Worker, handler_fn, json_fn};
use tokio::sync::Notify;
use tokio::time::Instant;

async fn acknowledges_in_batches(backend: Backend) {
    let q = TestQueue::new(backend, "batch", Options::default()).await;
    for i in 0..25 {
        q.send(&format!("job-{i}")).await;
    }
    let calls = Calls::default();
    let seen = calls.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.record(msg.body(), msg.receive_count());
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(20), || async { calls.len() >= 25 }).await, "handled {}", calls.len());
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.succeeded, 25);
    assert_eq!(summary.deleted, 25);
    assert_eq!(q.counts().await, (0, 0), "every message deleted");
    for i in 0..25 {
        assert_eq!(calls.count(&format!("job-{i}")), 1, "job-{i} handled once");
    }
    let deletes = q.queue.request_counts().delete;
    assert!((3..=8).contains(&deletes), "25 deletes went out in {deletes} batch calls");
}

async fn a_failure_comes_back_after_the_backoff(backend: Backend) {
    let q = TestQueue::new(backend, "retry", Options::default()).await;
    q.send("flaky").await;
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = times.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((Instant::now(), msg.receive_count()));
            if msg.receive_count() == 1 { Err("first attempt fails".into()) } else { Ok::<_, BoxError>(Outcome::Ack) }
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(15), || async { times.lock().unwrap().len() >= 2 }).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 2, "one failure, one success");
    assert_eq!((times[0].1, times[1].1), (1, 2), "receive counts");
    let gap = times[1].0 - times[0].0;
    // backoff_min = backoff_max = 2 s with equal jitter: 1 to 2 s, plus polling latency
    assert!(gap >= Duration::from_millis(900), "came back after {gap:?}, before the backoff");
    assert!(gap < Duration::from_secs(6), "came back after {gap:?}");
    assert_eq!((summary.failed, summary.succeeded, summary.deleted), (1, 1, 1));
    // one message, two deliveries: the failed one was retried, the second succeeded
    assert_eq!((summary.deliveries, summary.retried, summary.dead_lettered, summary.released), (2, 1, 0, 0));
    assert_eq!(q.counts().await, (0, 0));
}

async fn a_panic_is_caught_and_the_message_retried(backend: Backend) {
    let q = TestQueue::new(backend, "panic", Options::default()).await;
    q.send("boom").await;
    q.send("fine").await;
    let calls = Calls::default();
    let seen = calls.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.record(msg.body(), msg.receive_count());
            if msg.body() == "boom" && msg.receive_count() == 1 {
                panic!("handler bug");
            }
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(15), || async { calls.count("boom") >= 2 }).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(calls.count("fine"), 1, "the worker kept going");
    assert_eq!(summary.failed, 1, "the panic counts as a failure");
    assert_eq!(summary.retried, 1, "and the message is retried");
    assert_eq!(summary.deleted, 2);
    assert_eq!(q.counts().await, (0, 0));
}

async fn the_heartbeat_keeps_a_long_job_from_redelivery(backend: Backend) {
    let q = TestQueue::new(backend, "heartbeat", Options::default()).await;
    q.send("long").await;
    let calls = Calls::default();
    let seen = calls.clone();
    let mut config = q.config();
    config.visibility_timeout = Duration::from_secs(2);
    config.heartbeat_interval = Duration::from_millis(300);
    config.concurrency = 4;
    let worker = Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.record(msg.body(), msg.receive_count());
            tokio::time::sleep(Duration::from_secs(6)).await; // 3 × the visibility timeout
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(15), || async { q.counts().await == (0, 0) }).await, "deleted");
    // Free slots kept polling all along: a lapsed lease would have shown up as a second call.
    assert_eq!(calls.all(), vec![("long".to_owned(), 1)]);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!((summary.deliveries, summary.deleted), (1, 1));
    assert!(q.queue.request_counts().change_visibility >= 3, "the lease was extended");
}

/// A handler may keep a clone of its context (say, in a task it spawned): the lease still
/// ends when the runtime is done with the message, so the heartbeat does not go on
/// extending a message already deleted, and the kept context's extension is refused.
async fn a_context_kept_past_its_handler_holds_no_lease(backend: Backend) {
    let q = TestQueue::new(backend, "kept-context", Options::default()).await;
    q.send("quick").await;
    let kept = Arc::new(std::sync::Mutex::new(None));
    let keep = kept.clone();
    let mut config = q.config();
    config.visibility_timeout = Duration::from_secs(2);
    config.heartbeat_interval = Duration::from_millis(200);
    let worker = Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |_msg, ctx| {
        let keep = keep.clone();
        async move {
            *keep.lock().unwrap() = Some(ctx);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(15), || async { q.counts().await == (0, 0) }).await, "deleted");
    let before = q.queue.request_counts().change_visibility;
    // Past half the visibility timeout several times over: a live lease would be extended.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(q.queue.request_counts().change_visibility, before, "no heartbeat for a settled message");
    let ctx = kept.lock().unwrap().take().expect("the handler ran");
    assert!(ctx.extend_visibility(Duration::from_secs(30)).await.is_err(), "the lease ended with the handler");
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!((summary.deliveries, summary.deleted), (1, 1));
}

async fn shutdown_mid_job_lets_it_finish_and_deletes_it(backend: Backend) {
    let q = TestQueue::new(backend, "drain", Options::default()).await;
    q.send("three-seconds").await;
    let started = Arc::new(Notify::new());
    let signal = started.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).handler(handler_fn(move |_msg, _ctx| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    started.notified().await;
    let stopped_at = Instant::now();
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    let took = stopped_at.elapsed();
    assert!(took >= Duration::from_millis(2500), "returned after {took:?}, before the job finished");
    assert!(took < Duration::from_secs(10), "returned after {took:?}, past the drain deadline");
    assert_eq!((summary.succeeded, summary.deleted, summary.released), (1, 1, 0));
    assert_eq!(q.counts().await, (0, 0), "the message was deleted before run returned");
}

async fn the_drain_deadline_releases_what_is_still_running(backend: Backend) {
    let q = TestQueue::new(backend, "deadline", Options::default()).await;
    q.send("too-long").await;
    let started = Arc::new(Notify::new());
    let signal = started.clone();
    let mut config = q.config();
    config.drain_timeout = Duration::from_secs(1);
    config.visibility_timeout = Duration::from_secs(60);
    let worker = Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |_msg, _ctx| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    started.notified().await;
    let stopped_at = Instant::now();
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert!(stopped_at.elapsed() < Duration::from_secs(5), "took {:?}", stopped_at.elapsed());
    assert_eq!((summary.released, summary.succeeded), (1, 0));
    // Visible again at once, not after the 60 s visibility timeout.
    assert_eq!(q.counts().await, (1, 0));
}

/// With `HOLDFAST_SHUTDOWN_RECEIVE=abandon` the long poll in flight is dropped and an idle
/// worker stops at once (the default waits for it: see tests/shutdown.rs).
async fn an_idle_worker_told_to_abandon_its_receive_stops_within_a_second(backend: Backend) {
    let q = TestQueue::new(backend, "idle", Options::default()).await;
    let mut config = q.config();
    config.wait_time = Duration::from_secs(20);
    config.shutdown_receive = holdfast::ShutdownReceive::Abandon;
    let worker = Worker::new(config)
        .queue(q.queue.clone())
        .handler(handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
    let (run, stop) = start(worker);
    tokio::time::sleep(Duration::from_millis(500)).await; // a long poll is now in flight
    let stopped_at = Instant::now();
    stop.notify_one();
    run.await.unwrap().unwrap();
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(1), "idle shutdown took {took:?}");
}

async fn an_always_failing_message_reaches_the_dead_letter_queue(backend: Backend) {
    let q = TestQueue::new(backend, "poison", Options { max_receives: Some(2), ..Options::default() }).await;
    q.send("poison").await;
    let calls = Calls::default();
    let seen = calls.clone();
    let mut config = q.config();
    config.backoff_min = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(1);
    let worker = Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.record(msg.body(), msg.receive_count());
            Err::<Outcome, BoxError>("always fails".into())
        }
    }));
    let (run, stop) = start(worker);
    assert!(
        eventually(Duration::from_secs(20), || async { q.dead_letters().await == ["poison"] }).await,
        "the message should be in the DLQ"
    );
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(calls.all(), vec![("poison".to_owned(), 1), ("poison".to_owned(), 2)]);
    assert_eq!(summary.failed, 2);
    assert_eq!(q.counts().await, (0, 0));
}

async fn an_undecodable_body_fails_the_attempt_not_the_worker(backend: Backend) {
    #[derive(serde::Deserialize)]
    struct Job {
        n: u32,
    }
    let q = TestQueue::new(backend, "decode", Options { max_receives: Some(1), ..Options::default() }).await;
    q.send("not json").await;
    q.send(r#"{"n": 5}"#).await;
    let handled = Calls::default();
    let seen = handled.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).handler(json_fn(move |job: Job, msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.record(&job.n.to_string(), msg.receive_count());
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(15), || async { q.dead_letters().await == ["not json"] }).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(handled.all(), vec![("5".to_owned(), 1)]);
    assert_eq!((summary.failed, summary.succeeded), (1, 1));
}

async fn retry_outcome_sets_the_visibility(backend: Backend) {
    let q = TestQueue::new(backend, "later", Options::default()).await;
    q.send("later").await;
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = times.clone();
    let worker = Worker::new(q.config()).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(Instant::now());
            Ok::<_, BoxError>(if msg.receive_count() == 1 {
                Outcome::retry_after(Duration::from_secs(3))
            } else {
                Outcome::Ack
            })
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(15), || async { times.lock().unwrap().len() >= 2 }).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    let times = times.lock().unwrap().clone();
    let gap = times[1] - times[0];
    assert!(gap >= Duration::from_millis(2900) && gap < Duration::from_secs(7), "retried after {gap:?}");
    assert_eq!((summary.retried, summary.deleted), (1, 1));
}

async fn handlers_see_the_drain_deadline_through_their_token(backend: Backend) {
    let q = TestQueue::new(backend, "cooperative", Options::default()).await;
    q.send("finishes-when-told").await;
    q.send("gives-up-when-told").await;
    let told = Calls::default();
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen, count) = (told.clone(), started.clone());
    let mut config = q.config();
    config.drain_timeout = Duration::from_secs(1);
    config.visibility_timeout = Duration::from_secs(60);
    let worker = Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |msg, ctx| {
        let (seen, count) = (seen.clone(), count.clone());
        async move {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ctx.cancelled().await; // a long job that watches its token
            seen.record(msg.body(), msg.receive_count());
            if msg.body() == "finishes-when-told" {
                Ok::<_, BoxError>(Outcome::Ack) // wrapped up within the grace: done
            } else {
                Err("interrupted".into())
            }
        }
    }));
    let (run, stop) = start(worker);
    assert!(
        eventually(Duration::from_secs(10), || async { started.load(std::sync::atomic::Ordering::SeqCst) == 2 }).await
    );
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(told.len(), 2, "both handlers saw the deadline: {:?}", told.all());
    assert_eq!((summary.succeeded, summary.deleted, summary.released), (1, 1, 1));
    assert_eq!(q.counts().await, (1, 0), "the interrupted one is visible again at once");
}

async fn a_timed_out_handler_is_told_before_it_is_dropped(backend: Backend) {
    let q = TestQueue::new(backend, "told", Options::default()).await;
    q.send("slow-once").await;
    let calls = Calls::default();
    let told = Calls::default();
    let (seen, heard) = (calls.clone(), told.clone());
    let mut config = q.config();
    config.handler_timeout = Some(Duration::from_secs(1));
    config.backoff_min = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(1);
    let worker = Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |msg, ctx| {
        let (seen, heard) = (seen.clone(), heard.clone());
        async move {
            seen.record(msg.body(), msg.receive_count());
            if msg.receive_count() == 1 {
                ctx.cancelled().await;
                heard.record(msg.body(), msg.receive_count());
                return Err::<Outcome, BoxError>("gave up".into());
            }
            Ok(Outcome::Ack)
        }
    }));
    let (run, stop) = start(worker);
    assert!(eventually(Duration::from_secs(15), || async { q.counts().await == (0, 0) && calls.len() == 2 }).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(told.all(), vec![("slow-once".to_owned(), 1)], "the token fired at the timeout");
    assert_eq!((summary.failed, summary.succeeded, summary.deleted), (1, 1, 1));
}

/// A receive asks for the system attributes the worker reads (the receive count, the sent
/// time, the group, the trace header), not every one SQS has; `HOLDFAST_SYSTEM_ATTRIBUTES`
/// asks for more, and handlers see what was asked for.
async fn handlers_see_the_system_attributes_asked_for(backend: Backend) {
    let q = TestQueue::new(backend, "attributes", Options::default()).await;
    let handle = |extra: Vec<String>, body: &'static str| {
        let q = &q;
        async move {
            q.send(body).await;
            let names = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = names.clone();
            let mut config = q.config();
            config.system_attributes = extra;
            let worker = Worker::new(config).queue(q.queue.clone()).handler(handler_fn(move |msg, _ctx| {
                let seen = seen.clone();
                async move {
                    let mut keys: Vec<String> = msg.attributes().keys().cloned().collect();
                    keys.sort();
                    seen.lock().unwrap().push(keys);
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            }));
            let (run, stop) = start(worker);
            assert!(eventually(Duration::from_secs(15), || async { !names.lock().unwrap().is_empty() }).await);
            stop.notify_one();
            assert_eq!(run.await.unwrap().unwrap().deleted, 1);
            let names = names.lock().unwrap().clone();
            names.into_iter().next().unwrap()
        }
    };
    let default = handle(Vec::new(), "default").await;
    assert_eq!(default, ["ApproximateReceiveCount", "SentTimestamp"], "a standard queue's message, by default");
    let first_receive = vec!["ApproximateFirstReceiveTimestamp".to_owned()];
    let more = handle(first_receive, "more").await;
    assert_eq!(more, ["ApproximateFirstReceiveTimestamp", "ApproximateReceiveCount", "SentTimestamp"]);
    let all = handle(vec!["All".to_owned()], "all").await;
    assert!(all.len() >= 3 && all.iter().any(|n| n == "ApproximateFirstReceiveTimestamp"), "All: {all:?}");
}

on_both_backends!(
    acknowledges_in_batches,
    a_failure_comes_back_after_the_backoff,
    a_panic_is_caught_and_the_message_retried,
    the_heartbeat_keeps_a_long_job_from_redelivery,
    a_context_kept_past_its_handler_holds_no_lease,
    shutdown_mid_job_lets_it_finish_and_deletes_it,
    the_drain_deadline_releases_what_is_still_running,
    an_idle_worker_told_to_abandon_its_receive_stops_within_a_second,
    an_always_failing_message_reaches_the_dead_letter_queue,
    an_undecodable_body_fails_the_attempt_not_the_worker,
    retry_outcome_sets_the_visibility,
    handlers_see_the_drain_deadline_through_their_token,
    a_timed_out_handler_is_told_before_it_is_dropped,
    handlers_see_the_system_attributes_asked_for,
);

/// A queue that does not exist stops the worker with an error that says what to fix.
#[tokio::test]
async fn a_missing_queue_stops_the_worker_with_a_fix() {
    let url = format!("{}/123456789012/{}", common::endpoint(), common::unique("missing"));
    let worker = Worker::new(holdfast::Config::default())
        .queue(holdfast::Queue::sqs(common::sqs_client(), url))
        .handler(handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
    let err = tokio::time::timeout(Duration::from_secs(10), worker.run_until(std::future::pending()))
        .await
        .expect("the worker must stop on its own")
        .expect_err("a missing queue is an error");
    let text = err.to_string();
    assert!(text.contains("does not exist") && text.contains("HOLDFAST_QUEUE_URL"), "{text}");
}

/// A system attribute name SQS does not know, set in code, stops the worker before it starts,
/// naming the variable and the names accepted; the message stays on the queue.
#[tokio::test]
async fn an_unknown_system_attribute_stops_the_worker_before_it_starts() {
    let queue = holdfast::MemoryQueue::new("names");
    queue.send_message(&holdfast::OutgoingMessage::new("job")).unwrap();
    let mut config = holdfast::Config::default();
    config.system_attributes = vec!["SenderId".into(), "ReceiveCount".into()];
    let worker = Worker::new(config)
        .queue(holdfast::Queue::memory(&queue))
        .handler(handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
    let err = tokio::time::timeout(Duration::from_secs(10), worker.run_until(std::future::pending()))
        .await
        .expect("the worker must stop on its own")
        .expect_err("an unknown name is an error");
    let text = err.to_string();
    assert!(text.contains("HOLDFAST_SYSTEM_ATTRIBUTES") && text.contains("SequenceNumber"), "{text}");
    assert_eq!(queue.counts().visible, 1, "nothing was received");
}

/// With a backlog and handlers that all take the same time, every slot is refilled the moment
/// it frees: the pollers' batches add up to the concurrency and they gather slots in turn, so
/// none of them takes another's share or waits out the batch window for a slot that another
/// poller holds. On paused time a 50 ms handler at concurrency 64 (seven pollers) then runs
/// ten rounds in 500 ms, each receive asking for its poller's whole batch.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn freed_slots_are_refilled_without_waiting_out_the_batch_window() {
    for concurrency in [64, 512, 25] {
        let memory = holdfast::MemoryQueue::new("refill");
        let queue = holdfast::Queue::memory(&memory);
        let rounds = 10;
        for i in 0..concurrency * rounds {
            queue.send(holdfast::OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let mut config = holdfast::Config::default();
        config.concurrency = concurrency;
        assert_eq!(config.batch_window, Duration::from_millis(10));
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let begun = Instant::now();
        let record = started.clone();
        let worker = Worker::new(config).queue(queue.clone()).protection(holdfast::Protection::off()).handler(
            handler_fn(move |_msg, _ctx| {
                record.lock().unwrap().push(begun.elapsed());
                async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            }),
        );
        let (run, stop) = start(worker);
        while memory.visible_len() > 0 || memory.in_flight_len() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.notify_one();
        let summary = run.await.unwrap().unwrap();
        assert_eq!(summary.succeeded as usize, concurrency * rounds);
        let started = started.lock().unwrap().clone();
        let last = *started.iter().max().unwrap();
        // Round r starts at r × 50 ms; a window waited at every turn would add 10 ms a round.
        assert!(
            last < Duration::from_millis(50 * rounds as u64 - 45),
            "concurrency {concurrency}: the last of {} handlers started at {last:?}",
            started.len()
        );
        let pollers = concurrency.div_ceil(10) as u64;
        let receives = queue.request_counts().receive;
        assert!(
            receives <= pollers * (rounds as u64 + 2),
            "concurrency {concurrency}: {receives} receives for {rounds} rounds of {pollers} pollers"
        );
    }
}

/// A queue keeps at most `HOLDFAST_RECEIVE_CONCURRENCY` receives in flight (16 by default),
/// not one per ten slots: at concurrency 1,000 an idle queue held 100 long polls, each a
/// connection and a billed request every 20 s. The slots still all fill: 1,000 messages of
/// long handlers are all in flight at once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn receives_in_flight_are_capped_and_every_slot_still_fills() {
    for (cap, expected) in [(None, 16), (Some(4), 4)] {
        let memory = holdfast::MemoryQueue::new("capped");
        let queue = holdfast::Queue::memory(&memory);
        let mut config = holdfast::Config::default();
        config.concurrency = 1_000;
        if let Some(cap) = cap {
            config.receive_concurrency = cap;
        }
        let release = Arc::new(Notify::new());
        let gate = release.clone();
        let worker = Worker::new(config).queue(queue.clone()).protection(holdfast::Protection::off()).handler(
            handler_fn(move |_msg, _ctx| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            }),
        );
        let (run, stop) = start(worker);
        // Idle: every poller's long poll (20 s) is in flight, and no more.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(queue.request_counts().receive, expected, "receives in flight on an idle queue (cap {cap:?})");
        for i in 0..1_000 {
            queue.send(holdfast::OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let filled = Instant::now();
        while memory.in_flight_len() < 1_000 {
            assert!(filled.elapsed() < Duration::from_secs(60), "{} of 1,000 in flight", memory.in_flight_len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.notify_waiters();
        while memory.in_flight_len() > 0 {
            release.notify_waiters();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.notify_one();
        let summary = run.await.unwrap().unwrap();
        assert_eq!(summary.succeeded, 1_000);
    }
}
