//! The deployment service under test, reached through the generated `woa.deploy.v1` client over
//! mutual TLS, with the waits the cases share.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use woa_proto::v1 as pb;
use woa_proto::v1::deployment_service_client::DeploymentServiceClient;

use super::ConformanceOptions;

/// Largest message either way, as `woa-sync` allows: a desired state with its files.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Longest a single call may take; the contract's calls answer before anything converges.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a connection (TCP and TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a wait asks for the current state again.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The target: a client with the suite's certificate, and what the cases need to know.
pub(super) struct Target {
    client: DeploymentServiceClient<Channel>,
    endpoint: String,
    /// TLS with the suite's certificate.
    tls: ClientTlsConfig,
    /// TLS trusting the target's CA, without a certificate of the suite's own.
    anonymous_tls: ClientTlsConfig,
    image: String,
    timeout: Duration,
}

impl Target {
    /// A lazily connecting client for `options`; fails only on unreadable files or address.
    pub(super) fn new(options: &ConformanceOptions) -> Result<Target> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let ca = Certificate::from_pem(read(&options.ca)?);
        let identity = Identity::from_pem(read(&options.cert)?, read(&options.key)?);
        let mut anonymous_tls = ClientTlsConfig::new().ca_certificate(ca);
        if let Some(name) = &options.server_name {
            anonymous_tls = anonymous_tls.domain_name(name);
        }
        let tls = anonymous_tls.clone().identity(identity);
        let endpoint = format!("https://{}", options.target);
        Ok(Target {
            client: client(channel(&endpoint, &tls)?),
            endpoint,
            tls,
            anonymous_tls,
            image: options.image.clone(),
            timeout: options.timeout(),
        })
    }

    /// Opens one connection with the suite's certificate, bounded in time: fails with the
    /// TLS problem (or the connection's) when the target cannot be reached.
    pub(super) async fn handshake(&self) -> Result<()> {
        let endpoint = endpoint(&self.endpoint, &self.tls)?;
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, endpoint.connect()).await {
            Ok(Ok(_channel)) => Ok(()),
            Ok(Err(err)) => Err(anyhow::Error::new(err))
                .with_context(|| format!("connecting to {} over mutual TLS", self.endpoint)),
            Err(_) => bail!(
                "connecting to {}: no TLS handshake within {:?}",
                self.endpoint,
                CONNECT_TIMEOUT * 2
            ),
        }
    }

    /// How long a deployment may take to reach a state.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The image the compose files run.
    pub(super) fn image(&self) -> &str {
        &self.image
    }

    /// A client that trusts the target's CA but presents no certificate of its own.
    pub(super) fn anonymous(&self) -> Result<DeploymentServiceClient<Channel>> {
        Ok(client(channel(&self.endpoint, &self.anonymous_tls)?))
    }

    /// `GetCapabilities`.
    pub(super) async fn capabilities(&self) -> Result<pb::DeviceCapabilities> {
        let request = pb::GetCapabilitiesRequest {};
        answer(
            "GetCapabilities",
            self.client.clone().get_capabilities(request),
        )
        .await
    }

    /// `ApplyDesiredState`.
    pub(super) async fn apply(
        &self,
        request: pb::ApplyDesiredStateRequest,
    ) -> Result<pb::ApplyDesiredStateResponse> {
        answer(
            "ApplyDesiredState",
            self.client.clone().apply_desired_state(request),
        )
        .await
    }

    /// `GetCurrentState`.
    pub(super) async fn current_state(&self) -> Result<pb::CurrentState> {
        let request = pb::GetCurrentStateRequest {};
        answer(
            "GetCurrentState",
            self.client.clone().get_current_state(request),
        )
        .await
    }

    /// `WatchCurrentState`: the stream of full states.
    pub(super) async fn watch(&self) -> Result<tonic::Streaming<pb::CurrentState>> {
        let request = pb::WatchCurrentStateRequest {};
        answer(
            "WatchCurrentState",
            self.client.clone().watch_current_state(request),
        )
        .await
    }

    /// Polls `GetCurrentState` until `check` finds what it waits for, for at most the timeout.
    /// `what` names the awaited condition in the failure, which also shows the last state seen.
    pub(super) async fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&pb::CurrentState) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match self.current_state().await {
                Ok(state) => {
                    if let Some(found) = check(&state) {
                        return Ok(found);
                    }
                    format!("{state:?}")
                }
                // A target may drop a call while it works; the deadline decides.
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!("{what}: not within {:?}; last seen: {last}", self.timeout);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until `deployment_id` is INSTALLED at `revision` and returns its status.
    pub(super) async fn wait_installed(
        &self,
        deployment_id: &str,
        revision: &str,
    ) -> Result<pb::DeploymentStatus> {
        self.wait_for(
            &format!("{deployment_id} INSTALLED at revision {revision}"),
            |state| {
                deployment(state, deployment_id)
                    .filter(|d| is_installed_at(d, revision))
                    .cloned()
            },
        )
        .await
    }

    /// Applies an empty desired state and waits until no deployment is left but removed ones,
    /// so the next case starts from nothing and the suite leaves the target empty.
    pub(super) async fn clear(&self) -> Result<()> {
        let revision = revision("clear")?;
        self.apply(pb::ApplyDesiredStateRequest {
            revision: revision.clone(),
            ..Default::default()
        })
        .await?;
        self.wait_for(
            "every deployment REMOVED after an empty desired state",
            |state| {
                let gone = state.revision == revision
                    && state
                        .deployments
                        .iter()
                        .all(|d| d.state() == pb::DeploymentState::Removed);
                gone.then_some(())
            },
        )
        .await
    }
}

