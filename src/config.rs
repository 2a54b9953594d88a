//! Worker configuration: defaults, and parsing from environment variables.
//!
//! Parsing takes a lookup function (`Fn(&str) -> Option<String>`), so tests hand in a map
//! and never touch the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::protection::ProtectionConfig;

/// SQS's ceiling for a visibility timeout, and for the time a message may stay in flight
/// since it was received: 12 hours.
pub(crate) const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// An invalid or missing configuration value.
///
/// The message names the variable, the value it had, and the values it accepts. `{:?}`
/// prints that same one-line message (so `fn main() -> Result<(), holdfast::Error>` shows it
/// as is); `{:#?}` prints the fields.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigError {
    variable: &'static str,
    value: Option<String>,
    expected: String,
}

impl ConfigError {
    pub(crate) fn new(variable: &'static str, value: Option<&str>, expected: impl Into<String>) -> Self {
        Self { variable, value: value.map(str::to_owned), expected: expected.into() }
    }

    /// The environment variable at fault.
    pub fn variable(&self) -> &'static str {
        self.variable
    }

    /// What the variable accepts.
    pub fn expected(&self) -> &str {
        &self.expected
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value:?} is invalid: expected {}", self.variable, self.expected),
            None => write!(f, "{} is not set: expected {}", self.variable, self.expected),
        }
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.debug_struct("ConfigError")
                .field("variable", &self.variable)
                .field("value", &self.value)
                .field("expected", &self.expected)
                .finish()
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

impl std::error::Error for ConfigError {}

/// How log lines are written by [`init_logging`](crate::init_logging).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for CloudWatch Logs Insights and similar.
    Json,
}

/// Where the worker's metrics go, besides any recorder the program installs itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MetricsOutput {
    /// Nowhere but the installed `metrics` recorder, if any.
    #[default]
    Off,
    /// CloudWatch Embedded Metric Format lines on stdout, which the awslogs driver ships to
    /// CloudWatch Logs and CloudWatch turns into metrics.
    Emf,
}

/// What shutdown does with a receive (long poll) in flight, `HOLDFAST_SHUTDOWN_RECEIVE`.
///
/// SQS keeps serving a receive whose client went away: the messages it takes then are
/// delivered to no one, stay invisible for the visibility timeout, count toward the redrive
/// policy's `maxReceiveCount` and, on a FIFO queue, hold their group. Waiting for the receive
/// and releasing what it brings avoids that, at the cost of up to the rest of the wait time
/// before `run` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ShutdownReceive {
    /// Let the receive finish (up to the wait time, bounded by the drain deadline) and
    /// release what it returns at once (`wait`, the default).
    #[default]
    Wait,
    /// Wait at most this long (bounded by the drain deadline too), then abandon it.
    UpTo(Duration),
    /// Drop the receive at once (`abandon`): an idle worker exits in milliseconds, but a
    /// message SQS hands to the dropped receive stays hidden for the visibility timeout,
    /// counts as a receive, and holds its FIFO group meanwhile.
    Abandon,
}

impl ShutdownReceive {
    /// How long shutdown waits for a receive in flight, given the drain deadline.
    pub(crate) fn limit(self, drain: Duration) -> Duration {
        match self {
            ShutdownReceive::Wait => drain,
            ShutdownReceive::UpTo(limit) => limit.min(drain),
            ShutdownReceive::Abandon => Duration::ZERO,
        }
    }
}

