//! What the Docker engine holds for a deployment, read through the `docker` CLI.
//!
//! The kit finds a deployment's objects by the `org.margo.woa.deployment` label, as an operator
//! would, so it never depends on how woa-deploy names them.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::util::{new_deployment_id, output, run};

const DEPLOYMENT_LABEL: &str = "org.margo.woa.deployment";
const SERVICE_LABEL: &str = "org.margo.woa.service";

/// One container as the engine reports it.
#[derive(Debug, Clone)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Runtime state: "created", "running", "exited", ...
    pub state: String,
    /// Health check status, when the container has a health check.
    pub health: Option<String>,
    /// All labels.
    pub labels: BTreeMap<String, String>,
    inspect: Value,
}

impl Container {
    /// The compose service the container runs (its `org.margo.woa.service` label).
    pub fn service(&self) -> &str {
        self.labels.get(SERVICE_LABEL).map_or("", String::as_str)
    }

    /// The host port that publishes `container_port/tcp`.
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        self.inspect["NetworkSettings"]["Ports"][format!("{container_port}/tcp")]
            .as_array()?
            .iter()
            .find_map(|binding| binding["HostPort"].as_str()?.parse().ok())
    }

    /// The engine's inspection of the container.
    pub fn inspect(&self) -> &Value {
        &self.inspect
    }

    /// The host paths bind-mounted into the container, with where: `(source, destination)`.
    pub fn binds(&self) -> Vec<(String, String)> {
        let mounts = self.inspect["Mounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        mounts
            .iter()
            .filter(|m| m["Type"] == "bind")
            .filter_map(|m| {
                Some((
                    m["Source"].as_str()?.into(),
                    m["Destination"].as_str()?.into(),
                ))
            })
            .collect()
    }

    fn from_inspect(inspect: Value) -> Option<Container> {
        let labels = inspect["Config"]["Labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Some(Container {
            id: inspect["Id"].as_str()?.to_owned(),
            name: inspect["Name"].as_str()?.trim_start_matches('/').to_owned(),
            state: inspect["State"]["Status"].as_str()?.to_owned(),
            health: inspect["State"]["Health"]["Status"]
                .as_str()
                .map(str::to_owned),
            labels,
            inspect,
        })
    }
}

/// Every container (running or not) of `deployment_id`, sorted by service.
pub fn containers(deployment_id: &str) -> Result<Vec<Container>> {
    let ids = run(Command::new("docker").args([
        "ps",
        "--all",
        "--quiet",
        "--no-trunc",
        "--filter",
        &format!("label={DEPLOYMENT_LABEL}={deployment_id}"),
    ]))?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // A container may vanish between `ps` and `inspect`; inspect still prints the others.
    let inspected = output(Command::new("docker").arg("inspect").args(&ids))?;
    let all: Vec<Value> = serde_json::from_slice(&inspected.stdout).with_context(|| {
        format!(
            "docker inspect: {}",
            String::from_utf8_lossy(&inspected.stderr)
        )
    })?;
    let mut containers: Vec<Container> = all
        .into_iter()
        .filter_map(Container::from_inspect)
        .collect();
    containers.sort_by(|a, b| (a.service(), &a.name).cmp(&(b.service(), &b.name)));
    Ok(containers)
}

/// Names of the networks of `deployment_id`.
pub fn networks(deployment_id: &str) -> Result<Vec<String>> {
    let names = run(Command::new("docker").args([
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("label={DEPLOYMENT_LABEL}={deployment_id}"),
    ]))?;
    Ok(names.lines().map(str::to_owned).collect())
}

/// `docker rm -f`: what an operator or a crash does behind woa-deploy's back.
pub fn remove_container(id: &str) -> Result<()> {
    run(Command::new("docker").args(["rm", "--force", id]))?;
    Ok(())
}

/// Hands out deployment ids and removes every Docker object labelled with them when dropped,
/// also when the test panics.
///
/// Declare it before the [`crate::Deploy`] it serves, so the service stops first (locals drop
/// in reverse order) and cannot recreate what is being removed.
#[derive(Debug, Default)]
pub struct Cleanup {
    deployment_ids: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl Cleanup {
    /// A guard with no deployment ids yet.
    pub fn new() -> Cleanup {
        Cleanup::default()
    }

    /// A fresh deployment id whose objects this guard removes.
    pub fn deployment_id(&self) -> Result<String> {
        let id = new_deployment_id()?;
        lock(&self.deployment_ids).push(id.clone());
        Ok(id)
    }

    /// Removes the local image `reference` too, e.g. one that a test made the engine pull.
    pub fn image(&self, reference: &str) {
        lock(&self.images).push(reference.to_owned());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A test that panicked while holding the lock still leaves a usable list behind.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in lock(&self.deployment_ids).iter() {
            let filter = format!("label={DEPLOYMENT_LABEL}={id}");
            // Containers first: a network in use cannot be removed.
            if let Ok(found) = containers(id) {
                for container in found {
                    let _ = remove_container(&container.id);
                }
            }
            for (kind, list) in [("network", "ls"), ("volume", "ls")] {
                let names =
                    run(Command::new("docker").args([kind, list, "--quiet", "--filter", &filter]));
                for name in names.unwrap_or_default().split_whitespace() {
                    let _ = output(Command::new("docker").args([kind, "rm", name]));
                }
            }
        }
        for image in lock(&self.images).iter() {
            let _ = output(Command::new("docker").args(["rmi", image]));
        }
    }
}

/// What the deployment's `web` container answers on its published port 8080, if one answers.
pub fn answer(deployment_id: &str) -> Result<String> {
    let running = containers(deployment_id)?;
    let web = running
        .iter()
        .find(|c| c.service() == "web" && c.state == "running")
        .context("no running web container")?;
    let port = web.host_port(8080).context("web publishes no port")?;
    Ok(crate::util::http_get(port, "/")?.1)
}

/// Waits (up to a minute) until the deployment's `web` container answers `message`.
pub fn wait_answer(deployment_id: &str, message: &str) -> Result<()> {
    crate::util::wait_until(std::time::Duration::from_secs(60), || {
        Ok(answer(deployment_id).ok().as_deref() == Some(message))
    })
    .with_context(|| format!("{deployment_id} never answered {message:?}"))
}
