//! The Margo Workload Management API (rc.3) as a desired-state source: the fleet manager
//! serves a manifest of digests over mutual TLS with SPIFFE identities.

pub mod provision;
pub mod source;
pub mod spiffe;
pub mod trust;

use std::path::Path;

use crate::config::{MargoConfig, MargoPaths};
use crate::wos::{Renewal, Shape, Wos};
use crate::{Error, Result};

/// The API client the configuration describes, presenting the device's SVID (by default the
/// one provisioned into `state_dir`), and what keeps its trust bundle current when it is
/// fetched. `stored_bundle` is where a fetched bundle is kept.
pub fn client(
    config: &MargoConfig,
    state_dir: &Path,
    device_id: &str,
    stored_bundle: &Path,
) -> Result<(Wos, Option<trust::TrustBundle>)> {
    let missing = |key: &str| {
        Error::Common(woa_common::Error::Config(format!(
            "margo.{key} is required with source = \"margo\""
        )))
    };
    let url = config.url.as_deref().ok_or_else(|| missing("url"))?;
    let files = provision::SvidFiles::for_client(config, state_dir)?;
    let (svid, key) = (files.svid.as_path(), files.key.as_path());
    let bundle = (config.trust_bundle.as_deref()).ok_or_else(|| missing("trust_bundle"))?;
    let source = match (&config.trust_bundle_url, config.fetch_trust_bundle) {
        (Some(url), _) => Some(trust::BundleSource::Url(url.clone())),
        (None, true) => Some(trust::BundleSource::Discover),
        (None, false) => None,
    };
    // A bundle fetched before counts only while fetching is configured: without it,
    // `trust_bundle` is the bundle, as delivered out of band.
    let stored = source.as_ref().map(|_| stored_bundle.to_owned());
    let (svid, key, bundle, tls12) = (
        svid.to_owned(),
        key.to_owned(),
        bundle.to_owned(),
        config.tls12,
    );
    let tls = {
        let (svid, key, bundle, stored) =
            (svid.clone(), key.clone(), bundle.clone(), stored.clone());
        move || -> Result<_> {
            let (chain, id) = spiffe::svid(&svid)?;
            let anchors = trust::anchors(&bundle, stored.as_deref(), &id.trust_domain)?;
            let config = spiffe::client_config(anchors, (chain, &id), &key, tls12)?;
            Ok((config, id))
        }
    };
    let (_, first) = tls()?;
    tracing::info!(spiffe_id = %first.id, fleet_manager = %first.server, %url, "Margo API client");
    let id = first.clone();
    // A renewed SVID must name the same client: the fleet manager it may speak to follows
    // from it, and a device does not change fleet managers by a file appearing.
    let watched = [svid.clone(), key.clone(), bundle.clone()]
        .into_iter()
        .chain(stored.clone())
        .collect();
    let renewal = Renewal::new(
        watched,
        Box::new(move || {
            let (config, renewed) = tls()?;
            if renewed != first {
                return Err(Error::Common(woa_common::Error::Tls(format!(
                    "{}: the renewed SVID is {}, not {}",
                    svid.display(),
                    renewed.id,
                    first.id
                ))));
            }
            Ok(config)
        }),
    );
    let shape = match config.paths {
        MargoPaths::Devices => Shape::Devices {
            device_id: device_id.to_owned(),
        },
        MargoPaths::Clients => Shape::Clients {
            client_id: id.client.clone(),
        },
    };
    let api = Wos::renewing(url, renewal)?.speaking(shape);
    let trust = source.map(|source| {
        trust::TrustBundle::new(bundle, stored_bundle.to_owned(), id.trust_domain, source)
    });
    Ok((api, trust))
}
