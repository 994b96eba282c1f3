//! The gRPC face of the agent: `woa.deploy.v1.DeploymentService`, health and reflection, over
//! mutual TLS with client certificates from the local CA only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use futures_util::StreamExt;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use woa_proto::v1 as pb;
use woa_proto::v1::deployment_service_server::{DeploymentService, DeploymentServiceServer};

use crate::agent::Agent;
use crate::capabilities;
use crate::config::{Config, DeviceOverrides, TlsFiles};
use crate::listener::{Limits, Listener};
use crate::runtime::ContainerRuntime;
use crate::{Error, Result};

mod convert;

/// Largest accepted request: a desired state with its referenced repository files.
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// HTTP/2 pings on a connection that has been quiet this long ([`KEEPALIVE_TIMEOUT`]: how long
/// the answer may take). A client that vanished without closing (host powered off, cable pulled) would
/// otherwise hold its place under the connection cap forever. Clients that answer stay
/// connected however idle they are: they hold a certificate of the local CA, and woa-sync's
/// `WatchCurrentState` is meant to stay open for days; for the same reason there is no
/// connection age limit or request timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

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
        Error::File { .. }
        | Error::Config { .. }
        | Error::Tls { .. }
        | Error::Service { .. }
        | Error::Refused(_) => {
            tracing::error!(error = %woa_common::chain(&e), "request failed");
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
        let applied = self.agent.apply(convert::incoming(request)).await;
        Ok(Response::new(convert::applied(applied.map_err(to_status)?)))
    }

    async fn get_current_state(
        &self,
        _: Request<pb::GetCurrentStateRequest>,
    ) -> Result<Response<pb::CurrentState>, Status> {
        let state = convert::current_state(&self.agent.watch().borrow());
        Ok(Response::new(state))
    }

    type WatchCurrentStateStream = StateStream;

    async fn watch_current_state(
        &self,
        _: Request<pb::WatchCurrentStateRequest>,
    ) -> Result<Response<StateStream>, Status> {
        let stream = WatchStream::new(self.agent.watch())
            .map(|state| Ok(convert::current_state(&state)))
            .take_until(self.cancel.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_capabilities(
        &self,
        _: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::DeviceCapabilities>, Status> {
        let facts = self.agent.runtime().facts().await.map_err(to_status)?;
        let policy = self.agent.settings.policy.config();
        let otel = self.agent.settings.otel.collector();
        let properties = capabilities::probe(&facts, &self.device, policy, otel);
        Ok(Response::new(convert::capabilities(properties)))
    }

    async fn list_pending_approvals(
        &self,
        _: Request<pb::ListPendingApprovalsRequest>,
    ) -> Result<Response<pb::ListPendingApprovalsResponse>, Status> {
        let pending = self.agent.pending_approvals().await;
        Ok(Response::new(pb::ListPendingApprovalsResponse {
            pending: pending.into_iter().map(convert::pending_approval).collect(),
        }))
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
    listener: Listener,
}

/// Reads the TLS files and binds the listen address.
pub async fn bind(config: &Config) -> Result<Bound> {
    let tls = tls_config(&config.tls)?;
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::service(format!("binding {}", config.listen), e))?;
    let limits = Limits::new(&config.listener);
    Ok(Bound {
        listener: Listener::new(tcp, Arc::new(tls), limits),
    })
}

/// The server's identity, requiring a client certificate issued by the local CA.
pub(crate) fn tls_config(files: &TlsFiles) -> Result<ServerConfig> {
    let ca = files.ca.display().to_string();
    let identity = "the server's certificate and key";
    let mut roots = RootCertStore::empty();
    for cert in woa_common::tls::certificates(&files.ca).map_err(|e| Error::tls(&ca, e))? {
        roots.add(cert).map_err(|e| Error::tls(&ca, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
        .build()
        .map_err(|e| Error::tls(&ca, e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls(identity, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            woa_common::tls::certificates(&files.cert).map_err(|e| Error::tls(identity, e))?,
            woa_common::tls::private_key(&files.key).map_err(|e| Error::tls(identity, e))?,
        )
        .map_err(|e| Error::tls(identity, e))?;
    // gRPC is HTTP/2 only, and grpc-go clients refuse a server that does not negotiate it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
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
            .map_err(|e| Error::service("reflection", e))?;
        // grpcurl releases still in use speak only v1alpha reflection.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| Error::service("reflection", e))?;
        let api = DeploymentServiceServer::new(Api {
            agent,
            device,
            cancel: cancel.clone(),
        })
        // A desired state carries the repository files its deployments reference; the 4 MiB
        // default would refuse a modest package directory.
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        let incoming = self.listener.incoming(cancel.clone());
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
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| Error::service("serving gRPC", e))
    }
}
