//! Stepping aside for a deployment, through the worker: the embedded queue, the ECS agent
//! backend for protection, and a local fake of the task metadata endpoint and of the ECS API
//! (`DescribeServices` over awsJson1_1, exact wire shape) on which a new revision becomes
//! PRIMARY mid-run.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use fake_ecs::FakeEcs;
use holdfast::{
    BoxError, Config, Event, MemoryQueue, Outcome, OutgoingMessage, ProtectionBackend, ProtectionMode, Queue,
    ShutdownPhase, StepAsideReason, Summary, Worker, handler_fn,
};
use tokio::sync::Notify;
use tokio::time::Instant;

const CHECK: Duration = Duration::from_millis(200);

fn client(fake: &FakeEcs) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(fake.endpoint_url())
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .region(Region::new("eu-west-1"))
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_ecs::Client::from_conf(config)
}

fn config(fake: &FakeEcs, drain: Duration) -> Config {
    let mut c = Config::default();
    c.concurrency = 4;
    c.wait_time = Duration::from_secs(1);
    c.drain_timeout = drain;
    c.protection.backend = ProtectionBackend::Agent;
    c.protection.agent_uri = Some(fake.agent_uri());
    c.protection.metadata_uri = Some(fake.metadata_uri());
    c.protection.mode = ProtectionMode::Strict;
    // Long enough that only stepping aside can explain a release while work is waiting.
    c.protection.maintain = Duration::from_secs(60);
    c.deployment_check = Some(CHECK);
    c
}

type Handled = Arc<Mutex<HashMap<String, u32>>>;

/// A worker whose handler takes `job` per message (stopping early when cancelled, without
/// acknowledging) and counts each message it finished.
fn worker(fake: &FakeEcs, queue: &Queue, drain: Duration, job: Duration) -> (Worker, Handled) {
    let handled = Handled::default();
    let seen = handled.clone();
    let worker = Worker::new(config(fake, drain)).queue(queue.clone()).deployment_client(client(fake)).handler(
        handler_fn(move |msg, ctx| {
            let (seen, id) = (seen.clone(), msg.body().to_owned());
            async move {
                tokio::select! {
                    _ = ctx.cancelled() => Err::<Outcome, BoxError>("stopped".into()),
                    _ = tokio::time::sleep(job) => {
                        *seen.lock().unwrap().entry(id).or_default() += 1;
                        Ok(Outcome::Ack)
                    }
                }
            }
        }),
    );
    (worker, handled)
}

/// The worker's events other than per-message ones, in order, until it stops.
fn lifecycle(worker: &Worker) -> tokio::task::JoinHandle<Vec<Event>> {
    let mut events = worker.subscribe();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            if matches!(event, Event::SteppedAside(_) | Event::Shutdown(_)) {
                seen.push(event);
            }
        }
        seen
    })
}

fn start(worker: Worker) -> (tokio::task::JoinHandle<Result<Summary, holdfast::Error>>, Arc<Notify>) {
    let stop = Arc::new(Notify::new());
    let signal = stop.clone();
    (tokio::spawn(worker.run_until(async move { signal.notified().await })), stop)
}

async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

fn total(handled: &Handled) -> usize {
    handled.lock().unwrap().len()
}

/// The last state change the worker asked the fake agent for was a release.
fn released(fake: &FakeEcs) -> bool {
    fake.updates().last().is_some_and(|c| c.enabled == Some(false) && c.outcome.is_none())
}

