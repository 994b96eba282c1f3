//! The reference WFM (`woa-testkit wfm`) behaves as the Workload Management API 1.0.0-rc.3
//! says, so agent tests against it test the agent, not the kit.

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::io::Read;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use woa_tests::{WfmServer, WfmServerOptions, spiffe_client};

const PREFIX: &str = "/v1alpha2/margo";
const MANIFEST_TYPE: &str = "application/vnd.margo.manifest.v1+json";

fn start(prefix: &str) -> WfmServer {
    WfmServer::start(WfmServerOptions {
        prefix: prefix.to_owned(),
        binary: Some(env!("CARGO_BIN_EXE_woa-testkit").into()),
        ..WfmServerOptions::default()
    })
    .unwrap()
}

fn document(id: &str, revision: u32) -> String {
    format!(
        "apiVersion: margo.org/v1-alpha1\nkind: ApplicationDeployment\nmetadata:\n  name: {id}\n  annotations:\n    revision: \"{revision}\"\n"
    )
}

fn deployments(ids: &[&str], revision: u32) -> BTreeMap<String, String> {
    ids.iter()
        .map(|id| ((*id).to_owned(), document(id, revision)))
        .collect()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `https://127.0.0.1:PORT`: the manifest's URLs are paths on it, prefix included.
fn origin(server: &WfmServer) -> String {
    format!("https://127.0.0.1:{}", server.port())
}

/// The manifest's headers and body, after checking its ETag is the digest of its bytes.
fn get_manifest(server: &WfmServer, client: &Client) -> (HeaderMap, Value) {
    let response = client
        .get(format!("{}/api/v1/deployments", server.url()))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let body = response.bytes().unwrap();
    assert_eq!(headers["etag"], format!("\"{}\"", digest(&body)));
    (headers, serde_json::from_slice(&body).unwrap())
}

fn problem(response: Response, status: StatusCode, kind: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string());
    assert_eq!(
        body["type"],
        format!("https://docs.margo.org/specification/problem-types#{kind}")
    );
    body
}

#[test]
fn the_manifest_has_an_etag_of_its_bytes_and_answers_304_when_unchanged() {
    let server = start(PREFIX);
    let set = server
        .set_deployments(&deployments(&["app-a", "app-b"], 1))
        .unwrap();
    let client = server.api_client().unwrap();

    let (headers, manifest) = get_manifest(&server, &client);
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(headers["content-type"], MANIFEST_TYPE);
    assert_eq!(headers["cache-control"], "private");
    assert_eq!(set["etag"], etag);
    assert_eq!(server.manifest().unwrap()["etag"], etag);
    assert_eq!(manifest["manifestVersion"], 1);
    assert_eq!(manifest["deployments"].as_array().unwrap().len(), 2);

    let again = client
        .get(format!("{}/api/v1/deployments", server.url()))
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().unwrap().is_empty());

    let refused = client
        .get(format!("{}/api/v1/deployments", server.url()))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    problem(refused, StatusCode::NOT_ACCEPTABLE, "not-acceptable");
    let accepted = client
        .get(format!("{}/api/v1/deployments", server.url()))
        .header("Accept", MANIFEST_TYPE)
        .send()
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::OK);

    let requests = server.requests().unwrap();
    assert!(requests.iter().all(|r| r["clientId"] == "device-1"));
    assert_eq!(requests[0]["path"], format!("{PREFIX}/api/v1/deployments"));
    assert_eq!(requests[1]["status"], 304);
    server.clear_requests().unwrap();
    assert!(server.requests().unwrap().is_empty());
}

