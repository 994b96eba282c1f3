//! The deployment agent: holds the desired state, reconciles the engine towards it and
//! publishes the current state. `reconcile_once` observes, decides which release of each
//! deployment runs (approvals, windows, holds; see `rollout`), plans and applies, verifies new
//! releases and rolls back the ones that do not install; `run` only schedules passes (on apply,
//! on the resync timer, with backoff after engine errors).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;
use woa_common::backoff::Backoff;
use woa_common::margo::{DeploymentState, StatusError};
use woa_common::store;
use woa_proto::v1 as pb;

use crate::config::{Approval, ImageGcConfig, RolloutConfig};
use crate::desired::{self, Component, Deployment, DesiredState, status_error};
use crate::metrics::Metrics;
use crate::package::PackageFetcher;
use crate::plan::{self, Awaited, Step};
use crate::policy::Policy;
use crate::rollout::{self, Gates, Offer, Phase, Release, Tracks};
use crate::runtime::{ContainerPlan, ContainerRuntime, Observed, ObservedContainer, Owner};
use crate::spec::Condition;
use crate::status::{
    Removal, container_status, manifest_json, rejected_documents, release_status, response, status,
};
use crate::{Error, Result};

/// First retry delay after a failed pass; later ones double up to the resync interval, with
/// jitter that spreads the retries of many devices after a shared outage.
const RETRY_BASE: Duration = Duration::from_millis(500);

/// How often readiness and settling are checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Where state is kept.
    pub state_dir: PathBuf,
    /// Period of drift checks.
    pub resync_interval: Duration,
    /// Remove named volumes of removed deployments.
    pub remove_volumes: bool,
    /// Approvals, windows, settling, disk floor.
    pub rollout: RolloutConfig,
    /// Removing unused images.
    pub image_gc: ImageGcConfig,
    /// What a desired state may ask of the host.
    pub policy: Policy,
}

/// The deployment agent over a container runtime.
pub struct Agent<R> {
    runtime: R,
    fetcher: PackageFetcher,
    settings: AgentSettings,
    desired: Mutex<DesiredState>,
    /// Apply errors by component, from the last pass.
    errors: Mutex<HashMap<Owner, StatusError>>,
    /// Removed deployments by id, reported `removed` until they come back; stored, so a restart
    /// does not forget to report a removal.
    removed: Mutex<BTreeMap<String, Removal>>,
    /// The rollout record of every desired deployment; stored.
    tracks: Mutex<Tracks>,
    /// What became of each deployment's wanted release in the last pass.
    offers: Mutex<BTreeMap<String, Offer>>,
    /// Images the agent pulled, with when (Unix seconds); only these are ever removed. Stored.
    pulled: Mutex<BTreeMap<String, u64>>,
    wake: Notify,
    current: watch::Sender<pb::CurrentState>,
    metrics: Arc<Metrics>,
    /// One reconcile pass at a time.
    pass: Mutex<()>,
}

