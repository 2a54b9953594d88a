//! CloudWatch Embedded Metric Format output on stdout (`HOLDFAST_METRICS=emf`), encoded by
//! the `metrics_cloudwatch_embedded` crate's recorder, written on an interval and once more
//! at shutdown so the last interval is never lost.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_cloudwatch_embedded::{Builder, Collector};
use tokio_util::sync::CancellationToken;

/// The process's EMF recorder, installed at most once (the `metrics` facade has one global
/// recorder); `None` when another recorder was installed first.
static COLLECTOR: OnceLock<Option<&'static Collector>> = OnceLock::new();

/// Where flushed lines go; stdout unless a test captures them.
static CAPTURE: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// Installs the EMF recorder as the global `metrics` recorder, once per process.
pub(crate) fn install(namespace: &str) -> Option<&'static Collector> {
    *COLLECTOR.get_or_init(|| match Builder::new().cloudwatch_namespace(namespace.to_owned()).init() {
        Ok(collector) => {
            crate::telemetry::describe();
            crate::telemetry::emf_activate();
            tracing::info!(namespace, "metrics: CloudWatch EMF lines on stdout");
            Some(collector)
        }
        Err(error) => {
            tracing::warn!(%error, "metrics: another recorder is installed; no EMF output");
            None
        }
    })
}

/// Writes every metric's value since the last flush as EMF lines.
pub(crate) fn flush(collector: &'static Collector) {
    crate::telemetry::emf_next_interval();
    let mut capture = CAPTURE.lock().unwrap_or_else(|p| p.into_inner());
    let result = match capture.as_mut() {
        Some(buffer) => collector.flush(&mut *buffer),
        None => {
            let mut out = std::io::stdout().lock();
            collector.flush(&mut out).and_then(|()| out.flush())
        }
    };
    if let Err(error) = result {
        tracing::warn!(%error, "metrics: could not write EMF lines");
    }
}

/// Flushes every `interval` until `stop`, then once more.
pub(crate) async fn run(collector: &'static Collector, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => flush(collector),
        }
    }
    flush(collector);
}

/// Sends flushed lines to a buffer instead of stdout (tests).
#[cfg(test)]
pub(crate) fn capture() {
    *CAPTURE.lock().unwrap() = Some(Vec::new());
}

/// The lines flushed since [`capture`] or the last call.
#[cfg(test)]
pub(crate) fn captured() -> String {
    let bytes = CAPTURE.lock().unwrap().as_mut().map(std::mem::take).unwrap_or_default();
    String::from_utf8(bytes).unwrap()
}
