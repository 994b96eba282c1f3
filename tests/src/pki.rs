//! The local PKI of one woa-deploy instance, made by `woa-deploy certs init`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::binaries;
use crate::util::run;

/// A CA with server (`deploy`), `sync` and `operator` identities, in a temporary directory.
pub struct Pki {
    pub(crate) dir: TempDir,
}

impl Pki {
    /// Runs `woa-deploy certs init` into a fresh temporary directory.
    pub fn init() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        run(Command::new(binaries::woa_deploy()?)
            .args(["certs", "init", "--dir"])
            .arg(dir.path()))
        .context("woa-deploy certs init")?;
        Ok(Pki { dir })
    }

    /// A file of the PKI by name, e.g. `ca.pem` or `operator-key.pem`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A private CA and a server certificate it signed for `ip` (PEM: CA, certificate, key).
pub(crate) fn ca_and_server(ip: &str) -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(Vec::<String>::new())?;
    server.subject_alt_names = vec![SanType::IpAddress(ip.parse()?)];
    let cert = server.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}
