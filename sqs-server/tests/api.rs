//! Every call the server serves, through aws-sdk-sqs (the client holdfast itself uses), and
//! the error codes SQS gives; raw HTTP for what an SDK cannot send.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use holdfast_sqs_server::{Options, SqsServer};

struct Rig {
    client: Client,
    endpoint: String,
}

async fn rig() -> Rig {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(SqsServer::new(Options::default()).serve(listener));
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(&endpoint)
        .build();
    Rig { client: Client::from_conf(config), endpoint }
}

fn code<E: ProvideErrorMetadata, R>(
    result: Result<impl std::fmt::Debug, aws_sdk_sqs::error::SdkError<E, R>>,
) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code().unwrap_or("(no code)").to_owned(),
    }
}

impl Rig {
    async fn queue(&self, name: &str, attributes: &[(QueueAttributeName, &str)]) -> String {
        let mut call = self.client.create_queue().queue_name(name);
        for (k, v) in attributes {
            call = call.attributes(k.clone(), *v);
        }
        call.send().await.unwrap().queue_url.unwrap()
    }

    async fn send(&self, url: &str, body: &str) -> String {
        self.client.send_message().queue_url(url).message_body(body).send().await.unwrap().message_id.unwrap()
    }

    async fn receive(&self, url: &str, max: i32) -> Vec<aws_sdk_sqs::types::Message> {
        let out = self.client.receive_message().queue_url(url).max_number_of_messages(max).send().await.unwrap();
        out.messages.unwrap_or_default()
    }

    async fn attribute(&self, url: &str, name: QueueAttributeName) -> String {
        let out = self.client.get_queue_attributes().queue_url(url).attribute_names(name.clone()).send().await.unwrap();
        out.attributes.unwrap().remove(&name).unwrap()
    }

