//! The WOS REST API (Margo's Workload Management API): onboarding, capabilities, status.
//! TLS is always verified; after enrollment the device certificate identifies the device.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use woa_common::tls::{Trust, client_config};

use crate::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one WOS.
#[derive(Debug, Clone)]
pub struct Wos {
    client: reqwest::Client,
    base: String,
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
}

impl Wos {
    /// A client for `base` trusting `ca` (the system roots when `None`) and presenting
    /// `identity` when given.
    pub fn new(base: &str, ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let trust = ca.map_or(Trust::System, Trust::Bundle);
        let tls = client_config(trust, identity)?;
        let client = reqwest::Client::builder()
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
            })?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
        })
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
        })
    }

    /// `PUT /api/v1/clients/{clientId}/capabilities`.
    pub async fn put_capabilities(&self, client_id: &str, manifest: &[u8]) -> Result<()> {
        let path = format!("/api/v1/clients/{client_id}/capabilities");
        self.send(Method::PUT, &path, manifest.to_vec(), "capabilities")
            .await
            .map(drop)
    }

    /// `POST /api/v1/clients/{clientId}/deployments/{deploymentId}/status`.
    pub async fn post_status(
        &self,
        client_id: &str,
        deployment_id: &str,
        manifest: &[u8],
    ) -> Result<()> {
        let path = format!("/api/v1/clients/{client_id}/deployments/{deployment_id}/status");
        self.send(
            Method::POST,
            &path,
            manifest.to_vec(),
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
        let failed = |status: Option<u16>, message: String, retry_after| Error::Wos {
            operation: operation.to_owned(),
            status,
            message,
            retry_after,
        };
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| failed(None, woa_common::chain(&e), None))?;
        let status = response.status();
        let retry_after = crate::retry::retry_after(status, response.headers());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| failed(Some(status.as_u16()), woa_common::chain(&e), None))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let detail = serde_json::from_slice::<Problem>(&bytes)
            .ok()
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
        ))
    }
}
