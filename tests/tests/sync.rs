//! The whole loop on real parts: the reference WOS (git http-backend behind HTTPS, and the
//! REST API), woa-sync enrolled with it, woa-deploy on the real Docker engine.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use woa_tests::{
    AppDeployment, Cleanup, Deploy, DeployOptions, RepoAuthKind, Sync, SyncOptions, WosServer,
    WosServerOptions, containers, http_get, testapp_image, wait_until,
};

/// Long enough for a slow, busy machine; a passing step takes a few seconds.
const CONVERGE: Duration = Duration::from_secs(60);

/// The parts of one device and its WOS.
struct Rig {
    wos: WosServer,
    deploy: Deploy,
    sync: Sync,
    client: String,
    cleanup: Cleanup,
}

impl Rig {
    /// A WOS, a deployment service, and a sync service enrolled with a token and running.
    fn start(repo_auth: RepoAuthKind, options: SyncOptions) -> Result<Rig> {
        Rig::start_after(repo_auth, options, |_| Ok(()))
    }

    /// Like [`Rig::start`], running `before_start` on the WOS after enrollment and before
    /// woa-sync starts (e.g. to set a fault its very first request meets).
    fn start_after(
        repo_auth: RepoAuthKind,
        options: SyncOptions,
        before_start: impl FnOnce(&WosServer) -> Result<()>,
    ) -> Result<Rig> {
        let wos = WosServer::start(WosServerOptions {
            repo_auth,
            ..WosServerOptions::default()
        })?;
        let deploy = Deploy::start_with(&DeployOptions {
            resync_interval: Some("2s".into()),
            ..DeployOptions::default()
        })?;
        let mut sync = Sync::new(&deploy, &options)?;
        sync.enroll(&wos.url(), wos.token(), &wos.ca_path())?;
        let client = sync.client_id()?;
        before_start(&wos)?;
        sync.start()?;
        Ok(Rig {
            wos,
            deploy,
            sync,
            client,
            cleanup: Cleanup::new(),
        })
    }

    /// Commits `app` answering `message` on a published port; returns the commit id.
    fn commit_app(&self, app: &AppDeployment, name: &str, message: &str) -> Result<String> {
        let document = format!("deployments/{name}.yaml");
        let compose_path = format!("apps/{name}/compose.yaml");
        let compose = web(testapp_image()?, message);
        self.wos.commit(
            &self.client,
            &[
                (document.as_str(), Some(app.to_yaml().as_bytes())),
                (compose_path.as_str(), Some(compose.as_bytes())),
            ],
            &format!("{name}: {message}"),
        )
    }

    /// An app named `name` with a fresh deployment id, packaged at `apps/<name>`.
    fn app(&self, name: &str) -> Result<AppDeployment> {
        Ok(AppDeployment::new(&self.cleanup.deployment_id()?, name)
            .component("web", &format!("apps/{name}/compose.yaml")))
    }

    /// The latest status the WOS holds for `deployment_id`.
    fn wos_status(&self, deployment_id: &str) -> Result<Option<Value>> {
        let device = self.wos.device(&self.client)?;
        Ok(device["deployments"]
            .get(deployment_id)
            .filter(|s| !s.is_null())
            .cloned())
    }

    /// Waits until the WOS has `state` for `deployment_id` at `revision`.
    fn wait_for_wos(&self, deployment_id: &str, revision: &str, state: &str) -> Result<Value> {
        let mut last = None;
        let found = wait_until(CONVERGE, || {
            let status = self.wos_status(deployment_id)?;
            let done = status
                .as_ref()
                .filter(|s| s["revision"] == revision && s["status"]["state"] == state)
                .cloned();
            last = status;
            Ok(done)
        });
        found.with_context(|| {
            format!("the WOS never saw {deployment_id} {state} at {revision}; last: {last:#?}")
        })
    }

    /// What the app of `deployment_id` answers on its published port.
    fn answer(&self, deployment_id: &str) -> Result<String> {
        let containers = containers(deployment_id)?;
        let port = containers
            .iter()
            .find_map(|c| c.host_port(8080))
            .with_context(|| format!("no published port: {containers:?}"))?;
        Ok(http_get(port, "/")?.1)
    }

    /// Waits until the app answers `message`.
    fn wait_for_answer(&self, deployment_id: &str, message: &str) -> Result<()> {
        wait_until(CONVERGE, || {
            Ok(self
                .answer(deployment_id)
                .ok()
                .filter(|a| a.trim() == message)
                .map(|_| ()))
        })
        .with_context(|| format!("{deployment_id} never answered {message:?}"))
    }
}

/// One web service answering `message`, published on a loopback port.
fn web(image: &str, message: &str) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    command: [\"serve\", \"8080\"]\n    \
         environment:\n      MESSAGE: {message:?}\n    ports: [\"127.0.0.1::8080\"]\n"
    )
}

