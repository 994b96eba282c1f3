//! Out-of-band provisioning of the device's SVID with the real commands, as an operator does
//! it: `woa-sync margo csr` makes the key and the request, the test kit's WFM signs it as the
//! operator's signer (`POST /admin/sign`), and `woa-sync margo install` puts the SVID where
//! the service finds it with no file named in its configuration.

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use woa_tests::{
    Pki, WfmServer, WfmServerOptions, free_port, spiffe_client, wait_until, woa_sync_binary,
};

/// A device configured with only the fleet manager's URL and trust bundle, and that manager.
struct Device {
    dir: TempDir,
    wfm: WfmServer,
    /// The deployment link's PKI, for `run` (the deployment service itself is not needed).
    _deploy_pki: Pki,
}

impl Device {
    fn new() -> Device {
        let wfm = WfmServer::start(WfmServerOptions {
            binary: Some(env!("CARGO_BIN_EXE_woa-testkit").into()),
            ..WfmServerOptions::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let deploy_pki = Pki::init().unwrap();
        let q = |p: &Path| Value::from(p.display().to_string());
        let config = format!(
            "source = \"margo\"\nstate_dir = {state}\n\
             [poll]\ninterval = \"1s\"\njitter = \"0s\"\n\
             [deploy]\nendpoint = \"https://127.0.0.1:{port}\"\nserver_name = \"localhost\"\n\
             ca = {ca}\ncert = {cert}\nkey = {key}\n\
             [margo]\nurl = {url}\ntrust_bundle = {bundle}\n",
            state = q(&dir.path().join("state")),
            port = free_port().unwrap(),
            ca = q(&deploy_pki.file("ca.pem")),
            cert = q(&deploy_pki.file("sync.pem")),
            key = q(&deploy_pki.file("sync-key.pem")),
            url = Value::from(wfm.url()),
            bundle = q(&wfm.ca_pem()),
        );
        std::fs::write(dir.path().join("sync.toml"), config).unwrap();
        Device {
            dir,
            wfm,
            _deploy_pki: deploy_pki,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(woa_sync_binary().unwrap());
        command
            .arg("--config")
            .arg(self.dir.path().join("sync.toml"))
            .args(args)
            .env_remove("RUST_LOG");
        command
    }

    fn woa_sync(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `spiffe://margo.test/margo/wfm/wfm-1/client/<client>`.
    fn spiffe_id(&self, client: &str) -> String {
        format!("{}/client/{client}", self.wfm.server_spiffe_id())
    }

    fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }

    /// A file of the test's own (requests, signed SVIDs).
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `woa-sync margo csr --spiffe-id <id of client>` to stdout.
    fn csr(&self, client: &str) -> String {
        let output = self.woa_sync(&["margo", "csr", "--spiffe-id", &self.spiffe_id(client)]);
        assert!(output.status.success(), "{}", text(&output));
        self.never_shows_the_key(&output);
        String::from_utf8(output.stdout).unwrap()
    }

    /// The kit signs `csr`; the SVID is written to `name`.
    fn signed(&self, csr: &str, name: &str) -> PathBuf {
        let path = self.file(name);
        std::fs::write(&path, self.wfm.sign(csr).unwrap()).unwrap();
        path
    }

    fn install(&self, svid: &Path) -> Output {
        let output = self.woa_sync(&["margo", "install", "--svid", &svid.display().to_string()]);
        self.never_shows_the_key(&output);
        output
    }

    fn never_shows_the_key(&self, output: &Output) {
        let shown = text(output);
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        if let Ok(key) = std::fs::read_to_string(self.state("margo-svid.key")) {
            for line in key.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!shown.contains(line), "the key is shown: {shown}");
            }
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The URI SANs of the first certificate in a PEM file.
fn uri_sans(path: &Path) -> Vec<String> {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => (*uri).to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn serial(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    pem.parse_x509().unwrap().raw_serial_as_string()
}

/// Kills the `woa-sync run` it holds when dropped, also when the test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_device_provisioned_by_hand_is_known_to_its_fleet_manager() {
    let device = Device::new();
    let id = device.spiffe_id("device-9");

    // The request, to a file: the key is made private, the request names the SPIFFE ID only.
    let request = device.file("device-9.csr");
    let output = device.woa_sync(&[
        "margo",
        "csr",
        "--spiffe-id",
        &id,
        "--out",
        &request.display().to_string(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    device.never_shows_the_key(&output);
    let key = device.state("margo-svid.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let csr = std::fs::read_to_string(&request).unwrap();
    let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
    assert_eq!(
        parsed.params.subject_alt_names,
        [rcgen::SanType::URI(id.as_str().try_into().unwrap())]
    );
    // Asked again (to stdout), the device keeps its key.
    let key_pem = std::fs::read(&key).unwrap();
    assert!(
        device
            .csr("device-9")
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
    );
    assert_eq!(std::fs::read(&key).unwrap(), key_pem);

    let svid = device.signed(&csr, "device-9.pem");
    let output = device.install(&svid);
    assert!(output.status.success(), "{}", text(&output));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains(&id) && said.contains("expires"), "{said}");
    let installed = device.state("margo-svid.pem");
    assert_eq!(uri_sans(&installed), [id.as_str()]);

    // The provisioned pair is a working identity at the fleet manager.
    let client = spiffe_client(
        &std::fs::read(device.wfm.ca_pem()).unwrap(),
        &device.wfm.server_spiffe_id(),
        Some((&std::fs::read(&installed).unwrap(), &key_pem)),
    )
    .unwrap();
    let response = client
        .get(format!("{}/api/v1/deployments", device.wfm.url()))
        .send()
        .unwrap();
    // No manifest yet: the fleet manager's own answer, past the handshake.
    assert_eq!(response.status(), 404);

    // The service finds the pair with no path configured, and a renewal installed while it
    // runs is presented without a restart.
    device.wfm.clear_requests().unwrap();
    let child = device
        .command(&["run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(device.file("run.log")).unwrap())
        .spawn()
        .unwrap();
    let _running = Running(child);
    let log = || std::fs::read_to_string(device.file("run.log")).unwrap_or_default();
    let polled_as = |serial: &str| -> anyhow::Result<bool> {
        let requests = device.wfm.requests()?;
        Ok(requests.iter().any(|r| {
            r["path"] == "/api/v1/deployments"
                && r["clientId"] == "device-9"
                && r["clientSerial"] == serial
        }))
    };
    wait_until(Duration::from_secs(30), || polled_as(&serial(&installed)))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
    let renewed = device.signed(&csr, "device-9-renewed.pem");
    assert!(device.install(&renewed).status.success());
    wait_until(Duration::from_secs(30), || polled_as(&serial(&renewed)))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
    assert!(!log().contains("PRIVATE KEY"));
}

#[test]
fn an_svid_for_another_device_or_key_is_not_installed() {
    let device = Device::new();
    let mine = device.spiffe_id("device-9");
    let svid = device.signed(&device.csr("device-9"), "device-9.pem");
    assert!(device.install(&svid).status.success());
    let installed = device.state("margo-svid.pem");
    let before = std::fs::read(&installed).unwrap();

    // Another client id with the same key: a device does not change identity by a file.
    let theirs = device.spiffe_id("device-10");
    let other = device.signed(&device.csr("device-10"), "device-10.pem");
    let output = device.install(&other);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    for part in [
        other.display().to_string(),
        installed.display().to_string(),
        mine.clone(),
        theirs,
    ] {
        assert!(said.contains(&part), "{part} not in {said}");
    }
    assert_eq!(std::fs::read(&installed).unwrap(), before);

    // The right identity for a key that is not the device's.
    let stranger = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(mine.as_str().try_into().unwrap())];
    let csr = params.serialize_request(&stranger).unwrap().pem().unwrap();
    let foreign = device.signed(&csr, "stranger.pem");
    let output = device.install(&foreign);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains(&foreign.display().to_string()) && said.contains("not the device key"),
        "{said}"
    );
    assert_eq!(std::fs::read(&installed).unwrap(), before);

    // The signer itself signs only devices of its fleet manager.
    let elsewhere = "spiffe://margo.test/margo/wfm/another-wfm/client/device-9";
    params.subject_alt_names = vec![rcgen::SanType::URI(elsewhere.try_into().unwrap())];
    let csr = params.serialize_request(&stranger).unwrap().pem().unwrap();
    let refused = device.wfm.sign(&csr).unwrap_err().to_string();
    assert!(
        refused.contains("400") && refused.contains("problem-types#invalid-request"),
        "{refused}"
    );
    assert!(refused.contains("not a device of this WFM"), "{refused}");
}
