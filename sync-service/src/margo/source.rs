//! The desired state from a fleet manager's manifest: `GET /api/v1/deployments` with the
//! last ETag (a no-change poll is one 304), then every document it names, each verified
//! against its `sha256:` digest over the exact bytes. The manifest version only goes up:
//! what was adopted is saved (atomically) only once the deployment service took it, so a
//! restart never accepts an older manifest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, ETAG, IF_NONE_MATCH};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use woa_common::store::{load_json, save_json};
use woa_proto::v1 as pb;

use super::trust::TrustBundle;
use crate::pull::{DesiredStateSource, ERR_INVALID_DESIRED_STATE};
use crate::wos::{Wos, no_answer};
use crate::{Error, Result};

/// A manifest whose version does not go up.
pub const ERR_MANIFEST_VERSION: &str = "ERR_MANIFEST_VERSION";

/// The manifest's media type.
const MANIFEST_TYPE: &str = "application/vnd.margo.manifest.v1+json";

/// Largest manifest or document read.
const BODY_LIMIT: usize = 8 << 20;

/// `UnsignedAppStateManifest`, as far as the device uses it (the bundle is another way to the
/// same documents).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    manifest_version: u64,
    deployments: Vec<DeploymentRef>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentRef {
    deployment_id: String,
    digest: String,
    url: String,
}

/// What was last handed over to the deployment service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Adopted {
    manifest_version: u64,
    etag: String,
}

/// The Margo API as the source of desired state.
pub struct MargoSource {
    api: Wos,
    state_path: PathBuf,
    adopted: Adopted,
    /// Fetched and verified, handed over but not yet confirmed.
    pending: Option<Adopted>,
    /// Documents of the last manifest, by digest: a new manifest fetches only what changed.
    documents: BTreeMap<String, Vec<u8>>,
    /// Keeps the anchors current, when they are fetched.
    trust: Option<TrustBundle>,
}

impl MargoSource {
    /// A source reading from `api`, remembering what it adopted in `state_path`, fetching
    /// the trust bundle with `trust` when it is due.
    pub fn new(api: Wos, state_path: PathBuf, trust: Option<TrustBundle>) -> Result<Self> {
        let adopted = load_json(&state_path)?.unwrap_or_default();
        Ok(Self {
            api,
            state_path,
            adopted,
            pending: None,
            documents: BTreeMap::new(),
            trust,
        })
    }

    /// The manifest, unless `etag` still names it.
    async fn manifest(&self, etag: Option<&str>) -> Result<Option<(String, Vec<u8>)>> {
        let (client, base) = self.api.http();
        let mut request = client
            .get(format!("{base}{}", self.api.manifest_path()))
            .header(ACCEPT, MANIFEST_TYPE);
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = request
            .send()
            .await
            .map_err(|e| no_answer("manifest", &e))?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let etag = (response.headers().get(ETAG))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = crate::wos::answer(response, "manifest", BODY_LIMIT).await?;
        Ok(Some((etag, body)))
    }

    /// One document, verified against `digest` (`sha256:<hex>`).
    async fn document(&self, r: &DeploymentRef) -> Result<Vec<u8>> {
        let expected = sha256_of(&r.digest).ok_or_else(|| Error::Manifest {
            code: ERR_INVALID_DESIRED_STATE,
            message: format!(
                "deployments[{}].digest: {:?} is not sha256:<64 hex digits>",
                r.deployment_id, r.digest
            ),
        })?;
        let (client, base) = self.api.http();
        let operation = format!("deployment {}", r.deployment_id);
        let response = (client.get(resolve(base, &r.url)).send().await)
            .map_err(|e| no_answer(&operation, &e))?;
        let body = crate::wos::answer(response, &operation, BODY_LIMIT).await?;
        let actual = Sha256::digest(&body);
        if actual[..] != expected[..] {
            return Err(Error::Manifest {
                code: ERR_INVALID_DESIRED_STATE,
                message: format!(
                    "deployment {}: the document's digest is sha256:{}, the manifest says {}",
                    r.deployment_id,
                    hex::encode(actual),
                    r.digest
                ),
            });
        }
        Ok(body)
    }
}

impl DesiredStateSource for MargoSource {
    fn name(&self) -> String {
        self.api.base().to_owned()
    }