/// A busy worker (a backlog far larger than it can handle, jobs of 500 ms, 4 at a time) sees
/// a new revision become PRIMARY: it stops taking messages, lets the running ones finish,
/// releases protection well before its 60 s maintain window would, and stays up idle until
/// it is stopped. No message is lost or handled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_steps_aside_when_a_new_revision_becomes_primary() {
    let fake = FakeEcs::start().await;
    let memory = MemoryQueue::new("rolling");
    let queue = Queue::memory(&memory);
    const SENT: usize = 200;
    for i in 0..SENT {
        queue.send(OutgoingMessage::new(format!("m{i}"))).await.unwrap();
    }
    let job = Duration::from_millis(500);
    let (worker, handled) = worker(&fake, &queue, Duration::from_secs(10), job);
    let lifecycle = lifecycle(&worker);
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(20), || total(&handled) >= 8).await, "the worker never got busy");
    assert!(fake.is_protected(), "busy and protected before the deployment");
    assert!(!fake.describe_calls().is_empty(), "the check runs while the revision is primary");

    fake.deploy(2);
    let deployed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || released(&fake)).await,
        "protection not released after the new revision became primary: {:?}",
        fake.updates()
    );
    let to_release = deployed.elapsed();
    let after = total(&handled);
    assert!(!fake.is_protected());
    assert_eq!(memory.in_flight_len(), 0, "running messages finished, unstarted ones released");
    assert_eq!(memory.visible_len(), SENT - after, "every message not handled is back in the queue at once");

    // Idle and still up: nothing more is taken while the backlog waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!run.is_finished(), "the worker must stay up until ECS stops it");
    assert_eq!(total(&handled), after, "no new work after stepping aside");
    assert_eq!(memory.visible_len(), SENT - after);

    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.stepped_aside);
    assert_eq!(summary.deleted as usize, after);
    let twice: Vec<_> = handled.lock().unwrap().iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect();
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    let updates = fake.updates();
    let releases = updates.iter().filter(|c| c.enabled == Some(false)).count();
    assert_eq!(releases, 1, "released once, when stepping aside: {updates:?}");
    let lifecycle = lifecycle.await.unwrap();
    let replaced = Event::SteppedAside(StepAsideReason::Replaced {
        task_revision: format!("{}:1", fake_ecs::FAMILY),
        primary_revision: format!("{}:2", fake_ecs::FAMILY),
    });
    assert_eq!(lifecycle.first(), Some(&replaced), "the step aside is an event first: {lifecycle:?}");
    assert!(
        !lifecycle.contains(&Event::Shutdown(ShutdownPhase::SignalReceived)),
        "no stop signal came before the step aside: {lifecycle:?}"
    );
    assert_eq!(lifecycle.last(), Some(&Event::Shutdown(ShutdownPhase::Stopped)), "{lifecycle:?}");
    println!(
        "new revision primary -> protection released: {} ms (jobs of {} ms, check every {} ms); \
         DescribeServices calls: {}; handled {after}, back in the queue {}, handled twice {}",
        to_release.as_millis(),
        job.as_millis(),
        CHECK.as_millis(),
        fake.describe_calls().len(),
        memory.visible_len(),
        twice.len()
    );
}

/// Running work is bounded by the drain timeout: a job far longer than it is stopped at the
/// deadline and its message released, then protection is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepping_aside_stops_work_that_outlasts_the_drain_timeout() {
    let fake = FakeEcs::start().await;
    let memory = MemoryQueue::new("long");
    let queue = Queue::memory(&memory);
    for i in 0..2 {
        queue.send(OutgoingMessage::new(format!("long{i}"))).await.unwrap();
    }
    let (worker, handled) = worker(&fake, &queue, Duration::from_secs(1), Duration::from_secs(600));
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(10), || memory.in_flight_len() == 2 && fake.is_protected()).await);
    fake.deploy(2);
    assert!(wait_until(Duration::from_secs(15), || released(&fake)).await, "{:?}", fake.updates());
    assert_eq!(total(&handled), 0);
    assert_eq!(memory.in_flight_len(), 0);
    assert_eq!(memory.visible_len(), 2, "stopped at the drain deadline and released, visible at once");
    assert!(!run.is_finished());
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.stepped_aside);
    assert_eq!(summary.released, 2);
}

/// While the task's revision stays PRIMARY, the check only reads: all work is done, and the
/// worker never steps aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_revision_is_primary_the_worker_keeps_working() {
    let fake = FakeEcs::start().await;
    let memory = MemoryQueue::new("steady");
    let queue = Queue::memory(&memory);
    for i in 0..20 {
        queue.send(OutgoingMessage::new(format!("s{i}"))).await.unwrap();
    }
    let (worker, handled) = worker(&fake, &queue, Duration::from_secs(10), Duration::from_millis(100));
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(20), || total(&handled) == 20).await);
    assert!(wait_until(Duration::from_secs(5), || fake.describe_calls().len() >= 3).await);
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert!(!summary.stepped_aside);
    assert_eq!(summary.deleted, 20);
}

/// Without `ServiceName` in the task metadata there is no service to ask about: the check
/// turns itself off and makes no ECS call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_service_name_the_check_is_off() {
    let fake = FakeEcs::start().await;
    fake.set_service_name(None);
    let memory = MemoryQueue::new("standalone");
    let queue = Queue::memory(&memory);
    for i in 0..5 {
        queue.send(OutgoingMessage::new(format!("t{i}"))).await.unwrap();
    }
    let (worker, handled) = worker(&fake, &queue, Duration::from_secs(10), Duration::from_millis(50));
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(20), || total(&handled) == 5).await);
    fake.deploy(2);
    tokio::time::sleep(CHECK * 4).await;
    assert!(fake.describe_calls().is_empty(), "{:?}", fake.describe_calls());
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert!(!summary.stepped_aside);
    assert_eq!(summary.deleted, 5);
}

