//! [`ContainerRuntime`] on the Docker Engine API, through bollard. The only module that knows it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, DeviceRequest, EndpointIpamConfig, EndpointSettings,
    HealthConfig, HostConfig, HostConfigLogConfig, Ipam, IpamConfig, Mount, MountTmpfsOptions,
    MountType, NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, PortBinding,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions, RemoveImageOptions,
    RemoveVolumeOptions, RenameContainerOptions, StopContainerOptions, UploadToContainerOptions,
};
use futures_util::TryStreamExt;

use crate::package::{Credentials, Secret};
use crate::runtime::{
    ContainerPlan, ContainerRuntime, EngineFacts, LABEL_AGENT, LABEL_COMPONENT, LABEL_DEPENDS_ON,
    LABEL_DEPLOYMENT, LABEL_SERVICE, LABEL_SPEC_HASH, Observed, ObservedContainer, ObservedObject,
    Owner,
};
use crate::spec::{self, BindSource, Network, Volume};
use crate::{Error, Result};

/// The Docker engine, with the registry credentials of the device.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    registries: BTreeMap<String, Credentials>,
    /// Value of `org.margo.woa.agent` on every object this runtime manages.
    instance: String,
    /// The last inspection of each managed container, by id, with the list entry it matched:
    /// the list answer of older APIs lacks the restart count, and inspecting every container
    /// at every resync would cost one engine call each. An entry is used while the list shows
    /// the container in the same state and health and no event about it arrived.
    inspected: Arc<Mutex<HashMap<String, (String, ObservedContainer)>>>,
}

impl DockerRuntime {
    /// Connects to the engine (`DOCKER_HOST` or the local socket) and negotiates the API version,
    /// since device engines are often older than the newest API.
    /// Only objects labelled with `instance` are seen or touched, so several agents (or test
    /// runs) can share one engine.
    pub async fn connect(
        registries: BTreeMap<String, Credentials>,
        instance: &str,
    ) -> Result<Self> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| engine("connecting to the docker engine", e))?
            .negotiate_version()
            .await
            .map_err(|e| engine("negotiating the docker API version", e))?;
        Ok(Self {
            docker,
            registries,
            instance: instance.to_string(),
            inspected: Arc::default(),
        })
    }

    fn credentials(&self, image: &str) -> Result<Option<DockerCredentials>> {
        let Some(creds) = self.registries.get(registry_of(image)) else {
            return Ok(None);
        };
        Ok(Some(match creds.read()? {
            Secret::Basic { username, password } => DockerCredentials {
                username: Some(username),
                password: Some(password),
                ..Default::default()
            },
            Secret::Bearer(token) => DockerCredentials {
                registrytoken: Some(token),
                ..Default::default()
            },
        }))
    }

    /// The container `id` as the agent sees it; `None` when it is gone or not this agent's.
    async fn inspect(&self, id: &str) -> Result<Option<ObservedContainer>> {
        let c = match self.docker.inspect_container(id, None).await {
            Ok(c) => c,
            // Removed behind our back, or between listing and inspecting: simply gone.
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(engine(&format!("inspecting container {id}"), e)),
        };
        let config = c.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        if labels.get(LABEL_AGENT) != Some(&self.instance) {
            return Ok(None);
        }
        let Some(owner) = owner_of(&labels) else {
            return Ok(None);
        };
        let state = c.state.unwrap_or_default();
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Ok(Some(ObservedContainer {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            owner,
            service: label(LABEL_SERVICE),
            spec_hash: label(LABEL_SPEC_HASH),
            image: config.image.unwrap_or_default(),
            state: state.status.map(|s| s.to_string()).unwrap_or_default(),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| s != "none")
                .unwrap_or_default(),
            restart_count: c.restart_count.unwrap_or(0).try_into().unwrap_or(u32::MAX),
            exit_code: state.exit_code.unwrap_or(0),
            depends_on: labels
                .get(LABEL_DEPENDS_ON)
                .map(|l| l.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        }))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, ObservedContainer)>> {
        self.inspected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every managed object, or those of one deployment.
    async fn list(&self, deployment: Option<&str>) -> Result<Observed> {
        let filters = || {
            let mut filters = managed_filter(&self.instance);
            if let Some(id) = deployment {
                filters[0].1.push(format!("{LABEL_DEPLOYMENT}={id}"));
            }
            Some(HashMap::from(filters))
        };
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: filters(),
                ..Default::default()
            }))
            .await
            .map_err(|e| engine("listing containers", e))?;
        let mut containers = Vec::with_capacity(list.len());
        let mut listed = std::collections::HashSet::new();
        for c in list {
            let Some(id) = c.id else { continue };
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            let key = cache_key(
                &state,
                listed_health(c.status.as_deref().unwrap_or_default()),
            );
            let cached = self
                .cache()
                .get(&id)
                .filter(|(k, _)| *k == key)
                .map(|(_, c)| c.clone());
            let observed = match cached {
                Some(c) => Some(c),
                None => self.inspect(&id).await?,
            };
            if let Some(o) = observed {
                self.cache().insert(id.clone(), (key, o.clone()));
                containers.push(o);
            }
            listed.insert(id);
        }
        if deployment.is_none() {
            self.cache().retain(|id, _| listed.contains(id));
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: filters() }))
            .await
            .map_err(|e| engine("listing networks", e))?
            .into_iter()
            .filter_map(|n| {
                let owner = owner_of(n.labels.as_ref()?)?;
                Some(ObservedObject {
                    name: n.name?,
                    owner,
                })
            })
            .collect();
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions { filters: filters() }))
            .await
            .map_err(|e| engine("listing volumes", e))?
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                Some(ObservedObject {
                    owner: owner_of(&v.labels)?,
                    name: v.name,
                })
            })
            .collect();
        Ok(Observed {
            containers,
            networks,
            volumes,
        })
    }
}

