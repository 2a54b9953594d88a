//! A local fake of the ECS task-protection surfaces, speaking their exact wire formats:
//!
//! - the ECS agent endpoint: `PUT`/`GET {agent_uri}/task-protection/v1/state`, success and
//!   `failure` bodies with HTTP 200, `error` bodies with 4xx/5xx, 400 on an unknown field;
//! - the task metadata endpoint v4: `GET {metadata_uri}/task` with `Cluster`, `TaskARN`,
//!   `Family`, `Revision` and (unless removed) `ServiceName`;
//! - the ECS API over awsJson1_1: `UpdateTaskProtection` / `GetTaskProtection` selected by
//!   `X-Amz-Target`, `protectedTasks`/`failures` in the answer, `__type` errors; and
//!   `DescribeServices`, whose `services[].deployments[]` hold a `PRIMARY` deployment (the
//!   revision set with [`FakeEcs::deploy`]) and the `ACTIVE` ones it replaced, with
//!   `failures[]` (`MISSING`) for a service it does not know.
//!
//! Scriptable: queue replies for the next state-changing calls (`PUT` or
//! `UpdateTaskProtection`), or set the reply used when the queue is empty; every call is
//! recorded. Also served to other processes: `POST /_fake/replies` with a JSON list of
//! replies queues them, `PUT /_fake/default` sets the default, `GET /_fake/calls` lists calls,
//! `PUT /_fake/primary` with a revision number makes a new deployment primary.
//! Binds 127.0.0.1 only.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub(crate) const CLUSTER: &str = "arn:aws:ecs:eu-west-1:123456789012:cluster/holdfast";
pub(crate) const TASK_ARN: &str = "arn:aws:ecs:eu-west-1:123456789012:task/holdfast/0123456789abcdef0123456789abcdef";
const UPDATE_TARGET: &str = "AmazonEC2ContainerServiceV20141113.UpdateTaskProtection";
const GET_TARGET: &str = "AmazonEC2ContainerServiceV20141113.GetTaskProtection";
const DESCRIBE_SERVICES_TARGET: &str = "AmazonEC2ContainerServiceV20141113.DescribeServices";
pub(crate) const SERVICE_NAME: &str = "holdfast-worker-svc";
pub(crate) const FAMILY: &str = "holdfast-worker";
const ACCOUNT_PREFIX: &str = "arn:aws:ecs:eu-west-1:123456789012";

/// How the next state-changing call is answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum Reply {
    /// Do what was asked.
    Success,
    /// ECS refuses: HTTP 200 with a `failure` body (agent) or `failures[]` (API).
    Failure { reason: String },
    /// An error with this status and code, such as 403 `AccessDeniedException`.
    Error { status: u16, code: String },
    /// `ThrottlingException`.
    Throttle,
    /// Succeed after this many milliseconds.
    Slow { millis: u64 },
}

impl Reply {
    pub(crate) fn failure(reason: &str) -> Self {
        Reply::Failure { reason: reason.into() }
    }
    pub(crate) fn error(status: u16, code: &str) -> Self {
        Reply::Error { status, code: code.into() }
    }
}

/// Which surface a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Surface {
    Agent,
    Api,
}

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Call {
    pub(crate) surface: Surface,
    /// `PUT`/`GET` for the agent, the operation name for the API.
    pub(crate) operation: String,
    /// For state changes: what was asked.
    pub(crate) enabled: Option<bool>,
    pub(crate) minutes: Option<u32>,
    /// The HTTP status answered.
    pub(crate) status: u16,
    /// The reason of a refusal or the code of an error, if any.
    pub(crate) outcome: Option<String>,
    /// Milliseconds since the fake started.
    pub(crate) at_ms: u64,
}

impl Call {
    /// A state-changing call (protect or release), whatever its answer.
    pub(crate) fn is_update(&self) -> bool {
        self.enabled.is_some()
    }
}

struct Inner {
    replies: VecDeque<Reply>,
    default: Reply,
    enabled: bool,
    expires_at: Option<SystemTime>,
    calls: Vec<Call>,
    started: std::time::Instant,
    request_id: u64,
    /// `ServiceName` in the task metadata (`None`: the key is absent).
    service_name: Option<String>,
    /// The task's own revision (`Revision` in the metadata).
    task_revision: u32,
    /// The service's deployments, newest (PRIMARY) last: (revision, created at).
    deployments: Vec<(u32, SystemTime)>,
}

