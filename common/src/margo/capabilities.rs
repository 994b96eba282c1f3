//! The Margo DeviceCapabilitiesManifest the agent reports after enrollment and on change.

use serde::{Deserialize, Serialize};

/// What this device is and what it can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilitiesManifest {
    /// `device.margo.org/v1alpha1`.
    pub api_version: String,
    /// `DeviceCapabilitiesManifest`.
    pub kind: String,
    /// The device's properties.
    pub properties: DeviceProperties,
}

impl DeviceCapabilitiesManifest {
    /// The manifest for `properties`.
    pub fn new(properties: DeviceProperties) -> Self {
        Self {
            api_version: "device.margo.org/v1alpha1".to_owned(),
            kind: "DeviceCapabilitiesManifest".to_owned(),
            properties,
        }
    }
}

/// The device's identity and resources.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProperties {
    /// The device id.
    pub id: String,
    /// Who made the device.
    pub vendor: String,
    /// The vendor's model number.
    pub model_number: String,
    /// The device's serial number.
    pub serial_number: String,
    /// The processors.
    #[serde(default)]
    pub cpus: Vec<Cpu>,
    /// Total memory in binary units, e.g. `15Gi` (see [`binary_size`]).
    pub memory: String,
    /// Storage in binary units, e.g. `512Gi`.
    pub storage: String,
    /// Attached peripherals.
    #[serde(default)]
    pub peripherals: Vec<Peripheral>,
    /// Communication interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Container runtimes, e.g. `oci`.
    #[serde(default)]
    pub supported_runtimes: Vec<String>,
    /// Deployment profile types this device runs, e.g. `compose`.
    #[serde(default)]
    pub supported_deployment_types: Vec<String>,
    /// Whether the device runs an OpenTelemetry collector its apps are told of (Margo rc.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otel_collector: Option<bool>,
}

/// One processor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Cpu {
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// Number of cores.
    pub cores: u32,
    /// Clock frequency in GHz, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<f64>,
}

/// An attached peripheral.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Peripheral {
    /// e.g. `gpu`, `camera`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who made it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Its model, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A communication interface.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Interface {
    /// e.g. `ethernet`, `wifi`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The host's name for it, e.g. `eth0`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `bytes` in the largest binary unit that is at least 1, rounded down: `15Gi`, `512Mi`, `12`.
pub fn binary_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024 && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    format!("{value}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_size_rounds_down_to_the_largest_unit() {
        const KI: u64 = 1024;
        let cases = [
            (0, "0"),
            (12, "12"),
            (1023, "1023"),
            (KI, "1Ki"),
            (900 * KI, "900Ki"),
            (512 * KI * KI, "512Mi"),
            (15 * KI * KI * KI + 900 * KI * KI, "15Gi"),
            (KI * KI * KI * KI - 1, "1023Gi"),
            (KI * KI * KI * KI, "1Ti"),
            (u64::MAX, "15Ei"),
        ];
        for (bytes, text) in cases {
            assert_eq!(binary_size(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn serialises_in_camel_case_leaving_out_what_is_unknown() {
        let manifest = DeviceCapabilitiesManifest::new(DeviceProperties {
            id: "edge-1".into(),
            vendor: "Acme".into(),
            model_number: "M1".into(),
            serial_number: "S1".into(),
            cpus: vec![Cpu {
                architecture: "amd64".into(),
                cores: 4,
                frequency: Some(2.5),
            }],
            memory: "15Gi".into(),
            storage: "512Gi".into(),
            peripherals: vec![Peripheral {
                kind: "gpu".into(),
                manufacturer: Some("NVIDIA".into()),
                model: None,
            }],
            interfaces: vec![Interface {
                kind: "ethernet".into(),
                name: Some("eth0".into()),
            }],
            supported_runtimes: vec!["oci".into()],
            supported_deployment_types: vec!["compose".into()],
            otel_collector: None,
        });
        let json = serde_json::to_value(&manifest).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "device.margo.org/v1alpha1",
                "kind": "DeviceCapabilitiesManifest",
                "properties": {
                    "id": "edge-1", "vendor": "Acme", "modelNumber": "M1", "serialNumber": "S1",
                    "cpus": [{"architecture": "amd64", "cores": 4, "frequency": 2.5}],
                    "memory": "15Gi", "storage": "512Gi",
                    "peripherals": [{"type": "gpu", "manufacturer": "NVIDIA"}],
                    "interfaces": [{"type": "ethernet", "name": "eth0"}],
                    "supportedRuntimes": ["oci"],
                    "supportedDeploymentTypes": ["compose"]
                }
            })
        );
        let back: DeviceCapabilitiesManifest = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, manifest);
    }
}