#[test]
fn documents_and_the_bundle_are_the_bytes_their_digests_name() {
    let server = start(PREFIX);
    let first = deployments(&["app-a", "app-b"], 1);
    server.set_deployments(&first).unwrap();
    let client = server.api_client().unwrap();
    let (_, manifest) = get_manifest(&server, &client);

    let mut old_urls = Vec::new();
    for reference in manifest["deployments"].as_array().unwrap() {
        let id = reference["deploymentId"].as_str().unwrap();
        let url = reference["url"].as_str().unwrap();
        assert_eq!(
            url,
            format!(
                "{PREFIX}/api/v1/deployments/{id}/{}",
                reference["digest"].as_str().unwrap()
            )
        );
        let response = client.get(origin(&server) + url).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/yaml");
        let bytes = response.bytes().unwrap();
        assert_eq!(reference["digest"], digest(&bytes));
        assert_eq!(reference["sizeBytes"], bytes.len());
        assert_eq!(bytes, first[id].as_bytes());
        old_urls.push(url.to_owned());
    }

    let bundle = &manifest["bundle"];
    assert_eq!(
        bundle["mediaType"],
        "application/vnd.margo.bundle.v1+tar+gzip"
    );
    let response = client
        .get(origin(&server) + bundle["url"].as_str().unwrap())
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["etag"],
        format!("\"{}\"", bundle["digest"].as_str().unwrap())
    );
    let bytes = response.bytes().unwrap();
    assert_eq!(bundle["digest"], digest(&bytes));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = String::new();
        entry.read_to_string(&mut content).unwrap();
        files.insert(name, content);
    }
    let expected: BTreeMap<String, String> = first
        .iter()
        .map(|(id, yaml)| (format!("{id}.yaml"), yaml.clone()))
        .collect();
    assert_eq!(files, expected);

    // A new desired state keeps the old documents reachable by their digest.
    server.set_deployments(&deployments(&["app-a"], 2)).unwrap();
    for url in &old_urls {
        let response = client.get(origin(&server) + url).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
    }
    let unknown = client
        .get(format!(
            "{}/api/v1/deployments/app-a/{}",
            server.url(),
            digest(b"never served")
        ))
        .send()
        .unwrap();
    problem(unknown, StatusCode::NOT_FOUND, "not-found");
    let unknown = client
        .get(format!("{}/api/v1/bundles/{}", server.url(), digest(b"x")))
        .send()
        .unwrap();
    problem(unknown, StatusCode::NOT_FOUND, "not-found");

    // No deployments: the bundle is null, never an empty archive.
    server.set_deployments(&BTreeMap::new()).unwrap();
    let (_, manifest) = get_manifest(&server, &client);
    assert_eq!(manifest["bundle"], Value::Null);
    assert_eq!(manifest["deployments"], json!([]));
}

#[test]
fn the_version_goes_up_on_each_change_and_down_or_stays_when_switched() {
    let server = start("");
    let client = server.api_client().unwrap();
    let version = || get_manifest(&server, &client).1["manifestVersion"].clone();
    let set = deployments(&["app-a"], 1);

    server.set_deployments(&set).unwrap();
    assert_eq!(version(), 1);
    server.set_deployments(&set).unwrap();
    assert_eq!(version(), 2);
    server.switches(json!({"version": "down"})).unwrap();
    assert_eq!(version(), 2, "the switch applies to the next manifest");
    server.set_deployments(&deployments(&["app-a"], 2)).unwrap();
    assert_eq!(version(), 1);
    server.switches(json!({"version": "same"})).unwrap();
    server.set_deployments(&deployments(&["app-a"], 3)).unwrap();
    assert_eq!(version(), 1);
    // One manifest per switch: then it moves up again.
    server.set_deployments(&set).unwrap();
    assert_eq!(version(), 2);
    assert_eq!(server.manifest().unwrap()["manifestVersion"], 2);
}

