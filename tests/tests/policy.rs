//! The device owner's policy on the real engine: what a desired state may ask of the host.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use woa_tests::{
    AppDeployment, Bystander, Cleanup, Deploy, DeployOptions, DesiredState, containers,
    fails_alone, fails_alone_with, single_service, testapp_image,
};

/// One deployment whose single service has `extra` appended (indented as service keys), and
/// `top` as more top-level keys.
fn app_with(id: &str, desired: DesiredState, extra: &str, top: &str) -> Result<DesiredState> {
    let compose = format!("{}{extra}{top}", single_service(testapp_image()?));
    let app = AppDeployment::new(id, "greedy").component("app", "apps/greedy/compose.yaml");
    Ok(desired
        .deployment(&app)
        .artifact("apps/greedy/compose.yaml", compose))
}

fn binding(id: &str, desired: DesiredState, binds: &[&str]) -> DesiredState {
    let list = binds
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    app_with(id, desired, &format!("    volumes: [{list}]\n"), "").expect("the test app image")
}

/// Options whose policy allows bind mounts below `prefixes`.
fn allowing(prefixes: &[&Path]) -> DeployOptions {
    let list = prefixes
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect::<Vec<_>>()
        .join(", ");
    DeployOptions {
        extra: format!("[policy]\nhost_paths = [{list}]\n"),
        ..Default::default()
    }
}

fn message(status: &serde_json::Value) -> &str {
    status["error"]["message"].as_str().unwrap_or_default()
}

#[test]
fn the_host_root_and_the_engine_socket_are_refused_by_default() -> Result<()> {
    let status = fails_alone_with(
        &DeployOptions::default(),
        |id, d| binding(id, d, &["/:/host:ro"]),
        "services.app.volumes: bind mount of host path / is refused",
    )?;
    ensure!(
        message(&status).contains("policy.engine_socket"),
        "{status:#}"
    );
    fails_alone(
        |id, d| binding(id, d, &["/var/run/docker.sock:/var/run/docker.sock"]),
        "policy.engine_socket = true",
    )
}

#[test]
fn a_host_path_outside_the_allowed_prefixes_is_refused_naming_the_setting() -> Result<()> {
    fails_alone(
        |id, d| binding(id, d, &["/etc:/host-etc:ro"]),
        "policy.host_paths",
    )?;
    let allowed = tempfile::tempdir()?;
    fails_alone_with(
        &allowing(&[allowed.path()]),
        |id, d| binding(id, d, &["/etc:/host-etc:ro"]),
        "/etc is not below policy.host_paths",
    )
    .map(drop)
}

#[test]
fn the_engine_socket_stays_refused_when_every_host_path_is_allowed() -> Result<()> {
    fails_alone_with(
        &allowing(&[Path::new("/")]),
        |id, d| binding(id, d, &["/run/docker.sock:/docker.sock"]),
        "policy.engine_socket = true",
    )
    .map(drop)
}

#[test]
fn a_symlink_below_an_allowed_prefix_cannot_lead_to_the_engine_socket() -> Result<()> {
    let allowed = tempfile::tempdir()?;
    let link = allowed.path().join("sock");
    std::os::unix::fs::symlink("/var/run/docker.sock", &link)?;
    let bind = format!("{}:/docker.sock", link.display());
    fails_alone_with(
        &allowing(&[allowed.path()]),
        |id, d| binding(id, d, &[&bind]),
        "policy.engine_socket = true",
    )
    .map(drop)
}

#[test]
fn the_local_ca_key_is_refused_even_below_an_allowed_prefix() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&allowing(&[&std::env::temp_dir()]))?;
    let ca_key = deploy.pki().file("ca-key.pem");
    ensure!(
        ca_key.starts_with(std::env::temp_dir()),
        "the test's PKI is not below the allowed prefix: {}",
        ca_key.display()
    );
    let bystander = Bystander::install(&deploy, &cleanup)?;
    let bind = format!("{}:/ca-key.pem:ro", ca_key.display());
    bystander.refuses(
        &deploy,
        &cleanup,
        "r2",
        |id, d| binding(id, d, &[&bind]),
        "policy.agent_dirs = true",
    )?;
    let state = format!("{}:/state", deploy.state_dir().display());
    bystander.refuses(
        &deploy,
        &cleanup,
        "r3",
        |id, d| binding(id, d, &[&state]),
        "policy.agent_dirs = true",
    )?;
    Ok(())
}

#[test]
fn a_volume_whose_driver_binds_a_host_path_counts_as_a_bind_mount() -> Result<()> {
    let volume =
        "volumes:\n  data:\n    driver: local\n    driver_opts: {type: none, o: bind, device: /}\n";
    fails_alone(
        |id, d| {
            app_with(id, d, "    volumes: [\"data:/host\"]\n", volume).expect("the test app image")
        },
        "volumes.data.driver_opts.device",
    )
}

#[test]
fn joining_an_external_network_needs_the_allow_list() -> Result<()> {
    let network = "networks:\n  host:\n    external: true\n";
    fails_alone(
        |id, d| app_with(id, d, "    networks: [host]\n", network).expect("the test app image"),
        "networks.host.external: network host was not made by woa and is refused: allow it in policy.external_networks",
    )
}

#[test]
fn a_bind_below_an_allowed_prefix_is_mounted() -> Result<()> {
    let cleanup = Cleanup::new();
    let allowed = tempfile::tempdir()?;
    let data = allowed.path().join("data");
    std::fs::create_dir(&data)?;
    let deploy = Deploy::start_with(&allowing(&[allowed.path()]))?;
    let id = cleanup.deployment_id()?;
    let bind = format!("{}:/data:ro", data.display());
    deploy.apply(&binding(&id, DesiredState::new("r1"), &[&bind]))?;
    deploy.wait_for(&id, "r1", "INSTALLED")?;
    let running = containers(&id)?;
    let container = running.first().context("no container")?;
    ensure!(
        container
            .binds()
            .contains(&(data.display().to_string(), "/data".to_owned())),
        "{:?}",
        container.binds()
    );
    Ok(())
}

#[test]
fn an_update_asking_for_more_of_the_host_keeps_the_running_release() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let bystander = Bystander::install(&deploy, &cleanup)?;
    let greedy = format!(
        "{}    volumes: [\"/:/host\"]\n",
        single_service(testapp_image()?)
    );
    deploy.apply(
        &bystander
            .desired
            .clone()
            .revision("r2")
            .artifact("apps/bystander/compose.yaml", greedy),
    )?;
    let status = deploy.wait_for(&bystander.id, "r2", "FAILED")?;
    ensure!(
        message(&status).contains("services.app.volumes"),
        "{status:#}"
    );
    let now = containers(&bystander.id)?;
    ensure!(
        now.len() == 1 && now[0].id == bystander.container_id && now[0].state == "running",
        "the running release was touched: {now:?}"
    );
    ensure!(now[0].binds().is_empty(), "{:?}", now[0].binds());
    Ok(())
}

#[test]
fn a_capability_beyond_the_default_set_is_refused_naming_the_setting() -> Result<()> {
    fails_alone(
        |id, d| app_with(id, d, "    cap_add: [SYS_MODULE]\n", "").expect("the test app image"),
        "services.app.cap_add: capability SYS_MODULE is refused: allow it in policy.capabilities",
    )
}
