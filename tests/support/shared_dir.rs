//! What the shared-directory protection tests share: a temporary directory removed when
//! dropped, and a bounded wait for a condition.

// Each test binary uses only some of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("holdfast-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits up to 10 s for `check`; panics naming `what` after that.
pub(crate) async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(Duration::from_secs(10), what, check).await;
}

/// Waits up to `limit` for `check`, looking every 25 ms; panics naming `what` after that.
pub(crate) async fn eventually_within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..limit.as_millis() / 25 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}
