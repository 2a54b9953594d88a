//! ECS task scale-in protection.
//!
//! While work is in flight the task is protected from scale-in and from being replaced by a
//! deployment; once idle (after a maintain window) ECS may take it. The [`Protection`]
//! handle counts work with guards; one background task makes every ECS call, through the
//! agent endpoint or the ECS API, alone or together with the task's other worker processes
//! through a shared directory.

mod agent;
mod api;
mod backend;
mod config;
mod coordination;
mod driver;
mod hold;
mod ledger;
mod manager;
mod shared;
mod state;

pub use config::{ProtectionBackend, ProtectionConfig, ProtectionMode};
pub use manager::{Protection, ProtectionGuard};
pub use state::{ProtectionError, ProtectionState, RemoteProtection};
