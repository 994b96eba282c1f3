//! Parsers for the compact string forms compose uses inside values: port and volume short
//! syntax, durations, byte sizes, restart policies, env files and package-relative paths.
//! Each returns a message without a key path; the caller knows the key.

use std::net::IpAddr;

use std::collections::BTreeMap;

use super::interpolate::interpolate;
use crate::spec::Port;

/// A mount as written, before bind sources are resolved against the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MountDef {
    /// A named volume.
    Volume {
        /// The volume's compose key.
        source: String,
        /// Path inside the container.
        target: String,
        /// Mount read-only.
        read_only: bool,
    },
    /// A bind mount with its source as written (relative or absolute).
    Bind {
        /// The source path as written.
        source: String,
        /// Path inside the container.
        target: String,
        /// Mount read-only.
        read_only: bool,
        /// SELinux relabelling and propagation, comma-separated (`z`, `Z`, `rslave`...).
        bind_options: Option<String>,
    },
    /// A volume without a name, kept for the service's life (`- /app/node_modules`).
    Anonymous {
        /// Path inside the container.
        target: String,
    },
    /// A tmpfs mount.
    Tmpfs {
        /// Path inside the container.
        target: String,
        /// Size limit in bytes.
        size: Option<i64>,
    },
}

/// Parses port short syntax: `[[host_ip:][published]:]target[/protocol]`, where `published` and
/// `target` may be ranges of equal length (`8000-8001:80-81`).
pub(super) fn parse_port(spec: &str) -> Result<Vec<Port>, String> {
    let (address, protocol) = match spec.rsplit_once('/') {
        Some((address, protocol)) => (address, protocol),
        None => (spec, "tcp"),
    };
    let protocol = parse_protocol(protocol)?;
    let (front, target) = match address.rsplit_once(':') {
        Some((front, target)) => (Some(front), target),
        None => (None, address),
    };
    let (host_ip, published) = match front {
        None => (None, ""),
        Some(front) => match front.rsplit_once(':') {
            Some((host_ip, published)) => (Some(parse_host_ip(host_ip)?), published),
            None => (None, front),
        },
    };
    let targets = parse_port_range(target)?;
    let published = if published.is_empty() {
        None
    } else {
        Some(parse_port_range(published)?)
    };
    let count = targets.1 - targets.0;
    match published {
        None => Ok((targets.0..=targets.1)
            .map(|container_port| Port {
                host_ip: host_ip.clone(),
                host_port: None,
                container_port,
                protocol: protocol.clone(),
            })
            .collect()),
        Some(published) if published.1 - published.0 == count => Ok((targets.0..=targets.1)
            .zip(published.0..=published.1)
            .map(|(container_port, host_port)| Port {
                host_ip: host_ip.clone(),
                host_port: Some(host_port),
                container_port,
                protocol: protocol.clone(),
            })
            .collect()),
        Some(_) if count == 0 => Err(format!(
            "`{spec}`: a range of host ports for one container port is not supported; publish a single host port"
        )),
        Some(_) => Err(format!(
            "`{spec}`: the host and container port ranges differ in length"
        )),
    }
}

/// Checks a port protocol (`tcp` or `udp`).
pub(super) fn parse_protocol(protocol: &str) -> Result<String, String> {
    match protocol {
        "tcp" | "udp" => Ok(protocol.to_owned()),
        other => Err(format!(
            "protocol `{other}` is not supported (use tcp or udp)"
        )),
    }
}

/// Checks a host address to publish on; IPv6 may be written in brackets.
pub(super) fn parse_host_ip(text: &str) -> Result<String, String> {
    let bare = text
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .map(|address| address.to_string())
        .map_err(|_| format!("`{text}` is not an IP address"))
}

/// Parses one port number (1 to 65535).
pub(super) fn parse_port_number(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("`{text}` is not a port number (1 to 65535)")),
    }
}

fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    match text.split_once('-') {
        None => {
            let port = parse_port_number(text)?;
            Ok((port, port))
        }
        Some((start, end)) => {
            let (start, end) = (parse_port_number(start)?, parse_port_number(end)?);
            if start > end {
                return Err(format!("port range `{text}` ends before it starts"));
            }
            Ok((start, end))
        }
    }
}

