//! Several processes of one task sharing protection through a directory. The test binary
//! re-executes itself as the second process (`--exact shared_dir_child`, marked by an
//! environment variable), which holds protection until it is killed.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;
#[path = "support/shared_dir.rs"]
mod shared_dir;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fake_ecs::FakeEcs;
use holdfast::{Protection, ProtectionBackend, ProtectionConfig, ProtectionMode};
use shared_dir::{TempDir, eventually, eventually_within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ROLE: &str = "HOLDFAST_TEST_SHARED_ROLE";
const AGENT: &str = "HOLDFAST_TEST_AGENT_URI";
const DIR: &str = "HOLDFAST_TEST_SHARED_DIR";

fn config(agent_uri: String, dir: &Path) -> ProtectionConfig {
    let mut c = ProtectionConfig::default();
    c.backend = ProtectionBackend::Agent;
    c.agent_uri = Some(agent_uri);
    c.mode = ProtectionMode::Strict;
    c.expires_in_minutes = 5;
    c.maintain = Duration::from_millis(100);
    c.shared_dir = Some(dir.to_owned());
    c.lease_ttl = Duration::from_millis(1500);
    c
}

/// The second process: holds protection until it is killed (at most a minute).
#[tokio::test]
async fn shared_dir_child() {
    let Ok(role) = std::env::var(ROLE) else { return };
    assert_eq!(role, "holder");
    let agent = std::env::var(AGENT).unwrap();
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let protection = Protection::from_config(&config(agent, &dir)).await.unwrap();
    let _guard = protection.hold().await.unwrap();
    println!("HOLDING {}", std::process::id());
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Starts the second process and waits until it holds protection.
async fn start_holder(fake: &FakeEcs, dir: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "shared_dir_child", "--nocapture", "--test-threads=1"])
        .env(ROLE, "holder")
        .env(AGENT, fake.agent_uri())
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let holding = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("HOLDING") {
                return;
            }
        }
        panic!("the holder process ended before it held protection");
    });
    holding.await.expect("the holder process holds protection within 30 s");
    child
}

fn holders(dir: &Path) -> usize {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    state["holders"].as_object().unwrap().len()
}

#[tokio::test]
async fn a_killed_process_does_not_keep_the_task_protected() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let fake = FakeEcs::start().await;
    let dir = TempDir::new("sigkill");
    let mut child = start_holder(&fake, &dir.0).await;
    assert_eq!(fake.updates().len(), 1, "the holder protected the task");

    let protection = Protection::from_config(&config(fake.agent_uri(), &dir.0)).await.unwrap();
    let guard = protection.hold().await.unwrap();
    assert_eq!(fake.updates().len(), 1, "already protected by the other process: no call");
    drop(guard);
    tokio::time::sleep(Duration::from_secs(1)).await; // past our maintain window, several syncs
    assert!(fake.is_protected(), "the other process still has work");
    assert_eq!(fake.updates().len(), 1);
    assert_eq!(holders(&dir.0), 2);

    child.kill().await.unwrap(); // SIGKILL: no chance to release or deregister
    eventually("released once the dead holder is dropped", || !fake.is_protected()).await;
    let updates: Vec<Option<bool>> = fake.updates().iter().map(|c| c.enabled).collect();
    assert_eq!(updates, vec![Some(true), Some(false)], "one call each, by one process");
    // The shared state is written once the release call has returned: wait for it.
    eventually("the dead holder left the shared state", || holders(&dir.0) == 1).await;
    protection.shutdown().await;
    assert_eq!(fake.updates().len(), 2);
}

#[tokio::test]
async fn a_hung_process_is_dropped_after_its_lease_ttl() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let fake = FakeEcs::start().await;
    let dir = TempDir::new("sigstop");
    let mut child = start_holder(&fake, &dir.0).await;
    let pid = child.id().unwrap().to_string();
    let protection = Protection::from_config(&config(fake.agent_uri(), &dir.0)).await.unwrap();
    drop(protection.hold().await.unwrap());

    // Stopped, the process keeps its lock but no longer renews its lease.
    let status = std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fake.is_protected(), "within the lease TTL it still counts");
    // Stopped between two renewals, or while it held the state lock: then the lock is broken
    // after its patience (12 s) first.
    eventually_within(Duration::from_secs(30), "released once the lease expired", || !fake.is_protected()).await;
    eventually("the silent holder left the shared state", || holders(&dir.0) == 1).await;
    child.kill().await.unwrap();
    protection.shutdown().await;
    let updates: Vec<Option<bool>> = fake.updates().iter().map(|c| c.enabled).collect();
    assert_eq!(updates, vec![Some(true), Some(false)]);
}

/// A process that stopped (or hung) while it held `state.lock` does not stall the others for
/// good: after the lock's patience (a call's 10 s timeout and 2 s; the lease TTL here is
/// shorter) the lock is broken, and the task is protected and released as usual.
#[tokio::test]
async fn a_state_lock_kept_by_a_stuck_process_is_broken_after_its_patience() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let fake = FakeEcs::start().await;
    let dir = TempDir::new("stuck-lock");
    // Another open file description: the OS lock conflicts as it would with another process.
    let stuck = std::fs::File::create(dir.0.join("state.lock")).unwrap();
    stuck.lock().unwrap();
    let started = tokio::time::Instant::now();
    let protection = Protection::from_config(&config(fake.agent_uri(), &dir.0)).await.unwrap();
    let guard = tokio::time::timeout(Duration::from_secs(40), protection.hold())
        .await
        .expect("still waiting for the state lock after 40 s")
        .unwrap();
    assert!(fake.is_protected());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(12), "the lock was broken after {waited:?}, before its patience");
    drop(guard);
    protection.shutdown().await;
    assert!(!fake.is_protected(), "released at shutdown");
    drop(stuck);
}
