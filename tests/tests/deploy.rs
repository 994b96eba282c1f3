//! woa-deploy on the real Docker engine, driven through grpcurl as an operator would.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use woa_tests::{
    AppDeployment, Bystander, Cleanup, Container, Deploy, DeployOptions, DesiredState, Identity,
    Pki, Registry, containers, fails_alone, fails_alone_with, http_get, networks,
    new_deployment_id, remove_container, single_service, tar_gz, testapp_image, wait_until,
};

/// Long enough for a slow, busy machine; a passing test takes a few seconds.
const CONVERGE: Duration = Duration::from_secs(45);

/// backend (health-checked) and web (waits for backend, publishes MESSAGE=${GREETING}).
fn web_and_backend(image: &str) -> String {
    format!(
        r#"services:
  backend:
    image: {image}
    command: ["serve", "8080"]
    healthcheck:
      test: ["CMD", "/testapp", "probe", "8080"]
      interval: 1s
      timeout: 2s
      retries: 30
  web:
    image: {image}
    command: ["serve", "8080"]
    environment:
      MESSAGE: "${{GREETING}}"
    ports: ["127.0.0.1::8080"]
    depends_on:
      backend:
        condition: service_healthy
"#
    )
}

/// Applies revision r1 with one single-service deployment named `name` and waits for it.
fn install_single_service(deploy: &Deploy, cleanup: &Cleanup, name: &str) -> Result<AppDeployment> {
    let location = format!("apps/{name}/compose.yaml");
    let app = AppDeployment::new(&cleanup.deployment_id()?, name).component("app", &location);
    deploy.apply(
        &DesiredState::new("r1")
            .deployment(&app)
            .artifact(&location, single_service(testapp_image()?)),
    )?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    Ok(app)
}

/// The services of a deployment's containers, with how many containers each has.
fn services(containers: &[Container]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for container in containers {
        *count.entry(container.service().to_owned()).or_default() += 1;
    }
    count
}

fn container_of<'a>(containers: &'a [Container], service: &str) -> Result<&'a Container> {
    containers
        .iter()
        .find(|c| c.service() == service)
        .with_context(|| format!("no container for service {service}: {containers:?}"))
}

#[test]
fn serves_health_and_reflection_only_to_clients_with_a_certificate() -> Result<()> {
    let deploy = Deploy::start()?;

    let health = deploy.grpcurl("grpc.health.v1.Health/Check", &json!({}))?;
    assert_eq!(health["status"], "SERVING");

    let list = deploy.grpcurl_raw(Identity::Operator, &[], &["list"])?;
    let services = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{list:?}");
    assert!(
        services
            .lines()
            .any(|l| l == "woa.deploy.v1.DeploymentService"),
        "{services}"
    );

    let anonymous =
        deploy.grpcurl_raw(Identity::Anonymous, &[], &["grpc.health.v1.Health/Check"])?;
    assert!(
        !anonymous.status.success(),
        "a client without certificate got {anonymous:?}"
    );
    assert!(!String::from_utf8_lossy(&anonymous.stdout).contains("SERVING"));

    // A certificate that another CA signed is refused just the same.
    let foreign = Pki::init()?;
    let cert = foreign.file("operator.pem");
    let key = foreign.file("operator-key.pem");
    let flags = [
        "-cert",
        cert.to_str().context("path")?,
        "-key",
        key.to_str().context("path")?,
    ];
    let stranger = deploy.grpcurl_raw(
        Identity::Anonymous,
        &flags,
        &["grpc.health.v1.Health/Check"],
    )?;
    assert!(
        !stranger.status.success(),
        "a client with a foreign certificate got {stranger:?}"
    );
    Ok(())
}

