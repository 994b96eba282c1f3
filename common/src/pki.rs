//! The local PKI of the device: one CA that signs the deployment service's server certificate
//! and the client certificates of the sync service and the site operator. The local gRPC link
//! trusts nothing else.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::store::write_atomic;
use crate::{Error, Result};

/// Names the server certificate is valid for: loopback and the service's names on a compose
/// network (`woa-deploy` in this repository's `compose.yaml`).
pub const SERVER_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "deploy-service", "woa-deploy"];

/// Writes `ca.pem ca-key.pem deploy.pem deploy-key.pem sync.pem sync-key.pem operator.pem
/// operator-key.pem` into `dir` (keys 0600). An existing CA is kept unless `force` is set,
/// because replacing it silently would lock out every client holding the old one.
pub fn init(dir: &Path, force: bool) -> Result<()> {
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() && !force {
        return Err(Error::Pki(format!(
            "{} exists; pass --force to replace the local CA",
            ca_path.display()
        )));
    }
    let ca_key = KeyPair::generate().map_err(pki)?;
    let mut ca_params = params(&[], "woa local CA")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(pki)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf = |name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose| -> Result<()> {
        let key = KeyPair::generate().map_err(pki)?;
        let mut p = params(sans, &format!("woa {name}"))?;
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &issuer).map_err(pki)?;
        write_atomic(
            &dir.join(format!("{name}.pem")),
            cert.pem().as_bytes(),
            0o644,
        )?;
        write_atomic(
            &dir.join(format!("{name}-key.pem")),
            key.serialize_pem().as_bytes(),
            0o600,
        )
    };
    leaf("deploy", &SERVER_NAMES, ExtendedKeyUsagePurpose::ServerAuth)?;
    leaf("sync", &[], ExtendedKeyUsagePurpose::ClientAuth)?;
    leaf("operator", &[], ExtendedKeyUsagePurpose::ClientAuth)?;
    write_atomic(
        &dir.join("ca-key.pem"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    // The CA certificate last: its presence means the set is complete.
    write_atomic(&ca_path, ca_cert.pem().as_bytes(), 0o644)
}

fn params(sans: &[&str], common_name: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .map_err(pki)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(3600)).into();
    p.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    Ok(p)
}

fn pki(e: rcgen::Error) -> Error {
    Error::Pki(e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_every_file_with_private_keys_0600_and_keeps_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        for name in ["ca", "deploy", "sync", "operator"] {
            let key = dir.path().join(format!("{name}-key.pem"));
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
            assert!(dir.path().join(format!("{name}.pem")).exists());
        }
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        assert!(
            init(dir.path(), false)
                .unwrap_err()
                .to_string()
                .contains("--force")
        );
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        init(dir.path(), true).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    }
}
