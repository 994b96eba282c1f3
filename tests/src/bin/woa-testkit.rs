//! `woa-testkit`: tools for trying a woa device agent without a real orchestrator.
//!
//! - `woa-testkit wos`: a reference WOS (enrollment REST API + per-device git repositories over
//!   HTTPS), see `woa_tests::wos`.

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
    tokio::spawn(stop_on_signal(cancel.clone()));
    let result = match cli.command {
        Command::Wos(options) => woa_tests::wos::serve(options, cancel).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "woa-testkit failed");
            ExitCode::FAILURE
        }
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
