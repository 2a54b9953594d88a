//! The worker: wires pollers, dispatchers, heartbeats and ackers together for each queue,
//! and shuts them down in order.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acker::{AckStats, Acker};
use crate::config::{MetricsOutput, STOP_MARGIN};
use crate::dispatch::{Counters, Dispatcher, Pool, Work};
use crate::events::{Event, Events, ProtectionEvent, ShutdownPhase, Subscription};
use crate::health::Health;
use crate::lease::Leases;
use crate::poller::{Activity, Poller};
use crate::queue::{BATCH_MAX, Opener};
use crate::telemetry::{Telemetry, names};
use crate::{BatchHandler, Config, Error, Handler, LogFormat, Protection, ProtectionState, Queue};

/// What a worker did in one run, returned by [`Worker::run`].
///
/// The counts are of *deliveries*: SQS hands a message out again after a failure or a
/// [`Outcome::Retry`](crate::Outcome::Retry), and each delivery counts once. Every delivery
/// ends in exactly one of `succeeded`, `retried`, `dead_lettered` or `released`, so
/// `deliveries == succeeded + retried + dead_lettered + released`; `failed` counts the
/// deliveries whose handler failed, whichever of `retried` or `dead_lettered` followed.
/// A job that fails once and then succeeds reads `deliveries: 2, succeeded: 1, failed: 1,
/// retried: 1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Messages received from the queue, counting each delivery: a message delivered twice
    /// counts twice.
    pub deliveries: u64,
    /// Deliveries handled with [`Outcome::Ack`](crate::Outcome::Ack): the message is deleted.
    pub succeeded: u64,
    /// Deliveries whose handler failed: an error, a panic or a timeout. Each is also counted
    /// in `retried` (backed off, delivered again later) or in `dead_lettered`.
    pub failed: u64,
    /// Deliveries put back to be delivered again later: a failure backed off, or the handler
    /// returned [`Outcome::Retry`](crate::Outcome::Retry).
    pub retried: u64,
    /// Deliveries copied to a dead-letter queue (and then deleted) as not retryable.
    pub dead_lettered: u64,
    /// Deliveries given back unhandled (received but not started at shutdown, stopped at the
    /// drain deadline, held back behind an earlier message of their FIFO group, or refused
    /// scale-in protection in strict mode): visible again at once.
    pub released: u64,
    /// Messages deleted from the queue (handled, or copied to the dead-letter queue).
    pub deleted: u64,
    /// Deletes that failed for good (the message will be delivered again).
    pub delete_failed: u64,
    /// The worker stepped aside because a deployment replaced its task's revision
    /// (`HOLDFAST_DEPLOYMENT_CHECK`), then waited idle for the shutdown.
    pub stepped_aside: bool,
}

/// Which queue a route reads.
#[derive(Debug, Clone)]
enum Source {
    Queue(Queue),
    /// A Copilot topic-specific queue, by its name in `COPILOT_TOPIC_QUEUE_URIS`.
    Topic(String),
}

