//! The cases of the conformance suite, each a behaviour proto/README.md promises.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use woa_proto::v1 as pb;

use super::target::{Target, answer, deployment, describe, is_installed_at, revision, uuid_v4};

/// How soon `WatchCurrentState` must send its first state: "at once" in the contract, with
/// room for a busy machine.
const FIRST_STATE_WITHIN: Duration = Duration::from_secs(10);

/// How long a re-applied revision is watched for signs of work it should not do.
const STEADY_FOR: Duration = Duration::from_secs(2);

/// One case of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// A client without a client certificate is refused.
    MtlsRefused,
    /// `GetCapabilities` answers with deployment types and a `DeviceCapabilitiesManifest`.
    Capabilities,
    /// An applied compose deployment is accepted and reaches INSTALLED with every component.
    ApplyInstalls,
    /// Repeating the held revision answers `changed: false` and disturbs nothing.
    IdempotentReapply,
    /// A new revision with a changed compose file reaches INSTALLED at that revision.
    Update,
    /// `WatchCurrentState` sends the state at once and again after an apply.
    WatchStream,
    /// A malformed document is reported while the valid one beside it still applies.
    BadInput,
    /// A deployment left out of the desired state is removed.
    Remove,
}

impl Case {
    /// Every case, in the order the suite runs them.
    pub const ALL: [Case; 8] = [
        Case::MtlsRefused,
        Case::Capabilities,
        Case::ApplyInstalls,
        Case::IdempotentReapply,
        Case::Update,
        Case::WatchStream,
        Case::BadInput,
        Case::Remove,
    ];

    /// The name printed in the report, e.g. `apply-installs`.
    pub fn name(self) -> &'static str {
        match self {
            Case::MtlsRefused => "mtls-refused",
            Case::Capabilities => "capabilities",
            Case::ApplyInstalls => "apply-installs",
            Case::IdempotentReapply => "idempotent-reapply",
            Case::Update => "update",
            Case::WatchStream => "watch-stream",
            Case::BadInput => "bad-input",
            Case::Remove => "remove",
        }
    }

    /// True when the case changes the desired state, so the target must be cleared after it.
    pub(super) fn applies(self) -> bool {
        !matches!(self, Case::MtlsRefused | Case::Capabilities)
    }

    /// Runs the case against `target`.
    pub(super) async fn run(self, target: &Target) -> Result<()> {
        match self {
            Case::MtlsRefused => mtls_refused(target).await,
            Case::Capabilities => capabilities(target).await,
            Case::ApplyInstalls => apply_installs(target).await,
            Case::IdempotentReapply => idempotent_reapply(target).await,
            Case::Update => update(target).await,
            Case::WatchStream => watch_stream(target).await,
            Case::BadInput => bad_input(target).await,
            Case::Remove => remove(target).await,
        }
    }
}

/// A one-component compose application the cases deploy under a fresh id.
struct App {
    id: String,
    name: String,
}

impl App {
    /// A fresh deployment of `conformance-<label>`.
    fn new(label: &str) -> App {
        App {
            id: uuid_v4(),
            name: format!("conformance-{label}"),
        }
    }

    fn document_path(&self) -> String {
        format!("deployments/{}.yaml", self.name)
    }

    fn compose_path(&self) -> String {
        format!("apps/{}/compose.yaml", self.name)
    }

    /// The Margo ApplicationDeployment, with the id in `metadata.annotations` as the WOS writes.
    fn document(&self) -> String {
        format!(
            "apiVersion: application.margo.org/v1alpha1\n\
             kind: ApplicationDeployment\n\
             metadata:\n  name: {name}\n  annotations:\n    id: {id}\n    applicationId: {name}\n\
             spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
             \x20     - name: app\n        properties:\n          packageLocation: {location}\n",
            name = quoted(&self.name),
            id = quoted(&self.id),
            location = quoted(&self.compose_path()),
        )
    }

    /// One idle service; `greeting` lands in its environment, so changing it changes the app.
    fn compose(&self, image: &str, greeting: &str) -> String {
        format!(
            "services:\n  app:\n    image: {image}\n    command: [\"sleep\"]\n    \
             environment:\n      GREETING: {greeting}\n",
            image = quoted(image),
            greeting = quoted(greeting),
        )
    }

    /// A desired state holding just this app at `revision`.
    fn desired(
        &self,
        target: &Target,
        revision: &str,
        greeting: &str,
    ) -> pb::ApplyDesiredStateRequest {
        pb::ApplyDesiredStateRequest {
            revision: revision.to_owned(),
            deployments: vec![pb::DeploymentDocument {
                path: self.document_path(),
                yaml: self.document().into_bytes(),
            }],
            artifacts: [(
                self.compose_path(),
                self.compose(target.image(), greeting).into_bytes(),
            )]
            .into(),
        }
    }
}

/// `s` as a double-quoted scalar: JSON strings are valid YAML, which spares a serializer.
fn quoted(s: &str) -> String {
    Value::from(s).to_string()
}

