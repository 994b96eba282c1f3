//! Building desired states: ApplicationDeployment documents and `ApplyDesiredState` requests.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::util::base64;

/// One ApplicationDeployment document, written as the WOS would.
#[derive(Debug, Clone)]
pub struct AppDeployment {
    id: String,
    name: String,
    profile: String,
    components: Vec<(String, String)>,
    timeouts: BTreeMap<String, String>,
    parameters: Vec<(String, String, Vec<String>)>,
}

impl AppDeployment {
    /// A compose deployment with no components yet.
    pub fn new(id: &str, name: &str) -> AppDeployment {
        AppDeployment {
            id: id.to_owned(),
            name: name.to_owned(),
            profile: "compose".to_owned(),
            components: Vec::new(),
            timeouts: BTreeMap::new(),
            parameters: Vec::new(),
        }
    }

    /// Sets the deployment profile type (default `compose`).
    pub fn profile(mut self, profile_type: &str) -> Self {
        profile_type.clone_into(&mut self.profile);
        self
    }

    /// Adds a component whose package is at `package_location`; an `oci://host/name:tag`
    /// location becomes the `repository` and `revision` of an OCI compose artifact.
    pub fn component(mut self, name: &str, package_location: &str) -> Self {
        self.components
            .push((name.to_owned(), package_location.to_owned()));
        self
    }

    /// Sets the `timeout` property of `component`, e.g. `"5s"`.
    pub fn timeout(mut self, component: &str, timeout: &str) -> Self {
        self.timeouts
            .insert(component.to_owned(), timeout.to_owned());
        self
    }

    /// Adds a parameter: the compose variable `name` is `value` for `components`.
    pub fn parameter(mut self, name: &str, value: &str, components: &[&str]) -> Self {
        let components = components.iter().map(|c| (*c).to_owned()).collect();
        self.parameters
            .push((name.to_owned(), value.to_owned(), components));
        self
    }

    /// The deployment id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The document as YAML.
    pub fn to_yaml(&self) -> String {
        // JSON strings are valid YAML flow scalars, which spares a YAML serializer.
        let q = |s: &str| Value::from(s).to_string();
        let mut yaml = format!(
            "apiVersion: application.margo.org/v1alpha1\n\
             kind: ApplicationDeployment\n\
             id: {id}\n\
             metadata:\n  annotations:\n    applicationId: {name}\n  name: {name}\n\
             spec:\n  deploymentProfile:\n    type: {profile}\n    components:\n",
            id = q(&self.id),
            name = q(&self.name),
            profile = q(&self.profile),
        );
        for (name, location) in &self.components {
            let oci = (location.strip_prefix("oci://"))
                .and_then(|rest| rest.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')));
            let package = match oci {
                Some((repository, tag)) => format!(
                    "repository: {}\n          revision: {}",
                    q(&format!("oci://{repository}")),
                    q(tag)
                ),
                None => format!("packageLocation: {}", q(location)),
            };
            yaml += &format!(
                "      - name: {}\n        properties:\n          {package}\n",
                q(name)
            );
            if let Some(timeout) = self.timeouts.get(name) {
                yaml += &format!("          timeout: {}\n", q(timeout));
            }
        }
        if !self.parameters.is_empty() {
            yaml += "  parameters:\n";
            for (name, value, components) in &self.parameters {
                yaml += &format!(
                    "    {}:\n      value: {}\n      targets:\n        - pointer: {}\n          components: {}\n",
                    q(name),
                    q(value),
                    q(&format!("ENV.{name}")),
                    Value::from(components.clone()),
                );
            }
        }
        yaml
    }
}

/// An `ApplyDesiredStateRequest`: a revision, its deployment documents and artifacts.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    revision: String,
    deployments: Vec<(String, Vec<u8>)>,
    artifacts: BTreeMap<String, Vec<u8>>,
}

impl DesiredState {
    /// An empty desired state (no deployments) at `revision`.
    pub fn new(revision: &str) -> DesiredState {
        DesiredState {
            revision: revision.to_owned(),
            ..DesiredState::default()
        }
    }

    /// The same documents and artifacts under another revision.
    pub fn revision(mut self, revision: &str) -> Self {
        revision.clone_into(&mut self.revision);
        self
    }

    /// Adds a deployment document at `deployments/<id>.yaml`.
    pub fn deployment(self, deployment: &AppDeployment) -> Self {
        let path = format!("deployments/{}.yaml", deployment.id());
        self.document(&path, deployment.to_yaml())
    }

    /// Adds a raw document, for input that [`AppDeployment`] cannot express.
    pub fn document(mut self, path: &str, yaml: impl Into<Vec<u8>>) -> Self {
        self.deployments.push((path.to_owned(), yaml.into()));
        self
    }

    /// Adds a file that deployments reference by repository-relative path.
    pub fn artifact(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.artifacts.insert(path.to_owned(), content.into());
        self
    }

    /// The request in protobuf JSON, as grpcurl takes it.
    pub fn to_json(&self) -> Value {
        let deployments: Vec<Value> = self
            .deployments
            .iter()
            .map(|(path, yaml)| json!({ "path": path, "yaml": base64(yaml) }))
            .collect();
        let artifacts: serde_json::Map<String, Value> = self
            .artifacts
            .iter()
            .map(|(path, content)| (path.clone(), Value::from(base64(content))))
            .collect();
        json!({ "revision": self.revision, "deployments": deployments, "artifacts": artifacts })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn deployment_yaml_carries_components_and_parameters() {
        let yaml = AppDeployment::new("5f0c2d7e-1111-4a6b-9c1e-123456789abc", "hello")
            .component("app", "apps/hello/compose.yaml")
            .parameter("GREETING", "hi: there", &["app"])
            .to_yaml();
        assert!(yaml.contains("id: \"5f0c2d7e-1111-4a6b-9c1e-123456789abc\"\n"));
        assert!(yaml.contains("    type: \"compose\"\n"));
        assert!(yaml.contains("packageLocation: \"apps/hello/compose.yaml\"\n"));
        assert!(yaml.contains("value: \"hi: there\"\n"));
        assert!(yaml.contains("pointer: \"ENV.GREETING\"\n"));
        assert!(yaml.contains("components: [\"app\"]\n"));
    }

    #[test]
    fn request_json_base64_encodes_documents_and_artifacts() {
        let request = DesiredState::new("r1")
            .document("deployments/a.yaml", "foo")
            .artifact("apps/a/compose.yaml", "fo")
            .to_json();
        assert_eq!(
            request,
            json!({
                "revision": "r1",
                "deployments": [{ "path": "deployments/a.yaml", "yaml": "Zm9v" }],
                "artifacts": { "apps/a/compose.yaml": "Zm8=" }
            })
        );
    }
}