    async fn raw(
        &self,
        target: Option<&str>,
        content_type: &str,
        body: &str,
    ) -> (u16, Option<String>, serde_json::Value) {
        let mut request =
            reqwest::Client::new().post(&self.endpoint).header("content-type", content_type).body(body.to_owned());
        if let Some(t) = target {
            request = request.header("x-amz-target", t);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let query = response.headers().get("x-amzn-query-error").map(|v| v.to_str().unwrap().to_owned());
        (status, query, response.json().await.unwrap())
    }
}

fn md5(s: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn queues_are_created_idempotently_listed_found_and_deleted() {
    let r = rig().await;
    let url = r.queue("orders", &[(QueueAttributeName::VisibilityTimeout, "10")]).await;
    assert_eq!(url, format!("{}/000000000000/orders", r.endpoint));
    assert_eq!(
        r.queue("orders", &[(QueueAttributeName::VisibilityTimeout, "10")]).await,
        url,
        "same attributes: same queue"
    );
    let clash = r
        .client
        .create_queue()
        .queue_name("orders")
        .attributes(QueueAttributeName::VisibilityTimeout, "11")
        .send()
        .await;
    assert_eq!(code(clash), "QueueAlreadyExists");
    r.queue("other", &[]).await;
    let listed = r.client.list_queues().queue_name_prefix("ord").send().await.unwrap().queue_urls.unwrap();
    assert_eq!(listed, vec![url.clone()]);
    let page = r.client.list_queues().max_results(1).send().await.unwrap();
    assert_eq!(page.queue_urls.unwrap().len(), 1);
    let rest = r.client.list_queues().max_results(1).next_token(page.next_token.unwrap()).send().await.unwrap();
    assert_eq!(rest.queue_urls.unwrap().len(), 1);
    assert_eq!(r.client.get_queue_url().queue_name("orders").send().await.unwrap().queue_url.unwrap(), url);
    r.client.delete_queue().queue_url(&url).send().await.unwrap();
    let gone = r.client.get_queue_url().queue_name("orders").send().await;
    assert!(gone.as_ref().unwrap_err().as_service_error().unwrap().is_queue_does_not_exist());
    assert_eq!(code(gone), "AWS.SimpleQueueService.NonExistentQueue");
    assert_eq!(
        code(r.client.send_message().queue_url(&url).message_body("x").send().await),
        "AWS.SimpleQueueService.NonExistentQueue"
    );
    let bad_name = r.client.create_queue().queue_name("no spaces").send().await;
    assert_eq!(code(bad_name), "InvalidParameterValue");
    let fifo_name = r.client.create_queue().queue_name("plain.fifo").send().await;
    assert_eq!(code(fifo_name), "InvalidParameterValue", "a .fifo name needs FifoQueue");
}

#[tokio::test]
async fn attributes_are_read_counted_set_and_checked() {
    let r = rig().await;
    let url = r.queue("attrs", &[(QueueAttributeName::DelaySeconds, "0")]).await;
    r.send(&url, "a").await;
    r.send(&url, "b").await;
    r.client.send_message().queue_url(&url).message_body("later").delay_seconds(60).send().await.unwrap();
    r.receive(&url, 1).await;
    let all =
        r.client.get_queue_attributes().queue_url(&url).attribute_names(QueueAttributeName::All).send().await.unwrap();
    let all = all.attributes.unwrap();
    assert_eq!(all[&QueueAttributeName::ApproximateNumberOfMessages], "1");
    assert_eq!(all[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible], "1");
    assert_eq!(all[&QueueAttributeName::ApproximateNumberOfMessagesDelayed], "1");
    assert_eq!(all[&QueueAttributeName::QueueArn], "arn:aws:sqs:us-east-1:000000000000:attrs");
    assert_eq!(all[&QueueAttributeName::VisibilityTimeout], "30");
    assert_eq!(all[&QueueAttributeName::MaximumMessageSize], "1048576");
    assert!(all[&QueueAttributeName::CreatedTimestamp].parse::<u64>().unwrap() > 1_600_000_000);
    assert!(all.contains_key(&QueueAttributeName::LastModifiedTimestamp));
    let none = r.client.get_queue_attributes().queue_url(&url).send().await.unwrap();
    assert!(none.attributes.is_none_or(|a| a.is_empty()), "no names, no attributes");

    r.client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::VisibilityTimeout, "5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.attribute(&url, QueueAttributeName::VisibilityTimeout).await, "5");
    let unknown = r
        .client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::from("Colour"), "red")
        .send()
        .await;
    assert_eq!(code(unknown), "InvalidAttributeName");
    let out_of_range = r
        .client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::VisibilityTimeout, "43201")
        .send()
        .await;
    assert_eq!(code(out_of_range), "InvalidAttributeValue");
    let read_only = r
        .client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::from("Colour"))
        .send()
        .await;
    assert_eq!(code(read_only), "InvalidAttributeName");
    let no_queue = r.client.get_queue_attributes().queue_url(format!("{}/000000000000/nope", r.endpoint)).send().await;
    assert_eq!(code(no_queue), "AWS.SimpleQueueService.NonExistentQueue");
}