/// When each container of the deployment last started, by container id.
fn start_times(deployment_id: &str) -> Result<BTreeMap<String, String>> {
    containers(deployment_id)?
        .into_iter()
        .map(|c| {
            let out = std::process::Command::new("docker")
                .args(["inspect", "-f", "{{.State.StartedAt}}", &c.id])
                .output()?;
            ensure!(out.status.success(), "docker inspect {}: {out:?}", c.id);
            Ok((c.id, String::from_utf8_lossy(&out.stdout).trim().to_owned()))
        })
        .collect()
}

#[test]
fn re_applying_the_revision_and_restarting_the_service_touch_no_running_container() -> Result<()> {
    let cleanup = Cleanup::new();
    let mut deploy = Deploy::start_with(&DeployOptions {
        resync_interval: Some("1s".into()),
        ..Default::default()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "steady")
        .component("app", "apps/steady/compose.yaml")
        .parameter("GREETING", "steady", &["app"]);
    let desired = DesiredState::new("r1").deployment(&app).artifact(
        "apps/steady/compose.yaml",
        web_and_backend(testapp_image()?),
    );
    deploy.apply(&desired)?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    let before = start_times(app.id())?;

    let again = deploy.apply(&desired)?;
    assert_ne!(again["changed"], json!(true), "{again:#}");

    deploy.restart()?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    // Several resync passes of the restarted service.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(start_times(app.id())?, before);
    Ok(())
}

#[test]
fn a_two_service_app_installs_in_dependency_order_and_serves_its_parameter() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "hello")
        .component("app", "apps/hello/compose.yaml")
        .parameter("GREETING", "hi from woa", &["app"]);

    let response = deploy.apply(
        &DesiredState::new("r1")
            .deployment(&app)
            .artifact("apps/hello/compose.yaml", web_and_backend(testapp_image()?)),
    )?;
    assert_eq!(response["accepted"], json!([app.id()]));
    let status = deploy.wait_for(app.id(), "r1", "INSTALLED")?;

    let running = containers(app.id())?;
    assert_eq!(
        services(&running),
        BTreeMap::from([("backend".into(), 1), ("web".into(), 1)])
    );
    assert!(running.iter().all(|c| c.state == "running"), "{running:?}");
    assert_eq!(
        container_of(&running, "backend")?.health.as_deref(),
        Some("healthy")
    );
    let reported: usize = status["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["containers"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(reported, 2, "{status:#}");

    let port = container_of(&running, "web")?
        .host_port(8080)
        .context("web publishes 8080")?;
    assert_eq!(http_get(port, "/")?, (200, "hi from woa".to_owned()));
    Ok(())
}

#[test]
fn changing_a_parameter_recreates_only_the_container_that_uses_it() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let id = cleanup.deployment_id()?;
    let compose = web_and_backend(testapp_image()?);
    let revision = |revision: &str, greeting: &str| {
        let app = AppDeployment::new(&id, "hello")
            .component("app", "apps/hello/compose.yaml")
            .parameter("GREETING", greeting, &["app"]);
        DesiredState::new(revision)
            .deployment(&app)
            .artifact("apps/hello/compose.yaml", compose.clone())
    };

    deploy.apply(&revision("r1", "first"))?;
    deploy.wait_for(&id, "r1", "INSTALLED")?;
    let before = containers(&id)?;

    deploy.apply(&revision("r2", "second"))?;
    deploy.wait_for(&id, "r2", "INSTALLED")?;
    let after = containers(&id)?;

    assert_eq!(services(&after), services(&before));
    assert_eq!(
        container_of(&after, "backend")?.id,
        container_of(&before, "backend")?.id
    );
    assert_ne!(
        container_of(&after, "web")?.id,
        container_of(&before, "web")?.id
    );
    let port = container_of(&after, "web")?
        .host_port(8080)
        .context("web port")?;
    assert_eq!(http_get(port, "/")?.1, "second");
    Ok(())
}

