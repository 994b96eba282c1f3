//! Safe rollout on the real engine: local approvals (grpcurl and the CLI), apply windows,
//! health-gated apply with automatic rollback, pull-before-stop from a slow registry, and image
//! garbage collection.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use woa_tests::{
    AppDeployment, Cleanup, Deploy, DeployOptions, DesiredState, Registry, Throttle, answer,
    containers, new_deployment_id, testapp_image, wait_answer, wait_until,
};

/// Long enough for a slow, busy machine; a passing test takes a few seconds.
const CONVERGE: Duration = Duration::from_secs(60);

const LOCATION: &str = "apps/web/compose.yaml";

/// One web service answering `message` on a loopback port, with extra service keys.
fn web(image: &str, message: &str, extra: &str) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    command: [\"serve\", \"8080\"]\n    \
         environment:\n      MESSAGE: \"{message}\"\n    ports: [\"127.0.0.1::8080\"]\n{extra}"
    )
}

/// The desired state at `revision` with `app` running `compose`.
fn revision(revision: &str, app: &AppDeployment, compose: String) -> DesiredState {
    DesiredState::new(revision)
        .deployment(app)
        .artifact(LOCATION, compose)
}

fn error_of(status: &Value) -> (String, String) {
    let error = &status["error"];
    let text = |key: &str| error[key].as_str().unwrap_or_default().to_owned();
    (text("code"), text("message"))
}

/// Builds `FROM testapp` plus `dockerfile_tail` as a local image; removed by `cleanup`.
fn derived_image(cleanup: &Cleanup, name: &str, dockerfile_tail: &str) -> Result<String> {
    let context = tempfile::tempdir()?;
    let dockerfile = format!("FROM {}\n{dockerfile_tail}\n", testapp_image()?);
    std::fs::write(context.path().join("Dockerfile"), dockerfile)?;
    // A layer of its own, so a pull of the image has to fetch bytes.
    let mut blob = vec![0; 512 * 1024];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut blob)?;
    std::fs::write(context.path().join("blob"), blob)?;
    let tag = format!("woa-tests-{name}:{}", new_deployment_id()?);
    let built = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--tag", &tag])
        .arg(context.path())
        .output()?;
    ensure!(
        built.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    cleanup.image(&tag);
    Ok(tag)
}

/// An image whose every container exits 1 at start.
fn crashing_image(cleanup: &Cleanup) -> Result<String> {
    derived_image(cleanup, "crash", "ENV FAIL_AT_START=1")
}

/// Pushes a fresh image of its own to `registry` as `<repository>:<tag>`, with no local copy
/// left, so that using it means pulling it. Returns the pushed reference.
fn pushed_image(cleanup: &Cleanup, registry: &Registry, tag: &str) -> Result<String> {
    let local = derived_image(cleanup, "pushed", "COPY blob /blob")?;
    let reference = registry.push(&local, &format!("woa-tests/rollout:{tag}"))?;
    cleanup.image(&reference);
    remove_image(&local)?;
    Ok(reference)
}

fn image_present(reference: &str) -> Result<bool> {
    let inspect = Command::new("docker")
        .args(["image", "inspect", reference])
        .output()?;
    Ok(inspect.status.success())
}

