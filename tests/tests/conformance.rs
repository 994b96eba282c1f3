//! `woa-testkit conformance` against a real woa-deploy: the reference implementation passes
//! every case, and the kit reports failures when the target cannot be trusted.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result};
use woa_tests::conformance::Case;
use woa_tests::{Deploy, Pki, testapp_image};

/// Runs `woa-testkit conformance` against `deploy` with the sync identity, the given CA and
/// extra flags; returns the process output.
fn conformance(deploy: &Deploy, ca: &Path, extra: &[&str]) -> Result<Output> {
    let pki = deploy.pki();
    Command::new(env!("CARGO_BIN_EXE_woa-testkit"))
        .args(["conformance", "--target", deploy.address()])
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(pki.file("sync.pem"))
        .arg("--key")
        .arg(pki.file("sync-key.pem"))
        .args(["--image", testapp_image()?])
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .context("running woa-testkit conformance")
}

/// The report's lines that start with `verdict` followed by the name of `case`.
fn verdict_of(stdout: &str, verdict: &str, case: Case) -> bool {
    let name = case.name();
    stdout.lines().any(|line| {
        line.strip_prefix(verdict)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|rest| rest.strip_prefix(name))
            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with(':'))
    })
}

#[test]
fn woa_deploy_passes_every_case() -> Result<()> {
    let deploy = Deploy::start()?;
    let output = conformance(&deploy, &deploy.pki().file("ca.pem"), &[])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown with --nocapture: the report as an operator sees it.
    print!("{stdout}");
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{stderr}",
        output.status
    );
    for case in Case::ALL {
        assert!(
            verdict_of(&stdout, "PASS", case),
            "no PASS {}:\n{stdout}",
            case.name()
        );
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some(format!("{} passed, 0 failed", Case::ALL.len()).as_str()),
        "{stdout}"
    );
    // The suite leaves the target with an empty desired state and nothing running.
    let state = deploy.current_state()?;
    let left: Vec<_> = state["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["state"] != "DEPLOYMENT_STATE_REMOVED")
        .collect();
    assert!(left.is_empty(), "{state:#}");
    Ok(())
}

/// Every case fails and the exit status says so.
fn assert_all_failed(output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    assert!(!output.status.success(), "{stdout}");
    for case in Case::ALL {
        assert!(
            verdict_of(&stdout, "FAIL", case),
            "no FAIL {}:\n{stdout}",
            case.name()
        );
    }
    assert!(!stdout.contains("PASS"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some(format!("0 passed, {} failed", Case::ALL.len()).as_str()),
        "{stdout}"
    );
}

#[test]
fn a_server_certificate_for_another_name_fails_every_case() -> Result<()> {
    let deploy = Deploy::start()?;
    let output = conformance(
        &deploy,
        &deploy.pki().file("ca.pem"),
        &["--server-name", "not-the-deploy-service.example"],
    )?;
    assert_all_failed(&output);
    // The reason names the TLS problem, not just "failed".
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.to_lowercase().contains("certificate"),
        "no certificate problem named:\n{stdout}"
    );
    Ok(())
}

#[test]
fn a_server_certificate_from_another_ca_fails_every_case() -> Result<()> {
    let deploy = Deploy::start()?;
    let foreign = Pki::init()?;
    let output = conformance(&deploy, &foreign.file("ca.pem"), &[])?;
    assert_all_failed(&output);
    Ok(())
}

#[test]
fn an_image_the_target_cannot_run_fails_the_cases_that_install() -> Result<()> {
    let deploy = Deploy::start()?;
    let pki = deploy.pki();
    // Nothing listens on port 1, so the pull fails at once instead of waiting on a network.
    let output = Command::new(env!("CARGO_BIN_EXE_woa-testkit"))
        .args(["conformance", "--target", deploy.address()])
        .arg("--ca")
        .arg(pki.file("ca.pem"))
        .arg("--cert")
        .arg(pki.file("sync.pem"))
        .arg("--key")
        .arg(pki.file("sync-key.pem"))
        .args(["--image", "127.0.0.1:1/woa-conformance-missing:1"])
        .args(["--timeout", "5"])
        .env("NO_COLOR", "1")
        .output()
        .context("running woa-testkit conformance")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    assert!(!output.status.success(), "{stdout}");
    for case in [Case::MtlsRefused, Case::Capabilities] {
        assert!(verdict_of(&stdout, "PASS", case), "{stdout}");
    }
    for case in &Case::ALL[2..] {
        assert!(verdict_of(&stdout, "FAIL", *case), "{stdout}");
    }
    assert!(stdout.contains("INSTALLED"), "{stdout}");
    Ok(())
}
