//! woa-sync: the Pulling/Posting service of the Margo Workload Orchestration Agent.
//!
//! It pulls the device's desired state from its Git repository into a local mirror (gix),
//! hands each new revision to the deployment service over mTLS gRPC, and posts the current
//! state and the device capabilities to the WOS. `main.rs` is a thin shell over [`run`],
//! [`enroll`], [`provision`], [`device_id`] and [`health`].

mod config;
mod deploy_link;
mod error;
mod git_report;
pub mod health;
mod identity;
mod margo;
mod pull;
mod rejected;
mod report;
mod retry;
mod snapshot;
pub mod source;
pub mod status_push;
#[cfg(test)]
mod testserver;
mod wos;

pub mod enroll;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use pull::DesiredStateSource as _;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};
pub use identity::{Enrollment, device_id};
pub use margo::provision;
pub use rejected::{REJECTED_DOCUMENT_NAMESPACE, pseudo_deployment_id};

/// Builds the service from `config` and runs it until `cancel`.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<()> {
    config.check_deploy_link()?;
    let (polling, downtime) = config.windows()?;
    let schedule = Arc::new(woa_common::window::Schedule::new(polling, downtime));
    let layout = identity::Layout::new(&config.state_dir);
    let deployer = deploy_link::Deployer::new(&config.deploy)?;
    let (problems_tx, problems_rx) = watch::channel(None);
    let (states_tx, states_rx) = watch::channel(None);
    let (last_poll_tx, last_poll_rx) = watch::channel(None);
    let (source, wos, device_id, git_reporter) = match config.source {
        config::SourceKind::Margo => {
            if config.status.report.git() {
                return Err(woa_common::Error::Config(
                    "status.report: the Margo API takes statuses itself; a status branch needs source = \"git\"".into(),
                )
                .into());
            }
            let device_id = device_id(&config.state_dir)?;
            let (wos, trust) = margo::client(
                &config.margo,
                &config.state_dir,
                &device_id,
                &layout.margo_trust_bundle(),
            )?;
            let source =
                margo::source::MargoSource::new(wos.clone(), layout.margo_manifest(), trust)?;
            (Source::Margo(source), wos, device_id, None)
        }
        config::SourceKind::Git => {
            let resolved = identity::resolve(&config)?;
            let wos = wos_client(&resolved)?;
            if config.status.report.git() && config.status.git.branch == resolved.repository.branch
            {
                return Err(woa_common::Error::Config(format!(
                    "status.git.branch {:?} is the desired-state branch, which is never written",
                    config.status.git.branch
                ))
                .into());
            }
            tracing::info!(
                client_id = %resolved.client_id,
                wos = %resolved.wos_url,
                branch = %resolved.repository.branch,
                "desired state from Git"
            );
            // Opened here so a bad branch name or directory stops the start, not every push.
            let status = if config.status.report.git() {
                Some(status_push::StatusBranch::open(
                    &layout.status_repository(),
                    &config.status.git.branch,
                    &config.status.git.dir,
                )?)
            } else {
                None
            };
            let git_reporter = status.map(|status| git_report::GitReporter {
                status: Some(status),
                local_dir: layout.status_repository(),
                access: resolved.repository.clone(),
                branch: config.status.git.branch.clone(),
                dir: config.status.git.dir.clone(),
                debounce: config.status.git.debounce,
                heartbeat: config.status.git.heartbeat,
                retry_cap: config.poll.interval,
                device_id: resolved.device_id.clone(),
                client_id: resolved.client_id.clone(),
                deployer: deployer.clone(),
                states: states_rx.clone(),
                problems: problems_rx.clone(),
                last_poll: last_poll_rx.clone(),
                schedule: schedule.clone(),
            });
            let source = Source::Git(pull::GitSource {
                mirror_dir: layout.mirror(),
                access: resolved.repository,
                deployments_path: resolved.deployments_path,
            });
            (source, wos, resolved.device_id, git_reporter)
        }
    };
    tracing::info!(
        %device_id,
        source = %source.name(),
        report = ?config.status.report,
        "woa-sync running"
    );
    let reporter = config.status.report.http().then(|| report::Reporter {
        wos,
        device_id,
        deployer: deployer.clone(),
        outbox_path: layout.outbox(),
        heartbeat: config.status.heartbeat,
        retry_cap: config.poll.interval,
        states: states_rx.clone(),
        schedule: schedule.clone(),
        problems: problems_rx,
        last_poll: last_poll_rx,
        forbidden_waits_for_poll: config.source == config::SourceKind::Margo,
    });
    let puller = pull::Puller {
        source,
        deployer: deployer.clone(),
        deployed: states_rx,
        schedule,
        interval: config.poll.interval,
        jitter: config.poll.jitter,
        problems: problems_tx,
        last_poll: last_poll_tx,
    };
    tokio::join!(
        health::beat(
            config.state_dir.clone(),
            health::HEARTBEAT_INTERVAL,
            cancel.clone()
        ),
        report::watch_states(deployer, states_tx, cancel.clone()),
        puller.run(cancel.clone()),
        async {
            if let Some(reporter) = reporter {
                reporter.run(cancel.clone()).await;
            }
        },
        async {
            if let Some(reporter) = git_reporter {
                reporter.run(cancel.clone()).await;
            }
        },
    );
    Ok(())
}

/// The configured desired-state source.
enum Source {
    Git(pull::GitSource),
    Margo(margo::source::MargoSource),
}

impl pull::DesiredStateSource for Source {
    fn name(&self) -> String {
        match self {
            Source::Git(s) => s.name(),
            Source::Margo(s) => s.name(),
        }
    }

    async fn fetch(
        &mut self,
        known: Option<&str>,
    ) -> Result<Option<woa_proto::v1::ApplyDesiredStateRequest>> {
        match self {
            Source::Git(s) => s.fetch(known).await,
            Source::Margo(s) => s.fetch(known).await,
        }
    }

    fn handed_over(&mut self, revision: &str) -> Result<()> {
        match self {
            Source::Git(s) => s.handed_over(revision),
            Source::Margo(s) => s.handed_over(revision),
        }
    }
}

/// Posts the device capabilities once, right after enrollment (`run` keeps them current).
/// They come from the deployment service, so this needs it running.
pub async fn post_capabilities(config: &Config) -> Result<()> {
    config.check_deploy_link()?;
    let resolved = identity::resolve(config)?;
    let deployer = deploy_link::Deployer::new(&config.deploy)?;
    let capabilities = deployer.capabilities().await?;
    let manifest = report::with_device_id(&capabilities.manifest_json, &resolved.device_id);
    wos_client(&resolved)?
        .put_capabilities(manifest.as_bytes())
        .await
}

/// The WOS client, presenting the device certificate.
fn wos_client(resolved: &identity::Resolved) -> Result<wos::Wos> {
    let wos = wos::Wos::new(
        &resolved.wos_url,
        resolved.wos_ca.as_deref(),
        Some((&resolved.identity.0, &resolved.identity.1)),
    )?;
    Ok(wos.speaking(wos::Shape::Clients {
        client_id: resolved.client_id.clone(),
    }))
}

/// A random wait in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=max_ms))
}