/// Applies `request`, which must be a new revision that accepts `app`.
async fn apply_new(
    target: &Target,
    app: &App,
    request: pb::ApplyDesiredStateRequest,
) -> Result<pb::ApplyDesiredStateResponse> {
    let revision = request.revision.clone();
    let response = target.apply(request).await?;
    ensure!(
        response.revision == revision,
        "ApplyDesiredState answered revision {:?}, applied {revision:?}",
        response.revision
    );
    ensure!(
        response.changed,
        "ApplyDesiredState of new revision {revision:?} answered changed: false"
    );
    ensure!(
        response.accepted.contains(&app.id),
        "ApplyDesiredState did not list {} in accepted: {response:?}",
        app.id
    );
    Ok(response)
}

/// Applies `app` alone at a fresh revision and waits until it is INSTALLED there; returns the
/// request and the revision.
async fn install(
    target: &Target,
    app: &App,
    greeting: &str,
) -> Result<(pb::ApplyDesiredStateRequest, String)> {
    let revision = revision("install")?;
    let request = app.desired(target, &revision, greeting);
    let response = apply_new(target, app, request.clone()).await?;
    ensure!(
        response.rejected.is_empty(),
        "a valid document was rejected: {:?}",
        response.rejected
    );
    let status = target.wait_installed(&app.id, &revision).await?;
    check_installed_status(&status, app)?;
    Ok((request, revision))
}

/// What an INSTALLED status of `app` must carry: its component and a matching manifest.
fn check_installed_status(status: &pb::DeploymentStatus, app: &App) -> Result<()> {
    ensure!(
        status.components.iter().any(|c| c.name == "app"),
        "component \"app\" missing from the status: {:?}",
        status.components
    );
    let manifest: Value = serde_json::from_str(&status.manifest_json)
        .with_context(|| format!("manifest_json is not JSON: {:?}", status.manifest_json))?;
    ensure!(
        manifest["kind"] == "DeploymentStatusManifest",
        "manifest_json has kind {}, expected DeploymentStatusManifest",
        manifest["kind"]
    );
    ensure!(
        manifest["status"]["state"] == "installed",
        "manifest_json has status.state {} while the status is INSTALLED",
        manifest["status"]["state"]
    );
    ensure!(
        manifest["deploymentId"] == app.id.as_str(),
        "manifest_json has deploymentId {}, expected {:?}",
        manifest["deploymentId"],
        app.id
    );
    Ok(())
}

async fn mtls_refused(target: &Target) -> Result<()> {
    // A refusal only means something from a target that serves the suite's own certificate.
    target
        .capabilities()
        .await
        .context("the client with the suite's certificate is not served either")?;
    let anonymous = target.anonymous()?;
    let request = pb::GetCapabilitiesRequest {};
    if answer(
        "GetCapabilities",
        anonymous.clone().get_capabilities(request),
    )
    .await
    .is_ok()
    {
        bail!("a client without a certificate was answered GetCapabilities");
    }
    let request = pb::GetCurrentStateRequest {};
    if answer(
        "GetCurrentState",
        anonymous.clone().get_current_state(request),
    )
    .await
    .is_ok()
    {
        bail!("a client without a certificate was answered GetCurrentState");
    }
    Ok(())
}

async fn capabilities(target: &Target) -> Result<()> {
    let capabilities = target.capabilities().await?;
    ensure!(
        !capabilities.supported_deployment_types.is_empty(),
        "supported_deployment_types is empty"
    );
    let manifest: Value = serde_json::from_str(&capabilities.manifest_json).with_context(|| {
        format!(
            "manifest_json is not JSON: {:?}",
            capabilities.manifest_json
        )
    })?;
    ensure!(
        manifest["kind"] == "DeviceCapabilitiesManifest",
        "manifest_json has kind {}, expected DeviceCapabilitiesManifest",
        manifest["kind"]
    );
    Ok(())
}

async fn apply_installs(target: &Target) -> Result<()> {
    install(target, &App::new("install"), "hello").await?;
    Ok(())
}