/// A queue and the handler for its messages, for a worker that reads several queues. All
/// routes share the worker's concurrency limit (and its scale-in protection).
///
/// ```no_run
/// use holdfast::{handler_fn, BoxError, Outcome, Route, Worker};
///
/// # async fn example() -> Result<(), holdfast::Error> {
/// let ok = || handler_fn(|_msg, _ctx| async { Ok::<_, BoxError>(Outcome::Ack) });
/// Worker::from_env()?
///     .handler(ok())                                       // COPILOT_QUEUE_URI's queue
///     .route(Route::topic("merchantOrdersEventsQueue", ok())) // a topic-specific queue
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Route {
    source: Source,
    work: Work,
    dead_letter: Option<Queue>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Route {
    /// `queue`'s messages go to `handler`.
    pub fn new(queue: Queue, handler: impl Handler) -> Self {
        Self { source: Source::Queue(queue), work: Work::One(Arc::new(handler)), dead_letter: None }
    }

    /// `queue`'s messages go to `handler` up to ten at a time.
    pub fn batch(queue: Queue, handler: impl BatchHandler) -> Self {
        Self { source: Source::Queue(queue), work: Work::Batch(Arc::new(handler)), dead_letter: None }
    }

    /// The Copilot topic-specific queue named `name` in `COPILOT_TOPIC_QUEUE_URIS` (e.g.
    /// `merchantOrdersEventsQueue`) goes to `handler`. A name the variable does not hold
    /// stops `run` with an error listing the names it does.
    pub fn topic(name: impl Into<String>, handler: impl Handler) -> Self {
        Self { source: Source::Topic(name.into()), work: Work::One(Arc::new(handler)), dead_letter: None }
    }

    /// Messages that cannot succeed go to `queue` at once, with the reason.
    #[must_use]
    pub fn dead_letter_queue(mut self, queue: Queue) -> Self {
        self.dead_letter = Some(queue);
        self
    }
}

/// A queue worker: a [`Config`], a [`Handler`] and (optionally) a [`Queue`], or several
/// [`Route`]s.
///
/// ```no_run
/// use holdfast::{handler_fn, Outcome, Worker};
///
/// # async fn example() -> Result<(), holdfast::Error> {
/// Worker::from_env()?
///     .handler(handler_fn(|msg, _ctx| async move {
///         println!("{}", msg.body());
///         Ok::<_, std::io::Error>(Outcome::Ack)
///     }))
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    config: Config,
    queue: Option<Queue>,
    dead_letter: Option<Queue>,
    main: Option<Work>,
    routes: Vec<Route>,
    protection: Option<Protection>,
    events: Events,
    deployment_client: Option<aws_sdk_ecs::Client>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("queue", &self.queue)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// One queue's moving parts.
struct Lane {
    queue: Queue,
    dispatcher: Arc<Dispatcher>,
    ack_stats: Arc<AckStats>,
    acker_task: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// A worker with this configuration.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            queue: None,
            dead_letter: None,
            main: None,
            routes: Vec::new(),
            protection: None,
            events: Events::default(),
            deployment_client: None,
        }
    }

    /// A subscription to what this worker does ([`Event`]s), from its next run on. Events
    /// are built only while someone subscribes; a subscriber that falls more than
    /// [`EVENT_CAPACITY`](crate::EVENT_CAPACITY) events behind loses the oldest and is told
    /// so with [`Event::Lost`]: handling never waits for a subscriber.
    pub fn subscribe(&self) -> Subscription {
        self.events.subscribe()
    }

    /// A worker configured from the environment (see the README's table), with logging set
    /// up in the configured format (`HOLDFAST_LOG_FORMAT`, filtered by `RUST_LOG`, default
    /// `info`) unless the program already installed a tracing subscriber.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first missing or invalid variable and its accepted values.
    pub fn from_env() -> Result<Self, Error> {
        let config = Config::from_env()?;
        init_logging(&config);
        Ok(Self::new(config))
    }

    /// The handler for the main queue's messages.
    #[must_use]
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.main = Some(Work::One(Arc::new(handler)));
        self
    }

    /// A batch handler for the main queue's messages, up to ten at a time.
    #[must_use]
    pub fn batch_handler(mut self, handler: impl BatchHandler) -> Self {
        self.main = Some(Work::Batch(Arc::new(handler)));
        self
    }

    /// The main queue; without it, the configured queue URL is opened when the worker starts
    /// (`memory://NAME` makes a new embedded queue).
    #[must_use]
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Where the main queue's messages that cannot succeed go at once; without it, the
    /// configured `HOLDFAST_DEAD_LETTER_QUEUE_URL`, if any.
    #[must_use]
    pub fn dead_letter_queue(mut self, queue: Queue) -> Self {
        self.dead_letter = Some(queue);
        self
    }

    /// Another queue with its own handler, sharing this worker's concurrency limit.
    #[must_use]
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// The scale-in protection to use; without it, one is made from the configuration
    /// (`HOLDFAST_PROTECTION*`) when the worker starts. Pass [`Protection::off`] to test
    /// without ECS, or a manager shared with other work of the process.
    #[must_use]
    pub fn protection(mut self, protection: Protection) -> Self {
        self.protection = Some(protection);
        self
    }

    /// The ECS client the deployment check (`HOLDFAST_DEPLOYMENT_CHECK`) calls
    /// `DescribeServices` with; without it, one is built from the default AWS configuration
    /// (the task role) in the task's region.
    #[must_use]
    pub fn deployment_client(mut self, client: aws_sdk_ecs::Client) -> Self {
        self.deployment_client = Some(client);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the configuration.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Runs until SIGTERM or SIGINT, then drains and returns.
    ///
    /// # Errors
    ///
    /// See [`run_until`](Self::run_until); also [`Error::Io`] if the signal handlers cannot
    /// be installed.
    pub async fn run(self) -> Result<Summary, Error> {
        let signal = crate::shutdown::signal()?;
        self.run_until(signal).await
    }

    /// Runs until `shutdown` resolves (or, with `exit_when_idle`, until the queues stay
    /// empty that long), then stops polling, releases messages not started, lets running
    /// handlers finish until the drain deadline, stops and releases the rest, flushes
    /// acknowledgements, and returns what it did. It never exits the process.
    ///
    /// # Errors
    ///
    /// [`Error::Incomplete`] without a handler or queue, or for a topic route whose name
    /// `COPILOT_TOPIC_QUEUE_URIS` does not hold; [`Error::Config`] for a
    /// `system_attributes` name SQS does not know; [`Error::Queue`] when a queue fails in a way
    /// retrying cannot heal (it does not exist, access is denied), after the same orderly
    /// shutdown.
    pub async fn run_until<F>(self, shutdown: F) -> Result<Summary, Error>
    where
        F: Future<Output = ()> + Send,
    {
        // A name SQS does not know would fail every receive: refused before anything starts.
        let system_attributes = self.config.system_attribute_names()?;
        let config = Arc::new(self.config);
        let mut opener = Opener::default();
        let mut routes = Vec::new();
        if let Some(work) = self.main {
            let queue = match self.queue {
                Some(queue) => queue,
                None => {
                    opener
                        .open(
                            config
                                .queue_url
                                .as_deref()
                                .ok_or(Error::Incomplete("a queue (Worker::queue, or a queue URL in the config)"))?,
                            "HOLDFAST_QUEUE_URL",
                        )
                        .await?
                }
            };
            let dead_letter = match (self.dead_letter, &config.dead_letter_queue_url) {
                (Some(queue), _) => Some(queue),
                (None, Some(url)) => Some(opener.open(url, "HOLDFAST_DEAD_LETTER_QUEUE_URL").await?),
                (None, None) => None,
            };
            routes.push((queue, work, dead_letter));
        }
        for route in self.routes {
            let queue = match route.source {
                Source::Queue(queue) => queue,
                Source::Topic(name) => match config.topic_queues.get(&name) {
                    Some(url) => opener.open(url, "COPILOT_TOPIC_QUEUE_URIS").await?,
                    None => {
                        let known: Vec<&str> = config.topic_queues.keys().map(String::as_str).collect();
                        return Err(Error::Queue {
                            queue_url: format!("COPILOT_TOPIC_QUEUE_URIS[{name}]"),
                            message: format!(
                                "no topic queue named {name:?}; COPILOT_TOPIC_QUEUE_URIS holds {known:?} (subscribe.topics[].queue in the manifest creates one)"
                            ),
                        });
                    }
                },
            };
            routes.push((queue, route.work, route.dead_letter));
        }
        if routes.is_empty() {
            return Err(Error::Incomplete("a handler (Worker::handler or Worker::route)"));
        }
        // No SQS call waits for an answer longer than its limit, whoever built the client.
        let routes: Vec<_> = routes
            .into_iter()
            .map(|(queue, work, dead_letter)| {
                let limit = config.sqs_timeout;
                (queue.with_call_timeout(limit), work, dead_letter.map(|q| q.with_call_timeout(limit)))
            })
            .collect();
        let protection = match self.protection {
            Some(protection) => protection,
            None => {
                // The bounded hold waits for running work no longer than a shutdown would.
                let mut settings = config.protection.clone();
                settings.hold_drain = config.drain_timeout;
                Protection::from_config(&settings).await?
            }
        };

        let emf = match config.metrics {
            MetricsOutput::Emf => crate::emf::install(&config.metrics_namespace),
            _ => None,
        };
        let events = self.events;
        let health = Arc::new(Health::new(config.health_threshold));
        let intake = CancellationToken::new();
        let deadline = CancellationToken::new();
        let heartbeat_stop = CancellationToken::new();
        let telemetry_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let counters = Arc::new(Counters::default());
        let activity = Arc::new(Activity::new());
        let slots = Arc::new(Semaphore::new(config.concurrency));
        let health_task =
            tokio::spawn(health.clone().run(config.health_file.clone(), slots.clone(), telemetry_stop.clone()));
        let protection_task =
            tokio::spawn(watch_protection(protection.subscribe(), events.clone(), telemetry_stop.clone()));
        let emf_stop = CancellationToken::new();
        let emf_task =
            emf.map(|collector| tokio::spawn(crate::emf::run(collector, config.metrics_interval, emf_stop.clone())));
        // An idle queue's long poll holds the slots it polls for: give each queue a share.
        let share = config.concurrency.div_ceil(routes.len());
        let mut pollers = Vec::new();
        let mut lanes = Vec::new();
        for (queue, work, dead_letter) in routes {
            let telemetry = Telemetry::new(queue.url(), events.clone(), health.clone());
            let (acker, ack_stats, acker_task) = Acker::spawn_observed(
                queue.clone(),
                config.ack_interval,
                config.ack_concurrency,
                share,
                telemetry.clone(),
            );
            let leases = Leases::observed(
                queue.clone(),
                config.visibility_timeout,
                config.heartbeat_interval,
                telemetry.clone(),
            );
            let heartbeat = tokio::spawn(leases.clone().run(heartbeat_stop.clone()));
            let dispatcher = Arc::new(Dispatcher {
                work,
                queue: queue.clone(),
                dead_letter,
                acker,
                leases,
                protection: protection.clone(),
                protecting: Arc::default(),
                pool: Pool::default(),
                config: config.clone(),
                intake: intake.clone(),
                deadline: deadline.clone(),
                counters: counters.clone(),
                telemetry,
            });
            // Tasks a burst left idle end after a while; the trimmer stops when the pool closes.
            tokio::spawn(crate::dispatch::trim_idle(dispatcher.clone(), crate::dispatch::IDLE_KEEP));
            // The pollers' batches add up to the share (64: one of ten and six of nine). Were
            // they to add up to more, one poller could never fill its batch: at every turn it
            // would wait out the batch window, and the freed slots it took would sit idle.
            let count = share.div_ceil(BATCH_MAX);
            // Fewer receives than pollers may be in flight at once: each holds a connection
            // and, on an idle queue, a long poll billed every wait time.
            let receives = Arc::new(tokio::sync::Semaphore::new(config.receive_concurrency));
            let gathering = Arc::new(tokio::sync::Mutex::new(()));
            for index in 0..count {
                let batch_target = share / count + usize::from(index < share % count);
                let poller = Poller {
                    queue: queue.clone(),
                    slots: slots.clone(),
                    dispatcher: dispatcher.clone(),
                    tracker: tracker.clone(),
                    intake: intake.clone(),
                    wait_time: config.wait_time,
                    visibility_timeout: config.visibility_timeout,
                    batch_target,
                    batch_window: config.batch_window,
                    gathering: gathering.clone(),
                    receives: receives.clone(),
                    activity: activity.clone(),
                    shutdown_receive: config.shutdown_receive.limit(config.drain_timeout),
                    system_attributes,
                };
                pollers.push(poller);
            }
            tracing::info!(
                queue = queue.url(),
                fifo = queue.is_fifo(),
                dead_letter_queue = dispatcher.dead_letter.as_ref().map(Queue::url),
                "reading queue"
            );
            lanes.push(Lane { queue, dispatcher, ack_stats, acker_task, heartbeat });
        }
        tracing::info!(
            queues = lanes.len(),
            concurrency = config.concurrency,
            pollers = pollers.len(),
            receive_concurrency = config.receive_concurrency,
            visibility_timeout_s = config.visibility_timeout.as_secs(),
            drain_timeout_s = config.drain_timeout.as_secs(),
            "worker started"
        );
        let mut pollers: JoinSet<_> = pollers.into_iter().map(Poller::run).collect();
        let progress = config
            .progress_interval
            .map(|every| tokio::spawn(crate::progress::report(counters.clone(), every, heartbeat_stop.clone())));

        let idle = async {
            let Some(limit) = config.exit_when_idle else { return std::future::pending().await };
            loop {
                tokio::time::sleep(limit.min(Duration::from_millis(250))).await;
                if tracker.is_empty() && activity.quiet_for() >= limit {
                    tracing::info!(idle_s = limit.as_secs(), "no work for the idle limit: shutting down");
                    return;
                }
            }
        };
        let replaced = crate::deployment::watch_if_on(&config, self.deployment_client, &protection);
        let mut stepped_aside = None;
        let mut fatal = None;
        tokio::pin!(shutdown);
        tokio::pin!(idle);
        tokio::pin!(replaced);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = &mut idle => break,
                seen = &mut replaced => {
                    metrics::gauge!(crate::telemetry::names::STEPPED_ASIDE).set(1.0);
                    events.emit(|| Event::SteppedAside(seen.reason()));
                    stepped_aside = Some(seen);
                    break;
                }
                done = pollers.join_next() => match done {
                    Some(Ok(Err(error))) => {
                        fatal = Some(error);
                        break;
                    }
                    Some(Ok(Ok(()))) => {}
                    Some(Err(join)) => {
                        fatal = Some(Error::Queue { queue_url: String::new(), message: format!("poller failed: {join}") });
                        break;
                    }
                    None => break,
                },
            }
        }

        // Stop taking messages: receives in flight finish (within their limit) and hand back
        // what they bring, messages received but not started are released by their tasks,
        // and running handlers go on meanwhile, all within the drain deadline.
        if stepped_aside.is_none() {
            events.emit(|| Event::Shutdown(ShutdownPhase::SignalReceived));
        }
        intake.cancel();
        let drain_end = tokio::time::Instant::now() + config.drain_timeout;
        let receiving = activity.receiving();
        let receive_limit = config.shutdown_receive.limit(config.drain_timeout);
        if receiving > 0 && !receive_limit.is_zero() {
            tracing::info!(
                receives = receiving,
                up_to_s = receive_limit.min(config.wait_time).as_secs_f64(),
                "shutting down: waiting for the receive in flight"
            );
        }
        while pollers.join_next().await.is_some() {}
        // No message comes in any more: idle message tasks end now, busy ones after their job.
        lanes.iter().for_each(|lane| lane.dispatcher.pool.close());
        health.draining();
        events.emit(|| Event::Shutdown(ShutdownPhase::PollingStopped));
        tracker.close();
        let running = tracker.len();
        if running > 0 {
            events.emit(|| Event::Shutdown(ShutdownPhase::DrainStarted { running }));
            tracing::info!(
                running,
                drain_timeout_s = drain_end.saturating_duration_since(tokio::time::Instant::now()).as_secs(),
                "stopped polling; draining"
            );
        }
        if tokio::time::timeout_at(drain_end, tracker.wait()).await.is_err() {
            let running = tracker.len();
            events.emit(|| Event::Shutdown(ShutdownPhase::DrainDeadlinePassed { running }));
            tracing::warn!(running, "drain deadline passed: stopping handlers and releasing their messages");
            deadline.cancel();
            tracker.wait().await;
        }
        heartbeat_stop.cancel();
        if let Some(progress) = progress {
            let _ = progress.await;
        }
        let mut summary = Summary::default();
        // The deletes may take what is left of the margin before ECS's SIGKILL but one second,
        // kept for releasing protection: a server that stops answering must not keep the
        // worker past the stop timeout.
        let flush_end = drain_end + STOP_MARGIN - Duration::from_secs(1);
        for mut lane in lanes {
            let _ = lane.heartbeat.await;
            drop(lane.dispatcher);
            match tokio::time::timeout_at(flush_end, &mut lane.acker_task).await {
                Ok(Ok(())) => {}
                Ok(Err(join)) => tracing::error!(queue = lane.queue.url(), %join, "acknowledgement task failed"),
                Err(_) => {
                    lane.acker_task.abort();
                    tracing::warn!(
                        queue = lane.queue.url(),
                        "shutting down: the last deletes did not finish in time and were abandoned; their messages will be delivered again after their visibility timeout"
                    );
                }
            }
            summary.deleted += lane.ack_stats.deleted.load(Ordering::Relaxed);
            summary.delete_failed += lane.ack_stats.delete_failed.load(Ordering::Relaxed);
        }
        events.emit(|| Event::Shutdown(ShutdownPhase::DeletesFlushed));
        // Deletes are flushed: the task may be taken now.
        protection.shutdown().await;
        if let Some(seen) = &stepped_aside
            && fatal.is_none()
        {
            summary.stepped_aside = true;
            crate::deployment::idle_until(seen, &mut shutdown).await;
        }
        telemetry_stop.cancel();
        let _ = health_task.await;
        let _ = protection_task.await;
        summary.deliveries = counters.received.load(Ordering::Relaxed);
        summary.succeeded = counters.succeeded.load(Ordering::Relaxed);
        summary.retried = counters.retried.load(Ordering::Relaxed);
        summary.failed = counters.failed.load(Ordering::Relaxed);
        summary.dead_lettered = counters.dead_lettered.load(Ordering::Relaxed);
        summary.released = counters.released.load(Ordering::Relaxed);
        tracing::info!(
            deliveries = summary.deliveries,
            succeeded = summary.succeeded,
            failed = summary.failed,
            retried = summary.retried,
            dead_lettered = summary.dead_lettered,
            released = summary.released,
            deleted = summary.deleted,
            "worker stopped"
        );
        emf_stop.cancel();
        if let Some(task) = emf_task {
            let _ = task.await;
        }
        events.emit(|| Event::Shutdown(ShutdownPhase::Stopped));
        match fatal {
            Some(error) => Err(error),
            None => Ok(summary),
        }
    }
}

