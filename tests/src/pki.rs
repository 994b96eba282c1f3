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
