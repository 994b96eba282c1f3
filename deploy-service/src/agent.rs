//! The deployment agent: the desired state, the rollout records and the published status,
//! shared by the workers that reconcile each deployment on its own (`worker`), and the
//! operator's requests on them (apply, approvals, rollback, retry).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use woa_common::margo::{DeploymentState, StatusError};
use woa_common::store;

use crate::config::{Approval, ImageGcConfig, RolloutConfig};
use crate::desired::{self, DesiredState};
use crate::metrics::Metrics;
use crate::package::PackageFetcher;
use crate::policy::Policy;
use crate::rollout::{self, PendingApproval, Release, Tracks};
use crate::runtime::ContainerRuntime;
use crate::status::{
    Applied, CurrentState, DeploymentStatus, DocumentError, Removal, applied, rejected_documents,
};
use crate::worker::Workers;
use crate::{Error, Result};

/// Settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Where state is kept.
    pub state_dir: PathBuf,
    /// Period of the full resync, the safety net behind the engine's events.
    pub resync_interval: Duration,
    /// Remove named volumes of removed deployments.
    pub remove_volumes: bool,
    /// Approvals, windows, settling, disk floor.
    pub rollout: RolloutConfig,
    /// Removing unused images.
    pub image_gc: ImageGcConfig,
    /// What a desired state may ask of the host.
    pub policy: Policy,
    /// The collector every container is told of.
    pub otel: crate::otel::OtelConfig,
}

/// The deployment agent over a container runtime.
pub struct Agent<R> {
    pub(crate) runtime: R,
    pub(crate) fetcher: PackageFetcher,
    pub(crate) settings: AgentSettings,
    /// One apply at a time; also held while unused packages are removed, so that none is
    /// half-way between being written and being referenced.
    pub(crate) applying: tokio::sync::Mutex<()>,
    desired: Mutex<Arc<DesiredState>>,
    /// The rollout record of every desired deployment; stored.
    tracks: Mutex<Tracks>,
    /// Removed deployments by id, reported `removed` until they come back; stored, so a restart
    /// does not forget to report a removal.
    removed: Mutex<BTreeMap<String, Removal>>,
    /// Images the agent pulled, with when (Unix seconds); only these are ever removed. Stored.
    pub(crate) pulled: Mutex<BTreeMap<String, u64>>,
    published: Mutex<Published>,
    current: watch::Sender<CurrentState>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) workers: Workers,
}

/// What the current state is made of; rebuilt into a `CurrentState` when a part changes.
#[derive(Default)]
struct Published {
    revision: String,
    /// Desired deployments in document order: they are listed first, the others after.
    order: Vec<String>,
    rejected: Vec<DocumentError>,
    statuses: BTreeMap<String, DeploymentStatus>,
}

impl Published {
    fn state(&self) -> CurrentState {
        let desired: BTreeSet<&str> = self.order.iter().map(String::as_str).collect();
        let first = self.order.iter().filter_map(|id| self.statuses.get(id));
        let rest = (self.statuses.iter())
            .filter(|(id, _)| !desired.contains(id.as_str()))
            .map(|(_, s)| s);
        CurrentState {
            revision: self.revision.clone(),
            deployments: first.chain(rest).cloned().collect(),
            rejected: self.rejected.clone(),
        }
    }
}

