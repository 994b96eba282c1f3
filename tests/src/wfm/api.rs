//! The device API of the Workload Management API 1.0.0-rc.3, and the trust bundle.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::{
    BUNDLE_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Peer, TrustBundleSwitch, Wfm, json_response, lock,
    problem,
};

/// How often a device should fetch the trust bundle again, in seconds.
const REFRESH_HINT: u64 = 3600;

/// `PUT /api/v1/capabilities/{deviceId}`
pub(crate) async fn capabilities(
    State(wfm): State<Arc<Wfm>>,
    Extension(peer): Extension<Peer>,
    Path(device_id): Path<String>,
    body: Bytes,
) -> Response<Body> {
    record_capabilities(&wfm, &peer, device_id, &body)
}

fn record_capabilities(wfm: &Wfm, peer: &Peer, device_id: String, body: &Bytes) -> Response<Body> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => return invalid(format!("the body is not JSON: {err}")),
    };
    if !value.get("properties").is_some_and(Value::is_object) {
        return invalid("the body is not a DeviceCapabilitiesManifest: no properties object");
    }
    let new = lock(&wfm.capabilities)
        .insert(device_id.clone(), value)
        .is_none();
    tracing::info!(%device_id, client_id = ?peer.client_id, new, "capabilities received");
    created_or_ok(new, &json!({"deviceId": device_id}))
}

/// `GET /api/v1/deployments`: the manifest, byte for byte as serialized.
pub(crate) async fn manifest(State(wfm): State<Arc<Wfm>>, headers: HeaderMap) -> Response<Body> {
    if !accepts(&headers, MANIFEST_MEDIA_TYPE) {
        return problem(
            StatusCode::NOT_ACCEPTABLE,
            "not-acceptable",
            format!("the manifest is served as {MANIFEST_MEDIA_TYPE} only"),
            Some(false),
        );
    }
    let Some(manifest) = lock(&wfm.desired).manifest.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "no desired state yet (PUT /admin/deployments on the admin listener)",
            Some(true),
        );
    };
    content(
        &headers,
        manifest.body,
        &manifest.etag,
        MANIFEST_MEDIA_TYPE,
        true,
    )
}

/// `GET /api/v1/deployments/{deploymentId}/{digest}`: a current or earlier document.
pub(crate) async fn document(
    State(wfm): State<Arc<Wfm>>,
    Path((deployment_id, digest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    let bytes = lock(&wfm.desired)
        .documents
        .get(&deployment_id)
        .and_then(|history| history.get(&digest))
        .cloned();
    match bytes {
        Some(bytes) => content(
            &headers,
            bytes,
            &format!("\"{digest}\""),
            "application/yaml",
            false,
        ),
        None => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("deployment {deployment_id} has no document {digest}"),
            Some(false),
        ),
    }
}

/// `GET /api/v1/bundles/{digest}`
pub(crate) async fn bundle(
    State(wfm): State<Arc<Wfm>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let bytes = lock(&wfm.desired).bundles.get(&digest).cloned();
    match bytes {
        Some(bytes) => content(
            &headers,
            bytes,
            &format!("\"{digest}\""),
            BUNDLE_MEDIA_TYPE,
            false,
        ),
        None => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no bundle {digest}"),
            Some(false),
        ),
    }
}

/// `POST /api/v1/deployments/{deploymentId}/status`
pub(crate) async fn status(
    State(wfm): State<Arc<Wfm>>,
    Extension(peer): Extension<Peer>,
    Path(deployment_id): Path<String>,
    body: Bytes,
) -> Response<Body> {
    record_status(&wfm, &peer, deployment_id, &body, true)
}

/// Records a status; rc.3's carries the manifest version it refers to (`rc3`).
fn record_status(
    wfm: &Wfm,
    peer: &Peer,
    deployment_id: String,
    body: &Bytes,
    rc3: bool,
) -> Response<Body> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => return invalid(format!("the body is not JSON: {err}")),
    };
    match value.get("deploymentId").and_then(Value::as_str) {
        Some(id) if id == deployment_id => {}
        Some(id) => {
            return invalid(format!(
                "the body is the status of {id}, the path of {deployment_id}"
            ));
        }
        None => return invalid("the body has no deploymentId"),
    }
    if rc3
        && !value
            .get("adoptedManifestVersion")
            .is_some_and(Value::is_number)
    {
        return invalid("the body has no numeric adoptedManifestVersion");
    }
    let state = value["status"]["state"].as_str().unwrap_or("?").to_owned();
    let new = lock(&wfm.statuses)
        .insert(deployment_id.clone(), value)
        .is_none();
    tracing::info!(%deployment_id, %state, client_id = ?peer.client_id, new, "deployment status received");
    created_or_ok(new, &json!({"deploymentId": deployment_id}))
}

/// `GET /.well-known/margo`: the discovery document of the trust domain.
pub(crate) async fn well_known(State(wfm): State<Arc<Wfm>>, headers: HeaderMap) -> Response<Body> {
    // The spec wants an absolute https URL; the Host the client used reaches us.
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("localhost");
    json_response(
        StatusCode::OK,
        &json!({
            "trustDomain": wfm.trust_domain,
            "trustBundleUri": format!("https://{host}{}/trust-bundle", wfm.prefix),
        }),
    )
}