#[tokio::test]
async fn a_queue_visibility_timeout_set_later_applies_to_later_receives() {
    let r = rig().await;
    let url = r.queue("later-vis", &[]).await;
    r.client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .send()
        .await
        .unwrap();
    r.send(&url, "a").await;
    assert_eq!(r.receive(&url, 1).await.len(), 1);
    assert!(r.receive(&url, 1).await.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(r.receive(&url, 1).await.len(), 1, "back after the 1 s queue timeout");
}

#[tokio::test]
async fn send_receive_delete_with_digests_and_attributes() {
    let r = rig().await;
    let url = r.queue("msgs", &[]).await;
    let sent = r
        .client
        .send_message()
        .queue_url(&url)
        .message_body("héllo")
        .message_attributes(
            "kind",
            MessageAttributeValue::builder().data_type("String").string_value("order").build().unwrap(),
        )
        .message_attributes(
            "trace.id",
            MessageAttributeValue::builder().data_type("Number").string_value("42").build().unwrap(),
        )
        .message_attributes(
            "trace.blob",
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0, 1, 2]))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.md5_of_message_body.as_deref(), Some(md5("héllo").as_str()));
    let sent_attributes_md5 = sent.md5_of_message_attributes.unwrap();
    assert_eq!(sent_attributes_md5.len(), 32);

    let got = r
        .client
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap();
    let m = &got[0];
    assert_eq!(m.body.as_deref(), Some("héllo"));
    assert_eq!(m.message_id, sent.message_id);
    assert_eq!(m.md5_of_body.as_deref(), Some(md5("héllo").as_str()));
    assert_eq!(
        m.md5_of_message_attributes.as_deref(),
        Some(sent_attributes_md5.as_str()),
        "all attributes: the digest of the send"
    );
    let attributes = m.message_attributes.as_ref().unwrap();
    assert_eq!(attributes["trace.blob"].binary_value.as_ref().unwrap().as_ref(), &[0, 1, 2]);
    assert_eq!(attributes["trace.id"].string_value.as_deref(), Some("42"));
    let system = m.attributes.as_ref().unwrap();
    assert_eq!(system[&MessageSystemAttributeName::ApproximateReceiveCount], "1");
    for k in [
        MessageSystemAttributeName::SentTimestamp,
        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
        MessageSystemAttributeName::SenderId,
    ] {
        assert!(system.contains_key(&k), "{k:?}");
    }
    r.client
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(m.receipt_handle.clone().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();

    // A prefix selects attributes by name; no names, none.
    let again = r
        .client
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("trace.*")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap();
    let names: Vec<_> = again[0].message_attributes.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(again[0].attributes.is_none(), "system attributes only when asked");
    assert_ne!(
        again[0].md5_of_message_attributes.as_deref(),
        Some(sent_attributes_md5.as_str()),
        "digest of what is returned"
    );
    r.client
        .delete_message()
        .queue_url(&url)
        .receipt_handle(again[0].receipt_handle.clone().unwrap())
        .send()
        .await
        .unwrap();
    // Deleting again with the same receipt is accepted, as in SQS; a made-up one is not.
    r.client
        .delete_message()
        .queue_url(&url)
        .receipt_handle(again[0].receipt_handle.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r.client.delete_message().queue_url(&url).receipt_handle("made-up").send().await),
        "ReceiptHandleIsInvalid"
    );
    assert!(r.receive(&url, 10).await.is_empty());
    assert_eq!(r.attribute(&url, QueueAttributeName::ApproximateNumberOfMessagesNotVisible).await, "0");
}

#[tokio::test]
async fn sends_are_validated() {
    let r = rig().await;
    let url = r.queue("checks", &[]).await;
    let max = "x".repeat(1_048_576);
    r.send(&url, &max).await;
    let over = r.client.send_message().queue_url(&url).message_body(format!("{max}x")).send().await;
    assert_eq!(code(over), "InvalidParameterValue");
    let control = r.client.send_message().queue_url(&url).message_body("bell \u{7}").send().await;
    assert_eq!(code(control), "InvalidMessageContents");
    let delay = r.client.send_message().queue_url(&url).message_body("x").delay_seconds(901).send().await;
    assert_eq!(code(delay), "InvalidParameterValue");
    let bad_number = r
        .client
        .send_message()
        .queue_url(&url)
        .message_body("x")
        .message_attributes(
            "n",
            MessageAttributeValue::builder().data_type("Number").string_value("many").build().unwrap(),
        )
        .send()
        .await;
    assert_eq!(code(bad_number), "InvalidParameterValue");
    let mut eleven = r.client.send_message().queue_url(&url).message_body("x");
    for i in 0..11 {
        eleven = eleven.message_attributes(
            format!("a{i}"),
            MessageAttributeValue::builder().data_type("String").string_value("v").build().unwrap(),
        );
    }
    assert_eq!(code(eleven.send().await), "InvalidParameterValue");
    let (status, query, body) =
        r.raw(Some("AmazonSQS.SendMessage"), "application/x-amz-json-1.0", &format!(r#"{{"QueueUrl":"{url}"}}"#)).await;
    assert_eq!((status, query.as_deref()), (400, Some("MissingParameter;Sender")));
    assert!(body["message"].as_str().unwrap().contains("MessageBody"));
}

#[tokio::test]
async fn receives_are_validated_and_long_polls_return_on_arrival() {
    let r = rig().await;
    let url = r.queue("polls", &[]).await;
    let receive = || r.client.receive_message().queue_url(&url);
    assert_eq!(code(receive().max_number_of_messages(11).send().await), "InvalidParameterValue");
    assert_eq!(code(receive().max_number_of_messages(0).send().await), "InvalidParameterValue");
    assert_eq!(code(receive().wait_time_seconds(21).send().await), "InvalidParameterValue");
    assert_eq!(code(receive().visibility_timeout(43_201).send().await), "InvalidParameterValue");
    assert_eq!(
        code(receive().message_system_attribute_names(MessageSystemAttributeName::from("Nope")).send().await),
        "InvalidAttributeName"
    );

    let sender = r.client.clone();
    let u = url.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sender.send_message().queue_url(u).message_body("late").send().await.unwrap();
    });
    let start = Instant::now();
    let got = receive().wait_time_seconds(10).send().await.unwrap().messages.unwrap();
    assert_eq!(got[0].body.as_deref(), Some("late"));
    assert!(start.elapsed() < Duration::from_secs(3), "returned on arrival, after {:?}", start.elapsed());
    let start = Instant::now();
    assert!(receive().wait_time_seconds(1).send().await.unwrap().messages.is_none());
    assert!(start.elapsed() >= Duration::from_millis(950), "waited the full second: {:?}", start.elapsed());

    // The queue's ReceiveMessageWaitTimeSeconds is the default wait.
    r.client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::ReceiveMessageWaitTimeSeconds, "1")
        .send()
        .await
        .unwrap();
    let start = Instant::now();
    assert!(receive().send().await.unwrap().messages.is_none());
    assert!(start.elapsed() >= Duration::from_millis(950));

    for i in 0..12 {
        r.send(&url, &i.to_string()).await;
    }
    assert_eq!(r.receive(&url, 10).await.len(), 10);
}

