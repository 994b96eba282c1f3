//! The Margo Workload Management API (rc.3) as a desired-state source: the fleet manager
//! serves a manifest of digests over mutual TLS with SPIFFE identities.

pub mod source;
pub mod spiffe;

use crate::config::MargoConfig;
use crate::wos::{Shape, Wos};
use crate::{Error, Result};

/// The API client the configuration describes, presenting the device's SVID.
pub fn client(config: &MargoConfig, device_id: &str) -> Result<Wos> {
    let missing = |key: &str| {
        Error::Common(woa_common::Error::Config(format!(
            "margo.{key} is required with source = \"margo\""
        )))
    };
    let url = config.url.as_deref().ok_or_else(|| missing("url"))?;
    let svid = config.svid.as_deref().ok_or_else(|| missing("svid"))?;
    let key = config
        .svid_key
        .as_deref()
        .ok_or_else(|| missing("svid_key"))?;
    let bundle = (config.trust_bundle.as_deref()).ok_or_else(|| missing("trust_bundle"))?;
    let (tls, id) = spiffe::client_config(bundle, svid, key, config.tls12)?;
    tracing::info!(spiffe_id = %id.id, fleet_manager = %id.server, %url, "Margo API client");
    Ok(Wos::with_tls(url, tls)?.speaking(Shape::Devices {
        device_id: device_id.to_owned(),
    }))
}