/// Parses volume short syntax: `name:/path[:ro]`, `./rel:/path[:ro]` or `/abs:/path[:ro]`.
pub(super) fn parse_short_volume(spec: &str) -> Result<MountDef, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => {
            return Ok(MountDef::Anonymous {
                target: check_target(target)?,
            });
        }
        [source, target] => (*source, *target, ""),
        [source, target, options] => (*source, *target, *options),
        _ => return Err(format!("`{spec}` is not `source:target[:ro]`")),
    };
    let (mut read_only, mut engine_options) = (false, Vec::new());
    for option in options.split(',').filter(|option| !option.is_empty()) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "z" | "Z" | "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                engine_options.push(option);
            }
            // Docker Desktop's file-sharing hints; nothing to do on a Linux engine.
            "cached" | "delegated" | "consistent" | "nocopy" => {}
            other => {
                return Err(format!(
                    "`{spec}`: volume option `{other}` is not supported (use ro, rw, z, Z or a propagation)"
                ));
            }
        }
    }
    let target = check_target(target)?;
    if source.is_empty() {
        return Err(format!("`{spec}` has an empty source"));
    }
    let bind_options = (!engine_options.is_empty()).then(|| engine_options.join(","));
    if source.starts_with('.') || source.starts_with('/') || source.starts_with('~') {
        Ok(MountDef::Bind {
            source: source.to_owned(),
            target,
            read_only,
            bind_options,
        })
    } else {
        Ok(MountDef::Volume {
            source: source.to_owned(),
            target,
            read_only,
        })
    }
}

/// Checks a path inside the container: it must be absolute.
pub(super) fn check_target(target: &str) -> Result<String, String> {
    if target.starts_with('/') {
        Ok(target.to_owned())
    } else {
        Err(format!(
            "mount target `{target}` must be an absolute path in the container"
        ))
    }
}

/// Parses a service `tmpfs` entry, `/path` or `/path:options`, into the path and the mount
/// options the engine takes (`rw,noexec,nosuid,size=64m`); unknown options are refused.
pub(super) fn parse_tmpfs(spec: &str) -> Result<(String, String), String> {
    let (target, options) = spec.split_once(':').unwrap_or((spec, ""));
    for option in options.split(',').filter(|option| !option.is_empty()) {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        let valid = match name {
            "size" => parse_bytes(value).is_ok(),
            "mode" => u32::from_str_radix(value, 8).is_ok(),
            "uid" | "gid" | "nr_inodes" => value.parse::<u64>().is_ok(),
            "rw" | "ro" | "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" | "atime"
            | "noatime" | "diratime" | "nodiratime" | "relatime" | "norelatime" | "strictatime"
            | "nostrictatime" | "sync" | "async" | "dirsync" | "mand" | "nomand" => {
                value.is_empty()
            }
            _ => false,
        };
        if !valid {
            return Err(format!(
                "`{spec}`: tmpfs option `{option}` is not supported"
            ));
        }
    }
    Ok((check_target(target)?, options.to_owned()))
}

/// Parses a `devices` entry: `HOST[:CONTAINER[:PERMISSIONS]]`.
pub(super) fn parse_device(spec: &str) -> Result<crate::spec::Device, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [host] => device(host, host, "rwm"),
        [host, permissions] if is_permissions(permissions) => device(host, host, permissions),
        [host, container] => device(host, container, "rwm"),
        [host, container, permissions] => device(host, container, permissions),
        _ => Err(format!("`{spec}` is not HOST[:CONTAINER[:PERMISSIONS]]")),
    }
}

fn is_permissions(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
}

/// A device mapping, checked: both paths absolute, permissions some of `rwm`.
pub(super) fn device(
    host: &str,
    container: &str,
    permissions: &str,
) -> Result<crate::spec::Device, String> {
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(format!(
            "device `{host}:{container}`: both paths must be absolute"
        ));
    }
    if host.split('/').any(|part| part == "." || part == "..") {
        return Err(format!(
            "device `{host}`: `.` and `..` are not allowed in its path"
        ));
    }
    if !is_permissions(permissions) {
        return Err(format!(
            "device `{host}`: permissions `{permissions}` are not some of r, w and m"
        ));
    }
    Ok(crate::spec::Device {
        host: host.to_owned(),
        container: container.to_owned(),
        permissions: permissions.to_owned(),
    })
}

