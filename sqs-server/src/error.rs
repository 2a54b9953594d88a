//! SQS's errors as the JSON 1.0 protocol carries them: a `__type` in the body and the query
//! protocol's code in `x-amzn-query-error`, which the SDKs report as the error code.

use axum::http::StatusCode;

/// One kind of SQS error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind {
    /// The `__type` of the JSON body.
    shape: &'static str,
    /// The code of `x-amzn-query-error` (and of a failed batch entry).
    pub(crate) code: &'static str,
    status: StatusCode,
    sender: bool,
}

const fn sender(shape: &'static str, code: &'static str) -> Kind {
    Kind { shape, code, status: StatusCode::BAD_REQUEST, sender: true }
}

pub(crate) const QUEUE_DOES_NOT_EXIST: Kind =
    sender("com.amazonaws.sqs#QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue");
pub(crate) const QUEUE_NAME_EXISTS: Kind = sender("com.amazonaws.sqs#QueueNameExists", "QueueAlreadyExists");
pub(crate) const RECEIPT_HANDLE_IS_INVALID: Kind =
    sender("com.amazonaws.sqs#ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid");
pub(crate) const MESSAGE_NOT_INFLIGHT: Kind =
    sender("com.amazonaws.sqs#MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight");
pub(crate) const BATCH_ENTRY_IDS_NOT_DISTINCT: Kind =
    sender("com.amazonaws.sqs#BatchEntryIdsNotDistinct", "AWS.SimpleQueueService.BatchEntryIdsNotDistinct");
pub(crate) const TOO_MANY_ENTRIES: Kind =
    sender("com.amazonaws.sqs#TooManyEntriesInBatchRequest", "AWS.SimpleQueueService.TooManyEntriesInBatchRequest");
pub(crate) const EMPTY_BATCH_REQUEST: Kind =
    sender("com.amazonaws.sqs#EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest");
pub(crate) const INVALID_BATCH_ENTRY_ID: Kind =
    sender("com.amazonaws.sqs#InvalidBatchEntryId", "AWS.SimpleQueueService.InvalidBatchEntryId");
pub(crate) const BATCH_REQUEST_TOO_LONG: Kind =
    sender("com.amazonaws.sqs#BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong");
pub(crate) const INVALID_ATTRIBUTE_NAME: Kind =
    sender("com.amazonaws.sqs#InvalidAttributeName", "InvalidAttributeName");
pub(crate) const INVALID_ATTRIBUTE_VALUE: Kind =
    sender("com.amazonaws.sqs#InvalidAttributeValue", "InvalidAttributeValue");
pub(crate) const INVALID_MESSAGE_CONTENTS: Kind =
    sender("com.amazonaws.sqs#InvalidMessageContents", "InvalidMessageContents");
pub(crate) const PURGE_QUEUE_IN_PROGRESS: Kind =
    sender("com.amazonaws.sqs#PurgeQueueInProgress", "AWS.SimpleQueueService.PurgeQueueInProgress");
pub(crate) const INVALID_ADDRESS: Kind = sender("com.amazonaws.sqs#InvalidAddress", "InvalidAddress");
pub(crate) const UNSUPPORTED_OPERATION: Kind =
    sender("com.amazonaws.sqs#UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation");
/// Common errors of every AWS service: they have no shape in the SQS model.
pub(crate) const INVALID_PARAMETER_VALUE: Kind =
    sender("com.amazonaws.sqs#InvalidParameterValueException", "InvalidParameterValue");
pub(crate) const MISSING_PARAMETER: Kind = sender("com.amazonaws.sqs#MissingParameterException", "MissingParameter");
pub(crate) const UNKNOWN_OPERATION: Kind =
    sender("com.amazon.coral.service#UnknownOperationException", "InvalidAction");
pub(crate) const SERIALIZATION: Kind =
    sender("com.amazon.coral.service#SerializationException", "SerializationException");
pub(crate) const INTERNAL: Kind = Kind {
    shape: "com.amazon.coral.service#InternalFailure",
    code: "InternalFailure",
    status: StatusCode::INTERNAL_SERVER_ERROR,
    sender: false,
};

/// The `Kind` whose short name (the queue's own error code, e.g. `MessageNotInflight`) is
/// `code`.
pub(crate) fn kind_of(code: &str) -> Kind {
    match code {
        "ReceiptHandleIsInvalid" => RECEIPT_HANDLE_IS_INVALID,
        "MessageNotInflight" => MESSAGE_NOT_INFLIGHT,
        "InvalidParameterValue" => INVALID_PARAMETER_VALUE,
        "MissingParameter" => MISSING_PARAMETER,
        "InvalidMessageContents" => INVALID_MESSAGE_CONTENTS,
        _ => INTERNAL,
    }
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) kind: Kind,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub(crate) fn missing(parameter: &str) -> Self {
        Self::new(MISSING_PARAMETER, format!("The request must contain the parameter {parameter}."))
    }

    pub(crate) fn invalid(parameter: &str, value: impl std::fmt::Display, reason: &str) -> Self {
        Self::new(
            INVALID_PARAMETER_VALUE,
            format!("Value {value} for parameter {parameter} is invalid. Reason: {reason}"),
        )
    }

    pub(crate) fn no_queue() -> Self {
        Self::new(QUEUE_DOES_NOT_EXIST, "The specified queue does not exist.")
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.kind.status
    }

    /// `code;Sender` or `code;Receiver`.
    pub(crate) fn query_error(&self) -> String {
        format!("{};{}", self.kind.code, if self.kind.sender { "Sender" } else { "Receiver" })
    }

    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({ "__type": self.kind.shape, "message": self.message })
    }

    pub(crate) fn sender_fault(&self) -> bool {
        self.kind.sender
    }
}

impl From<holdfast::MemoryQueueError> for ApiError {
    fn from(e: holdfast::MemoryQueueError) -> Self {
        Self::new(kind_of(e.code()), e.message())
    }
}
