//! The ECS API backend: aws-sdk-ecs pointed at a local fake that speaks awsJson1_1, with the
//! task's identity read from a fake metadata endpoint v4.

#[path = "support/fake_ecs.rs"]
mod fake_ecs;

use std::time::Duration;

use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use fake_ecs::{FakeEcs, Reply, Surface};
use holdfast::{Protection, ProtectionBackend, ProtectionConfig, ProtectionError, ProtectionMode};

fn client(fake: &FakeEcs) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(fake.endpoint_url())
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .region(Region::new("eu-west-1"))
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_ecs::Client::from_conf(config)
}

fn config(metadata_uri: String, mode: ProtectionMode) -> ProtectionConfig {
    let mut c = ProtectionConfig::default();
    c.backend = ProtectionBackend::Api;
    c.metadata_uri = Some(metadata_uri);
    c.mode = mode;
    c.expires_in_minutes = 5;
    c.refresh_before = Duration::from_secs(60);
    c.maintain = Duration::from_millis(100);
    c
}

/// What an error must satisfy.
type Expect = fn(&ProtectionError) -> bool;

async fn protection(fake: &FakeEcs, mode: ProtectionMode) -> Protection {
    Protection::with_ecs_client(&config(fake.metadata_uri(), mode), client(fake)).await.unwrap()
}

#[tokio::test]
async fn protects_and_releases_through_the_ecs_api() {
    let fake = FakeEcs::start().await;
    let protection = protection(&fake, ProtectionMode::Strict).await;
    assert_eq!(protection.backend(), ProtectionBackend::Api);
    let guard = protection.hold().await.unwrap();
    assert!(fake.is_protected());
    let remote = protection.remote_status().await.unwrap().unwrap();
    assert!(remote.enabled);
    assert_eq!(remote.task_arn.as_deref(), Some(fake_ecs::TASK_ARN));
    assert!(remote.expiration_date.is_some());
    drop(guard);
    for _ in 0..200 {
        if !fake.is_protected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!fake.is_protected(), "released after the maintain window");
    let calls = fake.calls();
    let summary: Vec<(&str, Option<bool>, Option<u32>)> =
        calls.iter().map(|c| (c.operation.as_str(), c.enabled, c.minutes)).collect();
    assert_eq!(
        summary,
        vec![
            ("GetTaskProtection", None, None), // the state an earlier process may have left
            ("UpdateTaskProtection", Some(true), Some(5)),
            ("GetTaskProtection", None, None),
            ("UpdateTaskProtection", Some(false), None),
        ]
    );
    assert!(calls.iter().all(|c| c.surface == Surface::Api && c.status == 200));
}

#[tokio::test]
async fn failures_and_errors_are_classified() {
    let fake = FakeEcs::start().await;
    let cases: Vec<(Reply, Expect)> = vec![
        (Reply::failure("DEPLOYMENT_BLOCKED"), ProtectionError::is_deployment_blocked),
        (Reply::failure("TASK_NOT_VALID"), |e| e.code() == "TASK_NOT_VALID"),
        (Reply::Throttle, |e| matches!(e, ProtectionError::Throttled { .. })),
        (
            Reply::error(400, "AccessDeniedException"),
            |e| matches!(e, ProtectionError::Rejected { status: Some(400), code, .. } if code == "AccessDeniedException"),
        ),
        (Reply::error(500, "ServerException"), |e| matches!(e, ProtectionError::Unavailable { .. })),
    ];
    for (reply, expected) in cases {
        fake.push(reply.clone());
        let err = protection(&fake, ProtectionMode::Strict).await.hold().await.unwrap_err();
        assert!(expected(&err), "{reply:?} gave {err:?}");
    }
    assert_eq!(fake.updates().len(), 5, "one request per attempt: the client does not retry on its own");
}

#[tokio::test]
async fn relaxed_mode_carries_on_when_the_api_refuses() {
    let fake = FakeEcs::start().await;
    fake.set_default(Reply::failure("DEPLOYMENT_BLOCKED"));
    let protection = protection(&fake, ProtectionMode::Relaxed).await;
    let guard = protection.hold().await.expect("relaxed");
    assert!(!protection.state().is_protected());
    drop(guard);
}

#[tokio::test]
async fn a_metadata_endpoint_that_is_down_is_unavailable() {
    let fake = FakeEcs::start().await;
    let dead = FakeEcs::start().await;
    let metadata_uri = dead.metadata_uri();
    dead.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let protection =
        Protection::with_ecs_client(&config(metadata_uri, ProtectionMode::Strict), client(&fake)).await.unwrap();
    let err = protection.hold().await.unwrap_err();
    assert!(matches!(err, ProtectionError::Unavailable { ref message } if message.contains("metadata")), "{err}");
    assert!(fake.calls().is_empty());
}
