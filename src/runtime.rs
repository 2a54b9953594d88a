//! The worker: wires the poller, the dispatcher, the heartbeat and the acker together, and
//! shuts them down in order.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acker::Acker;
use crate::dispatch::{Counters, Dispatcher};
use crate::lease::Leases;
use crate::poller::Poller;
use crate::queue::BATCH_MAX;
use crate::{Config, Error, Handler, LogFormat, Queue};

/// What a worker did in one run, returned by [`Worker::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Messages received.
    pub received: u64,
    /// Handled with [`Outcome::Ack`](crate::Outcome::Ack).
    pub succeeded: u64,
    /// Handled with [`Outcome::Retry`](crate::Outcome::Retry).
    pub retried: u64,
    /// Failed: an error, a panic or a timeout; retried after a backoff.
    pub failed: u64,
    /// Given back unhandled at shutdown (received but not started, or stopped at the drain
    /// deadline): visible again at once.
    pub released: u64,
    /// Deleted from the queue.
    pub deleted: u64,
    /// Deletes that failed for good (the message will be delivered again).
    pub delete_failed: u64,
}

/// A queue worker: a [`Config`], a [`Handler`] and (optionally) a [`Queue`].
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
    handler: Option<Arc<dyn Handler>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("config", &self.config).field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker with this configuration.
    pub fn new(config: Config) -> Self {
        Self { config, queue: None, handler: None }
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

    /// The handler for every message.
    #[must_use]
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// The queue to consume; without it, the configured queue URL is opened when the worker
    /// starts (`memory://NAME` makes a new embedded queue).
    #[must_use]
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = Some(queue);
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

    /// Runs until `shutdown` resolves, then stops polling, releases messages not started,
    /// lets running handlers finish until the drain deadline, stops and releases the rest,
    /// flushes acknowledgements, and returns what it did. It never exits the process.
    ///
    /// # Errors
    ///
    /// [`Error::Incomplete`] without a handler or queue; [`Error::Queue`] when the queue
    /// fails in a way retrying cannot heal (it does not exist, access is denied), after the
    /// same orderly shutdown.
    pub async fn run_until<F>(self, shutdown: F) -> Result<Summary, Error>
    where
        F: Future<Output = ()> + Send,
    {
        let handler = self.handler.ok_or(Error::Incomplete("a handler (Worker::handler)"))?;
        let queue = match self.queue {
            Some(queue) => queue,
            None => {
                let url = self
                    .config
                    .queue_url
                    .as_deref()
                    .ok_or(Error::Incomplete("a queue (Worker::queue, or a queue URL in the config)"))?;
                Queue::from_url(url).await
            }
        };
        let config = Arc::new(self.config);

        let intake = CancellationToken::new();
        let deadline = CancellationToken::new();
        let heartbeat_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let counters = Arc::new(Counters::default());
        let (acker, ack_stats, acker_task) = Acker::spawn(queue.clone(), config.ack_interval, config.ack_concurrency);
        let leases = Leases::new(queue.clone(), config.visibility_timeout, config.heartbeat_interval);
        let heartbeat = tokio::spawn(leases.clone().run(heartbeat_stop.clone()));
        let dispatcher = Arc::new(Dispatcher {
            handler,
            acker,
            leases,
            config: config.clone(),
            intake: intake.clone(),
            deadline: deadline.clone(),
            counters: counters.clone(),
        });
        let slots = Arc::new(Semaphore::new(config.concurrency));
        let mut pollers = JoinSet::new();
        for _ in 0..config.concurrency.div_ceil(BATCH_MAX) {
            let poller = Poller {
                queue: queue.clone(),
                slots: slots.clone(),
                dispatcher: dispatcher.clone(),
                tracker: tracker.clone(),
                intake: intake.clone(),
                wait_time: config.wait_time,
                visibility_timeout: config.visibility_timeout,
                batch_target: config.concurrency.min(BATCH_MAX),
                batch_window: config.batch_window,
            };
            pollers.spawn(poller.run());
        }
        tracing::info!(
            queue = queue.url(),
            concurrency = config.concurrency,
            pollers = pollers.len(),
            visibility_timeout_s = config.visibility_timeout.as_secs(),
            drain_timeout_s = config.drain_timeout.as_secs(),
            "worker started"
        );

        let mut fatal = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                done = pollers.join_next() => match done {
                    Some(Ok(Err(error))) => {
                        fatal = Some(error);
                        break;
                    }
                    Some(Ok(Ok(()))) => {}
                    Some(Err(join)) => {
                        fatal = Some(Error::Queue { queue_url: queue.url().to_owned(), message: format!("poller failed: {join}") });
                        break;
                    }
                    None => break,
                },
            }
        }

        // Stop taking messages: pending long polls are dropped, messages received but not
        // started are released by their tasks.
        intake.cancel();
        while pollers.join_next().await.is_some() {}
        tracker.close();
        let running = tracker.len();
        if running > 0 {
            tracing::info!(running, drain_timeout_s = config.drain_timeout.as_secs(), "stopped polling; draining");
        }
        if tokio::time::timeout(config.drain_timeout, tracker.wait()).await.is_err() {
            tracing::warn!(
                running = tracker.len(),
                "drain deadline passed: stopping handlers and releasing their messages"
            );
            deadline.cancel();
            tracker.wait().await;
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        drop(dispatcher);
        if let Err(join) = acker_task.await {
            tracing::error!(%join, "acknowledgement task failed");
        }

        let summary = Summary {
            received: counters.received.load(Ordering::Relaxed),
            succeeded: counters.succeeded.load(Ordering::Relaxed),
            retried: counters.retried.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            released: counters.released.load(Ordering::Relaxed),
            deleted: ack_stats.deleted.load(Ordering::Relaxed),
            delete_failed: ack_stats.delete_failed.load(Ordering::Relaxed),
        };
        tracing::info!(
            received = summary.received,
            succeeded = summary.succeeded,
            retried = summary.retried,
            failed = summary.failed,
            released = summary.released,
            deleted = summary.deleted,
            "worker stopped"
        );
        match fatal {
            Some(error) => Err(error),
            None => Ok(summary),
        }
    }
}

/// Installs a global tracing subscriber writing to stderr in the configured format
/// (`HOLDFAST_LOG_FORMAT`), filtered by the configured filter (`RUST_LOG`, default `info`).
/// Does nothing if one is already installed.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = config.log_filter.as_deref().and_then(|f| EnvFilter::try_new(f).ok());
    let filter = filter.unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        _ => builder.try_init(),
    };
}
