//! The worker that `scripts/bench-peers.sh` measures: configured by the environment like any
//! holdfast worker (`HOLDFAST_QUEUE_URL`, `HOLDFAST_CONCURRENCY`, ...), with a handler that does
//! nothing but, when `BENCH_HANDLER_MS` is set, wait that long (an I/O-bound job) and
//! acknowledge. No logging per message, so what is measured is the framework.
//!
//! ```text
//! HOLDFAST_QUEUE_URL=http://127.0.0.1:9324/000000000000/jobs BENCH_HANDLER_MS=50 \
//! HOLDFAST_CONCURRENCY=64 cargo run --release --example bench_worker
//! ```

use std::process::ExitCode;
use std::time::Duration;

use holdfast::{BoxError, Context, Message, Outcome, Worker, handler_fn};

#[tokio::main]
async fn main() -> ExitCode {
    let work = match std::env::var("BENCH_HANDLER_MS").ok().map(|ms| ms.parse::<u64>()) {
        None => None,
        Some(Ok(ms)) => Some(Duration::from_millis(ms)),
        Some(Err(_)) => {
            eprintln!("bench_worker: BENCH_HANDLER_MS must be a whole number of milliseconds");
            return ExitCode::from(2);
        }
    };
    let worker = match Worker::from_env() {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("bench_worker: {error}");
            return ExitCode::from(2);
        }
    };
    let handler = handler_fn(move |_msg: Message, ctx: Context| async move {
        if let Some(work) = work {
            tokio::select! {
                _ = tokio::time::sleep(work) => {}
                _ = ctx.cancelled() => return Err::<Outcome, BoxError>("interrupted".into()),
            }
        }
        Ok(Outcome::Ack)
    });
    match worker.handler(handler).run().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_worker: {error}");
            ExitCode::FAILURE
        }
    }
}
