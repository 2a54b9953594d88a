//! The agent backend against a local fake of the ECS agent endpoint that speaks its exact
//! wire format. Real time, with short maintain windows; exact timing is covered by the
//! paused-time unit tests.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;

use std::time::Duration;

use fake_ecs::{FakeEcs, Reply, Surface};
use holdfast::{Protection, ProtectionBackend, ProtectionConfig, ProtectionError, ProtectionMode, ProtectionState};

fn config(fake: &FakeEcs, mode: ProtectionMode) -> ProtectionConfig {
    let mut c = ProtectionConfig::default();
    c.backend = ProtectionBackend::Agent;
    c.agent_uri = Some(fake.agent_uri());
    c.mode = mode;
    c.expires_in_minutes = 1;
    c.refresh_before = Duration::from_secs(20);
    c.maintain = Duration::from_millis(200);
    c
}

/// What an error must satisfy.
type Expect = fn(&ProtectionError) -> bool;

async fn protection(fake: &FakeEcs, mode: ProtectionMode) -> Protection {
    Protection::from_config(&config(fake, mode)).await.unwrap()
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_burst_of_short_jobs_protects_once_and_releases_once() {
    let fake = FakeEcs::start().await;
    let protection = protection(&fake, ProtectionMode::Strict).await;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let protection = protection.clone();
        jobs.spawn(async move {
            let _guard = protection.hold().await.expect("protected");
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(permit);
        });
    }
    while let Some(job) = jobs.join_next().await {
        job.unwrap();
    }
    assert!(fake.is_protected());
    let remote = protection.remote_status().await.unwrap().unwrap();
    assert!(remote.enabled);
    assert!(remote.expiration_date.as_deref().is_some_and(|d| d.ends_with('Z')), "{remote:?}");
    eventually("released", || !fake.is_protected()).await;
    let updates: Vec<(Option<bool>, Option<u32>)> = fake.updates().iter().map(|c| (c.enabled, c.minutes)).collect();
    assert_eq!(updates, vec![(Some(true), Some(1)), (Some(false), None)]);
    assert!(fake.calls().iter().all(|c| c.status == 200 && c.surface == Surface::Agent));
    assert_eq!(protection.state(), ProtectionState::Unprotected);
}

#[tokio::test]
async fn a_failure_body_with_http_200_is_a_refusal() {
    let fake = FakeEcs::start().await;
    fake.set_default(Reply::failure("DEPLOYMENT_BLOCKED"));
    let strict = protection(&fake, ProtectionMode::Strict).await;
    let err = strict.hold().await.unwrap_err();
    assert!(err.is_deployment_blocked(), "{err}");
    assert!(matches!(strict.state(), ProtectionState::Rejected { ref error, .. } if error.is_deployment_blocked()));
    assert_eq!(fake.updates()[0].status, 200);

    let relaxed = protection(&fake, ProtectionMode::Relaxed).await;
    let guard = relaxed.hold().await.expect("relaxed mode carries on");
    assert!(!relaxed.state().is_protected());
    drop(guard);

    fake.set_default(Reply::failure("TASK_NOT_VALID"));
    let err = protection(&fake, ProtectionMode::Strict).await.hold().await.unwrap_err();
    assert!(matches!(err, ProtectionError::Refused { ref reason, .. } if reason == "TASK_NOT_VALID"), "{err}");
}

#[tokio::test]
async fn errors_are_classified() {
    let fake = FakeEcs::start().await;
    let cases: Vec<(Reply, Expect)> = vec![
        (
            Reply::error(403, "AccessDeniedException"),
            |e| matches!(e, ProtectionError::Rejected { status: Some(403), code, .. } if code == "AccessDeniedException"),
        ),
        (Reply::error(400, "InvalidParameterException"), |e| matches!(e, ProtectionError::Rejected { .. })),
        (Reply::error(404, "ResourceNotFoundException"), |e| e.code() == "ResourceNotFoundException"),
        (Reply::error(500, "ServerException"), |e| matches!(e, ProtectionError::Unavailable { .. })),
        (Reply::error(504, "RequestCanceled"), |e| matches!(e, ProtectionError::Unavailable { .. })),
        (Reply::Throttle, |e| matches!(e, ProtectionError::Throttled { .. })),
    ];
    for (reply, expected) in cases {
        fake.push(reply.clone());
        let err = protection(&fake, ProtectionMode::Strict).await.hold().await.unwrap_err();
        assert!(expected(&err), "{reply:?} gave {err:?}");
    }
}

