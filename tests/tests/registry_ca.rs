//! A compose package as an OCI artifact from a registry whose certificate a private CA signed:
//! pulled once `packages.ca` names that CA, refused (saying why) while it does not.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use woa_tests::{
    AppDeployment, Cleanup, Deploy, DeployOptions, DesiredState, Registry, tar_gz, testapp_image,
    wait_answer,
};

const COMPOSE_MEDIA_TYPE: &str = "application/vnd.org.margo.component.compose.tar+gzip";

#[test]
fn an_artifact_from_a_registry_with_a_private_ca_is_pulled_once_the_ca_is_trusted() -> Result<()> {
    let cleanup = Cleanup::new();
    let id = cleanup.deployment_id()?;
    let registry = Registry::start_tls()?;
    let ca = registry.ca().context("a TLS registry has a CA")?.to_owned();
    let compose = format!(
        "services:\n  web:\n    image: {}\n    command: [\"serve\", \"8080\"]\n    \
         environment:\n      MESSAGE: \"private\"\n    ports: [\"127.0.0.1::8080\"]\n",
        testapp_image()?
    );
    let layer = tar_gz(&[("web/compose.yaml", compose.as_bytes())])?;
    let reference = registry.push_artifact("apps/web", "1.0.0", COMPOSE_MEDIA_TYPE, &layer)?;
    let desired = DesiredState::new("r1").deployment(
        &AppDeployment::new(&id, "web").component("web", &format!("oci://{reference}")),
    );

    // Only the system's CAs: the registry's certificate is not trusted, and the status says so.
    let untrusting = Deploy::start_with(&DeployOptions {
        registries: vec![registry.login()],
        ..Default::default()
    })?;
    untrusting.apply(&desired)?;
    let failed = untrusting.wait_for(&id, "r1", "FAILED")?;
    let message = failed.to_string();
    ensure!(
        message.contains("certificate") || message.contains("UnknownIssuer"),
        "{failed:#}"
    );
    drop(untrusting);

    let path = Value::from(ca.display().to_string());
    let trusting = Deploy::start_with(&DeployOptions {
        registries: vec![registry.login()],
        extra: format!("[packages]\nca = [{path}]\n"),
        ..Default::default()
    })?;
    trusting.apply(&desired)?;
    trusting.wait_for(&id, "r1", "INSTALLED")?;
    wait_answer(&id, "private")?;
    Ok(())
}
