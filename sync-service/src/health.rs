//! Liveness of `woa-sync run` for health checks that cannot reach into the process (a container
//! engine's `HEALTHCHECK`, a supervisor's probe).
//!
//! `run` sets the modification time of `state_dir/heartbeat` every [`HEARTBEAT_INTERVAL`];
//! `woa-sync health` reads it. Only the process's own liveness counts: an unreachable WOS or
//! repository is not unhealthy, because the agent is built to ride out long disconnections.
//! Setting a modification time is a metadata update, not a data write, so a flash disk is not
//! worn by it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::Result;

/// The heartbeat file's name in the state dir.
pub const HEARTBEAT_FILE: &str = "heartbeat";

/// How often `run` touches the heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// A heartbeat older than this means `run` is stuck or gone.
pub const STALE_AFTER: Duration = Duration::from_secs(180);

/// What `woa-sync health` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The heartbeat is this old, within [`STALE_AFTER`].
    Alive(Duration),
    /// The heartbeat is this old, past [`STALE_AFTER`].
    Stale(Duration),
    /// No heartbeat: `run` has not started, or stopped cleanly.
    NotRunning,
}

impl Health {
    /// Whether a health check passes.
    pub fn is_healthy(self) -> bool {
        matches!(self, Health::Alive(_))
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Alive(age) => write!(f, "healthy: heartbeat {}s ago", age.as_secs()),
            Health::Stale(age) => write!(
                f,
                "unhealthy: last heartbeat {}s ago (more than {}s)",
                age.as_secs(),
                STALE_AFTER.as_secs()
            ),
            Health::NotRunning => write!(f, "unhealthy: `woa-sync run` is not running"),
        }
    }
}

/// The heartbeat file of `state_dir`.
fn heartbeat_path(state_dir: &Path) -> PathBuf {
    state_dir.join(HEARTBEAT_FILE)
}

/// Sets the heartbeat's modification time to now, creating the file if needed.
fn touch(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.set_modified(SystemTime::now())
}

/// Touches the heartbeat every `interval` ([`HEARTBEAT_INTERVAL`] in `run`) until `cancel`,
/// then removes it so a stopped service is not taken for a live one.
pub(crate) async fn beat(state_dir: PathBuf, interval: Duration, cancel: CancellationToken) {
    let path = heartbeat_path(&state_dir);
    let mut failing = false;
    loop {
        match touch(&path) {
            Ok(()) => failing = false,
            // Said once per outage, not every interval.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), error = %e, "cannot touch the heartbeat");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Reads the heartbeat of the `run` that uses `state_dir`.
pub fn check(state_dir: &Path) -> Result<Health> {
    check_at(state_dir, SystemTime::now())
}

fn check_at(state_dir: &Path, now: SystemTime) -> Result<Health> {
    let path = heartbeat_path(state_dir);
    let modified = match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(modified) => modified,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Health::NotRunning),
        Err(e) => return Err(woa_common::Error::file(&path, e).into()),
    };
    // A heartbeat from the future (clock stepped back) counts as fresh.
    let age = now.duration_since(modified).unwrap_or_default();
    Ok(if age <= STALE_AFTER {
        Health::Alive(age)
    } else {
        Health::Stale(age)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn no_heartbeat_fresh_and_stale() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path()).unwrap(), Health::NotRunning);
        assert!(!Health::NotRunning.is_healthy());

        touch(&heartbeat_path(dir.path())).unwrap();
        let health = check(dir.path()).unwrap();
        assert!(health.is_healthy(), "{health}");

        let later = SystemTime::now() + STALE_AFTER + Duration::from_secs(5);
        let health = check_at(dir.path(), later).unwrap();
        assert!(matches!(health, Health::Stale(_)), "{health}");
        assert!(!health.is_healthy());
    }

    #[tokio::test]
    async fn run_keeps_the_heartbeat_fresh_and_removes_it_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = heartbeat_path(dir.path());
        let cancel = CancellationToken::new();
        let interval = Duration::from_millis(50);
        let task = tokio::spawn(beat(dir.path().to_path_buf(), interval, cancel.clone()));
        tokio::time::sleep(interval / 2).await;
        assert!(check(dir.path()).unwrap().is_healthy());
        let first = std::fs::metadata(&path).unwrap().modified().unwrap();
        tokio::time::sleep(interval * 3).await;
        let second = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(second > first);
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(check(dir.path()).unwrap(), Health::NotRunning);
    }
}
