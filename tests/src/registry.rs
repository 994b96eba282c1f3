//! A local OCI registry with htpasswd auth: Debian's `docker-registry` on a free loopback port.
//!
//! The engine trusts plain-HTTP registries on 127.0.0.0/8, so no TLS is needed; one that
//! must be reached over HTTPS (a private CA) is served on another address of the host.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::util::{free_port, run, wait_until};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// Credentials for one registry, as woa-deploy's `[registries."host"]` config takes them.
#[derive(Debug, Clone)]
pub struct RegistryLogin {
    /// `host:port` of the registry.
    pub host: String,
    /// The user name.
    pub username: String,
    /// The password (woa-deploy reads it from a file the kit writes).
    pub password: String,
}

/// A running registry; stopped when dropped.
pub struct Registry {
    child: Child,
    dir: TempDir,
    login: RegistryLogin,
    /// The private CA of an HTTPS registry (PEM).
    ca: Option<PathBuf>,
}

impl Registry {
    /// Starts a registry that accepts one user with a random password.
    pub fn start() -> Result<Registry> {
        Self::start_on("127.0.0.1", false)
    }

    /// Starts a registry like [`Registry::start`], over HTTPS with a certificate of a private
    /// CA ([`Registry::ca`]), on one of the host's own addresses that is not loopback, so
    /// clients must use TLS.
    pub fn start_tls() -> Result<Registry> {
        let addresses = run(Command::new("hostname").arg("-I"))?;
        let ip = (addresses.split_whitespace())
            .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
            .find(|ip| !ip.is_loopback())
            .context("no IPv4 address of this host besides loopback (hostname -I)")?;
        Self::start_on(&ip.to_string(), true)
    }

    fn start_on(ip: &str, tls: bool) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut tls_config = String::new();
        let mut ca = None;
        if tls {
            let (ca_pem, cert_pem, key_pem) = crate::pki::ca_and_server(ip)?;
            let file = |name: &str, pem: &str| -> Result<PathBuf> {
                let path = dir.path().join(name);
                std::fs::write(&path, pem)?;
                Ok(path)
            };
            ca = Some(file("ca.pem", &ca_pem)?);
            tls_config = format!(
                ", tls: {{ certificate: {}, key: {} }}",
                file("server.pem", &cert_pem)?.display(),
                file("server.key", &key_pem)?.display()
            );
        }
        let login = RegistryLogin {
            host: format!("{ip}:{port}"),
            username: "tester".to_owned(),
            password: crate::util::new_deployment_id()?,
        };
        let htpasswd =
            run(Command::new("htpasswd").args(["-Bbn", &login.username, &login.password]))
                .context("htpasswd (apache2-utils)")?;
        std::fs::write(dir.path().join("htpasswd"), htpasswd)?;
        let config = format!(
            "version: 0.1\n\
             log: {{ level: warn }}\n\
             storage: {{ filesystem: {{ rootdirectory: {root} }} }}\n\
             http: {{ addr: \"{addr}\"{tls_config} }}\n\
             auth: {{ htpasswd: {{ realm: woa-tests, path: {htpasswd} }} }}\n",
            root = dir.path().join("data").display(),
            addr = login.host,
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let mut registry = Registry {
            child,
            dir,
            login,
            ca,
        };
        // An auth-protected registry answers /v2/ with 401 once it is up.
        let client = registry.client()?;
        let base = registry.base();
        let ready = wait_until(Duration::from_secs(20), || {
            if let Some(status) = registry.child.try_wait()? {
                bail!("docker-registry exited with {status}: {}", registry.log());
            }
            Ok(client
                .get(format!("{base}/v2/"))
                .send()
                .is_ok_and(|r| r.status() == 401))
        });
        ready.with_context(|| format!("registry did not come up: {}", registry.log()))?;
        Ok(registry)
    }

    /// The private CA of a registry from [`Registry::start_tls`].
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    /// `http://host:port`, or `https://` with a private CA.
    fn base(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.login.host)
    }

    /// A client of this registry, trusting its CA.
    fn client(&self) -> Result<reqwest::blocking::Client> {
        // reqwest wants a crypto provider for any client, also one that speaks plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::blocking::Client::builder();
        if let Some(ca) = &self.ca {
            builder =
                builder.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
        }
        Ok(builder.build()?)
    }

    /// The credentials this registry accepts.
    pub fn login(&self) -> RegistryLogin {
        self.login.clone()
    }

    /// Pushes `local_image` as `<host>/<repository>` and removes the local tag again, so that
    /// whoever runs the image has to pull it. Returns the pushed reference.
    pub fn push(&self, local_image: &str, repository: &str) -> Result<String> {
        let reference = format!("{}/{repository}", self.login.host);
        // A separate client config keeps the login out of the user's ~/.docker.
        let docker_config = self.docker_config()?;
        let docker = || {
            let mut command = Command::new("docker");
            command.arg("--config").arg(&docker_config);
            command
        };
        let mut login = docker();
        login
            .args([
                "login",
                "--username",
                &self.login.username,
                "--password-stdin",
            ])
            .arg(&self.login.host)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = login.spawn().context("docker login")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.login.password.as_bytes())?;
        }
        let logged_in = child.wait_with_output()?;
        if !logged_in.status.success() {
            bail!(
                "docker login {}: {}",
                self.login.host,
                String::from_utf8_lossy(&logged_in.stderr)
            );
        }
        run(docker().args(["tag", local_image, &reference]))?;
        run(docker().args(["push", &reference])).context("docker push")?;
        run(docker().args(["rmi", &reference]))?;
        Ok(reference)
    }

    /// Pushes `layer` as a one-layer OCI artifact `<host>/<repository>:<tag>` of
    /// `media_type` (with the empty config), through the distribution API itself. Returns the
    /// pushed reference.
    pub fn push_artifact(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        layer: &[u8],
    ) -> Result<String> {
        const EMPTY: &str = "application/vnd.oci.empty.v1+json";
        let client = self.client()?;
        let base = format!("{}/v2/{repository}", self.base());
        let auth = |r: reqwest::blocking::RequestBuilder| {
            r.basic_auth(&self.login.username, Some(&self.login.password))
        };
        let blob = |bytes: &[u8]| -> Result<Value> {
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
            let started = auth(client.post(format!("{base}/blobs/uploads/"))).send()?;
            ensure!(
                started.status() == 202,
                "upload start: {}",
                started.status()
            );
            let location = (started.headers().get("location"))
                .and_then(|l| l.to_str().ok())
                .context("upload without a location")?
                .to_owned();
            let url = if location.starts_with("http") {
                location
            } else {
                format!("{}{location}", self.base())
            };
            let separator = if url.contains('?') { '&' } else { '?' };
            let done = auth(client.put(format!("{url}{separator}digest={digest}")))
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec())
                .send()?;
            ensure!(done.status() == 201, "blob upload: {}", done.status());
            Ok(json!({"digest": digest, "size": bytes.len()}))
        };
        let mut config = blob(b"{}")?;
        config["mediaType"] = EMPTY.into();
        let mut layer = blob(layer)?;
        layer["mediaType"] = media_type.into();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [layer],
        });
        let put = auth(client.put(format!("{base}/manifests/{tag}")))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.to_string())
            .send()?;
        let status = put.status();
        ensure!(status == 201, "manifest: {status}: {}", put.text()?);
        Ok(format!("{}/{repository}:{tag}", self.login.host))
    }

    fn docker_config(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("docker-config");
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