/// What a cached inspection is valid for: the container's state and health.
fn cache_key(state: &str, health: &str) -> String {
    format!("{state}|{health}")
}

/// The health a container list entry's status text ends with, as an inspection names it:
/// "Up 2 hours (healthy)", "(unhealthy)", "(health: starting)"; empty without a health check.
fn listed_health(status: &str) -> &str {
    let Some(open) = status.strip_suffix(')').and_then(|s| s.rsplit_once('(')) else {
        return "";
    };
    match open.1 {
        "health: starting" => "starting",
        health @ ("healthy" | "unhealthy") => health,
        _ => "",
    }
}

/// The registry part of an image reference (`docker.io` when it names none).
fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

fn engine(operation: &str, e: bollard::errors::Error) -> Error {
    let message = match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => woa_common::chain(&other),
    };
    Error::Runtime {
        operation: operation.to_string(),
        message,
    }
}

fn owner_of(labels: &HashMap<String, String>) -> Option<Owner> {
    Some(Owner {
        deployment: labels.get(LABEL_DEPLOYMENT)?.clone(),
        component: labels.get(LABEL_COMPONENT).cloned().unwrap_or_default(),
    })
}

fn owner_labels(
    instance: &str,
    owner: &Owner,
    extra: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut labels: HashMap<_, _> = extra.clone().into_iter().collect();
    labels.insert(LABEL_AGENT.into(), instance.to_string());
    labels.insert(LABEL_DEPLOYMENT.into(), owner.deployment.clone());
    labels.insert(LABEL_COMPONENT.into(), owner.component.clone());
    labels
}

fn managed_filter(instance: &str) -> [(String, Vec<String>); 1] {
    [(
        "label".to_string(),
        vec![
            LABEL_DEPLOYMENT.to_string(),
            format!("{LABEL_AGENT}={instance}"),
        ],
    )]
}