/// A running fake. Stops when dropped or with [`FakeEcs::stop`].
pub(crate) struct FakeEcs {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

impl Drop for FakeEcs {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeEcs {
    /// Serves on an ephemeral port of 127.0.0.1.
    pub(crate) async fn start() -> FakeEcs {
        Self::start_on(0).await.expect("bind 127.0.0.1")
    }

    /// Serves on `127.0.0.1:port` (0 for any free port).
    pub(crate) async fn start_on(port: u16) -> std::io::Result<FakeEcs> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner {
            replies: VecDeque::new(),
            default: Reply::Success,
            enabled: false,
            expires_at: None,
            calls: Vec::new(),
            started: std::time::Instant::now(),
            request_id: 0,
            service_name: Some(SERVICE_NAME.into()),
            task_revision: 1,
            deployments: vec![(1, SystemTime::now())],
        }));
        let stop = CancellationToken::new();
        let app = Router::new().fallback(route).with_state(inner.clone());
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
        });
        Ok(FakeEcs { addr, inner, stop })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// What ECS would put in `ECS_AGENT_URI`.
    pub(crate) fn agent_uri(&self) -> String {
        format!("http://{}/api/fake-container", self.addr)
    }
    /// What ECS would put in `ECS_CONTAINER_METADATA_URI_V4`.
    pub(crate) fn metadata_uri(&self) -> String {
        format!("http://{}/v4/fake-container", self.addr)
    }
    /// The endpoint URL for an ECS API client.
    pub(crate) fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Queues a reply for the next state-changing call.
    pub(crate) fn push(&self, reply: Reply) {
        self.inner.lock().unwrap().replies.push_back(reply);
    }
    /// The reply used when the queue is empty (initially [`Reply::Success`]).
    pub(crate) fn set_default(&self, reply: Reply) {
        self.inner.lock().unwrap().default = reply;
    }
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }
    /// The state-changing calls received.
    pub(crate) fn updates(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::is_update).collect()
    }
    /// Whether the fake task is protected now.
    pub(crate) fn is_protected(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.enabled && inner.expires_at.is_some_and(|t| t > SystemTime::now())
    }
    /// A new deployment of `revision` becomes the service's PRIMARY one; the earlier ones
    /// turn ACTIVE.
    pub(crate) fn deploy(&self, revision: u32) {
        self.inner.lock().unwrap().deployments.push((revision, SystemTime::now()));
    }
    /// Removes (`None`) or sets `ServiceName` in the task metadata.
    pub(crate) fn set_service_name(&self, name: Option<&str>) {
        self.inner.lock().unwrap().service_name = name.map(str::to_owned);
    }
    /// The `DescribeServices` calls received.
    pub(crate) fn describe_calls(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.operation == "DescribeServices").collect()
    }
    /// Milliseconds since the fake started, the clock of [`Call::at_ms`].
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.lock().unwrap().started.elapsed().as_millis() as u64
    }
    /// Stops serving; later connections are refused.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

type Shared = Arc<Mutex<Inner>>;

