//! How many ECS calls protection costs, measured against the local fake agent.
//!
//! ```text
//! cargo bench --bench protection_calls
//! ```
//!
//! Runs, at the same time, each against its own fake ECS agent (real time, about 3.5 min):
//! - 1,000 jobs of 10 ms at concurrency 8, arriving continuously, with the default settings
//!   (60 min expiry, refresh 20 min before, 30 s maintain window): ECS calls made, and the
//!   time from the last job to the release;
//! - one job lasting 3 x the expiry (expiry 1 min, refreshed 20 s before): refresh calls.
//!
//! Run by `cargo test --all-targets` (without `--bench`), it does a quick smoke run instead.

#[path = "../tests/support/fake_ecs.rs"]
mod fake_ecs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_ecs::FakeEcs;
use holdfast::{Protection, ProtectionBackend, ProtectionConfig, ProtectionState};

fn config(fake: &FakeEcs) -> ProtectionConfig {
    let mut c = ProtectionConfig::default();
    c.backend = ProtectionBackend::Agent;
    c.agent_uri = Some(fake.agent_uri());
    c
}

struct Burst {
    jobs: usize,
    job: Duration,
    calls_while_busy: usize,
    calls_total: usize,
    busy_for: Duration,
    last_job_to_release: Duration,
}

async fn burst(jobs: usize, job: Duration, concurrency: usize, maintain: Option<Duration>) -> Burst {
    let fake = FakeEcs::start().await;
    let mut c = config(&fake);
    if let Some(maintain) = maintain {
        c.maintain = maintain;
    }
    let protection = Protection::from_config(&c).await.expect("protection");
    let mut states = protection.subscribe();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut running = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..jobs {
        // Jobs arrive as soon as there is room: the pool never drains between them.
        let permit = permits.clone().acquire_owned().await.unwrap();
        let protection = protection.clone();
        running.spawn(async move {
            let _guard = protection.hold().await.expect("protected");
            tokio::time::sleep(job).await;
            drop(permit);
        });
    }
    while let Some(job) = running.join_next().await {
        job.unwrap();
    }
    let last_job = Instant::now();
    let calls_while_busy = fake.updates().len();
    states.wait_for(|s| *s == ProtectionState::Unprotected).await.unwrap();
    let last_job_to_release = last_job.elapsed();
    protection.shutdown().await;
    Burst {
        jobs,
        job,
        calls_while_busy,
        calls_total: fake.updates().len(),
        busy_for: last_job - started,
        last_job_to_release,
    }
}

struct LongJob {
    length: Duration,
    protects: usize,
    releases: usize,
}

async fn long_job(length: Duration, refresh_before: Duration) -> LongJob {
    let fake = FakeEcs::start().await;
    let mut c = config(&fake);
    c.expires_in_minutes = 1;
    c.refresh_before = refresh_before;
    c.maintain = Duration::ZERO;
    let protection = Protection::from_config(&c).await.expect("protection");
    let guard = protection.hold().await.expect("protected");
    tokio::time::sleep(length).await;
    drop(guard);
    let mut states = protection.subscribe();
    states.wait_for(|s| *s == ProtectionState::Unprotected).await.unwrap();
    protection.shutdown().await;
    let updates = fake.updates();
    LongJob {
        length,
        protects: updates.iter().filter(|c| c.enabled == Some(true)).count(),
        releases: updates.iter().filter(|c| c.enabled == Some(false)).count(),
    }
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (burst, long) = if full {
        println!("measuring (about 3.5 minutes of real time)...");
        tokio::join!(
            burst(1000, Duration::from_millis(10), 8, None),
            long_job(Duration::from_secs(180), Duration::from_secs(20)),
        )
    } else {
        tokio::join!(
            burst(100, Duration::from_millis(1), 8, Some(Duration::from_millis(100))),
            long_job(Duration::from_millis(500), Duration::from_millis(59_800)),
        )
    };
    println!(
        "burst: {} jobs of {} ms at concurrency 8 over {:.2} s: {} ECS call(s) while busy, {} in all (goal <= 3)",
        burst.jobs,
        burst.job.as_millis(),
        burst.busy_for.as_secs_f64(),
        burst.calls_while_busy,
        burst.calls_total
    );
    println!(
        "release: {:.2} s from the last job to the release (maintain window + one call)",
        burst.last_job_to_release.as_secs_f64()
    );
    println!(
        "long job: {:.1} s (3 x the 1 min expiry when run with --bench): {} protect call(s) = 1 acquire + {} refresh(es), {} release",
        long.length.as_secs_f64(),
        long.protects,
        long.protects.saturating_sub(1),
        long.releases
    );
    assert!(burst.calls_total <= 3, "the burst made {} calls", burst.calls_total);
}
