//! Scale-in protection through the worker: the embedded queue, the real agent backend and a
//! local fake of the ECS agent endpoint speaking its exact wire format.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;
#[path = "support/log_capture.rs"]
mod log_capture;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_ecs::{FakeEcs, Reply};
use holdfast::{
    BoxError, Config, MemoryQueue, Outcome, OutgoingMessage, Protection, ProtectionBackend, ProtectionMode, Queue,
    Summary, Worker, handler_fn,
};
use log_capture::Capture;
use tokio::sync::Notify;
use tracing::level_filters::LevelFilter;

fn config(fake: &FakeEcs, mode: ProtectionMode, maintain: Duration) -> Config {
    let mut c = Config::default();
    c.concurrency = 8;
    c.wait_time = Duration::from_secs(1);
    c.drain_timeout = Duration::from_secs(10);
    c.protection.backend = ProtectionBackend::Agent;
    c.protection.agent_uri = Some(fake.agent_uri());
    c.protection.mode = mode;
    c.protection.maintain = maintain;
    c
}

async fn fill(queue: &Queue, n: usize) {
    for i in 0..n {
        queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
    }
}

fn start(worker: Worker) -> (tokio::task::JoinHandle<Result<Summary, holdfast::Error>>, Arc<Notify>) {
    let stop = Arc::new(Notify::new());
    let signal = stop.clone();
    (tokio::spawn(worker.run_until(async move { signal.notified().await })), stop)
}

async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// 1,000 jobs of 10 ms at concurrency 8, arriving continuously: the task is protected once,
/// before the first handler runs, and released once, at shutdown; every handler ran
/// protected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_short_jobs_costs_two_ecs_calls() {
    let fake = FakeEcs::start().await;
    let memory = MemoryQueue::new("stream");
    let queue = Queue::memory(&memory);
    let unprotected = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (seen, count, agent) = (unprotected.clone(), done.clone(), Arc::new(fake.agent_uri()));
    let worker = Worker::new(config(&fake, ProtectionMode::Strict, Duration::from_secs(30)))
        .queue(queue.clone())
        .handler(handler_fn(move |_msg, _ctx| {
            let (seen, count, agent) = (seen.clone(), count.clone(), agent.clone());
            async move {
                if !protected_now(&agent).await {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                count.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(Outcome::Ack)
            }
        }));
    let (run, stop) = start(worker);
    // A producer sending continuously, a little faster than the pool drains.
    for chunk in 0..100 {
        for i in 0..10 {
            queue.send(OutgoingMessage::new(format!("{chunk}-{i}"))).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    assert!(wait_until(Duration::from_secs(30), || done.load(Ordering::SeqCst) == 1000).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.deleted, 1000);
    assert_eq!(unprotected.load(Ordering::SeqCst), 0, "a handler ran before the task was protected");
    let updates = fake.updates();
    let enabled: Vec<Option<bool>> = updates.iter().map(|c| c.enabled).collect();
    assert_eq!(enabled, [Some(true), Some(false)], "one protect, one release: {updates:?}");
    assert!(!fake.is_protected());
}

/// Whether the fake agent says the task is protected, asked from inside a handler.
async fn protected_now(agent_uri: &str) -> bool {
    let body: serde_json::Value =
        reqwest::get(format!("{agent_uri}/task-protection/v1/state")).await.unwrap().json().await.unwrap();
    body["protection"]["ProtectionEnabled"] == serde_json::Value::Bool(true)
}

/// Strict mode under a refusal: the messages received are released unstarted, and polling
/// pauses (they are not received again and again) so the blocked deployment can proceed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_takes_no_work_while_ecs_refuses() {
    let fake = FakeEcs::start().await;
    fake.set_default(Reply::failure("DEPLOYMENT_BLOCKED"));
    let memory = MemoryQueue::new("strict");
    let queue = Queue::memory(&memory);
    fill(&queue, 5).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let worker = Worker::new(config(&fake, ProtectionMode::Strict, Duration::from_secs(30)))
        .queue(queue.clone())
        .handler(handler_fn(move |_m, _c| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Outcome::Ack) }
        }));
    let (run, stop) = start(worker);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0, "no handler may run unprotected in strict mode");
    assert_eq!(memory.visible_len(), 5, "released for other tasks");
    let counts: Vec<u32> = memory.messages().iter().map(|m| m.receive_count()).collect();
    assert!(counts.iter().all(|&c| c <= 1), "polling paused instead of receiving again: {counts:?}");
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!((summary.succeeded, summary.released), (0, counts.iter().sum::<u32>() as u64));
    assert!(fake.updates().iter().any(|c| c.outcome.as_deref() == Some("DEPLOYMENT_BLOCKED")));
}

/// Strict mode with the agent failing (HTTP 500): no work; once it answers again, polling
/// resumes and the backlog is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_resumes_when_the_agent_recovers() {
    let fake = FakeEcs::start().await;
    fake.set_default(Reply::error(500, "ServerException"));
    let memory = MemoryQueue::new("recover");
    let queue = Queue::memory(&memory);
    fill(&queue, 5).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let worker = Worker::new(config(&fake, ProtectionMode::Strict, Duration::from_secs(30)))
        .queue(queue.clone())
        .handler(handler_fn(move |_m, _c| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Outcome::Ack) }
        }));
    let (run, stop) = start(worker);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    fake.set_default(Reply::Success);
    assert!(wait_until(Duration::from_secs(20), || memory.is_empty()).await, "work resumed");
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.deleted, 5);
    assert!(!fake.is_protected(), "released at shutdown");
}

