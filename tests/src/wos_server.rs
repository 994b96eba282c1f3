//! A `woa-testkit wos` process under test, its admin API, and commits to device repositories.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::Method;
use reqwest::blocking::{Client, RequestBuilder};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::binaries;
use crate::util::run;

/// How long the server may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`WosServer::start_again`] retries while the old port is still taken.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

/// How devices enrolled by the server authenticate to their repository (`--repo-auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RepoAuthKind {
    /// Username clientId and a password.
    #[default]
    Basic,
    /// A bearer token.
    Bearer,
    /// The device certificate.
    Mtls,
}

impl RepoAuthKind {
    fn as_arg(self) -> &'static str {
        match self {
            RepoAuthKind::Basic => "basic",
            RepoAuthKind::Bearer => "bearer",
            RepoAuthKind::Mtls => "mtls",
        }
    }
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct WosServerOptions {
    /// `--repo-auth`.
    pub repo_auth: RepoAuthKind,
    /// Enrollment tokens (`--token`); the default is one random token.
    pub tokens: Vec<String>,
    /// Extra names for the server certificate (`--san`).
    pub sans: Vec<String>,
}

impl Default for WosServerOptions {
    fn default() -> Self {
        let mut token = [0u8; 16];
        rand::fill(&mut token);
        WosServerOptions {
            repo_auth: RepoAuthKind::default(),
            tokens: vec![format!("token-{}", hex::encode(token))],
            sans: Vec::new(),
        }
    }
}

/// A running reference WOS on a loopback port with its own data dir.
///
/// Killed when dropped; its log (stderr) is printed then, which libtest shows for failed tests.
pub struct WosServer {
    child: Option<Child>,
    dir: TempDir,
    options: WosServerOptions,
    port: u16,
    client: Client,
}

impl WosServer {
    /// Starts `woa-testkit wos` on `127.0.0.1:0` with a fresh data dir.
    pub fn start(options: WosServerOptions) -> Result<WosServer> {
        if options.tokens.is_empty() {
            bail!("the WOS needs at least one enrollment token");
        }
        let dir = tempfile::tempdir()?;
        let (child, port) = spawn(dir.path(), &options, 0)?;
        let ca_pem = std::fs::read(dir.path().join("data").join(crate::wos::SERVER_CA_FILE))?;
        let client = https_client(&ca_pem, None)?;
        Ok(WosServer {
            child: Some(child),
            dir,
            options,
            port,
            client,
        })
    }

