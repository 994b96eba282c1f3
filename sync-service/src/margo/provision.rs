//! Out-of-band provisioning of the device's X.509-SVID, as Margo rc.3 leaves it: the device
//! makes its key (which never leaves it) and a certificate signing request for the operator's
//! signer, then installs the SVID the signer returns.
//!
//! The SVID is installed by an atomic rename where the running service watches for it, so a
//! renewal needs no restart. Everything that would make the service fail later is refused
//! before anything is replaced: a certificate for another key, an ID that is not a device's,
//! a certificate out of its validity or not chaining to the trust bundle, and an SVID that
//! names another device than the one installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use woa_common::store::write_atomic;

use super::spiffe::{ClientId, spiffe_id};
use crate::config::MargoConfig;
use crate::{Error, Result};

/// The SVID's file in the state dir when `[margo] svid` is not set.
pub const SVID_FILE: &str = "margo-svid.pem";
/// The key's file in the state dir when `[margo] svid_key` is not set.
pub const KEY_FILE: &str = "margo-svid.key";

/// Where the device's SVID and its key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidFiles {
    /// The X.509-SVID (PEM chain).
    pub svid: PathBuf,
    /// Its private key (PEM, 0600).
    pub key: PathBuf,
}

impl SvidFiles {
    /// The files `[margo]` names, each defaulting to its file in `state_dir`, so a device
    /// provisioned by `woa-sync margo csr`/`install` needs no paths in its configuration.
    pub fn new(config: &MargoConfig, state_dir: &Path) -> SvidFiles {
        SvidFiles {
            svid: (config.svid.clone()).unwrap_or_else(|| state_dir.join(SVID_FILE)),
            key: (config.svid_key.clone()).unwrap_or_else(|| state_dir.join(KEY_FILE)),
        }
    }

    /// The files the API client presents. A default file that is missing means the device
    /// was never provisioned, which deserves the way out rather than "no such file".
    pub(crate) fn for_client(config: &MargoConfig, state_dir: &Path) -> Result<SvidFiles> {
        let files = SvidFiles::new(config, state_dir);
        for (key, configured, path) in [
            ("svid", &config.svid, &files.svid),
            ("svid_key", &config.svid_key, &files.key),
        ] {
            if configured.is_none() && !path.exists() {
                return Err(Error::Common(woa_common::Error::Config(format!(
                    "margo.{key} is not set and {} does not exist: provision the SVID with \
                     `woa-sync margo csr` and `woa-sync margo install`, or set margo.{key}",
                    path.display()
                ))));
            }
        }
        Ok(files)
    }

    /// A key made by `csr --new-key` while an installed SVID still uses the key before: it
    /// replaces that key only when its SVID is installed, so the running service (and a
    /// restart) keeps a matching pair meanwhile.
    fn next_key(&self) -> PathBuf {
        let mut name = self.key.file_name().unwrap_or_default().to_owned();
        name.push(".next");
        self.key.with_file_name(name)
    }
}

/// A certificate signing request for `spiffe_id` (PEM), signed with the device key.
///
/// The key is made (ECDSA P-256, 0600) the first time and kept afterwards, so a renewal
/// re-uses it; `new_key` makes a new one. The request carries the SPIFFE ID as its one URI
/// SAN (and the client id as its common name, for signers that want a subject).
pub fn csr(files: &SvidFiles, spiffe_id: &str, new_key: bool) -> Result<String> {
    let id = ClientId::parse(spiffe_id).map_err(Error::Provision)?;
    let uri = Ia5String::try_from(spiffe_id)
        .map_err(|e| Error::Provision(format!("{spiffe_id}: {e}")))?;
    let key = device_key(files, new_key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, id.client.as_str());
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Error::Provision(format!("making the certificate request: {e}")))
}

/// The key a request is signed with: the pending new key, else the device key, else a new
/// device key. With `new_key`, a new key; it is pending while an SVID is installed.
fn device_key(files: &SvidFiles, new_key: bool) -> Result<KeyPair> {
    let next = files.next_key();
    if !new_key {
        for path in [&next, &files.key] {
            if let Some(key) = read_key(path)? {
                return Ok(key);
            }
        }
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Provision(format!("making the device key: {e}")))?;
    let pem = key.serialize_pem();
    if new_key && files.svid.exists() {
        write_atomic(&next, pem.as_bytes(), 0o600)?;
    } else {
        write_atomic(&files.key, pem.as_bytes(), 0o600)?;
        remove_if_present(&next)?;
    }
    Ok(key)
}

