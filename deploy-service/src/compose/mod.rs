//! Turns one compose file into a validated [`Project`].
//!
//! The typed model is our own rather than the `docker-compose-types` crate, because that crate
//! accepts every compose key (unknown ones land in catch-all maps) and pins the deprecated
//! `serde_yaml`, while this device must refuse, by key path, each key it cannot honour.
//!
//! Loading runs in stages on the YAML tree: parse, apply `<<` merge keys, merge in `include`d
//! files and `extends` bases, drop `x-` extension keys, interpolate string values, then deserialise into the strict model and resolve it
//! against the package (env files, bind sources) and itself (declared networks and volumes,
//! dependencies).

mod extend;
mod interpolate;
mod model;
mod syntax;

pub(crate) use syntax::parse_bytes;

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

use crate::error::{Error, Result};
use crate::spec::{
    BindSource, Condition, Dependency, DeviceRequest, Healthcheck, IpamPool, Logging, Mount,
    Namespaces, Network, NetworkAttachment, NetworkMode, Project, PullPolicy, Resources, Service,
    Volume,
};
use model::{
    ByteSize, Command, ComposeFile, Cpus, DependsOn, DeployDef, DeviceEntry, Duration, Entries,
    External, Flag, HealthTest, Integer, LoggingDef, MountEntry, NetworkDef, OneOrMany, Restart,
    ServiceDef, ServiceNetworks, SwapSize, Text, TmpfsEntry, UlimitDef, VolumeDef,
};
use syntax::MountDef;

/// The network services join when they name none.
const DEFAULT_NETWORK: &str = "default";

/// Loads the compose file `file` (a package-relative path) with contents `yaml` into a
/// [`Project`].
///
/// Interpolation sees only `variables` and a `.env` file next to the compose file in
/// `package_files` (`variables` win); the process environment is never read. `env_file` and
/// relative bind sources resolve against the compose file's directory and must stay inside the
/// package. Every compose key this device does not support is an error naming its key path.
pub fn load(
    file: &str,
    yaml: &[u8],
    variables: &BTreeMap<String, String>,
    package_files: &BTreeMap<String, Vec<u8>>,
) -> Result<Project> {
    load_project(file, yaml, variables, package_files).map_err(|message| Error::Compose {
        file: file.to_owned(),
        message,
    })
}

fn load_project(
    file: &str,
    yaml: &[u8],
    variables: &BTreeMap<String, String>,
    package_files: &BTreeMap<String, Vec<u8>>,
) -> Result<Project, String> {
    let dir = syntax::parent_dir(file);
    let environment = project_environment(dir, variables, package_files)?;
    let mut tree: Value =
        serde_yaml_ng::from_slice(yaml).map_err(|error| format!("invalid YAML: {error}"))?;
    tree.apply_merge()
        .map_err(|error| format!("invalid YAML merge key: {error}"))?;
    if tree.is_null() {
        return Err("the file is empty".to_owned());
    }
    extend::include(&mut tree, dir, package_files, 0)?;
    extend::extends(&mut tree, dir, package_files)?;
    strip_extensions(&mut tree, Level::Object);
    interpolate::interpolate_tree(&mut tree, &environment)?;
    let compose: ComposeFile = serde_path_to_error::deserialize(tree).map_err(describe_error)?;
    Resolver {
        dir,
        environment: &environment,
        package_files,
    }
    .project(compose)
}