/// Everything a worker can be configured with.
///
/// Start from [`Config::default`] or [`Config::from_env`], then change fields as needed.
/// Every field has an environment variable; the README lists them all.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// `HOLDFAST_QUEUE_URL`, else Copilot's `COPILOT_QUEUE_URI`: an SQS queue URL, or
    /// `memory://NAME` for the embedded in-memory queue.
    pub queue_url: Option<String>,
    /// `HOLDFAST_DEAD_LETTER_QUEUE_URL`: where messages that cannot succeed (a body that
    /// does not decode, a [`Permanent`](crate::Permanent) error) go at once, with the reason.
    /// Without it they back off until the queue's redrive policy moves them.
    pub dead_letter_queue_url: Option<String>,
    /// `COPILOT_TOPIC_QUEUE_URIS`: Copilot's topic-specific queues, by name (e.g.
    /// `merchantOrdersEventsQueue`), for [`Route::topic`](crate::Route::topic).
    pub topic_queues: BTreeMap<String, String>,
    /// `HOLDFAST_EXIT_WHEN_IDLE`: return from `run` once no message has arrived and none has
    /// been in flight for this long, for workers run as scheduled one-off tasks (default:
    /// never).
    pub exit_when_idle: Option<Duration>,
    /// `HOLDFAST_CONCURRENCY`: handlers running at once (default 10).
    pub concurrency: usize,
    /// `HOLDFAST_WAIT_TIME`: long-poll wait per receive, 0 to 20 s (default 20 s).
    pub wait_time: Duration,
    /// `HOLDFAST_VISIBILITY_TIMEOUT`: how long a received message stays invisible, and how far
    /// each heartbeat pushes it out (default 30 s).
    pub visibility_timeout: Duration,
    /// `HOLDFAST_HEARTBEAT_INTERVAL`: how often the heartbeat looks for leases to extend;
    /// a lease is extended once less than half the visibility timeout is left
    /// (default: a sixth of the visibility timeout).
    pub heartbeat_interval: Duration,
    /// `HOLDFAST_HANDLER_TIMEOUT`: longest a handler may run before it is cancelled and the
    /// message retried (default: none).
    pub handler_timeout: Option<Duration>,
    /// `HOLDFAST_DRAIN_TIMEOUT`: after a shutdown signal, how long running handlers may finish
    /// (default: `HOLDFAST_STOP_TIMEOUT` less 5 s, or 25 s, under ECS's default 30 s stop
    /// timeout).
    pub drain_timeout: Duration,
    /// `HOLDFAST_STOP_TIMEOUT`: the container's ECS stop timeout (SIGTERM to SIGKILL), when
    /// known. Set it from the same value as the task definition's `StopTimeout` and the
    /// drain deadline follows it; a drain that would not end 5 s before it is refused.
    pub stop_timeout: Option<Duration>,
    /// `HOLDFAST_SHUTDOWN_RECEIVE`: what shutdown does with a receive in flight (default:
    /// wait for it, within the drain deadline, and release what it returns).
    pub shutdown_receive: ShutdownReceive,
    /// `HOLDFAST_BACKOFF_MIN`: visibility after a first failed attempt (default 2 s).
    pub backoff_min: Duration,
    /// `HOLDFAST_BACKOFF_MAX`: the cap on the failure backoff (default 5 min).
    pub backoff_max: Duration,
    /// `HOLDFAST_BATCH_WINDOW`: while the queue has a backlog, how long a poller waits for
    /// more free slots so one receive fetches up to ten messages (default 10 ms; 0 polls as
    /// soon as one slot is free). Trades a little latency for fewer billed requests.
    pub batch_window: Duration,
    /// `HOLDFAST_ACK_INTERVAL`: longest a delete waits to be batched (default 100 ms).
    pub ack_interval: Duration,
    /// `HOLDFAST_ACK_CONCURRENCY`: batch acknowledgement requests in flight at once (default 4).
    /// When the acknowledgements not yet answered reach twice a queue's share of the
    /// concurrency (or 20 times this, if more), its receives pause until half are settled.
    pub ack_concurrency: usize,
    /// `HOLDFAST_SQS_TIMEOUT`: how long an SQS call may go without an answer before it is
    /// abandoned and made again, beyond the wait a receive asks the server for (default 10 s).
    /// A connection that takes a request and stays silent would otherwise hold the call, and
    /// what waits on it (a poller, the acker, the heartbeat), forever.
    pub sqs_timeout: Duration,
    /// `HOLDFAST_RECEIVE_CONCURRENCY`: receives in flight at once per queue, at most (default
    /// 16). A queue runs one poller per ten slots of its share of the concurrency, up to this
    /// many; each holds an HTTP connection and, on an idle queue, a long poll.
    pub receive_concurrency: usize,
    /// `HOLDFAST_LOG_FORMAT`: `text` or `json` (default text).
    pub log_format: LogFormat,
    /// `RUST_LOG`: which log lines to write, as a tracing filter (default `info`).
    pub log_filter: Option<String>,
    /// `HOLDFAST_LOG_MESSAGE_CONTENT`: whether the worker's own log lines and dead-letter
    /// reasons may quote message content, such as serde's full text of a
    /// [`DecodeError`](crate::DecodeError) (default `false`: bodies, values decoded from
    /// them and receipt handles never appear).
    pub log_message_content: bool,
    /// `HOLDFAST_PROGRESS_INTERVAL`: how often a progress line (deliveries, succeeded,
    /// failed, retried, dead-lettered and released in the interval, and messages in flight)
    /// is logged at info level, when something happened in the interval (default 10 s;
    /// `None` writes none).
    pub progress_interval: Option<Duration>,
    /// ECS task scale-in protection settings (`HOLDFAST_PROTECTION*`).
    pub protection: ProtectionConfig,
    /// `HOLDFAST_METRICS`: `off` or `emf` (default off).
    pub metrics: MetricsOutput,
    /// `HOLDFAST_METRICS_NAMESPACE`: the CloudWatch namespace of EMF metrics (default
    /// `holdfast`).
    pub metrics_namespace: String,
    /// `HOLDFAST_METRICS_INTERVAL`: how often EMF lines are written (default 10 s); the last
    /// interval is written at shutdown.
    pub metrics_interval: Duration,
    /// `HOLDFAST_HEALTH_FILE`: where the worker keeps its health status for the `health`
    /// invocation (default: none).
    pub health_file: Option<std::path::PathBuf>,
    /// `HOLDFAST_HEALTH_THRESHOLD`: how long receives or acknowledgements may keep failing,
    /// the heartbeat may lag or strict protection may hold polling back before the worker
    /// is unhealthy (default 2 min).
    pub health_threshold: Duration,
    /// `HOLDFAST_DEPLOYMENT_CHECK`: how often to compare this task's revision with the
    /// service's `PRIMARY` deployment (one `DescribeServices` call each time; the task role
    /// needs `ecs:DescribeServices`). Once a deployment has replaced the revision, the worker
    /// steps aside: it takes no new messages, finishes what runs within the drain timeout,
    /// releases protection and waits idle for ECS to stop it. Default: off.
    pub deployment_check: Option<Duration>,
    /// `HOLDFAST_SYSTEM_ATTRIBUTES`: SQS system attributes each receive asks for beyond those
    /// the worker reads itself (`ApproximateReceiveCount`, `SentTimestamp`, `MessageGroupId`,
    /// `AWSTraceHeader`), as SQS names them, or `All` (default: none beyond those). Only
    /// these reach [`Message::attributes`](crate::Message::attributes).
    pub system_attributes: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let visibility_timeout = Duration::from_secs(30);
        Self {
            queue_url: None,
            dead_letter_queue_url: None,
            topic_queues: BTreeMap::new(),
            exit_when_idle: None,
            concurrency: 10,
            wait_time: Duration::from_secs(20),
            visibility_timeout,
            heartbeat_interval: default_heartbeat(visibility_timeout),
            handler_timeout: None,
            drain_timeout: Duration::from_secs(25),
            stop_timeout: None,
            shutdown_receive: ShutdownReceive::Wait,
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            batch_window: Duration::from_millis(10),
            ack_interval: Duration::from_millis(100),
            ack_concurrency: 4,
            receive_concurrency: 16,
            sqs_timeout: crate::queue::CALL_TIMEOUT,
            log_format: LogFormat::Text,
            log_filter: None,
            log_message_content: false,
            progress_interval: Some(crate::progress::DEFAULT_INTERVAL),
            protection: ProtectionConfig::default(),
            metrics: MetricsOutput::Off,
            metrics_namespace: "holdfast".into(),
            metrics_interval: Duration::from_secs(10),
            health_file: None,
            health_threshold: DEFAULT_HEALTH_THRESHOLD,
            deployment_check: None,
            system_attributes: Vec::new(),
        }
    }
}

