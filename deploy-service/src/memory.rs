//! An in-memory [`ContainerRuntime`] for unit tests of the agent's logic (workers, rollout,
//! status) without an engine. Containers start at once and run until removed; a removal takes
//! as long as [`Memory::slow_removal`] says, and the engine can be made unreachable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::{
    ContainerPlan, ContainerRuntime, EngineFacts, Observed, ObservedContainer, ObservedObject,
    Owner,
};
use crate::spec::{Network, Volume};
use crate::{Error, Result};

#[derive(Default)]
struct State {
    containers: BTreeMap<String, ObservedContainer>,
    networks: Vec<ObservedObject>,
    volumes: Vec<ObservedObject>,
    next_id: u64,
    /// How long removing a container of each deployment takes.
    slow: BTreeMap<String, Duration>,
    down: bool,
    /// Container names in the order their removal started.
    removals: Vec<String>,
}

/// The in-memory engine; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Memory(Arc<Mutex<State>>);

impl Memory {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call fails from now on (or works again).
    pub(crate) fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Removing a container of `deployment` takes `delay`.
    pub(crate) fn slow_removal(&self, deployment: &str, delay: Duration) {
        self.state().slow.insert(deployment.to_string(), delay);
    }

    /// Names of the containers of `deployment`.
    pub(crate) fn containers_of(&self, deployment: &str) -> Vec<String> {
        let state = self.state();
        (state.containers.values())
            .filter(|c| c.owner.deployment == deployment)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Container names in the order their removal started.
    pub(crate) fn removals(&self) -> Vec<String> {
        self.state().removals.clone()
    }

    fn check(&self, operation: &str) -> Result<()> {
        if self.state().down {
            return Err(Error::Runtime {
                operation: operation.into(),
                message: "engine down".into(),
            });
        }
        Ok(())
    }
}

impl ContainerRuntime for Memory {
    async fn observe(&self) -> Result<Observed> {
        self.check("listing containers")?;
        let state = self.state();
        Ok(Observed {
            containers: state.containers.values().cloned().collect(),
            networks: state.networks.clone(),
            volumes: state.volumes.clone(),
        })
    }

    async fn container(&self, name: &str) -> Result<Option<ObservedContainer>> {
        self.check("inspecting a container")?;
        let state = self.state();
        Ok(state.containers.values().find(|c| c.name == name).cloned())
    }

    async fn has_image(&self, _: &str) -> Result<bool> {
        self.check("inspecting an image")?;
        Ok(true)
    }

    async fn pull_image(&self, _: &str) -> Result<()> {
        self.check("pulling an image")
    }

    async fn remove_image(&self, _: &str) -> Result<bool> {
        self.check("removing an image")?;
        Ok(true)
    }

    async fn create_network(&self, name: &str, owner: &Owner, _: &Network) -> Result<()> {
        self.check("creating a network")?;
        let (name, owner) = (name.to_string(), owner.clone());
        self.state().networks.push(ObservedObject { name, owner });
        Ok(())
    }

    async fn create_volume(&self, name: &str, owner: &Owner, _: &Volume) -> Result<()> {
        self.check("creating a volume")?;
        let (name, owner) = (name.to_string(), owner.clone());
        self.state().volumes.push(ObservedObject { name, owner });
        Ok(())
    }

    async fn create_container(&self, plan: &ContainerPlan) -> Result<String> {
        self.check("creating a container")?;
        let mut state = self.state();
        if state.containers.values().any(|c| c.name == plan.name) {
            return Err(Error::Runtime {
                operation: format!("creating container {}", plan.name),
                message: "name in use".into(),
            });
        }
        state.next_id += 1;
        let id = format!("c{}", state.next_id);
        let container = ObservedContainer {
            id: id.clone(),
            name: plan.name.clone(),
            owner: plan.owner.clone(),
            service: plan.service.name.clone(),
            spec_hash: plan.spec_hash.clone(),
            image: plan.service.image.clone(),
            state: "created".into(),
            health: String::new(),
            restart_count: 0,
            exit_code: 0,
            depends_on: (plan.service.depends_on.iter())
                .map(|d| d.service.clone())
                .collect(),
        };
        state.containers.insert(id.clone(), container);
        Ok(id)
    }

    async fn rename_container(&self, id: &str, name: &str) -> Result<()> {
        self.check("renaming a container")?;
        if let Some(c) = self.state().containers.get_mut(id) {
            c.name = name.to_string();
        }
        Ok(())
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.check("starting a container")?;
        if let Some(c) = self.state().containers.get_mut(id) {
            c.state = "running".into();
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.check("removing a container")?;
        let delay = {
            let mut state = self.state();
            let Some(c) = state.containers.get(id).cloned() else {
                return Ok(());
            };
            state.removals.push(c.name.clone());
            state.slow.get(&c.owner.deployment).copied()
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.state().containers.remove(id);
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        self.check("removing a network")?;
        self.state().networks.retain(|n| n.name != name);
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        self.check("removing a volume")?;
        self.state().volumes.retain(|v| v.name != name);
        Ok(())
    }

    async fn facts(&self) -> Result<EngineFacts> {
        self.check("reading engine facts")?;
        Ok(EngineFacts::default())
    }
}
