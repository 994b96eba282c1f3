//! The `woa-sync` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use woa_sync::enroll::{ManualEnrollment, TokenEnrollment};
use woa_sync::{Config, provision};

/// woa sync service: pulls the device's desired state from Git and reports to the WOS.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "WOA_SYNC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull, apply and report until stopped.
    Run,
    /// Print this device's unique id (made on first use).
    DeviceId,
    /// Set up trust with the WOS: with an enrollment token, or from pre-provisioned files.
    Enroll(Box<EnrollArgs>),
    /// Provision the device's X.509-SVID for the Margo API out of band: make the key and a
    /// certificate request for the operator's signer, then install the signed SVID.
    #[command(subcommand)]
    Margo(MargoCommand),
    /// Exit 0 when `run` is alive (its heartbeat in the state dir is fresh), 1 otherwise.
    ///
    /// For container health checks; an unreachable WOS does not make the service unhealthy.
    Health,
}

#[derive(Subcommand)]
enum MargoCommand {
    /// Print a certificate signing request for the SVID (PEM), making the device key
    /// (`[margo] svid_key`, `state_dir/margo-svid.key` by default; 0600) the first time.
    Csr {
        /// `spiffe://<trust-domain>/margo/wfm/<wfm-id>/client/<client-id>`.
        #[arg(long)]
        spiffe_id: String,
        /// Write the request to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Make a new key instead of re-using the device key; it takes over when the SVID
        /// for it is installed.
        #[arg(long)]
        new_key: bool,
    },
    /// Check the signed SVID and install it (`[margo] svid`, `state_dir/margo-svid.pem` by
    /// default), where a running service picks it up; with `[margo] trust_bundle` set, it must
    /// chain to the anchors in force (that file, or a bundle fetched since).
    Install {
        /// The SVID (PEM chain, leaf first) the signer returned.
        #[arg(long)]
        svid: PathBuf,
        /// Install it even though it names another client than the SVID installed.
        #[arg(long)]
        replace_identity: bool,
    },
}

