//! The reliability suite: real worker processes against the local SQS server (any
//! SQS-compatible endpoint in `HOLDFAST_TEST_SQS_ENDPOINT`), stopped and killed in loops or
//! talking through a fault-injecting proxy. Every message carries a number; the handler
//! appends the number to a record file once it has done the work, and the accounting reads
//! that record, never the worker's logs.
//!
//! `RELIABILITY_SCALE` (default 1) multiplies the message and kill counts, and
//! `RELIABILITY_FAULT_RATE` (default 0.2) sets the proxy's fault rate, for soak runs
//! (`scripts/soak.sh`).

#[path = "support/child_worker.rs"]
mod child_worker;
mod common;
#[path = "support/http_message.rs"]
mod http_message;

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use child_worker::{Running, tail};
use holdfast::{BoxError, Context, Message, Outcome, Worker, handler_fn};
use http_message::read_message;
use nix::sys::signal::Signal;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The child: a worker configured from the environment. A body `N:MS` is job N, working MS
/// milliseconds; when done, the handler appends `N FINISHED_AT_MS PID` to the record file.
fn child() -> ExitCode {
    let record = std::env::var("RELIABILITY_RECORD").expect("RELIABILITY_RECORD");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let worker = match Worker::from_env() {
            Ok(worker) => worker,
            Err(error) => {
                eprintln!("worker: {error}");
                return ExitCode::from(2);
            }
        };
        let record = Arc::new(Mutex::new(
            std::fs::OpenOptions::new().create(true).append(true).open(&record).expect("record file"),
        ));
        let handler = handler_fn(move |msg: Message, ctx: Context| {
            let record = record.clone();
            async move {
                let (n, ms) = msg.body().split_once(':').ok_or("not a numbered job")?;
                let ms: u64 = ms.parse()?;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = ctx.cancelled() => return Err::<Outcome, BoxError>("interrupted".into()),
                }
                let line = format!("{n} {} {}\n", now_ms(), std::process::id());
                record.lock().unwrap().write_all(line.as_bytes())?;
                Ok(Outcome::Ack)
            }
        });
        match worker.handler(handler).run().await {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("worker: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

fn scale() -> usize {
    std::env::var("RELIABILITY_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1)
}

fn worker_env(
    queue_url: &str,
    endpoint: &str,
    record: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("HOLDFAST_QUEUE_URL", queue_url.to_owned()),
        ("AWS_ENDPOINT_URL_SQS", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("RELIABILITY_RECORD", record.to_owned()),
        // moto loses deletes made concurrently (DESIGN.md): one acknowledgement at a time.
        ("HOLDFAST_ACK_CONCURRENCY", "1".into()),
        ("HOLDFAST_WAIT_TIME", "1".into()),
        ("HOLDFAST_DRAIN_TIMEOUT", "5".into()),
        ("HOLDFAST_CONCURRENCY", "10".into()),
    ];
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k, (*v).to_owned()));
    }
    env
}

/// One line of the record: job number, when it finished (ms since the epoch).
fn read_record(path: &str) -> Vec<(usize, u64)> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect()
}

struct Tally {
    sent: usize,
    handled: usize,
    lost: Vec<usize>,
    duplicated: HashMap<usize, Vec<u64>>,
}

fn tally(path: &str, sent: usize) -> Tally {
    let mut times: HashMap<usize, Vec<u64>> = HashMap::new();
    for (n, at) in read_record(path) {
        times.entry(n).or_default().push(at);
    }
    let lost = (0..sent).filter(|n| !times.contains_key(n)).collect();
    let handled = times.len();
    let duplicated = times.into_iter().filter(|(_, t)| t.len() > 1).collect();
    Tally { sent, handled, lost, duplicated }
}

/// A fresh queue on the local server, with `sent` numbered jobs of 0 to 390 ms.
async fn numbered_queue(name: &str, sent: usize, visibility_s: u64) -> (common::TestQueue, String) {
    let q = common::TestQueue::new(
        common::Backend::Sqs,
        name,
        common::Options { visibility: Some(Duration::from_secs(visibility_s)), ..common::Options::default() },
    )
    .await;
    let client = common::sqs_client();
    for chunk in (0..sent).collect::<Vec<_>>().chunks(10) {
        let entries = chunk
            .iter()
            .map(|n| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{n}"))
                    .message_body(format!("{n}:{}", (n * 37) % 400))
                    .build()
                    .unwrap()
            })
            .collect();
        let out = client.send_message_batch().queue_url(q.queue.url()).set_entries(Some(entries)).send().await;
        let out = out.expect("send batch");
        assert!(out.failed.is_empty(), "send failures: {:?}", out.failed);
    }
    let record = std::env::temp_dir().join(format!("holdfast-{}.record", common::unique(name)));
    let _ = std::fs::remove_file(&record);
    (q, record.to_string_lossy().into_owned())
}