#[test]
fn a_deployment_left_out_of_the_desired_state_is_removed_with_its_network() -> Result<()> {
    let cleanup = Cleanup::new();
    let mut deploy = Deploy::start()?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "hello")
        .component("app", "apps/hello/compose.yaml")
        .parameter("GREETING", "bye soon", &["app"]);
    deploy.apply(
        &DesiredState::new("r1")
            .deployment(&app)
            .artifact("apps/hello/compose.yaml", web_and_backend(testapp_image()?)),
    )?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    assert!(
        !networks(app.id())?.is_empty(),
        "the app runs on its own network"
    );

    deploy.apply(&DesiredState::new("r2"))?;
    wait_until(CONVERGE, || {
        Ok(containers(app.id())?.is_empty() && networks(app.id())?.is_empty())
    })?;
    let removed = |deploy: &Deploy| -> Result<bool> {
        let status = deploy.status(app.id())?;
        Ok(status.is_some_and(|s| s["state"] == "DEPLOYMENT_STATE_REMOVED"))
    };
    wait_until(CONVERGE, || removed(&deploy))?;
    // The removal is still reported after a restart, for a sync service that missed it.
    deploy.restart()?;
    wait_until(CONVERGE, || removed(&deploy))?;
    Ok(())
}

#[test]
fn a_kill_9_in_the_middle_of_an_apply_converges_without_duplicates() -> Result<()> {
    let cleanup = Cleanup::new();
    let mut deploy = Deploy::start()?;
    let image = testapp_image()?;
    // A chain gated on health checks, so the apply takes a few seconds to interrupt.
    let health = r#"
    healthcheck:
      test: ["CMD", "/testapp", "probe", "8080"]
      interval: 1s
      timeout: 2s
      retries: 30"#;
    let compose = format!(
        "services:
  first:
    image: {image}
    command: [\"serve\", \"8080\"]{health}
  second:
    image: {image}
    command: [\"serve\", \"8080\"]{health}
    depends_on: {{ first: {{ condition: service_healthy }} }}
  third:
    image: {image}
    command: [\"serve\", \"8080\"]
    depends_on: {{ second: {{ condition: service_healthy }} }}
"
    );
    let app = AppDeployment::new(&cleanup.deployment_id()?, "chain")
        .component("app", "apps/chain/compose.yaml");
    deploy.apply(
        &DesiredState::new("r1")
            .deployment(&app)
            .artifact("apps/chain/compose.yaml", compose),
    )?;
    wait_until(CONVERGE, || Ok(!containers(app.id())?.is_empty()))?;
    deploy.kill9()?;
    let interrupted = containers(app.id())?;
    assert!(
        interrupted.len() < 3,
        "the apply was already done: {interrupted:?}"
    );

    deploy.restart()?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    let running = containers(app.id())?;
    assert_eq!(
        services(&running),
        BTreeMap::from([
            ("first".into(), 1),
            ("second".into(), 1),
            ("third".into(), 1)
        ])
    );
    assert!(running.iter().all(|c| c.state == "running"), "{running:?}");
    Ok(())
}

#[test]
fn a_container_removed_behind_its_back_is_recreated_by_resync() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&DeployOptions {
        resync_interval: Some("2s".into()),
        ..DeployOptions::default()
    })?;
    let app = install_single_service(&deploy, &cleanup, "sleeper")?;
    let removed = container_of(&containers(app.id())?, "app")?.id.clone();

    remove_container(&removed)?;
    let replacement = wait_until(Duration::from_secs(15), || {
        let now = containers(app.id())?;
        Ok(now
            .into_iter()
            .find(|c| c.id != removed && c.state == "running"))
    })?;
    assert_eq!(replacement.service(), "app");
    assert_eq!(containers(app.id())?.len(), 1);
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    Ok(())
}

fn compose_app(id: &str, desired: DesiredState, compose: String) -> DesiredState {
    let app = AppDeployment::new(id, "bad").component("app", "apps/bad/compose.yaml");
    desired
        .deployment(&app)
        .artifact("apps/bad/compose.yaml", compose)
}

#[test]
fn malformed_yaml_is_rejected_and_changes_nothing() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let bystander = Bystander::install(&deploy, &cleanup)?;

    let path = "deployments/broken.yaml";
    let broken = "apiVersion: application.margo.org/v1alpha1\nkind: [unclosed\n";
    let response = deploy.apply(
        &bystander
            .desired
            .clone()
            .revision("r2")
            .document(path, broken),
    )?;
    // Without parsing, no deployment id is known: the document itself is reported.
    let rejected = |list: &Value| -> Option<Value> {
        list.as_array()?.iter().find(|r| r["path"] == path).cloned()
    };
    let in_response = rejected(&response["rejected"]).context(format!("{response:#}"))?;
    let message = in_response["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{in_response:#}");
    let state = deploy.current_state()?;
    assert!(rejected(&state["rejected"]).is_some(), "{state:#}");
    bystander.assert_untouched(&deploy)
}

