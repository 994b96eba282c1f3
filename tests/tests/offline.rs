//! A device restart with no network: the engine restarts, the registry is gone, and the last
//! applied state comes back, as does its rollback release, without any pull.
//!
//! It restarts the Docker engine, so it is a test binary of its own: cargo runs test binaries
//! one after another, and no other test runs while the engine is down.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use woa_tests::{
    AppDeployment, Cleanup, Deploy, DeployOptions, DesiredState, Registry, containers, http_get,
    new_deployment_id, restart_engine, testapp_image, wait_until,
};

const CONVERGE: Duration = Duration::from_secs(90);

fn web(image: &str, message: &str) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    command: [\"serve\", \"8080\"]\n    \
         environment:\n      MESSAGE: \"{message}\"\n    ports: [\"127.0.0.1::8080\"]\n    \
         restart: unless-stopped\n"
    )
}

fn answers(deployment_id: &str, message: &str) -> Result<bool> {
    let running = containers(deployment_id)?;
    let Some(port) = running
        .iter()
        .find(|c| c.state == "running")
        .and_then(|c| c.host_port(8080))
    else {
        return Ok(false);
    };
    Ok(http_get(port, "/").is_ok_and(|(_, body)| body == message))
}

fn push(registry: &Registry, tag: &str) -> Result<String> {
    // A tag of its own per revision, pulled by the agent.
    registry.push(testapp_image()?, &format!("woa-tests/offline:{tag}"))
}

#[test]
fn after_an_engine_restart_without_network_the_last_state_and_its_rollback_come_back() -> Result<()>
{
    let cleanup = Cleanup::new();
    let mut registry = Some(Registry::start()?);
    let tag = new_deployment_id()?;
    let (v1, v2) = {
        let registry = registry.as_ref().context("registry")?;
        (
            push(registry, &format!("{tag}-1"))?,
            push(registry, &format!("{tag}-2"))?,
        )
    };
    cleanup.image(&v1);
    cleanup.image(&v2);
    let login = registry.as_ref().context("registry")?.login();
    let mut deploy = Deploy::start_with(&DeployOptions {
        resync_interval: Some("1s".into()),
        registries: vec![login],
        extra: "[image_gc]\nmin_age = \"0s\"\n".into(),
        ..DeployOptions::default()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "offline").component("app", "app.yaml");
    let id = app.id();
    for (revision, image) in [("r1", &v1), ("r2", &v2)] {
        let desired = DesiredState::new(revision)
            .deployment(&app)
            .artifact("app.yaml", web(image, revision));
        deploy.apply(&desired)?;
        deploy.wait_for(id, revision, "INSTALLED")?;
    }

    // The device goes down with no network to come back to.
    drop(registry.take());
    deploy.kill9()?;
    restart_engine()?;
    let log_before = deploy.log().len();
    deploy.restart()?;
    deploy.wait_for(id, "r2", "INSTALLED")?;
    wait_until(CONVERGE, || answers(id, "r2")).context("r2 did not come back")?;

    // The rollback release is cached too.
    let output = deploy.operator(&["rollback", id])?;
    ensure!(
        output.status.success(),
        "rollback: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_until(CONVERGE, || answers(id, "r1")).context("r1 did not come back")?;
    let failed = deploy.wait_for(id, "r2", "FAILED")?;
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rolled back locally to revision r1")),
        "{failed:#}"
    );
    let log = &deploy.log()[log_before..];
    assert!(
        !log.contains("pulling image"),
        "pulled while offline:\n{log}"
    );
    let present = Command::new("docker")
        .args(["image", "inspect", &v1])
        .output()?;
    assert!(present.status.success());
    Ok(())
}
