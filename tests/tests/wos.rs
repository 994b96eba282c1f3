//! The reference WOS (`woa-testkit wos`) as a device sees it: enrollment, the status API,
//! git over HTTPS with per-device credentials, faults, the request log and restarts.

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

use std::process::Output;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{CertificateParams, DnType, KeyPair};
use reqwest::StatusCode;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use woa_tests::{RepoAuthKind, WosServer, WosServerOptions};

/// A device's side of enrollment: its key and the answer.
struct Enrolled {
    status: StatusCode,
    answer: Value,
    key_pem: String,
}

impl Enrolled {
    fn client_id(&self) -> &str {
        self.answer["clientId"].as_str().unwrap()
    }

    fn password(&self) -> &str {
        self.answer["repository"]["auth"]["password"]
            .as_str()
            .unwrap()
    }

    fn certificate(&self) -> &str {
        self.answer["certificate"].as_str().unwrap()
    }
}

fn enroll(wos: &WosServer, device_id: &str, token: &str) -> Result<Enrolled> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    let csr = params.serialize_request(&key)?.pem()?;
    let response = wos
        .client()
        .post(wos.url() + "/api/v1/onboarding")
        .json(&json!({
            "apiVersion": "onboarding.margo.org/v1alpha1",
            "kind": "OnboardingRequest",
            "deviceId": device_id,
            "enrollmentToken": token,
            "csr": csr,
        }))
        .send()?;
    let status = response.status();
    let answer = response.json()?;
    Ok(Enrolled {
        status,
        answer,
        key_pem: key.serialize_pem(),
    })
}

fn verifies_against(ca_pem: &[u8], certificate_pem: &str) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    let certificate = CertificateDer::from_pem_slice(certificate_pem.as_bytes())?;
    verifier
        .verify_client_cert(&certificate, &[], UnixTime::now())
        .context("verifying the device certificate")?;
    Ok(())
}

fn repo_url(wos: &WosServer, client_id: &str, credentials: &str) -> String {
    format!(
        "https://{credentials}@localhost:{}/git/{client_id}.git",
        wos.port()
    )
}

fn git(wos: &WosServer, args: &[&str]) -> Output {
    wos.git_command().args(args).output().unwrap()
}

fn status_body(deployment_id: &str, state: &str) -> Value {
    json!({
        "apiVersion": "deployment.margo/v1",
        "kind": "DeploymentStatusManifest",
        "deploymentId": deployment_id,
        "status": {"state": state},
        "components": [{"name": "web", "state": state}],
    })
}

#[test]
fn onboarding_issues_a_device_certificate_and_a_repository() {
    let wos = WosServer::start(WosServerOptions::default()).unwrap();
    let enrolled = enroll(&wos, "device-a", wos.token()).unwrap();
    assert_eq!(enrolled.status, StatusCode::CREATED, "{}", enrolled.answer);
    let client_id = enrolled.client_id();

    let device_ca = std::fs::read(wos.device_ca_path()).unwrap();
    verifies_against(&device_ca, enrolled.certificate()).unwrap();
    // The server CA did not sign it: verification must be able to fail.
    let server_ca = std::fs::read(wos.ca_path()).unwrap();
    assert!(verifies_against(&server_ca, enrolled.certificate()).is_err());

    assert_eq!(
        enrolled.answer["caBundle"].as_str().unwrap().as_bytes(),
        server_ca
    );
    let repository = &enrolled.answer["repository"];
    assert_eq!(
        repository["url"],
        format!("{}/git/{client_id}.git", wos.url())
    );
    assert_eq!(repository["branch"], "main");
    assert_eq!(repository["path"], "deployments");
    assert_eq!(repository["auth"]["type"], "basic");
    assert_eq!(repository["auth"]["username"], client_id);
    assert!(repository["auth"]["password"].as_str().unwrap().len() >= 16);
    assert!(repository["auth"].get("token").is_none());
    assert!(wos.repo_dir(client_id).join("HEAD").is_file());

    let ca: Value = wos
        .client()
        .get(wos.url() + "/api/v1/onboarding/certificate")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ca["certificate"], woa_tests::base64(&server_ca));
}

