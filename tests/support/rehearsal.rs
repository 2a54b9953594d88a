//! The local ECS rehearsal: plays the ECS service scheduler against the real worker binary,
//! the local SQS server and one fake ECS agent per task, and prints a timeline like the
//! service events ECS shows. Shared by `examples/ecs_rehearsal.rs` and `tests/rehearsal.rs`;
//! both declare `mod fake_ecs` (tests/support/fake_ecs.rs) next to this module.
//!
//! What is modeled, as ECS does it:
//!
//! - each task is a worker process with the environment ECS and Copilot give a container:
//!   `COPILOT_QUEUE_URI`, `ECS_AGENT_URI` (its own agent endpoint), `AWS_*`, and the service's
//!   variables (`HOLDFAST_PROTECTION=agent`, `HOLDFAST_STOP_TIMEOUT`, ...);
//! - scale-in and deployments stop only unprotected tasks: the scheduler reads the task's
//!   protection from its agent (`GET {ECS_AGENT_URI}/task-protection/v1/state`) and waits
//!   while it is protected;
//! - stopping a task is SIGTERM, then SIGKILL once the stop timeout has passed;
//! - `aws ecs stop-task` and Fargate Spot interruptions stop a task whatever its protection;
//! - a stopped task of a service is replaced by a new one.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::QueueAttributeName;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::fake_ecs::FakeEcs;

/// What the rehearsal needs from outside.
pub(crate) struct Setup {
    /// The worker binary (`cargo build --example worker`).
    pub(crate) worker: PathBuf,
    /// The local SQS-compatible server (moto), e.g. `http://127.0.0.1:5000`.
    pub(crate) sqs_endpoint: String,
}

/// The scenarios, in the order they run.
pub(crate) const SCENARIOS: [&str; 5] = [
    "scale_in_waits_for_the_busy_task",
    "rolling_deployment_stop_task_mid_job_drains",
    "job_past_the_stop_timeout_is_killed_and_redelivered",
    "job_past_the_drain_deadline_is_released_before_the_kill",
    "rolling_deployment_of_a_busy_service_steps_aside",
];

/// How often the old task of scenario 5 checks its revision (`HOLDFAST_DEPLOYMENT_CHECK`).
const DEPLOYMENT_CHECK: Duration = Duration::from_millis(500);
/// The line a worker logs when it sees its revision replaced.
const STEPPING_ASIDE: &str = "a deployment replaced this task's revision: stepping aside (no new messages, unstarted \
                              ones released, running ones finish within the drain timeout, then protection is released)";

/// How the rehearsal went.
pub(crate) struct Report {
    pub(crate) passed: usize,
    pub(crate) failed: usize,
}

/// The container's stop timeout in scenarios 1, 2 and 4 (the worker is told it).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The visibility timeout of the queues, and the worker's `HOLDFAST_VISIBILITY_TIMEOUT`.
const VISIBILITY_S: u64 = 3;
/// The redrive policy's `maxReceiveCount`.
const MAX_RECEIVES: u32 = 3;
/// How long any single wait of the rehearsal may last.
const LIMIT: Duration = Duration::from_secs(30);
/// How often the scheduler reads a task's protection.
const POLL: Duration = Duration::from_millis(200);

/// Runs the scenarios named in `selected` (names from [`SCENARIOS`]), printing the timeline.
pub(crate) async fn run(setup: &Setup, selected: &[&str]) -> Report {
    let rehearsal = Rehearsal::new(setup);
    let started = Instant::now();
    let mut report = Report { passed: 0, failed: 0 };
    for (index, name) in SCENARIOS.iter().enumerate() {
        if !selected.contains(name) {
            continue;
        }
        let number = index + 1;
        rehearsal.clock.reset();
        let result = match number {
            1 => rehearsal.scale_in_while_busy(number).await,
            2 => rehearsal.rolling_deployment(number).await,
            3 => rehearsal.killed_at_the_stop_timeout(number).await,
            4 => rehearsal.released_at_the_drain_deadline(number).await,
            _ => rehearsal.busy_service_steps_aside(number).await,
        };
        match result {
            Ok(()) => {
                println!("--- scenario {number} ({name}): ok\n");
                report.passed += 1;
            }
            Err(why) => {
                println!("--- scenario {number} ({name}): FAILED\n{why}\n");
                report.failed += 1;
            }
        }
    }
    println!(
        "rehearsal: {} passed, {} failed ({:.1} s)",
        report.passed,
        report.failed,
        started.elapsed().as_secs_f64()
    );
    report
}

// ---- the timeline -----------------------------------------------------------------------

/// Prints `[+  1.2s] who: what`, timed from the start of the scenario.
struct Clock {
    zero: Mutex<Instant>,
}

impl Clock {
    fn reset(&self) {
        *self.zero.lock().unwrap() = Instant::now();
    }
    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(*self.zero.lock().unwrap()).as_secs_f64()
    }
    fn say(&self, who: &str, what: impl AsRef<str>) {
        self.say_at(Instant::now(), who, what);
    }
    fn say_at(&self, at: Instant, who: &str, what: impl AsRef<str>) {
        println!("[+{:5.1}s] {who}: {}", self.secs(at), what.as_ref());
    }
}

/// The checks of one scenario: each printed as it is made, the failures kept.
#[derive(Default)]
struct Verdict {
    failures: Vec<String>,
}

impl Verdict {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        println!("  {} {what}", if ok { "[ok]  " } else { "[FAIL]" });
        if !ok {
            self.failures.push(what);
        }
    }

    /// The scenario's result; on failure, with the failed checks and the tasks' logs.
    fn finish(self, tasks: &[&Task]) -> Result<(), String> {
        if self.failures.is_empty() {
            return Ok(());
        }
        let mut text = format!("failed checks:\n  - {}", self.failures.join("\n  - "));
        for task in tasks {
            text.push_str(&format!("\nlog of task {}:\n{}", task.name, task.tail(60)));
        }
        Err(text)
    }
}

