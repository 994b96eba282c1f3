//! The REST API a device agent talks to (DESIGN.md §3.5).

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Peer, Refusal, Wos, json_response, problem};

/// `POST /api/v1/onboarding` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnboardingRequest {
    device_id: String,
    enrollment_token: String,
    csr: Option<String>,
    certificate: Option<String>,
}

/// Enrolls a device: checks the token, signs its CSR, creates its repository.
pub(crate) async fn onboarding(State(wos): State<Arc<Wos>>, body: Bytes) -> Response<Body> {
    let request: OnboardingRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("the body is not an OnboardingRequest: {err}"),
            );
        }
    };
    if !wos
        .tokens
        .iter()
        .any(|token| token == &request.enrollment_token)
    {
        return problem(StatusCode::UNAUTHORIZED, "unknown enrollment token");
    }
    if request.device_id.trim().is_empty() {
        return problem(StatusCode::BAD_REQUEST, "deviceId is empty");
    }
    let Some(csr) = request.csr else {
        let detail = if request.certificate.is_some() {
            "this WOS signs device certificates from a csr; a device-provided certificate is not supported"
        } else {
            "the request has no csr"
        };
        return problem(StatusCode::BAD_REQUEST, detail);
    };
    // Check the CSR before creating anything, so a bad request leaves no device behind.
    if let Err(err) = wos.pki.sign_csr(&csr, "csr-check") {
        return problem(StatusCode::BAD_REQUEST, err.0);
    }
    let (device, new) = match wos.store.enroll(&request.device_id, wos.repo_auth) {
        Ok(enrolled) => enrolled,
        Err(err) => return internal(&err),
    };
    let certificate = match wos.pki.sign_csr(&csr, &device.client_id) {
        Ok(certificate) => certificate,
        Err(err) => return problem(StatusCode::BAD_REQUEST, err.0),
    };
    if let Err(err) = wos.ensure_repository(&device.client_id).await {
        return internal(&err);
    }
    tracing::info!(
        client_id = %device.client_id,
        device_id = %device.device_id,
        new,
        "device enrolled"
    );
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(
        status,
        &json!({
            "clientId": device.client_id,
            "certificate": certificate,
            "caBundle": wos.pki.server_ca_pem(),
            "repository": wos.repository(&device),
        }),
    )
}

/// `GET /api/v1/onboarding/certificate`: the server CA, base64 of its PEM.
pub(crate) async fn ca_certificate(State(wos): State<Arc<Wos>>) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"certificate": crate::util::base64(wos.pki.server_ca_pem().as_bytes())}),
    )
}

/// `PUT /api/v1/clients/{clientId}/capabilities`
pub(crate) async fn capabilities(
    State(wos): State<Arc<Wos>>,
    Extension(peer): Extension<Peer>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response<Body> {
    let capabilities = match authorized_json(&wos, &peer, &client_id, &body) {
        Ok(value) => value,
        Err(refusal) => return refusal.response(),
    };
    match wos.store.put_capabilities(&client_id, capabilities) {
        Ok(true) => {
            tracing::info!(%client_id, "capabilities received");
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Body::empty())
                .unwrap_or_else(|err| internal(&err.into()))
        }
        Ok(false) => unknown_client(&client_id),
        Err(err) => internal(&err),
    }
}

/// `POST /api/v1/clients/{clientId}/deployments/{deploymentId}/status`
pub(crate) async fn status(
    State(wos): State<Arc<Wos>>,
    Extension(peer): Extension<Peer>,
    Path((client_id, deployment_id)): Path<(String, String)>,
    body: Bytes,
) -> Response<Body> {
    let status = match authorized_json(&wos, &peer, &client_id, &body) {
        Ok(value) => value,
        Err(refusal) => return refusal.response(),
    };
    let state = status["status"]["state"].as_str().unwrap_or("?").to_owned();
    match wos.store.post_status(&client_id, &deployment_id, status) {
        Ok(true) => {
            tracing::info!(%client_id, %deployment_id, %state, "deployment status received");
            json_response(
                StatusCode::CREATED,
                &json!({"clientId": client_id, "deploymentId": deployment_id}),
            )
        }
        Ok(false) => unknown_client(&client_id),
        Err(err) => internal(&err),
    }
}

/// The caller must present the certificate of `client_id`, which must be enrolled, and send
/// JSON; returns the parsed body or the problem to answer.
fn authorized_json(wos: &Wos, peer: &Peer, client_id: &str, body: &[u8]) -> Result<Value, Refusal> {
    match peer.client_id.as_deref() {
        None => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a client certificate issued at enrollment is required",
            ));
        }
        Some(presented) if presented != client_id => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("the client certificate is for {presented}, not {client_id}"),
            ));
        }
        Some(_) => {}
    }
    if wos.store.device(client_id).is_none() {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no enrolled client {client_id}"),
        ));
    }
    serde_json::from_slice(body).map_err(|err| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {err}"),
        )
    })
}

fn unknown_client(client_id: &str) -> Response<Body> {
    problem(
        StatusCode::NOT_FOUND,
        format!("no enrolled client {client_id}"),
    )
}

/// A 500 that logs the cause; the client gets no internals.
pub(crate) fn internal(err: &anyhow::Error) -> Response<Body> {
    tracing::error!(error = format!("{err:#}"), "request failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the WOS failed to handle the request; see its log",
    )
}
