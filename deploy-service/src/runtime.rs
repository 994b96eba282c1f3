//! The one seam to the container engine. The Docker implementation (`docker.rs`) is the only
//! code that knows the engine's API; everything else speaks in these coarse operations.

use std::collections::BTreeMap;
use std::future::Future;

use crate::Result;
use crate::spec::{Network, Volume};

/// Label naming the agent instance that manages an object (config `instance`).
pub const LABEL_AGENT: &str = "org.margo.woa.agent";
/// Label naming the deployment an object belongs to; objects without it are never touched.
pub const LABEL_DEPLOYMENT: &str = "org.margo.woa.deployment";
/// Label naming the deployment component.
pub const LABEL_COMPONENT: &str = "org.margo.woa.component";
/// Label naming the compose service of a container.
pub const LABEL_SERVICE: &str = "org.margo.woa.service";
/// Label holding the hash of the container's resolved spec.
pub const LABEL_SPEC_HASH: &str = "org.margo.woa.spec-hash";
/// Label listing the compose services a container depends on (comma-separated), so that a
/// removal stops dependents first even when the deployment's document is gone.
pub const LABEL_DEPENDS_ON: &str = "org.margo.woa.depends-on";

/// Which deployment component an engine object belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    /// Deployment id.
    pub deployment: String,
    /// Component name.
    pub component: String,
}

/// A managed container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    /// Engine id.
    pub id: String,
    /// Engine name.
    pub name: String,
    /// Owning component.
    pub owner: Owner,
    /// Compose service.
    pub service: String,
    /// Spec hash label.
    pub spec_hash: String,
    /// Image reference.
    pub image: String,
    /// `created`, `running`, `restarting`, `exited`, `paused` or `dead`.
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or empty without a health check.
    pub health: String,
    /// Restarts done by the engine's restart policy.
    pub restart_count: u32,
    /// Exit code of the last run.
    pub exit_code: i64,
    /// Compose services of the same component it depends on.
    pub depends_on: Vec<String>,
}

impl ObservedContainer {
    /// Running and, where it has a health check, healthy.
    pub fn is_ready(&self) -> bool {
        self.state == "running" && (self.health.is_empty() || self.health == "healthy")
    }
}

/// A managed network or volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedObject {
    /// Engine name.
    pub name: String,
    /// Owning component.
    pub owner: Owner,
}

/// Everything the agent manages on the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Managed containers.
    pub containers: Vec<ObservedContainer>,
    /// Managed networks.
    pub networks: Vec<ObservedObject>,
    /// Managed volumes.
    pub volumes: Vec<ObservedObject>,
}

impl Observed {
    /// What belongs to deployment `id`.
    pub fn of(&self, id: &str) -> Observed {
        Observed {
            containers: self
                .containers
                .iter()
                .filter(|c| c.owner.deployment == id)
                .cloned()
                .collect(),
            networks: self
                .networks
                .iter()
                .filter(|n| n.owner.deployment == id)
                .cloned()
                .collect(),
            volumes: self
                .volumes
                .iter()
                .filter(|v| v.owner.deployment == id)
                .cloned()
                .collect(),
        }
    }

    /// The deployments anything observed belongs to.
    pub fn deployments(&self) -> std::collections::BTreeSet<&str> {
        let containers = self.containers.iter().map(|c| &c.owner);
        let objects = self.networks.iter().chain(&self.volumes).map(|o| &o.owner);
        containers
            .chain(objects)
            .map(|o| o.deployment.as_str())
            .collect()
    }
}

/// Everything needed to create one container.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Engine name of the container.
    pub name: String,
    /// Owning component.
    pub owner: Owner,
    /// The service as resolved from the compose file.
    pub service: crate::spec::Service,
    /// Hash of everything that defines the container.
    pub spec_hash: String,
    /// Engine names of the component's networks, by compose key.
    pub networks: BTreeMap<String, String>,
    /// Engine names of the component's volumes, by compose key.
    pub volumes: BTreeMap<String, String>,
    /// Host directory holding the component's package, for relative bind mounts.
    pub package_dir: std::path::PathBuf,
    /// Engine names of the component's containers, by service, for what one service shares
    /// with another (`network_mode`, `pid`, `ipc: service:NAME`).
    pub containers: BTreeMap<String, String>,
}

impl ContainerPlan {
    /// The engine name of the container of `service` in the same component.
    pub fn container_of<'a>(&'a self, service: &'a str) -> &'a str {
        self.containers.get(service).map_or(service, String::as_str)
    }
}

/// Facts about the engine and host, for device capabilities.
#[derive(Debug, Clone, Default)]
pub struct EngineFacts {
    /// e.g. `docker 20.10.24`.
    pub runtime: String,
    /// CPU architecture, e.g. `x86_64`.
    pub architecture: String,
    /// CPUs the engine sees.
    pub cpus: u32,
    /// Memory the engine sees, in bytes.
    pub memory_bytes: u64,
    /// Where the engine keeps images and containers (a path on the engine's host).
    pub root_dir: String,
}

/// The coarse operations the agent needs from a container engine.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Lists every object carrying the agent's labels.
    fn observe(&self) -> impl Future<Output = Result<Observed>> + Send;
    /// Lists the objects of deployment `id`.
    fn observe_deployment(&self, id: &str) -> impl Future<Output = Result<Observed>> + Send {
        async move { Ok(self.observe().await?.of(id)) }
    }
    /// Follows the engine's events about managed containers, sending the deployment each one
    /// concerns, until the engine ends the stream (`Ok`) or fails; the caller subscribes
    /// again. An engine without events never returns: the periodic resync alone sees changes.
    fn follow_events(
        &self,
        changed: &tokio::sync::mpsc::Sender<String>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = changed;
        std::future::pending()
    }
    /// The managed container named `name`, if it exists.
    fn container(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ObservedContainer>>> + Send;
    /// Whether `image` is present on the engine.
    fn has_image(&self, image: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Pulls `image` with the device's registry credentials.
    fn pull_image(&self, image: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes the reference `image`, never by force: `false` when the engine keeps it because
    /// a container uses it.
    fn remove_image(&self, image: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Creates a network of the component under `name`.
    fn create_network(
        &self,
        name: &str,
        owner: &Owner,
        network: &Network,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Creates a volume of the component under `name`.
    fn create_volume(
        &self,
        name: &str,
        owner: &Owner,
        volume: &Volume,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Creates (not starts) a container; returns its id.
    fn create_container(&self, plan: &ContainerPlan)
    -> impl Future<Output = Result<String>> + Send;
    /// Gives a container a new name.
    fn rename_container(&self, id: &str, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Starts a created or stopped container.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes a container, stopping it first.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes a network.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes a volume.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Engine and host facts.
    fn facts(&self) -> impl Future<Output = Result<EngineFacts>> + Send;
}
