//! The floor for a queue consumer: a bare aws-sdk-sqs loop, no framework. Each of TASKS tasks
//! receives up to ten messages (long poll), then deletes them with one DeleteMessageBatch, and
//! again, until the process is stopped. `scripts/bench-peers.sh` measures holdfast against it.
//! With `attributes` after TASKS, each receive also asks for every system and message
//! attribute, as a framework's receive does (holdfast's needs the receive count, the group
//! and the sent time, and hands the rest to handlers), so that cost can be told apart.
//!
//! ```text
//! AWS_ENDPOINT_URL_SQS=http://127.0.0.1:9324 AWS_REGION=us-east-1 \
//! AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
//! cargo run --release --example sqs_loop -- http://127.0.0.1:9324/000000000000/jobs 4
//! ```

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};

async fn drain(client: Client, url: String, attributes: bool) -> Result<(), aws_sdk_sqs::Error> {
    loop {
        let mut receive = client.receive_message().queue_url(&url).max_number_of_messages(10).wait_time_seconds(20);
        if attributes {
            receive =
                receive.message_system_attribute_names(MessageSystemAttributeName::All).message_attribute_names("All");
        }
        let received = receive.send().await?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            continue;
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle.clone())
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let deleted = client.delete_message_batch().queue_url(&url).set_entries(Some(entries)).send().await?;
        if !deleted.failed.is_empty() {
            eprintln!("sqs_loop: {} deletes failed: {:?}", deleted.failed.len(), deleted.failed);
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(url), tasks) = (args.next(), args.next().map(|t| t.parse::<usize>())) else {
        eprintln!("usage: sqs_loop QUEUE_URL [TASKS [attributes]]");
        return std::process::ExitCode::from(2);
    };
    let Ok(tasks @ 1..) = tasks.unwrap_or(Ok(1)) else {
        eprintln!("sqs_loop: TASKS must be a whole number from 1");
        return std::process::ExitCode::from(2);
    };
    let attributes = match args.next().as_deref() {
        None => false,
        Some("attributes") => true,
        Some(other) => {
            eprintln!("sqs_loop: after TASKS only `attributes` is accepted, not {other:?}");
            return std::process::ExitCode::from(2);
        }
    };
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let client = Client::new(&config);
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        loops.spawn(drain(client.clone(), url.clone(), attributes));
    }
    while let Some(done) = loops.join_next().await {
        if let Ok(Err(error)) = done {
            eprintln!("sqs_loop: {error}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