    /// `https://localhost:PORT`, the base of every URL the server hands out.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The port the server listens on (kept across [`WosServer::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server CA (PEM file) that clients verify the server with.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join(crate::wos::SERVER_CA_FILE)
    }

    /// The device CA (PEM file) that signs device certificates.
    pub fn device_ca_path(&self) -> PathBuf {
        self.data_dir().join(crate::wos::DEVICE_CA_FILE)
    }

    /// The first enrollment token.
    pub fn token(&self) -> &str {
        &self.options.tokens[0]
    }

    /// The server's data dir (CAs, `wos.json`, `repos/`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The bare repository of `client_id`.
    pub fn repo_dir(&self, client_id: &str) -> PathBuf {
        self.data_dir()
            .join("repos")
            .join(format!("{client_id}.git"))
    }

    /// Everything the server logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("wos.log")).unwrap_or_default()
    }

    /// `kill -9` and wait: the WOS is down, connections are refused.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // std's kill is SIGKILL on Unix.
            child.kill().context("killing woa-testkit wos")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again (stopping it first if it runs) on the same port and data dir.
    pub fn start_again(&mut self) -> Result<()> {
        self.stop()?;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match spawn(self.dir.path(), &self.options, self.port) {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                // The old port may not be free yet; only the last failure is worth reporting.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => return Err(err.context("restarting the WOS on its old port")),
            }
        }
    }

    /// An HTTPS client that trusts the server CA and presents no client certificate.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// An HTTPS client that trusts the server CA and presents a device certificate.
    pub fn client_with_identity(&self, certificate_pem: &str, key_pem: &str) -> Result<Client> {
        let ca_pem = std::fs::read(self.ca_path())?;
        https_client(&ca_pem, Some((certificate_pem, key_pem)))
    }

    /// `GET /admin/devices`: device summaries.
    pub fn devices(&self) -> Result<Vec<Value>> {
        let devices = self.admin(Method::GET, "/admin/devices", None)?;
        serde_json::from_value(devices).context("/admin/devices is not a list")
    }

    /// `GET /admin/devices/{clientId}`: what the device enrolled and reported.
    pub fn device(&self, client_id: &str) -> Result<Value> {
        self.admin(Method::GET, &format!("/admin/devices/{client_id}"), None)
    }

    /// `GET /admin/requests`: every non-admin request since the start or the last clear.
    pub fn requests(&self) -> Result<Vec<Value>> {
        let requests = self.admin(Method::GET, "/admin/requests", None)?;
        serde_json::from_value(requests).context("/admin/requests is not a list")
    }

    /// `DELETE /admin/requests`.
    pub fn clear_requests(&self) -> Result<()> {
        self.admin(Method::DELETE, "/admin/requests", None)?;
        Ok(())
    }

    /// `PUT /admin/fault`, e.g. `json!({"mode": "unavailable", "retryAfter": 5})`.
    pub fn set_fault(&self, fault: Value) -> Result<()> {
        self.admin(Method::PUT, "/admin/fault", Some(&fault))?;
        Ok(())
    }

    /// `POST /admin/devices`: enrolls `device_id` without a token; the answer has
    /// `clientId`, `certificate`, `privateKey`, `caBundle` and `repository`.
    pub fn provision(&self, device_id: &str) -> Result<Value> {
        self.admin(
            Method::POST,
            "/admin/devices",
            Some(&json!({"deviceId": device_id})),
        )
    }

    /// `POST /admin/devices/{clientId}/credentials`: the new repository `auth` object.
    pub fn rotate_credentials(&self, client_id: &str) -> Result<Value> {
        self.admin(
            Method::POST,
            &format!("/admin/devices/{client_id}/credentials"),
            None,
        )
    }

    /// Commits `changes` to `main` of `client_id`'s repository as the WOS would, and returns
    /// the new commit id. A change is `(path, Some(content))` to write a file, `(path, None)`
    /// to delete one; no changes makes an empty commit.
    pub fn commit(
        &self,
        client_id: &str,
        changes: &[(&str, Option<&[u8]>)],
        message: &str,
    ) -> Result<String> {
        self.commit_to(client_id, "main", changes, message)
    }

    /// Like [`WosServer::commit`], on `branch`, which must exist unless it is `main`.
    pub fn commit_to(
        &self,
        client_id: &str,
        branch: &str,
        changes: &[(&str, Option<&[u8]>)],
        message: &str,
    ) -> Result<String> {
        let scratch = tempfile::tempdir()?;
        let work = scratch.path().join("work");
        run(git()
            .args(["clone", "--quiet"])
            .arg(self.repo_dir(client_id))
            .arg(&work))
        .context("cloning the device repository")?;
        if branch != "main" {
            run(git()
                .current_dir(&work)
                .args(["checkout", "--quiet", branch]))
            .with_context(|| format!("checking out {branch}"))?;
        }
        for (path, content) in changes {
            let file = work.join(path);
            match content {
                Some(content) => {
                    if let Some(parent) = file.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&file, content).with_context(|| format!("writing {path}"))?;
                }
                None => std::fs::remove_file(&file)
                    .with_context(|| format!("deleting {path} (is it committed?)"))?,
            }
        }
        run(git().current_dir(&work).args(["add", "-A"]))?;
        run(git().current_dir(&work).args([
            "-c",
            "user.name=woa test WOS",
            "-c",
            "user.email=wos@woa.test",
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            message,
        ]))?;
        run(git()
            .current_dir(&work)
            .args(["push", "--quiet", "origin"])
            .arg(format!("HEAD:refs/heads/{branch}")))
        .context("pushing to the device repository")?;
        let commit = run(git().current_dir(&work).args(["rev-parse", "HEAD"]))?;
        Ok(commit.trim().to_owned())
    }

    /// Runs `git --git-dir <the device's bare repository> <args>` on the server's disk and
    /// returns its standard output.
    pub fn git_in_repo(&self, client_id: &str, args: &[&str]) -> Result<String> {
        run(git()
            .arg("--git-dir")
            .arg(self.repo_dir(client_id))
            .args(args))
    }

    /// Points `main` of `client_id`'s repository at `commit_id` (an older commit): a history
    /// rewrite as a force push would make it.
    pub fn force_push(&self, client_id: &str, commit_id: &str) -> Result<()> {
        run(git().arg("--git-dir").arg(self.repo_dir(client_id)).args([
            "update-ref",
            "refs/heads/main",
            commit_id,
        ]))
        .context("resetting main")?;
        Ok(())
    }

    /// A `git` command that trusts only the server CA (whatever `GIT_SSL_CAINFO` says) and
    /// never prompts, for talking to the repositories over HTTPS like a device would.
    pub fn git_command(&self) -> Command {
        let mut command = git();
        command
            .arg("-c")
            .arg(format!("http.sslCAInfo={}", self.ca_path().display()));
        command
    }

    fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut request: RequestBuilder = self.client.request(method.clone(), self.url() + path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response.text()?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path} answered {text:?}"))
    }
}

