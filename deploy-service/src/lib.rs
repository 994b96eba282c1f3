//! woa-deploy: runs Margo compose deployments on the Docker engine and serves the
//! `woa.deploy.v1` contract over mutual TLS.
//!
//! `main.rs` is a thin shell over [`run`] and [`init_certs`], so tests can start the service
//! in-process as well as as a process.

mod agent;
mod artifact;
mod capabilities;
mod compose;
mod config;
mod desired;
mod docker;
mod error;
mod execute;
mod gc;
mod listener;
#[cfg(test)]
mod memory;
mod metrics;
pub mod operator;
mod otel;
pub mod package;
mod plan;
mod policy;
mod reconcile;
mod rollout;
mod runtime;
mod server;
mod spec;
mod status;
mod verify;
mod worker;

use std::path::Path;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};

/// How long shutdown waits for a reconcile pass to finish.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds the service from `config` (connect to the engine, bind the port) and runs it until
/// `cancel`.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<()> {
    // One crypto provider for every TLS client, including the OCI registry client's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fetcher = package::PackageFetcher::new(&config.packages)?.with_artifacts(
        config.registries.clone(),
        &config.packages.ca,
        config.state_dir.join("artifacts"),
    )?;
    let runtime =
        docker::DockerRuntime::connect(config.registries.clone(), &config.instance).await?;
    let bound = server::bind(&config).await?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::service(format!("binding metrics on {addr}"), e))?,
        ),
        None => None,
    };
    let settings = agent::AgentSettings {
        state_dir: config.state_dir.clone(),
        resync_interval: config.resync_interval,
        remove_volumes: config.remove_volumes,
        rollout: config.rollout.clone(),
        image_gc: config.image_gc.clone(),
        policy: policy::Policy::new(config.policy.clone(), config.protected()),
        otel: config.otel.clone(),
    };
    let agent = agent::Agent::new(runtime, fetcher, settings)?;
    tracing::info!(listen = ?bound.local_addr(), state_dir = %config.state_dir.display(), "woa-deploy serving");
    if let Some(listener) = metrics_listener {
        let serve = metrics::serve(listener, agent.metrics(), agent.watch(), cancel.clone());
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %woa_common::chain(&e), "metrics endpoint stopped");
            }
        });
    }
    let reconciler = tokio::spawn(agent.clone().run(cancel.clone()));
    let served = bound
        .serve(agent, config.device.clone(), cancel.clone())
        .await;
    cancel.cancel();
    // A pass may be in the middle of a long pull; passes are crash-safe, so stop waiting.
    if tokio::time::timeout(SHUTDOWN_DRAIN, reconciler)
        .await
        .is_err()
    {
        tracing::warn!("reconcile pass still running at shutdown; abandoned");
    }
    served
}

/// Creates the local PKI in `dir` (see `woa-deploy certs init`).
pub fn init_certs(dir: &Path, force: bool) -> Result<()> {
    Ok(woa_common::pki::init(dir, force)?)
}