/// A tar archive of `files` at their absolute paths. It holds no directories: the engine makes
/// missing ones, and an entry for an existing one (`/tmp`) would change its owner and mode.
fn archive(files: &[spec::ContainerFile]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for file in files {
        let path = file.target.trim_start_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_mode(file.mode);
        header.set_uid(file.uid.unwrap_or(0).into());
        header.set_gid(file.gid.unwrap_or(0).into());
        header.set_size(file.content.len() as u64);
        tar.append_data(&mut header, path, file.content.as_slice())?;
    }
    tar.into_inner()
}

/// An `expose` entry (`80/tcp`, `9000-9001/tcp`) as the engine's exposed ports.
fn expose_range(entry: &str) -> Vec<String> {
    let (ports, protocol) = entry.split_once('/').unwrap_or((entry, "tcp"));
    let range = ports.split_once('-').and_then(|(low, high)| {
        let (low, high): (u16, u16) = (low.parse().ok()?, high.parse().ok()?);
        Some((low..=high).map(|p| format!("{p}/{protocol}")).collect())
    });
    range.unwrap_or_else(|| vec![format!("{ports}/{protocol}")])
}

/// `image` with `:latest` when it names neither a tag nor a digest.
fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

fn is_not_modified(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl ContainerRuntime for DockerRuntime {
    async fn observe(&self) -> Result<Observed> {
        self.list(None).await
    }

    async fn observe_deployment(&self, id: &str) -> Result<Observed> {
        self.list(Some(id)).await
    }

    async fn follow_events(&self, changed: &tokio::sync::mpsc::Sender<String>) -> Result<()> {
        let mut filters = HashMap::from(managed_filter(&self.instance));
        filters.insert("type".into(), vec!["container".into()]);
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let mut events = std::pin::pin!(self.docker.events(Some(options)));
        // Whatever happened while no stream was followed is unknown: inspect afresh.
        self.cache().clear();
        while let Some(event) = events
            .try_next()
            .await
            .map_err(|e| engine("following engine events", e))?
        {
            let Some(actor) = event.actor else { continue };
            if let Some(id) = &actor.id {
                self.cache().remove(id);
            }
            let deployment = actor
                .attributes
                .and_then(|mut a| a.remove(LABEL_DEPLOYMENT));
            if let Some(deployment) = deployment
                && changed.send(deployment).await.is_err()
            {
                break;
            }
        }
        Ok(())
    }

    async fn container(&self, name: &str) -> Result<Option<ObservedContainer>> {
        let observed = self.inspect(name).await?;
        if let Some(o) = &observed {
            let key = cache_key(&o.state, &o.health);
            self.cache().insert(o.id.clone(), (key, o.clone()));
        }
        Ok(observed)
    }

    async fn has_image(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(&with_tag(image)).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(engine(&format!("inspecting image {image}"), e)),
        }
    }

    async fn pull_image(&self, image: &str) -> Result<()> {
        // Without a tag the engine would pull every tag of the repository.
        let image = &with_tag(image);
        let credentials = self.credentials(image).map_err(|e| Error::ImagePull {
            image: image.to_string(),
            message: woa_common::chain(&e),
        })?;
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        self.docker
            .create_image(Some(options), None, credentials)
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(|e| Error::ImagePull {
                image: image.to_string(),
                message: match e {
                    bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => woa_common::chain(&other),
                },
            })
    }

    async fn remove_image(&self, image: &str) -> Result<bool> {
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        match self
            .docker
            .remove_image(&with_tag(image), Some(options), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(false),
            Err(e) => Err(engine(&format!("removing image {image}"), e)),
        }
    }

    async fn create_network(&self, name: &str, owner: &Owner, network: &Network) -> Result<()> {
        let pools = (network.ipam.iter())
            .map(|p| IpamConfig {
                subnet: p.subnet.clone(),
                ip_range: p.ip_range.clone(),
                gateway: p.gateway.clone(),
                auxiliary_addresses: (!p.aux_addresses.is_empty())
                    .then(|| p.aux_addresses.clone().into_iter().collect()),
            })
            .collect::<Vec<_>>();
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: network.driver.clone(),
            internal: Some(network.internal),
            labels: Some(owner_labels(&self.instance, owner, &network.labels)),
            options: (!network.driver_opts.is_empty())
                .then(|| network.driver_opts.clone().into_iter().collect()),
            enable_ipv6: network.enable_ipv6.then_some(true),
            ipam: (!pools.is_empty() || network.ipam_driver.is_some()).then(|| Ipam {
                driver: network.ipam_driver.clone(),
                config: Some(pools),
                options: None,
            }),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map(|_| ())
            .map_err(|e| engine(&format!("creating network {name}"), e))
    }

    async fn create_volume(&self, name: &str, owner: &Owner, volume: &Volume) -> Result<()> {
        // Creating a volume that exists returns it as it is: a name (`volumes.x.name`) must not
        // hand a deployment the data of a volume it does not own.
        if let Ok(existing) = self.docker.inspect_volume(name).await {
            let labels = existing.labels;
            let ours = labels.get(LABEL_AGENT) == Some(&self.instance)
                && labels.get(LABEL_DEPLOYMENT) == Some(&owner.deployment)
                && labels.get(LABEL_COMPONENT) == Some(&owner.component);
            if !ours {
                return Err(Error::Runtime {
                    operation: format!("creating volume {name}"),
                    message: format!(
                        "a volume named {name} exists and is not this deployment's (use it as an `external` volume, allowed in policy.external_volumes)"
                    ),
                });
            }
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: volume.driver.clone(),
            driver_opts: Some(volume.driver_opts.clone().into_iter().collect()),
            labels: Some(owner_labels(&self.instance, owner, &volume.labels)),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(|_| ())
            .map_err(|e| engine(&format!("creating volume {name}"), e))
    }

    async fn create_container(&self, plan: &ContainerPlan) -> Result<String> {
        let (body, mut more_networks) = container_body(&self.instance, plan);
        let options = CreateContainerOptions {
            name: Some(plan.name.clone()),
            platform: plan.service.platform.clone().unwrap_or_default(),
        };
        let id = self
            .docker
            .create_container(Some(options), body)
            .await
            .map(|r| r.id)
            .map_err(|e| engine(&format!("creating container {}", plan.name), e))?;
        if !plan.service.files.is_empty() {
            // Compose's secrets and configs, put in before the first start as Compose does.
            let upload = match archive(&plan.service.files) {
                Ok(tar) => {
                    let options = UploadToContainerOptions {
                        path: "/".into(),
                        ..Default::default()
                    };
                    let body = bollard::body_full(tar.into());
                    let sent = self.docker.upload_to_container(&id, Some(options), body);
                    sent.await
                        .map_err(|e| engine(&format!("putting files into {}", plan.name), e))
                }
                Err(e) => Err(Error::Runtime {
                    operation: format!("packing files for {}", plan.name),
                    message: e.to_string(),
                }),
            };
            if let Err(e) = upload {
                let _ = self.remove_container(&id).await;
                return Err(e);
            }
        }
        for (network, endpoint) in more_networks.drain(..) {
            let request = NetworkConnectRequest {
                container: id.clone(),
                endpoint_config: Some(endpoint),
            };
            if let Err(e) = self.docker.connect_network(&network, request).await {
                // A half-made container would look up to date to the next pass: remove it.
                let _ = self.remove_container(&id).await;
                return Err(engine(&format!("connecting {} to {network}", plan.name), e));
            }
        }
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| engine(&format!("starting container {id}"), e))
    }

    async fn rename_container(&self, id: &str, name: &str) -> Result<()> {
        let options = RenameContainerOptions {
            name: name.to_string(),
        };
        self.docker
            .rename_container(id, options)
            .await
            .map_err(|e| engine(&format!("renaming container {id} to {name}"), e))
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        // The container's stop signal and grace period first (set at create from compose's
        // `stop_signal` and `stop_grace_period`; SIGTERM and 10 s by default), as `docker stop`
        // does, so apps can shut down cleanly.
        let stop = StopContainerOptions::default();
        match self.docker.stop_container(id, Some(stop)).await {
            Err(e) if !is_not_found(&e) && !is_not_modified(&e) => {
                tracing::debug!(container = %id, error = %e, "stop before removal failed");
            }
            _ => {}
        }
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Err(e) if !is_not_found(&e) => Err(engine(&format!("removing container {id}"), e)),
            _ => Ok(()),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        match self.docker.remove_network(name).await {
            Err(e) if !is_not_found(&e) => Err(engine(&format!("removing network {name}"), e)),
            _ => Ok(()),
        }
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
        {
            Err(e) if !is_not_found(&e) => Err(engine(&format!("removing volume {name}"), e)),
            _ => Ok(()),
        }
    }

    async fn facts(&self) -> Result<EngineFacts> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| engine("reading engine info", e))?;
        Ok(EngineFacts {
            runtime: format!("docker {}", info.server_version.unwrap_or_default()),
            architecture: info.architecture.unwrap_or_default(),
            cpus: info.ncpu.unwrap_or(0).try_into().unwrap_or(0),
            memory_bytes: info.mem_total.unwrap_or(0).try_into().unwrap_or(0),
            root_dir: info.docker_root_dir.unwrap_or_default(),
        })
    }
}

