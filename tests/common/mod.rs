//! Shared test set-up: the same behaviour tests run against the embedded queue and against a
//! real SQS-compatible server. `HOLDFAST_TEST_SQS_ENDPOINT` is the one switch that picks the
//! server: `scripts/test.sh` runs the tests against moto, then again against
//! holdfast-sqs-server (`source scripts/sqs-server.sh; sqs_server_start --as-test-server`).
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use holdfast::{Config, MemoryQueue, OutgoingMessage, Queue};

/// The variable `scripts/test.sh` sets to the local SQS server's address.
pub const ENDPOINT_VARIABLE: &str = "HOLDFAST_TEST_SQS_ENDPOINT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqs,
}

/// Where the local SQS server listens. Tests that need it fail, loudly, without it.
pub fn endpoint() -> String {
    std::env::var(ENDPOINT_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{ENDPOINT_VARIABLE} is not set: these tests need the local SQS server. \
             Run `scripts/test.sh`, which installs and starts it."
        )
    })
}

pub fn sqs_client() -> aws_sdk_sqs::Client {
    sqs_client_at(&endpoint())
}

/// A client of the local SQS server's kind (test credentials, us-east-1) at `endpoint`.
pub fn sqs_client_at(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "holdfast-tests"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

static NEXT: AtomicU64 = AtomicU64::new(0);

pub fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The queue's own visibility timeout.
    pub visibility: Option<Duration>,
    /// Redrive to a fresh dead-letter queue after this many receives.
    pub max_receives: Option<u32>,
    /// A dead-letter queue without redrive: the worker sends to it itself.
    pub dead_letter: bool,
    pub fifo: bool,
}

/// A fresh queue (and dead-letter queue) on one backend.
pub struct TestQueue {
    pub backend: Backend,
    pub queue: Queue,
    pub dlq: Option<Queue>,
    memory: Option<(MemoryQueue, Option<MemoryQueue>)>,
    client: Option<aws_sdk_sqs::Client>,
}

