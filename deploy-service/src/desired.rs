//! Turns an `ApplyDesiredState` request into the resolved desired state: every document parsed,
//! every package fetched and every compose file interpreted once, at apply time, so reconcile
//! passes never touch the network. A deployment whose new document is bad keeps its last good
//! spec (what runs stays up) and carries the error for its status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use woa_common::margo::{self, Package as MargoPackage, Profile, StatusError};

use crate::otel::OtelConfig;
use crate::package::PackageFetcher;
use crate::policy::Policy;
use crate::spec::{BindSource, Project};
use crate::{Error, Result, compose};

/// The desired state of the device at one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// The revision (e.g. commit id) this state was read from.
    pub revision: String,
    /// Deployments by id, in document order.
    pub deployments: Vec<Deployment>,
    /// Documents that could not even name a deployment.
    pub rejected: Vec<Rejected>,
}

/// One deployment to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Deployment id.
    pub id: String,
    /// Margo application id.
    pub application_id: String,
    /// The document it came from.
    pub path: String,
    /// Components to run: the newest good spec, in the order given.
    pub components: Vec<Component>,
    /// Component names of the newest document, for status when it could not be used.
    pub component_names: Vec<String>,
    /// Why the newest document could not be applied, if it could not.
    pub error: Option<StatusError>,
}

/// One component: a compose project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Component name.
    pub name: String,
    /// The interpreted compose file.
    pub project: Project,
    /// Where the package's files are on the host (relative bind mounts resolve here).
    pub package_dir: PathBuf,
    /// Per service, a digest of the package files it bind-mounts: a container is recreated when
    /// what it mounts changes, not when any other file of the package does.
    #[serde(default)]
    pub bind_digests: BTreeMap<String, String>,
    /// Whether the next component waits until this one is ready and settled.
    #[serde(default = "yes")]
    pub wait: bool,
    /// How long this component may take to become ready; the configured default when absent.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<std::time::Duration>,
    /// The OCI compose artifact it was pulled from (`host/name:tag`), which the artifact
    /// cache keeps while a release needs it. Left out when absent, so that releases of other
    /// packages keep their digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

fn yes() -> bool {
    true
}

/// A document rejected before it named a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// The document's path.
    pub path: String,
    /// Why.
    pub error: StatusError,
}

/// The status error for `e`.
pub fn status_error(e: &Error) -> StatusError {
    StatusError::new(e.code(), e.source_ref(), woa_common::chain(e))
}

/// A desired state as it arrives, before it is resolved.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    /// The revision of the desired-state repository.
    pub revision: String,
    /// Deployment documents: (repository path, YAML).
    pub documents: Vec<(String, Vec<u8>)>,
    /// Repository files the documents reference, by path.
    pub artifacts: BTreeMap<String, Vec<u8>>,
}

/// Resolves `incoming` against the `previous` state.
pub async fn resolve(
    incoming: &Incoming,
    previous: &DesiredState,
    fetcher: &PackageFetcher,
    policy: &Policy,
    otel: &OtelConfig,
    packages_dir: &Path,
) -> DesiredState {
    let artifacts = &incoming.artifacts;
    let mut state = DesiredState {
        revision: incoming.revision.clone(),
        ..Default::default()
    };
    let mut seen = BTreeSet::new();
    let mut names_taken = BTreeMap::new();
    for (path, yaml) in &incoming.documents {
        let parsed = margo::parse_deployment(path, yaml).map_err(Error::from);
        let id = match &parsed {
            Ok(d) => Some(d.id.clone()),
            Err(_) => margo::peek_deployment_id(yaml),
        };
        let Some(id) = id else {
            let error = parsed.err().map(|e| status_error(&e)).unwrap_or_default();
            // The document was too broken to name its deployment: the one that came from the
            // same file keeps running, failed with this error.
            if let Some(d) = previous.deployments.iter().find(|d| &d.path == path)
                && seen.insert(d.id.clone())
            {
                let error = Some(error.clone());
                state.deployments.push(Deployment { error, ..d.clone() });
            }
            state.rejected.push(Rejected {
                path: path.clone(),
                error,
            });
            continue;
        };
        if !seen.insert(id.clone()) {
            let e = Error::Document(woa_common::Error::Document {
                path: path.clone(),
                field: "id".into(),
                message: format!("deployment id {id} is used by another document"),
            });
            state.rejected.push(Rejected {
                path: path.clone(),
                error: status_error(&e),
            });
            continue;
        }
        let last_good = previous.deployments.iter().find(|d| d.id == id);
        // The newest document's component names, for status even when it cannot be used; when
        // it is too broken to name any, those of its last good version.
        let mut names: Vec<String> = parsed
            .iter()
            .flat_map(|d| d.components.iter().map(|c| c.name.clone()))
            .collect();
        if names.is_empty()
            && let Some(last) = last_good
        {
            names.clone_from(&last.component_names);
        }
        let result = match parsed {
            Ok(d) => resolve_deployment(&d, artifacts, fetcher, policy, otel, packages_dir)
                .await
                .and_then(|components| claim_names(&id, components, &mut names_taken))
                .map(|components| (d, components)),
            Err(e) => Err(e),
        };
        state.deployments.push(match result {
            Ok((d, components)) => Deployment {
                id,
                application_id: d.application_id.unwrap_or_default(),
                path: path.clone(),
                component_names: names,
                components,
                error: None,
            },
            Err(e) => {
                tracing::warn!(deployment = %id, %path, error = %e, "desired deployment rejected");
                Deployment {
                    id,
                    application_id: last_good
                        .map(|d| d.application_id.clone())
                        .unwrap_or_default(),
                    path: path.clone(),
                    components: last_good.map(|d| d.components.clone()).unwrap_or_default(),
                    component_names: names,
                    error: Some(status_error(&e)),
                }
            }
        });
    }
    state
}

