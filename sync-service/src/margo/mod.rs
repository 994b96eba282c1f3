//! The Margo Workload Management API (rc.3) as a desired-state source: the fleet manager
//! serves a manifest of digests over mutual TLS with SPIFFE identities.

pub mod source;
pub mod spiffe;

use crate::config::MargoConfig;
use crate::wos::{Renewal, Shape, Wos};
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
    let (_, id) = spiffe::client_config(bundle, svid, key, config.tls12)?;
    tracing::info!(spiffe_id = %id.id, fleet_manager = %id.server, %url, "Margo API client");
    let (bundle, svid, key, tls12) = (
        bundle.to_owned(),
        svid.to_owned(),
        key.to_owned(),
        config.tls12,
    );
    // A renewed SVID must name the same client: the fleet manager it may speak to follows
    // from it, and a device does not change fleet managers by a file appearing.
    let renewal = Renewal::new(
        vec![svid.clone(), key.clone(), bundle.clone()],
        Box::new(move || {
            let (tls, renewed) = spiffe::client_config(&bundle, &svid, &key, tls12)?;
            if renewed != id {
                return Err(Error::Common(woa_common::Error::Tls(format!(
                    "{}: the renewed SVID is {}, not {}",
                    svid.display(),
                    renewed.id,
                    id.id
                ))));
            }
            Ok(tls)
        }),
    );
    Ok(Wos::renewing(url, renewal)?.speaking(Shape::Devices {
        device_id: device_id.to_owned(),
    }))
}
