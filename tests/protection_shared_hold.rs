//! The bounded hold with a shared protection directory: two managers (each its own holder,
//! as two processes of one task would be) pause together, open the task for the gap and both
//! resume. Its own test binary: every job is a pass through the shared file with a sync, and
//! `tests/protection_shared.rs` times its own passes.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;
#[path = "support/shared_dir.rs"]
mod shared_dir;

use std::time::Duration;

use fake_ecs::FakeEcs;
use holdfast::{Protection, ProtectionBackend, ProtectionConfig, ProtectionMode};
use shared_dir::{TempDir, eventually};

/// Two processes of one task, each always busy, with the same bounded hold: both pause, the
/// task is released once both have withdrawn, stays unprotected for the gap, and both take
/// work again. (Two managers in this one process: each registers as its own holder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_directory_open_the_task_together_for_a_bounded_hold() {
    const GAP: Duration = Duration::from_secs(2);
    let fake = std::sync::Arc::new(FakeEcs::start().await);
    let dir = TempDir::new("bounded-hold");
    let mut c = ProtectionConfig::default();
    c.backend = ProtectionBackend::Agent;
    c.agent_uri = Some(fake.agent_uri());
    c.mode = ProtectionMode::Strict;
    c.maintain = Duration::from_millis(100);
    c.shared_dir = Some(dir.0.clone());
    c.lease_ttl = Duration::from_millis(1500);
    c.max_hold = Some(Duration::from_secs(3));
    c.hold_gap = GAP;
    c.hold_drain = Duration::from_secs(1);
    // (manager, job start on the fake's clock, protected then)
    let starts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(usize, u64, bool)>::new()));
    let mut managers = Vec::new();
    let mut loops = Vec::new();
    for id in 0..2 {
        let protection = Protection::from_config(&c).await.unwrap();
        for _ in 0..2 {
            let (protection, starts, fake) = (protection.clone(), starts.clone(), fake.clone());
            loops.push(tokio::spawn(async move {
                loop {
                    protection.ready_for_work().await;
                    match protection.hold().await {
                        Ok(guard) => {
                            starts.lock().unwrap().push((id, fake.now_ms(), fake.is_protected()));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            drop(guard);
                        }
                        Err(holdfast::ProtectionError::ShutDown) => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }
        managers.push(protection);
    }
    eventually("an opening and a protection after it", || {
        let updates = fake.updates();
        updates.windows(2).any(|w| w[0].enabled == Some(false) && w[1].enabled == Some(true))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in &managers {
        m.shutdown().await;
    }
    for l in loops {
        l.await.unwrap();
    }
    let updates = fake.updates();
    assert!(updates.iter().all(|c| c.status == 200 && c.outcome.is_none()), "{updates:?}");
    let (released, protected) = updates
        .windows(2)
        .find(|w| w[0].enabled == Some(false) && w[1].enabled == Some(true))
        .map(|w| (w[0].at_ms, w[1].at_ms))
        .unwrap();
    assert!(protected - released >= GAP.as_millis() as u64 - 50, "the gap was cut short: {updates:?}");
    assert_eq!(updates[0].enabled, Some(true));
    assert!(released - updates[0].at_ms >= 3000, "released before the max hold: {updates:?}");
    let starts = starts.lock().unwrap().clone();
    assert!(starts.iter().all(|s| s.2), "a job started unprotected: {starts:?}");
    for id in 0..2 {
        assert!(
            starts.iter().any(|s| s.0 == id && s.1 < released) && starts.iter().any(|s| s.0 == id && s.1 > protected),
            "manager {id} worked before and after the opening"
        );
    }
    assert!(!starts.iter().any(|s| (released..protected).contains(&s.1)), "a job started in the gap");
}
