//! The device owner's policy: what a desired state may ask of the host.
//!
//! Whoever can commit to the WOS's repository writes every deployment document, so the device
//! decides what a document gets: bind mounts of host paths (an allow-list of prefixes), and
//! never the engine's socket or woa's own state, PKI and configuration directories unless their
//! own setting allows them; volumes whose driver options mount a host path count as bind
//! mounts; external networks and volumes (objects no deployment owns), and capabilities beyond
//! the engine's default set, need an allow-list. A refusal names the compose key and the
//! setting that would allow it.
//!
//! Like an admission check, the policy is applied when a document arrives: a refused
//! deployment fails, and whatever ran before keeps running.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::{BindSource, Mount, NetworkMode, Project, Service, Volume};

/// The `[policy]` section of `deploy.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Host paths apps may bind-mount: a bind source must be one of these or below one.
    pub host_paths: Vec<PathBuf>,
    /// Let apps bind-mount the engine's socket (or a directory holding it), which is root on
    /// the device.
    pub engine_socket: bool,
    /// Let apps bind-mount woa's own state, PKI and configuration directories (or a directory
    /// holding them): the local CA key in the PKI makes operator certificates.
    pub agent_dirs: bool,
    /// Engine networks, created outside woa, that apps may join as `external` networks.
    pub external_networks: Vec<String>,
    /// Engine volumes, created outside woa, that apps may use as `external` volumes.
    pub external_volumes: Vec<String>,
    /// Linux capabilities beyond the engine's default set that apps may add with `cap_add`
    /// (`SYS_ADMIN`, `NET_ADMIN`, `SYS_MODULE`…; `ALL` only if listed as `ALL`).
    pub capabilities: Vec<String>,
    /// Let apps run `privileged`: every device and capability of the host, no confinement.
    pub privileged: bool,
    /// Host namespaces apps may share: `network` (`network_mode: host`), `pid`, `ipc`, `uts`,
    /// `userns` (`userns_mode: host`).
    pub host_namespaces: Vec<String>,
    /// Host devices apps may map (`devices`), as paths or globs: `/dev/ttyUSB*`.
    pub devices: Vec<String>,
    /// Let apps add device cgroup rules (`device_cgroup_rules`), which open device numbers
    /// rather than paths.
    pub device_cgroup_rules: bool,
    /// Let apps reserve GPUs and other devices through the engine's device drivers
    /// (`deploy.resources.reservations.devices`).
    pub gpus: bool,
    /// Kernel parameters apps may set beyond the safe, namespaced ones, as names or globs:
    /// `net.core.*`.
    pub sysctls: Vec<String>,
    /// Let apps turn off confinement with `security_opt` (`seccomp=unconfined`,
    /// `apparmor=unconfined`, `label=disable`, `systempaths=unconfined`).
    pub unconfined: bool,
    /// OCI runtimes apps may ask for with `runtime`, beyond the engine's default (`runc`).
    pub runtimes: Vec<String>,
    /// More for particular deployments, by deployment id or application id: what a table
    /// here allows is added to what the settings above allow, for those deployments only.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, PolicyConfig>,
}

impl PolicyConfig {
    /// These settings with `more` added: lists joined, switches on when either is on.
    fn with(&self, more: &PolicyConfig) -> PolicyConfig {
        let join = |a: &[String], b: &[String]| [a, b].concat();
        PolicyConfig {
            host_paths: [self.host_paths.as_slice(), &more.host_paths].concat(),
            engine_socket: self.engine_socket || more.engine_socket,
            agent_dirs: self.agent_dirs || more.agent_dirs,
            external_networks: join(&self.external_networks, &more.external_networks),
            external_volumes: join(&self.external_volumes, &more.external_volumes),
            capabilities: join(&self.capabilities, &more.capabilities),
            privileged: self.privileged || more.privileged,
            host_namespaces: join(&self.host_namespaces, &more.host_namespaces),
            devices: join(&self.devices, &more.devices),
            device_cgroup_rules: self.device_cgroup_rules || more.device_cgroup_rules,
            gpus: self.gpus || more.gpus,
            sysctls: join(&self.sysctls, &more.sysctls),
            unconfined: self.unconfined || more.unconfined,
            runtimes: join(&self.runtimes, &more.runtimes),
            deployments: BTreeMap::new(),
        }
    }
}

