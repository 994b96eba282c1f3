//! The `woa-deploy` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// woa deployment service: runs Margo compose deployments on the local Docker engine.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the woa.deploy.v1 gRPC contract over mutual TLS.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "WOA_DEPLOY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Manage the local PKI of the gRPC link.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA and the server, sync and operator certificates.
    Init {
        /// Directory to write the PEM files into.
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
}

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Certs {
            command: CertsCommand::Init { dir, force },
        } => match woa_deploy::init_certs(&dir, force) {
            Ok(()) => {
                println!("wrote the local PKI to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("woa-deploy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let config = match woa_deploy::Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("woa-deploy: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            woa_common::telemetry::init(config.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("woa-deploy: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let cancel = woa_common::shutdown::on_signal();
                woa_deploy::run(config, cancel).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "woa-deploy stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