#[tokio::test]
async fn the_fake_rejects_unknown_fields_and_the_client_sends_none() {
    let fake = FakeEcs::start().await;
    let url = format!("{}/task-protection/v1/state", fake.agent_uri());
    let response = reqwest::Client::new()
        .put(&url)
        .json(&serde_json::json!({"ProtectionEnabled": true, "ExpiresInMinutes": 5, "Bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["Code"], "InvalidParameterException");
    assert!(body["requestID"].is_string());

    let protection = protection(&fake, ProtectionMode::Strict).await;
    drop(protection.hold().await.unwrap());
    protection.extend(Duration::from_secs(600)).await.unwrap();
    protection.shutdown().await;
    let calls = fake.calls();
    let answered: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(answered, vec![400, 200, 200, 200, 200], "every request the manager sent was accepted");
    assert_eq!(calls[1].operation, "GET", "the manager reads the state once at start-up");
}

/// A process SIGKILLed with work in flight leaves the task protected; the next process in the
/// task reads the state at start-up and releases it after the maintain window.
#[tokio::test]
async fn a_protection_left_by_a_killed_process_is_released_after_the_maintain_window() {
    let fake = FakeEcs::start().await;
    let url = format!("{}/task-protection/v1/state", fake.agent_uri());
    let left = reqwest::Client::new()
        .put(&url)
        .json(&serde_json::json!({"ProtectionEnabled": true, "ExpiresInMinutes": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(left.status(), 200);
    assert!(fake.is_protected());
    let mut c = config(&fake, ProtectionMode::Strict);
    c.maintain = Duration::from_secs(1);
    let protection = Protection::from_config(&c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fake.is_protected(), "kept for the maintain window: work may be about to arrive");
    eventually("the earlier protection is released", || !fake.is_protected()).await;
    let updates: Vec<Option<bool>> = fake.updates().iter().map(|c| c.enabled).collect();
    assert_eq!(updates, [Some(true), Some(false)], "the earlier PUT, then one release");
    protection.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_is_down_is_unavailable() {
    let fake = FakeEcs::start().await;
    let strict = protection(&fake, ProtectionMode::Strict).await;
    let relaxed = protection(&fake, ProtectionMode::Relaxed).await;
    fake.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = strict.hold().await.unwrap_err();
    assert!(matches!(err, ProtectionError::Unavailable { .. }) && err.is_transient(), "{err}");
    let guard = relaxed.hold().await.expect("relaxed mode carries on");
    drop(guard);
}

#[tokio::test]
async fn shutdown_releases_with_work_in_flight() {
    let fake = FakeEcs::start().await;
    let protection = protection(&fake, ProtectionMode::Strict).await;
    let guard = protection.hold().await.unwrap();
    assert!(fake.is_protected());
    protection.shutdown().await;
    assert!(!fake.is_protected(), "released although a guard remains");
    assert_eq!(protection.hold().await.unwrap_err(), ProtectionError::ShutDown);
    drop(guard);
    assert_eq!(fake.updates().len(), 2);
}

#[tokio::test]
async fn an_extension_from_a_handler_reaches_the_wire() {
    let fake = FakeEcs::start().await;
    let protection = protection(&fake, ProtectionMode::Strict).await;
    let guard = protection.hold().await.unwrap();
    guard.extend(Duration::from_secs(90 * 60)).await.unwrap();
    let minutes: Vec<Option<u32>> = fake.updates().iter().map(|c| c.minutes).collect();
    assert_eq!(minutes, vec![Some(1), Some(90)]);
    fake.push(Reply::failure("DEPLOYMENT_BLOCKED"));
    let err = guard.extend(Duration::from_secs(3 * 3600)).await.unwrap_err();
    assert!(err.is_deployment_blocked());
    drop(guard);
    protection.shutdown().await;
}

#[tokio::test]
async fn a_long_job_is_refreshed_on_the_wire() {
    let fake = FakeEcs::start().await;
    let mut c = config(&fake, ProtectionMode::Strict);
    c.refresh_before = Duration::from_millis(59_700); // a refresh every 300 ms
    let protection = Protection::from_config(&c).await.unwrap();
    let guard = protection.hold().await.unwrap();
    eventually("two refreshes", || fake.updates().len() >= 3).await;
    drop(guard);
    eventually("released", || !fake.is_protected()).await;
    let updates = fake.updates();
    let (last, refreshes) = updates.split_last().unwrap();
    assert_eq!(last.enabled, Some(false));
    assert!(refreshes.iter().all(|c| c.enabled == Some(true) && c.minutes == Some(1)), "{refreshes:?}");
}

#[tokio::test]
async fn strict_mode_waits_for_protection_before_taking_work() {
    let fake = FakeEcs::start().await;
    let protection = protection(&fake, ProtectionMode::Strict).await;
    fake.push(Reply::error(500, "ServerException"));
    assert!(protection.hold().await.unwrap_err().is_transient());
    // The poller would wait here; the manager probes after its backoff (0.5 to 1 s).
    tokio::time::timeout(Duration::from_secs(10), protection.ready_for_work()).await.expect("probe succeeded");
    assert!(fake.is_protected(), "the probe protected the task for the work to come");
    let guard = protection.hold().await.unwrap();
    assert_eq!(fake.updates().len(), 2, "the probe's protection is reused");
    drop(guard);
}
