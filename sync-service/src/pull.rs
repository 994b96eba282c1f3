//! The pull loop: inside the polling windows, fetch the desired-state branch into the local
//! mirror and hand a new tip to the deployment service.
//!
//! Level-triggered: whenever the fetched tip differs from the revision last accepted by the
//! deployment service, or the deployment service reports no desired state at all (it lost
//! its state), the tip is applied; a failed apply is retried with backoff. While the
//! repository is unreachable nothing is applied and the deployment service keeps running the
//! last desired state it accepted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use woa_common::backoff::Backoff;
use woa_proto::v1 as pb;

use crate::deploy_link::Deployer;
use crate::retry::{self, Messages, Outage, Severity};
use crate::snapshot::desired_state;
use crate::source::{Mirror, RepoAccess};
use crate::{Error, Result};
use woa_common::window::Schedule;

/// Largest total size of one commit's files that is read.
const TREE_LIMIT: u64 = 48 << 20;

/// The first retry after a failure; later ones double up to the poll interval, and from
/// then on wait 1 to 1.25 poll intervals (never sooner than a healthy poll).
const RETRY_BASE: Duration = Duration::from_secs(2);

/// What the log says while the repository cannot be polled. Nothing the device runs changes
/// meanwhile, but it is blind to its orchestrator: an error.
const REPOSITORY_MESSAGES: Messages = Messages {
    down: "polling the desired-state source failed; keeping the last desired state",
    still_down: "the desired-state source still cannot be polled; keeping the last desired state",
    back: "the desired-state source can be polled again",
};

/// What the log says while the deployment service does not take a new desired state.
const DEPLOYMENT_SERVICE_MESSAGES: Messages = Messages {
    down: "the deployment service did not take the desired state; will retry",
    still_down: "the deployment service still does not take the desired state; retrying",
    back: "the deployment service took the desired state",
};

/// The repository refused the credentials.
pub const ERR_REPOSITORY_AUTH: &str = "ERR_REPOSITORY_AUTH";
/// The repository could not be reached or read.
pub const ERR_REPOSITORY_UNAVAILABLE: &str = "ERR_REPOSITORY_UNAVAILABLE";
/// The commit cannot be used as desired state (a link, too large).
pub const ERR_INVALID_DESIRED_STATE: &str = "ERR_INVALID_DESIRED_STATE";

/// What went wrong with the last poll, for people and for the status the WOS sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProblem {
    /// [`ERR_REPOSITORY_AUTH`], [`ERR_REPOSITORY_UNAVAILABLE`], [`ERR_INVALID_DESIRED_STATE`]
    /// or (from the Margo API) `ERR_MANIFEST_VERSION`.
    pub code: &'static str,
    /// The repository URL (never with credentials).
    pub source: String,
    /// What happened.
    pub message: String,
}

/// Where the desired state comes from: the Git mirror or the Margo API. Everything behind
/// it (handing over, retries, windows, problems) is the pull loop's.
pub trait DesiredStateSource: Send {
    /// What to call the source in logs and statuses (never with credentials).
    fn name(&self) -> String;

    /// Fetches the desired state: `None` when it is still `known`, the revision last handed
    /// over (`None` when the deployment service has none).
    fn fetch(
        &mut self,
        known: Option<&str>,
    ) -> impl Future<Output = Result<Option<pb::ApplyDesiredStateRequest>>> + Send;

    /// The deployment service took `revision`; what the source remembers about it is saved
    /// now, and only now, so a crash before never skips a state.
    fn handed_over(&mut self, _revision: &str) -> Result<()> {
        Ok(())
    }
}

/// The desired-state branch of the device's repository, through the local mirror.
pub struct GitSource {
    /// Where the mirror lives.
    pub mirror_dir: PathBuf,
    /// The repository.
    pub access: RepoAccess,
    /// Directory of deployment documents.
    pub deployments_path: String,
}

impl DesiredStateSource for GitSource {
    fn name(&self) -> String {
        crate::source::without_credentials(&self.access.url)
    }

