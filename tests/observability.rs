//! Metrics and events of a run on the embedded queue: a known sequence of outcomes, then
//! every metric's value and the order of the events.

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast::{
    BoxError, Config, Event, FailureCause, HandledOutcome, MemoryQueue, Outcome, OutgoingMessage, Permanent,
    Protection, Queue, ShutdownPhase, Worker, json_fn, metric_names as n,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[derive(serde::Deserialize)]
struct Job {
    act: String,
}

/// One message of each outcome: success, retry, error, panic, timeout, permanent error,
/// body that does not decode.
const JOBS: [&str; 7] = [
    r#"{"act":"ok"}"#,
    r#"{"act":"retry"}"#,
    r#"{"act":"fail"}"#,
    r#"{"act":"panic"}"#,
    r#"{"act":"slow"}"#,
    r#"{"act":"poison"}"#,
    "not json",
];

type Values = BTreeMap<String, DebugValue>;

/// `name{label=value,...}` for every metric recorded.
fn values(recorder: &metrics_util::debugging::Snapshotter) -> Values {
    recorder
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn take(values: &mut Values, key: &str) -> DebugValue {
    values.remove(key).unwrap_or_else(|| panic!("{key} was not recorded"))
}

fn counter(values: &mut Values, key: &str) -> u64 {
    match take(values, key) {
        DebugValue::Counter(n) => n,
        other => panic!("{key} is not a counter: {other:?}"),
    }
}

fn gauge(values: &mut Values, key: &str) -> f64 {
    match take(values, key) {
        DebugValue::Gauge(v) => v.into_inner(),
        other => panic!("{key} is not a gauge: {other:?}"),
    }
}

fn histogram(values: &mut Values, key: &str) -> Vec<f64> {
    match take(values, key) {
        DebugValue::Histogram(v) => v.into_iter().map(|v| v.into_inner()).collect(),
        other => panic!("{key} is not a histogram: {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_metric_and_event_after_a_known_sequence_of_outcomes() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let memory = MemoryQueue::new("obs");
    let queue = Queue::memory(&memory);
    let dlq_memory = MemoryQueue::new("obs-dlq");
    for body in JOBS {
        queue.send(OutgoingMessage::new(body)).await.unwrap();
    }
    let mut config = Config::default();
    config.concurrency = 10;
    config.handler_timeout = Some(Duration::from_millis(500));
    config.backoff_min = Duration::from_secs(60);
    config.backoff_max = Duration::from_secs(60);
    let handler = json_fn(|job: Job, _msg, _ctx| async move {
        match job.act.as_str() {
            "ok" => Ok(Outcome::Ack),
            "retry" => Ok(Outcome::retry_after(Duration::from_secs(60))),
            "fail" => Err::<Outcome, BoxError>("upstream is down".into()),
            "panic" => panic!("handler bug"),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Outcome::Ack)
            }
            _ => Err(Permanent::new("order 7 does not exist").into()),
        }
    });
    let worker = Worker::new(config)
        .queue(queue.clone())
        .dead_letter_queue(Queue::memory(&dlq_memory))
        .protection(Protection::off())
        .handler(handler);
    let mut events = worker.subscribe();
    let collected = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(event) = events.recv().await {
            all.push(event);
        }
        all
    });
    // Stop once every message was handled: counted from the events themselves.
    let mut watcher = worker.subscribe();
    let all_handled = async move {
        let mut handled = 0;
        while let Some(event) = watcher.recv().await {
            if matches!(event, Event::Handled { .. }) {
                handled += 1;
                if handled == JOBS.len() {
                    return;
                }
            }
        }
    };
    let summary = worker.run_until(all_handled).await.unwrap();
    // retried: the one Outcome::Retry and the three failures backed off (error, panic, timeout)
    assert_eq!((summary.deliveries, summary.succeeded, summary.retried, summary.failed), (7, 1, 4, 5));
    assert_eq!(summary.dead_lettered, 2);

    let q = "queue=obs";
    let mut v = values(&snapshotter);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::RECEIVED)), 7);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::SUCCEEDED)), 1);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::RETRIED)), 1);
    for (cause, expected) in [("decode", 1), ("error", 2), ("lease_lost", 0), ("panic", 1), ("timeout", 1)] {
        assert_eq!(counter(&mut v, &format!("{}{{cause={cause},{q}}}", n::FAILED)), expected, "{cause}");
    }
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::DEAD_LETTERED)), 2);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::RELEASED)), 0);
    let succeeded = histogram(&mut v, &format!("{}{{outcome=succeeded,{q}}}", n::HANDLER_DURATION));
    let retried = histogram(&mut v, &format!("{}{{outcome=retried,{q}}}", n::HANDLER_DURATION));
    let mut failed = histogram(&mut v, &format!("{}{{outcome=failed,{q}}}", n::HANDLER_DURATION));
    assert_eq!((succeeded.len(), retried.len(), failed.len()), (1, 1, 5));
    failed.sort_by(f64::total_cmp);
    // The slow one: the 500 ms timeout, then the second of grace to return.
    assert!((failed[4] - 1.5).abs() < 0.01, "{failed:?}");
    let waits = histogram(&mut v, &format!("{}{{{q}}}", n::WAIT));
    assert_eq!(waits.len(), 7);
    assert!(waits.iter().all(|w| *w < 0.01), "handlers start at once: {waits:?}");
    assert_eq!(histogram(&mut v, &format!("{}{{{q}}}", n::AGE)).len(), 7);
    assert_eq!(gauge(&mut v, &format!("{}{{{q}}}", n::IN_FLIGHT)), 0.0);
    assert_eq!(gauge(&mut v, &format!("{}{{}}", n::FREE_SLOTS)), 10.0);
    // One receive brought all seven; the next long poll was cut short by the shutdown.
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::RECEIVES)), 1);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::EMPTY_RECEIVES)), 0);
    for kind in ["network", "permanent", "service", "throttled"] {
        assert_eq!(counter(&mut v, &format!("{}{{kind={kind},{q}}}", n::RECEIVE_ERRORS)), 0, "{kind}");
    }
    // Three deletes (the success and the two dead-lettered) in one batch; four visibility
    // changes (retry, error, panic at once; the timeout 1.5 s later) in two.
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::DELETE_REQUESTS)), 1);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::DELETE_FAILED)), 0);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::VISIBILITY_REQUESTS)), 2);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::VISIBILITY_FAILED)), 0);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::LEASE_EXTENSIONS)), 0);
    assert_eq!(counter(&mut v, &format!("{}{{{q}}}", n::LEASES_LOST)), 0);
    assert_eq!(gauge(&mut v, &format!("{}{{}}", n::PROTECTED)), 0.0);
    assert_eq!(gauge(&mut v, &format!("{}{{}}", n::HEALTHY)), 1.0);
    assert_eq!(gauge(&mut v, &format!("{}{{}}", n::POLLING_PAUSED)), 0.0);
    assert_eq!(counter(&mut v, &format!("{}{{}}", n::EVENTS_LOST)), 0);
    assert_eq!(counter(&mut v, &format!("{}{{}}", n::EMF_SAMPLES_DROPPED)), 0);
    assert!(v.is_empty(), "metrics this test does not know: {v:?}");
    assert_eq!(memory.len(), 4, "retried and failed messages wait for their next attempt");
    assert_eq!(dlq_memory.len(), 2);

    let events = collected.await.unwrap();
    let of = |id: &str| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| match e {
                Event::Received { message_id, .. }
                | Event::Handled { message_id, .. }
                | Event::Failed { message_id, .. }
                | Event::DeadLettered { message_id, .. }
                | Event::Released { message_id, .. }
                | Event::LeaseLost { message_id, .. } => message_id == id,
                _ => false,
            })
            .collect()
    };
    let ids: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Received { message_id, .. } => Some(message_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 7);
    // Receive order is send order on the embedded queue.
    let ok = of(&ids[0]);
    assert!(matches!(ok[0], Event::Received { queue, receive_count: 1, .. } if &**queue == "obs"), "{ok:?}");
    assert!(matches!(ok[1], Event::Handled { outcome: HandledOutcome::Succeeded, .. }), "{ok:?}");
    assert_eq!(ok.len(), 2, "{ok:?}");
    let slow = of(&ids[4]);
    assert!(matches!(slow[0], Event::Received { .. }), "{slow:?}");
    assert!(
        matches!(slow[1], Event::Handled { outcome: HandledOutcome::Failed, duration, .. } if *duration >= Duration::from_millis(1500)),
        "{slow:?}"
    );
    assert!(matches!(slow[2], Event::Failed { cause: FailureCause::Timeout, .. }), "{slow:?}");
    let poison = of(&ids[5]);
    assert!(matches!(poison[1], Event::Handled { outcome: HandledOutcome::Failed, .. }), "{poison:?}");
    assert!(matches!(poison[2], Event::Failed { cause: FailureCause::Error, .. }), "{poison:?}");
    assert!(matches!(poison[3], Event::DeadLettered { .. }), "{poison:?}");
    let decode = of(&ids[6]);
    assert!(matches!(decode[2], Event::Failed { cause: FailureCause::Decode, .. }), "{decode:?}");
    assert!(matches!(decode[3], Event::DeadLettered { .. }), "{decode:?}");
    let shutdown: Vec<ShutdownPhase> = events
        .iter()
        .filter_map(|e| match e {
            Event::Shutdown(phase) => Some(*phase),
            _ => None,
        })
        .collect();
    assert_eq!(
        shutdown,
        [
            ShutdownPhase::SignalReceived,
            ShutdownPhase::PollingStopped,
            ShutdownPhase::DeletesFlushed,
            ShutdownPhase::Stopped
        ]
    );
    assert!(matches!(events.last(), Some(Event::Shutdown(ShutdownPhase::Stopped))));
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_subscriber_loses_the_oldest_events_and_never_holds_up_handling() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let memory = MemoryQueue::new("slow-subscriber");
    let queue = Queue::memory(&memory);
    let total = 2_000u64;
    for i in 0..total {
        queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
    }
    let mut config = Config::default();
    config.wait_time = Duration::ZERO;
    config.exit_when_idle = Some(Duration::from_secs(1));
    let worker = Worker::new(config)
        .queue(queue)
        .protection(Protection::off())
        .handler(holdfast::handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
    // Subscribed, and not read until the worker has stopped.
    let mut events = worker.subscribe();
    let summary = worker.run_until(std::future::pending()).await.unwrap();
    assert_eq!(summary.succeeded, total, "every message handled with nobody reading the events");
    let first = events.recv().await;
    let Some(Event::Lost { count }) = first else { panic!("expected a loss first, got {first:?}") };
    let mut kept = 0u64;
    while let Some(event) = events.recv().await {
        assert!(!matches!(event, Event::Lost { .. }), "one loss, reported once");
        kept += 1;
    }
    assert_eq!(kept, holdfast::EVENT_CAPACITY as u64, "the newest events are kept");
    assert!(count >= 2 * total + 4 - kept, "lost {count}");
    let lost =
        snapshotter.snapshot().into_vec().into_iter().find(|(k, ..)| k.key().name() == n::EVENTS_LOST).map(|(.., v)| v);
    assert_eq!(lost, Some(DebugValue::Counter(count)), "the loss is counted");
}