/// Kernel parameters any app may set: namespaced to the container and harmless to the host
/// (the set Kubernetes calls safe).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// The capabilities the engine gives every container anyway (moby's default set): adding them
/// back after a `cap_drop` asks for nothing more of the host.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// A capability as compose and the engine accept it (`cap_sys_admin`, `CAP_SYS_ADMIN`,
/// `SYS_ADMIN`), in one spelling.
fn capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned()
}

/// Host paths that no prefix in `host_paths` allows by itself.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// The engine's socket, as the host and this process may name it.
    pub engine_sockets: Vec<PathBuf>,
    /// woa's own directories: state, PKI, configuration.
    pub agent_dirs: Vec<PathBuf>,
}

impl Protected {
    /// The engine socket paths (`DOCKER_HOST` when it names a Unix socket, and the usual
    /// `/var/run/docker.sock`, which Debian also reaches as `/run/docker.sock`) and `agent_dirs`.
    pub fn new(agent_dirs: impl IntoIterator<Item = PathBuf>) -> Protected {
        let mut engine_sockets = vec![
            PathBuf::from("/var/run/docker.sock"),
            PathBuf::from("/run/docker.sock"),
        ];
        if let Some(socket) = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
        {
            engine_sockets.push(socket);
        }
        Protected {
            engine_sockets,
            agent_dirs: agent_dirs.into_iter().collect(),
        }
    }
}

/// The policy in force: the owner's settings and the paths they protect, each path as written
/// and, where this process can resolve it, with symlinks followed.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    config: PolicyConfig,
    protected: Protected,
    host_paths: Vec<PathBuf>,
    engine_sockets: Vec<PathBuf>,
    agent_dirs: Vec<PathBuf>,
    /// `config.capabilities` in one spelling.
    capabilities: Vec<String>,
}

impl Policy {
    /// The policy of `config`, protecting `protected`.
    pub fn new(config: PolicyConfig, protected: Protected) -> Policy {
        Policy {
            host_paths: forms(&config.host_paths),
            engine_sockets: forms(&protected.engine_sockets),
            agent_dirs: forms(&protected.agent_dirs),
            capabilities: config.capabilities.iter().map(|c| capability(c)).collect(),
            config,
            protected,
        }
    }

    /// The policy for deployment `id` of application `application` (either may have a table
    /// of its own under `policy.deployments`).
    pub fn for_deployment(&self, id: &str, application: Option<&str>) -> Policy {
        let tables = [Some(id), application].into_iter().flatten();
        let mut config = self.config.clone();
        let mut specific = false;
        for table in tables.filter_map(|key| self.config.deployments.get(key)) {
            config = config.with(table);
            specific = true;
        }
        match specific {
            true => Policy::new(config, self.protected.clone()),
            false => self.clone(),
        }
    }

