//! A deployment that runs before bad input arrives next to it, and must stay untouched: the
//! proof that bad input "changes nothing that was running".

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::{
    AppDeployment, Cleanup, Deploy, DeployOptions, DesiredState, containers, testapp_image,
};

/// One service that just runs (`sleep`).
pub fn single_service(image: &str) -> String {
    format!("services:\n  app:\n    image: {image}\n    command: [\"sleep\"]\n")
}

/// An installed one-service deployment and its container.
pub struct Bystander {
    /// The desired state (revision `r1`) that holds it; bad input is added to it.
    pub desired: DesiredState,
    /// Its deployment id.
    pub id: String,
    /// Its container's id, which must not change.
    pub container_id: String,
}

impl Bystander {
    /// Installs the bystander at revision `r1` and waits until it runs.
    pub fn install(deploy: &Deploy, cleanup: &Cleanup) -> Result<Bystander> {
        let app = AppDeployment::new(&cleanup.deployment_id()?, "bystander")
            .component("app", "apps/bystander/compose.yaml");
        let desired = DesiredState::new("r1").deployment(&app).artifact(
            "apps/bystander/compose.yaml",
            single_service(testapp_image()?),
        );
        deploy.apply(&desired)?;
        deploy.wait_for(app.id(), "r1", "INSTALLED")?;
        let container = containers(app.id())?
            .into_iter()
            .find(|c| c.service() == "app")
            .context("the bystander has no container")?;
        Ok(Bystander {
            desired,
            id: app.id().to_owned(),
            container_id: container.id,
        })
    }

    /// Applies `bad` (a deployment with a fresh id, added to the bystander's desired state) at
    /// `revision` (a new one each time): the bad deployment must fail with an error message naming `culprit` and
    /// get no container, and the bystander keep running untouched. Returns the bad status.
    pub fn refuses(
        &self,
        deploy: &Deploy,
        cleanup: &Cleanup,
        revision: &str,
        bad: impl FnOnce(&str, DesiredState) -> DesiredState,
        culprit: &str,
    ) -> Result<Value> {
        let bad_id = cleanup.deployment_id()?;
        let response = deploy.apply(&bad(&bad_id, self.desired.clone().revision(revision)))?;
        let accepted = response["accepted"].as_array().cloned().unwrap_or_default();
        ensure!(accepted.contains(&json!(self.id)), "{response:#}");

        let failure = deploy.wait_for(&bad_id, revision, "FAILED")?;
        let message = failure["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains(culprit),
            "the error does not name {culprit:?}: {failure:#}"
        );
        ensure!(
            containers(&bad_id)?.is_empty(),
            "the refused deployment got containers"
        );
        self.assert_untouched(deploy)?;
        Ok(failure)
    }

    /// Fails unless the bystander is installed with the very container it started with.
    pub fn assert_untouched(&self, deploy: &Deploy) -> Result<()> {
        let status = deploy.status(&self.id)?.context("the bystander vanished")?;
        ensure!(
            status["state"] == "DEPLOYMENT_STATE_INSTALLED",
            "{status:#}"
        );
        let now = containers(&self.id)?;
        ensure!(now.len() == 1, "{now:?}");
        ensure!(
            now[0].id == self.container_id,
            "the bystander was recreated"
        );
        ensure!(now[0].state == "running", "{now:?}");
        Ok(())
    }
}

/// Starts woa-deploy with `options` and applies `bad` next to a running bystander: see
/// [`Bystander::refuses`]. Returns the bad deployment's status.
pub fn fails_alone_with(
    options: &DeployOptions,
    bad: impl FnOnce(&str, DesiredState) -> DesiredState,
    culprit: &str,
) -> Result<Value> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(options)?;
    let bystander = Bystander::install(&deploy, &cleanup)?;
    bystander.refuses(&deploy, &cleanup, "r2", bad, culprit)
}

/// [`fails_alone_with`] on a woa-deploy with default options.
pub fn fails_alone(
    bad: impl FnOnce(&str, DesiredState) -> DesiredState,
    culprit: &str,
) -> Result<()> {
    fails_alone_with(&DeployOptions::default(), bad, culprit).map(drop)
}
