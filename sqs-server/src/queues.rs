//! The queues the server holds and the calls on queues themselves: create, delete, list,
//! URL, attributes, purge.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

use holdfast::MemoryQueue;

use crate::error::{
    ApiError, INVALID_ADDRESS, INVALID_ATTRIBUTE_NAME, INVALID_ATTRIBUTE_VALUE, PURGE_QUEUE_IN_PROGRESS,
    QUEUE_NAME_EXISTS,
};
use crate::input::Input;

/// SQS's default message retention: 4 days.
const DEFAULT_RETENTION_S: u64 = 345_600;
/// SQS's largest (and, for new queues, default) message size.
pub(crate) const MAX_MESSAGE_SIZE: usize = 1_048_576;
/// One purge per queue per minute.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a FIFO `ReceiveRequestAttemptId` is remembered.
const ATTEMPT_WINDOW: Duration = Duration::from_secs(300);

/// The attributes a receive can return beside the counts, in the order `All` lists them.
const READ_ONLY: [&str; 6] = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
];
const SETTABLE: [&str; 10] = [
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "Policy",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
];
const SETTABLE_FIFO: [&str; 3] = ["ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit"];

/// One queue: the embedded queue and what SQS keeps beside it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) arn: String,
    pub(crate) queue: MemoryQueue,
    pub(crate) fifo: bool,
    created: u64,
    attributes: Mutex<Attributes>,
    last_purge: Mutex<Option<Instant>>,
    /// FIFO: answers to receives by `ReceiveRequestAttemptId`.
    pub(crate) attempts: Mutex<HashMap<String, (Instant, Value)>>,
}

#[derive(Debug, Clone)]
struct Attributes {
    values: BTreeMap<String, String>,
    last_modified: u64,
}

/// The settings a send or receive reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) delay: Duration,
    pub(crate) max_size: usize,
    pub(crate) wait: Duration,
    pub(crate) content_dedup: bool,
}

impl Entry {
    pub(crate) fn limits(&self) -> Limits {
        let a = self.attributes.lock().expect("attributes poisoned");
        let num = |k: &str| a.values.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Limits {
            delay: Duration::from_secs(num("DelaySeconds")),
            max_size: usize::try_from(num("MaximumMessageSize")).unwrap_or(MAX_MESSAGE_SIZE),
            wait: Duration::from_secs(num("ReceiveMessageWaitTimeSeconds")),
            content_dedup: a.values.get("ContentBasedDeduplication").is_some_and(|v| v == "true"),
        }
    }

    pub(crate) fn forget_old_attempts(&self) {
        let now = Instant::now();
        self.attempts.lock().expect("attempts poisoned").retain(|_, (at, _)| now.duration_since(*at) < ATTEMPT_WINDOW);
    }
}