// ---- the tasks --------------------------------------------------------------------------

/// One line the worker logged (it logs JSON: `HOLDFAST_LOG_FORMAT=json`).
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    level: String,
    message: String,
    /// The job id, for the lines about one job.
    job: Option<String>,
    receive_count: Option<u64>,
    fields: Value,
}

#[derive(Default)]
struct TaskLog {
    events: Vec<Event>,
    raw: Vec<String>,
    /// SQS message id to job id, from the "job started" lines.
    jobs: HashMap<String, String>,
}

impl TaskLog {
    fn record(&mut self, at: Instant, fields: Value) -> Event {
        let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
        let message_id = fields.pointer("/span/message_id").and_then(Value::as_str).map(str::to_owned);
        let mut job = text("job");
        if let (Some(job), Some(id)) = (&job, &message_id) {
            self.jobs.insert(id.clone(), job.clone());
        }
        if job.is_none() {
            job = message_id.and_then(|id| self.jobs.get(&id).cloned());
        }
        let event = Event {
            at,
            level: text("level").unwrap_or_default(),
            message: text("message").unwrap_or_default(),
            job,
            receive_count: fields.get("receive_count").and_then(Value::as_u64),
            fields,
        };
        self.events.push(event.clone());
        event
    }
}

/// How a task's process ended.
#[derive(Debug, Clone, Copy)]
struct Exit {
    at: Instant,
    code: Option<i32>,
    signal: Option<i32>,
}

impl Exit {
    fn killed(&self) -> bool {
        self.signal == Some(Signal::SIGKILL as i32)
    }

    fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exited {code}"),
            (None, Some(_)) if self.killed() => "killed by SIGKILL".into(),
            (None, Some(signal)) => format!("ended by signal {signal}"),
            (None, None) => "ended, status unknown".into(),
        }
    }
}

/// A worker process playing an ECS task, with its own fake ECS agent.
struct Task {
    name: String,
    pid: i32,
    agent: FakeEcs,
    /// When the agent started: its calls are timed from there.
    agent_zero: Instant,
    log: Arc<Mutex<TaskLog>>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Drop for Task {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

impl Task {
    fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    async fn wait_exit(&self, limit: Duration) -> Option<Exit> {
        let mut exit = self.exit.clone();
        match tokio::time::timeout(limit, exit.wait_for(Option::is_some)).await {
            Ok(Ok(exit)) => *exit,
            _ => None,
        }
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        if self.exited().is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid), signal).map_err(|e| format!("{signal} to task {}: {e}", self.name))
    }

    /// The events with this message.
    fn events(&self, message: &str) -> Vec<Event> {
        self.log.lock().unwrap().events.iter().filter(|e| e.message == message).cloned().collect()
    }

    /// Jobs started but not done at `at`.
    fn running_at(&self, at: Instant) -> Vec<String> {
        let log = self.log.lock().unwrap();
        let mut running: Vec<String> = Vec::new();
        for event in log.events.iter().filter(|e| e.at <= at) {
            let Some(job) = &event.job else { continue };
            match event.message.as_str() {
                "job started" => running.push(job.clone()),
                "job done" | "job interrupted" | "drain deadline passed: handler stopped, message released" => {
                    running.retain(|j| j != job)
                }
                _ => {}
            }
        }
        running
    }

    fn tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.raw.len().saturating_sub(lines);
        log.raw[skip..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    }