/// The status of `deployment_id` in `state`, if listed.
pub(super) fn deployment<'a>(
    state: &'a pb::CurrentState,
    deployment_id: &str,
) -> Option<&'a pb::DeploymentStatus> {
    state
        .deployments
        .iter()
        .find(|d| d.deployment_id == deployment_id)
}

/// True when `status` is INSTALLED at `revision`.
pub(super) fn is_installed_at(status: &pb::DeploymentStatus, revision: &str) -> bool {
    status.revision == revision && status.state() == pb::DeploymentState::Installed
}

/// A fresh random UUID (version 4), as the WOS gives deployment ids.
pub(super) fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A fresh revision name, e.g. `conformance-update-<uuid>`; `Result` so a caller can `?` it
/// alongside the calls it feeds.
pub(super) fn revision(label: &str) -> Result<String> {
    Ok(format!("conformance-{label}-{}", uuid_v4()))
}

fn endpoint(endpoint: &str, tls: &ClientTlsConfig) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("target {endpoint:?}"))?
        .tls_config(tls.clone())
        .context("TLS setup")?
        .connect_timeout(CONNECT_TIMEOUT))
}

fn channel(endpoint_url: &str, tls: &ClientTlsConfig) -> Result<Channel> {
    Ok(endpoint(endpoint_url, tls)?.connect_lazy())
}

fn client(channel: Channel) -> DeploymentServiceClient<Channel> {
    DeploymentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Awaits one call, bounded in time, its `Status` turned into an error naming the call and the
/// transport's causes (tonic's own message is often just "transport error").
pub(super) async fn answer<T>(
    name: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(anyhow!("{name}: {}", describe(&status))),
        Err(_) => Err(anyhow!("{name}: no answer within {CALL_TIMEOUT:?}")),
    }
}

/// A status's code, message and every cause below it.
pub(super) fn describe(status: &tonic::Status) -> String {
    let mut message = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // tonic often repeats a cause in its own message; say each thing once.
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_fresh() {
        let a = uuid_v4();
        let b = uuid_v4();
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{a}");
        assert_eq!(&a[14..15], "4", "{a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn a_status_names_each_cause_once() {
        let cause = std::io::Error::other("invalid peer certificate: BadSignature");
        let status = tonic::Status::from_error(Box::new(cause));
        let described = describe(&status);
        assert_eq!(described.matches("BadSignature").count(), 1, "{described}");
        assert!(described.starts_with("Unknown: "), "{described}");
    }
}
