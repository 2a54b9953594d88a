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
/// Returned by [`Message::json`] and (boxed) by [`json_fn`] handlers: the attempt fails and
/// the message is dead-lettered (with a dead-letter queue) or retried until the queue's
/// redrive policy moves it; the worker carries on.
///
/// Its text — what the worker logs — says what kind of mistake was found and where (`wrong
/// type or value at line 1 column 26`), never the values of the body: serde's own message
/// quotes them (`invalid type: string "…", expected u64`), and bodies may carry personal
/// data. That message is kept in [`detail`](Self::detail) for the handler; the worker logs it
/// (and writes it into the dead-letter reason) only when `HOLDFAST_LOG_MESSAGE_CONTENT=on`.
pub struct DecodeError {
    message_id: String,
    type_name: &'static str,
    kind: &'static str,
    line: usize,
    column: usize,
    detail: String,
}

impl DecodeError {
    pub(crate) fn new(message_id: &str, type_name: &'static str, error: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match error.classify() {
            Category::Syntax => "not valid JSON",
            Category::Data => "wrong type or value",
            Category::Eof => "unexpected end of the body",
            Category::Io => "read error",
        };
        Self {
            message_id: message_id.to_owned(),
            type_name,
            kind,
            line: error.line(),
            column: error.column(),
            detail: error.to_string(),
        }
    }

    /// The id of the message whose body did not decode.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// What kind of mistake: `not valid JSON`, `wrong type or value`, `unexpected end of the
    /// body`.
    pub fn kind(&self) -> &str {
        self.kind
    }

    /// Where the decoder stopped: line and column, from 1.
    pub fn position(&self) -> (usize, usize) {
        (self.line, self.column)
    }

    /// serde's full message, which may quote values from the body: for the handler's own use.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "message {}: body does not decode as {}: {} at line {} column {}",
            self.message_id, self.type_name, self.kind, self.line, self.column
        )
    }
}

impl std::fmt::Debug for DecodeError {
    // The detail stays out of Debug too: `{:?}` ends up in logs as easily as `{}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeError")
            .field("message_id", &self.message_id)
            .field("type_name", &self.type_name)
            .field("kind", &self.kind)
            .field("line", &self.line)
            .field("column", &self.column)
            .finish_non_exhaustive()
    }
}

impl std::error::Error for DecodeError {}

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
        let body: T = msg.json()?;
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
        assert_eq!(decode.kind(), "not valid JSON");
    }

    #[test]
    fn a_decode_error_names_the_mistake_and_its_place_but_no_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Order {
            customer: String,
            amount: u64,
        }
        let msg = Message::new("m-1", r#"{"customer":"Ada Lovelace","amount":"twelve pounds"}"#);
        let err = msg.json::<Order>().unwrap_err();
        let shown = [err.to_string(), format!("{err:?}")];
        for text in &shown {
            assert!(!text.contains("twelve") && !text.contains("Ada"), "a value from the body leaked: {text}");
        }
        assert!(shown[0].contains("wrong type or value at line 1 column"), "{}", shown[0]);
        assert!(std::error::Error::source(&err).is_none(), "no source chain that would print serde's message");
        assert!(err.detail().contains("twelve pounds"), "the handler can still see everything: {}", err.detail());
        let eof = Message::new("m-2", r#"{"customer":"#).json::<Order>().unwrap_err();
        assert_eq!(eof.kind(), "unexpected end of the body");
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
