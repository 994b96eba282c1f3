//! `plan(desired, observed) -> steps`: pure, so every decision is table-tested without an engine.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::desired::{Component, Deployment};
use crate::runtime::{ContainerPlan, Observed, ObservedContainer, Owner};
use crate::spec::Condition;

/// A container another one waits for before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaited {
    /// Engine name of the container.
    pub name: String,
    /// What it must reach.
    pub condition: Condition,
    /// Its desired spec hash: an outdated container of that name does not count.
    pub spec_hash: String,
}

/// One thing to do on the engine, in the order given.
#[derive(Debug, Clone)]
pub enum Step {
    /// Remove a container that no desired service owns (or a duplicate).
    RemoveContainer(Box<ObservedContainer>),
    /// Remove a network no desired component owns.
    RemoveNetwork(String),
    /// Remove a volume no desired component owns (only when configured to).
    RemoveVolume(String),
    /// Create a network of a component.
    CreateNetwork {
        /// Engine name.
        name: String,
        /// Owning component.
        owner: Owner,
        /// The compose network.
        network: crate::spec::Network,
    },
    /// Create a volume of a component.
    CreateVolume {
        /// Engine name.
        name: String,
        /// Owning component.
        owner: Owner,
        /// The compose volume.
        volume: crate::spec::Volume,
    },
    /// Pull, wait for dependencies, replace `replaces` (if any), create and start.
    Create {
        /// The container to create.
        plan: Box<ContainerPlan>,
        /// The outdated container it replaces.
        replaces: Option<String>,
        /// Containers (engine names) that must reach a condition first.
        after: Vec<Awaited>,
    },
    /// Start an up-to-date container that is not running (drift).
    Start {
        /// Engine id.
        id: String,
        /// Engine name.
        name: String,
        /// Owning component.
        owner: Owner,
        /// Containers (engine names) that must reach a condition first.
        after: Vec<Awaited>,
    },
}

impl Step {
    /// The container a create or start step is about.
    pub fn container(&self) -> Option<&str> {
        match self {
            Step::Create { plan, .. } => Some(&plan.name),
            Step::Start { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The component the step applies to, when it belongs to a desired one.
    pub fn owner(&self) -> Option<&Owner> {
        match self {
            Step::CreateNetwork { owner, .. } | Step::CreateVolume { owner, .. } => Some(owner),
            Step::Create { plan, .. } => Some(&plan.owner),
            Step::Start { owner, .. } => Some(owner),
            _ => None,
        }
    }
}

/// Engine name of a component's object (container, network, volume) with compose key `key`.
/// Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]`; deployment ids and compose keys are
/// validated to that alphabet already.
pub fn engine_name(owner: &Owner, key: &str) -> String {
    format!("{}_{}_{}", owner.deployment, owner.component, key)
}

/// The engine names of a service's containers, one per replica: its `container_name`, else
/// ones derived from the deployment, component and service, which no other deployment can take.
pub fn container_names<'a>(
    owner: &'a Owner,
    service: &'a crate::spec::Service,
) -> impl Iterator<Item = String> + 'a {
    service.replica_keys().map(move |key| {
        (service.container_name.clone()).unwrap_or_else(|| engine_name(owner, &key))
    })
}

fn owner(d: &Deployment, c: &Component) -> Owner {
    Owner {
        deployment: d.id.clone(),
        component: c.name.clone(),
    }
}

/// Engine names by compose key: the external or custom name where one is given, else the
/// component's own.
fn engine_names<'a>(
    owner: &Owner,
    keys: impl Iterator<Item = (&'a String, Option<&'a String>)>,
) -> BTreeMap<String, String> {
    keys.map(|(key, given)| {
        let name = given.cloned().unwrap_or_else(|| engine_name(owner, key));
        (key.clone(), name)
    })
    .collect()
}