/// Parses a Go-style duration as compose writes them (`1m30s`, `500ms`, `1.5s`, `0`) into
/// nanoseconds.
pub(super) fn parse_duration(text: &str) -> Result<i64, String> {
    let invalid = || format!("`{text}` is not a duration like 30s, 1m30s or 500ms");
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_length = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_length);
        let unit_length = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_length);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut part = whole.checked_mul(nanos_per_unit).ok_or_else(invalid)?;
        // Digits past nanosecond precision cannot change the result, and would overflow.
        let fraction = &fraction[..fraction.len().min(20)];
        if !fraction.is_empty() {
            let digits: u128 = fraction.parse().map_err(|_| invalid())?;
            let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| invalid())?);
            part += digits * nanos_per_unit / scale;
        }
        total = total.checked_add(part).ok_or_else(invalid)?;
        rest = after;
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// Parses a byte size: a plain number of bytes or a number with a binary unit as compose and
/// Docker take them (`100k`, `512m`, `1.5g`, `2gb`, `1GiB`).
pub(crate) fn parse_bytes(text: &str) -> Result<i64, String> {
    let invalid = || format!("`{text}` is not a size like 512m, 1g or 100k");
    let lower = text.trim().to_ascii_lowercase();
    let number_length = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(number_length);
    let unit = unit.trim_start();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let multiplier: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    bytes_from_float(value * multiplier).ok_or_else(invalid)
}

/// Whole bytes of a non-negative finite size, truncated like Docker does.
pub(super) fn bytes_from_float(value: f64) -> Option<i64> {
    // i64::MAX as f64 rounds up to 2^63; the range excludes it, so the cast cannot saturate.
    (value.is_finite() && (0.0..i64::MAX as f64).contains(&value)).then(|| value.trunc() as i64)
}

/// Converts a CPU count (`1.5`) into billionths of a CPU.
pub(super) fn nano_cpus(cpus: f64) -> Result<i64, String> {
    if !(0.0..=1e9).contains(&cpus) {
        return Err(format!("`{cpus}` is not a CPU count"));
    }
    Ok((cpus * 1e9).round() as i64)
}

/// Checks a restart policy.
pub(super) fn parse_restart(text: &str) -> Result<String, String> {
    let valid = match text {
        "no" | "always" | "on-failure" | "unless-stopped" => true,
        other => other
            .strip_prefix("on-failure:")
            .is_some_and(|count| count.parse::<u32>().is_ok()),
    };
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a restart policy (no, always, on-failure, on-failure:N, unless-stopped)"
        ))
    }
}

/// Parses an env file: `KEY=VALUE` lines, `#` comments, an optional `export ` prefix, values
/// optionally in single or double quotes. A line with a bare `KEY` gives `None`: its value
/// comes from the deployment's variables, like a bare key in `environment`.
/// The `KEY=VALUE` entries of an env file (`.env` or `env_file`), in order; a bare `KEY` is
/// `None`. As in Compose v2, unquoted and double-quoted values are interpolated with
/// `variables` and, for names they lack, the entries above; single-quoted values are literal.
pub(super) fn parse_env_file(
    text: &str,
    variables: &BTreeMap<String, String>,
) -> Result<Vec<(String, Option<String>)>, String> {
    let mut entries = Vec::new();
    let mut seen = variables.clone();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key.trim_end(), Some(value.trim_start())),
            None => (line, None),
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!(
                "line {line_number}: `{key}` is not a variable name"
            ));
        }
        let value = match value.map(parse_env_value).transpose() {
            Ok(Some((value, Quoting::Single))) => Some(value),
            Ok(Some((value, Quoting::Expand))) => Some(
                interpolate(&value, &seen)
                    .map_err(|error| format!("line {line_number}: {key}: {error}"))?,
            ),
            Ok(None) => None,
            Err(reason) => return Err(format!("line {line_number}: {reason}")),
        };
        if let Some(value) = &value
            && !variables.contains_key(key)
        {
            seen.insert(key.to_owned(), value.clone());
        }
        entries.push((key.to_owned(), value));
    }
    Ok(entries)
}

