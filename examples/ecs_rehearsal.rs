//! The local ECS rehearsal: plays ECS against the real worker binary, a local SQS server
//! and one fake ECS agent per task, and prints a timeline like ECS's service events.
//! Five scenarios: scale-in while busy, a rolling deployment with the old task stopped
//! mid-job, a job longer than the stop timeout (SIGKILL, redelivery), the same job with the
//! worker told the stop timeout (released at its drain deadline), and a rolling deployment
//! of a busy service whose old task steps aside (HOLDFAST_DEPLOYMENT_CHECK). See
//! the README ("The local ECS rehearsal"); `scripts/rehearse-ecs.sh` runs it with everything it needs.
//!
//! ```text
//! cargo build --example worker --example ecs_rehearsal
//! target/debug/examples/ecs_rehearsal [--worker PATH] [--sqs-endpoint URL] [SCENARIO]
//! ```
//!
//! The worker defaults to the `worker` example built next to this one; the SQS endpoint to
//! `HOLDFAST_TEST_SQS_ENDPOINT` (what `scripts/moto.sh`'s `moto_start` exports). `SCENARIO`
//! runs only the scenarios whose name contains it. Exits 0 when every check passed, 1 when
//! one failed, 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "../tests/support/fake_ecs.rs"]
mod fake_ecs;
#[path = "../tests/support/rehearsal.rs"]
mod rehearsal;

const USAGE: &str = "usage: ecs_rehearsal [--worker PATH] [--sqs-endpoint URL] [SCENARIO]";

fn setup() -> Result<(rehearsal::Setup, Option<String>), String> {
    let mut worker = None;
    let mut endpoint = std::env::var("HOLDFAST_TEST_SQS_ENDPOINT").ok();
    let mut filter = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--worker" => worker = Some(PathBuf::from(args.next().ok_or("--worker needs a path")?)),
            "--sqs-endpoint" => endpoint = Some(args.next().ok_or("--sqs-endpoint needs a URL")?),
            "-h" | "--help" => return Err(format!("{USAGE}\nscenarios: {}", rehearsal::SCENARIOS.join(", "))),
            a if a.starts_with('-') => return Err(format!("unknown option {a}\n{USAGE}")),
            _ => filter = Some(arg),
        }
    }
    let worker = match worker {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|e| format!("where is this program: {e}"))?
            .with_file_name(format!("worker{}", std::env::consts::EXE_SUFFIX)),
    };
    if !worker.is_file() {
        return Err(format!(
            "no worker binary at {}: build it with `cargo build --example worker`, or pass --worker PATH",
            worker.display()
        ));
    }
    let sqs_endpoint = endpoint.ok_or(
        "no SQS endpoint: pass --sqs-endpoint URL or set HOLDFAST_TEST_SQS_ENDPOINT \
         (scripts/rehearse-ecs.sh starts the local SQS server and sets it)",
    )?;
    if let Some(filter) = &filter
        && !rehearsal::SCENARIOS.iter().any(|name| name.contains(filter.as_str()))
    {
        return Err(format!("no scenario matches {filter:?}; scenarios: {}", rehearsal::SCENARIOS.join(", ")));
    }
    Ok((rehearsal::Setup { worker, sqs_endpoint }, filter))
}

fn main() -> ExitCode {
    let (setup, filter) = match setup() {
        Ok(setup) => setup,
        Err(message) => {
            eprintln!("ecs_rehearsal: {message}");
            return ExitCode::from(2);
        }
    };
    println!("worker: {}\nSQS endpoint: {}\n", setup.worker.display(), setup.sqs_endpoint);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let selected: Vec<&str> = rehearsal::SCENARIOS
        .iter()
        .copied()
        .filter(|name| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    let report = runtime.block_on(rehearsal::run(&setup, &selected));
    if report.failed == 0 && report.passed > 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("ecs_rehearsal: {} scenario(s) failed; their checks and logs are above", report.failed);
        ExitCode::FAILURE
    }
}
