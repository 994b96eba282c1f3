//! The typed compose model: exactly the keys this device supports. Every struct denies unknown
//! keys, so nothing in a compose file is silently dropped, and the "string or list" / "list or
//! map" forms are hand-written visitors (not untagged enums) so an error inside one still
//! carries its key path through `serde_path_to_error`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, StrDeserializer};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Unexpected, Visitor};

use super::syntax::{self, MountDef};
use crate::spec::{Condition, Port};

/// A whole compose file.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of compose keys (services, networks, volumes)"
)]
pub(super) struct ComposeFile {
    /// Obsolete in compose; accepted so older files load.
    #[serde(default, rename = "version")]
    _version: Option<IgnoredAny>,
    /// The project name; the agent names projects after deployments instead.
    #[serde(default, rename = "name")]
    _name: Option<IgnoredAny>,
    pub services: Option<Named<ServiceDef>>,
    pub networks: Option<Named<Option<NetworkDef>>>,
    pub volumes: Option<Named<Option<VolumeDef>>>,
    pub secrets: Option<Named<FileSourceDef>>,
    pub configs: Option<Named<FileSourceDef>>,
}

/// One entry of top-level `secrets` or `configs`: where its content comes from.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with file, environment or content"
)]
pub(super) struct FileSourceDef {
    pub file: Option<String>,
    pub environment: Option<String>,
    pub content: Option<String>,
}

/// A service's `secrets` or `configs` entry: a name, or `source` with `target`, `uid`, `gid`
/// and `mode`.
pub(super) struct FileRef {
    pub source: String,
    pub target: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with source, target, uid, gid and mode"
)]
struct LongFileRef {
    source: String,
    target: Option<String>,
    uid: Option<Text>,
    gid: Option<Text>,
    mode: Option<FileMode>,
}

/// A file mode: a YAML integer as it is (`0o440` reads as 288), a string in octal (`"0440"`).
struct FileMode(u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FileModeVisitor)
    }
}

struct FileModeVisitor;

impl<'de> Visitor<'de> for FileModeVisitor {
    type Value = FileMode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a file mode like 0440")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        (u32::try_from(value).ok())
            .filter(|m| *m <= 0o7777)
            .map(FileMode)
            .ok_or_else(|| E::invalid_value(Unexpected::Unsigned(value), &self))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        let value =
            u64::try_from(value).map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))?;
        self.visit_u64(value)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        let digits = value.trim_start_matches("0o");
        (u32::from_str_radix(digits, 8).ok())
            .filter(|m| *m <= 0o7777)
            .map(FileMode)
            .ok_or_else(|| E::custom(format!("mode `{value}` is not an octal mode")))
    }
}

impl<'de> Deserialize<'de> for FileRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FileRefVisitor)
    }
}

struct FileRefVisitor;

impl<'de> Visitor<'de> for FileRefVisitor {
    type Value = FileRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a name or a mapping with source and target")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(FileRef {
            source: value.to_owned(),
            target: None,
            uid: None,
            gid: None,
            mode: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let long = LongFileRef::deserialize(MapAccessDeserializer::new(map))?;
        let id = |text: Option<Text>, key: &str| -> Result<Option<u32>, A::Error> {
            text.map(|Text(t)| {
                (t.parse()).map_err(|_| de::Error::custom(format!("{key} `{t}` is not a number")))
            })
            .transpose()
        };
        let mode = long.mode.map(|FileMode(mode)| mode);
        Ok(FileRef {
            source: long.source,
            target: long.target,
            uid: id(long.uid, "uid")?,
            gid: id(long.gid, "gid")?,
            mode,
        })
    }
}

