//! The cost of metrics and events: CPU per message on the embedded queue with no recorder
//! and no subscriber, with a recorder installed (metrics-util's in-memory one), with a
//! subscriber reading every event, and with both. Rounds alternate, each on its own single-threaded
//! runtime with the recorder set for that thread only, and the medians are compared.
//!
//! ```text
//! cargo bench --bench telemetry
//! ```

use std::time::Duration;

use holdfast::{BoxError, Config, MemoryQueue, Outcome, OutgoingMessage, Protection, Queue, Worker, handler_fn};
use metrics_util::debugging::DebuggingRecorder;

/// CPU time (user + system) of this process so far, from /proc (USER_HZ is 100 a second).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// µs of CPU per message to drain `total` messages.
fn run(total: u64, metrics_on: bool, events_on: bool) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let recorder = DebuggingRecorder::new();
    let _local = metrics_on.then(|| metrics::set_default_local_recorder(&recorder));
    runtime.block_on(async {
        let memory = MemoryQueue::new("bench");
        let queue = Queue::memory(&memory);
        for i in 0..total {
            queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
        }
        let mut config = Config::default();
        config.wait_time = Duration::ZERO;
        config.exit_when_idle = Some(Duration::from_secs(1));
        let worker = Worker::new(config)
            .queue(queue)
            .protection(Protection::off())
            .handler(handler_fn(|_m, _c| async { Ok::<_, BoxError>(Outcome::Ack) }));
        let reader = events_on.then(|| {
            let mut events = worker.subscribe();
            tokio::spawn(async move {
                let mut n = 0u64;
                while events.recv().await.is_some() {
                    n += 1;
                }
                n
            })
        });
        let before = cpu_time();
        let summary = worker.run_until(std::future::pending()).await.unwrap();
        // The idle second at the end costs (almost) no CPU: the queue is empty.
        let cpu = cpu_time() - before;
        assert_eq!(summary.succeeded, total);
        if let Some(reader) = reader {
            assert!(reader.await.unwrap() >= 2 * total, "the subscriber saw every message");
        }
        cpu.as_secs_f64() * 1e6 / total as f64
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants a quick run.
    let full = std::env::args().any(|a| a == "--bench");
    let (total, rounds) = if full { (50_000, 15) } else { (2_000, 1) };
    let modes = [(false, false), (true, false), (false, true), (true, true)];
    let mut figures = vec![Vec::new(); modes.len()];
    for _ in 0..rounds {
        for (i, (metrics_on, events_on)) in modes.iter().enumerate() {
            figures[i].push(run(total, *metrics_on, *events_on));
        }
    }
    let figures: Vec<f64> = figures.into_iter().map(median).collect();
    println!(
        "embedded queue, no-op handler, concurrency 10, {total} messages, median of {rounds} rounds, CPU per message:"
    );
    for ((metrics_on, events_on), figure) in modes.iter().zip(&figures) {
        let what = match (metrics_on, events_on) {
            (false, false) => "no recorder, no subscriber",
            (true, false) => "a recorder",
            (false, true) => "a subscriber reading every event",
            (true, true) => "a recorder and a subscriber",
        };
        println!("  {what:<34} {figure:>6.2} µs ({:+.2} µs)", figure - figures[0]);
    }
}
