//! The `Handler` trait and the adapters that turn closures into handlers.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::{BoxError, Context, Message, Outcome};

/// Handles one message at a time; the runtime calls it concurrently, up to the configured
/// concurrency.
///
/// Return [`Outcome::Ack`] to delete the message, [`Outcome::Retry`] to see it again later,
/// or an error to retry it after a backoff. A panic is caught and counts as an error.
///
/// ```
/// use holdfast::{async_trait, BoxError, Context, Handler, Message, Outcome};
///
/// struct Resize;
///
/// #[async_trait]
/// impl Handler for Resize {
///     async fn handle(&self, msg: &Message, ctx: &Context) -> Result<Outcome, BoxError> {
///         let _ = (msg.body(), ctx.is_cancelled());
///         Ok(Outcome::Ack)
///     }
/// }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles `msg`. `ctx` is cancelled when the message's lease is lost, the handler
    /// timeout passes, or the drain deadline passes during shutdown.
    async fn handle(&self, msg: &Message, ctx: &Context) -> Result<Outcome, BoxError>;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, msg: &Message, ctx: &Context) -> Result<Outcome, BoxError> {
        (**self).handle(msg, ctx).await
    }
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Box<H> {
    async fn handle(&self, msg: &Message, ctx: &Context) -> Result<Outcome, BoxError> {
        (**self).handle(msg, ctx).await
    }
}

/// Handles several messages in one call: for work that is cheaper in bulk (one database
/// round trip for ten rows). The runtime passes up to ten messages received together and
/// expects one result per message, in the same order; each result is acknowledged, retried
/// or dead-lettered on its own. A missing result counts as a failure of its message; a
/// panic or timeout fails them all.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles `messages`. `ctx` is cancelled if any of their leases is lost, the handler
    /// timeout passes, or the drain deadline passes during shutdown.
    async fn handle_batch(&self, messages: &[Message], ctx: &Context) -> Vec<Result<Outcome, BoxError>>;
}

/// A handler made from a closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Makes a [`Handler`] from an async closure taking the message and its context.
///
/// ```
/// use holdfast::{handler_fn, Outcome};
///
/// let handler = handler_fn(|msg, _ctx| async move {
///     println!("{}", msg.body());
///     Ok::<_, std::io::Error>(Outcome::Ack)
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut, E>(f: F) -> HandlerFn<F>
where
    F: Fn(Message, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
    E: Into<BoxError>,
{
    HandlerFn { f }
}

#[async_trait]
impl<F, Fut, E> Handler for HandlerFn<F>
where
    F: Fn(Message, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
    E: Into<BoxError>,
{
    async fn handle(&self, msg: &Message, ctx: &Context) -> Result<Outcome, BoxError> {
        (self.f)(msg.clone(), ctx.clone()).await.map_err(Into::into)
    }
}

/// The body of a message could not be decoded into the handler's type.
///
/// Returned (boxed) by [`json_fn`] handlers: the attempt fails and the message is retried,
/// then dead-lettered, like any other failure; the worker carries on.
#[derive(Debug, thiserror::Error)]
#[error("message {message_id}: body is not valid JSON for {type_name}: {source}")]
pub struct DecodeError {
    message_id: String,
    type_name: &'static str,
    #[source]
    source: serde_json::Error,
}

/// A handler that decodes the JSON body first; see [`json_fn`].
pub struct JsonFn<T, F> {
    f: F,
    _body: PhantomData<fn() -> T>,
}

impl<T, F> std::fmt::Debug for JsonFn<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonFn<{}>", std::any::type_name::<T>())
    }
}

/// Makes a [`Handler`] from an async closure that takes the body decoded from JSON, the
/// message, and its context. A body that does not decode is a failed attempt with a
/// [`DecodeError`], never a crash.
///
/// ```
/// use holdfast::{json_fn, Outcome};
///
/// #[derive(serde::Deserialize)]
/// struct Resize { width: u32 }
///
/// let handler = json_fn(|job: Resize, _msg, _ctx| async move {
///     assert!(job.width > 0);
///     Ok::<_, std::io::Error>(Outcome::Ack)
/// });
/// # let _ = handler;
/// ```
pub fn json_fn<T, F, Fut, E>(f: F) -> JsonFn<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Message, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
    E: Into<BoxError>,
{
    JsonFn { f, _body: PhantomData }
}

#[async_trait]
impl<T, F, Fut, E> Handler for JsonFn<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Message, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
    E: Into<BoxError>,
{
    async fn handle(&self, msg: &Message, ctx: &Context) -> Result<Outcome, BoxError> {
        let body: T = msg.json().map_err(|source| DecodeError {
            message_id: msg.id().to_owned(),
            type_name: std::any::type_name::<T>(),
            source,
        })?;
        (self.f)(body, msg.clone(), ctx.clone()).await.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Job {
        n: u32,
    }

    #[tokio::test]
    async fn json_fn_decodes_the_body() {
        let h = json_fn(|job: Job, _m, _c| async move {
            if job.n == 7 { Ok(Outcome::Ack) } else { Err(std::io::Error::other("wrong n")) }
        });
        let ctx = Context::detached();
        assert_eq!(h.handle(&Message::new("a", r#"{"n":7}"#), &ctx).await.unwrap(), Outcome::Ack);
        assert!(h.handle(&Message::new("b", r#"{"n":8}"#), &ctx).await.is_err());
    }

    #[tokio::test]
    async fn json_fn_turns_a_bad_body_into_a_decode_error() {
        let h = json_fn(|_job: Job, _m, _c| async move { Ok::<_, BoxError>(Outcome::Ack) });
        let err = h.handle(&Message::new("bad-1", "not json"), &Context::detached()).await.unwrap_err();
        let decode = err.downcast_ref::<DecodeError>().expect("a DecodeError");
        assert!(decode.to_string().contains("bad-1"), "{decode}");
    }

    #[tokio::test]
    async fn handler_fn_and_arc_are_handlers() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|m, _c| async move {
            Ok::<_, BoxError>(if m.body() == "ok" {
                Outcome::Ack
            } else {
                Outcome::retry_after(std::time::Duration::from_secs(3))
            })
        }));
        let ctx = Context::detached();
        assert_eq!(h.handle(&Message::new("1", "ok"), &ctx).await.unwrap(), Outcome::Ack);
        assert_eq!(
            h.handle(&Message::new("2", "later"), &ctx).await.unwrap(),
            Outcome::Retry(std::time::Duration::from_secs(3))
        );
    }
}
