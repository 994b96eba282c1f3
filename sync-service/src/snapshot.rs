//! Turning one commit's files into the desired state the deployment service is given: the
//! deployment documents, and only the repository files their packages reference.

use std::collections::BTreeMap;

use woa_common::margo::{Package, parse_deployment};
use woa_proto::v1 as pb;

/// The desired state at `revision`: every `*.yaml`/`*.yml` directly in `deployments_path`
/// is a document; the files under a referenced package directory (or beside a referenced
/// compose file or archive) are artifacts. A document that does not parse is still sent: the
/// deployment service reports it with its path, which is how the WOS learns of it.
pub fn desired_state(
    revision: &str,
    files: &BTreeMap<String, Vec<u8>>,
    deployments_path: &str,
) -> pb::ApplyDesiredStateRequest {
    let prefix = if deployments_path.is_empty() {
        String::new()
    } else {
        format!("{deployments_path}/")
    };
    let documents: Vec<pb::DeploymentDocument> = files
        .iter()
        .filter(|(path, _)| {
            path.strip_prefix(&prefix).is_some_and(|name| {
                !name.contains('/') && (name.ends_with(".yaml") || name.ends_with(".yml"))
            })
        })
        .map(|(path, yaml)| pb::DeploymentDocument {
            path: path.clone(),
            yaml: yaml.clone(),
        })
        .collect();
    let mut artifacts = BTreeMap::new();
    for document in &documents {
        let Ok(deployment) = parse_deployment(&document.path, &document.yaml) else {
            continue;
        };
        for component in &deployment.components {
            if let Package::Location(location) = &component.package
                && let Some(dir) = package_dir(location, files)
            {
                artifacts.extend(files_under(files, &dir).map(|(p, c)| (p.clone(), c.clone())));
            }
        }
    }
    pb::ApplyDesiredStateRequest {
        revision: revision.to_owned(),
        deployments: documents,
        artifacts: artifacts.into_iter().collect(),
    }
}

/// The repository directory a package location refers to: the location itself when it is a
/// directory, its parent when it is a file. `None` for URLs and for paths that leave the
/// repository; the deployment service gives those their error.
fn package_dir(location: &str, files: &BTreeMap<String, Vec<u8>>) -> Option<String> {
    if location.contains("://") {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in location.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    let path = parts.join("/");
    if files.contains_key(&path) {
        parts.pop();
        return Some(parts.join("/"));
    }
    Some(path)
}

fn files_under<'a>(
    files: &'a BTreeMap<String, Vec<u8>>,
    dir: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Vec<u8>)> {
    files
        .iter()
        .filter(move |(path, _)| dir.is_empty() || path.starts_with(&format!("{dir}/")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn deployment(id: &str, location: &str) -> Vec<u8> {
        format!(
            "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
             metadata:\n  name: app\n  annotations:\n    id: {id}\n\
             spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
             \x20     - name: web\n        properties:\n          packageLocation: {location}\n"
        )
        .into_bytes()
    }

    #[test]
    fn documents_and_only_referenced_files_are_sent() {
        let id1 = "3f0b2a4e-8d1c-4e57-9a2b-1c2d3e4f5a6b";
        let id2 = "4f0b2a4e-8d1c-4e57-9a2b-1c2d3e4f5a6b";
        let files: BTreeMap<String, Vec<u8>> = [
            ("deployments/a.yaml", deployment(id1, "apps/a")),
            (
                "deployments/b.yml",
                deployment(id2, "./apps/b/compose.yaml"),
            ),
            ("deployments/broken.yaml", b"{not yaml".to_vec()),
            ("deployments/README.md", b"docs".to_vec()),
            ("deployments/old/c.yaml", b"nested: ignored".to_vec()),
            ("apps/a/compose.yaml", b"services: {}".to_vec()),
            ("apps/a/conf/app.env", b"A=1".to_vec()),
            ("apps/b/compose.yaml", b"services: {}".to_vec()),
            ("apps/b/.env", b"B=1".to_vec()),
            ("apps/other/compose.yaml", b"unreferenced".to_vec()),
            ("big.bin", vec![0; 1024]),
        ]
        .into_iter()
        .map(|(p, c)| (p.to_owned(), c))
        .collect();
        let state = desired_state("abc", &files, "deployments");
        assert_eq!(state.revision, "abc");
        let docs: Vec<_> = state.deployments.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            docs,
            [
                "deployments/a.yaml",
                "deployments/b.yml",
                "deployments/broken.yaml"
            ]
        );
        let mut artifacts: Vec<_> = state.artifacts.keys().map(String::as_str).collect();
        artifacts.sort();
        assert_eq!(
            artifacts,
            [
                "apps/a/compose.yaml",
                "apps/a/conf/app.env",
                "apps/b/.env",
                "apps/b/compose.yaml"
            ]
        );
    }

    #[test]
    fn urls_and_escaping_paths_reference_nothing() {
        let files = BTreeMap::from([("a/compose.yaml".to_owned(), vec![])]);
        assert_eq!(package_dir("https://x/compose.yaml", &files), None);
        assert_eq!(package_dir("../../etc", &files), None);
        assert_eq!(package_dir("a/compose.yaml", &files), Some("a".into()));
        assert_eq!(package_dir("a/", &files), Some("a".into()));
    }
}
