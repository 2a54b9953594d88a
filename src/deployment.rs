//! Deployment awareness: notices when a deployment has replaced this task's revision, so a
//! busy, protected worker can step aside instead of holding the deployment up until its
//! protection expires.
//!
//! Opt-in (`HOLDFAST_DEPLOYMENT_CHECK`). The task's identity is read once from
//! `${ECS_CONTAINER_METADATA_URI_V4}/task` (`Cluster`, `TaskARN`, `Family`, `Revision`,
//! `ServiceName`); then, once per interval, one `DescribeServices` call compares
//! `Family:Revision` with the task definition of the service's `PRIMARY` deployment. The task
//! role needs `ecs:DescribeServices`. With the check on, a `DEPLOYMENT_BLOCKED` refusal of
//! protection in strict mode is a reason to step aside as well.

use std::time::Duration;

use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde::Deserialize;

/// Longest one metadata read or `DescribeServices` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the check saw when it decided this task's revision had been replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replaced {
    /// This task's `Family:Revision`.
    pub(crate) task_revision: String,
    /// The `Family:Revision` of the service's `PRIMARY` deployment.
    pub(crate) primary_revision: String,
}

/// The task's identity, as the metadata endpoint v4 gives it.
#[derive(Debug, Clone, Deserialize)]
struct TaskMetadata {
    #[serde(rename = "Cluster")]
    cluster: String,
    #[serde(rename = "TaskARN")]
    task_arn: String,
    #[serde(rename = "Family")]
    family: String,
    #[serde(rename = "Revision")]
    revision: String,
    #[serde(rename = "ServiceName", default)]
    service_name: Option<String>,
}

/// The `Family:Revision` part of a task definition ARN
/// (`arn:aws:ecs:REGION:ACCOUNT:task-definition/FAMILY:REVISION`), or the text itself when
/// it is already written that way.
fn revision_of(task_definition: &str) -> &str {
    task_definition.rsplit_once("task-definition/").map_or(task_definition, |(_, rest)| rest)
}

/// The `Family:Revision` of the service's `PRIMARY` deployment in a `DescribeServices`
/// answer, or why there is none.
fn primary_revision(
    output: &aws_sdk_ecs::operation::describe_services::DescribeServicesOutput,
) -> Result<String, String> {
    if let Some(failure) = output.failures().first() {
        return Err(format!(
            "DescribeServices answered failure {} for {}",
            failure.reason().unwrap_or("(no reason)"),
            failure.arn().unwrap_or("the service")
        ));
    }
    let service = output.services().first().ok_or("DescribeServices answered no service")?;
    let primary = service
        .deployments()
        .iter()
        .find(|d| d.status() == Some("PRIMARY"))
        .ok_or("the service has no PRIMARY deployment")?;
    let definition = primary.task_definition().ok_or("the PRIMARY deployment names no task definition")?;
    Ok(revision_of(definition).to_owned())
}

/// Where the ECS client comes from.
pub(crate) enum EcsClient {
    /// Built from the default AWS configuration (the task role), in the task's region.
    Default,
    /// Given by the program ([`Worker::deployment_client`](crate::Worker::deployment_client)).
    Given(aws_sdk_ecs::Client),
}

/// Why the worker steps aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepAside {
    /// A deployment replaced this task's revision.
    Replaced(Replaced),
    /// ECS refused protection with `DEPLOYMENT_BLOCKED` (strict mode): a deployment is
    /// waiting for this task.
    Blocked,
}