/// Whether an env file value is interpolated.
enum Quoting {
    /// Single-quoted: taken as written.
    Single,
    /// Unquoted or double-quoted.
    Expand,
}

fn parse_env_value(raw: &str) -> Result<(String, Quoting), String> {
    let mut chars = raw.chars();
    let (value, rest, quoting) = match chars.next() {
        Some('\'') => {
            let inner = chars.as_str();
            let end = inner
                .find('\'')
                .ok_or("unterminated single quote (multi-line values are not supported)")?;
            (inner[..end].to_owned(), &inner[end + 1..], Quoting::Single)
        }
        Some('"') => {
            let mut value = String::new();
            let mut rest = None;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        rest = Some(chars.as_str());
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some('r') => value.push('\r'),
                        Some('$') => value.push_str("$$"),
                        Some(other @ ('"' | '\\')) => value.push(other),
                        Some(other) => {
                            value.push('\\');
                            value.push(other);
                        }
                        None => value.push('\\'),
                    },
                    other => value.push(other),
                }
            }
            let rest =
                rest.ok_or("unterminated double quote (multi-line values are not supported)")?;
            (value, rest, Quoting::Expand)
        }
        _ => {
            // An unquoted value ends at a comment, which needs whitespace before the `#`.
            let end = raw
                .char_indices()
                .find(|&(index, c)| c == '#' && raw[..index].ends_with(|p: char| p.is_whitespace()))
                .map_or(raw.len(), |(index, _)| index);
            return Ok((raw[..end].trim_end().to_owned(), Quoting::Expand));
        }
    };
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok((value, quoting))
    } else {
        Err(format!("unexpected `{rest}` after the quoted value"))
    }
}

