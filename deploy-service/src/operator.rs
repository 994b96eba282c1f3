//! The site operator's commands against a running woa-deploy: health, approvals, rollback and
//! retry, over the same mutual TLS link as any client (the operator certificate by default).

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use woa_proto::v1 as pb;
use woa_proto::v1::deployment_service_client::DeploymentServiceClient;

use crate::rollout::short;
use crate::{Error, Result};

/// Where the service is and who the operator is.
#[derive(Debug, Clone)]
pub struct Link {
    /// e.g. `https://localhost:7411`.
    pub endpoint: String,
    /// The local CA.
    pub ca: PathBuf,
    /// A client certificate of the local CA.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl Link {
    /// The operator's files in a PKI directory made by `woa-deploy certs init`.
    pub fn operator(endpoint: String, pki: &Path) -> Link {
        Link {
            endpoint,
            ca: pki.join("ca.pem"),
            cert: pki.join("operator.pem"),
            key: pki.join("operator-key.pem"),
        }
    }

    async fn channel(&self) -> Result<Channel> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| Error::tls("the operator's TLS files", woa_common::Error::file(p, e)))
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?));
        let unreachable = |e| Error::service(format!("reaching {}", self.endpoint), e);
        Endpoint::from_shared(self.endpoint.clone())
            .map_err(unreachable)?
            .tls_config(tls)
            .map_err(unreachable)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(unreachable)
    }
}

/// What the operator asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Releases awaiting approval, one line each.
    List,
    /// What the pending release of a deployment changes.
    Show(String),
    /// Approve the pending release of a deployment (the one `show` prints).
    Approve(String),
    /// Reject it, with a reason for the orchestrator.
    Reject(String, String),
    /// Go back to the previous installed release.
    Rollback(String),
    /// Let a held release apply again.
    Retry(String),
}

/// Exits with an error unless the service answers its health check as serving.
pub async fn health(link: &Link) -> Result<()> {
    let mut client = HealthClient::new(link.channel().await?);
    let status = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| Error::Refused(format!("health check: {}", e.message())))?
        .into_inner()
        .status();
    match status {
        ServingStatus::Serving => Ok(()),
        other => Err(Error::Refused(format!(
            "health check: {}",
            other.as_str_name()
        ))),
    }
}

/// Runs `command`; returns what to print.
pub async fn run(link: &Link, command: Command) -> Result<String> {
    let mut client = DeploymentServiceClient::new(link.channel().await?);
    let refused = |e: tonic::Status| Error::Refused(e.message().to_string());
    let pending = |id: &str, list: Vec<pb::PendingApproval>| {
        list.into_iter()
            .find(|p| p.deployment_id == id)
            .ok_or_else(|| Error::Rollout {
                deployment: id.to_string(),
                message: "has no release awaiting approval".into(),
            })
    };
    let list = |mut client: DeploymentServiceClient<Channel>| async move {
        client
            .list_pending_approvals(pb::ListPendingApprovalsRequest {})
            .await
            .map(|r| r.into_inner().pending)
            .map_err(refused)
    };
    Ok(match command {
        Command::List => {
            let pending = list(client.clone()).await?;
            if pending.is_empty() {
                return Ok("no release awaits approval\n".into());
            }
            let mut out = format!(
                "{:<38} {:<12} {:<12} CHANGES\n",
                "DEPLOYMENT", "REVISION", "RUNNING"
            );
            for p in pending {
                let running = Some(short(&p.current_revision)).filter(|r| !r.is_empty());
                let _ = writeln!(
                    out,
                    "{:<38} {:<12} {:<12} {}",
                    p.deployment_id,
                    short(&p.revision),
                    running.unwrap_or("(new)"),
                    p.changes.len()
                );
            }
            out
        }
        Command::Show(id) => describe(&pending(&id, list(client.clone()).await?)?),
        Command::Approve(id) => {
            let p = pending(&id, list(client.clone()).await?)?;
            let request = pb::ApproveRequest {
                deployment_id: id.clone(),
                release: p.release.clone(),
            };
            client.approve(request).await.map_err(refused)?;
            format!(
                "{}approved: deployment {id} applies revision {}\n",
                describe(&p),
                short(&p.revision)
            )
        }
        Command::Reject(id, reason) => {
            let p = pending(&id, list(client.clone()).await?)?;
            let request = pb::RejectRequest {
                deployment_id: id.clone(),
                release: p.release.clone(),
                reason,
            };
            client.reject(request).await.map_err(refused)?;
            format!(
                "rejected: deployment {id} keeps what runs; revision {} is not applied\n",
                short(&p.revision)
            )
        }
        Command::Rollback(id) => {
            let request = pb::RollbackRequest {
                deployment_id: id.clone(),
            };
            let revision = client.rollback(request).await.map_err(refused)?;
            format!(
                "rolling back: deployment {id} returns to revision {}\n",
                short(&revision.into_inner().revision)
            )
        }
        Command::Retry(id) => {
            let request = pb::RetryRequest {
                deployment_id: id.clone(),
            };
            client.retry(request).await.map_err(refused)?;
            format!("retrying: deployment {id} applies its held release again\n")
        }
    })
}

/// A pending release and what it changes, for people.
fn describe(p: &pb::PendingApproval) -> String {
    let mut out = format!(
        "deployment {} (application {}, {})\nrevision {} replaces {}\n",
        p.deployment_id,
        p.application_id,
        p.path,
        p.revision,
        if p.current_revision.is_empty() {
            "nothing (a new deployment)".to_string()
        } else {
            format!("revision {}", p.current_revision)
        }
    );
    if p.changes.is_empty() {
        out += "  no change to any container\n";
    }
    for c in &p.changes {
        let sign = match c.kind.as_str() {
            "added" => '+',
            "removed" => '-',
            _ => '~',
        };
        let what = [c.component.as_str(), c.service.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        let value = match c.kind.as_str() {
            "added" => c.new.clone(),
            "removed" => c.old.clone(),
            _ => format!("{} -> {}", c.old, c.new),
        };
        let _ = writeln!(out, "  {sign} {what} {}: {value}", c.field);
    }
    out
}