/// The default of `HOLDFAST_HEALTH_THRESHOLD`.
pub(crate) const DEFAULT_HEALTH_THRESHOLD: Duration = Duration::from_secs(120);

/// The health-check settings (`HOLDFAST_HEALTH_FILE`, `HOLDFAST_HEALTH_THRESHOLD`), read
/// alone by the `health` invocation.
pub(crate) fn health_settings<F>(get: F) -> Result<(Option<std::path::PathBuf>, Duration), ConfigError>
where
    F: Fn(&str) -> Option<String>,
{
    let file = match get("HOLDFAST_HEALTH_FILE") {
        Some(v) if v.trim().starts_with('/') && !v.trim().ends_with('/') => Some(std::path::PathBuf::from(v.trim())),
        Some(v) => {
            return Err(ConfigError::new(
                "HOLDFAST_HEALTH_FILE",
                Some(&v),
                "an absolute path to a file, e.g. /tmp/holdfast-health.json",
            ));
        }
        None => None,
    };
    let threshold = match get("HOLDFAST_HEALTH_THRESHOLD") {
        Some(v) => parse_duration("HOLDFAST_HEALTH_THRESHOLD", &v, Duration::from_secs(1), MAX_VISIBILITY, false)?,
        None => DEFAULT_HEALTH_THRESHOLD,
    };
    Ok((file, threshold))
}

fn default_heartbeat(visibility: Duration) -> Duration {
    (visibility / 6).max(Duration::from_millis(100))
}

/// The environment variables the worker reads, in the order the README lists them.
pub const VARIABLES: &[&str] = &[
    "HOLDFAST_QUEUE_URL",
    "COPILOT_QUEUE_URI",
    "HOLDFAST_DEAD_LETTER_QUEUE_URL",
    "COPILOT_TOPIC_QUEUE_URIS",
    "HOLDFAST_EXIT_WHEN_IDLE",
    "HOLDFAST_CONCURRENCY",
    "HOLDFAST_WAIT_TIME",
    "HOLDFAST_VISIBILITY_TIMEOUT",
    "HOLDFAST_HEARTBEAT_INTERVAL",
    "HOLDFAST_HANDLER_TIMEOUT",
    "HOLDFAST_STOP_TIMEOUT",
    "HOLDFAST_DRAIN_TIMEOUT",
    "HOLDFAST_SHUTDOWN_RECEIVE",
    "HOLDFAST_BACKOFF_MIN",
    "HOLDFAST_BACKOFF_MAX",
    "HOLDFAST_BATCH_WINDOW",
    "HOLDFAST_ACK_INTERVAL",
    "HOLDFAST_ACK_CONCURRENCY",
    "HOLDFAST_RECEIVE_CONCURRENCY",
    "HOLDFAST_SQS_TIMEOUT",
    "HOLDFAST_LOG_FORMAT",
    "RUST_LOG",
    "HOLDFAST_LOG_MESSAGE_CONTENT",
    "HOLDFAST_PROGRESS_INTERVAL",
    "HOLDFAST_PROTECTION",
    "HOLDFAST_PROTECTION_MODE",
    "HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES",
    "HOLDFAST_PROTECTION_REFRESH_BEFORE",
    "HOLDFAST_PROTECTION_MAINTAIN",
    "HOLDFAST_PROTECTION_SHARED_DIR",
    "HOLDFAST_PROTECTION_LEASE_TTL",
    "HOLDFAST_PROTECTION_MAX_HOLD",
    "HOLDFAST_PROTECTION_HOLD_GAP",
    "HOLDFAST_METRICS",
    "HOLDFAST_METRICS_NAMESPACE",
    "HOLDFAST_METRICS_INTERVAL",
    "HOLDFAST_HEALTH_FILE",
    "HOLDFAST_HEALTH_THRESHOLD",
    "HOLDFAST_DEPLOYMENT_CHECK",
    "HOLDFAST_SYSTEM_ATTRIBUTES",
];

/// Time kept between the end of the drain and ECS's SIGKILL: flushing acknowledgements and
/// releasing protection.
pub(crate) const STOP_MARGIN: Duration = Duration::from_secs(5);

