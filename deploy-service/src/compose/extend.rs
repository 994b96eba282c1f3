//! `include` and `extends`: other files and services of the package, merged into the YAML tree
//! before it is typed, as Compose v2 merges them.
//!
//! Files named by either must sit in the compose file's own directory: relative paths in them
//! (binds, `env_file`) then mean what they mean in the main file, as they do for Compose.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::{Mapping, Value};

use super::syntax;

/// How deep `include` and `extends` may nest; deeper is taken for a cycle.
const MAX_DEPTH: usize = 8;

/// The sections an included file contributes.
const SECTIONS: [&str; 5] = ["services", "networks", "volumes", "secrets", "configs"];

/// A package file of the compose file's directory, parsed, with its merge keys applied.
fn load(dir: &str, relative: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<Value, String> {
    let path = syntax::package_path(dir, relative)
        .filter(|p| syntax::parent_dir(p) == dir)
        .ok_or_else(|| format!("{relative}: only files beside the compose file can be used"))?;
    let bytes = files
        .get(&path)
        .ok_or_else(|| format!("{relative}: no such file in the package ({path})"))?;
    let mut tree: Value = serde_yaml_ng::from_slice(bytes)
        .map_err(|error| format!("{relative}: invalid YAML: {error}"))?;
    tree.apply_merge()
        .map_err(|error| format!("{relative}: invalid YAML merge key: {error}"))?;
    Ok(tree)
}

/// Replaces top-level `include` with the sections of the files it names. A name defined twice
/// is an error, as in Compose.
pub(super) fn include(
    tree: &mut Value,
    dir: &str,
    files: &BTreeMap<String, Vec<u8>>,
    depth: usize,
) -> Result<(), String> {
    let Some(root) = tree.as_mapping_mut() else {
        return Ok(());
    };
    let Some(entries) = root.remove("include") else {
        return Ok(());
    };
    if depth >= MAX_DEPTH {
        return Err("include: nested too deep (a file includes itself?)".to_owned());
    }
    let mut paths = Vec::new();
    for entry in entries.as_sequence().ok_or("include: must be a list")? {
        match entry {
            Value::String(path) => paths.push(path.clone()),
            Value::Mapping(long) => {
                for (key, _) in long {
                    if key.as_str() != Some("path") {
                        let key = key.as_str().unwrap_or("?");
                        return Err(format!("include.{key}: unsupported key"));
                    }
                }
                match long.get("path") {
                    Some(Value::String(path)) => paths.push(path.clone()),
                    Some(Value::Sequence(list)) => {
                        paths.extend(list.iter().filter_map(|p| p.as_str().map(str::to_owned)));
                    }
                    _ => return Err("include: an entry needs a path".to_owned()),
                }
            }
            _ => return Err("include: entries are paths or mappings with path".to_owned()),
        }
    }
    for path in paths {
        let mut included = load(dir, &path, files).map_err(|e| format!("include: {e}"))?;
        include(&mut included, dir, files, depth + 1)?;
        for section in SECTIONS {
            let Some(Value::Mapping(from)) = included.get(section) else {
                continue;
            };
            let into = root
                .entry(Value::from(section))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if into.is_null() {
                *into = Value::Mapping(Mapping::new());
            }
            let into = into
                .as_mapping_mut()
                .ok_or_else(|| format!("{section}: must be a mapping"))?;
            for (name, definition) in from {
                if into.contains_key(name) {
                    let name = name.as_str().unwrap_or("?");
                    return Err(format!(
                        "include: {path}: {section}.{name} is defined twice"
                    ));
                }
                into.insert(name.clone(), definition.clone());
            }
        }
    }
    Ok(())
}

/// Resolves every service's `extends` (a service of this file, or of `file`), the extending
/// service's own keys merged over the base's.
pub(super) fn extends(
    tree: &mut Value,
    dir: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<(), String> {
    let Some(services) = tree.get("services").and_then(Value::as_mapping).cloned() else {
        return Ok(());
    };
    let mut resolved = Mapping::new();
    for (name, _) in &services {
        let name = name.as_str().unwrap_or_default();
        let service = resolve(&services, name, dir, files, &mut BTreeSet::new(), 0)?;
        resolved.insert(Value::from(name), service);
    }
    if let Some(root) = tree.as_mapping_mut() {
        root.insert(Value::from("services"), Value::Mapping(resolved));
    }
    Ok(())
}

/// Service `name` of `services` with its `extends` chain merged in.
fn resolve(
    services: &Mapping,
    name: &str,
    dir: &str,
    files: &BTreeMap<String, Vec<u8>>,
    visiting: &mut BTreeSet<String>,
    depth: usize,
) -> Result<Value, String> {
    let path = format!("services.{name}.extends");
    if depth >= MAX_DEPTH {
        return Err(format!(
            "{path}: extended too deep (services extend each other in a cycle?)"
        ));
    }
    let Some(service) = services.get(name) else {
        return Err(format!("{path}: no service {name} to extend"));
    };
    let mut service = service.clone();
    let Some(extends) = service.as_mapping_mut().and_then(|m| m.remove("extends")) else {
        return Ok(service);
    };
    if !visiting.insert(name.to_owned()) {
        return Err(format!("{path}: services extend each other in a cycle"));
    }
    let (base_name, file) = match &extends {
        Value::String(base) => (base.clone(), None),
        Value::Mapping(long) => {
            for (key, _) in long {
                if !matches!(key.as_str(), Some("service" | "file")) {
                    let key = key.as_str().unwrap_or("?");
                    return Err(format!("{path}.{key}: unsupported key"));
                }
            }
            let base = long.get("service").and_then(Value::as_str);
            let base = base.ok_or_else(|| format!("{path}.service: required"))?;
            let file = long.get("file").and_then(Value::as_str).map(str::to_owned);
            (base.to_owned(), file)
        }
        _ => return Err(format!("{path}: a service name or a mapping with service")),
    };
    let base = match file {
        None => resolve(services, &base_name, dir, files, visiting, depth + 1)?,
        Some(file) => {
            let other = load(dir, &file, files).map_err(|e| format!("{path}.file: {e}"))?;
            let others = (other.get("services").and_then(Value::as_mapping))
                .ok_or_else(|| format!("{path}.file: {file} defines no services"))?;
            resolve(
                others,
                &base_name,
                dir,
                files,
                &mut BTreeSet::new(),
                depth + 1,
            )
            .map_err(|e| format!("{path}.file: {file}: {e}"))?
        }
    };
    visiting.remove(name);
    Ok(merge(base, service, ""))
}

/// `over` merged onto `base` as Compose merges an extending service onto its base: mappings
/// key by key, lists appended (without repeating an entry), and anything else replaced; a
/// command, an entrypoint and a health check test are replaced whole.
fn merge(base: Value, over: Value, key: &str) -> Value {
    match (base, over) {
        (Value::Mapping(mut base), Value::Mapping(over)) => {
            for (k, v) in over {
                let child_key = k.as_str().unwrap_or_default().to_owned();
                let merged = match base.remove(&k) {
                    Some(old) => merge(old, v, &child_key),
                    None => v,
                };
                base.insert(k, merged);
            }
            Value::Mapping(base)
        }
        (Value::Sequence(mut base), Value::Sequence(over))
            if !matches!(key, "command" | "entrypoint" | "test") =>
        {
            for item in over {
                if !base.contains(&item) {
                    base.push(item);
                }
            }
            Value::Sequence(base)
        }
        (_, over) => over,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        (pairs.iter())
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    fn tree(yaml: &str) -> Value {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    #[test]
    fn an_extending_service_is_merged_over_its_base() {
        let mut t = tree(
            "services:\n  base:\n    image: app:1\n    environment: {A: '1', B: '1'}\n    \
             command: [run, base]\n    ports: ['80']\n  cron:\n    extends: base\n    \
             environment: {B: '2'}\n    command: [cron]\n    ports: ['81']\n  \
             far:\n    extends: {service: shared, file: common.yaml}\n",
        );
        let package = files(&[(
            "app/common.yaml",
            "services:\n  shared:\n    image: shared:1\n    restart: always\n",
        )]);
        extends(&mut t, "app", &package).expect("resolves");
        let cron = &t["services"]["cron"];
        assert_eq!(cron["image"], "app:1");
        assert_eq!(cron["environment"], tree("{A: '1', B: '2'}"));
        assert_eq!(cron["command"], tree("[cron]"));
        assert_eq!(cron["ports"], tree("['80', '81']"));
        assert!(cron.get("extends").is_none());
        assert_eq!(t["services"]["far"]["restart"], "always");
    }

    #[test]
    fn extends_cycles_and_unknown_bases_are_errors() {
        let mut t = tree("services:\n  a:\n    extends: b\n  b:\n    extends: a\n");
        let e = extends(&mut t, "", &BTreeMap::new()).unwrap_err();
        assert!(e.contains("cycle"), "{e}");
        let mut t = tree("services:\n  a:\n    extends: nowhere\n");
        let e = extends(&mut t, "", &BTreeMap::new()).unwrap_err();
        assert_eq!(e, "services.nowhere.extends: no service nowhere to extend");
    }

    #[test]
    fn include_adds_the_sections_of_files_beside_the_compose_file() {
        let package = files(&[
            (
                "infra.yaml",
                "services:\n  db:\n    image: db:1\nvolumes:\n  data: {}\n",
            ),
            ("sub/x.yaml", "services: {}\n"),
        ]);
        let mut t = tree("include: [infra.yaml]\nservices:\n  web:\n    image: w:1\n");
        include(&mut t, "", &package, 0).expect("includes");
        assert_eq!(t["services"]["db"]["image"], "db:1");
        assert!(t["volumes"].get("data").is_some());
        assert!(t.get("include").is_none());

        let mut twice = tree("include: [infra.yaml]\nservices:\n  db:\n    image: mine\n");
        let e = include(&mut twice, "", &package, 0).unwrap_err();
        assert_eq!(e, "include: infra.yaml: services.db is defined twice");
        let mut elsewhere = tree("include: [sub/x.yaml]\nservices: {}\n");
        let e = include(&mut elsewhere, "", &package, 0).unwrap_err();
        assert!(e.contains("only files beside the compose file"), "{e}");
    }
}
