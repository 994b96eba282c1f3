//! Identity on the Margo API (MIAF): mutual TLS with X.509-SVIDs. The fleet manager is
//! identified by its SPIFFE ID, derived from the device's own SVID, never by host name: its
//! certificate may carry no DNS or IP name at all, and the URL only routes.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use woa_common::tls::{certificates, private_key};

use crate::{Error, Result};

/// The one SPIFFE ID (URI SAN) a certificate carries; an error unless there is exactly one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> std::result::Result<String, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris[..] {
        [uri] if uri.starts_with("spiffe://") => Ok(uri.to_owned()),
        [] => Err("no SPIFFE ID (URI SAN)".into()),
        [uri] => Err(format!("{uri} is not a SPIFFE ID")),
        _ => Err(format!("{} URI SANs, an SVID has one", uris.len())),
    }
}

/// The device's identity as its SVID says: `spiffe://<td>/margo/wfm/<wfm-id>/client/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId {
    /// The whole SPIFFE ID.
    pub id: String,
    /// `spiffe://<td>/margo/wfm/<wfm-id>`: the only identity the server may present.
    pub server: String,
    /// The trust domain.
    pub trust_domain: String,
    /// The client id at the fleet manager.
    pub client: String,
}

impl ClientId {
    /// Parses a device SVID's SPIFFE ID.
    pub fn parse(id: &str) -> std::result::Result<ClientId, String> {
        let bad = || format!("{id} is not spiffe://<trust-domain>/margo/wfm/<wfm-id>/client/<id>");
        let rest = id.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, "margo", "wfm", wfm, "client", client] = parts[..] else {
            return Err(bad());
        };
        if [td, wfm, client].iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(ClientId {
            id: id.to_owned(),
            server: format!("spiffe://{td}/margo/wfm/{wfm}"),
            trust_domain: td.to_owned(),
            client: client.to_owned(),
        })
    }
}

/// The SVID chain in `cert` and the identity it gives the device, read once, so that the
/// identity checked is the one presented.
pub fn svid(cert: &Path) -> Result<(Vec<CertificateDer<'static>>, ClientId)> {
    let chain = certificates(cert)?;
    let id = spiffe_id(&chain[0])
        .and_then(|id| ClientId::parse(&id))
        .map_err(|e| tls(format!("{}: {e}", cert.display())))?;
    Ok((chain, id))
}

/// The TLS client of the Margo API: presents the SVID `chain` of `client` with `key`,
/// trusts only `anchors`, and accepts only a server whose SVID is the fleet manager's SPIFFE
/// ID. TLS 1.3 unless `tls12`; no session resumption, so a renewed or replaced identity never
/// rides on a session of the one before.
pub fn client_config(
    anchors: Vec<CertificateDer<'static>>,
    (chain, client): (Vec<CertificateDer<'static>>, &ClientId),
    key: &Path,
    tls12: bool,
) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        (roots.add(anchor)).map_err(|e| tls(format!("trust anchor: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(format!("trust anchors: {e}")))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerSvid {
            webpki,
            expected: client.server.clone(),
        }))
        .with_client_auth_cert(chain, private_key(key)?)
        .map_err(|e| tls(format!("{}: {e}", client.id)))?;
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn tls(message: String) -> Error {
    Error::Common(woa_common::Error::Tls(message))
}

/// Verifies the chain to the trust bundle as WebPKI does, then the SPIFFE ID in place of a
/// host name.
#[derive(Debug)]
struct ServerSvid {
    webpki: Arc<WebPkiServerVerifier>,
    expected: String,
}

impl ServerCertVerifier for ServerSvid {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // WebPKI checks the chain, validity and usage before the name; a name mismatch is
        // therefore the only error that still leaves the chain proven, and the name is not
        // what identifies a fleet manager.
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let refused = |why: String| {
            tracing::error!(security_event = true, expected = %self.expected, reason = %why, "the fleet manager's certificate is not its SVID; connection refused");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        };
        match spiffe_id(end_entity) {
            Ok(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Ok(id) => Err(refused(format!("it presents {id}"))),
            Err(e) => Err(refused(e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    const SERVER: &str = "spiffe://plant.example/margo/wfm/wfm-7";

    fn ca() -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    }

    fn svid(uri: &str, issuer: &Issuer<'_, KeyPair>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn verifier(anchor: &rcgen::Certificate) -> ServerSvid {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ServerSvid {
            webpki: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap(),
            expected: SERVER.into(),
        }
    }

    #[test]
    fn the_server_is_known_by_its_spiffe_id_and_its_anchor_not_its_name() {
        let (anchor, issuer) = ca();
        let (_, stranger) = ca();
        let verifier = verifier(&anchor);
        let name = ServerName::try_from("wfm.example").unwrap();
        let verify = |cert: &CertificateDer<'_>| {
            verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        };
        assert!(verify(&svid(SERVER, &issuer)).is_ok());
        let wrong = [
            svid("spiffe://plant.example/margo/wfm/another", &issuer),
            svid(&format!("{SERVER}/client/x"), &issuer),
            svid(SERVER, &stranger),
        ];
        for cert in &wrong {
            assert!(verify(cert).is_err());
        }
    }

    #[test]
    fn the_server_identity_comes_from_the_client_svid() {
        let id = ClientId::parse("spiffe://plant.example/margo/wfm/wfm-7/client/dev-1");
        assert_eq!(
            id,
            Ok(ClientId {
                id: "spiffe://plant.example/margo/wfm/wfm-7/client/dev-1".into(),
                server: "spiffe://plant.example/margo/wfm/wfm-7".into(),
                trust_domain: "plant.example".into(),
                client: "dev-1".into(),
            })
        );
        for bad in [
            "spiffe://plant.example/margo/wfm/wfm-7",
            "spiffe://plant.example/margo/wfm//client/dev-1",
            "https://plant.example/margo/wfm/w/client/d",
            "spiffe://plant.example/margo/wfm/w/client/d/extra",
        ] {
            assert!(ClientId::parse(bad).is_err(), "{bad}");
        }
    }
}
