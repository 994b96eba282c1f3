//! The `woa-deploy` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use woa_deploy::operator::{self, Command as Operation, Link};

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
    /// Check that a running woa-deploy serves; exits 0 when it does.
    Health(LinkArgs),
    /// Review, approve or reject releases held for local approval (`rollout.approval = "manual"`).
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Go back to a deployment's previous installed release; the release left is held until a
    /// newer one arrives or `retry`.
    Rollback {
        /// The deployment id.
        deployment: String,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Let a deployment's held release (failed and rolled back, rolled back, or rejected) apply
    /// again.
    Retry {
        /// The deployment id.
        deployment: String,
        #[command(flatten)]
        link: LinkArgs,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Releases awaiting approval.
    List(LinkArgs),
    /// What the pending release of a deployment changes.
    Show {
        /// The deployment id.
        deployment: String,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Approve the pending release of a deployment, as `show` prints it.
    Approve {
        /// The deployment id.
        deployment: String,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Reject the pending release of a deployment; it is reported failed to the orchestrator.
    Reject {
        /// The deployment id.
        deployment: String,
        /// Why, for the orchestrator.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        link: LinkArgs,
    },
}

/// How to reach the running service.
#[derive(Args)]
struct LinkArgs {
    /// The service's address.
    #[arg(
        long,
        env = "WOA_DEPLOY_ENDPOINT",
        default_value = "https://localhost:7411"
    )]
    endpoint: String,
    /// Directory made by `certs init`; its ca.pem, operator.pem and operator-key.pem are used.
    #[arg(long, env = "WOA_PKI_DIR", default_value = "/etc/woa/pki")]
    pki: PathBuf,
    /// CA certificate, instead of the PKI directory's.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate, instead of the PKI directory's operator certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key, instead of the PKI directory's operator key.
    #[arg(long)]
    key: Option<PathBuf>,
}

impl LinkArgs {
    fn link(self) -> Link {
        let mut link = Link::operator(self.endpoint, &self.pki);
        link.ca = self.ca.unwrap_or(link.ca);
        link.cert = self.cert.unwrap_or(link.cert);
        link.key = self.key.unwrap_or(link.key);
        link
    }
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA and the server, sync and operator certificates.
    Init {
        /// Directory to write the PEM files into.
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long, conflicts_with = "if_missing")]
        force: bool,
        /// Do nothing when the directory holds a CA already.
        #[arg(long)]
        if_missing: bool,
    },
}

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Certs {
            command: CertsCommand::Init {
                dir, if_missing, ..
            },
        } if if_missing && dir.join("ca.pem").exists() => {
            println!("{} holds a local PKI already", dir.display());
            ExitCode::SUCCESS
        }
        Command::Certs {
            command: CertsCommand::Init { dir, force, .. },
        } => match woa_deploy::init_certs(&dir, force) {
            Ok(()) => {
                println!("wrote the local PKI to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("woa-deploy: {}", woa_common::chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::Health(link) => {
            operate(async move { operator::health(&link.link()).await.map(|()| String::new()) })
        }
        Command::Approvals { command } => {
            let (link, operation) = match command {
                ApprovalsCommand::List(link) => (link, Operation::List),
                ApprovalsCommand::Show { deployment, link } => (link, Operation::Show(deployment)),
                ApprovalsCommand::Approve { deployment, link } => {
                    (link, Operation::Approve(deployment))
                }
                ApprovalsCommand::Reject {
                    deployment,
                    reason,
                    link,
                } => (link, Operation::Reject(deployment, reason)),
            };
            operate(async move { operator::run(&link.link(), operation).await })
        }
        Command::Rollback { deployment, link } => {
            operate(
                async move { operator::run(&link.link(), Operation::Rollback(deployment)).await },
            )
        }
        Command::Retry { deployment, link } => {
            operate(async move { operator::run(&link.link(), Operation::Retry(deployment)).await })
        }
        Command::Serve { config } => {
            let config = match woa_deploy::Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("woa-deploy: {}", woa_common::chain(&e));
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
                    tracing::error!(error = %woa_common::chain(&e), "woa-deploy stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs an operator command on a small runtime and prints its answer or error.
fn operate(command: impl std::future::Future<Output = woa_deploy::Result<String>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| woa_deploy::Error::Service {
            action: "starting the runtime".into(),
            source: e.into(),
        })
        .and_then(|runtime| runtime.block_on(command));
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("woa-deploy: {}", woa_common::chain(&e));
            ExitCode::FAILURE
        }
    }
}