    async fn fetch(&mut self, known: Option<&str>) -> Result<Option<pb::ApplyDesiredStateRequest>> {
        if let Some(trust) = &mut self.trust {
            trust.refresh_if_due(&self.api).await;
        }
        let adopted = self.adopted.manifest_version.to_string();
        // The deployment service has what was adopted: only a changed manifest matters.
        let current = known == Some(adopted.as_str());
        let etag = (current && !self.adopted.etag.is_empty()).then_some(self.adopted.etag.as_str());
        let Some((etag, body)) = self.manifest(etag).await? else {
            tracing::debug!(
                manifest_version = self.adopted.manifest_version,
                "no change"
            );
            return Ok(None);
        };
        let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| Error::Manifest {
            code: ERR_INVALID_DESIRED_STATE,
            message: format!("the manifest is not an UnsignedAppStateManifest: {e}"),
        })?;
        let version = manifest.manifest_version;
        let same = version == self.adopted.manifest_version && etag == self.adopted.etag;
        if same && current {
            return Ok(None);
        }
        if version < self.adopted.manifest_version
            || (version == self.adopted.manifest_version && !same)
        {
            tracing::error!(
                security_event = true,
                offered = version,
                adopted = self.adopted.manifest_version,
                "manifest version does not go up; refused, keeping the desired state adopted"
            );
            return Err(Error::Manifest {
                code: ERR_MANIFEST_VERSION,
                message: format!(
                    "manifestVersion {version} is not above the adopted {}",
                    self.adopted.manifest_version
                ),
            });
        }
        // Every document first: one that cannot be had or verified stops the whole update.
        let mut documents = BTreeMap::new();
        let mut deployments = Vec::new();
        for r in &manifest.deployments {
            let yaml = match self.documents.get(&r.digest) {
                Some(yaml) => yaml.clone(),
                None => self.document(r).await?,
            };
            documents.insert(r.digest.clone(), yaml.clone());
            deployments.push(pb::DeploymentDocument {
                path: format!("deployments/{}.yaml", r.deployment_id),
                yaml,
            });
        }
        self.documents = documents;
        self.pending = Some(Adopted {
            manifest_version: version,
            etag,
        });
        Ok(Some(pb::ApplyDesiredStateRequest {
            revision: version.to_string(),
            deployments,
            artifacts: Default::default(),
        }))
    }

    fn handed_over(&mut self, revision: &str) -> Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        if pending.manifest_version.to_string() == revision {
            save_json(&self.state_path, &pending)?;
            self.adopted = pending;
        }
        Ok(())
    }
}

/// The 32 bytes of a `sha256:<hex>` digest; `None` for any other algorithm or form.
fn sha256_of(digest: &str) -> Option<[u8; 32]> {
    let hex_digits = digest.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

/// A manifest URL against the base: absolute as it is; a path that already carries the base's
/// path prefix against the base's origin; any other path under the base.
fn resolve(base: &str, url: &str) -> String {
    if url.starts_with("https://") {
        return url.to_owned();
    }
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let (origin, prefix) = match base[after_scheme..].find('/') {
        Some(i) => base.split_at(after_scheme + i),
        None => (base, ""),
    };
    let path = url.trim_start_matches('/');
    if !prefix.is_empty() && format!("/{path}").starts_with(&format!("{prefix}/")) {
        format!("{origin}/{path}")
    } else {
        format!("{base}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_urls_are_relative_to_the_base_with_its_prefix() {
        let base = "https://wfm:3003/v1alpha2/margo";
        let expected = "https://wfm:3003/v1alpha2/margo/api/v1/deployments/a/sha256:00";
        assert_eq!(resolve(base, "/api/v1/deployments/a/sha256:00"), expected);
        assert_eq!(
            resolve(base, "/v1alpha2/margo/api/v1/deployments/a/sha256:00"),
            expected
        );
        assert_eq!(
            resolve("https://wfm:3003", "/api/v1/deployments/a/sha256:00"),
            "https://wfm:3003/api/v1/deployments/a/sha256:00"
        );
    }

    #[test]
    fn only_sha256_digests_are_understood() {
        let hex64 = "ab".repeat(32);
        assert!(sha256_of(&format!("sha256:{hex64}")).is_some());
        for bad in [
            format!("sha512:{hex64}"),
            format!("sha256:{}", &hex64[..62]),
            hex64.clone(),
            format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert!(sha256_of(&bad).is_none(), "{bad}");
        }
    }
}
