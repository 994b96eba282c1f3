//! The gRPC face of the agent: `woa.deploy.v1.DeploymentService`, health and reflection, over
//! mutual TLS with client certificates from the local CA only.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use futures_util::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use woa_proto::v1 as pb;
use woa_proto::v1::deployment_service_server::{DeploymentService, DeploymentServiceServer};

use crate::agent::Agent;
use crate::capabilities;
use crate::config::{Config, DeviceOverrides};
use crate::runtime::ContainerRuntime;
use crate::{Error, Result};

/// Largest accepted request: a desired state with its referenced repository files.
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// The service implementation over an agent.
pub struct Api<R> {
    agent: Arc<Agent<R>>,
    device: DeviceOverrides,
    /// Ends open watch streams at shutdown, which graceful shutdown waits for.
    cancel: CancellationToken,
}

/// Maps agent errors to gRPC codes. Internals stay in the log; clients get the message that
/// already names the file, field or image.
fn to_status(e: Error) -> Status {
    match e {
        Error::Document(_)
        | Error::UnsupportedProfile(_)
        | Error::ParameterTarget { .. }
        | Error::Compose { .. }
        | Error::Package { .. } => Status::invalid_argument(e.to_string()),
        Error::Policy { .. } => Status::permission_denied(e.to_string()),
        Error::ImagePull { .. } | Error::Runtime { .. } | Error::NotReady { .. } => {
            Status::unavailable(e.to_string())
        }
        Error::DiskSpace { .. } => Status::resource_exhausted(e.to_string()),
        Error::UnknownDeployment(_) => Status::not_found(e.to_string()),
        Error::Rollout { .. } => Status::failed_precondition(e.to_string()),
        Error::Setup(_) => {
            tracing::error!(error = %e, "request failed");
            Status::internal("the deployment service could not complete the request; see its log")
        }
    }
}

type StateStream = Pin<Box<dyn Stream<Item = Result<pb::CurrentState, Status>> + Send>>;

#[tonic::async_trait]
impl<R: ContainerRuntime> DeploymentService for Api<R> {
    async fn apply_desired_state(
        &self,
        request: Request<pb::ApplyDesiredStateRequest>,
    ) -> Result<Response<pb::ApplyDesiredStateResponse>, Status> {
        let request = request.into_inner();
        if request.revision.is_empty() {
            return Err(Status::invalid_argument("revision is required"));
        }
        self.agent
            .apply(request)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn get_current_state(
        &self,
        _: Request<pb::GetCurrentStateRequest>,
    ) -> Result<Response<pb::CurrentState>, Status> {
        Ok(Response::new(self.agent.watch().borrow().clone()))
    }

    type WatchCurrentStateStream = StateStream;

    async fn watch_current_state(
        &self,
        _: Request<pb::WatchCurrentStateRequest>,
    ) -> Result<Response<StateStream>, Status> {
        let stream = WatchStream::new(self.agent.watch())
            .map(Ok)
            .take_until(self.cancel.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_capabilities(
        &self,
        _: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::DeviceCapabilities>, Status> {
        let facts = self.agent.runtime().facts().await.map_err(to_status)?;
        Ok(Response::new(capabilities::probe(&facts, &self.device)))
    }

    async fn list_pending_approvals(
        &self,
        _: Request<pb::ListPendingApprovalsRequest>,
    ) -> Result<Response<pb::ListPendingApprovalsResponse>, Status> {
        let pending = self.agent.pending_approvals().await;
        Ok(Response::new(pb::ListPendingApprovalsResponse { pending }))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        let r = request.into_inner();
        let release = self.agent.approve(&r.deployment_id, &r.release).await;
        Ok(Response::new(pb::ApproveResponse {
            release: release.map_err(to_status)?,
        }))
    }

    async fn reject(
        &self,
        request: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::RejectResponse>, Status> {
        let r = request.into_inner();
        let release = self
            .agent
            .reject(&r.deployment_id, &r.release, &r.reason)
            .await;
        Ok(Response::new(pb::RejectResponse {
            release: release.map_err(to_status)?,
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let revision = self
            .agent
            .roll_back(&request.into_inner().deployment_id)
            .await;
        Ok(Response::new(pb::RollbackResponse {
            revision: revision.map_err(to_status)?,
        }))
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, Status> {
        let release = self.agent.retry(&request.into_inner().deployment_id).await;
        Ok(Response::new(pb::RetryResponse {
            release: release.map_err(to_status)?,
        }))
    }
}

/// A bound server, ready to run.
pub struct Bound {
    listener: tokio::net::TcpListener,
    tls: ServerTlsConfig,
}

/// Reads the TLS files and binds the listen address.
pub async fn bind(config: &Config) -> Result<Bound> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Setup(format!("reading {}: {e}", p.display())))
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&config.tls.cert)?,
            read(&config.tls.key)?,
        ))
        .client_ca_root(Certificate::from_pem(read(&config.tls.ca)?))
        .client_auth_optional(false);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Setup(format!("binding {}: {e}", config.listen)))?;
    Ok(Bound { listener, tls })
}

impl Bound {
    /// The bound address (useful when the configured port is 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `cancel`; health turns NOT_SERVING first so clients stop sending work.
    pub async fn serve<R: ContainerRuntime>(
        self,
        agent: Arc<Agent<R>>,
        device: DeviceOverrides,
        cancel: CancellationToken,
    ) -> Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<DeploymentServiceServer<Api<R>>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Setup(format!("reflection: {e}")))?;
        // grpcurl releases still in use speak only v1alpha reflection.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| Error::Setup(format!("reflection: {e}")))?;
        let api = DeploymentServiceServer::new(Api {
            agent,
            device,
            cancel: cancel.clone(),
        })
        // A desired state carries the repository files its deployments reference; the 4 MiB
        // default would refuse a modest package directory.
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        let shutdown = {
            let cancel = cancel.clone();
            async move {
                cancel.cancelled().await;
                health
                    .set_not_serving::<DeploymentServiceServer<Api<R>>>()
                    .await;
            }
        };
        Server::builder()
            .tls_config(self.tls)
            .map_err(|e| Error::Setup(format!("tls: {e}")))?
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await
            .map_err(|e| Error::Setup(format!("serving gRPC: {e}")))
    }
}