/// The container plans of a component, in dependency order.
pub fn container_plans(d: &Deployment, c: &Component) -> Vec<ContainerPlan> {
    let owner = owner(d, c);
    let networks = engine_names(
        &owner,
        (c.project.networks.iter())
            .map(|n| (&n.name, n.external.as_ref().or(n.custom_name.as_ref()))),
    );
    let volumes = engine_names(
        &owner,
        (c.project.volumes.iter())
            .map(|v| (&v.name, v.external.as_ref().or(v.custom_name.as_ref()))),
    );
    // What another service shares or waits for is its first container.
    let containers: BTreeMap<String, String> = (c.project.services.iter())
        .map(|s| (s.name.clone(), engine_name(&owner, &s.name)))
        .chain((c.project.services.iter()).filter_map(|s| {
            let first = container_names(&owner, s).next()?;
            Some((s.name.clone(), first))
        }))
        .collect();
    dependency_order(c)
        .into_iter()
        .flat_map(|service| container_names(&owner, service).map(move |name| (service, name)))
        .map(|(service, name)| {
            let mut plan = ContainerPlan {
                name,
                owner: owner.clone(),
                service: service.clone(),
                spec_hash: String::new(),
                networks: networks.clone(),
                volumes: volumes.clone(),
                package_dir: c.package_dir.clone(),
                containers: containers.clone(),
            };
            let binds = c.bind_digests.get(&service.name).map(String::as_str);
            plan.spec_hash = spec_hash(&plan, binds.unwrap_or_default());
            plan
        })
        .fold(Vec::new(), |mut plans: Vec<ContainerPlan>, mut plan| {
            // The engine fixes `container:NAME` to the container it finds at create: one that
            // shares another's namespaces (`network_mode`, `pid`, `ipc: service:…`) is recreated
            // with it, as Compose recreates it.
            let shared: Vec<&str> = (shared_with(&plan.service).into_iter())
                .map(|s| plan.container_of(s))
                .collect();
            let mut hash = plan.spec_hash.clone();
            for p in plans.iter().filter(|p| shared.contains(&p.name.as_str())) {
                hash = hex::encode(&Sha256::digest(format!("{hash}{}", p.spec_hash))[..16]);
            }
            plan.spec_hash = hash;
            plans.push(plan);
            plans
        })
}

/// The services whose namespaces `service` shares.
fn shared_with(service: &crate::spec::Service) -> Vec<&str> {
    let network = match &service.network_mode {
        Some(crate::spec::NetworkMode::Service(s)) => Some(s.as_str()),
        _ => None,
    };
    let ns = &service.namespaces;
    let modes = [ns.pid.as_deref(), ns.ipc.as_deref()];
    let others = modes
        .into_iter()
        .flatten()
        .filter_map(|m| m.strip_prefix("service:"));
    network.into_iter().chain(others).collect()
}

