//! `/admin/…` on the admin listener: the desired state, what the device sent, switches, and
//! the operator's signer of device SVIDs.
//!
//! Plain JSON (PEM for the signer) without authentication: the listener is bound to loopback.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Response, StatusCode, Uri, header};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use super::{Switches, VersionSwitch, Wfm, internal, json_response, lock, problem};

/// The admin API.
pub(crate) fn router(wfm: Arc<Wfm>) -> Router {
    Router::new()
        .route("/admin/deployments", put(put_deployments))
        .route("/admin/manifest", get(manifest))
        .route("/admin/requests", get(requests).delete(clear_requests))
        .route("/admin/statuses", get(statuses))
        .route("/admin/capabilities", get(capabilities))
        .route("/admin/switches", get(get_switches).put(put_switches))
        .route("/admin/renew-client", post(renew_client))
        .route("/admin/sign", post(sign))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such admin resource",
                None,
            )
        })
        .with_state(wfm)
}

/// `PUT /admin/deployments`: `{"<deploymentId>": "<YAML>", …}` becomes the whole desired
/// state, in a new manifest.
async fn put_deployments(State(wfm): State<Arc<Wfm>>, body: Bytes) -> Response<Body> {
    let deployments: BTreeMap<String, String> = match serde_json::from_slice(&body) {
        Ok(deployments) => deployments,
        Err(err) => {
            return bad(format!(
                "expected {{\"<deploymentId>\": \"<YAML text>\", …}}: {err}"
            ));
        }
    };
    if let Some(id) = deployments.keys().find(|id| !valid_id(id)) {
        return bad(format!(
            "deploymentId {id:?} is not a path segment of [A-Za-z0-9._-]"
        ));
    }
    // The version switch applies to this one manifest, then the version moves normally again.
    let switches = {
        let mut switches = lock(&wfm.switches);
        let snapshot = switches.clone();
        switches.version = VersionSwitch::Normal;
        snapshot
    };
    let deployments = deployments
        .into_iter()
        .map(|(id, yaml)| (id, Bytes::from(yaml)))
        .collect();
    let mut desired = lock(&wfm.desired);
    let rendered = desired
        .replace(deployments, &switches)
        .and_then(|()| desired.render(&wfm.prefix, &switches));
    if let Err(err) = rendered {
        return internal(&err);
    }
    tracing::info!(
        manifest_version = desired.version,
        deployments = desired.deployments.len(),
        "desired state set"
    );
    json_response(StatusCode::OK, &summary(&desired))
}

/// `GET /admin/manifest`: `{"manifestVersion": N, "etag": "…"}` (`etag` null before the first).
async fn manifest(State(wfm): State<Arc<Wfm>>) -> Response<Body> {
    json_response(StatusCode::OK, &summary(&lock(&wfm.desired)))
}

fn summary(desired: &super::Desired) -> Value {
    json!({
        "manifestVersion": desired.version,
        "etag": desired.manifest.as_ref().map(|manifest| manifest.etag.clone()),
    })
}

/// `GET /admin/requests`: every API request since the start or the last clear.
async fn requests(State(wfm): State<Arc<Wfm>>) -> Response<Body> {
    let records = lock(&wfm.requests).clone();
    match serde_json::to_value(records) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(err) => internal(&err.into()),
    }
}

/// `DELETE /admin/requests`
async fn clear_requests(State(wfm): State<Arc<Wfm>>) -> Response<Body> {
    lock(&wfm.requests).clear();
    json_response(StatusCode::OK, &json!({}))
}

/// `GET /admin/statuses`: the last status posted per deployment.
async fn statuses(State(wfm): State<Arc<Wfm>>) -> Response<Body> {
    let statuses = lock(&wfm.statuses).clone();
    json_response(
        StatusCode::OK,
        &Value::Object(statuses.into_iter().collect()),
    )
}

/// `GET /admin/capabilities`: the last capabilities put per device.
async fn capabilities(State(wfm): State<Arc<Wfm>>) -> Response<Body> {
    let capabilities = lock(&wfm.capabilities).clone();
    json_response(
        StatusCode::OK,
        &Value::Object(capabilities.into_iter().collect()),
    )
}

/// `GET /admin/switches`: the switches in force.
async fn get_switches(State(wfm): State<Arc<Wfm>>) -> Response<Body> {
    let switches = lock(&wfm.switches).clone();
    match serde_json::to_value(switches) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(err) => internal(&err.into()),
    }
}

/// `PUT /admin/switches`: any subset of the switches; the others keep their value. A change
/// of `wrongDigest` or `unknownAlgorithm` re-serializes the current manifest at once (same
/// version); `version` applies to the next `PUT /admin/deployments`.
async fn put_switches(State(wfm): State<Arc<Wfm>>, body: Bytes) -> Response<Body> {
    let patch: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(err) => return bad(format!("expected a JSON object of switches: {err}")),
    };
    let (switches, digests_changed) = {
        let mut current = lock(&wfm.switches);
        let mut next = current.clone();
        if let Err(detail) = apply(&mut next, patch) {
            return bad(detail);
        }
        let changed = next.wrong_digest != current.wrong_digest
            || next.unknown_algorithm != current.unknown_algorithm;
        *current = next.clone();
        (next, changed)
    };
    tracing::info!(?switches, "switches set");
    if digests_changed {
        let mut desired = lock(&wfm.desired);
        if desired.manifest.is_some()
            && let Err(err) = desired.render(&wfm.prefix, &switches)
        {
            return internal(&err);
        }
    }
    match serde_json::to_value(switches) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(err) => internal(&err.into()),
    }
}

