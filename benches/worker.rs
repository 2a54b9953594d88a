//! Figures for the README: throughput and CPU cost per message on the embedded queue, SQS
//! requests per message at saturation against the local SQS server, and the time from
//! SIGTERM to exit of an idle worker process. Run with `scripts/bench.sh`, which starts the
//! server and builds the worker binary first.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use holdfast::{BoxError, Config, MemoryQueue, Outcome, OutgoingMessage, Queue, ReceiveOptions, Worker, handler_fn};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::Notify;

/// CPU time (user + system, all threads) of this process so far, from /proc (Linux's
/// USER_HZ is 100 ticks a second).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The worker's own requests: receives, deletes and visibility changes (not the preload).
fn worker_requests(counts: holdfast::RequestCounts) -> u64 {
    counts.receive + counts.delete + counts.change_visibility
}

/// What draining a queue took: to the last message handled (`drained`, with the process's
/// CPU time then), and the shutdown after it (which waits out the long poll in flight).
struct Drained {
    drained: Duration,
    cpu_at_drained: Duration,
    shutdown: Duration,
}

async fn drain_queue(queue: Queue, total: u64, mut config: Config) -> Drained {
    config.wait_time = Duration::from_secs(1);
    let done = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Notify::new());
    let (counter, signal) = (done.clone(), all.clone());
    let handler = handler_fn(move |_m, _c| {
        let (counter, signal) = (counter.clone(), signal.clone());
        async move {
            if counter.fetch_add(1, Ordering::Relaxed) + 1 == total {
                signal.notify_one();
            }
            Ok::<_, BoxError>(Outcome::Ack)
        }
    });
    let start = Instant::now();
    let at_drained = Arc::new(std::sync::Mutex::new(None));
    let mark = at_drained.clone();
    let summary = Worker::new(config)
        .queue(queue)
        .handler(handler)
        .run_until(async move {
            all.notified().await;
            *mark.lock().unwrap() = Some((start.elapsed(), cpu_time()));
        })
        .await;
    let took = start.elapsed();
    let summary = summary.expect("worker run");
    assert_eq!(summary.deleted, total, "every message deleted");
    let (drained, cpu_at_drained) = at_drained.lock().unwrap().expect("the last message was handled");
    Drained { drained, cpu_at_drained, shutdown: took - drained }
}

async fn embedded(concurrency: usize, total: u64, batch_window: Duration, runtime: &str) {
    let memory = MemoryQueue::new(format!("bench-{concurrency}"));
    let queue = Queue::memory(&memory);
    for i in 0..total {
        queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
    }
    let mut config = Config::default();
    config.concurrency = concurrency;
    config.batch_window = batch_window;
    let cpu_before = cpu_time();
    let run = drain_queue(queue.clone(), total, config).await;
    let cpu = run.cpu_at_drained - cpu_before;
    assert!(memory.is_empty());
    // Rate and CPU to the last message handled; the shutdown after it waits out the long
    // poll in flight on the empty queue (up to the 1 s wait time), and is shown apart.
    println!(
        "embedded queue, no-op handler, {runtime}, concurrency {concurrency:>4}, batch window {batch_window:>5?}: {total} messages in {:.3} s = {:>7.0} msg/s, {:.1} µs CPU/msg, {:.3} requests/msg; then shutdown {:.2} s",
        run.drained.as_secs_f64(),
        total as f64 / run.drained.as_secs_f64(),
        cpu.as_micros() as f64 / total as f64,
        worker_requests(queue.request_counts()) as f64 / total as f64,
        run.shutdown.as_secs_f64(),
    );
}

/// One receive on `memory` and one call deleting what it got (each delete checked), looking
/// at each message in between; how many it got.
async fn receive_and_delete(memory: &MemoryQueue, options: &ReceiveOptions) -> usize {
    let got = memory.receive_messages(options).await.unwrap();
    let receipts: Vec<&str> = got
        .iter()
        .map(|d| {
            std::hint::black_box(d.message());
            d.receipt_handle()
        })
        .collect();
    for answer in memory.delete_messages(&receipts) {
        answer.unwrap();
    }
    got.len()
}

/// The floor on the embedded queue: no framework, one task that receives 10 messages, looks
/// at each and deletes them in one call, until the queue is empty. What the queue itself
/// costs a message; a no-op row's CPU a message less this one's is the framework's own.
async fn embedded_bare(total: u64, runtime: &str) {
    let memory = MemoryQueue::new("bench-bare");
    for i in 0..total {
        memory.send_message(&OutgoingMessage::new(i.to_string())).unwrap();
    }
    let options = ReceiveOptions::new().max_messages(10);
    let cpu_before = cpu_time();
    let start = Instant::now();
    let mut handled = 0;
    while handled < total {
        handled += receive_and_delete(&memory, &options).await as u64;
    }
    let took = start.elapsed();
    let cpu = cpu_time() - cpu_before;
    assert!(memory.is_empty());
    println!(
        "embedded queue, no-op handler, {runtime}, bare loop (receive 10, delete them; no framework): {total} messages in {:.3} s = {:>7.0} msg/s, {:.1} µs CPU/msg",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        cpu.as_micros() as f64 / total as f64,
    );
}