#[test]
fn a_deployment_without_components_fails_naming_the_field() -> Result<()> {
    fails_alone(
        |id, desired| desired.deployment(&AppDeployment::new(id, "empty")),
        "components",
    )
}

/// A one-component deployment with the given profile type.
fn with_profile(id: &str, desired: DesiredState, profile: &str) -> DesiredState {
    let app = AppDeployment::new(id, profile)
        .profile(profile)
        .component("app", "x");
    desired.deployment(&app)
}

#[test]
fn an_unknown_profile_type_fails_naming_it() -> Result<()> {
    fails_alone(|id, d| with_profile(id, d, "nomad-job"), "nomad-job")
}

#[test]
fn a_helm_profile_is_not_supported_on_this_device() -> Result<()> {
    fails_alone(
        |id, d| with_profile(id, d, "helm"),
        "deployment profile helm is not supported on this device",
    )
}

#[test]
fn an_unsupported_compose_key_fails_naming_it() -> Result<()> {
    let image = testapp_image()?;
    fails_alone(
        |id, desired| {
            let compose = format!("services:\n  app:\n    image: {image}\n    develop: {{}}\n");
            compose_app(id, desired, compose)
        },
        "services.app.develop: unsupported key",
    )
}

#[test]
fn an_image_that_does_not_exist_fails_naming_it() -> Result<()> {
    let missing = format!("woa-tests/does-not-exist:{}", new_deployment_id()?);
    let failure = fails_alone_with(
        &DeployOptions::default(),
        |id, desired| {
            compose_app(
                id,
                desired,
                format!("services:\n  app:\n    image: {missing}\n"),
            )
        },
        &missing,
    )?;
    // A first release has nothing to roll back to: the status keeps the pull's cause.
    assert_eq!(failure["error"]["code"], "ERR_IMAGE_PULL", "{failure:#}");
    Ok(())
}

#[test]
fn a_parameter_for_an_unknown_component_fails_naming_it() -> Result<()> {
    let image = testapp_image()?;
    fails_alone(
        |id, desired| {
            let app = AppDeployment::new(id, "param")
                .component("app", "apps/param/compose.yaml")
                .parameter("GREETING", "hi", &["no-such-component"]);
            desired
                .deployment(&app)
                .artifact("apps/param/compose.yaml", single_service(image))
        },
        "no-such-component",
    )
}

#[test]
fn an_archive_entry_escaping_the_package_fails_naming_it() -> Result<()> {
    let archive = tar_gz(&[
        ("compose.yaml", single_service(testapp_image()?).as_bytes()),
        ("../escape.txt", b"outside"),
    ])?;
    fails_alone(
        |id, desired| {
            let app =
                AppDeployment::new(id, "archive").component("app", "apps/evil/package.tar.gz");
            desired
                .deployment(&app)
                .artifact("apps/evil/package.tar.gz", archive)
        },
        "../escape.txt",
    )
}

