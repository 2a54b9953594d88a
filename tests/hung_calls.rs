//! SQS calls that never get an answer: a connection that takes the request and then stays
//! silent (a half-open connection behind a NAT or load balancer, a server that hangs). Each
//! test puts a proxy on 127.0.0.1 in front of the local SQS server that swallows the first
//! request of one action and holds its connection open, and checks that the worker abandons
//! the call within its limit (`HOLDFAST_SQS_TIMEOUT` beyond what the call asks the server to
//! wait), says so, tries again, and loses and duplicates nothing.

mod common;
#[path = "support/http_message.rs"]
mod http_message;
#[path = "support/log_capture.rs"]
mod log_capture;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Calls, Options, TestQueue};
use holdfast::{BoxError, Outcome, Queue, Worker, handler_fn};
use http_message::read_message;
use log_capture::Capture;
use tracing::level_filters::LevelFilter;

/// What the proxy did.
#[derive(Default)]
struct Seen {
    /// Actions still to swallow (the first request of each).
    to_hang: Mutex<Vec<&'static str>>,
    /// Actions whose every request is swallowed.
    always: Vec<&'static str>,
    /// Requests swallowed.
    held: AtomicUsize,
    /// Swallowed requests whose client then gave up and closed the connection.
    abandoned: AtomicUsize,
    /// Requests passed on to the server.
    forwarded: AtomicUsize,
}

/// A proxy in front of `upstream` (host:port) that swallows the first request of each action
/// in `hang`, every request of each in `always`, and passes everything else on. It stops
/// taking connections after two minutes.
fn proxy(upstream: String, hang: &[&'static str], always: &[&'static str]) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let seen = Arc::new(Seen { to_hang: Mutex::new(hang.to_vec()), always: always.to_vec(), ..Seen::default() });
    let shared = seen.clone();
    std::thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < until {
            match listener.accept() {
                Ok((client, _)) => {
                    let (upstream, seen) = (upstream.clone(), shared.clone());
                    std::thread::spawn(move || serve(client, &upstream, &seen));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (format!("http://{address}"), seen)
}

/// The SQS action a request names (`X-Amz-Target: AmazonSQS.ReceiveMessage`).
fn action(request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request);
    text.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("x-amz-target")
                .then(|| value.trim().trim_start_matches("AmazonSQS.").to_owned())
        })
        .unwrap_or_default()
}

fn serve(mut client: TcpStream, upstream: &str, seen: &Seen) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(120)));
    let mut from_client = Vec::new();
    let mut server: Option<(TcpStream, Vec<u8>)> = None;
    while let Some(request) = read_message(&mut client, &mut from_client) {
        let name = action(&request);
        let swallow = {
            let mut to_hang = seen.to_hang.lock().unwrap();
            let at = to_hang.iter().position(|a| *a == name);
            at.map(|at| to_hang.remove(at)).is_some() || seen.always.iter().any(|a| *a == name)
        };
        if swallow {
            seen.held.fetch_add(1, Ordering::SeqCst);
            // Silence: no answer, the connection held open until the client closes it.
            let mut rest = [0u8; 1024];
            while matches!(client.read(&mut rest), Ok(n) if n > 0) {}
            seen.abandoned.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if server.is_none() {
            let Ok(stream) = TcpStream::connect(upstream) else { return };
            server = Some((stream, Vec::new()));
        }
        let (stream, from_server) = server.as_mut().unwrap();
        if stream.write_all(&request).is_err() {
            return;
        }
        let Some(response) = read_message(stream, from_server) else { return };
        seen.forwarded.fetch_add(1, Ordering::SeqCst);
        if client.write_all(&response).is_err() {
            return;
        }
    }
}

/// The local SQS server's host:port.
fn upstream() -> String {
    common::endpoint().trim_start_matches("http://").trim_end_matches('/').to_owned()
}

/// `jobs` messages on a fresh queue, handled by a worker that reaches the server through a
/// proxy swallowing the first `hang` request, each job taking `work`. Returns the handler's
/// calls, what the proxy saw and the worker's warnings, once every job is deleted (or after
/// `limit`).
async fn run(
    hang: &'static str,
    jobs: usize,
    work: Duration,
    limit: Duration,
) -> (TestQueue, Calls, Arc<Seen>, String) {
    let q = TestQueue::new(Backend::Sqs, "hung", Options::default()).await;
    for i in 0..jobs {
        q.send(&format!("job-{i}")).await;
    }
    let upstream = upstream();
    let (address, seen) = proxy(upstream, &[hang], &[]);
    let queue = Queue::sqs(common::sqs_client_at(&address), q.queue.url());
    let mut config = q.config();
    config.sqs_timeout = Duration::from_secs(1);
    config.visibility_timeout = Duration::from_secs(8);
    let calls = Calls::default();
    let record = calls.clone();
    let handler = handler_fn(move |m, _c| {
        let record = record.clone();
        async move {
            record.record(m.body(), m.receive_count());
            tokio::time::sleep(work).await;
            Ok::<_, BoxError>(Outcome::Ack)
        }
    });
    let logs = Capture::new(LevelFilter::WARN).only("holdfast");
    let _capturing = logs.install();
    let (worker, stop) = common::start(Worker::new(config).queue(queue).handler(handler));
    common::eventually(limit, || async { q.counts().await == (0, 0) && calls.len() >= jobs }).await;
    stop.notify_one();
    let summary = tokio::time::timeout(Duration::from_secs(30), worker).await.expect("the worker stops").unwrap();
    summary.expect("worker run");
    (q, calls, seen, logs.text())
}