impl<R: ContainerRuntime> Agent<R> {
    /// Loads the stored desired state (if any) and sets the agent up.
    pub fn new(runtime: R, fetcher: PackageFetcher, settings: AgentSettings) -> Result<Arc<Self>> {
        let desired = store::load_json(&settings.state_dir.join("desired.json"))
            .map_err(|e| Error::Setup(format!("loading desired state: {e}")))?
            .unwrap_or_default();
        // The rollout record decides what runs: unreadable, it stops start-up, naming the file.
        // Remembered removals and pulled images only save work: unreadable, they are set aside.
        let dir = &settings.state_dir;
        let tracks = store::load_json(&dir.join("rollout.json"))
            .map_err(|e| Error::Setup(format!("loading rollout state: {e}")))?
            .unwrap_or_default();
        let removed = store::load_json_or_set_aside(&dir.join("removed.json")).unwrap_or_default();
        let pulled = store::load_json_or_set_aside(&dir.join("images.json")).unwrap_or_default();
        Ok(Arc::new(Self {
            runtime,
            fetcher,
            settings,
            desired: Mutex::new(desired),
            errors: Mutex::default(),
            removed: Mutex::new(removed),
            tracks: Mutex::new(tracks),
            offers: Mutex::default(),
            pulled: Mutex::new(pulled),
            wake: Notify::new(),
            current: watch::channel(pb::CurrentState::default()).0,
            metrics: Arc::default(),
            pass: Mutex::new(()),
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

    /// Replaces the desired state; returns once it is stored. Re-applying the held revision
    /// does nothing.
    pub async fn apply(
        &self,
        req: pb::ApplyDesiredStateRequest,
    ) -> Result<pb::ApplyDesiredStateResponse> {
        let mut desired = self.desired.lock().await;
        // The same revision again changes nothing, unless a download failed: that is worth
        // another try, as the package server may be back.
        let fetch_failed = desired
            .deployments
            .iter()
            .any(|d| d.error.as_ref().is_some_and(|e| e.code == "ERR_PACKAGE"));
        if !desired.revision.is_empty() && desired.revision == req.revision && !fetch_failed {
            return Ok(response(&desired, false));
        }
        let documents: Vec<(String, Vec<u8>)> = req
            .deployments
            .into_iter()
            .map(|d| (d.path, d.yaml))
            .collect();
        let artifacts: BTreeMap<String, Vec<u8>> = req.artifacts.into_iter().collect();
        let next = desired::resolve(
            &req.revision,
            &documents,
            &artifacts,
            &desired,
            &self.fetcher,
            &self.settings.policy,
            &self.settings.state_dir.join("packages"),
        )
        .await;
        store::save_json(&self.settings.state_dir.join("desired.json"), &next)
            .map_err(|e| Error::Setup(format!("storing desired state: {e}")))?;
        tracing::info!(revision = %next.revision, deployments = next.deployments.len(), rejected = next.rejected.len(), "desired state stored");
        *desired = next;
        self.metrics.applied();
        let response = response(&desired, true);
        drop(desired);
        self.wake.notify_one();
        Ok(response)
    }

    /// Releases waiting for the site's approval, with what each changes.
    pub async fn pending_approvals(&self) -> Vec<pb::PendingApproval> {
        let desired = self.desired.lock().await;
        let tracks = self.tracks.lock().await;
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
                Some(pb::PendingApproval {
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
        .await
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
                error: StatusError::new(rollout::ERR_REJECTED, &wanted.deployment.path, message),
            });
        })
        .await
    }

    /// Applies the site's decision on the release of `deployment` awaiting approval.
    async fn decide(
        &self,
        deployment: &str,
        release: &str,
        decision: impl FnOnce(&mut rollout::Track, &Release),
    ) -> Result<String> {
        let desired = self.desired.lock().await;
        let Some(d) = desired.deployments.iter().find(|d| d.id == deployment) else {
            return Err(Error::UnknownDeployment(deployment.to_string()));
        };
        let wanted = Release::new(&desired.revision, d);
        let rollout = |message: String| Error::Rollout {
            deployment: deployment.to_string(),
            message,
        };
        let mut tracks = self.tracks.lock().await;
        let track = tracks.entry(deployment.to_string()).or_default();
        let manual = self.settings.rollout.approval_of(deployment) == Approval::Manual;
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
        self.store_tracks(&tracks)?;
        tracing::info!(deployment, release = %wanted.digest, "local decision recorded");
        self.wake.notify_one();
        Ok(wanted.digest)
    }

    /// Goes back to the previous installed release of `deployment`. Returns its revision.
    pub async fn roll_back(&self, deployment: &str) -> Result<String> {
        let mut tracks = self.tracks.lock().await;
        let track = tracks
            .get_mut(deployment)
            .ok_or_else(|| Error::UnknownDeployment(deployment.to_string()))?;
        let revision = track
            .roll_back()
            .map_err(|message| Error::Rollout {
                deployment: deployment.to_string(),
                message: message.to_string(),
            })?
            .revision
            .clone();
        self.store_tracks(&tracks)?;
        tracing::info!(deployment, %revision, "rolling back at the operator's request");
        self.wake.notify_one();
        Ok(revision)
    }

    /// Lets the held release of `deployment` apply again. Returns it.
    pub async fn retry(&self, deployment: &str) -> Result<String> {
        let mut tracks = self.tracks.lock().await;
        let track = tracks
            .get_mut(deployment)
            .ok_or_else(|| Error::UnknownDeployment(deployment.to_string()))?;
        let release = track.retry().ok_or_else(|| Error::Rollout {
            deployment: deployment.to_string(),
            message: "has no held release to retry".into(),
        })?;
        self.store_tracks(&tracks)?;
        tracing::info!(deployment, %release, "retrying a held release at the operator's request");
        self.wake.notify_one();
        Ok(release)
    }

    /// Subscribes to the current state.
    pub fn watch(&self) -> watch::Receiver<pb::CurrentState> {
        self.current.subscribe()
    }

    /// Reconciles until `cancel`: after every apply, every resync interval, and with growing
    /// delays while the engine fails.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(RETRY_BASE, self.settings.resync_interval);
        loop {
            let started = std::time::Instant::now();
            let result = self.reconcile_once().await;
            let micros = started.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
            tracing::debug!(
                elapsed_us = micros,
                ok = result.is_ok(),
                "reconcile pass done"
            );
            self.metrics.pass(result.is_ok(), micros);
            let delay = match result {
                Ok(()) => {
                    backoff.reset();
                    self.settings.resync_interval
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, failures = backoff.failures(), "reconcile pass failed");
                    delay
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One pass: observe, decide releases, plan, pull, apply, verify, publish.
    #[tracing::instrument(skip(self), fields(revision))]
    pub async fn reconcile_once(&self) -> Result<()> {
        let _pass = self.pass.lock().await;
        let desired = self.desired.lock().await.clone();
        tracing::Span::current().record("revision", desired.revision.as_str());
        let observed = match self.runtime.observe().await {
            Ok(observed) => observed,
            Err(e) => {
                self.report_unreachable(&desired, &e).await;
                return Err(e);
            }
        };
        if desired.revision.is_empty() {
            // Never told what to run (first start, or the state directory was lost): removing
            // everything labelled ours would take the device's apps down before the sync
            // service had a chance to say what it wants.
            self.publish(&desired, &observed).await;
            return Ok(());
        }
        self.offer_releases(&desired).await?;
        let tracks = self.tracks.lock().await.clone();
        let running: Vec<Deployment> = desired
            .deployments
            .iter()
            .filter_map(|d| Some(tracks.get(&d.id)?.current.as_ref()?.deployment.clone()))
            .collect();
        let rolling: BTreeSet<&str> = tracks
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Rolling | Phase::Restoring))
            .map(|(id, _)| id.as_str())
            .collect();
        // A first release that failed with nothing to go back to is left as it is: starting
        // its containers again at every pass would be the retry loop a hold exists to stop.
        let steps: Vec<Step> = plan::plan(&running, &observed, self.settings.remove_volumes)
            .into_iter()
            .filter(|step| {
                step.owner()
                    .and_then(|o| tracks.get(&o.deployment))
                    .is_none_or(|t| t.phase != Phase::Failed)
            })
            .collect();
        if !steps.is_empty() || !rolling.is_empty() {
            self.publish(&desired, &observed).await;
        }
        let mut failed: HashMap<Owner, StatusError> = HashMap::new();
        // Every image first, before anything is stopped: a failed pull or a full disk leaves
        // what runs running.
        self.pull_images(&steps, &mut failed).await;
        let halted = |failed: &HashMap<Owner, StatusError>, owner: &Owner| {
            failed.contains_key(owner)
                // One failed component fails a new release: the rest of it would only be
                // undone by the rollback.
                || (rolling.contains(owner.deployment.as_str())
                    && failed.keys().any(|o| o.deployment == owner.deployment))
        };
        let mut verified: BTreeSet<Owner> = BTreeSet::new();
        let mut steps = steps.into_iter().peekable();
        while let Some(step) = steps.next() {
            let owner = step.owner().cloned();
            if owner.as_ref().is_some_and(|o| halted(&failed, o)) {
                continue;
            }
            // The containers of a component start together; each waits for the conditions of
            // its own dependencies, so independent services do not wait for each other.
            let mut batch = vec![step];
            if batch[0].container().is_some() {
                while let Some(next) =
                    steps.next_if(|s| s.container().is_some() && s.owner() == owner.as_ref())
                {
                    batch.push(next);
                }
            }
            let broken = std::sync::Mutex::new(BTreeSet::new());
            let results = join_all(batch.iter().map(|step| async {
                let result = self.execute(step, &broken).await;
                if let (Err(_), Some(name), Ok(mut broken)) =
                    (&result, step.container(), broken.lock())
                {
                    broken.insert(name.to_string());
                }
                result
            }))
            .await;
            for e in results.into_iter().filter_map(Result::err) {
                tracing::warn!(error = %e, ?owner, "step failed");
                if let Some(o) = &owner {
                    failed.entry(o.clone()).or_insert_with(|| status_error(&e));
                }
            }
            // A new release goes component by component: one that waits must be up and
            // settled before the next one starts.
            let Some(owner) = owner.filter(|o| {
                batch[0].container().is_some()
                    && rolling.contains(o.deployment.as_str())
                    && !failed.contains_key(o)
            }) else {
                continue;
            };
            if let Some((d, c)) = component_of(&running, &owner).filter(|(_, c)| c.wait) {
                verified.insert(owner.clone());
                if let Err(e) = self.settle(d, c).await {
                    tracing::warn!(error = %e, ?owner, "component did not settle");
                    failed.insert(owner, status_error(&e));
                }
            }
        }
        // Components of a new release that needed no step (or do not wait) are checked too.
        for d in running.iter().filter(|d| rolling.contains(d.id.as_str())) {
            for c in &d.components {
                let owner = owner_of(d, c);
                if verified.contains(&owner) || halted(&failed, &owner) {
                    continue;
                }
                if let Err(e) = self.settle(d, c).await {
                    tracing::warn!(error = %e, ?owner, "component did not settle");
                    failed.insert(owner, status_error(&e));
                }
            }
        }
        self.conclude_rollouts(&running, &rolling, &mut failed)
            .await?;
        // A component that needed no step, or whose steps all worked, has converged: only
        // this pass's failures stand.
        *self.errors.lock().await = failed;
        if rolling.is_empty() {
            self.collect_garbage().await;
        }
        let observed = self.runtime.observe().await?;
        self.publish(&desired, &observed).await;
        Ok(())
    }

    /// Offers each desired deployment's release to its rollout record: promoted, pending
    /// (approval, window) or held. Records of deployments no longer desired are dropped.
    async fn offer_releases(&self, desired: &DesiredState) -> Result<()> {
        let rollout = &self.settings.rollout;
        let now = jiff::Timestamp::now();
        let windows = woa_common::window::Schedule::new(rollout.windows.clone(), Vec::new());
        let next_window = (!windows.allows(now))
            .then(|| {
                windows
                    .next_allowed(now)
                    .map(|t| t.round(jiff::Unit::Second))
            })
            .map(|t| t.and_then(|t| t.ok()).map(|t| t.to_string()));
        let mut tracks = self.tracks.lock().await;
        let before = tracks.clone();
        tracks.retain(|id, _| desired.deployments.iter().any(|d| &d.id == id));
        let mut offers = BTreeMap::new();
        for d in &desired.deployments {
            // The newest document is unusable: whatever runs keeps running.
            if d.error.is_some() {
                continue;
            }
            let wanted = Release::new(&desired.revision, d);
            let gates = Gates {
                manual: rollout.approval_of(&d.id) == Approval::Manual,
                window_closed: next_window.as_ref().map(|at| at.as_deref()),
            };
            let offer = tracks
                .entry(d.id.clone())
                .or_default()
                .offer(&wanted, gates);
            if offer == Offer::Promoted {
                tracing::info!(deployment = %d.id, revision = %desired.revision, release = %wanted.digest, "applying a new release");
            }
            offers.insert(d.id.clone(), offer);
        }
        if *tracks != before {
            self.store_tracks(&tracks)?;
        }
        *self.offers.lock().await = offers;
        Ok(())
    }

    fn store_tracks(&self, tracks: &Tracks) -> Result<()> {
        store::save_json(&self.settings.state_dir.join("rollout.json"), tracks)
            .map_err(|e| Error::Setup(format!("storing the rollout state: {e}")))
    }

    /// New releases that installed are marked so; the ones that failed are rolled back.
    async fn conclude_rollouts(
        &self,
        running: &[Deployment],
        rolling: &BTreeSet<&str>,
        failed: &mut HashMap<Owner, StatusError>,
    ) -> Result<()> {
        if rolling.is_empty() {
            return Ok(());
        }
        let mut tracks = self.tracks.lock().await;
        for d in running.iter().filter(|d| rolling.contains(d.id.as_str())) {
            // The operator may have rolled back meanwhile: conclude only what was verified.
            let digest = Release::new("", d).digest;
            let Some(track) = tracks
                .get_mut(&d.id)
                .filter(|t| t.current.as_ref().is_some_and(|c| c.digest == digest))
            else {
                continue;
            };
            // The first failure in component order is the cause.
            let cause = d
                .components
                .iter()
                .find_map(|c| failed.get(&owner_of(d, c)))
                .cloned();
            match &cause {
                None => {
                    tracing::info!(deployment = %d.id, "release installed");
                    track.phase = Phase::Installed;
                }
                Some(error) => {
                    let phase = track.phase;
                    let restored = track.fail(error);
                    // From now on the status is about the held release, not these errors.
                    if let Some(hold) = &track.hold {
                        failed.retain(|o, _| o.deployment != d.id);
                        let held = Offer::Held(hold.clone());
                        self.offers.lock().await.insert(d.id.clone(), held);
                    }
                    match restored {
                        Some(revision) => {
                            tracing::warn!(deployment = %d.id, error = %error.message, restoring = %revision, "release failed; rolling back");
                            self.metrics.rolled_back();
                            // Restore at once rather than at the next resync.
                            self.wake.notify_one();
                        }
                        None if phase == Phase::Restoring => {
                            tracing::error!(deployment = %d.id, error = %error.message, "restoring the previous release failed");
                        }
                        None => {
                            tracing::warn!(deployment = %d.id, error = %error.message, "release failed with nothing to roll back to");
                        }
                    }
                }
            }
        }
        self.store_tracks(&tracks)
    }

    /// Pulls `image` and records that the agent did, so garbage collection may remove it later.
    async fn pull(&self, image: &str) -> Result<()> {
        tracing::info!(%image, "pulling image");
        self.runtime.pull_image(image).await?;
        let mut pulled = self.pulled.lock().await;
        pulled.insert(image.to_string(), unix_now());
        store::save_json(&self.settings.state_dir.join("images.json"), &*pulled)
            .map_err(|e| Error::Setup(format!("storing the pulled images: {e}")))
    }

    /// Pulls every missing image the steps create containers from, refusing when the disk is
    /// below the floor; failures are recorded for every component that needs the image.
    async fn pull_images(&self, steps: &[Step], failed: &mut HashMap<Owner, StatusError>) {
        let mut users: BTreeMap<&str, Vec<&Owner>> = BTreeMap::new();
        for step in steps {
            if let Step::Create { plan, .. } = step {
                users
                    .entry(&plan.service.image)
                    .or_default()
                    .push(&plan.owner);
            }
        }
        let mut fail = |owners: &[&Owner], e: &Error| {
            for owner in owners {
                failed
                    .entry((*owner).clone())
                    .or_insert_with(|| status_error(e));
            }
        };
        let mut missing: BTreeMap<&str, Vec<&Owner>> = BTreeMap::new();
        for (image, owners) in users {
            match self.runtime.has_image(image).await {
                Ok(true) => {}
                Ok(false) => {
                    missing.insert(image, owners);
                }
                Err(e) => fail(&owners, &e),
            }
        }
        if missing.is_empty() {
            return;
        }
        let images: Vec<&str> = missing.keys().copied().collect();
        if let Err(e) = self.check_disk(&images).await {
            tracing::warn!(error = %e, "not pulling images");
            for owners in missing.values() {
                fail(owners, &e);
            }
            return;
        }
        for (image, owners) in missing {
            if let Err(e) = self.pull(image).await {
                tracing::warn!(error = %e, "pull failed");
                fail(&owners, &e);
            }
        }
    }

    /// Fails when the engine's disk (or, when the agent cannot see it, the state directory's)
    /// has less free space than the configured floor.
    async fn check_disk(&self, images: &[&str]) -> Result<()> {
        let floor = self.settings.rollout.min_free_disk;
        if floor == 0 {
            return Ok(());
        }
        let root = self.runtime.facts().await.map(|f| f.root_dir).ok();
        let path = root
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| self.settings.state_dir.clone());
        let Ok(st) = rustix::fs::statvfs(&path) else {
            return Ok(());
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free >= floor {
            return Ok(());
        }
        Err(Error::DiskSpace {
            path: path.display().to_string(),
            free,
            floor,
            images: images.join(", "),
        })
    }

    /// Waits until every container of the component is ready (running, and healthy where it
    /// has a health check) within its timeout, then watches it for the settle time: a
    /// container that exits or restarts meanwhile fails the component.
    async fn settle(&self, d: &Deployment, c: &Component) -> Result<()> {
        let plans = plan::container_plans(d, c);
        let timeout = c.timeout.unwrap_or(self.settings.rollout.ready_timeout);
        let failed = |message: String| Error::NotReady {
            component: c.name.clone(),
            message,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut restarts: BTreeMap<&str, u32> = BTreeMap::new();
        let mut settled_at: Option<tokio::time::Instant> = None;
        loop {
            let mut ready = true;
            for p in &plans {
                let name = p.name.as_str();
                let Some(o) = self.runtime.container(name).await? else {
                    ready = false;
                    continue;
                };
                let before = *restarts.entry(name).or_insert(o.restart_count);
                if o.restart_count > before || o.state == "restarting" {
                    return Err(failed(format!(
                        "container {name} restarted (last exit code {})",
                        o.exit_code
                    )));
                }
                if o.health == "unhealthy" {
                    return Err(failed(format!("container {name} is unhealthy")));
                }
                let one_shot = p
                    .service
                    .restart
                    .as_deref()
                    .is_none_or(|r| r == "no" || r.starts_with("on-failure"));
                match o.state.as_str() {
                    "exited" if one_shot && o.exit_code == 0 => {}
                    "exited" | "dead" => {
                        return Err(failed(format!(
                            "container {name} exited with code {}",
                            o.exit_code
                        )));
                    }
                    _ if o.is_ready() => {}
                    _ => ready = false,
                }
            }
            let now = tokio::time::Instant::now();
            match (ready, settled_at) {
                (true, None) => settled_at = Some(now + self.settings.rollout.settle),
                (true, Some(_)) => {}
                // Not ready any more after it was: the restart check above names why.
                (false, Some(_)) => settled_at = None,
                (false, None) if now >= deadline => {
                    let waiting: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
                    return Err(failed(format!(
                        "{} not ready within {}",
                        waiting.join(", "),
                        humantime_serde::re::humantime::format_duration(timeout)
                    )));
                }
                (false, None) => {}
            }
            if ready && settled_at.is_some_and(|at| now >= at) {
                return Ok(());
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    /// Removes the images the agent pulled that no current or rollback release uses (as
    /// configured), and package directories no release refers to.
    async fn collect_garbage(&self) {
        let tracks = self.tracks.lock().await.clone();
        let kept: Vec<&Release> = tracks
            .values()
            .flat_map(|t| t.current.iter().chain(t.previous.iter()))
            .collect();
        {
            // Held while removing: an apply stores its packages under this lock, so none is
            // half-way between being written and being referenced.
            let desired = self.desired.lock().await;
            let packages: BTreeSet<&std::path::Path> = kept
                .iter()
                .flat_map(|r| r.deployment.components.iter())
                .chain(desired.deployments.iter().flat_map(|d| d.components.iter()))
                .map(|c| c.package_dir.as_path())
                .collect();
            remove_other_packages(&self.settings.state_dir.join("packages"), &packages);
        }

        let gc = &self.settings.image_gc;
        if !gc.enabled {
            return;
        }
        let mut pulled = self.pulled.lock().await;
        let doomed = rollout::unused_images(&pulled, &kept, gc, unix_now());
        let mut changed = false;
        for image in doomed {
            match self.runtime.remove_image(&image).await {
                Ok(true) => {
                    tracing::info!(%image, "removed an unused image");
                    self.metrics.image_removed();
                    pulled.remove(&image);
                    changed = true;
                }
                Ok(false) => tracing::debug!(%image, "unused image kept: a container uses it"),
                Err(e) => tracing::warn!(%image, error = %e, "removing an unused image failed"),
            }
        }
        if changed
            && let Err(e) = store::save_json(&self.settings.state_dir.join("images.json"), &*pulled)
        {
            tracing::warn!(error = %e, "storing the pulled images failed");
        }
    }

    /// Runs one step; `broken` names containers of the same batch that failed, so whatever
    /// waits for them gives up at once.
    async fn execute(
        &self,
        step: &Step,
        broken: &std::sync::Mutex<BTreeSet<String>>,
    ) -> Result<()> {
        match step {
            Step::RemoveContainer { id, name } => {
                tracing::info!(container = %name, "removing container");
                self.runtime.remove_container(id).await
            }
            Step::RemoveNetwork(name) => self.runtime.remove_network(name).await,
            Step::RemoveVolume(name) => self.runtime.remove_volume(name).await,
            Step::CreateNetwork {
                name,
                owner,
                network,
            } => self.runtime.create_network(name, owner, network).await,
            Step::CreateVolume {
                name,
                owner,
                volume,
            } => self.runtime.create_volume(name, owner, volume).await,
            Step::Create {
                plan,
                replaces,
                after,
            } => {
                // The image was pulled before any step; one removed since makes the create fail,
                // and the next pass pulls it again.
                self.wait_for(after, broken).await?;
                tracing::info!(container = %plan.name, image = %plan.service.image, "creating container");
                let Some(old) = replaces else {
                    let id = self.runtime.create_container(plan).await?;
                    return self.runtime.start_container(&id).await;
                };
                // The replacement is created beside the old container first, so a spec the
                // engine refuses leaves the old one running. An interrupted replacement leaves
                // a `.next` container that no plan wants: the next pass removes it.
                let staged = ContainerPlan {
                    name: format!("{}.next", plan.name),
                    ..(**plan).clone()
                };
                let id = self.runtime.create_container(&staged).await?;
                self.runtime.remove_container(old).await?;
                self.runtime.rename_container(&id, &plan.name).await?;
                self.runtime.start_container(&id).await
            }
            Step::Start {
                id, name, after, ..
            } => {
                self.wait_for(after, broken).await?;
                tracing::info!(container = %name, "starting container again");
                self.runtime.start_container(id).await
            }
        }
    }

    /// Waits until every awaited container is up to date and reaches its condition.
    async fn wait_for(
        &self,
        after: &[Awaited],
        broken: &std::sync::Mutex<BTreeSet<String>>,
    ) -> Result<()> {
        let timeout = self.settings.rollout.ready_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        for awaited in after {
            loop {
                let name = &awaited.name;
                let failed = |message: String| Error::NotReady {
                    component: name.clone(),
                    message,
                };
                if broken.lock().map(|b| b.contains(name)).unwrap_or(false) {
                    return Err(failed(format!("dependency {name} could not be started")));
                }
                let c = self.runtime.container(name).await?;
                let c = c.filter(|c| c.spec_hash == awaited.spec_hash);
                let ready = match (&c, awaited.condition) {
                    (Some(c), Condition::Started) => c.state == "running" || c.state == "exited",
                    (Some(c), Condition::Healthy) => c.is_ready(),
                    (Some(c), Condition::CompletedSuccessfully) => {
                        c.state == "exited" && c.exit_code == 0
                    }
                    (None, _) => false,
                };
                if ready {
                    break;
                }
                if let Some(c) = c.filter(|c| c.state == "exited" && c.exit_code != 0) {
                    return Err(failed(format!(
                        "dependency {name} exited with code {}",
                        c.exit_code
                    )));
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(failed(format!(
                        "{name} did not become ready within {timeout:?}"
                    )));
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        }
        Ok(())
    }

    /// The engine cannot be read: every component is reported failed with the reason, rather
    /// than leaving watchers with a stale "installed".
    async fn report_unreachable(&self, desired: &DesiredState, e: &Error) {
        let error = status_error(e);
        *self.errors.lock().await = desired
            .deployments
            .iter()
            .flat_map(|d| {
                d.components.iter().map(|c| Owner {
                    deployment: d.id.clone(),
                    component: c.name.clone(),
                })
            })
            .map(|owner| (owner, error.clone()))
            .collect();
        self.publish(desired, &Observed::default()).await;
    }

    /// Computes the current state from the desired state and what the engine runs, and sends
    /// it to watchers when it changed.
    async fn publish(&self, desired: &DesiredState, observed: &Observed) {
        let errors = self.errors.lock().await.clone();
        let tracks = self.tracks.lock().await.clone();
        let offers = self.offers.lock().await.clone();
        let mut removed = self.removed.lock().await;
        let removed_before = removed.clone();
        let mut deployments: Vec<pb::DeploymentStatus> = desired
            .deployments
            .iter()
            .map(|d| {
                removed.remove(&d.id);
                let rollout = (tracks.get(&d.id), offers.get(&d.id));
                release_status(d, &desired.revision, rollout, observed, &errors)
            })
            .collect();
        // Deployments no longer desired: removing while their containers exist, then removed.
        // Without a desired state (none received since the state was lost) nothing is leaving:
        // what runs has an unknown desired state, and is not reported until one arrives.
        let known = !desired.revision.is_empty();
        let desires = |id: &str| desired.deployments.iter().any(|d| d.id == id);
        let mut leaving: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
        for c in observed.containers.iter().filter(|_| known) {
            if !desires(&c.owner.deployment) {
                leaving.entry(&c.owner.deployment).or_default().push(c);
            }
        }
        for (id, containers) in &leaving {
            let mut by_component: BTreeMap<&str, Vec<pb::ContainerStatus>> = BTreeMap::new();
            for c in containers {
                by_component
                    .entry(&c.owner.component)
                    .or_default()
                    .push(container_status(c));
            }
            removed.insert(
                id.to_string(),
                Removal {
                    revision: desired.revision.clone(),
                    components: by_component.keys().map(|c| c.to_string()).collect(),
                },
            );
            let components = by_component
                .into_iter()
                .map(|(name, containers)| {
                    (
                        name.to_string(),
                        DeploymentState::Removing,
                        None,
                        containers,
                    )
                })
                .collect();
            deployments.push(status(id, "", &desired.revision, "", None, components));
        }
        // Reported before but gone without containers to remove (never installed, or its
        // document now names another id): removed at once.
        for gone in self.current.borrow().deployments.iter().filter(|s| {
            known
                && s.state() != pb::DeploymentState::Removed
                && !desires(&s.deployment_id)
                && !leaving.contains_key(s.deployment_id.as_str())
        }) {
            removed.insert(
                gone.deployment_id.clone(),
                Removal {
                    revision: desired.revision.clone(),
                    components: gone.components.iter().map(|c| c.name.clone()).collect(),
                },
            );
        }
        for (id, removal) in removed
            .iter()
            .filter(|(id, _)| !leaving.contains_key(id.as_str()))
        {
            let components = removal
                .components
                .iter()
                .map(|name| (name.clone(), DeploymentState::Removed, None, vec![]))
                .collect();
            deployments.push(status(id, "", &removal.revision, "", None, components));
            if let Some(last) = deployments.last_mut() {
                last.state = pb::DeploymentState::Removed as i32;
                last.manifest_json = manifest_json(last, DeploymentState::Removed);
            }
        }
        if *removed != removed_before {
            let path = self.settings.state_dir.join("removed.json");
            if let Err(e) = store::save_json(&path, &*removed) {
                tracing::warn!(error = %e, "storing removed deployments failed");
            }
        }
        let state = pb::CurrentState {
            revision: desired.revision.clone(),
            deployments,
            rejected: rejected_documents(desired),
        };
        self.current.send_if_modified(|current| {
            let changed = *current != state;
            if changed {
                *current = state;
            }
            changed
        });
    }
}

/// The deployment and component of `running` that `owner` names.
fn component_of<'a>(
    running: &'a [Deployment],
    owner: &Owner,
) -> Option<(&'a Deployment, &'a Component)> {
    let d = running.iter().find(|d| d.id == owner.deployment)?;
    Some((d, d.components.iter().find(|c| c.name == owner.component)?))
}

fn owner_of(d: &Deployment, c: &Component) -> Owner {
    Owner {
        deployment: d.id.clone(),
        component: c.name.clone(),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Removes the package directories under `dir` that are not in `keep`.
fn remove_other_packages(dir: &std::path::Path, keep: &BTreeSet<&std::path::Path>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let staging = entry.file_name().to_string_lossy().starts_with(".tmp-");
        if staging || keep.contains(path.as_path()) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::debug!(package = %path.display(), "removed an unused package"),
            Err(e) => {
                tracing::warn!(package = %path.display(), error = %e, "removing an unused package failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::package::PackageConfig;
    use crate::runtime::EngineFacts;
    use crate::spec::{Network, Volume};

    /// An engine that cannot be reached.
    struct Unreachable;

    fn down<T>() -> Result<T> {
        Err(Error::Runtime {
            operation: "listing containers".into(),
            message: "engine down".into(),
        })
    }

    impl ContainerRuntime for Unreachable {
        async fn observe(&self) -> Result<Observed> {
            down()
        }
        async fn container(&self, _: &str) -> Result<Option<ObservedContainer>> {
            down()
        }
        async fn has_image(&self, _: &str) -> Result<bool> {
            down()
        }
        async fn pull_image(&self, _: &str) -> Result<()> {
            down()
        }
        async fn remove_image(&self, _: &str) -> Result<bool> {
            down()
        }
        async fn create_network(&self, _: &str, _: &Owner, _: &Network) -> Result<()> {
            down()
        }
        async fn create_volume(&self, _: &str, _: &Owner, _: &Volume) -> Result<()> {
            down()
        }
        async fn create_container(&self, _: &ContainerPlan) -> Result<String> {
            down()
        }
        async fn start_container(&self, _: &str) -> Result<()> {
            down()
        }
        async fn rename_container(&self, _: &str, _: &str) -> Result<()> {
            down()
        }
        async fn remove_container(&self, _: &str) -> Result<()> {
            down()
        }
        async fn remove_network(&self, _: &str) -> Result<()> {
            down()
        }
        async fn remove_volume(&self, _: &str) -> Result<()> {
            down()
        }
        async fn facts(&self) -> Result<EngineFacts> {
            down()
        }
    }

    #[tokio::test]
    async fn an_unreachable_engine_fails_every_component_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AgentSettings {
            state_dir: dir.path().into(),
            resync_interval: Duration::from_secs(30),
            remove_volumes: false,
            rollout: Default::default(),
            image_gc: Default::default(),
            policy: Default::default(),
        };
        let fetcher = PackageFetcher::new(&PackageConfig::default()).unwrap();
        let agent = Agent::new(Unreachable, fetcher, settings).unwrap();
        let doc = "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
            id: 5f0c2d7e-1111-4a6b-9c1e-123456789abc\nspec:\n  deploymentProfile:\n    \
            type: compose\n    components:\n      - name: app\n        properties:\n          \
            packageLocation: app/compose.yaml\n";
        let request = pb::ApplyDesiredStateRequest {
            revision: "r1".into(),
            deployments: vec![pb::DeploymentDocument {
                path: "d.yaml".into(),
                yaml: doc.into(),
            }],
            artifacts: [(
                "app/compose.yaml".to_string(),
                b"services:\n  web:\n    image: x:1\n".to_vec(),
            )]
            .into_iter()
            .collect(),
        };
        let response = agent.apply(request).await.unwrap();
        assert!(response.rejected.is_empty(), "{response:?}");

        assert!(agent.reconcile_once().await.is_err());
        let state = agent.watch().borrow().clone();
        let deployment = &state.deployments[0];
        assert_eq!(deployment.state(), pb::DeploymentState::Failed);
        let error = deployment.error.as_ref().unwrap();
        assert_eq!(error.code, "ERR_RUNTIME");
        assert!(error.message.contains("engine down"), "{error:?}");
    }
}
