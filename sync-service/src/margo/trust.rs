//! The trust bundle: the X.509 anchors the fleet manager's SVID must chain to. They come from a
//! file delivered out of band or, when configured, from the trust domain itself: `GET
//! /.well-known/margo` (its `trustDomain` must be the device's own), then the SPIFFE bundle at
//! its `trustBundleUri`, only over a connection the anchors in force already authenticate. A
//! fetched bundle replaces the anchors (never merged) and is kept in the state dir; a fetch
//! that fails or is refused keeps the anchors before; `spiffe_sequence` never goes down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Url;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use woa_common::store::{load_json, save_json};
use woa_common::tls::certificates;

use crate::wos::Wos;
use crate::{Error, Result};

/// Largest discovery document or bundle read.
const LIMIT: usize = 1 << 20;
/// When the bundle does not say how often to fetch it again.
const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
/// The wait after a fetch that failed, at most (a shorter refresh hint wins).
const RETRY: Duration = Duration::from_secs(300);
/// The longest refresh hint followed: anchors are not left unchecked for longer.
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// A fetched bundle as kept in the state dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    trust_domain: String,
    /// `spiffe_sequence`, when the bundle had one.
    sequence: Option<u64>,
    /// The `x509-svid` authorities, base64 DER as in `x5c`.
    anchors: Vec<String>,
}

/// The anchors in force: the fetched bundle of `trust_domain` kept at `stored` (when bundles
/// are fetched), else `file`.
pub fn anchors(
    file: &Path,
    stored: Option<&Path>,
    trust_domain: &str,
) -> Result<Vec<CertificateDer<'static>>> {
    let Some(stored) = stored else {
        return Ok(certificates(file)?);
    };
    match load_json::<Stored>(stored)? {
        // A bundle of another trust domain belongs to an identity this device no longer has.
        Some(bundle) if bundle.trust_domain == trust_domain => {
            decode(&bundle.anchors).map_err(|e| tls(format!("{}: {e}", stored.display())))
        }
        _ => Ok(certificates(file)?),
    }
}

/// Where the bundle is fetched from.
#[derive(Debug, Clone)]
pub enum BundleSource {
    /// The discovery document at the fleet manager's origin, `/.well-known/margo`.
    Discover,
    /// This SPIFFE bundle endpoint, from the operator.
    Url(String),
}

/// Keeps the anchors current by fetching the trust domain's bundle when it is due.
pub struct TrustBundle {
    /// The anchors delivered out of band: also what authenticates a bundle endpoint on
    /// another origin.
    file: PathBuf,
    stored: PathBuf,
    trust_domain: String,
    source: BundleSource,
    next: Instant,
    /// The refresh hint of the last bundle fetched, which also bounds the wait after a failure.
    hint: Duration,
}

impl TrustBundle {
    /// Fetching from `source` (first at the next poll), keeping it in `stored`.
    pub fn new(file: PathBuf, stored: PathBuf, trust_domain: String, source: BundleSource) -> Self {
        Self {
            file,
            stored,
            trust_domain,
            source,
            next: Instant::now(),
            hint: DEFAULT_REFRESH,
        }
    }

    /// Fetches the bundle if it is due; a failure is logged and the anchors before kept.
    pub async fn refresh_if_due(&mut self, api: &Wos) {
        if Instant::now() < self.next {
            return;
        }
        let wait = match self.refresh(api).await {
            Ok(hint) => {
                self.hint = hint;
                hint
            }
            Err(e) => {
                tracing::warn!(error = %e, "trust bundle not fetched; keeping the anchors in force");
                RETRY.min(self.hint)
            }
        };
        self.next = Instant::now() + wait;
    }

