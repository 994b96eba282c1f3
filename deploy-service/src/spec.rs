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
///
/// Keys added after the first release are left out of the stored form while they are unset,
/// so a service that does not use them keeps its hash and its container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    pub environment: Environment,
    /// Published ports.
    pub ports: Vec<Port>,
    /// Volume, bind and tmpfs mounts.
    pub mounts: Vec<Mount>,
    /// Networks the container joins; `default` when the file names none (and none with a
    /// `network_mode`).
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
    /// Memory limit in bytes (`mem_limit` or `deploy.resources.limits.memory`).
    pub mem_limit: Option<i64>,
    /// CPU limit in billionths of a CPU (compose `cpus: 1.5` is 1_500_000_000).
    pub nano_cpus: Option<i64>,
    /// Log driver and its options.
    pub logging: Option<Logging>,
    /// The container's own name (`container_name`), instead of the one the agent derives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Host name inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Domain name inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// MAC address on the first network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Ports exposed to other containers only (`expose`), as `port/protocol`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// The container's network namespace instead of project networks (`network_mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<NetworkMode>,
    /// Other services reachable under extra names (`links`: `service` or `service:alias`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// DNS search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// DNS resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_opt: Vec<String>,
    /// Extra `/etc/hosts` entries, as `host:address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Full access to the host's devices and kernel (`privileged`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Host devices mapped into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Device cgroup rules, e.g. `c 188:* rmw`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    /// GPUs and other devices reserved through the engine's device drivers
    /// (`deploy.resources.reservations.devices`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_requests: Vec<DeviceRequest>,
    /// Security options, e.g. `no-new-privileges:true`, `apparmor=profile`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// Kernel parameters set in the container's namespaces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Namespaces shared with the host or another service: `pid`, `ipc`, `uts`, `userns_mode`.
    #[serde(default, skip_serializing_if = "Namespaces::is_empty")]
    pub namespaces: Namespaces,
    /// The OCI runtime, e.g. `runc`, `nvidia`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Keep stdin open (`stdin_open`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    /// Allocate a terminal (`tty`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Run an init process as PID 1 (`init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// The image platform, e.g. `linux/arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// When the image is pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// The signal that stops the container (`stop_signal`), `SIGTERM` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long a stop waits before killing, in seconds (`stop_grace_period`); 10 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_s: Option<i64>,
    /// Resource limits beyond memory and CPUs.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Supplementary groups of the container's user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    /// tmpfs mounts given as `tmpfs:` entries: path and the options compose passes on
    /// (`rw,noexec,nosuid,size=64m`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tmpfs: BTreeMap<String, String>,
    /// OCI annotations of the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Files put into the container before it starts (`secrets`, `configs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ContainerFile>,
    /// Storage driver options of the container's writable layer, e.g. `size: 1G`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_opt: BTreeMap<String, String>,
    /// How many containers run this service (`scale`, `deploy.replicas`); one when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

impl Service {
    /// The keys its containers are named by: the service name, then `NAME_2`, `NAME_3`… for
    /// further replicas, so scaling up or down leaves the first container as it is.
    pub fn replica_keys(&self) -> impl Iterator<Item = String> + '_ {
        (1..=self.replicas.unwrap_or(1)).map(|n| match n {
            1 => self.name.clone(),
            n => format!("{}_{n}", self.name),
        })
    }
}

/// A file put into a container before it starts: a compose secret or config.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFile {
    /// Absolute path in the container.
    pub target: String,
    /// The content.
    pub content: Vec<u8>,
    /// Owner and group ids; root when absent.
    pub uid: Option<u32>,
    /// See `uid`.
    pub gid: Option<u32>,
    /// Permission bits.
    pub mode: u32,
}

// By hand: secrets are in `content`.
impl std::fmt::Debug for ContainerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerFile")
            .field("target", &self.target)
            .field("bytes", &self.content.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish_non_exhaustive()
    }
}

