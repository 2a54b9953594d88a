//! The worker's metrics (through the `metrics` facade), events and health signals, in one
//! handle per queue that the dispatcher, poller, acker and heartbeat call at the points
//! where things happen.
//!
//! Metric handles are registered once, when the worker starts, with the recorder installed
//! then (a no-op without one), so recording is an atomic add. Labels are the queue's name
//! (the last segment of its URL, never the URL), and a bounded `cause`, `kind`, `call` or
//! `outcome`; never a body, a message id or a receipt handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::events::{Event, Events, FailureCause, HandledOutcome};
use crate::health::{Beat, Health};
use crate::queue::QueueError;
use crate::{Message, ProtectionError};

/// The metric names, as the README lists them.
pub mod names {
    /// Counter: messages received.
    pub const RECEIVED: &str = "holdfast_messages_received_total";
    /// Counter: messages handled with `Outcome::Ack`.
    pub const SUCCEEDED: &str = "holdfast_messages_succeeded_total";
    /// Counter: messages handled with `Outcome::Retry`.
    pub const RETRIED: &str = "holdfast_messages_retried_total";
    /// Counter, label `cause`: failed attempts.
    pub const FAILED: &str = "holdfast_messages_failed_total";
    /// Counter: messages copied to the dead-letter queue.
    pub const DEAD_LETTERED: &str = "holdfast_messages_dead_lettered_total";
    /// Counter: messages given back unhandled.
    pub const RELEASED: &str = "holdfast_messages_released_total";
    /// Histogram, seconds, label `outcome`: how long handlers ran.
    pub const HANDLER_DURATION: &str = "holdfast_handler_duration_seconds";
    /// Histogram, seconds: from receive to handler start.
    pub const WAIT: &str = "holdfast_message_wait_seconds";
    /// Histogram, seconds: message age at receive (from `SentTimestamp`).
    pub const AGE: &str = "holdfast_message_age_seconds";
    /// Gauge: messages received and not yet settled.
    pub const IN_FLIGHT: &str = "holdfast_messages_in_flight";
    /// Gauge (no queue label): free handler slots.
    pub const FREE_SLOTS: &str = "holdfast_free_slots";
    /// Counter: `ReceiveMessage` calls that answered.
    pub const RECEIVES: &str = "holdfast_receives_total";
    /// Counter: `ReceiveMessage` calls that answered with no message.
    pub const EMPTY_RECEIVES: &str = "holdfast_empty_receives_total";
    /// Counter, label `kind`: `ReceiveMessage` calls that failed.
    pub const RECEIVE_ERRORS: &str = "holdfast_receive_errors_total";
    /// Counter: `DeleteMessageBatch` calls.
    pub const DELETE_REQUESTS: &str = "holdfast_delete_requests_total";
    /// Counter: delete entries given up (the message will be delivered again).
    pub const DELETE_FAILED: &str = "holdfast_delete_failed_entries_total";
    /// Counter: `ChangeMessageVisibilityBatch` calls (releases, retries, backoffs, heartbeats).
    pub const VISIBILITY_REQUESTS: &str = "holdfast_visibility_requests_total";
    /// Counter: visibility-change entries given up.
    pub const VISIBILITY_FAILED: &str = "holdfast_visibility_failed_entries_total";
    /// Counter: leases extended by the heartbeat.
    pub const LEASE_EXTENSIONS: &str = "holdfast_lease_extensions_total";
    /// Counter: leases lost.
    pub const LEASES_LOST: &str = "holdfast_leases_lost_total";
    /// Gauge (no queue label): 1 while the task is protected from scale-in, else 0.
    pub const PROTECTED: &str = "holdfast_protected";
    /// Counter (no queue label), labels `call` and `outcome`: protection calls to ECS.
    pub const PROTECTION_CALLS: &str = "holdfast_protection_calls_total";
    /// Gauge (no queue label): 1 while the worker is healthy, else 0.
    pub const HEALTHY: &str = "holdfast_healthy";
    /// Gauge (no queue label): 1 while strict protection, the bounded hold or
    /// acknowledgements behind the handlers hold polling back, else 0.
    pub const POLLING_PAUSED: &str = "holdfast_polling_paused";
    /// Counter (no queue label), label `outcome` (`current`, `replaced`, `error`): the
    /// deployment check's `DescribeServices` calls.
    pub const DEPLOYMENT_CHECKS: &str = "holdfast_deployment_checks_total";
    /// Gauge (no queue label): 1 once the worker stepped aside for a deployment, else 0.
    pub const STEPPED_ASIDE: &str = "holdfast_stepped_aside";
    /// Counter (no queue label): events a slow subscriber lost.
    pub const EVENTS_LOST: &str = "holdfast_events_lost_total";
    /// Counter (no queue label): histogram samples left out of EMF output.
    pub const EMF_SAMPLES_DROPPED: &str = "holdfast_emf_samples_dropped_total";
}

