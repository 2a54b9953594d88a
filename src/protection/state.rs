//! What the outside sees of protection: its state, and why a call failed.

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Why scale-in protection could not be set or released.
///
/// [`is_deployment_blocked`](Self::is_deployment_blocked) tells ECS's `DEPLOYMENT_BLOCKED`
/// refusal apart; [`is_transient`](Self::is_transient) tells the errors that usually heal on
/// their own (throttling, an agent or ECS that is briefly unavailable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ProtectionError {
    /// ECS refused with `DEPLOYMENT_BLOCKED`: a deployment or scale-in needs this task to be
    /// unprotected (more tasks are protected than the service may keep). The task should
    /// finish its work and take no more, so ECS can go ahead.
    #[error(
        "ECS refused scale-in protection: DEPLOYMENT_BLOCKED (a deployment or scale-in is waiting for this task; \
         finish the work in flight and let it go){}",
        detail_suffix(.detail)
    )]
    DeploymentBlocked {
        /// ECS's detail, if any.
        detail: Option<String>,
    },
    /// ECS answered with another failure reason (for example `TASK_NOT_VALID`: the task is
    /// not part of a service).
    #[error("ECS refused scale-in protection: {reason}{}", detail_suffix(.detail))]
    Refused {
        /// ECS's reason code.
        reason: String,
        /// ECS's detail, if any.
        detail: Option<String>,
    },
    /// ECS throttled the call; it is retried with backoff.
    #[error("ECS throttled the protection call: {message}")]
    Throttled {
        /// What ECS said.
        message: String,
    },
    /// The call was rejected in a way that retrying soon will not heal: invalid parameters,
    /// access denied (the task role lacks `ecs:UpdateTaskProtection`), not found.
    #[error("ECS rejected the protection call with {code}{}: {message}", status_suffix(*.status))]
    Rejected {
        /// The HTTP status, when there was one.
        status: Option<u16>,
        /// The error code, such as `AccessDeniedException`.
        code: String,
        /// What ECS said.
        message: String,
    },
    /// The agent or ECS could not be reached or failed (connection refused, timeout, 5xx).
    #[error("scale-in protection is unavailable: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
    },
    /// The protection manager was shut down.
    #[error("the scale-in protection manager is shut down")]
    ShutDown,
    /// The bounded hold (`HOLDFAST_PROTECTION_MAX_HOLD`) is giving ECS an opening: no new
    /// work is protected until it is over.
    #[error("the bounded hold is giving ECS an opening: no new work until it is over")]
    Paused,
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

impl ProtectionError {
    /// Whether ECS refused with `DEPLOYMENT_BLOCKED`.
    pub fn is_deployment_blocked(&self) -> bool {
        matches!(self, Self::DeploymentBlocked { .. })
    }

    /// Whether the error usually heals by itself: throttling or unavailability.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Unavailable { .. })
    }

    /// A short code for logs and metrics: ECS's reason or error code, or `Unavailable`.
    pub fn code(&self) -> &str {
        match self {
            Self::DeploymentBlocked { .. } => "DEPLOYMENT_BLOCKED",
            Self::Refused { reason, .. } => reason,
            Self::Throttled { .. } => "ThrottlingException",
            Self::Rejected { code, .. } => code,
            Self::Unavailable { .. } => "Unavailable",
            Self::ShutDown => "ShutDown",
            Self::Paused => "Paused",
        }
    }

    /// Maps an ECS failure reason (HTTP 200 `failure` body, or `failures[]`) to an error.
    pub(crate) fn refusal(reason: Option<String>, detail: Option<String>) -> Self {
        match reason.as_deref() {
            Some("DEPLOYMENT_BLOCKED") => Self::DeploymentBlocked { detail },
            _ => Self::Refused { reason: reason.unwrap_or_else(|| "UNKNOWN".into()), detail },
        }
    }

    /// Maps an error code and HTTP status to an error.
    pub(crate) fn from_code(status: Option<u16>, code: Option<&str>, message: Option<&str>) -> Self {
        let code = code.unwrap_or("").trim();
        let message = message.unwrap_or("").trim().to_owned();
        let status_text = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
        if code.contains("Throttl") || code == "TooManyRequestsException" || status == Some(429) {
            Self::Throttled { message: if message.is_empty() { format!("{code}{status_text}") } else { message } }
        } else if status.is_some_and(|s| s >= 500) || code == "ServerException" || code == "RequestCanceled" {
            let code = if code.is_empty() { "error" } else { code };
            Self::Unavailable { message: format!("{code}{status_text}: {message}") }
        } else {
            Self::Rejected { status, code: if code.is_empty() { "UnknownError".into() } else { code.into() }, message }
        }
    }
}

/// Where protection stands, as published by [`Protection::subscribe`](crate::Protection::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtectionState {
    /// Protection is off: nothing is called.
    Off,
    /// The task is not protected (idle, or released).
    Unprotected,
    /// The task is protected until `expires_at` unless it is refreshed or released.
    Protected {
        /// When ECS lets the protection lapse (computed from the time of the call).
        expires_at: Instant,
    },
    /// The last attempt to protect the task failed. In strict mode no new work is taken
    /// until a later attempt succeeds.
    Rejected {
        /// Why.
        error: ProtectionError,
        /// Until when an earlier protection still holds, if it does.
        protected_until: Option<Instant>,
    },
    /// The manager was shut down; protection was released.
    ShutDown,
}

impl ProtectionState {
    /// Whether the task is protected now.
    pub fn is_protected(&self) -> bool {
        let now = Instant::now();
        match self {
            Self::Protected { expires_at } => *expires_at > now,
            Self::Rejected { protected_until: Some(until), .. } => *until > now,
            _ => false,
        }
    }
}

/// ECS's own view of the task's protection, as read with `GET` / `GetTaskProtection`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteProtection {
    /// Whether ECS has the task protected.
    pub enabled: bool,
    /// When it lapses, as ECS wrote it (RFC 3339), if protected.
    pub expiration_date: Option<String>,
    /// The task's ARN, when ECS named it.
    pub task_arn: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_code_and_status() {
        assert!(matches!(
            ProtectionError::from_code(Some(400), Some("ThrottlingException"), Some("Rate exceeded")),
            ProtectionError::Throttled { .. }
        ));
        assert!(matches!(ProtectionError::from_code(Some(429), None, None), ProtectionError::Throttled { .. }));
        assert!(ProtectionError::from_code(Some(500), Some("ServerException"), None).is_transient());
        assert!(ProtectionError::from_code(Some(504), Some("RequestCanceled"), None).is_transient());
        let denied = ProtectionError::from_code(Some(403), Some("AccessDeniedException"), Some("no"));
        assert!(!denied.is_transient());
        assert_eq!(denied.code(), "AccessDeniedException");
        assert_eq!(denied.to_string(), "ECS rejected the protection call with AccessDeniedException (HTTP 403): no");
        let blocked = ProtectionError::refusal(Some("DEPLOYMENT_BLOCKED".into()), None);
        assert!(blocked.is_deployment_blocked());
        assert!(blocked.to_string().contains("DEPLOYMENT_BLOCKED"));
        let invalid = ProtectionError::refusal(Some("TASK_NOT_VALID".into()), Some("standalone".into()));
        assert_eq!(invalid.code(), "TASK_NOT_VALID");
        assert_eq!(invalid.to_string(), "ECS refused scale-in protection: TASK_NOT_VALID: standalone");
    }
}
