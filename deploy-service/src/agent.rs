//! The deployment agent: holds the desired state, reconciles the engine towards it and
//! publishes the current state. `reconcile_once` observes, plans and applies; `run` only
//! schedules passes (on apply, on the resync timer, with backoff after engine errors).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;
use woa_common::backoff::Backoff;
use woa_common::margo::{ComponentStatus, DeploymentState, DeploymentStatusManifest, StatusError};
use woa_common::store;
use woa_proto::v1 as pb;

use crate::desired::{self, DesiredState, status_error};
use crate::metrics::Metrics;
use crate::package::PackageFetcher;
use crate::plan::{self, Awaited, Step};
use crate::runtime::{ContainerPlan, ContainerRuntime, Observed, ObservedContainer, Owner};
use crate::spec::Condition;
use crate::{Error, Result};

/// First retry delay after a failed pass; later ones double up to the resync interval, with
/// jitter that spreads the retries of many devices after a shared outage.
const RETRY_BASE: Duration = Duration::from_millis(500);

/// How long a container may take to reach the condition a dependent waits for.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Where state is kept.
    pub state_dir: PathBuf,
    /// Period of drift checks.
    pub resync_interval: Duration,
    /// Remove named volumes of removed deployments.
    pub remove_volumes: bool,
}

/// The deployment agent over a container runtime.
pub struct Agent<R> {
    runtime: R,
    fetcher: PackageFetcher,
    settings: AgentSettings,
    desired: Mutex<DesiredState>,
    /// Apply errors by component, from the last pass.
    errors: Mutex<HashMap<Owner, StatusError>>,
    /// Removed deployments (id -> revision that removed them), reported `removed` until they
    /// come back; stored, so a restart does not forget to report a removal.
    removed: Mutex<BTreeMap<String, String>>,
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
        let removed = store::load_json(&settings.state_dir.join("removed.json"))
            .map_err(|e| Error::Setup(format!("loading removed deployments: {e}")))?
            .unwrap_or_default();
        Ok(Arc::new(Self {
            runtime,
            fetcher,
            settings,
            desired: Mutex::new(desired),
            errors: Mutex::default(),
            removed: Mutex::new(removed),
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

    /// One pass: observe, plan, apply, publish.
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
        let steps = plan::plan(
            &desired.deployments,
            &observed,
            self.settings.remove_volumes,
        );
        if !steps.is_empty() {
            self.publish(&desired, &observed).await;
        }
        let mut failed: HashMap<Owner, StatusError> = HashMap::new();
        let mut steps = steps.into_iter().peekable();
        while let Some(step) = steps.next() {
            let owner = step.owner().cloned();
            // Later steps of a failed component would fail the same way.
            if owner.as_ref().is_some_and(|o| failed.contains_key(o)) {
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
        }
        // A component that needed no step, or whose steps all worked, has converged: only
        // this pass's failures stand.
        *self.errors.lock().await = failed;
        let observed = self.runtime.observe().await?;
        self.publish(&desired, &observed).await;
        Ok(())
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
                // Pull before anything is stopped, so a failed pull leaves the old one running.
                self.runtime.ensure_image(&plan.service.image).await?;
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
        let deadline = tokio::time::Instant::now() + DEFAULT_READY_TIMEOUT;
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
                        "{name} did not become ready within {DEFAULT_READY_TIMEOUT:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
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
        let mut removed = self.removed.lock().await;
        let removed_before = removed.clone();
        let mut deployments: Vec<pb::DeploymentStatus> = desired
            .deployments
            .iter()
            .map(|d| {
                removed.remove(&d.id);
                deployment_status(d, &desired.revision, observed, &errors)
            })
            .collect();
        // Deployments no longer desired: removing while their containers exist, then removed.
        let mut leaving: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
        for c in &observed.containers {
            if !desired
                .deployments
                .iter()
                .any(|d| d.id == c.owner.deployment)
            {
                leaving.entry(&c.owner.deployment).or_default().push(c);
            }
        }
        for (id, containers) in &leaving {
            removed.insert(id.to_string(), desired.revision.clone());
            let mut by_component: BTreeMap<&str, Vec<pb::ContainerStatus>> = BTreeMap::new();
            for c in containers {
                by_component
                    .entry(&c.owner.component)
                    .or_default()
                    .push(container_status(c));
            }
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
        for (id, revision) in removed
            .iter()
            .filter(|(id, _)| !leaving.contains_key(id.as_str()))
        {
            deployments.push(status(id, "", revision, "", None, vec![]));
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

/// Documents of `d` that could not name a deployment.
fn rejected_documents(d: &DesiredState) -> Vec<pb::DocumentError> {
    d.rejected
        .iter()
        .map(|r| pb::DocumentError {
            path: r.path.clone(),
            deployment_id: String::new(),
            error: Some(pb_error(&r.error)),
        })
        .collect()
}

fn response(d: &DesiredState, changed: bool) -> pb::ApplyDesiredStateResponse {
    let mut rejected = rejected_documents(d);
    rejected.extend(d.deployments.iter().filter_map(|dep| {
        Some(pb::DocumentError {
            path: dep.path.clone(),
            deployment_id: dep.id.clone(),
            error: Some(pb_error(dep.error.as_ref()?)),
        })
    }));
    pb::ApplyDesiredStateResponse {
        revision: d.revision.clone(),
        changed,
        accepted: d
            .deployments
            .iter()
            .filter(|d| d.error.is_none())
            .map(|d| d.id.clone())
            .collect(),
        rejected,
    }
}

type ComponentRow = (
    String,
    DeploymentState,
    Option<StatusError>,
    Vec<pb::ContainerStatus>,
);

fn deployment_status(
    d: &desired::Deployment,
    revision: &str,
    observed: &Observed,
    errors: &HashMap<Owner, StatusError>,
) -> pb::DeploymentStatus {
    let mut components: Vec<ComponentRow> = Vec::new();
    for c in &d.components {
        let owner = Owner {
            deployment: d.id.clone(),
            component: c.name.clone(),
        };
        let plans = plan::container_plans(d, c);
        let mut containers = Vec::new();
        let mut state = DeploymentState::Installed;
        let mut error = errors.get(&owner).cloned();
        for p in &plans {
            match observed.containers.iter().find(|o| o.name == p.name) {
                Some(o) => {
                    containers.push(container_status(o));
                    let up_to_date = o.spec_hash == p.spec_hash;
                    let completed = o.state == "exited" && o.exit_code == 0;
                    if o.health == "unhealthy" {
                        state = DeploymentState::Failed;
                        error.get_or_insert_with(|| {
                            StatusError::new(
                                "ERR_UNHEALTHY",
                                &p.name,
                                format!("container {} is unhealthy", p.name),
                            )
                        });
                    } else if up_to_date
                        && (o.state == "restarting" || (o.state == "exited" && o.exit_code != 0))
                    {
                        state = DeploymentState::Failed;
                        error.get_or_insert_with(|| {
                            StatusError::new(
                                "ERR_CONTAINER_EXITED",
                                &p.name,
                                format!(
                                    "container {} exited with code {} (restarted {} times)",
                                    p.name, o.exit_code, o.restart_count
                                ),
                            )
                        });
                    } else if !up_to_date || !(o.is_ready() || completed) {
                        state = state.max_severity(DeploymentState::Installing);
                    }
                }
                None => {
                    state = state.max_severity(DeploymentState::Installing);
                    containers.push(pb::ContainerStatus {
                        name: p.name.clone(),
                        image: p.service.image.clone(),
                        service: p.service.name.clone(),
                        state: "missing".into(),
                        ..Default::default()
                    });
                }
            }
        }
        if error.is_some() {
            state = DeploymentState::Failed;
        }
        components.push((c.name.clone(), state, error, containers));
    }
    // The newest document could not be used: its components fail with the document's error
    // while the last good spec (if any) keeps running.
    if let Some(e) = &d.error {
        for name in &d.component_names {
            match components.iter_mut().find(|c| &c.0 == name) {
                Some(c) => {
                    c.1 = DeploymentState::Failed;
                    c.2 = Some(e.clone());
                }
                None => components.push((
                    name.clone(),
                    DeploymentState::Failed,
                    Some(e.clone()),
                    vec![],
                )),
            }
        }
    }
    status(
        &d.id,
        &d.application_id,
        revision,
        &d.path,
        d.error.clone(),
        components,
    )
}

trait Severity {
    fn max_severity(self, other: Self) -> Self;
}

impl Severity for DeploymentState {
    fn max_severity(self, other: Self) -> Self {
        DeploymentState::most_severe([self, other]).unwrap_or(self)
    }
}

fn status(
    id: &str,
    application_id: &str,
    revision: &str,
    path: &str,
    error: Option<StatusError>,
    components: Vec<ComponentRow>,
) -> pb::DeploymentStatus {
    let overall = DeploymentState::most_severe(components.iter().map(|c| c.1)).unwrap_or(
        if error.is_some() {
            DeploymentState::Failed
        } else {
            DeploymentState::Installed
        },
    );
    // The overall error: the document's, else the first failing component's.
    let error = error.or_else(|| components.iter().find_map(|c| c.2.clone()));
    let mut s = pb::DeploymentStatus {
        deployment_id: id.to_string(),
        application_id: application_id.to_string(),
        revision: revision.to_string(),
        state: pb_state(overall) as i32,
        error: error.as_ref().map(pb_error),
        components: components
            .into_iter()
            .map(|(name, state, error, containers)| pb::ComponentStatus {
                name,
                state: pb_state(state) as i32,
                error: error.as_ref().map(pb_error),
                containers,
            })
            .collect(),
        path: path.to_string(),
        manifest_json: String::new(),
    };
    s.manifest_json = manifest_json(&s, overall);
    s
}

fn manifest_json(s: &pb::DeploymentStatus, overall: DeploymentState) -> String {
    let margo_error = |e: &Option<pb::Error>| {
        e.as_ref()
            .map(|e| StatusError::new(&e.code, &e.source, &e.message))
    };
    let components = s
        .components
        .iter()
        .map(|c| ComponentStatus {
            name: c.name.clone(),
            state: margo_state(c.state()),
            error: margo_error(&c.error),
        })
        .collect();
    let manifest = DeploymentStatusManifest::new(
        &s.deployment_id,
        &s.revision,
        overall,
        margo_error(&s.error),
        components,
    );
    serde_json::to_string(&manifest).unwrap_or_default()
}

fn container_status(c: &ObservedContainer) -> pb::ContainerStatus {
    pb::ContainerStatus {
        name: c.name.clone(),
        id: c.id.clone(),
        image: c.image.clone(),
        service: c.service.clone(),
        state: c.state.clone(),
        health: c.health.clone(),
        restart_count: c.restart_count,
        exit_code: c.exit_code,
    }
}

fn pb_error(e: &StatusError) -> pb::Error {
    pb::Error {
        code: e.code.clone(),
        source: e.source.clone(),
        message: e.message.clone(),
    }
}

fn pb_state(s: DeploymentState) -> pb::DeploymentState {
    match s {
        DeploymentState::Pending => pb::DeploymentState::Pending,
        DeploymentState::Installing => pb::DeploymentState::Installing,
        DeploymentState::Installed => pb::DeploymentState::Installed,
        DeploymentState::Failed => pb::DeploymentState::Failed,
        DeploymentState::Removing => pb::DeploymentState::Removing,
        DeploymentState::Removed => pb::DeploymentState::Removed,
    }
}

fn margo_state(s: pb::DeploymentState) -> DeploymentState {
    match s {
        pb::DeploymentState::Pending | pb::DeploymentState::Unspecified => DeploymentState::Pending,
        pb::DeploymentState::Installing => DeploymentState::Installing,
        pb::DeploymentState::Installed => DeploymentState::Installed,
        pb::DeploymentState::Failed => DeploymentState::Failed,
        pb::DeploymentState::Removing => DeploymentState::Removing,
        pb::DeploymentState::Removed => DeploymentState::Removed,
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
        async fn ensure_image(&self, _: &str) -> Result<()> {
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