#[tokio::test]
async fn visibility_changes_and_their_errors() {
    let r = rig().await;
    let url = r.queue("vis", &[]).await;
    r.send(&url, "a").await;
    let m = r.receive(&url, 1).await.pop().unwrap();
    let receipt = m.receipt_handle.unwrap();
    let change = |receipt: &str, timeout: i32| {
        r.client.change_message_visibility().queue_url(&url).receipt_handle(receipt).visibility_timeout(timeout).send()
    };
    assert_eq!(code(change(&receipt, 43_201).await), "InvalidParameterValue");
    change(&receipt, 43_190).await.expect("up to 12 hours from receipt");
    change(&receipt, 0).await.unwrap();
    assert_eq!(code(change(&receipt, 10).await), "AWS.SimpleQueueService.MessageNotInflight");
    assert_eq!(code(change("garbage", 10).await), "ReceiptHandleIsInvalid");
    let again = r.receive(&url, 1).await.pop().unwrap();
    assert_ne!(again.receipt_handle.as_deref(), Some(receipt.as_str()), "a new receipt per receive");
    assert_eq!(
        code(change(&receipt, 10).await),
        "InvalidParameterValue",
        "an old receipt no longer changes visibility"
    );
    let missing = r
        .raw(
            Some("AmazonSQS.ChangeMessageVisibility"),
            "application/x-amz-json-1.0",
            &format!(r#"{{"QueueUrl":"{url}","ReceiptHandle":"{}"}}"#, again.receipt_handle.unwrap()),
        )
        .await;
    assert_eq!(missing.1.as_deref(), Some("MissingParameter;Sender"));
}

#[tokio::test]
async fn batches_fail_per_entry_with_http_200_and_whole_for_bad_ids() {
    let r = rig().await;
    let url = r.queue("batches", &[]).await;
    let entry =
        |id: &str, body: &str| SendMessageBatchRequestEntry::builder().id(id).message_body(body).build().unwrap();
    let sent = r
        .client
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("ok1", "one"))
        .entries(entry("bad", "bell \u{7}"))
        .entries(entry("ok2", "two"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.successful.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["ok1", "ok2"]);
    assert_eq!(sent.successful[0].md5_of_message_body, md5("one"));
    assert_eq!(sent.failed.len(), 1);
    assert_eq!(
        (sent.failed[0].id.as_str(), sent.failed[0].code.as_str(), sent.failed[0].sender_fault),
        ("bad", "InvalidMessageContents", true)
    );

    let got = r.receive(&url, 10).await;
    assert_eq!(got.len(), 2);
    let del = |id: &str, receipt: &str| {
        DeleteMessageBatchRequestEntry::builder().id(id).receipt_handle(receipt).build().unwrap()
    };
    let out = r
        .client
        .delete_message_batch()
        .queue_url(&url)
        .entries(del("a", got[0].receipt_handle.as_deref().unwrap()))
        .entries(del("b", "not-a-receipt"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.successful.len(), 1);
    assert_eq!(
        (out.failed[0].id.as_str(), out.failed[0].code.as_str(), out.failed[0].sender_fault),
        ("b", "ReceiptHandleIsInvalid", true)
    );

    let vis = |id: &str, receipt: &str, t: i32| {
        ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(id)
            .receipt_handle(receipt)
            .visibility_timeout(t)
            .build()
            .unwrap()
    };
    let changed = r
        .client
        .change_message_visibility_batch()
        .queue_url(&url)
        .entries(vis("live", got[1].receipt_handle.as_deref().unwrap(), 0))
        .entries(vis("gone", "not-a-receipt", 5))
        .entries(vis("long", got[1].receipt_handle.as_deref().unwrap(), 43_201))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.successful.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["live"]);
    let codes: HashMap<_, _> = changed.failed.iter().map(|f| (f.id.as_str(), f.code.as_str())).collect();
    assert_eq!(codes["gone"], "ReceiptHandleIsInvalid");
    assert_eq!(codes["long"], "InvalidParameterValue");

    let receipt = got[1].receipt_handle.clone().unwrap();
    let dup = r
        .client
        .delete_message_batch()
        .queue_url(&url)
        .entries(del("x", &receipt))
        .entries(del("x", &receipt))
        .send()
        .await;
    assert_eq!(code(dup), "AWS.SimpleQueueService.BatchEntryIdsNotDistinct");
    let mut eleven = r.client.delete_message_batch().queue_url(&url);
    for i in 0..11 {
        eleven = eleven.entries(del(&format!("e{i}"), &receipt));
    }
    assert_eq!(code(eleven.send().await), "AWS.SimpleQueueService.TooManyEntriesInBatchRequest");
    assert_eq!(
        code(r.client.delete_message_batch().queue_url(&url).send().await),
        "AWS.SimpleQueueService.EmptyBatchRequest"
    );
    let bad_id =
        r.client.change_message_visibility_batch().queue_url(&url).entries(vis("no spaces", &receipt, 1)).send().await;
    assert_eq!(code(bad_id), "AWS.SimpleQueueService.InvalidBatchEntryId");
    let big = "x".repeat(600_000);
    let too_long =
        r.client.send_message_batch().queue_url(&url).entries(entry("a", &big)).entries(entry("b", &big)).send().await;
    assert_eq!(code(too_long), "AWS.SimpleQueueService.BatchRequestTooLong");
}

#[tokio::test]
async fn redrive_moves_a_message_to_the_dead_letter_queue_after_max_receives() {
    let r = rig().await;
    let dlq = r.queue("jobs-dlq", &[]).await;
    let arn = r.attribute(&dlq, QueueAttributeName::QueueArn).await;
    let policy = format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"2"}}"#);
    let url = r.queue("jobs", &[(QueueAttributeName::RedrivePolicy, &policy)]).await;
    assert_eq!(
        r.attribute(&url, QueueAttributeName::RedrivePolicy).await,
        format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":2}}"#)
    );
    r.send(&url, "poison").await;
    for n in 1..=2 {
        let got = r
            .client
            .receive_message()
            .queue_url(&url)
            .visibility_timeout(0)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap();
        let m = &got.messages.unwrap()[0];
        assert_eq!(m.attributes.as_ref().unwrap()[&MessageSystemAttributeName::ApproximateReceiveCount], n.to_string());
    }
    assert!(r.receive(&url, 1).await.is_empty(), "the third receive moves it");
    let moved = r.receive(&dlq, 1).await;
    assert_eq!(moved[0].body.as_deref(), Some("poison"));
    let missing = r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:nope","maxReceiveCount":3}"#;
    let bad = r
        .client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, missing)
        .send()
        .await;
    assert_eq!(code(bad), "InvalidParameterValue");
    let fifo = r.queue("f.fifo", &[(QueueAttributeName::FifoQueue, "true")]).await;
    let mixed = r
        .client
        .set_queue_attributes()
        .queue_url(&fifo)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await;
    assert_eq!(code(mixed), "InvalidParameterValue", "a FIFO queue needs a FIFO dead-letter queue");
    r.client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, "")
        .send()
        .await
        .unwrap();
    let all =
        r.client.get_queue_attributes().queue_url(&url).attribute_names(QueueAttributeName::All).send().await.unwrap();
    assert!(
        !all.attributes.unwrap().contains_key(&QueueAttributeName::RedrivePolicy),
        "an empty policy removes redrive"
    );
}

