//! Who this device is: its unique id (made once), the enrollment record, and where the
//! files enrollment produced live under `state_dir`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use woa_common::store::{load_json, save_json, write_atomic};

use crate::config::{Config, RepoAuthConfig};
use crate::source::{RepoAccess, RepoAuth};
use crate::{Error, Result};

/// The files of the device's identity under `state_dir`.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout of `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }

    /// The persisted device id.
    pub fn device_id(&self) -> PathBuf {
        self.dir.join("device-id")
    }
    /// What enrollment learned (no secrets).
    pub fn enrollment(&self) -> PathBuf {
        self.dir.join("enrollment.json")
    }
    /// The device certificate signed by the WOS.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("device.pem")
    }
    /// The device key (0600).
    pub fn key(&self) -> PathBuf {
        self.dir.join("device-key.pem")
    }
    /// The CA bundle the WOS told us to trust.
    pub fn wos_ca(&self) -> PathBuf {
        self.dir.join("wos-ca.pem")
    }
    /// The repository password or token (0600).
    pub fn repository_secret(&self) -> PathBuf {
        self.dir.join("repository-secret")
    }
    /// The Git mirror.
    pub fn mirror(&self) -> PathBuf {
        self.dir.join("mirror.git")
    }
    /// The local repository that status commits are built in.
    pub fn status_repository(&self) -> PathBuf {
        self.dir.join("status.git")
    }
    /// The Margo manifest version and ETag last adopted.
    pub fn margo_manifest(&self) -> PathBuf {
        self.dir.join("margo-manifest.json")
    }
    /// The trust bundle fetched from the Margo trust domain.
    pub fn margo_trust_bundle(&self) -> PathBuf {
        self.dir.join("margo-trust-bundle.json")
    }

    /// Statuses not yet delivered.
    pub fn outbox(&self) -> PathBuf {
        self.dir.join("outbox.json")
    }
}

/// What enrollment stored: where the WOS and the repository are and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    /// The id the WOS knows this device by.
    pub client_id: String,
    /// The WOS base URL.
    pub wos_url: String,
    /// The desired-state repository.
    pub repository: RepositoryRecord,
}

/// The repository part of an enrollment; the secret is in [`Layout::repository_secret`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRecord {
    /// HTTPS URL.
    pub url: String,
    /// Branch.
    pub branch: String,
    /// Directory of the deployment documents.
    pub path: String,
    /// How to authenticate, as in the configuration; the secret file is in `state_dir`.
    pub auth: RepoAuthConfig,
}

/// The device id, made (a random UUID) and persisted on first use.
pub fn device_id(state_dir: &Path) -> Result<String> {
    let path = Layout::new(state_dir).device_id();
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(woa_common::Error::file(path, e).into()),
    }
    std::fs::create_dir_all(state_dir).map_err(|e| woa_common::Error::file(state_dir, e))?;
    let id = new_uuid();
    write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)?;
    Ok(id)
}

/// A random (version 4) UUID.
fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Loads the enrollment record, if the device is enrolled.
pub fn load_enrollment(state_dir: &Path) -> Result<Option<Enrollment>> {
    Ok(load_json(&Layout::new(state_dir).enrollment())?)
}

/// Stores the enrollment record.
pub fn save_enrollment(state_dir: &Path, enrollment: &Enrollment) -> Result<()> {
    Ok(save_json(&Layout::new(state_dir).enrollment(), enrollment)?)
}

/// Everything `run` needs to reach the WOS and the repository: configuration over enrollment.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The device id.
    pub device_id: String,
    /// The WOS client id.
    pub client_id: String,
    /// The WOS base URL, without a trailing slash.
    pub wos_url: String,
    /// CA bundle for the WOS (`None`: the system roots).
    pub wos_ca: Option<PathBuf>,
    /// Device certificate and key.
    pub identity: (PathBuf, PathBuf),
    /// The repository.
    pub repository: RepoAccess,
    /// Directory of deployment documents in the repository.
    pub deployments_path: String,
}