    /// Fetches, checks and keeps the bundle; how long until the next fetch.
    async fn refresh(&self, api: &Wos) -> Result<Duration> {
        let url = match &self.source {
            BundleSource::Url(url) => url.clone(),
            BundleSource::Discover => {
                let origin = parse_url(api.base())?;
                let discovery = (origin.join("/.well-known/margo"))
                    .map_err(|e| tls(format!("{}: {e}", api.base())))?;
                let body = get(
                    api,
                    &self.file,
                    discovery.as_str(),
                    "trust domain discovery",
                )
                .await?;
                discovered_bundle_uri(&body, &self.trust_domain)?
            }
        };
        let body = get(api, &self.file, &url, "trust bundle").await?;
        let bundle = parse_bundle(&body).map_err(|e| tls(format!("trust bundle at {url}: {e}")))?;
        let kept = load_json::<Stored>(&self.stored)?
            .filter(|kept| kept.trust_domain == self.trust_domain);
        if let Some(kept) = kept.as_ref().and_then(|k| k.sequence)
            && goes_back(bundle.sequence, kept)
        {
            let offered = bundle.sequence.map_or("none".to_owned(), |s| s.to_string());
            tracing::error!(
                security_event = true,
                %url,
                %offered,
                kept,
                "the trust bundle's spiffe_sequence went down; refused, keeping the anchors in force"
            );
            return Err(tls(format!(
                "trust bundle at {url}: spiffe_sequence {offered} is not at least the {kept} kept"
            )));
        }
        let stored = Stored {
            trust_domain: self.trust_domain.clone(),
            sequence: bundle.sequence,
            anchors: bundle.anchors,
        };
        // Written only when it changed: a new file is a new identity to reconnect with.
        if kept.as_ref() != Some(&stored) {
            save_json(&self.stored, &stored)?;
            tracing::info!(%url, sequence = ?stored.sequence, anchors = stored.anchors.len(), "trust bundle replaced");
        }
        Ok(bundle.refresh.unwrap_or(DEFAULT_REFRESH).min(MAX_REFRESH))
    }
}

/// Whether a bundle of sequence `offered` would take the anchors back from the `kept` one's.
/// One without a sequence after one with could be any older one.
fn goes_back(offered: Option<u64>, kept: u64) -> bool {
    offered.is_none_or(|offered| offered < kept)
}

/// GETs `url`: over the API's own connection on its origin (the fleet manager, known by its
/// SPIFFE ID); elsewhere over one that verifies the host against the anchors of `file`.
async fn get(api: &Wos, file: &Path, url: &str, operation: &str) -> Result<Vec<u8>> {
    let target = parse_url(url)?;
    let own = parse_url(api.base())?.origin() == target.origin();
    let other;
    let (client, _) = if own {
        api.http()
    } else {
        other = Wos::new(api.base(), Some(file), None)?;
        other.http()
    };
    let response =
        (client.get(target).send().await).map_err(|e| crate::wos::no_answer(operation, &e))?;
    crate::wos::answer(response, operation, LIMIT).await
}

/// The `trustBundleUri` of a discovery document, which must be of `trust_domain`.
fn discovered_bundle_uri(body: &[u8], trust_domain: &str) -> Result<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Discovery {
        trust_domain: String,
        trust_bundle_uri: String,
    }
    let discovery: Discovery = serde_json::from_slice(body).map_err(|e| {
        tls(format!(
            "/.well-known/margo is not a discovery document: {e}"
        ))
    })?;
    if discovery.trust_domain != trust_domain {
        tracing::error!(
            security_event = true,
            offered = %discovery.trust_domain,
            own = %trust_domain,
            "the discovery document names another trust domain; refused"
        );
        return Err(tls(format!(
            "/.well-known/margo: trustDomain {:?} is not this device's {trust_domain:?}",
            discovery.trust_domain
        )));
    }
    if parse_url(&discovery.trust_bundle_uri)?.scheme() != "https" {
        return Err(tls(format!(
            "/.well-known/margo: trustBundleUri {:?} is not https",
            discovery.trust_bundle_uri
        )));
    }
    Ok(discovery.trust_bundle_uri)
}

/// What a SPIFFE bundle says that the device uses.
#[derive(Debug, PartialEq, Eq)]
struct Bundle {
    sequence: Option<u64>,
    refresh: Option<Duration>,
    anchors: Vec<String>,
}