/// One entry of `services`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of service keys")]
pub(super) struct ServiceDef {
    pub image: Option<String>,
    pub command: Option<Command>,
    pub entrypoint: Option<Command>,
    pub environment: Option<Entries>,
    pub env_file: Option<OneOrMany<EnvFile>>,
    pub ports: Option<Vec<PortEntry>>,
    /// Present but null is an error, as in Compose ("must be a list").
    #[serde(default, deserialize_with = "list")]
    pub volumes: Option<Vec<MountEntry>>,
    pub networks: Option<ServiceNetworks>,
    pub depends_on: Option<DependsOn>,
    pub healthcheck: Option<HealthcheckDef>,
    pub restart: Option<Restart>,
    pub labels: Option<Entries>,
    pub user: Option<Text>,
    pub working_dir: Option<String>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub read_only: Option<Flag>,
    pub tmpfs: Option<OneOrMany<TmpfsEntry>>,
    pub mem_limit: Option<ByteSize>,
    pub cpus: Option<Cpus>,
    pub logging: Option<LoggingDef>,
    pub container_name: Option<String>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub mac_address: Option<String>,
    pub expose: Option<Vec<Text>>,
    pub network_mode: Option<String>,
    pub links: Option<Vec<String>>,
    pub dns: Option<OneOrMany<String>>,
    pub dns_search: Option<OneOrMany<String>>,
    pub dns_opt: Option<Vec<String>>,
    pub extra_hosts: Option<Entries>,
    pub privileged: Option<Flag>,
    pub devices: Option<Vec<DeviceEntry>>,
    pub device_cgroup_rules: Option<Vec<String>>,
    pub security_opt: Option<Vec<String>>,
    pub sysctls: Option<Entries>,
    pub pid: Option<String>,
    pub ipc: Option<String>,
    pub uts: Option<String>,
    pub userns_mode: Option<String>,
    pub runtime: Option<String>,
    pub stdin_open: Option<Flag>,
    pub tty: Option<Flag>,
    pub init: Option<Flag>,
    pub platform: Option<String>,
    pub pull_policy: Option<String>,
    pub stop_signal: Option<String>,
    pub stop_grace_period: Option<Duration>,
    pub pids_limit: Option<Integer>,
    pub memswap_limit: Option<SwapSize>,
    pub mem_reservation: Option<ByteSize>,
    pub shm_size: Option<ByteSize>,
    pub cpu_shares: Option<Integer>,
    pub cpuset: Option<String>,
    pub oom_score_adj: Option<Integer>,
    pub ulimits: Option<BTreeMap<String, UlimitDef>>,
    pub group_add: Option<Vec<Text>>,
    pub annotations: Option<Entries>,
    pub profiles: Option<Vec<String>>,
    pub scale: Option<Integer>,
    pub deploy: Option<DeployDef>,
    pub secrets: Option<Vec<FileRef>>,
    pub configs: Option<Vec<FileRef>>,
    pub storage_opt: Option<BTreeMap<String, Text>>,
    /// Whether `docker compose up` follows the service's log; an agent follows none.
    #[serde(rename = "attach")]
    pub _attach: Option<Flag>,
}

/// A service's `deploy`: the parts that mean something on one engine.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of deploy keys")]
pub(super) struct DeployDef {
    /// Only `replicated` (the default) on one engine.
    pub mode: Option<String>,
    pub replicas: Option<Integer>,
    pub resources: Option<ResourcesDef>,
    pub restart_policy: Option<RestartPolicyDef>,
    /// Swarm's rolling updates and placement: Compose ignores them on one engine, and so does
    /// the agent, which has its own rollout.
    #[serde(rename = "update_config")]
    pub _update_config: Option<IgnoredAny>,
    #[serde(rename = "rollback_config")]
    pub _rollback_config: Option<IgnoredAny>,
    #[serde(rename = "placement")]
    pub _placement: Option<IgnoredAny>,
    #[serde(rename = "endpoint_mode")]
    pub _endpoint_mode: Option<IgnoredAny>,
    #[serde(rename = "labels")]
    pub _labels: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with limits and reservations"
)]
pub(super) struct ResourcesDef {
    pub limits: Option<LimitsDef>,
    pub reservations: Option<ReservationsDef>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with cpus, memory and pids"
)]
pub(super) struct LimitsDef {
    pub cpus: Option<Cpus>,
    pub memory: Option<ByteSize>,
    pub pids: Option<Integer>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with cpus, memory and devices"
)]
pub(super) struct ReservationsDef {
    /// Accepted as Compose accepts it; a single engine has no CPU reservation.
    #[serde(rename = "cpus")]
    pub _cpus: Option<Cpus>,
    pub memory: Option<ByteSize>,
    pub devices: Option<Vec<DeviceRequestDef>>,
}

