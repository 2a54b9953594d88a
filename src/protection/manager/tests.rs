//! The manager's timing, on paused tokio time against a scripted backend: call counts are
//! exact.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::*;
use crate::protection::backend::scripted::{Call, Scripted};

const MIN: Duration = Duration::from_secs(60);

fn config(mode: ProtectionMode) -> ProtectionConfig {
    ProtectionConfig { mode, ..ProtectionConfig::default() }
}

fn start(config: &ProtectionConfig) -> (Protection, Arc<Scripted>) {
    let backend = Arc::new(Scripted::default());
    (Protection::with_backend(config, backend.clone()), backend)
}

fn blocked() -> ProtectionError {
    ProtectionError::DeploymentBlocked { detail: None }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_short_jobs_protects_once_and_releases_once() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let protection = protection.clone();
        jobs.spawn(async move {
            let _guard = protection.hold().await.expect("protected");
            sleep(Duration::from_millis(10)).await;
            drop(permit);
        });
    }
    while let Some(job) = jobs.join_next().await {
        job.unwrap();
    }
    let last_job = Instant::now();
    assert_eq!(backend.calls(), vec![Call::Protect(60)], "protected once, kept through the burst");
    sleep(Duration::from_secs(29)).await;
    assert_eq!(backend.calls().len(), 1, "still within the maintain window");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(backend.calls(), vec![Call::Protect(60), Call::Release]);
    let released_at = backend.calls.lock().unwrap()[1].1;
    assert_eq!(released_at - last_job, Duration::from_secs(30));
    assert_eq!(protection.state(), ProtectionState::Unprotected);
}

