//! A `woa-deploy serve` process under test, and grpcurl calls to it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::binaries;
use crate::desired::DesiredState;
use crate::pki::Pki;
use crate::registry::RegistryLogin;
use crate::util::{free_port, new_deployment_id, output, wait_until};

/// How long a fresh or restarted service may take to answer health checks.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a deployment may take to reach a state; a passing test needs a few seconds.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(45);

/// What to put in the service's config beyond the listener, state dir and TLS.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// `resync_interval`, e.g. "2s"; the service's default when `None`.
    pub resync_interval: Option<String>,
    /// Registry credentials, one `[registries."host"]` table each.
    pub registries: Vec<RegistryLogin>,
    /// Serve Prometheus metrics on this loopback port.
    pub metrics_port: Option<u16>,
    /// `rollout.settle`; "1s" when `None`, so tests do not wait out the 10 s default.
    pub settle: Option<String>,
    /// More keys of the `[rollout]` table, e.g. `approval = "manual"\n`.
    pub rollout: String,
    /// More tables, appended as they are (e.g. `[image_gc]`).
    pub extra: String,
    /// Run under this open-files limit (soft and hard), through `prlimit`.
    pub nofile: Option<u64>,
    /// `RUST_LOG`; `info,woa_deploy=debug` when `None`.
    pub rust_log: Option<String>,
}

/// Which client certificate grpcurl presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The operator certificate issued by the service's CA.
    Operator,
    /// None: only the CA to verify the server (`-cacert`).
    Anonymous,
}

/// A running `woa-deploy serve` with its own PKI, config and state dir.
///
/// Killed when dropped; its log (stderr) is printed then, which libtest shows for failed tests.
/// Each has its own `instance` name: woa-deploy removes every object of its instance that it
/// does not desire, so instances sharing the engine must not share a name.
pub struct Deploy {
    child: Option<Child>,
    dir: TempDir,
    pki: Pki,
    address: String,
    nofile: Option<u64>,
    rust_log: String,
}

impl Deploy {
    /// Starts the service with default options.
    pub fn start() -> Result<Deploy> {
        Deploy::start_with(&DeployOptions::default())
    }

    /// Writes a config on a free port, starts the service and waits until health answers.
    pub fn start_with(options: &DeployOptions) -> Result<Deploy> {
        let pki = Pki::init()?;
        let dir = tempfile::tempdir()?;
        let address = format!("127.0.0.1:{}", free_port()?);
        let config = config_toml(&address, dir.path(), &pki, options)?;
        std::fs::write(dir.path().join("deploy.toml"), config)?;
        let mut deploy = Deploy {
            child: None,
            dir,
            pki,
            address,
            nofile: options.nofile,
            rust_log: (options.rust_log.as_deref())
                .unwrap_or("info,woa_deploy=debug")
                .to_owned(),
        };
        deploy.spawn()?;
        Ok(deploy)
    }