/// Every job handled once and deleted; the swallowed request given up by the client.
async fn check(q: &TestQueue, calls: &Calls, seen: &Seen, jobs: usize) {
    for i in 0..jobs {
        assert_eq!(calls.count(&format!("job-{i}")), 1, "job-{i} handled once: {:?}", calls.all());
    }
    assert_eq!(q.counts().await, (0, 0), "every job deleted");
    assert_eq!(seen.held.load(Ordering::SeqCst), 1, "the proxy swallowed one request");
    assert!(
        common::eventually(Duration::from_secs(5), || async { seen.abandoned.load(Ordering::SeqCst) == 1 }).await,
        "the worker closed the silent connection"
    );
    assert!(seen.forwarded.load(Ordering::SeqCst) > 0, "other requests went through the proxy");
}

/// A receive that never answers: the poller gives up after the wait time plus the limit,
/// backs off and receives again. Before, the poller waited on it forever and the worker
/// consumed nothing.
#[tokio::test]
async fn a_receive_that_never_answers_is_abandoned_and_made_again() {
    let (q, calls, seen, warnings) = run("ReceiveMessage", 3, Duration::ZERO, Duration::from_secs(20)).await;
    check(&q, &calls, &seen, 3).await;
    assert!(
        warnings.lines().any(|l| l.contains("receive failed") && l.contains("no answer within")),
        "the abandoned receive is logged: {warnings}"
    );
}

/// A delete that never answers: the acknowledgement is sent again. Before, the acker's one
/// request slot (`HOLDFAST_ACK_CONCURRENCY=1`) stayed taken and no delete went out again.
#[tokio::test]
async fn a_delete_that_never_answers_is_abandoned_and_sent_again() {
    let (q, calls, seen, warnings) = run("DeleteMessageBatch", 3, Duration::ZERO, Duration::from_secs(20)).await;
    check(&q, &calls, &seen, 3).await;
    assert!(warnings.contains("no answer within"), "the abandoned delete is logged: {warnings}");
}

/// A visibility heartbeat that never answers: the next beat extends the lease before the
/// message's visibility (8 s) runs out. Before, the heartbeat loop waited on it forever, every
/// lease ran out and the job was handled twice.
#[tokio::test]
async fn a_heartbeat_that_never_answers_is_abandoned_and_the_lease_kept() {
    let (q, calls, seen, warnings) =
        run("ChangeMessageVisibilityBatch", 1, Duration::from_secs(10), Duration::from_secs(40)).await;
    check(&q, &calls, &seen, 1).await;
    assert!(warnings.contains("no answer within"), "the abandoned heartbeat is logged: {warnings}");
    assert!(!warnings.contains("lease lost"), "no lease was lost: {warnings}");
}

/// Deletes that never get an answer at all, at shutdown: the worker waits for them no longer
/// than the margin it keeps before ECS's SIGKILL (the drain deadline and 4 s), says so and
/// exits; the job is not lost but delivered again once its visibility runs out. Before, the
/// shutdown waited for every attempt of the delete (five, each abandoned after
/// `HOLDFAST_SQS_TIMEOUT`): close to a minute, long past any stop timeout.
#[tokio::test]
async fn deletes_that_never_answer_do_not_hold_the_shutdown_past_its_margin() {
    let q = TestQueue::new(Backend::Sqs, "hung-flush", Options::default()).await;
    q.send("job-0").await;
    let (address, seen) = proxy(upstream(), &[], &["DeleteMessageBatch"]);
    let queue = Queue::sqs(common::sqs_client_at(&address), q.queue.url());
    let mut config = q.config();
    config.drain_timeout = Duration::from_secs(2);
    config.sqs_timeout = Duration::from_secs(10);
    let calls = Calls::default();
    let record = calls.clone();
    let handler = handler_fn(move |m, _c| {
        record.record(m.body(), m.receive_count());
        async { Ok::<_, BoxError>(Outcome::Ack) }
    });
    let logs = Capture::new(LevelFilter::WARN).only("holdfast");
    let _capturing = logs.install();
    let (worker, stop) = common::start(Worker::new(config).queue(queue).handler(handler));
    assert!(common::eventually(Duration::from_secs(20), || async { calls.len() == 1 }).await, "the job is handled");
    assert!(
        common::eventually(Duration::from_secs(5), || async { seen.held.load(Ordering::SeqCst) >= 1 }).await,
        "its delete went out and got no answer"
    );
    let stopping = tokio::time::Instant::now();
    stop.notify_one();
    let summary = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops within 30 s of its shutdown")
        .unwrap()
        .expect("worker run");
    let took = stopping.elapsed();
    eprintln!("shutdown with every delete unanswered took {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "the shutdown took {took:?}, past the drain deadline (2 s) and its 4 s margin"
    );
    assert_eq!(summary.deleted, 0, "no delete was answered");
    let warnings = logs.text();
    assert!(warnings.contains("did not finish in time"), "the abandoned deletes are logged: {warnings}");
    // Not lost: visible again once its visibility (4 s) runs out.
    assert!(
        common::eventually(Duration::from_secs(20), || async { q.counts().await.0 == 1 }).await,
        "the job is delivered again: {:?}",
        q.counts().await
    );
}
