//! The seam between the manager and the ways of calling ECS.

use std::time::Duration;

use async_trait::async_trait;

use super::state::{ProtectionError, RemoteProtection};

/// Longest one call may take. The agent forwards to the ECS API, so it may take a while.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One way of setting the task's protection. Implementations make exactly one request per
/// call and judge success from the response body: the manager does the retrying.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// Protects the task for `minutes` (1..=2880) from now.
    async fn protect(&self, minutes: u32) -> Result<(), ProtectionError>;
    /// Removes the protection.
    async fn release(&self) -> Result<(), ProtectionError>;
    /// Reads ECS's view of the protection.
    async fn status(&self) -> Result<RemoteProtection, ProtectionError>;
}

#[cfg(test)]
pub(crate) mod scripted {
    //! A backend for paused-time unit tests: replies come from a script, calls are counted.

    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A call the backend received, with the tokio time it arrived at.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Call {
        Protect(u32),
        Release,
    }

    #[derive(Default)]
    pub(crate) struct Scripted {
        replies: Mutex<VecDeque<Result<(), ProtectionError>>>,
        default: Mutex<Option<ProtectionError>>,
        pub(crate) calls: Mutex<Vec<(Call, tokio::time::Instant)>>,
        delay: Mutex<Duration>,
        in_flight: AtomicUsize,
        pub(crate) max_in_flight: AtomicUsize,
    }

    impl Scripted {
        pub(crate) fn push(&self, reply: Result<(), ProtectionError>) {
            self.replies.lock().unwrap().push_back(reply);
        }
        pub(crate) fn fail_always(&self, error: Option<ProtectionError>) {
            *self.default.lock().unwrap() = error;
        }
        pub(crate) fn set_delay(&self, delay: Duration) {
            *self.delay.lock().unwrap() = delay;
        }
        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().iter().map(|(c, _)| c.clone()).collect()
        }
        async fn answer(&self, call: Call) -> Result<(), ProtectionError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            self.calls.lock().unwrap().push((call, tokio::time::Instant::now()));
            let delay = *self.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let scripted = self.replies.lock().unwrap().pop_front();
            match scripted {
                Some(reply) => reply,
                None => self.default.lock().unwrap().clone().map_or(Ok(()), Err),
            }
        }
    }

    #[async_trait]
    impl Backend for Scripted {
        async fn protect(&self, minutes: u32) -> Result<(), ProtectionError> {
            self.answer(Call::Protect(minutes)).await
        }
        async fn release(&self) -> Result<(), ProtectionError> {
            self.answer(Call::Release).await
        }
        async fn status(&self) -> Result<RemoteProtection, ProtectionError> {
            Ok(RemoteProtection { enabled: false, expiration_date: None, task_arn: None })
        }
    }
}