/// All queues, by name.
#[derive(Debug)]
pub(crate) struct Registry {
    queues: RwLock<BTreeMap<String, Arc<Entry>>>,
    pub(crate) region: String,
    pub(crate) account: String,
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn valid_name(name: &str, fifo: bool) -> bool {
    let base = if fifo { name.strip_suffix(".fifo").unwrap_or("") } else { name };
    (1..=80).contains(&name.len())
        && !base.is_empty()
        && base.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Registry {
    pub(crate) fn new(region: String, account: String) -> Self {
        Self { queues: RwLock::default(), region, account }
    }

    pub(crate) fn url(&self, base: &str, name: &str) -> String {
        format!("{base}/{}/{name}", self.account)
    }

    fn arn(&self, name: &str) -> String {
        format!("arn:aws:sqs:{}:{}:{name}", self.region, self.account)
    }

    fn get(&self, name: &str) -> Option<Arc<Entry>> {
        self.queues.read().expect("registry poisoned").get(name).cloned()
    }

    /// The queue a `QueueUrl` names (by its last path segment, as SQS reads it).
    pub(crate) fn by_url(&self, url: &str) -> Result<Arc<Entry>, ApiError> {
        let path = url.split_once("://").map_or(url, |(_, rest)| rest);
        let Some((_, path)) = path.split_once('/') else {
            return Err(ApiError::new(INVALID_ADDRESS, format!("The address {url} is not valid for this endpoint.")));
        };
        let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        self.get(name).ok_or_else(ApiError::no_queue)
    }

    fn by_arn(&self, arn: &str) -> Option<Arc<Entry>> {
        let name = arn.strip_prefix("arn:aws:sqs:")?.rsplit(':').next()?;
        self.get(name).filter(|e| e.arn == arn)
    }

    /// Creates a queue, or returns the existing one when every attribute given matches it.
    pub(crate) fn create(&self, name: &str, given: &[(&str, &str)]) -> Result<Arc<Entry>, ApiError> {
        let fifo_attr = given.iter().find(|(k, _)| *k == "FifoQueue").map(|(_, v)| *v);
        let fifo = match fifo_attr {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(invalid_value("FifoQueue")),
        };
        if !valid_name(name, fifo) {
            return Err(ApiError::new(
                crate::error::INVALID_PARAMETER_VALUE,
                if fifo || name.ends_with(".fifo") {
                    "The name of a FIFO queue can only include alphanumeric characters, hyphens, or underscores, \
                     must end with .fifo suffix and be 1 to 80 in length."
                } else {
                    "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
                },
            ));
        }
        if let Some(existing) = self.get(name) {
            let current = existing.attributes.lock().expect("attributes poisoned").values.clone();
            for (k, v) in given {
                let same = match *k {
                    "FifoQueue" => (*v == "true") == existing.fifo,
                    "RedrivePolicy" => normalize_redrive(v).ok() == current.get(*k).cloned(),
                    _ => current.get(*k).map(String::as_str) == Some(*v),
                };
                if !same {
                    return Err(ApiError::new(
                        QUEUE_NAME_EXISTS,
                        format!("A queue already exists with the same name and a different value for attribute {k}"),
                    ));
                }
            }
            return Ok(existing);
        }
        let mut values: BTreeMap<String, String> = [
            ("DelaySeconds", "0".to_owned()),
            ("MaximumMessageSize", MAX_MESSAGE_SIZE.to_string()),
            ("MessageRetentionPeriod", DEFAULT_RETENTION_S.to_string()),
            ("ReceiveMessageWaitTimeSeconds", "0".to_owned()),
            ("VisibilityTimeout", "30".to_owned()),
            ("SqsManagedSseEnabled", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if fifo {
            values.insert("FifoQueue".into(), "true".into());
            values.insert("ContentBasedDeduplication".into(), "false".into());
            values.insert("DeduplicationScope".into(), "queue".into());
            values.insert("FifoThroughputLimit".into(), "perQueue".into());
        }
        let builder = MemoryQueue::builder(name);
        let queue = if fifo { builder.fifo().build() } else { builder.build() };
        let entry = Arc::new(Entry {
            name: name.to_owned(),
            arn: self.arn(name),
            queue,
            fifo,
            created: now_s(),
            attributes: Mutex::new(Attributes { values, last_modified: now_s() }),
            last_purge: Mutex::new(None),
            attempts: Mutex::default(),
        });
        let settable: Vec<_> = given.iter().filter(|(k, _)| *k != "FifoQueue").copied().collect();
        self.apply(&entry, &settable)?;
        let mut queues = self.queues.write().expect("registry poisoned");
        // Two creates of one name at once: the first wins, as if they had come in turn.
        Ok(queues.entry(name.to_owned()).or_insert(entry).clone())
    }

    pub(crate) fn delete(&self, entry: &Entry) {
        let mut queues = self.queues.write().expect("registry poisoned");
        if queues.get(&entry.name).is_some_and(|e| std::ptr::eq(&**e, entry)) {
            queues.remove(&entry.name);
        }
    }

    pub(crate) fn names(&self, prefix: &str) -> Vec<String> {
        self.queues.read().expect("registry poisoned").keys().filter(|n| n.starts_with(prefix)).cloned().collect()
    }

    /// `{NAME: {"messages": N}}` for every queue: messages held, visible, in flight or
    /// delayed (a count kept by the queue, not a scan: cheap to ask for often).
    pub(crate) fn depths(&self) -> Value {
        let queues = self.queues.read().expect("registry poisoned");
        let depths = queues.iter().map(|(name, e)| (name.clone(), json!({"messages": e.queue.len()})));
        Value::Object(depths.collect())
    }

    /// Validates every attribute, then applies them all (none when one is invalid).
    pub(crate) fn apply(&self, entry: &Entry, given: &[(&str, &str)]) -> Result<(), ApiError> {
        let mut redrive = None;
        for &(k, v) in given {
            let known = SETTABLE.contains(&k) || (entry.fifo && SETTABLE_FIFO.contains(&k));
            if !known {
                return Err(ApiError::new(INVALID_ATTRIBUTE_NAME, format!("Unknown Attribute {k}.")));
            }
            let range = |lo: u64, hi: u64| v.parse::<u64>().ok().filter(|n| (lo..=hi).contains(n)).map(|_| ());
            let ok = match k {
                "DelaySeconds" => range(0, 900),
                "MaximumMessageSize" => range(1024, MAX_MESSAGE_SIZE as u64),
                "MessageRetentionPeriod" => range(60, 1_209_600),
                "ReceiveMessageWaitTimeSeconds" => range(0, 20),
                "VisibilityTimeout" => range(0, 43_200),
                "KmsDataKeyReusePeriodSeconds" => range(60, 86_400),
                "ContentBasedDeduplication" => matches!(v, "true" | "false").then_some(()),
                "DeduplicationScope" => matches!(v, "queue" | "messageGroup").then_some(()),
                "FifoThroughputLimit" => matches!(v, "perQueue" | "perMessageGroupId").then_some(()),
                "Policy" | "RedriveAllowPolicy" => {
                    (v.is_empty() || serde_json::from_str::<Value>(v).is_ok_and(|p| p.is_object())).then_some(())
                }
                "RedrivePolicy" => {
                    redrive = Some(self.redrive_target(entry, v)?);
                    Some(())
                }
                _ => Some(()),
            };
            if ok.is_none() {
                return Err(invalid_value(k));
            }
        }
        let mut attributes = entry.attributes.lock().expect("attributes poisoned");
        for &(k, v) in given {
            match k {
                "VisibilityTimeout" => entry.queue.set_visibility_timeout(Duration::from_secs(v.parse().unwrap_or(30))),
                "MessageRetentionPeriod" => {
                    entry.queue.set_retention(Some(Duration::from_secs(v.parse().unwrap_or(DEFAULT_RETENTION_S))));
                }
                _ => {}
            }
            if k == "RedrivePolicy" {
                match redrive.take().flatten() {
                    Some((dlq, max, normalized)) => {
                        entry.queue.set_redrive(Some((&dlq.queue, max)));
                        attributes.values.insert(k.to_owned(), normalized);
                    }
                    None => {
                        entry.queue.set_redrive(None);
                        attributes.values.remove(k);
                    }
                }
            } else if v.is_empty() && matches!(k, "Policy" | "RedriveAllowPolicy" | "KmsMasterKeyId") {
                attributes.values.remove(k);
            } else {
                attributes.values.insert(k.to_owned(), v.to_owned());
            }
        }
        if entry.queue.retention().is_none() {
            entry.queue.set_retention(Some(Duration::from_secs(DEFAULT_RETENTION_S)));
        }
        attributes.last_modified = now_s();
        Ok(())
    }

    /// The dead-letter queue and `maxReceiveCount` of a `RedrivePolicy`; `None` for an empty
    /// policy (redrive removed).
    #[allow(clippy::type_complexity)]
    fn redrive_target(&self, entry: &Entry, policy: &str) -> Result<Option<(Arc<Entry>, u32, String)>, ApiError> {
        if policy.is_empty() {
            return Ok(None);
        }
        let bad = |reason: &str| ApiError::invalid("RedrivePolicy", policy, reason);
        let parsed: Value = serde_json::from_str(policy).map_err(|_| bad("Redrive policy is not a valid JSON map."))?;
        let arn = parsed
            .get("deadLetterTargetArn")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("Redrive policy does not contain mandatory attribute: deadLetterTargetArn."))?;
        let max = match parsed.get("maxReceiveCount") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            None => return Err(bad("Redrive policy does not contain mandatory attribute: maxReceiveCount.")),
            _ => None,
        }
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| bad("Invalid value for maxReceiveCount: must be an integer from 1 to 1000."))?;
        let dlq = self.by_arn(arn).ok_or_else(|| bad("Dead letter target does not exist."))?;
        if dlq.fifo != entry.fifo {
            return Err(bad("Dead-letter queue must be same type of queue as the source."));
        }
        if dlq.arn == entry.arn {
            return Err(bad("Dead letter target cannot be the queue itself."));
        }
        let max = u32::try_from(max).expect("at most 1000");
        Ok(Some((dlq, max, json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string())))
    }

    /// The attributes `names` ask for (`All`: every one).
    pub(crate) fn attributes(&self, entry: &Entry, names: &[&str]) -> Result<Value, ApiError> {
        for n in names {
            let known = *n == "All"
                || READ_ONLY.contains(n)
                || SETTABLE.contains(n)
                || SETTABLE_FIFO.contains(n)
                || matches!(*n, "FifoQueue" | "SqsManagedSseEnabled");
            if !known {
                return Err(ApiError::new(INVALID_ATTRIBUTE_NAME, format!("Unknown Attribute {n}.")));
            }
        }
        let all = names.contains(&"All");
        let wanted = |n: &str| all || names.contains(&n);
        let mut out = serde_json::Map::new();
        let counts = entry.queue.counts();
        let attributes = entry.attributes.lock().expect("attributes poisoned").clone();
        let read_only = [
            counts.visible.to_string(),
            counts.in_flight.to_string(),
            counts.delayed.to_string(),
            entry.created.to_string(),
            attributes.last_modified.to_string(),
            entry.arn.clone(),
        ];
        for (name, value) in READ_ONLY.iter().zip(read_only) {
            if wanted(name) {
                out.insert((*name).to_owned(), Value::String(value));
            }
        }
        for (name, value) in &attributes.values {
            if wanted(name) {
                out.insert(name.clone(), Value::String(value.clone()));
            }
        }
        Ok(Value::Object(out))
    }

    pub(crate) fn purge(&self, entry: &Entry) -> Result<(), ApiError> {
        let mut last = entry.last_purge.lock().expect("purge poisoned");
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < PURGE_INTERVAL) {
            return Err(ApiError::new(
                PURGE_QUEUE_IN_PROGRESS,
                format!("Only one PurgeQueue operation on {} is allowed every 60 seconds.", entry.name),
            ));
        }
        *last = Some(now);
        entry.queue.purge();
        Ok(())
    }
}