/// Ids of the containers of a deployment, to show that nothing was restarted.
fn container_ids(deployment_id: &str) -> Result<Vec<String>> {
    let mut ids: Vec<String> = containers(deployment_id)?
        .iter()
        .map(|c| c.id.clone())
        .collect();
    ids.sort();
    Ok(ids)
}

#[test]
fn an_enrolled_device_runs_updates_and_removes_what_is_committed() -> Result<()> {
    let rig = Rig::start(RepoAuthKind::Basic, SyncOptions::default())?;

    // Enrolling again is safe: the same client, still one device at the WOS.
    rig.sync
        .enroll(&rig.wos.url(), rig.wos.token(), &rig.wos.ca_path())?;
    assert_eq!(rig.sync.client_id()?, rig.client);
    let devices = rig.wos.devices()?;
    assert_eq!(devices.len(), 1, "{devices:#?}");

    let app = rig.app("hello")?;
    let c1 = rig.commit_app(&app, "hello", "v1")?;
    let status = rig.wait_for_wos(app.id(), &c1, "installed")?;
    assert_eq!(status["components"][0]["name"], "web", "{status:#}");
    rig.wait_for_answer(app.id(), "v1")?;

    // Capabilities arrived, naming this device.
    let device_id = String::from_utf8(rig.sync.command(&["device-id"])?.stdout)?;
    let device = rig.wos.device(&rig.client)?;
    assert_eq!(
        device["capabilities"]["properties"]["id"],
        device_id.trim(),
        "{device:#}"
    );

    let c2 = rig.commit_app(&app, "hello", "v2")?;
    rig.wait_for_wos(app.id(), &c2, "installed")?;
    rig.wait_for_answer(app.id(), "v2")?;

    // A force-pushed branch is followed, even back to an older commit.
    rig.wos.force_push(&rig.client, &c1)?;
    rig.wait_for_wos(app.id(), &c1, "installed")?;
    rig.wait_for_answer(app.id(), "v1")?;

    // A deleted mirror is rebuilt.
    std::fs::remove_dir_all(rig.sync.state_dir().join("mirror.git"))?;
    let c3 = rig.commit_app(&app, "hello", "v3")?;
    rig.wait_for_wos(app.id(), &c3, "installed")?;
    rig.wait_for_answer(app.id(), "v3")?;

    let c4 = rig.wos.commit(
        &rig.client,
        &[("deployments/hello.yaml", None)],
        "remove hello",
    )?;
    rig.wait_for_wos(app.id(), &c4, "removed")?;
    ensure!(containers(app.id())?.is_empty(), "containers left behind");

    // SIGTERM ends it promptly and cleanly, with the watch stream still open.
    let mut rig = rig;
    assert!(
        rig.sync.terminate(Duration::from_secs(10))?,
        "woa-sync did not stop cleanly on SIGTERM"
    );
    Ok(())
}