#[test]
fn wrong_and_unknown_digests_are_advertised_when_switched() {
    let server = start(PREFIX);
    server.set_deployments(&deployments(&["app-a"], 1)).unwrap();
    let client = server.api_client().unwrap();

    server.switches(json!({"wrongDigest": true})).unwrap();
    let (_, manifest) = get_manifest(&server, &client);
    let reference = &manifest["deployments"][0];
    let bytes = client
        .get(origin(&server) + reference["url"].as_str().unwrap())
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_ne!(reference["digest"], digest(&bytes));
    assert_eq!(bytes, document("app-a", 1).as_bytes());

    server
        .switches(json!({"wrongDigest": false, "unknownAlgorithm": true}))
        .unwrap();
    let (_, manifest) = get_manifest(&server, &client);
    let advertised = manifest["deployments"][0]["digest"].as_str().unwrap();
    assert_eq!(
        advertised,
        digest(document("app-a", 1).as_bytes()).replace("sha256:", "sha999:")
    );
    assert!(
        manifest["bundle"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha999:")
    );
}

#[test]
fn statuses_must_name_their_deployment_and_adopted_version() {
    let server = start(PREFIX);
    let client = server.api_client().unwrap();
    let url = format!("{}/api/v1/deployments/app-a/status", server.url());
    let status = json!({
        "deploymentId": "app-a",
        "adoptedManifestVersion": 1,
        "status": {"state": "installed"},
        "components": [],
    });

    let other = json!({"deploymentId": "app-b", "adoptedManifestVersion": 1});
    let body = problem(
        client.post(&url).json(&other).send().unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    );
    assert_eq!(body["retryable"], false);
    let unversioned = json!({"deploymentId": "app-a"});
    problem(
        client.post(&url).json(&unversioned).send().unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    );
    problem(
        client.post(&url).body("{not json").send().unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    );

    assert_eq!(
        client.post(&url).json(&status).send().unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        client.post(&url).json(&status).send().unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(server.statuses().unwrap(), json!({"app-a": status}));

    let capabilities_url = format!("{}/api/v1/capabilities/device-1", server.url());
    let capabilities = json!({"properties": {"id": "device-1", "vendor": "v", "modelNumber": "m", "serialNumber": "s"}});
    assert_eq!(
        client
            .put(&capabilities_url)
            .json(&capabilities)
            .send()
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        client
            .put(&capabilities_url)
            .json(&capabilities)
            .send()
            .unwrap()
            .status(),
        StatusCode::OK
    );
    problem(
        client.put(&capabilities_url).body("[").send().unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    );
    assert_eq!(
        server.capabilities().unwrap(),
        json!({"device-1": capabilities})
    );
}

#[test]
fn clients_without_a_device_svid_of_this_wfm_are_refused() {
    let server = start(PREFIX);
    server.set_deployments(&deployments(&["app-a"], 1)).unwrap();
    let ca = std::fs::read(server.ca_pem()).unwrap();
    let url = format!("{}/api/v1/deployments", server.url());

    let anonymous = spiffe_client(&ca, &server.server_spiffe_id(), None).unwrap();
    assert!(anonymous.get(&url).send().is_err());

    // The right SPIFFE ID from a CA outside the trust bundle.
    let foreign_ca = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_cert = params.self_signed(&foreign_ca).unwrap();
    let foreign = rcgen::Issuer::from_ca_cert_pem(&foreign_cert.pem(), foreign_ca).unwrap();
    let device_id = format!("{}/client/device-1", server.server_spiffe_id());
    let (cert, key) = leaf(&device_id, &foreign);
    let client = spiffe_client(
        &ca,
        &server.server_spiffe_id(),
        Some((cert.as_bytes(), key.as_bytes())),
    )
    .unwrap();
    assert!(client.get(&url).send().is_err());

    // The right CA, but not a device of this WFM: TLS passes, the API refuses.
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(server.dir().join(woa_tests::wfm::CA_KEY_FILE)).unwrap(),
    )
    .unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&String::from_utf8(ca.clone()).unwrap(), ca_key).unwrap();
    let (cert, key) = leaf(
        "spiffe://margo.test/margo/wfm/another-wfm/client/device-1",
        &issuer,
    );
    let client = spiffe_client(
        &ca,
        &server.server_spiffe_id(),
        Some((cert.as_bytes(), key.as_bytes())),
    )
    .unwrap();
    let body = problem(
        client.get(&url).send().unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(body["retryable"], false);
    assert!(server.log().contains("TLS handshake failed"));
}

fn leaf(spiffe_id: &str, issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn unavailable_answers_503_with_retry_after_and_retired_403() {
    let server = start(PREFIX);
    server.set_deployments(&deployments(&["app-a"], 1)).unwrap();
    let client = server.api_client().unwrap();
    let url = format!("{}/api/v1/deployments", server.url());

    server
        .switches(json!({"unavailable": {"retryAfter": 7}}))
        .unwrap();
    let response = client.get(&url).send().unwrap();
    assert_eq!(response.headers()["retry-after"], "7");
    let body = problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
    );
    assert_eq!(body["retryable"], true);

    server
        .switches(json!({"unavailable": null, "retired": true}))
        .unwrap();
    let body = problem(
        client.get(&url).send().unwrap(),
        StatusCode::FORBIDDEN,
        "client-retired",
    );
    assert_eq!(body["retryable"], false);

    server.switches(json!({"retired": false})).unwrap();
    assert_eq!(client.get(&url).send().unwrap().status(), StatusCode::OK);
    assert!(server.switches(json!({"retird": true})).is_err());
}

#[test]
fn the_api_lives_under_the_prefix_only() {
    let server = start(PREFIX);
    server.set_deployments(&deployments(&["app-a"], 1)).unwrap();
    let client = server.api_client().unwrap();
    assert!(server.url().ends_with(PREFIX));
    let bare = client
        .get(format!("{}/api/v1/deployments", origin(&server)))
        .send()
        .unwrap();
    problem(bare, StatusCode::NOT_FOUND, "not-found");
    let prefixed = client
        .get(format!("{}/api/v1/deployments", server.url()))
        .send()
        .unwrap();
    assert_eq!(prefixed.status(), StatusCode::OK);
}

#[test]
fn a_wrong_server_identity_is_refused_by_a_spiffe_client() {
    let server = start("");
    server.set_deployments(&deployments(&["app-a"], 1)).unwrap();
    let url = format!("{}/api/v1/deployments", server.url());
    for (identity, reason) in [
        ("other-id", "ApplicationVerificationFailure"),
        ("untrusted", "UnknownIssuer"),
        ("expired", "Expired"),
    ] {
        server
            .switches(json!({"serverIdentity": identity}))
            .unwrap();
        // A new client: a pooled connection would keep the certificate it saw first.
        let result = server.api_client().unwrap().get(&url).send();
        let err = result
            .err()
            .unwrap_or_else(|| panic!("{identity} was accepted"));
        assert!(format!("{err:?}").contains(reason), "{identity}: {err:?}");
    }
    server.switches(json!({"serverIdentity": "good"})).unwrap();
    let response = server.api_client().unwrap().get(&url).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn the_renewed_client_svid_keeps_the_key_and_works() {
    let mut server = start(PREFIX);
    server.set_deployments(&deployments(&["app-a"], 1)).unwrap();
    let renewed = server.renew_client().unwrap();
    assert_eq!(renewed, server.dir().join("client-renewed.pem"));

    let parse = |pem: &[u8]| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        (
            cert.public_key().raw.to_vec(),
            cert.raw_serial().to_vec(),
            cert.subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .map(|name| format!("{name:?}"))
                .collect::<Vec<_>>(),
        )
    };
    let original = std::fs::read(server.client_cert()).unwrap();
    let new = std::fs::read(&renewed).unwrap();
    let (old_key, old_serial, old_sans) = parse(&original);
    let (new_key, new_serial, new_sans) = parse(&new);
    assert_eq!(old_key, new_key);
    assert_ne!(old_serial, new_serial);
    assert_eq!(old_sans, new_sans);
    assert_eq!(old_sans.len(), 1);

    let ca = std::fs::read(server.ca_pem()).unwrap();
    let key = std::fs::read(server.client_key()).unwrap();
    let client = spiffe_client(&ca, &server.server_spiffe_id(), Some((&new, &key))).unwrap();
    let url = format!("{}/api/v1/deployments", server.url());
    assert_eq!(client.get(&url).send().unwrap().status(), StatusCode::OK);

    // A restart keeps the PKI, so the device's credentials still work.
    server.start_again().unwrap();
    assert_eq!(std::fs::read(server.ca_pem()).unwrap(), ca);
    server.set_deployments(&deployments(&["app-a"], 1)).unwrap();
    let response = server.api_client().unwrap().get(&url).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn the_trust_domain_is_discoverable_with_its_bundle() {
    let server = start(PREFIX);
    let client = server.api_client().unwrap();
    let discovery: Value = client
        .get(format!("{}/.well-known/margo", origin(&server)))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(discovery["trustDomain"], "margo.test");
    let bundle_url = discovery["trustBundleUri"].as_str().unwrap();
    assert_eq!(
        bundle_url,
        format!("https://127.0.0.1:{}{PREFIX}/trust-bundle", server.port())
    );
    let bundle: Value = client.get(bundle_url).send().unwrap().json().unwrap();
    let key = &bundle["keys"][0];
    assert_eq!(key["use"], "x509-svid");
    assert!(bundle["spiffe_sequence"].is_u64());
    assert!(bundle["spiffe_refresh_hint"].is_u64());
    let ca_pem = std::fs::read(server.ca_pem()).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap();
    let x5c = key["x5c"][0].as_str().unwrap();
    assert_eq!(x5c, woa_tests::base64(&pem.contents));

    // The switches: no X.509 anchor, a sequence below the one before, a refresh hint.
    let fetch = || -> Value { client.get(bundle_url).send().unwrap().json().unwrap() };
    server
        .switches(json!({"trustBundle": "empty", "refreshHint": 1}))
        .unwrap();
    let empty = fetch();
    assert_eq!(empty["spiffe_refresh_hint"], 1);
    let keys = empty["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .all(|k| k["use"] != "x509-svid" && k.get("x5c").is_none()),
        "{empty}"
    );
    server
        .switches(json!({"trustBundle": "regressed"}))
        .unwrap();
    let regressed = fetch();
    assert!(regressed["spiffe_sequence"].as_u64() < bundle["spiffe_sequence"].as_u64());
    assert_eq!(regressed["keys"][0]["x5c"][0], x5c);
}
