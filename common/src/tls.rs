//! rustls client configurations for the HTTPS clients of both services, always with the ring
//! provider (one TLS stack) and always verifying the server.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// Which CAs a client trusts.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The operating system's roots.
    System,
    /// Only the CAs in this PEM bundle (a private WOS or repository CA).
    Bundle(&'a Path),
    /// The system's roots and every CA in these PEM bundles.
    SystemAnd(&'a [std::path::PathBuf]),
}

/// A client configuration trusting `trust`, presenting `identity` (certificate chain PEM,
/// private key PEM) when given, offering h2 and http/1.1 by ALPN.
pub fn client_config(
    trust: Trust<'_>,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    let (system, bundles): (bool, Vec<&Path>) = match trust {
        Trust::System => (true, vec![]),
        Trust::Bundle(path) => (false, vec![path]),
        Trust::SystemAnd(paths) => (true, paths.iter().map(|p| p.as_path()).collect()),
    };
    if system {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "could not load some of the system's CA certificates");
        }
        roots.add_parsable_certificates(native.certs);
    }
    for path in bundles {
        for cert in certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?,
    };
    // A preconfigured config is used as it is: without ALPN, reqwest would never speak h2.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate in a PEM file; an error names the file, also when it holds none.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in a PEM file. The error never includes the file's content.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Error::Tls(format!("{}: no usable private key ({e})", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bundles_identities_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::init(dir.path(), false).unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = dir.path().join("sync.pem");
        let key = dir.path().join("sync-key.pem");
        let config = client_config(Trust::Bundle(&ca), Some((&cert, &key))).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert!(client_config(Trust::System, None).is_ok());

        let missing = dir.path().join("nope.pem");
        let e = client_config(Trust::Bundle(&missing), None).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        // A key file where a certificate belongs: named, and no key material in the message.
        let e = client_config(Trust::Bundle(&key), None).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = client_config(Trust::Bundle(&ca), Some((&cert, &ca))).unwrap_err();
        assert!(e.to_string().contains("no usable private key"), "{e}");
        assert!(!e.to_string().contains("BEGIN"), "{e}");
    }
}