#[test]
fn statuses_made_while_the_wos_is_unreachable_arrive_after_it_returns() -> Result<()> {
    let mut rig = Rig::start(RepoAuthKind::Basic, SyncOptions::default())?;
    let app = rig.app("steady")?;
    let c0 = rig.commit_app(&app, "steady", "v0")?;
    rig.wait_for_wos(app.id(), &c0, "installed")?;

    // The WOS asks for a pause (503 with Retry-After): no request to the API before it ends.
    rig.wos
        .set_fault(json!({"mode": "unavailable", "retryAfter": 3, "scope": "api"}))?;
    rig.wos.clear_requests()?;
    let c1 = rig.commit_app(&app, "steady", "v1")?;
    rig.deploy.wait_for(app.id(), &c1, "INSTALLED")?;
    std::thread::sleep(Duration::from_secs(8));
    let times = rig
        .wos
        .requests()?
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/api/")))
        .map(|r| r["at"].as_str().unwrap_or_default().parse())
        .collect::<Result<Vec<jiff::Timestamp>, _>>()?;
    ensure!(times.len() >= 2, "the API was not retried: {times:?}");
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        ensure!(
            gap >= jiff::SignedDuration::from_millis(2900),
            "asked again after {gap:?}, before the 3 s the WOS asked for: {times:?}"
        );
    }
    rig.wos.set_fault(json!({"mode": "none"}))?;
    rig.wait_for_wos(app.id(), &c1, "installed")?;

    // The API is down (the repository is not): the new revision rolls out, its statuses wait
    // in the outbox, also across a crash of woa-sync.
    rig.wos.set_fault(json!({"mode": "down", "scope": "api"}))?;
    let c2 = rig.commit_app(&app, "steady", "v2")?;
    rig.wait_for_answer(app.id(), "v2")?;
    rig.deploy.wait_for(app.id(), &c2, "INSTALLED")?;
    let outbox_path = rig.sync.state_dir().join("outbox.json");
    wait_until(CONVERGE, || {
        let outbox = std::fs::read_to_string(&outbox_path).unwrap_or_default();
        Ok(outbox.contains(&c2).then_some(()))
    })
    .context("the new status never reached the outbox")?;
    rig.sync.kill9()?;
    let outbox = std::fs::read_to_string(&outbox_path)?;
    assert!(outbox.contains(&c2), "the outbox lost the status: {outbox}");
    rig.sync.start()?;
    std::thread::sleep(Duration::from_secs(2));
    let seen = rig.wos_status(app.id())?.context("no status at all")?;
    assert_eq!(
        seen["revision"], c1,
        "delivered through a down API? {seen:#}"
    );
    rig.wos.set_fault(json!({"mode": "none"}))?;
    rig.wait_for_wos(app.id(), &c2, "installed")?;

    // The whole WOS stops for a while: the app keeps running, woa-sync keeps running, and it
    // reports again once the WOS is back.
    let running = container_ids(app.id())?;
    rig.wos.stop()?;
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(container_ids(app.id())?, running);
    assert!(
        rig.sync.is_running(),
        "woa-sync gave up while the WOS was down"
    );
    rig.wos.start_again()?;
    let history_before = rig.wos.device(&rig.client)?["statusHistory"]
        .as_array()
        .map_or(0, Vec::len);
    wait_until(CONVERGE, || {
        let history = rig.wos.device(&rig.client)?["statusHistory"]
            .as_array()
            .map_or(0, Vec::len);
        Ok((history > history_before).then_some(()))
    })
    .context("no status after the WOS came back")?;

    // The deployment service restarts meanwhile a change arrives: nothing is lost.
    rig.deploy.kill9()?;
    let c3 = rig.commit_app(&app, "steady", "v3")?;
    std::thread::sleep(Duration::from_secs(3));
    rig.deploy.restart()?;
    rig.wait_for_wos(app.id(), &c3, "installed")?;
    rig.wait_for_answer(app.id(), "v3")?;
    Ok(())
}