#[test]
fn images_are_pulled_from_a_registry_with_its_credentials() -> Result<()> {
    let cleanup = Cleanup::new();
    let registry = Registry::start()?;
    let image = registry.push(
        testapp_image()?,
        &format!("woa-tests/app:{}", new_deployment_id()?),
    )?;
    cleanup.image(&image);
    let deploy = Deploy::start_with(&DeployOptions {
        registries: vec![registry.login()],
        ..DeployOptions::default()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "pulled")
        .component("app", "apps/pulled/compose.yaml");
    deploy.apply(
        &DesiredState::new("r1")
            .deployment(&app)
            .artifact("apps/pulled/compose.yaml", single_service(&image)),
    )?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    let running = containers(app.id())?;
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].state, "running");
    Ok(())
}

#[test]
fn a_wrong_registry_password_fails_naming_the_image() -> Result<()> {
    let cleanup = Cleanup::new();
    let registry = Registry::start()?;
    let image = registry.push(
        testapp_image()?,
        &format!("woa-tests/app:{}", new_deployment_id()?),
    )?;
    cleanup.image(&image);
    let mut login = registry.login();
    login.password = "not-the-password".into();
    let deploy = Deploy::start_with(&DeployOptions {
        registries: vec![login],
        ..DeployOptions::default()
    })?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "denied")
        .component("app", "apps/denied/compose.yaml");
    deploy.apply(
        &DesiredState::new("r1")
            .deployment(&app)
            .artifact("apps/denied/compose.yaml", single_service(&image)),
    )?;
    let failure = deploy.wait_for(app.id(), "r1", "FAILED")?;
    let message = failure["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&image), "{failure:#}");
    assert!(containers(app.id())?.is_empty());
    Ok(())
}

#[test]
fn a_lost_state_directory_removes_nothing_that_runs() -> Result<()> {
    let cleanup = Cleanup::new();
    let mut deploy = Deploy::start_with(&DeployOptions {
        resync_interval: Some("1s".into()),
        ..Default::default()
    })?;
    let app = install_single_service(&deploy, &cleanup, "kept")?;
    let before = start_times(app.id())?;

    deploy.kill9()?;
    std::fs::remove_dir_all(deploy.state_dir())?;
    deploy.restart()?;
    // Several resync passes with no desired state at all.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(start_times(app.id())?, before, "{}", deploy.log());
    // Nor is it reported as being removed: its desired state is unknown until one arrives.
    let state = deploy.current_state()?;
    assert_eq!(deploy.status(app.id())?, None, "{state:#}");
    assert!(!deploy.state_dir().join("removed.json").exists());
    Ok(())
}

/// A document with an id but no components: it fails without ever getting a container.
fn never_installed(id: &str) -> String {
    AppDeployment::new(id, "never").to_yaml()
}

#[test]
fn a_deployment_that_never_ran_is_reported_removed_when_its_file_goes_or_its_id_changes()
-> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let (first, second) = (cleanup.deployment_id()?, cleanup.deployment_id()?);
    let path = "deployments/never.yaml";
    deploy.apply(&DesiredState::new("r1").document(path, never_installed(&first)))?;
    deploy.wait_for(&first, "r1", "FAILED")?;

    // The same file now names another deployment: the first one is gone.
    deploy.apply(&DesiredState::new("r2").document(path, never_installed(&second)))?;
    deploy.wait_for(&second, "r2", "FAILED")?;
    deploy.wait_for(&first, "r2", "REMOVED")?;

    // The file is deleted.
    deploy.apply(&DesiredState::new("r3"))?;
    deploy.wait_for(&second, "r3", "REMOVED")?;
    Ok(())
}

#[test]
fn a_removed_status_lists_the_components_that_were_removed() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let app = install_single_service(&deploy, &cleanup, "leaving")?;
    deploy.apply(&DesiredState::new("r2"))?;
    let removed = deploy.wait_for(app.id(), "r2", "REMOVED")?;
    let names: Vec<&str> = removed["components"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["app"], "{removed:#}");
    assert_eq!(
        removed["components"][0]["state"], "DEPLOYMENT_STATE_REMOVED",
        "{removed:#}"
    );
    Ok(())
}