/// One `deploy.resources.reservations.devices` entry (GPUs and the like).
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with capabilities, driver, count, device_ids and options"
)]
pub(super) struct DeviceRequestDef {
    pub capabilities: Vec<String>,
    pub driver: Option<String>,
    pub count: Option<DeviceCount>,
    pub device_ids: Option<Vec<String>>,
    pub options: Option<BTreeMap<String, Text>>,
}

/// `count`: a number or `all`.
pub(super) struct DeviceCount(pub i64);

impl<'de> Deserialize<'de> for DeviceCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Text(text) = Text::deserialize(deserializer)?;
        match text.as_str() {
            "all" => Ok(DeviceCount(-1)),
            number => number.parse().map(DeviceCount).map_err(|_| {
                de::Error::custom(format!("`{text}` is neither a device count nor `all`"))
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with condition, delay, max_attempts and window"
)]
pub(super) struct RestartPolicyDef {
    pub condition: Option<String>,
    pub max_attempts: Option<Integer>,
    /// Accepted as Compose accepts them; the engine's restart policy has no delay or window.
    #[serde(rename = "delay")]
    pub _delay: Option<Duration>,
    #[serde(rename = "window")]
    pub _window: Option<Duration>,
}

/// One `devices` entry: `/dev/x`, `/dev/x:/dev/y` or `/dev/x:/dev/y:rwm`, or the long form.
pub(super) struct DeviceEntry(pub crate::spec::Device);

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with source, target and permissions"
)]
struct LongDevice {
    source: String,
    target: Option<String>,
    permissions: Option<String>,
}

impl<'de> Deserialize<'de> for DeviceEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DeviceVisitor)
    }
}

struct DeviceVisitor;

impl<'de> Visitor<'de> for DeviceVisitor {
    type Value = DeviceEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a device like \"/dev/ttyUSB0:/dev/ttyUSB0:rwm\" or a mapping with source")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        syntax::parse_device(value)
            .map(DeviceEntry)
            .map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let long = LongDevice::deserialize(MapAccessDeserializer::new(map))?;
        let target = long.target.unwrap_or_else(|| long.source.clone());
        let permissions = long.permissions.unwrap_or_else(|| "rwm".to_owned());
        syntax::device(&long.source, &target, &permissions)
            .map(DeviceEntry)
            .map_err(de::Error::custom)
    }
}

/// One `ulimits` entry: a number for both limits, or `soft` and `hard`.
pub(super) struct UlimitDef(pub i64, pub i64);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with soft and hard")]
struct LongUlimit {
    soft: Integer,
    hard: Integer,
}

impl<'de> Deserialize<'de> for UlimitDef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UlimitVisitor)
    }
}

struct UlimitVisitor;

impl<'de> Visitor<'de> for UlimitVisitor {
    type Value = UlimitDef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a mapping with soft and hard")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(UlimitDef(value, value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        let value = i64::try_from(value)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))?;
        Ok(UlimitDef(value, value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        let Integer(value) = IntegerVisitor.visit_str(value)?;
        Ok(UlimitDef(value, value))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let long = LongUlimit::deserialize(MapAccessDeserializer::new(map))?;
        if long.soft.0 > long.hard.0 {
            return Err(de::Error::custom("soft is above hard"));
        }
        Ok(UlimitDef(long.soft.0, long.hard.0))
    }
}

/// `memswap_limit`: a size, or -1 for unlimited swap.
pub(super) struct SwapSize(pub i64);

impl<'de> Deserialize<'de> for SwapSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Text(text) = Text::deserialize(deserializer)?;
        match text.as_str() {
            "-1" => Ok(SwapSize(-1)),
            size => syntax::parse_bytes(size)
                .map(SwapSize)
                .map_err(de::Error::custom),
        }
    }
}