const DURATION_FORMS: &str = "a duration such as 30, 30s, 500ms, 5m or 1h (a bare number is seconds)";

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first variable that is missing or invalid, with the
    /// values it accepts.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, which returns a variable's value or `None`.
    ///
    /// Empty values count as unset. The queue URL is required.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first variable that is missing or invalid, with the
    /// values it accepts.
    pub fn from_lookup<F>(lookup: F) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = Config::default();

        let (variable, url) = match get("HOLDFAST_QUEUE_URL") {
            Some(url) => ("HOLDFAST_QUEUE_URL", url),
            None => match get("COPILOT_QUEUE_URI") {
                Some(url) => ("COPILOT_QUEUE_URI", url),
                None => {
                    return Err(ConfigError::new(
                        "HOLDFAST_QUEUE_URL",
                        None,
                        format!("{QUEUE_URL_FORMS} (COPILOT_QUEUE_URI is read when it is unset)"),
                    ));
                }
            },
        };
        config.queue_url = Some(parse_queue_url(variable, url.trim())?);
        if let Some(v) = get("HOLDFAST_DEAD_LETTER_QUEUE_URL") {
            config.dead_letter_queue_url = Some(parse_queue_url("HOLDFAST_DEAD_LETTER_QUEUE_URL", v.trim())?);
        }
        if let Some(v) = get("COPILOT_TOPIC_QUEUE_URIS") {
            let expected = "a JSON object of queue names to queue URLs, as Copilot writes it, e.g. {\"merchantOrdersEventsQueue\": \"https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE\"}";
            let map: BTreeMap<String, String> = serde_json::from_str(&v)
                .map_err(|_| ConfigError::new("COPILOT_TOPIC_QUEUE_URIS", Some(&v), expected))?;
            for url in map.values() {
                parse_queue_url("COPILOT_TOPIC_QUEUE_URIS", url)
                    .map_err(|_| ConfigError::new("COPILOT_TOPIC_QUEUE_URIS", Some(&v), expected))?;
            }
            config.topic_queues = map;
        }
        if let Some(v) = get("HOLDFAST_EXIT_WHEN_IDLE") {
            config.exit_when_idle = match v.trim() {
                "off" | "never" => None,
                _ => Some(
                    parse_duration("HOLDFAST_EXIT_WHEN_IDLE", &v, Duration::from_secs(1), MAX_VISIBILITY, false)
                        .map_err(|e| ConfigError { expected: format!("{}, or off", e.expected), ..e })?,
                ),
            };
        }

        if let Some(v) = get("HOLDFAST_CONCURRENCY") {
            config.concurrency = parse_int("HOLDFAST_CONCURRENCY", &v, 1, 10_000)?;
        }
        if let Some(v) = get("HOLDFAST_WAIT_TIME") {
            config.wait_time = parse_duration("HOLDFAST_WAIT_TIME", &v, Duration::ZERO, Duration::from_secs(20), true)?;
        }
        if let Some(v) = get("HOLDFAST_VISIBILITY_TIMEOUT") {
            config.visibility_timeout =
                parse_duration("HOLDFAST_VISIBILITY_TIMEOUT", &v, Duration::from_secs(1), MAX_VISIBILITY, true)?;
        }
        config.heartbeat_interval = match get("HOLDFAST_HEARTBEAT_INTERVAL") {
            Some(v) => parse_duration(
                "HOLDFAST_HEARTBEAT_INTERVAL",
                &v,
                Duration::from_millis(100),
                config.visibility_timeout / 3,
                false,
            )
            .map_err(|e| ConfigError {
                expected: format!("{} (a third of HOLDFAST_VISIBILITY_TIMEOUT at most)", e.expected),
                ..e
            })?,
            None => default_heartbeat(config.visibility_timeout),
        };
        if let Some(v) = get("HOLDFAST_HANDLER_TIMEOUT") {
            config.handler_timeout = match v.trim() {
                "off" | "none" => None,
                _ => Some(
                    parse_duration("HOLDFAST_HANDLER_TIMEOUT", &v, Duration::from_millis(1), MAX_VISIBILITY, false)
                        .map_err(|e| ConfigError { expected: format!("{}, or off", e.expected), ..e })?,
                ),
            };
        }
        if let Some(v) = get("HOLDFAST_STOP_TIMEOUT") {
            let stop = parse_duration("HOLDFAST_STOP_TIMEOUT", &v, STOP_MARGIN * 2, MAX_VISIBILITY, true)?;
            config.stop_timeout = Some(stop);
            config.drain_timeout = stop - STOP_MARGIN;
        }
        if let Some(v) = get("HOLDFAST_DRAIN_TIMEOUT") {
            let max = config.stop_timeout.map_or(MAX_VISIBILITY, |stop| stop - STOP_MARGIN);
            config.drain_timeout =
                parse_duration("HOLDFAST_DRAIN_TIMEOUT", &v, Duration::ZERO, max, true).map_err(|e| {
                    match config.stop_timeout {
                        Some(_) => ConfigError {
                            expected: format!(
                                "{} (5 s under HOLDFAST_STOP_TIMEOUT, so acknowledgements flush before SIGKILL)",
                                e.expected
                            ),
                            ..e
                        },
                        None => e,
                    }
                })?;
        }
        if let Some(v) = get("HOLDFAST_SHUTDOWN_RECEIVE") {
            config.shutdown_receive = match v.trim().to_ascii_lowercase().as_str() {
                "wait" => ShutdownReceive::Wait,
                "abandon" => ShutdownReceive::Abandon,
                _ => ShutdownReceive::UpTo(
                    parse_duration(
                        "HOLDFAST_SHUTDOWN_RECEIVE",
                        &v,
                        Duration::from_millis(1),
                        Duration::from_secs(20),
                        false,
                    )
                    .map_err(|e| ConfigError { expected: format!("wait, abandon, or {}", e.expected), ..e })?,
                ),
            };
        }
        if let Some(v) = get("HOLDFAST_BACKOFF_MIN") {
            config.backoff_min = parse_duration("HOLDFAST_BACKOFF_MIN", &v, Duration::ZERO, MAX_VISIBILITY, true)?;
        }
        if let Some(v) = get("HOLDFAST_BACKOFF_MAX") {
            config.backoff_max =
                parse_duration("HOLDFAST_BACKOFF_MAX", &v, config.backoff_min, MAX_VISIBILITY, true).map_err(|e| {
                    ConfigError { expected: format!("{} (not less than HOLDFAST_BACKOFF_MIN)", e.expected), ..e }
                })?;
        } else if config.backoff_max < config.backoff_min {
            config.backoff_max = config.backoff_min;
        }
        if let Some(v) = get("HOLDFAST_BATCH_WINDOW") {
            config.batch_window =
                parse_duration("HOLDFAST_BATCH_WINDOW", &v, Duration::ZERO, Duration::from_secs(1), false)?;
        }
        if let Some(v) = get("HOLDFAST_ACK_INTERVAL") {
            config.ack_interval =
                parse_duration("HOLDFAST_ACK_INTERVAL", &v, Duration::ZERO, Duration::from_secs(10), false)?;
        }
        if let Some(v) = get("HOLDFAST_ACK_CONCURRENCY") {
            config.ack_concurrency = parse_int("HOLDFAST_ACK_CONCURRENCY", &v, 1, 64)?;
        }
        if let Some(v) = get("HOLDFAST_RECEIVE_CONCURRENCY") {
            config.receive_concurrency = parse_int("HOLDFAST_RECEIVE_CONCURRENCY", &v, 1, 1_000)?;
        }
        if let Some(v) = get("HOLDFAST_SQS_TIMEOUT") {
            config.sqs_timeout =
                parse_duration("HOLDFAST_SQS_TIMEOUT", &v, Duration::from_secs(1), Duration::from_secs(300), false)?;
        }
        if let Some(v) = get("HOLDFAST_LOG_FORMAT") {
            config.log_format = match v.trim().to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(ConfigError::new("HOLDFAST_LOG_FORMAT", Some(&v), "text or json")),
            };
        }
        if let Some(v) = get("RUST_LOG") {
            if !is_log_filter(&v) {
                return Err(ConfigError::new(
                    "RUST_LOG",
                    Some(&v),
                    "a tracing filter: comma-separated directives, each a level (off, error, warn, info, debug, trace) or target=level, e.g. info,holdfast=debug",
                ));
            }
            config.log_filter = Some(v);
        }
        if let Some(v) = get("HOLDFAST_LOG_MESSAGE_CONTENT") {
            config.log_message_content = match v.trim().to_ascii_lowercase().as_str() {
                "on" | "true" => true,
                "off" | "false" => false,
                _ => return Err(ConfigError::new("HOLDFAST_LOG_MESSAGE_CONTENT", Some(&v), "on or off")),
            };
        }
        if let Some(v) = get("HOLDFAST_PROGRESS_INTERVAL") {
            config.progress_interval = match v.trim() {
                "off" => None,
                _ => Some(
                    parse_duration(
                        "HOLDFAST_PROGRESS_INTERVAL",
                        &v,
                        Duration::from_millis(100),
                        Duration::from_secs(3600),
                        false,
                    )
                    .map_err(|e| ConfigError { expected: format!("{}, or off", e.expected), ..e })?,
                ),
            };
        }
        config.protection = ProtectionConfig::from_lookup(&get)?;
        config.protection.hold_drain = config.drain_timeout;
        if let Some(v) = get("HOLDFAST_METRICS") {
            config.metrics = match v.trim().to_ascii_lowercase().as_str() {
                "off" => MetricsOutput::Off,
                "emf" => MetricsOutput::Emf,
                _ => return Err(ConfigError::new("HOLDFAST_METRICS", Some(&v), "off or emf")),
            };
        }
        if let Some(v) = get("HOLDFAST_METRICS_NAMESPACE") {
            // CloudWatch: 1 to 255 characters, none of them a colon or a control character.
            let valid = v.len() <= 255 && !v.contains(':') && !v.chars().any(char::is_control);
            if !valid {
                return Err(ConfigError::new(
                    "HOLDFAST_METRICS_NAMESPACE",
                    Some(&v),
                    "a CloudWatch namespace: 1 to 255 characters, no colon, e.g. holdfast or MyApp/Workers",
                ));
            }
            config.metrics_namespace = v.trim().to_owned();
        }
        if let Some(v) = get("HOLDFAST_METRICS_INTERVAL") {
            config.metrics_interval = parse_duration(
                "HOLDFAST_METRICS_INTERVAL",
                &v,
                Duration::from_secs(1),
                Duration::from_secs(3600),
                true,
            )?;
        }
        (config.health_file, config.health_threshold) = health_settings(get)?;
        if let Some(v) = get("HOLDFAST_DEPLOYMENT_CHECK") {
            config.deployment_check = match v.trim() {
                "off" => None,
                _ => {
                    let every = parse_duration(
                        "HOLDFAST_DEPLOYMENT_CHECK",
                        &v,
                        Duration::from_millis(100),
                        Duration::from_secs(3600),
                        false,
                    )
                    .map_err(|e| ConfigError { expected: format!("off, or {}", e.expected), ..e })?;
                    if config.protection.metadata_uri.is_none() {
                        return Err(ConfigError::new(
                            "HOLDFAST_DEPLOYMENT_CHECK",
                            Some(&v),
                            "off outside ECS: the check reads the task metadata endpoint \
                             (ECS_CONTAINER_METADATA_URI_V4, which ECS sets inside a task)",
                        ));
                    }
                    Some(every)
                }
            };
        }
        if let Some(v) = get("HOLDFAST_SYSTEM_ATTRIBUTES") {
            config.system_attributes =
                v.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect();
            config.system_attribute_names()?;
        }
        Ok(config)
    }

    /// The system attributes a receive asks for: what the worker reads and
    /// `system_attributes`.
    ///
    /// # Errors
    ///
    /// A name SQS does not know, as a [`ConfigError`] of `HOLDFAST_SYSTEM_ATTRIBUTES`.
    pub(crate) fn system_attribute_names(&self) -> Result<crate::queue::SystemAttributeNames, ConfigError> {
        use crate::queue::SystemAttributeNames;
        SystemAttributeNames::with(self.system_attributes.iter().map(String::as_str)).map_err(|_| {
            ConfigError::new(
                "HOLDFAST_SYSTEM_ATTRIBUTES",
                Some(&self.system_attributes.join(",")),
                format!(
                    "All, or a comma-separated list of SQS system attribute names: {}",
                    SystemAttributeNames::KNOWN.join(", ")
                ),
            )
        })
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Whether `filter` is a tracing filter whose every directive means something. tracing takes
/// a bare word as a target name, so a typo such as `inof` or `lots` would silence every log
/// line instead of failing: a directive without `=` must be a level (or a span filter).
fn is_log_filter(filter: &str) -> bool {
    let is_level = |text: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(text.trim()));
    let directives_make_sense = filter.split(',').map(str::trim).filter(|d| !d.is_empty()).all(|directive| {
        if directive.ends_with(']') {
            return true; // a span filter, e.g. [message{message_id}]
        }
        match directive.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(directive),
        }
    });
    directives_make_sense && tracing_subscriber::EnvFilter::try_new(filter).is_ok()
}