    /// `host:port` the service listens on.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The PKI the service and its clients use.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The service's state directory.
    pub fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// The process id of the running service.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the service logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `kill -9`: no shutdown code runs, as after a power loss.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // std's kill is SIGKILL on Unix.
            child.kill().context("killing woa-deploy")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops the service if it runs and starts it again on the same config and state dir.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// Calls `method` (e.g. `woa.deploy.v1.DeploymentService/GetCurrentState`) with `request`
    /// as the operator and returns the JSON response.
    pub fn grpcurl(&self, method: &str, request: &Value) -> Result<Value> {
        let output =
            self.grpcurl_raw(Identity::Operator, &["-d", &request.to_string()], &[method])?;
        if !output.status.success() {
            bail!(
                "grpcurl {method} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("grpcurl {method} printed no JSON"))
    }

    /// Runs grpcurl as `identity`: `grpcurl <TLS flags> <flags> <address> <args>`.
    pub fn grpcurl_raw(&self, identity: Identity, flags: &[&str], args: &[&str]) -> Result<Output> {
        let mut command = Command::new(binaries::grpcurl()?);
        command
            .args(["-max-time", "30", "-cacert"])
            .arg(self.pki.file("ca.pem"));
        if identity == Identity::Operator {
            command
                .arg("-cert")
                .arg(self.pki.file("operator.pem"))
                .arg("-key")
                .arg(self.pki.file("operator-key.pem"));
        }
        output(command.args(flags).arg(&self.address).args(args))
    }

    /// Runs `woa-deploy <args>` as the site operator against this service (the CLI of
    /// approvals, rollback and retry).
    pub fn operator(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(binaries::woa_deploy()?);
        command
            .args(args)
            .arg("--endpoint")
            .arg(format!("https://{}", self.address))
            .arg("--ca")
            .arg(self.pki.file("ca.pem"))
            .arg("--cert")
            .arg(self.pki.file("operator.pem"))
            .arg("--key")
            .arg(self.pki.file("operator-key.pem"));
        output(&mut command)
    }

    /// Replaces the desired state; returns the `ApplyDesiredStateResponse`.
    pub fn apply(&self, desired: &DesiredState) -> Result<Value> {
        self.grpcurl(
            "woa.deploy.v1.DeploymentService/ApplyDesiredState",
            &desired.to_json(),
        )
    }

    /// The `CurrentState` of every deployment.
    pub fn current_state(&self) -> Result<Value> {
        self.grpcurl(
            "woa.deploy.v1.DeploymentService/GetCurrentState",
            &Value::Object(Default::default()),
        )
    }

    /// The `DeploymentStatus` of `deployment_id`, if the service knows it.
    pub fn status(&self, deployment_id: &str) -> Result<Option<Value>> {
        let state = self.current_state()?;
        Ok(state["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["deploymentId"] == deployment_id)
            .cloned())
    }

    /// Waits until the status of `deployment_id` refers to `revision` and is in `state`
    /// ("INSTALLED", "FAILED", ...), and returns that status.
    pub fn wait_for(&self, deployment_id: &str, revision: &str, state: &str) -> Result<Value> {
        let wanted = format!("DEPLOYMENT_STATE_{state}");
        let mut last = None;
        let found = wait_until(CONVERGE_TIMEOUT, || {
            let status = self.status(deployment_id)?;
            let done = status
                .as_ref()
                .filter(|s| s["revision"] == revision && s["state"] == wanted.as_str())
                .cloned();
            last = status;
            Ok(done)
        });
        found.with_context(|| {
            format!("{deployment_id} not {state} at {revision}; last status: {last:#?}")
        })
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = match self.nofile {
            // prlimit sets the limit on itself and then executes the service: same pid.
            Some(n) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(binaries::woa_deploy()?);
                prlimit
            }
            None => Command::new(binaries::woa_deploy()?),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("deploy.toml"))
            .env("RUST_LOG", &self.rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting woa-deploy serve")?;
        self.child = Some(child);
        let healthy = wait_until(STARTUP_TIMEOUT, || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                bail!("woa-deploy exited with {}", status?);
            }
            let health = self.grpcurl("grpc.health.v1.Health/Check", &serde_json::json!({}))?;
            Ok(health["status"] == "SERVING")
        });
        healthy.with_context(|| format!("woa-deploy did not become healthy:\n{}", self.log()))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("woa-deploy.log")
    }
}

impl Drop for Deploy {
    fn drop(&mut self) {
        let _ = self.kill9();
        // libtest shows a test's captured output only when it fails, which is when it matters.
        eprintln!(
            "---- woa-deploy log ({}) ----\n{}",
            self.address,
            self.log()
        );
    }
}

fn config_toml(address: &str, dir: &Path, pki: &Pki, options: &DeployOptions) -> Result<String> {
    let q = |s: &str| Value::from(s).to_string();
    let path = |p: &Path| q(&p.display().to_string());
    let state_dir = dir.join("state");
    let instance = format!("woa-tests-{}", new_deployment_id()?);
    let mut toml = format!(
        "listen = {}\ninstance = {}\nstate_dir = {}\n",
        q(address),
        q(&instance),
        path(&state_dir)
    );
    if let Some(port) = options.metrics_port {
        toml += &format!("metrics_listen = \"127.0.0.1:{port}\"\n");
    }
    if let Some(interval) = &options.resync_interval {
        toml += &format!("resync_interval = {}\n", q(interval));
    }
    let settle = options.settle.as_deref().unwrap_or("1s");
    toml += &format!("[rollout]\nsettle = {}\n{}\n", q(settle), options.rollout);
    toml += &options.extra;
    toml += &format!(
        "[tls]\nca = {}\ncert = {}\nkey = {}\n",
        path(&pki.file("ca.pem")),
        path(&pki.file("deploy.pem")),
        path(&pki.file("deploy-key.pem")),
    );
    for (i, login) in options.registries.iter().enumerate() {
        let password_file = dir.join(format!("registry-{i}.password"));
        write_secret(&password_file, &login.password)?;
        toml += &format!(
            "[registries.{}]\nusername = {}\npassword_file = {}\n",
            q(&login.host),
            q(&login.username),
            path(&password_file),
        );
    }
    Ok(toml)
}

fn write_secret(path: &Path, secret: &str) -> Result<()> {
    let mut file: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn config_names_listener_tls_resync_and_registries() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let options = DeployOptions {
            resync_interval: Some("2s".to_owned()),
            registries: vec![RegistryLogin {
                host: "127.0.0.1:5000".to_owned(),
                username: "tester".to_owned(),
                password: "secret".to_owned(),
            }],
            metrics_port: None,
            ..Default::default()
        };
        let toml = config_toml("127.0.0.1:7411", dir.path(), &pki, &options).unwrap();
        assert!(toml.starts_with("listen = \"127.0.0.1:7411\"\ninstance = \"woa-tests-"));
        assert!(toml.contains("resync_interval = \"2s\"\n"));
        assert!(toml.contains("[tls]\nca = "));
        assert!(toml.contains("[registries.\"127.0.0.1:5000\"]\nusername = \"tester\"\n"));
        let password_file = dir.path().join("registry-0.password");
        assert_eq!(std::fs::read_to_string(&password_file).unwrap(), "secret");
        let mode = std::fs::metadata(&password_file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
