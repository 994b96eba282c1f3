//! Each deployment is worked on by itself, on the real engine: one deployment's slow removal
//! or stuck readiness wait holds up no other deployment's apply, approval or rollback, and a
//! kill -9 in the middle of concurrent work converges.

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use woa_tests::{
    AppDeployment, Cleanup, Deploy, DeployOptions, DesiredState, answer, containers, testapp_image,
    wait_answer, wait_until,
};

/// A deployment of one component whose compose file is at `apps/<name>/compose.yaml`.
fn app(cleanup: &Cleanup, name: &str) -> Result<AppDeployment> {
    Ok(AppDeployment::new(&cleanup.deployment_id()?, name).component("app", &location(name)))
}

fn location(name: &str) -> String {
    format!("apps/{name}/compose.yaml")
}

/// One web service answering `message` on a loopback port, with extra service keys.
fn web(message: &str, extra: &str) -> Result<String> {
    let image = testapp_image()?;
    Ok(format!(
        "services:\n  web:\n    image: {image}\n    command: [\"serve\", \"8080\"]\n    \
         environment:\n      MESSAGE: \"{message}\"\n    ports: [\"127.0.0.1::8080\"]\n{extra}"
    ))
}

/// Three services that ignore SIGTERM, so stopping each waits out the 10 s grace period; the
/// last two depend on the first.
fn stubborn() -> Result<String> {
    let image = testapp_image()?;
    let service = |name: &str, depends: &str| {
        format!("  {name}:\n    image: {image}\n    command: [\"hang\"]\n{depends}")
    };
    let after_base = "    depends_on: [base]\n";
    Ok(format!(
        "services:\n{}{}{}",
        service("base", ""),
        service("left", after_base),
        service("right", after_base)
    ))
}

/// A web service whose health check never passes: it waits out its readiness timeout.
fn never_ready(message: &str) -> Result<String> {
    let never = "    healthcheck:\n      test: [\"CMD\", \"/testapp\", \"probe\", \"9\"]\n      \
                 interval: 1s\n      retries: 1000\n";
    web(message, never)
}

/// The state `deploy` reports for `id`, e.g. `INSTALLING`.
fn state_of(deploy: &Deploy, id: &str) -> Result<String> {
    let status = deploy.status(id)?.unwrap_or(Value::Null);
    let state = status["state"].as_str().unwrap_or_default();
    Ok(state.trim_start_matches("DEPLOYMENT_STATE_").to_owned())
}

fn approve(deploy: &Deploy, id: &str) -> Result<()> {
    deploy.grpcurl(
        "woa.deploy.v1.DeploymentService/Approve",
        &json!({ "deploymentId": id }),
    )?;
    Ok(())
}

#[test]
fn a_slow_removal_does_not_hold_up_another_deployments_apply() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let (slow, next) = (app(&cleanup, "slow")?, app(&cleanup, "next")?);
    deploy.apply(
        &DesiredState::new("r1")
            .deployment(&slow)
            .artifact(&location("slow"), stubborn()?),
    )?;
    deploy.wait_for(slow.id(), "r1", "INSTALLED")?;

    // The slow app leaves (its removal waits out the grace period), the next one arrives.
    deploy.apply(
        &DesiredState::new("r2")
            .deployment(&next)
            .artifact(&location("next"), web("next", "")?),
    )?;
    deploy.wait_for(next.id(), "r2", "INSTALLED")?;
    wait_answer(next.id(), "next")?;
    let leaving = containers(slow.id())?;
    ensure!(
        state_of(&deploy, slow.id())? == "REMOVING" && !leaving.is_empty(),
        "the next app waited for the removal: {leaving:?}"
    );

    deploy.wait_for(slow.id(), "r2", "REMOVED")?;
    ensure!(containers(slow.id())?.is_empty());
    let log = deploy.log();
    let removing = |service: &str| {
        let name = format!("{}_app_{service}", slow.id());
        log.lines()
            .position(|l| l.contains("removing container") && l.contains(&name))
    };
    // Dependents are stopped before what they depend on, as Compose does.
    let (left, right, base) = (removing("left"), removing("right"), removing("base"));
    ensure!(
        left.is_some() && right.is_some() && base > left && base > right,
        "removal order left {left:?}, right {right:?}, base {base:?}"
    );
    Ok(())
}

