//! woa against a fleet manager speaking the Margo Workload Management API (rc.3): an app
//! whose compose package is an OCI artifact is deployed, updated and removed through
//! manifests; a manifest that does not verify, a version that goes down and a server that is
//! not the fleet manager change nothing that runs.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use woa_tests::{
    AppDeployment, Cleanup, Deploy, DeployOptions, Registry, Sync, SyncOptions, WfmServer,
    WfmServerOptions, answer, containers, tar_gz, testapp_image, wait_answer, wait_until,
};

const COMPOSE_MEDIA_TYPE: &str = "application/vnd.org.margo.component.compose.tar+gzip";
const PREFIX: &str = "/v1alpha2/margo";
/// The device's OpenTelemetry collector, as apps are told of it.
const COLLECTOR: &str = "http://otel-collector.local:4318";

/// The device's two services and the fleet manager, with an app registry.
struct Device {
    registry: Registry,
    deploy: Deploy,
    wfm: WfmServer,
    sync: Sync,
}

/// How the device is set up to speak to the fleet manager.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// rc.3 with the trust bundle as a file.
    Rc3,
    /// The device starts trusting the trust domain's CA and a stranger's (the bootstrap
    /// anchors), and fetches the trust domain's bundle, which names only the former.
    FetchedBundle,
    /// The `/api/v1/clients/{clientId}/…` paths of 1.0.0.
    ClientsPaths,
}

impl Device {
    fn start(server_identity: &str, setup: Setup) -> Result<Device> {
        let registry = Registry::start()?;
        let deploy = Deploy::start_with(&DeployOptions {
            registries: vec![registry.login()],
            extra: format!("[otel]\nendpoint = \"{COLLECTOR}\"\n"),
            ..Default::default()
        })?;
        let wfm = WfmServer::start(WfmServerOptions {
            prefix: PREFIX.into(),
            ..Default::default()
        })?;
        wfm.switches(json!({"serverIdentity": server_identity}))?;
        let q = |p: std::path::PathBuf| Value::from(p.display().to_string());
        let mut trust = format!("trust_bundle = {}\n", q(wfm.ca_pem()));
        if setup == Setup::FetchedBundle {
            let bootstrap = wfm.dir().join("bootstrap.pem");
            let stranger = std::fs::read_to_string(wfm.dir().join("untrusted-ca.pem"))?;
            std::fs::write(
                &bootstrap,
                std::fs::read_to_string(wfm.ca_pem())? + &stranger,
            )?;
            trust = format!(
                "trust_bundle = {}\nfetch_trust_bundle = true\n",
                q(bootstrap)
            );
        }
        if setup == Setup::ClientsPaths {
            trust.push_str("paths = \"clients\"\n");
        }
        let sync = Sync::new(
            &deploy,
            &SyncOptions {
                top: "source = \"margo\"\n".into(),
                extra: format!(
                    "[margo]\nurl = {}\nsvid = {}\nsvid_key = {}\n{trust}",
                    Value::from(wfm.url()),
                    q(wfm.client_cert()),
                    q(wfm.client_key()),
                ),
                ..Default::default()
            },
        )?;
        Ok(Device {
            registry,
            deploy,
            wfm,
            sync,
        })
    }

    /// A device running `id` at manifest version 1, answering "one", through the API.
    fn running(id: &str) -> Result<Device> {
        let mut device = Device::start("good", Setup::Rc3)?;
        let one = device.push(id, "1.0.0", "one")?;
        let version = device.offer(id, &one)?;
        device.sync.start()?;
        device.wait_status(id, "installed", version)?;
        wait_answer(id, "one")?;
        Ok(device)
    }

    /// Pushes an app answering `message` as the artifact `apps/<id>:<tag>`; its reference.
    fn push(&self, id: &str, tag: &str, message: &str) -> Result<String> {
        let image = testapp_image()?;
        let compose = format!(
            "services:\n  web:\n    image: {image}\n    command: [\"serve\", \"8080\"]\n    \
             environment:\n      MESSAGE: \"{message}\"\n    ports: [\"127.0.0.1::8080\"]\n"
        );
        let layer = tar_gz(&[("web/compose.yaml", compose.as_bytes())])?;
        let repository = format!("apps/{}", &id[..8]);
        (self.registry).push_artifact(&repository, tag, COMPOSE_MEDIA_TYPE, &layer)
    }

