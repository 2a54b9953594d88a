//! The protection manager: the handle, the guard, and the one background task that makes
//! every ECS call.
//!
//! Handles only count work and wake the driver; the driver alone calls ECS, one call at a
//! time, so requests that overlap become one call. It publishes a snapshot after each pass,
//! which `hold`, `extend` and `ready_for_work` wait on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::agent::AgentBackend;
use super::api::{ApiBackend, ClientSource};
use super::backend::Backend;
use super::config::{MAX_EXPIRY_MINUTES, ProtectionBackend, ProtectionConfig, ProtectionMode};
use super::coordination::{Clock, Coordinator, SharedDir};
use super::ledger::{Action, Demand, Ledger, Ms, Timing, next_wake};
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

/// What handles and the driver share.
struct Shared {
    backend: ProtectionBackend,
    mode: ProtectionMode,
    maintain: Duration,
    clock: Clock,
    local: Mutex<Local>,
    wake: Notify,
    /// Bumped by every `hold`/`extend`; the driver reports which it has served.
    requests: AtomicU64,
    snapshot: watch::Receiver<Snapshot>,
    public: watch::Receiver<ProtectionState>,
}

/// This process's demand.
#[derive(Debug, Default)]
struct Local {
    in_flight: usize,
    keep_until: Option<Ms>,
    extend_until: Option<Ms>,
    probers: usize,
    shutdown: bool,
    /// The driver is releasing: a `hold` must wait for it rather than trust the snapshot.
    releasing: bool,
    /// The last pass that reached the shared state had this process busy.
    synced_busy: bool,
}

/// What the driver knows after its last pass.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    protected_until: Option<Instant>,
    error: Option<ProtectionError>,
    served: u64,
    shut_down: bool,
}

impl Snapshot {
    fn protected(&self) -> bool {
        self.protected_until.is_some_and(|t| t > Instant::now())
    }
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

impl Shared {
    fn local(&self) -> MutexGuard<'_, Local> {
        // The lock is never held across a panic-prone call; recover rather than cascade.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn work_ended(&self) {
        {
            let mut local = self.local();
            local.in_flight = local.in_flight.saturating_sub(1);
            if local.in_flight == 0 {
                local.keep_until = Some(self.clock.now() + self.maintain.as_millis() as Ms);
                // An extension is for the work that asked for it.
                local.extend_until = None;
            }
        }
        self.wake.notify_one();
    }

    fn demand(&self, local: &Local) -> Demand {
        Demand {
            busy: local.in_flight > 0,
            keep_until: local.keep_until,
            extend_until: local.extend_until,
            probing: local.probers > 0,
        }
    }
}