/// Kinds of receive error, the `kind` label of `holdfast_receive_errors_total`.
const RECEIVE_ERROR_KINDS: [&str; 4] = ["throttled", "network", "service", "permanent"];

fn receive_error_kind(error: &QueueError) -> usize {
    match error.code.as_deref() {
        _ if error.is_permanent() => 3,
        Some(code) if code.contains("Throttl") || code.contains("OverLimit") => 0,
        None => 1,
        Some(_) => 2,
    }
}

/// Describes every metric (unit and meaning) to the installed recorder.
pub(crate) fn describe() {
    use names::*;
    for (name, text) in [
        (RECEIVED, "messages received"),
        (SUCCEEDED, "messages handled with Outcome::Ack"),
        (RETRIED, "messages handled with Outcome::Retry"),
        (FAILED, "failed attempts, by cause"),
        (DEAD_LETTERED, "messages copied to the dead-letter queue"),
        (RELEASED, "messages given back unhandled"),
        (RECEIVES, "ReceiveMessage calls that answered"),
        (EMPTY_RECEIVES, "ReceiveMessage calls that answered with no message"),
        (RECEIVE_ERRORS, "ReceiveMessage calls that failed, by kind"),
        (DELETE_REQUESTS, "DeleteMessageBatch calls"),
        (DELETE_FAILED, "delete entries given up"),
        (VISIBILITY_REQUESTS, "ChangeMessageVisibilityBatch calls"),
        (VISIBILITY_FAILED, "visibility-change entries given up"),
        (LEASE_EXTENSIONS, "leases extended by the heartbeat"),
        (LEASES_LOST, "leases lost"),
        (PROTECTION_CALLS, "scale-in protection calls, by call and outcome"),
        (DEPLOYMENT_CHECKS, "deployment checks (DescribeServices calls), by outcome"),
        (EVENTS_LOST, "events a slow subscriber lost"),
        (EMF_SAMPLES_DROPPED, "histogram samples left out of EMF output"),
    ] {
        metrics::describe_counter!(name, Unit::Count, text);
    }
    for (name, text) in [
        (IN_FLIGHT, "messages received and not yet settled"),
        (FREE_SLOTS, "free handler slots"),
        (PROTECTED, "1 while the task is protected from scale-in"),
        (HEALTHY, "1 while the worker is healthy"),
        (POLLING_PAUSED, "1 while strict protection, the bounded hold or acknowledgements behind hold polling back"),
        (STEPPED_ASIDE, "1 once the worker stepped aside for a deployment"),
    ] {
        metrics::describe_gauge!(name, Unit::Count, text);
    }
    for (name, text) in [
        (HANDLER_DURATION, "how long handlers ran"),
        (WAIT, "time from receive to handler start"),
        (AGE, "message age at receive"),
    ] {
        metrics::describe_histogram!(name, Unit::Seconds, text);
    }
}

/// Counts a protection call to ECS (or the agent) by its outcome.
pub(crate) fn protection_call(protect: bool, result: &Result<(), ProtectionError>) {
    let call = if protect { "protect" } else { "release" };
    let outcome = match result {
        Ok(()) => "ok".to_owned(),
        Err(error) => error.code().to_owned(),
    };
    metrics::counter!(names::PROTECTION_CALLS, "call" => call, "outcome" => outcome).increment(1);
}