    async fn fetch(&mut self, known: Option<&str>) -> Result<Option<pb::ApplyDesiredStateRequest>> {
        let dir = self.mirror_dir.clone();
        let access = self.access.clone();
        let known = known.map(str::to_owned);
        let deployments_path = self.deployments_path.clone();
        // Fetching, reading the tree and assembling the request are blocking and may touch
        // tens of MiB: all of it runs off the async workers.
        let fetched = tokio::task::spawn_blocking(move || {
            let mut mirror = Mirror::open(&dir)?;
            let tip = mirror.fetch(&access)?.tip;
            if known.as_deref() == Some(tip.as_str()) {
                tracing::debug!(revision = %tip, "no change");
                return Ok(None);
            }
            match mirror.read_tree(&tip, TREE_LIMIT) {
                Ok(files) => Ok(Some(desired_state(&tip, &files, &deployments_path))),
                Err(e) => {
                    if !e.is_content() {
                        // Objects that cannot be read: build the mirror anew at the next poll.
                        if let Err(discard) = mirror.discard() {
                            tracing::warn!(error = %discard, "could not discard the damaged mirror");
                        }
                    }
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| Error::Deploy {
            operation: "fetch task",
            message: e.to_string(),
        })?;
        fetched.map_err(Error::Source)
    }
}

/// Settings of the pull loop.
pub struct Puller<S> {
    /// Where the desired state comes from.
    pub source: S,
    /// The deployment service.
    pub deployer: Deployer,
    /// The deployment service's current state, as the reporter follows it.
    pub deployed: watch::Receiver<Option<pb::CurrentState>>,
    /// Polling and downtime windows.
    pub schedule: Arc<Schedule>,
    /// Time between polls.
    pub interval: Duration,
    /// Random extra wait per poll.
    pub jitter: Duration,
    /// Where the last poll's problem is published (`None` after a good poll).
    pub problems: watch::Sender<Option<PullProblem>>,
    /// When the last poll succeeded.
    pub last_poll: watch::Sender<Option<Timestamp>>,
}

impl<S: DesiredStateSource> Puller<S> {
    /// Polls until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut applied: Option<String> = None;
        let mut backoff = Backoff::new(RETRY_BASE, self.interval);
        let mut repository = Outage::new(Severity::Error, REPOSITORY_MESSAGES);
        let mut deployment_service = Outage::new(Severity::Warn, DEPLOYMENT_SERVICE_MESSAGES);
        // A fleet restarting together (after a power cut) must not poll in lockstep.
        let mut wait = crate::jitter(self.jitter);
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
            let now = Timestamp::now();
            if !self.schedule.allows(now) {
                wait = until_allowed(&self.schedule, now) + crate::jitter(self.jitter);
                continue;
            }
            let polled = tokio::select! {
                polled = self.poll(&mut applied) => polled,
                () = cancel.cancelled() => return,
            };
            wait = match polled {
                Ok(()) => {
                    backoff.reset();
                    repository.recovered();
                    deployment_service.recovered();
                    self.problems.send_if_modified(|p| p.take().is_some());
                    self.last_poll.send_replace(Some(now));
                    self.interval + crate::jitter(self.jitter)
                }
                Err(e) => {
                    self.report(&e, now, &mut repository, &mut deployment_service);
                    if e.is_forbidden() || !e.is_transient() {
                        // Told not to ask again, or not authorized (a retired client): the
                        // next regular poll, not a quick retry.
                        self.interval + crate::jitter(self.jitter)
                    } else {
                        // A repository that answered 503/429 with Retry-After is polled when
                        // it asked, like the WOS API; otherwise the backoff, which never
                        // comes sooner than the poll interval once grown to it.
                        retry::delay(e.retry_after(), &mut backoff)
                    }
                }
            };
        }
    }

    /// One poll: fetch, and apply the desired state if the deployment service does not have it.
    async fn poll(&mut self, applied: &mut Option<String>) -> Result<()> {
        let deployed_nothing = self
            .deployed
            .borrow()
            .as_ref()
            .is_some_and(|s| s.revision.is_empty());
        if deployed_nothing {
            *applied = None;
        }
        let Some(request) = self.source.fetch(applied.as_deref()).await? else {
            return Ok(());
        };
        let tip = request.revision.clone();
        let documents = request.deployments.len();
        let response = self.deployer.apply(request).await?;
        for rejected in &response.rejected {
            let message = rejected.error.as_ref().map_or("", |e| e.message.as_str());
            tracing::warn!(path = %rejected.path, deployment = %rejected.deployment_id, error = %message, "deployment document rejected");
        }
        tracing::info!(
            revision = %tip,
            documents,
            changed = response.changed,
            accepted = response.accepted.len(),
            rejected = response.rejected.len(),
            "desired state applied"
        );
        self.source.handed_over(&tip)?;
        *applied = Some(tip);
        Ok(())
    }

    /// Logs a failed poll by the rule of [`Outage`] (once per distinct problem, then a
    /// summary now and then), and publishes repository problems for the status reports.
    /// Inside a downtime window failures are expected and ignored.
    fn report(
        &self,
        e: &Error,
        now: Timestamp,
        repository: &mut Outage,
        deployment_service: &mut Outage,
    ) {
        if self.schedule.in_downtime(now) {
            tracing::debug!(error = %e, "poll failed during downtime; ignored");
            return;
        }
        let code = match e {
            Error::Source(source) if source.is_auth() => ERR_REPOSITORY_AUTH,
            Error::Source(source) if source.is_content() => ERR_INVALID_DESIRED_STATE,
            Error::Manifest { code, .. } => code,
            Error::Wos {
                status: Some(401 | 403),
                ..
            } => ERR_REPOSITORY_AUTH,
            Error::Source(_) | Error::Wos { .. } => ERR_REPOSITORY_UNAVAILABLE,
            _ => {
                deployment_service.failed(&e.to_string(), e);
                return;
            }
        };
        let problem = PullProblem {
            code,
            source: self.source.name(),
            message: e.to_string(),
        };
        repository.failed(&format!("{}: {}", problem.code, problem.message), e);
        self.problems.send_if_modified(|p| {
            if p.as_ref() == Some(&problem) {
                return false;
            }
            *p = Some(problem);
            true
        });
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
