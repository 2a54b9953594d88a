//! Fills a queue on an SQS endpoint before a benchmark drains it: creates QUEUE (or finds it)
//! and sends MESSAGES copies of BODY with SendMessageBatch, from 8 concurrent tasks, then
//! prints the queue URL. `scripts/bench-peers.sh` runs it as a process of its own, so that the
//! consumer measured pays nothing for the fill.
//!
//! `cargo run --release -p holdfast-sqs-server --example preload -- ENDPOINT QUEUE MESSAGES [BODY]`
//! (at most 1,000,000 messages).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

const SENDERS: usize = 8;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(endpoint), Some(name), Some(Ok(messages))) =
        (args.first(), args.get(1), args.get(2).map(|n| n.parse::<usize>()))
    else {
        eprintln!("usage: preload ENDPOINT QUEUE MESSAGES [BODY]");
        return std::process::ExitCode::from(2);
    };
    let messages = messages.min(1_000_000);
    let body = args.get(3).cloned().unwrap_or_else(|| r#"{"job":1}"#.to_owned());
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "preload"))
        .endpoint_url(endpoint)
        .build();
    let client = Client::from_conf(config);
    let url = match client.create_queue().queue_name(name).send().await {
        Ok(out) => out.queue_url.unwrap_or_default(),
        Err(e) => {
            eprintln!("preload: create queue {name}: {e:?}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (client, url, body, sent) = (client.clone(), url.clone(), body.clone(), sent.clone());
        senders.spawn(async move {
            loop {
                let first = sent.fetch_add(10, Ordering::Relaxed);
                if first >= messages {
                    return Ok(());
                }
                let entries = (first..messages.min(first + 10))
                    .map(|i| SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(&body).build())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let out = client.send_message_batch().queue_url(&url).set_entries(Some(entries)).send().await;
                let out = out.map_err(|e| format!("{e:?}"))?;
                if !out.failed.is_empty() {
                    return Err(format!("{} sends failed: {:?}", out.failed.len(), out.failed));
                }
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        if let Ok(Err(e)) | Err(e) = done.map_err(|e| e.to_string()) {
            eprintln!("preload: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    println!("{url}");
    std::process::ExitCode::SUCCESS
}
