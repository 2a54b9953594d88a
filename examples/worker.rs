//! The worker that ships in the Docker image: configured entirely by environment variables
//! (see the README), it handles jobs like `{"id": "j1", "work_ms": 1500}` by working for
//! that long. A body that is not JSON is handled as a job with no work.
//!
//! ```text
//! # against the local SQS server (`cargo run -p holdfast-sqs-server -- --queue jobs`, then its
//! # printed exports); send jobs with `aws sqs send-message`:
//! HOLDFAST_QUEUE_URL=http://127.0.0.1:9324/000000000000/jobs cargo run --example worker
//! # an embedded queue inside this process: nothing outside it can send, so it stays idle
//! HOLDFAST_QUEUE_URL=memory://demo cargo run --example worker
//! HOLDFAST_QUEUE_URL=https://sqs.eu-west-1.amazonaws.com/123456789012/jobs cargo run --example worker
//! ```
//!
//! `worker health` is the container health check: it reads the status the running worker
//! keeps in `HOLDFAST_HEALTH_FILE` and exits 0 when it is healthy, 1 when it is not.

use std::process::ExitCode;
use std::time::Duration;

use holdfast::{BoxError, Context, Message, Outcome, Worker, handler_fn};

#[derive(serde::Deserialize, Default)]
struct Job {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    work_ms: u64,
}

async fn handle(msg: Message, ctx: Context) -> Result<Outcome, BoxError> {
    let job: Job = msg.json().unwrap_or_default();
    let id = job.id.as_deref().unwrap_or(msg.id());
    tracing::info!(job = id, work_ms = job.work_ms, receive_count = msg.receive_count(), "job started");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(job.work_ms)) => {}
        _ = ctx.cancelled() => {
            tracing::warn!(job = id, "job interrupted");
            return Err("interrupted".into());
        }
    }
    tracing::info!(job = id, "job done");
    Ok(Outcome::Ack)
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("health") {
        return holdfast::health_check();
    }
    let worker = match Worker::from_env() {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("holdfast worker: {error}");
            return ExitCode::from(2);
        }
    };
    match worker.handler(handler_fn(handle)).run().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "worker stopped with an error");
            eprintln!("holdfast worker: {error}");
            ExitCode::FAILURE
        }
    }
}