async fn resolve_deployment(
    d: &margo::ApplicationDeployment,
    artifacts: &BTreeMap<String, Vec<u8>>,
    fetcher: &PackageFetcher,
    policy: &Policy,
    otel: &OtelConfig,
    packages_dir: &Path,
) -> Result<Vec<Component>> {
    match &d.profile {
        Profile::Compose => {}
        other => return Err(Error::UnsupportedProfile(other.to_string())),
    }
    let mut variables: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for p in &d.parameters {
        for t in &p.targets {
            for c in &t.components {
                if !d.components.iter().any(|dc| &dc.name == c) {
                    return Err(Error::ParameterTarget {
                        parameter: p.name.clone(),
                        component: c.clone(),
                    });
                }
                variables
                    .entry(c)
                    .or_default()
                    .insert(t.variable().to_string(), p.value.clone());
            }
        }
    }
    let policy = policy.for_deployment(&d.id, d.application_id.as_deref());
    let mut components = Vec::with_capacity(d.components.len());
    for c in &d.components {
        let (package, artifact) = match &c.package {
            MargoPackage::Location(location) => (fetcher.fetch(location, artifacts).await?, None),
            MargoPackage::Oci {
                repository,
                revision,
            } => {
                let (package, reference) =
                    (fetcher.fetch_artifact(repository, revision.as_deref())).await?;
                (package, Some(reference))
            }
        };
        let compose_yaml = package
            .files
            .get(&package.compose_file)
            .cloned()
            .unwrap_or_default();
        let vars = variables.remove(c.name.as_str()).unwrap_or_default();
        let mut project =
            compose::load(&package.compose_file, &compose_yaml, &vars, &package.files)?;
        policy.check(&project).map_err(|message| Error::Policy {
            file: package.compose_file.clone(),
            message,
        })?;
        otel.apply(&mut project);
        let data = data_dir(packages_dir, &d.id).join(path_part(&c.name)?);
        keep_data_outside_the_package(&mut project, &package.files, &data)?;
        let package_dir = store_package(packages_dir, &package.files)?;
        let bind_digests = bind_digests(&project, &package.files);
        components.push(Component {
            bind_digests,
            name: c.name.clone(),
            project,
            package_dir,
            wait: c.wait,
            timeout: c.timeout,
            artifact,
        });
    }
    Ok(components)
}