#[test]
fn a_release_stuck_waiting_for_readiness_holds_up_no_other_deployment() -> Result<()> {
    let cleanup = Cleanup::new();
    let (stuck, other, third) = (
        app(&cleanup, "stuck")?,
        app(&cleanup, "other")?,
        app(&cleanup, "third")?,
    );
    // The other app needs the site's approval; the stuck one waits the default 5 min.
    let deploy = Deploy::start_with(&DeployOptions {
        resync_interval: Some("1s".into()),
        rollout: format!("approvals = {{ \"{}\" = \"manual\" }}\n", other.id()),
        ..DeployOptions::default()
    })?;
    let state = |revision: &str, stuck_web: String, other_message: &str| -> Result<DesiredState> {
        Ok(DesiredState::new(revision)
            .deployment(&stuck)
            .artifact(&location("stuck"), stuck_web)
            .deployment(&other)
            .artifact(&location("other"), web(other_message, "")?))
    };
    deploy.apply(&state("r1", web("stuck one", "")?, "other one")?)?;
    deploy.wait_for(other.id(), "r1", "PENDING")?;
    approve(&deploy, other.id())?;
    deploy.wait_for(other.id(), "r1", "INSTALLED")?;
    deploy.wait_for(stuck.id(), "r1", "INSTALLED")?;

    // The stuck app's new release never becomes ready; meanwhile the other one is approved,
    // installed and rolled back, and a third app arrives.
    deploy.apply(&state("r2", never_ready("stuck two")?, "other two")?)?;
    deploy.wait_for(stuck.id(), "r2", "INSTALLING")?;
    deploy.wait_for(other.id(), "r2", "PENDING")?;
    approve(&deploy, other.id())?;
    deploy.wait_for(other.id(), "r2", "INSTALLED")?;
    wait_answer(other.id(), "other two")?;
    ensure!(state_of(&deploy, stuck.id())? == "INSTALLING");

    deploy.grpcurl(
        "woa.deploy.v1.DeploymentService/Rollback",
        &json!({ "deploymentId": other.id() }),
    )?;
    wait_answer(other.id(), "other one")?;
    ensure!(state_of(&deploy, stuck.id())? == "INSTALLING");

    let with_third = state("r3", never_ready("stuck two")?, "other two")?
        .deployment(&third)
        .artifact(&location("third"), web("third", "")?);
    deploy.apply(&with_third)?;
    deploy.wait_for(third.id(), "r3", "INSTALLED")?;
    wait_answer(third.id(), "third")?;
    ensure!(state_of(&deploy, stuck.id())? == "INSTALLING");
    // The stuck release's old container still serves: it is replaced only by a ready one.
    ensure!(answer(stuck.id()).is_ok_and(|a| a == "stuck one" || a == "stuck two"));
    Ok(())
}

#[test]
fn a_kill_9_during_concurrent_work_converges() -> Result<()> {
    let cleanup = Cleanup::new();
    let mut deploy = Deploy::start()?;
    let (leaving, changing, arriving) = (
        app(&cleanup, "leaving")?,
        app(&cleanup, "changing")?,
        app(&cleanup, "arriving")?,
    );
    deploy.apply(
        &DesiredState::new("r1")
            .deployment(&leaving)
            .artifact(&location("leaving"), stubborn()?)
            .deployment(&changing)
            .artifact(&location("changing"), web("one", "")?),
    )?;
    deploy.wait_for(leaving.id(), "r1", "INSTALLED")?;
    deploy.wait_for(changing.id(), "r1", "INSTALLED")?;

    deploy.apply(
        &DesiredState::new("r2")
            .deployment(&changing)
            .artifact(&location("changing"), web("two", "")?)
            .deployment(&arriving)
            .artifact(&location("arriving"), web("new", "")?),
    )?;
    wait_until(std::time::Duration::from_secs(30), || {
        Ok(state_of(&deploy, leaving.id())? == "REMOVING")
    })?;
    deploy.kill9()?;
    ensure!(
        !containers(leaving.id())?.is_empty(),
        "the removal was already done"
    );

    deploy.restart()?;
    deploy.wait_for(leaving.id(), "r2", "REMOVED")?;
    deploy.wait_for(changing.id(), "r2", "INSTALLED")?;
    deploy.wait_for(arriving.id(), "r2", "INSTALLED")?;
    wait_answer(changing.id(), "two")?;
    wait_answer(arriving.id(), "new")?;
    ensure!(containers(leaving.id())?.is_empty());
    for id in [changing.id(), arriving.id()] {
        let running = containers(id)?;
        let names: Vec<&str> = running.iter().map(|c| c.name.as_str()).collect();
        ensure!(
            names == [format!("{id}_app_web")],
            "one container per service, none staged: {names:?}"
        );
    }
    Ok(())
}
