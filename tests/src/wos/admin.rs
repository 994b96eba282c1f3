//! `/admin/…`: inspection, provisioning and fault injection for tests and device owners.
//!
//! Plain JSON without authentication: the test kit trusts whoever reaches it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::internal;
use super::store::Device;
use super::{Fault, Wos, json_response, lock, problem};

/// `GET /admin/devices`: one summary per device.
pub(crate) async fn devices(State(wos): State<Arc<Wos>>) -> Response<Body> {
    let summaries: Vec<Value> = wos
        .store
        .devices()
        .iter()
        .map(|device| {
            json!({
                "clientId": device.client_id,
                "deviceId": device.device_id,
                "authType": device.auth_type,
                "enrollments": device.enrollments,
                "enrolledAt": device.enrolled_at,
                "deployments": device.deployments.len(),
                "repository": wos.repository(device)["url"],
            })
        })
        .collect();
    json_response(StatusCode::OK, &Value::from(summaries))
}

/// `GET /admin/devices/{clientId}`: everything the device reported.
pub(crate) async fn device(
    State(wos): State<Arc<Wos>>,
    Path(client_id): Path<String>,
) -> Response<Body> {
    let Some(device) = wos.store.device(&client_id) else {
        return problem(StatusCode::NOT_FOUND, format!("no client {client_id}"));
    };
    json_response(StatusCode::OK, &detail(&wos, &device))
}

/// `GET /admin/devices/{clientId}/deployments/{deploymentId}`: the last status the device
/// posted for that deployment, as it posted it.
pub(crate) async fn deployment(
    State(wos): State<Arc<Wos>>,
    Path((client_id, deployment_id)): Path<(String, String)>,
) -> Response<Body> {
    let Some(device) = wos.store.device(&client_id) else {
        return problem(StatusCode::NOT_FOUND, format!("no client {client_id}"));
    };
    match device.deployments.get(&deployment_id) {
        Some(status) => json_response(StatusCode::OK, status),
        None => problem(
            StatusCode::NOT_FOUND,
            format!("client {client_id} has posted no status of {deployment_id}"),
        ),
    }
}

fn detail(wos: &Wos, device: &Device) -> Value {
    json!({
        "clientId": device.client_id,
        "deviceId": device.device_id,
        "enrollments": device.enrollments,
        "enrolledAt": device.enrolled_at,
        "authType": device.auth_type,
        "repository": wos.repository(device),
        "capabilities": device.capabilities,
        "capabilitiesUpdates": device.capabilities_updates,
        "deployments": device.deployments,
        "statusHistory": device.status_history,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProvisionRequest {
    device_id: String,
}

/// `POST /admin/devices`: enrolls a device without a token and hands out its key, for
/// configuring an agent by hand.
pub(crate) async fn provision(State(wos): State<Arc<Wos>>, body: Bytes) -> Response<Body> {
    let request: ProvisionRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"deviceId\": \"…\"}}: {err}"),
            );
        }
    };
    if request.device_id.trim().is_empty() {
        return problem(StatusCode::BAD_REQUEST, "deviceId is empty");
    }
    let (device, new) = match wos.store.enroll(&request.device_id, wos.repo_auth) {
        Ok(enrolled) => enrolled,
        Err(err) => return internal(&err),
    };
    let (certificate, private_key) = match wos.pki.issue_device(&device.client_id) {
        Ok(issued) => issued,
        Err(err) => return internal(&err),
    };
    if let Err(err) = wos.ensure_repository(&device.client_id).await {
        return internal(&err);
    }
    tracing::info!(client_id = %device.client_id, device_id = %device.device_id, new, "device provisioned");
    json_response(
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &json!({
            "clientId": device.client_id,
            "certificate": certificate,
            "privateKey": private_key,
            "caBundle": wos.pki.server_ca_pem(),
            "repository": wos.repository(&device),
        }),
    )
}

/// `POST /admin/devices/{clientId}/credentials`: new repository password and token; the old
/// ones stop working at once.
pub(crate) async fn rotate_credentials(
    State(wos): State<Arc<Wos>>,
    Path(client_id): Path<String>,
) -> Response<Body> {
    match wos.store.rotate_credentials(&client_id) {
        Ok(Some(device)) => {
            tracing::info!(%client_id, "repository credentials rotated");
            json_response(StatusCode::OK, &wos.repository(&device)["auth"])
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no client {client_id}")),
        Err(err) => internal(&err),
    }
}

/// `GET /admin/fault`: the fault in force.
pub(crate) async fn get_fault(State(wos): State<Arc<Wos>>) -> Response<Body> {
    let fault = lock(&wos.fault).clone();
    match serde_json::to_value(fault) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(err) => internal(&err.into()),
    }
}

/// `PUT /admin/fault`: e.g. `{"mode":"unavailable","retryAfter":5,"scope":"git"}`, or
/// `{"mode":"unavailable","status":429,"retryAfter":3}` (`"retryAfter":null` sends none).
pub(crate) async fn put_fault(State(wos): State<Arc<Wos>>, body: Bytes) -> Response<Body> {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(fault) => fault,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"mode\": \"none|unavailable|slow|down\", …}}: {err}"),
            );
        }
    };
    if let Some(reason) = fault.invalid() {
        return problem(StatusCode::BAD_REQUEST, reason);
    }
    tracing::info!(?fault, "fault set");
    let value = serde_json::to_value(&fault).unwrap_or(Value::Null);
    *lock(&wos.fault) = fault;
    json_response(StatusCode::OK, &value)
}

/// `GET /admin/requests`: every non-admin request since the start or the last clear.
pub(crate) async fn requests(State(wos): State<Arc<Wos>>) -> Response<Body> {
    let records = lock(&wos.requests).records.clone();
    match serde_json::to_value(records) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(err) => internal(&err.into()),
    }
}

/// `DELETE /admin/requests`
pub(crate) async fn clear_requests(State(wos): State<Arc<Wos>>) -> Response<Body> {
    lock(&wos.requests).records.clear();
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .unwrap_or_else(|err| internal(&err.into()))
}