async fn route(State(inner): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path();
    if path.ends_with("/task-protection/v1/state") {
        return agent(&inner, &method, &body).await;
    }
    if path.starts_with("/v4/") && path.ends_with("/task") && method == Method::GET {
        return metadata(&inner);
    }
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return api(&inner, target, &body).await;
    }
    match (method, path) {
        (Method::POST, "/_fake/replies") => match serde_json::from_slice::<Vec<Reply>>(&body) {
            Ok(replies) => {
                inner.lock().unwrap().replies.extend(replies);
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        },
        (Method::PUT, "/_fake/default") => match serde_json::from_slice::<Reply>(&body) {
            Ok(reply) => {
                inner.lock().unwrap().default = reply;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        },
        (Method::GET, "/_fake/calls") => axum::Json(inner.lock().unwrap().calls.clone()).into_response(),
        (Method::PUT, "/_fake/primary") => match std::str::from_utf8(&body).ok().and_then(|b| b.trim().parse().ok()) {
            Some(revision) => {
                inner.lock().unwrap().deployments.push((revision, SystemTime::now()));
                StatusCode::NO_CONTENT.into_response()
            }
            None => (StatusCode::BAD_REQUEST, "a revision number").into_response(),
        },
        _ => (StatusCode::NOT_FOUND, "not a path the fake ECS serves").into_response(),
    }
}

fn metadata(inner: &Shared) -> Response {
    let inner = inner.lock().unwrap();
    let mut body = json!({
        "Cluster": CLUSTER,
        "TaskARN": TASK_ARN,
        "Family": FAMILY,
        "Revision": inner.task_revision.to_string(),
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "LaunchType": "FARGATE",
        "AvailabilityZone": "eu-west-1a"
    });
    if let Some(name) = &inner.service_name {
        body["ServiceName"] = json!(name);
    }
    axum::Json(body).into_response()
}

/// `DescribeServices`: `{"cluster": "...", "services": ["name or ARN", ...]}` (1 to 10).
fn describe_services(inner: &Shared, request: &Value) -> Response {
    let Some(names) = request.get("services").and_then(Value::as_array) else {
        return api_error(400, "InvalidParameterException", "services is required");
    };
    if names.is_empty() || names.len() > 10 {
        return api_error(400, "InvalidParameterException", "services must hold 1 to 10 names");
    }
    let cluster = request.get("cluster").and_then(Value::as_str).unwrap_or("default");
    if cluster != CLUSTER && cluster != "holdfast" {
        return api_error(400, "ClusterNotFoundException", "Cluster not found.");
    }
    let mut guard = inner.lock().unwrap();
    let service_arn = format!("{ACCOUNT_PREFIX}:service/holdfast/{SERVICE_NAME}");
    let (mut services, mut failures) = (Vec::new(), Vec::new());
    for name in names.iter().filter_map(Value::as_str) {
        if name != SERVICE_NAME && name != service_arn {
            failures.push(json!({ "arn": format!("{ACCOUNT_PREFIX}:service/holdfast/{name}"), "reason": "MISSING" }));
            continue;
        }
        let last = guard.deployments.len() - 1;
        let deployments: Vec<Value> = guard
            .deployments
            .iter()
            .enumerate()
            .rev()
            .map(|(i, (revision, at))| {
                json!({
                    "id": format!("ecs-svc/{:019}", 1000 + i),
                    "status": if i == last { "PRIMARY" } else { "ACTIVE" },
                    "taskDefinition": format!("{ACCOUNT_PREFIX}:task-definition/{FAMILY}:{revision}"),
                    "desiredCount": if i == last { 1 } else { 0 },
                    "pendingCount": 0,
                    "runningCount": 1,
                    "failedTasks": 0,
                    "createdAt": at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64(),
                    "updatedAt": at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64(),
                    "launchType": "FARGATE",
                    "rolloutState": if i == last { "IN_PROGRESS" } else { "COMPLETED" },
                    "rolloutStateReason": "ECS deployment in progress.",
                })
            })
            .collect();
        let primary = guard.deployments[last].0;
        services.push(json!({
            "serviceArn": service_arn,
            "serviceName": SERVICE_NAME,
            "clusterArn": CLUSTER,
            "status": "ACTIVE",
            "desiredCount": 1,
            "runningCount": guard.deployments.len(),
            "pendingCount": 0,
            "launchType": "FARGATE",
            "taskDefinition": format!("{ACCOUNT_PREFIX}:task-definition/{FAMILY}:{primary}"),
            "deployments": deployments,
        }));
    }
    record(&mut guard, Surface::Api, "DescribeServices", None, None, 200, None);
    api_json(json!({ "services": services, "failures": failures }))
}

/// A request to change the state, once validated.
struct Update {
    enabled: bool,
    minutes: Option<u32>,
}

enum Answer {
    Done { enabled: bool, expires_at: Option<SystemTime> },
    Refused(String),
    Failed { status: u16, code: String },
}

/// Applies the next scripted reply to an update and records the call.
async fn apply(inner: &Shared, surface: Surface, operation: &str, update: &Update) -> Answer {
    let reply = {
        let mut inner = inner.lock().unwrap();
        let default = inner.default.clone();
        inner.replies.pop_front().unwrap_or(default)
    };
    if let Reply::Slow { millis } = reply {
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
    let mut inner = inner.lock().unwrap();
    let answer = match reply {
        Reply::Success | Reply::Slow { .. } => {
            inner.enabled = update.enabled;
            inner.expires_at = update
                .enabled
                .then(|| SystemTime::now() + Duration::from_secs(60 * u64::from(update.minutes.unwrap_or(120))));
            Answer::Done { enabled: inner.enabled, expires_at: inner.expires_at }
        }
        Reply::Failure { reason } => Answer::Refused(reason),
        Reply::Error { status, code } => Answer::Failed { status, code },
        Reply::Throttle => Answer::Failed { status: 400, code: "ThrottlingException".into() },
    };
    let (status, outcome) = match &answer {
        Answer::Done { .. } => (200, None),
        Answer::Refused(reason) => (200, Some(reason.clone())),
        Answer::Failed { status, code } => (*status, Some(code.clone())),
    };
    record(&mut inner, surface, operation, Some(update.enabled), update.minutes, status, outcome);
    answer
}

fn record(
    inner: &mut Inner,
    surface: Surface,
    operation: &str,
    enabled: Option<bool>,
    minutes: Option<u32>,
    status: u16,
    outcome: Option<String>,
) {
    let at_ms = inner.started.elapsed().as_millis() as u64;
    inner.calls.push(Call { surface, operation: operation.into(), enabled, minutes, status, outcome, at_ms });
}

// ---- the ECS agent endpoint -------------------------------------------------------------

async fn agent(inner: &Shared, method: &Method, body: &[u8]) -> Response {
    match *method {
        Method::GET => {
            let mut guard = inner.lock().unwrap();
            let (enabled, expires_at) = current(&guard);
            record(&mut guard, Surface::Agent, "GET", None, None, 200, None);
            agent_json(StatusCode::OK, json!({ "protection": agent_protection(enabled, expires_at) }))
        }
        Method::PUT => {
            let update = match parse_agent_put(body) {
                Ok(update) => update,
                Err(message) => {
                    let mut guard = inner.lock().unwrap();
                    record(
                        &mut guard,
                        Surface::Agent,
                        "PUT",
                        None,
                        None,
                        400,
                        Some("InvalidParameterException".into()),
                    );
                    let id = next_id(&mut guard);
                    return agent_error(400, "InvalidParameterException", &message, id);
                }
            };
            match apply(inner, Surface::Agent, "PUT", &update).await {
                Answer::Done { enabled, expires_at } => {
                    agent_json(StatusCode::OK, json!({ "protection": agent_protection(enabled, expires_at) }))
                }
                Answer::Refused(reason) => agent_json(
                    StatusCode::OK,
                    json!({ "failure": { "Arn": TASK_ARN, "Detail": Value::Null, "Reason": reason } }),
                ),
                Answer::Failed { status, code } => {
                    let id = next_id(&mut inner.lock().unwrap());
                    agent_error(status, &code, &message_for(&code), id)
                }
            }
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "").into_response(),
    }
}

/// Validates a PUT body as the agent does: known fields only, types checked.
fn parse_agent_put(body: &[u8]) -> Result<Update, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("Invalid request: {e}"))?;
    let object = value.as_object().ok_or("Invalid request: the body is not an object")?;
    if let Some(field) = object.keys().find(|k| *k != "ProtectionEnabled" && *k != "ExpiresInMinutes") {
        return Err(format!("Invalid request: json: unknown field \"{field}\""));
    }
    let enabled = object
        .get("ProtectionEnabled")
        .and_then(Value::as_bool)
        .ok_or("Invalid request: does not contain 'ProtectionEnabled' field")?;
    let minutes = match object.get("ExpiresInMinutes") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(m @ 1..=2880) => Some(m as u32),
            _ => return Err("Invalid request: ExpiresInMinutes must be between 1 and 2880".into()),
        },
    };
    Ok(Update { enabled, minutes })
}

