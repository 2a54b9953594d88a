//! A received message, as a handler sees it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
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

/// The SNS notification a message arrived in, when it was delivered through an SNS
/// subscription without raw message delivery (as Copilot's topic subscriptions are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsNotification {
    pub(crate) topic_arn: String,
    pub(crate) message_id: String,
    pub(crate) subject: Option<String>,
    pub(crate) timestamp: Option<String>,
}

impl SnsNotification {
    /// The topic the message was published to.
    pub fn topic_arn(&self) -> &str {
        &self.topic_arn
    }

    /// SNS's message id (the SQS message id is [`Message::id`]).
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The subject the publisher set, if any.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// When SNS accepted the message (ISO 8601, as SNS writes it).
    pub fn timestamp(&self) -> Option<&str> {
        self.timestamp.as_deref()
    }
}

/// The message attribute map of every message that has none (most): shared, so that such a
/// message costs no allocation for it. Adding to it copies it first (`Arc::make_mut`).
pub(crate) fn no_attributes() -> Arc<HashMap<String, MessageAttribute>> {
    static EMPTY: LazyLock<Arc<HashMap<String, MessageAttribute>>> = LazyLock::new(Arc::default);
    EMPTY.clone()
}

/// One received message.
///
/// The receipt handle stays inside the runtime: handlers answer with an
/// [`Outcome`](crate::Outcome) and the runtime deletes or re-times the message. Its `Debug`
/// leaves the receipt handle out.
#[derive(Clone)]
pub struct Message {
    pub(crate) id: Arc<str>,
    // Body and attribute maps are shared, not copied, by a clone (a closure handler gets its
    // own `Message`) and by the memory queue's deliveries of a stored message.
    pub(crate) body: Arc<str>,
    pub(crate) attributes: SystemAttributes,
    pub(crate) message_attributes: Arc<HashMap<String, MessageAttribute>>,
    pub(crate) receive_count: u32,
    pub(crate) sent_timestamp: Option<SystemTime>,
    pub(crate) group_id: Option<String>,
    /// The body as it sits in the queue, when it differs from `body` (an SNS envelope).
    pub(crate) raw_body: Option<Arc<str>>,
    // Boxed, and a memory delivery's extra fields behind an `Arc` (a closure handler's clone
    // shares them): most messages have neither, and a message is held inline in its task for
    // as long as it is in flight.
    pub(crate) sns: Option<Box<SnsNotification>>,
    /// The SQS message attributes, when SNS's were merged into `message_attributes`.
    pub(crate) queue_attributes: Option<Arc<HashMap<String, MessageAttribute>>>,
    pub(crate) receipt_handle: Arc<str>,
    /// When this delivery was received: SQS caps a message's time in flight at 12 hours
    /// from here.
    pub(crate) received_at: tokio::time::Instant,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The receipt handle is a credential for this delivery: never printed.
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("body", &self.body)
            .field("attributes", self.attributes())
            .field("message_attributes", &self.message_attributes)
            .field("receive_count", &self.receive_count)
            .field("group_id", &self.group_id)
            .field("sns", &self.sns)
            .finish_non_exhaustive()
    }
}

impl Message {
    /// A message with `id` and `body`, as if received for the first time: for unit tests of
    /// handlers. Add attributes with [`with_attribute`](Self::with_attribute).
    pub fn new(id: impl Into<String>, body: impl Into<String>) -> Self {
        let (id, body) = (id.into().into(), body.into().into());
        Self::shared(id, body, no_attributes(), tokio::time::Instant::now(), Some(SystemTime::now()))
    }

    /// A message from its id, body and message attributes, taken as they are (shared with
    /// the memory queue's stored copy; moved from an SQS answer), as if received once, at
    /// `received_at`. The clock is the caller's to read: a receive reads it once for all its
    /// messages.
    pub(crate) fn shared(
        id: Arc<str>,
        body: Arc<str>,
        message_attributes: Arc<HashMap<String, MessageAttribute>>,
        received_at: tokio::time::Instant,
        sent_timestamp: Option<SystemTime>,
    ) -> Self {
        Self {
            id,
            body,
            attributes: SystemAttributes::default(),
            message_attributes,
            receive_count: 1,
            sent_timestamp,
            group_id: None,
            raw_body: None,
            sns: None,
            queue_attributes: None,
            receipt_handle: Arc::default(),
            received_at,
        }
    }

