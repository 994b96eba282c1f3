//! Executing planned steps on the engine, as concurrently as their order allows: removals
//! dependents first, a component's containers together (each waiting only for its own
//! dependencies), pulls a few at a time across deployments.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use futures_util::future::join_all;
use woa_common::margo::StatusError;
use woa_common::store;

use crate::agent::{Agent, lock};
use crate::desired::status_error;
use crate::plan::{Awaited, Step};
use crate::reconcile::CHECK_EVERY;
use crate::runtime::{ContainerPlan, ContainerRuntime, ObservedContainer, Owner};
use crate::spec::{Condition, PullPolicy};
use crate::{Error, Result};

/// How long one pass waits for a dependency before it leaves the step to a later pass.
const PASS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Names of containers of the running batch that failed, so whatever waits for them gives up.
type Broken = Mutex<BTreeSet<String>>;

impl<R: ContainerRuntime> Agent<R> {
    /// Removes what `steps` remove: containers concurrently, those that others depend on after
    /// them (as Compose does), then networks and volumes. Returns the first error.
    pub(crate) async fn remove_unwanted(&self, steps: Vec<Step>) -> Result<()> {
        let mut containers: Vec<&ObservedContainer> = Vec::new();
        let mut objects = Vec::new();
        for step in &steps {
            match step {
                Step::RemoveContainer(c) => containers.push(c),
                other => objects.push(other),
            }
        }
        let mut first_error = None;
        for wave in removal_waves(containers) {
            let results = join_all(wave.into_iter().map(|c| async move {
                tracing::info!(container = %c.name, "removing container");
                self.runtime.remove_container(&c.id).await
            }))
            .await;
            first_error = first_error.or(results.into_iter().find_map(Result::err));
        }
        for step in objects {
            let result = match step {
                Step::RemoveNetwork(name) => self.runtime.remove_network(name).await,
                Step::RemoveVolume(name) => self.runtime.remove_volume(name).await,
                _ => Ok(()),
            };
            first_error = first_error.or(result.err());
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs the steps of one component: its networks and volumes, then its containers
    /// together. A step whose dependencies are not ready within this pass is left to a later
    /// one; they fail once `deadline` passes. Returns the errors, and whether steps were left.
    pub(crate) async fn run_component(
        &self,
        steps: Vec<Step>,
        deadline: Instant,
    ) -> (Vec<Error>, bool) {
        let (containers, objects): (Vec<Step>, Vec<Step>) =
            steps.into_iter().partition(|s| s.container().is_some());
        let mut errors = Vec::new();
        for step in &objects {
            let result = match step {
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
                _ => Ok(()),
            };
            errors.extend(result.err());
        }
        if !errors.is_empty() {
            return (errors, false);
        }
        let broken = Broken::default();
        let budget = Instant::now() + PASS_WAIT;
        let results = join_all(containers.iter().map(|step| async {
            let result = self.execute(step, &broken, deadline, budget).await;
            if let (Err(_), Some(name)) = (&result, step.container()) {
                lock(&broken).insert(name.to_string());
            }
            result
        }))
        .await;
        let mut left = false;
        for result in results {
            match result {
                Ok(done) => left |= !done,
                Err(e) => errors.push(e),
            }
        }
        (errors, left)
    }

    /// Runs a create or start step; `Ok(false)` when its dependencies are not ready yet.
    async fn execute(
        &self,
        step: &Step,
        broken: &Broken,
        deadline: Instant,
        budget: Instant,
    ) -> Result<bool> {
        match step {
            Step::Create {
                plan,
                replaces,
                after,
            } => {
                if !self.wait_for(after, broken, deadline, budget).await? {
                    return Ok(false);
                }
                // The image was pulled before any step; one removed since makes the create fail,
                // and the next pass pulls it again.
                tracing::info!(container = %plan.name, image = %plan.service.image, "creating container");
                let Some(old) = replaces else {
                    let t0 = Instant::now();
                    let id = self.runtime.create_container(plan).await?;
                    let t1 = Instant::now();
                    self.runtime.start_container(&id).await?;
                    let (create_ms, start_ms) = ((t1 - t0).as_millis(), t1.elapsed().as_millis());
                    tracing::debug!(container = %plan.name, create_ms, start_ms, "container started");
                    return Ok(true);
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
                self.runtime.start_container(&id).await?;
                Ok(true)
            }
            Step::Start {
                id, name, after, ..
            } => {
                if !self.wait_for(after, broken, deadline, budget).await? {
                    return Ok(false);
                }
                tracing::info!(container = %name, "starting container again");
                self.runtime.start_container(id).await?;
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// Waits until every awaited container is up to date and reaches its condition: `true`
    /// when they all do, `false` when `budget` passes first, an error when one cannot (or
    /// `deadline` passed).
    async fn wait_for(
        &self,
        after: &[Awaited],
        broken: &Broken,
        deadline: Instant,
        budget: Instant,
    ) -> Result<bool> {
        for awaited in after {
            loop {
                let name = &awaited.name;
                let failed = |message: String| Error::NotReady {
                    component: name.clone(),
                    message,
                };
                if lock(broken).contains(name) {
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
                let now = Instant::now();
                if now > deadline {
                    let timeout = self.settings.rollout.ready_timeout;
                    return Err(failed(format!(
                        "{name} did not become ready within {timeout:?}"
                    )));
                }
                if now > budget {
                    return Ok(false);
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        }
        Ok(true)
    }

    /// Pulls `image` and records that the agent did, so garbage collection may remove it later.
    async fn pull(&self, image: &str) -> Result<()> {
        let _turn = self.workers.pulls.acquire().await;
        tracing::info!(%image, "pulling image");
        self.runtime.pull_image(image).await?;
        let mut pulled = lock(&self.pulled);
        pulled.insert(image.to_string(), unix_now());
        store::save_json(&self.settings.state_dir.join("images.json"), &*pulled)
            .map_err(|e| Error::file("storing the pulled images", e))
    }

    /// Pulls every missing image the steps create containers from, concurrently, refusing
    /// when the disk is below the floor. Returns the failures by component that needs them.
    pub(crate) async fn pull_images(&self, steps: &[Step]) -> HashMap<Owner, StatusError> {
        let mut failed = HashMap::new();
        // Each image with who uses it and the most eager of their pull policies.
        let mut users: BTreeMap<&str, (Vec<&Owner>, PullPolicy)> = BTreeMap::new();
        for step in steps {
            if let Step::Create { plan, .. } = step {
                let policy = plan.service.pull_policy.unwrap_or(PullPolicy::Missing);
                let entry = (users.entry(&plan.service.image)).or_insert((Vec::new(), policy));
                entry.0.push(&plan.owner);
                entry.1 = entry.1.max(policy);
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
        for (image, (owners, policy)) in users {
            if policy == PullPolicy::Always {
                missing.insert(image, owners);
                continue;
            }
            match self.runtime.has_image(image).await {
                Ok(true) => {}
                Ok(false) if policy == PullPolicy::Never => {
                    let e = Error::ImagePull {
                        image: image.to_string(),
                        message: "not on this device, and pull_policy is never".into(),
                    };
                    fail(&owners, &e);
                }
                Ok(false) => {
                    missing.insert(image, owners);
                }
                Err(e) => fail(&owners, &e),
            }
        }
        if missing.is_empty() {
            return failed;
        }
        let images: Vec<&str> = missing.keys().copied().collect();
        if let Err(e) = self.check_disk(&images).await {
            tracing::warn!(error = %e, "not pulling images");
            for owners in missing.values() {
                fail(owners, &e);
            }
            return failed;
        }
        let pulls = join_all(images.iter().map(|image| self.pull(image))).await;
        for (owners, result) in missing.values().zip(pulls) {
            if let Err(e) = result {
                tracing::warn!(error = %e, "pull failed");
                fail(owners, &e);
            }
        }
        failed
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
}

/// `containers` in waves that are removed one after the other, each wave concurrently: a
/// container comes after every container of its component that depends on it.
fn removal_waves(mut left: Vec<&ObservedContainer>) -> Vec<Vec<&ObservedContainer>> {
    let mut waves = Vec::new();
    while !left.is_empty() {
        let needed = |c: &ObservedContainer, left: &[&ObservedContainer]| {
            left.iter()
                .any(|o| o.owner == c.owner && o.depends_on.contains(&c.service))
        };
        let (wave, rest): (Vec<_>, Vec<_>) = left.iter().partition(|c| !needed(c, &left));
        // A cycle (which compose refuses) would stop the waves: remove the rest together.
        if wave.is_empty() {
            waves.push(left);
            break;
        }
        waves.push(wave);
        left = rest;
    }
    waves
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(service: &str, depends_on: &[&str]) -> ObservedContainer {
        ObservedContainer {
            id: service.into(),
            name: format!("d_c_{service}"),
            owner: Owner {
                deployment: "d".into(),
                component: "c".into(),
            },
            service: service.into(),
            spec_hash: String::new(),
            image: "x".into(),
            state: "running".into(),
            health: String::new(),
            restart_count: 0,
            exit_code: 0,
            depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn dependents_are_removed_first_and_independent_containers_together() {
        let (db, api, web, cron) = (
            container("db", &[]),
            container("api", &["db"]),
            container("web", &["api"]),
            container("cron", &[]),
        );
        let waves = removal_waves(vec![&db, &api, &web, &cron]);
        let names: Vec<Vec<&str>> = waves
            .iter()
            .map(|w| w.iter().map(|c| c.service.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["web", "cron"], vec!["api"], vec!["db"]]);
    }
}