    /// Makes `reference` the one deployment `id` of the next manifest; its version.
    fn offer(&self, id: &str, reference: &str) -> Result<u64> {
        let document = AppDeployment::new(id, "web")
            .component("web", &format!("oci://{reference}"))
            .to_yaml();
        let answer = (self.wfm).set_deployments(&BTreeMap::from([(id.to_owned(), document)]))?;
        answer["manifestVersion"]
            .as_u64()
            .context("no manifestVersion")
    }

    /// Waits until the fleet manager holds a status of `id` in `state` for `version`.
    fn wait_status(&self, id: &str, state: &str, version: u64) -> Result<Value> {
        wait_until(Duration::from_secs(90), || {
            let status = self.wfm.statuses()?[id].clone();
            let done = status["status"]["state"] == state
                && status["adoptedManifestVersion"] == version
                && status["deploymentId"] == id;
            Ok(done.then_some(status))
        })
        .with_context(|| format!("{id} never {state} at {version}: {}", self.sync.log()))
    }
}

/// Checks for `within` that `id` keeps answering `message`.
fn keeps_answering(id: &str, message: &str, within: Duration) -> Result<()> {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        let now = answer(id)?;
        ensure!(now == message, "{id} answers {now:?}, not {message:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

#[test]
fn an_app_is_deployed_updated_and_removed_through_manifests() -> Result<()> {
    let cleanup = Cleanup::new();
    let id = cleanup.deployment_id()?;
    let mut device = Device::running(&id)?;
    let capabilities = device.wfm.capabilities()?;
    let reported = capabilities.as_object().and_then(|c| c.values().next());
    ensure!(
        reported.is_some_and(|c| c["properties"]["otelCollector"] == true
            && c["properties"]["supportedRuntimes"] == json!(["oci"])
            && c.get("kind").is_none()),
        "capabilities: {capabilities}"
    );
    // Every container is told of the collector.
    let env = containers(&id)?[0].inspect()["Config"]["Env"].clone();
    ensure!(
        env.as_array()
            .is_some_and(|e| e.contains(&json!(format!("OTEL_EXPORTER_OTLP_ENDPOINT={COLLECTOR}")))),
        "environment: {env}"
    );

    // A poll that finds nothing new is one request, answered 304.
    device.wfm.clear_requests()?;
    std::thread::sleep(Duration::from_secs(4));
    let requests = device.wfm.requests()?;
    let polls: Vec<&Value> = requests.iter().filter(|r| r["method"] == "GET").collect();
    ensure!(!polls.is_empty(), "no poll in 4 s: {requests:?}");
    ensure!(
        polls
            .iter()
            .all(|r| r["status"] == 304 && r["path"] == format!("{PREFIX}/api/v1/deployments")),
        "{polls:?}"
    );

    let two = device.push(&id, "1.0.1", "two")?;
    let version = device.offer(&id, &two)?;
    device.wait_status(&id, "installed", version)?;
    wait_answer(&id, "two")?;
    // The artifacts of the release and of the one to roll back to are kept.
    let cached = || -> Result<usize> {
        let dir = device.deploy.state_dir().join("artifacts");
        Ok((std::fs::read_dir(dir)?.flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with("sha256-"))
            .count())
    };
    ensure!(cached()? == 2, "{} artifacts cached", cached()?);

    // Gone from the manifest: removed, and its artifacts with it.
    let empty = device.wfm.set_deployments(&BTreeMap::new())?;
    let version = empty["manifestVersion"].as_u64().context("version")?;
    wait_until(Duration::from_secs(60), || Ok(containers(&id)?.is_empty()))?;
    device.wait_status(&id, "removed", version)?;
    wait_until(Duration::from_secs(30), || Ok(cached()? == 0))
        .context("the artifacts of a removed deployment are still cached")?;

    // After a restart, a manifest older than the one adopted is refused as before.
    device.sync.terminate(Duration::from_secs(10))?;
    device.wfm.switches(json!({"version": "down"}))?;
    device.offer(&id, &two)?;
    device.sync.start()?;
    wait_until(Duration::from_secs(30), || {
        Ok(device
            .sync
            .log()
            .contains("manifest version does not go up"))
    })?;
    ensure!(containers(&id)?.is_empty(), "an older manifest was applied");
    Ok(())
}

#[test]
fn a_manifest_that_does_not_verify_changes_nothing_that_runs() -> Result<()> {
    let cleanup = Cleanup::new();
    let id = cleanup.deployment_id()?;
    let device = Device::running(&id)?;

    let two = device.push(&id, "1.0.1", "two")?;
    for switch in ["wrongDigest", "unknownAlgorithm"] {
        device.wfm.switches(json!({switch: true}))?;
        device.offer(&id, &two)?;
        wait_until(Duration::from_secs(30), || {
            let status = device.wfm.statuses()?[&id].to_string();
            Ok(status.contains("ERR_INVALID_DESIRED_STATE"))
        })
        .with_context(|| format!("{switch}: {}", device.sync.log()))?;
        keeps_answering(&id, "one", Duration::from_secs(2))?;
        device.wfm.switches(json!({switch: false}))?;
    }
    // Served right, the newest manifest goes through.
    let version = device.offer(&id, &two)?;
    device.wait_status(&id, "installed", version)?;
    wait_answer(&id, "two")?;

    // A retired client: a refused status is not asked again until a poll goes through; the
    // app runs on.
    device.wfm.clear_requests()?;
    device.wfm.switches(json!({"retired": true}))?;
    let status_path = format!("{PREFIX}/api/v1/deployments/{id}/status");
    let refused_statuses = || -> Result<usize> {
        Ok((device.wfm.requests()?.iter())
            .filter(|r| r["path"] == status_path.as_str() && r["status"] == 403)
            .count())
    };
    // The poll's problem changes the status, which is posted and refused.
    wait_until(Duration::from_secs(30), || Ok(refused_statuses()? > 0))
        .with_context(|| device.sync.log())?;
    std::thread::sleep(Duration::from_secs(12));
    ensure!(refused_statuses()? == 1, "{:?}", device.wfm.requests()?);
    keeps_answering(&id, "two", Duration::from_secs(1))?;
    device.wfm.switches(json!({"retired": false}))?;
    wait_until(Duration::from_secs(30), || {
        Ok((device.wfm.requests()?.iter())
            .any(|r| r["path"] == status_path.as_str() && r["status"].as_u64() < Some(300)))
    })
    .with_context(|| device.sync.log())?;
    Ok(())
}

#[test]
fn only_the_fleet_manager_is_spoken_to_and_a_renewed_svid_is_used_without_a_restart() -> Result<()>
{
    let mut device = Device::start("other-id", Setup::ClientsPaths)?;
    device.sync.start()?;
    for identity in ["other-id", "untrusted", "expired"] {
        device.wfm.switches(json!({"serverIdentity": identity}))?;
        device.wfm.clear_requests()?;
        std::thread::sleep(Duration::from_secs(3));
        let served = device.wfm.requests()?;
        ensure!(
            served.is_empty(),
            "{identity}: requests were served: {served:?}"
        );
    }
    ensure!(
        device.sync.log().contains("not its SVID"),
        "{}",
        device.sync.log()
    );
    device.wfm.switches(json!({"serverIdentity": "good"}))?;
    // On the paths of 1.0.0, in its form.
    let client = device.wfm.client_id().to_owned();
    wait_until(Duration::from_secs(60), || {
        let capabilities = device.wfm.capabilities()?;
        Ok(capabilities[&client]["kind"] == "DeviceCapabilitiesManifest")
    })
    .with_context(|| device.sync.log())?;

    // A renewed SVID put in place of the old one is what the next connections present.
    let serial = |requests: &[Value]| requests.last().map(|r| r["clientSerial"].clone());
    let before = serial(&device.wfm.requests()?).context("no request yet")?;
    let renewed = device.wfm.renew_client()?;
    let staged = device.wfm.dir().join("client.pem.staged");
    std::fs::copy(&renewed, &staged)?;
    std::fs::rename(&staged, device.wfm.client_cert())?;
    wait_until(Duration::from_secs(30), || {
        Ok(serial(&device.wfm.requests()?).is_some_and(|s| s != before))
    })
    .with_context(|| device.sync.log())?;

    // A 503 with Retry-After: 3 is asked again when it said, not at every 1 s poll.
    device.wfm.set_deployments(&BTreeMap::new())?;
    device
        .wfm
        .switches(json!({"unavailable": {"retryAfter": 3}}))?;
    device.wfm.clear_requests()?;
    std::thread::sleep(Duration::from_secs(8));
    let manifest = format!(
        "{PREFIX}/api/v1/clients/{}/deployments",
        device.wfm.client_id()
    );
    let polls: Vec<Value> = (device.wfm.requests()?.into_iter())
        .filter(|r| r["path"] == manifest.as_str())
        .collect();
    ensure!(
        (1..=4).contains(&polls.len()) && polls.iter().all(|r| r["status"] == 503),
        "{polls:?}"
    );
    device.wfm.switches(json!({"unavailable": null}))?;
    wait_until(Duration::from_secs(30), || {
        let requests = device.wfm.requests()?;
        Ok(requests
            .iter()
            .any(|r| r["path"] == manifest.as_str() && r["status"] == 304))
    })
    .with_context(|| device.sync.log())?;
    Ok(())
}

#[test]
fn a_fetched_trust_bundle_replaces_the_anchors_and_never_goes_back() -> Result<()> {
    let mut device = Device::start("good", Setup::FetchedBundle)?;
    device.wfm.switches(json!({"refreshHint": 1}))?;
    device.sync.start()?;
    let stored = device.sync.state_dir().join("margo-trust-bundle.json");
    let kept = wait_until(Duration::from_secs(60), || Ok(std::fs::read(&stored).ok()))
        .with_context(|| device.sync.log())?;
    let bundle: Value = serde_json::from_slice(&kept)?;
    ensure!(
        bundle["sequence"] == 2 && bundle["anchors"].as_array().map(Vec::len) == Some(1),
        "{bundle}"
    );

    // A bundle without an X.509 anchor, or of a lower sequence, is refused and changes nothing.
    for (switch, why) in [
        ("empty", "no X.509 trust anchor"),
        ("regressed", "spiffe_sequence went down"),
    ] {
        device.wfm.switches(json!({"trustBundle": switch}))?;
        wait_until(Duration::from_secs(30), || {
            Ok(device.sync.log().contains(why))
        })
        .with_context(|| format!("{switch}: {}", device.sync.log()))?;
    }
    ensure!(std::fs::read(&stored)? == kept, "a refused bundle was kept");

    // The bootstrap anchors trusted the stranger's CA too; the bundle that replaced them
    // does not, also after a restart.
    device.sync.terminate(Duration::from_secs(10))?;
    (device.wfm).switches(json!({"trustBundle": "good", "serverIdentity": "untrusted"}))?;
    device.wfm.clear_requests()?;
    device.sync.start()?;
    wait_until(Duration::from_secs(30), || {
        Ok(device.sync.log().contains("UnknownIssuer"))
    })
    .with_context(|| device.sync.log())?;
    let served = device.wfm.requests()?;
    ensure!(served.is_empty(), "requests were served: {served:?}");
    device.wfm.switches(json!({"serverIdentity": "good"}))?;
    wait_until(Duration::from_secs(30), || {
        Ok(!device.wfm.requests()?.is_empty())
    })
    .with_context(|| device.sync.log())?;
    Ok(())
}