/// `GET /trust-bundle` (also `/.well-known/spiffe/bundle.json`): the SPIFFE bundle, a JWK Set
/// holding the CA as its `x509-svid` authority, or what the `trustBundle` switch says.
pub(crate) async fn trust_bundle(State(wfm): State<Arc<Wfm>>) -> Response<Body> {
    let switches = lock(&wfm.switches).clone();
    let x5c: Vec<String> = CertificateDer::pem_slice_iter(wfm.pki.ca_pem().as_bytes())
        .filter_map(Result::ok)
        .map(|der| crate::util::base64(&der))
        .collect();
    let point = wfm.pki.ca_public_key();
    // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
    let (x, y) = match point.split_first() {
        Some((4, xy)) if xy.len() == 64 => xy.split_at(32),
        _ => (&[][..], &[][..]),
    };
    let mut key = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": base64url(x),
        "y": base64url(y),
        "use": "x509-svid",
        "x5c": x5c,
    });
    let sequence = match switches.trust_bundle {
        TrustBundleSwitch::Good => 2,
        TrustBundleSwitch::Regressed => 1,
        TrustBundleSwitch::Empty => {
            // The same key as a JWT signer only: a bundle with no X.509 anchor.
            key["use"] = "jwt-svid".into();
            key.as_object_mut().map(|k| k.remove("x5c"));
            3
        }
    };
    json_response(
        StatusCode::OK,
        &json!({
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": switches.refresh_hint.unwrap_or(REFRESH_HINT),
            "keys": [key],
        }),
    )
}

/// Unpadded base64url (RFC 7515 §2), as JWKs carry coordinates.
fn base64url(bytes: &[u8]) -> String {
    crate::util::base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// 200 with `bytes`, or 304 when `If-None-Match` names `etag`.
fn content(
    headers: &HeaderMap,
    bytes: Bytes,
    etag: &str,
    content_type: &'static str,
    private: bool,
) -> Response<Body> {
    let not_modified = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*");
    let mut response = if not_modified {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Body::from(bytes));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    if private {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
    response
}

/// Whether `Accept` admits `media_type` (absent admits everything; `q=0` excludes).
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut values = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .peekable();
    if values.peek().is_none() {
        return true;
    }
    let (kind, _) = media_type.split_once('/').unwrap_or((media_type, ""));
    values.flat_map(|value| value.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let excluded = parts.any(|param| {
            param
                .strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !excluded && (name == media_type || name == "*/*" || name == format!("{kind}/*"))
    })
}

/// 400 `invalid-request`.
fn invalid(detail: impl Into<String>) -> Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-request",
        detail,
        Some(false),
    )
}

fn created_or_ok(new: bool, body: &Value) -> Response<Body> {
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(status, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn accept_admits_the_manifest_type_and_wildcards_only() {
        assert!(accepts(&HeaderMap::new(), MANIFEST_MEDIA_TYPE));
        assert!(accepts(&accept("*/*"), MANIFEST_MEDIA_TYPE));
        assert!(accepts(&accept("application/*;q=0.5"), MANIFEST_MEDIA_TYPE));
        assert!(accepts(
            &accept("text/html, application/vnd.margo.manifest.v1+json"),
            MANIFEST_MEDIA_TYPE
        ));
        assert!(!accepts(&accept("text/html"), MANIFEST_MEDIA_TYPE));
        assert!(!accepts(
            &accept("application/vnd.margo.manifest.v1+json;q=0"),
            MANIFEST_MEDIA_TYPE
        ));
    }

    #[test]
    fn base64url_has_no_padding_or_url_unsafe_characters() {
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}

/// The paths of 1.0.0 and rc.2, `/api/v1/clients/{clientId}/…`: the same resources, for the
/// client the SVID names only.
pub(crate) mod clients {
    use super::*;

    /// 403 unless `client_id` is the caller's.
    fn other_client(peer: &Peer, client_id: &str) -> Option<Response<Body>> {
        (peer.client_id.as_deref() != Some(client_id)).then(|| {
            problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the path names client {client_id:?}, the SVID another"),
                Some(false),
            )
        })
    }

    /// `PUT` (or `POST`) `/api/v1/clients/{clientId}/capabilities`
    pub(crate) async fn capabilities(
        State(wfm): State<Arc<Wfm>>,
        Extension(peer): Extension<Peer>,
        Path(client_id): Path<String>,
        body: Bytes,
    ) -> Response<Body> {
        other_client(&peer, &client_id)
            .unwrap_or_else(|| record_capabilities(&wfm, &peer, client_id, &body))
    }

    /// `GET /api/v1/clients/{clientId}/deployments`
    pub(crate) async fn manifest(
        State(wfm): State<Arc<Wfm>>,
        Extension(peer): Extension<Peer>,
        Path(client_id): Path<String>,
        headers: HeaderMap,
    ) -> Response<Body> {
        match other_client(&peer, &client_id) {
            Some(refused) => refused,
            None => super::manifest(State(wfm), headers).await,
        }
    }

    /// `GET /api/v1/clients/{clientId}/deployments/{deploymentId}/{digest}`
    pub(crate) async fn document(
        State(wfm): State<Arc<Wfm>>,
        Extension(peer): Extension<Peer>,
        Path((client_id, deployment_id, digest)): Path<(String, String, String)>,
        headers: HeaderMap,
    ) -> Response<Body> {
        match other_client(&peer, &client_id) {
            Some(refused) => refused,
            None => super::document(State(wfm), Path((deployment_id, digest)), headers).await,
        }
    }

    /// `POST /api/v1/clients/{clientId}/deployments/{deploymentId}/status`
    pub(crate) async fn status(
        State(wfm): State<Arc<Wfm>>,
        Extension(peer): Extension<Peer>,
        Path((client_id, deployment_id)): Path<(String, String)>,
        body: Bytes,
    ) -> Response<Body> {
        other_client(&peer, &client_id)
            .unwrap_or_else(|| record_status(&wfm, &peer, deployment_id, &body, false))
    }
}