/// A service's `healthcheck`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of healthcheck keys")]
pub(super) struct HealthcheckDef {
    pub test: Option<HealthTest>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<Integer>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub disable: Option<Flag>,
}

/// A service's `logging`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with driver and options")]
pub(super) struct LoggingDef {
    pub driver: Option<String>,
    pub options: Option<BTreeMap<String, Text>>,
}

/// One entry of top-level `networks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of network keys")]
pub(super) struct NetworkDef {
    pub driver: Option<String>,
    pub driver_opts: Option<BTreeMap<String, Text>>,
    pub internal: Option<Flag>,
    pub external: Option<External>,
    pub name: Option<String>,
    pub labels: Option<Entries>,
    pub ipam: Option<IpamDef>,
    pub enable_ipv6: Option<Flag>,
    /// Swarm's: on one engine every network is attachable.
    #[serde(rename = "attachable")]
    pub _attachable: Option<Flag>,
}

/// A network's `ipam`: its address pools.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with driver and config")]
pub(super) struct IpamDef {
    pub driver: Option<String>,
    pub config: Option<Vec<IpamPoolDef>>,
}

/// One `ipam.config` entry.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with subnet, ip_range, gateway and aux_addresses"
)]
pub(super) struct IpamPoolDef {
    pub subnet: Option<String>,
    pub ip_range: Option<String>,
    pub gateway: Option<String>,
    pub aux_addresses: Option<BTreeMap<String, String>>,
}

/// One entry of top-level `volumes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of volume keys")]
pub(super) struct VolumeDef {
    pub driver: Option<String>,
    pub driver_opts: Option<BTreeMap<String, Text>>,
    pub external: Option<External>,
    pub name: Option<String>,
    pub labels: Option<Entries>,
}

/// A mapping whose keys are names the file chooses, kept in file order.
pub(super) struct Named<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(NamedVisitor(PhantomData))
    }
}

struct NamedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for NamedVisitor<T> {
    type Value = Named<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of names")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            entries.push((name, map.next_value()?));
        }
        Ok(Named(entries))
    }
}

/// One `env_file` entry: a path, or `path` with `required` (true unless said otherwise) and
/// `format`.
pub(super) struct EnvFile {
    pub path: String,
    pub required: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with path, required and format"
)]
struct LongEnvFile {
    path: String,
    required: Option<Flag>,
    /// Only the one format there is (`raw` would take values unparsed: not supported).
    format: Option<String>,
}

impl<'de> Deserialize<'de> for EnvFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EnvFileVisitor)
    }
}

struct EnvFileVisitor;

impl<'de> Visitor<'de> for EnvFileVisitor {
    type Value = EnvFile;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path or a mapping with path and required")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(EnvFile {
            path: value.to_owned(),
            required: true,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let long = LongEnvFile::deserialize(MapAccessDeserializer::new(map))?;
        if let Some(format) = long.format.filter(|f| f != "dotenv") {
            return Err(de::Error::custom(format!(
                "format `{format}` is not supported"
            )));
        }
        Ok(EnvFile {
            path: long.path,
            required: long.required.is_none_or(|Flag(required)| required),
        })
    }
}

/// One value or a list of them (`env_file`, `tmpfs`).
pub(super) struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

struct OneOrManyVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
    type Value = OneOrMany<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a list of strings")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(OneOrMany(vec![T::deserialize(StrDeserializer::new(
            value,
        ))?]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(OneOrMany(items))
    }
}