/// The interpolation variables: the `.env` file next to the compose file, overridden by the
/// deployment's variables.
fn project_environment(
    dir: &str,
    variables: &BTreeMap<String, String>,
    package_files: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut environment = BTreeMap::new();
    let dot_env = syntax::package_path(dir, ".env").unwrap_or_else(|| ".env".to_owned());
    if let Some(bytes) = package_files.get(&dot_env) {
        let text = std::str::from_utf8(bytes).map_err(|_| format!("{dot_env}: not valid UTF-8"))?;
        let entries = syntax::parse_env_file(text, variables)
            .map_err(|reason| format!("{dot_env}: {reason}"))?;
        for (key, value) in entries {
            // A bare `KEY` in `.env` has nothing to take its value from.
            if let Some(value) = value {
                environment.insert(key, value);
            }
        }
    }
    environment.extend(variables.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(environment)
}

/// What the keys of a YAML mapping are, which decides whether `x-` keys in it are extensions.
#[derive(Clone, Copy)]
enum Level {
    /// Keys are compose's own; `x-` keys are extensions.
    Object,
    /// Keys are names the file chooses (services, networks, volumes, dependencies).
    Names,
    /// Keys and values are user data (environment, labels, options), kept verbatim.
    FreeForm,
}

/// Removes `x-` extension keys wherever compose's own keys are expected; compose ignores them
/// by specification. Under user-chosen keys (a service named `x-api`, an `x-trace` label) they
/// are data and stay.
fn strip_extensions(value: &mut Value, level: Level) {
    match value {
        Value::Mapping(mapping) => {
            if matches!(level, Level::Object) {
                mapping.retain(|key, _| !key.as_str().is_some_and(|key| key.starts_with("x-")));
            }
            for (key, child) in mapping.iter_mut() {
                let child_level = match level {
                    Level::FreeForm => Level::FreeForm,
                    Level::Names => Level::Object,
                    Level::Object => match key.as_str() {
                        Some("environment" | "labels" | "driver_opts" | "options") => {
                            Level::FreeForm
                        }
                        Some("services" | "networks" | "volumes" | "depends_on") => Level::Names,
                        _ => Level::Object,
                    },
                };
                strip_extensions(child, child_level);
            }
        }
        Value::Sequence(items) => {
            let item_level = match level {
                Level::Names => Level::Object,
                other => other,
            };
            for item in items {
                strip_extensions(item, item_level);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Tagged(_) => {}
    }
}

/// Words a deserialisation error as `key.path: reason`, turning serde's unknown-field error
/// into `key.path.key: unsupported key`.
fn describe_error(error: serde_path_to_error::Error<serde_yaml_ng::Error>) -> String {
    let path = error.path().to_string();
    let reason = error.inner().to_string();
    // The path usually already ends at the unknown key; append it only when it does not.
    let at = |key: &str| {
        if path == key || path.ends_with(&format!(".{key}")) {
            path.clone()
        } else if path == "." {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    let unknown = reason
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key);
    match unknown {
        Some("build") => format!(
            "{}: unsupported key: this device does not build images; push the image to a registry and give it as `image`",
            at("build")
        ),
        Some(key) => format!("{}: unsupported key", at(key)),
        None if path == "." => reason,
        None => format!("{path}: {reason}"),
    }
}

/// Resolves the typed model against the package and the variables.
struct Resolver<'a> {
    /// The compose file's directory in the package (`""` at the root).
    dir: &'a str,
    /// The interpolation variables, which also fill bare environment keys.
    environment: &'a BTreeMap<String, String>,
    package_files: &'a BTreeMap<String, Vec<u8>>,
}

impl Resolver<'_> {
    fn project(&self, compose: ComposeFile) -> Result<Project, String> {
        let mut networks = Vec::new();
        for (name, definition) in compose.networks.map(|n| n.0).unwrap_or_default() {
            check_name("networks", &name)?;
            networks.push(network(name, definition)?);
        }
        let mut volumes = Vec::new();
        for (name, definition) in compose.volumes.map(|v| v.0).unwrap_or_default() {
            check_name("volumes", &name)?;
            volumes.push(volume(name, definition)?);
        }
        let definitions = compose.services.map(|s| s.0).unwrap_or_default();
        if definitions.is_empty() {
            return Err("services: the file defines no services".to_owned());
        }
        // As `docker compose up` with COMPOSE_PROFILES: a service with profiles runs only when
        // one of them is active.
        let active: BTreeSet<&str> = (self.environment.get("COMPOSE_PROFILES"))
            .map(|p| p.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let definitions: Vec<(String, ServiceDef)> = (definitions.into_iter())
            .filter(|(_, d)| {
                let profiles = d.profiles.as_deref().unwrap_or_default();
                profiles.is_empty() || profiles.iter().any(|p| active.contains(p.as_str()))
            })
            .collect();
        if definitions.is_empty() {
            return Err("services: no service runs without a profile, and COMPOSE_PROFILES names none of theirs".to_owned());
        }
        let declared = Declared {
            files: Sources {
                secrets: self.file_sources("secrets", compose.secrets)?,
                configs: self.file_sources("configs", compose.configs)?,
            },
            networks: networks.iter().map(|n| n.name.as_str()).collect(),
            volumes: volumes.iter().map(|v| v.name.as_str()).collect(),
            services: definitions.iter().map(|(name, _)| name.as_str()).collect(),
        };
        let mut services = Vec::new();
        let mut anonymous = Vec::new();
        for (name, definition) in &definitions {
            check_name("services", name)?;
            services.push(self.service(name, definition, &declared, &mut anonymous)?);
        }
        link_aliases(&mut services);
        check_dependency_cycles(&services)?;
        check_replica_keys(&services)?;
        volumes.extend(anonymous.into_iter().map(|name| Volume {
            name,
            driver: None,
            driver_opts: BTreeMap::new(),
            external: None,
            labels: BTreeMap::new(),
            custom_name: None,
        }));

        let uses_default = services
            .iter()
            .flat_map(|service| &service.networks)
            .any(|attachment| attachment.network == DEFAULT_NETWORK);
        if uses_default && !networks.iter().any(|n| n.name == DEFAULT_NETWORK) {
            networks.insert(0, network(DEFAULT_NETWORK.to_owned(), None)?);
        }
        Ok(Project {
            services,
            networks,
            volumes,
        })
    }

    fn service(
        &self,
        name: &str,
        definition: &ServiceDef,
        declared: &Declared<'_>,
        anonymous: &mut Vec<String>,
    ) -> Result<Service, String> {
        let path = format!("services.{name}");
        let image = definition
            .image
            .clone()
            .filter(|image| !image.trim().is_empty())
            .ok_or_else(|| {
                format!("{path}.image: required (this device pulls images, it does not build them)")
            })?;
        let mut mounts = Vec::new();
        for (index, MountEntry(mount)) in definition.volumes.iter().flatten().enumerate() {
            let mount = match mount {
                // A volume of its own, named after the service and path: it outlives the
                // container, as Compose keeps anonymous volumes when it recreates one.
                MountDef::Anonymous { target } => {
                    let volume = anonymous_volume(name, target);
                    anonymous.push(volume.clone());
                    Mount::Volume {
                        source: volume,
                        target: target.clone(),
                        read_only: false,
                    }
                }
                mount => self
                    .mount(mount, declared)
                    .map_err(|reason| format!("{path}.volumes[{index}]: {reason}"))?,
            };
            mounts.push(mount);
        }
        let tmpfs = (definition.tmpfs.iter().flat_map(|t| &t.0))
            .map(|TmpfsEntry(target, options)| (target.clone(), options.clone()))
            .collect();
        let deploy = definition.deploy.as_ref();
        let limits = deploy
            .and_then(|d| d.resources.as_ref())
            .and_then(|r| r.limits.as_ref());
        let reservations = deploy
            .and_then(|d| d.resources.as_ref())
            .and_then(|r| r.reservations.as_ref());
        let replicas = replicas(&path, definition, deploy)?;
        let network_mode = network_mode(&path, definition, declared)?;
        let mut depends_on = dependencies(&path, definition.depends_on.as_ref(), declared)?;
        // What `network_mode`, `pid` or `ipc` share and what `links` reach must run first.
        let shared = [
            network_mode.as_ref().and_then(|m| match m {
                NetworkMode::Service(s) => Some(s.as_str()),
                _ => None,
            }),
            (definition.pid.as_deref()).and_then(|p| p.strip_prefix("service:")),
            (definition.ipc.as_deref()).and_then(|p| p.strip_prefix("service:")),
        ];
        let linked = definition.links.iter().flatten().map(|l| link_parts(l).0);
        for service in shared.into_iter().flatten().chain(linked) {
            if !declared.services.contains(service) {
                return Err(format!("{path}: unknown service {service}"));
            }
            if !depends_on.iter().any(|d| d.service == service) {
                depends_on.push(Dependency {
                    service: service.to_owned(),
                    condition: Condition::Started,
                });
            }
        }
        Ok(Service {
            name: name.to_owned(),
            image,
            command: definition
                .command
                .as_ref()
                .map(|Command(words)| words.clone()),
            entrypoint: definition
                .entrypoint
                .as_ref()
                .map(|Command(words)| words.clone()),
            environment: self.service_environment(&path, definition)?.into(),
            ports: definition
                .ports
                .iter()
                .flatten()
                .flat_map(|entry| entry.0.iter().cloned())
                .collect(),
            mounts,
            networks: match network_mode {
                Some(_) => Vec::new(),
                None => attachments(&path, definition.networks.as_ref(), declared)?,
            },
            depends_on,
            healthcheck: definition
                .healthcheck
                .as_ref()
                .map(|healthcheck| self::healthcheck(&path, healthcheck))
                .transpose()?,
            // As in Compose v2, `deploy.restart_policy` wins over `restart`.
            restart: match (
                &definition.restart,
                deploy.and_then(|d| d.restart_policy.as_ref()),
            ) {
                (_, Some(policy)) => Some(restart_policy(&path, policy)?),
                (Some(Restart(policy)), None) => Some(policy.clone()),
                (None, None) => None,
            },
            labels: labels(definition.labels.as_ref()),
            user: definition.user.as_ref().map(|Text(user)| user.clone()),
            working_dir: definition.working_dir.clone(),
            cap_add: definition.cap_add.clone().unwrap_or_default(),
            cap_drop: definition.cap_drop.clone().unwrap_or_default(),
            read_only: definition
                .read_only
                .as_ref()
                .is_some_and(|Flag(flag)| *flag),
            mem_limit: (definition.mem_limit.as_ref())
                .or(limits.and_then(|l| l.memory.as_ref()))
                .map(|ByteSize(bytes)| *bytes),
            nano_cpus: (definition.cpus.as_ref())
                .or(limits.and_then(|l| l.cpus.as_ref()))
                .map(|Cpus(nanos)| *nanos),
            logging: definition.logging.as_ref().map(logging),
            container_name: definition.container_name.clone(),
            hostname: definition.hostname.clone(),
            domainname: definition.domainname.clone(),
            mac_address: definition.mac_address.clone(),
            expose: (definition.expose.iter().flatten())
                .map(|Text(port)| expose(&path, port))
                .collect::<Result<_, _>>()?,
            network_mode,
            links: definition.links.clone().unwrap_or_default(),
            dns: one_or_many(definition.dns.as_ref()),
            dns_search: one_or_many(definition.dns_search.as_ref()),
            dns_opt: definition.dns_opt.clone().unwrap_or_default(),
            extra_hosts: extra_hosts(&path, definition.extra_hosts.as_ref())?,
            privileged: flag(&definition.privileged),
            devices: (definition.devices.iter().flatten())
                .map(|DeviceEntry(device)| device.clone())
                .collect(),
            device_cgroup_rules: definition.device_cgroup_rules.clone().unwrap_or_default(),
            device_requests: (reservations
                .and_then(|r| r.devices.as_ref())
                .into_iter()
                .flatten())
            .map(|d| DeviceRequest {
                driver: d.driver.clone(),
                count: d.count.as_ref().map(|c| c.0),
                device_ids: d.device_ids.clone().unwrap_or_default(),
                capabilities: d.capabilities.clone(),
                options: texts(d.options.as_ref()),
            })
            .collect(),
            security_opt: definition.security_opt.clone().unwrap_or_default(),
            sysctls: labels(definition.sysctls.as_ref()),
            namespaces: namespaces(&path, definition)?,
            runtime: definition.runtime.clone(),
            stdin_open: flag(&definition.stdin_open),
            tty: flag(&definition.tty),
            init: definition.init.as_ref().map(|Flag(init)| *init),
            platform: definition.platform.clone(),
            pull_policy: pull_policy(&path, definition.pull_policy.as_deref())?,
            stop_signal: definition.stop_signal.clone(),
            stop_grace_period_s: (definition.stop_grace_period.as_ref())
                .map(|Duration(nanos)| nanos / 1_000_000_000),
            resources: Resources {
                pids_limit: (definition.pids_limit.as_ref())
                    .or(limits.and_then(|l| l.pids.as_ref()))
                    .map(|Integer(n)| *n),
                memswap_limit: definition.memswap_limit.as_ref().map(|SwapSize(n)| *n),
                mem_reservation: (definition.mem_reservation.as_ref())
                    .or(reservations.and_then(|r| r.memory.as_ref()))
                    .map(|ByteSize(n)| *n),
                shm_size: definition.shm_size.as_ref().map(|ByteSize(n)| *n),
                cpu_shares: definition.cpu_shares.as_ref().map(|Integer(n)| *n),
                cpuset: definition.cpuset.clone(),
                oom_score_adj: definition.oom_score_adj.as_ref().map(|Integer(n)| *n),
                ulimits: (definition.ulimits.iter().flatten())
                    .map(|(name, UlimitDef(soft, hard))| (name.clone(), *soft, *hard))
                    .collect(),
            },
            group_add: (definition.group_add.iter().flatten())
                .map(|Text(group)| group.clone())
                .collect(),
            tmpfs,
            annotations: labels(definition.annotations.as_ref()),
            files: container_files(&path, definition, &declared.files)?,
            storage_opt: texts(definition.storage_opt.as_ref()),
            replicas,
        })
    }

    /// The contents of top-level `secrets` or `configs`, by name.
    fn file_sources(
        &self,
        section: &str,
        definitions: Option<model::Named<model::FileSourceDef>>,
    ) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let mut contents = BTreeMap::new();
        for (name, d) in definitions.map(|n| n.0).unwrap_or_default() {
            let path = format!("{section}.{name}");
            let content = match (d.file, d.environment, d.content) {
                (Some(file), None, None) => self
                    .package_bytes(&file)
                    .map_err(|reason| format!("{path}.file: {reason}"))?
                    .to_vec(),
                (None, Some(variable), None) => (self.environment.get(&variable))
                    .ok_or_else(|| format!("{path}.environment: variable {variable} has no value"))?
                    .clone()
                    .into_bytes(),
                (None, None, Some(content)) => content.into_bytes(),
                _ => return Err(format!("{path}: give one of file, environment or content")),
            };
            contents.insert(name, content);
        }
        Ok(contents)
    }

    /// `env_file` entries in order, then `environment` on top.
    fn service_environment(
        &self,
        path: &str,
        definition: &ServiceDef,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut environment = BTreeMap::new();
        for model::EnvFile {
            path: env_file,
            required,
        } in definition
            .env_file
            .iter()
            .flat_map(|OneOrMany(files)| files)
        {
            let text = match self.package_text(env_file) {
                Ok(text) => text,
                // `required: false`: a file the package does not ship is skipped.
                Err(_) if !required && !self.package_has(env_file) => continue,
                Err(reason) => return Err(format!("{path}.env_file: {reason}")),
            };
            let entries = syntax::parse_env_file(text, self.environment)
                .map_err(|reason| format!("{path}.env_file: {env_file}: {reason}"))?;
            for (key, value) in entries {
                if let Some(value) = self.resolve_value(&key, value) {
                    environment.insert(key, value);
                }
            }
        }
        if let Some(Entries(entries)) = &definition.environment {
            for (key, value) in entries {
                if let Some(value) = self.resolve_value(key, value.clone()) {
                    environment.insert(key.clone(), value);
                }
            }
        }
        Ok(environment)
    }

    /// A bare key takes its value from the variables, or is left out when they lack it.
    fn resolve_value(&self, key: &str, value: Option<String>) -> Option<String> {
        value.or_else(|| self.environment.get(key).cloned())
    }

    /// A package file named relative to the compose file, as text.
    fn package_text(&self, relative: &str) -> Result<&str, String> {
        let bytes = self.package_bytes(relative)?;
        std::str::from_utf8(bytes).map_err(|_| format!("{relative}: not valid UTF-8"))
    }

    /// Whether the package ships `relative` (named relative to the compose file).
    fn package_has(&self, relative: &str) -> bool {
        let resolved = syntax::package_path(self.dir, relative);
        resolved.is_some_and(|r| self.package_files.contains_key(&r))
    }

    /// A package file named relative to the compose file.
    fn package_bytes(&self, relative: &str) -> Result<&[u8], String> {
        if relative.starts_with('/') {
            return Err(format!(
                "{relative}: only files of the package can be read, give a relative path"
            ));
        }
        let resolved = syntax::package_path(self.dir, relative)
            .ok_or_else(|| format!("{relative}: leaves the package"))?;
        let bytes = self
            .package_files
            .get(&resolved)
            .ok_or_else(|| format!("{relative}: no such file in the package ({resolved})"))?;
        Ok(bytes)
    }

    fn mount(&self, mount: &MountDef, declared: &Declared<'_>) -> Result<Mount, String> {
        match mount {
            MountDef::Volume {
                source,
                target,
                read_only,
            } => {
                if !declared.volumes.contains(source.as_str()) {
                    return Err(format!(
                        "volume {source} is not declared under the top-level volumes"
                    ));
                }
                Ok(Mount::Volume {
                    source: source.clone(),
                    target: target.clone(),
                    read_only: *read_only,
                })
            }
            MountDef::Bind {
                source,
                target,
                read_only,
                bind_options,
            } => {
                let source = if source.starts_with('/') {
                    BindSource::Host(source.clone())
                } else if let Some(rest) = source.strip_prefix('~') {
                    // As Compose: the home of whoever runs it; the policy decides on the path.
                    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
                    BindSource::Host(format!("{home}{rest}"))
                } else {
                    BindSource::Package(
                        syntax::package_path(self.dir, source)
                            .ok_or_else(|| format!("bind source {source} leaves the package"))?,
                    )
                };
                Ok(Mount::Bind {
                    source,
                    target: target.clone(),
                    read_only: *read_only,
                    bind_options: bind_options.clone(),
                })
            }
            MountDef::Tmpfs { target, size } => Ok(Mount::Tmpfs {
                target: target.clone(),
                size: *size,
            }),
            MountDef::Anonymous { target } => Err(format!("{target}: an anonymous volume here")),
        }
    }
}

/// What the file declares, for checking references: names, and the contents of its secrets
/// and configs.
struct Declared<'a> {
    files: Sources,
    networks: BTreeSet<&'a str>,
    volumes: BTreeSet<&'a str>,
    services: BTreeSet<&'a str>,
}

/// Checks a service, network or volume key: the runtime builds engine object names from it.
fn check_name(section: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{section}.{name}: invalid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)"
        ))
    }
}

