//! woa-sync's configuration: defaults, then the TOML file, then `WOA_SYNC__…` variables.
//!
//! Most of what the service needs to reach the WOS comes from enrollment (`state_dir`); the
//! configuration can override each part, which is how pre-provisioned devices are set up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use woa_common::telemetry::LogFormat;

use woa_common::window::Window;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Device identity, enrollment, the Git mirror and the status outbox live here.
    pub state_dir: PathBuf,
    /// Log line format.
    pub log_format: LogFormat,
    /// The WOS REST API; enrollment fills it in.
    pub wos: WosConfig,
    /// The device certificate presented to the WOS; enrollment stores it in `state_dir`.
    pub identity: IdentityFiles,
    /// The desired-state repository; enrollment fills it in.
    pub repository: RepositoryConfig,
    /// When and how often the repository is polled.
    pub poll: PollConfig,
    /// Status posting.
    pub status: StatusConfig,
    /// The local link to the deployment service.
    pub deploy: DeployLink,
    /// Where the desired state comes from.
    pub source: SourceKind,
    /// The Margo Workload Management API, for `source = "margo"`.
    pub margo: MargoConfig,
}

/// The desired-state source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The device's Git repository (enrollment gives it); statuses to the WOS REST API
    /// and/or a status branch.
    #[default]
    Git,
    /// A fleet manager's Margo Workload Management API (rc.3): manifests of digests over
    /// mutual TLS with SPIFFE identities; statuses and capabilities to the same API.
    Margo,
}

/// The Margo API client. The SVID and trust bundle are provisioned out of band.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MargoConfig {
    /// Base URL, which may carry a path prefix (`https://wfm:3003/v1alpha2/margo`); every
    /// API path is relative to it. It only routes: the server is known by its SPIFFE ID.
    pub url: Option<String>,
    /// The device's X.509-SVID (PEM chain), with one URI SAN
    /// `spiffe://<td>/margo/wfm/<wfm-id>/client/<client-id>`; `state_dir/margo-svid.pem`,
    /// where `woa-sync margo install` puts it, when not set.
    pub svid: Option<PathBuf>,
    /// Its private key (PEM, 0600); `state_dir/margo-svid.key`, where `woa-sync margo csr`
    /// makes it, when not set.
    pub svid_key: Option<PathBuf>,
    /// The trust domain's X.509 anchors (PEM), delivered out of band; with
    /// `fetch_trust_bundle` or `trust_bundle_url`, the bootstrap anchors until a bundle is
    /// fetched.
    pub trust_bundle: Option<PathBuf>,
    /// Fetch the trust domain's SPIFFE bundle, found through `/.well-known/margo` at the
    /// fleet manager's origin; it then replaces the anchors, and is fetched again as it says.
    pub fetch_trust_bundle: bool,
    /// The SPIFFE bundle endpoint, when the operator names it instead of discovery (`https`;
    /// on another origin than `url` its host is verified against `trust_bundle`).
    pub trust_bundle_url: Option<String>,
    /// Also allow TLS 1.2 (TLS 1.3 only by default).
    pub tls12: bool,
    /// Which paths the fleet manager serves.
    pub paths: MargoPaths,
}

/// The paths of a Margo API version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MargoPaths {
    /// rc.3: `/api/v1/deployments`, `/api/v1/capabilities/{deviceId}`; the caller is its SVID.
    #[default]
    Devices,
    /// 1.0.0: `/api/v1/clients/{clientId}/…`, the client id of the SVID, and the capabilities
    /// and statuses in their `apiVersion`/`kind` form.
    Clients,
}

/// Where the WOS is and which CA vouches for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WosConfig {
    /// Base URL, e.g. `https://wos.example.com`.
    pub url: Option<String>,
    /// PEM bundle of CAs trusted for the WOS (the system roots when absent and not enrolled).
    pub ca: Option<PathBuf>,
    /// The client id the WOS knows this device by.
    pub client_id: Option<String>,
}

/// The device's client certificate and key (PEM).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityFiles {
    /// Certificate chain.
    pub cert: Option<PathBuf>,
    /// Private key (0600).
    pub key: Option<PathBuf>,
}

/// The desired-state repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// HTTPS URL of the repository.
    pub url: Option<String>,
    /// Branch holding the desired state (`main` when neither set here nor by enrollment).
    pub branch: Option<String>,
    /// Directory of the deployment documents (`deployments` by default).
    pub path: Option<String>,
    /// PEM bundle trusted for the repository host; the WOS CA when absent.
    pub ca: Option<PathBuf>,
    /// How the device authenticates to the repository.
    pub auth: Option<RepoAuthConfig>,
}

/// Repository authentication; secrets are read from files, never from this file itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RepoAuthConfig {
    /// Anonymous access.
    None,
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// File holding the password.
        password_file: PathBuf,
    },
    /// A bearer token.
    Bearer {
        /// File holding the token.
        token_file: PathBuf,
    },
    /// The device's client certificate (or the files given here).
    Mtls {
        /// Certificate; the device certificate when absent.
        #[serde(default)]
        cert: Option<PathBuf>,
        /// Key; the device key when absent.
        #[serde(default)]
        key: Option<PathBuf>,
    },
}

/// The poll schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Time between polls.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Up to this much is added to each wait, so a fleet does not poll in lockstep.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Polling windows, e.g. `Mon-Fri 06:00-18:00 Europe/Berlin`; always when empty.
    pub windows: Vec<String>,
    /// Downtime windows: no request at all to the WOS or the repository, errors ignored.
    pub downtime: Vec<String>,
}

/// Status reporting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Every deployment's status is posted at least this often, changed or not.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Where the current state goes.
    pub report: ReportTo,
    /// The status branch, for `git` and `both`.
    pub git: GitStatusConfig,
}