#[test]
fn unreadable_bookkeeping_files_are_set_aside_and_start_up_goes_on() -> Result<()> {
    let cleanup = Cleanup::new();
    let mut deploy = Deploy::start()?;
    let app = install_single_service(&deploy, &cleanup, "bookkept")?;
    let before = start_times(app.id())?;

    deploy.kill9()?;
    let dir = deploy.state_dir();
    for file in ["images.json", "removed.json"] {
        std::fs::write(dir.join(file), b"{\"truncated\": ")?;
    }
    deploy.restart()?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    assert_eq!(start_times(app.id())?, before);
    for file in ["images.json", "removed.json"] {
        let aside = std::fs::read_dir(&dir)?
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .any(|name| name.starts_with(&format!("{file}.corrupt-")));
        assert!(aside, "{file} was not set aside: {}", deploy.log());
    }
    assert!(
        deploy
            .log()
            .contains("an unreadable state file was set aside"),
        "{}",
        deploy.log()
    );
    Ok(())
}

#[test]
fn a_broken_update_whose_id_can_be_read_lists_the_components_it_had() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let app = install_single_service(&deploy, &cleanup, "halfread")?;
    let broken = format!("id: {}\nspec: [unclosed\n", app.id());
    deploy.apply(
        &DesiredState::new("r2")
            .document(&format!("deployments/{}.yaml", app.id()), broken)
            .artifact(
                "apps/halfread/compose.yaml",
                single_service(testapp_image()?),
            ),
    )?;
    let status = deploy.wait_for(app.id(), "r2", "FAILED")?;
    assert_eq!(status["components"][0]["name"], "app", "{status:#}");
    assert_eq!(containers(app.id())?.len(), 1);
    Ok(())
}

#[test]
fn a_file_too_broken_to_name_its_deployment_keeps_that_deployment_running() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let app = AppDeployment::new(&cleanup.deployment_id()?, "sturdy")
        .component("app", "apps/sturdy/compose.yaml");
    let path = "deployments/sturdy.yaml";
    let compose = single_service(testapp_image()?);
    deploy.apply(
        &DesiredState::new("r1")
            .document(path, app.to_yaml())
            .artifact("apps/sturdy/compose.yaml", compose.clone()),
    )?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    let before = start_times(app.id())?;

    deploy.apply(
        &DesiredState::new("r2")
            .document(path, "metadata: [unclosed\n  annotations: {id: lost")
            .artifact("apps/sturdy/compose.yaml", compose),
    )?;
    let status = deploy.wait_for(app.id(), "r2", "FAILED")?;
    assert!(
        status["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(path)),
        "{status:#}"
    );
    // The components its last good version named, failed with the document's error.
    assert_eq!(status["components"][0]["name"], "app", "{status:#}");
    assert_eq!(
        status["components"][0]["state"], "DEPLOYMENT_STATE_FAILED",
        "{status:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(start_times(app.id())?, before);
    Ok(())
}

#[test]
fn an_update_the_engine_refuses_leaves_the_old_container_running() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let app = install_single_service(&deploy, &cleanup, "guarded")?;
    let before = start_times(app.id())?;

    // Valid compose, but the engine refuses the container at create time.
    let refused = format!(
        "{}    cap_drop: [NOT_A_CAP]\n",
        single_service(testapp_image()?)
    );
    deploy.apply(
        &DesiredState::new("r2")
            .deployment(&app)
            .artifact("apps/guarded/compose.yaml", refused),
    )?;
    let status = deploy.wait_for(app.id(), "r2", "FAILED")?;
    assert!(
        status["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NOT_A_CAP")),
        "{status:#}"
    );
    let running = containers(app.id())?;
    assert_eq!(services(&running), BTreeMap::from([("app".into(), 1)]));
    assert_eq!(start_times(app.id())?, before);
    Ok(())
}

