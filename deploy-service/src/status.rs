//! The status woa-deploy reports: pure functions from the desired state, the rollout records
//! and what the engine runs to the current state; `server` turns it into the contract's shape.

use std::collections::{BTreeMap, HashMap};

use woa_common::margo::{DeploymentState, StatusError};

use crate::desired::{self, Deployment, DesiredState};
use crate::plan;
use crate::rollout::{self, Offer, Phase};
use crate::runtime::{Observed, ObservedContainer, Owner};

/// What runs, deployment by deployment, at the desired revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CurrentState {
    pub(crate) revision: String,
    pub(crate) deployments: Vec<DeploymentStatus>,
    /// Documents that could not name a deployment.
    pub(crate) rejected: Vec<DocumentError>,
}

/// The status of one deployment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeploymentStatus {
    pub(crate) deployment_id: String,
    pub(crate) application_id: String,
    pub(crate) revision: String,
    /// The most severe state of its components.
    pub(crate) state: DeploymentState,
    /// The document's error, else the first failing component's.
    pub(crate) error: Option<StatusError>,
    pub(crate) components: Vec<ComponentStatus>,
    /// The document it came from.
    pub(crate) path: String,
}

/// The status of one component, with its containers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ComponentStatus {
    pub(crate) name: String,
    pub(crate) state: DeploymentState,
    pub(crate) error: Option<StatusError>,
    pub(crate) containers: Vec<ContainerStatus>,
}

/// One container as the engine reports it (`state` is `missing` for one not created yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ContainerStatus {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) image: String,
    pub(crate) service: String,
    pub(crate) state: String,
    pub(crate) health: String,
    pub(crate) restart_count: u32,
    pub(crate) exit_code: i64,
}

/// A document that was refused, with the deployment it names if it names one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DocumentError {
    pub(crate) path: String,
    pub(crate) deployment_id: String,
    pub(crate) error: StatusError,
}

/// The answer to storing a desired state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    pub(crate) revision: String,
    /// False when the revision was already held.
    pub(crate) changed: bool,
    /// Deployments whose documents were usable.
    pub(crate) accepted: Vec<String>,
    pub(crate) rejected: Vec<DocumentError>,
}

/// A deployment that was removed: the revision that left it out, and its components then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredRemoval")]
pub(crate) struct Removal {
    pub(crate) revision: String,
    pub(crate) components: Vec<String>,
}

/// `removed.json` entries as stored, before components were kept too (a bare revision).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StoredRemoval {
    Revision(String),
    Full {
        revision: String,
        components: Vec<String>,
    },
}

impl From<StoredRemoval> for Removal {
    fn from(stored: StoredRemoval) -> Removal {
        match stored {
            StoredRemoval::Revision(revision) => Removal {
                revision,
                components: Vec::new(),
            },
            StoredRemoval::Full {
                revision,
                components,
            } => Removal {
                revision,
                components,
            },
        }
    }
}

impl Removal {
    /// The status reported for the removed deployment `id`.
    pub(crate) fn status(&self, id: &str) -> DeploymentStatus {
        let components = (self.components.iter())
            .map(|name| component(name, DeploymentState::Removed, None, vec![]))
            .collect();
        let mut s = status(id, "", &self.revision, "", None, components);
        s.state = DeploymentState::Removed;
        s
    }
}

/// Deployment `id`, no longer desired at `revision`: how it was removed and its status.
/// `removing` while `observed` holds containers of it; `removed` once none are left, and at
/// once when it was reported but never ran (or its document now names another id). One that
/// was never reported is not reported now either.
pub(crate) fn leaving(
    id: &str,
    revision: &str,
    observed: &Observed,
    removal: Option<Removal>,
    reported: Option<DeploymentStatus>,
) -> (Option<Removal>, Option<DeploymentStatus>) {
    if !observed.containers.is_empty() {
        let mut by_component: BTreeMap<&str, Vec<ContainerStatus>> = BTreeMap::new();
        for c in &observed.containers {
            by_component
                .entry(&c.owner.component)
                .or_default()
                .push(container_status(c));
        }
        let removal = Removal {
            revision: revision.to_string(),
            components: by_component.keys().map(|c| c.to_string()).collect(),
        };
        let components = by_component
            .into_iter()
            .map(|(name, containers)| component(name, DeploymentState::Removing, None, containers))
            .collect();
        let shown = status(id, "", revision, "", None, components);
        return (Some(removal), Some(shown));
    }
    let removal = removal.or_else(|| {
        let reported = reported.filter(|s| s.state != DeploymentState::Removed)?;
        Some(Removal {
            revision: revision.to_string(),
            components: reported.components.iter().map(|c| c.name.clone()).collect(),
        })
    });
    let shown = removal.as_ref().map(|r| r.status(id));
    (removal, shown)
}