/// The check `config` asks for, with `client` if given: resolves once the task's revision
/// has been replaced, or (strict mode) once ECS refuses protection with
/// `DEPLOYMENT_BLOCKED`; never when the check is off.
pub(crate) async fn watch_if_on(
    config: &crate::Config,
    client: Option<aws_sdk_ecs::Client>,
    protection: &crate::Protection,
) -> StepAside {
    let (Some(every), Some(uri)) = (config.deployment_check, config.protection.metadata_uri.clone()) else {
        return std::future::pending().await;
    };
    metrics::gauge!(crate::telemetry::names::STEPPED_ASIDE).set(0.0);
    let strict = protection.is_strict();
    let mut states = protection.subscribe();
    let blocked = async move {
        if !strict {
            return std::future::pending().await;
        }
        loop {
            let refused = matches!(
                &*states.borrow_and_update(),
                crate::ProtectionState::Rejected { error, .. } if error.is_deployment_blocked()
            );
            if refused {
                tracing::warn!(
                    "ECS refused protection with DEPLOYMENT_BLOCKED: stepping aside (no new messages, unstarted ones \
                     released, running ones finish within the drain timeout, then protection is released)"
                );
                return;
            }
            if states.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    tokio::select! {
        replaced = watch(uri, every, client.map_or(EcsClient::Default, EcsClient::Given)) => StepAside::Replaced(replaced),
        () = blocked => StepAside::Blocked,
    }
}

impl StepAside {
    /// The event's form of the reason.
    pub(crate) fn reason(&self) -> crate::StepAsideReason {
        match self {
            Self::Replaced(seen) => crate::StepAsideReason::Replaced {
                task_revision: seen.task_revision.clone(),
                primary_revision: seen.primary_revision.clone(),
            },
            Self::Blocked => crate::StepAsideReason::DeploymentBlocked,
        }
    }
}

/// How often a worker that stepped aside says it is still waiting to be stopped.
const IDLE_REMINDER: Duration = Duration::from_secs(300);

/// After stepping aside: waits for `shutdown` (ECS's SIGTERM), saying every few minutes that
/// the worker is idle and why, so the wait is never silent.
pub(crate) async fn idle_until<F: std::future::Future<Output = ()>>(
    why: &StepAside,
    shutdown: &mut std::pin::Pin<&mut F>,
) {
    let since = tokio::time::Instant::now();
    let (task_revision, primary_revision) = match why {
        StepAside::Replaced(seen) => (seen.task_revision.as_str(), seen.primary_revision.as_str()),
        StepAside::Blocked => ("unknown", "unknown (ECS answered DEPLOYMENT_BLOCKED)"),
    };
    tracing::warn!(
        task_revision,
        primary_revision,
        "stepped aside: protection released, no work taken; idle until ECS stops this task"
    );
    loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return,
            _ = tokio::time::sleep(IDLE_REMINDER) => tracing::warn!(
                task_revision,
                primary_revision,
                idle_s = since.elapsed().as_secs(),
                "stepped aside and still running: waiting for ECS to stop this task (a stop signal ends the wait)"
            ),
        }
    }
}

/// Checks every `interval` until this task's revision is no longer the service's primary
/// one, and returns what it saw. Never returns when the check cannot run here (no
/// `ServiceName` in the metadata): it says so once and stays off.
pub(crate) async fn watch(metadata_uri: String, interval: Duration, client: EcsClient) -> Replaced {
    let metadata = read_metadata(&metadata_uri, interval).await;
    let Some(service) = metadata.service_name.clone().filter(|s| !s.is_empty()) else {
        tracing::warn!(
            task_arn = %metadata.task_arn,
            "deployment check off: the task metadata names no ServiceName (a task not started by a service, or an ECS \
             agent too old to report it); HOLDFAST_DEPLOYMENT_CHECK has no effect"
        );
        return std::future::pending().await;
    };
    let task_revision = format!("{}:{}", metadata.family, metadata.revision);
    let client = match client {
        EcsClient::Given(client) => client,
        EcsClient::Default => default_client(&metadata.task_arn).await,
    };
    let per_hour = (3600.0 / interval.as_secs_f64()).round() as u64;
    tracing::info!(
        service = %service,
        cluster = %metadata.cluster,
        task_revision = %task_revision,
        interval_ms = interval.as_millis() as u64,
        describe_services_per_hour = per_hour,
        "deployment check on: the worker steps aside once its revision is no longer the service's PRIMARY deployment"
    );
    let mut calls = 0u64;
    let mut last_problem: Option<String> = None;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        calls += 1;
        let answer = tokio::time::timeout(
            CALL_TIMEOUT,
            client.describe_services().cluster(&metadata.cluster).services(&service).send(),
        )
        .await;
        let primary = match answer {
            Err(_) => Err(format!("DescribeServices took longer than {} s", CALL_TIMEOUT.as_secs())),
            Ok(Err(error)) => Err(describe_error(&error)),
            Ok(Ok(output)) => primary_revision(&output),
        };
        let outcome = match &primary {
            Ok(primary) if *primary == task_revision => "current",
            Ok(_) => "replaced",
            Err(_) => "error",
        };
        metrics::counter!(crate::telemetry::names::DEPLOYMENT_CHECKS, "outcome" => outcome).increment(1);
        match primary {
            Ok(primary) if primary == task_revision => {
                if last_problem.take().is_some() {
                    tracing::info!(task_revision = %task_revision, "deployment check working again");
                }
                tracing::trace!(task_revision = %task_revision, "this task's revision is the PRIMARY deployment");
            }
            Ok(primary) => {
                tracing::warn!(
                    task_revision = %task_revision,
                    primary_revision = %primary,
                    service = %service,
                    describe_services_calls = calls,
                    "a deployment replaced this task's revision: stepping aside (no new messages, unstarted ones \
                     released, running ones finish within the drain timeout, then protection is released)"
                );
                return Replaced { task_revision, primary_revision: primary };
            }
            Err(problem) => {
                if last_problem.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(service = %service, "deployment check failed: {problem}; trying again in {} ms", interval.as_millis());
                } else {
                    tracing::debug!(service = %service, "deployment check failed again: {problem}");
                }
                last_problem = Some(problem);
            }
        }
    }
}