/// Runs a last worker until every job is in the record (or `limit`), then stops it.
/// How long the last worker may go without finishing a job before the loop gives up on it:
/// far beyond a receive against the local server (moto takes 1 to 5 s to answer a receive
/// from a queue of 1,000 messages on a 2-core machine, so its pace, not the worker's, sets
/// how long the last worker runs).
const STALL_LIMIT: Duration = Duration::from_secs(45);

/// Runs one more worker until every job is done, or until it has finished no job for
/// `STALL_LIMIT` (a worker that stopped consuming), or for `limit` in all; then stops it.
/// Returns how many jobs it finished and how long it ran.
fn finish_with_one_worker(
    env: &[(&str, String)],
    record: &str,
    sent: usize,
    limit: Duration,
) -> Result<(usize, Duration), String> {
    let before = tally(record, sent).handled;
    let mut worker = Running::start(env);
    worker.wait_for("worker started", Duration::from_secs(20))?;
    let start = Instant::now();
    let (mut handled, mut progressed) = (before, Instant::now());
    while handled < sent && start.elapsed() < limit && progressed.elapsed() < STALL_LIMIT {
        std::thread::sleep(Duration::from_millis(200));
        let now = tally(record, sent).handled;
        if now > handled {
            (handled, progressed) = (now, Instant::now());
        }
    }
    let ran = start.elapsed();
    // Deletes of the last jobs flush at shutdown.
    worker.signal(Signal::SIGTERM);
    worker.wait_exit(Duration::from_secs(15))?;
    if handled < sent {
        worker.drain_log();
        println!(
            "    the last worker finished {} jobs in {ran:?} and then none for {:?}; its log:\n{}",
            handled - before,
            progressed.elapsed().min(ran),
            tail(&worker.log)
        );
    }
    Ok((handled - before, ran))
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

/// SIGTERM loop: 400 jobs, stops every 1.5 to 3.5 s with a restart after each. Each stop
/// drains (jobs are shorter than the 5 s drain), so nothing is lost, nothing handled twice,
/// and nothing is left in flight after the worker exits.
async fn sigterm_kill_loop() -> Result<(), String> {
    let sent = 400 * scale();
    let kills = 12 * scale();
    let (q, record) = numbered_queue("sigterm-loop", sent, 30).await;
    let env = worker_env(q.queue.url(), &common::endpoint(), &record, &[("HOLDFAST_VISIBILITY_TIMEOUT", "30")]);
    let mut hidden_after_exit = 0;
    let mut slowest_exit = Duration::ZERO;
    for k in 0..kills {
        let mut worker = Running::start(&env);
        worker.wait_for("worker started", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(1500 + (k as u64 * 700) % 2000));
        worker.signal(Signal::SIGTERM);
        let (code, took) = worker.wait_exit(Duration::from_secs(15))?;
        slowest_exit = slowest_exit.max(took);
        ensure(code == Some(0), || format!("kill {k}: exit {code:?}; log:\n{}", tail(&worker.log)))?;
        // Every message the worker held is deleted or visible again once it has exited.
        let (_, in_flight) = q.counts().await;
        hidden_after_exit += in_flight;
    }
    let (last, ran) = finish_with_one_worker(&env, &record, sent, Duration::from_secs(600))?;
    let t = tally(&record, sent);
    let (visible, in_flight) = q.counts().await;
    println!(
        "    SIGTERM loop: {kills} stops, sent {}, handled {} ({last} by the last worker in {:.1} s), lost {}, duplicated {}, hidden after an exit {hidden_after_exit}, left in queue {visible}+{in_flight}, slowest SIGTERM->exit {slowest_exit:?}",
        t.sent,
        t.handled,
        ran.as_secs_f64(),
        t.lost.len(),
        t.duplicated.len()
    );
    ensure(t.lost.is_empty(), || format!("lost: {:?}", t.lost))?;
    ensure(t.duplicated.is_empty(), || format!("handled twice: {:?}", t.duplicated))?;
    ensure(hidden_after_exit == 0, || format!("{hidden_after_exit} messages in flight after a worker exited"))?;
    ensure((visible, in_flight) == (0, 0), || format!("left in the queue: {visible} visible, {in_flight} in flight"))
}

/// The acknowledgement window: a job recorded as done up to this long before a SIGKILL may
/// not be deleted yet. `HOLDFAST_ACK_INTERVAL` (100 ms) for the batch to flush, plus the
/// delete request itself, one at a time, against the local server (allowed 1.5 s).
const ACK_WINDOW: Duration = Duration::from_millis(100 + 1500);

/// SIGKILL loop: jobs finished within the acknowledgement window before a kill may run
/// again; none is lost; nothing else runs twice.
async fn sigkill_kill_loop() -> Result<(), String> {
    let sent = 300 * scale();
    let kills = 10 * scale();
    let (q, record) = numbered_queue("sigkill-loop", sent, 2).await;
    let env = worker_env(q.queue.url(), &common::endpoint(), &record, &[("HOLDFAST_VISIBILITY_TIMEOUT", "2")]);
    let mut kill_times = Vec::new();
    for k in 0..kills {
        let mut worker = Running::start(&env);
        worker.wait_for("worker started", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(1500 + (k as u64 * 700) % 2000));
        kill_times.push(now_ms());
        worker.signal(Signal::SIGKILL);
        worker.wait_exit(Duration::from_secs(5))?;
    }
    finish_with_one_worker(&env, &record, sent, Duration::from_secs(600))?;
    let t = tally(&record, sent);
    let window = ACK_WINDOW.as_millis() as u64;
    let mut outside = Vec::new();
    let mut widest = 0;
    for (n, times) in &t.duplicated {
        let first = times[0];
        match kill_times.iter().filter(|&&k| k >= first).map(|k| k - first).min() {
            Some(gap) if gap <= window => widest = widest.max(gap),
            gap => outside.push((*n, gap)),
        }
    }
    println!(
        "    SIGKILL loop: {kills} kills, sent {}, handled {}, lost {}, duplicated {} (all finished at most {widest} ms before a kill; window {window} ms)",
        t.sent,
        t.handled,
        t.lost.len(),
        t.duplicated.len()
    );
    ensure(t.lost.is_empty(), || format!("lost: {:?}", t.lost))?;
    ensure(outside.is_empty(), || format!("handled twice outside the acknowledgement window: {outside:?}"))?;
    // At most the jobs of one window per kill: 10 slots, jobs of 0.2 s on average.
    ensure(t.duplicated.len() <= kills * 10 * (window as usize / 200 + 1), || {
        format!("{} duplicates for {kills} kills", t.duplicated.len())
    })
}

/// What the proxy did, by kind.
#[derive(Default)]
struct FaultCounts {
    forwarded: AtomicU64,
    server_error: AtomicU64,
    throttled: AtomicU64,
    delayed: AtomicU64,
    dropped_before: AtomicU64,
    dropped_after: AtomicU64,
}

impl FaultCounts {
    fn faults(&self) -> u64 {
        self.server_error.load(Ordering::Relaxed)
            + self.throttled.load(Ordering::Relaxed)
            + self.delayed.load(Ordering::Relaxed)
            + self.dropped_before.load(Ordering::Relaxed)
            + self.dropped_after.load(Ordering::Relaxed)
    }
}

/// A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of `upstream` (host:port). Each
/// request, whatever its API, meets a fault with probability `rate`, one of five kinds in
/// turn. It stops by itself after `lifetime`.
fn fault_proxy(upstream: String, rate: f64, lifetime: Duration, counts: Arc<FaultCounts>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let until = Instant::now() + lifetime;
    std::thread::spawn(move || {
        let mut turn = 0u64;
        while Instant::now() < until {
            match listener.accept() {
                Ok((client, _)) => {
                    let upstream = upstream.clone();
                    let counts = counts.clone();
                    turn += 1;
                    let seed = turn;
                    std::thread::spawn(move || serve(client, &upstream, rate, seed, until, &counts));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    format!("http://{address}")
}

fn serve(mut client: std::net::TcpStream, upstream: &str, rate: f64, seed: u64, until: Instant, counts: &FaultCounts) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut from_client = Vec::new();
    let mut server: Option<(std::net::TcpStream, Vec<u8>)> = None;
    let mut kind = seed as usize;
    while Instant::now() < until {
        let Some(request) = read_message(&mut client, &mut from_client) else { return };
        let fault = rng.f64() < rate;
        if fault {
            kind += 1;
        }
        let reply = |client: &mut std::net::TcpStream, status: &str, code: &str| {
            let body = format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"injected by the test proxy"}}"#);
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-query-error: {code};Receiver\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = client.write_all(head.as_bytes());
            let _ = client.write_all(body.as_bytes());
        };
        match (fault, kind % 5) {
            (true, 0) => {
                counts.server_error.fetch_add(1, Ordering::Relaxed);
                reply(&mut client, "500 Internal Server Error", "InternalError");
                continue;
            }
            (true, 1) => {
                counts.throttled.fetch_add(1, Ordering::Relaxed);
                reply(&mut client, "400 Bad Request", "ThrottlingException");
                continue;
            }
            (true, 2) => {
                counts.dropped_before.fetch_add(1, Ordering::Relaxed);
                return; // the connection closes, the server never sees the request
            }
            (true, 3) => {
                counts.delayed.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(rng.u64(200..1500)));
            }
            _ => {}
        }
        if server.is_none() {
            match std::net::TcpStream::connect(upstream) {
                Ok(stream) => {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    server = Some((stream, Vec::new()));
                }
                Err(_) => return,
            }
        }
        let (upstream_stream, from_server) = server.as_mut().unwrap();
        if upstream_stream.write_all(&request).is_err() {
            return;
        }
        let Some(response) = read_message(upstream_stream, from_server) else { return };
        if fault && kind % 5 == 4 {
            counts.dropped_after.fetch_add(1, Ordering::Relaxed);
            return; // the server acted, the client never hears of it
        }
        counts.forwarded.fetch_add(1, Ordering::Relaxed);
        if client.write_all(&response).is_err() {
            return;
        }
    }
}

/// 20 % of every request — receives, deletes, visibility changes — meets a fault: 5xx,
/// throttling, added latency, a connection dropped before forwarding, a response dropped
/// after the server acted. Nothing is lost, the worker stays up, and its warnings stay in
/// proportion to the faults (no storm).
async fn faults_on_every_api() -> Result<(), String> {
    let sent = 200 * scale();
    let (q, record) = numbered_queue("faults", sent, 5).await;
    let upstream = common::endpoint().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let counts = Arc::new(FaultCounts::default());
    let rate = std::env::var("RELIABILITY_FAULT_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(0.2);
    let proxy = fault_proxy(upstream, rate, Duration::from_secs(240), counts.clone());
    let env = worker_env(q.queue.url(), &proxy, &record, &[("HOLDFAST_VISIBILITY_TIMEOUT", "5")]);
    let mut worker = Running::start(&env);
    worker.wait_for("worker started", Duration::from_secs(20))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(150) && tally(&record, sent).handled < sent {
        std::thread::sleep(Duration::from_millis(200));
        ensure(worker.is_running(), || "the worker exited under faults".into())?;
    }
    // Let the last deletes through, then count the queue through the server directly.
    std::thread::sleep(Duration::from_secs(2));
    ensure(worker.is_running(), || "the worker exited under faults".into())?;
    worker.drain_log();
    let noisy = worker.log.iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).count();
    worker.signal(Signal::SIGTERM);
    let _ = worker.wait_exit(Duration::from_secs(20));
    let t = tally(&record, sent);
    let faults = counts.faults();
    println!(
        "    faults at {:.0} %: sent {}, handled {}, lost {}, duplicated {}; requests forwarded {}, faults {faults} (5xx {}, throttled {}, delayed {}, dropped before {}, dropped after {}); warn/error lines {noisy}",
        rate * 100.0,
        t.sent,
        t.handled,
        t.lost.len(),
        t.duplicated.len(),
        counts.forwarded.load(Ordering::Relaxed),
        counts.server_error.load(Ordering::Relaxed),
        counts.throttled.load(Ordering::Relaxed),
        counts.delayed.load(Ordering::Relaxed),
        counts.dropped_before.load(Ordering::Relaxed),
        counts.dropped_after.load(Ordering::Relaxed),
    );
    ensure(t.lost.is_empty(), || format!("lost: {:?}\nlog tail:\n{}", t.lost, tail(&worker.log)))?;
    ensure(faults > 20, || format!("only {faults} faults injected: the proxy was not in the path"))?;
    // At most a few lines per fault: each failed call is logged, not retried in a tight loop.
    ensure(noisy as u64 <= 3 * faults + 10, || {
        format!("{noisy} warn/error lines for {faults} faults:\n{}", tail(&worker.log))
    })
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("child") {
        return child();
    }
    let mut filter: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--test-threads" | "--skip" | "--format" | "--color" | "-Z" | "--logfile" | "--report-time" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            _ => filter = Some(arg),
        }
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    type Case = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>>>>;
    let cases: [(&str, Case); 3] = [
        ("sigterm_kill_loop", || Box::pin(sigterm_kill_loop())),
        ("sigkill_kill_loop", || Box::pin(sigkill_kill_loop())),
        ("faults_on_every_api", || Box::pin(faults_on_every_api())),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let start = Instant::now();
        match runtime.block_on(case()) {
            Ok(()) => {
                println!("test {name} ... ok ({:.1} s)", start.elapsed().as_secs_f64());
                passed += 1;
            }
            Err(why) => {
                println!("test {name} ... FAILED\n{why}");
                failed += 1;
            }
        }
    }
    println!("reliability: {passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