/// A SPIFFE bundle (a JWK Set): its `x509-svid` authorities, each one certificate in `x5c`.
/// Other keys (`jwt-svid`) are ignored; a bundle without any authority is refused (fail
/// closed), and so is an authority that is not a certificate.
fn parse_bundle(body: &[u8]) -> std::result::Result<Bundle, String> {
    #[derive(Deserialize)]
    struct JwkSet {
        keys: Vec<Jwk>,
        spiffe_sequence: Option<u64>,
        spiffe_refresh_hint: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Jwk {
        #[serde(rename = "use")]
        usage: Option<String>,
        x5c: Option<Vec<String>>,
    }
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a SPIFFE bundle: {e}"))?;
    let mut anchors = Vec::new();
    for (i, key) in set.keys.into_iter().enumerate() {
        if key.usage.as_deref() != Some("x509-svid") {
            continue;
        }
        let [cert] = key.x5c.as_deref().unwrap_or_default() else {
            return Err(format!(
                "keys[{i}].x5c: an x509-svid key holds one certificate"
            ));
        };
        decode(std::slice::from_ref(cert)).map_err(|e| format!("keys[{i}].x5c: {e}"))?;
        anchors.push(cert.clone());
    }
    if anchors.is_empty() {
        return Err("it carries no X.509 trust anchor (no x509-svid key)".into());
    }
    Ok(Bundle {
        sequence: set.spiffe_sequence,
        refresh: set.spiffe_refresh_hint.map(Duration::from_secs),
        anchors,
    })
}

/// Base64 DER certificates, each checked to be X.509.
fn decode(anchors: &[String]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    anchors
        .iter()
        .map(|b64| {
            let der = (base64::engine::general_purpose::STANDARD.decode(b64))
                .map_err(|e| format!("not base64: {e}"))?;
            x509_parser::parse_x509_certificate(&der)
                .map_err(|e| format!("not an X.509 certificate: {e}"))?;
            Ok(CertificateDer::from(der))
        })
        .collect()
}

fn parse_url(url: &str) -> Result<Url> {
    Url::parse(url).map_err(|e| tls(format!("{url:?} is not a URL: {e}")))
}

fn tls(message: String) -> Error {
    Error::Common(woa_common::Error::Tls(message))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn authority() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(cert.der())
    }

    fn parse(value: serde_json::Value) -> std::result::Result<Bundle, String> {
        parse_bundle(value.to_string().as_bytes())
    }

    #[test]
    fn a_bundle_gives_its_x509_authorities_only_and_none_is_refused() {
        let ca = authority();
        let bundle = parse(json!({
            "spiffe_sequence": 12, "spiffe_refresh_hint": 60,
            "keys": [
                {"kty": "EC", "use": "jwt-svid", "kid": "k"},
                {"kty": "EC", "use": "x509-svid", "x5c": [ca]},
                {"kty": "RSA", "use": "something-new"}
            ],
            "unknown": true
        }))
        .unwrap();
        assert_eq!(
            bundle,
            Bundle {
                sequence: Some(12),
                refresh: Some(Duration::from_secs(60)),
                anchors: vec![ca.clone()]
            }
        );
        let none = parse(json!({"keys": [{"use": "jwt-svid", "x5c": [ca]}]}));
        assert!(none.unwrap_err().contains("no X.509 trust anchor"));
        assert!(parse(json!({"keys": []})).is_err());
        let two = parse(json!({"keys": [{"use": "x509-svid", "x5c": [ca, ca]}]}));
        assert!(two.unwrap_err().contains("keys[0].x5c"));
        let garbage = parse(json!({"keys": [{"use": "x509-svid", "x5c": ["AAAA"]}]}));
        assert!(garbage.unwrap_err().contains("not an X.509 certificate"));
    }

    #[test]
    fn the_sequence_never_goes_back_nor_disappears() {
        assert!(!goes_back(Some(2), 2));
        assert!(!goes_back(Some(3), 2));
        assert!(goes_back(Some(1), 2));
        assert!(goes_back(None, 2));
    }

    #[test]
    fn discovery_must_name_the_own_trust_domain_and_https() {
        let doc = |td: &str, uri: &str| json!({"trustDomain": td, "trustBundleUri": uri, "x": 1});
        let ok = doc("plant.example", "https://mis.plant.example/bundle.json").to_string();
        assert_eq!(
            discovered_bundle_uri(ok.as_bytes(), "plant.example").unwrap(),
            "https://mis.plant.example/bundle.json"
        );
        let other = doc("other.example", "https://mis/b").to_string();
        let err = discovered_bundle_uri(other.as_bytes(), "plant.example").unwrap_err();
        assert!(err.to_string().contains("other.example"), "{err}");
        let http = doc("plant.example", "http://mis/b").to_string();
        assert!(discovered_bundle_uri(http.as_bytes(), "plant.example").is_err());
    }

    #[test]
    fn the_kept_bundle_of_the_own_trust_domain_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bundle.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let from_file = params.self_signed(&key).unwrap();
        std::fs::write(&file, from_file.pem()).unwrap();
        let stored = dir.path().join("stored.json");
        assert_eq!(
            anchors(&file, Some(&stored), "td").unwrap(),
            vec![from_file.der().clone()]
        );
        let fetched = authority();
        let kept = Stored {
            trust_domain: "td".into(),
            sequence: Some(2),
            anchors: vec![fetched.clone()],
        };
        save_json(&stored, &kept).unwrap();
        // Not fetching: the file is the bundle, whatever was fetched before.
        assert_eq!(
            anchors(&file, None, "td").unwrap(),
            vec![from_file.der().clone()]
        );
        let expected = decode(&[fetched]).unwrap();
        assert_eq!(anchors(&file, Some(&stored), "td").unwrap(), expected);
        // Another trust domain's bundle is not this identity's.
        assert_eq!(
            anchors(&file, Some(&stored), "other").unwrap(),
            vec![from_file.der().clone()]
        );
    }
}