/// Where the current state is reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportTo {
    /// Posted to the WOS REST API.
    #[default]
    Http,
    /// Committed to a status branch of the device repository.
    Git,
    /// Both.
    Both,
}

/// The status branch of the device repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitStatusConfig {
    /// Branch written (never the desired-state branch).
    pub branch: String,
    /// Directory of the status files in that branch.
    pub dir: String,
    /// Changes arriving within this time go into one commit.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// `device.json` (and with it a commit) is refreshed at least this often.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl ReportTo {
    /// Whether statuses are posted over HTTP.
    pub fn http(self) -> bool {
        matches!(self, ReportTo::Http | ReportTo::Both)
    }

    /// Whether statuses are committed to the status branch.
    pub fn git(self) -> bool {
        matches!(self, ReportTo::Git | ReportTo::Both)
    }
}

impl Default for GitStatusConfig {
    fn default() -> Self {
        Self {
            branch: "woa/status".into(),
            dir: "status".into(),
            debounce: Duration::from_secs(2),
            heartbeat: Duration::from_secs(3600),
        }
    }
}

/// The mTLS link to the deployment service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployLink {
    /// `https://host:port` of the deployment service.
    pub endpoint: String,
    /// Name in the server certificate; the endpoint's host when absent.
    pub server_name: Option<String>,
    /// The local CA.
    pub ca: PathBuf,
    /// This service's client certificate from the local CA.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/woa-sync"),
            log_format: LogFormat::Plain,
            wos: WosConfig::default(),
            identity: IdentityFiles::default(),
            repository: RepositoryConfig::default(),
            poll: PollConfig::default(),
            status: StatusConfig::default(),
            deploy: DeployLink::default(),
            source: SourceKind::Git,
            margo: MargoConfig::default(),
        }
    }
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            jitter: Duration::from_secs(5),
            windows: Vec::new(),
            downtime: Vec::new(),
        }
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(300),
            report: ReportTo::default(),
            git: GitStatusConfig::default(),
        }
    }
}

impl Default for DeployLink {
    fn default() -> Self {
        Self {
            endpoint: "https://localhost:7411".into(),
            server_name: None,
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
        }
    }
}

impl Config {
    /// Loads and checks the configuration.
    pub fn load(file: Option<&Path>) -> woa_common::Result<Self> {
        let config: Self = woa_common::config::load(file, "WOA_SYNC__")?;
        let invalid = |m: String| Err(woa_common::Error::Config(m));
        if config.poll.interval.is_zero() {
            return invalid("poll.interval must be above zero".into());
        }
        if config.status.heartbeat.is_zero() || config.status.git.heartbeat.is_zero() {
            return invalid("status.heartbeat and status.git.heartbeat must be above zero".into());
        }
        config.windows()?;
        Ok(config)
    }

    /// Checks the deployment link's files, which only `run` needs (not `enroll`).
    pub fn check_deploy_link(&self) -> woa_common::Result<()> {
        for (name, path) in [
            ("deploy.ca", &self.deploy.ca),
            ("deploy.cert", &self.deploy.cert),
            ("deploy.key", &self.deploy.key),
        ] {
            if path.as_os_str().is_empty() {
                return Err(woa_common::Error::Config(format!("{name} is required")));
            }
        }
        Ok(())
    }

    /// The parsed polling and downtime windows.
    pub fn windows(&self) -> woa_common::Result<(Vec<Window>, Vec<Window>)> {
        let parse = |field: &str, texts: &[String]| {
            texts
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    text.parse::<Window>()
                        .map_err(|e| woa_common::Error::Config(format!("{field}[{i}]: {e}")))
                })
                .collect::<woa_common::Result<Vec<_>>>()
        };
        Ok((
            parse("poll.windows", &self.poll.windows)?,
            parse("poll.downtime", &self.poll.downtime)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(toml: &str) -> woa_common::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sync.toml");
        std::fs::write(&file, toml).unwrap();
        Config::load(Some(&file))
    }

    #[test]
    fn a_full_file_loads() {
        let c = load(
            r#"
            state_dir = "/tmp/s"
            [repository]
            url = "https://wos/git/d.git"
            auth = { type = "basic", username = "d", password_file = "/run/secrets/p" }
            [poll]
            interval = "2m"
            windows = ["Mon-Fri 06:00-18:00 Europe/Berlin"]
            [deploy]
            ca = "ca.pem"
            cert = "sync.pem"
            key = "sync-key.pem"
            "#,
        )
        .unwrap();
        assert_eq!(c.poll.interval, Duration::from_secs(120));
        assert_eq!(
            c.repository.auth,
            Some(RepoAuthConfig::Basic {
                username: "d".into(),
                password_file: "/run/secrets/p".into()
            })
        );
        assert_eq!(c.windows().unwrap().0.len(), 1);
        c.check_deploy_link().unwrap();
    }

    #[test]
    fn bad_windows_unknown_keys_and_zero_intervals_are_named() {
        let e = load("[poll]\nwindows = [\"Mon-Fry 06:00-18:00\"]\n").unwrap_err();
        assert!(e.to_string().contains("poll.windows[0]"), "{e}");
        let e = load("[poll]\nevery = \"1m\"\n").unwrap_err();
        assert!(e.to_string().contains("every"), "{e}");
        let e = load("[status]\nheartbeat = \"0s\"\n").unwrap_err();
        assert!(e.to_string().contains("status.heartbeat"), "{e}");
        let e =
            load("[repository]\nauth = { type = \"basic\", username = \"u\", password = \"p\" }\n")
                .unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        assert!(load("").unwrap().check_deploy_link().is_err());
    }
}