/// A service's environment: values are often secrets, so printing it shows only the keys.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Environment(pub BTreeMap<String, String>);

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl std::ops::Deref for Environment {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Environment {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<BTreeMap<String, String>> for Environment {
    fn from(map: BTreeMap<String, String>) -> Self {
        Environment(map)
    }
}

/// A service's `network_mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The host's network stack.
    Host,
    /// No network but loopback.
    None,
    /// The engine's default bridge.
    Bridge,
    /// The network stack of another service of the project.
    Service(String),
}

/// Namespaces a container shares instead of getting its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    /// `pid`: `host` or `service:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// `ipc`: `host`, `shareable`, `private`, `none` or `service:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    /// `uts`: `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<String>,
    /// `userns_mode`: `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<String>,
}

impl Namespaces {
    fn is_empty(&self) -> bool {
        *self == Namespaces::default()
    }
}

/// A host device mapped into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device on the host, e.g. `/dev/ttyUSB0`.
    pub host: String,
    /// Where it appears in the container.
    pub container: String,
    /// cgroup permissions: some of `r`, `w`, `m`.
    pub permissions: String,
}

/// Devices reserved through an engine device driver (`capabilities: [gpu]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRequest {
    /// The driver, e.g. `nvidia`; the engine picks one when empty.
    pub driver: Option<String>,
    /// How many (-1: all); unused when `device_ids` is given.
    pub count: Option<i64>,
    /// Particular devices.
    pub device_ids: Vec<String>,
    /// Capabilities the devices must have, e.g. `gpu`.
    pub capabilities: Vec<String>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
}

/// When an image is pulled; ordered from the least eager to the most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Never: the image must be on the device.
    Never,
    /// When the engine lacks it (the default).
    Missing,
    /// On every apply of a release that changes the container.
    Always,
}

/// Resource limits and reservations other than memory and CPU limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Most processes (`pids_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// Memory plus swap in bytes; -1 for unlimited swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memswap_limit: Option<i64>,
    /// Memory soft limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_reservation: Option<i64>,
    /// Size of `/dev/shm` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<i64>,
    /// Relative CPU weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
    /// CPUs the container may run on, e.g. `0-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// OOM killer preference, -1000 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i64>,
    /// Process limits (`ulimits`): name, soft, hard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<(String, i64, i64)>,
}

impl Resources {
    fn is_empty(&self) -> bool {
        *self == Resources::default()
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
        /// Options only the engine's `Binds` form takes, comma-separated: SELinux
        /// relabelling (`z` shared, `Z` private) and mount propagation (`rslave`, `shared`...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bind_options: Option<String>,
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
    /// The deployment's own data directory for a relative path the package does not ship
    /// (absolute, under the agent's state directory); it outlives releases.
    Data(String),
}

/// A network the container joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network's compose key.
    pub network: String,
    /// Extra DNS names of the container on that network (the service name is always one).
    pub aliases: Vec<String>,
    /// A fixed IPv4 address on that network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// A fixed IPv6 address on that network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
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
    /// Time between checks during the start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval_ns: Option<i64>,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The compose key.
    pub name: String,
    /// Driver, `bridge` when absent.
    pub driver: Option<String>,
    /// Not connected to the outside.
    pub internal: bool,
    /// Driver options, e.g. macvlan's `parent`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Address pools; the engine picks one when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipam: Vec<IpamPool>,
    /// The IPAM driver; the engine's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_driver: Option<String>,
    /// IPv6 as well as IPv4.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_ipv6: bool,
    /// Created outside the agent; used by this name, never created or removed.
    pub external: Option<String>,
    /// Labels from the compose file.
    pub labels: BTreeMap<String, String>,
    /// The engine name the file gives it (`name`), instead of the one the agent derives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_name: Option<String>,
}

/// An address pool of a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPool {
    /// e.g. `10.77.0.0/16`.
    pub subnet: Option<String>,
    /// The part of the subnet containers get addresses from.
    pub ip_range: Option<String>,
    /// The gateway address.
    pub gateway: Option<String>,
    /// Addresses the engine must not hand out, by host name.
    pub aux_addresses: BTreeMap<String, String>,
}

/// A named volume the project declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The engine name the file gives it (`name`), instead of the one the agent derives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_a_service_shows_environment_keys_but_no_values() {
        let service = Service {
            name: "db".into(),
            environment: BTreeMap::from([("POSTGRES_PASSWORD".into(), "hunter2".into())]).into(),
            ..Default::default()
        };
        let shown = format!("{service:?}");
        assert!(shown.contains("POSTGRES_PASSWORD"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