/// One receive of 10 and its delete on the embedded queue, with `in_flight` messages received
/// earlier (older ones) still in flight: what a receive costs when it must get past them.
async fn receive_behind_in_flight(in_flight: usize) {
    let rounds = 2_000;
    let memory = MemoryQueue::new(format!("behind-{in_flight}"));
    let queue = Queue::memory(&memory);
    for i in 0..in_flight + rounds * 10 {
        queue.send(OutgoingMessage::new(i.to_string())).await.unwrap();
    }
    let mut kept = 0;
    while kept < in_flight {
        kept +=
            memory.receive_messages(&ReceiveOptions::new().max_messages(10.min(in_flight - kept))).await.unwrap().len();
    }
    // Wall time: one task that never waits (CPU ticks of 10 ms are too coarse for this run).
    let start = Instant::now();
    let options = ReceiveOptions::new().max_messages(10);
    for _ in 0..rounds {
        receive_and_delete(&memory, &options).await;
    }
    println!(
        "embedded queue, receive 10 and delete them, {in_flight:>5} older messages in flight: {:.1} µs a round",
        start.elapsed().as_secs_f64() * 1e6 / rounds as f64,
    );
}

async fn sqs_requests(endpoint: &str, concurrency: usize, total: u64) {
    let client = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("b", "b", None, None, "bench"))
            .endpoint_url(endpoint)
            .build(),
    );
    let name = format!("bench-{}-{concurrency}", std::process::id());
    let url = client.create_queue().queue_name(&name).send().await.expect("create queue").queue_url.unwrap();
    // Preload with batched sends so only the worker's own requests are counted below.
    for chunk in (0..total).collect::<Vec<_>>().chunks(10) {
        let entries = chunk
            .iter()
            .map(|i| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(i.to_string())
                    .build()
                    .unwrap()
            })
            .collect();
        client.send_message_batch().queue_url(&url).set_entries(Some(entries)).send().await.expect("send batch");
    }
    let queue = Queue::sqs(client.clone(), url.clone());
    let mut config = Config::default();
    config.concurrency = concurrency;
    config.ack_concurrency = 1; // moto loses concurrent deletes (DESIGN.md)
    let took = drain_queue(queue.clone(), total, config).await.drained;
    let counts = queue.request_counts();
    println!(
        "local SQS server, no-op handler, concurrency {concurrency:>3}: {total} messages in {:.2} s; requests/msg {:.3} (receive {}, delete {}, visibility {})",
        took.as_secs_f64(),
        worker_requests(counts) as f64 / total as f64,
        counts.receive,
        counts.delete,
        counts.change_visibility,
    );
    let _ = client.delete_queue().queue_url(url).send().await;
}

/// SIGTERM 200 ms after start to exit, with `HOLDFAST_SHUTDOWN_RECEIVE=mode`: `abandon`
/// drops the long poll in flight, `wait` lets it end (the rest of the `wait_s` wait time).
fn idle_sigterm_latency(worker: &str, runs: usize, mode: &str, wait_s: u64) {
    let mut samples = Vec::new();
    for _ in 0..runs {
        let mut child = Command::new(worker)
            .env_clear()
            .env("HOLDFAST_QUEUE_URL", "memory://idle")
            .env("HOLDFAST_SHUTDOWN_RECEIVE", mode)
            .env("HOLDFAST_WAIT_TIME", wait_s.to_string())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the worker binary");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("worker started") => break,
                Some(_) => {}
                None => panic!("the worker exited before starting"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        samples.push(sent.elapsed());
        assert!(status.success(), "exit status {status}");
    }
    samples.sort();
    println!(
        "idle worker process, HOLDFAST_SHUTDOWN_RECEIVE={mode}, wait time {wait_s} s, SIGTERM -> exit over {runs} runs: median {:.1} ms, max {:.1} ms",
        samples[runs / 2].as_secs_f64() * 1e3,
        samples[runs - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants a quick run.
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let scale = if full { 1 } else { 20 };
    let window = Config::default().batch_window;
    let threads = format!("{} worker threads", runtime.metrics().num_workers());
    runtime.block_on(async {
        embedded(10, 50_000 / scale, window, &threads).await;
        embedded(100, 50_000 / scale, window, &threads).await;
        embedded(1000, 50_000 / scale, window, &threads).await;
        embedded(10, 50_000 / scale, Duration::ZERO, &threads).await;
        embedded_bare(50_000 / scale, &threads).await;
        for in_flight in [0, 1_000, 10_000] {
            receive_behind_in_flight(in_flight).await;
        }
    });
    // The same on one core: one worker thread, as `#[tokio::main]` gives a task of one vCPU
    // (or TOKIO_WORKER_THREADS=1). More messages, so 10 ms CPU ticks resolve it.
    let one = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    one.block_on(async {
        embedded(10, 200_000 / scale, window, "1 worker thread").await;
        embedded(100, 200_000 / scale, window, "1 worker thread").await;
        embedded(1000, 200_000 / scale, window, "1 worker thread").await;
        embedded_bare(200_000 / scale, "1 worker thread").await;
    });
    drop(one);
    if !full {
        return;
    }
    match std::env::var("HOLDFAST_TEST_SQS_ENDPOINT") {
        Ok(endpoint) => runtime.block_on(async {
            sqs_requests(&endpoint, 10, 300).await;
            sqs_requests(&endpoint, 50, 300).await;
        }),
        Err(_) => println!("local SQS server figures skipped: run scripts/bench.sh, which starts it"),
    }
    match std::env::var("HOLDFAST_WORKER_BIN") {
        Ok(bin) => {
            idle_sigterm_latency(&bin, 20, "abandon", 20);
            idle_sigterm_latency(&bin, 5, "wait", 2);
        }
        Err(_) => println!("SIGTERM latency skipped: run scripts/bench.sh, which builds the worker binary"),
    }
}
