#![doc = include_str!("../README.md")]

mod acker;
mod backoff;
mod config;
mod context;
mod deployment;
mod dispatch;
mod error;
mod handler;
mod lease;
mod message;
mod outcome;
mod poller;
mod protection;
mod queue;
mod runtime;
mod shutdown;

pub use async_trait::async_trait;
pub use config::{Config, ConfigError, LogFormat, VARIABLES};
pub use context::Context;
pub use error::{BoxError, Error};
pub use handler::{BatchHandler, DecodeError, Handler, HandlerFn, JsonFn, handler_fn, json_fn};
pub use message::{AttributeValue, Message, MessageAttribute, SnsNotification};
pub use outcome::{Outcome, Permanent};
pub use protection::{
    Protection, ProtectionBackend, ProtectionConfig, ProtectionError, ProtectionGuard, ProtectionMode, ProtectionState,
    RemoteProtection,
};
pub use queue::{MemoryQueue, MemoryQueueBuilder, OutgoingMessage, Queue, RequestCounts};
pub use runtime::{Route, Summary, Worker, init_logging};
