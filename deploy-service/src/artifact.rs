//! Compose components as OCI artifacts, as Margo's rc.3 API names them: `repository:
//! oci://host/name` and `revision` (the tag). The artifact has one layer of media type
//! [`COMPOSE_MEDIA_TYPE`], a tar.gz that the package rules then unpack (limits, escapes).
//! Registries are reached with the credentials images use, over plain HTTP only on loopback
//! (as the engine does). Every layer pulled is kept by digest, with the digest each reference
//! last resolved to, so a restart or rollback without the network finds it again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use woa_common::store::{load_json, save_json, write_atomic};

use crate::package::{Credentials, Secret};

/// The media type of a compose package layer.
pub const COMPOSE_MEDIA_TYPE: &str = "application/vnd.org.margo.component.compose.tar+gzip";

/// Pulls compose artifacts; cheap to clone.
#[derive(Clone)]
pub struct Artifacts {
    registries: Arc<BTreeMap<String, Credentials>>,
    /// CAs trusted besides the system's (DER).
    ca: Arc<Vec<Vec<u8>>>,
    cache: PathBuf,
    limit: u64,
}

impl Artifacts {
    /// Pulls with `registries`' credentials, trusting the CAs in the PEM files `ca` besides
    /// the system's, keeping layers in `cache`, none over `limit` bytes.
    pub fn new(
        registries: BTreeMap<String, Credentials>,
        ca: &[PathBuf],
        cache: PathBuf,
        limit: u64,
    ) -> crate::Result<Self> {
        let mut anchors = Vec::new();
        for file in ca {
            let certs = woa_common::tls::certificates(file)
                .map_err(|e| crate::Error::tls("packages.ca", e))?;
            anchors.extend(certs.into_iter().map(|c| c.to_vec()));
        }
        Ok(Self {
            registries: Arc::new(registries),
            ca: Arc::new(anchors),
            cache,
            limit,
        })
    }

    /// The layer (tar.gz) of `repository` at `revision`, verified against its digest; from
    /// the cache when the registry cannot be reached and this reference was pulled before.
    /// With it, the whole reference (`host/name:tag`) the cache keeps it by.
    pub async fn fetch(
        &self,
        repository: &str,
        revision: Option<&str>,
    ) -> Result<(Vec<u8>, String), String> {
        let name = repository
            .strip_prefix("oci://")
            .ok_or_else(|| format!("{repository}: an OCI repository is oci://host/name"))?;
        let text = match revision {
            Some(tag) => format!("{name}:{tag}"),
            None => name.to_owned(),
        };
        let reference: Reference = text
            .parse()
            .map_err(|e| format!("{text} is not an OCI reference: {e}"))?;
        let layer = match self.pull(&reference).await {
            Ok(layer) => layer,
            Err(Pulled::Refused(e)) => return Err(e),
            Err(Pulled::Unreachable(e)) => match self.cached(&text) {
                Some(layer) => {
                    tracing::warn!(reference = %text, error = %e, "registry not reachable; using the artifact pulled before");
                    layer
                }
                None => return Err(e),
            },
        };
        Ok((layer, reference.whole()))
    }