impl TestQueue {
    pub async fn new(backend: Backend, name: &str, options: Options) -> Self {
        let name = unique(name);
        let name = if options.fifo { format!("{name}.fifo") } else { name };
        match backend {
            Backend::Memory => {
                let dlq = (options.max_receives.is_some() || options.dead_letter).then(|| {
                    let b = MemoryQueue::builder(format!("{name}-dlq"));
                    if options.fifo { b.fifo().build() } else { b.build() }
                });
                let mut builder = MemoryQueue::builder(&name);
                if options.fifo {
                    builder = builder.fifo();
                }
                if let Some(v) = options.visibility {
                    builder = builder.visibility_timeout(v);
                }
                if let (Some(max), Some(dlq)) = (options.max_receives, &dlq) {
                    builder = builder.redrive(dlq, max);
                }
                let main = builder.build();
                TestQueue {
                    backend,
                    queue: Queue::memory(&main),
                    dlq: dlq.as_ref().map(Queue::memory),
                    memory: Some((main, dlq)),
                    client: None,
                }
            }
            Backend::Sqs => {
                let client = sqs_client();
                let mut dlq_url = None;
                let mut attributes = HashMap::new();
                if options.fifo {
                    attributes.insert(QueueAttributeName::FifoQueue, "true".to_owned());
                    attributes.insert(QueueAttributeName::ContentBasedDeduplication, "true".to_owned());
                }
                if let Some(v) = options.visibility {
                    attributes.insert(QueueAttributeName::VisibilityTimeout, v.as_secs().to_string());
                }
                if options.max_receives.is_some() || options.dead_letter {
                    let dlq_name = if options.fifo {
                        format!("{}-dlq.fifo", name.trim_end_matches(".fifo"))
                    } else {
                        format!("{name}-dlq")
                    };
                    let mut dlq_attributes = HashMap::new();
                    if options.fifo {
                        dlq_attributes.insert(QueueAttributeName::FifoQueue, "true".to_owned());
                        dlq_attributes.insert(QueueAttributeName::ContentBasedDeduplication, "true".to_owned());
                    }
                    let url = client
                        .create_queue()
                        .queue_name(dlq_name)
                        .set_attributes(Some(dlq_attributes))
                        .send()
                        .await
                        .expect("create DLQ")
                        .queue_url
                        .unwrap();
                    let arn = client
                        .get_queue_attributes()
                        .queue_url(&url)
                        .attribute_names(QueueAttributeName::QueueArn)
                        .send()
                        .await
                        .expect("DLQ arn")
                        .attributes
                        .unwrap()
                        .remove(&QueueAttributeName::QueueArn)
                        .unwrap();
                    if let Some(max) = options.max_receives {
                        attributes.insert(
                            QueueAttributeName::RedrivePolicy,
                            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max}"}}"#),
                        );
                    }
                    dlq_url = Some(url);
                }
                let url = client
                    .create_queue()
                    .queue_name(&name)
                    .set_attributes(Some(attributes))
                    .send()
                    .await
                    .expect("create queue")
                    .queue_url
                    .unwrap();
                TestQueue {
                    backend,
                    queue: Queue::sqs(client.clone(), url),
                    dlq: dlq_url.map(|u| Queue::sqs(client.clone(), u)),
                    memory: None,
                    client: Some(client),
                }
            }
        }
    }

    pub async fn send(&self, body: &str) -> String {
        self.queue.send(OutgoingMessage::new(body)).await.expect("send")
    }

    /// Messages visible now, and messages in flight (`ApproximateNumberOfMessages*`).
    pub async fn counts(&self) -> (usize, usize) {
        match (&self.memory, &self.client) {
            (Some((m, _)), _) => (m.visible_len(), m.in_flight_len()),
            (None, Some(client)) => {
                let attrs = client
                    .get_queue_attributes()
                    .queue_url(self.queue.url())
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .send()
                    .await
                    .expect("queue attributes")
                    .attributes
                    .unwrap_or_default();
                let get = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
                (
                    get(QueueAttributeName::ApproximateNumberOfMessages),
                    get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
                )
            }
            _ => unreachable!(),
        }
    }

    /// Messages waiting in the dead-letter queue: body and message attributes (as text).
    pub async fn dead_letter_messages(&self) -> Vec<(String, HashMap<String, String>)> {
        let text = |a: &holdfast::MessageAttribute| a.as_str().map(str::to_owned).unwrap_or_default();
        match (&self.memory, &self.client) {
            (Some((_, Some(dlq))), _) => dlq
                .messages()
                .iter()
                .map(|m| {
                    (m.body().to_owned(), m.message_attributes().iter().map(|(k, v)| (k.clone(), text(v))).collect())
                })
                .collect(),
            (None, Some(client)) => {
                let url = self.dlq.as_ref().expect("no DLQ").url().to_owned();
                let out = client
                    .receive_message()
                    .queue_url(url)
                    .max_number_of_messages(10)
                    .visibility_timeout(0)
                    .message_attribute_names("All")
                    .send()
                    .await
                    .expect("receive DLQ");
                out.messages
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| {
                        let attributes = m
                            .message_attributes
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.string_value.unwrap_or_default()))
                            .collect();
                        (m.body.unwrap_or_default(), attributes)
                    })
                    .collect()
            }
            _ => panic!("no DLQ"),
        }
    }

    /// Bodies waiting in the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<String> {
        self.dead_letter_messages().await.into_iter().map(|(body, _)| body).collect()
    }

    /// A config for a worker on this queue, tuned for fast tests.
    pub fn config(&self) -> Config {
        let mut config = Config::default();
        config.queue_url = Some(self.queue.url().to_owned());
        config.wait_time = Duration::from_secs(1);
        config.visibility_timeout = Duration::from_secs(4);
        config.heartbeat_interval = Duration::from_millis(500);
        config.backoff_min = Duration::from_secs(2);
        config.backoff_max = Duration::from_secs(2);
        config.drain_timeout = Duration::from_secs(10);
        // moto loses deletes made concurrently (see DESIGN.md): one batch request at a time.
        config.ack_concurrency = 1;
        config
    }
}

/// Every handler call, by message body, with its receive count.
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<(String, u32)>>>);

impl Calls {
    pub fn record(&self, body: &str, receive_count: u32) {
        self.0.lock().unwrap().push((body.to_owned(), receive_count));
    }
    pub fn all(&self) -> Vec<(String, u32)> {
        self.0.lock().unwrap().clone()
    }
    pub fn count(&self, body: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|(b, _)| b == body).count()
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Runs `worker` in the background; returns its join handle and the trigger that stops it.
pub fn start(
    worker: holdfast::Worker,
) -> (tokio::task::JoinHandle<Result<holdfast::Summary, holdfast::Error>>, Arc<tokio::sync::Notify>) {
    let stop = Arc::new(tokio::sync::Notify::new());
    let signal = stop.clone();
    let handle = tokio::spawn(worker.run_until(async move { signal.notified().await }));
    (handle, stop)
}

/// Instantiates each named `async fn(Backend)` as a test on the embedded queue (`memory::`)
/// and on the local SQS server (`sqs::`).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::common::init_tracing();
                    super::$name(super::Backend::Memory).await;
                }
            )*
        }
        mod sqs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::common::init_tracing();
                    super::$name(super::Backend::Sqs).await;
                }
            )*
        }
    };
}
