//! The GitOps way of reporting: the current state written back into the device repository,
//! as commits on a status branch, so the WOS can check a change from the repository alone.
//!
//! The branch holds one file per deployment (`<dir>/<deploymentId>.json`, the Margo status
//! as posted over HTTP, also under the pseudo deployment id of a document too broken to name
//! one) and `<dir>/device.json`, which lists those rejected documents too. Changes are debounced into one commit; a
//! commit is made only when the content changed. Nothing is queued while the repository is
//! unreachable: the newest state is what gets pushed once it is back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use woa_common::backoff::Backoff;
use woa_common::margo::StatusError;
use woa_proto::v1 as pb;

use crate::deploy_link::Deployer;
use crate::pull::{ERR_REPOSITORY_UNAVAILABLE, PullProblem};
use crate::rejected::rejected_documents;
use crate::report::{decorate, sleep_until};
use crate::retry::{self, Messages, Outage, Severity};
use crate::source::{RepoAccess, SourceError};
use crate::status_push::StatusBranch;
use woa_common::window::Schedule;

/// `device.json`: who the device is and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceStatus<'a> {
    device_id: &'a str,
    client_id: &'a str,
    agent_version: &'a str,
    /// The desired revision the deployment service holds.
    applied_revision: &'a str,
    /// When the desired-state repository was last polled successfully (refreshed at the git
    /// heartbeat only, so it alone does not make a commit per poll).
    last_successful_poll: Option<String>,
    /// SHA-256 of the capabilities manifest.
    capabilities_digest: Option<String>,
    /// Documents too broken to name a deployment; each also has a `failed` status file under
    /// its pseudo deployment id.
    rejected_documents: Vec<RejectedDocumentEntry<'a>>,
}

/// One rejected document in `device.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct RejectedDocumentEntry<'a> {
    path: &'a str,
    deployment_id: &'a str,
    error: &'a StatusError,
}

/// What the log says while the status branch cannot be written; pulling goes on.
const STATUS_BRANCH_MESSAGES: Messages = Messages {
    down: "could not write the status branch; the desired state is still pulled",
    still_down: "the status branch still cannot be written; the desired state is still pulled",
    back: "the status branch is written again",
};

/// The git reporter's settings.
pub struct GitReporter {
    /// The status branch, opened (and so checked) at start.
    pub status: Option<StatusBranch>,
    /// The local repository used to build status commits.
    pub local_dir: PathBuf,
    /// The device repository (the desired-state branch is never written).
    pub access: RepoAccess,
    /// Status branch.
    pub branch: String,
    /// Directory in it.
    pub dir: String,
    /// Changes within this time make one commit.
    pub debounce: Duration,
    /// `device.json` is refreshed at least this often.
    pub heartbeat: Duration,
    /// Failed pushes are retried with backoff up to this (the poll interval), or when the
    /// repository asked (`Retry-After`).
    pub retry_cap: Duration,
    /// This device.
    pub device_id: String,
    /// Its client id at the WOS.
    pub client_id: String,
    /// The deployment service, for capabilities.
    pub deployer: Deployer,
    /// The deployment service's current state.
    pub states: watch::Receiver<Option<pb::CurrentState>>,
    /// The pull loop's problem, carried into the statuses as over HTTP.
    pub problems: watch::Receiver<Option<PullProblem>>,
    /// When the last poll succeeded.
    pub last_poll: watch::Receiver<Option<Timestamp>>,
    /// Downtime windows: nothing is pushed inside them.
    pub schedule: Arc<Schedule>,
}