#[tokio::test]
async fn fifo_orders_groups_holds_them_and_deduplicates() {
    let r = rig().await;
    let url = r
        .queue(
            "orders.fifo",
            &[(QueueAttributeName::FifoQueue, "true"), (QueueAttributeName::ContentBasedDeduplication, "true")],
        )
        .await;
    let send = |body: &str, group: &str| {
        r.client.send_message().queue_url(&url).message_body(body).message_group_id(group).send()
    };
    let a1 = send("a1", "a").await.unwrap();
    assert_eq!(send("a1", "a").await.unwrap().message_id, a1.message_id, "content-based deduplication");
    let seq1: u128 = a1.sequence_number.unwrap().parse().unwrap();
    send("b1", "b").await.unwrap();
    let a2 = send("a2", "a").await.unwrap();
    assert!(a2.sequence_number.unwrap().parse::<u128>().unwrap() > seq1);
    let first = r.receive(&url, 1).await;
    assert_eq!(first[0].body.as_deref(), Some("a1"));
    let next = r.receive(&url, 10).await;
    assert_eq!(
        next.iter().map(|m| m.body.as_deref().unwrap()).collect::<Vec<_>>(),
        ["b1"],
        "group a is held while a1 is in flight"
    );
    r.client
        .delete_message()
        .queue_url(&url)
        .receipt_handle(first[0].receipt_handle.clone().unwrap())
        .send()
        .await
        .unwrap();
    let got = r
        .client
        .receive_message()
        .queue_url(&url)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap();
    assert_eq!(got[0].body.as_deref(), Some("a2"));
    let attrs = got[0].attributes.as_ref().unwrap();
    assert_eq!(attrs[&MessageSystemAttributeName::MessageGroupId], "a");
    assert!(attrs.contains_key(&MessageSystemAttributeName::SequenceNumber));

    assert_eq!(code(r.client.send_message().queue_url(&url).message_body("x").send().await), "MissingParameter");
    assert_eq!(
        code(
            r.client
                .send_message()
                .queue_url(&url)
                .message_body("x")
                .message_group_id("g")
                .delay_seconds(5)
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    let plain = r.queue("plain.fifo", &[(QueueAttributeName::FifoQueue, "true")]).await;
    let no_dedup = r.client.send_message().queue_url(&plain).message_body("x").message_group_id("g").send().await;
    assert_eq!(code(no_dedup), "InvalidParameterValue", "no deduplication id and no content-based deduplication");
    let by_id = |body: &str| {
        r.client
            .send_message()
            .queue_url(&plain)
            .message_body(body)
            .message_group_id("g")
            .message_deduplication_id("d1")
            .send()
    };
    assert_eq!(by_id("one").await.unwrap().message_id, by_id("two").await.unwrap().message_id, "same deduplication id");

    // A retried receive with the same attempt id gets the same messages and receipts.
    let attempt = || {
        r.client
            .receive_message()
            .queue_url(&plain)
            .max_number_of_messages(10)
            .receive_request_attempt_id("try-1")
            .send()
    };
    let once = attempt().await.unwrap().messages.unwrap();
    let twice = attempt().await.unwrap().messages.unwrap();
    assert_eq!(once.len(), 1);
    assert_eq!(once[0].receipt_handle, twice[0].receipt_handle);
}

#[tokio::test]
async fn purge_empties_the_queue_once_a_minute() {
    let r = rig().await;
    let url = r.queue("purged", &[]).await;
    r.send(&url, "a").await;
    r.send(&url, "b").await;
    r.receive(&url, 1).await;
    r.client.purge_queue().queue_url(&url).send().await.unwrap();
    assert_eq!(r.attribute(&url, QueueAttributeName::ApproximateNumberOfMessages).await, "0");
    assert_eq!(r.attribute(&url, QueueAttributeName::ApproximateNumberOfMessagesNotVisible).await, "0");
    assert_eq!(
        code(r.client.purge_queue().queue_url(&url).send().await),
        "AWS.SimpleQueueService.PurgeQueueInProgress"
    );
}

#[tokio::test]
async fn unknown_actions_and_malformed_requests_get_sqs_errors() {
    let r = rig().await;
    let json = "application/x-amz-json-1.0";
    let (status, query, body) = r.raw(Some("AmazonSQS.Frobnicate"), json, "{}").await;
    assert_eq!((status, query.as_deref()), (400, Some("InvalidAction;Sender")));
    assert_eq!(body["__type"], "com.amazon.coral.service#UnknownOperationException");
    let (status, query, body) = r.raw(Some("AmazonSQS.ListQueues"), json, "{not json").await;
    assert_eq!((status, query.as_deref()), (400, Some("SerializationException;Sender")));
    assert_eq!(body["__type"], "com.amazon.coral.service#SerializationException");
    let (_, query, _) = r.raw(Some("AmazonSQS.ListQueues"), json, "[1]").await;
    assert_eq!(query.as_deref(), Some("SerializationException;Sender"));
    let url = r.queue("typed", &[]).await;
    let (_, query, _) = r
        .raw(Some("AmazonSQS.ReceiveMessage"), json, &format!(r#"{{"QueueUrl":"{url}","MaxNumberOfMessages":"ten"}}"#))
        .await;
    assert_eq!(query.as_deref(), Some("SerializationException;Sender"));
    let (_, query, _) = r.raw(Some("AmazonSQS.TagQueue"), json, "{}").await;
    assert_eq!(query.as_deref(), Some("AWS.SimpleQueueService.UnsupportedOperation;Sender"));
    let (status, _, body) =
        r.raw(None, "application/x-www-form-urlencoded", "Action=ListQueues&Version=2012-11-05").await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("JSON 1.0"), "{body}");
    let (_, query, _) = r.raw(Some("AmazonSQS.DeleteQueue"), json, r#"{"QueueUrl":"no-path"}"#).await;
    assert_eq!(query.as_deref(), Some("InvalidAddress;Sender"));
    // The server is still there.
    r.client.list_queues().send().await.unwrap();
}

#[tokio::test]
async fn connections_are_kept_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = rig().await;
    let mut stream = tokio::net::TcpStream::connect(r.endpoint.trim_start_matches("http://")).await.unwrap();
    let request = "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n\
                   Content-Type: application/x-amz-json-1.0\r\nContent-Length: 2\r\n\r\n{}";
    // Two requests, one after the other, on one connection: both answered.
    for _ in 0..2 {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("connection: close"), "{text}");
    }
}

#[tokio::test]
async fn stats_count_requests_by_action_and_messages_by_queue() {
    let r = rig().await;
    let url = r.queue("counted", &[]).await;
    r.send(&url, "one").await;
    r.send(&url, "two").await;
    r.receive(&url, 1).await;
    let stats: serde_json::Value = reqwest::get(format!("{}/__stats", r.endpoint)).await.unwrap().json().await.unwrap();
    assert_eq!(stats["requests"], serde_json::json!({"CreateQueue": 1, "SendMessage": 2, "ReceiveMessage": 1}));
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["queues"]["counted"]["messages"], 2, "in flight or visible, both held");
    // Not a request to SQS: asking does not count.
    let again: serde_json::Value = reqwest::get(format!("{}/__stats", r.endpoint)).await.unwrap().json().await.unwrap();
    assert_eq!(again["total"], 4);
}
