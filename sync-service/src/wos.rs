//! The WOS REST API (Margo's Workload Management API): onboarding, capabilities, status.
//! TLS is always verified; after enrollment the device certificate identifies the device.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use std::time::SystemTime;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use woa_common::tls::{Trust, client_config};

use crate::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest answer read from the WOS API.
const ANSWER_LIMIT: usize = 1 << 20;

/// A client of one WOS; clones share the connection pool and a renewed identity.
#[derive(Clone)]
pub struct Wos {
    client: Arc<RwLock<reqwest::Client>>,
    base: String,
    shape: Shape,
    renewal: Option<Arc<Renewal>>,
}

impl std::fmt::Debug for Wos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wos")
            .field("base", &self.base)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// How the TLS identity is rebuilt when its files change (a renewed certificate), so every
/// clone reconnects with it without a restart.
pub struct Renewal {
    /// The files whose change means a new identity.
    pub files: Vec<std::path::PathBuf>,
    /// Builds the TLS configuration from them.
    pub tls: Box<dyn Fn() -> Result<rustls::ClientConfig> + Send + Sync>,
    /// The files' modification times when the client was last built.
    seen: Mutex<Vec<Option<SystemTime>>>,
}

impl Renewal {
    /// Rebuilding from `files` with `tls`.
    pub fn new(
        files: Vec<std::path::PathBuf>,
        tls: Box<dyn Fn() -> Result<rustls::ClientConfig> + Send + Sync>,
    ) -> Self {
        let seen = Mutex::new(modified(&files));
        Self { files, tls, seen }
    }
}

fn modified(files: &[std::path::PathBuf]) -> Vec<Option<SystemTime>> {
    (files.iter())
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

fn http_client(tls: rustls::ClientConfig) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("woa-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Wos {
            operation: "client setup".into(),
            status: None,
            message: e.to_string(),
            retry_after: None,
            retryable: None,
        })
}

/// Which paths and bodies the WOS speaks for capabilities and statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Margo 1.0.0 and rc.2: `/api/v1/clients/{clientId}/…`, manifests as the deployment
    /// service writes them.
    Clients {
        /// The id the WOS knows the device by.
        client_id: String,
    },
    /// Margo rc.3: `/api/v1/capabilities/{deviceId}` and `/api/v1/deployments/{id}/status`
    /// (the caller is its SVID); capabilities without `apiVersion`/`kind`, statuses with
    /// the `adoptedManifestVersion` they refer to.
    Devices {
        /// The device id.
        device_id: String,
    },
}

/// The onboarding request body. Holds the enrollment token: not `Debug`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnboardingRequest<'a> {
    /// `onboarding.margo.org/v1alpha1`.
    pub api_version: &'a str,
    /// `OnboardingRequest`.
    pub kind: &'a str,
    /// The device's unique id.
    pub device_id: &'a str,
    /// The one-time or fleet enrollment token.
    pub enrollment_token: &'a str,
    /// PEM certificate signing request for the device key.
    pub csr: &'a str,
}

/// What the WOS answers to onboarding.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnboardingResponse {
    /// The id the WOS knows the device by.
    pub client_id: String,
    /// The signed device certificate (PEM).
    pub certificate: String,
    /// CAs to trust for the WOS from now on (PEM).
    #[serde(default)]
    pub ca_bundle: String,
    /// The desired-state repository.
    pub repository: RepositoryGrant,
}

/// The repository part of the onboarding answer. Holds secrets: not `Debug`.
#[derive(Deserialize)]
pub struct RepositoryGrant {
    /// HTTPS URL.
    pub url: String,
    /// Branch; `main` when absent.
    #[serde(default)]
    pub branch: Option<String>,
    /// Directory of deployment documents; `deployments` when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// How to authenticate.
    #[serde(default)]
    pub auth: Option<RepositoryAuthGrant>,
}

/// Repository credentials handed out at onboarding.
#[derive(Deserialize)]
pub struct RepositoryAuthGrant {
    /// `basic`, `bearer`, `mtls` or `none`.
    #[serde(rename = "type")]
    pub kind: String,
    /// User name for basic auth.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for basic auth.
    #[serde(default)]
    pub password: Option<String>,
    /// Bearer token.
    #[serde(default)]
    pub token: Option<String>,
}

/// RFC 9457 problem details, as far as we show them.
#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    /// Margo's extension: whether the client may retry.
    #[serde(default)]
    retryable: Option<bool>,
}

impl Wos {
    /// A client for `base` trusting `ca` (the system roots when `None`) and presenting
    /// `identity` when given.
    pub fn new(base: &str, ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let trust = ca.map_or(Trust::System, Trust::Bundle);
        Self::with_tls(base, client_config(trust, identity)?)
    }

