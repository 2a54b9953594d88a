//! The calls on messages: send, receive, delete and change visibility, one at a time and in
//! batches.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use holdfast::{MessageAttribute, OutgoingMessage, ReceiveOptions};

use crate::digest::{md5_hex, md5_of_attributes};
use crate::error::{
    ApiError, BATCH_ENTRY_IDS_NOT_DISTINCT, BATCH_REQUEST_TOO_LONG, EMPTY_BATCH_REQUEST, INVALID_ATTRIBUTE_NAME,
    INVALID_BATCH_ENTRY_ID, INVALID_MESSAGE_CONTENTS, INVALID_PARAMETER_VALUE, TOO_MANY_ENTRIES,
};
use crate::input::Input;
use crate::queues::{Entry, Limits, MAX_MESSAGE_SIZE};

pub(crate) const ACTIONS: [&str; 7] = [
    "SendMessage",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
];

const MAX_VISIBILITY_S: i64 = 43_200;
const MAX_ATTRIBUTES: usize = 10;
const SYSTEM_ATTRIBUTES: [&str; 10] = [
    "All",
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageDeduplicationId",
    "MessageGroupId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
];

/// One of [`ACTIONS`] on `entry`.
pub(crate) async fn call(entry: &Entry, account: &str, action: &str, input: &Input<'_>) -> Result<Value, ApiError> {
    match action {
        "SendMessage" => {
            let limits = entry.limits();
            let (message, digests) = outgoing(entry, &limits, input)?;
            let size = message_size(input)?;
            if size > limits.max_size {
                return Err(too_long(limits.max_size));
            }
            let sent = entry.queue.send_message(&message)?;
            Ok(sent_json(digests, sent, None))
        }
        "SendMessageBatch" => {
            let entries = batch(input)?;
            let limits = entry.limits();
            let mut total = 0;
            for e in &entries {
                total += message_size(&e.1)?;
            }
            if total > limits.max_size.max(MAX_MESSAGE_SIZE) {
                return Err(ApiError::new(
                    BATCH_REQUEST_TOO_LONG,
                    format!(
                        "Batch requests cannot be longer than {} bytes. You have sent {total} bytes.",
                        limits.max_size
                    ),
                ));
            }
            let mut successful = Vec::new();
            let mut failed = Vec::new();
            for (id, e) in &entries {
                let answer = outgoing(entry, &limits, e).and_then(|(message, digests)| {
                    if message_size(e)? > limits.max_size {
                        return Err(too_long(limits.max_size));
                    }
                    Ok(sent_json(digests, entry.queue.send_message(&message)?, Some(id)))
                });
                match answer {
                    Ok(v) => successful.push(v),
                    Err(error) => failed.push(failure(id, &error)),
                }
            }
            Ok(json!({ "Successful": successful, "Failed": failed }))
        }
        "ReceiveMessage" => receive(entry, account, input).await,
        "DeleteMessage" => {
            let receipt = input.required_str("ReceiptHandle")?;
            entry.queue.delete_message(receipt)?;
            Ok(json!({}))
        }
        "DeleteMessageBatch" => {
            let entries = batch(input)?;
            let mut receipts = Vec::with_capacity(entries.len());
            let mut failed = Vec::new();
            let mut ids = Vec::with_capacity(entries.len());
            for (id, e) in &entries {
                match e.required_str("ReceiptHandle") {
                    Ok(r) => {
                        receipts.push(r);
                        ids.push(*id);
                    }
                    Err(error) => failed.push(failure(id, &error)),
                }
            }
            let mut successful = Vec::with_capacity(ids.len());
            for (id, answer) in ids.into_iter().zip(entry.queue.delete_messages(&receipts)) {
                match answer {
                    Ok(()) => successful.push(json!({ "Id": id })),
                    Err(e) => failed.push(failure(id, &e.into())),
                }
            }
            Ok(json!({ "Successful": successful, "Failed": failed }))
        }
        "ChangeMessageVisibility" => {
            let receipt = input.required_str("ReceiptHandle")?;
            let timeout = visibility(input, true)?.expect("required");
            entry.queue.change_visibility(receipt, timeout)?;
            Ok(json!({}))
        }
        "ChangeMessageVisibilityBatch" => {
            let entries = batch(input)?;
            let mut changes = Vec::with_capacity(entries.len());
            let mut ids = Vec::with_capacity(entries.len());
            let mut failed = Vec::new();
            for (id, e) in &entries {
                let change = e.required_str("ReceiptHandle").and_then(|r| Ok((r, visibility(e, false)?)));
                match change {
                    // SQS takes an entry without a timeout as zero.
                    Ok((r, timeout)) => {
                        changes.push((r, timeout.unwrap_or(Duration::ZERO)));
                        ids.push(*id);
                    }
                    Err(error) => failed.push(failure(id, &error)),
                }
            }
            let mut successful = Vec::with_capacity(ids.len());
            for (id, answer) in ids.into_iter().zip(entry.queue.change_visibilities(&changes)) {
                match answer {
                    Ok(()) => successful.push(json!({ "Id": id })),
                    Err(e) => failed.push(failure(id, &e.into())),
                }
            }
            Ok(json!({ "Successful": successful, "Failed": failed }))
        }
        _ => Err(ApiError::new(crate::error::INTERNAL, format!("{action} is not a message call"))),
    }
}

