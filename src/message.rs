//! A received message, as a handler sees it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The value of a message attribute, by SQS data type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttributeValue {
    /// `String` (or `String.custom`).
    String(String),
    /// `Number` (or `Number.custom`): SQS carries numbers as text, up to 38 digits.
    Number(String),
    /// `Binary` (or `Binary.custom`).
    Binary(Vec<u8>),
}

/// A message attribute: its SQS data type (with any custom suffix, e.g. `Number.float`) and
/// its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageAttribute {
    data_type: String,
    value: AttributeValue,
}

impl MessageAttribute {
    /// A `String` attribute.
    pub fn string(value: impl Into<String>) -> Self {
        Self { data_type: "String".into(), value: AttributeValue::String(value.into()) }
    }

    /// A `Number` attribute; SQS keeps numbers as text.
    pub fn number(value: impl ToString) -> Self {
        Self { data_type: "Number".into(), value: AttributeValue::Number(value.to_string()) }
    }

    /// A `Binary` attribute.
    pub fn binary(value: impl Into<Vec<u8>>) -> Self {
        Self { data_type: "Binary".into(), value: AttributeValue::Binary(value.into()) }
    }

    /// An attribute with a custom data type such as `Number.float` or `String.json`; the
    /// value's kind follows the part before the dot. `None` when the base type is not
    /// `String`, `Number` or `Binary`, or the value does not fit it.
    pub fn with_type(data_type: impl Into<String>, text: Option<String>, bytes: Option<Vec<u8>>) -> Option<Self> {
        let data_type = data_type.into();
        let base = data_type.split('.').next().unwrap_or_default();
        let value = match (base, text, bytes) {
            ("String", Some(t), _) => AttributeValue::String(t),
            ("Number", Some(t), _) => AttributeValue::Number(t),
            ("Binary", _, Some(b)) => AttributeValue::Binary(b),
            _ => return None,
        };
        Some(Self { data_type, value })
    }

    /// The SQS data type, custom suffix included.
    pub fn data_type(&self) -> &str {
        &self.data_type
    }

    /// The value.
    pub fn value(&self) -> &AttributeValue {
        &self.value
    }

    /// The text of a `String` or `Number` attribute.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            AttributeValue::String(s) | AttributeValue::Number(s) => Some(s),
            AttributeValue::Binary(_) => None,
        }
    }

    /// The bytes of a `Binary` attribute.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            AttributeValue::Binary(b) => Some(b),
            _ => None,
        }
    }
}

/// One received message.
///
/// The receipt handle stays inside the runtime: handlers answer with an
/// [`Outcome`](crate::Outcome) and the runtime deletes or re-times the message.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) id: String,
    pub(crate) body: String,
    pub(crate) attributes: HashMap<String, String>,
    pub(crate) message_attributes: HashMap<String, MessageAttribute>,
    pub(crate) receive_count: u32,
    pub(crate) sent_timestamp: Option<SystemTime>,
    pub(crate) group_id: Option<String>,
    pub(crate) receipt_handle: String,
    /// When this delivery was received: SQS caps a message's time in flight at 12 hours
    /// from here.
    pub(crate) received_at: tokio::time::Instant,
}

impl Message {
    /// A message with `id` and `body`, as if received for the first time: for unit tests of
    /// handlers. Add attributes with [`with_attribute`](Self::with_attribute).
    pub fn new(id: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            body: body.into(),
            attributes: HashMap::new(),
            message_attributes: HashMap::new(),
            receive_count: 1,
            sent_timestamp: Some(SystemTime::now()),
            group_id: None,
            receipt_handle: String::new(),
            received_at: tokio::time::Instant::now(),
        }
    }

    /// Adds a message attribute (builder style, for tests).
    #[must_use]
    pub fn with_attribute(mut self, name: impl Into<String>, attribute: MessageAttribute) -> Self {
        self.message_attributes.insert(name.into(), attribute);
        self
    }

    /// Sets the receive count (builder style, for tests).
    #[must_use]
    pub fn with_receive_count(mut self, count: u32) -> Self {
        self.receive_count = count.max(1);
        self
    }

    /// The SQS message id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The body, as sent.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// Deserializes the body as JSON.
    ///
    /// # Errors
    ///
    /// The body is not JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.body)
    }

    /// SQS system attributes (`SentTimestamp`, `ApproximateReceiveCount`,
    /// `ApproximateFirstReceiveTimestamp`, `SenderId`, `MessageGroupId`, …), as SQS names them.
    pub fn attributes(&self) -> &HashMap<String, String> {
        &self.attributes
    }

    /// The message attributes the sender set.
    pub fn message_attributes(&self) -> &HashMap<String, MessageAttribute> {
        &self.message_attributes
    }

    /// One message attribute by name.
    pub fn message_attribute(&self, name: &str) -> Option<&MessageAttribute> {
        self.message_attributes.get(name)
    }

    /// How many times SQS has delivered this message, this delivery included
    /// (`ApproximateReceiveCount`; 1 on the first attempt).
    pub fn receive_count(&self) -> u32 {
        self.receive_count
    }

    /// When the message was sent (`SentTimestamp`).
    pub fn sent_timestamp(&self) -> Option<SystemTime> {
        self.sent_timestamp
    }

    /// The FIFO `MessageGroupId`, on FIFO queues.
    pub fn group_id(&self) -> Option<&str> {
        self.group_id.as_deref()
    }

    /// Reads the attributes the runtime derives from SQS system attributes.
    pub(crate) fn derive_system_fields(&mut self) {
        self.receive_count =
            self.attributes.get("ApproximateReceiveCount").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        self.sent_timestamp = self
            .attributes
            .get("SentTimestamp")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        self.group_id = self.attributes.get("MessageGroupId").cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_attributes_feed_the_typed_fields() {
        let mut m = Message::new("m1", "{}");
        m.attributes.insert("ApproximateReceiveCount".into(), "3".into());
        m.attributes.insert("SentTimestamp".into(), "1700000000123".into());
        m.attributes.insert("MessageGroupId".into(), "g1".into());
        m.derive_system_fields();
        assert_eq!(m.receive_count(), 3);
        assert_eq!(m.group_id(), Some("g1"));
        assert_eq!(m.sent_timestamp(), Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)));
    }

    #[test]
    fn custom_attribute_types_keep_their_suffix() {
        let a = MessageAttribute::with_type("Number.float", Some("1.5".into()), None).unwrap();
        assert_eq!(a.data_type(), "Number.float");
        assert_eq!(a.as_str(), Some("1.5"));
        assert_eq!(a.value(), &AttributeValue::Number("1.5".into()));
        let b = MessageAttribute::with_type("Binary.gz", None, Some(vec![1, 2])).unwrap();
        assert_eq!(b.as_bytes(), Some(&[1u8, 2][..]));
        assert!(MessageAttribute::with_type("Date", Some("x".into()), None).is_none());
        assert!(MessageAttribute::with_type("Binary", Some("x".into()), None).is_none());
    }
}
