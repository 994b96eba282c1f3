//! Enrollment: setting up trust between the device and the WOS, either with an enrollment
//! token (key and CSR made here, certificate signed by the WOS) or from pre-provisioned files.
//!
//! Files are written first and the enrollment record last, so an interrupted enrollment leaves
//! the device not enrolled rather than half enrolled. Enrolling again is safe: the WOS keys
//! clients by the persisted device id, and the device key is kept.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use woa_common::store::write_atomic;

use crate::config::RepoAuthConfig;
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
    let grant = repository.auth;
    let kind = grant.as_ref().map_or("none", |a| a.kind.as_str());
    let username = grant.as_ref().and_then(|a| a.username.clone());
    let auth = auth_record(&layout, kind, username.unwrap_or_default())
        .map_err(|e| Error::Enrollment(format!("the WOS granted repository access: {e}")))?;
    let secret = grant.and_then(|a| a.password.or(a.token));
    store_secret(&layout, &auth, secret.map(String::into_bytes))?;
    let enrollment = Enrollment {
        client_id: answer.client_id,
        wos_url: request.wos_url.trim_end_matches('/').to_owned(),
        repository: RepositoryRecord {
            url: repository.url,
            branch: repository.branch.unwrap_or_else(|| "main".into()),
            path: repository.path.unwrap_or_else(|| "deployments".into()),
            auth,
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
    let auth = auth_record(&layout, &m.repo_auth, m.repo_username)?;
    let secret = m.repo_secret_file.as_deref().map(read).transpose()?;
    store_secret(&layout, &auth, secret)?;
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
            auth,
        },
    };
    identity::save_enrollment(state_dir, &enrollment)?;
    Ok(enrollment)
}

/// The repository auth of an enrollment, by its name (`none`, `basic`, `bearer`, `mtls`),
/// with the secret kept in `state_dir` and the device identity for `mtls`.
fn auth_record(layout: &Layout, kind: &str, username: String) -> Result<RepoAuthConfig> {
    Ok(match kind {
        "none" => RepoAuthConfig::None,
        "basic" => RepoAuthConfig::Basic {
            username,
            password_file: layout.repository_secret(),
        },
        "bearer" => RepoAuthConfig::Bearer {
            token_file: layout.repository_secret(),
        },
        "mtls" => RepoAuthConfig::Mtls {
            cert: None,
            key: None,
        },
        other => {
            return Err(Error::Enrollment(format!(
                "unknown repository auth type {other:?} (none, basic, bearer, mtls)"
            )));
        }
    })
}

/// Stores the password or token that `auth` needs (0600), or removes one an earlier
/// enrollment left when it needs none.
fn store_secret(layout: &Layout, auth: &RepoAuthConfig, secret: Option<Vec<u8>>) -> Result<()> {
    let needs_secret = matches!(
        auth,
        RepoAuthConfig::Basic { .. } | RepoAuthConfig::Bearer { .. }
    );
    match (needs_secret, secret) {
        (true, Some(secret)) => Ok(write_atomic(&layout.repository_secret(), &secret, 0o600)?),
        (true, None) => Err(Error::Enrollment(
            "basic and bearer repository auth need a secret (--repo-secret-file)".into(),
        )),
        (false, _) => remove_if_present(&layout.repository_secret()),
    }
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
