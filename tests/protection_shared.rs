//! Several processes of one task sharing protection through a directory. The test binary
//! re-executes itself as the second process (`--exact shared_dir_child`, marked by an
//! environment variable), which holds protection until it is killed.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fake_ecs::FakeEcs;
use holdfast::{Protection, ProtectionBackend, ProtectionConfig, ProtectionMode};
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

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("holdfast-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
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
    assert_eq!(holders(&dir.0), 1);
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
    eventually("released once the lease expired", || !fake.is_protected()).await;
    assert_eq!(holders(&dir.0), 1);
    child.kill().await.unwrap();
    protection.shutdown().await;
    let updates: Vec<Option<bool>> = fake.updates().iter().map(|c| c.enabled).collect();
    assert_eq!(updates, vec![Some(true), Some(false)]);
}

/// Two processes of one task, each always busy, with the same bounded hold: both pause, the
/// task is released once both have withdrawn, stays unprotected for the gap, and both take
/// work again. (Two managers in this one process: each registers as its own holder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_directory_open_the_task_together_for_a_bounded_hold() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    const GAP: Duration = Duration::from_secs(2);
    let fake = std::sync::Arc::new(FakeEcs::start().await);
    let dir = TempDir::new("bounded-hold");
    let mut c = config(fake.agent_uri(), &dir.0);
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
