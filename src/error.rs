//! The library's own failures, in one enum.

use crate::config::ConfigError;

/// A boxed error, as returned by handlers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can stop a worker or a library call.
///
/// Handler failures are not reported here: they are per message and end in a
/// retry, never in an error from [`Worker::run`](crate::Worker::run).
///
/// `{:?}` prints the same one-line message as `{}`, so a `main` returning
/// `Result<(), holdfast::Error>` ends with `Error: HOLDFAST_CONCURRENCY="lots" is invalid: …`
/// rather than a struct dump; `{:#?}` prints the variant and its fields.
#[derive(thiserror::Error)]
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

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !f.alternate() {
            return std::fmt::Display::fmt(self, f);
        }
        match self {
            Error::Config(error) => f.debug_tuple("Config").field(error).finish(),
            Error::Queue { queue_url, message } => {
                f.debug_struct("Queue").field("queue_url", queue_url).field("message", message).finish()
            }
            Error::Protection(message) => f.debug_tuple("Protection").field(message).finish(),
            Error::Startup(message) => f.debug_tuple("Startup").field(message).finish(),
            Error::Incomplete(what) => f.debug_tuple("Incomplete").field(what).finish(),
            Error::Io(error) => f.debug_tuple("Io").field(error).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_the_message_and_alternate_debug_the_fields() {
        let error =
            Error::from(ConfigError::new("HOLDFAST_CONCURRENCY", Some("lots"), "a whole number from 1 to 10000"));
        let line = r#"HOLDFAST_CONCURRENCY="lots" is invalid: expected a whole number from 1 to 10000"#;
        assert_eq!(format!("{error:?}"), line);
        assert_eq!(format!("{error}"), line);
        let fields = format!("{error:#?}");
        assert!(fields.starts_with("Config(") && fields.contains(r#"variable: "HOLDFAST_CONCURRENCY""#), "{fields}");
        let queue = Error::Queue { queue_url: "memory://q".into(), message: "gone".into() };
        assert_eq!(format!("{queue:?}"), "queue memory://q: gone");
    }
}
