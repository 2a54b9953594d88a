//! The ECS agent endpoint: `PUT`/`GET ${ECS_AGENT_URI}/task-protection/v1/state`.
//!
//! The agent answers HTTP 200 both when ECS protected the task (`protection` body) and when
//! ECS refused (`failure` body, such as `DEPLOYMENT_BLOCKED`), so success is judged from the
//! body. Errors come as an `error` body with a 4xx/5xx status.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::backend::{Backend, CALL_TIMEOUT};
use super::state::{ProtectionError, RemoteProtection};

pub(crate) struct AgentBackend {
    client: reqwest::Client,
    url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutState {
    protection_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_minutes: Option<u32>,
}

#[derive(Deserialize)]
struct Envelope {
    protection: Option<AgentProtection>,
    failure: Option<AgentFailure>,
    error: Option<AgentError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentProtection {
    expiration_date: Option<String>,
    protection_enabled: bool,
    task_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentFailure {
    detail: Option<String>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentError {
    code: Option<String>,
    message: Option<String>,
}

impl AgentBackend {
    pub(crate) fn new(agent_uri: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the ECS agent: {e}"))?;
        Ok(Self { client, url: format!("{}/task-protection/v1/state", agent_uri.trim_end_matches('/')) })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<AgentProtection, ProtectionError> {
        let unreachable =
            |e: reqwest::Error| ProtectionError::Unavailable { message: format!("ECS agent at {}: {e}", self.url) };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(unreachable)?;
        classify(status, &text)
    }

    async fn put(&self, body: PutState) -> Result<(), ProtectionError> {
        let wanted = body.protection_enabled;
        let protection = self.send(self.client.put(&self.url).json(&body)).await?;
        if protection.protection_enabled != wanted {
            return Err(ProtectionError::Rejected {
                status: Some(200),
                code: "UnexpectedResponse".into(),
                message: format!(
                    "asked for ProtectionEnabled={wanted}, the agent answered ProtectionEnabled={}",
                    protection.protection_enabled
                ),
            });
        }
        Ok(())
    }
}

fn classify(status: u16, text: &str) -> Result<AgentProtection, ProtectionError> {
    if let Ok(envelope) = serde_json::from_str::<Envelope>(text) {
        if let Some(failure) = envelope.failure {
            return Err(ProtectionError::refusal(failure.reason, failure.detail));
        }
        if let Some(error) = envelope.error {
            return Err(ProtectionError::from_code(Some(status), error.code.as_deref(), error.message.as_deref()));
        }
        if let (200, Some(protection)) = (status, envelope.protection) {
            return Ok(protection);
        }
    }
    let excerpt: String = text.chars().take(200).collect();
    match status {
        200 => {
            Err(ProtectionError::Unavailable { message: format!("unexpected response from the ECS agent: {excerpt}") })
        }
        _ => Err(ProtectionError::from_code(Some(status), None, Some(&excerpt))),
    }
}

#[async_trait]
impl Backend for AgentBackend {
    async fn protect(&self, minutes: u32) -> Result<(), ProtectionError> {
        self.put(PutState { protection_enabled: true, expires_in_minutes: Some(minutes) }).await
    }

    async fn release(&self) -> Result<(), ProtectionError> {
        self.put(PutState { protection_enabled: false, expires_in_minutes: None }).await
    }

    async fn status(&self) -> Result<RemoteProtection, ProtectionError> {
        let p = self.send(self.client.get(&self.url)).await?;
        Ok(RemoteProtection { enabled: p.protection_enabled, expiration_date: p.expiration_date, task_arn: p.task_arn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_are_exactly_the_contract() {
        let on = PutState { protection_enabled: true, expires_in_minutes: Some(60) };
        assert_eq!(serde_json::to_string(&on).unwrap(), r#"{"ProtectionEnabled":true,"ExpiresInMinutes":60}"#);
        let off = PutState { protection_enabled: false, expires_in_minutes: None };
        assert_eq!(serde_json::to_string(&off).unwrap(), r#"{"ProtectionEnabled":false}"#);
    }

    #[test]
    fn success_is_judged_from_the_body() {
        let ok =
            r#"{"protection":{"ExpirationDate":"2022-10-06T02:29:16Z","ProtectionEnabled":true,"TaskArn":"arn:x"}}"#;
        let p = classify(200, ok).unwrap();
        assert!(p.protection_enabled);
        assert_eq!(p.expiration_date.as_deref(), Some("2022-10-06T02:29:16Z"));
        let unprotected = r#"{"protection":{"ExpirationDate":null,"ProtectionEnabled":false,"TaskArn":"arn:x"}}"#;
        assert!(!classify(200, unprotected).unwrap().protection_enabled);
        let failure = r#"{"failure":{"Arn":"arn:x","Detail":null,"Reason":"DEPLOYMENT_BLOCKED"}}"#;
        assert!(classify(200, failure).unwrap_err().is_deployment_blocked());
        let invalid = r#"{"failure":{"Arn":"arn:x","Detail":"not in a service","Reason":"TASK_NOT_VALID"}}"#;
        assert_eq!(classify(200, invalid).unwrap_err().code(), "TASK_NOT_VALID");
        assert!(classify(200, "{}").unwrap_err().is_transient());
    }

    #[test]
    fn errors_are_classified() {
        let body =
            |code: &str| format!(r#"{{"requestID":"r","error":{{"Arn":"arn:x","Code":"{code}","Message":"m"}}}}"#);
        assert!(matches!(
            classify(400, &body("InvalidParameterException")).unwrap_err(),
            ProtectionError::Rejected { status: Some(400), .. }
        ));
        assert_eq!(classify(403, &body("AccessDeniedException")).unwrap_err().code(), "AccessDeniedException");
        assert!(classify(500, &body("ServerException")).unwrap_err().is_transient());
        assert!(classify(504, &body("RequestCanceled")).unwrap_err().is_transient());
        assert!(matches!(classify(400, &body("ThrottlingException")).unwrap_err(), ProtectionError::Throttled { .. }));
        assert!(classify(502, "<html>bad gateway</html>").unwrap_err().is_transient());
    }
}
