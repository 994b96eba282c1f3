//! Prometheus text metrics: what an operator graphs and alerts on. Served on its own (plain
//! HTTP) address only when configured, since it carries no secrets but also needs no client
//! certificate.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use woa_common::margo::DeploymentState;

use crate::status::CurrentState;
use crate::{Error, Result};

/// Counters the agent updates.
#[derive(Debug, Default)]
pub struct Metrics {
    passes: AtomicU64,
    failed_passes: AtomicU64,
    last_pass_micros: AtomicU64,
    applies: AtomicU64,
    rollbacks: AtomicU64,
    images_removed: AtomicU64,
}

impl Metrics {
    /// Records a finished reconcile pass.
    pub fn pass(&self, ok: bool, micros: u64) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.last_pass_micros.store(micros, Ordering::Relaxed);
        } else {
            self.failed_passes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a stored desired state.
    pub fn applied(&self) {
        self.applies.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a release that failed and was rolled back.
    pub fn rolled_back(&self) {
        self.rollbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an unused image removed.
    pub fn image_removed(&self) {
        self.images_removed.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition, with deployments counted by state from `current`.
    pub(crate) fn render(&self, current: &CurrentState) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        };
        counter(
            "woa_deploy_reconcile_passes_total",
            "Reconcile passes run.",
            self.passes.load(Ordering::Relaxed),
        );
        counter(
            "woa_deploy_reconcile_failures_total",
            "Reconcile passes that could not read the engine.",
            self.failed_passes.load(Ordering::Relaxed),
        );
        counter(
            "woa_deploy_rollbacks_total",
            "Releases that failed to install and were rolled back.",
            self.rollbacks.load(Ordering::Relaxed),
        );
        counter(
            "woa_deploy_images_removed_total",
            "Unused images the agent had pulled and removed.",
            self.images_removed.load(Ordering::Relaxed),
        );
        counter(
            "woa_deploy_desired_states_applied_total",
            "Desired states stored.",
            self.applies.load(Ordering::Relaxed),
        );
        let _ = write!(
            out,
            "# HELP woa_deploy_last_pass_seconds Duration of the last successful pass.\n\
             # TYPE woa_deploy_last_pass_seconds gauge\nwoa_deploy_last_pass_seconds {}\n",
            self.last_pass_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        out.push_str(
            "# HELP woa_deploy_deployments Deployments by Margo state.\n\
             # TYPE woa_deploy_deployments gauge\n",
        );
        for state in [
            DeploymentState::Pending,
            DeploymentState::Installing,
            DeploymentState::Installed,
            DeploymentState::Failed,
            DeploymentState::Removing,
            DeploymentState::Removed,
        ] {
            let n = (current.deployments.iter())
                .filter(|d| d.state == state)
                .count();
            let _ = writeln!(out, "woa_deploy_deployments{{state=\"{state}\"}} {n}");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `cancel`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    current: watch::Receiver<CurrentState>,
    cancel: CancellationToken,
) -> Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = metrics.render(&current.borrow());
            async move { ([("content-type", "text/plain; version=0.0.4")], body) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(|e| Error::service("serving metrics", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_deployments_by_state() {
        let m = Metrics::default();
        m.pass(true, 1500);
        m.pass(false, 0);
        let installed = crate::status::status("d", "", "r1", "", None, vec![]);
        let current = CurrentState {
            deployments: vec![installed],
            ..Default::default()
        };
        let text = m.render(&current);
        assert!(
            text.contains("woa_deploy_reconcile_passes_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("woa_deploy_reconcile_failures_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("woa_deploy_last_pass_seconds 0.0015\n"),
            "{text}"
        );
        assert!(
            text.contains("woa_deploy_deployments{state=\"installed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("woa_deploy_deployments{state=\"failed\"} 0\n"),
            "{text}"
        );
    }
}