/// The key in `path`, `None` when there is no such file. Errors never show key material.
fn read_key(path: &Path) -> Result<Option<KeyPair>> {
    match std::fs::read_to_string(path) {
        Ok(pem) => KeyPair::from_pem(&pem).map(Some).map_err(|e| {
            Error::Provision(format!("{}: not a usable private key: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(woa_common::Error::file(path, e).into()),
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(woa_common::Error::file(path, e).into())
        }
        _ => Ok(()),
    }
}

/// What an installed SVID must chain to: the anchors the service trusts, which are those of
/// a bundle fetched for the SVID's trust domain (`fetch_trust_bundle`) once there is one, else
/// the `trust_bundle` file. Checking against the file alone would refuse an SVID from a CA
/// the fetched bundle rotated to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchors {
    /// `[margo] trust_bundle`.
    pub file: PathBuf,
    /// The fetched bundle kept in the state dir, when bundles are fetched.
    pub fetched: Option<PathBuf>,
}

impl Anchors {
    /// The anchors of the configuration; `None` without `[margo] trust_bundle`.
    pub fn new(config: &MargoConfig, state_dir: &Path) -> Option<Anchors> {
        let fetching = config.fetch_trust_bundle || config.trust_bundle_url.is_some();
        Some(Anchors {
            file: config.trust_bundle.clone()?,
            fetched: fetching.then(|| crate::identity::Layout::new(state_dir).margo_trust_bundle()),
        })
    }
}

/// An SVID that [`install`] put in place.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Whose it is.
    pub id: ClientId,
    /// When it expires.
    pub not_after: jiff::Timestamp,
    /// Where it was installed.
    pub path: PathBuf,
}

/// Installs the SVID in `svid` (a PEM chain, leaf first) as the device's, after checking it
/// is one the service can use: a certificate for the device key (or the key `csr --new-key`
/// made), naming a device (`spiffe://<td>/margo/wfm/<wfm-id>/client/<id>`), valid now, for
/// client authentication, chaining to `anchors` when given, and naming the same device as
/// the SVID installed before unless `replace_identity`.
pub fn install(
    files: &SvidFiles,
    svid: &Path,
    anchors: Option<&Anchors>,
    replace_identity: bool,
) -> Result<Installed> {
    let refused = |why: String| Error::Provision(format!("{} refused: {why}", svid.display()));
    let pem = std::fs::read(svid).map_err(|e| woa_common::Error::file(svid, e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("not a PEM certificate chain ({e})")))?;
    let Some(leaf) = chain.first() else {
        return Err(refused(
            "not a certificate: no PEM certificate in it".into(),
        ));
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| refused(format!("not an X.509 certificate ({e})")))?;

    let spki = cert.tbs_certificate.subject_pki.raw;
    let next = files.next_key();
    let pending = match read_key(&next)? {
        Some(key) if key.subject_public_key_info() == spki => Some(key),
        _ => None,
    };
    if pending.is_none() {
        match read_key(&files.key)? {
            Some(key) if key.subject_public_key_info() == spki => {}
            Some(_) => {
                return Err(refused(format!(
                    "its public key is not the device key's ({})",
                    files.key.display()
                )));
            }
            None => {
                return Err(refused(format!(
                    "there is no device key ({}); make it and the request with `woa-sync margo csr`",
                    files.key.display()
                )));
            }
        }
    }

    let id = spiffe_id(leaf)
        .and_then(|id| ClientId::parse(&id))
        .map_err(refused)?;
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before, validity.not_after);
    let now = jiff::Timestamp::now().as_second();
    if now < not_before.timestamp() {
        return Err(refused(format!("not valid before {not_before}")));
    }
    if now > not_after.timestamp() {
        return Err(refused(format!("expired on {not_after}")));
    }
    // Without the client-auth usage every handshake would fail; say so now.
    let usage = (cert.extended_key_usage())
        .map_err(|e| refused(format!("unreadable extended key usage: {e}")))?;
    if let Some(usage) = usage
        && !(usage.value.client_auth || usage.value.any)
    {
        return Err(refused(
            "not for client authentication (its extended key usage lacks clientAuth)".into(),
        ));
    }
    if let Some(anchors) = anchors {
        verify_chain(anchors, &id.trust_domain, &chain, svid)?;
    }
    // A file that names no identity (unreadable, damaged) cannot be in use; it is replaced.
    if let Some(before) = installed_id(&files.svid)
        && before.id != id.id
        && !replace_identity
    {
        return Err(refused(format!(
            "it is the SVID of {}, but the installed SVID {} is {}; a device does not change \
             identity by installing a file (--replace-identity if it must)",
            id.id,
            files.svid.display(),
            before.id
        )));
    }

    // The key first: should the SVID not follow (a crash), installing the same file again
    // finds its key in place and completes the pair.
    if let Some(key) = pending {
        write_atomic(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
        remove_if_present(&next)?;
    }
    write_atomic(&files.svid, &pem, 0o644)?;
    tracing::info!(spiffe_id = %id.id, path = %files.svid.display(), "SVID installed");
    Ok(Installed {
        id,
        not_after: jiff::Timestamp::from_second(not_after.timestamp()).unwrap_or_default(),
        path: files.svid.clone(),
    })
}

/// Checks `chain` (from the file `svid`) as the fleet manager will: a client certificate
/// chaining to the anchors in force for `trust_domain`, valid now and for client
/// authentication.
fn verify_chain(
    anchors: &Anchors,
    trust_domain: &str,
    chain: &[CertificateDer<'static>],
    svid: &Path,
) -> Result<()> {
    let unusable = |e: String| Error::Provision(format!("trust anchors of {trust_domain}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    let fetched = anchors.fetched.as_deref();
    for anchor in super::trust::anchors(&anchors.file, fetched, trust_domain)? {
        roots.add(anchor).map_err(|e| unusable(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| unusable(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| unusable("empty".into()))?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| {
            Error::Provision(format!(
                "{} refused: it does not chain to the anchors of {trust_domain} ({}, or the \
                 bundle fetched since) ({e})",
                svid.display(),
                anchors.file.display(),
            ))
        })?;
    Ok(())
}

/// Whose SVID is installed at `path`, if one that names a device is.
fn installed_id(path: &Path) -> Option<ClientId> {
    let pem = std::fs::read(path).ok()?;
    let leaf = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    spiffe_id(&leaf).and_then(|id| ClientId::parse(&id)).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use rcgen::{
        BasicConstraints, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair as Key, date_time_ymd,
    };
    use x509_parser::prelude::FromDer as _;

    use super::*;

    const DEVICE: &str = "spiffe://plant.example/margo/wfm/wfm-7/client/dev-1";
    const OTHER_DEVICE: &str = "spiffe://plant.example/margo/wfm/wfm-7/client/dev-2";

    struct Fixture {
        dir: tempfile::TempDir,
        files: SvidFiles,
        ca: Issuer<'static, Key>,
        anchors: Anchors,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let files = SvidFiles::new(&MargoConfig::default(), dir.path());
        let (ca, file) = ca(dir.path(), "ca.pem");
        let config = MargoConfig {
            trust_bundle: Some(file),
            fetch_trust_bundle: true,
            ..MargoConfig::default()
        };
        let anchors = Anchors::new(&config, dir.path()).unwrap();
        Fixture {
            dir,
            files,
            ca,
            anchors,
        }
    }

    fn ca(dir: &Path, name: &str) -> (Issuer<'static, Key>, PathBuf) {
        let (issuer, cert) = ca_cert();
        let path = dir.join(name);
        std::fs::write(&path, cert.pem()).unwrap();
        (issuer, path)
    }

    fn ca_cert() -> (Issuer<'static, Key>, rcgen::Certificate) {
        let key = Key::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (Issuer::new(params, key), cert)
    }

    /// An SVID for `key` naming `uri`, as a signer would issue it.
    fn signed(
        fx: &Fixture,
        key: &Key,
        uri: &str,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> PathBuf {
        signed_by(fx, key, uri, &fx.ca, tweak)
    }

    fn signed_by(
        fx: &Fixture,
        key: &Key,
        uri: &str,
        issuer: &Issuer<'_, Key>,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> PathBuf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        tweak(&mut params);
        let cert = params.signed_by(key, issuer).unwrap();
        let path = fx
            .dir
            .path()
            .join(format!("signed-{}.pem", rand::random::<u32>()));
        std::fs::write(&path, cert.pem()).unwrap();
        path
    }

    fn key_at(path: &Path) -> Key {
        Key::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn csr_uris(pem: &str) -> Vec<String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
                .unwrap();
        let mut names = Vec::new();
        for extension in csr.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = extension
            {
                for name in &san.general_names {
                    names.push(match name {
                        x509_parser::extensions::GeneralName::URI(uri) => format!("URI:{uri}"),
                        other => format!("{other:?}"),
                    });
                }
            }
        }
        names
    }

    /// Installs `svid` and checks it is refused with `why`, naming the file, and that the
    /// SVID before is untouched.
    fn refused(fx: &Fixture, svid: &Path, bundle: bool, why: &str) {
        let before = std::fs::read(&fx.files.svid).ok();
        let bundle = bundle.then_some(&fx.anchors);
        let e = install(&fx.files, svid, bundle, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&svid.display().to_string()), "{e}");
        assert!(e.contains(why), "{e}");
        assert_eq!(std::fs::read(&fx.files.svid).ok(), before);
    }

    #[test]
    fn the_files_default_to_the_state_dir() {
        let state = Path::new("/var/lib/woa-sync");
        let files = SvidFiles::new(&MargoConfig::default(), state);
        assert_eq!(files.svid, state.join("margo-svid.pem"));
        assert_eq!(files.key, state.join("margo-svid.key"));
        let config = MargoConfig {
            svid: Some("/etc/woa/svid.pem".into()),
            ..MargoConfig::default()
        };
        let files = SvidFiles::new(&config, state);
        assert_eq!(files.svid, Path::new("/etc/woa/svid.pem"));
        assert_eq!(files.key, state.join("margo-svid.key"));

        let dir = tempfile::tempdir().unwrap();
        let e = SvidFiles::for_client(&MargoConfig::default(), dir.path()).unwrap_err();
        assert!(e.to_string().contains("margo-svid.pem"), "{e}");
        assert!(e.to_string().contains("woa-sync margo csr"), "{e}");
    }

    #[test]
    fn the_key_is_made_private_once_and_kept_unless_renewed_on_purpose() {
        let fx = fixture();
        let first = csr(&fx.files, DEVICE, false).unwrap();
        assert!(first.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert_eq!(csr_uris(&first), [format!("URI:{DEVICE}")]);
        assert_eq!(mode(&fx.files.key), 0o600);
        let key = std::fs::read(&fx.files.key).unwrap();
        csr(&fx.files, OTHER_DEVICE, false).unwrap();
        assert_eq!(
            std::fs::read(&fx.files.key).unwrap(),
            key,
            "a renewal keeps the key"
        );

        // No SVID uses the key yet: a new one replaces it at once.
        csr(&fx.files, DEVICE, true).unwrap();
        assert_ne!(std::fs::read(&fx.files.key).unwrap(), key);
        assert_eq!(mode(&fx.files.key), 0o600);
        assert!(!fx.files.next_key().exists());

        for bad in ["spiffe://plant.example/margo/wfm/wfm-7", "dev-1", ""] {
            let e = csr(&fx.files, bad, false).unwrap_err();
            assert!(e.to_string().contains("client"), "{e}");
        }
    }

    #[test]
    fn a_new_key_takes_over_only_with_its_svid() {
        let fx = fixture();
        csr(&fx.files, DEVICE, false).unwrap();
        let old = key_at(&fx.files.key);
        install(&fx.files, &signed(&fx, &old, DEVICE, |_| {}), None, false).unwrap();

        csr(&fx.files, DEVICE, true).unwrap();
        // The installed pair stays a pair until the new SVID comes.
        assert_eq!(key_at(&fx.files.key).serialize_pem(), old.serialize_pem());
        let next = fx.files.next_key();
        assert_eq!(mode(&next), 0o600);
        let new = key_at(&next);
        // A second request re-uses the pending key.
        csr(&fx.files, DEVICE, false).unwrap();
        assert_eq!(key_at(&next).serialize_pem(), new.serialize_pem());

        let svid = signed(&fx, &new, DEVICE, |_| {});
        let installed = install(&fx.files, &svid, Some(&fx.anchors), false).unwrap();
        assert_eq!(installed.id.id, DEVICE);
        assert_eq!(key_at(&fx.files.key).serialize_pem(), new.serialize_pem());
        assert_eq!(mode(&fx.files.key), 0o600);
        assert!(!next.exists());
        assert_eq!(
            std::fs::read(&fx.files.svid).unwrap(),
            std::fs::read(&svid).unwrap()
        );
    }

    #[test]
    fn an_svid_the_service_could_not_use_is_refused() {
        let fx = fixture();
        let garbage = fx.dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        // Before any key: nothing to compare with.
        let stranger = Key::generate().unwrap();
        refused(
            &fx,
            &signed(&fx, &stranger, DEVICE, |_| {}),
            true,
            "no device key",
        );
        csr(&fx.files, DEVICE, false).unwrap();
        let key = key_at(&fx.files.key);
        refused(&fx, &garbage, true, "not a certificate");
        refused(&fx, &fx.files.key, true, "not a certificate");
        refused(
            &fx,
            &signed(&fx, &stranger, DEVICE, |_| {}),
            true,
            "not the device key",
        );
        refused(
            &fx,
            &signed(&fx, &key, "spiffe://plant.example/margo/wfm/wfm-7", |_| {}),
            true,
            "is not spiffe://<trust-domain>/margo/wfm/<wfm-id>/client/<id>",
        );
        refused(
            &fx,
            &signed(&fx, &key, DEVICE, |p| {
                p.not_before = date_time_ymd(2020, 1, 1);
                p.not_after = date_time_ymd(2021, 1, 1);
            }),
            true,
            "expired",
        );
        refused(
            &fx,
            &signed(&fx, &key, DEVICE, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }),
            true,
            "clientAuth",
        );
        let (stranger_ca, _) = ca(fx.dir.path(), "stranger-ca.pem");
        let foreign = signed_by(&fx, &key, DEVICE, &stranger_ca, |_| {});
        refused(&fx, &foreign, true, "does not chain to the anchors");
        // Without a bundle there is nothing to chain to.
        install(&fx.files, &foreign, None, false).unwrap();
    }

    #[test]
    fn a_fetched_bundle_of_the_trust_domain_is_what_an_svid_must_chain_to() {
        let fx = fixture();
        csr(&fx.files, DEVICE, false).unwrap();
        let key = key_at(&fx.files.key);
        let (rotated, cert) = ca_cert();
        let from_rotated = signed_by(&fx, &key, DEVICE, &rotated, |_| {});
        refused(&fx, &from_rotated, true, "does not chain");
        let fetched = |trust_domain: &str| {
            let anchor = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                cert.der().as_ref(),
            );
            let stored = serde_json::json!({
                "trustDomain": trust_domain, "sequence": 2, "anchors": [anchor],
            });
            std::fs::write(fx.anchors.fetched.as_ref().unwrap(), stored.to_string()).unwrap();
        };
        // A bundle of another trust domain is not this device's.
        fetched("elsewhere.example");
        refused(&fx, &from_rotated, true, "does not chain");
        fetched("plant.example");
        install(&fx.files, &from_rotated, Some(&fx.anchors), false).unwrap();
        // The rotated bundle replaced the anchors: the CA before no longer counts.
        let from_before = signed(&fx, &key, DEVICE, |_| {});
        refused(&fx, &from_before, true, "does not chain");
    }

    #[test]
    fn a_device_keeps_its_identity_unless_told_otherwise() {
        let fx = fixture();
        csr(&fx.files, DEVICE, false).unwrap();
        let key = key_at(&fx.files.key);
        let mine = signed(&fx, &key, DEVICE, |_| {});
        install(&fx.files, &mine, Some(&fx.anchors), false).unwrap();
        // A renewal of the same identity is what the running service expects.
        let renewed = signed(&fx, &key, DEVICE, |_| {});
        install(&fx.files, &renewed, Some(&fx.anchors), false).unwrap();
        assert_eq!(mode(&fx.files.svid), 0o644);

        let other = signed(&fx, &key, OTHER_DEVICE, |_| {});
        let before = std::fs::read(&fx.files.svid).unwrap();
        let e = install(&fx.files, &other, Some(&fx.anchors), false)
            .unwrap_err()
            .to_string();
        for part in [
            other.display().to_string(),
            fx.files.svid.display().to_string(),
            DEVICE.into(),
            OTHER_DEVICE.into(),
            "--replace-identity".into(),
        ] {
            assert!(e.contains(&part), "{part} not in {e}");
        }
        assert_eq!(std::fs::read(&fx.files.svid).unwrap(), before);

        let installed = install(&fx.files, &other, Some(&fx.anchors), true).unwrap();
        assert_eq!(installed.id.client, "dev-2");
        assert!(installed.not_after > jiff::Timestamp::now());
        assert_eq!(installed.path, fx.files.svid);
        // Renamed into place: no temporary file is left beside it.
        let mut names: Vec<String> = std::fs::read_dir(fx.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') || n.starts_with("margo-"))
            .collect();
        names.sort();
        assert_eq!(names, ["margo-svid.key", "margo-svid.pem"]);
    }
}
