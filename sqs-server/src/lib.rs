//! A local SQS server: holdfast's embedded queue ([`holdfast::MemoryQueue`]) served over the
//! SQS wire protocol that current AWS SDKs and the AWS CLI speak (AWS JSON 1.0: `POST /` with
//! `X-Amz-Target: AmazonSQS.<Action>`). For trying a worker by hand and for tests; it keeps
//! everything in memory, checks no signature and serves no other protocol.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let server = holdfast_sqs_server::SqsServer::new(holdfast_sqs_server::Options::default());
//! server.create_queue("jobs").expect("a valid name");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9324").await?;
//! server.serve(listener).await
//! # }
//! ```

mod digest;
mod error;
mod input;
mod messages;
mod queues;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use error::{ApiError, SERIALIZATION, UNKNOWN_OPERATION, UNSUPPORTED_OPERATION};
use input::Input;
use queues::Registry;
use stats::Stats;

/// The largest request body read: ten 1 MiB messages, JSON-escaped.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// SQS actions this server knows of but does not serve.
const UNSERVED: [&str; 11] = [
    "AddPermission",
    "RemovePermission",
    "TagQueue",
    "UntagQueue",
    "ListQueueTags",
    "ListDeadLetterSourceQueues",
    "StartMessageMoveTask",
    "CancelMessageMoveTask",
    "ListMessageMoveTasks",
    "CreateQueueFromTemplate",
    "GetQueueArn",
];

/// Where the server says its queues live.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The region in queue ARNs (default `us-east-1`).
    pub region: String,
    /// The account id in queue URLs and ARNs (default `000000000000`).
    pub account: String,
}

impl Default for Options {
    fn default() -> Self {
        Self { region: "us-east-1".into(), account: "000000000000".into() }
    }
}

/// The server: its queues and the HTTP service that serves them. Cheap to clone; clones
/// share the queues.
#[derive(Debug, Clone)]
pub struct SqsServer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    registry: Registry,
    requests: AtomicU64,
    stats: Stats,
}

/// A queue name the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidQueue(String);

impl std::fmt::Display for InvalidQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidQueue {}

impl SqsServer {
    /// A server with no queues.
    pub fn new(options: Options) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry: Registry::new(options.region, options.account),
                requests: AtomicU64::new(0),
                stats: Stats::new(),
            }),
        }
    }

    /// Creates a queue (a FIFO queue when the name ends in `.fifo`, with content-based
    /// deduplication) as `CreateQueue` would; returns its path, `/ACCOUNT/NAME`.
    ///
    /// # Errors
    ///
    /// The name is not a valid SQS queue name.
    pub fn create_queue(&self, name: &str) -> Result<String, InvalidQueue> {
        let attributes: &[(&str, &str)] =
            if name.ends_with(".fifo") { &[("FifoQueue", "true"), ("ContentBasedDeduplication", "true")] } else { &[] };
        let registry = &self.shared.registry;
        registry.create(name, attributes).map_err(|e| InvalidQueue(format!("queue {name:?}: {}", e.message)))?;
        Ok(registry.url("", name))
    }

    /// The HTTP service: every path answers; `POST` carries SQS calls, `GET /__stats` gives
    /// the requests counted by action and each queue's message count (JSON), any other `GET`
    /// says what this is.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until the process ends, keeping connections alive between
    /// requests.
    ///
    /// # Errors
    ///
    /// Accepting connections failed.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = shared.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("00000000-0000-4000-8000-{n:012x}");
    let mut response = if method == Method::POST {
        let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
        let action = target.and_then(|t| t.strip_prefix("AmazonSQS.")).unwrap_or_default();
        shared.stats.count(action);
        let answer = match target {
            None if is_query_protocol(&headers, &body) => Err(ApiError::new(
                UNKNOWN_OPERATION,
                "holdfast-sqs-server serves only the AWS JSON 1.0 protocol (X-Amz-Target: AmazonSQS.<Action>), \
                 not the query protocol: use a current AWS SDK or AWS CLI",
            )),
            _ => call(&shared, &headers, action, &body).await,
        };
        match answer {
            Ok(value) => {
                tracing::debug!(action, "answered");
                json_response(StatusCode::OK, &value)
            }
            Err(error) => {
                tracing::debug!(action, code = error.kind.code, "refused");
                let mut r = json_response(error.status(), &error.body());
                if let Ok(v) = HeaderValue::from_str(&error.query_error()) {
                    r.headers_mut().insert("x-amzn-query-error", v);
                }
                r
            }
        }
    } else if uri.path() == "/__stats" {
        json_response(StatusCode::OK, &shared.stats.to_json(shared.registry.depths()))
    } else {
        (StatusCode::OK, "holdfast-sqs-server: POST SQS calls (AWS JSON 1.0) here\n").into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}

fn is_query_protocol(headers: &HeaderMap, body: &[u8]) -> bool {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    form || body.starts_with(b"Action=")
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, "application/x-amz-json-1.0")], body).into_response()
}

async fn call(shared: &Shared, headers: &HeaderMap, action: &str, body: &[u8]) -> Result<Value, ApiError> {
    let known = queues::ACTIONS.contains(&action) || messages::ACTIONS.contains(&action);
    if !known {
        if UNSERVED.contains(&action) {
            return Err(ApiError::new(UNSUPPORTED_OPERATION, format!("holdfast-sqs-server does not serve {action}.")));
        }
        let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("(none)");
        return Err(ApiError::new(UNKNOWN_OPERATION, format!("Unknown operation: X-Amz-Target {target}")));
    }
    let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::new(SERIALIZATION, format!("The request body is not valid JSON: {e}")))?
    };
    let Value::Object(map) = &parsed else {
        return Err(ApiError::new(SERIALIZATION, "The request body must be a JSON object."));
    };
    let input = Input(map);
    let registry = &shared.registry;
    if queues::ACTIONS.contains(&action) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
        return queues::call(registry, &format!("http://{host}"), action, &input);
    }
    let entry = registry.by_url(input.required_str("QueueUrl")?)?;
    messages::call(&entry, &registry.account, action, &input).await
}