/// Hash of everything that defines a container: when it changes, the container is recreated.
/// The package directory itself is left out (it changes with any file of the package); the
/// digest of the files the service bind-mounts stands for it. A container whose mounted files
/// did not change keeps binding the older, identical directory.
fn spec_hash(plan: &ContainerPlan, bind_digest: &str) -> String {
    let mut h = Sha256::new();
    // The number of replicas is not part of one: scaling leaves the running ones alone.
    let service = crate::spec::Service {
        replicas: None,
        ..plan.service.clone()
    };
    h.update(serde_json::to_vec(&service).unwrap_or_default());
    for map in [&plan.networks, &plan.volumes] {
        h.update(serde_json::to_vec(map).unwrap_or_default());
    }
    h.update(bind_digest.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Services so that each comes after what it depends on (compose rejected cycles already);
/// otherwise file order.
fn dependency_order(c: &Component) -> Vec<&crate::spec::Service> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < c.project.services.len() {
        let before = order.len();
        for s in &c.project.services {
            if !done.contains(s.name.as_str())
                && s.depends_on
                    .iter()
                    .all(|d| done.contains(d.service.as_str()))
            {
                done.insert(&s.name);
                order.push(s);
            }
        }
        if order.len() == before {
            // A cycle slipped through: keep file order for the rest rather than loop.
            order.extend(
                c.project
                    .services
                    .iter()
                    .filter(|s| !done.contains(s.name.as_str())),
            );
            break;
        }
    }
    order
}

/// The steps that make `observed` equal to `desired`. Volumes of removed components are kept
/// unless `remove_volumes`, since they hold data.
pub fn plan(desired: &[Deployment], observed: &Observed, remove_volumes: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut wanted_containers = BTreeSet::new();
    let mut wanted_networks = BTreeSet::new();
    let mut wanted_volumes = BTreeSet::new();
    let mut work = Vec::new();

    for d in desired {
        for c in &d.components {
            let owner = owner(d, c);
            for n in c.project.networks.iter().filter(|n| n.external.is_none()) {
                let name = (n.custom_name.clone()).unwrap_or_else(|| engine_name(&owner, &n.name));
                if !observed.networks.iter().any(|o| o.name == name) {
                    work.push(Step::CreateNetwork {
                        name: name.clone(),
                        owner: owner.clone(),
                        network: n.clone(),
                    });
                }
                wanted_networks.insert(name);
            }
            for v in c.project.volumes.iter().filter(|v| v.external.is_none()) {
                let name = (v.custom_name.clone()).unwrap_or_else(|| engine_name(&owner, &v.name));
                if !observed.volumes.iter().any(|o| o.name == name) {
                    work.push(Step::CreateVolume {
                        name: name.clone(),
                        owner: owner.clone(),
                        volume: v.clone(),
                    });
                }
                wanted_volumes.insert(name);
            }
            let plans = container_plans(d, c);
            // A service is ready for those that depend on it when all its replicas are.
            let mut replicas: BTreeMap<String, Vec<Awaited>> = BTreeMap::new();
            for p in &plans {
                replicas
                    .entry(p.service.name.clone())
                    .or_default()
                    .push(Awaited {
                        name: p.name.clone(),
                        condition: Condition::Started,
                        spec_hash: p.spec_hash.clone(),
                    });
            }
            for plan in plans {
                let after = (plan.service.depends_on.iter())
                    .flat_map(|dep| {
                        let of = replicas.get(dep.service.as_str()).into_iter().flatten();
                        of.map(|a| Awaited {
                            condition: dep.condition,
                            ..a.clone()
                        })
                    })
                    .collect();
                let current = observed.containers.iter().find(|o| o.name == plan.name);
                wanted_containers.insert(plan.name.clone());
                match current {
                    Some(o) if o.spec_hash == plan.spec_hash => {
                        let settled = matches!(o.state.as_str(), "running" | "restarting")
                            || (o.state == "exited"
                                // The engine does not restart these after a clean exit either.
                                && plan
                                    .service
                                    .restart
                                    .as_deref()
                                    .is_none_or(|r| r == "no" || r.starts_with("on-failure"))
                                && o.exit_code == 0);
                        if !settled {
                            work.push(Step::Start {
                                id: o.id.clone(),
                                name: o.name.clone(),
                                owner: owner.clone(),
                                after,
                            });
                        }
                    }
                    other => work.push(Step::Create {
                        replaces: other.map(|o| o.id.clone()),
                        plan: Box::new(plan),
                        after,
                    }),
                }
            }
        }
    }
    // Removals first: they free names and ports the new containers may need.
    for o in &observed.containers {
        if !wanted_containers.contains(&o.name) {
            steps.push(Step::RemoveContainer(Box::new(o.clone())));
        }
    }
    for o in &observed.networks {
        if !wanted_networks.contains(&o.name) {
            steps.push(Step::RemoveNetwork(o.name.clone()));
        }
    }
    if remove_volumes {
        for o in &observed.volumes {
            if !wanted_volumes.contains(&o.name) {
                steps.push(Step::RemoveVolume(o.name.clone()));
            }
        }
    }
    steps.extend(work);
    steps
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::{ObservedContainer, ObservedObject};
    use crate::spec::{Dependency, Network, Project, Service};

    fn deployment(image_b: &str) -> Deployment {
        let svc = |name: &str, image: &str, deps: &[&str]| Service {
            name: name.into(),
            image: image.into(),
            depends_on: deps
                .iter()
                .map(|d| Dependency {
                    service: d.to_string(),
                    condition: Condition::Healthy,
                })
                .collect(),
            ..Default::default()
        };
        Deployment {
            id: "d1".into(),
            application_id: "app".into(),
            path: "deployments/a.yaml".into(),
            components: vec![Component {
                name: "c".into(),
                project: Project {
                    // web is listed first but depends on backend.
                    services: vec![
                        svc("web", "web:1", &["backend"]),
                        svc("backend", image_b, &[]),
                    ],
                    networks: vec![Network {
                        name: "default".into(),
                        driver: None,
                        internal: false,
                        external: None,
                        labels: Default::default(),
                        custom_name: None,
                        ..Default::default()
                    }],
                    volumes: vec![],
                },
                package_dir: "/p".into(),
                bind_digests: Default::default(),
                wait: true,
                timeout: None,
                artifact: None,
            }],
            component_names: vec!["c".into()],
            error: None,
        }
    }

    fn observed_from(d: &Deployment, state: &str) -> Observed {
        let c = &d.components[0];
        let owner = Owner {
            deployment: d.id.clone(),
            component: c.name.clone(),
        };
        Observed {
            containers: container_plans(d, c)
                .into_iter()
                .map(|p| ObservedContainer {
                    id: format!("id-{}", p.name),
                    name: p.name,
                    owner: owner.clone(),
                    service: p.service.name.clone(),
                    spec_hash: p.spec_hash,
                    image: p.service.image.clone(),
                    state: state.into(),
                    health: String::new(),
                    restart_count: 0,
                    exit_code: 0,
                    depends_on: vec![],
                })
                .collect(),
            networks: vec![ObservedObject {
                name: "d1_c_default".into(),
                owner,
            }],
            volumes: vec![],
        }
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::RemoveContainer(c) => format!("rm {}", c.name),
                Step::RemoveNetwork(n) => format!("rmnet {n}"),
                Step::RemoveVolume(n) => format!("rmvol {n}"),
                Step::CreateNetwork { name, .. } => format!("net {name}"),
                Step::CreateVolume { name, .. } => format!("vol {name}"),
                Step::Create {
                    plan,
                    replaces,
                    after,
                } => {
                    format!(
                        "create {} replaces={:?} after={}",
                        plan.name,
                        replaces,
                        after.len()
                    )
                }
                Step::Start { name, .. } => format!("start {name}"),
            })
            .collect()
    }

    #[test]
    fn from_nothing_creates_network_then_services_in_dependency_order() {
        let d = deployment("backend:1");
        assert_eq!(
            names(&plan(&[d], &Observed::default(), false)),
            [
                "net d1_c_default",
                "create d1_c_backend replaces=None after=0",
                "create d1_c_web replaces=None after=1"
            ]
        );
    }

    #[test]
    fn converged_state_plans_nothing() {
        let d = deployment("backend:1");
        let observed = observed_from(&d, "running");
        assert!(plan(&[d], &observed, false).is_empty());
    }

    #[test]
    fn a_changed_service_replaces_only_its_container() {
        let old = deployment("backend:1");
        let observed = observed_from(&old, "running");
        let new = deployment("backend:2");
        assert_eq!(
            names(&plan(&[new], &observed, false)),
            ["create d1_c_backend replaces=Some(\"id-d1_c_backend\") after=0"]
        );
    }

    fn scaled(backends: u32) -> Deployment {
        let mut d = deployment("backend:1");
        d.components[0].project.services[1].replicas = Some(backends);
        d
    }

    #[test]
    fn replicas_are_containers_of_their_own_and_dependents_wait_for_all() {
        assert_eq!(
            names(&plan(&[scaled(3)], &Observed::default(), false)),
            [
                "net d1_c_default",
                "create d1_c_backend replaces=None after=0",
                "create d1_c_backend_2 replaces=None after=0",
                "create d1_c_backend_3 replaces=None after=0",
                "create d1_c_web replaces=None after=3"
            ]
        );
    }

    #[test]
    fn scaling_adds_or_removes_replicas_and_leaves_the_rest_running() {
        let one = observed_from(&scaled(1), "running");
        assert_eq!(
            names(&plan(&[scaled(2)], &one, false)),
            ["create d1_c_backend_2 replaces=None after=0"]
        );
        let three = observed_from(&scaled(3), "running");
        assert_eq!(
            names(&plan(&[scaled(1)], &three, false)),
            ["rm d1_c_backend_2", "rm d1_c_backend_3"]
        );
        assert_eq!(
            names(&plan(&[scaled(0)], &three, false)),
            ["rm d1_c_backend", "rm d1_c_backend_2", "rm d1_c_backend_3"]
        );
    }

    #[test]
    fn stopped_containers_are_started_again() {
        let d = deployment("backend:1");
        let mut observed = observed_from(&d, "running");
        let web = observed
            .containers
            .iter_mut()
            .find(|c| c.service == "web")
            .unwrap();
        web.state = "exited".into();
        web.exit_code = 137;
        assert_eq!(names(&plan(&[d], &observed, false)), ["start d1_c_web"]);
    }

    #[test]
    fn a_removed_deployment_loses_containers_and_network_but_keeps_volumes_by_default() {
        let d = deployment("backend:1");
        let mut observed = observed_from(&d, "running");
        let owner = observed.networks[0].owner.clone();
        observed.volumes.push(ObservedObject {
            name: "d1_c_data".into(),
            owner,
        });
        assert_eq!(
            names(&plan(&[], &observed, false)),
            ["rm d1_c_backend", "rm d1_c_web", "rmnet d1_c_default"]
        );
        assert!(names(&plan(&[], &observed, true)).contains(&"rmvol d1_c_data".to_string()));
    }

    #[test]
    fn spec_hash_follows_the_mounted_files_not_the_package_directory() {
        let d = deployment("backend:1");
        let mut moved = d.clone();
        moved.components[0].package_dir = "/q".into();
        let mut remounted = d.clone();
        remounted.components[0]
            .bind_digests
            .insert("web".into(), "new".into());
        let hashes = |d: &Deployment| -> Vec<String> {
            container_plans(d, &d.components[0])
                .into_iter()
                .map(|p| p.spec_hash)
                .collect()
        };
        assert_eq!(hashes(&d), hashes(&moved));
        let (before, after) = (hashes(&d), hashes(&remounted));
        assert_eq!(before[0], after[0], "backend mounts nothing");
        assert_ne!(before[1], after[1], "web's mounted files changed");
    }
}