    /// Forgets every cached reference not in `keep` (as [`Artifacts::fetch`] names them) and
    /// removes the layers no reference left names. A failure is logged: it only costs disk.
    pub fn retain(&self, keep: &BTreeSet<&str>) {
        let index_path = self.index_path();
        let Ok(Some(mut index)) = load_json::<BTreeMap<String, String>>(&index_path) else {
            return;
        };
        let before = index.len();
        index.retain(|reference, _| keep.contains(reference.as_str()));
        if index.len() != before
            && let Err(e) = save_json(&index_path, &index)
        {
            tracing::warn!(error = %woa_common::chain(&e), "could not forget unused artifacts");
            return;
        }
        let layers: BTreeSet<PathBuf> = index
            .values()
            .map(|digest| self.layer_path(digest))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            // Only layers: the index and temporary files of a write stay.
            let is_layer = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sha256-"));
            if is_layer && !layers.contains(&path) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::debug!(layer = %path.display(), "removed an unused artifact")
                    }
                    Err(e) => {
                        tracing::warn!(layer = %path.display(), error = %e, "removing an unused artifact failed")
                    }
                }
            }
        }
    }

    async fn pull(&self, reference: &Reference) -> Result<Vec<u8>, Pulled> {
        let registry = reference.resolve_registry().to_owned();
        let loopback = is_loopback(&registry);
        let config = ClientConfig {
            protocol: if loopback {
                ClientProtocol::HttpsExcept(vec![registry.clone()])
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: (self.ca.iter())
                .map(|der| Certificate {
                    encoding: CertificateEncoding::Der,
                    data: der.clone(),
                })
                .collect(),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..Default::default()
        };
        // Not `Client::new`, which would fall back to a client without the CAs and timeouts.
        let client = Client::try_from(config)
            .map_err(|e| Pulled::Refused(format!("the OCI client for {registry}: {e}")))?;
        let auth = match self.registries.get(&registry).map(Credentials::read) {
            None => RegistryAuth::Anonymous,
            Some(Ok(Secret::Basic { username, password })) => {
                RegistryAuth::Basic(username, password)
            }
            Some(Ok(Secret::Bearer(token))) => RegistryAuth::Bearer(token),
            Some(Err(e)) => {
                return Err(Pulled::Refused(format!("credentials for {registry}: {e}")));
            }
        };
        let (manifest, _) = (client.pull_image_manifest(reference, &auth).await)
            .map_err(|e| Pulled::classify(reference, &e))?;
        let [layer] = &manifest.layers[..] else {
            return Err(Pulled::Refused(format!(
                "{reference}: a compose artifact has one layer, this one {}",
                manifest.layers.len()
            )));
        };
        if layer.media_type != COMPOSE_MEDIA_TYPE {
            return Err(Pulled::Refused(format!(
                "{reference}: layer media type {} is not {COMPOSE_MEDIA_TYPE}",
                layer.media_type
            )));
        }
        if u64::try_from(layer.size).map_or(true, |size| size > self.limit) {
            return Err(Pulled::Refused(format!(
                "{reference}: the layer is {} bytes, over the limit of {} bytes",
                layer.size, self.limit
            )));
        }
        // pull_blob verifies the bytes against the layer's digest.
        let mut out = Bounded {
            bytes: Vec::new(),
            limit: self.limit,
        };
        (client.pull_blob(reference, layer, &mut out).await)
            .map_err(|e| Pulled::classify(reference, &e))?;
        self.keep(&reference.whole(), &layer.digest, &out.bytes);
        Ok(out.bytes)
    }

    fn index_path(&self) -> PathBuf {
        self.cache.join("references.json")
    }

    fn layer_path(&self, digest: &str) -> PathBuf {
        self.cache.join(digest.replace(':', "-"))
    }

    /// Keeps the layer and what the reference resolved to; a failure only costs offline use.
    fn keep(&self, reference: &str, digest: &str, layer: &[u8]) {
        let kept = std::fs::create_dir_all(&self.cache)
            .map_err(|e| woa_common::Error::file(&self.cache, e))
            .and_then(|()| write_atomic(&self.layer_path(digest), layer, 0o600))
            .and_then(|()| {
                let mut index: BTreeMap<String, String> =
                    load_json(&self.index_path())?.unwrap_or_default();
                index.insert(reference.to_owned(), digest.to_owned());
                save_json(&self.index_path(), &index)
            });
        if let Err(e) = kept {
            tracing::warn!(%reference, error = %woa_common::chain(&e), "could not keep the artifact for offline use");
        }
    }

    fn cached(&self, reference: &str) -> Option<Vec<u8>> {
        let whole = reference.parse::<Reference>().ok()?.whole();
        let index: BTreeMap<String, String> = load_json(&self.index_path()).ok()??;
        std::fs::read(self.layer_path(index.get(&whole)?)).ok()
    }
}

/// Why a pull failed: the registry answered no (or sent something unusable), or it could not
/// be reached (which the cache may stand in for).
enum Pulled {
    Refused(String),
    Unreachable(String),
}

impl Pulled {
    fn classify(reference: &Reference, e: &oci_client::errors::OciDistributionError) -> Pulled {
        use oci_client::errors::OciDistributionError as E;
        let message = format!("{reference}: {}", woa_common::chain(e));
        match e {
            E::RequestError(_) | E::IoError(_) => Pulled::Unreachable(message),
            _ => Pulled::Refused(message),
        }
    }
}

/// Engines pull from loopback registries over plain HTTP; so does this.
fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A memory sink that refuses more than `limit` bytes, whatever the manifest claimed.
struct Bounded {
    bytes: Vec<u8>,
    limit: u64,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if (self.bytes.len() + buf.len()) as u64 > self.limit {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the layer exceeds the limit of {} bytes",
                self.limit
            ))));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_cache_keeps_what_is_named_and_the_layers_they_share() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("artifacts");
        let artifacts = Artifacts::new(BTreeMap::new(), &[], cache.clone(), 1 << 20).unwrap();
        let (a, b) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        artifacts.keep("r.example/apps/web:1", &a, b"one");
        artifacts.keep("r.example/apps/web:1-again", &a, b"one");
        artifacts.keep("r.example/apps/web:2", &b, b"two");
        artifacts.retain(&["r.example/apps/web:1"].into());
        assert!(artifacts.layer_path(&a).exists());
        assert!(!artifacts.layer_path(&b).exists());
        let index: BTreeMap<String, String> = load_json(&artifacts.index_path()).unwrap().unwrap();
        assert_eq!(index.keys().collect::<Vec<_>>(), ["r.example/apps/web:1"]);
        artifacts.retain(&BTreeSet::new());
        assert!(!artifacts.layer_path(&a).exists());
        assert!(artifacts.index_path().exists(), "the index is not a layer");
    }

    #[test]
    fn only_loopback_registries_are_plain_http() {
        for (registry, loopback) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("registry.example:5000", false),
            ("10.0.0.5:5000", false),
        ] {
            assert_eq!(is_loopback(registry), loopback, "{registry}");
        }
    }
}