fn too_long(max: usize) -> ApiError {
    ApiError::new(
        INVALID_PARAMETER_VALUE,
        format!("One or more parameters are invalid. Reason: Message must be shorter than {max} bytes."),
    )
}

fn failure(id: &str, error: &ApiError) -> Value {
    let code = error.kind.code.strip_prefix("AWS.SimpleQueueService.").unwrap_or(error.kind.code);
    json!({ "Id": id, "SenderFault": error.sender_fault(), "Code": code, "Message": error.message })
}

/// A batch call's entries with their ids, checked as SQS checks them: 1 to 10 entries,
/// distinct ids of `[A-Za-z0-9_-]{1,80}`.
fn batch<'a>(input: &Input<'a>) -> Result<Vec<(&'a str, Input<'a>)>, ApiError> {
    let entries = input.struct_list("Entries")?;
    if entries.is_empty() {
        return Err(ApiError::new(EMPTY_BATCH_REQUEST, "There should be at least one entry in the request."));
    }
    if entries.len() > 10 {
        return Err(ApiError::new(
            TOO_MANY_ENTRIES,
            format!("Maximum number of entries per request are 10. You have sent {}.", entries.len()),
        ));
    }
    let mut seen = HashSet::with_capacity(entries.len());
    entries
        .into_iter()
        .map(|e| {
            let id = e.required_str("Id")?;
            let valid =
                (1..=80).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(ApiError::new(
                    INVALID_BATCH_ENTRY_ID,
                    "A batch entry id can only contain alphanumeric characters, hyphens and underscores. \
                     It can be at most 80 letters long.",
                ));
            }
            if !seen.insert(id) {
                return Err(ApiError::new(BATCH_ENTRY_IDS_NOT_DISTINCT, format!("Id {id} repeated.")));
            }
            Ok((id, e))
        })
        .collect()
}

fn visibility(input: &Input<'_>, required: bool) -> Result<Option<Duration>, ApiError> {
    match input.int("VisibilityTimeout")? {
        None if required => Err(ApiError::missing("VisibilityTimeout")),
        None => Ok(None),
        Some(v @ 0..=MAX_VISIBILITY_S) => Ok(Some(Duration::from_secs(v.unsigned_abs()))),
        Some(v) => Err(ApiError::invalid("VisibilityTimeout", v, "Must be between 0 and 43200, if provided.")),
    }
}

/// Body and attribute bytes, as SQS counts them against the size limit.
fn message_size(input: &Input<'_>) -> Result<usize, ApiError> {
    let mut size = input.str("MessageBody")?.map_or(0, str::len);
    for (name, a) in input.struct_map("MessageAttributes")? {
        size += name.len() + a.str("DataType")?.map_or(0, str::len) + a.str("StringValue")?.map_or(0, str::len);
        size += a.str("BinaryValue")?.map_or(0, |b| b.len() / 4 * 3);
    }
    Ok(size)
}