/// The directory of a package-relative file path (`app/compose.yaml` -> `app`).
pub(super) fn parent_dir(file: &str) -> &str {
    file.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// Joins a relative path onto a package directory and normalises it; `None` when the result
/// would leave the package. The package root itself is `.`.
pub(super) fn package_path(dir: &str, relative: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in dir.split('/').chain(relative.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        Some(".".to_owned())
    } else {
        Some(parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(
        host_ip: Option<&str>,
        host_port: Option<u16>,
        container_port: u16,
        protocol: &str,
    ) -> Port {
        Port {
            host_ip: host_ip.map(str::to_owned),
            host_port,
            container_port,
            protocol: protocol.to_owned(),
        }
    }

    #[test]
    fn port_short_syntax() {
        let cases = [
            ("80", vec![port(None, None, 80, "tcp")]),
            ("8080:80", vec![port(None, Some(8080), 80, "tcp")]),
            ("8080:80/udp", vec![port(None, Some(8080), 80, "udp")]),
            (
                "127.0.0.1:8080:80",
                vec![port(Some("127.0.0.1"), Some(8080), 80, "tcp")],
            ),
            (
                "127.0.0.1::80",
                vec![port(Some("127.0.0.1"), None, 80, "tcp")],
            ),
            (
                "[::1]:8080:80",
                vec![port(Some("::1"), Some(8080), 80, "tcp")],
            ),
            (
                "::1:8080:80",
                vec![port(Some("::1"), Some(8080), 80, "tcp")],
            ),
            (
                "8000-8001:80-81",
                vec![
                    port(None, Some(8000), 80, "tcp"),
                    port(None, Some(8001), 81, "tcp"),
                ],
            ),
            (
                "9000-9001/udp",
                vec![port(None, None, 9000, "udp"), port(None, None, 9001, "udp")],
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(parse_port(spec), Ok(expected), "spec {spec:?}");
        }
    }

    #[test]
    fn bad_ports_are_errors() {
        for spec in [
            "",
            "http",
            "0",
            "70000",
            "8080:80/sctp",
            "8000-8002:80-81",
            "8000-8001:80",
            "81-80",
            "nohost:8080:80",
            "8080:",
            "1:2:3:4x",
        ] {
            assert!(parse_port(spec).is_err(), "spec {spec:?}");
        }
    }

    #[test]
    fn volume_short_syntax() {
        assert_eq!(
            parse_short_volume("data:/var/lib/data"),
            Ok(MountDef::Volume {
                source: "data".into(),
                target: "/var/lib/data".into(),
                read_only: false
            })
        );
        assert_eq!(
            parse_short_volume("./conf:/etc/app:ro"),
            Ok(MountDef::Bind {
                source: "./conf".into(),
                target: "/etc/app".into(),
                read_only: true,
                bind_options: None
            })
        );
        assert_eq!(
            parse_short_volume("/srv/x:/x:rw"),
            Ok(MountDef::Bind {
                source: "/srv/x".into(),
                target: "/x".into(),
                read_only: false,
                bind_options: None
            })
        );
        assert_eq!(
            parse_short_volume("../shared:/shared"),
            Ok(MountDef::Bind {
                source: "../shared".into(),
                target: "/shared".into(),
                read_only: false,
                bind_options: None
            })
        );
        assert_eq!(
            parse_short_volume("~/data:/data:Z"),
            Ok(MountDef::Bind {
                source: "~/data".into(),
                target: "/data".into(),
                read_only: false,
                bind_options: Some("Z".into())
            })
        );
        assert_eq!(
            parse_short_volume("/app/node_modules"),
            Ok(MountDef::Anonymous {
                target: "/app/node_modules".into()
            })
        );
        for spec in [
            "data:relative",
            "data:/x:q",
            ":/x",
            "a:/b:ro:extra",
            "relative",
        ] {
            assert!(parse_short_volume(spec).is_err(), "spec {spec:?}");
        }
    }

    #[test]
    fn tmpfs_entries() {
        assert_eq!(parse_tmpfs("/run"), Ok(("/run".into(), String::new())));
        let options = "rw,noexec,nosuid,size=64m,mode=1777";
        assert_eq!(
            parse_tmpfs(&format!("/tmp:{options}")),
            Ok(("/tmp".into(), options.into()))
        );
        assert!(parse_tmpfs("/run:bogus").is_err());
        assert!(parse_tmpfs("/run:size=lots").is_err());
        assert!(parse_tmpfs("run").is_err());
    }

    #[test]
    fn devices() {
        let device = |host: &str, container: &str, permissions: &str| crate::spec::Device {
            host: host.into(),
            container: container.into(),
            permissions: permissions.into(),
        };
        assert_eq!(
            parse_device("/dev/ttyUSB0"),
            Ok(device("/dev/ttyUSB0", "/dev/ttyUSB0", "rwm"))
        );
        assert_eq!(
            parse_device("/dev/ttyUSB0:/dev/zigbee"),
            Ok(device("/dev/ttyUSB0", "/dev/zigbee", "rwm"))
        );
        assert_eq!(
            parse_device("/dev/snd:r"),
            Ok(device("/dev/snd", "/dev/snd", "r"))
        );
        assert_eq!(
            parse_device("/dev/a:/dev/b:rw"),
            Ok(device("/dev/a", "/dev/b", "rw"))
        );
        for spec in [
            "ttyUSB0",
            "/dev/a:/dev/b:x",
            "/dev/a:b",
            "/a:/b:r:x",
            "/dev/dri/../sda",
            "/dev/dri/..",
        ] {
            assert!(parse_device(spec).is_err(), "spec {spec:?}");
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("0", 0),
            ("10s", 10_000_000_000),
            ("1m30s", 90_000_000_000),
            ("500ms", 500_000_000),
            ("1.5s", 1_500_000_000),
            ("1h", 3_600_000_000_000),
            ("2us", 2_000),
            ("7ns", 7),
            ("1h2m3s4ms", 3_723_004_000_000),
            (".5s", 500_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse_duration(text), Ok(nanos), "duration {text:?}");
        }
        for text in [
            "",
            "10",
            "s",
            "10x",
            "1.2.3s",
            "-1s",
            "1m 30s",
            "99999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "duration {text:?}");
        }
    }

    #[test]
    fn byte_sizes() {
        let cases = [
            ("1024", 1024),
            ("100k", 102_400),
            ("512m", 536_870_912),
            ("1g", 1_073_741_824),
            ("1.5g", 1_610_612_736),
            ("2gb", 2_147_483_648),
            ("1GiB", 1_073_741_824),
            ("64M", 67_108_864),
            ("10b", 10),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_bytes(text), Ok(bytes), "size {text:?}");
        }
        for text in ["", "m", "1x", "-1g", "1.g", "1e3", "99999999t"] {
            assert!(parse_bytes(text).is_err(), "size {text:?}");
        }
    }

    #[test]
    fn cpus_and_restart() {
        assert_eq!(nano_cpus(1.5), Ok(1_500_000_000));
        assert_eq!(nano_cpus(0.25), Ok(250_000_000));
        assert!(nano_cpus(-1.0).is_err());
        for policy in [
            "no",
            "always",
            "on-failure",
            "on-failure:3",
            "unless-stopped",
        ] {
            assert_eq!(parse_restart(policy).as_deref(), Ok(policy));
        }
        for policy in ["never", "on-failure:", "on-failure:x", "Always", ""] {
            assert!(parse_restart(policy).is_err(), "policy {policy:?}");
        }
    }

    #[test]
    fn env_files() {
        let text = "# comment\n\nA=1\nexport B = two words \nC=\"quoted # not a comment\" # comment\n\
                    D='single $x'\nE=unquoted # comment\nF=a#b\nG=\nBARE\nH=\"line\\nbreak\"\n";
        let expected = vec![
            ("A", Some("1")),
            ("B", Some("two words")),
            ("C", Some("quoted # not a comment")),
            ("D", Some("single $x")),
            ("E", Some("unquoted")),
            ("F", Some("a#b")),
            ("G", Some("")),
            ("BARE", None),
            ("H", Some("line\nbreak")),
        ];
        let expected: Vec<(String, Option<String>)> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
            .collect();
        assert_eq!(parse_env_file(text, &BTreeMap::new()), Ok(expected));
        assert_eq!(
            parse_env_file("A=1\nB=\"open\n", &BTreeMap::new()),
            Err(
                "line 2: unterminated double quote (multi-line values are not supported)"
                    .to_owned()
            )
        );
        assert!(parse_env_file("BAD KEY=1", &BTreeMap::new()).is_err());
        assert!(parse_env_file("A='x' trailing", &BTreeMap::new()).is_err());
    }

    #[test]
    fn env_file_values_refer_to_entries_above_and_to_the_variables() {
        let text = "ROOT_DIR=/srv\nDATA=${ROOT_DIR:-/mnt}/db\nQ=\"$HOST:\\$x\"\n\
                    LIT='${ROOT_DIR}'\nRE=^a(:[0-9]+)?$\nLATER=$UNDEFINED-x\n";
        let variables = BTreeMap::from([("HOST".to_owned(), "h".to_owned())]);
        let entries = parse_env_file(text, &variables).expect("parses");
        let value = |key: &str| {
            let entry = entries.iter().find(|(k, _)| k == key);
            entry.and_then(|(_, v)| v.clone())
        };
        assert_eq!(value("DATA").as_deref(), Some("/srv/db"));
        assert_eq!(value("Q").as_deref(), Some("h:$x"));
        assert_eq!(value("LIT").as_deref(), Some("${ROOT_DIR}"));
        assert_eq!(value("RE").as_deref(), Some("^a(:[0-9]+)?$"));
        assert_eq!(value("LATER").as_deref(), Some("-x"));
        let error = parse_env_file("A=${B:?set B}\n", &BTreeMap::new()).err();
        assert_eq!(
            error.as_deref(),
            Some("line 1: A: required variable B is missing a value: set B")
        );
    }

    #[test]
    fn package_paths() {
        assert_eq!(parent_dir("app/compose.yaml"), "app");
        assert_eq!(parent_dir("compose.yaml"), "");
        assert_eq!(
            package_path("app", "./conf/x.ini").as_deref(),
            Some("app/conf/x.ini")
        );
        assert_eq!(package_path("app", "../shared").as_deref(), Some("shared"));
        assert_eq!(package_path("app", ".").as_deref(), Some("app"));
        assert_eq!(package_path("", "./").as_deref(), Some("."));
        assert_eq!(package_path("", "a//b/./c/../d").as_deref(), Some("a/b/d"));
        assert_eq!(package_path("", "../x"), None);
        assert_eq!(package_path("app", "../../x"), None);
        assert_eq!(package_path("app", "a/../../../x"), None);
    }
}
