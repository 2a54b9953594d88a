//! Every way the ECS agent can fail, at every phase of protection, through the whole worker:
//! the worker never stops consuming for good, and resumes within one backoff of the agent's
//! recovery. The agent is the local fake speaking the endpoint's exact wire format.
//!
//! Failure kinds: HTTP 500 `ServerException`, HTTP 504 `RequestCanceled`, throttling,
//! connection refused (the agent is down), a timeout (the agent answers after the client's
//! 10 s limit), and a `failure` body with HTTP 200 (`DEPLOYMENT_BLOCKED`). Phases: the first
//! protection, a refresh, the release after the maintain window, and the release at
//! shutdown.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_ecs::{Call, FakeEcs, Reply};
use holdfast::{
    BoxError, Config, MemoryQueue, Outcome, OutgoingMessage, ProtectionBackend, ProtectionMode, Queue, Summary, Worker,
    handler_fn,
};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Status500,
    Status504,
    Throttling,
    Refused,
    Timeout,
    Blocked,
}

impl Fault {
    /// How long after the agent recovers the worker may take to have protection again: the
    /// backoff step an 8 s outage leads to (at most 8 s for errors and throttling, 30 s after
    /// a second refusal), one call that was in flight when the agent recovered (10 s for a
    /// timeout), and a second.
    fn resume_within(self) -> Duration {
        match self {
            Fault::Blocked => Duration::from_secs(31),
            Fault::Timeout => Duration::from_secs(19),
            _ => Duration::from_secs(9),
        }
    }
}

/// The fake agent, which can also be down.
struct Agent {
    port: u16,
    fake: Option<FakeEcs>,
    /// Calls received by earlier instances (before it went down).
    earlier: Vec<Call>,
}

impl Agent {
    async fn start() -> Agent {
        let fake = FakeEcs::start().await;
        Agent { port: fake.addr().port(), fake: Some(fake), earlier: Vec::new() }
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/api/fake-container", self.port)
    }

    fn fail(&mut self, fault: Fault) {
        let Some(fake) = &self.fake else { return };
        match fault {
            Fault::Status500 => fake.set_default(Reply::error(500, "ServerException")),
            Fault::Status504 => fake.set_default(Reply::error(504, "RequestCanceled")),
            Fault::Throttling => fake.set_default(Reply::Throttle),
            Fault::Timeout => fake.set_default(Reply::Slow { millis: 12_000 }),
            Fault::Blocked => fake.set_default(Reply::failure("DEPLOYMENT_BLOCKED")),
            Fault::Refused => {
                fake.stop();
                self.earlier.extend(fake.calls());
                self.fake = None;
            }
        }
    }