fn remove_image(reference: &str) -> Result<()> {
    let removed = Command::new("docker").args(["rmi", reference]).output()?;
    ensure!(
        removed.status.success(),
        "docker rmi {reference}: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    Ok(())
}

fn fast() -> DeployOptions {
    DeployOptions {
        resync_interval: Some("1s".into()),
        ..DeployOptions::default()
    }
}

/// Runs the operator CLI and returns its output, failing on a non-zero exit.
fn cli(deploy: &Deploy, args: &[&str]) -> Result<String> {
    let output = deploy.operator(args)?;
    if !output.status.success() {
        bail!(
            "woa-deploy {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn a_crash_looping_release_is_rolled_back_and_not_retried_until_asked() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&fast())?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "crashy").component("app", LOCATION);
    let id = app.id();
    let always = "    restart: always\n";
    deploy.apply(&revision("r1", &app, web(testapp_image()?, "one", always)))?;
    deploy.wait_for(id, "r1", "INSTALLED")?;

    let crashing = crashing_image(&cleanup)?;
    deploy.apply(&revision("r2", &app, web(&crashing, "two", always)))?;
    let failed = deploy.wait_for(id, "r2", "FAILED")?;
    let (code, message) = error_of(&failed);
    assert_eq!(code, "ERR_ROLLED_BACK", "{failed:#}");
    assert!(
        message.contains("revision r2 failed and was rolled back to revision r1"),
        "{message}"
    );
    assert!(message.contains("web"), "names the container: {message}");
    wait_answer(id, "one")?;

    // Resync passes run every second; none of them tries r2 again.
    let before = containers(id)?;
    std::thread::sleep(Duration::from_secs(4));
    let after = containers(id)?;
    assert_eq!(
        before.iter().map(|c| &c.id).collect::<Vec<_>>(),
        after.iter().map(|c| &c.id).collect::<Vec<_>>(),
        "the rolled-back release was tried again"
    );
    assert_eq!(answer(id)?, "one");
    assert_eq!(
        deploy.log().matches("release failed; rolling back").count(),
        1
    );

    // Until the operator asks: then it is tried, fails and is rolled back once more.
    let retried = cli(&deploy, &["retry", id])?;
    assert!(retried.contains("retrying"), "{retried}");
    wait_until(CONVERGE, || {
        Ok(deploy.log().matches("release failed; rolling back").count() == 2)
    })
    .context("retry did not apply the held release again")?;
    deploy.wait_for(id, "r2", "FAILED")?;
    wait_answer(id, "one")?;
    Ok(())
}

/// When each container of the deployment last started.
fn start_times(deployment_id: &str) -> Result<Vec<String>> {
    containers(deployment_id)?
        .into_iter()
        .map(|c| {
            let out = Command::new("docker")
                .args(["inspect", "-f", "{{.State.StartedAt}}", &c.id])
                .output()?;
            ensure!(out.status.success(), "docker inspect {}: {out:?}", c.id);
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .collect()
}

#[test]
fn a_first_release_that_fails_is_not_started_again_until_retried() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&fast())?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "first").component("app", LOCATION);
    let id = app.id();
    // No restart policy: only woa-deploy could start it again.
    deploy.apply(&revision(
        "r1",
        &app,
        web(&crashing_image(&cleanup)?, "one", ""),
    ))?;
    let failed = deploy.wait_for(id, "r1", "FAILED")?;
    let (code, message) = error_of(&failed);
    // Nothing was rolled back: the status keeps the cause.
    assert_eq!(code, "ERR_NOT_READY", "{failed:#}");
    assert!(
        message.contains("nothing was rolled back") && message.contains("exited with code"),
        "{message}"
    );
    let started = start_times(id)?;
    assert_eq!(started.len(), 1);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        start_times(id)?,
        started,
        "started again without being asked"
    );

    cli(&deploy, &["retry", id])?;
    wait_until(CONVERGE, || Ok(start_times(id)? != started))
        .context("retry did not start the release again")?;
    deploy.wait_for(id, "r1", "FAILED")?;
    Ok(())
}

#[test]
fn a_health_check_that_never_passes_fails_after_the_timeout_and_rolls_back() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&fast())?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "unhealthy")
        .component("app", LOCATION)
        .timeout("app", "4s");
    let id = app.id();
    let image = testapp_image()?;
    deploy.apply(&revision("r1", &app, web(image, "one", "")))?;
    deploy.wait_for(id, "r1", "INSTALLED")?;

    // Probes a port nothing listens on, with retries enough to stay "starting" past the timeout.
    let never = "    healthcheck:\n      test: [\"CMD\", \"/testapp\", \"probe\", \"9\"]\n      \
                 interval: 1s\n      retries: 1000\n";
    deploy.apply(&revision("r2", &app, web(image, "two", never)))?;
    let failed = deploy.wait_for(id, "r2", "FAILED")?;
    let (code, message) = error_of(&failed);
    assert_eq!(code, "ERR_ROLLED_BACK", "{failed:#}");
    assert!(message.contains("not ready within 4s"), "{message}");
    assert!(message.contains("rolled back to revision r1"), "{message}");
    wait_answer(id, "one")?;
    Ok(())
}

