//! The protection manager's public side: the handle and the guard.
//!
//! Handles only count work and wake the driver (`driver.rs`); the driver alone calls ECS,
//! one call at a time, so requests that overlap become one call. It publishes a snapshot
//! after each pass, which `hold`, `extend` and `ready_for_work` wait on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::agent::AgentBackend;
use super::api::{ApiBackend, ClientSource};
use super::backend::Backend;
use super::config::{MAX_EXPIRY_MINUTES, ProtectionBackend, ProtectionConfig, ProtectionMode};
use super::coordination::{Clock, Coordinator, SharedDir};
use super::driver::Driver;
use super::hold::{BoundedHold, HoldLimits};
use super::ledger::{Ms, Timing};
use super::shared::{Probe, Shared, Snapshot};
use super::state::{ProtectionError, ProtectionState, RemoteProtection};

/// Scale-in protection for the ECS task this process runs in.
///
/// Cheap to clone; every clone drives the same protection. Work in flight is counted with
/// [`hold`](Self::hold): the task is protected when the count goes from 0 to 1 (one ECS
/// call), protection is renewed before it expires while work runs, and it is released once
/// the count has stayed at 0 for the maintain window.
///
/// ```no_run
/// # async fn demo() -> Result<(), holdfast::Error> {
/// use holdfast::{Protection, ProtectionConfig};
///
/// let protection = Protection::from_config(&ProtectionConfig::default()).await?;
/// {
///     let _guard = protection.hold().await?; // protected from here...
///     // ... long work ...
/// } // ...to here, plus the maintain window
/// protection.shutdown().await;
/// # Ok(()) }
/// ```
///
/// A background task makes the calls; it stops when [`shutdown`](Self::shutdown) is called
/// or the last handle and guard are dropped, and releases protection as it goes.
#[derive(Clone)]
pub struct Protection {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Protection");
        match &self.inner {
            Some(inner) => d
                .field("backend", &inner.shared.backend)
                .field("mode", &inner.shared.mode)
                .field("state", &*inner.shared.public.borrow()),
            None => d.field("backend", &ProtectionBackend::Off),
        };
        d.finish()
    }
}

struct Inner {
    shared: Arc<Shared>,
    backend: Arc<dyn Backend>,
    /// Stops the driver when the last handle (guards hold one) is dropped.
    _stop: DropGuard,
}

/// Work in flight, as counted by [`Protection::hold`]. Dropping it ends the work: when the
/// last guard goes, the maintain window starts. Dropping needs no runtime.
#[must_use = "protection is only held while the guard lives"]
#[derive(Debug)]
pub struct ProtectionGuard {
    protection: Option<Protection>,
}

impl ProtectionGuard {
    /// Asks for the task to stay protected at least `at_least` from now, for as long as
    /// work is in flight; see [`Protection::extend`].
    ///
    /// # Errors
    ///
    /// As [`Protection::extend`].
    pub async fn extend(&self, at_least: Duration) -> Result<(), ProtectionError> {
        match &self.protection {
            Some(p) => p.extend(at_least).await,
            None => Ok(()),
        }
    }
}

impl Drop for ProtectionGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.protection.as_ref().and_then(|p| p.inner.as_ref()) {
            inner.shared.work_ended();
        }
    }
}

impl Protection {
    /// Protection that calls nothing: [`hold`](Self::hold) succeeds at once.
    pub fn off() -> Protection {
        Protection { inner: None }
    }

    /// Builds the manager `config` describes and starts its background task. `auto`
    /// resolves here, and the choice is logged once with its reason.
    ///
    /// # Errors
    ///
    /// [`Error::Protection`](crate::Error::Protection) when the backend cannot be set up
    /// (an ECS variable it needs is missing, the shared directory cannot be used).
    pub async fn from_config(config: &ProtectionConfig) -> Result<Protection, crate::Error> {
        let (backend, reason) = resolve(config);
        let chosen: Arc<dyn Backend> = match backend {
            ProtectionBackend::Off => {
                tracing::info!(backend = "off", "scale-in protection is off: {reason}");
                return Ok(Protection::off());
            }
            ProtectionBackend::Agent => {
                let uri = config.agent_uri.as_deref().ok_or_else(|| missing("ECS_AGENT_URI"))?;
                Arc::new(AgentBackend::new(uri).map_err(crate::Error::Protection)?)
            }
            ProtectionBackend::Api | ProtectionBackend::Auto => {
                let uri = config.metadata_uri.as_deref().ok_or_else(|| missing("ECS_CONTAINER_METADATA_URI_V4"))?;
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
                Arc::new(ApiBackend::new(uri, ClientSource::Sdk(Box::new(sdk))).map_err(crate::Error::Protection)?)
            }
        };
        tracing::info!(backend = backend.as_str(), mode = ?config.mode, "scale-in protection through the {}: {reason}; {}", describe(backend), config.describe());
        Self::start(config, backend, chosen)
    }

