//! What the worker writes in its logs about a message: never its content or receipt handle
//! unless `HOLDFAST_LOG_MESSAGE_CONTENT` is on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::queue::{BatchEntry, BatchFailure, MemoryQueue, OutgoingMessage, QueueBackend, QueueError, ReceiveRequest};
use crate::{BoxError, Config, Message, Outcome, Permanent, Queue, Worker, handler_fn};

/// The embedded queue, remembering every receipt handle it handed out.
struct Recording {
    inner: MemoryQueue,
    receipts: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl QueueBackend for Recording {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Message>, QueueError> {
        let messages = self.inner.receive(request).await?;
        self.receipts.lock().unwrap().extend(messages.iter().map(|m| m.receipt_handle.to_string()));
        Ok(messages)
    }
    async fn delete_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        self.inner.delete_batch(entries).await
    }
    async fn change_visibility_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        self.inner.change_visibility_batch(entries).await
    }
    async fn send(&self, message: &OutgoingMessage) -> Result<String, QueueError> {
        self.inner.send(message).await
    }
}

#[path = "../../tests/support/log_capture.rs"]
mod log_capture;

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Order {
    customer: String,
    amount: u64,
}

const SECRET: &str = "Ada Lovelace, 12 St James's Square";

/// Runs a worker at trace level over three messages: one whose body does not decode (the
/// README's `msg.json()?`), one whose handler wraps the decode error in `Permanent`, one
/// handled; the two failures go to the dead-letter queue. Returns every log line, the receipt
/// handles handed out and the dead-letter copies.
async fn run(log_content: bool) -> (String, Vec<String>, Vec<Message>) {
    let logs = log_capture::Capture::new(tracing::level_filters::LevelFilter::TRACE);
    let _capturing = logs.install();

    let memory = MemoryQueue::new("content");
    let receipts = Arc::new(Mutex::new(Vec::new()));
    let queue =
        Queue::from_backend(memory.url(), false, Recording { inner: memory.clone(), receipts: receipts.clone() });
    let dlq = MemoryQueue::new("content-dlq");
    let body = format!(r#"{{"customer":"{SECRET}","amount":"{SECRET}"}}"#);
    for kind in ["retry", "dead-letter", "fine"] {
        let body = if kind == "fine" { r#"{"customer":"x","amount":1}"#.to_owned() } else { body.clone() };
        queue.send(OutgoingMessage::new(body).attribute("kind", crate::MessageAttribute::string(kind))).await.unwrap();
    }
    let config = Config {
        wait_time: Duration::ZERO,
        backoff_min: Duration::from_secs(60),
        backoff_max: Duration::from_secs(60),
        log_message_content: log_content,
        ..Config::default()
    };
    let handler = handler_fn(|msg: Message, _ctx| async move {
        let kind = msg.message_attribute("kind").and_then(|a| a.as_str()).unwrap_or_default().to_owned();
        if kind == "dead-letter" {
            return match msg.json::<Order>() {
                Ok(_) => Ok(Outcome::Ack),
                Err(e) => Err(Permanent::new(e).into()),
            };
        }
        let _order: Order = msg.json()?;
        Ok::<_, BoxError>(Outcome::Ack)
    });
    let stopped = async {
        while memory.visible_len() > 0 || dlq.len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let summary = Worker::new(config)
        .queue(queue)
        .dead_letter_queue(Queue::memory(&dlq))
        .protection(crate::Protection::off())
        .handler(handler)
        .run_until(stopped)
        .await
        .unwrap();
    // a body that does not decode is not retryable: both go to the dead-letter queue
    assert_eq!((summary.succeeded, summary.dead_lettered), (1, 2), "{summary:?}");
    let text = logs.text();
    let receipts = receipts.lock().unwrap().clone();
    (text, receipts, dlq.messages())
}

#[tokio::test(flavor = "current_thread")]
async fn bodies_and_receipt_handles_stay_out_of_the_logs() {
    let (logs, receipts, dead) = run(false).await;
    assert!(logs.contains("wrong type or value at line 1 column"), "the failure is logged by kind and place:\n{logs}");
    assert!(!logs.contains("Ada Lovelace"), "a value from a body reached the logs:\n{logs}");
    assert_eq!(receipts.len(), 3);
    for receipt in &receipts {
        assert!(!logs.contains(receipt.as_str()), "receipt handle {receipt} reached the logs:\n{logs}");
    }
    assert_eq!(dead.len(), 2);
    for copy in &dead {
        let reason = copy.message_attribute("holdfast.failure").and_then(|a| a.as_str()).unwrap().to_owned();
        assert!(reason.contains("wrong type or value"), "{reason}");
        assert!(!reason.contains("Ada Lovelace"), "the dead-letter reason quotes the body: {reason}");
        assert!(copy.body().contains("Ada Lovelace"), "the dead-letter copy keeps the body itself");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn content_is_logged_when_the_user_opts_in() {
    let (logs, _, dead) = run(true).await;
    assert!(logs.contains("Ada Lovelace"), "opted in: serde's text with the value is logged:\n{logs}");
    let reason = dead[0].message_attribute("holdfast.failure").and_then(|a| a.as_str()).unwrap().to_owned();
    assert!(reason.contains("Ada Lovelace"), "{reason}");
}