    /// The owner's settings, for the device's capabilities.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Checks a compose project; `Err` names the compose key, what was refused and the setting
    /// that would allow it.
    pub fn check(&self, project: &Project) -> Result<(), String> {
        for service in &project.services {
            self.check_host_access(service)?;
            for added in &service.cap_add {
                let cap = capability(added);
                let allowed = DEFAULT_CAPABILITIES.contains(&cap.as_str())
                    || self.capabilities.contains(&cap);
                if !allowed {
                    return Err(format!(
                        "services.{}.cap_add: capability {cap} is refused: allow it in policy.capabilities in deploy.toml",
                        service.name
                    ));
                }
            }
            for mount in &service.mounts {
                if let Mount::Bind {
                    source: BindSource::Host(path),
                    ..
                } = mount
                {
                    self.check_host_path(path).map_err(|why| {
                        format!(
                            "services.{}.volumes: bind mount of host path {path} is refused: {why}",
                            service.name
                        )
                    })?;
                }
            }
        }
        for volume in &project.volumes {
            if let Some(external) = &volume.external {
                check_external(
                    "volume",
                    &volume.name,
                    external,
                    &self.config.external_volumes,
                )?;
            } else if let Some(device) = host_device(volume) {
                self.check_host_path(device).map_err(|why| {
                    format!(
                        "volumes.{}.driver_opts.device: a volume mounting host path {device} is refused: {why}",
                        volume.name
                    )
                })?;
            }
        }
        for network in &project.networks {
            if let Some(external) = &network.external {
                check_external(
                    "network",
                    &network.name,
                    external,
                    &self.config.external_networks,
                )?;
            }
        }
        Ok(())
    }

    /// What a service asks of the host beyond mounts and capabilities: privileges, host
    /// namespaces, devices, kernel parameters, confinement and runtimes.
    fn check_host_access(&self, service: &Service) -> Result<(), String> {
        let refuse = |key: &str, what: String, setting: &str| {
            Err(format!(
                "services.{}.{key}: {what} is refused: allow it with policy.{setting} in deploy.toml",
                service.name
            ))
        };
        if service.privileged && !self.config.privileged {
            return refuse("privileged", "privileged mode".into(), "privileged = true");
        }
        let namespaces = &service.namespaces;
        let shared = [
            (
                "network_mode",
                "network",
                service.network_mode == Some(NetworkMode::Host),
            ),
            ("pid", "pid", namespaces.pid.as_deref() == Some("host")),
            ("ipc", "ipc", namespaces.ipc.as_deref() == Some("host")),
            ("uts", "uts", namespaces.uts.as_deref() == Some("host")),
            (
                "userns_mode",
                "userns",
                namespaces.userns.as_deref() == Some("host"),
            ),
        ];
        for (key, namespace, host) in shared {
            if host && !self.config.host_namespaces.iter().any(|n| n == namespace) {
                let setting = format!("host_namespaces = [\"{namespace}\"]");
                return refuse(key, format!("the host's {namespace} namespace"), &setting);
            }
        }
        for device in &service.devices {
            if !self
                .config
                .devices
                .iter()
                .any(|d| wildcard(d, &device.host))
            {
                let setting = format!("devices = [\"{}\"]", device.host);
                return refuse("devices", format!("host device {}", device.host), &setting);
            }
        }
        if !service.device_cgroup_rules.is_empty() && !self.config.device_cgroup_rules {
            let what = "device cgroup rules".into();
            return refuse("device_cgroup_rules", what, "device_cgroup_rules = true");
        }
        if !service.device_requests.is_empty() && !self.config.gpus {
            let key = "deploy.resources.reservations.devices";
            return refuse(key, "a device reservation (GPU)".into(), "gpus = true");
        }
        for name in service.sysctls.keys() {
            let allowed = SAFE_SYSCTLS.contains(&name.as_str())
                || self.config.sysctls.iter().any(|s| wildcard(s, name));
            if !allowed {
                let setting = format!("sysctls = [\"{name}\"]");
                return refuse("sysctls", format!("kernel parameter {name}"), &setting);
            }
        }
        for option in &service.security_opt {
            if unconfines(option) && !self.config.unconfined {
                return refuse("security_opt", format!("`{option}`"), "unconfined = true");
            }
        }
        if let Some(runtime) = &service.runtime
            && runtime != "runc"
            && !self.config.runtimes.contains(runtime)
        {
            let setting = format!("runtimes = [\"{runtime}\"]");
            return refuse("runtime", format!("runtime {runtime}"), &setting);
        }
        Ok(())
    }

