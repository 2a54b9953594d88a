//! Shutdown and the long poll in flight, on the embedded queue and on the local SQS server:
//! SQS keeps serving a receive whose client went away, so a worker that dropped its poll at
//! shutdown would leave the messages that poll takes hidden, counted as received, and (on a
//! FIFO queue) holding their group. The worker lets the receive finish and releases what it
//! brings.

mod common;

use std::time::Duration;

use common::{Backend, Calls, Options, TestQueue, eventually, start};
use holdfast::{BoxError, Config, Outcome, OutgoingMessage, ShutdownReceive, Worker, handler_fn};
use tokio::time::Instant;

fn recording(calls: &Calls) -> impl holdfast::Handler {
    let seen = calls.clone();
    handler_fn(move |msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.record(msg.body(), msg.receive_count());
            Ok::<_, BoxError>(Outcome::Ack)
        }
    })
}

/// An idle worker is stopped with a long poll in flight and a message is sent right after:
/// the receive returns it, the worker hands it back (visible at once) and no handler runs it.
async fn a_message_sent_just_after_an_idle_stop_is_visible_at_once(backend: Backend) {
    let q = TestQueue::new(backend, "after-stop", Options::default()).await;
    let mut config = q.config();
    config.wait_time = Duration::from_secs(3);
    config.visibility_timeout = Duration::from_secs(30);
    let calls = Calls::default();
    let (run, stop) = start(Worker::new(config).queue(q.queue.clone()).handler(recording(&calls)));
    tokio::time::sleep(Duration::from_millis(500)).await; // the long poll is in flight
    stop.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await; // past the race with the stop
    q.send("sent after the stop").await;
    let summary = run.await.unwrap().unwrap();
    assert_eq!(calls.len(), 0, "no handler runs after the stop");
    assert_eq!(q.counts().await, (1, 0), "the message is visible at once, not hidden for 30 s");
    assert_eq!((summary.succeeded, summary.failed, summary.released), (0, 0, 1), "{summary:?}");
}

/// With `maxReceiveCount` 2, workers stopped one after another while idle (each with a long
/// poll in flight), and a message sent right after the first stop: the next worker handles it.
async fn restarts_of_idle_workers_do_not_dead_letter_an_unhandled_message(backend: Backend) {
    let q = TestQueue::new(backend, "restarts", Options { max_receives: Some(2), ..Options::default() }).await;
    let calls = Calls::default();
    let mut config = q.config();
    config.wait_time = Duration::from_secs(5);
    config.visibility_timeout = Duration::from_secs(1);
    for restart in 0..3 {
        let (run, stop) = start(Worker::new(config.clone()).queue(q.queue.clone()).handler(recording(&calls)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.notify_one();
        if restart == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            q.send("sent after the first stop").await;
        }
        run.await.unwrap().unwrap();
    }
    // Any poll the stopped workers left behind has ended by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (run, stop) = start(Worker::new(config).queue(q.queue.clone()).handler(recording(&calls)));
    let handled = eventually(Duration::from_secs(10), || async { calls.len() == 1 }).await;
    stop.notify_one();
    run.await.unwrap().unwrap();
    assert!(handled, "never handled; dead-letter queue: {:?}", q.dead_letters().await);
    assert_eq!(calls.all(), [("sent after the first stop".to_owned(), 2)], "one release, one handling");
    assert!(q.dead_letters().await.is_empty());
}

/// FIFO: a message sent right after an idle stop does not hold its group for a visibility
/// timeout; the next worker handles the group in order at once.
async fn a_fifo_group_is_not_held_by_a_stopped_worker(backend: Backend) {
    let q = TestQueue::new(backend, "held", Options { fifo: true, ..Options::default() }).await;
    let mut config = q.config();
    config.wait_time = Duration::from_secs(3);
    config.visibility_timeout = Duration::from_secs(30);
    let calls = Calls::default();
    let (run, stop) = start(Worker::new(config.clone()).queue(q.queue.clone()).handler(recording(&calls)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for body in ["g1", "g2"] {
        q.queue.send(OutgoingMessage::new(body).group_id("g")).await.unwrap();
    }
    run.await.unwrap().unwrap();
    let (run, stop) = start(Worker::new(config).queue(q.queue.clone()).handler(recording(&calls)));
    let handled = eventually(Duration::from_secs(10), || async { calls.len() == 2 }).await;
    stop.notify_one();
    run.await.unwrap().unwrap();
    assert!(handled, "the group stayed held: handled {:?}", calls.all());
    let bodies: Vec<String> = calls.all().into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["g1", "g2"]);
}

/// Starts an idle worker, stops it 0.5 s into its first receive, and says how long `run`
/// took to return after the stop.
async fn idle_stop(q: &TestQueue, config: Config) -> Duration {
    let calls = Calls::default();
    let (run, stop) = start(Worker::new(config).queue(q.queue.clone()).handler(recording(&calls)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_at = Instant::now();
    stop.notify_one();
    run.await.unwrap().unwrap();
    stopped_at.elapsed()
}

/// By default an idle worker's shutdown waits for the receive in flight: up to the rest of
/// the wait time, no longer.
async fn idle_shutdown_waits_out_the_receive_in_flight(backend: Backend) {
    let q = TestQueue::new(backend, "idle-wait", Options::default()).await;
    let mut config = q.config();
    config.wait_time = Duration::from_secs(3);
    let took = idle_stop(&q, config).await;
    assert!(took >= Duration::from_millis(1500), "returned after {took:?}: the receive was dropped");
    assert!(took < Duration::from_secs(6), "returned after {took:?}: longer than the 3 s wait time");
}

/// A limit below the wait time bounds the wait: the receive is abandoned at the limit.
async fn a_receive_limit_bounds_the_wait(backend: Backend) {
    let q = TestQueue::new(backend, "idle-limit", Options::default()).await;
    let mut config = q.config();
    config.wait_time = Duration::from_secs(10);
    config.shutdown_receive = ShutdownReceive::UpTo(Duration::from_secs(1));
    let took = idle_stop(&q, config).await;
    assert!(took >= Duration::from_millis(900), "returned after {took:?}, before the 1 s limit");
    assert!(took < Duration::from_secs(5), "returned after {took:?}, well past the 1 s limit");
}

on_both_backends!(
    a_message_sent_just_after_an_idle_stop_is_visible_at_once,
    restarts_of_idle_workers_do_not_dead_letter_an_unhandled_message,
    a_fifo_group_is_not_held_by_a_stopped_worker,
    idle_shutdown_waits_out_the_receive_in_flight,
    a_receive_limit_bounds_the_wait,
);