    async fn recover(&mut self) {
        match &self.fake {
            Some(fake) => fake.set_default(Reply::Success),
            None => {
                // The same port again, as an agent that restarts.
                let mut tries = 0;
                loop {
                    match FakeEcs::start_on(self.port).await {
                        Ok(fake) => break self.fake = Some(fake),
                        Err(e) if tries < 50 => {
                            tries += 1;
                            let _ = e;
                            sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("cannot listen on 127.0.0.1:{} again: {e}", self.port),
                    }
                }
            }
        }
    }

    fn protected(&self) -> bool {
        self.fake.as_ref().is_some_and(FakeEcs::is_protected)
    }

    fn updates(&self) -> Vec<Call> {
        let now = self.fake.as_ref().map(FakeEcs::calls).unwrap_or_default();
        self.earlier.iter().chain(&now).filter(|c| c.is_update()).cloned().collect()
    }
}

struct Rig {
    queue: Queue,
    memory: MemoryQueue,
    handled: Arc<AtomicUsize>,
    run: tokio::task::JoinHandle<Result<Summary, holdfast::Error>>,
    stop: Arc<Notify>,
}

/// A strict-mode worker at concurrency 2 on the embedded queue, with jobs of `job`.
fn worker(agent: &Agent, job: Duration, tune: impl FnOnce(&mut Config)) -> Rig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let memory = MemoryQueue::new("faults");
    let queue = Queue::memory(&memory);
    let mut c = Config::default();
    c.concurrency = 2;
    c.wait_time = Duration::from_secs(1);
    c.drain_timeout = Duration::from_secs(10);
    c.protection.backend = ProtectionBackend::Agent;
    c.protection.agent_uri = Some(agent.uri());
    c.protection.mode = ProtectionMode::Strict;
    tune(&mut c);
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let w = Worker::new(c).queue(queue.clone()).handler(handler_fn(move |_m, _c| {
        let count = count.clone();
        async move {
            sleep(job).await;
            count.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let stop = Arc::new(Notify::new());
    let signal = stop.clone();
    let run = tokio::spawn(w.run_until(async move { signal.notified().await }));
    Rig { queue, memory, handled, run, stop }
}

impl Rig {
    async fn send(&self, n: usize) {
        for i in 0..n {
            self.queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
    }

    fn handled(&self) -> usize {
        self.handled.load(Ordering::SeqCst)
    }

    async fn handled_within(&self, n: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.handled() >= n {
                return true;
            }
            sleep(Duration::from_millis(20)).await;
        }
        self.handled() >= n
    }

    async fn finish(self) -> Summary {
        self.stop.notify_one();
        self.run.await.unwrap().unwrap()
    }
}

/// The agent fails from the start: strict mode takes no work; once the agent answers, the
/// backlog is handled.
async fn first_protect(fault: Fault) {
    let mut agent = Agent::start().await;
    agent.fail(fault);
    let rig = worker(&agent, Duration::from_millis(200), |_| {});
    rig.send(4).await;
    sleep(Duration::from_secs(4)).await;
    assert_eq!(rig.handled(), 0, "{fault:?}: no handler runs unprotected in strict mode");
    agent.recover().await;
    // the backlog: two rounds of 200 ms
    let all = rig.handled_within(4, fault.resume_within() + Duration::from_secs(1)).await;
    assert!(all, "{fault:?}: {} of 4 handled after the agent recovered; calls {:?}", rig.handled(), agent.updates());
    let summary = rig.finish().await;
    assert_eq!(summary.deleted, 4);
    assert!(!agent.protected(), "{fault:?}: released at shutdown");
}

/// The outage of a refresh: a 1-minute protection refreshed 55 s before it lapses (so the
/// refresh falls inside the run), ten jobs of 3 s two at a time; 2 s in, the agent fails for
/// 8 s. The task is released at shutdown even if the last failure's backoff still runs.
async fn refresh(fault: Fault) {
    let mut agent = Agent::start().await;
    let rig = worker(&agent, Duration::from_secs(3), |c| {
        c.protection.expires_in_minutes = 1;
        c.protection.refresh_before = Duration::from_secs(55);
    });
    rig.send(10).await;
    sleep(Duration::from_secs(2)).await;
    agent.fail(fault);
    sleep(Duration::from_secs(8)).await;
    agent.recover().await;
    // what is left when the agent recovers: the jobs received after the refresh failed are
    // not started (strict mode), at most two rounds of 3 s
    let all = rig.handled_within(10, fault.resume_within() + Duration::from_secs(7)).await;
    assert!(
        all,
        "{fault:?}: {} of 10 handled, {} in the queue; calls {:?}",
        rig.handled(),
        rig.memory.len(),
        agent.updates()
    );
    let summary = rig.finish().await;
    assert_eq!(summary.deleted, 10);
    assert!(!agent.protected(), "{fault:?}: released at shutdown");
}

/// The release after the maintain window fails; the agent recovers; new work is taken and
/// protected, and the task is released once idle again.
async fn release(fault: Fault) {
    let mut agent = Agent::start().await;
    let rig = worker(&agent, Duration::from_millis(200), |c| c.protection.maintain = Duration::from_secs(1));
    rig.send(2).await;
    assert!(rig.handled_within(2, Duration::from_secs(5)).await);
    agent.fail(fault); // before the maintain window ends
    sleep(Duration::from_secs(8)).await;
    agent.recover().await;
    rig.send(4).await;
    let all = rig.handled_within(6, fault.resume_within() + Duration::from_secs(1)).await;
    assert!(all, "{fault:?}: {} of 6 handled after the agent recovered; calls {:?}", rig.handled(), agent.updates());
    // idle again: released after the maintain window (and any backoff still running)
    let start = Instant::now();
    while agent.protected() && start.elapsed() < fault.resume_within() + Duration::from_secs(3) {
        sleep(Duration::from_millis(50)).await;
    }
    assert!(!agent.protected(), "{fault:?}: released once idle; calls {:?}", agent.updates());
    let summary = rig.finish().await;
    assert_eq!(summary.deleted, 6);
}

/// The release at shutdown fails: the worker still returns, within one call's timeout of
/// the drain, and the work it finished is deleted.
async fn shutdown(fault: Fault) {
    let mut agent = Agent::start().await;
    let rig = worker(&agent, Duration::from_millis(500), |_| {});
    rig.send(2).await;
    assert!(rig.handled_within(2, Duration::from_secs(5)).await);
    agent.fail(fault);
    let asked = Instant::now();
    let summary = rig.finish().await;
    assert!(asked.elapsed() < Duration::from_secs(12), "{fault:?}: the worker took {:?} to stop", asked.elapsed());
    assert_eq!(summary.deleted, 2);
    agent.recover().await;
}

macro_rules! every_fault {
    ($($phase:ident),*) => {
        $(
            mod $phase {
                use super::Fault;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn http_500() { super::$phase(Fault::Status500).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn http_504() { super::$phase(Fault::Status504).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn throttling() { super::$phase(Fault::Throttling).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn connection_refused() { super::$phase(Fault::Refused).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn timeout() { super::$phase(Fault::Timeout).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn deployment_blocked() { super::$phase(Fault::Blocked).await }
            }
        )*
    };
}

every_fault!(first_protect, refresh, release, shutdown);
