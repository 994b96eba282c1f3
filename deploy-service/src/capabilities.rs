//! Device capabilities: probed from the engine and the host, overridable from config.

use woa_common::margo::{self, Cpu, DeviceProperties, Interface};

use crate::config::DeviceOverrides;
use crate::runtime::EngineFacts;

/// The capabilities of this device.
pub fn probe(facts: &EngineFacts, device: &DeviceOverrides) -> DeviceProperties {
    let or = |v: &str, default: String| if v.is_empty() { default } else { v.to_string() };
    DeviceProperties {
        id: or(
            &device.id,
            read_trimmed("/etc/hostname").unwrap_or_default(),
        ),
        vendor: device.vendor.clone(),
        model_number: device.model_number.clone(),
        serial_number: device.serial_number.clone(),
        cpus: vec![Cpu {
            architecture: facts.architecture.clone(),
            cores: facts.cpus,
            frequency: cpu_mhz().map(|mhz| (mhz / 100.0).round() / 10.0),
        }],
        memory: margo::binary_size(facts.memory_bytes),
        storage: disk_bytes("/").map(margo::binary_size).unwrap_or_default(),
        peripherals: vec![],
        interfaces: (network_interfaces().into_iter())
            .map(|(kind, name)| Interface {
                kind,
                name: Some(name),
            })
            .collect(),
        supported_runtimes: vec![facts.runtime.clone()],
        supported_deployment_types: vec!["compose".into()],
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
