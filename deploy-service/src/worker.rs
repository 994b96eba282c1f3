//! The schedule: one worker per deployment, each reconciling its deployment on its own.
//!
//! Modelled on kube-rs' controller: `reconcile(deployment) -> Action`. A worker runs when its
//! deployment may have changed (an apply, an operator's decision, an engine event, the periodic
//! resync), one pass at a time per deployment and at most [`CONCURRENCY`] passes at once.
//! Waiting for readiness or settling is a requeue, not a sleep inside a pass, so a slow or
//! stuck deployment never holds up another, nor a decision on itself.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, RwLock, Semaphore};
use tokio_util::sync::CancellationToken;
use woa_common::backoff::Backoff;
use woa_common::margo::StatusError;

use crate::agent::{Agent, lock};
use crate::desired::status_error;
use crate::reconcile::Local;
use crate::rollout::Phase;
use crate::runtime::{ContainerRuntime, Observed};

/// Passes that run at once: enough to keep the engine busy, few enough not to swamp it.
pub(crate) const CONCURRENCY: u32 = 8;

/// Images pulled at once, across deployments.
pub(crate) const PULLS: usize = 3;

/// First retry delay after a failed pass; later ones double up to the resync interval, with
/// jitter that spreads the retries of many devices after a shared outage.
const RETRY_BASE: Duration = Duration::from_millis(500);

/// What a pass over one deployment asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run again after the delay (or sooner, on a change).
    Requeue(Duration),
    /// Run again on the next change.
    Await,
    /// The deployment is gone: the worker ends.
    Done,
}

/// What a full resync saw of one deployment, handed to its worker to save it the engine calls.
pub(crate) struct Hint {
    /// When it was observed: a worker that changed the engine since ignores it.
    pub(crate) at: Instant,
    /// What the engine runs of the deployment, or why the engine could not be read.
    pub(crate) observed: std::result::Result<Observed, StatusError>,
}

struct Slot {
    wake: Notify,
    hint: Mutex<Option<Hint>>,
}

/// The workers, and what they share.
pub(crate) struct Workers {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    resync: Notify,
    collect: Notify,
    passes: Semaphore,
    /// Bounds pulls across deployments.
    pub(crate) pulls: Semaphore,
    /// Passes that change the engine hold it shared; garbage collection holds it alone, so it
    /// never removes an image a pass is about to use.
    pub(crate) engine: RwLock<()>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            slots: Mutex::default(),
            resync: Notify::new(),
            collect: Notify::new(),
            passes: Semaphore::new(CONCURRENCY as usize),
            pulls: Semaphore::new(PULLS),
            engine: RwLock::new(()),
        }
    }
}

impl Workers {
    /// Asks for a full resync now (after an apply).
    pub(crate) fn resync(&self) {
        self.resync.notify_one();
    }

    /// Asks for garbage collection (after a release concluded or a deployment left).
    pub(crate) fn collect_garbage(&self) {
        self.collect.notify_one();
    }

    /// Runs the worker of deployment `id` now; without one, a full resync starts it.
    pub(crate) fn wake(&self, id: &str) {
        match lock(&self.slots).get(id) {
            Some(slot) => slot.wake.notify_one(),
            None => self.resync(),
        }
    }

    /// Whether a worker runs for `id`.
    fn runs(&self, id: &str) -> bool {
        lock(&self.slots).contains_key(id)
    }

    /// Ends the worker of `id`, unless something new arrived for it meanwhile.
    fn retire(&self, id: &str, slot: &Arc<Slot>) -> bool {
        let mut slots = lock(&self.slots);
        if lock(&slot.hint).is_some() || !slots.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            return false;
        }
        slots.remove(id);
        true
    }
}