/// `command` or `entrypoint`: a string split like a shell, or a list taken as is.
pub(super) struct Command(pub Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CommandVisitor)
    }
}

struct CommandVisitor;

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = Command;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a list of strings")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        shlex::split(value).map(Command).ok_or_else(|| {
            E::custom(format!(
                "cannot split `{value}` into words (unbalanced quotes?)"
            ))
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut words = Vec::new();
        while let Some(Text(word)) = seq.next_element()? {
            words.push(word);
        }
        Ok(Command(words))
    }
}

/// `environment` or `labels`: a mapping, or a list of `KEY=VALUE` / bare `KEY` entries. A bare
/// key (or a null value) is `None`.
pub(super) struct Entries(pub Vec<(String, Option<String>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a list of KEY=VALUE strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: Option<Text> = map.next_value()?;
            entries.push((key, value.map(|Text(text)| text)));
        }
        Ok(Entries(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(KeyValue(key, value)) = seq.next_element()? {
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }
}

/// One `KEY=VALUE` or bare `KEY` list entry.
struct KeyValue(String, Option<String>);

impl<'de> Deserialize<'de> for KeyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (key, value) = match text.split_once('=') {
            Some((key, value)) => (key, Some(value.to_owned())),
            None => (text.as_str(), None),
        };
        if key.is_empty() {
            return Err(de::Error::custom(format!("`{text}` has no key before `=`")));
        }
        Ok(KeyValue(key.to_owned(), value))
    }
}

/// A service's `networks`: a list of names or a mapping of names to attachment options.
pub(super) struct ServiceNetworks(pub Vec<(String, AttachmentDef)>);

/// How a service joins one network.
#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with aliases, ipv4_address and ipv6_address"
)]
pub(super) struct AttachmentDef {
    pub aliases: Option<Vec<String>>,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
}

impl<'de> Deserialize<'de> for ServiceNetworks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ServiceNetworksVisitor)
    }
}

struct ServiceNetworksVisitor;

impl<'de> Visitor<'de> for ServiceNetworksVisitor {
    type Value = ServiceNetworks;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of network names or a mapping of networks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut networks = Vec::new();
        while let Some(name) = seq.next_element::<String>()? {
            networks.push((name, AttachmentDef::default()));
        }
        Ok(ServiceNetworks(networks))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut networks = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let attachment: Option<AttachmentDef> = map.next_value()?;
            networks.push((name, attachment.unwrap_or_default()));
        }
        Ok(ServiceNetworks(networks))
    }
}

/// A service's `depends_on`: a list of service names or a mapping with conditions; each with
/// whether it is required (an optional one may name a service left out by its profile).
pub(super) struct DependsOn(pub Vec<(String, Condition, bool)>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with condition")]
struct DependencyDef {
    condition: Option<ConditionDef>,
    /// Restart the dependent when this one is restarted by Compose; the agent restarts
    /// nothing by hand, so accepted as Compose reads it.
    #[serde(rename = "restart")]
    _restart: Option<Flag>,
    required: Option<Flag>,
}

#[derive(Deserialize)]
#[serde(expecting = "service_started, service_healthy or service_completed_successfully")]
enum ConditionDef {
    #[serde(rename = "service_started")]
    Started,
    #[serde(rename = "service_healthy")]
    Healthy,
    #[serde(rename = "service_completed_successfully")]
    CompletedSuccessfully,
}

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DependsOnVisitor)
    }
}

struct DependsOnVisitor;