impl Drop for WosServer {
    fn drop(&mut self) {
        let _ = self.stop();
        // libtest shows a test's captured output only when it fails, which is when it matters.
        eprintln!(
            "---- woa-testkit wos log ({}) ----\n{}",
            self.url(),
            self.log()
        );
    }
}

/// The git CLI without system/global config and without prompts; `GIT_SSL_CAINFO` would
/// override `http.sslCAInfo`, so it goes.
fn git() -> Command {
    let mut command = Command::new("git");
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_SSL_CAINFO")
        .env_remove("GIT_SSL_CAPATH")
        .env_remove("GIT_DIR");
    command
}

/// Starts the server on `port` (0: any) and returns it with the port it printed.
fn spawn(dir: &Path, options: &WosServerOptions, port: u16) -> Result<(Child, u16)> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("wos.log"))?;
    let mut command = Command::new(binaries::woa_testkit()?);
    command
        .args(["wos", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .args(["--repo-auth", options.repo_auth.as_arg()]);
    for token in &options.tokens {
        command.args(["--token", token]);
    }
    for san in &options.sans {
        command.args(["--san", san]);
    }
    let mut child = command
        .env("RUST_LOG", "info,woa_tests=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting woa-testkit wos")?;
    let stdout = child.stdout.take().context("woa-testkit stdout")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = sender.send(read);
    });
    let line = match receiver.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Ok(line)) => line,
        Ok(Err(err)) => {
            let _ = child.kill();
            return Err(err).context("reading the WOS address");
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the WOS printed no address within {STARTUP_TIMEOUT:?}");
        }
    };
    let port = parse_listening(&line);
    match port {
        Some(port) => Ok((child, port)),
        None => {
            let _ = child.kill();
            let status = child.wait()?;
            let log = std::fs::read_to_string(dir.join("wos.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
            bail!("the WOS did not start ({status}), printed {line:?}; log ends:\n{tail}")
        }
    }
}

/// The port of `listening on https://127.0.0.1:PORT`.
fn parse_listening(line: &str) -> Option<u16> {
    line.trim()
        .strip_prefix("listening on https://")?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

/// A blocking HTTPS client with rustls (ring) that trusts only `ca_pem`.
fn https_client(ca_pem: &[u8], identity: Option<(&str, &str)>) -> Result<Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("reading the server CA")?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((certificate_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("reading the client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .context("reading the client key")?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTPS client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_port() {
        assert_eq!(
            parse_listening("listening on https://127.0.0.1:41234\n"),
            Some(41234)
        );
        assert_eq!(parse_listening("error: address in use"), None);
    }
}
