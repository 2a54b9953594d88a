//! The queue seam over aws-sdk-sqs (AWS JSON 1.0), for SQS and SQS-compatible servers.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName,
};

use super::{
    BatchEntry, BatchFailure, OutgoingMessage, QueueBackend, QueueError, ReceiveRequest, SystemAttributeNames,
};
use crate::message::{SystemAttributes, no_attributes};
use crate::{Message, MessageAttribute};

/// Error codes that retrying cannot heal.
const PERMANENT_CODES: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAddress",
    "InvalidSecurity",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingParameter",
    "InvalidParameterValue",
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
    "KmsAccessDenied",
    "KmsDisabled",
    "KmsNotFound",
];

pub(crate) struct SqsBackend {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsBackend {
    pub(crate) fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self { client, url }
    }
}

fn classify<E, R>(operation: &str, error: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let text = format!("{operation}: {}", DisplayErrorContext(&error));
    match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_owned();
            let message = service.err().message().map_or(text, |m| format!("{operation}: {m}"));
            if PERMANENT_CODES.contains(&code.as_str()) {
                QueueError::permanent(&code, message)
            } else {
                QueueError { kind: super::FailureKind::Transient, code: Some(code), message }
            }
        }
        // The request could not even be built: no region, a malformed endpoint.
        SdkError::ConstructionFailure(_) => QueueError::permanent("ConstructionFailure", text),
        _ => QueueError::transient(text),
    }
}

fn failures(failed: &[BatchResultErrorEntry]) -> Vec<BatchFailure> {
    failed
        .iter()
        .map(|f| BatchFailure {
            id: f.id().to_owned(),
            code: f.code().to_owned(),
            message: f.message().unwrap_or_default().to_owned(),
            sender_fault: f.sender_fault(),
        })
        .collect()
}

fn seconds(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

fn convert(m: aws_sdk_sqs::types::Message, received_at: tokio::time::Instant) -> Option<Message> {
    let message_attributes = match m.message_attributes {
        Some(sent) if !sent.is_empty() => Arc::new(
            sent.into_iter()
                .filter_map(|(name, v)| {
                    let bytes = v.binary_value.map(Blob::into_inner);
                    MessageAttribute::with_type(v.data_type, v.string_value, bytes).map(|a| (name, a))
                })
                .collect(),
        ),
        _ => no_attributes(),
    };
    let body = m.body.unwrap_or_default();
    // The sent time, the receive count and the group come from the system attributes below.
    let mut message = Message::shared(m.message_id?.into(), body.into(), message_attributes, received_at, None);
    message.receipt_handle = m.receipt_handle?.into();
    message.attributes = SystemAttributes::sent(m.attributes.unwrap_or_default());
    message.derive_system_fields();
    Some(message)
}

/// The names a receive sends: `All` for every one, else each name.
fn system_attribute_names(set: SystemAttributeNames) -> Vec<MessageSystemAttributeName> {
    if set == SystemAttributeNames::ALL {
        return vec![MessageSystemAttributeName::All];
    }
    set.names().map(MessageSystemAttributeName::from).collect()
}

fn attribute_value(a: &MessageAttribute) -> Result<MessageAttributeValue, QueueError> {
    let builder = MessageAttributeValue::builder().data_type(a.data_type());
    let builder = match (a.as_str(), a.as_bytes()) {
        (Some(text), _) => builder.string_value(text),
        (_, Some(bytes)) => builder.binary_value(Blob::new(bytes.to_vec())),
        _ => builder,
    };
    builder.build().map_err(|e| QueueError::permanent("InvalidParameterValue", e.to_string()))
}

#[async_trait]
impl QueueBackend for SqsBackend {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(request.max_messages).unwrap_or(10))
            .wait_time_seconds(seconds(request.wait_time))
            .visibility_timeout(seconds(request.visibility_timeout))
            .set_message_system_attribute_names(Some(system_attribute_names(request.system_attributes)))
            .message_attribute_names("All")
            .set_receive_request_attempt_id(request.attempt_id.clone())
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        let received_at = tokio::time::Instant::now();
        Ok(out.messages.unwrap_or_default().into_iter().filter_map(|m| convert(m, received_at)).collect())
    }

    async fn delete_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        let entries = entries
            .iter()
            .map(|e| DeleteMessageBatchRequestEntry::builder().id(&*e.id).receipt_handle(&*e.receipt_handle).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueueError::permanent("InvalidParameterValue", e.to_string()))?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify("DeleteMessageBatch", e))?;
        Ok(failures(out.failed()))
    }

    async fn change_visibility_batch(&self, entries: &[BatchEntry]) -> Result<Vec<BatchFailure>, QueueError> {
        let entries = entries
            .iter()
            .map(|e| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(&*e.id)
                    .receipt_handle(&*e.receipt_handle)
                    .visibility_timeout(seconds(e.visibility))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueueError::permanent("InvalidParameterValue", e.to_string()))?;
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify("ChangeMessageVisibilityBatch", e))?;
        Ok(failures(out.failed()))
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<String, QueueError> {
        let attributes = message
            .attributes
            .iter()
            .map(|(k, v)| attribute_value(v).map(|v| (k.clone(), v)))
            .collect::<Result<HashMap<_, _>, _>>()?;
        let mut call = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(&message.body)
            .set_message_group_id(message.group_id.clone())
            .set_message_deduplication_id(message.deduplication_id.clone());
        if !message.delay.is_zero() {
            call = call.delay_seconds(seconds(message.delay));
        }
        if !attributes.is_empty() {
            call = call.set_message_attributes(Some(attributes));
        }
        let out = call.send().await.map_err(|e| classify("SendMessage", e))?;
        Ok(out.message_id.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_sqs::types::{Message as SdkMessage, MessageSystemAttributeName as Name};

    use super::*;

    /// A received message keeps SQS's system attributes as pairs: the typed fields and the
    /// trace header read them without a map, and the map a handler asks for has them all,
    /// a name SQS adds later included.
    #[test]
    fn system_attributes_from_sqs_are_kept_whole() {
        let sdk = SdkMessage::builder()
            .message_id("m-1")
            .receipt_handle("r-1")
            .body("{}")
            .attributes(Name::ApproximateReceiveCount, "3")
            .attributes(Name::SentTimestamp, "1700000000123")
            .attributes(Name::MessageGroupId, "g1")
            .attributes(Name::AwsTraceHeader, "Root=1-5759e988-bd862e3fe1be46a994272793")
            .attributes(Name::from("SomethingNew"), "x")
            .build();
        let m = convert(sdk, tokio::time::Instant::now()).expect("id and receipt present");
        assert_eq!(m.receive_count(), 3);
        assert_eq!(m.group_id(), Some("g1"));
        assert_eq!(m.sent_timestamp(), Some(std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)));
        assert_eq!(m.sent_system_attribute("AWSTraceHeader"), Some("Root=1-5759e988-bd862e3fe1be46a994272793"));
        let map = m.attributes();
        assert_eq!(map.len(), 5, "{map:?}");
        assert_eq!(map.get("SomethingNew").map(String::as_str), Some("x"));
        assert_eq!(map.get("ApproximateReceiveCount").map(String::as_str), Some("3"));
        assert_eq!(m.sent_system_attribute("SomethingNew"), Some("x"), "read from the map once built");
    }
}