/// Relaxed mode logs the refusal and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_mode_carries_on_when_ecs_refuses() {
    let fake = FakeEcs::start().await;
    fake.set_default(Reply::failure("DEPLOYMENT_BLOCKED"));
    let memory = MemoryQueue::new("relaxed");
    let queue = Queue::memory(&memory);
    fill(&queue, 5).await;
    let worker = Worker::new(config(&fake, ProtectionMode::Relaxed, Duration::from_secs(30)))
        .queue(queue.clone())
        .handler(handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(10), || memory.is_empty()).await);
    stop.notify_one();
    assert_eq!(run.await.unwrap().unwrap().deleted, 5);
}

/// SIGTERM mid-job: protection holds through the drain and is released after it, once the
/// delete is flushed; when the drain deadline passes, it is released all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_protection_after_the_drain_or_at_the_deadline() {
    for (job, drain, expect_deleted) in
        [(Duration::from_secs(1), Duration::from_secs(10), 1), (Duration::from_secs(30), Duration::from_millis(500), 0)]
    {
        let fake = FakeEcs::start().await;
        let memory = MemoryQueue::new("release");
        let queue = Queue::memory(&memory);
        fill(&queue, 1).await;
        let started = Arc::new(Notify::new());
        let signal = started.clone();
        let mut config = config(&fake, ProtectionMode::Strict, Duration::from_secs(60));
        config.drain_timeout = drain;
        let worker = Worker::new(config).queue(queue.clone()).handler(handler_fn(move |_m, _c| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                tokio::time::sleep(job).await;
                Ok::<_, BoxError>(Outcome::Ack)
            }
        }));
        let (run, stop) = start(worker);
        started.notified().await;
        assert!(fake.is_protected(), "protected while the job runs");
        stop.notify_one();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(fake.is_protected(), "still protected during the drain");
        let summary = run.await.unwrap().unwrap();
        assert_eq!(summary.deleted, expect_deleted);
        assert!(!fake.is_protected(), "released when run returns (drain {drain:?})");
        assert_eq!(fake.updates().last().and_then(|c| c.enabled), Some(false));
    }
}

/// A handler asks for longer protection for a long step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_extends_protection() {
    let fake = FakeEcs::start().await;
    let memory = MemoryQueue::new("extend");
    let queue = Queue::memory(&memory);
    fill(&queue, 1).await;
    let worker = Worker::new(config(&fake, ProtectionMode::Strict, Duration::from_secs(30)))
        .queue(queue.clone())
        .handler(handler_fn(|_m, ctx| async move {
            ctx.extend_protection(Duration::from_secs(3 * 3600)).await?;
            Ok::<_, BoxError>(Outcome::Ack)
        }));
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(10), || memory.is_empty()).await);
    stop.notify_one();
    run.await.unwrap().unwrap();
    let minutes: Vec<u32> = fake.updates().iter().filter_map(|c| c.minutes).collect();
    assert!(minutes.iter().any(|&m| m >= 180), "an ExpiresInMinutes of at least 3 h was asked: {minutes:?}");
}

/// A worker given `Protection::off()` makes no ECS call at all.
#[tokio::test]
async fn protection_off_calls_nothing() {
    let fake = FakeEcs::start().await;
    let memory = MemoryQueue::new("off");
    let queue = Queue::memory(&memory);
    fill(&queue, 3).await;
    let worker = Worker::new(config(&fake, ProtectionMode::Strict, Duration::ZERO))
        .queue(queue.clone())
        .protection(Protection::off())
        .handler(handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(10), || memory.is_empty()).await);
    stop.notify_one();
    run.await.unwrap().unwrap();
    assert!(fake.calls().is_empty());
}

/// Twenty messages while ECS refuses: relaxed mode says so once when it starts working
/// unprotected, not once per message; strict mode once when it pauses.
#[tokio::test]
async fn a_refusal_is_logged_once_per_state_change_not_per_message() {
    for mode in [ProtectionMode::Relaxed, ProtectionMode::Strict] {
        let logs = Capture::new(LevelFilter::INFO);
        let _capturing = logs.install();
        let fake = Arc::new(FakeEcs::start().await);
        fake.set_default(Reply::failure("DEPLOYMENT_BLOCKED"));
        let agent = fake.clone();
        let memory = MemoryQueue::new("quiet");
        let queue = Queue::memory(&memory);
        fill(&queue, 20).await;
        let worker = Worker::new(config(&fake, mode, Duration::from_secs(30)))
            .queue(queue.clone())
            // Each job lasts until the agent has been asked, so the refusal comes while work
            // runs (twenty no-op jobs could end before the worker asks, and then it need not).
            .handler(handler_fn(move |_m, _c| {
                let agent = agent.clone();
                async move {
                    wait_until(Duration::from_secs(10), || !agent.calls().is_empty()).await;
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            }));
        let (run, stop) = start(worker);
        match mode {
            ProtectionMode::Relaxed => assert!(
                wait_until(Duration::from_secs(10), || memory.is_empty()).await,
                "relaxed: the queue was not drained"
            ),
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
        stop.notify_one();
        run.await.unwrap().unwrap();
        let warnings = logs.lines_with(" WARN ");
        assert!(
            (1..=2).contains(&warnings.len()),
            "{mode:?}: {} warnings for 20 messages:\n{}",
            warnings.len(),
            warnings.join("\n")
        );
    }
}
