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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxError, Config, MemoryQueue, MetricsOutput, Outcome, OutgoingMessage, Protection, Queue, Worker};
    use serde_json::Value;

    /// The units CloudWatch accepts (`MetricDatum.Unit`).
    const UNITS: &[&str] = &[
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];

    /// Checks one line against the EMF specification; returns its metric values by
    /// `name{dimension=value,...}`.
    fn check_line(line: &str, namespace: &str) -> Vec<(String, Value)> {
        let doc: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let root = doc.as_object().expect("an EMF document is a JSON object");
        let aws = root["_aws"].as_object().expect("_aws is an object");
        let timestamp = aws["Timestamp"].as_u64().expect("_aws.Timestamp is a whole number of ms");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now.abs_diff(timestamp) < 60_000, "Timestamp {timestamp} is ms since the epoch, now");
        let directives = aws["CloudWatchMetrics"].as_array().expect("CloudWatchMetrics is an array");
        assert_eq!(directives.len(), 1, "{line}");
        let mut out = Vec::new();
        for directive in directives {
            let directive = directive.as_object().expect("a MetricDirective is an object");
            let ns = directive["Namespace"].as_str().expect("Namespace is a string");
            assert_eq!(ns, namespace);
            assert!(!ns.is_empty() && ns.len() <= 255 && !ns.contains(':'));
            let sets = directive["Dimensions"].as_array().expect("Dimensions is an array of DimensionSets");
            let mut dims = Vec::new();
            for set in sets {
                let set = set.as_array().expect("a DimensionSet is an array");
                assert!(set.len() <= 30, "at most 30 dimensions");
                for key in set {
                    let key = key.as_str().expect("a dimension key is a string");
                    let value = root.get(key).and_then(Value::as_str);
                    let value = value.unwrap_or_else(|| panic!("dimension {key} has a string member at the top level"));
                    dims.push(format!("{key}={value}"));
                }
            }
            dims.sort();
            let metrics = directive["Metrics"].as_array().expect("Metrics is an array");
            assert!(!metrics.is_empty() && metrics.len() <= 100, "1 to 100 metrics per directive");
            for metric in metrics {
                let metric = metric.as_object().expect("a MetricDefinition is an object");
                let name = metric["Name"].as_str().expect("Name is a string");
                assert!(!name.is_empty() && name.len() <= 255);
                if let Some(unit) = metric.get("Unit") {
                    let unit = unit.as_str().expect("Unit is a string");
                    assert!(UNITS.contains(&unit), "{unit} is a CloudWatch unit");
                }
                let value = root.get(name).unwrap_or_else(|| panic!("{name} has a value at the top level"));
                match value {
                    Value::Number(_) => {}
                    Value::Array(values) => {
                        assert!(values.len() <= 100, "at most 100 values");
                        assert!(values.iter().all(Value::is_number), "{name}: numbers only");
                    }
                    other => panic!("{name} = {other}: a number or an array of numbers"),
                }
                out.push((format!("{name}{{{}}}", dims.join(",")), value.clone()));
            }
        }
        out
    }

    #[tokio::test]
    async fn emf_lines_follow_the_specification_and_the_last_interval_is_written_at_shutdown() {
        let collector = install("holdfast-test").expect("no other global recorder in the unit tests");
        capture();
        flush(collector);
        let _ = captured();
        let memory = MemoryQueue::new("emf");
        let queue = Queue::memory(&memory);
        for i in 0..3 {
            queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let config = Config {
            metrics: MetricsOutput::Emf,
            metrics_namespace: "holdfast-test".into(),
            exit_when_idle: Some(Duration::from_secs(1)),
            wait_time: Duration::from_secs(1),
            ..Config::default()
        };
        let worker = Worker::new(config)
            .queue(queue)
            .protection(Protection::off())
            .handler(crate::handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
        let summary = worker.run_until(std::future::pending()).await.unwrap();
        assert_eq!(summary.succeeded, 3);
        let text = captured();
        let mut values = std::collections::HashMap::new();
        for line in text.lines() {
            for (key, value) in check_line(line, "holdfast-test") {
                values.entry(key).or_insert_with(Vec::new).push(value);
            }
        }
        let sum = |key: &str| -> u64 { values.get(key).map_or(0, |v| v.iter().filter_map(Value::as_u64).sum()) };
        assert_eq!(sum("holdfast_messages_received_total{queue=emf}"), 3, "{text}");
        assert_eq!(sum("holdfast_messages_succeeded_total{queue=emf}"), 3, "{text}");
        let durations = &values["holdfast_handler_duration_seconds{outcome=succeeded,queue=emf}"];
        let samples: usize = durations.iter().map(|v| v.as_array().map_or(1, Vec::len)).sum();
        assert_eq!(samples, 3, "{text}");
        assert!(values.contains_key("holdfast_free_slots{}"), "gauges without labels have no dimensions: {text}");
        assert!(text.contains("\"Unit\":\"Seconds\""), "histograms in seconds: {text}");
    }
}