    /// Waits until `done` holds for the log, or fails after `limit`.
    async fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&TaskLog) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.log.lock().unwrap()) {
                return Ok(());
            }
            if let Some(exit) = self.exited() {
                return Err(format!(
                    "task {} {} before {what}; its log:\n{}",
                    self.name,
                    exit.describe(),
                    self.tail(60)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("task {}: no {what} within {limit:?}; its log:\n{}", self.name, self.tail(60)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_jobs_started(&self, count: usize) -> Result<(), String> {
        self.wait_until(&format!("{count} job(s) started"), LIMIT, |log| {
            log.events.iter().filter(|e| e.message == "job started").count() >= count
        })
        .await
    }

    /// The agent's state-changing calls: (seconds since the agent started, enabled).
    fn protection_updates(&self) -> Vec<(f64, bool)> {
        self.agent
            .updates()
            .into_iter()
            .filter(|c| c.status == 200 && c.outcome.is_none())
            .map(|c| (c.at_ms as f64 / 1000.0, c.enabled == Some(true)))
            .collect()
    }
}

/// Per job id, the tasks whose log has `message` for it (one entry per line).
fn tally(tasks: &[&Task], message: &str) -> BTreeMap<String, Vec<String>> {
    let mut tally: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for task in tasks {
        for event in task.events(message) {
            if let Some(job) = event.job {
                tally.entry(job).or_default().push(task.name.clone());
            }
        }
    }
    tally
}

/// Waits until every job of `jobs` has been done by one of `tasks`.
async fn wait_all_done(tasks: &[&Task], jobs: &[&str], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let done = tally(tasks, "job done");
        let missing: Vec<&str> = jobs.iter().copied().filter(|j| !done.contains_key(*j)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = tasks.iter().map(|t| format!("log of task {}:\n{}", t.name, t.tail(60))).collect();
            return Err(format!("jobs {missing:?} not done within {limit:?}\n{}", logs.join("\n")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The timeline text for a worker's log line, or `None` for lines left out of it.
fn describe(event: &Event) -> Option<String> {
    let field = |key: &str| event.fields.get(key).map_or_else(|| "?".to_owned(), |v| v.to_string().replace('"', ""));
    let job = event.job.as_deref().unwrap_or("?");
    let text = match event.message.as_str() {
        "worker started" => format!(
            "worker up, polling (concurrency {}, visibility {} s, drain deadline {} s after SIGTERM)",
            field("concurrency"),
            field("visibility_timeout_s"),
            field("drain_timeout_s")
        ),
        "task protected from scale-in" => {
            format!("protected from scale-in (agent: PUT ProtectionEnabled=true, {} min)", field("minutes"))
        }
        "scale-in protection is available again" => format!("protected from scale-in again ({} min)", field("minutes")),
        "scale-in protection released" => "scale-in protection released (agent: PUT ProtectionEnabled=false)".into(),
        "job started" => match event.receive_count {
            Some(n) if n > 1 => format!("job {job} started (attempt {n}: redelivered)"),
            _ => format!("job {job} started"),
        },
        "job done" => format!("job {job} done"),
        "job interrupted" => format!("job {job} interrupted"),
        "SIGTERM received" => "SIGTERM received: stops polling".into(),
        "stopped polling; draining" => {
            format!("draining: {} job(s) running, drain deadline in {} s", field("running"), field("drain_timeout_s"))
        }
        "drain deadline passed: stopping handlers and releasing their messages" => {
            format!("drain deadline passed with {} job(s) running: stopping them", field("running"))
        }
        "drain deadline passed: handler stopped, message released" => {
            format!("job {job} stopped, its message released (visible again at once)")
        }
        STEPPING_ASIDE => format!(
            "sees revision {} PRIMARY, its own is {}: steps aside (takes nothing new, finishes what runs)",
            field("primary_revision"),
            field("task_revision")
        ),
        "stepped aside: protection released, no work taken; idle until ECS stops this task" => {
            "stepped aside: idle, unprotected, waiting to be stopped".into()
        }
        "worker stopped" => format!(
            "worker stopped (received {}, succeeded {}, deleted {}, released {})",
            field("deliveries"),
            field("succeeded"),
            field("deleted"),
            field("released")
        ),
        message if event.level == "WARN" || event.level == "ERROR" => {
            let detail = ["error", "reason"]
                .iter()
                .filter(|k| event.fields.get(**k).is_some())
                .map(|k| format!(" {k}={}", field(k)))
                .collect::<String>();
            format!("{}: {message}{detail}", event.level)
        }
        _ => return None,
    };
    Some(text)
}

async fn read_log(name: String, stderr: tokio::process::ChildStderr, log: Arc<Mutex<TaskLog>>, clock: Arc<Clock>) {
    let who = format!("task {name}");
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let at = Instant::now();
        let text = {
            let mut log = log.lock().unwrap();
            log.raw.push(line.clone());
            match serde_json::from_str::<Value>(&line) {
                Ok(fields) if fields.is_object() => describe(&log.record(at, fields)),
                _ => Some(format!("(stderr) {line}")),
            }
        };
        if let Some(text) = text {
            clock.say_at(at, &who, text);
        }
    }
}

// ---- queues and the scheduler -----------------------------------------------------------

/// A scenario's queue and its dead-letter queue.
struct Queues {
    url: String,
    dlq: String,
}

/// How a task was stopped.
struct Stop {
    sigterm_at: Instant,
    exit: Exit,
}

impl Stop {
    fn took(&self) -> Duration {
        self.exit.at.saturating_duration_since(self.sigterm_at)
    }
}

struct Rehearsal<'a> {
    setup: &'a Setup,
    sqs: aws_sdk_sqs::Client,
    http: reqwest::Client,
    clock: Arc<Clock>,
    /// Makes queue names unique to this run.
    run_id: String,
}

impl<'a> Rehearsal<'a> {
    fn new(setup: &'a Setup) -> Self {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "rehearsal"))
            .endpoint_url(&setup.sqs_endpoint)
            .build();
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Rehearsal {
            setup,
            sqs: aws_sdk_sqs::Client::from_conf(config),
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("HTTP client"),
            clock: Arc::new(Clock { zero: Mutex::new(Instant::now()) }),
            run_id: format!("rehearsal-{}-{secs}", std::process::id()),
        }
    }

    fn say(&self, who: &str, what: impl AsRef<str>) {
        self.clock.say(who, what);
    }

    fn banner(&self, number: usize, title: &str, models: &[&str]) {
        println!("=== Scenario {number} of {}: {title}", SCENARIOS.len());
        for line in models {
            println!("    {line}");
        }
    }

    /// A fresh queue with a redrive policy to a fresh dead-letter queue.
    async fn create_queues(&self, name: &str, visibility_s: u64) -> Result<Queues, String> {
        let create = |name: String, attributes: HashMap<QueueAttributeName, String>| async move {
            self.sqs
                .create_queue()
                .queue_name(&name)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(|e| format!("create queue {name} on {}: {e:?}", self.setup.sqs_endpoint))?
                .queue_url
                .ok_or_else(|| format!("create queue {name}: no URL in the answer"))
        };
        let dlq = create(format!("{}-{name}-dlq", self.run_id), HashMap::new()).await?;
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| format!("dead-letter queue ARN: {e:?}"))?
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or("dead-letter queue ARN: missing")?;
        let attributes = HashMap::from([
            (QueueAttributeName::VisibilityTimeout, visibility_s.to_string()),
            (
                QueueAttributeName::RedrivePolicy,
                json!({ "deadLetterTargetArn": arn, "maxReceiveCount": MAX_RECEIVES.to_string() }).to_string(),
            ),
        ]);
        let url = create(format!("{}-{name}", self.run_id), attributes).await?;
        Ok(Queues { url, dlq })
    }

    /// Sends jobs for the worker example. The scenarios send only while no delete can be in
    /// flight: moto's delete rebuilds the queue's message list without a lock, so a message
    /// sent meanwhile can vanish (and a concurrent delete come undone).
    async fn send_jobs(&self, queues: &Queues, jobs: &[(&str, u64)]) -> Result<(), String> {
        for (id, work_ms) in jobs {
            self.sqs
                .send_message()
                .queue_url(&queues.url)
                .message_body(json!({ "id": id, "work_ms": work_ms }).to_string())
                .send()
                .await
                .map_err(|e| format!("send {id}: {e:?}"))?;
        }
        let list: Vec<String> = jobs.iter().map(|(id, ms)| format!("{id} {:.1} s", *ms as f64 / 1000.0)).collect();
        self.say("service", format!("sent to the queue: {}", list.join(", ")));
        Ok(())
    }

    /// (waiting, in flight) of a queue.
    async fn counts(&self, url: &str) -> Result<(u64, u64), String> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| format!("queue attributes of {url}: {e:?}"))?
            .attributes
            .unwrap_or_default();
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("queue attributes of {url}: no {name} in {attributes:?}"))
        };
        Ok((
            count(QueueAttributeName::ApproximateNumberOfMessages)?,
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
        ))
    }

    /// Checks that nothing is left in the queue or its dead-letter queue.
    async fn check_queues_empty(&self, verdict: &mut Verdict, queues: &Queues) -> Result<(), String> {
        let (waiting, in_flight) = self.counts(&queues.url).await?;
        let (dead, dead_in_flight) = self.counts(&queues.dlq).await?;
        verdict.check(
            waiting + in_flight + dead + dead_in_flight == 0,
            format!(
                "no message left: queue {waiting} waiting + {in_flight} in flight, dead-letter queue {}",
                dead + dead_in_flight
            ),
        );
        Ok(())
    }

    /// Starts a worker process with the environment ECS would give the task, and its own
    /// fake ECS agent. `env` adds variables; an empty value removes one.
    async fn start_task(&self, name: &str, queues: &Queues, note: &str, env: &[(&str, &str)]) -> Result<Task, String> {
        let agent = FakeEcs::start_on(0).await.map_err(|e| format!("fake ECS agent for {name}: {e}"))?;
        let agent_zero = Instant::now();
        let mut vars: BTreeMap<&str, String> = BTreeMap::from([
            // What Copilot and ECS put in the container's environment.
            ("COPILOT_QUEUE_URI", queues.url.clone()),
            ("ECS_AGENT_URI", agent.agent_uri()),
            ("ECS_CONTAINER_METADATA_URI_V4", agent.metadata_uri()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL_SQS", self.setup.sqs_endpoint.clone()),
            // The task's ECS API (DescribeServices, for HOLDFAST_DEPLOYMENT_CHECK) is its fake.
            ("AWS_ENDPOINT_URL_ECS", agent.endpoint_url()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            // The service's variables (the manifest's `variables`), with short times.
            ("HOLDFAST_PROTECTION", "agent".into()),
            ("HOLDFAST_PROTECTION_MAINTAIN", "1s".into()),
            ("HOLDFAST_STOP_TIMEOUT", STOP_TIMEOUT.as_secs().to_string()),
            ("HOLDFAST_VISIBILITY_TIMEOUT", VISIBILITY_S.to_string()),
            ("HOLDFAST_WAIT_TIME", "1".into()),
            ("HOLDFAST_CONCURRENCY", "3".into()),
            // moto loses deletes made concurrently: one delete request at a time.
            ("HOLDFAST_ACK_CONCURRENCY", "1".into()),
            ("HOLDFAST_LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info".into()),
        ]);
        for (key, value) in env {
            if value.is_empty() {
                vars.remove(key);
            } else {
                vars.insert(key, (*value).to_owned());
            }
        }
        let mut child = tokio::process::Command::new(&self.setup.worker)
            .env_clear()
            .envs(&vars)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start the worker {}: {e}", self.setup.worker.display()))?;
        let pid = child.id().ok_or("the worker exited at once")? as i32;
        let log = Arc::new(Mutex::new(TaskLog::default()));
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let reader = tokio::spawn(read_log(name.to_owned(), stderr, log.clone(), self.clock.clone()));
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let at = Instant::now();
            // The last lines first, so the timeline shows them before the exit.
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
            let (code, signal) = status.map_or((None, None), |s| (s.code(), s.signal()));
            let _ = exit_tx.send(Some(Exit { at, code, signal }));
        });
        self.say("service", format!("task {name} started ({note})"));
        Ok(Task { name: name.to_owned(), pid, agent, agent_zero, log, exit })
    }

    /// The task's protection as ECS sees it: `Some(expiry)` while protected.
    async fn protection(&self, task: &Task) -> Result<Option<String>, String> {
        let url = format!("{}/task-protection/v1/state", task.agent.agent_uri());
        let body: Value = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let protection = body.get("protection").ok_or_else(|| format!("GET {url}: unexpected answer {body}"))?;
        Ok(match protection.get("ProtectionEnabled") {
            Some(Value::Bool(true)) => {
                Some(protection.get("ExpirationDate").and_then(Value::as_str).unwrap_or("?").to_owned())
            }
            _ => None,
        })
    }

    /// Stops a task as ECS does: SIGTERM, then SIGKILL once `stop_timeout` has passed.
    async fn stop(&self, task: &Task, stop_timeout: Duration, who: &str) -> Result<Stop, String> {
        let name = &task.name;
        self.say(
            who,
            format!("SIGTERM to {name}; SIGKILL if it still runs after the {} s stop timeout", secs(stop_timeout)),
        );
        let sigterm_at = Instant::now();
        task.signal(Signal::SIGTERM)?;
        let exit = match task.wait_exit(stop_timeout).await {
            Some(exit) => exit,
            None => {
                self.say(who, format!("{name} still running after the {} s stop timeout: SIGKILL", secs(stop_timeout)));
                task.signal(Signal::SIGKILL)?;
                task.wait_exit(Duration::from_secs(5))
                    .await
                    .ok_or_else(|| format!("task {name} did not die within 5 s of SIGKILL"))?
            }
        };
        let stop = Stop { sigterm_at, exit };
        let what = format!("{}, {} after SIGTERM", exit.describe(), human(stop.took()));
        self.clock.say_at(exit.at, &format!("task {name}"), what);
        Ok(stop)
    }

    /// Scale-in as the service scheduler does it: the task is taken only once it is not
    /// protected. Returns how long the scheduler waited for it (`None`: not at all).
    async fn scale_in(&self, task: &Task) -> Result<(Option<Duration>, Stop), String> {
        let name = &task.name;
        let asked = Instant::now();
        let mut waited = None;
        while let Some(expires) = self.protection(task).await? {
            if waited.is_none() {
                self.say("scheduler", format!("scale-in wants {name}: protected (expires {expires}) — waiting"));
                waited = Some(Duration::ZERO);
            }
            if asked.elapsed() > LIMIT {
                return Err(format!("task {name} was still protected after {LIMIT:?}; its log:\n{}", task.tail(60)));
            }
            tokio::time::sleep(POLL).await;
        }
        match waited {
            Some(_) => {
                let after = asked.elapsed();
                waited = Some(after);
                self.say(
                    "scheduler",
                    format!("{name} no longer protected (waited {:.1} s): stopping it", after.as_secs_f64()),
                );
            }
            None => self.say("scheduler", format!("scale-in takes {name}: not protected")),
        }
        let stop = self.stop(task, STOP_TIMEOUT, "scheduler").await?;
        Ok((waited, stop))
    }

    /// Checks a stop that should have been a drain: exit 0, before the stop timeout.
    fn check_clean_exit(&self, verdict: &mut Verdict, task: &Task, stop: &Stop) {
        verdict.check(
            stop.exit.code == Some(0) && stop.took() < STOP_TIMEOUT,
            format!(
                "{} {}, {} after SIGTERM, within the {} s stop timeout (no SIGKILL)",
                task.name,
                stop.exit.describe(),
                human(stop.took()),
                secs(STOP_TIMEOUT)
            ),
        );
    }

    /// Checks that each job was done once, and by whom.
    fn check_done_once(&self, verdict: &mut Verdict, tasks: &[&Task], jobs: &[&str]) {
        let done = tally(tasks, "job done");
        let ok = jobs.iter().all(|j| done.get(*j).is_some_and(|by| by.len() == 1))
            && done.keys().all(|j| jobs.contains(&j.as_str()));
        let list: Vec<String> = done.iter().map(|(job, by)| format!("{job} by {}", by.join(" and "))).collect();
        verdict.check(ok, format!("each job done exactly once: {}", list.join(", ")));
    }

    // ---- the scenarios ------------------------------------------------------------------

    /// 1. Scale-in while busy: the scheduler waits for the protected task, then SIGTERM.
    async fn scale_in_while_busy(&self, number: usize) -> Result<(), String> {
        self.banner(
            number,
            "scale-in while the task is busy",
            &[
                "Copilot's count.queue_delay autoscaling counts the messages waiting, not those being handled:",
                "with the backlog gone it lowers the desired count, and ECS stops a task, but only an unprotected one.",
            ],
        );
        let queues = self.create_queues("scale-in", VISIBILITY_S).await?;
        let jobs = [("j1", 3000), ("j2", 2000)];
        self.send_jobs(&queues, &jobs).await?;
        let t1 = self.start_task("t1", &queues, "desired count 1", &[]).await?;
        t1.wait_jobs_started(jobs.len()).await?;
        let (waiting, in_flight) = self.counts(&queues.url).await?;
        self.say("autoscaling", format!("backlog {waiting} ({in_flight} in flight, not counted): desired count 1 → 0"));
        let (waited, stop) = self.scale_in(&t1).await?;

        let mut verdict = Verdict::default();
        verdict.check(
            waited.is_some(),
            format!(
                "the scheduler found t1 protected while it worked and waited {:.1} s",
                waited.unwrap_or_default().as_secs_f64()
            ),
        );
        let last_done = t1.events("job done").iter().map(|e| e.at).max();
        verdict.check(
            last_done.is_some_and(|at| at < stop.sigterm_at),
            format!(
                "SIGTERM came after the last job was done (done at +{:.1} s, SIGTERM at +{:.1} s)",
                last_done.map_or(f64::NAN, |at| self.clock.secs(at)),
                self.clock.secs(stop.sigterm_at)
            ),
        );
        let updates = t1.protection_updates();
        let released_before_sigterm = updates
            .last()
            .is_some_and(|(at, enabled)| !enabled && t1.agent_zero + Duration::from_secs_f64(*at) <= stop.sigterm_at);
        verdict.check(
            updates.first().is_some_and(|(_, enabled)| *enabled) && released_before_sigterm,
            format!(
                "t1's agent: protected, then released before SIGTERM ({} protect, {} release call(s))",
                updates.iter().filter(|(_, e)| *e).count(),
                updates.iter().filter(|(_, e)| !*e).count()
            ),
        );
        self.check_clean_exit(&mut verdict, &t1, &stop);
        self.check_done_once(&mut verdict, &[&t1], &["j1", "j2"]);
        verdict.check(t1.events("job interrupted").is_empty(), "no job interrupted");
        self.check_queues_empty(&mut verdict, &queues).await?;
        verdict.finish(&[&t1])
    }

    /// 2. Rolling deployment: the deployment waits for the busy old task; an operator stops
    ///    it anyway (stop-task), it drains and exits 0; nothing lost or done twice.
    async fn rolling_deployment(&self, number: usize) -> Result<(), String> {
        self.banner(
            number,
            "rolling deployment, the old task stopped mid-job",
            &[
                "`copilot svc deploy` starts the new revision's task, then stops the old one; like scale-in, a",
                "deployment waits while the old task is protected. `aws ecs stop-task` does not wait (nor does a",
                "Fargate Spot interruption): an operator hurrying the deployment stops the busy task, mid-job.",
            ],
        );
        let queues = self.create_queues("deploy", VISIBILITY_S).await?;
        let old_jobs = [("j1", 4000), ("j2", 4000), ("j3", 4000)];
        self.send_jobs(&queues, &old_jobs).await?;
        let t2 = self.start_task("t2", &queues, "revision 1", &[]).await?;
        t2.wait_jobs_started(old_jobs.len()).await?;
        // Sent once t2's slots are full, so they go to t3; no job has finished yet, so no
        // delete is in flight. Shorter than t2's, so t3's deletes do not coincide with t2's.
        let new_jobs = [("j4", 1500), ("j5", 1500), ("j6", 1500), ("j7", 1500)];
        self.send_jobs(&queues, &new_jobs).await?;
        self.say("deployment", "copilot svc deploy: revision 2 — start its task, then stop the old one");
        let t3 = self.start_task("t3", &queues, "revision 2, t2's replacement", &[]).await?;
        t3.wait_jobs_started(1).await?;
        let protected = self.protection(&t2).await?;
        match &protected {
            Some(expires) => {
                self.say("deployment", format!("old task t2 is protected (expires {expires}) — the deployment waits"))
            }
            None => self.say("deployment", "old task t2 is not protected"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.say("operator", "aws ecs stop-task --task t2 (protection does not hold back stop-task)");
        let running = t2.running_at(Instant::now());
        let stop = self.stop(&t2, STOP_TIMEOUT, "ECS").await?;
        self.say("deployment", "old task stopped: revision 2 is the service now");
        let all: Vec<&str> = old_jobs.iter().chain(&new_jobs).map(|(id, _)| *id).collect();
        wait_all_done(&[&t2, &t3], &all, LIMIT).await?;
        let (waiting, in_flight) = self.counts(&queues.url).await?;
        self.say("autoscaling", format!("backlog {waiting} ({in_flight} in flight): desired count 1 → 0"));
        let (_, stop_t3) = self.scale_in(&t3).await?;

        let mut verdict = Verdict::default();
        verdict
            .check(protected.is_some(), "the deployment found the busy old task t2 protected (it would have waited)");
        let drained: Vec<String> =
            t2.events("job done").into_iter().filter(|e| e.at > stop.sigterm_at).filter_map(|e| e.job).collect();
        verdict.check(
            !running.is_empty() && running.iter().all(|j| drained.contains(j)),
            format!("SIGTERM reached t2 with jobs {running:?} running; t2 finished {drained:?} after it (the drain)"),
        );
        self.check_clean_exit(&mut verdict, &t2, &stop);
        self.check_done_once(&mut verdict, &[&t2, &t3], &all);
        let started = tally(&[&t2, &t3], "job started");
        let twice: Vec<&String> = started.iter().filter(|(_, by)| by.len() > 1).map(|(job, _)| job).collect();
        verdict.check(
            twice.is_empty(),
            if twice.is_empty() {
                "no job delivered twice: each started once".to_owned()
            } else {
                format!("no job delivered twice: started more than once: {twice:?}")
            },
        );
        verdict.check(
            t2.events("job interrupted").is_empty() && t3.events("job interrupted").is_empty(),
            "no job interrupted",
        );
        self.check_clean_exit(&mut verdict, &t3, &stop_t3);
        self.check_queues_empty(&mut verdict, &queues).await?;
        verdict.finish(&[&t2, &t3])
    }

    /// 3. A job longer than the stop timeout, on a worker that drains past it: SIGKILL;
    ///    the message comes back after its visibility timeout and the replacement does it.
    async fn killed_at_the_stop_timeout(&self, number: usize) -> Result<(), String> {
        let stop_timeout = Duration::from_secs(3);
        self.banner(
            number,
            "a job longer than the stop timeout: SIGKILL, then redelivery",
            &[
                "A Fargate Spot interruption stops the task whatever its protection. Its stopTimeout is 3 s, but the",
                "worker was not told (HOLDFAST_STOP_TIMEOUT unset): it would drain for its default 25 s, so ECS",
                "kills it. The message, never deleted, comes back after its visibility timeout.",
            ],
        );
        let queues = self.create_queues("kill", VISIBILITY_S).await?;
        self.send_jobs(&queues, &[("j1", 5000)]).await?;
        let t4 = self
            .start_task("t4", &queues, "stopTimeout 3 s, HOLDFAST_STOP_TIMEOUT unset", &[("HOLDFAST_STOP_TIMEOUT", "")])
            .await?;
        t4.wait_jobs_started(1).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.say("ECS", "Fargate Spot interruption: stopping t4 (protection does not apply)");
        let stop = self.stop(&t4, stop_timeout, "ECS").await?;
        self.say("service", "t4 stopped: starting a replacement");
        let t5 = self.start_task("t5", &queues, "replacement", &[]).await?;
        wait_all_done(&[&t5], &["j1"], LIMIT).await?;
        let (_, stop_t5) = self.scale_in(&t5).await?;

        let mut verdict = Verdict::default();
        verdict.check(
            stop.exit.killed() && stop.took() >= stop_timeout,
            format!("t4 {}, {} after SIGTERM (the 3 s stop timeout)", stop.exit.describe(), human(stop.took())),
        );
        verdict.check(
            !t4.events("job started").is_empty() && t4.events("job done").is_empty(),
            "j1 was started on t4 and not finished there",
        );
        let redelivery = t5.events("job started").into_iter().find(|e| e.job.as_deref() == Some("j1"));
        let after_kill = redelivery.as_ref().map(|e| e.at.saturating_duration_since(stop.exit.at));
        verdict.check(
            redelivery.as_ref().is_some_and(|e| e.receive_count == Some(2) && e.at > stop.exit.at)
                && after_kill.is_some_and(|d| d <= Duration::from_secs(VISIBILITY_S + 5)),
            format!(
                "j1 redelivered to t5 as attempt {}, {} after the kill (visibility timeout {VISIBILITY_S} s)",
                attempt(redelivery.as_ref()),
                after_kill.map_or_else(|| "never".into(), human)
            ),
        );
        self.check_done_once(&mut verdict, &[&t4, &t5], &["j1"]);
        self.check_clean_exit(&mut verdict, &t5, &stop_t5);
        self.check_queues_empty(&mut verdict, &queues).await?;
        if self.protection(&t4).await?.is_some() {
            println!("  note: t4's fake agent still reports protection: a killed worker cannot release it;");
            println!("        ECS drops it with the stopped task.");
        }
        verdict.finish(&[&t4, &t5])
    }

    /// 4. The same interruption with the worker told the stop timeout: it stops the job at
    ///    its drain deadline, releases the message and exits 0 before SIGKILL; the
    ///    replacement takes the message at once, not after the visibility timeout.
    async fn released_at_the_drain_deadline(&self, number: usize) -> Result<(), String> {
        let visibility = "30";
        self.banner(
            number,
            "a job past the drain deadline, the worker told the stop timeout: released, no SIGKILL",
            &[
                "The same interruption, with the worker set up as the manifests do it: HOLDFAST_STOP_TIMEOUT equal to",
                "the stopTimeout (10 s), so its drain deadline is 5 s. The job needs longer: the worker stops it at",
                "the deadline, makes its message visible again and exits before ECS would kill it. Visibility 30 s.",
            ],
        );
        let queues = self.create_queues("release", 30).await?;
        self.send_jobs(&queues, &[("j1", 6500)]).await?;
        let env = [("HOLDFAST_VISIBILITY_TIMEOUT", visibility)];
        let t6 = self.start_task("t6", &queues, "stopTimeout 10 s = HOLDFAST_STOP_TIMEOUT", &env).await?;
        t6.wait_jobs_started(1).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.say("ECS", "Fargate Spot interruption: stopping t6 (protection does not apply)");
        let stop = self.stop(&t6, STOP_TIMEOUT, "ECS").await?;
        self.say("service", "t6 stopped: starting a replacement");
        let t7 = self.start_task("t7", &queues, "replacement", &env).await?;
        wait_all_done(&[&t7], &["j1"], LIMIT).await?;
        let (_, stop_t7) = self.scale_in(&t7).await?;

        let mut verdict = Verdict::default();
        self.check_clean_exit(&mut verdict, &t6, &stop);
        verdict.check(
            stop.took() >= Duration::from_millis(4500),
            format!("t6 drained until its 5 s drain deadline ({})", human(stop.took())),
        );
        let released = t6.events("drain deadline passed: handler stopped, message released");
        verdict.check(
            released.iter().any(|e| e.job.as_deref() == Some("j1")) && t6.events("job done").is_empty(),
            "t6 stopped j1 at the drain deadline and released its message, unfinished",
        );
        let updates = t6.protection_updates();
        verdict.check(
            updates.last().is_some_and(|(_, enabled)| !enabled),
            "t6 released its scale-in protection before exiting",
        );
        let redelivery = t7.events("job started").into_iter().find(|e| e.job.as_deref() == Some("j1"));
        let after_exit = redelivery.as_ref().map(|e| e.at.saturating_duration_since(stop.exit.at));
        verdict.check(
            redelivery.as_ref().is_some_and(|e| e.receive_count == Some(2))
                && after_exit.is_some_and(|d| d < Duration::from_secs(5)),
            format!(
                "j1 taken by t7 as attempt {}, {} after t6 exited: it did not wait out the {visibility} s visibility timeout",
                attempt(redelivery.as_ref()),
                after_exit.map_or_else(|| "never".into(), human)
            ),
        );
        self.check_done_once(&mut verdict, &[&t6, &t7], &["j1"]);
        self.check_clean_exit(&mut verdict, &t7, &stop_t7);
        self.check_queues_empty(&mut verdict, &queues).await?;
        verdict.finish(&[&t6, &t7])
    }

    /// 5. Rolling deployment of a busy service: a backlog keeps the old task busy, so it
    ///    would stay protected; with the deployment check it notices the new PRIMARY
    ///    revision, finishes what runs, releases protection and is stopped at once.
    async fn busy_service_steps_aside(&self, number: usize) -> Result<(), String> {
        self.banner(
            number,
            "rolling deployment of a busy service",
            &[
                "A task that always has work keeps its protection, and the deployment waits for it to be released",
                "or to expire (an hour by default). With HOLDFAST_DEPLOYMENT_CHECK the old task compares its revision",
                "with the service's PRIMARY deployment (DescribeServices) and steps aside once it is replaced.",
            ],
        );
        let queues = self.create_queues("busy-deploy", VISIBILITY_S).await?;
        // Three jobs fill t8's three slots; six more wait behind them: the old task would
        // carry on with them as soon as a slot frees.
        let running = [("j1", 3000), ("j2", 3000), ("j3", 3000)];
        self.send_jobs(&queues, &running).await?;
        let check = format!("{}ms", DEPLOYMENT_CHECK.as_millis());
        let t8 = self
            .start_task(
                "t8",
                &queues,
                "revision 1, checks its revision every 500 ms",
                &[("HOLDFAST_DEPLOYMENT_CHECK", &check), ("HOLDFAST_PROTECTION_MAINTAIN", "60s")],
            )
            .await?;
        t8.wait_jobs_started(running.len()).await?;
        let backlog = [("j4", 3000), ("j5", 3000), ("j6", 3000), ("j7", 3000), ("j8", 3000), ("j9", 3000)];
        self.send_jobs(&queues, &backlog).await?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let protected = self.protection(&t8).await?;
        let describes_before = t8.agent.describe_calls().len();
        t8.agent.deploy(2);
        let primary_at = Instant::now();
        let in_flight = t8.running_at(primary_at);
        self.say("deployment", "copilot svc deploy: revision 2 is the PRIMARY deployment; its task starts");
        let t9 = self.start_task("t9", &queues, "revision 2", &[]).await?;
        // The deployment stops the old task as soon as it is no longer protected.
        let mut waited = false;
        while let Some(expires) = self.protection(&t8).await? {
            if !waited {
                self.say("deployment", format!("old task t8 is protected (expires {expires}) — waiting"));
                waited = true;
            }
            if primary_at.elapsed() > LIMIT {
                return Err(format!("t8 still protected {LIMIT:?} after revision 2 became primary:\n{}", t8.tail(60)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let unprotected_at = Instant::now();
        self.say("deployment", "t8 no longer protected: stopping it");
        let stop = self.stop(&t8, STOP_TIMEOUT, "deployment").await?;
        let to_stopped = stop.exit.at.saturating_duration_since(primary_at);
        let released_at = t8
            .protection_updates()
            .iter()
            .rev()
            .find(|(_, enabled)| !enabled)
            .map(|(at, _)| t8.agent_zero + Duration::from_secs_f64(*at));
        let to_released = released_at.unwrap_or(unprotected_at).saturating_duration_since(primary_at);
        self.say("deployment", "old task stopped: revision 2 is the service now");
        let all: Vec<&str> = running.iter().chain(&backlog).map(|(id, _)| *id).collect();
        wait_all_done(&[&t8, &t9], &all, LIMIT).await?;
        let (_, stop_t5) = self.scale_in(&t9).await?;

        let mut verdict = Verdict::default();
        verdict.check(
            protected.is_some() && describes_before > 0,
            format!(
                "t8 busy and protected, checking its revision ({describes_before} DescribeServices call(s) so far)"
            ),
        );
        let aside = t8.events(STEPPING_ASIDE);
        verdict.check(
            aside.first().is_some_and(|e| {
                e.fields.get("task_revision").and_then(Value::as_str) == Some("holdfast-worker:1")
                    && e.fields.get("primary_revision").and_then(Value::as_str) == Some("holdfast-worker:2")
            }),
            "t8 logged at warn that revision 2 replaced its revision 1",
        );
        let t4_done: Vec<String> = t8.events("job done").into_iter().filter_map(|e| e.job).collect();
        verdict.check(
            !in_flight.is_empty() && in_flight.iter().all(|j| t4_done.contains(j)) && t4_done.len() == in_flight.len(),
            format!("t8 finished the jobs it was running ({in_flight:?}) and took no other: it did {t4_done:?}"),
        );
        let goal = Duration::from_millis(3000) + DEPLOYMENT_CHECK + Duration::from_secs(1);
        verdict.check(
            released_at.is_some_and(|at| at < stop.sigterm_at),
            format!(
                "t8 released its protection {} after revision 2 became primary (goal: at most the longest job \
                 3 s + one check 0.5 s + 1 s = {}; without the check it would keep it while the backlog lasts, up \
                 to the 60 min expiry), before SIGTERM",
                human(to_released),
                human(goal)
            ),
        );
        verdict.check(
            stop.exit.code == Some(0) && t8.events("job interrupted").is_empty(),
            format!(
                "revision 2 primary → old task stopped: {} (idle at SIGTERM: exit 0, {} after it)",
                human(to_stopped),
                human(stop.took())
            ),
        );
        self.check_done_once(&mut verdict, &[&t8, &t9], &all);
        let started = tally(&[&t8, &t9], "job started");
        let twice: Vec<&String> = started.iter().filter(|(_, by)| by.len() > 1).map(|(job, _)| job).collect();
        verdict.check(twice.is_empty(), format!("no job lost or started twice (started twice: {twice:?})"));
        let describes = t8.agent.describe_calls().len();
        verdict.check(
            describes >= 1,
            format!(
                "t8 made {describes} DescribeServices call(s), one per 500 ms: {} an hour at this interval, 60 at 60s",
                3_600_000 / DEPLOYMENT_CHECK.as_millis()
            ),
        );
        self.check_clean_exit(&mut verdict, &t9, &stop_t5);
        self.check_queues_empty(&mut verdict, &queues).await?;
        verdict.finish(&[&t8, &t9])
    }
}

/// `0.3 s`, or `12 ms` under a second.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{} ms", d.as_millis()) } else { format!("{:.1} s", d.as_secs_f64()) }
}

/// The attempt number of a "job started" line, for the checks.
fn attempt(event: Option<&Event>) -> String {
    event.and_then(|e| e.receive_count).map_or_else(|| "?".into(), |n| n.to_string())
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0}") } else { format!("{s:.1}") }
}