#[test]
fn manual_approval_holds_releases_until_approved_rejected_or_superseded() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&DeployOptions {
        rollout: "approval = \"manual\"\n".into(),
        ..fast()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "approved").component("app", LOCATION);
    let id = app.id();
    let image = testapp_image()?;
    let list = |deploy: &Deploy| -> Result<Vec<Value>> {
        let listed = deploy.grpcurl(
            "woa.deploy.v1.DeploymentService/ListPendingApprovals",
            &json!({}),
        )?;
        Ok(listed["pending"].as_array().cloned().unwrap_or_default())
    };

    // A new deployment waits, and nothing runs.
    deploy.apply(&revision("r1", &app, web(image, "one", "")))?;
    let pending = deploy.wait_for(id, "r1", "PENDING")?;
    assert_eq!(error_of(&pending).1, "awaiting local approval");
    assert!(containers(id)?.is_empty());

    // Approved with grpcurl, naming the release it was shown.
    let shown = list(&deploy)?;
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert_eq!(shown[0]["deploymentId"], id);
    assert_eq!(shown[0]["changes"][0]["field"], "component");
    deploy.grpcurl(
        "woa.deploy.v1.DeploymentService/Approve",
        &json!({ "deploymentId": id, "release": shown[0]["release"] }),
    )?;
    deploy.wait_for(id, "r1", "INSTALLED")?;
    wait_answer(id, "one")?;
    let running = containers(id)?[0].id.clone();

    // r2 waits while r1 keeps running; r3 arriving meanwhile supersedes it.
    deploy.apply(&revision("r2", &app, web(image, "two", "")))?;
    deploy.wait_for(id, "r2", "PENDING")?;
    let r2 = list(&deploy)?[0]["release"].clone();
    deploy.apply(&revision("r3", &app, web(image, "three", "")))?;
    deploy.wait_for(id, "r3", "PENDING")?;
    let shown = list(&deploy)?;
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0]["revision"], "r3");
    let stale = deploy.grpcurl(
        "woa.deploy.v1.DeploymentService/Approve",
        &json!({ "deploymentId": id, "release": r2 }),
    );
    let stale = stale
        .err()
        .context("approving a superseded release worked")?;
    assert!(
        format!("{stale:#}").contains("review it again"),
        "{stale:#}"
    );
    assert_eq!(containers(id)?[0].id, running);
    assert_eq!(answer(id)?, "one");

    // Pending approvals survive a restart; the CLI shows the change and approves it.
    let mut deploy = deploy;
    deploy.restart()?;
    deploy.wait_for(id, "r3", "PENDING")?;
    let show = cli(&deploy, &["approvals", "show", id])?;
    assert!(
        show.contains("~ app/web environment.MESSAGE: one -> three"),
        "{show}"
    );
    let listed = cli(&deploy, &["approvals", "list"])?;
    assert!(listed.contains(id) && listed.contains("r3"), "{listed}");
    let approved = cli(&deploy, &["approvals", "approve", id])?;
    assert!(approved.contains("approved"), "{approved}");
    deploy.wait_for(id, "r3", "INSTALLED")?;
    wait_answer(id, "three")?;

    // A rejection is reported to the orchestrator and changes nothing that runs.
    deploy.apply(&revision("r4", &app, web(image, "four", "")))?;
    deploy.wait_for(id, "r4", "PENDING")?;
    cli(
        &deploy,
        &[
            "approvals",
            "reject",
            id,
            "--reason",
            "not during the shift",
        ],
    )?;
    let rejected = deploy.wait_for(id, "r4", "FAILED")?;
    let (code, message) = error_of(&rejected);
    assert_eq!(code, "ERR_REJECTED");
    assert_eq!(message, "rejected locally: not during the shift");
    let manifest: Value = serde_json::from_str(rejected["manifestJson"].as_str().unwrap_or("{}"))?;
    assert_eq!(manifest["status"]["state"], "failed", "{manifest:#}");
    assert_eq!(answer(id)?, "three");
    assert!(cli(&deploy, &["approvals", "list"])?.contains("no release awaits approval"));
    Ok(())
}

