//! Who decides the calls: this process alone, or every worker process of the task together
//! through a shared directory.
//!
//! ECS protects a whole task, but a task may run several worker processes, even in several
//! containers. With `HOLDFAST_PROTECTION_SHARED_DIR` on a volume they share, they keep one
//! protection state in it:
//!
//! - `state.json`: every holder's demand and lease, and the ledger of ECS's protection;
//! - `state.lock`: an OS file lock held while a process reads, decides, calls ECS and
//!   writes, so only one process makes each call and none decides on a stale state;
//! - `holders/<id>.lock`: each process keeps an OS lock on its own file for as long as it
//!   lives. The kernel drops the lock when the process dies (SIGKILL, OOM), so the others
//!   see at once that it is gone.
//!
//! A holder is dropped when its lock is free, or, failing that (a hung process, a file
//! system that keeps locks of the dead), when it has not renewed its lease for the lease
//! TTL. The task stays protected while any live holder wants it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::ledger::{Action, Demand, Ledger, Ms, Timing, decide, decide_leaving};

/// The clock decisions are made on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// Tokio's clock, counted from `origin`: one process, and paused time in tests.
    Tokio(Instant),
    /// Milliseconds since the Unix epoch: shared between processes.
    Wall,
}

impl Clock {
    pub(crate) fn now(&self) -> Ms {
        match self {
            Clock::Tokio(origin) => origin.elapsed().as_millis() as Ms,
            Clock::Wall => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Ms),
        }
    }

    /// The tokio instant of `at` on this clock.
    pub(crate) fn instant(&self, at: Ms) -> Instant {
        let now_ms = self.now();
        let now = Instant::now();
        if at >= now_ms {
            now + Duration::from_millis(at - now_ms)
        } else {
            now.checked_sub(Duration::from_millis(now_ms - at)).unwrap_or(now)
        }
    }
}

/// A decision in progress: while it lives in shared mode, the state lock is held.
pub(crate) struct Plan {
    pub(crate) ledger: Ledger,
    pub(crate) action: Option<Action>,
    pub(crate) now: Ms,
    /// The demand of every live holder, merged (this process's own in solo mode).
    pub(crate) demand: Demand,
    shared: Option<(File, SharedState)>,
}

pub(crate) enum Coordinator {
    Solo { ledger: Ledger, clock: Clock },
    Shared(SharedDir),
}

impl Coordinator {
    pub(crate) fn solo() -> Self {
        Coordinator::Solo { ledger: Ledger::default(), clock: Clock::Tokio(Instant::now()) }
    }

    pub(crate) fn clock(&self) -> Clock {
        match self {
            Coordinator::Solo { clock, .. } => *clock,
            Coordinator::Shared(_) => Clock::Wall,
        }
    }

    /// Reads the state, registers `local` (or, `leaving`, removes this process), and
    /// decides. In shared mode the state stays locked until [`commit`](Self::commit).
    pub(crate) async fn plan(&mut self, local: Demand, leaving: bool, timing: &Timing) -> io::Result<Plan> {
        match self {
            Coordinator::Solo { ledger, clock } => {
                let now = clock.now();
                let demand = if leaving { Demand::default() } else { local };
                let action = if leaving {
                    decide_leaving(ledger, &demand, now, timing)
                } else {
                    decide(ledger, &demand, now, timing)
                };
                Ok(Plan { ledger: ledger.clone(), action, now, demand, shared: None })
            }
            Coordinator::Shared(dir) => dir.plan(local, leaving, timing).await,
        }
    }

    /// Records the outcome of the plan's action (if one was made) and unlocks.
    pub(crate) fn commit(
        &mut self,
        mut plan: Plan,
        outcome: Option<(Action, Result<(), super::ProtectionError>)>,
    ) -> io::Result<Ledger> {
        if let Some((action, result)) = &outcome {
            plan.ledger.record(*action, plan.now, result, fastrand::f64());
        }
        match self {
            Coordinator::Solo { ledger, .. } => {
                *ledger = plan.ledger.clone();
                Ok(plan.ledger)
            }
            Coordinator::Shared(dir) => {
                let (lock, mut state) = plan.shared.take().expect("a shared plan holds the state");
                state.ledger = plan.ledger.clone();
                let written = dir.write(&state);
                drop(lock);
                written.map(|()| plan.ledger)
            }
        }
    }

    /// Whether this process decides alone (no shared directory).
    pub(crate) fn is_solo(&self) -> bool {
        matches!(self, Coordinator::Solo { .. })
    }

    /// Solo mode: records that ECS already protects the task until `expires_at` (a
    /// protection an earlier process left), so that it is released like one of our own.
    pub(crate) fn adopt(&mut self, expires_at: Ms) {
        if let Coordinator::Solo { ledger, .. } = self {
            ledger.enabled = true;
            ledger.expires_at = Some(expires_at);
        }
    }