    /// Adds a message attribute (builder style, for tests).
    #[must_use]
    pub fn with_attribute(mut self, name: impl Into<String>, attribute: MessageAttribute) -> Self {
        Arc::make_mut(&mut self.message_attributes).insert(name.into(), attribute);
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

    /// The body, as sent. For a message delivered through an SNS subscription, the
    /// published message, unwrapped from SNS's envelope (see [`sns`](Self::sns)).
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The body exactly as it sits in the queue: the SNS envelope for a message delivered
    /// through SNS, else the same as [`body`](Self::body).
    pub fn raw_body(&self) -> &str {
        self.raw_body.as_deref().unwrap_or(&self.body)
    }

    /// The SNS notification this message arrived in, if it came through an SNS subscription.
    pub fn sns(&self) -> Option<&SnsNotification> {
        self.sns.as_deref()
    }

    /// Deserializes the body as JSON.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`](crate::DecodeError) when the body is not JSON of type `T`. Its text
    /// names the kind of mistake and where it is, never values from the body, so `msg.json()?`
    /// in a handler logs nothing of the message's content.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::DecodeError> {
        serde_json::from_str(&self.body)
            .map_err(|error| crate::DecodeError::new(&self.id, std::any::type_name::<T>(), &error))
    }

    /// SQS system attributes, as SQS names them: those the worker reads
    /// (`ApproximateReceiveCount`, `SentTimestamp`, and `MessageGroupId` and `AWSTraceHeader`
    /// when the message has them) and those [`Config::system_attributes`](crate::Config::system_attributes)
    /// (`HOLDFAST_SYSTEM_ATTRIBUTES`) asks for, such as `ApproximateFirstReceiveTimestamp`,
    /// `SenderId` or `SequenceNumber`.
    pub fn attributes(&self) -> &HashMap<String, String> {
        self.attributes.map.get_or_init(|| match &self.attributes.sent {
            Some(sent) => Arc::new(sent.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()),
            None => Arc::new(self.memory_attributes()),
        })
    }

