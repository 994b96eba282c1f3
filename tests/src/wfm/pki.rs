//! The WFM's MIAF PKI: one CA (the trust bundle's anchor) issuing SPIFFE X.509-SVIDs for the
//! WFM and the device, plus server identities that are wrong on purpose.
//!
//! Everything is created on first start and kept in the dir, so a device configured from one
//! run keeps working after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// The trust bundle's anchor (PEM).
pub const CA_FILE: &str = "ca.pem";
/// The key of [`CA_FILE`].
pub const CA_KEY_FILE: &str = "ca.key";
/// The device's SVID (PEM).
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// The key of [`CLIENT_CERT_FILE`] (mode 0600).
pub const CLIENT_KEY_FILE: &str = "client.key";
/// The device's SVID issued again by `POST /admin/renew-client`: same key, new serial.
pub const CLIENT_RENEWED_FILE: &str = "client-renewed.pem";

/// The second CA, not in `ca.pem`, that signs the `untrusted` server identity.
const UNTRUSTED_CA_FILE: &str = "untrusted-ca.pem";
const UNTRUSTED_CA_KEY_FILE: &str = "untrusted-ca.key";

/// Which certificate the WFM presents (`serverIdentity` switch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ServerIdentity {
    /// `server.pem`: the WFM's SVID.
    #[default]
    Good,
    /// `other-id.pem`: the SVID of another WFM (`…/margo/wfm/another-wfm`).
    OtherId,
    /// `untrusted.pem`: the right SPIFFE ID signed by a CA outside the trust bundle.
    Untrusted,
    /// `expired.pem`: the right SPIFFE ID and CA, `notAfter` in the past.
    Expired,
}

impl ServerIdentity {
    /// The file stem of its certificate (`<stem>.pem`) and key (`<stem>.key`).
    fn stem(self) -> &'static str {
        match self {
            ServerIdentity::Good => "server",
            ServerIdentity::OtherId => "other-id",
            ServerIdentity::Untrusted => "untrusted",
            ServerIdentity::Expired => "expired",
        }
    }

    const ALL: [ServerIdentity; 4] = [
        ServerIdentity::Good,
        ServerIdentity::OtherId,
        ServerIdentity::Untrusted,
        ServerIdentity::Expired,
    ];
}

/// The loaded CA and the certificates the listener may present.
pub(crate) struct Pki {
    dir: PathBuf,
    ca_pem: String,
    /// The CA's public key as an uncompressed P-256 point, for the JWK of the trust bundle.
    ca_public_key: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    client_spiffe_id: String,
    /// Indexed like [`ServerIdentity::ALL`].
    server_keys: Vec<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl Pki {
    /// Loads the PKI from `dir`, creating what is missing.
    pub(crate) fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        wfm_id: &str,
        client_id: &str,
    ) -> Result<Pki> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (ca_pem, ca_key) = ca(dir, CA_FILE, CA_KEY_FILE, "MIAF")?;
        let ca_public_key = ca_key.public_key_raw().to_vec();
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("reading the CA")?;
        let (untrusted_pem, untrusted_key) =
            ca(dir, UNTRUSTED_CA_FILE, UNTRUSTED_CA_KEY_FILE, "untrusted")?;
        let untrusted_issuer = Issuer::from_ca_cert_pem(&untrusted_pem, untrusted_key)
            .context("reading the untrusted CA")?;

        let server_id = wfm_spiffe_id(trust_domain, wfm_id);
        let client_spiffe_id = format!("{server_id}/client/{client_id}");
        let mut server_keys = Vec::new();
        for identity in ServerIdentity::ALL {
            let (id, signer, validity) = match identity {
                ServerIdentity::Good => (server_id.clone(), &issuer, Validity::Valid),
                ServerIdentity::OtherId => (
                    wfm_spiffe_id(trust_domain, "another-wfm"),
                    &issuer,
                    Validity::Valid,
                ),
                ServerIdentity::Untrusted => {
                    (server_id.clone(), &untrusted_issuer, Validity::Valid)
                }
                ServerIdentity::Expired => (server_id.clone(), &issuer, Validity::Expired),
            };
            let (cert_pem, key_pem) = leaf(dir, identity.stem(), signer, || {
                svid_params(&id, ExtendedKeyUsagePurpose::ServerAuth, validity)
            })?;
            server_keys.push(certified_key(&provider, &cert_pem, &key_pem)?);
        }
        leaf(dir, "client", &issuer, || {
            svid_params(
                &client_spiffe_id,
                ExtendedKeyUsagePurpose::ClientAuth,
                Validity::Valid,
            )
        })?;
        Ok(Pki {
            dir: dir.to_owned(),
            ca_pem,
            ca_public_key,
            issuer,
            client_spiffe_id,
            server_keys,
            provider,
        })
    }

    /// PEM of the trust bundle's anchor.
    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA's public key: `04 || x || y` (P-256).
    pub(crate) fn ca_public_key(&self) -> &[u8] {
        &self.ca_public_key
    }

    /// The certificate and key presented for `identity`.
    pub(crate) fn server_key(&self, identity: ServerIdentity) -> Option<Arc<CertifiedKey>> {
        let index = ServerIdentity::ALL.iter().position(|i| *i == identity)?;
        self.server_keys.get(index).cloned()
    }

    /// Issues the device's SVID again with the key of `client.key` and a new serial, writes it
    /// to `client-renewed.pem` and returns that path.
    pub(crate) fn renew_client(&self) -> Result<PathBuf> {
        let key_path = self.dir.join(CLIENT_KEY_FILE);
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).context("parsing the client key")?;
        let params = svid_params(
            &self.client_spiffe_id,
            ExtendedKeyUsagePurpose::ClientAuth,
            Validity::Valid,
        )?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let path = self.dir.join(CLIENT_RENEWED_FILE);
        std::fs::write(&path, cert.pem()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Signs a device's certificate request as the operator's signer: an SVID for
    /// `spiffe_id` (which the caller checked) with the request's public key, like
    /// `client.pem`, valid from yesterday for `valid_days`. Nothing else of the request is
    /// taken: a signer decides what a device's certificate says.
    pub(crate) fn sign_client(
        &self,
        public_key: rcgen::PublicKey,
        spiffe_id: &str,
        valid_days: u32,
    ) -> Result<String> {
        let params = svid_params(
            spiffe_id,
            ExtendedKeyUsagePurpose::ClientAuth,
            Validity::Days(valid_days),
        )?;
        let request = rcgen::CertificateSigningRequestParams { params, public_key };
        Ok(request.signed_by(&self.issuer)?.pem())
    }

    /// A client verifier that requires a certificate chaining to `ca.pem`; which SPIFFE ID it
    /// carries is checked per request, so a wrong one gets a problem answer, not a TLS alert.
    pub(crate) fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.context("reading the CA")?)?;
        }
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .context("client certificate verifier")
    }

    /// The crypto provider every TLS object here is built with.
    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }
}