    /// Builds a manager on the ECS API backend with `client` (for instance one pointed at
    /// a local endpoint, or built from your own AWS configuration). The cluster and task
    /// ARN are read from `config.metadata_uri`. The client's own retry settings apply to
    /// each call; the manager backs off between calls as well.
    ///
    /// # Errors
    ///
    /// [`Error::Protection`](crate::Error::Protection) when `config.metadata_uri` is unset
    /// or the shared directory cannot be used.
    pub async fn with_ecs_client(
        config: &ProtectionConfig,
        client: aws_sdk_ecs::Client,
    ) -> Result<Protection, crate::Error> {
        let uri = config.metadata_uri.as_deref().ok_or_else(|| missing("ECS_CONTAINER_METADATA_URI_V4"))?;
        let backend = ApiBackend::new(uri, ClientSource::Client(client)).map_err(crate::Error::Protection)?;
        tracing::info!(backend = "api", mode = ?config.mode, "scale-in protection through the ECS API with the given client; {}", config.describe());
        Self::start(config, ProtectionBackend::Api, Arc::new(backend))
    }

    #[cfg(test)]
    pub(crate) fn with_backend(config: &ProtectionConfig, backend: Arc<dyn Backend>) -> Protection {
        Self::start(config, ProtectionBackend::Agent, backend).expect("no shared directory in unit tests")
    }

