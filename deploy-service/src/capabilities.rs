//! Device capabilities: probed from the engine and the host, overridable from config.

use woa_common::margo::{self, Cpu, DeviceCapabilitiesManifest, DeviceProperties, Interface};
use woa_proto::v1 as pb;

use crate::config::DeviceOverrides;
use crate::runtime::EngineFacts;

/// The capabilities of this device.
pub fn probe(facts: &EngineFacts, device: &DeviceOverrides) -> pb::DeviceCapabilities {
    let or = |v: &str, default: String| if v.is_empty() { default } else { v.to_string() };
    let id = or(
        &device.id,
        read_trimmed("/etc/hostname").unwrap_or_default(),
    );
    let frequency_ghz = cpu_mhz().map(|mhz| (mhz / 100.0).round() / 10.0);
    let interfaces = network_interfaces();
    let storage = disk_bytes("/").map(margo::binary_size).unwrap_or_default();
    let properties = DeviceProperties {
        id: id.clone(),
        vendor: device.vendor.clone(),
        model_number: device.model_number.clone(),
        serial_number: device.serial_number.clone(),
        cpus: vec![Cpu {
            architecture: facts.architecture.clone(),
            cores: facts.cpus,
            frequency: frequency_ghz,
        }],
        memory: margo::binary_size(facts.memory_bytes),
        storage: storage.clone(),
        peripherals: vec![],
        interfaces: interfaces
            .iter()
            .map(|(kind, name)| Interface {
                kind: kind.clone(),
                name: Some(name.clone()),
            })
            .collect(),
        supported_runtimes: vec![facts.runtime.clone()],
        supported_deployment_types: vec!["compose".into()],
    };
    let manifest_json = serde_json::to_string(&DeviceCapabilitiesManifest::new(properties.clone()))
        .unwrap_or_default();
    pb::DeviceCapabilities {
        id,
        vendor: properties.vendor,
        model_number: properties.model_number,
        serial_number: properties.serial_number,
        cpus: vec![pb::Cpu {
            architecture: facts.architecture.clone(),
            cores: facts.cpus,
            frequency_ghz: frequency_ghz.unwrap_or(0.0),
        }],
        memory: properties.memory,
        storage,
        peripherals: vec![],
        interfaces: interfaces
            .into_iter()
            .map(|(kind, name)| pb::NetworkInterface { r#type: kind, name })
            .collect(),
        supported_runtimes: properties.supported_runtimes,
        supported_deployment_types: properties.supported_deployment_types,
        manifest_json,
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn cpu_mhz() -> Option<f64> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Physical interfaces (those backed by a device), as (type, name).
fn network_interfaces() -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return vec![];
    };
    let mut out: Vec<(String, String)> = entries
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .map(|e| {
            let kind = if e.path().join("wireless").exists() {
                "wifi"
            } else {
                "ethernet"
            };
            (
                kind.to_string(),
                e.file_name().to_string_lossy().into_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Size of the filesystem holding `path`.
fn disk_bytes(path: &str) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}
