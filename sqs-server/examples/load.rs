//! Throughput of holdfast-sqs-server with a bare aws-sdk-sqs client: fills a queue with
//! SendMessageBatch, then drains it with ReceiveMessage (10 at a time) + DeleteMessageBatch
//! from several concurrent consumers, and prints messages per second for the drain.
//!
//! `cargo run --release -p holdfast-sqs-server --example load -- ENDPOINT [MESSAGES] [CONSUMERS]`
//! (scripts/bench-sqs-server.sh starts a release server and runs this). Bounded: at most
//! 1,000,000 messages and 120 s of draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().expect("usage: load ENDPOINT [MESSAGES] [CONSUMERS]");
    let messages: usize = args.next().map_or(100_000, |a| a.parse().expect("MESSAGES")).min(1_000_000);
    let consumers: usize = args.next().map_or(8, |a| a.parse().expect("CONSUMERS")).max(1);
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "load"))
        .endpoint_url(endpoint)
        .build();
    let client = Client::from_conf(config);
    let name = format!("load-{}", std::process::id());
    let url = client.create_queue().queue_name(&name).send().await.expect("create queue").queue_url.unwrap();

    let start = Instant::now();
    let batches = messages.div_ceil(10);
    let next = Arc::new(AtomicUsize::new(0));
    let fillers: Vec<_> = (0..consumers)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < batches {
                    let entries = (0..10)
                        .map(|i| {
                            SendMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .message_body(r#"{"job":1}"#)
                                .build()
                                .unwrap()
                        })
                        .collect();
                    let out = client
                        .send_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .expect("send");
                    assert!(out.failed.is_empty(), "send failures: {:?}", out.failed);
                }
            })
        })
        .collect();
    for f in fillers {
        f.await.unwrap();
    }
    let total = batches * 10;
    println!(
        "filled {total} messages in {:.2?} ({:.0} messages/s sent)",
        start.elapsed(),
        total as f64 / start.elapsed().as_secs_f64()
    );

    let done = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let drainers: Vec<_> = (0..consumers)
        .map(|_| {
            let (client, url, done, requests) = (client.clone(), url.clone(), done.clone(), requests.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < total && start.elapsed() < LIMIT {
                    let got = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .send()
                        .await
                        .expect("receive");
                    requests.fetch_add(1, Ordering::Relaxed);
                    let got = got.messages.unwrap_or_default();
                    if got.is_empty() {
                        continue;
                    }
                    let entries = got
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            DeleteMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .receipt_handle(m.receipt_handle.clone().unwrap())
                                .build()
                                .unwrap()
                        })
                        .collect();
                    let out = client
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .expect("delete");
                    requests.fetch_add(1, Ordering::Relaxed);
                    assert!(out.failed.is_empty(), "delete failures: {:?}", out.failed);
                    done.fetch_add(out.successful.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for d in drainers {
        d.await.unwrap();
    }
    let elapsed = start.elapsed();
    let drained = done.load(Ordering::Relaxed);
    println!(
        "received + deleted {drained} messages in {elapsed:.2?} with {consumers} consumers, batches of 10: \
         {:.0} messages/s ({:.0} requests/s)",
        drained as f64 / elapsed.as_secs_f64(),
        requests.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
    );
    let left = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .expect("attributes");
    println!("left in the queue: {:?}", left.attributes.unwrap_or_default().values().next());
    client.delete_queue().queue_url(&url).send().await.expect("delete queue");
}
