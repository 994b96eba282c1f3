//! Statuses for documents too broken to name their deployment.
//!
//! The deployment service lists such a document in `CurrentState.rejected` with its path and
//! error, but Margo reports status per deployment id, and the document has none. So it is
//! reported under a pseudo deployment id that anyone can compute from the path alone: the
//! UUIDv5 of the document's repository path (like `deployments/bad.yaml`, UTF-8) in the
//! namespace [`REJECTED_DOCUMENT_NAMESPACE`]. Its status is `failed`, with an error whose
//! message names the path and no components; once the file is gone or valid, `removed` is
//! posted for it once.
//!
//! A document whose path still has a deployment (it was valid before, and that deployment
//! keeps running its last good version) is already reported failed under that deployment's
//! id, so it gets no pseudo id.

use std::collections::BTreeSet;

use uuid::Uuid;
use woa_common::margo::{DeploymentState, DeploymentStatusManifest, StatusError};
use woa_proto::v1 as pb;

/// The namespace of pseudo deployment ids: `bf03dccd-b096-437b-abfa-dc04b10c29c6`. Fixed
/// forever (a WOS may have computed ids with it), and documented in proto/README.md.
pub const REJECTED_DOCUMENT_NAMESPACE: Uuid =
    Uuid::from_u128(0xbf03dccd_b096_437b_abfa_dc04b10c29c6);

/// The code of the error when the deployment service gave none.
const ERR_INVALID_DOCUMENT: &str = "ERR_INVALID_DOCUMENT";

/// The pseudo deployment id of the document at `path` (its repository path).
pub fn pseudo_deployment_id(path: &str) -> String {
    Uuid::new_v5(&REJECTED_DOCUMENT_NAMESPACE, path.as_bytes()).to_string()
}

/// A rejected document as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RejectedDocument {
    /// Its repository path.
    pub(crate) path: String,
    /// Its pseudo deployment id.
    pub(crate) deployment_id: String,
    /// The error as reported: the message always names the path.
    pub(crate) error: StatusError,
    /// The `failed` status manifest (JSON) to post.
    pub(crate) manifest_json: String,
}

/// The documents of `state` that need a pseudo deployment id, in path order.
pub(crate) fn rejected_documents(state: &pb::CurrentState) -> Vec<RejectedDocument> {
    let covered: BTreeSet<&str> = state
        .deployments
        .iter()
        .map(|d| d.path.as_str())
        .filter(|path| !path.is_empty())
        .collect();
    let mut documents: Vec<RejectedDocument> = state
        .rejected
        .iter()
        .filter(|r| r.deployment_id.is_empty() && !covered.contains(r.path.as_str()))
        .map(|r| {
            let deployment_id = pseudo_deployment_id(&r.path);
            let error = status_error(&r.path, r.error.as_ref());
            let manifest = DeploymentStatusManifest::new(
                deployment_id.clone(),
                state.revision.clone(),
                DeploymentState::Failed,
                Some(error.clone()),
                Vec::new(),
            );
            RejectedDocument {
                path: r.path.clone(),
                deployment_id,
                error,
                manifest_json: to_json(&manifest),
            }
        })
        .collect();
    documents.sort_by(|a, b| a.path.cmp(&b.path));
    // Two entries for one path would be one pseudo deployment; the first one tells.
    documents.dedup_by(|a, b| a.path == b.path);
    documents
}

/// The `removed` status of the pseudo deployment `deployment_id` at `revision`.
pub(crate) fn removed(deployment_id: &str, revision: &str) -> String {
    to_json(&DeploymentStatusManifest::new(
        deployment_id,
        revision,
        DeploymentState::Removed,
        None,
        Vec::new(),
    ))
}

/// The deployment service's error, with the path in the message (a WOS shows the message; the
/// source alone may be a field) and as the source when it named none.
fn status_error(path: &str, error: Option<&pb::Error>) -> StatusError {
    let (code, source, message) = error.map_or(("", "", ""), |e| {
        (e.code.as_str(), e.source.as_str(), e.message.as_str())
    });
    let code = if code.is_empty() {
        ERR_INVALID_DOCUMENT
    } else {
        code
    };
    let source = if source.is_empty() { path } else { source };
    let message = match message {
        "" => format!("{path}: the document was rejected"),
        m if m.contains(path) => m.to_owned(),
        m => format!("{path}: {m}"),
    };
    StatusError::new(code, source, message)
}

fn to_json(manifest: &DeploymentStatusManifest) -> String {
    // Plain strings and enums only: serialising cannot fail.
    serde_json::to_string(manifest).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rejected(path: &str, message: &str) -> pb::DocumentError {
        pb::DocumentError {
            path: path.into(),
            deployment_id: String::new(),
            error: Some(pb::Error {
                code: "ERR_INVALID_DOCUMENT".into(),
                source: String::new(),
                message: message.into(),
            }),
        }
    }

    #[test]
    fn the_pseudo_id_is_uuid_v5_of_the_path_in_the_documented_namespace() {
        assert_eq!(
            REJECTED_DOCUMENT_NAMESPACE.to_string(),
            "bf03dccd-b096-437b-abfa-dc04b10c29c6"
        );
        let id = pseudo_deployment_id("deployments/bad.yaml");
        let parsed = Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
        assert_eq!(id, pseudo_deployment_id("deployments/bad.yaml"));
        assert_ne!(id, pseudo_deployment_id("deployments/other.yaml"));
        // The example in proto/README.md, computed independently (Python's uuid.uuid5), so a
        // WOS can check its own code against it.
        assert_eq!(id, "5244e272-6e0f-55b1-beea-7266acbe0018");
    }

    #[test]
    fn rejected_documents_are_failed_statuses_naming_their_path() {
        let state = pb::CurrentState {
            revision: "abc".into(),
            deployments: vec![pb::DeploymentStatus {
                deployment_id: "d1".into(),
                path: "deployments/was-good.yaml".into(),
                ..Default::default()
            }],
            rejected: vec![
                rejected("deployments/bad.yaml", "did not find expected node content"),
                // Still reported failed under the deployment it had.
                rejected(
                    "deployments/was-good.yaml",
                    "deployments/was-good.yaml: broken",
                ),
            ],
        };
        let documents = rejected_documents(&state);
        assert_eq!(documents.len(), 1, "{documents:#?}");
        let bad = &documents[0];
        assert_eq!(
            bad.deployment_id,
            pseudo_deployment_id("deployments/bad.yaml")
        );
        let manifest: serde_json::Value = serde_json::from_str(&bad.manifest_json).unwrap();
        assert_eq!(manifest["kind"], "DeploymentStatusManifest");
        assert_eq!(manifest["deploymentId"], bad.deployment_id.as_str());
        assert_eq!(manifest["revision"], "abc");
        assert_eq!(manifest["status"]["state"], "failed");
        assert_eq!(manifest["status"]["error"]["code"], "ERR_INVALID_DOCUMENT");
        assert_eq!(
            manifest["status"]["error"]["source"],
            "deployments/bad.yaml"
        );
        assert_eq!(
            manifest["status"]["error"]["message"],
            "deployments/bad.yaml: did not find expected node content"
        );
        assert_eq!(manifest["components"], serde_json::json!([]));

        let gone: serde_json::Value =
            serde_json::from_str(&removed(&bad.deployment_id, "def")).unwrap();
        assert_eq!(gone["status"]["state"], "removed");
        assert_eq!(gone["revision"], "def");
        assert!(gone["status"].get("error").is_none());
    }
}
