//! The whole life of a worker in a few seconds, on the embedded queue (no AWS account):
//! jobs are enqueued, handled concurrently, one fails and is retried, a slow one outlives
//! its visibility timeout and is kept invisible by the heartbeat, and the worker drains
//! gracefully at the end, printing a summary of the worker's metrics.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use holdfast::{BoxError, Config, MemoryQueue, Outcome, OutgoingMessage, Queue, Worker, json_fn};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::Notify;

#[derive(serde::Deserialize, serde::Serialize)]
struct Job {
    name: String,
    work_ms: u64,
    #[serde(default)]
    flaky: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,holdfast::lease=debug".into());
    // Colour on a terminal only, and never with NO_COLOR set (https://no-color.org).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .compact()
        .init();

    // Any `metrics` recorder sees the worker's metrics (Prometheus, StatsD, OpenTelemetry);
    // this one keeps them in memory for the summary at the end.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let memory = MemoryQueue::new("quickstart");
    let queue = Queue::memory(&memory);
    let jobs = [
        ("thumbnail-1", 400, false),
        ("thumbnail-2", 600, false),
        ("invoice-7", 300, true),
        ("thumbnail-3", 500, false),
        ("report-2025", 7_000, false),
        ("thumbnail-4", 200, false),
        ("email-42", 250, false),
        ("thumbnail-5", 700, false),
    ];
    for (name, work_ms, flaky) in jobs {
        let body = serde_json::to_string(&Job { name: name.into(), work_ms, flaky })?;
        queue.send(OutgoingMessage::new(body)).await?;
    }
    tracing::info!(jobs = jobs.len(), "enqueued");

    let mut config = Config::default();
    config.concurrency = 4;
    config.wait_time = Duration::from_secs(1);
    config.visibility_timeout = Duration::from_secs(3); // the slow job takes longer than this
    config.heartbeat_interval = Duration::from_millis(500);
    config.backoff_min = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(1);
    config.drain_timeout = Duration::from_secs(20);
    config.progress_interval = Some(Duration::from_secs(2)); // the default is 10 s

    let done = Arc::new(AtomicUsize::new(0));
    let all_but_one = Arc::new(Notify::new());
    let (counter, signal) = (done.clone(), all_but_one.clone());
    let total = jobs.len();
    let handler = json_fn(move |job: Job, msg, ctx| {
        let (counter, signal) = (counter.clone(), signal.clone());
        async move {
            tracing::info!(job = %job.name, attempt = msg.receive_count(), "working for {} ms", job.work_ms);
            if job.flaky && msg.receive_count() == 1 {
                return Err::<Outcome, BoxError>("upstream returned 503 (will be retried)".into());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(job.work_ms)) => {}
                _ = ctx.cancelled() => return Err("cancelled".into()),
            }
            tracing::info!(job = %job.name, "done");
            if counter.fetch_add(1, Ordering::SeqCst) + 2 == total {
                signal.notify_one();
            }
            Ok(Outcome::Ack)
        }
    });

    // Ask for a graceful shutdown while the slow job still runs, as ECS would with SIGTERM
    // (press Ctrl-C to stop earlier).
    let shutdown = async move {
        tokio::select! {
            _ = all_but_one.notified() => tracing::info!("all quick jobs done: shutting down while the slow one runs"),
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C"),
        }
    };
    let summary = Worker::new(config).queue(queue.clone()).handler(handler).run_until(shutdown).await?;
    // Eight jobs, nine deliveries: invoice-7 failed on its first and was retried.
    tracing::info!(
        jobs = jobs.len(),
        deliveries = summary.deliveries,
        succeeded = summary.succeeded,
        failed = summary.failed,
        retried = summary.retried,
        deleted = summary.deleted,
        left_in_queue = memory.len(),
        requests = queue.request_counts().total(),
        "finished"
    );
    print_metrics(&snapshotter);
    Ok(())
}

/// The metrics that moved, one line each: counters and gauges as numbers, histograms as
/// count, mean and maximum.
fn print_metrics(snapshotter: &metrics_util::debugging::Snapshotter) {
    let mut lines: Vec<(String, String)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> =
                key.labels().filter(|l| l.key() != "queue").map(|l| format!("{}={}", l.key(), l.value())).collect();
            let name = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            let text = match value {
                DebugValue::Counter(0) => return None,
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(v) => v.to_string(),
                DebugValue::Histogram(v) if v.is_empty() => return None,
                DebugValue::Histogram(v) => {
                    let values: Vec<f64> = v.into_iter().map(|v| v.into_inner()).collect();
                    let mean = values.iter().sum::<f64>() / values.len() as f64;
                    let max = values.iter().copied().fold(0.0, f64::max);
                    format!("{} samples, mean {mean:.3} s, max {max:.3} s", values.len())
                }
            };
            Some((name, text))
        })
        .collect();
    lines.sort();
    println!("\nmetrics (queue quickstart):");
    for (name, text) in lines {
        println!("  {name:<58} {text}");
    }
}