/// The status of desired deployment `d` through its rollout: what runs, or why the wanted
/// release is pending or held.
pub(crate) fn release_status(
    d: &Deployment,
    revision: &str,
    (track, offer): (Option<&rollout::Track>, Option<&Offer>),
    observed: &Observed,
    errors: &HashMap<Owner, StatusError>,
) -> DeploymentStatus {
    let every_component = |state| {
        (d.component_names.iter())
            .map(|name| component(name, state, None, vec![]))
            .collect()
    };
    let (id, app, path) = (&d.id, &d.application_id, &d.path);
    match offer {
        Some(Offer::Pending(why)) => {
            let components = every_component(DeploymentState::Pending);
            return status(id, app, revision, path, Some(why.clone()), components);
        }
        Some(Offer::Held(hold)) => {
            let components = every_component(DeploymentState::Failed);
            return status(
                id,
                app,
                revision,
                path,
                Some(hold.error.clone()),
                components,
            );
        }
        _ => {}
    }
    // What runs is the current release, with the newest document's error if it was unusable.
    let shown = match track.and_then(|t| t.current.as_ref()) {
        Some(current) => Deployment {
            error: d.error.clone(),
            component_names: d.component_names.clone(),
            path: d.path.clone(),
            ..current.deployment.clone()
        },
        None => d.clone(),
    };
    let mut s = deployment_status(&shown, revision, observed, errors);
    match track {
        // Up, but not settled yet.
        Some(t) if matches!(t.phase, Phase::Rolling | Phase::Restoring) => {
            for c in &mut s.components {
                if c.state == DeploymentState::Installed {
                    c.state = DeploymentState::Installing;
                }
            }
            if s.state == DeploymentState::Installed {
                s.state = DeploymentState::Installing;
            }
        }
        Some(rollout::Track {
            phase: Phase::Failed,
            hold: Some(hold),
            ..
        }) => {
            s.state = DeploymentState::Failed;
            s.error = Some(hold.error.clone());
        }
        _ => {}
    }
    s
}

/// Documents of `d` that could not name a deployment.
pub(crate) fn rejected_documents(d: &DesiredState) -> Vec<DocumentError> {
    (d.rejected.iter())
        .map(|r| DocumentError {
            path: r.path.clone(),
            deployment_id: String::new(),
            error: r.error.clone(),
        })
        .collect()
}

/// The answer to storing `d`: which documents were usable, and why the others were not.
pub(crate) fn applied(d: &DesiredState, changed: bool) -> Applied {
    let mut rejected = rejected_documents(d);
    rejected.extend(d.deployments.iter().filter_map(|dep| {
        Some(DocumentError {
            path: dep.path.clone(),
            deployment_id: dep.id.clone(),
            error: dep.error.clone()?,
        })
    }));
    Applied {
        revision: d.revision.clone(),
        changed,
        accepted: d
            .deployments
            .iter()
            .filter(|d| d.error.is_none())
            .map(|d| d.id.clone())
            .collect(),
        rejected,
    }
}

