//! Start-up mistakes that cannot heal stop the worker at once, with one line saying what to
//! set, instead of a receive loop retrying forever. Each test runs this test binary again as
//! the worker process (the `child_worker` test, which does nothing unless asked to).

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use holdfast::{BoxError, Outcome, Worker, handler_fn};

const CHILD: &str = "HOLDFAST_STARTUP_TEST_CHILD";

/// The worker process: configured from the environment, handles every message at once.
#[test]
fn child_worker() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let code = runtime.block_on(async {
        let worker = match Worker::from_env() {
            Ok(worker) => worker,
            Err(error) => {
                eprintln!("worker: {error}");
                return 2;
            }
        };
        let handler = handler_fn(|_msg, _ctx| async move {
            tracing::info!("job finished");
            Ok::<_, BoxError>(Outcome::Ack)
        });
        match worker.handler(handler).run().await {
            Ok(_) => 0,
            Err(error) => {
                eprintln!("worker: {error}");
                1
            }
        }
    });
    std::process::exit(code);
}

/// Runs the worker with exactly `env` (nothing inherited, no instance metadata lookups) and
/// waits at most `limit` for it to exit.
fn run_worker(env: &[(&str, &str)], limit: Duration) -> (Option<i32>, String, Duration) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_worker", "--nocapture", "--test-threads", "1"])
        .env_clear()
        .env(CHILD, "1")
        .env("RUST_LOG", "info")
        .env("HOLDFAST_PROTECTION", "off")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/holdfast-test/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/holdfast-test/credentials")
        .env("HOME", "/nonexistent/holdfast-test");
    for (k, v) in env {
        command.env(k, v);
    }
    let start = Instant::now();
    let mut child = command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() || start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    let _ = child.kill();
    let Output { status, stderr, .. } = child.wait_with_output().unwrap();
    (status.code(), String::from_utf8_lossy(&stderr).into_owned(), took)
}

/// A queue URL on a port nothing listens on: the checks must stop the worker before any
/// request goes out, so nothing is ever sent there.
const UNUSED_LOCAL_QUEUE: &str = "http://127.0.0.1:9/000000000000/jobs";

#[test]
fn no_region_stops_start_up_naming_aws_region() {
    let (code, log, took) = run_worker(
        &[("HOLDFAST_QUEUE_URL", UNUSED_LOCAL_QUEUE), ("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("AWS_REGION is not set: expected an AWS region such as eu-west-1"), "{log}");
    assert!(!log.contains("receive failed"), "it retried instead of stopping:\n{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn no_credentials_stop_start_up_with_what_to_set() {
    let (code, log, _) =
        run_worker(&[("HOLDFAST_QUEUE_URL", UNUSED_LOCAL_QUEUE), ("AWS_REGION", "us-east-1")], Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"), "{log}");
    assert!(!log.contains("receive failed"), "it retried instead of stopping:\n{log}");
    let last = log.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(last.starts_with("worker: cannot start: no AWS credentials"), "one clear last line: {last:?}");
}

#[test]
fn a_log_filter_that_would_silence_everything_is_refused() {
    for filter in ["lots", "inof", "0", "10sec"] {
        let (code, log, _) =
            run_worker(&[("HOLDFAST_QUEUE_URL", "memory://jobs"), ("RUST_LOG", filter)], Duration::from_secs(10));
        assert_eq!(code, Some(2), "RUST_LOG={filter}: {log}");
        assert!(log.contains(&format!("RUST_LOG={filter:?} is invalid: expected a tracing filter")), "{log}");
    }
}

/// A queue URL naming a local server, with no `AWS_ENDPOINT_URL_SQS`: the worker sends its
/// requests to that server (and says so) instead of to AWS's regional endpoint.
#[test]
fn a_queue_url_on_another_host_is_its_own_endpoint() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let q = runtime.block_on(common::TestQueue::new(common::Backend::Sqs, "endpoint", common::Options::default()));
    runtime.block_on(q.send("hello"));
    let url = q.queue.url().to_owned();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_worker", "--nocapture", "--test-threads", "1"])
        .env_clear()
        .env(CHILD, "1")
        .env("RUST_LOG", "info")
        .env("HOLDFAST_PROTECTION", "off")
        .env("HOLDFAST_QUEUE_URL", &url)
        .env("HOLDFAST_WAIT_TIME", "1")
        .env("HOLDFAST_EXIT_WHEN_IDLE", "2s")
        .env("HOLDFAST_ACK_CONCURRENCY", "1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let out = command.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("sending SQS requests to that host"), "{log}");
    assert!(log.contains("job finished"), "{log}");
    assert_eq!(runtime.block_on(q.counts()), (0, 0), "handled and deleted");
}