/// With the check on, a refresh that ECS refuses with `DEPLOYMENT_BLOCKED` (strict mode) is
/// a reason to step aside too: the running jobs, far longer than the drain timeout, are
/// stopped at it and their messages released, protection is released, and the worker stays
/// up idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_blocked_refresh_steps_aside_and_bounds_running_work() {
    let fake = FakeEcs::start().await;
    // The first protection succeeds; its refresh, one second later, is refused.
    fake.push(fake_ecs::Reply::Success);
    fake.push(fake_ecs::Reply::failure("DEPLOYMENT_BLOCKED"));
    let memory = MemoryQueue::new("blocked");
    let queue = Queue::memory(&memory);
    for i in 0..2 {
        queue.send(OutgoingMessage::new(format!("b{i}"))).await.unwrap();
    }
    let (mut worker, handled) = worker(&fake, &queue, Duration::from_secs(1), Duration::from_secs(600));
    worker.config_mut().protection.expires_in_minutes = 1;
    worker.config_mut().protection.refresh_before = Duration::from_secs(59);
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(10), || memory.in_flight_len() == 2 && fake.is_protected()).await);
    assert!(
        wait_until(Duration::from_secs(15), || fake
            .updates()
            .iter()
            .any(|c| c.outcome.as_deref() == Some("DEPLOYMENT_BLOCKED")))
        .await,
        "{:?}",
        fake.updates()
    );
    assert!(wait_until(Duration::from_secs(15), || released(&fake)).await, "{:?}", fake.updates());
    // With a deployment waiting, protection may go as soon as the last job has stopped,
    // a moment before the acker's flush makes the two messages visible again.
    assert!(
        wait_until(Duration::from_secs(2), || memory.in_flight_len() == 0).await,
        "stopped at the drain deadline but not released: {} in flight",
        memory.in_flight_len()
    );
    assert_eq!(total(&handled), 0);
    assert_eq!(memory.visible_len(), 2, "stopped at the drain deadline and released");
    assert!(fake.describe_calls().len() >= 2, "the revision stayed primary all along");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!run.is_finished(), "the worker must stay up until ECS stops it");
    assert_eq!(memory.visible_len(), 2, "nothing taken after stepping aside");
    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.stepped_aside);
    assert_eq!(summary.released, 2);
}

/// The step aside shows in the metrics: `holdfast_stepped_aside` goes from 0 to 1, and
/// `holdfast_deployment_checks_total` counts the checks that found this revision current
/// and the one that found it replaced. (One thread, so the local recorder sees every task.)
#[tokio::test(flavor = "current_thread")]
async fn stepping_aside_shows_in_the_metrics() {
    use metrics_util::debugging::DebugValue;
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    // A snapshot resets counters, so counters are summed over every snapshot taken.
    let sums = std::cell::RefCell::new(HashMap::<String, u64>::new());
    let value = |name: &str, outcome: Option<&str>| {
        let mut found = None;
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let outcome_label = key.labels().find(|l| l.key() == "outcome").map(|l| l.value().to_owned());
            if let DebugValue::Counter(n) = value {
                let mut sums = sums.borrow_mut();
                let sum = sums.entry(format!("{}{:?}", key.name(), outcome_label)).or_default();
                *sum += n;
                if key.name() == name && outcome_label.as_deref() == outcome {
                    found = Some(DebugValue::Counter(*sum));
                }
            } else if key.name() == name && outcome.is_none() {
                found = Some(value);
            }
        }
        found.or_else(|| sums.borrow().get(&format!("{name}{outcome:?}")).map(|n| DebugValue::Counter(*n)))
    };

    let fake = FakeEcs::start().await;
    let memory = MemoryQueue::new("metered");
    let queue = Queue::memory(&memory);
    queue.send(OutgoingMessage::new("long")).await.unwrap();
    let (worker, _handled) = worker(&fake, &queue, Duration::from_millis(200), Duration::from_secs(600));
    let (run, stop) = start(worker);
    assert!(wait_until(Duration::from_secs(10), || fake.describe_calls().len() >= 2).await);
    assert!(
        matches!(value("holdfast_stepped_aside", None), Some(DebugValue::Gauge(v)) if v.into_inner() == 0.0),
        "{:?}",
        value("holdfast_stepped_aside", None)
    );
    fake.deploy(2);
    assert!(wait_until(Duration::from_secs(15), || released(&fake)).await, "{:?}", fake.updates());
    assert!(
        matches!(value("holdfast_stepped_aside", None), Some(DebugValue::Gauge(v)) if v.into_inner() == 1.0),
        "{:?}",
        value("holdfast_stepped_aside", None)
    );
    assert!(
        matches!(value("holdfast_deployment_checks_total", Some("current")), Some(DebugValue::Counter(n)) if n >= 2),
        "{:?}",
        value("holdfast_deployment_checks_total", Some("current"))
    );
    assert!(
        matches!(value("holdfast_deployment_checks_total", Some("replaced")), Some(DebugValue::Counter(1))),
        "{:?}",
        value("holdfast_deployment_checks_total", Some("replaced"))
    );
    stop.notify_one();
    assert!(run.await.unwrap().unwrap().stepped_aside);
}
