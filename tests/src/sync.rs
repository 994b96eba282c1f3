//! A `woa-sync` process under test, wired to a [`Deploy`] and enrolled with a reference WOS.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tempfile::TempDir;

use crate::binaries;
use crate::deploy::Deploy;

/// What goes into the service's config beyond state dir and the deployment link.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// `poll.interval`.
    pub poll_interval: String,
    /// `status.heartbeat`.
    pub heartbeat: String,
    /// `poll.windows`.
    pub windows: Vec<String>,
    /// `poll.downtime`.
    pub downtime: Vec<String>,
    /// `status.report`: `http`, `git` or `both`.
    pub report: String,
    /// `status.git.debounce`.
    pub git_debounce: String,
    /// Top-level keys written first, e.g. `source = "margo"\n`.
    pub top: String,
    /// More tables, appended as they are (e.g. `[margo]`).
    pub extra: String,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            poll_interval: "1s".into(),
            heartbeat: "5s".into(),
            windows: Vec::new(),
            downtime: Vec::new(),
            report: "http".into(),
            git_debounce: "2s".into(),
            top: String::new(),
            extra: String::new(),
        }
    }
}

/// A `woa-sync` with its own config and state dir. Killed when dropped; its log is printed
/// then, which libtest shows for failed tests.
pub struct Sync {
    child: Option<Child>,
    dir: TempDir,
}

impl Sync {
    /// Writes the config for a service talking to `deploy`; does not start it.
    pub fn new(deploy: &Deploy, options: &SyncOptions) -> Result<Sync> {
        let dir = tempfile::tempdir()?;
        let list = |items: &[String]| Value::from(items.to_vec()).to_string();
        let pki = deploy.pki();
        let q = |p: &Path| Value::from(p.display().to_string()).to_string();
        let config = format!(
            "{top}state_dir = {state}\n\
             [poll]\ninterval = \"{interval}\"\njitter = \"0s\"\nwindows = {windows}\ndowntime = {downtime}\n\
             [status]\nheartbeat = \"{heartbeat}\"\nreport = \"{report}\"\n\
             [status.git]\ndebounce = \"{debounce}\"\n\
             [deploy]\nendpoint = \"https://{address}\"\nserver_name = \"localhost\"\n\
             ca = {ca}\ncert = {cert}\nkey = {key}\n{extra}",
            top = options.top,
            extra = options.extra,
            state = q(&dir.path().join("state")),
            interval = options.poll_interval,
            heartbeat = options.heartbeat,
            report = options.report,
            debounce = options.git_debounce,
            windows = list(&options.windows),
            downtime = list(&options.downtime),
            address = deploy.address(),
            ca = q(&pki.file("ca.pem")),
            cert = q(&pki.file("sync.pem")),
            key = q(&pki.file("sync-key.pem")),
        );
        std::fs::write(dir.path().join("sync.toml"), config)?;
        Ok(Sync { child: None, dir })
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sync.toml")
    }

    /// The state dir.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `woa-sync --config <config> <args>` to completion.
    pub fn command(&self, args: &[&str]) -> Result<Output> {
        Command::new(binaries::woa_sync()?)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .context("running woa-sync")
    }

    /// `woa-sync enroll --wos <url> --token <token> --ca <ca>`; fails unless it succeeds.
    pub fn enroll(&self, wos_url: &str, token: &str, ca: &Path) -> Result<Output> {
        let ca = ca.display().to_string();
        let output = self.command(&["enroll", "--wos", wos_url, "--token", token, "--ca", &ca])?;
        if !output.status.success() {
            bail!(
                "woa-sync enroll failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// The client id enrollment stored.
    pub fn client_id(&self) -> Result<String> {
        let path = self.state_dir().join("enrollment.json");
        let record: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        record["clientId"]
            .as_str()
            .map(str::to_owned)
            .context("enrollment.json has no clientId")
    }

    /// Starts `woa-sync run`.
    pub fn start(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(binaries::woa_sync()?)
            .arg("--config")
            .arg(self.config_path())
            .arg("run")
            .env("RUST_LOG", "info,woa_sync=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting woa-sync")?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits up to `within` for a graceful exit (killed after that); returns
    /// whether it exited on its own with success.
    pub fn terminate(&mut self, within: std::time::Duration) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            bail!("woa-sync is not running");
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        ensure!(sent.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.kill()?;
        child.wait()?;
        Ok(false)
    }

    /// `kill -9` and wait.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing woa-sync")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Everything the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sync.log")
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        let _ = self.kill9();
        eprintln!("----- woa-sync log -----\n{}", self.log());
    }
}