#[test]
fn wrong_repository_credentials_are_reported_without_a_crash_loop() -> Result<()> {
    let mut rig = Rig::start(RepoAuthKind::Basic, SyncOptions::default())?;
    let app = rig.app("kept")?;
    let c1 = rig.commit_app(&app, "kept", "v1")?;
    rig.wait_for_wos(app.id(), &c1, "installed")?;
    let running = container_ids(app.id())?;
    let secret_file = rig.sync.state_dir().join("repository-secret");
    let old_secret = std::fs::read_to_string(&secret_file)?;

    // The WOS rotates the credentials: the device's are wrong now.
    let granted = rig.wos.rotate_credentials(&rig.client)?;
    let mut last = None;
    let status = wait_until(CONVERGE, || {
        let status = rig.wos_status(app.id())?;
        let done = status
            .as_ref()
            .filter(|s| s["status"]["error"]["code"] == "ERR_REPOSITORY_AUTH")
            .cloned();
        last = status;
        Ok(done)
    })
    .with_context(|| format!("the WOS never learned of the refused credentials: {last:#?}"))?;
    assert_eq!(status["status"]["state"], "installed", "{status:#}");
    let message = status["status"]["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("401"), "{status:#}");

    std::thread::sleep(Duration::from_secs(3));
    assert!(rig.sync.is_running(), "woa-sync exited");
    let log = rig.sync.log();
    // (A "no branch main" error before the first commit is another problem.)
    let errors = log
        .lines()
        .filter(|l| {
            l.contains("polling the desired-state source failed")
                && l.contains("refused the credentials")
        })
        .count();
    assert_eq!(errors, 1, "one error per problem, not one per poll:\n{log}");
    assert!(!log.contains(old_secret.trim()), "a secret in the log");
    assert_eq!(container_ids(app.id())?, running);

    // With the new secret in place, the error clears.
    let new_secret = granted["password"]
        .as_str()
        .context("rotation returned no password")?;
    std::fs::write(&secret_file, new_secret)?;
    let c2 = rig.commit_app(&app, "kept", "v2")?;
    let status = rig.wait_for_wos(app.id(), &c2, "installed")?;
    assert!(status["status"].get("error").is_none(), "{status:#}");
    assert!(!rig.sync.log().contains(new_secret), "a secret in the log");
    Ok(())
}

#[test]
fn a_malformed_deployment_fails_alone_naming_its_file() -> Result<()> {
    let rig = Rig::start(RepoAuthKind::Basic, SyncOptions::default())?;
    let good = rig.app("good")?;
    let bad = rig.app("bad")?;
    rig.commit_app(&good, "good", "fine")?;
    let c1 = rig.commit_app(&bad, "bad", "fine")?;
    rig.wait_for_wos(good.id(), &c1, "installed")?;
    rig.wait_for_wos(bad.id(), &c1, "installed")?;
    let running = container_ids(good.id())?;

    let path = "deployments/bad.yaml";
    let c2 = rig.wos.commit(
        &rig.client,
        &[(
            path,
            Some(b"metadata: [unclosed\n  annotations: {id: lost".as_slice()),
        )],
        "break bad",
    )?;
    let status = rig.wait_for_wos(bad.id(), &c2, "failed")?;
    let message = status["status"]["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(path), "{status:#}");
    rig.wait_for_wos(good.id(), &c2, "installed")?;
    assert_eq!(container_ids(good.id())?, running);
    // The last good version of the broken one keeps running too.
    rig.wait_for_answer(bad.id(), "fine")?;
    Ok(())
}

#[test]
fn no_request_is_made_outside_the_polling_windows_or_in_downtime() -> Result<()> {
    // A window two days from now never contains the present, whatever the time of day.
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        / 86_400;
    // 1970-01-01 was a Thursday.
    let day = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][((days + 2) % 7) as usize];
    let rig = Rig::start(
        RepoAuthKind::Bearer,
        SyncOptions {
            windows: vec![format!("{day} 00:00-24:00 UTC")],
            ..SyncOptions::default()
        },
    )?;
    let app = rig.app("waits")?;
    rig.wos.clear_requests()?;
    rig.commit_app(&app, "waits", "v1")?;
    std::thread::sleep(Duration::from_secs(5));
    let requests = rig.wos.requests()?;
    let git: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/git/")))
        .collect();
    assert!(git.is_empty(), "polled outside the window: {git:#?}");
    ensure!(
        containers(app.id())?.is_empty(),
        "applied outside the window"
    );

    // Inside a downtime window nothing at all is sent, neither polls nor statuses.
    let mut rig = rig;
    rig.sync.kill9()?;
    let down = same_device(
        &rig,
        &SyncOptions {
            downtime: vec!["* 00:00-24:00".into()],
            ..SyncOptions::default()
        },
    )?;
    rig.wos.clear_requests()?;
    std::thread::sleep(Duration::from_secs(5));
    let requests = rig.wos.requests()?;
    assert!(requests.is_empty(), "requests in downtime: {requests:#?}");
    drop(down);

    // The same device with an always-open window polls (bearer auth) and applies.
    let _open = same_device(&rig, &SyncOptions::default())?;
    rig.wait_for_answer(app.id(), "v1")?;
    let requests = rig.wos.requests()?;
    assert!(
        requests
            .iter()
            .any(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/git/"))),
        "no git request at all"
    );
    Ok(())
}

/// Another woa-sync process for the device of `rig` (same device id, enrolled again), started.
fn same_device(rig: &Rig, options: &SyncOptions) -> Result<Sync> {
    let mut sync = Sync::new(&rig.deploy, options)?;
    std::fs::create_dir_all(sync.state_dir())?;
    std::fs::copy(
        rig.sync.state_dir().join("device-id"),
        sync.state_dir().join("device-id"),
    )?;
    sync.enroll(&rig.wos.url(), rig.wos.token(), &rig.wos.ca_path())?;
    ensure!(
        sync.client_id()? == rig.client,
        "enrolled as another client"
    );
    sync.start()?;
    Ok(sync)
}

#[test]
fn a_pre_provisioned_device_enrolls_manually_and_pulls_with_its_certificate() -> Result<()> {
    let wos = WosServer::start(WosServerOptions {
        repo_auth: RepoAuthKind::Mtls,
        ..WosServerOptions::default()
    })?;
    let deploy = Deploy::start()?;
    let mut sync = Sync::new(&deploy, &SyncOptions::default())?;
    let device_id = String::from_utf8(sync.command(&["device-id"])?.stdout)?;
    let provisioned = wos.provision(device_id.trim())?;
    let files = tempfile::tempdir()?;
    let cert = files.path().join("device.pem");
    let key = files.path().join("device-key.pem");
    std::fs::write(&cert, provisioned["certificate"].as_str().unwrap_or(""))?;
    std::fs::write(&key, provisioned["privateKey"].as_str().unwrap_or(""))?;
    let client = provisioned["clientId"].as_str().context("no clientId")?;
    let repo_url = provisioned["repository"]["url"]
        .as_str()
        .context("no repository url")?;
    let output = sync.command(&[
        "enroll",
        "--manual",
        "--wos",
        &wos.url(),
        "--ca",
        &wos.ca_path().display().to_string(),
        "--client-id",
        client,
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "--repo-url",
        repo_url,
        "--repo-auth",
        "mtls",
    ])?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Trust is set up: the capabilities are there before `run` starts.
    let device = wos.device(client)?;
    assert_eq!(
        device["capabilities"]["properties"]["id"],
        device_id.trim(),
        "{device:#}"
    );
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(sync.state_dir().join("device-key.pem"))?.permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    sync.start()?;

    let rig_cleanup = Cleanup::new();
    let app = AppDeployment::new(&rig_cleanup.deployment_id()?, "manual")
        .component("web", "apps/manual/compose.yaml");
    let commit = wos.commit(
        client,
        &[
            ("deployments/manual.yaml", Some(app.to_yaml().as_bytes())),
            (
                "apps/manual/compose.yaml",
                Some(web(testapp_image()?, "manual").as_bytes()),
            ),
        ],
        "manual app",
    )?;
    wait_until(CONVERGE, || {
        let device = wos.device(client)?;
        let status = &device["deployments"][app.id()];
        Ok(
            (status["revision"] == commit.as_str() && status["status"]["state"] == "installed")
                .then_some(()),
        )
    })
    .context("never installed at the WOS")?;
    Ok(())
}

/// The status file of `deployment_id` on the status branch, as the git CLI reads it from the
/// server's repository; `None` while it is not there.
fn status_file(rig: &Rig, deployment_id: &str) -> Option<Value> {
    let path = format!("woa/status:status/{deployment_id}.json");
    let text = rig.wos.git_in_repo(&rig.client, &["show", &path]).ok()?;
    serde_json::from_str(&text).ok()
}

fn status_tip(rig: &Rig) -> Result<String> {
    Ok(rig
        .wos
        .git_in_repo(&rig.client, &["rev-parse", "refs/heads/woa/status"])?
        .trim()
        .to_owned())
}

/// Waits until the status branch says `state` for `deployment_id` at `revision`.
fn wait_for_status_file(rig: &Rig, deployment_id: &str, revision: &str, state: &str) -> Result<()> {
    let mut last = None;
    wait_until(CONVERGE, || {
        let file = status_file(rig, deployment_id);
        let done = file
            .as_ref()
            .is_some_and(|f| f["revision"] == revision && f["status"]["state"] == state);
        last = file;
        Ok(done.then_some(()))
    })
    .with_context(|| format!("the status branch never said {state} at {revision}: {last:#?}"))
}

#[test]
fn the_current_state_is_committed_to_the_status_branch() -> Result<()> {
    let rig = Rig::start(
        RepoAuthKind::Basic,
        SyncOptions {
            report: "both".into(),
            // Long enough for a rollout (installing, then installed) to make one commit,
            // also on a busy machine.
            git_debounce: "8s".into(),
            ..SyncOptions::default()
        },
    )?;
    let app = rig.app("mirrored")?;
    let c1 = rig.commit_app(&app, "mirrored", "v1")?;
    wait_for_status_file(&rig, app.id(), &c1, "installed")?;
    let device: Value = serde_json::from_str(
        &rig.wos
            .git_in_repo(&rig.client, &["show", "woa/status:status/device.json"])?,
    )?;
    assert_eq!(device["appliedRevision"], c1.as_str(), "{device:#}");
    assert_eq!(device["clientId"], rig.client.as_str(), "{device:#}");
    let message = rig
        .wos
        .git_in_repo(&rig.client, &["log", "-1", "--format=%s", "woa/status"])?;
    assert!(
        message.contains(&c1),
        "the message names no revision: {message}"
    );

    // No change, no commit.
    let tip = status_tip(&rig)?;
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(status_tip(&rig)?, tip, "a commit without a change");

    // One change of state, one commit.
    let c2 = rig.commit_app(&app, "mirrored", "v2")?;
    wait_for_status_file(&rig, app.id(), &c2, "installed")?;
    let count = rig.wos.git_in_repo(
        &rig.client,
        &["rev-list", "--count", &format!("{tip}..woa/status")],
    )?;
    assert_eq!(count.trim(), "1", "commits for one change");

    // Another writer on the branch: its commit stays, ours goes on top.
    rig.wos.commit_to(
        &rig.client,
        "woa/status",
        &[("README.md", Some(b"written by the WOS".as_slice()))],
        "WOS note",
    )?;
    let c3 = rig.commit_app(&app, "mirrored", "v3")?;
    wait_for_status_file(&rig, app.id(), &c3, "installed")?;
    let log = rig
        .wos
        .git_in_repo(&rig.client, &["log", "--format=%s", "woa/status"])?;
    assert!(
        log.contains("WOS note"),
        "the other writer's commit is gone:\n{log}"
    );
    let readme = rig
        .wos
        .git_in_repo(&rig.client, &["show", "woa/status:README.md"])?;
    assert_eq!(readme, "written by the WOS");

    // The WOS resets the branch to a new root commit: the next status builds on that.
    let empty_tree = rig.wos.git_in_repo(
        &rig.client,
        &["hash-object", "-t", "tree", "-w", "/dev/null"],
    )?;
    let reset = rig.wos.git_in_repo(
        &rig.client,
        &[
            "-c",
            "user.name=WOS",
            "-c",
            "user.email=wos@woa.test",
            "commit-tree",
            empty_tree.trim(),
            "-m",
            "reset by the WOS",
        ],
    )?;
    rig.wos.git_in_repo(
        &rig.client,
        &["update-ref", "refs/heads/woa/status", reset.trim()],
    )?;
    let c4 = rig.commit_app(&app, "mirrored", "v4")?;
    wait_for_status_file(&rig, app.id(), &c4, "installed")?;
    let parent = rig
        .wos
        .git_in_repo(&rig.client, &["rev-list", "--max-parents=0", "woa/status"])?;
    assert_eq!(parent.trim(), reset.trim(), "not built on the reset branch");

    // The desired-state branch is never written, and what was pushed is sound.
    let main = rig.wos.git_in_repo(&rig.client, &["rev-parse", "main"])?;
    assert_eq!(main.trim(), c4);
    rig.wos
        .git_in_repo(&rig.client, &["fsck", "--strict", "--no-progress"])?;
    // The HTTP side kept working beside it.
    rig.wait_for_wos(app.id(), &c4, "installed")?;
    Ok(())
}

#[test]
fn a_repository_that_refuses_writes_gives_one_clear_error_and_pulling_goes_on() -> Result<()> {
    let rig = Rig::start(
        RepoAuthKind::Basic,
        SyncOptions {
            report: "git".into(),
            poll_interval: "4s".into(),
            git_debounce: "1s".into(),
            ..SyncOptions::default()
        },
    )?;
    rig.wos
        .git_in_repo(&rig.client, &["config", "http.receivepack", "false"])?;
    let app = rig.app("readonly")?;
    let c1 = rig.commit_app(&app, "readonly", "v1")?;
    rig.deploy.wait_for(app.id(), &c1, "INSTALLED")?;
    rig.wait_for_answer(app.id(), "v1")?;
    std::thread::sleep(Duration::from_secs(6));

    let mut rig = rig;
    assert!(rig.sync.is_running(), "woa-sync exited");
    let log = rig.sync.log();
    let errors = log.matches("could not write the status branch").count();
    assert!(
        (1..=3).contains(&errors),
        "{errors} errors in about two poll intervals:\n{log}"
    );
    assert!(log.contains("refused writing the status branch"), "{log}");
    let secret = std::fs::read_to_string(rig.sync.state_dir().join("repository-secret"))?;
    assert!(!log.contains(secret.trim()), "a secret in the log");
    // Nothing was written, and the desired state still flows.
    assert!(status_tip(&rig).is_err(), "a status branch appeared");
    let c2 = rig.commit_app(&app, "readonly", "v2")?;
    rig.deploy.wait_for(app.id(), &c2, "INSTALLED")?;
    Ok(())
}

/// The pseudo deployment id of `deployments/bad.yaml`: UUIDv5 of the path in the namespace
/// `bf03dccd-b096-437b-abfa-dc04b10c29c6`, as proto/README.md tells a WOS to compute it
/// (here computed independently, with Python's `uuid.uuid5`).
const BAD_YAML_PSEUDO_ID: &str = "5244e272-6e0f-55b1-beea-7266acbe0018";

/// How many `removed` statuses of `deployment_id` the WOS received.
fn removed_posts(rig: &Rig, deployment_id: &str) -> Result<usize> {
    let device = rig.wos.device(&rig.client)?;
    Ok(device["statusHistory"].as_array().map_or(0, |history| {
        history
            .iter()
            .filter(|r| {
                r["deploymentId"] == deployment_id && r["status"]["status"]["state"] == "removed"
            })
            .count()
    }))
}

#[test]
fn a_document_too_broken_to_name_a_deployment_is_reported_under_a_pseudo_id() -> Result<()> {
    let mut rig = Rig::start(
        RepoAuthKind::Basic,
        SyncOptions {
            report: "both".into(),
            git_debounce: "1s".into(),
            ..SyncOptions::default()
        },
    )?;
    let path = "deployments/bad.yaml";
    let good = rig.app("good")?;
    rig.commit_app(&good, "good", "fine")?;
    let c1 = rig.wos.commit(
        &rig.client,
        &[(path, Some(b"kind: [".as_slice()))],
        "add a broken document",
    )?;

    // The WOS learns of it under the pseudo id, failed, naming the file; the good one runs.
    let status = rig.wait_for_wos(BAD_YAML_PSEUDO_ID, &c1, "failed")?;
    let error = &status["status"]["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains(path)),
        "{status:#}"
    );
    assert_eq!(error["code"], "ERR_INVALID_DOCUMENT", "{status:#}");
    assert_eq!(status["components"], json!([]), "{status:#}");
    rig.wait_for_wos(good.id(), &c1, "installed")?;

    // The status branch says the same, and device.json lists the document.
    wait_for_status_file(&rig, BAD_YAML_PSEUDO_ID, &c1, "failed")?;
    let device: Value = serde_json::from_str(
        &rig.wos
            .git_in_repo(&rig.client, &["show", "woa/status:status/device.json"])?,
    )?;
    let listed = &device["rejectedDocuments"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{device:#}");
    assert_eq!(listed[0]["path"], path, "{device:#}");
    assert_eq!(listed[0]["deploymentId"], BAD_YAML_PSEUDO_ID, "{device:#}");

    // The file goes while the WOS API is down and woa-sync crashes: the removal waits in the
    // persisted outbox and arrives once, after the restart.
    rig.wos.set_fault(json!({"mode": "down", "scope": "api"}))?;
    let c2 = rig
        .wos
        .commit(&rig.client, &[(path, None)], "remove the broken document")?;
    let outbox_path = rig.sync.state_dir().join("outbox.json");
    wait_until(CONVERGE, || {
        let outbox: Value = std::fs::read(&outbox_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let queued = outbox["statuses"][BAD_YAML_PSEUDO_ID]
            .as_str()
            .and_then(|m| serde_json::from_str::<Value>(m).ok())
            .unwrap_or_default();
        Ok(
            (queued["status"]["state"] == "removed" && queued["revision"] == c2.as_str())
                .then_some(()),
        )
    })
    .context("the removal never reached the outbox")?;
    rig.sync.kill9()?;
    rig.sync.start()?;
    rig.wos.set_fault(json!({"mode": "none"}))?;
    rig.wait_for_wos(BAD_YAML_PSEUDO_ID, &c2, "removed")?;
    wait_until(CONVERGE, || {
        Ok(status_file(&rig, BAD_YAML_PSEUDO_ID)
            .is_none()
            .then_some(()))
    })
    .context("the status branch still has the rejected document")?;

    // Broken again, then valid: the pseudo deployment fails again, then is removed at the
    // revision that made the file valid, and the deployment the file names now runs.
    let c3 = rig.wos.commit(
        &rig.client,
        &[(path, Some(b"kind: [".as_slice()))],
        "break again",
    )?;
    rig.wait_for_wos(BAD_YAML_PSEUDO_ID, &c3, "failed")?;
    let fixed = rig.app("bad")?;
    let c4 = rig.commit_app(&fixed, "bad", "fixed")?;
    rig.wait_for_wos(BAD_YAML_PSEUDO_ID, &c4, "removed")?;
    rig.wait_for_wos(fixed.id(), &c4, "installed")?;

    // A heartbeat (5 s) later, each removal was still posted once only.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(removed_posts(&rig, BAD_YAML_PSEUDO_ID)?, 2);
    let device: Value = serde_json::from_str(
        &rig.wos
            .git_in_repo(&rig.client, &["show", "woa/status:status/device.json"])?,
    )?;
    assert_eq!(device["rejectedDocuments"], json!([]), "{device:#}");
    Ok(())
}

/// Arrival times at the WOS of the git requests of `service` (`git-upload-pack` for fetches,
/// `git-receive-pack` for status pushes), in order.
fn git_request_times(rig: &Rig, service: &str) -> Result<Vec<Timestamp>> {
    let mut times = Vec::new();
    for request in rig.wos.requests()? {
        let path = request["path"].as_str().unwrap_or_default();
        let query = request["query"].as_str().unwrap_or_default();
        let of_service = path.starts_with("/git/")
            && (query.contains(&format!("service={service}"))
                || path.ends_with(&format!("/{service}")));
        if of_service {
            times.push(request["at"].as_str().unwrap_or_default().parse()?);
        }
    }
    times.sort();
    Ok(times)
}

/// The start of each attempt among `times`: a request within 700 ms of the one before
/// belongs to the same attempt (woa-sync asks once more after a 503/429 to read the
/// `Retry-After` that gix does not expose).
fn attempts(times: &[Timestamp]) -> Vec<Timestamp> {
    let mut starts: Vec<Timestamp> = Vec::new();
    let mut last: Option<Timestamp> = None;
    for &at in times {
        if last.is_none_or(|last| at.duration_since(last) >= SignedDuration::from_millis(700)) {
            starts.push(at);
        }
        last = Some(at);
    }
    starts
}

/// Watches the `service` requests for `window` and checks that at least `min_attempts`
/// attempts came, each at least `at_least` after the one before and at most `at_most`.
fn check_spacing(
    rig: &Rig,
    service: &str,
    window: Duration,
    min_attempts: usize,
    at_least: SignedDuration,
    at_most: SignedDuration,
) -> Result<()> {
    rig.wos.clear_requests()?;
    std::thread::sleep(window);
    let times = git_request_times(rig, service)?;
    let starts = attempts(&times);
    ensure!(
        starts.len() >= min_attempts,
        "{service}: {} attempts in {window:?}, expected {min_attempts}: {times:?}",
        starts.len()
    );
    for pair in starts.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        if gap < at_least || gap > at_most {
            bail!(
                "{service}: an attempt {gap:?} after the last, not within {at_least:?}..{at_most:?}: {times:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_refusing_repository_is_asked_again_when_it_says_and_never_faster_than_the_interval()
-> Result<()> {
    // Refusing from the very first request, so fetches and status pushes both meet it.
    let rig = Rig::start_after(
        RepoAuthKind::Basic,
        SyncOptions {
            report: "git".into(),
            git_debounce: "1s".into(),
            ..SyncOptions::default()
        },
        |wos| wos.set_fault(json!({"mode": "unavailable", "retryAfter": 4, "scope": "git"})),
    )?;
    let app = rig.app("patient")?;
    let c1 = rig.commit_app(&app, "patient", "v1")?;
    let ms = SignedDuration::from_millis;

    // 503 with Retry-After: 4 at a 1 s poll interval: every 4 s, no sooner.
    for service in ["git-upload-pack", "git-receive-pack"] {
        check_spacing(
            &rig,
            service,
            Duration::from_secs(13),
            3,
            ms(3900),
            ms(6000),
        )?;
    }
    // 429 with Retry-After: 2.
    rig.wos.set_fault(
        json!({"mode": "unavailable", "status": 429, "retryAfter": 2, "scope": "git"}),
    )?;
    std::thread::sleep(Duration::from_secs(4));
    for service in ["git-upload-pack", "git-receive-pack"] {
        check_spacing(&rig, service, Duration::from_secs(8), 3, ms(1900), ms(4000))?;
    }
    // 503 without a wait: the backoff, grown to the 1 s interval at once, never comes sooner
    // than the interval (it came after 0.5-1 s before).
    rig.wos
        .set_fault(json!({"mode": "unavailable", "retryAfter": null, "scope": "git"}))?;
    std::thread::sleep(Duration::from_secs(3));
    for service in ["git-upload-pack", "git-receive-pack"] {
        check_spacing(&rig, service, Duration::from_secs(8), 5, ms(950), ms(4000))?;
    }

    // Back: the desired state arrives and its status is written.
    rig.wos.set_fault(json!({"mode": "none"}))?;
    wait_for_status_file(&rig, app.id(), &c1, "installed")?;
    let log = rig.sync.log();
    assert!(
        log.contains("asked to retry after 4s"),
        "the wait asked for is not in the log:\n{log}"
    );
    assert!(
        log.contains("the desired-state source can be polled again"),
        "{log}"
    );
    assert!(log.contains("the status branch is written again"), "{log}");
    Ok(())
}

#[test]
fn a_wos_outage_is_logged_when_it_starts_and_ends_not_per_delivery() -> Result<()> {
    let rig = Rig::start(RepoAuthKind::Basic, SyncOptions::default())?;
    let app = rig.app("quiet")?;
    let c1 = rig.commit_app(&app, "quiet", "v1")?;
    rig.wait_for_wos(app.id(), &c1, "installed")?;
    let before = rig.sync.log().len();

    // The API drops every connection for a while (1 s poll interval, 5 s heartbeat), while
    // there is news to deliver.
    rig.wos.set_fault(json!({"mode": "down", "scope": "api"}))?;
    rig.wos.clear_requests()?;
    let c2 = rig.commit_app(&app, "quiet", "v2")?;
    rig.deploy.wait_for(app.id(), &c2, "INSTALLED")?;
    std::thread::sleep(Duration::from_secs(8));
    let failed = rig
        .wos
        .requests()?
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/api/")) && r["status"] == 0)
        .count();
    ensure!(
        failed >= 4,
        "only {failed} failed deliveries: nothing to test"
    );
    rig.wos.set_fault(json!({"mode": "none"}))?;
    rig.wait_for_wos(app.id(), &c2, "installed")?;

    let log = rig.sync.log();
    let during = &log[before..];
    let warnings: Vec<&str> = during.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for one outage, not one per failed delivery ({failed}):\n{during}"
    );
    assert!(warnings[0].contains("WOS not reachable"), "{during}");
    let back: Vec<&str> = during
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("WOS reachable again"))
        .collect();
    assert_eq!(back.len(), 1, "{during}");
    assert!(
        back[0].contains("down_for=") && back[0].contains("failures="),
        "how long and how many: {}",
        back[0]
    );
    Ok(())
}