/// The engine's create request for a planned container, and the further networks to connect
/// it to before it starts (engines before API 1.44 take one network at create time).
fn container_body(
    instance: &str,
    plan: &ContainerPlan,
) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
    let s = &plan.service;
    let mut labels: HashMap<String, String> = owner_labels(instance, &plan.owner, &s.labels);
    labels.insert(LABEL_SERVICE.into(), s.name.clone());
    labels.insert(LABEL_SPEC_HASH.into(), plan.spec_hash.clone());
    if !s.depends_on.is_empty() {
        let services: Vec<&str> = s.depends_on.iter().map(|d| d.service.as_str()).collect();
        labels.insert(LABEL_DEPENDS_ON.into(), services.join(","));
    }

    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &s.ports {
        port_bindings
            .entry(format!("{}/{}", p.container_port, p.protocol))
            .or_default()
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: p.host_port.map(|p| p.to_string()),
            });
    }
    let bind_source = |source: &BindSource| match source {
        BindSource::Host(path) | BindSource::Data(path) => path.clone(),
        BindSource::Package(path) => plan.package_dir.join(path).to_string_lossy().into_owned(),
    };
    // SELinux relabelling and propagation of binds go in the engine's older `Binds` form,
    // which takes them on every engine version.
    let relabelled: Vec<String> = (s.mounts.iter())
        .filter_map(|m| match m {
            spec::Mount::Bind {
                source,
                target,
                read_only,
                bind_options: Some(bind_options),
            } => {
                let mode = if *read_only { "ro" } else { "rw" };
                Some(format!(
                    "{}:{target}:{mode},{bind_options}",
                    bind_source(source)
                ))
            }
            _ => None,
        })
        .collect();
    let mounts = s
        .mounts
        .iter()
        .filter(|m| {
            !matches!(
                m,
                spec::Mount::Bind {
                    bind_options: Some(_),
                    ..
                }
            )
        })
        .map(|m| match m {
            spec::Mount::Volume {
                source,
                target,
                read_only,
            } => Mount {
                typ: Some(MountType::VOLUME),
                source: plan.volumes.get(source).cloned(),
                target: Some(target.clone()),
                read_only: Some(*read_only),
                ..Default::default()
            },
            spec::Mount::Bind {
                source,
                target,
                read_only,
                ..
            } => Mount {
                typ: Some(MountType::BIND),
                source: Some(bind_source(source)),
                target: Some(target.clone()),
                // Package content is shared by every release that ships the same files: an
                // app reads it, it never changes it. Data goes to the data directories.
                read_only: Some(*read_only || matches!(source, BindSource::Package(_))),
                ..Default::default()
            },
            spec::Mount::Tmpfs { target, size } => Mount {
                typ: Some(MountType::TMPFS),
                target: Some(target.clone()),
                tmpfs_options: size.map(|size| MountTmpfsOptions {
                    size_bytes: Some(size),
                    ..Default::default()
                }),
                ..Default::default()
            },
        })
        .collect();
    let restart_policy = s.restart.as_deref().map(|r| {
        let (name, count) = r.split_once(':').unwrap_or((r, ""));
        RestartPolicy {
            name: Some(match name {
                "always" => RestartPolicyNameEnum::ALWAYS,
                "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
                "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
                _ => RestartPolicyNameEnum::NO,
            }),
            maximum_retry_count: count.parse().ok(),
        }
    });
    // Every attachment carries the service name (and its container_name) as an alias, as
    // compose does.
    let mut endpoints: Vec<(String, EndpointSettings)> = s
        .networks
        .iter()
        .filter_map(|a| {
            let mut aliases = vec![s.name.clone()];
            aliases.extend(s.container_name.iter().cloned());
            aliases.extend(a.aliases.iter().cloned());
            let fixed = a.ipv4_address.is_some() || a.ipv6_address.is_some();
            Some((
                plan.networks.get(&a.network)?.clone(),
                EndpointSettings {
                    aliases: Some(aliases),
                    ipam_config: fixed.then(|| EndpointIpamConfig {
                        ipv4_address: a.ipv4_address.clone(),
                        ipv6_address: a.ipv6_address.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
        })
        .collect();
    let mut first = (!endpoints.is_empty()).then(|| endpoints.remove(0));
    if let Some((_, endpoint)) = &mut first {
        endpoint.mac_address = s.mac_address.clone();
    }
    let shared = |mode: &str| match mode.strip_prefix("service:") {
        Some(service) => format!("container:{}", plan.container_of(service)),
        None => mode.to_owned(),
    };
    let network_mode = match &s.network_mode {
        Some(spec::NetworkMode::Host) => Some("host".to_owned()),
        Some(spec::NetworkMode::None) => Some("none".to_owned()),
        Some(spec::NetworkMode::Bridge) => Some("bridge".to_owned()),
        Some(spec::NetworkMode::Service(service)) => Some(shared(&format!("service:{service}"))),
        None => first.as_ref().map(|(name, _)| name.clone()),
    };
    let mut exposed: Vec<String> = port_bindings.keys().cloned().collect();
    exposed.extend(s.expose.iter().flat_map(|e| expose_range(e)));
    let vec_or_none = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let map_or_none = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.clone().into_iter().collect::<HashMap<_, _>>())
    };
    let r = &s.resources;

    let body = ContainerCreateBody {
        image: Some(s.image.clone()),
        cmd: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        env: Some(
            s.environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        exposed_ports: Some(exposed),
        labels: Some(labels),
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        hostname: s.hostname.clone(),
        domainname: s.domainname.clone(),
        open_stdin: s.stdin_open.then_some(true),
        tty: s.tty.then_some(true),
        stop_signal: s.stop_signal.clone(),
        stop_timeout: s.stop_grace_period_s,
        healthcheck: s.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()).filter(|t| !t.is_empty()),
            interval: h.interval_ns,
            timeout: h.timeout_ns,
            retries: h.retries,
            start_period: h.start_period_ns,
            start_interval: h.start_interval_ns,
        }),
        host_config: Some(HostConfig {
            port_bindings: Some(port_bindings),
            mounts: Some(mounts),
            binds: vec_or_none(&relabelled),
            tmpfs: map_or_none(&s.tmpfs),
            restart_policy,
            cap_add: Some(s.cap_add.clone()),
            cap_drop: Some(s.cap_drop.clone()),
            readonly_rootfs: Some(s.read_only),
            memory: s.mem_limit,
            nano_cpus: s.nano_cpus,
            network_mode,
            log_config: s.logging.as_ref().map(|l| HostConfigLogConfig {
                typ: l.driver.clone(),
                config: Some(l.options.clone().into_iter().collect()),
            }),
            dns: vec_or_none(&s.dns),
            dns_search: vec_or_none(&s.dns_search),
            dns_options: vec_or_none(&s.dns_opt),
            extra_hosts: vec_or_none(&s.extra_hosts),
            privileged: s.privileged.then_some(true),
            devices: (!s.devices.is_empty()).then(|| {
                (s.devices.iter())
                    .map(|d| DeviceMapping {
                        path_on_host: Some(d.host.clone()),
                        path_in_container: Some(d.container.clone()),
                        cgroup_permissions: Some(d.permissions.clone()),
                    })
                    .collect()
            }),
            device_cgroup_rules: vec_or_none(&s.device_cgroup_rules),
            device_requests: (!s.device_requests.is_empty()).then(|| {
                (s.device_requests.iter())
                    .map(|d| DeviceRequest {
                        driver: d.driver.clone(),
                        count: d.count.or((d.device_ids.is_empty()).then_some(-1)),
                        device_ids: vec_or_none(&d.device_ids),
                        capabilities: Some(vec![d.capabilities.clone()]),
                        options: map_or_none(&d.options),
                    })
                    .collect()
            }),
            security_opt: vec_or_none(&s.security_opt),
            sysctls: map_or_none(&s.sysctls),
            pid_mode: s.namespaces.pid.as_deref().map(shared),
            ipc_mode: s.namespaces.ipc.as_deref().map(shared),
            uts_mode: s.namespaces.uts.clone(),
            userns_mode: s.namespaces.userns.clone(),
            runtime: s.runtime.clone(),
            init: s.init,
            group_add: vec_or_none(&s.group_add),
            pids_limit: r.pids_limit,
            memory_swap: r.memswap_limit,
            memory_reservation: r.mem_reservation,
            shm_size: r.shm_size,
            cpu_shares: r.cpu_shares,
            cpuset_cpus: r.cpuset.clone(),
            oom_score_adj: r.oom_score_adj,
            ulimits: (!r.ulimits.is_empty()).then(|| {
                (r.ulimits.iter())
                    .map(|(name, soft, hard)| ResourcesUlimits {
                        name: Some(name.clone()),
                        soft: Some(*soft),
                        hard: Some(*hard),
                    })
                    .collect()
            }),
            annotations: map_or_none(&s.annotations),
            storage_opt: map_or_none(&s.storage_opt),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(first.into_iter().collect()),
        }),
        ..Default::default()
    };
    (body, endpoints)
}