    /// Why `path` may not be bound, if it may not.
    fn check_host_path(&self, path: &str) -> Result<(), String> {
        // Where this process sees the path, symlinks are followed too: a link below an allowed
        // prefix must not lead out of it. (When woa-deploy runs in a container it may not see
        // the host's paths; then the written path is all there is to check.)
        for form in &forms(&[PathBuf::from(path)]) {
            if !self.config.engine_socket
                && let Some(socket) = overlapping(form, &self.engine_sockets)
            {
                return Err(format!(
                    "it exposes the engine's socket {}, which is root on this device (allowed only by policy.engine_socket = true in deploy.toml)",
                    socket.display()
                ));
            }
            if !self.config.agent_dirs
                && let Some(dir) = overlapping(form, &self.agent_dirs)
            {
                return Err(format!(
                    "it exposes woa's own directory {} (allowed only by policy.agent_dirs = true in deploy.toml)",
                    dir.display()
                ));
            }
            if !self.host_paths.iter().any(|p| form.starts_with(p)) {
                return Err(if self.config.host_paths.is_empty() {
                    "host paths are not allowed on this device (allow a prefix in policy.host_paths in deploy.toml)".to_owned()
                } else {
                    format!(
                        "{} is not below policy.host_paths in deploy.toml",
                        form.display()
                    )
                });
            }
        }
        Ok(())
    }
}

/// Refuses `external` (the engine object a compose `kind` named `name` stands for) unless the
/// owner listed it in `allowed` (`policy.external_<kind>s`).
fn check_external(
    kind: &str,
    name: &str,
    external: &str,
    allowed: &[String],
) -> Result<(), String> {
    if allowed.iter().any(|a| a == external) {
        return Ok(());
    }
    Err(format!(
        "{kind}s.{name}.external: {kind} {external} was not made by woa and is refused: allow it in policy.external_{kind}s in deploy.toml"
    ))
}

/// The host path a volume of the `local` driver mounts (`driver_opts.device`), if any. Network
/// filesystems (`type: nfs`, `cifs`) name a remote share there, not a host path.
fn host_device(volume: &Volume) -> Option<&str> {
    if volume.driver.as_deref().is_some_and(|d| d != "local") {
        return None;
    }
    // `o: bind` mounts a host path whatever `type` says.
    let binds = (volume.driver_opts.get("o"))
        .is_some_and(|o| o.split(',').any(|o| matches!(o, "bind" | "rbind")));
    let remote = volume
        .driver_opts
        .get("type")
        .is_some_and(|t| matches!(t.as_str(), "nfs" | "nfs4" | "cifs" | "smb3"));
    let device = volume.driver_opts.get("device")?;
    // A relative device resolves against the engine's working directory, `/`.
    (binds || (!remote && device.starts_with('/'))).then_some(device.as_str())
}

/// The first of `protected` that `path` is, holds, or lies inside.
fn overlapping<'a>(path: &Path, protected: &'a [PathBuf]) -> Option<&'a Path> {
    protected
        .iter()
        .map(PathBuf::as_path)
        .find(|p| p.starts_with(path) || path.starts_with(p))
}

/// Each of `paths` normalised, and also with symlinks resolved where that differs.
fn forms(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut forms = Vec::new();
    for path in paths {
        let lexical = normalize(path);
        let resolved = std::fs::canonicalize(&lexical)
            .ok()
            .filter(|resolved| *resolved != lexical);
        forms.push(lexical);
        forms.extend(resolved);
    }
    forms
}

/// `path` made absolute and without `.`, `..` or repeated separators, as the engine reads it.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    normal
}