/// Turns protection state changes into the `holdfast_protected` gauge and protection
/// events, until `stop` or the manager shuts down.
async fn watch_protection(
    mut states: tokio::sync::watch::Receiver<ProtectionState>,
    events: Events,
    stop: CancellationToken,
) {
    let gauge = metrics::gauge!(names::PROTECTED);
    let mut protected = false;
    loop {
        let state = states.borrow_and_update().clone();
        let now = match &state {
            ProtectionState::Protected { .. } => true,
            ProtectionState::Rejected { error, protected_until } => {
                let reason = error.code().to_owned();
                events.emit(|| Event::Protection(ProtectionEvent::Refused { reason }));
                protected_until.is_some()
            }
            _ => false,
        };
        if now != protected {
            let event = if now { ProtectionEvent::Protected } else { ProtectionEvent::Released };
            events.emit(|| Event::Protection(event));
            protected = now;
        }
        gauge.set(if protected { 1.0 } else { 0.0 });
        if matches!(state, ProtectionState::ShutDown) {
            return;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
        }
    }
}

/// Installs a global tracing subscriber writing to stderr in the configured format
/// (`HOLDFAST_LOG_FORMAT`), filtered by the configured filter (`RUST_LOG`, default `info`).
/// Text lines are coloured only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>), so logs piped to a file or a collector hold no escape codes.
/// Does nothing if one is already installed.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = config.log_filter.as_deref().and_then(|f| EnvFilter::try_new(f).ok());
    let filter = filter.unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).try_init(),
        _ => builder.with_ansi(colour_stderr(std::env::var_os("NO_COLOR").as_deref())).try_init(),
    };
}

/// Whether log lines to stderr may be coloured: a terminal, and `NO_COLOR` unset or empty.
fn colour_stderr(no_color: Option<&std::ffi::OsStr>) -> bool {
    use std::io::IsTerminal;
    no_color.is_none_or(std::ffi::OsStr::is_empty) && std::io::stderr().is_terminal()
}