/// `spiffe://<td>/margo/wfm/<wfm-id>`.
pub(crate) fn wfm_spiffe_id(trust_domain: &str, wfm_id: &str) -> String {
    format!("spiffe://{trust_domain}/margo/wfm/{wfm_id}")
}

/// The URI SANs of a DER certificate.
/// The serial number of a certificate, in hex; empty when it does not parse.
pub(crate) fn serial(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.raw_serial_as_string())
        .unwrap_or_default()
}

pub(crate) fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Validity {
    /// From yesterday for a year.
    Valid,
    /// Ended yesterday.
    Expired,
    /// From yesterday for this many days.
    Days(u32),
}

/// An X.509-SVID: exactly one URI SAN and no DNS or IP SAN (SPIFFE X509-SVID §2), a random
/// serial (rcgen would derive it from the key, and a renewal keeps the key).
fn svid_params(
    spiffe_id: &str,
    usage: ExtendedKeyUsagePurpose,
    validity: Validity,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "woa test kit WFM");
    params.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from(spiffe_id).with_context(|| format!("SPIFFE ID {spiffe_id}"))?,
    )];
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let today = today();
    let (start, end) = match validity {
        Validity::Valid => (
            today.yesterday()?,
            today.checked_add(jiff::Span::new().years(1))?,
        ),
        Validity::Expired => (
            today.checked_sub(jiff::Span::new().days(30))?,
            today.yesterday()?,
        ),
        Validity::Days(days) => (
            today.yesterday()?,
            today.checked_add(jiff::Span::new().days(days))?,
        ),
    };
    set_dates(&mut params, start, end);
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    // A positive integer of the same length: the top bit would make it negative in DER.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn today() -> jiff::civil::Date {
    jiff::tz::TimeZone::UTC
        .to_datetime(jiff::Timestamp::now())
        .date()
}

/// Sets the validity to from `start` to `end` (midnight UTC).
fn set_dates(params: &mut CertificateParams, start: jiff::civil::Date, end: jiff::civil::Date) {
    let ymd = |date: jiff::civil::Date| {
        rcgen::date_time_ymd(
            i32::from(date.year()),
            date.month().unsigned_abs(),
            date.day().unsigned_abs(),
        )
    };
    params.not_before = ymd(start);
    params.not_after = ymd(end);
}

/// Loads `<stem>.pem`/`<stem>.key` from `dir`, issuing them with `signer` when missing.
fn leaf(
    dir: &Path,
    stem: &str,
    signer: &Issuer<'static, KeyPair>,
    params: impl FnOnce() -> Result<CertificateParams>,
) -> Result<(String, String)> {
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        return Ok((cert, key));
    }
    let key = KeyPair::generate()?;
    let cert = params()?.signed_by(&key, signer)?;
    // Key first: a certificate without its key would make the next start fail.
    write_secret(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok((cert.pem(), key.serialize_pem()))
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
    params.serial_number = Some(random_serial());
    let today = today();
    set_dates(
        &mut params,
        today.yesterday()?,
        today.checked_add(jiff::Span::new().years(10))?,
    );
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_secret(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok((cert.pem(), key))
}

fn certified_key(
    provider: &CryptoProvider,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading a server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading a server key")?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .context("loading a server key")?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Writes a private key readable by the owner only, atomically.
fn write_secret(path: &Path, content: &str) -> Result<()> {
    woa_common::store::write_atomic(path, content.as_bytes(), 0o600)?;
    Ok(())
}