/// Sets the switches named in `patch`; unknown names are an error, not ignored, so a typo
/// does not silently leave a test without its fault.
fn apply(switches: &mut Switches, patch: serde_json::Map<String, Value>) -> Result<(), String> {
    fn parse<T: serde::de::DeserializeOwned>(name: &str, value: Value) -> Result<T, String> {
        serde_json::from_value(value).map_err(|err| format!("switch {name}: {err}"))
    }
    for (name, value) in patch {
        match name.as_str() {
            "wrongDigest" => switches.wrong_digest = parse(&name, value)?,
            "unknownAlgorithm" => switches.unknown_algorithm = parse(&name, value)?,
            "version" => switches.version = parse(&name, value)?,
            "unavailable" => switches.unavailable = parse(&name, value)?,
            "retired" => switches.retired = parse(&name, value)?,
            "serverIdentity" => switches.server_identity = parse(&name, value)?,
            "trustBundle" => switches.trust_bundle = parse(&name, value)?,
            "refreshHint" => switches.refresh_hint = parse(&name, value)?,
            _ => {
                return Err(format!(
                    "unknown switch {name:?} (wrongDigest, unknownAlgorithm, version, \
                     unavailable, retired, serverIdentity, trustBundle, refreshHint)"
                ));
            }
        }
    }
    Ok(())
}

/// `POST /admin/renew-client`: `{"path": "<dir>/client-renewed.pem"}`.
async fn renew_client(State(wfm): State<Arc<Wfm>>) -> Response<Body> {
    match wfm.pki.renew_client() {
        Ok(path) => {
            tracing::info!(path = %path.display(), "client SVID renewed");
            json_response(StatusCode::OK, &json!({"path": path}))
        }
        Err(err) => internal(&err),
    }
}

/// How long an SVID from `/admin/sign` is valid without `?validDays=N`.
const SIGNED_VALID_DAYS: u32 = 30;

/// `POST /admin/sign[?validDays=N]` with a CSR (PEM) as the body: the operator's signer of
/// out-of-band provisioning. Answers the SVID (PEM) for the request's key and SPIFFE ID,
/// which must be a device of this WFM; anything else is a 400 problem.
async fn sign(State(wfm): State<Arc<Wfm>>, uri: Uri, body: Bytes) -> Response<Body> {
    let days = match valid_days(uri.query()) {
        Ok(days) => days,
        Err(detail) => return bad(detail),
    };
    let Ok(pem) = std::str::from_utf8(&body) else {
        return bad("expected a PEM certificate signing request");
    };
    let request = match rcgen::CertificateSigningRequestParams::from_pem(pem) {
        Ok(request) => request,
        Err(err) => return bad(format!("not a PEM certificate signing request: {err}")),
    };
    let names = &request.params.subject_alt_names;
    let spiffe_id = match &names[..] {
        [rcgen::SanType::URI(uri)] => uri.as_str().to_owned(),
        _ => {
            return bad(format!(
                "the request must name exactly one URI SAN (its SPIFFE ID), not {names:?}"
            ));
        }
    };
    if wfm.client_id_of(&spiffe_id).is_none() {
        return bad(format!(
            "{spiffe_id} is not a device of this WFM ({}<id>)",
            wfm.client_prefix
        ));
    }
    match wfm.pki.sign_client(request.public_key, &spiffe_id, days) {
        Ok(svid) => {
            tracing::info!(%spiffe_id, days, "device SVID signed");
            let mut response = Response::new(Body::from(svid));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            response
        }
        Err(err) => internal(&err),
    }
}

/// `validDays=N` (1..=3650) from a query, [`SIGNED_VALID_DAYS`] without it.
fn valid_days(query: Option<&str>) -> Result<u32, String> {
    let mut days = SIGNED_VALID_DAYS;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("validDays", value)) => {
                days = value
                    .parse()
                    .ok()
                    .filter(|days| (1..=3650).contains(days))
                    .ok_or_else(|| {
                        format!("validDays={value} is not a number of days, 1 to 3650")
                    })?;
            }
            _ => return Err(format!("unknown query parameter {pair:?} (validDays)")),
        }
    }
    Ok(days)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn bad(detail: impl Into<String>) -> Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-request",
        detail,
        Some(false),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn switches_patch_only_what_they_name() {
        let mut switches = Switches::default();
        let patch = json!({"retired": true, "unavailable": {"retryAfter": 7}, "serverIdentity": "other-id"});
        apply(&mut switches, patch.as_object().unwrap().clone()).unwrap();
        assert!(switches.retired);
        assert_eq!(switches.unavailable.map(|u| u.retry_after), Some(7));
        assert_eq!(
            switches.server_identity,
            super::super::pki::ServerIdentity::OtherId
        );
        let patch = json!({"unavailable": null});
        apply(&mut switches, patch.as_object().unwrap().clone()).unwrap();
        assert!(switches.unavailable.is_none());
        assert!(switches.retired);
        let patch = json!({"retird": true});
        assert!(apply(&mut switches, patch.as_object().unwrap().clone()).is_err());
        assert!(!valid_id("a/b"));
        assert!(valid_id("app-1.v2"));
    }

    #[test]
    fn signed_svids_are_valid_for_the_days_asked() {
        assert_eq!(valid_days(None), Ok(SIGNED_VALID_DAYS));
        assert_eq!(valid_days(Some("validDays=2")), Ok(2));
        assert!(valid_days(Some("validDays=0")).is_err());
        assert!(valid_days(Some("days=2")).is_err());
    }
}