/// While EMF output is on, each histogram keeps at most [`EMF_SAMPLES`] samples per flush
/// interval: an EMF value array holds at most 100 values.
pub(crate) const EMF_SAMPLES: u64 = 100;
static EMF_ACTIVE: AtomicBool = AtomicBool::new(false);
/// Flush intervals so far; a histogram's sample count is kept with the interval it counts.
static EMF_EPOCH: AtomicU64 = AtomicU64::new(0);

pub(crate) fn emf_activate() {
    EMF_ACTIVE.store(true, Ordering::Relaxed);
}

pub(crate) fn emf_next_interval() {
    EMF_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// A histogram that, while EMF output is on, keeps the first [`EMF_SAMPLES`] samples of
/// each flush interval and counts the rest.
#[derive(Debug)]
struct Sampled {
    histogram: Histogram,
    /// The interval (high 32 bits) and the samples taken in it (low 32 bits).
    taken: AtomicU64,
    dropped: Counter,
}

impl Sampled {
    fn new(histogram: Histogram, dropped: &Counter) -> Self {
        Self { histogram, taken: AtomicU64::new(0), dropped: dropped.clone() }
    }

    #[inline]
    fn record(&self, value: f64) {
        if EMF_ACTIVE.load(Ordering::Relaxed) {
            let epoch = EMF_EPOCH.load(Ordering::Relaxed) << 32;
            let seen = self.taken.load(Ordering::Relaxed);
            let count = if seen & !0xFFFF_FFFF == epoch {
                (self.taken.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF) + 1
            } else {
                self.taken.store(epoch | 1, Ordering::Relaxed);
                1
            };
            if count > EMF_SAMPLES {
                self.dropped.increment(1);
                return;
            }
        }
        self.histogram.record(value);
    }
}

#[derive(Debug)]
struct Inner {
    queue: Arc<str>,
    events: Events,
    health: Arc<Health>,
    received: Counter,
    succeeded: Counter,
    retried: Counter,
    failed: [Counter; 5],
    dead_lettered: Counter,
    released: Counter,
    duration: [Sampled; 3],
    wait: Sampled,
    age: Sampled,
    in_flight: Gauge,
    in_flight_now: AtomicI64,
    receives: Counter,
    empty_receives: Counter,
    receive_errors: [Counter; 4],
    delete_requests: Counter,
    delete_failed: Counter,
    visibility_requests: Counter,
    visibility_failed: Counter,
    lease_extensions: Counter,
    leases_lost: Counter,
    beat: Arc<Beat>,
}

/// One queue's instrumentation; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Telemetry {
    inner: Arc<Inner>,
}

/// The queue's name for labels: the last path segment of its URL.
pub(crate) fn queue_name(url: &str) -> &str {
    let url = url.trim_end_matches('/');
    url.rsplit('/').next().unwrap_or(url)
}