const QUEUE_URL_FORMS: &str = "an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE, or http(s)://HOST[:PORT]/ACCOUNT/QUEUE for an SQS-compatible server) or memory://NAME for the embedded in-memory queue";

fn parse_queue_url(variable: &'static str, url: &str) -> Result<String, ConfigError> {
    let valid = if let Some(name) = url.strip_prefix("memory://") {
        !name.is_empty() && !name.contains('/')
    } else if let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        // host, then at least one path segment naming the queue
        matches!(rest.split_once('/'), Some((host, path)) if !host.is_empty() && !path.trim_matches('/').is_empty())
    } else {
        false
    };
    if valid { Ok(url.to_owned()) } else { Err(ConfigError::new(variable, Some(url), QUEUE_URL_FORMS)) }
}

/// Parses a whole number within `min..=max`.
pub(crate) fn parse_int<T>(variable: &'static str, value: &str, min: T, max: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    match value.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(ConfigError::new(variable, Some(value), format!("a whole number from {min} to {max}"))),
    }
}

/// Parses a duration within `min..=max`. With `whole_seconds`, sub-second values are refused
/// (SQS takes whole seconds).
pub(crate) fn parse_duration(
    variable: &'static str,
    value: &str,
    min: Duration,
    max: Duration,
    whole_seconds: bool,
) -> Result<Duration, ConfigError> {
    let expected = || {
        let unit = if whole_seconds { " in whole seconds" } else { "" };
        format!("{DURATION_FORMS}{unit}, from {} to {}", human(min), human(max))
    };
    let parsed =
        parse_duration_text(value.trim()).ok_or_else(|| ConfigError::new(variable, Some(value), expected()))?;
    if parsed < min || parsed > max || (whole_seconds && parsed.subsec_nanos() != 0) {
        return Err(ConfigError::new(variable, Some(value), expected()));
    }
    Ok(parsed)
}

