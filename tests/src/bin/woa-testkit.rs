//! `woa-testkit`: tools for trying a woa device agent without a real orchestrator.
//!
//! - `woa-testkit wos`: a reference WOS (enrollment REST API + per-device git repositories over
//!   HTTPS), see `woa_tests::wos`.
//! - `woa-testkit wfm`: a reference Margo WFM (Workload Management API 1.0.0-rc.3 over mutual
//!   TLS with SPIFFE X.509-SVIDs), see `woa_tests::wfm`.
//! - `woa-testkit conformance`: checks a deployment service against the `woa.deploy.v1`
//!   contract, see `woa_tests::conformance`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Test kit for the woa device agent.
#[derive(Debug, Parser)]
#[command(name = "woa-testkit", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a reference WOS (orchestrator): onboarding, status API and git repositories.
    Wos(woa_tests::wos::WosOptions),
    /// Run a reference Margo WFM (Workload Fleet Manager): the Workload Management API
    /// 1.0.0-rc.3 over mutual TLS, and an admin API on loopback.
    ///
    /// Creates the CA, the WFM's and the device's SVIDs (and wrong server identities for
    /// negative tests) in --dir on first start; prints `listening on https://ADDR:PORT` and
    /// `admin on http://ADDR:PORT` once bound.
    Wfm(woa_tests::wfm::WfmOptions),
    /// Check a deployment service against the woa.deploy.v1 contract (proto/README.md).
    ///
    /// Runs the cases in order and prints `PASS <case>` or `FAIL <case>: <reason>` for each,
    /// then `N passed, M failed`; exits non-zero when a case failed.
    ///
    /// The suite owns the target while it runs: ApplyDesiredState replaces the whole desired
    /// state, so every deployment the target ran before is removed, and the target is left
    /// with an empty desired state. Never point it at a device running real workloads.
    Conformance(woa_tests::conformance::ConformanceOptions),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // stdout carries the "listening on" line only; logs go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person watching; logs captured to a file stay plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let cancel = CancellationToken::new();
    let result = match cli.command {
        Command::Wos(options) => {
            tokio::spawn(stop_on_signal(cancel.clone()));
            woa_tests::wos::serve(options, cancel).await
        }
        Command::Wfm(options) => {
            tokio::spawn(stop_on_signal(cancel.clone()));
            woa_tests::wfm::serve(options, cancel).await
        }
        Command::Conformance(options) => return conformance(&options).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "woa-testkit failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs the conformance suite, printing each case as it ends, then the summary.
async fn conformance(options: &woa_tests::conformance::ConformanceOptions) -> ExitCode {
    let report = woa_tests::conformance::run_reporting(options, |case| {
        println!("{}", case.line());
    })
    .await;
    println!("{}", report.summary());
    if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Cancels `cancel` on SIGTERM or SIGINT.
async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    cancel.cancel();
}