    /// One system attribute as SQS sent it, without building the map (a memory-queue
    /// delivery never carries more than its typed fields say).
    pub(crate) fn sent_system_attribute(&self, name: &str) -> Option<&str> {
        if let Some(map) = self.attributes.map.get() {
            return map.get(name).map(String::as_str);
        }
        let sent = self.attributes.sent.as_deref()?;
        sent.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The system attributes, to change (tests).
    #[cfg(test)]
    pub(crate) fn attributes_mut(&mut self) -> &mut HashMap<String, String> {
        self.attributes();
        Arc::make_mut(self.attributes.map.get_mut().expect("initialized above"))
    }

    /// The map SQS would send for a memory-queue delivery, from its typed fields.
    fn memory_attributes(&self) -> HashMap<String, String> {
        let Some(delivery) = &self.attributes.memory else { return HashMap::new() };
        let millis =
            |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis().to_string();
        let mut map = HashMap::with_capacity(6);
        map.insert("ApproximateReceiveCount".to_owned(), self.receive_count.to_string());
        if let Some(sent) = self.sent_timestamp {
            map.insert("SentTimestamp".to_owned(), millis(sent));
        }
        if let Some(first) = delivery.first_received {
            map.insert("ApproximateFirstReceiveTimestamp".to_owned(), millis(first));
        }
        if let Some(group) = &self.group_id {
            map.insert("MessageGroupId".to_owned(), group.clone());
        }
        if let Some(sequence) = delivery.sequence {
            map.insert("SequenceNumber".to_owned(), crate::queue::memory::sequence_number(sequence));
        }
        if let Some(dedup) = &delivery.dedup_id {
            map.insert("MessageDeduplicationId".to_owned(), dedup.to_string());
        }
        // As SQS would: only what the receive asked for.
        map.retain(|name, _| delivery.names.contains(name));
        map
    }

    /// The message attributes the sender set (for a message published to SNS, the
    /// attributes it was published with).
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

    /// Completes a received message: the fields derived from SQS system attributes, and the
    /// SNS envelope unwrapped.
    pub(crate) fn derive_system_fields(&mut self) {
        self.unwrap_sns();
        let get = |name| self.sent_system_attribute(name);
        let receive_count = get("ApproximateReceiveCount").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        let sent_timestamp = get("SentTimestamp")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let group_id = get("MessageGroupId").map(str::to_owned);
        (self.receive_count, self.sent_timestamp, self.group_id) = (receive_count, sent_timestamp, group_id);
    }

    /// Completes a memory-queue delivery, whose typed fields are already set: its system
    /// attribute map is built only if asked for, and an SNS envelope is unwrapped.
    pub(crate) fn complete_memory_delivery(&mut self, delivery: MemoryDelivery) {
        self.attributes = SystemAttributes { memory: Some(Arc::new(delivery)), ..SystemAttributes::default() };
        self.unwrap_sns();
    }
}

/// A message's SQS system attributes as a map, built when first asked for (most handlers
/// never ask) from the pairs SQS sent or from a memory-queue delivery's typed fields.
#[derive(Clone, Default)]
pub(crate) struct SystemAttributes {
    map: OnceLock<Arc<HashMap<String, String>>>,
    /// What SQS sent: one allocation for the pairs, the names of the attributes SQS knows
    /// not copied, where a map cost a table and a copy of every name.
    sent: Option<SentPairs>,
    memory: Option<Arc<MemoryDelivery>>,
}

/// System attribute names and values as SQS sent them.
type SentPairs = Arc<[(Cow<'static, str>, String)]>;

impl SystemAttributes {
    /// The pairs SQS sent; a name SQS documents is not copied.
    pub(crate) fn sent<K: AsRef<str>>(pairs: impl IntoIterator<Item = (K, String)>) -> Self {
        let name = |k: &str| match crate::queue::SystemAttributeNames::KNOWN.iter().find(|n| **n == k) {
            Some(known) => Cow::Borrowed(*known),
            None => Cow::Owned(k.to_owned()),
        };
        let sent = pairs.into_iter().map(|(k, v)| (name(k.as_ref()), v)).collect();
        Self { sent: Some(sent), ..Self::default() }
    }
}

/// What a memory-queue delivery carries beyond the typed fields of [`Message`].
#[derive(Clone, Debug)]
pub(crate) struct MemoryDelivery {
    pub(crate) first_received: Option<SystemTime>,
    /// FIFO: the message's sequence number and the deduplication id its sender gave.
    pub(crate) sequence: Option<u64>,
    pub(crate) dedup_id: Option<Arc<str>>,
    /// The system attributes the receive asked for: the map has only these.
    pub(crate) names: crate::queue::SystemAttributeNames,
}

/// An SNS notification as SNS writes it into a subscribed SQS queue.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    #[serde(rename = "Type")]
    kind: String,
    message_id: String,
    topic_arn: String,
    message: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    message_attributes: HashMap<String, EnvelopeAttribute>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnvelopeAttribute {
    #[serde(rename = "Type")]
    kind: String,
    value: String,
}

impl Message {
    fn unwrap_sns(&mut self) {
        // Cheap checks first: most bodies are not envelopes.
        if self.sns.is_some() || !self.body.trim_start().starts_with('{') || !self.body.contains("\"TopicArn\"") {
            return;
        }
        let Ok(envelope) = serde_json::from_str::<Envelope>(&self.body) else { return };
        if envelope.kind != "Notification" || !envelope.topic_arn.starts_with("arn:") {
            return;
        }
        self.queue_attributes = Some(self.message_attributes.clone());
        for (name, attribute) in envelope.message_attributes {
            let converted = if attribute.kind.starts_with("Binary") {
                use base64::Engine;
                match base64::engine::general_purpose::STANDARD.decode(&attribute.value) {
                    Ok(bytes) => MessageAttribute::with_type(attribute.kind, None, Some(bytes)),
                    Err(_) => None,
                }
            } else {
                MessageAttribute::with_type(attribute.kind, Some(attribute.value), None)
            };
            match converted {
                Some(value) => {
                    Arc::make_mut(&mut self.message_attributes).entry(name).or_insert(value);
                }
                None => {
                    tracing::warn!(message_id = %self.id, attribute = %name, "SNS message attribute could not be read")
                }
            }
        }
        self.sns = Some(Box::new(SnsNotification {
            topic_arn: envelope.topic_arn,
            message_id: envelope.message_id,
            subject: envelope.subject,
            timestamp: envelope.timestamp,
        }));
        self.raw_body = Some(std::mem::replace(&mut self.body, envelope.message.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_attributes_feed_the_typed_fields() {
        let mut m = Message::new("m1", "{}");
        let attributes = m.attributes_mut();
        attributes.insert("ApproximateReceiveCount".into(), "3".into());
        attributes.insert("SentTimestamp".into(), "1700000000123".into());
        attributes.insert("MessageGroupId".into(), "g1".into());
        m.derive_system_fields();
        assert_eq!(m.receive_count(), 3);
        assert_eq!(m.group_id(), Some("g1"));
        assert_eq!(m.sent_timestamp(), Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)));
    }

    /// A notification in the exact form SNS delivers to a subscribed queue without raw
    /// delivery (as in AWS's SNS-to-SQS documentation).
    const ENVELOPE: &str = r#"{
  "Type" : "Notification",
  "MessageId" : "5fe63b2e-0b1c-5ae3-9a43-2e0d7e3a5a0b",
  "TopicArn" : "arn:aws:sns:eu-west-1:123456789012:app-test-orders-ordersTopic",
  "Subject" : "order placed",
  "Message" : "{\"order\":42}",
  "Timestamp" : "2026-11-22T10:00:00.000Z",
  "SignatureVersion" : "1",
  "Signature" : "EXAMPLEpH+...",
  "SigningCertURL" : "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000.pem",
  "UnsubscribeURL" : "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:123456789012:app-test-orders-ordersTopic:0000",
  "MessageAttributes" : {
    "event" : {"Type":"String","Value":"order_placed"},
    "amount" : {"Type":"Number","Value":"12.5"},
    "blob" : {"Type":"Binary","Value":"aGVsbG8="},
    "tags" : {"Type":"String.Array","Value":"[\"a\",\"b\"]"}
  }
}"#;

    #[test]
    fn an_sns_envelope_is_unwrapped() {
        let mut m = Message::new("sqs-id", ENVELOPE);
        m.derive_system_fields();
        assert_eq!(m.body(), r#"{"order":42}"#);
        assert_eq!(m.raw_body(), ENVELOPE);
        let sns = m.sns().expect("an SNS notification");
        assert_eq!(sns.topic_arn(), "arn:aws:sns:eu-west-1:123456789012:app-test-orders-ordersTopic");
        assert_eq!(sns.message_id(), "5fe63b2e-0b1c-5ae3-9a43-2e0d7e3a5a0b");
        assert_eq!(sns.subject(), Some("order placed"));
        assert_eq!(sns.timestamp(), Some("2026-11-22T10:00:00.000Z"));
        assert_eq!(m.message_attribute("event").unwrap().as_str(), Some("order_placed"));
        assert_eq!(m.message_attribute("amount").unwrap().value(), &AttributeValue::Number("12.5".into()));
        assert_eq!(m.message_attribute("blob").unwrap().as_bytes(), Some(&b"hello"[..]));
        assert_eq!(m.message_attribute("tags").unwrap().data_type(), "String.Array");
        #[derive(serde::Deserialize)]
        struct Order {
            order: u32,
        }
        assert_eq!(m.json::<Order>().unwrap().order, 42, "typed handlers see the inner message");
    }

    #[test]
    fn ordinary_json_bodies_are_left_alone() {
        for body in [r#"{"TopicArn":"not an arn","Type":"Notification"}"#, r#"{"order":1}"#, "plain", ""] {
            let mut m = Message::new("id", body);
            m.derive_system_fields();
            assert_eq!(m.body(), body);
            assert!(m.sns().is_none());
        }
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