async fn idempotent_reapply(target: &Target) -> Result<()> {
    let app = App::new("reapply");
    let (request, revision) = install(target, &app, "hello").await?;
    let again = target.apply(request).await?;
    ensure!(
        !again.changed,
        "re-applying the held revision answered changed: true"
    );
    ensure!(
        again.revision == revision,
        "re-applying {revision:?} answered revision {:?}",
        again.revision
    );
    // The call returns before anything converges: watch a while for work it should not cause.
    let until = Instant::now() + STEADY_FOR;
    while Instant::now() < until {
        let state = target.current_state().await?;
        let status = deployment(&state, &app.id)
            .with_context(|| format!("{} vanished after the re-apply", app.id))?;
        ensure!(
            is_installed_at(status, &revision),
            "after re-applying, {} is {:?} at revision {:?}",
            app.id,
            status.state(),
            status.revision
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

async fn update(target: &Target) -> Result<()> {
    let app = App::new("update");
    install(target, &app, "first").await?;
    let next = revision("update")?;
    apply_new(target, &app, app.desired(target, &next, "second")).await?;
    let status = target.wait_installed(&app.id, &next).await?;
    check_installed_status(&status, &app)
}

async fn watch_stream(target: &Target) -> Result<()> {
    let mut stream = target.watch().await?;
    let first = tokio::time::timeout(FIRST_STATE_WITHIN, stream.message())
        .await
        .with_context(|| format!("no state within {FIRST_STATE_WITHIN:?} of subscribing"))?
        .map_err(|status| anyhow!("{}", describe(&status)))
        .context("WatchCurrentState")?
        .context("the stream ended before its first state")?;

    let app = App::new("watch");
    let next = revision("watch")?;
    apply_new(target, &app, app.desired(target, &next, "watched")).await?;

    let deadline = Instant::now() + target.timeout();
    let mut previous = first;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(remaining, stream.message()).await {
            Ok(message) => message
                .map_err(|status| anyhow!("{}", describe(&status)))
                .context("WatchCurrentState")?
                .context("the stream ended")?,
            Err(_) => bail!(
                "no state with {} INSTALLED at {next:?} within {:?}; last sent: {previous:?}",
                app.id,
                target.timeout()
            ),
        };
        ensure!(
            message != previous,
            "two consecutive states were the same: {message:?}"
        );
        if deployment(&message, &app.id).is_some_and(|d| is_installed_at(d, &next)) {
            return Ok(());
        }
        previous = message;
    }
}

async fn bad_input(target: &Target) -> Result<()> {
    let app = App::new("steady");
    install(target, &app, "steady").await?;

    let next = revision("bad-input")?;
    let broken_path = "deployments/conformance-broken.yaml".to_owned();
    let mut request = app.desired(target, &next, "steady");
    request.deployments.push(pb::DeploymentDocument {
        path: broken_path.clone(),
        yaml: b"apiVersion: application.margo.org/v1alpha1\nkind: [unclosed\n".to_vec(),
    });
    let response = apply_new(target, &app, request).await?;
    let in_response = response.rejected.iter().find(|r| r.path == broken_path);
    if let Some(rejected) = in_response {
        ensure!(
            rejected
                .error
                .as_ref()
                .is_some_and(|e| !e.message.is_empty()),
            "{broken_path} is rejected without an error message: {rejected:?}"
        );
    }
    let reported_in_response = in_response.is_some();
    let broken = broken_path.as_str();
    target
        .wait_for(
            &format!("{} INSTALLED at {next:?} and {broken} reported", app.id),
            |state| {
                let installed =
                    deployment(state, &app.id).is_some_and(|d| is_installed_at(d, &next));
                let reported = reported_in_response
                    || state.rejected.iter().any(|r| r.path == broken)
                    || state
                        .deployments
                        .iter()
                        .any(|d| d.path == broken && d.state() == pb::DeploymentState::Failed);
                (installed && reported).then_some(())
            },
        )
        .await
}

async fn remove(target: &Target) -> Result<()> {
    let app = App::new("remove");
    install(target, &app, "bye").await?;
    let next = revision("remove")?;
    let response = target
        .apply(pb::ApplyDesiredStateRequest {
            revision: next.clone(),
            ..Default::default()
        })
        .await?;
    ensure!(
        response.changed,
        "ApplyDesiredState of new revision {next:?} answered changed: false"
    );
    target
        .wait_for(
            &format!("{} REMOVED or gone at {next:?}", app.id),
            |state| {
                let removed = deployment(state, &app.id)
                    .is_none_or(|d| d.state() == pb::DeploymentState::Removed);
                (state.revision == next && removed).then_some(())
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_in_run_order() {
        let names = Case::ALL.map(Case::name);
        assert_eq!(
            names,
            [
                "mtls-refused",
                "capabilities",
                "apply-installs",
                "idempotent-reapply",
                "update",
                "watch-stream",
                "bad-input",
                "remove"
            ]
        );
    }

    #[test]
    fn the_document_names_the_id_in_the_annotations_and_the_compose_file() {
        let app = App {
            id: "5f0c2d7e-1111-4a6b-9c1e-123456789abc".to_owned(),
            name: "conformance-x".to_owned(),
        };
        let yaml = app.document();
        assert!(yaml.contains("kind: ApplicationDeployment\n"), "{yaml}");
        assert!(
            yaml.contains("  annotations:\n    id: \"5f0c2d7e-1111-4a6b-9c1e-123456789abc\"\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains(
                "      - name: app\n        properties:\n          packageLocation: \"apps/conformance-x/compose.yaml\"\n"
            ),
            "{yaml}"
        );
        assert_eq!(app.document_path(), "deployments/conformance-x.yaml");
        let compose = app.compose("img:1", "hi");
        assert_eq!(
            compose,
            "services:\n  app:\n    image: \"img:1\"\n    command: [\"sleep\"]\n    \
             environment:\n      GREETING: \"hi\"\n"
        );
    }
}