fn parse_duration_text(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let millis = match unit.trim() {
        "" | "s" => n.checked_mul(1_000)?,
        "ms" => n,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// Formats a duration the way the parser reads it.
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    const URL: (&str, &str) = ("HOLDFAST_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs");

    #[test]
    fn defaults_apply_when_only_the_queue_is_set() {
        let c = parse(&[URL]).unwrap();
        assert_eq!(c.queue_url.as_deref(), Some(URL.1));
        assert_eq!(c.concurrency, 10);
        assert_eq!(c.wait_time, Duration::from_secs(20));
        assert_eq!(c.visibility_timeout, Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.drain_timeout, Duration::from_secs(25));
        assert_eq!(c.handler_timeout, None);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.system_attributes.is_empty());
    }

    #[test]
    fn system_attributes_add_to_what_the_worker_reads() {
        use crate::queue::SystemAttributeNames;
        let names = |c: &Config| c.system_attribute_names().unwrap().names().collect::<Vec<_>>();
        let needed = ["ApproximateReceiveCount", "SentTimestamp", "MessageGroupId", "AWSTraceHeader"];
        assert_eq!(names(&parse(&[URL]).unwrap()), needed);
        let c = parse(&[URL, ("HOLDFAST_SYSTEM_ATTRIBUTES", " SenderId, SequenceNumber ")]).unwrap();
        assert_eq!(c.system_attributes, ["SenderId", "SequenceNumber"]);
        assert_eq!(names(&c), [&needed[..], &["SenderId", "SequenceNumber"]].concat());
        let all = parse(&[URL, ("HOLDFAST_SYSTEM_ATTRIBUTES", "All")]).unwrap();
        assert_eq!(all.system_attribute_names().unwrap(), SystemAttributeNames::ALL);
        assert_eq!(names(&all).len(), SystemAttributeNames::KNOWN.len());
    }

    #[test]
    fn copilot_queue_uri_is_the_fallback() {
        let c = parse(&[("COPILOT_QUEUE_URI", "https://sqs.us-east-1.amazonaws.com/1/q")]).unwrap();
        assert_eq!(c.queue_url.as_deref(), Some("https://sqs.us-east-1.amazonaws.com/1/q"));
        let c = parse(&[("COPILOT_QUEUE_URI", "https://sqs.us-east-1.amazonaws.com/1/q"), URL]).unwrap();
        assert_eq!(c.queue_url.as_deref(), Some(URL.1), "HOLDFAST_QUEUE_URL wins");
    }

    #[test]
    fn a_missing_queue_url_names_both_variables() {
        let e = parse(&[]).unwrap_err();
        assert_eq!(e.variable(), "HOLDFAST_QUEUE_URL");
        let text = e.to_string();
        assert!(text.contains("not set") && text.contains("COPILOT_QUEUE_URI") && text.contains("memory://"), "{text}");
    }

    #[test]
    fn full_configuration_parses() {
        let c = parse(&[
            ("HOLDFAST_QUEUE_URL", "memory://jobs"),
            ("HOLDFAST_CONCURRENCY", "64"),
            ("HOLDFAST_WAIT_TIME", "0"),
            ("HOLDFAST_VISIBILITY_TIMEOUT", "2m"),
            ("HOLDFAST_HEARTBEAT_INTERVAL", "10s"),
            ("HOLDFAST_HANDLER_TIMEOUT", "1h"),
            ("HOLDFAST_DRAIN_TIMEOUT", "100"),
            ("HOLDFAST_BACKOFF_MIN", "1s"),
            ("HOLDFAST_BACKOFF_MAX", "20m"),
            ("HOLDFAST_BATCH_WINDOW", "0"),
            ("HOLDFAST_ACK_INTERVAL", "50ms"),
            ("HOLDFAST_ACK_CONCURRENCY", "1"),
            ("HOLDFAST_RECEIVE_CONCURRENCY", "2"),
            ("HOLDFAST_SQS_TIMEOUT", "30s"),
            ("HOLDFAST_LOG_FORMAT", "JSON"),
        ])
        .unwrap();
        assert_eq!(c.queue_url.as_deref(), Some("memory://jobs"));
        assert_eq!(c.concurrency, 64);
        assert_eq!(c.wait_time, Duration::ZERO);
        assert_eq!(c.visibility_timeout, Duration::from_secs(120));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.handler_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.drain_timeout, Duration::from_secs(100));
        assert_eq!(c.backoff_min, Duration::from_secs(1));
        assert_eq!(c.backoff_max, Duration::from_secs(1200));
        assert_eq!(c.batch_window, Duration::ZERO);
        assert_eq!(c.ack_interval, Duration::from_millis(50));
        assert_eq!(c.ack_concurrency, 1);
        assert_eq!(c.receive_concurrency, 2);
        assert_eq!(c.sqs_timeout, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    /// Every variable, with a bad value, stops start-up with an error that names it and
    /// says what it accepts.
    #[test]
    fn every_bad_value_names_its_variable_and_the_accepted_values() {
        let cases: &[(&str, &str, &str)] = &[
            ("HOLDFAST_QUEUE_URL", "sqs://nope", "memory://NAME"),
            ("HOLDFAST_QUEUE_URL", "memory://", "memory://NAME"),
            ("HOLDFAST_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/", "SQS queue URL"),
            ("HOLDFAST_DEAD_LETTER_QUEUE_URL", "dlq", "memory://NAME"),
            ("COPILOT_TOPIC_QUEUE_URIS", "[\"not a map\"]", "JSON object of queue names to queue URLs"),
            ("COPILOT_TOPIC_QUEUE_URIS", "{\"orders\": \"nope\"}", "JSON object of queue names to queue URLs"),
            ("HOLDFAST_EXIT_WHEN_IDLE", "soon", "or off"),
            ("HOLDFAST_CONCURRENCY", "0", "whole number from 1 to 10000"),
            ("HOLDFAST_CONCURRENCY", "ten", "whole number from 1 to 10000"),
            ("HOLDFAST_WAIT_TIME", "21", "from 0s to 20s"),
            ("HOLDFAST_WAIT_TIME", "500ms", "whole seconds"),
            ("HOLDFAST_VISIBILITY_TIMEOUT", "13h", "from 1s to 12h"),
            ("HOLDFAST_VISIBILITY_TIMEOUT", "soon", "duration"),
            ("HOLDFAST_HEARTBEAT_INTERVAL", "20s", "a third of HOLDFAST_VISIBILITY_TIMEOUT"),
            ("HOLDFAST_HANDLER_TIMEOUT", "forever", "or off"),
            ("HOLDFAST_STOP_TIMEOUT", "5", "from 10s to 12h"),
            ("HOLDFAST_DRAIN_TIMEOUT", "-1", "duration"),
            ("HOLDFAST_SHUTDOWN_RECEIVE", "later", "wait, abandon, or a duration"),
            ("HOLDFAST_SHUTDOWN_RECEIVE", "0", "from 1ms to 20s"),
            ("HOLDFAST_SHUTDOWN_RECEIVE", "30s", "from 1ms to 20s"),
            ("HOLDFAST_BACKOFF_MIN", "1.5s", "duration"),
            ("HOLDFAST_BACKOFF_MAX", "13h", "not less than HOLDFAST_BACKOFF_MIN"),
            ("HOLDFAST_BATCH_WINDOW", "2s", "from 0s to 1s"),
            ("HOLDFAST_ACK_INTERVAL", "1m", "from 0s to 10s"),
            ("HOLDFAST_ACK_CONCURRENCY", "100", "whole number from 1 to 64"),
            ("HOLDFAST_RECEIVE_CONCURRENCY", "0", "whole number from 1 to 1000"),
            ("HOLDFAST_SQS_TIMEOUT", "0", "from 1s to 5m"),
            ("HOLDFAST_LOG_FORMAT", "xml", "text or json"),
            ("RUST_LOG", "holdfast=loud", "a tracing filter"),
            ("RUST_LOG", "lots", "a tracing filter"),
            ("RUST_LOG", "inof", "a tracing filter"),
            ("RUST_LOG", "0", "a tracing filter"),
            ("RUST_LOG", "10sec", "a tracing filter"),
            ("RUST_LOG", "info,holdfast=", "a tracing filter"),
            ("HOLDFAST_LOG_MESSAGE_CONTENT", "yes please", "on or off"),
            ("HOLDFAST_PROGRESS_INTERVAL", "50ms", "from 100ms to 1h, or off"),
            ("HOLDFAST_METRICS", "prometheus", "off or emf"),
            ("HOLDFAST_METRICS_NAMESPACE", "AWS:holdfast", "a CloudWatch namespace"),
            ("HOLDFAST_METRICS_INTERVAL", "500ms", "from 1s to 1h"),
            ("HOLDFAST_HEALTH_FILE", "health.json", "an absolute path to a file"),
            ("HOLDFAST_HEALTH_THRESHOLD", "0", "from 1s to 12h"),
            ("HOLDFAST_DEPLOYMENT_CHECK", "soon", "off, or a duration"),
            ("HOLDFAST_DEPLOYMENT_CHECK", "2h", "from 100ms to 1h"),
            ("HOLDFAST_DEPLOYMENT_CHECK", "60s", "ECS_CONTAINER_METADATA_URI_V4"),
            ("HOLDFAST_SYSTEM_ATTRIBUTES", "SenderId,ReceiveCount", "ApproximateFirstReceiveTimestamp, SenderId"),
        ];
        for (variable, value, hint) in cases {
            let mut pairs = vec![URL];
            if *variable == "HOLDFAST_QUEUE_URL" {
                pairs.clear();
            }
            pairs.push((variable, value));
            let err = parse(&pairs).expect_err(&format!("{variable}={value} must be refused"));
            assert_eq!(err.variable(), *variable, "{err}");
            let text = err.to_string();
            assert!(text.starts_with(&format!("{variable}={value:?} is invalid: expected")), "{text}");
            assert!(text.contains(hint), "{variable}: {text:?} should mention {hint:?}");
        }
        // every variable in the public list is exercised above, except the Copilot alias and
        // the protection variables (src/protection/config.rs has their cases)
        for variable in VARIABLES.iter().filter(|v| **v != "COPILOT_QUEUE_URI" && !v.starts_with("HOLDFAST_PROTECTION"))
        {
            assert!(cases.iter().any(|(v, _, _)| v == variable), "{variable} has no bad-value case");
        }
    }

    #[test]
    fn the_deployment_check_is_off_unless_asked_for_inside_ecs() {
        assert_eq!(parse(&[URL]).unwrap().deployment_check, None);
        assert_eq!(parse(&[URL, ("HOLDFAST_DEPLOYMENT_CHECK", "off")]).unwrap().deployment_check, None);
        let inside = ("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/abc");
        let c = parse(&[URL, inside, ("HOLDFAST_DEPLOYMENT_CHECK", "60s")]).unwrap();
        assert_eq!(c.deployment_check, Some(Duration::from_secs(60)));
    }

    #[test]
    fn the_drain_deadline_follows_the_stop_timeout() {
        let c = parse(&[URL, ("HOLDFAST_STOP_TIMEOUT", "120")]).unwrap();
        assert_eq!(c.stop_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.drain_timeout, Duration::from_secs(115));
        let c = parse(&[URL, ("HOLDFAST_STOP_TIMEOUT", "2m"), ("HOLDFAST_DRAIN_TIMEOUT", "90")]).unwrap();
        assert_eq!(c.drain_timeout, Duration::from_secs(90));
        let e = parse(&[URL, ("HOLDFAST_STOP_TIMEOUT", "30"), ("HOLDFAST_DRAIN_TIMEOUT", "28")]).unwrap_err();
        assert_eq!(e.variable(), "HOLDFAST_DRAIN_TIMEOUT");
        assert!(e.to_string().contains("from 0s to 25s") && e.to_string().contains("HOLDFAST_STOP_TIMEOUT"), "{e}");
    }

    #[test]
    fn copilot_topic_queues_are_read() {
        let c = parse(&[
            URL,
            (
                "COPILOT_TOPIC_QUEUE_URIS",
                r#"{"merchantOrdersEventsQueue":"https://sqs.eu-central-1.amazonaws.com/1/orders","merchantTransactionsfifoEventsQueue":"https://sqs.eu-central-1.amazonaws.com/1/tx.fifo"}"#,
            ),
            ("HOLDFAST_DEAD_LETTER_QUEUE_URL", "https://sqs.eu-central-1.amazonaws.com/1/dlq"),
            ("HOLDFAST_EXIT_WHEN_IDLE", "30s"),
        ])
        .unwrap();
        assert_eq!(c.topic_queues.len(), 2);
        assert_eq!(c.topic_queues["merchantOrdersEventsQueue"], "https://sqs.eu-central-1.amazonaws.com/1/orders");
        assert_eq!(c.dead_letter_queue_url.as_deref(), Some("https://sqs.eu-central-1.amazonaws.com/1/dlq"));
        assert_eq!(c.exit_when_idle, Some(Duration::from_secs(30)));
    }

    #[test]
    fn log_filters_that_mean_something_are_accepted() {
        for filter in ["info", "WARN", "info,holdfast=debug", "holdfast::lease=trace", "off", "info,[message]=debug"] {
            let c = parse(&[URL, ("RUST_LOG", filter)]).unwrap_or_else(|e| panic!("{filter}: {e}"));
            assert_eq!(c.log_filter.as_deref(), Some(filter));
        }
        assert!(!parse(&[URL]).unwrap().log_message_content);
        assert!(parse(&[URL, ("HOLDFAST_LOG_MESSAGE_CONTENT", "on")]).unwrap().log_message_content);
    }

    #[test]
    fn the_receive_in_flight_at_shutdown_is_waited_for_by_default() {
        assert_eq!(parse(&[URL]).unwrap().shutdown_receive, ShutdownReceive::Wait);
        let c = parse(&[URL, ("HOLDFAST_SHUTDOWN_RECEIVE", "Abandon")]).unwrap();
        assert_eq!(c.shutdown_receive, ShutdownReceive::Abandon);
        let c = parse(&[URL, ("HOLDFAST_SHUTDOWN_RECEIVE", "5s"), ("HOLDFAST_DRAIN_TIMEOUT", "2")]).unwrap();
        assert_eq!(c.shutdown_receive, ShutdownReceive::UpTo(Duration::from_secs(5)));
        assert_eq!(c.shutdown_receive.limit(c.drain_timeout), Duration::from_secs(2), "the drain deadline bounds it");
        assert_eq!(ShutdownReceive::Wait.limit(Duration::from_secs(25)), Duration::from_secs(25));
        assert_eq!(ShutdownReceive::Abandon.limit(Duration::from_secs(25)), Duration::ZERO);
    }

    #[test]
    fn handler_timeout_can_be_switched_off() {
        let c = parse(&[URL, ("HOLDFAST_HANDLER_TIMEOUT", "off")]).unwrap();
        assert_eq!(c.handler_timeout, None);
    }

    #[test]
    fn the_progress_interval_defaults_to_ten_seconds_and_can_be_switched_off() {
        assert_eq!(parse(&[URL]).unwrap().progress_interval, Some(Duration::from_secs(10)));
        let c = parse(&[URL, ("HOLDFAST_PROGRESS_INTERVAL", "1m")]).unwrap();
        assert_eq!(c.progress_interval, Some(Duration::from_secs(60)));
        let c = parse(&[URL, ("HOLDFAST_PROGRESS_INTERVAL", "off")]).unwrap();
        assert_eq!(c.progress_interval, None);
    }

    #[test]
    fn durations_read_their_units() {
        assert_eq!(parse_duration_text("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration_text("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration_text("3m"), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration_text("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration_text("2d"), None);
        assert_eq!(parse_duration_text("s"), None);
        assert_eq!(human(Duration::from_secs(43_200)), "12h");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn metrics_and_health_settings_parse() {
        let c = parse(&[URL]).unwrap();
        assert_eq!(c.metrics, MetricsOutput::Off);
        assert_eq!(c.metrics_namespace, "holdfast");
        assert_eq!(c.metrics_interval, Duration::from_secs(10));
        assert_eq!(c.health_file, None);
        assert_eq!(c.health_threshold, Duration::from_secs(120));
        let c = parse(&[
            URL,
            ("HOLDFAST_METRICS", "EMF"),
            ("HOLDFAST_METRICS_NAMESPACE", "Shop/Workers"),
            ("HOLDFAST_METRICS_INTERVAL", "1m"),
            ("HOLDFAST_HEALTH_FILE", "/tmp/holdfast-health.json"),
            ("HOLDFAST_HEALTH_THRESHOLD", "90s"),
        ])
        .unwrap();
        assert_eq!(c.metrics, MetricsOutput::Emf);
        assert_eq!(c.metrics_namespace, "Shop/Workers");
        assert_eq!(c.metrics_interval, Duration::from_secs(60));
        assert_eq!(c.health_file.as_deref(), Some(std::path::Path::new("/tmp/holdfast-health.json")));
        assert_eq!(c.health_threshold, Duration::from_secs(90));
    }
}