fn current(inner: &Inner) -> (bool, Option<SystemTime>) {
    let live = inner.enabled && inner.expires_at.is_some_and(|t| t > SystemTime::now());
    (live, inner.expires_at.filter(|_| live))
}

fn agent_protection(enabled: bool, expires_at: Option<SystemTime>) -> Value {
    json!({
        "ExpirationDate": expires_at.map(rfc3339),
        "ProtectionEnabled": enabled,
        "TaskArn": TASK_ARN,
    })
}

fn agent_json(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn agent_error(status: u16, code: &str, message: &str, request_id: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    agent_json(
        status,
        json!({ "requestID": request_id, "error": { "Arn": TASK_ARN, "Code": code, "Message": message } }),
    )
}

fn next_id(inner: &mut Inner) -> String {
    inner.request_id += 1;
    format!("00000000-0000-4000-8000-{:012x}", inner.request_id)
}

fn message_for(code: &str) -> String {
    match code {
        "AccessDeniedException" => "User is not authorized to perform: ecs:UpdateTaskProtection".into(),
        "ThrottlingException" => "Rate exceeded".into(),
        "RequestCanceled" => "Timed out calling Amazon ECS Task Protection API".into(),
        "ServerException" => "Internal server error".into(),
        _ => format!("{code} from the fake"),
    }
}

// ---- the ECS API (awsJson1_1) -----------------------------------------------------------

async fn api(inner: &Shared, target: &str, body: &[u8]) -> Response {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return api_error(400, "SerializationException", &e.to_string()),
    };
    if target == DESCRIBE_SERVICES_TARGET {
        return describe_services(inner, &request);
    }
    let tasks: Vec<String> = request
        .get("tasks")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if request.get("cluster").and_then(Value::as_str).is_none() || tasks.is_empty() || tasks.len() > 10 {
        return api_error(400, "InvalidParameterException", "cluster and 1 to 10 tasks are required");
    }
    match target {
        UPDATE_TARGET => {
            let Some(enabled) = request.get("protectionEnabled").and_then(Value::as_bool) else {
                return api_error(400, "InvalidParameterException", "protectionEnabled is required");
            };
            let minutes = request.get("expiresInMinutes").and_then(Value::as_u64).map(|m| m as u32);
            if minutes.is_some_and(|m| !(1..=2880).contains(&m)) {
                return api_error(400, "InvalidParameterException", "expiresInMinutes must be between 1 and 2880");
            }
            if tasks.iter().any(|t| t != TASK_ARN) {
                return api_json(json!({
                    "protectedTasks": [],
                    "failures": tasks.iter().filter(|t| *t != TASK_ARN)
                        .map(|t| json!({ "arn": t, "reason": "MISSING" })).collect::<Vec<_>>(),
                }));
            }
            match apply(inner, Surface::Api, "UpdateTaskProtection", &Update { enabled, minutes }).await {
                Answer::Done { enabled, expires_at } => api_json(json!({
                    "protectedTasks": [api_task(enabled, expires_at)],
                    "failures": [],
                })),
                Answer::Refused(reason) => api_json(json!({
                    "protectedTasks": [],
                    "failures": [{ "arn": TASK_ARN, "reason": reason }],
                })),
                Answer::Failed { status, code } => api_error(status, &code, &message_for(&code)),
            }
        }
        GET_TARGET => {
            let mut guard = inner.lock().unwrap();
            let (enabled, expires_at) = current(&guard);
            record(&mut guard, Surface::Api, "GetTaskProtection", None, None, 200, None);
            api_json(json!({ "protectedTasks": [api_task(enabled, expires_at)], "failures": [] }))
        }
        other => api_error(400, "UnknownOperationException", &format!("the fake does not serve {other}")),
    }
}

fn api_task(enabled: bool, expires_at: Option<SystemTime>) -> Value {
    let mut task = json!({ "taskArn": TASK_ARN, "protectionEnabled": enabled });
    if let Some(t) = expires_at {
        task["expirationDate"] = json!(t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64());
    }
    task
}

fn api_json(body: Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-amz-json-1.1")], body.to_string()).into_response()
}

fn api_error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/x-amz-json-1.1"),
            (header::HeaderName::from_static("x-amzn-errortype"), code),
        ],
        json!({ "__type": code, "message": message }).to_string(),
    )
        .into_response()
}

/// `2022-10-06T02:29:16Z`, as the agent writes `ExpirationDate`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
#[test]
fn dates_are_written_like_the_agent_writes_them() {
    assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_665_023_356)), "2022-10-06T02:29:16Z");
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
}