impl<'de> Visitor<'de> for DependsOnVisitor {
    type Value = DependsOn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of service names or a mapping of services to conditions")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut dependencies = Vec::new();
        while let Some(service) = seq.next_element::<String>()? {
            dependencies.push((service, Condition::Started, true));
        }
        Ok(DependsOn(dependencies))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut dependencies = Vec::new();
        while let Some(service) = map.next_key::<String>()? {
            let dependency: Option<DependencyDef> = map.next_value()?;
            let required = (dependency.as_ref())
                .and_then(|d| d.required.as_ref())
                .is_none_or(|Flag(required)| *required);
            let condition = match dependency.and_then(|d| d.condition) {
                None | Some(ConditionDef::Started) => Condition::Started,
                Some(ConditionDef::Healthy) => Condition::Healthy,
                Some(ConditionDef::CompletedSuccessfully) => Condition::CompletedSuccessfully,
            };
            dependencies.push((service, condition, required));
        }
        Ok(DependsOn(dependencies))
    }
}

/// One `ports` entry, short or long syntax; a short range gives several ports.
pub(super) struct PortEntry(pub Vec<Port>);

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with target, published, host_ip and protocol"
)]
struct LongPort {
    target: PortNumber,
    published: Option<PortNumber>,
    host_ip: Option<String>,
    protocol: Option<String>,
}

impl<'de> Deserialize<'de> for PortEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PortEntryVisitor)
    }
}

struct PortEntryVisitor;

impl<'de> Visitor<'de> for PortEntryVisitor {
    type Value = PortEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port like \"8080:80\" or a mapping with target and published")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        syntax::parse_port(value).map(PortEntry).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        self.visit_str(&value.to_string())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        self.visit_str(&value.to_string())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let long = LongPort::deserialize(MapAccessDeserializer::new(map))?;
        let host_ip = long
            .host_ip
            .map(|ip| syntax::parse_host_ip(&ip))
            .transpose()
            .map_err(de::Error::custom)?;
        let protocol = syntax::parse_protocol(long.protocol.as_deref().unwrap_or("tcp"))
            .map_err(de::Error::custom)?;
        Ok(PortEntry(vec![Port {
            host_ip,
            host_port: long.published.map(|PortNumber(port)| port),
            container_port: long.target.0,
            protocol,
        }]))
    }
}

/// A port number written as a number or a string.
struct PortNumber(u16);

impl<'de> Deserialize<'de> for PortNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Text(text) = Text::deserialize(deserializer)?;
        syntax::parse_port_number(&text)
            .map(PortNumber)
            .map_err(de::Error::custom)
    }
}

/// One `volumes` entry of a service, short or long syntax.
pub(super) struct MountEntry(pub MountDef);

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with type, source, target and read_only"
)]
struct LongMount {
    #[serde(rename = "type")]
    kind: MountKind,
    source: Option<String>,
    target: String,
    read_only: Option<Flag>,
    tmpfs: Option<TmpfsOptions>,
    bind: Option<BindOptions>,
    #[serde(rename = "volume")]
    _volume: Option<VolumeOptions>,
    /// Docker Desktop's file-sharing hint; nothing to do on a Linux engine.
    #[serde(rename = "consistency")]
    _consistency: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with create_host_path, selinux and propagation"
)]
struct BindOptions {
    /// Compose creates a missing host directory unless this is false; so does the agent.
    #[serde(rename = "create_host_path")]
    _create_host_path: Option<Flag>,
    selinux: Option<String>,
    propagation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with nocopy")]
struct VolumeOptions {
    /// Copying the image's files into a new volume is the engine's default; accepted.
    #[serde(rename = "nocopy")]
    _nocopy: Option<Flag>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case", expecting = "volume, bind or tmpfs")]
enum MountKind {
    Volume,
    Bind,
    Tmpfs,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with size")]
struct TmpfsOptions {
    size: Option<ByteSize>,
}

impl<'de> Deserialize<'de> for MountEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MountEntryVisitor)
    }
}

struct MountEntryVisitor;

impl<'de> Visitor<'de> for MountEntryVisitor {
    type Value = MountEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a volume like \"data:/path\" or a mapping with type, source and target")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        syntax::parse_short_volume(value)
            .map(MountEntry)
            .map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let long = LongMount::deserialize(MapAccessDeserializer::new(map))?;
        long_mount(long).map(MountEntry).map_err(de::Error::custom)
    }
}

