//! woa-deploy's configuration: defaults, then the TOML file, then `WOA_DEPLOY__…` variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use woa_common::telemetry::LogFormat;

use crate::package::{Credentials, PackageConfig};

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
        }
    }
}

impl Config {
    /// Loads and checks the configuration.
    pub fn load(file: Option<&std::path::Path>) -> woa_common::Result<Self> {
        let config: Self = woa_common::config::load(file, "WOA_DEPLOY__")?;
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
}
