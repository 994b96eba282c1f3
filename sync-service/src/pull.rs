//! The pull loop: inside the polling windows, fetch the desired-state branch into the local
//! mirror and hand a new tip to the deployment service.
//!
//! Level-triggered: whenever the fetched tip differs from the revision last accepted by the
//! deployment service, it is applied, so a failed apply (deployment service restarting) is
//! simply repeated at the next poll. While the repository is unreachable nothing is applied
//! and the deployment service keeps running the last desired state it accepted.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use woa_common::backoff::Backoff;

use crate::deploy_link::Deployer;
use crate::snapshot::desired_state;
use crate::source::{Mirror, RepoAccess, SourceError};
use crate::window::Schedule;
use crate::{Error, Result};

/// Largest total size of one commit's files that is read.
const TREE_LIMIT: u64 = 48 << 20;

/// The first retry after a failure; later ones double up to the poll interval.
const RETRY_BASE: Duration = Duration::from_secs(2);

/// What went wrong with the last poll, for people and for the status the WOS sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProblem {
    /// `ERR_REPOSITORY_AUTH` or `ERR_REPOSITORY_UNAVAILABLE`.
    pub code: &'static str,
    /// The repository URL (never with credentials).
    pub source: String,
    /// What happened.
    pub message: String,
}

/// Settings of the pull loop.
pub struct Puller {
    /// Where the mirror lives.
    pub mirror_dir: std::path::PathBuf,
    /// The repository.
    pub access: RepoAccess,
    /// Directory of deployment documents.
    pub deployments_path: String,
    /// The deployment service.
    pub deployer: Deployer,
    /// Polling and downtime windows.
    pub schedule: Arc<Schedule>,
    /// Time between polls.
    pub interval: Duration,
    /// Random extra wait per poll.
    pub jitter: Duration,
    /// Where the last poll's problem is published (`None` after a good poll).
    pub problems: watch::Sender<Option<PullProblem>>,
}

impl Puller {
    /// Polls until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut mirror: Option<Mirror> = None;
        let mut applied: Option<String> = None;
        let mut backoff = Backoff::new(RETRY_BASE, self.interval);
        loop {
            let now = Timestamp::now();
            let wait = if !self.schedule.allows(now) {
                until_allowed(&self.schedule, now)
            } else {
                match self.poll(&mut mirror, &mut applied).await {
                    Ok(()) => {
                        backoff.reset();
                        self.problems.send_if_modified(|p| p.take().is_some());
                        self.interval + jitter(self.jitter)
                    }
                    Err(e) => {
                        self.report(&e, now);
                        backoff.next_delay()
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// One poll: fetch, and apply the tip if the deployment service does not have it yet.
    async fn poll(&self, mirror: &mut Option<Mirror>, applied: &mut Option<String>) -> Result<()> {
        let dir = self.mirror_dir.clone();
        let access = self.access.clone();
        let taken = mirror.take();
        let (opened, fetched) = tokio::task::spawn_blocking(move || {
            let mut m = match taken {
                Some(m) => m,
                None => Mirror::open(&dir)?,
            };
            let fetched = m.fetch(&access);
            Ok::<_, SourceError>((m, fetched))
        })
        .await
        .map_err(|e| Error::Deploy {
            operation: "fetch task",
            message: e.to_string(),
        })??;
        // A failed fetch may mean a damaged mirror: open it afresh (and rebuild it) next time.
        let fetched = fetched?;
        *mirror = Some(opened);
        if applied.as_deref() == Some(fetched.tip.as_str()) {
            tracing::debug!(revision = %fetched.tip, "no change");
            return Ok(());
        }
        let Some(m) = mirror.take() else {
            return Ok(());
        };
        let tip = fetched.tip.clone();
        let (m, files) = tokio::task::spawn_blocking(move || {
            let files = m.read_tree(&tip, TREE_LIMIT);
            (m, files)
        })
        .await
        .map_err(|e| Error::Deploy {
            operation: "read task",
            message: e.to_string(),
        })?;
        *mirror = Some(m);
        let request = desired_state(&fetched.tip, &files?, &self.deployments_path);
        let documents = request.deployments.len();
        let response = match self.deployer.apply(request).await {
            Ok(r) => r,
            Err(e) => {
                // Not the repository's fault: retry at the next poll without a problem report.
                tracing::warn!(error = %e, revision = %fetched.tip, "deployment service did not take the desired state; retrying at the next poll");
                return Ok(());
            }
        };
        for rejected in &response.rejected {
            let message = rejected.error.as_ref().map_or("", |e| e.message.as_str());
            tracing::warn!(path = %rejected.path, deployment = %rejected.deployment_id, error = %message, "deployment document rejected");
        }
        tracing::info!(
            revision = %fetched.tip,
            documents,
            changed = response.changed,
            accepted = response.accepted.len(),
            rejected = response.rejected.len(),
            "desired state applied"
        );
        *applied = Some(fetched.tip);
        Ok(())
    }

    /// Logs a failed poll once per distinct problem, and publishes it for status reports.
    /// Inside a downtime window failures are expected and ignored.
    fn report(&self, e: &Error, now: Timestamp) {
        if self.schedule.in_downtime(now) {
            tracing::debug!(error = %e, "poll failed during downtime; ignored");
            return;
        }
        let problem = PullProblem {
            code: match e {
                Error::Source(s) if s.is_auth() => "ERR_REPOSITORY_AUTH",
                _ => "ERR_REPOSITORY_UNAVAILABLE",
            },
            source: self.access.url.clone(),
            message: e.to_string(),
        };
        let is_new = self.problems.send_if_modified(|p| {
            if p.as_ref() == Some(&problem) {
                return false;
            }
            *p = Some(problem.clone());
            true
        });
        if is_new {
            tracing::error!(error = %e, repository = %self.access.url, "polling the desired-state repository failed; keeping the last desired state");
        } else {
            tracing::debug!(error = %e, "poll failed again");
        }
    }
}

/// How long to sleep when outside the polling windows: until the next allowed instant,
/// re-checked at least hourly (the clock may be corrected meanwhile).
fn until_allowed(schedule: &Schedule, now: Timestamp) -> Duration {
    let cap = Duration::from_secs(3600);
    let Some(next) = schedule.next_allowed(now) else {
        return cap;
    };
    let wait = next.duration_since(now).unsigned_abs();
    wait.clamp(Duration::from_secs(1), cap)
}

/// A random wait in `[0, max]`.
pub(crate) fn jitter(max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=max_ms))
}
