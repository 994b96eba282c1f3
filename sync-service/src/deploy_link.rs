//! The mTLS gRPC link to the deployment service (`woa.deploy.v1`). The channel connects lazily
//! and reconnects by itself, so a deployment service that restarts costs failed calls, which
//! callers retry, and never a restart of this service.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use woa_proto::v1 as pb;
use woa_proto::v1::deployment_service_client::DeploymentServiceClient;

use crate::config::DeployLink;
use crate::{Error, Result};

/// How long the deployment service may take to store a desired state (it may download
/// packages meanwhile).
const APPLY_DEADLINE: Duration = Duration::from_secs(600);

/// How long the deployment service may take to report the capabilities (it asks the engine).
const CAPABILITIES_DEADLINE: Duration = Duration::from_secs(30);

/// Largest message either way: a desired state with the files it references.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A client of the deployment service.
#[derive(Debug, Clone)]
pub struct Deployer {
    client: DeploymentServiceClient<Channel>,
}

impl Deployer {
    /// A lazily connecting client for `link`; fails only on unusable files or URL.
    pub fn new(link: &DeployLink) -> Result<Self> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| woa_common::Error::file(path, e))
        };
        let endpoint = Endpoint::from_shared(link.endpoint.clone()).map_err(|e| Error::Deploy {
            operation: "setup",
            message: format!("deploy.endpoint {:?}: {e}", link.endpoint),
        })?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&link.ca)?))
            .identity(Identity::from_pem(read(&link.cert)?, read(&link.key)?));
        if let Some(name) = &link.server_name {
            tls = tls.domain_name(name.clone());
        }
        let channel = endpoint
            .tls_config(tls)
            .map_err(|e| Error::Deploy {
                operation: "setup",
                message: format!("TLS: {e}"),
            })?
            .connect_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_lazy();
        let client = DeploymentServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { client })
    }

    /// `ApplyDesiredState`, bounded by [`APPLY_DEADLINE`].
    pub async fn apply(
        &self,
        request: pb::ApplyDesiredStateRequest,
    ) -> Result<pb::ApplyDesiredStateResponse> {
        let mut client = self.client.clone();
        let call = client.apply_desired_state(request);
        unary("ApplyDesiredState", APPLY_DEADLINE, call).await
    }

    /// `GetCapabilities`, bounded by [`CAPABILITIES_DEADLINE`].
    pub async fn capabilities(&self) -> Result<pb::DeviceCapabilities> {
        let mut client = self.client.clone();
        let call = client.get_capabilities(pb::GetCapabilitiesRequest {});
        unary("GetCapabilities", CAPABILITIES_DEADLINE, call).await
    }

    /// `WatchCurrentState`: the full current state now and after every change.
    pub async fn watch(&self) -> Result<tonic::Streaming<pb::CurrentState>> {
        self.client
            .clone()
            .watch_current_state(pb::WatchCurrentStateRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| failed("WatchCurrentState", s))
    }
}

/// One unary call with a deadline: a hung deployment service or engine must not hang the
/// caller.
async fn unary<T>(
    operation: &'static str,
    deadline: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(deadline, call).await {
        Ok(answer) => answer
            .map(tonic::Response::into_inner)
            .map_err(|s| failed(operation, s)),
        Err(_) => Err(Error::Deploy {
            operation,
            message: format!("no answer within {deadline:?}"),
        }),
    }
}

/// A failed call, with the transport's cause when there is one (tonic's message alone is
/// often just "transport error").
pub(crate) fn failed(operation: &'static str, status: tonic::Status) -> Error {
    let mut message = format!("{:?}: {}", status.code(), status.message());
    if let Some(cause) = std::error::Error::source(&status) {
        message = format!("{message}: {}", woa_common::chain(cause));
    }
    Error::Deploy { operation, message }
}
