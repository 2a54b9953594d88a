//! The local ECS rehearsal (README, "The local ECS rehearsal") as a test: the same scenarios as
//! `examples/ecs_rehearsal.rs`, from `tests/support/rehearsal.rs`, against the shipped worker
//! binary, which this test builds first (`cargo build --example worker`, the cargo running the
//! tests, this package's manifest). Needs the local SQS server that `scripts/test.sh` starts
//! (`HOLDFAST_TEST_SQS_ENDPOINT`); without it the test fails and says so.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;
#[path = "support/rehearsal.rs"]
mod rehearsal;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// Builds the worker example with the cargo running this test, in this test's profile, and
/// returns the executable cargo reports.
fn build_worker() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let mut command = Command::new(&cargo);
    command.args(["build", "--example", "worker", "--message-format=json-render-diagnostics", "--manifest-path"]);
    command.arg(manifest);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    println!("rehearsal: building the worker: {command:?}");
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run {}: {e}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!("`cargo build --example worker` failed ({})", output.status));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "worker")
        .filter(|m| m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "example")))
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo built the worker example but named no executable for it".to_owned())
}

fn main() -> ExitCode {
    // `cargo test` passes harness flags; a name filter runs the matching scenarios only.
    let mut filter: Option<String> = None;
    let (mut list, mut only_ignored, mut exact) = (false, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--test-threads" | "--skip" | "--format" | "--color" | "-Z" | "--logfile" | "--report-time" => {
                args.next();
            }
            "--list" => list = true,
            "--ignored" => only_ignored = true,
            "--exact" => exact = true,
            a if a.starts_with('-') => {}
            _ => filter = Some(arg),
        }
    }
    let selected: Vec<&str> = rehearsal::SCENARIOS
        .iter()
        .copied()
        .filter(|name| {
            !only_ignored && filter.as_deref().is_none_or(|f| if exact { *name == f } else { name.contains(f) })
        })
        .collect();
    if list {
        selected.iter().for_each(|name| println!("{name}: test"));
        return ExitCode::SUCCESS;
    }
    if selected.is_empty() {
        // Like libtest: a filter meant for other tests runs nothing here.
        println!("rehearsal: 0 passed, 0 failed ({} filtered out)", rehearsal::SCENARIOS.len());
        return ExitCode::SUCCESS;
    }
    let Ok(sqs_endpoint) = std::env::var("HOLDFAST_TEST_SQS_ENDPOINT") else {
        println!(
            "rehearsal: FAILED: HOLDFAST_TEST_SQS_ENDPOINT is not set. The rehearsal needs the local SQS server: \
             run `scripts/test.sh` (the whole suite) or `scripts/rehearse-ecs.sh` (the rehearsal alone), \
             which install and start it."
        );
        println!("rehearsal: 0 passed, {} failed", selected.len());
        return ExitCode::FAILURE;
    };
    let worker = match build_worker() {
        Ok(worker) => worker,
        Err(why) => {
            println!("rehearsal: FAILED: {why}");
            println!("rehearsal: 0 passed, {} failed", selected.len());
            return ExitCode::FAILURE;
        }
    };
    let setup = rehearsal::Setup { worker, sqs_endpoint };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let report = runtime.block_on(rehearsal::run(&setup, &selected));
    if report.failed == 0 && report.passed == selected.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
