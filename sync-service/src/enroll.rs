//! Enrollment: setting up trust between the device and the WOS, either with an enrollment
//! token (key and CSR made here, certificate signed by the WOS) or from pre-provisioned files.
//!
//! Files are written first and the enrollment record last, so an interrupted enrollment leaves
//! the device not enrolled rather than half enrolled. Enrolling again is safe: the WOS keys
//! clients by the persisted device id, and the device key is kept.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use woa_common::store::write_atomic;

use crate::identity::{self, Enrollment, Layout, RepositoryRecord};
use crate::wos::{OnboardingRequest, Wos};
use crate::{Error, Result};

/// Token enrollment: `woa-sync enroll --wos URL --token TOKEN --ca FILE`.
pub struct TokenEnrollment<'a> {
    /// WOS base URL.
    pub wos_url: &'a str,
    /// The enrollment token.
    pub token: &'a str,
    /// CA bundle to trust for the WOS during enrollment.
    pub ca: Option<&'a Path>,
}

/// Manual enrollment from pre-provisioned files.
pub struct ManualEnrollment {
    /// WOS base URL.
    pub wos_url: String,
    /// CA bundle to trust for the WOS.
    pub ca: Option<PathBuf>,
    /// The client id the WOS knows the device by.
    pub client_id: String,
    /// Device certificate (PEM).
    pub cert: PathBuf,
    /// Device key (PEM).
    pub key: PathBuf,
    /// Repository URL.
    pub repo_url: String,
    /// Repository branch.
    pub repo_branch: String,
    /// Directory of the deployment documents.
    pub repo_path: String,
    /// `none`, `basic`, `bearer` or `mtls`.
    pub repo_auth: String,
    /// User name for `basic`.
    pub repo_username: String,
    /// File holding the password or token.
    pub repo_secret_file: Option<PathBuf>,
}

/// Enrolls with a token; returns the record stored.
pub async fn with_token(state_dir: &Path, request: TokenEnrollment<'_>) -> Result<Enrollment> {
    let layout = Layout::new(state_dir);
    let device_id = identity::device_id(state_dir)?;
    let key = device_key(&layout)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id.as_str());
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Error::Enrollment(format!("making the certificate request: {e}")))?;
    let wos = Wos::new(request.wos_url, request.ca, None)?;
    let answer = wos
        .onboard(&OnboardingRequest {
            api_version: "onboarding.margo.org/v1alpha1",
            kind: "OnboardingRequest",
            device_id: &device_id,
            enrollment_token: request.token,
            csr: &csr,
        })
        .await?;
    if !answer.certificate.contains("BEGIN CERTIFICATE") {
        return Err(Error::Enrollment(
            "the WOS answered without a PEM certificate".into(),
        ));
    }
    write_atomic(&layout.cert(), answer.certificate.as_bytes(), 0o644)?;
    let ca_bundle = if answer.ca_bundle.contains("BEGIN CERTIFICATE") {
        Some(answer.ca_bundle.into_bytes())
    } else {
        request
            .ca
            .map(|ca| std::fs::read(ca).map_err(|e| woa_common::Error::file(ca, e)))
            .transpose()?
    };
    match ca_bundle {
        Some(bundle) => write_atomic(&layout.wos_ca(), &bundle, 0o644)?,
        // The system roots vouch for this WOS: a CA pinned by an earlier enrollment must go.
        None => remove_if_present(&layout.wos_ca())?,
    }
    let repository = answer.repository;
    let auth = repository.auth.as_ref();
    let kind = auth.map_or("none", |a| a.kind.as_str()).to_owned();
    let secret = match kind.as_str() {
        "basic" => auth.and_then(|a| a.password.clone()),
        "bearer" => auth.and_then(|a| a.token.clone()),
        "none" | "mtls" => None,
        other => {
            return Err(Error::Enrollment(format!(
                "the WOS granted repository auth of unknown type {other:?}"
            )));
        }
    };
    match secret {
        Some(secret) => write_atomic(&layout.repository_secret(), secret.as_bytes(), 0o600)?,
        None if kind == "basic" || kind == "bearer" => {
            return Err(Error::Enrollment(format!(
                "the WOS granted {kind} repository auth without a secret"
            )));
        }
        None => remove_if_present(&layout.repository_secret())?,
    }
    let enrollment = Enrollment {
        client_id: answer.client_id,
        wos_url: request.wos_url.trim_end_matches('/').to_owned(),
        repository: RepositoryRecord {
            url: repository.url,
            branch: repository.branch.unwrap_or_else(|| "main".into()),
            path: repository.path.unwrap_or_else(|| "deployments".into()),
            username: auth.and_then(|a| a.username.clone()).unwrap_or_default(),
            auth: kind,
        },
    };
    identity::save_enrollment(state_dir, &enrollment)?;
    Ok(enrollment)
}

/// Enrolls from pre-provisioned files, copied into `state_dir`; returns the record stored.
pub fn manual(state_dir: &Path, m: ManualEnrollment) -> Result<Enrollment> {
    let layout = Layout::new(state_dir);
    identity::device_id(state_dir)?;
    // Refuse files that cannot work before replacing anything.
    woa_common::tls::client_config(
        m.ca.as_deref().map_or(
            woa_common::tls::Trust::System,
            woa_common::tls::Trust::Bundle,
        ),
        Some((&m.cert, &m.key)),
    )?;
    let read = |path: &Path| std::fs::read(path).map_err(|e| woa_common::Error::file(path, e));
    match (m.repo_auth.as_str(), &m.repo_secret_file) {
        ("basic" | "bearer", Some(file)) => {
            let secret = read(file)?;
            write_atomic(&layout.repository_secret(), &secret, 0o600)?;
        }
        ("basic" | "bearer", None) => {
            return Err(Error::Enrollment(format!(
                "{} repository auth needs --repo-secret-file",
                m.repo_auth
            )));
        }
        ("none" | "mtls", _) => remove_if_present(&layout.repository_secret())?,
        (other, _) => {
            return Err(Error::Enrollment(format!(
                "unknown repository auth type {other:?} (none, basic, bearer, mtls)"
            )));
        }
    }
    write_atomic(&layout.key(), &read(&m.key)?, 0o600)?;
    write_atomic(&layout.cert(), &read(&m.cert)?, 0o644)?;
    match &m.ca {
        Some(ca) => write_atomic(&layout.wos_ca(), &read(ca)?, 0o644)?,
        None => remove_if_present(&layout.wos_ca())?,
    }
    let enrollment = Enrollment {
        client_id: m.client_id,
        wos_url: m.wos_url.trim_end_matches('/').to_owned(),
        repository: RepositoryRecord {
            url: m.repo_url,
            branch: m.repo_branch,
            path: m.repo_path,
            auth: m.repo_auth,
            username: m.repo_username,
        },
    };
    identity::save_enrollment(state_dir, &enrollment)?;
    Ok(enrollment)
}

/// Removes a file left by an earlier enrollment that no longer applies.
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(woa_common::Error::file(path, e).into())
        }
        _ => Ok(()),
    }
}

/// The device key: kept across enrollments, made (0600) the first time.
fn device_key(layout: &Layout) -> Result<KeyPair> {
    let path = layout.key();
    match std::fs::read_to_string(&path) {
        Ok(pem) => KeyPair::from_pem(&pem)
            .map_err(|e| Error::Enrollment(format!("{}: not a usable key: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate()
                .map_err(|e| Error::Enrollment(format!("making the device key: {e}")))?;
            write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
            Ok(key)
        }
        Err(e) => Err(woa_common::Error::file(path, e).into()),
    }
}