/// Combines the configuration with the enrollment record; configuration wins field by field.
pub fn resolve(config: &Config) -> Result<Resolved> {
    let layout = Layout::new(&config.state_dir);
    let enrollment = load_enrollment(&config.state_dir)?;
    let device_id = device_id(&config.state_dir)?;
    let missing = |what: &str| Error::NotEnrolled(format!("no {what}"));
    let client_id = config
        .wos
        .client_id
        .clone()
        .or_else(|| enrollment.as_ref().map(|e| e.client_id.clone()))
        .ok_or_else(|| missing("WOS client id (wos.client_id)"))?;
    let wos_url = config
        .wos
        .url
        .clone()
        .or_else(|| enrollment.as_ref().map(|e| e.wos_url.clone()))
        .ok_or_else(|| missing("WOS URL (wos.url)"))?
        .trim_end_matches('/')
        .to_owned();
    let wos_ca = config
        .wos
        .ca
        .clone()
        .or_else(|| Some(layout.wos_ca()).filter(|p| p.exists()));
    let identity = (
        config
            .identity
            .cert
            .clone()
            .unwrap_or_else(|| layout.cert()),
        config.identity.key.clone().unwrap_or_else(|| layout.key()),
    );
    let record = enrollment.as_ref().map(|e| &e.repository);
    let url = config
        .repository
        .url
        .clone()
        .or_else(|| record.map(|r| r.url.clone()))
        .ok_or_else(|| missing("repository URL (repository.url)"))?;
    let branch = config
        .repository
        .branch
        .clone()
        .or_else(|| record.map(|r| r.branch.clone()))
        .unwrap_or_else(|| "main".into());
    let deployments_path = config
        .repository
        .path
        .clone()
        .or_else(|| record.map(|r| r.path.clone()))
        .unwrap_or_else(|| "deployments".into())
        .trim_matches('/')
        .to_owned();
    let auth = match config.repository.auth.as_ref().or(record.map(|r| &r.auth)) {
        Some(auth) => repo_auth(auth, &identity),
        None => RepoAuth::None,
    };
    if crate::source::without_credentials(&url) != url {
        return Err(woa_common::Error::Config(
            "the repository URL must not carry credentials; use repository.auth".into(),
        )
        .into());
    }
    let repository = RepoAccess {
        url,
        branch,
        ca: config.repository.ca.clone().or_else(|| wos_ca.clone()),
        auth,
    };
    Ok(Resolved {
        device_id,
        client_id,
        wos_url,
        wos_ca,
        identity,
        repository,
        deployments_path,
    })
}

fn repo_auth(auth: &RepoAuthConfig, identity: &(PathBuf, PathBuf)) -> RepoAuth {
    match auth {
        RepoAuthConfig::None => RepoAuth::None,
        RepoAuthConfig::Basic {
            username,
            password_file,
        } => RepoAuth::Basic {
            username: username.clone(),
            password_file: password_file.clone(),
        },
        RepoAuthConfig::Bearer { token_file } => RepoAuth::Bearer {
            token_file: token_file.clone(),
        },
        RepoAuthConfig::Mtls { cert, key } => RepoAuth::Mtls {
            cert: cert.clone().unwrap_or_else(|| identity.0.clone()),
            key: key.clone().unwrap_or_else(|| identity.1.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_device_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = device_id(dir.path()).unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(device_id(dir.path()).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(device_id(other.path()).unwrap(), id);
    }

    #[test]
    fn configuration_overrides_enrollment_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            state_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let e = resolve(&config).unwrap_err();
        assert!(e.to_string().contains("not enrolled"), "{e}");

        save_enrollment(
            dir.path(),
            &Enrollment {
                client_id: "c1".into(),
                wos_url: "https://wos/".into(),
                repository: RepositoryRecord {
                    url: "https://wos/git/c1.git".into(),
                    branch: "main".into(),
                    path: "deployments".into(),
                    auth: RepoAuthConfig::Basic {
                        username: "c1".into(),
                        password_file: dir.path().join("repository-secret"),
                    },
                },
            },
        )
        .unwrap();
        let r = resolve(&config).unwrap();
        assert_eq!(r.wos_url, "https://wos");
        assert_eq!(
            r.repository.auth,
            RepoAuth::Basic {
                username: "c1".into(),
                password_file: dir.path().join("repository-secret")
            }
        );
        config.repository.branch = Some("edge".into());
        config.repository.auth = Some(RepoAuthConfig::Mtls {
            cert: None,
            key: None,
        });
        let r = resolve(&config).unwrap();
        assert_eq!(r.repository.branch, "edge");
        assert_eq!(
            r.repository.auth,
            RepoAuth::Mtls {
                cert: dir.path().join("device.pem"),
                key: dir.path().join("device-key.pem")
            }
        );
    }
}