    fn start(
        config: &ProtectionConfig,
        kind: ProtectionBackend,
        backend: Arc<dyn Backend>,
    ) -> Result<Protection, crate::Error> {
        let coordinator = match &config.shared_dir {
            None => Coordinator::solo(),
            Some(dir) => {
                let shared = SharedDir::open(dir, config.lease_ttl).map_err(|e| {
                    crate::Error::Protection(format!(
                        "shared directory {} (HOLDFAST_PROTECTION_SHARED_DIR): {e}",
                        dir.display()
                    ))
                })?;
                tracing::info!(dir = %dir.display(), holder = shared.id(), "sharing protection with the task's other worker processes");
                Coordinator::Shared(shared)
            }
        };
        let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot::default());
        let (public_tx, public_rx) = watch::channel(ProtectionState::Unprotected);
        let shared =
            Arc::new(Shared::new(kind, config.mode, config.maintain, coordinator.clock(), snapshot_rx, public_rx));
        let stop = CancellationToken::new();
        let driver = Driver {
            shared: shared.clone(),
            backend: backend.clone(),
            coordinator,
            timing: timing(config),
            snapshot: snapshot_tx,
            public: public_tx,
            stop: stop.clone(),
            last_error_logged: None,
            hold: config.max_hold.map(|max| {
                let ms = |d: Duration| d.as_millis() as Ms;
                // Fields set in code skip the parser's bounds; a zero max would pause at once.
                BoundedHold::new(HoldLimits {
                    max: ms(max).max(1000),
                    gap: ms(config.hold_gap),
                    drain: ms(config.hold_drain),
                })
            }),
        };
        tokio::spawn(driver.run());
        Ok(Protection { inner: Some(Arc::new(Inner { shared, backend, _stop: stop.drop_guard() })) })
    }

    /// The backend in use (`auto` resolved).
    pub fn backend(&self) -> ProtectionBackend {
        self.inner.as_ref().map_or(ProtectionBackend::Off, |i| i.shared.backend)
    }

    /// Whether no new work should be taken while protection is refused or unavailable
    /// (strict mode with a backend that calls ECS).
    pub fn is_strict(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.shared.mode == ProtectionMode::Strict)
    }

    /// Counts one piece of work in flight until the guard is dropped.
    ///
    /// When the count goes from 0 to 1 the task is protected (one call; concurrent callers
    /// wait for the same call). In strict mode this resolves once protection is in place;
    /// in relaxed mode it resolves after the attempt even if ECS refused (logged). With
    /// protection off it resolves at once. While a failed call is being backed off, it
    /// answers at once with that failure rather than waiting for the next attempt.
    ///
    /// # Errors
    ///
    /// Strict mode only: the [`ProtectionError`] that kept the task from being protected.
    /// In either mode: [`ProtectionError::ShutDown`] after [`shutdown`](Self::shutdown), and
    /// [`ProtectionError::Paused`] while the bounded hold (`max_hold`) takes no new work.
    pub async fn hold(&self) -> Result<ProtectionGuard, ProtectionError> {
        let Some(inner) = &self.inner else {
            return Ok(ProtectionGuard { protection: None });
        };
        let shared = &inner.shared;
        let (request, trust_snapshot) = {
            let mut local = shared.local();
            if local.shutdown {
                return Err(ProtectionError::ShutDown);
            }
            if local.paused {
                return Err(ProtectionError::Paused);
            }
            let was_busy = local.in_flight > 0;
            local.in_flight += 1;
            local.keep_until = None;
            // Another process may be releasing while this one was idle; only a pass through
            // the shared state can tell.
            let trust =
                !local.releasing && (matches!(shared.clock, Clock::Tokio(_)) || (was_busy && local.synced_busy));
            (shared.requests.fetch_add(1, Ordering::SeqCst) + 1, trust)
        };
        shared.wake.notify_one();
        let guard = ProtectionGuard { protection: Some(self.clone()) };
        let mut snapshots = shared.snapshot.clone();
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if snapshot.shut_down {
                return Err(ProtectionError::ShutDown);
            }
            if snapshot.withdrawn {
                return Err(ProtectionError::Paused);
            }
            let served = snapshot.served >= request;
            if snapshot.protected() && (trust_snapshot || served) {
                return Ok(guard);
            }
            if let (true, Some(error)) = (served, snapshot.error) {
                return match shared.mode {
                    ProtectionMode::Strict => Err(error),
                    ProtectionMode::Relaxed => {
                        shared.refusal.unprotected_start(&error);
                        Ok(guard)
                    }
                };
            }
            if snapshots.changed().await.is_err() {
                return Err(ProtectionError::ShutDown);
            }
        }
    }

    /// Asks for the task to stay protected for at least `at_least` from now (capped at
    /// ECS's 48 hours), as long as work is in flight: one call now unless the current
    /// protection already lasts that long, and later refreshes never shorten it. When the
    /// work in flight ends, so does the extension. Called with no work in flight, it keeps
    /// the task protected for that long.
    ///
    /// # Errors
    ///
    /// The [`ProtectionError`] ECS answered, in either mode (the caller asked explicitly);
    /// [`ProtectionError::ShutDown`] after [`shutdown`](Self::shutdown);
    /// [`ProtectionError::Paused`] once the bounded hold has withdrawn protection for its
    /// opening (the bounded hold outranks an extension).
    pub async fn extend(&self, at_least: Duration) -> Result<(), ProtectionError> {
        let Some(inner) = &self.inner else { return Ok(()) };
        let shared = &inner.shared;
        let at_least = at_least.min(Duration::from_secs(u64::from(MAX_EXPIRY_MINUTES) * 60));
        let wanted = Instant::now() + at_least;
        let request = {
            let mut local = shared.local();
            if local.shutdown {
                return Err(ProtectionError::ShutDown);
            }
            if local.withdrawn {
                return Err(ProtectionError::Paused);
            }
            let until = shared.clock.now() + at_least.as_millis() as Ms;
            local.extend_until = local.extend_until.max(Some(until));
            shared.requests.fetch_add(1, Ordering::SeqCst) + 1
        };
        shared.wake.notify_one();
        let mut snapshots = shared.snapshot.clone();
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if snapshot.shut_down {
                return Err(ProtectionError::ShutDown);
            }
            if snapshot.withdrawn {
                return Err(ProtectionError::Paused);
            }
            // A millisecond clock and the conversion to an instant may lose a little.
            let covered = snapshot.protected_until.is_some_and(|t| t + Duration::from_millis(5) >= wanted);
            if covered && snapshot.served >= request {
                return Ok(());
            }
            if let (true, Some(error)) = (snapshot.served >= request, snapshot.error) {
                return Err(error);
            }
            if snapshots.changed().await.is_err() {
                return Err(ProtectionError::ShutDown);
            }
        }
    }

    /// The state stream: [`ProtectionState`] after every change.
    pub fn subscribe(&self) -> watch::Receiver<ProtectionState> {
        match &self.inner {
            Some(inner) => inner.shared.public.clone(),
            None => watch::channel(ProtectionState::Off).1,
        }
    }

    /// The state now.
    pub fn state(&self) -> ProtectionState {
        self.subscribe().borrow().clone()
    }

    /// Resolves when new work may be taken. In strict mode, while the last attempt to
    /// protect the task failed, it waits, and the manager tries again with backoff; the
    /// attempt that succeeds keeps protection for the maintain window so the work can
    /// arrive. In relaxed mode, or with protection off, it returns at once, except during
    /// the bounded hold's pause (either mode). Pollers call it before each receive.
    pub async fn ready_for_work(&self) {
        let Some(inner) = &self.inner else { return };
        let shared = &inner.shared;
        self.hold_open().await;
        if shared.mode == ProtectionMode::Relaxed {
            return;
        }
        let mut snapshots = shared.snapshot.clone();
        let mut probe = None;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if snapshot.shut_down || (snapshot.error.is_none() && !snapshot.paused) {
                return;
            }
            if snapshot.paused {
                // The bounded hold began meanwhile: it has its own way out.
                drop(probe.take());
                if snapshots.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if probe.is_none() {
                shared.local().probers += 1;
                probe = Some(Probe(shared.as_ref()));
                shared.wake.notify_one();
                if let Some(error) = &snapshot.error {
                    shared.refusal.pause(&shared.clock, error);
                }
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    }

    /// Counts messages handed back unstarted because protection was refused (strict mode)
    /// or the bounded hold paused, for the one line logged when work resumes.
    pub(crate) fn note_released(&self, error: &ProtectionError, messages: usize) {
        if let Some(inner) = &self.inner {
            match error {
                ProtectionError::Paused => {
                    inner.shared.hold_released.fetch_add(messages as u64, Ordering::SeqCst);
                }
                _ => inner.shared.refusal.released(messages as u64),
            }
        }
    }

    /// Whether the bounded hold takes no new work now.
    pub(crate) fn hold_paused(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.shared.snapshot.borrow().paused)
    }

    /// Resolves once the bounded hold takes work (at once when it does, or when there is
    /// none), or when the manager shuts down.
    pub(crate) async fn hold_open(&self) {
        let Some(inner) = &self.inner else { return };
        let mut snapshots = inner.shared.snapshot.clone();
        let _ = snapshots.wait_for(|s| !s.paused || s.shut_down).await;
    }

    /// Reads ECS's own view of the task's protection (`GET` on the agent endpoint,
    /// `GetTaskProtection` on the API). `None` with protection off.
    ///
    /// # Errors
    ///
    /// The [`ProtectionError`] of the read.
    pub async fn remote_status(&self) -> Result<Option<RemoteProtection>, ProtectionError> {
        match &self.inner {
            Some(inner) => inner.backend.status().await.map(Some),
            None => Ok(None),
        }
    }

    /// Releases protection now, even if guards remain, and stops the background task.
    /// Later [`hold`](Self::hold)s fail with [`ProtectionError::ShutDown`]. Idempotent; the
    /// release is one attempt, bounded by the call timeout. In shared-directory mode, the
    /// task stays protected while another live process has work.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else { return };
        inner.shared.local().shutdown = true;
        inner.shared.wake.notify_one();
        let mut snapshots = inner.shared.snapshot.clone();
        // Err: the driver is gone already, which is what we wait for.
        let _ = snapshots.wait_for(|s| s.shut_down).await;
    }
}

