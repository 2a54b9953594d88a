//! The worker as a real process: signals, exit codes, start-up errors. The test binary runs
//! itself as the child worker (`process child`), so nothing else needs building; the parent
//! talks to the local SQS server started by `scripts/test.sh`.

#[path = "support/child_worker.rs"]
mod child_worker;
mod common;

use std::io::Read;
use std::process::{Command, ExitCode, Stdio, Termination};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use child_worker::Running;
use holdfast::{BoxError, Message, Outcome, Worker, handler_fn};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The child: a worker configured from the environment whose jobs sleep `work_ms`.
fn child() -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let worker = match Worker::from_env() {
            Ok(worker) => worker,
            Err(error) => {
                eprintln!("worker: {error}");
                return ExitCode::from(2);
            }
        };
        let handler = handler_fn(|msg: Message, _ctx| async move {
            let ms: u64 = msg.body().trim().parse().unwrap_or(0);
            tracing::info!(work_ms = ms, "job started");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            tracing::info!("job finished");
            Ok::<_, BoxError>(Outcome::Ack)
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

/// The child as the README writes a worker: `main` returns `Result<(), holdfast::Error>`, so
/// the standard library prints the error (`Error: {error:?}`) and exits 1.
fn child_returning_result() -> ExitCode {
    async fn worker() -> Result<(), holdfast::Error> {
        let handler = handler_fn(|_msg: Message, _ctx| async { Ok::<_, BoxError>(Outcome::Ack) });
        Worker::from_env()?.handler(handler).run().await?;
        Ok(())
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(worker()).report()
}

fn sqs_env(queue_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HOLDFAST_QUEUE_URL", queue_url.to_owned()),
        ("AWS_ENDPOINT_URL_SQS", common::endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("HOLDFAST_WAIT_TIME", "20".into()),
        ("HOLDFAST_DRAIN_TIMEOUT", "10".into()),
    ]
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

/// SIGTERM during a 3 s job: the job completes, its message is deleted, the process exits
/// 0 before the drain deadline.
async fn sigterm_mid_job_finishes_and_exits_zero() -> Result<(), String> {
    let q = common::TestQueue::new(common::Backend::Sqs, "sigterm", common::Options::default()).await;
    q.send("3000").await;
    // The free slots' receive in flight at SIGTERM is waited for too: a 2 s wait time keeps it
    // inside the drain.
    let mut env = sqs_env(q.queue.url());
    env.retain(|(k, _)| *k != "HOLDFAST_WAIT_TIME");
    env.push(("HOLDFAST_WAIT_TIME", "2".into()));
    let mut worker = Running::start(&env);
    worker.wait_for("job started", Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(300));
    worker.signal(Signal::SIGTERM);
    let (code, took) = worker.wait_exit_code(Duration::from_secs(15))?;
    let log = worker.log.join("\n");
    ensure(code == 0, || format!("exit code {code}; log:\n{log}"))?;
    ensure(took >= Duration::from_millis(2000), || format!("exited after {took:?}, before the job could finish"))?;
    ensure(took < Duration::from_secs(10), || format!("exited after {took:?}, past the 10 s drain deadline"))?;
    ensure(log.contains("SIGTERM received") && log.contains("job finished"), || log.clone())?;
    let counts = q.counts().await;
    ensure(counts == (0, 0), || format!("queue (visible, in flight) = {counts:?}; the message should be deleted"))
}

/// An idle worker's SIGTERM waits for the long poll in flight (so that nothing SQS hands to
/// it stays hidden), up to the rest of its wait time; with `HOLDFAST_SHUTDOWN_RECEIVE=abandon`
/// it exits within a second.
async fn idle_sigterm_waits_for_the_receive_or_abandons_it() -> Result<(), String> {
    let q = common::TestQueue::new(common::Backend::Sqs, "idle", common::Options::default()).await;
    for (mode, wait_s) in [("wait", 3u64), ("abandon", 20)] {
        let mut env = sqs_env(q.queue.url());
        env.retain(|(k, _)| *k != "HOLDFAST_WAIT_TIME");
        env.push(("HOLDFAST_WAIT_TIME", wait_s.to_string()));
        env.push(("HOLDFAST_SHUTDOWN_RECEIVE", mode.into()));
        let mut worker = Running::start(&env);
        worker.wait_for("worker started", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(500));
        worker.signal(Signal::SIGTERM);
        let (code, took) = worker.wait_exit_code(Duration::from_secs(15))?;
        let log = worker.log.join("\n");
        println!("    idle SIGTERM -> exit, HOLDFAST_SHUTDOWN_RECEIVE={mode}, wait time {wait_s} s: {took:?}");
        ensure(code == 0, || format!("exit code {code}; log:\n{log}"))?;
        if mode == "wait" {
            ensure(log.contains("waiting for the receive in flight"), || log.clone())?;
            ensure(took >= Duration::from_millis(1500), || {
                format!("{mode}: exited after {took:?}, the receive was dropped")
            })?;
            ensure(took < Duration::from_secs(6), || format!("{mode}: exited after {took:?}, past the 3 s wait time"))?;
        } else {
            ensure(took < Duration::from_secs(1), || format!("{mode}: idle shutdown took {took:?}"))?;
        }
    }
    Ok(())
}

/// The embedded queue needs no AWS at all; SIGINT works like SIGTERM.
async fn memory_queue_runs_without_aws() -> Result<(), String> {
    let mut worker =
        Running::start(&[("HOLDFAST_QUEUE_URL", "memory://local".into()), ("HOLDFAST_WAIT_TIME", "1".into())]);
    worker.wait_for("worker started", Duration::from_secs(10))?;
    worker.signal(Signal::SIGINT);
    let (code, _) = worker.wait_exit_code(Duration::from_secs(5))?;
    ensure(code == 0, || format!("exit code {code}; log:\n{}", worker.log.join("\n")))
}

/// A bad variable stops start-up, naming the variable and the accepted values.
async fn a_bad_variable_stops_start_up() -> Result<(), String> {
    let mut worker =
        Running::start(&[("HOLDFAST_QUEUE_URL", "memory://local".into()), ("HOLDFAST_CONCURRENCY", "lots".into())]);
    let (code, _) = worker.wait_exit_code(Duration::from_secs(5))?;
    let log = worker.log.join("\n");
    ensure(code == 2, || format!("exit code {code}"))?;
    ensure(log.contains(r#"HOLDFAST_CONCURRENCY="lots" is invalid: expected a whole number from 1 to 10000"#), || {
        log.clone()
    })?;
    let mut missing = Running::start(&[]);
    let (code, _) = missing.wait_exit_code(Duration::from_secs(5))?;
    let log = missing.log.join("\n");
    ensure(code == 2 && log.contains("HOLDFAST_QUEUE_URL is not set"), || format!("exit {code}: {log}"))
}

/// With `main() -> Result<(), holdfast::Error>`, a bad variable ends the process with the
/// one line the README promises, not a struct dump.
async fn a_main_returning_the_error_prints_one_clear_line() -> Result<(), String> {
    let mut worker = Running::start_as(
        "child-result",
        &[("HOLDFAST_QUEUE_URL", "memory://local".into()), ("HOLDFAST_CONCURRENCY", "lots".into())],
    );
    let (code, _) = worker.wait_exit_code(Duration::from_secs(5))?;
    let log = worker.log.join("\n");
    ensure(code == 1, || format!("exit code {code}; stderr:\n{log}"))?;
    let line = r#"Error: HOLDFAST_CONCURRENCY="lots" is invalid: expected a whole number from 1 to 10000"#;
    ensure(log == line, || format!("stderr should be exactly\n{line}\nbut was\n{log}"))
}

/// Log lines written to a pipe (`2>file`, `| tee`) carry no ANSI colour codes.
async fn logs_to_a_pipe_have_no_colour() -> Result<(), String> {
    // 1 s long polls: shutdown waits for the one in flight
    let mut worker =
        Running::start(&[("HOLDFAST_QUEUE_URL", "memory://local".into()), ("HOLDFAST_WAIT_TIME", "1".into())]);
    worker.wait_for("worker started", Duration::from_secs(10))?;
    worker.signal(Signal::SIGINT);
    let (code, _) = worker.wait_exit_code(Duration::from_secs(5))?;
    let log = worker.log.join("\n");
    ensure(code == 0 && log.contains("worker stopped"), || format!("exit code {code}; log:\n{log}"))?;
    ensure(!log.contains('\x1b'), || format!("ANSI escape codes in piped logs:\n{log:?}"))
}

/// Runs the idle worker with stderr on a pseudo-terminal until SIGINT; returns what it wrote.
fn run_on_a_terminal(env: &[(&str, String)]) -> Result<String, String> {
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.arg("child").env_clear().env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::from(pty.slave));
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().map_err(|e| format!("spawn: {e}"))?;
    drop(command); // closes this process's copy of the terminal's slave side
    let (tx, rx) = mpsc::channel();
    let mut master = std::fs::File::from(pty.master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Reading the master fails (EIO) once the child, the last holder of the slave, exits.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let mut signalled = false;
    loop {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(20)) {
            out.extend(chunk);
        }
        if !signalled && String::from_utf8_lossy(&out).contains("worker started") {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("kill");
            signalled = true;
        }
        if signalled && child.try_wait().map_err(|e| e.to_string())?.is_some() {
            out.extend(rx.try_iter().flatten());
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("no clean exit within 10 s; output:\n{}", String::from_utf8_lossy(&out)));
        }
    }
}

/// On a terminal, log lines are coloured, unless `NO_COLOR` is set (https://no-color.org).
async fn logs_to_a_terminal_are_coloured_unless_no_color() -> Result<(), String> {
    let url = ("HOLDFAST_QUEUE_URL", "memory://local".to_owned());
    let short_polls = ("HOLDFAST_WAIT_TIME", "1".to_owned()); // shutdown waits for the one in flight
    let coloured = run_on_a_terminal(&[url.clone(), short_polls.clone()])?;
    ensure(coloured.contains("worker started") && coloured.contains('\x1b'), || {
        format!("expected ANSI colour on a terminal:\n{coloured:?}")
    })?;
    let plain = run_on_a_terminal(&[url, short_polls, ("NO_COLOR", "1".into())])?;
    ensure(plain.contains("worker started") && !plain.contains('\x1b'), || {
        format!("NO_COLOR=1 should switch colour off:\n{plain:?}")
    })
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("child") => return child(),
        Some("child-result") => return child_returning_result(),
        _ => {}
    }
    // `cargo test` passes harness flags; a name filter runs the matching tests only.
    let mut filter: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // harness options that take a value
            "--test-threads" | "--skip" | "--format" | "--color" | "-Z" | "--logfile" | "--report-time" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            _ => filter = Some(arg),
        }
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    type Case = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>>>>;
    let cases: [(&str, Case); 7] = [
        ("sigterm_mid_job_finishes_and_exits_zero", || Box::pin(sigterm_mid_job_finishes_and_exits_zero())),
        ("idle_sigterm_waits_for_the_receive_or_abandons_it", || {
            Box::pin(idle_sigterm_waits_for_the_receive_or_abandons_it())
        }),
        ("memory_queue_runs_without_aws", || Box::pin(memory_queue_runs_without_aws())),
        ("a_bad_variable_stops_start_up", || Box::pin(a_bad_variable_stops_start_up())),
        ("a_main_returning_the_error_prints_one_clear_line", || {
            Box::pin(a_main_returning_the_error_prints_one_clear_line())
        }),
        ("logs_to_a_pipe_have_no_colour", || Box::pin(logs_to_a_pipe_have_no_colour())),
        ("logs_to_a_terminal_are_coloured_unless_no_color", || {
            Box::pin(logs_to_a_terminal_are_coloured_unless_no_color())
        }),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        match runtime.block_on(case()) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(why) => {
                println!("test {name} ... FAILED\n{why}");
                failed += 1;
            }
        }
    }
    if passed + failed == 0 {
        // Like libtest: a name filter that matches nothing here runs nothing and passes.
        println!("process: no test matches {filter:?}");
    }
    println!("process: {passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