/// Whether a `security_opt` entry may loosen confinement: all but the forms known to keep it
/// (`no-new-privileges`, a named AppArmor profile, the SELinux user, role and level).
fn unconfines(option: &str) -> bool {
    let (key, value) = option.split_once(['=', ':']).unwrap_or((option, ""));
    let keeps = match key {
        "no-new-privileges" => matches!(value, "" | "true" | "false"),
        "apparmor" => !value.is_empty() && value != "unconfined",
        "label" => ["user:", "role:", "level:"]
            .iter()
            .any(|p| value.starts_with(p)),
        _ => false,
    };
    !keeps
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (`/dev/ttyUSB*`,
/// `net.core.*`); the patterns are the owner's own, so a small matcher does.
fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            let Some(tail) = text.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| wildcard(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::spec::{Device, DeviceRequest, Namespaces, Network, Service};

    fn policy(config: PolicyConfig) -> Policy {
        Policy::new(
            config,
            Protected {
                engine_sockets: vec!["/var/run/docker.sock".into(), "/run/docker.sock".into()],
                agent_dirs: vec!["/var/lib/woa-deploy".into(), "/etc/woa/pki".into()],
            },
        )
    }

    fn binding(path: &str) -> Project {
        Project {
            services: vec![Service {
                name: "web".into(),
                mounts: vec![Mount::Bind {
                    source: BindSource::Host(path.into()),
                    target: "/host".into(),
                    read_only: true,
                    bind_options: None,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn allowing(prefixes: &[&str]) -> PolicyConfig {
        PolicyConfig {
            host_paths: prefixes.iter().map(PathBuf::from).collect(),
            ..Default::default()
        }
    }

    fn asking(service: Service) -> Project {
        Project {
            services: vec![Service {
                name: "app".into(),
                ..service
            }],
            ..Default::default()
        }
    }

    /// Each way of reaching into the host, refused by default with its key and setting, and
    /// allowed by that setting.
    #[test]
    fn host_access_is_refused_by_default_and_allowed_by_its_own_setting() {
        let device = |host: &str| Device {
            host: host.into(),
            container: host.into(),
            permissions: "rwm".into(),
        };
        let cases: Vec<(Service, &str, PolicyConfig)> = vec![
            (
                Service {
                    privileged: true,
                    ..Default::default()
                },
                "services.app.privileged: privileged mode is refused: allow it with policy.privileged = true",
                PolicyConfig {
                    privileged: true,
                    ..Default::default()
                },
            ),
            (
                Service {
                    network_mode: Some(NetworkMode::Host),
                    ..Default::default()
                },
                "services.app.network_mode: the host's network namespace is refused: allow it with policy.host_namespaces = [\"network\"]",
                PolicyConfig {
                    host_namespaces: vec!["network".into()],
                    ..Default::default()
                },
            ),
            (
                Service {
                    namespaces: Namespaces {
                        pid: Some("host".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "services.app.pid: the host's pid namespace is refused",
                PolicyConfig {
                    host_namespaces: vec!["pid".into()],
                    ..Default::default()
                },
            ),
            (
                Service {
                    devices: vec![device("/dev/ttyUSB0")],
                    ..Default::default()
                },
                "services.app.devices: host device /dev/ttyUSB0 is refused: allow it with policy.devices = [\"/dev/ttyUSB0\"]",
                PolicyConfig {
                    devices: vec!["/dev/ttyUSB*".into()],
                    ..Default::default()
                },
            ),
            (
                Service {
                    device_requests: vec![DeviceRequest {
                        driver: Some("nvidia".into()),
                        count: Some(1),
                        device_ids: vec![],
                        capabilities: vec!["gpu".into()],
                        options: BTreeMap::new(),
                    }],
                    ..Default::default()
                },
                "services.app.deploy.resources.reservations.devices: a device reservation (GPU) is refused: allow it with policy.gpus = true",
                PolicyConfig {
                    gpus: true,
                    ..Default::default()
                },
            ),
            (
                Service {
                    sysctls: BTreeMap::from([("net.core.somaxconn".into(), "1024".into())]),
                    ..Default::default()
                },
                "services.app.sysctls: kernel parameter net.core.somaxconn is refused: allow it with policy.sysctls = [\"net.core.somaxconn\"]",
                PolicyConfig {
                    sysctls: vec!["net.core.*".into()],
                    ..Default::default()
                },
            ),
            (
                Service {
                    security_opt: vec!["seccomp:unconfined".into()],
                    ..Default::default()
                },
                "services.app.security_opt: `seccomp:unconfined` is refused: allow it with policy.unconfined = true",
                PolicyConfig {
                    unconfined: true,
                    ..Default::default()
                },
            ),
            (
                Service {
                    runtime: Some("nvidia".into()),
                    ..Default::default()
                },
                "services.app.runtime: runtime nvidia is refused: allow it with policy.runtimes = [\"nvidia\"]",
                PolicyConfig {
                    runtimes: vec!["nvidia".into()],
                    ..Default::default()
                },
            ),
        ];
        for (service, refusal, allowing) in cases {
            let project = asking(service);
            let err = policy(PolicyConfig::default()).check(&project).unwrap_err();
            assert!(err.starts_with(refusal), "{err}");
            policy(allowing).check(&project).unwrap();
        }
    }

    #[test]
    fn what_stays_inside_the_container_needs_no_setting() {
        let project = asking(Service {
            sysctls: BTreeMap::from([("net.ipv4.tcp_syncookies".into(), "1".into())]),
            security_opt: vec![
                "no-new-privileges:true".into(),
                "apparmor=docker-default".into(),
            ],
            runtime: Some("runc".into()),
            namespaces: Namespaces {
                ipc: Some("shareable".into()),
                ..Default::default()
            },
            network_mode: Some(NetworkMode::None),
            ..Default::default()
        });
        policy(PolicyConfig::default()).check(&project).unwrap();
        let gpio = asking(Service {
            devices: vec![Device {
                host: "/dev/gpiomem".into(),
                container: "/dev/gpiomem".into(),
                permissions: "rw".into(),
            }],
            ..Default::default()
        });
        let owner = PolicyConfig {
            devices: vec!["/dev/ttyUSB*".into()],
            ..Default::default()
        };
        assert!(policy(owner).check(&gpio).is_err());
    }

    #[test]
    fn a_deployment_or_application_table_adds_to_the_device_wide_settings() {
        let project = asking(Service {
            network_mode: Some(NetworkMode::Host),
            ..Default::default()
        });
        let owner = PolicyConfig {
            devices: vec!["/dev/ttyUSB*".into()],
            deployments: BTreeMap::from([(
                "historian".to_owned(),
                PolicyConfig {
                    host_namespaces: vec!["network".into()],
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let device = policy(owner);
        assert!(device.check(&project).is_err());
        assert!(device.for_deployment("d-1", None).check(&project).is_err());
        device
            .for_deployment("d-1", Some("historian"))
            .check(&project)
            .unwrap();
        device
            .for_deployment("historian", None)
            .check(&project)
            .unwrap();
        let merged = device.for_deployment("d-1", Some("historian"));
        assert_eq!(merged.config().devices, ["/dev/ttyUSB*"]);
    }

    #[test]
    fn only_the_security_options_known_to_keep_confinement_pass() {
        for keeps in [
            "no-new-privileges",
            "no-new-privileges:true",
            "no-new-privileges=false",
            "apparmor=docker-default",
            "apparmor:my-profile",
            "label=level:s0:c100,c200",
            "label:user:system_u",
        ] {
            assert!(!unconfines(keeps), "{keeps}");
        }
        for loosens in [
            "seccomp=unconfined",
            "seccomp:unconfined",
            r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#,
            "apparmor=unconfined",
            "apparmor:unconfined",
            "label=disable",
            "label:disable",
            "disable",
            "label=type:spc_t",
            "systempaths=unconfined",
            "writable-cgroups=true",
        ] {
            assert!(unconfines(loosens), "{loosens}");
        }
    }

    #[test]
    fn a_volume_that_binds_is_a_bind_whatever_its_type() {
        let volume = |opts: &[(&str, &str)]| Volume {
            name: "v".into(),
            driver_opts: (opts.iter())
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        };
        let nfs_bind = volume(&[("type", "nfs"), ("o", "bind"), ("device", "/")]);
        assert_eq!(host_device(&nfs_bind), Some("/"));
        let relative = volume(&[("type", "none"), ("o", "bind"), ("device", "etc")]);
        assert_eq!(host_device(&relative), Some("etc"));
        let share = volume(&[
            ("type", "nfs"),
            ("o", "addr=10.0.0.1"),
            ("device", ":/export"),
        ]);
        assert_eq!(host_device(&share), None);
    }

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(wildcard("/dev/ttyUSB*", "/dev/ttyUSB0"));
        assert!(wildcard("/dev/ttyUSB*", "/dev/ttyUSB"));
        assert!(!wildcard("/dev/ttyUSB*", "/dev/ttyACM0"));
        assert!(wildcard("net.*.somaxconn", "net.core.somaxconn"));
        assert!(wildcard("/dev/video0", "/dev/video0"));
        assert!(!wildcard("/dev/video0", "/dev/video01"));
        assert!(wildcard("*", "anything"));
    }

    #[test]
    fn host_binds_are_refused_by_default_naming_the_key_and_the_setting() {
        let err = policy(PolicyConfig::default())
            .check(&binding("/"))
            .unwrap_err();
        assert!(
            err.starts_with("services.web.volumes: bind mount of host path / is refused"),
            "{err}"
        );
        assert!(err.contains("policy.engine_socket"), "{err}");
        let err = policy(PolicyConfig::default())
            .check(&binding("/srv/data"))
            .unwrap_err();
        assert!(err.contains("policy.host_paths"), "{err}");
    }

    #[test]
    fn paths_below_an_allowed_prefix_pass_and_others_do_not() {
        let p = policy(allowing(&["/srv/data", "/dev/shm/"]));
        for ok in [
            "/srv/data",
            "/srv/data/app",
            "/srv//data/./app/",
            "/dev/shm",
        ] {
            assert!(p.check(&binding(ok)).is_ok(), "{ok}");
        }
        for refused in ["/srv", "/srv/database", "/srv/data/../etc", "/etc/passwd"] {
            let err = p.check(&binding(refused)).unwrap_err();
            assert!(
                err.contains("not below policy.host_paths"),
                "{refused}: {err}"
            );
        }
    }

    #[test]
    fn the_engine_socket_and_agent_dirs_need_their_own_setting() {
        let everything = allowing(&["/"]);
        for (path, setting) in [
            ("/var/run/docker.sock", "policy.engine_socket"),
            ("/run/docker.sock", "policy.engine_socket"),
            ("/var/run", "policy.engine_socket"),
            ("/", "policy.engine_socket"),
            ("/etc/woa/pki/ca-key.pem", "policy.agent_dirs"),
            ("/etc/woa", "policy.agent_dirs"),
            ("/var/lib/woa-deploy/desired.json", "policy.agent_dirs"),
        ] {
            let err = policy(everything.clone())
                .check(&binding(path))
                .unwrap_err();
            assert!(err.contains(setting), "{path}: {err}");
        }
        let socket = PolicyConfig {
            engine_socket: true,
            ..allowing(&["/var/run/docker.sock"])
        };
        assert!(
            policy(socket)
                .check(&binding("/var/run/docker.sock"))
                .is_ok()
        );
        let dirs = PolicyConfig {
            agent_dirs: true,
            ..allowing(&["/etc/woa"])
        };
        assert!(policy(dirs).check(&binding("/etc/woa/pki")).is_ok());
        // Allowed by their setting, but still only below an allowed prefix.
        let unlisted = PolicyConfig {
            engine_socket: true,
            ..Default::default()
        };
        let err = policy(unlisted)
            .check(&binding("/run/docker.sock"))
            .unwrap_err();
        assert!(err.contains("policy.host_paths"), "{err}");
    }

    #[test]
    fn capabilities_beyond_the_default_set_need_the_allow_list() {
        let adding = |caps: &[&str]| Project {
            services: vec![Service {
                name: "web".into(),
                cap_add: caps.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let default = policy(PolicyConfig::default());
        assert!(default.check(&adding(&["CHOWN", "cap_net_raw"])).is_ok());
        for refused in ["SYS_ADMIN", "cap_sys_module", "ALL"] {
            let err = default.check(&adding(&[refused])).unwrap_err();
            assert!(
                err.starts_with("services.web.cap_add: capability")
                    && err.contains("policy.capabilities"),
                "{refused}: {err}"
            );
        }
        let net_admin = policy(PolicyConfig {
            capabilities: vec!["CAP_NET_ADMIN".into()],
            ..Default::default()
        });
        assert!(net_admin.check(&adding(&["net_admin"])).is_ok());
        assert!(net_admin.check(&adding(&["SYS_ADMIN"])).is_err());
    }

    #[test]
    fn a_symlink_leading_out_of_an_allowed_prefix_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::os::unix::fs::symlink("/usr", allowed.join("out")).unwrap();
        let p = policy(allowing(&[allowed.to_str().unwrap()]));
        let err = p
            .check(&binding(allowed.join("out").to_str().unwrap()))
            .unwrap_err();
        assert!(err.contains("/usr is not below policy.host_paths"), "{err}");
    }

    fn volume(driver: Option<&str>, opts: &[(&str, &str)], external: Option<&str>) -> Project {
        Project {
            volumes: vec![Volume {
                name: "data".into(),
                driver: driver.map(Into::into),
                driver_opts: opts
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                external: external.map(Into::into),
                labels: BTreeMap::new(),
                custom_name: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_volume_binding_a_host_path_counts_as_a_bind_mount() {
        let bind = [("type", "none"), ("o", "bind"), ("device", "/")];
        let err = policy(PolicyConfig::default())
            .check(&volume(Some("local"), &bind, None))
            .unwrap_err();
        assert!(
            err.starts_with(
                "volumes.data.driver_opts.device: a volume mounting host path / is refused"
            ),
            "{err}"
        );
        let err = policy(PolicyConfig::default())
            .check(&volume(
                None,
                &[("type", "ext4"), ("device", "/dev/sda1")],
                None,
            ))
            .unwrap_err();
        assert!(err.contains("policy.host_paths"), "{err}");
        let allowed = policy(allowing(&["/srv"]));
        let srv = [("type", "none"), ("o", "bind"), ("device", "/srv/x")];
        assert!(allowed.check(&volume(None, &srv, None)).is_ok());
        // Remote shares, tmpfs and plain volumes are no host paths.
        for opts in [
            &[
                ("type", "nfs"),
                ("o", "addr=10.0.0.1"),
                ("device", ":/export"),
            ][..],
            &[("type", "cifs"), ("device", "//server/share")][..],
            &[("type", "tmpfs"), ("device", "tmpfs")][..],
            &[][..],
        ] {
            assert!(
                policy(PolicyConfig::default())
                    .check(&volume(None, opts, None))
                    .is_ok(),
                "{opts:?}"
            );
        }
    }

    #[test]
    fn external_networks_and_volumes_need_the_allow_list() {
        let project = Project {
            networks: vec![Network {
                name: "host".into(),
                driver: None,
                internal: false,
                external: Some("host".into()),
                labels: BTreeMap::new(),
                custom_name: None,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = policy(PolicyConfig::default()).check(&project).unwrap_err();
        assert!(
            err.starts_with("networks.host.external: network host"),
            "{err}"
        );
        assert!(err.contains("policy.external_networks"), "{err}");
        let allowed = PolicyConfig {
            external_networks: vec!["host".into()],
            ..Default::default()
        };
        assert!(policy(allowed).check(&project).is_ok());

        let err = policy(PolicyConfig::default())
            .check(&volume(None, &[], Some("woa_pki")))
            .unwrap_err();
        assert!(err.contains("policy.external_volumes"), "{err}");
        let allowed = PolicyConfig {
            external_volumes: vec!["woa_pki".into()],
            ..Default::default()
        };
        assert!(
            policy(allowed)
                .check(&volume(None, &[], Some("woa_pki")))
                .is_ok()
        );
    }
}