/// Characters SQS accepts in a body: XML's.
fn valid_text(s: &str) -> bool {
    s.chars().all(|c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..))
}

/// SQS's ids of groups and deduplication: 1 to 128 letters, digits and punctuation.
fn valid_token(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

struct Digests {
    body: String,
    attributes: Option<String>,
    system: Option<String>,
}

fn outgoing(entry: &Entry, limits: &Limits, input: &Input<'_>) -> Result<(OutgoingMessage, Digests), ApiError> {
    let body = input.required_str("MessageBody")?;
    if body.is_empty() {
        return Err(ApiError::missing("MessageBody"));
    }
    if !valid_text(body) {
        return Err(ApiError::new(
            INVALID_MESSAGE_CONTENTS,
            "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to \
             #xFFFD | #x10000 to #x10FFFF",
        ));
    }
    let mut message = OutgoingMessage::new(body);
    match input.int("DelaySeconds")? {
        Some(_) if entry.fifo => {
            return Err(ApiError::invalid(
                "DelaySeconds",
                input.int("DelaySeconds")?.unwrap_or_default(),
                "The request include parameter that is not valid for this queue type.",
            ));
        }
        Some(d @ 0..=900) => message = message.delay(Duration::from_secs(d.unsigned_abs())),
        Some(d) => return Err(ApiError::invalid("DelaySeconds", d, "Must be >= 0 and <= 900, if provided.")),
        None => message = message.delay(limits.delay),
    }
    let group = input.str("MessageGroupId")?;
    let dedup = input.str("MessageDeduplicationId")?;
    for (name, value) in [("MessageGroupId", group), ("MessageDeduplicationId", dedup)] {
        if let Some(v) = value
            && !valid_token(v)
        {
            return Err(ApiError::invalid(
                name,
                v,
                &format!("{name} can only include alphanumeric and punctuation characters. 1 to 128 in length."),
            ));
        }
    }
    if entry.fifo {
        let group = group.ok_or_else(|| ApiError::missing("MessageGroupId"))?;
        message = message.group_id(group);
        match dedup {
            Some(d) => message = message.deduplication_id(d),
            None if limits.content_dedup => {}
            None => {
                return Err(ApiError::new(
                    INVALID_PARAMETER_VALUE,
                    "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId \
                     provided explicitly",
                ));
            }
        }
    } else if dedup.is_some() {
        return Err(ApiError::invalid(
            "MessageDeduplicationId",
            dedup.unwrap_or_default(),
            "The request includes a parameter that is not valid for this queue type.",
        ));
    } else if let Some(g) = group {
        message = message.group_id(g);
    }
    let attributes = message_attributes(&input.struct_map("MessageAttributes")?, false)?;
    let system = message_attributes(&input.struct_map("MessageSystemAttributes")?, true)?;
    let digests = Digests {
        body: md5_hex(body.as_bytes()),
        attributes: (!attributes.is_empty()).then(|| md5_of_attributes(attributes.iter().map(|(k, v)| (*k, v)))),
        system: (!system.is_empty()).then(|| md5_of_attributes(system.iter().map(|(k, v)| (*k, v)))),
    };
    for (name, value) in attributes {
        message = message.attribute(name, value);
    }
    Ok((message, digests))
}

fn message_attributes<'a>(
    given: &[(&'a str, Input<'a>)],
    system: bool,
) -> Result<Vec<(&'a str, MessageAttribute)>, ApiError> {
    if given.len() > MAX_ATTRIBUTES {
        return Err(ApiError::new(
            INVALID_PARAMETER_VALUE,
            format!("Number of message attributes [{}] exceeds the allowed maximum [{MAX_ATTRIBUTES}].", given.len()),
        ));
    }
    let bad = |m: String| ApiError::new(INVALID_PARAMETER_VALUE, m);
    given
        .iter()
        .map(|(name, a)| {
            if system && *name != "AWSTraceHeader" {
                return Err(bad(format!("Message system attribute name '{name}' is invalid.")));
            }
            let lower = name.to_ascii_lowercase();
            let valid_name = !system
                && name.len() <= 256
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                && !name.starts_with('.')
                && !name.ends_with('.')
                && !name.contains("..")
                && !lower.starts_with("aws.")
                && !lower.starts_with("amazon.");
            if !valid_name && !system {
                return Err(bad(format!("Message attribute name '{name}' is invalid.")));
            }
            let data_type = a.str("DataType")?.filter(|t| !t.is_empty()).ok_or_else(|| {
                bad(format!("The message attribute '{name}' must contain non-empty message attribute type."))
            })?;
            let text = a.str("StringValue")?;
            let bytes = match a.str("BinaryValue")? {
                Some(b) => Some(BASE64.decode(b).map_err(|_| {
                    ApiError::new(crate::error::SERIALIZATION, format!("BinaryValue of '{name}' is not base64"))
                })?),
                None => None,
            };
            let base = data_type.split('.').next().unwrap_or_default();
            match (base, text, &bytes) {
                ("String" | "Number", Some(t), _) if !t.is_empty() => {
                    if !valid_text(t) {
                        return Err(bad(format!("The message attribute '{name}' contains invalid characters.")));
                    }
                    if base == "Number" && !valid_number(t) {
                        return Err(bad(format!(
                            "Can't cast the value of message (user) attribute '{name}' to a number."
                        )));
                    }
                }
                ("Binary", _, Some(b)) if !b.is_empty() => {}
                ("String" | "Number" | "Binary", _, _) => {
                    return Err(bad(format!(
                        "The message attribute '{name}' must contain non-empty message attribute value for message \
                         attribute type '{data_type}'."
                    )));
                }
                _ => {
                    return Err(bad(format!(
                        "The type of message (user) attribute '{name}' is invalid. You must use only the following \
                         supported type prefixes: Binary, Number, String."
                    )));
                }
            }
            let attribute = MessageAttribute::with_type(data_type, text.map(str::to_owned), bytes)
                .ok_or_else(|| bad(format!("The message attribute '{name}' is invalid.")))?;
            Ok((*name, attribute))
        })
        .collect()
}