fn attachments(
    path: &str,
    networks: Option<&ServiceNetworks>,
    declared: &Declared<'_>,
) -> Result<Vec<NetworkAttachment>, String> {
    let named = networks
        .map(|ServiceNetworks(named)| named.as_slice())
        .unwrap_or_default();
    if named.is_empty() {
        return Ok(vec![NetworkAttachment {
            network: DEFAULT_NETWORK.to_owned(),
            aliases: Vec::new(),
            ipv4_address: None,
            ipv6_address: None,
        }]);
    }
    named
        .iter()
        .map(|(network, attachment)| {
            if network != DEFAULT_NETWORK && !declared.networks.contains(network.as_str()) {
                return Err(format!(
                    "{path}.networks: network {network} is not declared under the top-level networks"
                ));
            }
            let address = |a: &Option<String>, key: &str| match a {
                Some(a) if a.parse::<std::net::IpAddr>().is_err() => Err(format!(
                    "{path}.networks.{network}.{key}: `{a}` is not an IP address"
                )),
                a => Ok(a.clone()),
            };
            Ok(NetworkAttachment {
                network: network.clone(),
                aliases: attachment.aliases.clone().unwrap_or_default(),
                ipv4_address: address(&attachment.ipv4_address, "ipv4_address")?,
                ipv6_address: address(&attachment.ipv6_address, "ipv6_address")?,
            })
        })
        .collect()
}

fn dependencies(
    path: &str,
    depends_on: Option<&DependsOn>,
    declared: &Declared<'_>,
) -> Result<Vec<Dependency>, String> {
    let named = depends_on
        .map(|DependsOn(named)| named.as_slice())
        .unwrap_or_default();
    let mut dependencies = Vec::new();
    for (service, condition, required) in named {
        match (declared.services.contains(service.as_str()), required) {
            (true, _) => dependencies.push(Dependency {
                service: service.clone(),
                condition: *condition,
            }),
            // `required: false`: a service left out (by its profile) is simply not waited for.
            (false, false) => {}
            (false, true) => {
                return Err(format!("{path}.depends_on: unknown service {service}"));
            }
        }
    }
    Ok(dependencies)
}

/// The contents of top-level `secrets` and `configs`, by name.
struct Sources {
    secrets: BTreeMap<String, Vec<u8>>,
    configs: BTreeMap<String, Vec<u8>>,
}

/// A service's `secrets` (at `/run/secrets/NAME` unless `target` says otherwise) and
/// `configs` (at `/NAME`), as files put into its container.
fn container_files(
    path: &str,
    definition: &ServiceDef,
    sources: &Sources,
) -> Result<Vec<crate::spec::ContainerFile>, String> {
    let kinds = [
        (
            "secrets",
            &definition.secrets,
            &sources.secrets,
            "/run/secrets/",
            0o444,
        ),
        ("configs", &definition.configs, &sources.configs, "/", 0o444),
    ];
    let mut files = Vec::new();
    for (key, references, contents, base, mode) in kinds {
        for r in references.iter().flatten() {
            let content = contents.get(&r.source).ok_or_else(|| {
                format!(
                    "{path}.{key}: {} is not declared under the top-level {key}",
                    r.source
                )
            })?;
            let target = r.target.as_deref().unwrap_or(&r.source);
            let target = match target.starts_with('/') {
                true => target.to_owned(),
                false => format!("{base}{target}"),
            };
            files.push(crate::spec::ContainerFile {
                target,
                content: content.clone(),
                uid: r.uid,
                gid: r.gid,
                mode: r.mode.unwrap_or(mode),
            });
        }
    }
    Ok(files)
}

/// The volume key standing for an anonymous volume of `service` at `target`.
fn anonymous_volume(service: &str, target: &str) -> String {
    let path: String = (target.chars())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{service}{path}")
}

/// `links` entry `service[:alias]` as (service, alias).
fn link_parts(link: &str) -> (&str, &str) {
    link.split_once(':').unwrap_or((link, link))
}

/// `links` make a service reachable under an alias: the alias joins the linked service's
/// names on each of its networks (user-defined networks resolve service names already).
fn link_aliases(services: &mut [Service]) {
    let links: Vec<(String, String)> = (services.iter().flat_map(|s| &s.links))
        .map(|l| link_parts(l))
        .filter(|(service, alias)| service != alias)
        .map(|(service, alias)| (service.to_owned(), alias.to_owned()))
        .collect();
    for (service, alias) in links {
        let Some(linked) = services.iter_mut().find(|s| s.name == service) else {
            continue;
        };
        for attachment in &mut linked.networks {
            if !attachment.aliases.contains(&alias) {
                attachment.aliases.push(alias.clone());
            }
        }
    }
}

/// How many containers run the service, as Compose v2 counts them: `scale`, else
/// `deploy.replicas`, else 1; `global` mode is one on one engine. A `container_name` names one
/// container only.
fn replicas(
    path: &str,
    definition: &ServiceDef,
    deploy: Option<&DeployDef>,
) -> Result<Option<u32>, String> {
    let count = |key: &str, value: Option<&Integer>| {
        value
            .map(|Integer(n)| {
                u32::try_from(*n)
                    .map_err(|_| format!("{path}.{key}: {n} is not a number of replicas"))
            })
            .transpose()
    };
    let scale = count("scale", definition.scale.as_ref())?;
    let replicas = count("deploy.replicas", deploy.and_then(|d| d.replicas.as_ref()))?;
    if let (Some(a), Some(b)) = (scale, replicas)
        && a != b
    {
        return Err(format!(
            "{path}: scale ({a}) and deploy.replicas ({b}) disagree"
        ));
    }
    let n = match deploy.and_then(|d| d.mode.as_deref()) {
        None | Some("replicated") => scale.or(replicas),
        Some("global") if replicas.is_none() => None,
        Some("global") => {
            return Err(format!(
                "{path}.deploy.replicas: not with deploy.mode `global`"
            ));
        }
        Some(mode) => {
            return Err(format!(
                "{path}.deploy.mode: `{mode}` is not supported (replicated or global)"
            ));
        }
    };
    if let Some(n @ 2..) = n
        && definition.container_name.is_some()
    {
        return Err(format!(
            "{path}.container_name: names one container, but the service has {n} replicas"
        ));
    }
    Ok(n)
}

/// The containers of further replicas (`web_2`) must not take the name of another service.
fn check_replica_keys(services: &[Service]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for s in services {
        for key in s.replica_keys() {
            if !seen.insert(key.clone()) {
                return Err(format!(
                    "services.{}: its replica `{key}` would take the container name of service {key}",
                    s.name
                ));
            }
        }
    }
    Ok(())
}

fn network_mode(
    path: &str,
    definition: &ServiceDef,
    declared: &Declared<'_>,
) -> Result<Option<NetworkMode>, String> {
    let Some(mode) = definition.network_mode.as_deref() else {
        return Ok(None);
    };
    if definition.networks.is_some() {
        return Err(format!(
            "{path}.network_mode: cannot be combined with networks"
        ));
    }
    match mode {
        "host" => Ok(Some(NetworkMode::Host)),
        "none" => Ok(Some(NetworkMode::None)),
        "bridge" => Ok(Some(NetworkMode::Bridge)),
        other => match other.strip_prefix("service:") {
            Some(service) if declared.services.contains(service) => {
                Ok(Some(NetworkMode::Service(service.to_owned())))
            }
            Some(service) => Err(format!("{path}.network_mode: unknown service {service}")),
            None => Err(format!(
                "{path}.network_mode: `{other}` is not supported (host, none, bridge or service:NAME; join project networks with `networks`)"
            )),
        },
    }
}

