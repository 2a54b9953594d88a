//! The library's own failures, in one enum.

use crate::config::ConfigError;

/// A boxed error, as returned by handlers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can stop a worker or a library call.
///
/// Handler failures are not reported here: they are per message and end in a
/// retry, never in an error from [`Worker::run`](crate::Worker::run).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the variable and the accepted values.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The queue refused in a way that retrying will not heal (it does not exist, access is
    /// denied, the URL is malformed). The message says what to fix.
    #[error("queue {queue_url}: {message}")]
    Queue {
        /// The queue the worker was polling.
        queue_url: String,
        /// What went wrong and what to fix.
        message: String,
    },
    /// Scale-in protection could not be set up or released.
    #[error("scale-in protection: {0}")]
    Protection(String),
    /// The worker cannot start as configured, for a reason the message explains (no AWS
    /// credentials, an endpoint host that does not resolve).
    #[error("cannot start: {0}")]
    Startup(String),
    /// The worker was built without something it needs.
    #[error("worker is missing {0}")]
    Incomplete(&'static str),
    /// An I/O failure, such as installing the signal handlers.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<crate::ProtectionError> for Error {
    fn from(error: crate::ProtectionError) -> Self {
        Error::Protection(error.to_string())
    }
}
