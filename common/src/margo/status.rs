//! The Margo DeploymentStatusManifest the agent reports per deployment.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The state of a deployment or of one of its components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentState {
    /// Received, not being applied yet (the error or message says why).
    Pending,
    /// Being applied.
    Installing,
    /// Applied and running.
    Installed,
    /// Could not be applied.
    Failed,
    /// Being removed.
    Removing,
    /// Removed.
    Removed,
}

impl DeploymentState {
    /// How much the state needs attention: failed > removing > installing > pending > removed >
    /// installed. A deployment's overall state is its most severe component state.
    pub fn severity(self) -> u8 {
        match self {
            DeploymentState::Failed => 5,
            DeploymentState::Removing => 4,
            DeploymentState::Installing => 3,
            DeploymentState::Pending => 2,
            DeploymentState::Removed => 1,
            DeploymentState::Installed => 0,
        }
    }

    /// The most severe of `states`, or `None` when there are none.
    pub fn most_severe(states: impl IntoIterator<Item = DeploymentState>) -> Option<Self> {
        states.into_iter().max_by_key(|state| state.severity())
    }
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeploymentState::Pending => "pending",
            DeploymentState::Installing => "installing",
            DeploymentState::Installed => "installed",
            DeploymentState::Failed => "failed",
            DeploymentState::Removing => "removing",
            DeploymentState::Removed => "removed",
        })
    }
}

/// What went wrong, or why a deployment is pending; empty parts are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusError {
    /// A stable code for machines, e.g. `ERR_IMAGE_PULL`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// Where it happened, e.g. the document field or the component.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl StatusError {
    /// A [`StatusError`] from its three parts.
    pub fn new(
        code: impl Into<String>,
        source: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code: code.into(),
            source: source.into(),
            message: message.into(),
        }
    }
}

/// The overall status of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStatus {
    /// The most severe component state (or the deployment's own, before it has components).
    pub state: DeploymentState,
    /// Why, when failed or pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
}

/// The status of one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// The component's name in the deployment.
    pub name: String,
    /// Its state.
    pub state: DeploymentState,
    /// Why, when failed or pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
}

/// The status of one deployment at one revision of the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatusManifest {
    /// `deployment.margo/v1` when written; other drafts' values are read as they are.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Always `DeploymentStatusManifest`; reading anything else fails.
    #[serde(deserialize_with = "status_kind")]
    pub kind: String,
    /// The deployment this is about.
    pub deployment_id: String,
    /// The desired-state revision (commit id) this status refers to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// The overall status.
    pub status: DeploymentStatus,
    /// Every component of the deployment.
    pub components: Vec<ComponentStatus>,
}

const STATUS_KIND: &str = "DeploymentStatusManifest";

fn default_api_version() -> String {
    "deployment.margo/v1".to_owned()
}

fn status_kind<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let kind = String::deserialize(deserializer)?;
    if kind != STATUS_KIND {
        return Err(serde::de::Error::custom(format!(
            "expected kind {STATUS_KIND}, found {kind:?}"
        )));
    }
    Ok(kind)
}

impl DeploymentStatusManifest {
    /// The status of `deployment_id` at `revision`.
    pub fn new(
        deployment_id: impl Into<String>,
        revision: impl Into<String>,
        state: DeploymentState,
        error: Option<StatusError>,
        components: Vec<ComponentStatus>,
    ) -> Self {
        Self {
            api_version: default_api_version(),
            kind: STATUS_KIND.to_owned(),
            deployment_id: deployment_id.into(),
            revision: revision.into(),
            status: DeploymentStatus { state, error },
            components,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeploymentState::*;
    use super::*;

    #[test]
    fn most_severe_follows_the_documented_order() {
        let cases: &[(&[DeploymentState], Option<DeploymentState>)] = &[
            (&[], None),
            (&[Installed], Some(Installed)),
            (&[Installed, Removed, Installed], Some(Removed)),
            (&[Removed, Pending], Some(Pending)),
            (&[Installing, Pending, Installed], Some(Installing)),
            (&[Installing, Removing], Some(Removing)),
            (&[Removing, Failed, Installed], Some(Failed)),
        ];
        for (states, expected) in cases {
            assert_eq!(
                DeploymentState::most_severe(states.iter().copied()),
                *expected,
                "{states:?}"
            );
        }
        let order = [Failed, Removing, Installing, Pending, Removed, Installed];
        assert!(order.windows(2).all(|w| w[0].severity() > w[1].severity()));
    }

    #[test]
    fn states_are_lowercase_in_json_and_display() {
        for state in [Pending, Installing, Installed, Failed, Removing, Removed] {
            let json = serde_json::to_string(&state).expect("serialises");
            assert_eq!(json, format!("\"{state}\""));
            assert_eq!(json, json.to_lowercase());
            assert_eq!(
                serde_json::from_str::<DeploymentState>(&json).ok(),
                Some(state)
            );
        }
    }

    #[test]
    fn serialises_to_the_margo_shape() {
        let manifest = DeploymentStatusManifest::new(
            "a3e2f5dc-912e-494f-8395-52cf3769bc06",
            "0123abc",
            Failed,
            Some(StatusError::new("ERR_PULL", "", "pull failed")),
            vec![
                ComponentStatus {
                    name: "web".into(),
                    state: Installed,
                    error: None,
                },
                ComponentStatus {
                    name: "db".into(),
                    state: Failed,
                    error: Some(StatusError::new("ERR_PULL", "db", "pull failed")),
                },
            ],
        );
        assert_eq!(
            serde_json::to_string(&manifest).expect("serialises"),
            concat!(
                r#"{"apiVersion":"deployment.margo/v1","kind":"DeploymentStatusManifest","#,
                r#""deploymentId":"a3e2f5dc-912e-494f-8395-52cf3769bc06","revision":"0123abc","#,
                r#""status":{"state":"failed","error":{"code":"ERR_PULL","message":"pull failed"}},"#,
                r#""components":[{"name":"web","state":"installed"},"#,
                r#"{"name":"db","state":"failed","error":{"code":"ERR_PULL","source":"db","#,
                r#""message":"pull failed"}}]}"#,
            )
        );
        let pending = DeploymentStatusManifest::new("d", "r", Pending, None, vec![]);
        assert_eq!(
            serde_json::to_value(&pending).expect("serialises")["status"],
            serde_json::json!({"state": "pending"})
        );
    }

    fn example(path: &str) -> serde_json::Result<DeploymentStatusManifest> {
        let file = format!(
            "{}/../testdata/margo-examples/specification/model/examples/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        let json = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        serde_json::from_slice(&json)
    }

    #[test]
    fn reads_the_margo_examples() {
        let manifest = example("valid/DeploymentStatusManifest-001.json").expect("valid");
        assert_eq!(manifest.api_version, "v1");
        assert_eq!(
            manifest.deployment_id,
            "a3e2f5dc-912e-494f-8395-52cf3769bc06"
        );
        assert_eq!(manifest.revision, "");
        assert_eq!(manifest.status.state, Installed);
        assert_eq!(manifest.components.len(), 2);
        assert_eq!(
            manifest.components[1].error,
            Some(StatusError::new(
                "ERR_IMAGE_PULL",
                "",
                "Failed to pull image: access denied"
            ))
        );
        for (n, reason) in [(1, "WrongKind"), (2, "running"), (3, "deploymentId")] {
            let file = format!("invalid/DeploymentStatusManifest-00{n}.json");
            match example(&file) {
                Ok(_) => panic!("{file} was accepted"),
                Err(e) => assert!(e.to_string().contains(reason), "{file}: {e}"),
            }
        }
    }
}