pub(crate) fn deployment_status(
    d: &desired::Deployment,
    revision: &str,
    observed: &Observed,
    errors: &HashMap<Owner, StatusError>,
) -> DeploymentStatus {
    let mut components: Vec<ComponentStatus> = Vec::new();
    for c in &d.components {
        let owner = Owner {
            deployment: d.id.clone(),
            component: c.name.clone(),
        };
        let plans = plan::container_plans(d, c);
        let mut containers = Vec::new();
        let mut state = DeploymentState::Installed;
        let mut error = errors.get(&owner).cloned();
        for p in &plans {
            match observed.containers.iter().find(|o| o.name == p.name) {
                Some(o) => {
                    containers.push(container_status(o));
                    let up_to_date = o.spec_hash == p.spec_hash;
                    let completed = o.state == "exited" && o.exit_code == 0;
                    if o.health == "unhealthy" {
                        state = DeploymentState::Failed;
                        error.get_or_insert_with(|| {
                            StatusError::new(
                                crate::error::code::UNHEALTHY,
                                &p.name,
                                format!("container {} is unhealthy", p.name),
                            )
                        });
                    } else if up_to_date
                        && (o.state == "restarting" || (o.state == "exited" && o.exit_code != 0))
                    {
                        state = DeploymentState::Failed;
                        error.get_or_insert_with(|| {
                            StatusError::new(
                                crate::error::code::CONTAINER_EXITED,
                                &p.name,
                                format!(
                                    "container {} exited with code {} (restarted {} times)",
                                    p.name, o.exit_code, o.restart_count
                                ),
                            )
                        });
                    } else if !up_to_date || !(o.is_ready() || completed) {
                        state = state.max_severity(DeploymentState::Installing);
                    }
                }
                None => {
                    state = state.max_severity(DeploymentState::Installing);
                    containers.push(ContainerStatus {
                        name: p.name.clone(),
                        image: p.service.image.clone(),
                        service: p.service.name.clone(),
                        state: "missing".into(),
                        ..Default::default()
                    });
                }
            }
        }
        if error.is_some() {
            state = DeploymentState::Failed;
        }
        components.push(component(&c.name, state, error, containers));
    }
    // The newest document could not be used: its components fail with the document's error
    // while the last good spec (if any) keeps running.
    if let Some(e) = &d.error {
        for name in &d.component_names {
            match components.iter_mut().find(|c| &c.name == name) {
                Some(c) => {
                    c.state = DeploymentState::Failed;
                    c.error = Some(e.clone());
                }
                None => components.push(component(
                    name,
                    DeploymentState::Failed,
                    Some(e.clone()),
                    vec![],
                )),
            }
        }
    }
    status(
        &d.id,
        &d.application_id,
        revision,
        &d.path,
        d.error.clone(),
        components,
    )
}

pub(crate) trait Severity {
    fn max_severity(self, other: Self) -> Self;
}

impl Severity for DeploymentState {
    fn max_severity(self, other: Self) -> Self {
        DeploymentState::most_severe([self, other]).unwrap_or(self)
    }
}

fn component(
    name: &str,
    state: DeploymentState,
    error: Option<StatusError>,
    containers: Vec<ContainerStatus>,
) -> ComponentStatus {
    ComponentStatus {
        name: name.to_string(),
        state,
        error,
        containers,
    }
}

pub(crate) fn status(
    id: &str,
    application_id: &str,
    revision: &str,
    path: &str,
    error: Option<StatusError>,
    components: Vec<ComponentStatus>,
) -> DeploymentStatus {
    let overall = DeploymentState::most_severe(components.iter().map(|c| c.state)).unwrap_or(
        if error.is_some() {
            DeploymentState::Failed
        } else {
            DeploymentState::Installed
        },
    );
    // The overall error: the document's, else the first failing component's.
    let error = error.or_else(|| components.iter().find_map(|c| c.error.clone()));
    DeploymentStatus {
        deployment_id: id.to_string(),
        application_id: application_id.to_string(),
        revision: revision.to_string(),
        state: overall,
        error,
        components,
        path: path.to_string(),
    }
}

pub(crate) fn container_status(c: &ObservedContainer) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        id: c.id.clone(),
        image: c.image.clone(),
        service: c.service.clone(),
        state: c.state.clone(),
        health: c.health.clone(),
        restart_count: c.restart_count,
        exit_code: c.exit_code,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn removals_are_read_in_the_old_form_and_the_new() {
        let stored = r#"{"a": "r1", "b": {"revision": "r2", "components": ["app"]}}"#;
        let removed: BTreeMap<String, Removal> = serde_json::from_str(stored).unwrap();
        assert_eq!(
            removed["a"],
            Removal {
                revision: "r1".into(),
                components: vec![]
            }
        );
        assert_eq!(removed["b"].components, ["app"]);
        let again: BTreeMap<String, Removal> =
            serde_json::from_str(&serde_json::to_string(&removed).unwrap()).unwrap();
        assert_eq!(again, removed);
    }

    #[test]
    fn a_removed_deployment_lists_its_components_as_removed() {
        let components = vec![component("app", DeploymentState::Removed, None, vec![])];
        let s = status("d", "", "r2", "", None, components);
        assert_eq!(s.state, DeploymentState::Removed);
        assert_eq!(s.components[0].name, "app");
    }
}