#[test]
fn a_wrong_enrollment_token_gets_401_problem_json() {
    let wos = WosServer::start(WosServerOptions::default()).unwrap();
    let response = wos
        .client()
        .post(wos.url() + "/api/v1/onboarding")
        .json(&json!({"deviceId": "device-a", "enrollmentToken": "guess", "csr": "x"}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().unwrap();
    assert_eq!(problem["status"], 401);
    assert!(problem["title"].is_string() && problem["detail"].is_string());
    assert!(wos.devices().unwrap().is_empty());

    let response = wos
        .client()
        .post(wos.url() + "/api/v1/onboarding")
        .body("not json")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn enrolling_twice_keeps_one_device_and_its_client_id() {
    let options = WosServerOptions {
        tokens: vec!["first".to_owned(), "second".to_owned()],
        ..WosServerOptions::default()
    };
    let wos = WosServer::start(options).unwrap();
    let first = enroll(&wos, "device-a", "first").unwrap();
    let second = enroll(&wos, "device-a", "second").unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(first.client_id(), second.client_id());
    assert_eq!(first.password(), second.password());
    let other = enroll(&wos, "device-b", "first").unwrap();
    assert_ne!(other.client_id(), first.client_id());

    let devices = wos.devices().unwrap();
    assert_eq!(devices.len(), 2, "{devices:#?}");
    let device = wos.device(first.client_id()).unwrap();
    assert_eq!(device["deviceId"], "device-a");
    assert_eq!(device["enrollments"], 2);
    assert_eq!(device["authType"], "basic");
}

#[test]
fn git_cli_reads_and_pushes_with_credentials_and_is_refused_without() {
    let wos = WosServer::start(WosServerOptions::default()).unwrap();
    let device = enroll(&wos, "device-a", wos.token()).unwrap();
    let other = enroll(&wos, "device-b", wos.token()).unwrap();
    let client_id = device.client_id();
    let commit = wos
        .commit(
            client_id,
            &[(
                "deployments/web.yaml",
                Some(b"kind: ApplicationDeployment\n"),
            )],
            "add web",
        )
        .unwrap();

    let good = repo_url(
        &wos,
        client_id,
        &format!("{client_id}:{}", device.password()),
    );
    let output = git(&wos, &["ls-remote", &good]);
    assert!(output.status.success(), "{output:?}");
    let refs = String::from_utf8_lossy(&output.stdout);
    assert!(
        refs.contains(&format!("{commit}\trefs/heads/main")),
        "{refs}"
    );

    let scratch = tempfile::tempdir().unwrap();
    let clone = scratch.path().join("clone");
    let output = git(&wos, &["clone", "--quiet", &good, clone.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(clone.join("deployments/web.yaml")).unwrap(),
        "kind: ApplicationDeployment\n"
    );

    // The authenticated device can push too (http-backend needs REMOTE_USER for that).
    std::fs::write(clone.join("note.txt"), "from the device").unwrap();
    for args in [
        &["add", "note.txt"][..],
        &[
            "-c",
            "user.name=d",
            "-c",
            "user.email=d@d",
            "commit",
            "-qm",
            "note",
        ],
        &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
    ] {
        let output = wos
            .git_command()
            .current_dir(&clone)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
    }

    wos.clear_requests().unwrap();
    let wrong = repo_url(&wos, client_id, &format!("{client_id}:wrong-password"));
    let output = git(&wos, &["ls-remote", &wrong]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Authentication failed"), "{stderr}");
    let requests = wos.requests().unwrap();
    assert!(requests.iter().all(|r| r["status"] == 401), "{requests:#?}");
    assert!(!requests.is_empty());

    // Another device's valid credentials do not open this repository.
    let foreign = repo_url(
        &wos,
        client_id,
        &format!("{}:{}", other.client_id(), other.password()),
    );
    let output = git(&wos, &["ls-remote", &foreign]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("403"),
        "{output:?}"
    );

    // Rotation: the old password stops working, the new one works.
    let auth = wos.rotate_credentials(client_id).unwrap();
    let output = git(&wos, &["ls-remote", &good]);
    assert!(!output.status.success());
    let rotated = repo_url(
        &wos,
        client_id,
        &format!("{client_id}:{}", auth["password"].as_str().unwrap()),
    );
    let output = git(&wos, &["ls-remote", &rotated]);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn bearer_and_mtls_repositories_take_their_credentials() {
    let wos = WosServer::start(WosServerOptions {
        repo_auth: RepoAuthKind::Bearer,
        ..WosServerOptions::default()
    })
    .unwrap();
    let device = enroll(&wos, "device-a", wos.token()).unwrap();
    let auth = &device.answer["repository"]["auth"];
    assert_eq!(auth["type"], "bearer");
    let url = format!("{}/git/{}.git", wos.url(), device.client_id());
    let header = format!(
        "http.extraHeader=Authorization: Bearer {}",
        auth["token"].as_str().unwrap()
    );
    let output = git(&wos, &["-c", &header, "ls-remote", &url]);
    assert!(output.status.success(), "{output:?}");
    let output = git(
        &wos,
        &[
            "-c",
            "http.extraHeader=Authorization: Bearer nope",
            "ls-remote",
            &url,
        ],
    );
    assert!(!output.status.success());

    let wos = WosServer::start(WosServerOptions {
        repo_auth: RepoAuthKind::Mtls,
        ..WosServerOptions::default()
    })
    .unwrap();
    let device = enroll(&wos, "device-a", wos.token()).unwrap();
    assert_eq!(device.answer["repository"]["auth"], json!({"type": "mtls"}));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), device.certificate()).unwrap();
    std::fs::write(dir.path().join("key.pem"), &device.key_pem).unwrap();
    let url = format!("{}/git/{}.git", wos.url(), device.client_id());
    let cert = format!("http.sslCert={}", dir.path().join("cert.pem").display());
    let key = format!("http.sslKey={}", dir.path().join("key.pem").display());
    let output = git(&wos, &["-c", &cert, "-c", &key, "ls-remote", &url]);
    assert!(output.status.success(), "{output:?}");
    let output = git(&wos, &["ls-remote", &url]);
    assert!(!output.status.success());
}

#[test]
fn status_and_capabilities_need_the_device_certificate_and_are_recorded() {
    let wos = WosServer::start(WosServerOptions::default()).unwrap();
    let device = enroll(&wos, "device-a", wos.token()).unwrap();
    let other = enroll(&wos, "device-b", wos.token()).unwrap();
    let client_id = device.client_id();
    let as_device = wos
        .client_with_identity(device.certificate(), &device.key_pem)
        .unwrap();
    let status_url = format!(
        "{}/api/v1/clients/{client_id}/deployments/dep-1/status",
        wos.url()
    );

    let installing = status_body("dep-1", "installing");
    let installed = status_body("dep-1", "installed");
    for body in [&installing, &installed] {
        let response = as_device.post(&status_url).json(body).send().unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }
    let capabilities = json!({"apiVersion": "device.margo/v1", "kind": "DeviceCapabilitiesManifest",
        "properties": {"id": "device-a", "cpus": [{"architecture": "amd64", "cores": 2}]}});
    let response = as_device
        .put(format!(
            "{}/api/v1/clients/{client_id}/capabilities",
            wos.url()
        ))
        .json(&capabilities)
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");

    let recorded = wos.device(client_id).unwrap();
    assert_eq!(recorded["deployments"]["dep-1"], installed);
    // The last status of one deployment, on its own.
    let admin_status = |deployment: &str| {
        wos.client()
            .get(format!(
                "{}/admin/devices/{client_id}/deployments/{deployment}",
                wos.url()
            ))
            .send()
            .unwrap()
    };
    let one = admin_status("dep-1");
    assert!(one.status().is_success(), "{one:?}");
    assert_eq!(one.json::<Value>().unwrap(), installed);
    assert_eq!(admin_status("dep-2").status(), StatusCode::NOT_FOUND);
    let history = recorded["statusHistory"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["status"], installing);
    assert_eq!(history[0]["deploymentId"], "dep-1");
    assert!(history[0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(recorded["capabilities"], capabilities);
    assert_eq!(recorded["capabilitiesUpdates"], 1);

    let anonymous = wos
        .client()
        .post(&status_url)
        .json(&installed)
        .send()
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    let as_other = wos
        .client_with_identity(other.certificate(), &other.key_pem)
        .unwrap();
    let foreign = as_other.post(&status_url).json(&installed).send().unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let not_json = as_device.post(&status_url).body("{oops").send().unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        wos.device(client_id).unwrap()["statusHistory"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn faults_make_the_wos_unavailable_slow_or_down() {
    let wos = WosServer::start(WosServerOptions::default()).unwrap();
    let ca_url = wos.url() + "/api/v1/onboarding/certificate";

    wos.set_fault(json!({"mode": "unavailable", "retryAfter": 7}))
        .unwrap();
    let response = wos.client().get(&ca_url).send().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // Admin stays reachable under any fault.
    assert!(wos.devices().unwrap().is_empty());

    wos.set_fault(json!({"mode": "unavailable", "scope": "git"}))
        .unwrap();
    assert_eq!(
        wos.client().get(&ca_url).send().unwrap().status(),
        StatusCode::OK
    );
    // The git endpoint answers the fault before any authorization, like a proxy in front.
    let refs_url = wos.url() + "/git/anyone.git/info/refs?service=git-upload-pack";
    let response = wos.client().get(&refs_url).send().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");

    // Throttling: 429 with its own wait, or an outage that names no wait at all.
    wos.set_fault(json!({"mode": "unavailable", "status": 429, "retryAfter": 3, "scope": "git"}))
        .unwrap();
    let response = wos.client().get(&refs_url).send().unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "3");
    wos.set_fault(json!({"mode": "unavailable", "retryAfter": null}))
        .unwrap();
    let response = wos.client().get(&ca_url).send().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_none());
    // A fault that is no error is refused, and the one in force stays.
    assert!(
        wos.set_fault(json!({"mode": "unavailable", "status": 200}))
            .is_err()
    );
    assert_eq!(
        wos.client().get(&ca_url).send().unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    wos.set_fault(json!({"mode": "slow", "delayMs": 1500}))
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        wos.client().get(&ca_url).send().unwrap().status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));

    wos.set_fault(json!({"mode": "down"})).unwrap();
    assert!(wos.client().get(&ca_url).send().is_err());

    wos.set_fault(json!({"mode": "none"})).unwrap();
    assert_eq!(
        wos.client().get(&ca_url).send().unwrap().status(),
        StatusCode::OK
    );

    let statuses: Vec<Value> = wos
        .requests()
        .unwrap()
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert!(
        statuses.contains(&json!(503)) && statuses.contains(&json!(0)),
        "{statuses:?}"
    );
}

#[test]
fn the_request_log_records_requests_with_byte_counts() {
    let wos = WosServer::start(WosServerOptions::default()).unwrap();
    let device = enroll(&wos, "device-a", wos.token()).unwrap();
    let client_id = device.client_id();
    wos.clear_requests().unwrap();
    assert!(wos.requests().unwrap().is_empty());

    let as_device = wos
        .client_with_identity(device.certificate(), &device.key_pem)
        .unwrap();
    let body = status_body("dep-1", "installed").to_string();
    let response = as_device
        .post(format!(
            "{}/api/v1/clients/{client_id}/deployments/dep-1/status?x=1",
            wos.url()
        ))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .unwrap();
    let answer_len = response.bytes().unwrap().len();
    let url = repo_url(
        &wos,
        client_id,
        &format!("{client_id}:{}", device.password()),
    );
    assert!(git(&wos, &["ls-remote", &url]).status.success());

    let requests = wos.requests().unwrap();
    let status = &requests[0];
    assert_eq!(
        status["seq"].as_u64().unwrap() + 1,
        requests[1]["seq"].as_u64().unwrap()
    );
    assert_eq!(status["method"], "POST");
    assert_eq!(
        status["path"],
        format!("/api/v1/clients/{client_id}/deployments/dep-1/status")
    );
    assert_eq!(status["query"], "x=1");
    assert_eq!(status["status"], 201);
    assert_eq!(status["clientId"], client_id);
    assert_eq!(status["bytesIn"], body.len());
    assert_eq!(status["bytesOut"], answer_len);
    assert!(status["durationMs"].is_u64() && status["at"].is_string());

    let git_requests: Vec<&Value> = requests[1..].iter().collect();
    assert!(
        git_requests
            .iter()
            .any(|r| r["path"] == format!("/git/{client_id}.git/info/refs")
                && r["status"] == 200
                && r["clientId"] == client_id
                && r["bytesOut"].as_u64().unwrap() > 0),
        "{git_requests:#?}"
    );
}

#[test]
fn a_restart_keeps_devices_credentials_and_repositories() {
    let mut wos = WosServer::start(WosServerOptions::default()).unwrap();
    let device = enroll(&wos, "device-a", wos.token()).unwrap();
    let client_id = device.client_id().to_owned();
    let commit = wos
        .commit(&client_id, &[("deployments/a.yaml", Some(b"a: 1\n"))], "a")
        .unwrap();
    let as_device = wos
        .client_with_identity(device.certificate(), &device.key_pem)
        .unwrap();
    let status_url = format!(
        "{}/api/v1/clients/{client_id}/deployments/dep-1/status",
        wos.url()
    );
    let response = as_device
        .post(&status_url)
        .json(&status_body("dep-1", "installed"))
        .send()
        .unwrap();
    assert!(response.status().is_success());

    wos.stop().unwrap();
    assert!(
        wos.client()
            .get(wos.url() + "/admin/devices")
            .send()
            .is_err()
    );
    wos.start_again().unwrap();

    let devices = wos.devices().unwrap();
    assert_eq!(devices.len(), 1);
    let recorded = wos.device(&client_id).unwrap();
    assert_eq!(
        recorded["deployments"]["dep-1"]["status"]["state"],
        "installed"
    );
    let url = repo_url(
        &wos,
        &client_id,
        &format!("{client_id}:{}", device.password()),
    );
    let output = git(&wos, &["ls-remote", &url]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(&commit));
    // The device CA and the server CA are the same: the old certificate and trust still work.
    let as_device = wos
        .client_with_identity(device.certificate(), &device.key_pem)
        .unwrap();
    let response = as_device
        .post(&status_url)
        .json(&status_body("dep-1", "removed"))
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    let again = enroll(&wos, "device-a", wos.token()).unwrap();
    assert_eq!(again.client_id(), client_id);
}

#[test]
fn commits_and_force_pushes_move_main() {
    let wos = WosServer::start(WosServerOptions::default()).unwrap();
    let provisioned = wos.provision("device-a").unwrap();
    let client_id = provisioned["clientId"].as_str().unwrap();
    assert!(
        provisioned["privateKey"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    let device_ca = std::fs::read(wos.device_ca_path()).unwrap();
    verifies_against(&device_ca, provisioned["certificate"].as_str().unwrap()).unwrap();

    let first = wos
        .commit(client_id, &[("deployments/a.yaml", Some(b"a\n"))], "a")
        .unwrap();
    let second = wos
        .commit(client_id, &[("deployments/a.yaml", None)], "remove a")
        .unwrap();
    assert_ne!(first, second);
    let main = |wos: &WosServer| {
        let output = git(
            wos,
            &[
                "--git-dir",
                wos.repo_dir(client_id).to_str().unwrap(),
                "rev-parse",
                "main",
            ],
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(main(&wos), second);
    wos.force_push(client_id, &first).unwrap();
    assert_eq!(main(&wos), first);
}