    /// How often this process must renew its registration, if it has one.
    pub(crate) fn renew_every(&self) -> Option<Duration> {
        match self {
            Coordinator::Solo { .. } => None,
            Coordinator::Shared(dir) => Some(dir.ttl / 3),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SharedState {
    holders: BTreeMap<String, Holder>,
    ledger: Ledger,
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    lease_until: Ms,
    demand: Demand,
}

/// How long a process waits for `state.lock` before it takes the holder for stuck (stopped
/// or hung: a live holder keeps it for one ECS call at most) and breaks the lock: the
/// lease TTL, and never less than one call with its timeout and a margin.
fn lock_patience(ttl: Duration) -> Duration {
    ttl.max(super::backend::CALL_TIMEOUT + Duration::from_secs(2))
}

/// Locks `state.lock`, waiting at most `patience` for a holder. A holder that keeps it longer
/// is stuck: the file is unlinked and a fresh one locked in its place (the stuck process keeps
/// its lock on a file nobody opens any more). A lock taken on a file that was replaced
/// meanwhile does not count; the wait starts again on the new one.
fn lock_state(path: &Path, patience: Duration) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let identity = |path: &Path| fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    loop {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        let opened = file.metadata().map(|m| (m.dev(), m.ino()))?;
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) if identity(path) == Some(opened) => return Ok(file),
                Ok(()) => break,
                Err(TryLockError::Error(e)) => return Err(e),
                Err(TryLockError::WouldBlock) if started.elapsed() >= patience => {
                    if identity(path) == Some(opened) {
                        tracing::warn!(
                            path = %path.display(),
                            waited_s = started.elapsed().as_secs(),
                            "the shared protection state has been locked longer than any live process holds it \
                             (its holder is stopped or hung): breaking the lock"
                        );
                        let _ = fs::remove_file(path);
                    }
                    break;
                }
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// This process's registration in a shared directory.
pub(crate) struct SharedDir {
    dir: PathBuf,
    id: String,
    ttl: Duration,
    /// Locked for as long as this process lives; the kernel unlocks it when it dies.
    _alive: File,
    alive_path: PathBuf,
}

impl SharedDir {
    pub(crate) fn open(dir: &Path, ttl: Duration) -> io::Result<Self> {
        let holders = dir.join("holders");
        fs::create_dir_all(&holders)?;
        let id = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
        let alive_path = holders.join(format!("{id}.lock"));
        let alive = OpenOptions::new().create(true).truncate(true).write(true).open(&alive_path)?;
        alive.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("a fresh holder file is locked by someone else"),
        })?;
        Ok(Self { dir: dir.to_owned(), id, ttl, _alive: alive, alive_path })
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    async fn plan(&self, local: Demand, leaving: bool, timing: &Timing) -> io::Result<Plan> {
        let lock_path = self.dir.join("state.lock");
        // Another process may hold the lock during an ECS call: wait on a blocking thread,
        // for a bounded time.
        let patience = lock_patience(self.ttl);
        let lock =
            tokio::task::spawn_blocking(move || lock_state(&lock_path, patience)).await.map_err(io::Error::other)??;
        let mut state = self.read();
        let now = Clock::Wall.now();
        if leaving {
            state.holders.remove(&self.id);
        } else {
            let lease_until = now + self.ttl.as_millis() as Ms;
            state.holders.insert(self.id.clone(), Holder { pid: std::process::id(), lease_until, demand: local });
        }
        self.drop_dead(&mut state, now);
        let demand = state.holders.values().fold(Demand::default(), |d, h| d.merge(h.demand));
        let action = if leaving {
            decide_leaving(&state.ledger, &demand, now, timing)
        } else {
            decide(&state.ledger, &demand, now, timing)
        };
        Ok(Plan { ledger: state.ledger.clone(), action, now, demand, shared: Some((lock, state)) })
    }

    fn drop_dead(&self, state: &mut SharedState, now: Ms) {
        state.holders.retain(|id, holder| {
            if *id == self.id {
                return true;
            }
            let path = self.dir.join("holders").join(format!("{id}.lock"));
            let gone = match File::open(&path) {
                Err(_) => Some("its lock file is gone"),
                Ok(file) => match file.try_lock() {
                    Ok(()) => Some("its process is gone (its lock is free)"),
                    Err(TryLockError::WouldBlock) => None,
                    Err(TryLockError::Error(_)) => None,
                },
            };
            let expired = holder.lease_until < now;
            match (gone, expired) {
                (Some(reason), _) => {
                    tracing::warn!(holder = %id, pid = holder.pid, busy = holder.demand.busy, "dropping a protection holder: {reason}");
                    let _ = fs::remove_file(&path);
                    false
                }
                (None, true) => {
                    // Alive but silent (hung, or stopped). Its lock file stays: should it
                    // wake up, it registers again and is seen alive.
                    tracing::warn!(holder = %id, pid = holder.pid, busy = holder.demand.busy, "dropping a protection holder: its lease expired");
                    false
                }
                (None, false) => true,
            }
        });
    }

    fn read(&self) -> SharedState {
        let path = self.dir.join("state.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "shared protection state is unreadable; starting afresh");
                SharedState::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => SharedState::default(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the shared protection state; starting afresh");
                SharedState::default()
            }
        }
    }

    /// Writes the state through a temporary file and a rename, so a reader never sees half.
    fn write(&self, state: &SharedState) -> io::Result<()> {
        let path = self.dir.join("state.json");
        let tmp = self.dir.join(format!("state.json.{}.tmp", self.id));
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)?;
        file.sync_data()?;
        fs::rename(&tmp, &path)
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.alive_path);
    }
}