    /// A client for `base` over `tls`, used as it is.
    pub fn with_tls(base: &str, tls: rustls::ClientConfig) -> Result<Self> {
        Ok(Self {
            client: Arc::new(RwLock::new(http_client(tls)?)),
            base: base.trim_end_matches('/').to_owned(),
            shape: Shape::Clients {
                client_id: String::new(),
            },
            renewal: None,
        })
    }

    /// A client for `base` whose identity is rebuilt by `renewal` whenever its files change.
    pub fn renewing(base: &str, renewal: Renewal) -> Result<Self> {
        let wos = Self::with_tls(base, (renewal.tls)()?)?;
        Ok(Self {
            renewal: Some(Arc::new(renewal)),
            ..wos
        })
    }

    /// The base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The path of the desired-state manifest (Margo API).
    pub(crate) fn manifest_path(&self) -> String {
        match &self.shape {
            Shape::Clients { client_id } => format!("/api/v1/clients/{client_id}/deployments"),
            Shape::Devices { .. } => "/api/v1/deployments".to_owned(),
        }
    }

    /// The same client, speaking `shape`.
    pub fn speaking(self, shape: Shape) -> Self {
        Self { shape, ..self }
    }

    /// The HTTP client (new connections with a renewed identity once its files changed) and
    /// the base URL, for the other calls of the same API.
    pub(crate) fn http(&self) -> (reqwest::Client, &str) {
        if let Some(renewal) = &self.renewal {
            let now = modified(&renewal.files);
            let mut seen = renewal.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen != now {
                *seen = now;
                // A half-written pair fails here and is tried again at the next change; the
                // identity before stays in use meanwhile.
                match (renewal.tls)().and_then(http_client) {
                    Ok(client) => {
                        tracing::info!(
                            "the identity's files changed; reconnecting with the new one"
                        );
                        *self.client.write().unwrap_or_else(PoisonError::into_inner) = client;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the identity's files changed but cannot be used; keeping the one before");
                    }
                }
            }
        }
        let client = self.client.read().unwrap_or_else(PoisonError::into_inner);
        (client.clone(), &self.base)
    }

    /// `POST /api/v1/onboarding`.
    pub async fn onboard(&self, request: &OnboardingRequest<'_>) -> Result<OnboardingResponse> {
        let body = serde_json::to_vec(request).map_err(|e| Error::Enrollment(e.to_string()))?;
        let answer = self
            .send(Method::POST, "/api/v1/onboarding", body, "onboarding")
            .await?;
        serde_json::from_slice(&answer).map_err(|e| Error::Wos {
            operation: "onboarding".into(),
            status: None,
            message: format!("unexpected answer: {e}"),
            retry_after: None,
            retryable: None,
        })
    }

    /// Puts the capabilities manifest (as the deployment service writes it).
    pub async fn put_capabilities(&self, manifest: &[u8]) -> Result<()> {
        let (path, body) = match &self.shape {
            Shape::Clients { client_id } => (
                format!("/api/v1/clients/{client_id}/capabilities"),
                manifest.to_vec(),
            ),
            Shape::Devices { device_id } => (
                format!("/api/v1/capabilities/{device_id}"),
                rc3_capabilities(manifest),
            ),
        };
        self.send(Method::PUT, &path, body, "capabilities")
            .await
            .map(drop)
    }

    /// Posts the status manifest of `deployment_id` (as the deployment service writes it).
    pub async fn post_status(&self, deployment_id: &str, manifest: &[u8]) -> Result<()> {
        let (path, body) = match &self.shape {
            Shape::Clients { client_id } => (
                format!("/api/v1/clients/{client_id}/deployments/{deployment_id}/status"),
                manifest.to_vec(),
            ),
            Shape::Devices { device_id } => (
                format!("/api/v1/deployments/{deployment_id}/status"),
                rc3_status(manifest, device_id),
            ),
        };
        self.send(
            Method::POST,
            &path,
            body,
            &format!("status of {deployment_id}"),
        )
        .await
        .map(drop)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        operation: &str,
    ) -> Result<Vec<u8>> {
        let (client, base) = self.http();
        let response = client
            .request(method, format!("{base}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| no_answer(operation, &e))?;
        answer(response, operation, ANSWER_LIMIT).await
    }
}

/// A request of `operation` that got no answer (connection, TLS, timeout).
pub(crate) fn no_answer(operation: &str, e: &reqwest::Error) -> Error {
    Error::Wos {
        operation: operation.to_owned(),
        status: None,
        message: woa_common::chain(e),
        retry_after: None,
        retryable: None,
    }
}

/// The body of a successful answer (at most `limit` bytes); otherwise the error, with the
/// problem's detail (RFC 9457) and the wait the server asked for.
pub(crate) async fn answer(
    response: reqwest::Response,
    operation: &str,
    limit: usize,
) -> Result<Vec<u8>> {
    let failed = |status: Option<u16>, message: String, retry_after, retryable| Error::Wos {
        operation: operation.to_owned(),
        status,
        message,
        retry_after,
        retryable,
    };
    let status = response.status();
    let retry_after = crate::retry::retry_after(status, response.headers());
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(failed(
            Some(status.as_u16()),
            format!("answer larger than {limit} bytes"),
            None,
            None,
        ));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| failed(Some(status.as_u16()), woa_common::chain(&e), None, None))?;
    if bytes.len() > limit {
        return Err(failed(
            Some(status.as_u16()),
            format!("answer larger than {limit} bytes"),
            None,
            None,
        ));
    }
    if status.is_success() {
        return Ok(bytes.to_vec());
    }
    let problem = serde_json::from_slice::<Problem>(&bytes).ok();
    let retryable = problem.as_ref().and_then(|p| p.retryable);
    let detail = problem
        .and_then(|p| p.detail.or(p.title))
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_owned()
        });
    Err(failed(
        Some(status.as_u16()),
        format!("HTTP {}: {detail}", status.as_u16()),
        retry_after,
        retryable,
    ))
}

