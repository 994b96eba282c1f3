//! woa-deploy's configuration: defaults, then the TOML file, then `WOA_DEPLOY__…` variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use woa_common::telemetry::LogFormat;
use woa_common::window::Window;

use crate::package::{Credentials, PackageConfig};
use crate::policy::{PolicyConfig, Protected};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC address; loopback by default so nothing outside the device reaches it.
    pub listen: SocketAddr,
    /// Name of this agent on the engine (label `org.margo.woa.agent`); objects of other
    /// instances are never touched. One per engine is the norm.
    pub instance: String,
    /// Address of the Prometheus metrics endpoint (plain HTTP); off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// Where desired state and packages are kept.
    pub state_dir: PathBuf,
    /// Period of drift checks.
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
    /// Remove named volumes of removed deployments (kept by default: they hold data).
    pub remove_volumes: bool,
    /// Log line format.
    pub log_format: LogFormat,
    /// Server identity and the CA that client certificates must come from.
    pub tls: TlsFiles,
    /// Registry credentials by registry host (`host:port` as in image references).
    #[serde(skip_serializing)]
    pub registries: BTreeMap<String, Credentials>,
    /// Fetching https package locations.
    #[serde(skip_serializing)]
    pub packages: PackageConfig,
    /// Device identity and facts reported in capabilities, overriding what is probed.
    pub device: DeviceOverrides,
    /// When and how new releases of deployments are let onto the device.
    pub rollout: RolloutConfig,
    /// Removing images the agent pulled that no release needs any more.
    pub image_gc: ImageGcConfig,
    /// What a desired state may ask of the host.
    pub policy: PolicyConfig,
    /// The device's OpenTelemetry collector, announced to every container.
    pub otel: crate::otel::OtelConfig,
    /// The file this configuration was read from, if any (its directory is protected).
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// Limits of the gRPC listener.
    pub listener: ListenerConfig,
}

/// Whether a new release of a deployment needs the site's approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Applied as soon as it arrives (inside the apply windows).
    #[default]
    Auto,
    /// Held in `pending` until approved with `woa-deploy approvals approve`.
    Manual,
}

/// The rollout policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// The approval policy of every deployment not named in `approvals`.
    pub approval: Approval,
    /// Approval policy by deployment id.
    pub approvals: BTreeMap<String, Approval>,
    /// When releases may apply (sync-service window syntax); always when empty. Outside them
    /// a new release waits in `pending`; removals and rollbacks are not held.
    pub windows: Vec<Window>,
    /// How long a component's containers must stay up, without restarting, before it counts
    /// as installed.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// How long a component may take to become ready when its document sets no `timeout`.
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// A release that needs images is refused while the engine's disk has less free space than
    /// this (bytes, or a size like `512m`, `2g`); `0` turns the check off.
    #[serde(deserialize_with = "byte_size")]
    pub min_free_disk: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            approval: Approval::Auto,
            approvals: BTreeMap::new(),
            windows: Vec::new(),
            settle: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(300),
            min_free_disk: 512 << 20,
        }
    }
}

impl RolloutConfig {
    /// The approval policy of `deployment`.
    pub fn approval_of(&self, deployment: &str) -> Approval {
        self.approvals
            .get(deployment)
            .copied()
            .unwrap_or(self.approval)
    }
}

/// Image garbage collection. Only images the agent pulled itself are ever removed, and never
/// one that the running or the rollback release of a deployment uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageGcConfig {
    /// Remove unused images at all.
    pub enabled: bool,
    /// Unused images kept anyway, the most recently pulled first.
    pub keep: usize,
    /// Unused images pulled more recently than this are kept.
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
}

impl Default for ImageGcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keep: 0,
            min_age: Duration::from_secs(3600),
        }
    }
}

fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(t) => crate::compose::parse_bytes(&t)
            .map(|n| n.unsigned_abs())
            .map_err(serde::de::Error::custom),
    }
}

/// PEM files of the local mTLS link.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate that signs clients.
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server private key (0600).
    pub key: PathBuf,
}

/// Capability fields the device owner sets by hand.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceOverrides {
    /// Device id; the host name when empty.
    pub id: String,
    /// Vendor.
    pub vendor: String,
    /// Model number.
    pub model_number: String,
    /// Serial number.
    pub serial_number: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7411)),
            instance: "default".into(),
            metrics_listen: None,
            state_dir: PathBuf::from("/var/lib/woa-deploy"),
            resync_interval: Duration::from_secs(30),
            remove_volumes: false,
            log_format: LogFormat::Plain,
            tls: TlsFiles::default(),
            registries: BTreeMap::new(),
            packages: PackageConfig::default(),
            device: DeviceOverrides::default(),
            rollout: RolloutConfig::default(),
            image_gc: ImageGcConfig::default(),
            policy: PolicyConfig::default(),
            otel: crate::otel::OtelConfig::default(),
            file: None,
            listener: ListenerConfig::default(),
        }
    }
}

impl Config {
    /// Loads and checks the configuration.
    pub fn load(file: Option<&std::path::Path>) -> woa_common::Result<Self> {
        let mut config: Self = woa_common::config::load(file, "WOA_DEPLOY__")?;
        config.file = file.map(std::path::Path::to_path_buf);
        for (name, path) in [
            ("tls.ca", &config.tls.ca),
            ("tls.cert", &config.tls.cert),
            ("tls.key", &config.tls.key),
        ] {
            if path.as_os_str().is_empty() {
                return Err(woa_common::Error::Config(format!("{name} is required")));
            }
        }
        if config.resync_interval.is_zero() {
            return Err(woa_common::Error::Config(
                "resync_interval must be above zero".into(),
            ));
        }
        Ok(config)
    }

    /// woa's own paths, which apps may not bind-mount unless `policy.agent_dirs` allows it: the
    /// state directory and the directories of the TLS files and of the configuration file.
    pub fn protected(&self) -> Protected {
        let files = [&self.tls.ca, &self.tls.cert, &self.tls.key]
            .into_iter()
            .chain(self.file.as_ref());
        let mut dirs = vec![self.state_dir.clone()];
        for dir in files.filter_map(|f| std::path::absolute(f).ok()?.parent().map(Into::into)) {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        Protected::new(dirs)
    }
}

/// Limits of the gRPC listener, so that clients that connect and stall cannot take it over.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// How long a client may take to complete the TLS handshake before it is disconnected.
    #[serde(
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "nonzero_duration"
    )]
    pub handshake_timeout: Duration,
    /// Most connections open at once, handshaking or served; more wait in the kernel's accept
    /// queue. Never more than half the open-files limit, which the process needs for more.
    pub max_connections: std::num::NonZeroUsize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            max_connections: const { std::num::NonZeroUsize::new(256).expect("not zero") },
        }
    }
}

/// A humantime duration above zero: a zero deadline would refuse every client.
fn nonzero_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let duration: Duration = humantime_serde::deserialize(d)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom("must be above zero"));
    }
    Ok(duration)
}
