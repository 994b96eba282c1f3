//! woa-sync: the Pulling/Posting service of the Margo Workload Orchestration Agent.
//!
//! It pulls the device's desired state from its Git repository into a local mirror (gix),
//! hands each new revision to the deployment service over mTLS gRPC, and posts the current
//! state and the device capabilities to the WOS. `main.rs` is a thin shell over [`run`],
//! [`enroll`] and [`device_id`].

mod config;
mod deploy_link;
mod error;
mod identity;
mod pull;
mod report;
mod snapshot;
pub mod source;
mod window;
mod wos;

pub mod enroll;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};
pub use identity::{Enrollment, device_id};

/// Builds the service from `config` and runs it until `cancel`.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<()> {
    config.check_deploy_link()?;
    let resolved = identity::resolve(&config)?;
    let (polling, downtime) = config.windows()?;
    let schedule = Arc::new(window::Schedule::new(polling, downtime));
    let layout = identity::Layout::new(&config.state_dir);
    let wos = wos::Wos::new(
        &resolved.wos_url,
        resolved.wos_ca.as_deref(),
        Some((&resolved.identity.0, &resolved.identity.1)),
    )?;
    let deployer = deploy_link::Deployer::new(&config.deploy)?;
    let (problems_tx, problems_rx) = watch::channel(None);
    let (states_tx, states_rx) = watch::channel(None);
    let repository = source::without_credentials(&resolved.repository.url);
    tracing::info!(
        device_id = %resolved.device_id,
        client_id = %resolved.client_id,
        wos = %resolved.wos_url,
        %repository,
        branch = %resolved.repository.branch,
        "woa-sync running"
    );
    let puller = pull::Puller {
        mirror_dir: layout.mirror(),
        access: resolved.repository,
        deployments_path: resolved.deployments_path,
        deployer: deployer.clone(),
        deployed: states_rx.clone(),
        schedule: schedule.clone(),
        interval: config.poll.interval,
        jitter: config.poll.jitter,
        problems: problems_tx,
    };
    let reporter = report::Reporter {
        wos,
        client_id: resolved.client_id,
        device_id: resolved.device_id,
        deployer: deployer.clone(),
        outbox_path: layout.outbox(),
        heartbeat: config.status.heartbeat,
        retry_cap: config.poll.interval,
        states: states_rx,
        schedule,
        problems: problems_rx,
    };
    tokio::join!(
        report::watch_states(deployer, states_tx, cancel.clone()),
        puller.run(cancel.clone()),
        reporter.run(cancel),
    );
    Ok(())
}

/// A random wait in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=max_ms))
}
