//! What a worker logs: a progress line at info level for every interval in which something
//! happened (and none while idle), one line per message at debug level with its id, outcome
//! and duration, and never a message body.

#[path = "support/log_capture.rs"]
mod log_capture;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast::{BoxError, Config, MemoryQueue, Outcome, OutgoingMessage, Queue, Worker, handler_fn};
use log_capture::Capture;
use tokio::sync::Notify;
use tracing::level_filters::LevelFilter;

/// The value of `name=N` in a text log line.
fn field(line: &str, name: &str) -> u64 {
    let prefix = format!("{name}=");
    let value = line.split_whitespace().find_map(|w| w.strip_prefix(&prefix));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name}=N in {line:?}"))
}

const INTERVAL: Duration = Duration::from_millis(200);

// A current-thread runtime: every task of the worker runs on this thread, under the
// subscriber set for it.
#[tokio::test]
async fn progress_at_info_per_message_lines_at_debug_and_no_bodies() {
    let logs = Capture::new(LevelFilter::DEBUG).only("holdfast");
    let _capturing = logs.install();

    let memory = MemoryQueue::new("logs");
    let queue = Queue::memory(&memory);
    let mut config = Config::default();
    config.wait_time = Duration::from_secs(1);
    config.backoff_min = Duration::ZERO;
    config.backoff_max = Duration::ZERO;
    config.progress_interval = Some(INTERVAL);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let handler = handler_fn(move |msg, _ctx| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(msg.id().to_owned());
            if msg.body() == "secret-body-2" && msg.receive_count() == 1 {
                return Err::<Outcome, BoxError>("the first attempt fails".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Outcome::Ack)
        }
    });
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let run = tokio::spawn(Worker::new(config).queue(queue.clone()).handler(handler).run_until(async move {
        stopped.notified().await;
    }));

    // Idle: no progress line.
    tokio::time::sleep(INTERVAL * 4).await;
    assert!(logs.lines_with("progress").is_empty(), "an idle worker logged progress:\n{}", logs.text());

    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(queue.send(OutgoingMessage::new(format!("secret-body-{n}"))).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !memory.is_empty() || calls.lock().unwrap().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "messages not handled:\n{}", logs.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(INTERVAL * 3).await;
    let progress = logs.lines_with(" progress ");
    assert!(!progress.is_empty(), "no progress line:\n{}", logs.text());
    // Quiet again: no new progress line.
    tokio::time::sleep(INTERVAL * 4).await;
    assert_eq!(logs.lines_with(" progress ").len(), progress.len(), "progress logged while idle:\n{}", logs.text());
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();

    // The intervals add up to the run: 3 messages, 4 deliveries, the failed one retried.
    for line in &progress {
        assert!(line.contains(" INFO "), "{line}");
    }
    let total = |name: &str| progress.iter().map(|l| field(l, name)).sum::<u64>();
    assert_eq!(
        (total("deliveries"), total("succeeded"), total("failed"), total("retried"), total("released")),
        (4, 3, 1, 1, 0),
        "{progress:#?}"
    );
    assert_eq!(field(progress.last().unwrap(), "in_flight"), 0, "{progress:#?}");
    assert_eq!((summary.deliveries, summary.succeeded, summary.failed, summary.retried), (4, 3, 1, 1));

    // One line per delivery, naming the message, its outcome and how long it took.
    for id in &ids {
        let lines: Vec<String> =
            logs.lines_with(&format!("message_id={id}")).into_iter().filter(|l| l.contains("outcome=")).collect();
        let acked: Vec<&String> = lines.iter().filter(|l| l.contains(r#"outcome="ack""#)).collect();
        assert_eq!(acked.len(), 1, "{id}: {lines:#?}");
        assert!(acked[0].contains("DEBUG") && acked[0].contains("duration_ms="), "{}", acked[0]);
    }
    let failed = logs.lines_with(r#"outcome="failed""#);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(failed[0].contains(&format!("message_id={}", ids[1])) && failed[0].contains("duration_ms="), "{failed:#?}");

    let text = logs.text();
    assert!(!text.contains("secret-body"), "a message body reached the logs:\n{text}");
}

fn reached_first_elsewhere() {
    tracing::warn!("a line whose callsite another thread reached first");
}

/// The capture the log tests rely on sees a line even when a test on another thread (with
/// nothing capturing there) reached its callsite first, as parallel tests do. (With a
/// per-thread subscriber from `set_default`, tracing cached that callsite as uninteresting
/// and the line was lost.)
#[test]
fn a_capture_sees_lines_whose_callsite_another_thread_reached_first() {
    let logs = Capture::new(LevelFilter::INFO);
    let _capturing = logs.install();
    std::thread::spawn(reached_first_elsewhere).join().unwrap();
    reached_first_elsewhere();
    assert_eq!(logs.lines_with("another thread reached first").len(), 1, "{}", logs.text());
}