/// `deploy.restart_policy` as the engine's restart policy.
fn restart_policy(path: &str, policy: &model::RestartPolicyDef) -> Result<String, String> {
    let attempts = policy.max_attempts.as_ref().map(|Integer(n)| *n);
    match (policy.condition.as_deref(), attempts) {
        (Some("none" | "no"), _) => Ok("no".to_owned()),
        (Some("on-failure"), Some(n)) if n > 0 => Ok(format!("on-failure:{n}")),
        (Some("on-failure"), _) => Ok("on-failure".to_owned()),
        (Some("unless-stopped"), _) => Ok("unless-stopped".to_owned()),
        (None | Some("any" | "always"), _) => Ok("always".to_owned()),
        (Some(other), _) => Err(format!(
            "{path}.deploy.restart_policy.condition: `{other}` is not none, on-failure or any"
        )),
    }
}

/// An `expose` entry (`80`, `8080/udp`, `9000-9001`), as `port/protocol` entries.
fn expose(path: &str, port: &str) -> Result<String, String> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let valid_number = |n: &str| n.parse::<u16>().is_ok_and(|n| n > 0);
    let valid = match number.split_once('-') {
        Some((low, high)) => valid_number(low) && valid_number(high),
        None => valid_number(number),
    };
    if !valid || !matches!(protocol, "tcp" | "udp" | "sctp") {
        return Err(format!(
            "{path}.expose: `{port}` is not a port like 8080 or 8080/udp"
        ));
    }
    Ok(format!("{number}/{protocol}"))
}

fn one_or_many(values: Option<&OneOrMany<String>>) -> Vec<String> {
    values.map(|OneOrMany(v)| v.clone()).unwrap_or_default()
}

fn flag(value: &Option<Flag>) -> bool {
    value.as_ref().is_some_and(|Flag(flag)| *flag)
}

/// `extra_hosts` as `host:address`, from `host:address`, `host=address` or a mapping.
fn extra_hosts(path: &str, entries: Option<&Entries>) -> Result<Vec<String>, String> {
    let entries = entries.map(|Entries(e)| e.as_slice()).unwrap_or_default();
    entries
        .iter()
        .map(|(key, value)| {
            let (host, address) = match value {
                Some(address) => (key.as_str(), address.as_str()),
                None => key
                    .split_once(':')
                    .ok_or_else(|| format!("{path}.extra_hosts: `{key}` is not host:address"))?,
            };
            let address = address.trim_start_matches('[').trim_end_matches(']');
            if address != "host-gateway" && address.parse::<std::net::IpAddr>().is_err() {
                return Err(format!(
                    "{path}.extra_hosts: `{address}` is not an IP address (or host-gateway)"
                ));
            }
            Ok(format!("{host}:{address}"))
        })
        .collect()
}

/// `pid`, `ipc`, `uts` and `userns_mode`: what the engine can share on its own.
fn namespaces(path: &str, definition: &ServiceDef) -> Result<Namespaces, String> {
    let check = |key: &str, value: &Option<String>, allowed: &[&str]| match value.as_deref() {
        None => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v.to_owned())),
        Some(v) if v.starts_with("service:") && matches!(key, "pid" | "ipc") => {
            Ok(Some(v.to_owned()))
        }
        Some(v) => Err(format!(
            "{path}.{key}: `{v}` is not supported (one of {})",
            allowed.join(", ")
        )),
    };
    Ok(Namespaces {
        pid: check("pid", &definition.pid, &["host"])?,
        ipc: check(
            "ipc",
            &definition.ipc,
            &["host", "shareable", "private", "none"],
        )?,
        uts: check("uts", &definition.uts, &["host"])?,
        userns: check("userns_mode", &definition.userns_mode, &["host"])?,
    })
}

fn pull_policy(path: &str, policy: Option<&str>) -> Result<Option<PullPolicy>, String> {
    match policy {
        None => Ok(None),
        Some("missing" | "if_not_present") => Ok(Some(PullPolicy::Missing)),
        Some("always") => Ok(Some(PullPolicy::Always)),
        Some("never") => Ok(Some(PullPolicy::Never)),
        Some("build") => Err(format!(
            "{path}.pull_policy: build is not supported: this device does not build images"
        )),
        Some(other) => Err(format!(
            "{path}.pull_policy: `{other}` is not supported (missing, always or never)"
        )),
    }
}

/// Refuses `depends_on` cycles (including a service depending on itself): nothing in a cycle
/// could ever start.
fn check_dependency_cycles(services: &[Service]) -> Result<(), String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    fn visit(
        at: usize,
        services: &[Service],
        index: &BTreeMap<&str, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Result<(), String> {
        match marks[at] {
            Mark::Done => return Ok(()),
            Mark::OnPath => {
                let start = path.iter().position(|&i| i == at).unwrap_or(0);
                let names: Vec<&str> = path[start..]
                    .iter()
                    .chain(std::iter::once(&at))
                    .map(|&i| services[i].name.as_str())
                    .collect();
                return Err(format!(
                    "services.{}.depends_on: dependency cycle {}",
                    services[at].name,
                    names.join(" -> ")
                ));
            }
            Mark::Unvisited => {}
        }
        marks[at] = Mark::OnPath;
        path.push(at);
        for dependency in &services[at].depends_on {
            if let Some(&next) = index.get(dependency.service.as_str()) {
                visit(next, services, index, marks, path)?;
            }
        }
        path.pop();
        marks[at] = Mark::Done;
        Ok(())
    }

    let index: BTreeMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, service)| (service.name.as_str(), i))
        .collect();
    let mut marks = vec![Mark::Unvisited; services.len()];
    for start in 0..services.len() {
        visit(start, services, &index, &mut marks, &mut Vec::new())?;
    }
    Ok(())
}

fn healthcheck(path: &str, definition: &model::HealthcheckDef) -> Result<Healthcheck, String> {
    let disabled = definition.disable.as_ref().is_some_and(|Flag(flag)| *flag);
    let test = match (disabled, &definition.test) {
        (true, Some(_)) => {
            return Err(format!(
                "{path}.healthcheck: `disable` and `test` cannot both be set"
            ));
        }
        (true, None) => vec!["NONE".to_owned()],
        // No test keeps the image's own check, with the timings given here.
        (false, test) => test
            .as_ref()
            .map(|HealthTest(test)| test.clone())
            .unwrap_or_default(),
    };
    let retries = match definition.retries {
        Some(Integer(retries)) if retries < 0 => {
            return Err(format!("{path}.healthcheck.retries: must not be negative"));
        }
        Some(Integer(retries)) => Some(retries),
        None => None,
    };
    let nanos = |duration: &Option<Duration>| duration.as_ref().map(|Duration(nanos)| *nanos);
    Ok(Healthcheck {
        test,
        interval_ns: nanos(&definition.interval),
        timeout_ns: nanos(&definition.timeout),
        retries,
        start_period_ns: nanos(&definition.start_period),
        start_interval_ns: nanos(&definition.start_interval),
    })
}

/// Labels as a map; a label without a value is the empty string.
fn labels(entries: Option<&Entries>) -> BTreeMap<String, String> {
    entries
        .iter()
        .flat_map(|Entries(entries)| entries)
        .map(|(key, value)| (key.clone(), value.clone().unwrap_or_default()))
        .collect()
}

fn texts(map: Option<&BTreeMap<String, Text>>) -> BTreeMap<String, String> {
    map.iter()
        .flat_map(|map| map.iter())
        .map(|(key, Text(value))| (key.clone(), value.clone()))
        .collect()
}

fn logging(definition: &LoggingDef) -> Logging {
    Logging {
        driver: definition.driver.clone(),
        options: texts(definition.options.as_ref()),
    }
}

fn network(name: String, definition: Option<NetworkDef>) -> Result<Network, String> {
    let path = format!("networks.{name}");
    let Some(definition) = definition else {
        return Ok(Network {
            name,
            driver: None,
            internal: false,
            driver_opts: BTreeMap::new(),
            ipam: Vec::new(),
            ipam_driver: None,
            enable_ipv6: false,
            external: None,
            labels: BTreeMap::new(),
            custom_name: None,
        });
    };
    let (external, custom_name) =
        external_name(&path, &name, definition.external, definition.name)?;
    let internal = definition.internal.is_some_and(|Flag(flag)| flag);
    let labels = labels(definition.labels.as_ref());
    if external.is_some() && (definition.driver.is_some() || internal || !labels.is_empty()) {
        return Err(format!(
            "{path}: an external network takes no driver, internal or labels"
        ));
    }
    let ipam = definition.ipam;
    Ok(Network {
        name,
        driver: definition.driver,
        internal,
        driver_opts: texts(definition.driver_opts.as_ref()),
        ipam_driver: ipam.as_ref().and_then(|i| i.driver.clone()),
        ipam: (ipam.and_then(|i| i.config).into_iter().flatten())
            .map(|pool| IpamPool {
                subnet: pool.subnet,
                ip_range: pool.ip_range,
                gateway: pool.gateway,
                aux_addresses: pool.aux_addresses.unwrap_or_default(),
            })
            .collect(),
        enable_ipv6: flag(&definition.enable_ipv6),
        external,
        labels,
        custom_name,
    })
}

fn volume(name: String, definition: Option<VolumeDef>) -> Result<Volume, String> {
    let path = format!("volumes.{name}");
    let Some(definition) = definition else {
        return Ok(Volume {
            name,
            driver: None,
            driver_opts: BTreeMap::new(),
            external: None,
            labels: BTreeMap::new(),
            custom_name: None,
        });
    };
    let (external, custom_name) =
        external_name(&path, &name, definition.external, definition.name)?;
    let driver_opts = texts(definition.driver_opts.as_ref());
    let labels = labels(definition.labels.as_ref());
    if external.is_some()
        && (definition.driver.is_some() || !driver_opts.is_empty() || !labels.is_empty())
    {
        return Err(format!(
            "{path}: an external volume takes no driver, driver_opts or labels"
        ));
    }
    Ok(Volume {
        name,
        driver: definition.driver,
        driver_opts,
        external,
        labels,
        custom_name,
    })
}