impl Telemetry {
    /// The instrumentation of the queue at `url`, registered with the recorder installed now.
    pub(crate) fn new(url: &str, events: Events, health: Arc<Health>) -> Self {
        use names::*;
        let queue: Arc<str> = queue_name(url).into();
        let q = queue.to_string();
        let counter = |name: &'static str| metrics::counter!(name, "queue" => q.clone());
        let dropped = metrics::counter!(EMF_SAMPLES_DROPPED);
        let duration = |outcome: HandledOutcome| {
            Sampled::new(
                metrics::histogram!(HANDLER_DURATION, "queue" => q.clone(), "outcome" => outcome.as_str()),
                &dropped,
            )
        };
        let inner = Inner {
            received: counter(RECEIVED),
            succeeded: counter(SUCCEEDED),
            retried: counter(RETRIED),
            failed: FailureCause::ALL.map(|c| metrics::counter!(FAILED, "queue" => q.clone(), "cause" => c.as_str())),
            dead_lettered: counter(DEAD_LETTERED),
            released: counter(RELEASED),
            duration: [HandledOutcome::Succeeded, HandledOutcome::Retried, HandledOutcome::Failed].map(duration),
            wait: Sampled::new(metrics::histogram!(WAIT, "queue" => q.clone()), &dropped),
            age: Sampled::new(metrics::histogram!(AGE, "queue" => q.clone()), &dropped),
            in_flight: metrics::gauge!(IN_FLIGHT, "queue" => q.clone()),
            in_flight_now: AtomicI64::new(0),
            receives: counter(RECEIVES),
            empty_receives: counter(EMPTY_RECEIVES),
            receive_errors: RECEIVE_ERROR_KINDS
                .map(|kind| metrics::counter!(RECEIVE_ERRORS, "queue" => q.clone(), "kind" => kind)),
            delete_requests: counter(DELETE_REQUESTS),
            delete_failed: counter(DELETE_FAILED),
            visibility_requests: counter(VISIBILITY_REQUESTS),
            visibility_failed: counter(VISIBILITY_FAILED),
            lease_extensions: counter(LEASE_EXTENSIONS),
            leases_lost: counter(LEASES_LOST),
            beat: Arc::new(Beat { queue: queue.clone(), at: AtomicU64::new(u64::MAX), interval_ms: AtomicU64::new(0) }),
            queue,
            events,
            health,
        };
        inner.health.watch(inner.beat.clone());
        Self { inner: Arc::new(inner) }
    }

    /// Instrumentation that records nowhere, for parts built alone in tests.
    #[cfg(test)]
    pub(crate) fn detached(url: &str) -> Self {
        metrics::with_local_recorder(&metrics::NoopRecorder, || {
            Self::new(url, Events::default(), Arc::new(Health::new(Duration::from_secs(3600))))
        })
    }

    pub(crate) fn queue(&self) -> &Arc<str> {
        &self.inner.queue
    }

    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.inner.health
    }

    fn in_flight(&self, change: i64) {
        let now = self.inner.in_flight_now.fetch_add(change, Ordering::Relaxed) + change;
        self.inner.in_flight.set(now as f64);
    }

    /// A receive answered with `messages`.
    pub(crate) fn receive_ok(&self, messages: &[Message]) {
        let i = &self.inner;
        i.health.receive_ok();
        i.receives.increment(1);
        if messages.is_empty() {
            i.empty_receives.increment(1);
            return;
        }
        i.received.increment(messages.len() as u64);
        self.in_flight(messages.len() as i64);
        let now = SystemTime::now();
        for m in messages {
            if let Some(age) = m.sent_timestamp.and_then(|sent| now.duration_since(sent).ok()) {
                i.age.record(age.as_secs_f64());
            }
            i.events.emit(|| Event::Received {
                queue: i.queue.clone(),
                message_id: m.id.to_string(),
                receive_count: m.receive_count,
            });
        }
    }

    /// A receive failed.
    pub(crate) fn receive_failed(&self, error: &QueueError) {
        self.inner.receive_errors[receive_error_kind(error)].increment(1);
        self.inner.health.receive_failed();
    }

    /// The handler is about to start on `message`, at `now`.
    pub(crate) fn started(&self, message: &Message, now: tokio::time::Instant) {
        self.inner.wait.record(now.saturating_duration_since(message.received_at).as_secs_f64());
    }

    /// A handler returned for `message`.
    pub(crate) fn handled(&self, message: &Message, outcome: HandledOutcome, took: Duration) {
        let i = &self.inner;
        match outcome {
            HandledOutcome::Succeeded => i.succeeded.increment(1),
            HandledOutcome::Retried => i.retried.increment(1),
            HandledOutcome::Failed => {}
        }
        i.duration[outcome as usize].record(took.as_secs_f64());
        self.in_flight(-1);
        i.events.emit(|| Event::Handled {
            queue: i.queue.clone(),
            message_id: message.id.to_string(),
            outcome,
            duration: took,
        });
    }

    /// The attempt on `message` failed.
    pub(crate) fn failed(&self, message: &Message, cause: FailureCause) {
        let i = &self.inner;
        i.failed[cause as usize].increment(1);
        i.events.emit(|| Event::Failed { queue: i.queue.clone(), message_id: message.id.to_string(), cause });
    }

    pub(crate) fn dead_lettered(&self, message: &Message) {
        let i = &self.inner;
        i.dead_lettered.increment(1);
        i.events.emit(|| Event::DeadLettered { queue: i.queue.clone(), message_id: message.id.to_string() });
    }

    /// `message` was given back unhandled. `counted`: it was counted in flight.
    pub(crate) fn released(&self, message: &Message, counted: bool) {
        let i = &self.inner;
        i.released.increment(1);
        if counted {
            self.in_flight(-1);
        }
        i.events.emit(|| Event::Released { queue: i.queue.clone(), message_id: message.id.to_string() });
    }

    pub(crate) fn lease_lost(&self, message_id: &str) {
        let i = &self.inner;
        i.leases_lost.increment(1);
        i.events.emit(|| Event::LeaseLost { queue: i.queue.clone(), message_id: message_id.to_owned() });
    }

    pub(crate) fn leases_extended(&self, n: usize) {
        self.inner.lease_extensions.increment(n as u64);
    }

    /// The heartbeat loop woke, as it does every `interval`.
    pub(crate) fn heartbeat(&self, interval: Duration) {
        let i = &self.inner;
        i.beat.interval_ms.store(interval.as_millis() as u64, Ordering::Relaxed);
        i.beat.at.store(i.health.now_ms(), Ordering::Relaxed);
    }

    /// An acknowledgement call went out: a delete batch or a visibility batch.
    pub(crate) fn ack_request(&self, delete: bool) {
        if delete { &self.inner.delete_requests } else { &self.inner.visibility_requests }.increment(1);
    }

    /// An acknowledgement call or entry failed (it is retried) or succeeded.
    pub(crate) fn ack_result(&self, ok: bool) {
        if ok { self.inner.health.ack_ok() } else { self.inner.health.ack_failed() }
    }

    /// Acknowledgement entries given up.
    pub(crate) fn ack_given_up(&self, delete: bool, n: usize) {
        if delete { &self.inner.delete_failed } else { &self.inner.visibility_failed }.increment(n as u64);
    }
}

