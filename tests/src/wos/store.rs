//! Enrolled devices with their credentials and what they reported, persisted in `wos.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::RepoAuth;

/// One enrolled device. `clientId` is the key the WOS uses everywhere else.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Device {
    pub(crate) client_id: String,
    pub(crate) device_id: String,
    pub(crate) auth_type: RepoAuth,
    pub(crate) password: String,
    pub(crate) token: String,
    pub(crate) enrollments: u64,
    pub(crate) enrolled_at: String,
    pub(crate) capabilities: Option<Value>,
    pub(crate) capabilities_updates: u64,
    pub(crate) deployments: BTreeMap<String, Value>,
    pub(crate) status_history: Vec<StatusRecord>,
}

/// A status as received, with the server's receive time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusRecord {
    pub(crate) at: String,
    pub(crate) deployment_id: String,
    pub(crate) status: Value,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreData {
    devices: BTreeMap<String, Device>,
}

/// The devices, saved atomically after every change.
pub(crate) struct Store {
    path: PathBuf,
    data: Mutex<StoreData>,
}

impl Store {
    /// Loads `path`, or starts empty when it does not exist yet.
    pub(crate) fn load(path: &Path) -> Result<Store> {
        let data = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => StoreData::default(),
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", path.display()));
            }
        };
        Ok(Store {
            path: path.to_path_buf(),
            data: Mutex::new(data),
        })
    }

    /// A copy of the device `client_id`.
    pub(crate) fn device(&self, client_id: &str) -> Option<Device> {
        self.lock().devices.get(client_id).cloned()
    }

    /// Copies of all devices, by clientId.
    pub(crate) fn devices(&self) -> Vec<Device> {
        self.lock().devices.values().cloned().collect()
    }

    /// The first device `matches` accepts, e.g. the owner of presented credentials.
    pub(crate) fn find(&self, matches: impl Fn(&Device) -> bool) -> Option<Device> {
        self.lock().devices.values().find(|d| matches(d)).cloned()
    }

    /// Enrolls `device_id`: a new device with fresh credentials, or the existing one with its
    /// enrollment count raised. Returns the device and whether it is new.
    pub(crate) fn enroll(&self, device_id: &str, auth_type: RepoAuth) -> Result<(Device, bool)> {
        self.update(|data| {
            if let Some(device) = data.devices.values_mut().find(|d| d.device_id == device_id) {
                device.enrollments += 1;
                return (device.clone(), false);
            }
            let client_id = loop {
                let candidate = format!("client-{}", random_hex(8));
                if !data.devices.contains_key(&candidate) {
                    break candidate;
                }
            };
            let device = Device {
                client_id: client_id.clone(),
                device_id: device_id.to_owned(),
                auth_type,
                password: random_hex(16),
                token: random_hex(32),
                enrollments: 1,
                enrolled_at: now(),
                capabilities: None,
                capabilities_updates: 0,
                deployments: BTreeMap::new(),
                status_history: Vec::new(),
            };
            data.devices.insert(client_id, device.clone());
            (device, true)
        })
    }

    /// Replaces the repository password and token of `client_id`.
    pub(crate) fn rotate_credentials(&self, client_id: &str) -> Result<Option<Device>> {
        self.update(|data| {
            data.devices.get_mut(client_id).map(|device| {
                device.password = random_hex(16);
                device.token = random_hex(32);
                device.clone()
            })
        })
    }

    /// Records capabilities of `client_id`; `false` if the device is unknown.
    pub(crate) fn put_capabilities(&self, client_id: &str, capabilities: Value) -> Result<bool> {
        self.update(|data| {
            data.devices
                .get_mut(client_id)
                .map(|device| {
                    device.capabilities = Some(capabilities);
                    device.capabilities_updates += 1;
                })
                .is_some()
        })
    }

    /// Records a deployment status of `client_id`; `false` if the device is unknown.
    pub(crate) fn post_status(
        &self,
        client_id: &str,
        deployment_id: &str,
        status: Value,
    ) -> Result<bool> {
        self.update(|data| {
            data.devices
                .get_mut(client_id)
                .map(|device| {
                    device
                        .deployments
                        .insert(deployment_id.to_owned(), status.clone());
                    device.status_history.push(StatusRecord {
                        at: now(),
                        deployment_id: deployment_id.to_owned(),
                        status,
                    });
                })
                .is_some()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreData> {
        // A panicking handler leaves the data consistent (every change is one assignment).
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` and saves; the lock is held while saving so saves never interleave.
    fn update<T>(&self, change: impl FnOnce(&mut StoreData) -> T) -> Result<T> {
        let mut data = self.lock();
        let result = change(&mut data);
        save(&self.path, &data)?;
        Ok(result)
    }
}

/// Atomically and owner-only: it holds repository passwords and tokens.
fn save(path: &Path, data: &StoreData) -> Result<()> {
    let json = serde_json::to_vec_pretty(data)?;
    woa_common::store::write_atomic(path, &json, 0o600)?;
    Ok(())
}

/// The current time as RFC 3339 UTC.
pub(crate) fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// `bytes` random bytes as lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::fill(buffer.as_mut_slice());
    hex::encode(buffer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn devices_and_reports_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wos.json");
        let store = Store::load(&path).unwrap();
        let (device, new) = store.enroll("dev-1", RepoAuth::Basic).unwrap();
        assert!(new);
        let (again, new) = store.enroll("dev-1", RepoAuth::Bearer).unwrap();
        assert!(!new);
        assert_eq!(again.client_id, device.client_id);
        assert_eq!(again.password, device.password);
        assert_eq!(again.auth_type, RepoAuth::Basic);
        assert!(
            store
                .post_status(&device.client_id, "d1", serde_json::json!({"s": 1}))
                .unwrap()
        );
        assert!(
            !store
                .post_status("client-unknown", "d1", Value::Null)
                .unwrap()
        );

        let reloaded = Store::load(&path).unwrap();
        let device = reloaded.device(&device.client_id).unwrap();
        assert_eq!(device.enrollments, 2);
        assert_eq!(device.deployments["d1"], serde_json::json!({"s": 1}));
        assert_eq!(device.status_history.len(), 1);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn rotation_replaces_both_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::load(&dir.path().join("wos.json")).unwrap();
        let (device, _) = store.enroll("dev-1", RepoAuth::Basic).unwrap();
        let rotated = store
            .rotate_credentials(&device.client_id)
            .unwrap()
            .unwrap();
        assert_ne!(rotated.password, device.password);
        assert_ne!(rotated.token, device.token);
        assert!(store.rotate_credentials("nobody").unwrap().is_none());
    }
}