/// Locks `m`; a panic elsewhere while it was held leaves data that is still consistent,
/// since every update is a plain assignment.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<R: ContainerRuntime> Agent<R> {
    /// Loads the stored desired state (if any) and sets the agent up.
    pub fn new(runtime: R, fetcher: PackageFetcher, settings: AgentSettings) -> Result<Arc<Self>> {
        let desired: DesiredState = store::load_json(&settings.state_dir.join("desired.json"))
            .map_err(|e| Error::file("loading the desired state", e))?
            .unwrap_or_default();
        // The rollout record decides what runs: unreadable, it stops start-up, naming the file.
        // Remembered removals and pulled images only save work: unreadable, they are set aside.
        let dir = &settings.state_dir;
        let tracks = store::load_json(&dir.join("rollout.json"))
            .map_err(|e| Error::file("loading the rollout state", e))?
            .unwrap_or_default();
        let removed: BTreeMap<String, Removal> =
            store::load_json_or_set_aside(&dir.join("removed.json")).unwrap_or_default();
        let pulled = store::load_json_or_set_aside(&dir.join("images.json")).unwrap_or_default();
        let published = Published {
            revision: desired.revision.clone(),
            order: desired.deployments.iter().map(|d| d.id.clone()).collect(),
            rejected: rejected_documents(&desired),
            statuses: (removed.iter())
                .filter(|(id, _)| !desired.deployments.iter().any(|d| &d.id == *id))
                .map(|(id, removal)| (id.clone(), removal.status(id)))
                .collect(),
        };
        let current = watch::channel(published.state()).0;
        Ok(Arc::new(Self {
            runtime,
            fetcher,
            settings,
            applying: tokio::sync::Mutex::new(()),
            desired: Mutex::new(Arc::new(desired)),
            tracks: Mutex::new(tracks),
            removed: Mutex::new(removed),
            pulled: Mutex::new(pulled),
            published: Mutex::new(published),
            current,
            metrics: Arc::default(),
            workers: Workers::default(),
        }))
    }

    /// The agent's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The runtime, for capabilities.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// The desired state as last stored.
    pub(crate) fn desired(&self) -> Arc<DesiredState> {
        lock(&self.desired).clone()
    }

    /// Replaces the desired state; returns once it is stored. Re-applying the held revision
    /// does nothing.
    pub async fn apply(&self, incoming: desired::Incoming) -> Result<Applied> {
        let _applying = self.applying.lock().await;
        let desired = self.desired();
        // The same revision again changes nothing, unless a download failed: that is worth
        // another try, as the package server may be back.
        let fetch_failed = desired.deployments.iter().any(|d| {
            d.error
                .as_ref()
                .is_some_and(|e| e.code == crate::error::code::PACKAGE)
        });
        if !desired.revision.is_empty() && desired.revision == incoming.revision && !fetch_failed {
            return Ok(applied(&desired, false));
        }
        let next = desired::resolve(
            &incoming,
            &desired,
            &self.fetcher,
            &self.settings.policy,
            &self.settings.otel,
            &self.settings.state_dir.join("packages"),
        )
        .await;
        store::save_json(&self.settings.state_dir.join("desired.json"), &next)
            .map_err(|e| Error::file("storing the desired state", e))?;
        tracing::info!(revision = %next.revision, deployments = next.deployments.len(), rejected = next.rejected.len(), "desired state stored");
        let response = applied(&next, true);
        {
            let mut published = lock(&self.published);
            published.revision = next.revision.clone();
            published.order = next.deployments.iter().map(|d| d.id.clone()).collect();
            published.rejected = rejected_documents(&next);
            self.current.send_replace(published.state());
        }
        *lock(&self.desired) = Arc::new(next);
        self.metrics.applied();
        self.workers.resync();
        Ok(response)
    }

    /// Releases waiting for the site's approval, with what each changes.
    pub async fn pending_approvals(&self) -> Vec<PendingApproval> {
        let desired = self.desired();
        let tracks = lock(&self.tracks);
        let rollout = &self.settings.rollout;
        desired
            .deployments
            .iter()
            .filter(|d| d.error.is_none() && rollout.approval_of(&d.id) == Approval::Manual)
            .filter_map(|d| {
                let wanted = Release::new(&desired.revision, d);
                let track = tracks.get(&d.id);
                if !track.is_none_or(|t| t.awaits_approval(&wanted)) {
                    return None;
                }
                let current = track.and_then(|t| t.current.as_ref());
                Some(PendingApproval {
                    deployment_id: d.id.clone(),
                    application_id: d.application_id.clone(),
                    revision: desired.revision.clone(),
                    current_revision: current.map(|c| c.revision.clone()).unwrap_or_default(),
                    changes: rollout::changes(current.map(|c| &c.deployment), &wanted.deployment),
                    path: d.path.clone(),
                    release: wanted.digest,
                })
            })
            .collect()
    }

    /// Lets the pending release of `deployment` apply; `release`, when not empty, must still be
    /// the pending one. Returns the release approved.
    pub async fn approve(&self, deployment: &str, release: &str) -> Result<String> {
        self.decide(deployment, release, |track, wanted| {
            track.approved = Some(wanted.digest.clone());
        })
    }

    /// Refuses the pending release of `deployment` (see [`Agent::approve`]).
    pub async fn reject(&self, deployment: &str, release: &str, reason: &str) -> Result<String> {
        self.decide(deployment, release, |track, wanted| {
            let message = match reason.trim() {
                "" => "rejected locally".to_string(),
                why => format!("rejected locally: {why}"),
            };
            track.hold = Some(rollout::Hold {
                digest: wanted.digest.clone(),
                revision: wanted.revision.clone(),
                error: StatusError::new(
                    crate::error::code::REJECTED,
                    &wanted.deployment.path,
                    message,
                ),
            });
        })
    }

    /// Applies the site's decision on the release of `deployment` awaiting approval.
    fn decide(
        &self,
        deployment: &str,
        release: &str,
        decision: impl FnOnce(&mut rollout::Track, &Release),
    ) -> Result<String> {
        let desired = self.desired();
        let Some(d) = desired.deployments.iter().find(|d| d.id == deployment) else {
            return Err(Error::UnknownDeployment(deployment.to_string()));
        };
        let wanted = Release::new(&desired.revision, d);
        let rollout = |message: String| Error::Rollout {
            deployment: deployment.to_string(),
            message,
        };
        let manual = self.settings.rollout.approval_of(deployment) == Approval::Manual;
        self.update_track(deployment, |tracks| {
            let track = tracks.entry(deployment.to_string()).or_default();
            if d.error.is_some() || !manual || !track.awaits_approval(&wanted) {
                return Err(rollout("has no release awaiting approval".into()));
            }
            if !release.is_empty() && release != wanted.digest {
                return Err(rollout(format!(
                    "now awaits release {} (revision {}), not {release}; review it again",
                    wanted.digest,
                    rollout::short(&wanted.revision)
                )));
            }
            decision(track, &wanted);
            Ok(())
        })??;
        tracing::info!(deployment, release = %wanted.digest, "local decision recorded");
        self.workers.wake(deployment);
        Ok(wanted.digest)
    }

    /// Goes back to the previous installed release of `deployment`. Returns its revision.
    pub async fn roll_back(&self, deployment: &str) -> Result<String> {
        let revision = self.update_track(deployment, |tracks| {
            let track = tracks
                .get_mut(deployment)
                .ok_or_else(|| Error::UnknownDeployment(deployment.to_string()))?;
            let release = track.roll_back().map_err(|message| Error::Rollout {
                deployment: deployment.to_string(),
                message: message.to_string(),
            })?;
            Ok::<_, Error>(release.revision.clone())
        })??;
        tracing::info!(deployment, %revision, "rolling back at the operator's request");
        self.workers.wake(deployment);
        Ok(revision)
    }

    /// Lets the held release of `deployment` apply again. Returns it.
    pub async fn retry(&self, deployment: &str) -> Result<String> {
        let release = self.update_track(deployment, |tracks| {
            let track = tracks
                .get_mut(deployment)
                .ok_or_else(|| Error::UnknownDeployment(deployment.to_string()))?;
            track.retry().ok_or_else(|| Error::Rollout {
                deployment: deployment.to_string(),
                message: "has no held release to retry".into(),
            })
        })??;
        tracing::info!(deployment, %release, "retrying a held release at the operator's request");
        self.workers.wake(deployment);
        Ok(release)
    }

    /// Subscribes to the current state.
    pub(crate) fn watch(&self) -> watch::Receiver<CurrentState> {
        self.current.subscribe()
    }

    /// The rollout record of `id`, as stored.
    pub(crate) fn track(&self, id: &str) -> Option<rollout::Track> {
        lock(&self.tracks).get(id).cloned()
    }

    /// Updates the rollout record of `id` with `f` (which touches no other), storing the
    /// records when it changed.
    pub(crate) fn update_track<T>(&self, id: &str, f: impl FnOnce(&mut Tracks) -> T) -> Result<T> {
        let mut tracks = lock(&self.tracks);
        let before = tracks.get(id).cloned();
        let out = f(&mut tracks);
        if tracks.get(id) != before.as_ref() {
            self.store_tracks(&tracks)?;
        }
        Ok(out)
    }

    /// Every rollout record.
    pub(crate) fn tracks(&self) -> Tracks {
        lock(&self.tracks).clone()
    }

    fn store_tracks(&self, tracks: &Tracks) -> Result<()> {
        store::save_json(&self.settings.state_dir.join("rollout.json"), tracks)
            .map_err(|e| Error::file("storing the rollout state", e))
    }

    /// What was last published for deployment `id`.
    pub(crate) fn reported(&self, id: &str) -> Option<DeploymentStatus> {
        lock(&self.published).statuses.get(id).cloned()
    }

    /// Deployments reported as anything but removed.
    pub(crate) fn reported_ids(&self) -> Vec<String> {
        let published = lock(&self.published);
        (published.statuses.iter())
            .filter(|(_, s)| s.state != DeploymentState::Removed)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Publishes the status of deployment `id` (`None`: it is not reported), telling watchers
    /// when the current state changed.
    pub(crate) fn publish(&self, id: &str, status: Option<DeploymentStatus>) {
        let mut published = lock(&self.published);
        if published.statuses.get(id) == status.as_ref() {
            return;
        }
        match status {
            Some(s) => published.statuses.insert(id.to_string(), s),
            None => published.statuses.remove(id),
        };
        self.current.send_replace(published.state());
    }

    /// Records how deployment `id` was removed (`None`: it is desired again), storing it.
    pub(crate) fn record_removal(&self, id: &str, removal: Option<Removal>) {
        let mut removed = lock(&self.removed);
        if removed.get(id) == removal.as_ref() {
            return;
        }
        match removal {
            Some(r) => removed.insert(id.to_string(), r),
            None => removed.remove(id),
        };
        let path = self.settings.state_dir.join("removed.json");
        if let Err(e) = store::save_json(&path, &*removed) {
            tracing::warn!(error = %e, "storing removed deployments failed");
        }
    }

    /// How deployment `id` was removed, if it was.
    pub(crate) fn removal(&self, id: &str) -> Option<Removal> {
        lock(&self.removed).get(id).cloned()
    }
}
