#![doc = include_str!("../README.md")]

mod config;
mod context;
mod error;
mod handler;
mod lease;
mod message;
mod outcome;
mod protection;
mod queue;

pub use async_trait::async_trait;
pub use config::{Config, ConfigError, LogFormat, VARIABLES};
pub use context::Context;
pub use error::{BoxError, Error};
pub use handler::{DecodeError, Handler, HandlerFn, JsonFn, handler_fn, json_fn};
pub use message::{AttributeValue, Message, MessageAttribute};
pub use outcome::Outcome;
pub use protection::{
    Protection, ProtectionBackend, ProtectionConfig, ProtectionError, ProtectionGuard, ProtectionMode, ProtectionState,
    RemoteProtection,
};
pub use queue::{MemoryQueue, MemoryQueueBuilder, OutgoingMessage, Queue, RequestCounts};