/// The peripheral and interface types rc.3's capabilities schema enumerates.
const RC3_TYPES: [(&str, &[&str]); 2] = [
    (
        "peripherals",
        &["gpu", "display", "camera", "microphone", "speaker"],
    ),
    (
        "interfaces",
        &[
            "ethernet",
            "wifi",
            "cellular",
            "bluetooth",
            "usb",
            "canbus",
            "rs232",
        ],
    ),
];

/// rc.3's capabilities: the properties (and labels) only, with the values its schema
/// enumerates: every container runtime of this agent is `oci`, architectures by their OCI
/// names, and only the peripheral and interface types rc.3 knows.
fn rc3_capabilities(manifest: &[u8]) -> Vec<u8> {
    use serde_json::Value;
    let Ok(Value::Object(mut m)) = serde_json::from_slice(manifest) else {
        return manifest.to_vec();
    };
    m.remove("apiVersion");
    m.remove("kind");
    if let Some(Value::Object(p)) = m.get_mut("properties") {
        if p.contains_key("supportedRuntimes") {
            p.insert("supportedRuntimes".into(), serde_json::json!(["oci"]));
        }
        for cpu in p
            .get_mut("cpus")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let oci = match cpu["architecture"].as_str() {
                Some("x86_64" | "amd64") => "amd64",
                Some("aarch64" | "arm64") => "arm64",
                Some(a) if a.starts_with("arm") => "arm",
                _ => continue,
            };
            cpu["architecture"] = oci.into();
        }
        for (key, types) in RC3_TYPES {
            if let Some(Value::Array(items)) = p.get_mut(key) {
                items.retain(|item| item["type"].as_str().is_some_and(|t| types.contains(&t)));
            }
        }
    }
    serde_json::to_vec(&m).unwrap_or_else(|_| manifest.to_vec())
}

/// rc.3's status: the manifest version adopted (the revision, for this source) and the device.
fn rc3_status(manifest: &[u8], device_id: &str) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(manifest) else {
        return manifest.to_vec();
    };
    let version = (m.get("revision").and_then(|r| r.as_str())).and_then(|r| r.parse::<u64>().ok());
    if let Some(version) = version {
        m.insert("adoptedManifestVersion".into(), version.into());
    }
    m.insert("deviceId".into(), device_id.into());
    serde_json::to_vec(&m).unwrap_or_else(|_| manifest.to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn rc3_capabilities_say_only_what_its_schema_knows() {
        let manifest = json!({
            "apiVersion": "device.margo.org/v1alpha1",
            "kind": "DeviceCapabilitiesManifest",
            "properties": {
                "id": "d", "vendor": "v", "modelNumber": "m", "serialNumber": "s",
                "cpus": [{"architecture": "x86_64", "cores": 2}],
                "supportedRuntimes": ["docker 20.10.24", "nvidia"],
                "peripherals": [{"type": "serial", "model": "/dev/ttyUSB*"}, {"type": "gpu"}],
                "interfaces": [{"type": "ethernet", "name": "eth0"}, {"type": "loopback"}],
                "otelCollector": true
            }
        });
        let body = rc3_capabilities(manifest.to_string().as_bytes());
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            out,
            json!({"properties": {
                "id": "d", "vendor": "v", "modelNumber": "m", "serialNumber": "s",
                "cpus": [{"architecture": "amd64", "cores": 2}],
                "supportedRuntimes": ["oci"],
                "peripherals": [{"type": "gpu"}],
                "interfaces": [{"type": "ethernet", "name": "eth0"}],
                "otelCollector": true
            }})
        );
    }

    #[test]
    fn rc3_statuses_carry_the_adopted_manifest_version_and_the_device() {
        let manifest =
            json!({"deploymentId": "a", "revision": "7", "status": {"state": "installed"}});
        let body = rc3_status(manifest.to_string().as_bytes(), "dev-1");
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["adoptedManifestVersion"], 7);
        assert_eq!(out["deviceId"], "dev-1");
    }
}