fn long_mount(long: LongMount) -> Result<MountDef, String> {
    let target = syntax::check_target(&long.target)?;
    let read_only = long.read_only.is_some_and(|Flag(flag)| flag);
    if long.tmpfs.is_some() && long.kind != MountKind::Tmpfs {
        return Err("`tmpfs` options only apply to type tmpfs".to_owned());
    }
    if long.bind.is_some() && long.kind != MountKind::Bind {
        return Err("`bind` options only apply to type bind".to_owned());
    }
    let bind = long.bind.unwrap_or_default();
    let mut engine_options = Vec::new();
    match bind.selinux.as_deref() {
        None => {}
        Some(relabel @ ("z" | "Z")) => engine_options.push(relabel.to_owned()),
        Some(other) => return Err(format!("bind.selinux `{other}` is not z or Z")),
    }
    match bind.propagation.as_deref() {
        None => {}
        Some(p @ ("shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate")) => {
            engine_options.push(p.to_owned());
        }
        Some(other) => return Err(format!("bind.propagation `{other}` is not a propagation")),
    }
    let bind_options = (!engine_options.is_empty()).then(|| engine_options.join(","));
    match (long.kind, long.source) {
        (MountKind::Volume, Some(source)) if !source.is_empty() => Ok(MountDef::Volume {
            source,
            target,
            read_only,
        }),
        (MountKind::Volume, _) => Ok(MountDef::Anonymous { target }),
        (MountKind::Bind, Some(source)) if !source.is_empty() => Ok(MountDef::Bind {
            source,
            target,
            read_only,
            bind_options,
        }),
        (MountKind::Bind, _) => Err("a bind mount needs a source".to_owned()),
        (MountKind::Tmpfs, Some(_)) => Err("a tmpfs mount takes no source".to_owned()),
        (MountKind::Tmpfs, None) if read_only => {
            Err("a tmpfs mount cannot be read-only".to_owned())
        }
        (MountKind::Tmpfs, None) => Ok(MountDef::Tmpfs {
            target,
            size: long
                .tmpfs
                .and_then(|options| options.size)
                .map(|ByteSize(size)| size),
        }),
    }
}

/// One entry of a service's `tmpfs`: `/path` or `/path:options`, as path and options.
pub(super) struct TmpfsEntry(pub String, pub String);

impl<'de> Deserialize<'de> for TmpfsEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        syntax::parse_tmpfs(&text)
            .map(|(target, options)| TmpfsEntry(target, options))
            .map_err(de::Error::custom)
    }
}

/// A healthcheck `test`: a string runs in a shell, a list is the engine form.
pub(super) struct HealthTest(pub Vec<String>);

impl<'de> Deserialize<'de> for HealthTest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let OneOrManyOrShell(test) = OneOrManyOrShell::deserialize(deserializer)?;
        match test.first().map(String::as_str) {
            Some("NONE") if test.len() == 1 => Ok(HealthTest(test)),
            Some("CMD") if test.len() >= 2 => Ok(HealthTest(test)),
            Some("CMD-SHELL") if test.len() == 2 => Ok(HealthTest(test)),
            _ => Err(de::Error::custom(
                "a test list must be [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
            )),
        }
    }
}

/// A string becomes `["CMD-SHELL", string]`; a list is taken as is.
struct OneOrManyOrShell(Vec<String>);

impl<'de> Deserialize<'de> for OneOrManyOrShell {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShellVisitor)
    }
}

struct ShellVisitor;

impl<'de> Visitor<'de> for ShellVisitor {
    type Value = OneOrManyOrShell;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a shell command string or a list of strings")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(OneOrManyOrShell(vec![
            "CMD-SHELL".to_owned(),
            value.to_owned(),
        ]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut words = Vec::new();
        while let Some(word) = seq.next_element::<String>()? {
            words.push(word);
        }
        Ok(OneOrManyOrShell(words))
    }
}