/// The engine names of a network or volume: the external object it stands for (`None` when the
/// agent owns it), and the custom `name` of one the agent owns.
fn external_name(
    path: &str,
    key: &str,
    external: Option<External>,
    name: Option<String>,
) -> Result<(Option<String>, Option<String>), String> {
    match (external, name) {
        (None | Some(External::Flag(false)), name) => {
            if let Some(name) = &name {
                check_name(path, name)?;
            }
            Ok((None, name))
        }
        (Some(External::Flag(true)) | Some(External::Named(None)), name) => {
            Ok((Some(name.unwrap_or_else(|| key.to_owned())), None))
        }
        (Some(External::Named(Some(inner))), Some(name)) if inner != name => Err(format!(
            "{path}.external.name: `{inner}` differs from {path}.name `{name}`"
        )),
        (Some(External::Named(Some(inner))), _) => Ok((Some(inner), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Environment, Port};

    fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    fn load_str(yaml: &str) -> Result<Project> {
        load(
            "app/compose.yaml",
            yaml.as_bytes(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
    }

    /// `yaml` as `app/compose.yaml` of `package`, without variables.
    fn load_with(yaml: &str, package: &BTreeMap<String, Vec<u8>>) -> Result<Project> {
        load(
            "app/compose.yaml",
            yaml.as_bytes(),
            &BTreeMap::new(),
            package,
        )
    }

    /// The `Error::Compose` message of a failing load.
    fn error_of(yaml: &str) -> String {
        match load_str(yaml) {
            Err(Error::Compose { file, message }) => {
                assert_eq!(file, "app/compose.yaml");
                message
            }
            other => panic!("expected a compose error, got {other:?}"),
        }
    }

    fn service_named(project: &Project, name: &str) -> Service {
        project
            .services
            .iter()
            .find(|service| service.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    fn default_network() -> Network {
        Network {
            name: "default".into(),
            driver: None,
            internal: false,
            external: None,
            labels: BTreeMap::new(),
            custom_name: None,
            ..Default::default()
        }
    }

    fn on_default() -> Vec<NetworkAttachment> {
        vec![NetworkAttachment {
            network: "default".into(),
            aliases: vec![],
            ..Default::default()
        }]
    }

    const TWO_SERVICES: &str = r#"
version: "3.9"
name: demo
x-common: &common
  restart: unless-stopped
services:
  web:
    <<: *common
    image: registry.local:5000/web:${WEB_TAG:-1.0}
    command: ["serve", "--port", "80"]
    environment:
      BACKEND_URL: http://backend:9000
      LOG_LEVEL: ${LOG_LEVEL}
    env_file: web.env
    ports:
      - "${WEB_PORT}:80"
      - target: 443
        published: 8443
        host_ip: 127.0.0.1
    volumes:
      - ./config/nginx.conf:/etc/nginx/nginx.conf:ro
    networks: [front, back]
    depends_on:
      backend:
        condition: service_healthy
    labels:
      - com.example.role=frontend
    x-notes: ignored
  backend:
    image: registry.local:5000/backend:2.1
    entrypoint: /bin/backend --listen "0.0.0.0:9000"
    volumes:
      - data:/var/lib/backend
      - type: bind
        source: /etc/localtime
        target: /etc/localtime
        read_only: true
    networks:
      back:
        aliases: [api]
    healthcheck:
      test: curl -fsS http://localhost:9000/health
      interval: 10s
      timeout: 1m30s
      retries: 3
      start_period: 500ms
    mem_limit: 512m
    cpus: 1.5
    user: 1000
    read_only: true
    tmpfs: /tmp:size=64m
    cap_drop: [ALL]
    cap_add: [NET_BIND_SERVICE]
    working_dir: /srv
    logging:
      driver: json-file
      options:
        max-size: 10m
        max-file: 3
networks:
  front:
  back:
    internal: true
volumes:
  data:
"#;

    #[test]
    fn realistic_file_becomes_the_expected_project() {
        let package = files(&[
            (
                "app/web.env",
                "# web settings\nLOG_LEVEL=debug\nWORKERS=4\n",
            ),
            ("app/.env", "WEB_PORT=8080\nLOG_LEVEL=info\n"),
        ]);
        let variables = strings(&[("WEB_TAG", "1.2")]);
        let project = load(
            "app/compose.yaml",
            TWO_SERVICES.as_bytes(),
            &variables,
            &package,
        )
        .expect("loads");
        let web = Service {
            name: "web".into(),
            image: "registry.local:5000/web:1.2".into(),
            command: Some(vec!["serve".into(), "--port".into(), "80".into()]),
            entrypoint: None,
            environment: Environment(strings(&[
                ("BACKEND_URL", "http://backend:9000"),
                // `environment` (interpolated from .env) wins over the env_file.
                ("LOG_LEVEL", "info"),
                ("WORKERS", "4"),
            ])),
            ports: vec![
                Port {
                    host_ip: None,
                    host_port: Some(8080),
                    container_port: 80,
                    protocol: "tcp".into(),
                },
                Port {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(8443),
                    container_port: 443,
                    protocol: "tcp".into(),
                },
            ],
            mounts: vec![Mount::Bind {
                source: BindSource::Package("app/config/nginx.conf".into()),
                target: "/etc/nginx/nginx.conf".into(),
                read_only: true,
                bind_options: None,
            }],
            networks: vec![
                NetworkAttachment {
                    network: "front".into(),
                    aliases: vec![],
                    ..Default::default()
                },
                NetworkAttachment {
                    network: "back".into(),
                    aliases: vec![],
                    ..Default::default()
                },
            ],
            depends_on: vec![Dependency {
                service: "backend".into(),
                condition: Condition::Healthy,
            }],
            healthcheck: None,
            restart: Some("unless-stopped".into()),
            labels: strings(&[("com.example.role", "frontend")]),
            user: None,
            working_dir: None,
            cap_add: vec![],
            cap_drop: vec![],
            read_only: false,
            mem_limit: None,
            nano_cpus: None,
            logging: None,
            ..Default::default()
        };
        let backend = Service {
            name: "backend".into(),
            image: "registry.local:5000/backend:2.1".into(),
            command: None,
            entrypoint: Some(vec![
                "/bin/backend".into(),
                "--listen".into(),
                "0.0.0.0:9000".into(),
            ]),
            environment: Environment::default(),
            ports: vec![],
            mounts: vec![
                Mount::Volume {
                    source: "data".into(),
                    target: "/var/lib/backend".into(),
                    read_only: false,
                },
                Mount::Bind {
                    source: BindSource::Host("/etc/localtime".into()),
                    target: "/etc/localtime".into(),
                    read_only: true,
                    bind_options: None,
                },
            ],
            tmpfs: strings(&[("/tmp", "size=64m")]),
            networks: vec![NetworkAttachment {
                network: "back".into(),
                aliases: vec!["api".into()],
                ..Default::default()
            }],
            depends_on: vec![],
            healthcheck: Some(Healthcheck {
                test: vec![
                    "CMD-SHELL".into(),
                    "curl -fsS http://localhost:9000/health".into(),
                ],
                interval_ns: Some(10_000_000_000),
                timeout_ns: Some(90_000_000_000),
                retries: Some(3),
                start_period_ns: Some(500_000_000),
                start_interval_ns: None,
            }),
            restart: None,
            labels: BTreeMap::new(),
            user: Some("1000".into()),
            working_dir: Some("/srv".into()),
            cap_add: vec!["NET_BIND_SERVICE".into()],
            cap_drop: vec!["ALL".into()],
            read_only: true,
            mem_limit: Some(512 * 1024 * 1024),
            nano_cpus: Some(1_500_000_000),
            logging: Some(Logging {
                driver: Some("json-file".into()),
                options: strings(&[("max-size", "10m"), ("max-file", "3")]),
            }),
            ..Default::default()
        };
        let expected = Project {
            services: vec![web, backend],
            networks: vec![
                Network {
                    name: "front".into(),
                    ..default_network()
                },
                Network {
                    name: "back".into(),
                    internal: true,
                    ..default_network()
                },
            ],
            volumes: vec![Volume {
                name: "data".into(),
                driver: None,
                driver_opts: BTreeMap::new(),
                external: None,
                labels: BTreeMap::new(),
                custom_name: None,
            }],
        };
        assert_eq!(project, expected);
    }

    #[test]
    fn unsupported_keys_are_named_by_path() {
        let cases = [
            (
                "services:\n  web:\n    image: nginx\n    develop: {}\n",
                "services.web.develop: unsupported key",
            ),
            (
                "services:\n  web:\n    image: nginx\n    deploy:\n      resources:\n        limits: {devices: []}\n",
                "services.web.deploy.resources.limits.devices: unsupported key",
            ),
            (
                "services:\n  web:\n    image: nginx\n    external_links: [other]\n",
                "services.web.external_links: unsupported key",
            ),
            (
                "services:\n  web:\n    image: nginx\n    ports:\n      - target: 80\n        mode: host\n",
                "services.web.ports[0].mode: unsupported key",
            ),
            (
                "services:\n  web:\n    image: nginx\n    networks:\n      front:\n        priority: 10\nnetworks:\n  front:\n",
                "services.web.networks.front.priority: unsupported key",
            ),
            (
                "services:\n  web:\n    image: nginx\n    volumes:\n      - type: volume\n        source: data\n        target: /d\n        volume:\n          subpath: x\nvolumes:\n  data:\n",
                "services.web.volumes[0].volume.subpath: unsupported key",
            ),
            (
                "services:\n  web:\n    image: nginx\nnetworks:\n  front:\n    ipam: {options: {}}\n",
                "networks.front.ipam.options: unsupported key",
            ),
        ];
        for (yaml, expected) in cases {
            assert_eq!(error_of(yaml), expected, "yaml:\n{yaml}");
        }
    }

    /// The keys people write beyond the basics, each to its field.
    #[test]
    fn the_wider_service_surface_maps_to_the_service() {
        let yaml = r#"
name: ignored
x-common: &common
  restart: unless-stopped
  logging:
    driver: json-file
services:
  hub:
    <<: *common
    image: hub:1
    container_name: mqtt-hub
    hostname: hub
    domainname: example.lan
    expose: ["1883", "9000-9001/udp"]
    dns: 10.0.0.53
    dns_search: [lan]
    dns_opt: [ndots:1]
    extra_hosts: ["db.local:10.0.0.2", "gw=host-gateway", "v6:::1"]
    privileged: true
    devices: ["/dev/ttyUSB0:/dev/zigbee", {source: /dev/snd, permissions: r}]
    device_cgroup_rules: ["c 188:* rmw"]
    security_opt: ["no-new-privileges:true"]
    sysctls: {net.core.somaxconn: 1024}
    ipc: shareable
    runtime: runc
    stdin_open: true
    tty: true
    init: true
    platform: linux/arm64
    pull_policy: if_not_present
    stop_signal: SIGINT
    stop_grace_period: 1m30s
    pids_limit: 100
    memswap_limit: -1
    mem_reservation: 64m
    shm_size: 256m
    cpu_shares: 512
    cpuset: "0-1"
    oom_score_adj: -500
    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 65535}
    group_add: [dialout, 20]
    annotations: {org.example/owner: ops}
    storage_opt: {size: 1G}
    attach: false
    env_file: [{path: ./hub.env, required: false}]
    tmpfs: ["/tmp:rw,noexec,nosuid,size=64m"]
    volumes: ["/app/node_modules", "~/data:/data:z"]
    links: ["cache:store"]
    healthcheck: {test: "true", start_interval: 2s}
    deploy:
      replicas: 1
      resources:
        limits: {cpus: "0.5", memory: 128m, pids: 50}
        reservations:
          cpus: "0.25"
          memory: 32m
          devices: [{driver: nvidia, count: all, capabilities: [gpu]}]
  db:
    image: db:1
    network_mode: "service:hub"
    pid: "service:hub"
    deploy:
      restart_policy: {condition: on-failure, max_attempts: 3, delay: 5s}
    depends_on:
      hub: {condition: service_started, restart: true}
      metrics: {condition: service_started, required: false}
  cache:
    image: cache:1
  metrics:
    image: metrics:1
    profiles: [debug]
"#;
        let project = load_str(yaml).expect("loads");
        assert_eq!(
            project.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
            ["hub", "db", "cache"],
            "a service whose profile is not active is left out"
        );
        let hub = service_named(&project, "hub");
        assert_eq!(hub.restart.as_deref(), Some("unless-stopped"));
        assert_eq!(hub.container_name.as_deref(), Some("mqtt-hub"));
        assert_eq!(hub.hostname.as_deref(), Some("hub"));
        assert_eq!(hub.domainname.as_deref(), Some("example.lan"));
        assert_eq!(hub.expose, ["1883/tcp", "9000-9001/udp"]);
        assert_eq!(hub.dns, ["10.0.0.53"]);
        assert_eq!(hub.dns_search, ["lan"]);
        assert_eq!(hub.dns_opt, ["ndots:1"]);
        assert_eq!(
            hub.extra_hosts,
            ["db.local:10.0.0.2", "gw:host-gateway", "v6:::1"]
        );
        assert!(hub.privileged);
        assert_eq!(hub.devices.len(), 2);
        assert_eq!(hub.devices[0].container, "/dev/zigbee");
        assert_eq!(hub.devices[1].permissions, "r");
        assert_eq!(hub.device_cgroup_rules, ["c 188:* rmw"]);
        assert_eq!(hub.security_opt, ["no-new-privileges:true"]);
        assert_eq!(hub.sysctls, strings(&[("net.core.somaxconn", "1024")]));
        assert_eq!(hub.namespaces.ipc.as_deref(), Some("shareable"));
        assert_eq!(hub.runtime.as_deref(), Some("runc"));
        assert!(hub.stdin_open && hub.tty);
        assert_eq!(hub.init, Some(true));
        assert_eq!(hub.platform.as_deref(), Some("linux/arm64"));
        assert_eq!(hub.pull_policy, Some(crate::spec::PullPolicy::Missing));
        assert_eq!(hub.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(hub.stop_grace_period_s, Some(90));
        let r = &hub.resources;
        assert_eq!(r.pids_limit, Some(100));
        assert_eq!(r.memswap_limit, Some(-1));
        assert_eq!(r.mem_reservation, Some(64 << 20));
        assert_eq!(r.shm_size, Some(256 << 20));
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.cpuset.as_deref(), Some("0-1"));
        assert_eq!(r.oom_score_adj, Some(-500));
        assert_eq!(
            r.ulimits,
            [
                ("nofile".into(), 1024, 2048),
                ("nproc".into(), 65535, 65535)
            ]
        );
        assert_eq!(hub.mem_limit, Some(128 << 20));
        assert_eq!(hub.nano_cpus, Some(500_000_000));
        assert_eq!(hub.group_add, ["dialout", "20"]);
        assert_eq!(hub.annotations, strings(&[("org.example/owner", "ops")]));
        assert_eq!(hub.storage_opt, strings(&[("size", "1G")]));
        assert_eq!(hub.tmpfs, strings(&[("/tmp", "rw,noexec,nosuid,size=64m")]));
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        assert_eq!(
            hub.mounts,
            [
                Mount::Volume {
                    source: "hub_app_node_modules".into(),
                    target: "/app/node_modules".into(),
                    read_only: false
                },
                Mount::Bind {
                    source: BindSource::Host(format!("{home}/data")),
                    target: "/data".into(),
                    read_only: false,
                    bind_options: Some("z".into())
                },
            ]
        );
        assert!(
            project
                .volumes
                .iter()
                .any(|v| v.name == "hub_app_node_modules"),
            "the anonymous volume is one of the project's"
        );
        assert_eq!(
            hub.healthcheck.as_ref().and_then(|h| h.start_interval_ns),
            Some(2_000_000_000)
        );
        assert_eq!(hub.device_requests.len(), 1);
        assert_eq!(hub.device_requests[0].count, Some(-1));
        assert_eq!(hub.device_requests[0].capabilities, ["gpu"]);
        assert_eq!(hub.links, ["cache:store"]);
        let cache = service_named(&project, "cache");
        assert_eq!(cache.networks[0].aliases, ["store"]);

        let db = service_named(&project, "db");
        assert_eq!(db.network_mode, Some(NetworkMode::Service("hub".into())));
        assert!(db.networks.is_empty(), "network_mode replaces networks");
        assert_eq!(db.namespaces.pid.as_deref(), Some("service:hub"));
        assert_eq!(db.restart.as_deref(), Some("on-failure:3"));
        assert_eq!(
            db.depends_on,
            [Dependency {
                service: "hub".into(),
                condition: Condition::Started
            }],
            "an optional dependency on a left-out service is dropped"
        );

        // COMPOSE_PROFILES turns a profile on.
        let variables = strings(&[("COMPOSE_PROFILES", "debug")]);
        let project = load(
            "app/compose.yaml",
            yaml.as_bytes(),
            &variables,
            &BTreeMap::new(),
        )
        .expect("loads");
        assert_eq!(project.services.len(), 4);
    }

    #[test]
    fn replicas_count_as_compose_v2_counts_them() {
        for (keys, expected) in [
            ("", 1),
            ("    scale: 3\n", 3),
            ("    deploy:\n      replicas: 2\n", 2),
            ("    scale: 2\n    deploy:\n      replicas: 2\n", 2),
            ("    scale: 0\n", 0),
            ("    deploy:\n      mode: global\n", 1),
            ("    container_name: one\n    scale: 1\n", 1),
        ] {
            let yaml = format!("services:\n  web:\n    image: w\n{keys}");
            let project = load_str(&yaml).expect("loads");
            let replicas = service_named(&project, "web").replica_keys().count();
            assert_eq!(replicas, expected, "{keys}");
        }
    }

    #[test]
    fn what_one_engine_cannot_honour_is_named() {
        for (yaml, expected) in [
            (
                "services:\n  web:\n    image: w\n    scale: 3\n    container_name: web\n",
                "services.web.container_name: names one container, but the service has 3 replicas",
            ),
            (
                "services:\n  web:\n    image: w\n    scale: 3\n    deploy:\n      replicas: 2\n",
                "services.web: scale (3) and deploy.replicas (2) disagree",
            ),
            (
                "services:\n  web:\n    image: w\n    scale: 2\n  web_2:\n    image: w\n",
                "replica `web_2` would take the container name of service web_2",
            ),
            (
                "services:\n  web:\n    image: w\n    scale: -1\n",
                "services.web.scale: -1 is not a number of replicas",
            ),
            (
                "services:\n  web:\n    image: w\n    deploy:\n      mode: global\n      replicas: 2\n",
                "services.web.deploy.replicas: not with deploy.mode `global`",
            ),
            (
                "services:\n  web:\n    image: w\n    network_mode: host\n    networks: [default]\n",
                "services.web.network_mode: cannot be combined with networks",
            ),
            (
                "services:\n  web:\n    image: w\n    network_mode: container:other\n",
                "services.web.network_mode: `container:other` is not supported",
            ),
            (
                "services:\n  web:\n    image: w\n    pull_policy: build\n",
                "services.web.pull_policy: build is not supported",
            ),
            (
                "services:\n  web:\n    image: w\n    userns_mode: keep-id\n",
                "services.web.userns_mode: `keep-id` is not supported",
            ),
            (
                "services:\n  web:\n    image: w\n    volumes:\n",
                "services.web.volumes: must be a list, not left empty",
            ),
            (
                "services:\n  web:\n    image: w\n    extra_hosts: [\"db:not-an-ip\"]\n",
                "services.web.extra_hosts: `not-an-ip` is not an IP address (or host-gateway)",
            ),
            (
                "services:\n  web:\n    image: w\n    links: [nowhere]\n",
                "services.web: unknown service nowhere",
            ),
        ] {
            let message = load_str(yaml).map(|_| ()).map_err(|e| e.to_string());
            let message = message
                .err()
                .unwrap_or_else(|| format!("no error for:\n{yaml}"));
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn env_files_in_the_long_form_may_be_optional() {
        let package = files(&[("app/web.env", "A=1\n")]);
        let yaml = "services:\n  web:\n    image: w\n    env_file:\n      - path: ./web.env\n        \
                    required: true\n      - path: ./web.local.env\n        required: false\n";
        let project = load_with(yaml, &package).expect("loads");
        assert_eq!(
            service_named(&project, "web").environment.0,
            strings(&[("A", "1")])
        );
        let required = yaml.replace("required: false", "required: true");
        let error = load_with(&required, &package)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            error
                .as_ref()
                .is_err_and(|e| e.contains("services.web.env_file: ./web.local.env: no such file")),
            "{error:?}"
        );
    }

    #[test]
    fn links_give_the_linked_service_its_alias() {
        let yaml = "services:\n  web:\n    image: w\n    links: [\"db:database\", cache]\n  db:\n    image: d\n  cache:\n    image: c\n";
        let project = load_str(yaml).expect("loads");
        let db = service_named(&project, "db");
        assert_eq!(db.networks[0].aliases, ["database"]);
        let web = service_named(&project, "web");
        let after: Vec<&str> = web.depends_on.iter().map(|d| d.service.as_str()).collect();
        assert_eq!(after, ["db", "cache"], "links start what they reach first");
    }

    #[test]
    fn dot_env_values_refer_to_each_other_and_a_lone_dollar_stays() {
        let package = files(&[("app/.env", "ROOT_DIR=/srv\nDATA=${ROOT_DIR:-/mnt}/db\n")]);
        let yaml = "services:\n  db:\n    image: d\n    volumes: [\"${DATA}:/var/lib/db\"]\n    \
                    environment: [\"RE=^https?://x(:[0-9]+)?$\"]\n    user: \"app:$(id -g)\"\n";
        let project = load_with(yaml, &package).expect("loads");
        let db = service_named(&project, "db");
        assert_eq!(
            db.mounts,
            [Mount::Bind {
                source: BindSource::Host("/srv/db".into()),
                target: "/var/lib/db".into(),
                read_only: false,
                bind_options: None
            }]
        );
        assert_eq!(
            db.environment.0,
            strings(&[("RE", "^https?://x(:[0-9]+)?$")])
        );
        assert_eq!(db.user.as_deref(), Some("app:$(id -g)"));
    }

    #[test]
    fn build_is_refused_with_the_reason() {
        let message = error_of("services:\n  web:\n    image: web\n    build: .\n");
        assert!(
            message.starts_with(
                "services.web.build: unsupported key: this device does not build images"
            ),
            "{message}"
        );
        let message = error_of("services:\n  web:\n    command: run\n");
        assert_eq!(
            message,
            "services.web.image: required (this device pulls images, it does not build them)"
        );
    }

    #[test]
    fn extension_keys_are_ignored_at_every_level_but_kept_as_data() {
        let yaml = r#"
x-top: {anything: [1, 2]}
services:
  web:
    image: nginx
    x-service: {privileged: true}
    labels:
      x-trace: "on"
    environment:
      x-var: kept
    healthcheck:
      test: ["CMD", "true"]
      x-check: 1
    logging:
      driver: local
      x-log: 1
    ports:
      - target: 80
        x-port: 1
    networks:
      front:
        x-attach: 1
networks:
  front:
    x-net: 1
volumes:
  data:
    x-vol: 1
"#;
        let project = load_str(yaml).expect("loads");
        let web = service_named(&project, "web");
        assert_eq!(web.labels, strings(&[("x-trace", "on")]));
        assert_eq!(web.environment.0, strings(&[("x-var", "kept")]));
        assert_eq!(
            web.healthcheck.map(|h| h.test),
            Some(vec!["CMD".into(), "true".into()])
        );
        assert_eq!(web.ports.len(), 1);
        assert_eq!(
            project.networks,
            vec![Network {
                name: "front".into(),
                ..default_network()
            }]
        );
        assert_eq!(project.volumes.len(), 1);
    }

    #[test]
    fn interpolation_uses_variables_over_dot_env_and_never_the_process_environment() {
        // PATH is set in the test process; the file must not see it.
        assert!(std::env::var_os("PATH").is_some());
        let yaml = "services:\n  web:\n    image: img:${TAG}\n    environment:\n      A: ${A}\n      B: ${B}\n      PATH_SEEN: ${PATH:-unset}\n      FROM_VARS:\n      FROM_DOT_ENV:\n      MISSING:\n";
        let package = files(&[
            (
                "app/.env",
                "TAG=from-dot-env\nA=dot\nB=dot\nFROM_DOT_ENV=dot\n",
            ),
            (".env", "A=root\n"),
        ]);
        let variables = strings(&[("TAG", "2.0"), ("A", "var"), ("FROM_VARS", "v")]);
        let project =
            load("app/compose.yaml", yaml.as_bytes(), &variables, &package).expect("loads");
        let web = service_named(&project, "web");
        assert_eq!(web.image, "img:2.0");
        assert_eq!(
            web.environment.0,
            strings(&[
                ("A", "var"),
                ("B", "dot"),
                ("FROM_DOT_ENV", "dot"),
                ("FROM_VARS", "v"),
                ("PATH_SEEN", "unset"),
            ])
        );
    }

    #[test]
    fn dot_env_is_read_next_to_the_compose_file() {
        let yaml = "services:\n  web:\n    image: img:${TAG:-none}\n";
        let package = files(&[("app/.env", "TAG=app\n"), (".env", "TAG=root\n")]);
        let at_root =
            load("compose.yaml", yaml.as_bytes(), &BTreeMap::new(), &package).expect("loads");
        assert_eq!(at_root.services[0].image, "img:root");
        let nested = load_with(yaml, &package).expect("loads");
        assert_eq!(nested.services[0].image, "img:app");
        let elsewhere = load(
            "other/compose.yaml",
            yaml.as_bytes(),
            &BTreeMap::new(),
            &package,
        )
        .expect("loads");
        assert_eq!(elsewhere.services[0].image, "img:none");
    }

    #[test]
    fn missing_required_variable_names_variable_and_key() {
        let message = error_of(
            "services:\n  db:\n    image: postgres\n    environment:\n      POSTGRES_PASSWORD: ${DB_PASSWORD:?set the database password}\n",
        );
        assert_eq!(
            message,
            "services.db.environment.POSTGRES_PASSWORD: required variable DB_PASSWORD is missing a value: set the database password"
        );
        let message = error_of("services:\n  web:\n    image: nginx:${1}\n");
        assert!(
            message.starts_with("services.web.image: invalid interpolation"),
            "{message}"
        );
    }

    #[test]
    fn reference_and_value_errors_name_the_key() {
        let cases = [
            (
                "services:\n  web:\n    image: nginx\n    networks: [front]\n",
                "services.web.networks: network front is not declared under the top-level networks",
            ),
            (
                "services:\n  web:\n    image: nginx\n    volumes: [\"data:/data\"]\n",
                "services.web.volumes[0]: volume data is not declared under the top-level volumes",
            ),
            (
                "services:\n  web:\n    image: nginx\n    depends_on: [db]\n",
                "services.web.depends_on: unknown service db",
            ),
            (
                "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on:\n      c:\n        condition: service_started\n  c:\n    image: x\n    depends_on: [a]\n",
                "services.a.depends_on: dependency cycle a -> b -> c -> a",
            ),
            (
                "services:\n  a:\n    image: x\n    depends_on: [a]\n",
                "services.a.depends_on: dependency cycle a -> a",
            ),
            (
                "services:\n  web:\n    image: nginx\n    volumes: [\"../../etc:/etc/host\"]\n",
                "services.web.volumes[0]: bind source ../../etc leaves the package",
            ),
            (
                "services:\n  web:\n    image: nginx\n    restart: sometimes\n",
                "services.web.restart: `sometimes` is not a restart policy (no, always, on-failure, on-failure:N, unless-stopped)",
            ),
            (
                "services:\n  web:\n    image: nginx\n    ports: [\"80\", \"99999:80\"]\n",
                "services.web.ports[1]: `99999` is not a port number (1 to 65535)",
            ),
            (
                "services:\n  web:\n    image: nginx\n    depends_on:\n      db:\n        condition: service_ready\n  db:\n    image: pg\n",
                "services.web.depends_on.db.condition: unknown variant `service_ready`, expected one of `service_started`, `service_healthy`, `service_completed_successfully`",
            ),
            (
                "services:\n  web:\n    image: nginx\n    mem_limit: lots\n",
                "services.web.mem_limit: `lots` is not a size like 512m, 1g or 100k",
            ),
            (
                "services:\n  web:\n    image: nginx\n    healthcheck:\n      interval: 10\n",
                "services.web.healthcheck.interval: invalid type: integer `10`, expected a string",
            ),
            (
                "services:\n  web:\n    image: nginx\n    env_file: [missing.env]\n",
                "services.web.env_file: missing.env: no such file in the package (app/missing.env)",
            ),
            (
                "services:\n  web:\n    image: nginx\n    env_file: ../../outside.env\n",
                "services.web.env_file: ../../outside.env: leaves the package",
            ),
            (
                "services:\n  web:\n    image: nginx\n    environment: [\"=x\"]\n",
                "services.web.environment[0]: `=x` has no key before `=`",
            ),
            (
                "services:\n  web:\n    image: nginx\n    command: \"echo 'open\"\n",
                "services.web.command: cannot split `echo 'open` into words (unbalanced quotes?)",
            ),
            ("services: {}\n", "services: the file defines no services"),
            (
                "services:\n  \"bad name\":\n    image: x\n",
                "services.bad name: invalid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)",
            ),
            (
                "services:\n  web:\n    image: nginx\nnetworks:\n  front:\n    name: \"bad name\"\n",
                "networks.front.bad name: invalid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)",
            ),
        ];
        for (yaml, expected) in cases {
            assert_eq!(error_of(yaml), expected, "yaml:\n{yaml}");
        }
    }

    #[test]
    fn malformed_yaml_and_non_mappings_are_errors() {
        assert!(error_of("services: [").starts_with("invalid YAML"));
        assert_eq!(error_of(""), "the file is empty");
        assert_eq!(
            error_of("- a\n- b\n"),
            "invalid type: sequence, expected a mapping of compose keys (services, networks, volumes)"
        );
        assert_eq!(
            error_of("services:\n  web: [nginx]\n"),
            "services.web: invalid type: sequence, expected a mapping of service keys"
        );
        assert_eq!(
            error_of("services:\n  web:\n    image: nginx\n    ports: !reset []\n"),
            "services.web.ports: YAML tag !reset is not supported"
        );
    }

    #[test]
    fn default_network_is_added_only_when_used() {
        let project = load_str(
            "services:\n  a:\n    image: x\n    networks: [back]\n  b:\n    image: x\nnetworks:\n  back:\n",
        )
        .expect("loads");
        assert_eq!(service_named(&project, "b").networks, on_default());
        assert_eq!(
            project.networks,
            vec![
                default_network(),
                Network {
                    name: "back".into(),
                    ..default_network()
                }
            ]
        );

        let project =
            load_str("services:\n  a:\n    image: x\n    networks: [back]\nnetworks:\n  back:\n")
                .expect("loads");
        assert_eq!(
            project
                .networks
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["back"]
        );

        // A declared default network is used as declared, not added twice.
        let project = load_str(
            "services:\n  a:\n    image: x\nnetworks:\n  default:\n    external: true\n    name: shared\n",
        )
        .expect("loads");
        assert_eq!(
            project.networks,
            vec![Network {
                external: Some("shared".into()),
                ..default_network()
            }]
        );
    }

    #[test]
    fn services_keep_file_order() {
        let project = load_str(
            "services:\n  zeta:\n    image: x\n  alpha:\n    image: x\n  mid:\n    image: x\n",
        )
        .expect("loads");
        let names: Vec<&str> = project.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "mid"]);
    }

    #[test]
    fn alternative_forms() {
        let yaml = r#"
services:
  web:
    image: nginx
    restart: "on-failure:5"
    environment:
      - PLAIN=1
      - EMPTY=
      - FROM_VARS
      - NOT_SET
    env_file: [a.env, b.env]
    labels:
      count: 3
      flag: true
      empty:
    ports:
      - 9000-9001:90-91/udp
      - 53
    volumes:
      - type: volume
        source: data
        target: /data
        read_only: "${RO}"
      - type: tmpfs
        target: /cache
        tmpfs:
          size: 1g
      - .:/pkg
    tmpfs: ["/run", "/var/run:size=1k"]
    depends_on: [db]
    healthcheck:
      disable: true
    entrypoint: ["/init", 7]
    mem_limit: 1048576
    cpus: "0.5"
  db:
    image: pg
    restart: no
volumes:
  data:
    driver: local
    driver_opts:
      type: none
      o: bind
    labels: ["tier=db"]
  shared:
    external:
      name: team-shared
"#;
        let package = files(&[
            ("app/a.env", "A=1\nSHARED=a\n"),
            ("app/b.env", "SHARED=b\n"),
        ]);
        let variables = strings(&[("FROM_VARS", "v"), ("RO", "true")]);
        let project =
            load("app/compose.yaml", yaml.as_bytes(), &variables, &package).expect("loads");
        let web = service_named(&project, "web");
        assert_eq!(web.restart.as_deref(), Some("on-failure:5"));
        // YAML 1.2 keeps an unquoted `no` a string, as compose files write it.
        assert_eq!(service_named(&project, "db").restart.as_deref(), Some("no"));
        assert_eq!(
            web.environment.0,
            strings(&[
                ("A", "1"),
                ("EMPTY", ""),
                ("FROM_VARS", "v"),
                ("PLAIN", "1"),
                ("SHARED", "b")
            ])
        );
        assert_eq!(
            web.labels,
            strings(&[("count", "3"), ("empty", ""), ("flag", "true")])
        );
        let udp = |host, container| Port {
            host_ip: None,
            host_port: Some(host),
            container_port: container,
            protocol: "udp".into(),
        };
        assert_eq!(
            web.ports,
            vec![
                udp(9000, 90),
                udp(9001, 91),
                Port {
                    host_ip: None,
                    host_port: None,
                    container_port: 53,
                    protocol: "tcp".into()
                },
            ]
        );
        assert_eq!(
            web.mounts,
            vec![
                Mount::Volume {
                    source: "data".into(),
                    target: "/data".into(),
                    read_only: true
                },
                Mount::Tmpfs {
                    target: "/cache".into(),
                    size: Some(1 << 30)
                },
                Mount::Bind {
                    source: BindSource::Package("app".into()),
                    target: "/pkg".into(),
                    read_only: false,
                    bind_options: None
                },
            ]
        );
        assert_eq!(web.tmpfs, strings(&[("/run", ""), ("/var/run", "size=1k")]));
        assert_eq!(
            web.depends_on,
            vec![Dependency {
                service: "db".into(),
                condition: Condition::Started
            }]
        );
        assert_eq!(web.healthcheck.map(|h| h.test), Some(vec!["NONE".into()]));
        assert_eq!(web.entrypoint, Some(vec!["/init".into(), "7".into()]));
        assert_eq!(web.mem_limit, Some(1_048_576));
        assert_eq!(web.nano_cpus, Some(500_000_000));
        assert_eq!(
            project.volumes,
            vec![
                Volume {
                    name: "data".into(),
                    driver: Some("local".into()),
                    driver_opts: strings(&[("type", "none"), ("o", "bind")]),
                    external: None,
                    labels: strings(&[("tier", "db")]),
                    custom_name: None,
                },
                Volume {
                    name: "shared".into(),
                    driver: None,
                    driver_opts: BTreeMap::new(),
                    external: Some("team-shared".into()),
                    labels: BTreeMap::new(),
                    custom_name: None,
                },
            ]
        );
    }

    #[test]
    fn bind_sources_resolve_against_the_compose_directory() {
        let yaml = "services:\n  web:\n    image: x\n    volumes:\n      - ../shared/conf:/conf\n      - ./:/pkg\n";
        let project = load(
            "deep/app/compose.yaml",
            yaml.as_bytes(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .expect("loads");
        let sources: Vec<&Mount> = project.services[0].mounts.iter().collect();
        assert_eq!(
            sources,
            [
                &Mount::Bind {
                    source: BindSource::Package("deep/shared/conf".into()),
                    target: "/conf".into(),
                    read_only: false,
                    bind_options: None
                },
                &Mount::Bind {
                    source: BindSource::Package("deep/app".into()),
                    target: "/pkg".into(),
                    read_only: false,
                    bind_options: None
                },
            ]
        );
        // At the package root, `..` already leaves the package.
        let escaping = load(
            "compose.yaml",
            b"services:\n  web:\n    image: x\n    volumes: [\"../x:/x\"]\n",
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert!(
            matches!(&escaping, Err(Error::Compose { message, .. }) if message == "services.web.volumes[0]: bind source ../x leaves the package"),
            "{escaping:?}"
        );
    }

    #[test]
    fn external_objects_take_no_configuration() {
        assert_eq!(
            error_of(
                "services:\n  web:\n    image: x\nnetworks:\n  n:\n    external: true\n    driver: bridge\n"
            ),
            "networks.n: an external network takes no driver, internal or labels"
        );
        assert_eq!(
            error_of(
                "services:\n  web:\n    image: x\nvolumes:\n  v:\n    external: true\n    driver_opts: {o: x}\n"
            ),
            "volumes.v: an external volume takes no driver, driver_opts or labels"
        );
        let project =
            load_str("services:\n  web:\n    image: x\nvolumes:\n  v:\n    external: true\n")
                .expect("loads");
        assert_eq!(project.volumes[0].external.as_deref(), Some("v"));
    }

    #[test]
    fn healthcheck_disable_conflicts_with_test() {
        assert_eq!(
            error_of(
                "services:\n  web:\n    image: x\n    healthcheck:\n      disable: true\n      test: [\"CMD\", \"true\"]\n"
            ),
            "services.web.healthcheck: `disable` and `test` cannot both be set"
        );
        assert_eq!(
            error_of(
                "services:\n  web:\n    image: x\n    healthcheck:\n      test: [\"CMD-SHELL\"]\n"
            ),
            "services.web.healthcheck.test: a test list must be [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]"
        );
    }
}

/// The corpus of realistic compose files in `testdata/compose-corpus`, each loaded as woa-deploy
/// loads a package, against what Compose v2 decided about the same file.
#[cfg(test)]
mod corpus {
    use std::collections::BTreeMap;
    use std::path::Path;

    fn package(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(at) = pending.pop() {
            for entry in std::fs::read_dir(&at).expect("corpus directory").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(relative) = path.strip_prefix(dir) {
                    let bytes = std::fs::read(&path).expect("corpus file");
                    files.insert(relative.to_string_lossy().into_owned(), bytes);
                }
            }
        }
        files
    }

    /// Files Compose v2 accepts that woa-deploy refuses on purpose, with why.
    const REFUSED: &[(&str, &str)] = &[
        // Podman's user namespace mode; the Docker engine refuses it at create.
        (
            "freshrss-selinux",
            "userns_mode: `keep-id` is not supported",
        ),
    ];

    #[test]
    fn the_corpus_loads_where_compose_v2_accepts_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/compose-corpus");
        let expected = std::fs::read_to_string(root.join("EXPECTED.tsv")).expect("EXPECTED.tsv");
        let (mut accepted, mut v2_accepted, mut wrong) = (0, 0, Vec::new());
        for line in expected.lines().skip(1) {
            let [name, file, v2, _, build] = line.split('\t').collect::<Vec<_>>()[..] else {
                panic!("EXPECTED.tsv line {line:?}");
            };
            let files = package(&root.join(name));
            let loaded = super::load(file, &files[file], &BTreeMap::new(), &files);
            let v2_accepts = v2 == "accept" && build == "no";
            v2_accepted += usize::from(v2_accepts);
            accepted += usize::from(loaded.is_ok());
            match (&loaded, v2_accepts) {
                (Ok(_), true) | (Err(_), false) => {}
                (Err(e), true)
                    if REFUSED
                        .iter()
                        .any(|(n, why)| *n == name && e.to_string().contains(why)) => {}
                (Err(e), true) => wrong.push(format!("{name}: refused: {e}")),
                (Ok(_), false) => wrong.push(format!("{name}: accepted, Compose v2 refuses it")),
            }
        }
        println!("woa accepts {accepted}; Compose v2 accepts {v2_accepted} without build");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
