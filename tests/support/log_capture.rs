//! The log lines a test captures from the code it runs on its own thread (a current-thread
//! runtime runs every task of a worker there).
//!
//! One process-wide subscriber routes each event to the capture set on the thread that
//! emits it. Per-thread subscribers (`tracing::subscriber::set_default`) lose events when
//! tests run in parallel: while only one of them exists, tracing decides whether a callsite
//! is of interest from the default of whichever thread reaches it first, so a callsite first
//! reached by another test (whose thread has no subscriber) is cached as uninteresting for
//! every thread.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use tracing::Metadata;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::layer::SubscriberExt;

thread_local! {
    static CURRENT: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// What a test captures: events at `level` or more severe, from every target or from one
/// crate's, as text lines without colour.
#[derive(Clone)]
pub(crate) struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
    level: LevelFilter,
    target: Option<&'static str>,
}

/// Ends the capture when dropped.
pub(crate) struct Capturing {
    previous: Option<Capture>,
}

impl Drop for Capturing {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

#[allow(dead_code)]
impl Capture {
    /// Events of every target at `level` or more severe.
    pub(crate) fn new(level: LevelFilter) -> Self {
        Capture { buffer: Arc::default(), level, target: None }
    }

    /// Only events of `target` (a crate name: its modules too).
    pub(crate) fn only(mut self, target: &'static str) -> Self {
        self.target = Some(target);
        self
    }

    /// Captures what this thread logs until the guard is dropped.
    pub(crate) fn install(&self) -> Capturing {
        static GLOBAL: Once = Once::new();
        GLOBAL.call_once(|| {
            let filter = DynFilterFn::new(|meta: &Metadata<'_>, _cx| {
                CURRENT.with(|c| c.borrow().as_ref().is_some_and(|capture| capture.wants(meta)))
            });
            let layer =
                tracing_subscriber::fmt::layer().with_ansi(false).with_writer(|| ThreadWriter).with_filter(filter);
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in a test binary that captures logs");
        });
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        Capturing { previous }
    }

    fn wants(&self, meta: &Metadata<'_>) -> bool {
        let target = meta.target();
        let of_target = self
            .target
            .is_none_or(|t| target.strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")));
        *meta.level() <= self.level && of_target
    }

    /// Everything captured so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }

    /// The captured lines that contain `text`.
    pub(crate) fn lines_with(&self, text: &str) -> Vec<String> {
        self.text().lines().filter(|l| l.contains(text)).map(str::to_owned).collect()
    }
}

/// Writes to the capture of the thread the event is formatted on (the thread that emitted it).
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CURRENT.with(|c| {
            if let Some(capture) = c.borrow().as_ref() {
                capture.buffer.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