#[cfg(test)]
mod tests {
    #[test]
    fn list_status_texts_give_the_health_an_inspection_reports() {
        use super::listed_health;
        assert_eq!(listed_health("Up 2 hours (healthy)"), "healthy");
        assert_eq!(listed_health("Up 1 second (health: starting)"), "starting");
        assert_eq!(listed_health("Up 5 minutes (unhealthy)"), "unhealthy");
        assert_eq!(listed_health("Exited (0) 5 seconds ago"), "");
        assert_eq!(listed_health("Up 3 seconds"), "");
    }

    use super::{registry_of, with_tag};

    #[test]
    fn untagged_images_get_latest_and_tags_or_digests_are_kept() {
        assert_eq!(with_tag("nginx"), "nginx:latest");
        assert_eq!(with_tag("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(with_tag("127.0.0.1:5000/app:2"), "127.0.0.1:5000/app:2");
        assert_eq!(with_tag("app@sha256:abc"), "app@sha256:abc");
    }

    #[test]
    fn registry_is_the_first_component_only_when_it_looks_like_a_host() {
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(
            registry_of("registry.example.com/a/b"),
            "registry.example.com"
        );
        assert_eq!(registry_of("library/nginx"), "docker.io");
        assert_eq!(registry_of("nginx:1.25"), "docker.io");
    }
}