/// SQS's numbers: up to 38 significant digits, from -10^128 to 10^126.
fn valid_number(t: &str) -> bool {
    let digits = t.bytes().filter(u8::is_ascii_digit).count();
    digits <= 38 && t.parse::<f64>().is_ok_and(|n| n.is_finite() && n.abs() <= 1e126)
}

fn sent_json(digests: Digests, sent: holdfast::SentMessage, id: Option<&str>) -> Value {
    let mut out = Map::new();
    if let Some(id) = id {
        out.insert("Id".into(), id.into());
    }
    out.insert("MessageId".into(), sent.id().into());
    out.insert("MD5OfMessageBody".into(), digests.body.into());
    if let Some(d) = digests.attributes {
        out.insert("MD5OfMessageAttributes".into(), d.into());
    }
    if let Some(d) = digests.system {
        out.insert("MD5OfMessageSystemAttributes".into(), d.into());
    }
    if let Some(s) = sent.sequence_number() {
        out.insert("SequenceNumber".into(), s.into());
    }
    Value::Object(out)
}

async fn receive(entry: &Entry, account: &str, input: &Input<'_>) -> Result<Value, ApiError> {
    let max = match input.int("MaxNumberOfMessages")? {
        None => 1,
        Some(n @ 1..=10) => usize::try_from(n).expect("in range"),
        Some(n) => return Err(ApiError::invalid("MaxNumberOfMessages", n, "Must be between 1 and 10, if provided.")),
    };
    let wait = match input.int("WaitTimeSeconds")? {
        None => entry.limits().wait,
        Some(w @ 0..=20) => Duration::from_secs(w.unsigned_abs()),
        Some(w) => return Err(ApiError::invalid("WaitTimeSeconds", w, "Must be >= 0 and <= 20, if provided.")),
    };
    let visibility = visibility(input, false)?;
    let mut system: Vec<&str> = input.str_list("AttributeNames")?;
    system.extend(input.str_list("MessageSystemAttributeNames")?);
    for name in &system {
        if !SYSTEM_ATTRIBUTES.contains(name) && !crate::queues::is_queue_attribute(name) {
            return Err(ApiError::new(INVALID_ATTRIBUTE_NAME, format!("Unknown Attribute {name}.")));
        }
    }
    let user = input.str_list("MessageAttributeNames")?;
    let attempt = input.str("ReceiveRequestAttemptId")?;
    if let Some(a) = attempt
        && !valid_token(a)
    {
        return Err(ApiError::invalid(
            "ReceiveRequestAttemptId",
            a,
            "ReceiveRequestAttemptId can only include alphanumeric and punctuation characters. 1 to 128 in length.",
        ));
    }
    let attempt = attempt.filter(|_| entry.fifo);
    if let Some(a) = attempt {
        entry.forget_old_attempts();
        if let Some((_, answer)) = entry.attempts.lock().expect("attempts poisoned").get(a) {
            return Ok(answer.clone());
        }
    }
    let mut options = ReceiveOptions::new().max_messages(max).wait_time(wait);
    if let Some(v) = visibility {
        options = options.visibility_timeout(v);
    }
    if let Some(a) = attempt {
        options = options.attempt_id(a);
    }
    let deliveries = entry.queue.receive_messages(&options).await?;
    let all_system = system.contains(&"All");
    let all_user = user.iter().any(|n| *n == "All" || *n == ".*");
    let prefixes: Vec<&str> = user.iter().filter_map(|n| n.strip_suffix(".*")).collect();
    let wanted_user = |name: &str| {
        all_user
            || user.contains(&name)
            || prefixes.iter().any(|p| name.strip_prefix(p).is_some_and(|r| r.starts_with('.')))
    };
    let messages: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            let m = d.message();
            let mut out = Map::new();
            out.insert("MessageId".into(), m.id().into());
            out.insert("ReceiptHandle".into(), d.receipt_handle().into());
            out.insert("MD5OfBody".into(), md5_hex(m.raw_body().as_bytes()).into());
            out.insert("Body".into(), m.raw_body().into());
            let mut attributes = Map::new();
            for (k, v) in m.attributes() {
                if all_system || system.contains(&k.as_str()) {
                    attributes.insert(k.clone(), v.clone().into());
                }
            }
            if all_system || system.contains(&"SenderId") {
                attributes.insert("SenderId".into(), account.into());
            }
            if !attributes.is_empty() {
                out.insert("Attributes".into(), Value::Object(attributes));
            }
            let chosen: Vec<(&str, &MessageAttribute)> =
                m.message_attributes().iter().filter(|(k, _)| wanted_user(k)).map(|(k, v)| (k.as_str(), v)).collect();
            if !chosen.is_empty() {
                out.insert("MD5OfMessageAttributes".into(), md5_of_attributes(chosen.iter().copied()).into());
                let rendered: Map<String, Value> = chosen
                    .iter()
                    .map(|(k, a)| {
                        let value = match a.as_bytes() {
                            Some(b) => json!({ "DataType": a.data_type(), "BinaryValue": BASE64.encode(b) }),
                            None => json!({ "DataType": a.data_type(), "StringValue": a.as_str().unwrap_or_default() }),
                        };
                        ((*k).to_owned(), value)
                    })
                    .collect();
                out.insert("MessageAttributes".into(), Value::Object(rendered));
            }
            Value::Object(out)
        })
        .collect();
    let answer = if messages.is_empty() { json!({}) } else { json!({ "Messages": messages }) };
    if let Some(a) = attempt
        && !deliveries.is_empty()
    {
        entry.attempts.lock().expect("attempts poisoned").insert(a.to_owned(), (Instant::now(), answer.clone()));
    }
    Ok(answer)
}