/// Reads the task's identity, retrying every `interval` until the endpoint answers.
async fn read_metadata(metadata_uri: &str, interval: Duration) -> TaskMetadata {
    let url = format!("{}/task", metadata_uri.trim_end_matches('/'));
    let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().unwrap_or_default();
    let mut logged = false;
    loop {
        let read = async {
            let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            response.json::<TaskMetadata>().await.map_err(|e| format!("no Cluster, TaskARN, Family and Revision: {e}"))
        };
        match read.await {
            Ok(metadata) => return metadata,
            Err(problem) if !logged => {
                tracing::warn!(
                    "deployment check: cannot read the task metadata endpoint {url}: {problem}; trying again every {} ms",
                    interval.as_millis()
                );
                logged = true;
            }
            Err(problem) => tracing::debug!("deployment check: task metadata still unreadable: {problem}"),
        }
        tokio::time::sleep(interval).await;
    }
}

async fn default_client(task_arn: &str) -> aws_sdk_ecs::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let mut builder = aws_sdk_ecs::config::Builder::from(&sdk)
        // One request per check keeps the count of calls honest; the next check retries.
        .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled());
    if sdk.region().is_none()
        && let Some(region) = task_arn.split(':').nth(3).filter(|r| !r.is_empty())
    {
        builder = builder.region(aws_sdk_ecs::config::Region::new(region.to_owned()));
    }
    aws_sdk_ecs::Client::from_conf(builder.build())
}

fn describe_error<E>(error: &SdkError<E, aws_sdk_ecs::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or("an error");
            let hint = if code.starts_with("AccessDenied") {
                " (the task role needs ecs:DescribeServices on the service; see the README, \"Deployments: stepping aside\")"
            } else {
                ""
            };
            format!("DescribeServices answered {code}: {}{hint}", context.err().message().unwrap_or(""))
        }
        other => format!("DescribeServices: {}", DisplayErrorContext(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
    use aws_sdk_ecs::types::{Deployment, Failure, Service};

    fn deployment(status: &str, revision: u32) -> Deployment {
        Deployment::builder()
            .status(status)
            .task_definition(format!("arn:aws:ecs:eu-west-1:123456789012:task-definition/worker:{revision}"))
            .build()
    }

    #[test]
    fn the_primary_deployment_names_the_revision() {
        let output = DescribeServicesOutput::builder()
            .services(
                Service::builder().deployments(deployment("ACTIVE", 7)).deployments(deployment("PRIMARY", 8)).build(),
            )
            .build();
        assert_eq!(primary_revision(&output).as_deref(), Ok("worker:8"));
    }

    #[test]
    fn an_answer_without_a_primary_deployment_is_a_problem_not_a_revision() {
        let missing = DescribeServicesOutput::builder()
            .failures(
                Failure::builder().arn("arn:aws:ecs:eu-west-1:123456789012:service/c/s").reason("MISSING").build(),
            )
            .build();
        assert!(primary_revision(&missing).unwrap_err().contains("MISSING"));
        let none = DescribeServicesOutput::builder().build();
        assert!(primary_revision(&none).is_err());
        let only_active = DescribeServicesOutput::builder()
            .services(Service::builder().deployments(deployment("ACTIVE", 1)).build())
            .build();
        assert!(primary_revision(&only_active).unwrap_err().contains("no PRIMARY"));
    }

    #[test]
    fn revisions_are_read_from_task_definition_arns() {
        assert_eq!(revision_of("arn:aws:ecs:eu-west-1:1:task-definition/app-test-worker:12"), "app-test-worker:12");
        assert_eq!(revision_of("worker:3"), "worker:3");
    }

    #[test]
    fn metadata_without_a_service_name_still_reads() {
        let m: TaskMetadata = serde_json::from_str(
            r#"{"Cluster":"c","TaskARN":"arn:aws:ecs:eu-west-1:1:task/c/t","Family":"w","Revision":"4","KnownStatus":"RUNNING"}"#,
        )
        .unwrap();
        assert_eq!((m.family.as_str(), m.revision.as_str(), m.service_name), ("w", "4", None));
    }
}
