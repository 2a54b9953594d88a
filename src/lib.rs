#![doc = include_str!("../README.md")]

mod acker;
mod backoff;
mod config;
mod context;
mod deployment;
mod dispatch;
mod emf;
mod error;
mod events;
mod handler;
mod health;
mod lease;
mod message;
mod outcome;
mod poller;
mod progress;
mod protection;
mod queue;
mod runtime;
mod shutdown;
mod telemetry;

pub use async_trait::async_trait;
pub use config::{Config, ConfigError, LogFormat, MetricsOutput, ShutdownReceive, VARIABLES};
pub use context::Context;
pub use error::{BoxError, Error};
pub use events::{
    EVENT_CAPACITY, Event, FailureCause, HandledOutcome, ProtectionEvent, ShutdownPhase, StepAsideReason, Subscription,
};
pub use handler::{BatchHandler, DecodeError, Handler, HandlerFn, JsonFn, handler_fn, json_fn};
pub use health::health_check;
pub use message::{AttributeValue, Message, MessageAttribute, SnsNotification};
pub use outcome::{Outcome, Permanent};
pub use protection::{
    Protection, ProtectionBackend, ProtectionConfig, ProtectionError, ProtectionGuard, ProtectionMode, ProtectionState,
    RemoteProtection,
};
pub use queue::{
    Delivery, MemoryQueue, MemoryQueueBuilder, MemoryQueueError, MessageCounts, OutgoingMessage, Queue, ReceiveOptions,
    RequestCounts, SentMessage,
};
pub use runtime::{Route, Summary, Worker, init_logging};
pub use telemetry::names as metric_names;
