//! The WOS's two certificate authorities, kept in the data dir across restarts.
//!
//! - The server CA signs the HTTPS server certificate; devices trust it (`caBundle`).
//! - The device CA signs device certificates from enrollment CSRs; the server trusts it for
//!   client certificates (mTLS on the REST API and, with `--repo-auth mtls`, on git).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Server CA certificate file in the data dir; clients verify the server with it.
pub const SERVER_CA_FILE: &str = "server-ca.pem";
const SERVER_CA_KEY_FILE: &str = "server-ca-key.pem";
/// Device CA certificate file in the data dir; it signs device certificates.
pub const DEVICE_CA_FILE: &str = "device-ca.pem";
const DEVICE_CA_KEY_FILE: &str = "device-ca-key.pem";
const SERVER_CERT_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";

/// Why a CSR was not signed; the client's fault, so the API answers 400.
#[derive(Debug)]
pub(crate) struct BadCsr(pub(crate) String);

/// The loaded CAs and the server identity of this run.
pub(crate) struct Pki {
    server_ca_pem: String,
    device_ca_pem: String,
    device_issuer: Issuer<'static, KeyPair>,
    server_cert_pem: String,
    server_key_pem: String,
}

impl Pki {
    /// Loads both CAs from `dir`, creating them on first start, and issues a fresh server
    /// certificate for `localhost`, `127.0.0.1` and `sans`.
    ///
    /// The server certificate is issued on every start (not kept) so that a restart with other
    /// `--san` names serves them; clients only pin the CA, which is kept.
    pub(crate) fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki> {
        let (server_ca_pem, server_ca_key) = ca(dir, SERVER_CA_FILE, SERVER_CA_KEY_FILE, "server")?;
        let (device_ca_pem, device_ca_key) = ca(dir, DEVICE_CA_FILE, DEVICE_CA_KEY_FILE, "device")?;
        let server_issuer = Issuer::from_ca_cert_pem(&server_ca_pem, server_ca_key)
            .context("reading the server CA")?;
        let device_issuer = Issuer::from_ca_cert_pem(&device_ca_pem, device_ca_key)
            .context("reading the device CA")?;

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        for san in sans {
            if !names.contains(san) {
                names.push(san.clone());
            }
        }
        let mut params = CertificateParams::new(names.clone())
            .with_context(|| format!("server certificate names {names:?}"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "woa test kit WOS");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, 1)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &server_issuer)?;
        let server_cert_pem = cert.pem();
        let server_key_pem = key.serialize_pem();
        std::fs::write(dir.join(SERVER_CERT_FILE), &server_cert_pem)?;
        write_secret(&dir.join(SERVER_KEY_FILE), &server_key_pem)?;
        Ok(Pki {
            server_ca_pem,
            device_ca_pem,
            device_issuer,
            server_cert_pem,
            server_key_pem,
        })
    }

    /// PEM of the server CA, handed to devices as `caBundle`.
    pub(crate) fn server_ca_pem(&self) -> &str {
        &self.server_ca_pem
    }

    /// Signs `csr_pem` as a device certificate for `client_id`, valid for one year.
    ///
    /// Only the CSR's public key is used: the subject is always `CN=<clientId>`, so a device
    /// cannot ask for another identity.
    pub(crate) fn sign_csr(&self, csr_pem: &str, client_id: &str) -> Result<String, BadCsr> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|err| BadCsr(format!("the csr is not a valid PEM CSR: {err}")))?;
        csr.params =
            device_params(client_id).map_err(|err| BadCsr(format!("device certificate: {err}")))?;
        let cert = csr
            .signed_by(&self.device_issuer)
            .map_err(|err| BadCsr(format!("signing the csr: {err}")))?;
        Ok(cert.pem())
    }

    /// A new key pair and device certificate for `client_id`: `(certificate PEM, key PEM)`.
    pub(crate) fn issue_device(&self, client_id: &str) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = device_params(client_id)?.signed_by(&key, &self.device_issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// TLS for the listener: the server certificate, client certificates optional but
    /// verified against the device CA when presented.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.device_ca_pem.as_bytes()) {
            roots.add(cert.context("reading the device CA")?)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .context("client certificate verifier")?;
        let chain = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading the server certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .context("reading the server key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("server certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The subject common name (the clientId) of a DER certificate the TLS layer verified.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn device_params(client_id: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, client_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, 1)?;
    Ok(params)
}

/// Loads the CA `cert_file`/`key_file` from `dir`, creating it when the certificate is missing.
fn ca(dir: &Path, cert_file: &str, key_file: &str, role: &str) -> Result<(String, KeyPair)> {
    let cert_path = dir.join(cert_file);
    let key_path = dir.join(key_file);
    if cert_path.exists() {
        let cert = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("parsing {}", key_path.display()))?;
        return Ok((cert, key));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("woa test kit {role} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, 10)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    // Key first: a certificate without its key would make the next start fail.
    write_secret(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok((cert.pem(), key))
}

/// From yesterday (clocks of devices drift) until `years` from today, in UTC.
fn set_validity(params: &mut CertificateParams, years: i16) -> Result<()> {
    let today = jiff::tz::TimeZone::UTC
        .to_datetime(jiff::Timestamp::now())
        .date();
    let start = today.yesterday()?;
    let end = today.checked_add(jiff::Span::new().years(years))?;
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(start);
    params.not_after = ymd(end);
    Ok(())
}

/// Writes a private key or credential readable by the owner only, atomically.
pub(crate) fn write_secret(path: &Path, content: &str) -> Result<()> {
    woa_common::store::write_atomic(path, content.as_bytes(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn cas_are_kept_across_starts_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &[]).unwrap();
        let second = Pki::load_or_create(dir.path(), &["wos.example".to_owned()]).unwrap();
        assert_eq!(first.server_ca_pem, second.server_ca_pem);
        assert_eq!(first.device_ca_pem, second.device_ca_pem);
        assert_ne!(first.server_cert_pem, second.server_cert_pem);
        for key in [DEVICE_CA_KEY_FILE, SERVER_CA_KEY_FILE, SERVER_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
        }
        second.server_config().unwrap();
    }

    #[test]
    fn csr_is_signed_with_the_client_id_as_subject() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "someone-else");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert = pki.sign_csr(&csr, "client-1").unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("client-1"));
        assert!(pki.sign_csr("not a csr", "client-1").is_err());
    }
}