/// Claims the engine names deployment `id` gives its containers, networks and volumes in
/// `taken` ((kind, name) -> deployment): one engine object has one owner, so a second
/// deployment asking for the name fails, naming the first.
fn claim_names(
    id: &str,
    components: Vec<Component>,
    taken: &mut BTreeMap<(&'static str, String), (String, String)>,
) -> Result<Vec<Component>> {
    for c in &components {
        let p = &c.project;
        let services = (p.services.iter()).filter_map(|s| {
            let name = s.container_name.as_ref()?;
            Some((
                "services",
                format!("services.{}.container_name", s.name),
                name,
            ))
        });
        let networks = (p.networks.iter()).filter_map(|n| {
            Some((
                "networks",
                format!("networks.{}.name", n.name),
                n.custom_name.as_ref()?,
            ))
        });
        let volumes = (p.volumes.iter()).filter_map(|v| {
            Some((
                "volumes",
                format!("volumes.{}.name", v.name),
                v.custom_name.as_ref()?,
            ))
        });
        // Kinds apart: a network and a volume may share a name.
        for (kind, key, name) in services.chain(networks).chain(volumes) {
            let owner = (id.to_owned(), c.name.clone());
            match taken.get(&(kind, name.clone())) {
                Some(other) if *other != owner => {
                    let (deployment, component) = other;
                    return Err(Error::Compose {
                        file: c.name.clone(),
                        message: format!(
                            "{key}: `{name}` already belongs to component {component} of deployment {deployment}"
                        ),
                    });
                }
                _ => {
                    taken.insert((kind, name.clone()), owner);
                }
            }
        }
    }
    Ok(components)
}

/// Where deployment `id` keeps the data of its relative binds: beside the packages, in the
/// state directory, `data/<deployment>/<component>/<path>`.
pub fn data_dir(packages_dir: &Path, id: &str) -> PathBuf {
    let state = packages_dir.parent().unwrap_or(packages_dir);
    state.join("data").join(id)
}

/// A component name as one part of a host path: no separators, no `.` or `..`.
fn path_part(name: &str) -> Result<&str> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    match plain {
        true => Ok(name),
        false => Err(Error::Document(woa_common::Error::Document {
            path: String::new(),
            field: "spec.deploymentProfile.components.name".into(),
            message: format!(
                "component name `{name}` must be letters, digits, `.`, `_` and `-` (it names the component's data directory)"
            ),
        })),
    }
}

/// A relative bind of a path the package does not ship (`./volumes/db:/var/lib/db`) is where
/// the app keeps its data, as it is with Compose next to the compose file: it becomes a
/// directory of the deployment's own under `data`, which outlives releases, rollbacks and
/// restarts (the package directory is per release), one for each bound path. Paths the package ships stay package
/// content. The directories are made here, as Compose makes a missing bind source.
fn keep_data_outside_the_package(
    project: &mut Project,
    files: &BTreeMap<String, Vec<u8>>,
    data: &Path,
) -> Result<()> {
    let ships = |path: &str| {
        path == "."
            || files.contains_key(path)
            || files
                .keys()
                .any(|f| f.strip_prefix(path).is_some_and(|r| r.starts_with('/')))
    };
    for service in &mut project.services {
        for mount in &mut service.mounts {
            if let crate::spec::Mount::Bind { source, .. } = mount
                && let BindSource::Package(path) = source
                && !ships(path)
            {
                // One flat directory per bound path, none inside another: a container can
                // plant symlinks in what it binds, and no other bind may lead through them.
                let dir = data.join(path.replace('%', "%25").replace('/', "%2F"));
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::file("making a data directory", woa_common::Error::file(&dir, e))
                })?;
                *source = BindSource::Data(dir.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// For each service that bind-mounts package files, a digest of those files.
fn bind_digests(project: &Project, files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for service in &project.services {
        let sources: Vec<&str> = service
            .mounts
            .iter()
            .filter_map(|m| match m {
                crate::spec::Mount::Bind {
                    source: BindSource::Package(p),
                    ..
                } => Some(p.as_str()),
                _ => None,
            })
            .collect();
        if sources.is_empty() {
            continue;
        }
        let bound = files.iter().filter(|(name, _)| {
            sources.iter().any(|s| {
                *s == "."
                    || name.as_str() == *s
                    || name.strip_prefix(s).is_some_and(|r| r.starts_with('/'))
            })
        });
        digests.insert(service.name.clone(), digest(bound));
    }
    digests
}

/// A digest of named files.
fn digest<'a>(files: impl IntoIterator<Item = (&'a String, &'a Vec<u8>)>) -> String {
    let mut hasher = Sha256::new();
    for (name, bytes) in files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hex::encode(&hasher.finalize()[..12])
}

/// Writes the package's files under a directory named by their content hash, so a changed file
/// gives a new directory (and so a new spec hash for containers that bind it).
fn store_package(packages_dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<PathBuf> {
    let dir = packages_dir.join(digest(files));
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = packages_dir.join(format!(".tmp-{}", std::process::id()));
    // Written in full and flushed before the rename: the directory name promises its content.
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        for (name, bytes) in files {
            let path = tmp.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut file, bytes)?;
            file.sync_all()?;
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &dir)?;
        std::fs::File::open(packages_dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        Error::file("storing a package", woa_common::Error::file(&dir, e))
    })?;
    Ok(dir)
}