/// `external` of a network or volume: a boolean, or the older `{name: ...}` form.
pub(super) enum External {
    /// `external: true` or `external: false`.
    Flag(bool),
    /// `external: {name: ...}`, which means external.
    Named(Option<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with name")]
struct ExternalDef {
    name: Option<String>,
}

impl<'de> Deserialize<'de> for External {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ExternalVisitor)
    }
}

struct ExternalVisitor;

impl<'de> Visitor<'de> for ExternalVisitor {
    type Value = External;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("true, false or a mapping with name")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(External::Flag(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        FlagVisitor
            .visit_str(value)
            .map(|Flag(flag)| External::Flag(flag))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let external = ExternalDef::deserialize(MapAccessDeserializer::new(map))?;
        Ok(External::Named(external.name))
    }
}

/// A scalar taken as text: compose writes `user: 1000` or `KEY: 5` and means the string.
pub(super) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Text(value.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Text(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Text(value.to_string()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Text(value.to_string()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Text(value.to_string()))
    }
}

/// A boolean, also as the string `true` or `false` (what interpolation leaves).
pub(super) struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FlagVisitor)
    }
}

struct FlagVisitor;

impl<'de> Visitor<'de> for FlagVisitor {
    type Value = Flag;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("true or false")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Flag(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        match value {
            "true" => Ok(Flag(true)),
            "false" => Ok(Flag(false)),
            other => Err(E::invalid_value(Unexpected::Str(other), &self)),
        }
    }
}

/// An integer, also as a string (what interpolation leaves).
pub(super) struct Integer(pub i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntegerVisitor)
    }
}

struct IntegerVisitor;

impl<'de> Visitor<'de> for IntegerVisitor {
    type Value = Integer;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Integer(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        i64::try_from(value)
            .map(Integer)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        value
            .parse()
            .map(Integer)
            .map_err(|_| E::invalid_value(Unexpected::Str(value), &self))
    }
}

/// A byte size: a number of bytes or a string like `512m`.
pub(super) struct ByteSize(pub i64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

struct ByteSizeVisitor;

impl<'de> Visitor<'de> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of bytes or a size like 512m")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        if value < 0 {
            return Err(E::invalid_value(Unexpected::Signed(value), &self));
        }
        Ok(ByteSize(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        i64::try_from(value)
            .map(ByteSize)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        syntax::bytes_from_float(value)
            .map(ByteSize)
            .ok_or_else(|| E::invalid_value(Unexpected::Float(value), &self))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        syntax::parse_bytes(value).map(ByteSize).map_err(E::custom)
    }
}

/// `cpus` as billionths of a CPU; written as a number or a string.
pub(super) struct Cpus(pub i64);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Text(text) = Text::deserialize(deserializer)?;
        let cpus: f64 = text
            .parse()
            .map_err(|_| de::Error::custom(format!("`{text}` is not a CPU count")))?;
        syntax::nano_cpus(cpus).map(Cpus).map_err(de::Error::custom)
    }
}

/// A duration in compose syntax (`1m30s`), in nanoseconds.
pub(super) struct Duration(pub i64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        syntax::parse_duration(&text)
            .map(Duration)
            .map_err(de::Error::custom)
    }
}

/// A checked restart policy.
pub(super) struct Restart(pub String);

impl<'de> Deserialize<'de> for Restart {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        syntax::parse_restart(&text)
            .map(Restart)
            .map_err(de::Error::custom)
    }
}

/// A list that may be left out but, as in Compose, not written as null.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    match Option::<Vec<T>>::deserialize(deserializer)? {
        Some(list) => Ok(Some(list)),
        None => Err(de::Error::custom("must be a list, not left empty")),
    }
}
