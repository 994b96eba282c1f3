//! The runtime-neutral description of what should run: one [`Project`] per deployment component,
//! made from its compose file after interpolation. Names here are the compose file's own
//! (service, network and volume keys); the runtime derives engine object names from them.
//!
//! Every type is serialisable so the resolved desired state can be stored and hashed: the hash of
//! a [`Service`] decides whether its container must be recreated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One compose project: the services, networks and volumes of a deployment component.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// Services in the order of the compose file.
    pub services: Vec<Service>,
    /// Networks the project declares (plus `default` when a service uses it).
    pub networks: Vec<Network>,
    /// Named volumes the project declares.
    pub volumes: Vec<Volume>,
}

/// One compose service: the container that should run.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// The compose service name.
    pub name: String,
    /// Image reference, e.g. `registry.local:5000/web:1.2`.
    pub image: String,
    /// Overrides the image's command.
    pub command: Option<Vec<String>>,
    /// Overrides the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Environment after `env_file` and `environment` are merged (environment wins).
    pub environment: BTreeMap<String, String>,
    /// Published ports.
    pub ports: Vec<Port>,
    /// Volume, bind and tmpfs mounts.
    pub mounts: Vec<Mount>,
    /// Networks the container joins; `default` when the file names none.
    pub networks: Vec<NetworkAttachment>,
    /// Services that must start (or be healthy) first.
    pub depends_on: Vec<Dependency>,
    /// The health check, when the service defines one (or disables the image's).
    pub healthcheck: Option<Healthcheck>,
    /// Restart policy: `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N`.
    pub restart: Option<String>,
    /// Labels from the compose file (the agent's ownership labels are added by the runtime).
    pub labels: BTreeMap<String, String>,
    /// `user[:group]` to run as.
    pub user: Option<String>,
    /// Working directory inside the container.
    pub working_dir: Option<String>,
    /// Linux capabilities to add.
    pub cap_add: Vec<String>,
    /// Linux capabilities to drop.
    pub cap_drop: Vec<String>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Memory limit in bytes.
    pub mem_limit: Option<i64>,
    /// CPU limit in billionths of a CPU (compose `cpus: 1.5` is 1_500_000_000).
    pub nano_cpus: Option<i64>,
    /// Log driver and its options.
    pub logging: Option<Logging>,
}

// By hand, to keep environment values out of anything that prints a service: they carry the
// apps' secrets (database passwords passed as Margo parameters).
impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let environment: BTreeMap<&str, &str> = self
            .environment
            .keys()
            .map(|k| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("entrypoint", &self.entrypoint)
            .field("environment", &environment)
            .field("ports", &self.ports)
            .field("mounts", &self.mounts)
            .field("networks", &self.networks)
            .field("depends_on", &self.depends_on)
            .field("healthcheck", &self.healthcheck)
            .field("restart", &self.restart)
            .field("labels", &self.labels)
            .field("user", &self.user)
            .field("working_dir", &self.working_dir)
            .field("cap_add", &self.cap_add)
            .field("cap_drop", &self.cap_drop)
            .field("read_only", &self.read_only)
            .field("mem_limit", &self.mem_limit)
            .field("nano_cpus", &self.nano_cpus)
            .field("logging", &self.logging)
            .finish()
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Host address to bind; all addresses when absent.
    pub host_ip: Option<String>,
    /// Host port; an ephemeral port when absent.
    pub host_port: Option<u16>,
    /// Port inside the container.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    /// A named volume of the project (its compose key).
    Volume {
        /// The volume's compose key.
        source: String,
        /// Path inside the container.
        target: String,
        /// Mount read-only.
        read_only: bool,
    },
    /// A path of the host, or of the component's package when relative.
    Bind {
        /// The source path.
        source: BindSource,
        /// Path inside the container.
        target: String,
        /// Mount read-only.
        read_only: bool,
    },
    /// A tmpfs mount.
    Tmpfs {
        /// Path inside the container.
        target: String,
        /// Size limit in bytes.
        size: Option<i64>,
    },
}

/// Where a bind mount comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindSource {
    /// An absolute path on the host.
    Host(String),
    /// A normalised path inside the component's package (never escaping it), e.g. `config/app.ini`.
    Package(String),
}

/// A network the container joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network's compose key.
    pub network: String,
    /// Extra DNS names of the container on that network (the service name is always one).
    pub aliases: Vec<String>,
}

/// A start-order dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The service depended on.
    pub service: String,
    /// What the dependency must reach first.
    pub condition: Condition,
}

/// What a dependency must reach before the dependent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Started (compose `service_started`, the default).
    Started,
    /// Healthy (compose `service_healthy`).
    Healthy,
    /// Ran to completion with exit code 0 (compose `service_completed_successfully`).
    CompletedSuccessfully,
}

/// A container health check. Durations are in nanoseconds, as the engine takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// Engine form: `["CMD", ...]`, `["CMD-SHELL", "..."]`, or `["NONE"]` to disable.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval_ns: Option<i64>,
    /// Time one check may take.
    pub timeout_ns: Option<i64>,
    /// Consecutive failures before unhealthy.
    pub retries: Option<i64>,
    /// Grace period after start.
    pub start_period_ns: Option<i64>,
}

/// Log driver configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logging {
    /// Driver name, e.g. `json-file`.
    pub driver: Option<String>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
}

/// A network the project declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The compose key.
    pub name: String,
    /// Driver, `bridge` when absent.
    pub driver: Option<String>,
    /// Not connected to the outside.
    pub internal: bool,
    /// Created outside the agent; used by this name, never created or removed.
    pub external: Option<String>,
    /// Labels from the compose file.
    pub labels: BTreeMap<String, String>,
}

/// A named volume the project declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The compose key.
    pub name: String,
    /// Driver, `local` when absent.
    pub driver: Option<String>,
    /// Driver options.
    pub driver_opts: BTreeMap<String, String>,
    /// Created outside the agent; used by this name, never created or removed.
    pub external: Option<String>,
    /// Labels from the compose file.
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_a_service_shows_environment_keys_but_no_values() {
        let service = Service {
            name: "db".into(),
            environment: BTreeMap::from([("POSTGRES_PASSWORD".into(), "hunter2".into())]),
            ..Default::default()
        };
        let shown = format!("{service:?}");
        assert!(shown.contains("POSTGRES_PASSWORD"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
