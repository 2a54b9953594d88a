//! Hostile messages — not JSON, the wrong shape, 1 MiB, a byte-order mark, control
//! characters, malformed SNS envelopes, ten odd attributes, a handler that always panics —
//! on the embedded queue and on the local SQS server. Each ends in the dead-letter queue
//! after `maxReceiveCount` attempts through the queue's redrive policy; the worker never
//! crashes; and nothing from a body reaches the logs (every body carries a marker that the
//! captured log output must not contain).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Backend, Options, TestQueue, eventually, start};

use holdfast::{BoxError, MessageAttribute, Outcome, OutgoingMessage, Worker, handler_fn};

const MARKER: &str = "HOSTILE-BODY-MARKER";
const MAX_RECEIVES: u32 = 2;

/// Everything the worker logs, at debug level, for all tests of this binary.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,aws=warn,aws_smithy_runtime=warn,hyper=warn"))
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Order {
    order_id: u64,
}

/// The hostile messages, each with its marker.
fn hostile() -> Vec<OutgoingMessage> {
    let m = |n: u32| format!("{MARKER}-{n}");
    let mut odd = OutgoingMessage::new(format!("not json either {}", m(8)));
    let attributes = [
        ("a.b", MessageAttribute::string(m(80))),
        ("x-y_z", MessageAttribute::string(" ")),
        ("number.zero", MessageAttribute::number("-0")),
        ("number.big", MessageAttribute::number("1e308")),
        ("unicode", MessageAttribute::string(format!("ünïcødé {}", m(81)))),
        ("bin", MessageAttribute::binary((0..=255u8).collect::<Vec<u8>>())),
        ("custom", MessageAttribute::with_type("String.odd type", Some(m(82)), None).unwrap()),
        ("Type", MessageAttribute::string("Notification")),
        ("holdfast.failure", MessageAttribute::string(m(83))),
        ("x", MessageAttribute::string("{\"order_id\": 1}")),
    ];
    for (name, value) in attributes {
        odd = odd.attribute(name, value);
    }
    let mut big = m(3);
    big.push_str(&"x".repeat(1_048_576 - big.len()));
    vec![
        OutgoingMessage::new(format!("{} is not JSON {{", m(1))),
        OutgoingMessage::new(format!(r#"{{"order_id": "{}"}}"#, m(2))),
        OutgoingMessage::new(big),
        OutgoingMessage::new(format!("\u{feff}{{\"order_id\": 4, \"note\": \"{}\"}}", m(4))),
        OutgoingMessage::new(format!("{{\"order_id\": \"{}\t\r\n\"}}", m(5))),
        OutgoingMessage::new(format!(
            r#"{{"Type":"Notification","MessageId":"{}","TopicArn":"arn:aws:sns:us-east-1:1:t","Message":42}}"#,
            m(6)
        )),
        OutgoingMessage::new(format!(
            r#"{{"Type":"Notification","Message":"{} not json","MessageAttributes":7}}"#,
            m(7)
        )),
        odd,
        OutgoingMessage::new(format!("panic {}", m(9))),
    ]
}

async fn hostile_messages_end_in_the_dead_letter_queue(backend: Backend) {
    let logs = captured();
    let q =
        TestQueue::new(backend, "hostile", Options { max_receives: Some(MAX_RECEIVES), ..Options::default() }).await;
    let messages = hostile();
    let sent = messages.len();
    for message in messages {
        q.queue.send(message).await.expect("send");
    }
    let mut config = q.config();
    config.backoff_min = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(1);
    // The pattern the README recommends: decode with `msg.json()?`.
    let handler = handler_fn(|msg, _ctx| async move {
        if msg.raw_body().starts_with("panic") {
            panic!("this handler always panics");
        }
        let order: Order = msg.json()?;
        let _ = order.order_id;
        Ok::<_, BoxError>(Outcome::Ack)
    });
    let (run, stop) = start(Worker::new(config).queue(q.queue.clone()).handler(handler));
    let all_dead = eventually(Duration::from_secs(60), || async { q.dead_letters().await.len() >= sent }).await;
    stop.notify_one();
    let summary = run.await.expect("the worker did not crash").expect("run returns Ok");
    let dead = q.dead_letters().await;
    assert!(all_dead, "{} of {sent} in the dead-letter queue; summary {summary:?}", dead.len());
    for n in 1..=9 {
        let marker = format!("{MARKER}-{n}");
        assert!(dead.iter().any(|b| b.contains(&marker)), "{marker} is not in the dead-letter queue");
    }
    assert_eq!(q.counts().await, (0, 0), "nothing left in the queue");
    assert_eq!(summary.failed, u64::from(MAX_RECEIVES) * sent as u64, "{MAX_RECEIVES} attempts each: {summary:?}");
    assert_eq!(summary.succeeded, 0);
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("handler"), "the capture holds the worker's log lines");
    let leaked: Vec<&str> = text.lines().filter(|l| l.contains(MARKER) || l.contains("xxxxxxxxxx")).collect();
    assert!(leaked.is_empty(), "body content in the logs:\n{}", leaked.join("\n"));
}

// Not `on_both_backends!`: that installs the test writer, and these tests capture the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    hostile_messages_end_in_the_dead_letter_queue(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs() {
    hostile_messages_end_in_the_dead_letter_queue(Backend::Sqs).await;
}
