//! The ECS API backend: `UpdateTaskProtection` / `GetTaskProtection` with the task role.
//!
//! The cluster and task ARN are read once, on the first call, from
//! `${ECS_CONTAINER_METADATA_URI_V4}/task` (keys `Cluster` and `TaskARN`). The task role
//! needs `ecs:UpdateTaskProtection` and `ecs:GetTaskProtection`.

use async_trait::async_trait;
use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::backend::{Backend, CALL_TIMEOUT};
use super::state::{ProtectionError, RemoteProtection};

/// Where the ECS client comes from.
pub(crate) enum ClientSource {
    /// Built from the shared AWS configuration once the task's region is known.
    Sdk(Box<aws_config::SdkConfig>),
    /// Given by the caller, used as it is.
    Client(aws_sdk_ecs::Client),
}

pub(crate) struct ApiBackend {
    http: reqwest::Client,
    metadata_url: String,
    source: ClientSource,
    target: OnceCell<Target>,
}

struct Target {
    client: aws_sdk_ecs::Client,
    cluster: String,
    task_arn: String,
}

#[derive(Deserialize)]
struct TaskMetadata {
    #[serde(rename = "Cluster")]
    cluster: String,
    #[serde(rename = "TaskARN")]
    task_arn: String,
}

impl ApiBackend {
    pub(crate) fn new(metadata_uri: &str, source: ClientSource) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the task metadata endpoint: {e}"))?;
        Ok(Self {
            http,
            metadata_url: format!("{}/task", metadata_uri.trim_end_matches('/')),
            source,
            target: OnceCell::new(),
        })
    }

    async fn target(&self) -> Result<&Target, ProtectionError> {
        self.target.get_or_try_init(|| self.discover()).await
    }

    async fn discover(&self) -> Result<Target, ProtectionError> {
        let unavailable = |what: String| ProtectionError::Unavailable {
            message: format!("task metadata endpoint {}: {what}", self.metadata_url),
        };
        let response = self.http.get(&self.metadata_url).send().await.map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let metadata: TaskMetadata =
            response.json().await.map_err(|e| unavailable(format!("no Cluster and TaskARN in the answer: {e}")))?;
        let client = match &self.source {
            ClientSource::Client(client) => client.clone(),
            ClientSource::Sdk(sdk) => {
                let mut builder = aws_sdk_ecs::config::Builder::from(sdk.as_ref())
                    // The manager backs off itself; one request per call keeps the count honest.
                    .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_sdk_ecs::config::timeout::TimeoutConfig::builder().operation_timeout(CALL_TIMEOUT).build(),
                    );
                if sdk.region().is_none()
                    && let Some(region) = region_of(&metadata.task_arn)
                {
                    builder = builder.region(aws_sdk_ecs::config::Region::new(region));
                }
                aws_sdk_ecs::Client::from_conf(builder.build())
            }
        };
        tracing::debug!(cluster = %metadata.cluster, task_arn = %metadata.task_arn, "read the task's identity from the metadata endpoint");
        Ok(Target { client, cluster: metadata.cluster, task_arn: metadata.task_arn })
    }

    async fn update(&self, enabled: bool, minutes: Option<u32>) -> Result<(), ProtectionError> {
        let target = self.target().await?;
        let mut request = target
            .client
            .update_task_protection()
            .cluster(&target.cluster)
            .tasks(&target.task_arn)
            .protection_enabled(enabled);
        if let Some(minutes) = minutes {
            request = request.expires_in_minutes(minutes as i32);
        }
        let output = request.send().await.map_err(sdk_error)?;
        if let Some(failure) = output.failures().first() {
            return Err(ProtectionError::refusal(
                failure.reason().map(str::to_owned),
                failure.detail().map(str::to_owned),
            ));
        }
        match output.protected_tasks().iter().find(|t| t.task_arn() == Some(target.task_arn.as_str())) {
            Some(task) if task.protection_enabled() == enabled => Ok(()),
            Some(task) => Err(unexpected(format!(
                "asked for protectionEnabled={enabled}, ECS answered protectionEnabled={}",
                task.protection_enabled()
            ))),
            None => Err(unexpected(format!("the answer does not name task {}", target.task_arn))),
        }
    }
}

fn unexpected(message: String) -> ProtectionError {
    ProtectionError::Rejected { status: Some(200), code: "UnexpectedResponse".into(), message }
}

/// `arn:aws:ecs:REGION:ACCOUNT:task/...` → `REGION`.
fn region_of(arn: &str) -> Option<String> {
    arn.split(':').nth(3).filter(|r| !r.is_empty()).map(str::to_owned)
}

fn sdk_error<E>(error: SdkError<E, HttpResponse>) -> ProtectionError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let message =
                context.err().message().map(str::to_owned).unwrap_or_else(|| DisplayErrorContext(&error).to_string());
            ProtectionError::from_code(Some(status), context.err().code(), Some(&message))
        }
        _ => ProtectionError::Unavailable { message: format!("ECS API: {}", DisplayErrorContext(&error)) },
    }
}

#[async_trait]
impl Backend for ApiBackend {
    async fn protect(&self, minutes: u32) -> Result<(), ProtectionError> {
        self.update(true, Some(minutes)).await
    }

    async fn release(&self) -> Result<(), ProtectionError> {
        self.update(false, None).await
    }

    async fn status(&self) -> Result<RemoteProtection, ProtectionError> {
        let target = self.target().await?;
        let output = target
            .client
            .get_task_protection()
            .cluster(&target.cluster)
            .tasks(&target.task_arn)
            .send()
            .await
            .map_err(sdk_error)?;
        if let Some(failure) = output.failures().first() {
            return Err(ProtectionError::refusal(
                failure.reason().map(str::to_owned),
                failure.detail().map(str::to_owned),
            ));
        }
        let task = output.protected_tasks().first().ok_or_else(|| unexpected("no task in the answer".into()))?;
        Ok(RemoteProtection {
            enabled: task.protection_enabled(),
            expiration_date: task
                .expiration_date()
                .and_then(|d| d.fmt(aws_sdk_ecs::primitives::DateTimeFormat::DateTime).ok()),
            task_arn: task.task_arn().map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_task_arn() {
        assert_eq!(region_of("arn:aws:ecs:eu-west-1:123456789012:task/c/abc").as_deref(), Some("eu-west-1"));
        assert_eq!(region_of("nonsense"), None);
    }
}