#[test]
fn metrics_count_passes_and_deployments_by_state() -> Result<()> {
    let cleanup = Cleanup::new();
    let port = woa_tests::free_port()?;
    let deploy = Deploy::start_with(&DeployOptions {
        resync_interval: Some("1s".into()),
        metrics_port: Some(port),
        ..Default::default()
    })?;
    install_single_service(&deploy, &cleanup, "counted")?;
    let text = wait_until(CONVERGE, || {
        let (code, body) = http_get(port, "/metrics")?;
        ensure!(code == 200, "metrics answered {code}");
        Ok(body
            .contains("woa_deploy_deployments{state=\"installed\"} 1")
            .then_some(body))
    })?;
    assert!(
        text.contains("woa_deploy_desired_states_applied_total 1"),
        "{text}"
    );
    let passes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("woa_deploy_reconcile_passes_total "))
        .context("passes counter")?
        .parse()?;
    assert!(passes >= 1, "{text}");
    Ok(())
}

#[test]
fn capabilities_describe_this_device_and_the_margo_manifest() -> Result<()> {
    let deploy = Deploy::start()?;
    let caps = deploy.grpcurl(
        "woa.deploy.v1.DeploymentService/GetCapabilities",
        &json!({}),
    )?;
    let cores = caps["cpus"][0]["cores"].as_u64().context("cores")?;
    assert!(cores >= 1, "{caps:#}");
    assert_eq!(caps["supportedDeploymentTypes"], json!(["compose"]));
    assert!(
        caps["memory"].as_str().is_some_and(|m| m.ends_with("i")),
        "binary units: {caps:#}"
    );
    let manifest: Value =
        serde_json::from_str(caps["manifestJson"].as_str().context("manifestJson")?)?;
    assert_eq!(manifest["kind"], "DeviceCapabilitiesManifest");
    assert_eq!(manifest["properties"]["cpus"][0]["cores"], json!(cores));
    Ok(())
}

#[test]
fn watching_sends_the_full_state_at_once() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let app = install_single_service(&deploy, &cleanup, "watched")?;
    // The stream never ends by itself: grpcurl gives up after its deadline, having printed
    // what arrived.
    let out = deploy.grpcurl_raw(
        Identity::Operator,
        &["-max-time", "3"],
        &["woa.deploy.v1.DeploymentService/WatchCurrentState"],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(app.id()), "{out:?}");
    assert!(text.contains("DEPLOYMENT_STATE_INSTALLED"), "{out:?}");
    Ok(())
}

#[test]
fn a_secret_parameter_stays_out_of_the_log_even_at_trace_level() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&DeployOptions {
        rust_log: Some("trace".into()),
        ..Default::default()
    })?;
    let secret = format!("s3cret-{}", new_deployment_id()?);
    let compose = format!(
        "{}    environment:\n      TOKEN: \"${{TOKEN}}\"\n",
        single_service(testapp_image()?)
    );
    let app = AppDeployment::new(&cleanup.deployment_id()?, "secretive")
        .component("app", "apps/secretive/compose.yaml")
        .parameter("TOKEN", &secret, &["app"]);
    deploy.apply(
        &DesiredState::new("r1")
            .deployment(&app)
            .artifact("apps/secretive/compose.yaml", compose),
    )?;
    deploy.wait_for(app.id(), "r1", "INSTALLED")?;
    let running = containers(app.id())?;
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{json .Config.Env}}", &running[0].id])
        .output()?;
    let env = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        env.contains(&secret),
        "the secret did not reach the app: {env}"
    );
    let log = deploy.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "not verbose: {log}"
    );
    assert!(!log.contains(&secret), "the secret is in the log");
    Ok(())
}