#[test]
fn outside_the_apply_windows_a_release_waits_in_pending() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&DeployOptions {
        rollout: "windows = [\"2020-01-01T00:00/2020-01-02T00:00 UTC\"]\n".into(),
        ..fast()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "windowed").component("app", LOCATION);
    deploy.apply(&revision("r1", &app, web(testapp_image()?, "one", "")))?;
    let pending = deploy.wait_for(app.id(), "r1", "PENDING")?;
    let (code, message) = error_of(&pending);
    assert_eq!(code, "OUTSIDE_APPLY_WINDOW");
    assert!(message.contains("outside the apply windows"), "{message}");
    assert!(containers(app.id())?.is_empty());
    Ok(())
}

#[test]
fn the_old_container_serves_while_the_new_image_is_pulled_from_a_slow_registry() -> Result<()> {
    let cleanup = Cleanup::new();
    let registry = Registry::start()?;
    let pushed = pushed_image(&cleanup, &registry, &new_deployment_id()?)?;
    // The same registry behind a link of 100 KB/s: the 512 KiB layer takes about 5 s.
    let throttle = Throttle::start(&registry.login().host, 100_000)?;
    let slow = pushed.replacen(&registry.login().host, &throttle.host(), 1);
    cleanup.image(&slow);
    let mut login = registry.login();
    login.host = throttle.host();
    let deploy = Deploy::start_with(&DeployOptions {
        registries: vec![login],
        ..fast()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "slow").component("app", LOCATION);
    let id = app.id();
    deploy.apply(&revision("r1", &app, web(testapp_image()?, "one", "")))?;
    deploy.wait_for(id, "r1", "INSTALLED")?;

    deploy.apply(&revision("r2", &app, web(&slow, "two", "")))?;
    // While the image is on its way, the old container answers.
    let mut served_while_pulling = 0;
    let deadline = Instant::now() + CONVERGE;
    while !image_present(&slow)? {
        ensure!(Instant::now() < deadline, "the pull never finished");
        match answer(id) {
            Ok(message) if message == "one" => served_while_pulling += 1,
            Ok(_) => {}
            // The pull may end between the check above and the request, and the replacement
            // then closes the old container's connections: that is the end of the pull.
            Err(_) if image_present(&slow)? => break,
            Err(e) => return Err(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        served_while_pulling >= 5,
        "the old container answered {served_while_pulling} times during the pull"
    );
    deploy.wait_for(id, "r2", "INSTALLED")?;
    wait_answer(id, "two")?;
    Ok(())
}

#[test]
fn a_full_disk_fails_the_release_early_and_keeps_what_runs() -> Result<()> {
    let cleanup = Cleanup::new();
    let registry = Registry::start()?;
    let pushed = pushed_image(&cleanup, &registry, &new_deployment_id()?)?;
    let deploy = Deploy::start_with(&DeployOptions {
        registries: vec![registry.login()],
        // No disk has this much free.
        rollout: "min_free_disk = \"1000t\"\n".into(),
        ..fast()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "full").component("app", LOCATION);
    let id = app.id();
    // The local image needs no pull, so no disk check.
    deploy.apply(&revision("r1", &app, web(testapp_image()?, "one", "")))?;
    deploy.wait_for(id, "r1", "INSTALLED")?;
    let running = containers(id)?[0].id.clone();

    deploy.apply(&revision("r2", &app, web(&pushed, "two", "")))?;
    let failed = deploy.wait_for(id, "r2", "FAILED")?;
    let (code, message) = error_of(&failed);
    assert_eq!(code, "ERR_ROLLED_BACK");
    assert!(
        message.contains("below the floor") && message.contains("min_free_disk"),
        "{message}"
    );
    assert!(!image_present(&pushed)?, "pulled despite the floor");
    assert_eq!(containers(id)?[0].id, running);
    assert_eq!(answer(id)?, "one");
    Ok(())
}

#[test]
fn garbage_collection_removes_exactly_the_pulled_images_no_release_needs() -> Result<()> {
    let cleanup = Cleanup::new();
    let registry = Registry::start()?;
    let tag = new_deployment_id()?;
    let [v1, v2, v3] = [1, 2, 3].map(|n| pushed_image(&cleanup, &registry, &format!("{tag}-{n}")));
    let (v1, v2, v3) = (v1?, v2?, v3?);
    let deploy = Deploy::start_with(&DeployOptions {
        registries: vec![registry.login()],
        extra: "[image_gc]\nmin_age = \"0s\"\n".into(),
        ..fast()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "collected").component("app", LOCATION);
    // A second deployment on an image the agent never pulled.
    let local_app =
        AppDeployment::new(&cleanup.deployment_id()?, "local").component("app", "apps/local.yaml");
    let local_image = derived_image(&cleanup, "local", "LABEL purpose=gc-test")?;
    let with_local = |desired: DesiredState| {
        desired
            .deployment(&local_app)
            .artifact("apps/local.yaml", web(&local_image, "local", ""))
    };
    for (rev, image) in [("r1", &v1), ("r2", &v2)] {
        deploy.apply(&with_local(revision(rev, &app, web(image, rev, ""))))?;
        deploy.wait_for(app.id(), rev, "INSTALLED")?;
    }
    // r3 drops the local deployment: its image is unused now, but the agent did not pull it.
    deploy.apply(&revision("r3", &app, web(&v3, "r3", "")))?;
    deploy.wait_for(app.id(), "r3", "INSTALLED")?;
    wait_until(CONVERGE, || Ok(!image_present(&v1)?))
        .context("v1 (neither current nor rollback) was never removed")?;
    assert!(
        image_present(&v2)?,
        "the rollback release's image was removed"
    );
    assert!(
        image_present(&v3)?,
        "the current release's image was removed"
    );
    assert!(
        image_present(&local_image)?,
        "an image the agent did not pull was removed"
    );
    assert!(image_present(testapp_image()?)?);
    Ok(())
}

/// The time from a failed apply to a completed rollback, five times; run with
/// `cargo test -p woa-tests --test rollout -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: see BENCHMARKS.md"]
fn bench_failed_apply_to_completed_rollback() -> Result<()> {
    let cleanup = Cleanup::new();
    // The default settle time, as a device would run.
    let deploy = Deploy::start_with(&DeployOptions {
        settle: Some("10s".into()),
        ..fast()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "bench").component("app", LOCATION);
    let id = app.id();
    let always = "    restart: always\n";
    let crashing = crashing_image(&cleanup)?;
    for round in 0..5 {
        let good = format!("good{round}");
        deploy.apply(&revision(&good, &app, web(testapp_image()?, &good, always)))?;
        deploy.wait_for(id, &good, "INSTALLED")?;
        let bad = format!("bad{round}");
        let started = Instant::now();
        deploy.apply(&revision(&bad, &app, web(&crashing, &bad, always)))?;
        deploy.wait_for(id, &bad, "FAILED")?;
        let detected = started.elapsed();
        wait_until(CONVERGE, || {
            Ok(deploy.log().matches("release installed").count() == 2 * (round + 1))
        })?;
        let restored = started.elapsed();
        wait_answer(id, &good)?;
        println!(
            "round {round}: apply -> failure reported {:.2} s, -> previous release installed again {:.2} s",
            detected.as_secs_f64(),
            restored.as_secs_f64()
        );
    }
    Ok(())
}