impl GitReporter {
    /// Reports until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut branch = self.status.take();
        let mut published: Option<BTreeMap<String, Vec<u8>>> = None;
        let mut poll_stamp: Option<String> = None;
        let mut capabilities_digest: Option<String> = None;
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Backoff::new(Duration::from_secs(1), self.retry_cap);
        let mut due: Option<Instant> = None;
        let mut outage = Outage::new(Severity::Error, STATUS_BRANCH_MESSAGES);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = self.states.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    due = due.or(Some(Instant::now() + self.debounce));
                }
                changed = self.problems.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    due = due.or(Some(Instant::now() + self.debounce));
                }
                _ = heartbeat.tick() => {
                    poll_stamp = self.last_poll.borrow().map(|t| t.to_string());
                    let digest = tokio::select! {
                        digest = self.capabilities_digest() => digest,
                        () = cancel.cancelled() => return,
                    };
                    capabilities_digest = digest.or(capabilities_digest);
                    // Also rewrites what a WOS reset or another writer changed meanwhile; an
                    // unchanged tree costs one request and no commit.
                    published = None;
                    due = Some(Instant::now());
                }
                () = sleep_until(due) => {
                    due = None;
                    if self.schedule.in_downtime(Timestamp::now()) {
                        due = Some(Instant::now() + self.retry_cap.min(Duration::from_secs(60)));
                        continue;
                    }
                    if poll_stamp.is_none() {
                        poll_stamp = self.last_poll.borrow().map(|t| t.to_string());
                    }
                    let Some((files, message)) = self.snapshot(poll_stamp.as_deref(), capabilities_digest.as_deref()) else {
                        continue;
                    };
                    if published.as_ref() == Some(&files) {
                        continue;
                    }
                    let started = Instant::now();
                    let pushed = tokio::select! {
                        pushed = self.publish(&mut branch, files.clone(), message) => pushed,
                        () = cancel.cancelled() => return,
                    };
                    match pushed {
                        Ok(commit) => {
                            if let Some(commit) = commit {
                                let elapsed_ms = started.elapsed().as_millis();
                                tracing::info!(%commit, branch = %self.branch, elapsed_ms, "status committed");
                            }
                            published = Some(files);
                            backoff.reset();
                            outage.recovered();
                        }
                        Err(e) => {
                            if matches!(e, SourceError::Mirror { .. }) {
                                // The local repository is damaged: build it anew next time.
                                branch = None;
                                if let Err(remove) = std::fs::remove_dir_all(&self.local_dir) {
                                    tracing::warn!(error = %remove, "could not remove the damaged status repository");
                                }
                            }
                            outage.failed(&e.to_string(), &e);
                            due = Some(Instant::now() + retry::delay(e.retry_after(), &mut backoff));
                        }
                    }
                }
            }
        }
    }

    /// The files the status directory should hold now, and the commit message; `None` before
    /// the deployment service has said anything.
    fn snapshot(
        &self,
        poll_stamp: Option<&str>,
        capabilities_digest: Option<&str>,
    ) -> Option<(BTreeMap<String, Vec<u8>>, String)> {
        let state = self.states.borrow();
        let state = state.as_ref()?;
        // A push reaching the repository proves it reachable: an "unavailable" problem from
        // the pull loop is stale by then and would be committed as a false state.
        let problem = self
            .problems
            .borrow()
            .clone()
            .filter(|p| p.code != ERR_REPOSITORY_UNAVAILABLE);
        let mut files = BTreeMap::new();
        for d in &state.deployments {
            let manifest = decorate(&d.manifest_json, problem.as_ref());
            files.insert(format!("{}.json", d.deployment_id), pretty(&manifest));
        }
        // As over HTTP; a document that is fixed or gone simply loses its file.
        let rejected = rejected_documents(state);
        for document in &rejected {
            files.insert(
                format!("{}.json", document.deployment_id),
                pretty(&document.manifest_json),
            );
        }
        let device = DeviceStatus {
            device_id: &self.device_id,
            client_id: &self.client_id,
            agent_version: env!("CARGO_PKG_VERSION"),
            applied_revision: &state.revision,
            last_successful_poll: poll_stamp.map(str::to_owned),
            capabilities_digest: capabilities_digest.map(str::to_owned),
            rejected_documents: rejected
                .iter()
                .map(|d| RejectedDocumentEntry {
                    path: &d.path,
                    deployment_id: &d.deployment_id,
                    error: &d.error,
                })
                .collect(),
        };
        let mut device_json = serde_json::to_vec_pretty(&device).unwrap_or_default();
        device_json.push(b'\n');
        files.insert("device.json".to_owned(), device_json);
        let revision = if state.revision.is_empty() {
            "none"
        } else {
            state.revision.as_str()
        };
        let message = format!(
            "Status of {} at desired revision {revision}",
            self.device_id
        );
        Some((files, message))
    }

    async fn publish(
        &self,
        branch: &mut Option<StatusBranch>,
        files: BTreeMap<String, Vec<u8>>,
        message: String,
    ) -> Result<Option<String>, SourceError> {
        let local_dir = self.local_dir.clone();
        let (name, dir) = (self.branch.clone(), self.dir.clone());
        let access = self.access.clone();
        let taken = branch.take();
        let (kept, pushed) = tokio::task::spawn_blocking(move || {
            let mut status = match taken {
                Some(status) => status,
                None => match StatusBranch::open(&local_dir, &name, &dir) {
                    Ok(status) => status,
                    Err(e) => return (None, Err(e)),
                },
            };
            let pushed = status.publish(&access, &files, &message);
            (Some(status), pushed)
        })
        .await
        .unwrap_or_else(|e| {
            (
                None,
                Err(SourceError::Push {
                    url: String::new(),
                    branch: self.branch.clone(),
                    cause: format!("the push task failed: {e}"),
                }),
            )
        });
        *branch = kept;
        pushed
    }

    async fn capabilities_digest(&self) -> Option<String> {
        let answer = self.deployer.capabilities().await.ok()?;
        Some(hex::encode(Sha256::digest(answer.manifest_json.as_bytes())))
    }
}

/// A manifest as pretty JSON with a final newline, so the files read well in the repository.
fn pretty(manifest_json: &str) -> Vec<u8> {
    let mut bytes = serde_json::from_str::<serde_json::Value>(manifest_json)
        .and_then(|v| serde_json::to_vec_pretty(&v))
        .unwrap_or_else(|_| manifest_json.as_bytes().to_vec());
    bytes.push(b'\n');
    bytes
}