/// Counts a strict-mode waiter for as long as it waits.
struct Probe<'a>(&'a Shared);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let mut local = self.0.local();
        local.probers = local.probers.saturating_sub(1);
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
        let shared = Arc::new(Shared {
            backend: kind,
            mode: config.mode,
            maintain: config.maintain,
            clock: coordinator.clock(),
            local: Mutex::new(Local::default()),
            wake: Notify::new(),
            requests: AtomicU64::new(0),
            snapshot: snapshot_rx,
            public: public_rx,
        });
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
    /// [`ProtectionError::ShutDown`] after [`shutdown`](Self::shutdown), in either mode.
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
            let served = snapshot.served >= request;
            if snapshot.protected() && (trust_snapshot || served) {
                return Ok(guard);
            }
            if let (true, Some(error)) = (served, snapshot.error) {
                return match shared.mode {
                    ProtectionMode::Strict => Err(error),
                    ProtectionMode::Relaxed => {
                        tracing::warn!(
                            reason = error.code(),
                            "working without scale-in protection (relaxed mode): {error}"
                        );
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
    /// [`ProtectionError::ShutDown`] after [`shutdown`](Self::shutdown).
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
    /// arrive. In relaxed mode, or with protection off, it returns at once. Pollers call it
    /// before each receive.
    pub async fn ready_for_work(&self) {
        let Some(inner) = &self.inner else { return };
        let shared = &inner.shared;
        if shared.mode == ProtectionMode::Relaxed {
            return;
        }
        let mut snapshots = shared.snapshot.clone();
        let mut probe = None;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if snapshot.shut_down || snapshot.error.is_none() {
                return;
            }
            if probe.is_none() {
                shared.local().probers += 1;
                probe = Some(Probe(shared.as_ref()));
                shared.wake.notify_one();
                tracing::info!(
                    reason = snapshot.error.as_ref().map_or("", ProtectionError::code),
                    "taking no new work until the task can be protected again (strict mode)"
                );
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
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

/// The background task: the only place ECS is called from.
struct Driver {
    shared: Arc<Shared>,
    backend: Arc<dyn Backend>,
    coordinator: Coordinator,
    timing: Timing,
    snapshot: watch::Sender<Snapshot>,
    public: watch::Sender<ProtectionState>,
    stop: CancellationToken,
    last_error_logged: Option<String>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let (leaving, served) = {
                let local = self.shared.local();
                (local.shutdown || self.stop.is_cancelled(), self.shared.requests.load(Ordering::SeqCst))
            };
            let wake_at = self.pass(leaving, served).await;
            if leaving {
                break;
            }
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {}
                _ = self.shared.wake.notified() => {}
                _ = sleep => {}
            }
        }
        self.snapshot.send_modify(|s| {
            s.shut_down = true;
            s.protected_until = None;
        });
        self.public.send_replace(ProtectionState::ShutDown);
        tracing::debug!("scale-in protection manager stopped");
    }

    /// One pass: register this process's demand, decide, make at most one call, publish.
    /// Returns when the next pass is due without anything else happening.
    async fn pass(&mut self, leaving: bool, served: u64) -> Option<Instant> {
        let local = {
            let local = self.shared.local();
            self.shared.demand(&local)
        };
        let plan = match self.coordinator.plan(local, leaving, &self.timing).await {
            Ok(plan) => plan,
            Err(error) => return self.shared_dir_failed(error, served),
        };
        let (now, demand) = (plan.now, plan.demand);
        let mut outcome = None;
        if let Some(action) = plan.action {
            if action == Action::Release && !leaving {
                let mut local = self.shared.local();
                if local.in_flight > 0 {
                    // Work arrived since the demand was read; the next pass protects.
                    drop(local);
                    let ledger = self.coordinator.commit(plan, None);
                    return self.after(ledger, now, demand, served, false);
                }
                local.releasing = true;
                drop(local);
                self.snapshot.send_modify(|s| s.protected_until = None);
            }
            let result = match action {
                Action::Protect { minutes } => self.backend.protect(minutes).await,
                Action::Release => self.backend.release().await,
            };
            self.log_call(action, &result);
            outcome = Some((action, result));
        }
        let probe_succeeded =
            matches!(&outcome, Some((Action::Protect { .. }, Ok(())))) && !demand.busy && demand.probing;
        let ledger = self.coordinator.commit(plan, outcome);
        {
            let mut local = self.shared.local();
            local.releasing = false;
            local.synced_busy = local.in_flight > 0 && demand.busy;
            if probe_succeeded && local.in_flight == 0 {
                // Give the poller the maintain window to bring work in.
                local.keep_until = Some(now + self.shared.maintain.as_millis() as Ms);
            }
        }
        self.after(ledger, now, demand, served, probe_succeeded)
    }

    fn after(
        &mut self,
        ledger: std::io::Result<Ledger>,
        now: Ms,
        demand: Demand,
        served: u64,
        reschedule_now: bool,
    ) -> Option<Instant> {
        let ledger = match ledger {
            Ok(ledger) => ledger,
            Err(error) => return self.shared_dir_failed(error, served),
        };
        let clock = self.coordinator.clock();
        let protected_until = ledger.expires_at.filter(|t| ledger.enabled && *t > now).map(|t| clock.instant(t));
        self.snapshot.send_modify(|s| {
            s.protected_until = protected_until;
            s.error = ledger.protect_error.clone();
            s.served = s.served.max(served);
        });
        let state = match (&ledger.protect_error, protected_until) {
            (Some(error), until) => ProtectionState::Rejected { error: error.clone(), protected_until: until },
            (None, Some(expires_at)) => ProtectionState::Protected { expires_at },
            (None, None) => ProtectionState::Unprotected,
        };
        self.public.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
        let mut wake = next_wake(&ledger, &demand, now, &self.timing).map(|t| clock.instant(t));
        if let Some(every) = self.coordinator.renew_every() {
            let renew = Instant::now() + every;
            wake = Some(wake.map_or(renew, |w| w.min(renew)));
        }
        if reschedule_now {
            self.shared.wake.notify_one();
        }
        wake
    }

    fn shared_dir_failed(&mut self, error: std::io::Error, served: u64) -> Option<Instant> {
        tracing::error!(%error, "the shared protection directory failed; retrying in 1 s");
        let error = ProtectionError::Unavailable { message: format!("shared protection directory: {error}") };
        self.snapshot.send_modify(|s| {
            s.error = Some(error.clone());
            s.served = s.served.max(served);
        });
        self.public.send_replace(ProtectionState::Rejected { error, protected_until: None });
        Some(Instant::now() + Duration::from_secs(1))
    }

    fn log_call(&mut self, action: Action, result: &Result<(), ProtectionError>) {
        crate::telemetry::protection_call(matches!(action, Action::Protect { .. }), result);
        match (action, result) {
            (Action::Protect { minutes }, Ok(())) => {
                if self.last_error_logged.take().is_some() {
                    tracing::info!(minutes, "scale-in protection is available again");
                }
                tracing::info!(minutes, "task protected from scale-in");
            }
            (Action::Release, Ok(())) => tracing::info!("scale-in protection released"),
            (action, Err(error)) => {
                let what = match action {
                    Action::Protect { .. } => "protect the task",
                    Action::Release => "release protection",
                };
                let repeated = self.last_error_logged.as_deref() == Some(error.code());
                if error.is_deployment_blocked() {
                    tracing::warn!(reason = error.code(), "could not {what}: {error}");
                } else if repeated {
                    tracing::debug!(reason = error.code(), "could not {what}: {error}");
                } else {
                    tracing::warn!(
                        reason = error.code(),
                        transient = error.is_transient(),
                        "could not {what}: {error}; retrying with backoff"
                    );
                }
                self.last_error_logged = Some(error.code().to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests;