/// The span of one message: queue, id, receive count, FIFO group, and the trace context
/// it carries (a W3C `traceparent` message attribute, or SQS's `AWSTraceHeader` system
/// attribute). Never the body or the receipt handle.
pub(crate) fn message_span(queue: &str, message: &Message) -> tracing::Span {
    let traceparent = message.message_attribute("traceparent").and_then(|a| a.as_str());
    let aws_trace_header = message.sent_system_attribute("AWSTraceHeader");
    let span = tracing::info_span!(
        "message",
        queue,
        message_id = %message.id,
        receive_count = message.receive_count,
        group_id = message.group_id.as_deref(),
        traceparent,
        aws_trace_header,
    );
    #[cfg(feature = "opentelemetry")]
    if let Some(parent) =
        traceparent.and_then(parse_traceparent).or_else(|| aws_trace_header.and_then(parse_aws_trace_header))
    {
        otel::set_parent(&span, parent);
    }
    span
}

/// The sender's span a message carries: trace id, span id, whether it was sampled.
#[cfg(any(test, feature = "opentelemetry"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RemoteParent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) sampled: bool,
}

#[cfg(any(test, feature = "opentelemetry"))]
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`); all-zero ids
/// are invalid.
#[cfg(any(test, feature = "opentelemetry"))]
pub(crate) fn parse_traceparent(value: &str) -> Option<RemoteParent> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let (trace_id, span_id, flags) = (hex::<16>(trace)?, hex::<8>(span)?, hex::<1>(flags)?);
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(RemoteParent { trace_id, span_id, sampled: flags[0] & 1 == 1 })
}

/// SQS's `AWSTraceHeader` (X-Ray: `Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=1`), whose
/// root is a W3C trace id written in two parts. Without a `Parent` there is nothing to link to.
#[cfg(any(test, feature = "opentelemetry"))]
pub(crate) fn parse_aws_trace_header(value: &str) -> Option<RemoteParent> {
    let (mut root, mut parent, mut sampled) = (None, None, false);
    for field in value.split(';') {
        match field.trim().split_once('=') {
            Some(("Root", v)) => root = Some(v),
            Some(("Parent", v)) => parent = Some(v),
            Some(("Sampled", v)) => sampled = v == "1",
            _ => {}
        }
    }
    let mut root_parts = root?.split('-');
    let (version, time, random) = (root_parts.next()?, root_parts.next()?, root_parts.next()?);
    if version != "1" || time.len() != 8 || random.len() != 24 {
        return None;
    }
    let trace_id = hex::<16>(&format!("{time}{random}"))?;
    let span_id = hex::<8>(parent?)?;
    Some(RemoteParent { trace_id, span_id, sampled })
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// Makes `span` a child of the sender's span (a no-op without an OpenTelemetry layer).
    pub(super) fn set_parent(span: &tracing::Span, parent: super::RemoteParent) {
        let flags = if parent.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            flags,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

#[cfg(test)]
mod trace_context_tests {
    use super::*;

    #[test]
    fn traceparents_are_read_as_the_w3c_spec_writes_them() {
        let p = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(p.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled);
        assert!(!parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().sampled);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "not a traceparent",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn aws_trace_headers_become_the_same_ids() {
        let p = parse_aws_trace_header("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
            .unwrap();
        assert_eq!(p.trace_id[..4], [0x57, 0x59, 0xe9, 0x88]);
        assert_eq!(p.trace_id[4..6], [0xbd, 0x86]);
        assert_eq!(p.span_id[..2], [0x53, 0x99]);
        assert!(p.sampled);
        assert_eq!(parse_aws_trace_header("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"), None, "no parent");
        assert_eq!(parse_aws_trace_header("Parent=53995c3f42cd8ad8"), None, "no root");
    }

    /// With an OpenTelemetry layer installed, the message's span is a child of the
    /// sender's: its context carries the sender's trace id.
    #[cfg(feature = "opentelemetry")]
    #[test]
    fn the_message_span_joins_the_senders_trace() {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(opentelemetry::trace::noop::NoopTracer::new()));
        tracing::subscriber::with_default(subscriber, || {
            let message = Message::new("m", "{}").with_attribute(
                "traceparent",
                crate::MessageAttribute::string("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            let span = message_span("jobs", &message);
            let context = span.context();
            let trace_id = context.span().span_context().trace_id();
            assert_eq!(trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageAttribute;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_message_span_carries_the_trace_context_and_never_the_body() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber =
            tracing_subscriber::fmt().json().with_current_span(true).with_writer(move || writer.clone()).finish();
        let mut message = Message::new("m-1", "secret body").with_receive_count(3).with_attribute(
            "traceparent",
            MessageAttribute::string("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        message.group_id = Some("orders-7".into());
        message.receipt_handle = "secret-receipt".into();
        message
            .attributes_mut()
            .insert("AWSTraceHeader".into(), "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into());
        tracing::subscriber::with_default(subscriber, || {
            let span = message_span(queue_name("https://sqs.eu-west-1.amazonaws.com/1/jobs"), &message);
            let _entered = span.enter();
            tracing::info!("inside");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let span = &line["span"];
        assert_eq!(span["name"], "message");
        assert_eq!(span["queue"], "jobs");
        assert_eq!(span["message_id"], "m-1");
        assert_eq!(span["receive_count"], 3);
        assert_eq!(span["group_id"], "orders-7");
        assert_eq!(span["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(span["aws_trace_header"], "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1");
        assert!(!text.contains("secret"), "no body, no receipt handle: {text}");
    }

    #[test]
    fn queue_names_are_the_last_segment_of_the_url() {
        assert_eq!(queue_name("https://sqs.eu-west-1.amazonaws.com/123456789012/jobs.fifo"), "jobs.fifo");
        assert_eq!(queue_name("http://127.0.0.1:4566/000000000000/jobs/"), "jobs");
        assert_eq!(queue_name("memory://demo"), "demo");
    }
}