impl<R: ContainerRuntime> Agent<R> {
    /// Reconciles until `cancel`: resyncs everything after every apply and every resync
    /// interval (with growing delays while the engine fails), follows the engine's events, and
    /// lets each deployment's worker do the rest. On `cancel`, returns once the passes that
    /// were running have finished.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        tokio::spawn(self.clone().follow_events(cancel.clone()));
        let mut backoff = Backoff::new(RETRY_BASE, self.settings.resync_interval);
        loop {
            let started = Instant::now();
            let result = self.resync(&cancel).await;
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
            let until = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        // Every permit back means no pass is running any more.
                        let _ = self.workers.passes.acquire_many(CONCURRENCY).await;
                        return;
                    }
                    _ = self.workers.resync.notified() => break,
                    _ = tokio::time::sleep_until(until) => break,
                    _ = self.workers.collect.notified() => self.collect_garbage().await,
                }
            }
        }
    }

    /// One observation of everything, handed out to the workers of every deployment that is
    /// desired, runs, or is reported; the workers decide whether there is anything to do.
    async fn resync(self: &Arc<Self>, cancel: &CancellationToken) -> crate::Result<()> {
        let at = Instant::now();
        let desired = self.desired();
        let observed = self.runtime.observe().await;
        let mut ids: BTreeSet<String> = desired.deployments.iter().map(|d| d.id.clone()).collect();
        let result = match observed {
            Ok(observed) => {
                ids.extend(observed.deployments().into_iter().map(str::to_string));
                ids.extend(self.reported_ids());
                for id in ids {
                    let hint = Hint {
                        at,
                        observed: Ok(observed.of(&id)),
                    };
                    self.dispatch(&id, Some(hint), cancel);
                }
                Ok(())
            }
            Err(e) => {
                let error = status_error(&e);
                for id in ids {
                    let observed = Err(error.clone());
                    self.dispatch(&id, Some(Hint { at, observed }), cancel);
                }
                Err(e)
            }
        };
        let tracks = self.tracks();
        if !tracks
            .values()
            .any(|t| matches!(t.phase, Phase::Rolling | Phase::Restoring))
        {
            self.collect_garbage().await;
        }
        result
    }

    /// Hands `hint` to the worker of `id`, starting one if none runs.
    fn dispatch(self: &Arc<Self>, id: &str, hint: Option<Hint>, cancel: &CancellationToken) {
        let mut slots = lock(&self.workers.slots);
        let slot = slots.entry(id.to_string()).or_insert_with(|| {
            let slot = Arc::new(Slot {
                wake: Notify::new(),
                hint: Mutex::new(None),
            });
            tokio::spawn(
                self.clone()
                    .work(id.to_string(), slot.clone(), cancel.clone()),
            );
            slot
        });
        if hint.is_some() {
            *lock(&slot.hint) = hint;
        }
        slot.wake.notify_one();
    }

    /// The worker of deployment `id`.
    async fn work(self: Arc<Self>, id: String, slot: Arc<Slot>, cancel: CancellationToken) {
        let mut local = Local::default();
        let mut backoff = Backoff::new(RETRY_BASE, self.settings.resync_interval);
        let mut requeue: Option<Duration> = None;
        loop {
            let requeued = async {
                match requeue {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = slot.wake.notified() => {}
                _ = requeued => {}
            }
            let Ok(_permit) = self.workers.passes.acquire().await else {
                return;
            };
            if cancel.is_cancelled() {
                return;
            }
            let hint = lock(&slot.hint).take();
            requeue = match self.reconcile(&id, hint, &mut local).await {
                Ok(Action::Requeue(delay)) => {
                    backoff.reset();
                    Some(delay)
                }
                Ok(Action::Await) => {
                    backoff.reset();
                    None
                }
                Ok(Action::Done) if self.workers.retire(&id, &slot) => {
                    tracing::debug!(deployment = %id, "worker done");
                    return;
                }
                Ok(Action::Done) => Some(Duration::ZERO),
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %e, failures = backoff.failures() + 1, "reconciling failed");
                    Some(backoff.next_delay())
                }
            };
        }
    }

    /// Wakes the worker of each deployment the engine reports a change of, so crashes and
    /// drift are seen at once; after the stream breaks, a full resync covers what was missed.
    async fn follow_events(self: Arc<Self>, cancel: CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
        let mut backoff = Backoff::new(RETRY_BASE, Duration::from_secs(30));
        loop {
            let follow = self.runtime.follow_events(&tx);
            let mut follow = std::pin::pin!(follow);
            let ended = loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    ended = &mut follow => break ended,
                    Some(id) = rx.recv() => {
                        if self.workers.runs(&id) {
                            self.workers.wake(&id);
                        } else {
                            self.dispatch(&id, None, &cancel);
                        }
                    }
                }
            };
            match ended {
                Ok(()) => backoff.reset(),
                Err(e) => tracing::debug!(error = %e, "engine events stopped"),
            }
            self.workers.resync();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use woa_common::margo::DeploymentState;

    use super::*;
    use crate::agent::AgentSettings;
    use crate::config::RolloutConfig;
    use crate::desired::Incoming;
    use crate::memory::Memory;
    use crate::package::{PackageConfig, PackageFetcher};
    use crate::status::DeploymentStatus;

    const A: &str = "5f0c2d7e-1111-4a6b-9c1e-00000000000a";
    const B: &str = "5f0c2d7e-1111-4a6b-9c1e-00000000000b";

    fn start(memory: &Memory, dir: &tempfile::TempDir) -> Arc<Agent<Memory>> {
        let settings = AgentSettings {
            state_dir: dir.path().into(),
            resync_interval: Duration::from_secs(30),
            remove_volumes: false,
            rollout: RolloutConfig {
                settle: Duration::ZERO,
                ..Default::default()
            },
            image_gc: Default::default(),
            policy: Default::default(),
            otel: Default::default(),
        };
        let fetcher = PackageFetcher::new(&PackageConfig::default()).unwrap();
        let agent = Agent::new(memory.clone(), fetcher, settings).unwrap();
        tokio::spawn(agent.clone().run(CancellationToken::new()));
        agent
    }

    /// A desired state of the deployments `(id, compose file)`.
    fn request(revision: &str, deployments: &[(&str, &str)]) -> Incoming {
        let document = |id: &str| {
            format!(
                "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
                 id: {id}\nspec:\n  deploymentProfile:\n    type: compose\n    components:\n      \
                 - name: app\n        properties:\n          packageLocation: {id}/compose.yaml\n"
            )
        };
        Incoming {
            revision: revision.into(),
            documents: (deployments.iter())
                .map(|(id, _)| (format!("{id}.yaml"), document(id).into()))
                .collect(),
            artifacts: (deployments.iter())
                .map(|(id, compose)| (format!("{id}/compose.yaml"), compose.as_bytes().to_vec()))
                .collect(),
        }
    }

    const TWO: &str = "services:\n  db:\n    image: db:1\n  \
                       api:\n    image: api:1\n    depends_on: [db]\n";
    const ONE: &str = "services:\n  web:\n    image: web:1\n";

    /// Waits until `id` is reported in `state`; returns its status.
    async fn reported(agent: &Agent<Memory>, id: &str, state: DeploymentState) -> DeploymentStatus {
        let mut watch = agent.watch();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let current = watch.borrow_and_update().clone();
                let status = current
                    .deployments
                    .into_iter()
                    .find(|d| d.deployment_id == id);
                if let Some(s) = status.filter(|s| s.state == state) {
                    return s;
                }
                watch.changed().await.unwrap();
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("{id} never {state:?}"))
    }

    fn state_of(agent: &Agent<Memory>, id: &str) -> Option<DeploymentState> {
        let current = agent.watch().borrow().clone();
        let status = current.deployments.iter().find(|d| d.deployment_id == id);
        status.map(|s| s.state)
    }

    #[tokio::test]
    async fn an_unreachable_engine_fails_every_component_with_the_reason() {
        let (memory, dir) = (Memory::default(), tempfile::tempdir().unwrap());
        memory.set_down(true);
        let agent = start(&memory, &dir);
        let response = agent.apply(request("r1", &[(A, ONE)])).await.unwrap();
        assert!(response.rejected.is_empty(), "{response:?}");
        let status = reported(&agent, A, DeploymentState::Failed).await;
        let error = status.error.unwrap();
        assert_eq!(error.code, "ERR_RUNTIME");
        assert!(error.message.contains("engine down"), "{error:?}");

        memory.set_down(false);
        agent.workers.resync();
        reported(&agent, A, DeploymentState::Installed).await;
    }

    #[tokio::test]
    async fn a_slow_removal_holds_up_no_other_deployment_and_stops_dependents_first() {
        let (memory, dir) = (Memory::default(), tempfile::tempdir().unwrap());
        let agent = start(&memory, &dir);
        agent.apply(request("r1", &[(A, TWO)])).await.unwrap();
        reported(&agent, A, DeploymentState::Installed).await;

        memory.slow_removal(A, Duration::from_secs(2));
        agent.apply(request("r2", &[(B, ONE)])).await.unwrap();
        reported(&agent, B, DeploymentState::Installed).await;
        assert_eq!(state_of(&agent, A), Some(DeploymentState::Removing));
        assert!(!memory.containers_of(A).is_empty());

        reported(&agent, A, DeploymentState::Removed).await;
        assert!(memory.containers_of(A).is_empty());
        let order = memory.removals();
        assert_eq!(order, [format!("{A}_app_api"), format!("{A}_app_db")]);
    }
}