#[derive(Args)]
struct EnrollArgs {
    /// WOS base URL.
    #[arg(long)]
    wos: String,
    /// CA bundle (PEM) to trust for the WOS; the system roots when absent.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Enrollment token.
    #[arg(long, env = "WOA_SYNC_ENROLLMENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the enrollment token (keeps it out of the process list).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Use pre-provisioned certificate, credentials and repository instead of a token.
    #[arg(long, requires_all = ["client_id", "cert", "key", "repo_url"], conflicts_with_all = ["token", "token_file"])]
    manual: bool,
    /// The client id the WOS knows this device by (manual).
    #[arg(long)]
    client_id: Option<String>,
    /// Device certificate, PEM (manual).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Device key, PEM (manual).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Desired-state repository URL (manual).
    #[arg(long)]
    repo_url: Option<String>,
    /// Repository branch (manual).
    #[arg(long, default_value = "main")]
    repo_branch: String,
    /// Directory of the deployment documents in the repository (manual).
    #[arg(long, default_value = "deployments")]
    repo_path: String,
    /// Repository authentication: none, basic, bearer or mtls (manual).
    #[arg(long, default_value = "mtls")]
    repo_auth: String,
    /// User name for basic repository authentication (manual).
    #[arg(long, default_value = "")]
    repo_username: String,
    /// File holding the repository password or token (manual).
    #[arg(long)]
    repo_secret_file: Option<PathBuf>,
}

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("woa-sync: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    woa_common::telemetry::init(config.log_format);
    let result = match cli.command {
        Command::Health => return health(&config.state_dir),
        Command::DeviceId => woa_sync::device_id(&config.state_dir)
            .map(|id| println!("{id}"))
            .map_err(anyhow::Error::from),
        Command::Enroll(args) => block_on(enroll(&config.state_dir, *args)).map(|()| {
            // Trust is set up: tell the WOS what this device can run, if the deployment
            // service is there to say it; `run` posts them otherwise.
            match block_on(woa_sync::post_capabilities(&config)) {
                Ok(()) => println!("capabilities posted"),
                Err(e) => println!("capabilities not posted yet ({e}); `woa-sync run` posts them"),
            }
        }),
        Command::Margo(command) => margo(&config, command).map_err(anyhow::Error::from),
        Command::Run => block_on(async {
            let cancel = woa_common::shutdown::on_signal();
            woa_sync::run(config, cancel).await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("woa-sync: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `woa-sync health`: one line on stdout, and the exit code.
fn health(state_dir: &Path) -> ExitCode {
    match woa_sync::health::check(state_dir) {
        Ok(health) => {
            println!("{health}");
            if health.is_healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `woa-sync margo …`: the request on stdout (or in `--out`), the installed identity.
fn margo(config: &Config, command: MargoCommand) -> woa_sync::Result<()> {
    let files = provision::SvidFiles::new(&config.margo, &config.state_dir);
    match command {
        MargoCommand::Csr {
            spiffe_id,
            out,
            new_key,
        } => {
            let csr = provision::csr(&files, &spiffe_id, new_key)?;
            match out {
                Some(out) => woa_common::store::write_atomic(&out, csr.as_bytes(), 0o644)?,
                None => print!("{csr}"),
            }
        }
        MargoCommand::Install {
            svid,
            replace_identity,
        } => {
            let anchors = provision::Anchors::new(&config.margo, &config.state_dir);
            let installed = provision::install(&files, &svid, anchors.as_ref(), replace_identity)?;
            println!(
                "installed {} at {} (expires {})",
                installed.id.id,
                installed.path.display(),
                installed.not_after
            );
            if anchors.is_none() {
                eprintln!("woa-sync: margo.trust_bundle is not set; the chain was not checked");
            }
            if replace_identity {
                // A running service refuses a renewed SVID that names another client.
                println!("restart woa-sync for a new identity to be used");
            }
        }
    }
    Ok(())
}

async fn enroll(state_dir: &Path, args: EnrollArgs) -> woa_sync::Result<()> {
    let missing = |what: &str| woa_sync::Error::Enrollment(format!("--manual needs {what}"));
    let enrollment = if args.manual {
        woa_sync::enroll::manual(
            state_dir,
            ManualEnrollment {
                wos_url: args.wos,
                ca: args.ca,
                client_id: args.client_id.ok_or_else(|| missing("--client-id"))?,
                cert: args.cert.ok_or_else(|| missing("--cert"))?,
                key: args.key.ok_or_else(|| missing("--key"))?,
                repo_url: args.repo_url.ok_or_else(|| missing("--repo-url"))?,
                repo_branch: args.repo_branch,
                repo_path: args.repo_path,
                repo_auth: args.repo_auth,
                repo_username: args.repo_username,
                repo_secret_file: args.repo_secret_file,
            },
        )?
    } else {
        let token = match (args.token, args.token_file) {
            (Some(token), _) => token,
            (None, Some(file)) => std::fs::read_to_string(&file)
                .map_err(|e| woa_common::Error::file(&file, e))?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(woa_sync::Error::Enrollment(
                    "give --token, --token-file or --manual".into(),
                ));
            }
        };
        woa_sync::enroll::with_token(
            state_dir,
            TokenEnrollment {
                wos_url: &args.wos,
                token: &token,
                ca: args.ca.as_deref(),
            },
        )
        .await?
    };
    println!(
        "enrolled as client {} (repository {}, branch {})",
        enrollment.client_id,
        woa_sync::source::without_credentials(&enrollment.repository.url),
        enrollment.repository.branch
    );
    Ok(())
}

fn block_on<F: std::future::Future<Output = woa_sync::Result<()>>>(f: F) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(f);
    // A fetch or push in a blocking thread cannot be interrupted: do not wait for it long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(result?)
}
