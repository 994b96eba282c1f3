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

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::{BindSource, Mount, Project, Volume};

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
}

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
        }
    }

    /// Checks a compose project; `Err` names the compose key, what was refused and the setting
    /// that would allow it.
    pub fn check(&self, project: &Project) -> Result<(), String> {
        for service in &project.services {
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
    let remote = volume
        .driver_opts
        .get("type")
        .is_some_and(|t| matches!(t.as_str(), "nfs" | "nfs4" | "cifs" | "smb3"));
    let device = volume.driver_opts.get("device")?;
    (!remote && device.starts_with('/')).then_some(device.as_str())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{Network, Service};

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