#[tokio::test(start_paused = true)]
async fn a_long_job_is_refreshed_before_each_expiry() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    let start = Instant::now();
    let guard = protection.hold().await.unwrap();
    sleep(3 * 60 * MIN).await; // three expiries
    drop(guard);
    sleep(MIN).await;
    let calls = backend.calls.lock().unwrap().clone();
    let at: Vec<(Call, u64)> = calls.into_iter().map(|(c, t)| (c, (t - start).as_secs() / 60)).collect();
    // refreshed with 20 minutes left: every 40 minutes
    assert_eq!(
        at,
        vec![
            (Call::Protect(60), 0),
            (Call::Protect(60), 40),
            (Call::Protect(60), 80),
            (Call::Protect(60), 120),
            (Call::Protect(60), 160),
            (Call::Release, 180),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn overlapping_requests_become_one_call() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    backend.set_delay(Duration::from_millis(500));
    let holds: Vec<_> = (0..8).map(|_| protection.hold()).collect();
    let guards = futures::future::join_all(holds).await;
    assert!(guards.iter().all(Result::is_ok));
    assert_eq!(backend.calls(), vec![Call::Protect(60)]);
    assert_eq!(backend.max_in_flight.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(guards);
    // a new hold while the release is in flight waits for it, then protects again
    sleep(Duration::from_millis(30_100)).await;
    assert_eq!(backend.calls(), vec![Call::Protect(60), Call::Release]);
    let during_release = protection.hold().await.unwrap();
    assert_eq!(backend.calls(), vec![Call::Protect(60), Call::Release, Call::Protect(60)]);
    assert!(protection.state().is_protected());
    drop(during_release);
    assert_eq!(backend.max_in_flight.load(std::sync::atomic::Ordering::SeqCst), 1, "never two calls at once");
}

#[tokio::test(start_paused = true)]
async fn the_maintain_window_absorbs_gaps_between_jobs() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    for _ in 0..5 {
        drop(protection.hold().await.unwrap());
        sleep(Duration::from_secs(20)).await; // one long poll without messages
    }
    assert_eq!(backend.calls(), vec![Call::Protect(60)]);
    sleep(Duration::from_secs(11)).await;
    assert_eq!(backend.calls(), vec![Call::Protect(60), Call::Release]);
}

#[tokio::test(start_paused = true)]
async fn strict_mode_refuses_work_until_protection_is_back() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    backend.fail_always(Some(blocked()));
    let err = protection.hold().await.unwrap_err();
    assert!(err.is_deployment_blocked(), "{err}");
    assert!(
        matches!(protection.state(), ProtectionState::Rejected { ref error, protected_until: None } if error.is_deployment_blocked())
    );
    // in backoff: answered at once with the same refusal, no new call
    assert!(protection.hold().await.unwrap_err().is_deployment_blocked());
    assert_eq!(backend.calls().len(), 1);

    let ready = tokio::spawn({
        let protection = protection.clone();
        async move { protection.ready_for_work().await }
    });
    sleep(Duration::from_secs(5)).await;
    assert!(!ready.is_finished(), "no new work while refused");
    sleep(Duration::from_secs(10)).await; // first backoff: 7.5 to 15 s
    assert_eq!(backend.calls().len(), 2, "one probe after the backoff");
    backend.fail_always(None);
    // second backoff: 15 to 30 s
    for _ in 0..300 {
        if ready.is_finished() {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(ready.is_finished(), "the probe succeeded");
    assert_eq!(backend.calls().len(), 3);
    // the probe's protection serves the next job without another call
    let guard = protection.hold().await.unwrap();
    assert_eq!(backend.calls().len(), 3);
    drop(guard);
    sleep(Duration::from_secs(31)).await;
    assert_eq!(backend.calls().last(), Some(&Call::Release));
}

#[tokio::test(start_paused = true)]
async fn relaxed_mode_carries_on_and_retries_while_busy() {
    let (protection, backend) = start(&config(ProtectionMode::Relaxed));
    backend.fail_always(Some(blocked()));
    let guard = protection.hold().await.expect("relaxed mode works unprotected");
    protection.ready_for_work().await; // returns at once
    sleep(Duration::from_secs(100)).await;
    // refusals back off from 15 s, doubling, with jitter between half and all of it:
    // attempts at 0, then within [7.5,15], [15,30], [30,60], [60,120] s after each other.
    let n = backend.calls().len();
    assert!((3..=5).contains(&n), "{n} attempts in 100 s");
    drop(guard);
    sleep(Duration::from_secs(600)).await;
    assert_eq!(backend.calls().len(), n, "idle and unprotected: no more calls");
}

#[tokio::test(start_paused = true)]
async fn a_refused_refresh_releases_as_soon_as_the_work_is_done() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    let guard = protection.hold().await.unwrap();
    backend.fail_always(Some(blocked()));
    sleep(40 * MIN + Duration::from_secs(1)).await; // the refresh at 40 min is refused
    assert_eq!(backend.calls().len(), 2);
    let state = protection.state();
    assert!(matches!(state, ProtectionState::Rejected { protected_until: Some(_), .. }), "{state:?}");
    assert!(state.is_protected(), "the earlier protection still holds");
    backend.fail_always(None);
    let released = Instant::now();
    drop(guard);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(backend.calls().last(), Some(&Call::Release), "no maintain window after a refusal");
    assert!(backend.calls.lock().unwrap().last().unwrap().1 - released < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_handler_can_extend_protection_for_its_work() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    let start = Instant::now();
    let guard = protection.hold().await.unwrap();
    guard.extend(3 * 60 * MIN).await.unwrap();
    assert_eq!(backend.calls(), vec![Call::Protect(60), Call::Protect(180)]);
    protection.extend(30 * MIN).await.unwrap();
    assert_eq!(backend.calls().len(), 2, "already covered");
    sleep(4 * 60 * MIN).await;
    drop(guard);
    let calls = backend.calls.lock().unwrap().clone();
    let at: Vec<(Call, u64)> = calls.into_iter().map(|(c, t)| (c, (t - start).as_secs() / 60)).collect();
    // the next refresh comes 20 minutes before the extension ends, and does not shorten it
    assert_eq!(at[2], (Call::Protect(60), 160));
    assert_eq!(at[3], (Call::Protect(60), 200));
    // the extension ended with the work
    sleep(MIN).await;
    assert_eq!(backend.calls().last(), Some(&Call::Release));
    // extend beyond 48 h is capped
    protection.extend(100 * 60 * MIN).await.unwrap();
    assert_eq!(backend.calls().last(), Some(&Call::Protect(2880)));
}

#[tokio::test(start_paused = true)]
async fn an_extension_that_is_refused_is_reported_in_both_modes() {
    for mode in [ProtectionMode::Strict, ProtectionMode::Relaxed] {
        let (protection, backend) = start(&config(mode));
        let guard = protection.hold().await.unwrap();
        backend.push(Err(ProtectionError::Throttled { message: "slow down".into() }));
        let err = guard.extend(5 * 60 * MIN).await.unwrap_err();
        assert!(matches!(err, ProtectionError::Throttled { .. }), "{mode:?}: {err}");
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_even_with_guards_held() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    let guard = protection.hold().await.unwrap();
    let mut states = protection.subscribe();
    protection.shutdown().await;
    assert_eq!(backend.calls(), vec![Call::Protect(60), Call::Release]);
    assert_eq!(*states.borrow_and_update(), ProtectionState::ShutDown);
    assert_eq!(protection.hold().await.unwrap_err(), ProtectionError::ShutDown);
    protection.shutdown().await; // idempotent
    drop(guard); // after shutdown: nothing happens
    sleep(MIN).await;
    assert_eq!(backend.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_background_task_ends_with_the_last_handle() {
    let (protection, backend) = start(&config(ProtectionMode::Strict));
    let guard = protection.hold().await.unwrap();
    drop(protection);
    sleep(MIN).await;
    assert_eq!(backend.calls(), vec![Call::Protect(60)], "a guard keeps the manager alive");
    drop(guard);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(backend.calls(), vec![Call::Protect(60), Call::Release], "released on the way out");
    assert_eq!(Arc::strong_count(&backend), 1, "the driver is gone");
}

#[tokio::test(start_paused = true)]
async fn transient_errors_back_off_quickly_and_recover() {
    let (protection, backend) = start(&config(ProtectionMode::Relaxed));
    for _ in 0..3 {
        backend.push(Err(ProtectionError::Unavailable { message: "connection refused".into() }));
    }
    let guard = protection.hold().await.unwrap();
    assert!(!protection.state().is_protected());
    sleep(Duration::from_secs(8)).await; // 0.5-1 s, 1-2 s, 2-4 s
    assert_eq!(backend.calls().len(), 4);
    assert!(matches!(protection.state(), ProtectionState::Protected { .. }));
    drop(guard);
}

#[tokio::test]
async fn off_calls_nothing_and_holds_at_once() {
    let protection = Protection::off();
    let guard = protection.hold().await.unwrap();
    protection.extend(MIN).await.unwrap();
    protection.ready_for_work().await;
    assert_eq!(protection.state(), ProtectionState::Off);
    assert!(!protection.is_strict());
    assert_eq!(protection.backend(), ProtectionBackend::Off);
    drop(guard);
    protection.shutdown().await;
}

#[tokio::test]
async fn auto_resolves_from_the_ecs_variables() {
    let mut c = ProtectionConfig::default();
    assert_eq!(resolve(&c).0, ProtectionBackend::Off);
    c.metadata_uri = Some("http://127.0.0.1:1/v4/x".into());
    let (backend, reason) = resolve(&c);
    assert_eq!(backend, ProtectionBackend::Off);
    assert!(reason.contains("HOLDFAST_PROTECTION=api"), "{reason}");
    c.agent_uri = Some("http://127.0.0.1:1/api/x".into());
    assert_eq!(resolve(&c).0, ProtectionBackend::Agent);
    let p = Protection::from_config(&c).await.unwrap();
    assert_eq!(p.backend(), ProtectionBackend::Agent);
    assert!(p.is_strict());
    c.backend = ProtectionBackend::Off;
    assert_eq!(Protection::from_config(&c).await.unwrap().backend(), ProtectionBackend::Off);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_point_beyond_the_expiry_falls_back_to_a_third() {
    let c = ProtectionConfig { expires_in_minutes: 6, ..config(ProtectionMode::Strict) }; // refresh_before stays 20 min
    let (protection, backend) = start(&c);
    let guard = protection.hold().await.unwrap();
    sleep(5 * MIN).await;
    assert_eq!(backend.calls(), vec![Call::Protect(6), Call::Protect(6)], "refreshed at 4 min only");
    drop(guard);
}

#[test]
fn handles_and_guards_cross_threads() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Protection>();
    send::<ProtectionGuard>();
}

/// Every failure kind the agent or the API can answer with.
fn failure_kinds() -> Vec<(&'static str, ProtectionError)> {
    vec![
        ("500 ServerException", ProtectionError::from_code(Some(500), Some("ServerException"), Some("internal"))),
        ("504 RequestCanceled", ProtectionError::from_code(Some(504), Some("RequestCanceled"), Some("timed out"))),
        ("throttling", ProtectionError::from_code(Some(400), Some("ThrottlingException"), Some("Rate exceeded"))),
        ("connection refused", ProtectionError::Unavailable { message: "connection refused".into() }),
        ("timeout", ProtectionError::Unavailable { message: "operation timed out".into() }),
        ("DEPLOYMENT_BLOCKED body", blocked()),
        ("TASK_NOT_VALID body", ProtectionError::refusal(Some("TASK_NOT_VALID".into()), None)),
    ]
}

/// Waits (on paused time) until `ready_for_work` returns, at most `limit`.
async fn ready_within(protection: &Protection, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    tokio::time::timeout(limit, protection.ready_for_work()).await.ok().map(|()| start.elapsed())
}

/// A poller asks for work now, while `backend` fails; ECS answers again after `outage`. How
/// long after that the poller got work, or `None` when it never did (within an hour).
async fn ready_after_recovery(protection: &Protection, backend: &Scripted, outage: Duration) -> Option<Duration> {
    let poller = tokio::spawn({
        let protection = protection.clone();
        async move { ready_within(&protection, Duration::from_secs(3600)).await }
    });
    sleep(outage).await;
    backend.fail_always(None);
    let recovered = Instant::now();
    poller.await.unwrap().map(|_| recovered.elapsed())
}

/// The longest a poller may wait after ECS recovers, by kind: the backoff step the failures
/// of an 8 s outage lead to, plus a second. Outages and throttling double from 1 s and 2 s
/// (with jitter between half and all of it), so at most four tries fit in the outage and the
/// next comes at most 8 s after it; refusals wait 7.5 to 15 s after the first, 15 to 30 s
/// after the second (a refused release counts too).
fn after_recovery(error: &ProtectionError) -> Duration {
    if error.is_transient() { Duration::from_secs(9) } else { Duration::from_secs(31) }
}

/// The outage of the scenario: protected, a refresh falls inside an outage, the work
/// ends during it, the release is retried, and once ECS answers again the poller must get
/// work again, for every kind of failure.
#[tokio::test(start_paused = true)]
async fn an_outage_at_a_refresh_never_stops_polling_for_good() {
    // With the default maintain window and without one (the window's end once was the only
    // thing that woke the manager after the release).
    let cases = failure_kinds().into_iter().flat_map(|k| [(k.clone(), 30), (k, 0)]);
    for ((kind, error), maintain_s) in cases {
        let c = ProtectionConfig {
            expires_in_minutes: 1,
            refresh_before: Duration::from_secs(55),
            maintain: Duration::from_secs(maintain_s),
            ..config(ProtectionMode::Strict)
        };
        let (protection, backend) = start(&c);
        let guard = protection.hold().await.unwrap();
        sleep(Duration::from_secs(2)).await;
        backend.fail_always(Some(error.clone()));
        sleep(Duration::from_secs(4)).await; // the refresh at 5 s fails
        assert!(backend.calls().len() >= 2, "{kind}: the refresh was attempted");
        drop(guard); // the work ends during the outage
        // the poller asks for work while ECS still fails; ECS answers again 8 s after the
        // outage began
        let Some(waited) = ready_after_recovery(&protection, &backend, Duration::from_secs(4)).await else {
            panic!("{kind}, maintain {maintain_s}s: the poller never got work again; calls {:?}", backend.calls());
        };
        assert!(
            waited <= after_recovery(&error),
            "{kind}, maintain {maintain_s}s: polling resumed {waited:?} after ECS recovered"
        );
        assert!(protection.hold().await.is_ok(), "{kind}: new work is protected");
        protection.shutdown().await;
    }
}

/// The same at the first protection and at the release: whatever phase the outage hits,
/// polling resumes within one backoff after recovery.
#[tokio::test(start_paused = true)]
async fn an_outage_at_the_first_protect_or_the_release_never_stops_polling() {
    for (kind, error) in failure_kinds() {
        // first protect
        let (protection, backend) = start(&config(ProtectionMode::Strict));
        backend.fail_always(Some(error.clone()));
        assert!(protection.hold().await.is_err(), "{kind}: strict refuses the first message");
        let Some(waited) = ready_after_recovery(&protection, &backend, Duration::from_secs(8)).await else {
            panic!("{kind} at the first protect: stalled; {:?}", backend.calls());
        };
        assert!(waited <= after_recovery(&error), "{kind}: {waited:?}");
        protection.shutdown().await;

        // release: the maintain window ends during the outage
        let c = ProtectionConfig { maintain: Duration::from_secs(1), ..config(ProtectionMode::Strict) };
        let (protection, backend) = start(&c);
        drop(protection.hold().await.unwrap());
        backend.fail_always(Some(error.clone()));
        sleep(Duration::from_secs(2)).await; // the release fails
        let poller = tokio::spawn({
            let protection = protection.clone();
            async move {
                // a poller keeps asking, as the worker does between receives
                let start = Instant::now();
                loop {
                    ready_within(&protection, Duration::from_secs(3600)).await?;
                    if start.elapsed() > Duration::from_secs(20) {
                        return Some(start.elapsed());
                    }
                    drop(protection.hold().await.ok());
                    sleep(Duration::from_secs(1)).await;
                }
            }
        });
        sleep(Duration::from_secs(8)).await;
        backend.fail_always(None);
        assert!(poller.await.unwrap().is_some(), "{kind} at the release: stalled; {:?}", backend.calls());
        sleep(Duration::from_secs(400)).await;
        assert_eq!(backend.calls().last(), Some(&Call::Release), "{kind}: released in the end");
        assert!(!protection.state().is_protected(), "{kind}");
        protection.shutdown().await;
    }
}

fn bounded(mode: ProtectionMode, max_hold: Duration) -> ProtectionConfig {
    ProtectionConfig {
        max_hold: Some(max_hold),
        hold_gap: Duration::from_secs(30),
        hold_drain: Duration::from_secs(25),
        ..config(mode)
    }
}

/// What a pool of `slots` workers did: when each job started (since `start`), whether the
/// task was protected then, and how many starts the hold refused.
#[derive(Debug, Default)]
struct Pool {
    starts: std::sync::Mutex<Vec<(Duration, bool)>>,
    refused: std::sync::atomic::AtomicUsize,
}

/// Runs `slots` loops that wait for work, hold protection and run jobs of `job`, as the
/// poller and the message tasks do, until the pool task is aborted.
fn run_pool(
    protection: &Protection,
    slots: usize,
    job: Duration,
    start: Instant,
) -> (Arc<Pool>, Vec<tokio::task::JoinHandle<()>>) {
    let pool = Arc::new(Pool::default());
    let tasks = (0..slots)
        .map(|_| {
            let (protection, pool) = (protection.clone(), pool.clone());
            tokio::spawn(async move {
                loop {
                    protection.ready_for_work().await;
                    match protection.hold().await {
                        Ok(guard) => {
                            pool.starts.lock().unwrap().push((start.elapsed(), protection.state().is_protected()));
                            sleep(job).await;
                            drop(guard);
                        }
                        Err(ProtectionError::Paused) => {
                            pool.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            sleep(Duration::from_millis(100)).await;
                        }
                        Err(ProtectionError::ShutDown) => return,
                        Err(_) => sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        })
        .collect();
    (pool, tasks)
}

fn call_times(backend: &Scripted, start: Instant) -> Vec<(Call, u64)> {
    backend.calls.lock().unwrap().iter().map(|(c, t)| (c.clone(), (*t - start).as_millis() as u64)).collect()
}

/// Continuous work, 10 s jobs on four slots: after ten minutes protected the worker takes
/// no new work, the jobs in flight finish, protection is released, nothing starts for the
/// 30 s gap, then work resumes under a new protection, and ten minutes later the same again.
/// In both modes.
#[tokio::test(start_paused = true)]
async fn the_bounded_hold_opens_the_task_on_schedule_then_resumes() {
    for mode in [ProtectionMode::Strict, ProtectionMode::Relaxed] {
        let (protection, backend) = start(&bounded(mode, 10 * MIN));
        let start = Instant::now();
        // staggered, so the jobs in flight end at different times
        let mut tasks = Vec::new();
        let mut pools = Vec::new();
        for i in 0..4 {
            let (pool, t) = run_pool(&protection, 1, Duration::from_secs(10), start);
            pools.push(pool);
            tasks.extend(t);
            sleep(Duration::from_millis(2_500 + i)).await;
        }
        sleep(25 * MIN - Duration::from_secs(10)).await;
        let calls = call_times(&backend, start);
        let kinds: Vec<&Call> = calls.iter().map(|(c, _)| c).collect();
        assert_eq!(
            kinds,
            [&Call::Protect(60), &Call::Release, &Call::Protect(60), &Call::Release, &Call::Protect(60)],
            "{mode:?}: {calls:?}"
        );
        let (protect, release, again) = (calls[0].1, calls[1].1, calls[2].1);
        assert_eq!(protect, 0);
        // paused at 600 s; the four jobs in flight end within 10 s
        assert!((600_000..=610_000).contains(&release), "{mode:?}: released at {release} ms");
        assert_eq!(again - release, 30_000, "{mode:?}: unprotected for exactly the gap");
        let next_release = calls[3].1;
        assert!((again + 600_000..=again + 610_000).contains(&next_release), "{mode:?}: {calls:?}");
        let starts: Vec<(Duration, bool)> = pools.iter().flat_map(|p| p.starts.lock().unwrap().clone()).collect();
        assert!(starts.iter().all(|(_, protected)| *protected), "{mode:?}: a job started unprotected");
        // A job that starts at the very instant the pause is due came first.
        let in_opening = |at: &Duration| {
            let ms = at.as_millis() as u64;
            (600_001..again).contains(&ms) || (again + 600_001..calls[4].1).contains(&ms)
        };
        let opened: Vec<_> = starts.iter().filter(|(at, _)| in_opening(at)).collect();
        assert!(opened.is_empty(), "{mode:?}: jobs started during the opening: {opened:?}; {calls:?}");
        // about 4 slots x 1500 s / 10 s, less the two pauses
        assert!(starts.len() > 500, "{mode:?}: {} jobs", starts.len());
        for t in tasks {
            t.abort();
        }
        protection.shutdown().await;
    }
}

/// Work that outlives the drain bound does not hold the opening back: protection is released
/// at the bound anyway, and re-taken at the end of the gap for the work still running.
#[tokio::test(start_paused = true)]
async fn work_outliving_the_drain_bound_is_released_anyway() {
    let (protection, backend) = start(&bounded(ProtectionMode::Strict, 2 * MIN));
    let start = Instant::now();
    let long = protection.hold().await.unwrap();
    sleep(2 * MIN + Duration::from_secs(1)).await;
    assert!(protection.hold_paused());
    assert_eq!(protection.hold().await.unwrap_err(), ProtectionError::Paused, "no new work while paused");
    assert_eq!(
        protection.extend(Duration::from_secs(3600)).await,
        Ok(()),
        "still protected while draining: an extension is kept"
    );
    sleep(Duration::from_secs(25)).await;
    assert_eq!(protection.extend(MIN).await, Err(ProtectionError::Paused), "the hold outranks an extension");
    sleep(Duration::from_secs(40)).await;
    let calls = call_times(&backend, start);
    let kinds: Vec<&Call> = calls.iter().map(|(c, _)| c).collect();
    assert_eq!(kinds, [&Call::Protect(60), &Call::Protect(60), &Call::Release, &Call::Protect(60)], "{calls:?}");
    assert_eq!(calls[2].1, 145_000, "released at the drain bound although the job runs");
    assert_eq!(calls[3].1, 175_000, "protected again at the end of the gap, for the job still running");
    assert!(!protection.hold_paused());
    drop(long);
    protection.shutdown().await;
}

/// The agent fails (500, connection refused) at the hold's release or at the protection
/// after the gap: polling resumes all the same, on a schedule.
#[tokio::test(start_paused = true)]
async fn a_failing_agent_at_the_release_or_the_reprotect_still_resumes_polling() {
    let kinds = [
        ("500 ServerException", ProtectionError::from_code(Some(500), Some("ServerException"), Some("internal"))),
        ("connection refused", ProtectionError::Unavailable { message: "connection refused".into() }),
    ];
    for (kind, error) in kinds {
        // The release fails for good: the hold gives up after the drain bound and the gap.
        let (protection, backend) = start(&bounded(ProtectionMode::Strict, 2 * MIN));
        drop(protection.hold().await.unwrap());
        let keep = protection.hold().await.unwrap();
        backend.fail_always(Some(error.clone()));
        sleep(2 * MIN + Duration::from_secs(1)).await;
        drop(keep); // drained at once
        assert!(protection.hold_paused(), "{kind}");
        let waited = ready_within(&protection, 10 * MIN).await;
        assert!(
            waited.is_some_and(|w| w <= Duration::from_secs(56)),
            "{kind}: the release kept failing and polling waited {waited:?}"
        );
        assert!(backend.calls().iter().filter(|c| **c == Call::Release).count() >= 2, "{kind}: retried");
        backend.fail_always(None);
        assert!(protection.hold().await.is_ok(), "{kind}: work again");
        protection.shutdown().await;

        // The release fails once, then succeeds: the gap follows it.
        let (protection, backend) = start(&bounded(ProtectionMode::Strict, 2 * MIN));
        let start_at = Instant::now();
        drop(protection.hold().await.unwrap());
        let keep = protection.hold().await.unwrap();
        sleep(2 * MIN + Duration::from_secs(1)).await;
        backend.push(Err(error.clone()));
        drop(keep);
        sleep(Duration::from_secs(60)).await;
        let calls = call_times(&backend, start_at);
        assert_eq!(calls.iter().filter(|(c, _)| *c == Call::Release).count(), 2, "{kind}: {calls:?}");
        assert!(ready_within(&protection, Duration::ZERO).await.is_some(), "{kind}: resumed after the gap");
        protection.shutdown().await;

        // The protection after the gap fails: strict mode waits for it, and resumes when the
        // agent answers again.
        let (protection, backend) = start(&bounded(ProtectionMode::Strict, 2 * MIN));
        drop(protection.hold().await.unwrap());
        let keep = protection.hold().await.unwrap();
        sleep(2 * MIN + Duration::from_secs(1)).await;
        drop(keep);
        sleep(Duration::from_secs(5)).await;
        assert_eq!(backend.calls().last(), Some(&Call::Release), "{kind}: released for the gap");
        backend.fail_always(Some(error.clone()));
        sleep(Duration::from_secs(30)).await; // the gap ends
        assert!(protection.hold().await.is_err(), "{kind}: strict refuses while the agent fails");
        let Some(waited) = ready_after_recovery(&protection, &backend, Duration::from_secs(8)).await else {
            panic!("{kind}: stalled after the gap; {:?}", backend.calls());
        };
        assert!(waited <= after_recovery(&error), "{kind}: {waited:?}");
        assert!(protection.hold().await.is_ok(), "{kind}: protected again");
        protection.shutdown().await;
    }
}

/// Shutdown during each phase of the hold: the task is released (when it still is protected),
/// waits end, the manager stops.
#[tokio::test(start_paused = true)]
async fn shutdown_during_the_hold_releases_and_ends_every_wait() {
    for (phase, at) in [("draining", Duration::from_secs(5)), ("gap", Duration::from_secs(40))] {
        let (protection, backend) = start(&bounded(ProtectionMode::Strict, 2 * MIN));
        let long = protection.hold().await.unwrap();
        sleep(2 * MIN + at).await;
        assert!(protection.hold_paused(), "{phase}");
        let waiting = tokio::spawn({
            let protection = protection.clone();
            async move { protection.ready_for_work().await }
        });
        protection.shutdown().await;
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect(phase).unwrap();
        assert_eq!(backend.calls().last(), Some(&Call::Release), "{phase}: {:?}", backend.calls());
        assert_eq!(backend.calls().iter().filter(|c| **c == Call::Release).count(), 1, "{phase}: released once");
        assert_eq!(protection.hold().await.unwrap_err(), ProtectionError::ShutDown);
        drop(long);
    }
}