fn invalid_value(name: &str) -> ApiError {
    ApiError::new(INVALID_ATTRIBUTE_VALUE, format!("Invalid value for the parameter {name}."))
}

fn normalize_redrive(policy: &str) -> Result<String, ()> {
    let parsed: Value = serde_json::from_str(policy).map_err(|_| ())?;
    let arn = parsed.get("deadLetterTargetArn").and_then(Value::as_str).ok_or(())?;
    let max = match parsed.get("maxReceiveCount") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or(())?;
    Ok(json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string())
}

/// `CreateQueue`, `DeleteQueue`, `ListQueues`, `GetQueueUrl`, `Get/SetQueueAttributes`,
/// `PurgeQueue`.
pub(crate) const ACTIONS: [&str; 7] = [
    "CreateQueue",
    "DeleteQueue",
    "GetQueueUrl",
    "ListQueues",
    "GetQueueAttributes",
    "SetQueueAttributes",
    "PurgeQueue",
];

/// One of [`ACTIONS`].
pub(crate) fn call(registry: &Registry, base: &str, action: &str, input: &Input<'_>) -> Result<Value, ApiError> {
    match action {
        "CreateQueue" => {
            let name = input.required_str("QueueName")?;
            let attributes = input.str_map("Attributes")?;
            let entry = registry.create(name, &attributes)?;
            Ok(json!({ "QueueUrl": registry.url(base, &entry.name) }))
        }
        "DeleteQueue" => {
            let entry = registry.by_url(input.required_str("QueueUrl")?)?;
            registry.delete(&entry);
            Ok(json!({}))
        }
        "GetQueueUrl" => {
            let name = input.required_str("QueueName")?;
            let entry = registry.get(name).ok_or_else(ApiError::no_queue)?;
            Ok(json!({ "QueueUrl": registry.url(base, &entry.name) }))
        }
        "ListQueues" => {
            let prefix = input.str("QueueNamePrefix")?.unwrap_or("");
            let max = match input.int("MaxResults")? {
                None => None,
                Some(n @ 1..=1000) => Some(usize::try_from(n).expect("in range")),
                Some(n) => {
                    return Err(ApiError::invalid(
                        "MaxResults",
                        n,
                        "MaxResults must be an integer between 1 and 1000.",
                    ));
                }
            };
            let names = registry.names(prefix);
            let start = match input.str("NextToken")? {
                Some(token) => names.iter().position(|n| n.as_str() > token).unwrap_or(names.len()),
                None => 0,
            };
            let page: Vec<_> = names[start..].iter().take(max.unwrap_or(1000)).collect();
            let mut out = serde_json::Map::new();
            if !page.is_empty() {
                out.insert("QueueUrls".into(), page.iter().map(|n| Value::String(registry.url(base, n))).collect());
            }
            if let Some(max) = max
                && start + page.len() < names.len()
                && page.len() == max
            {
                out.insert("NextToken".into(), Value::String(page.last().map(|n| (*n).clone()).unwrap_or_default()));
            }
            Ok(Value::Object(out))
        }
        "GetQueueAttributes" => {
            let entry = registry.by_url(input.required_str("QueueUrl")?)?;
            let names = input.str_list("AttributeNames")?;
            let attributes = registry.attributes(&entry, &names)?;
            let empty = attributes.as_object().is_none_or(serde_json::Map::is_empty);
            Ok(if empty { json!({}) } else { json!({ "Attributes": attributes }) })
        }
        "SetQueueAttributes" => {
            let entry = registry.by_url(input.required_str("QueueUrl")?)?;
            let attributes = input.str_map("Attributes")?;
            if attributes.is_empty() {
                return Err(ApiError::missing("Attributes"));
            }
            registry.apply(&entry, &attributes)?;
            Ok(json!({}))
        }
        "PurgeQueue" => {
            let entry = registry.by_url(input.required_str("QueueUrl")?)?;
            registry.purge(&entry)?;
            Ok(json!({}))
        }
        _ => Err(ApiError::new(crate::error::INTERNAL, format!("{action} is not a queue call"))),
    }
}

/// Whether `name` is a queue attribute (the deprecated `AttributeNames` of a receive takes
/// them and returns none of them).
pub(crate) fn is_queue_attribute(name: &str) -> bool {
    READ_ONLY.contains(&name)
        || SETTABLE.contains(&name)
        || SETTABLE_FIFO.contains(&name)
        || matches!(name, "FifoQueue" | "SqsManagedSseEnabled")
}
