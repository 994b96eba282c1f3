//! The contract's shapes, to and from the agent's: the only place that builds or reads
//! `woa.deploy.v1` messages on the service side.

use woa_common::margo::{self, DeploymentState, DeploymentStatusManifest, StatusError};
use woa_proto::v1 as pb;

use crate::desired::Incoming;
use crate::rollout::{Change, PendingApproval};
use crate::status::{Applied, CurrentState, DeploymentStatus, DocumentError};

pub(super) fn incoming(request: pb::ApplyDesiredStateRequest) -> Incoming {
    Incoming {
        revision: request.revision,
        documents: (request.deployments.into_iter())
            .map(|d| (d.path, d.yaml))
            .collect(),
        artifacts: request.artifacts.into_iter().collect(),
    }
}

pub(super) fn applied(a: Applied) -> pb::ApplyDesiredStateResponse {
    pb::ApplyDesiredStateResponse {
        revision: a.revision,
        changed: a.changed,
        accepted: a.accepted,
        rejected: a.rejected.iter().map(document_error).collect(),
    }
}

pub(super) fn current_state(s: &CurrentState) -> pb::CurrentState {
    pb::CurrentState {
        revision: s.revision.clone(),
        deployments: s.deployments.iter().map(deployment_status).collect(),
        rejected: s.rejected.iter().map(document_error).collect(),
    }
}

/// The status, with the Margo `DeploymentStatusManifest` woa-sync reports made from it.
fn deployment_status(s: &DeploymentStatus) -> pb::DeploymentStatus {
    let manifest = DeploymentStatusManifest::new(
        &s.deployment_id,
        &s.revision,
        s.state,
        s.error.clone(),
        (s.components.iter())
            .map(|c| margo::ComponentStatus {
                name: c.name.clone(),
                state: c.state,
                error: c.error.clone(),
            })
            .collect(),
    );
    pb::DeploymentStatus {
        deployment_id: s.deployment_id.clone(),
        application_id: s.application_id.clone(),
        revision: s.revision.clone(),
        state: state(s.state) as i32,
        error: s.error.as_ref().map(error),
        components: (s.components.iter())
            .map(|c| pb::ComponentStatus {
                name: c.name.clone(),
                state: state(c.state) as i32,
                error: c.error.as_ref().map(error),
                containers: (c.containers.iter())
                    .map(|c| pb::ContainerStatus {
                        name: c.name.clone(),
                        id: c.id.clone(),
                        image: c.image.clone(),
                        service: c.service.clone(),
                        state: c.state.clone(),
                        health: c.health.clone(),
                        restart_count: c.restart_count,
                        exit_code: c.exit_code,
                    })
                    .collect(),
            })
            .collect(),
        path: s.path.clone(),
        manifest_json: serde_json::to_string(&manifest).unwrap_or_default(),
    }
}

fn document_error(e: &DocumentError) -> pb::DocumentError {
    pb::DocumentError {
        path: e.path.clone(),
        deployment_id: e.deployment_id.clone(),
        error: Some(error(&e.error)),
    }
}

fn error(e: &StatusError) -> pb::Error {
    pb::Error {
        code: e.code.clone(),
        source: e.source.clone(),
        message: e.message.clone(),
    }
}

fn state(s: DeploymentState) -> pb::DeploymentState {
    match s {
        DeploymentState::Pending => pb::DeploymentState::Pending,
        DeploymentState::Installing => pb::DeploymentState::Installing,
        DeploymentState::Installed => pb::DeploymentState::Installed,
        DeploymentState::Failed => pb::DeploymentState::Failed,
        DeploymentState::Removing => pb::DeploymentState::Removing,
        DeploymentState::Removed => pb::DeploymentState::Removed,
    }
}

pub(super) fn pending_approval(p: PendingApproval) -> pb::PendingApproval {
    pb::PendingApproval {
        deployment_id: p.deployment_id,
        application_id: p.application_id,
        revision: p.revision,
        release: p.release,
        current_revision: p.current_revision,
        changes: p.changes.into_iter().map(change).collect(),
        path: p.path,
    }
}

fn change(c: Change) -> pb::Change {
    pb::Change {
        component: c.component,
        service: c.service,
        kind: c.kind.to_string(),
        field: c.field,
        old: c.old,
        new: c.new,
    }
}

/// The capabilities, with the Margo `DeviceCapabilitiesManifest` made from them.
pub(super) fn capabilities(p: margo::DeviceProperties) -> pb::DeviceCapabilities {
    let manifest = margo::DeviceCapabilitiesManifest::new(p.clone());
    pb::DeviceCapabilities {
        id: p.id,
        vendor: p.vendor,
        model_number: p.model_number,
        serial_number: p.serial_number,
        cpus: (p.cpus.into_iter())
            .map(|c| pb::Cpu {
                architecture: c.architecture,
                cores: c.cores,
                frequency_ghz: c.frequency.unwrap_or(0.0),
            })
            .collect(),
        memory: p.memory,
        storage: p.storage,
        peripherals: (p.peripherals.into_iter())
            .map(|x| pb::Peripheral {
                r#type: x.kind,
                manufacturer: x.manufacturer.unwrap_or_default(),
                model: x.model.unwrap_or_default(),
            })
            .collect(),
        interfaces: (p.interfaces.into_iter())
            .map(|i| pb::NetworkInterface {
                r#type: i.kind,
                name: i.name.unwrap_or_default(),
            })
            .collect(),
        supported_runtimes: p.supported_runtimes,
        supported_deployment_types: p.supported_deployment_types,
        manifest_json: serde_json::to_string(&manifest).unwrap_or_default(),
    }
}
