//! Device capabilities: probed from the engine and the host, overridable from config.

use woa_common::margo::{self, Cpu, DeviceProperties, Interface, Peripheral};

use crate::config::DeviceOverrides;
use crate::policy::PolicyConfig;
use crate::runtime::EngineFacts;

/// The capabilities of this device: what it has, and of that what the owner's policy lets
/// apps use (devices, GPUs, runtimes), so the orchestrator can place the apps that need them.
pub fn probe(
    facts: &EngineFacts,
    device: &DeviceOverrides,
    policy: &PolicyConfig,
    otel_collector: bool,
) -> DeviceProperties {
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
        peripherals: peripherals(policy),
        interfaces: (network_interfaces().into_iter())
            .map(|(kind, name)| Interface {
                kind,
                name: Some(name),
            })
            .collect(),
        supported_runtimes: [vec![facts.runtime.clone()], policy.runtimes.clone()].concat(),
        supported_deployment_types: vec!["compose".into()],
        otel_collector: Some(otel_collector),
    }
}

/// The devices apps may use, by kind: serial ports, cameras, sound, GPIO, USB, GPUs.
fn peripherals(policy: &PolicyConfig) -> Vec<Peripheral> {
    let kind = |path: &str| {
        let name = path.trim_start_matches("/dev/");
        let kinds = [
            ("tty", "serial"),
            ("video", "camera"),
            ("snd", "audio"),
            ("gpio", "gpio"),
            ("bus/usb", "usb"),
            ("i2c", "i2c"),
            ("spidev", "spi"),
            ("dri", "gpu"),
        ];
        let found = kinds.iter().find(|(prefix, _)| name.starts_with(prefix));
        found.map_or("device", |(_, kind)| kind)
    };
    let mut out: Vec<Peripheral> = (policy.devices.iter())
        .map(|path| Peripheral {
            kind: kind(path).to_owned(),
            manufacturer: None,
            model: Some(path.clone()),
        })
        .collect();
    if policy.gpus {
        out.push(Peripheral {
            kind: "gpu".to_owned(),
            manufacturer: None,
            model: None,
        });
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capabilities_name_what_the_policy_lets_apps_use() {
        let policy = PolicyConfig {
            devices: vec!["/dev/ttyUSB*".into(), "/dev/video0".into()],
            gpus: true,
            runtimes: vec!["nvidia".into()],
            ..Default::default()
        };
        let facts = EngineFacts {
            runtime: "docker 20.10.24".into(),
            ..Default::default()
        };
        let p = probe(&facts, &DeviceOverrides::default(), &policy, true);
        assert_eq!(p.otel_collector, Some(true));
        let kinds: Vec<(&str, Option<&str>)> = (p.peripherals.iter())
            .map(|x| (x.kind.as_str(), x.model.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("serial", Some("/dev/ttyUSB*")),
                ("camera", Some("/dev/video0")),
                ("gpu", None)
            ]
        );
        assert_eq!(p.supported_runtimes, ["docker 20.10.24", "nvidia"]);
        let none = probe(
            &facts,
            &DeviceOverrides::default(),
            &PolicyConfig::default(),
            false,
        );
        assert!(none.peripherals.is_empty());
        assert_eq!(none.otel_collector, Some(false));
    }
}
