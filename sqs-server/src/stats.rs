//! Requests counted by action, served at `GET /__stats` so that a benchmark can tell how many
//! SQS requests a consumer made per message without a proxy in between.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use crate::{messages, queues};

/// What a request whose action is not one the server serves is counted as.
const OTHER: &str = "other";

/// One counter per action the server serves, plus one for everything else.
#[derive(Debug)]
pub(crate) struct Stats {
    counts: Vec<(&'static str, AtomicU64)>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        let names = queues::ACTIONS.iter().chain(messages::ACTIONS.iter()).copied().chain([OTHER]);
        Self { counts: names.map(|n| (n, AtomicU64::new(0))).collect() }
    }

    /// Counts one request for `action` (the `X-Amz-Target` suffix; anything unknown is
    /// `other`). A linear scan of 15 names: cheaper than hashing at this size.
    pub(crate) fn count(&self, action: &str) {
        let counter =
            self.counts.iter().find(|(n, _)| *n == action).unwrap_or_else(|| &self.counts[self.counts.len() - 1]);
        counter.1.fetch_add(1, Ordering::Relaxed);
    }

    /// `{"requests": {ACTION: COUNT, ...}, "total": N}`; actions never called are left out.
    pub(crate) fn to_json(&self, queues: Value) -> Value {
        let mut requests = Map::new();
        let mut total = 0;
        for (name, counter) in &self.counts {
            let n = counter.load(Ordering::Relaxed);
            total += n;
            if n > 0 {
                requests.insert((*name).to_owned(), n.into());
            }
        }
        json!({"requests": requests, "total": total, "queues": queues})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_action_and_unknown_ones_together() {
        let stats = Stats::new();
        for action in ["ReceiveMessage", "ReceiveMessage", "DeleteMessageBatch", "Frobnicate", ""] {
            stats.count(action);
        }
        let v = stats.to_json(json!({}));
        assert_eq!(v["requests"], json!({"ReceiveMessage": 2, "DeleteMessageBatch": 1, "other": 2}));
        assert_eq!(v["total"], 5);
    }
}