/// The timing from `config`, made consistent: fields set in code skip the parser's checks.
fn timing(config: &ProtectionConfig) -> Timing {
    let minutes = config.expires_in_minutes.clamp(1, MAX_EXPIRY_MINUTES);
    let expiry = Duration::from_secs(u64::from(minutes) * 60);
    let refresh_before = if config.refresh_before >= expiry {
        tracing::warn!(
            refresh_before = ?config.refresh_before,
            expires_in_minutes = minutes,
            "the refresh point is not shorter than the expiry; refreshing with a third of the expiry left instead"
        );
        expiry / 3
    } else {
        config.refresh_before
    };
    Timing { expires_in_minutes: minutes, refresh_before: refresh_before.as_millis() as Ms }
}

fn missing(variable: &str) -> crate::Error {
    crate::Error::Protection(format!("{variable} is not set; the chosen protection backend needs it"))
}

fn describe(backend: ProtectionBackend) -> &'static str {
    match backend {
        ProtectionBackend::Agent => "ECS agent endpoint",
        ProtectionBackend::Api => "ECS API",
        _ => "nothing",
    }
}

/// Resolves `auto`, with the reason for the log.
fn resolve(config: &ProtectionConfig) -> (ProtectionBackend, String) {
    match config.backend {
        ProtectionBackend::Auto => match (&config.agent_uri, &config.metadata_uri) {
            (Some(_), _) => (ProtectionBackend::Agent, "HOLDFAST_PROTECTION=auto and ECS_AGENT_URI is set (running in ECS)".into()),
            (None, Some(_)) => (
                ProtectionBackend::Off,
                "HOLDFAST_PROTECTION=auto, ECS_CONTAINER_METADATA_URI_V4 is set but ECS_AGENT_URI is not (an ECS agent \
                 without the task-protection endpoint); set HOLDFAST_PROTECTION=api to use the ECS API instead"
                    .into(),
            ),
            (None, None) => (ProtectionBackend::Off, "HOLDFAST_PROTECTION=auto and not running in ECS (ECS_AGENT_URI is unset)".into()),
        },
        chosen => (chosen, format!("HOLDFAST_PROTECTION={}", chosen.as_str())),
    }
}

#[cfg(test)]
mod tests;
