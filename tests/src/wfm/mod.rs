//! A reference WFM (Workload Fleet Manager) of the Margo Workload Management API 1.0.0-rc.3,
//! for trying and testing a device agent's Margo client.
//!
//! Two listeners:
//! - HTTPS (`--listen`), mutual TLS with SPIFFE X.509-SVIDs: the device API (capabilities,
//!   the desired-state manifest, deployment documents and bundles, deployment status) under
//!   `--prefix`, and the SPIFFE trust bundle;
//! - plain HTTP (`--admin-listen`, loopback only): `/admin/…` JSON to set the desired state,
//!   inspect what the device sent and switch faults on, and the operator's signer of device
//!   SVIDs (`POST /admin/sign`, PEM in and out) for out-of-band provisioning. **The admin API has no authentication**:
//!   it is bound to loopback for that reason.
//!
//! Everything it needs lives in `--dir` (the CA, the SVIDs of the WFM and of the device, the
//! wrong server identities for negative tests), kept across restarts of the same dir. The
//! desired state, statuses and the request log live in memory only.

mod admin;
mod api;
mod pki;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use axum::routing::{get, post, put};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use pki::uri_sans;
pub use pki::{CA_FILE, CA_KEY_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE, CLIENT_RENEWED_FILE};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections may finish their requests after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The namespace Margo reserves for its problem types.
const PROBLEM_TYPES: &str = "https://docs.margo.org/specification/problem-types";

/// Media type of the desired-state manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.margo.manifest.v1+json";

/// Media type of the bundle of all deployment documents.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.margo.bundle.v1+tar+gzip";

/// `woa-testkit wfm` options.
#[derive(Debug, Clone, clap::Args)]
pub struct WfmOptions {
    /// Dir for the CA and the SVIDs; created if missing, kept on restart.
    #[arg(long)]
    pub dir: PathBuf,
    /// Address of the device API (HTTPS, mutual TLS); port 0 picks a free port (printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Address of the admin API (plain HTTP, no authentication), loopback only; port 0 picks
    /// a free port (printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// SPIFFE trust domain of every SVID.
    #[arg(long, default_value = "margo.test")]
    pub trust_domain: String,
    /// The WFM's id: its SVID is `spiffe://<td>/margo/wfm/<wfm-id>`.
    #[arg(long, default_value = "wfm-1")]
    pub wfm_id: String,
    /// The device's id: its SVID is `spiffe://<td>/margo/wfm/<wfm-id>/client/<client-id>`.
    #[arg(long, default_value = "device-1")]
    pub client_id: String,
    /// Path every device API path is under, e.g. `/v1alpha2/margo` (default: none).
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// Runs the WFM until `cancel` fires, then drains open connections briefly.
///
/// Prints `listening on https://ADDR:PORT`, then `admin on http://ADDR:PORT` on stdout once
/// both are bound; logs through `tracing`.
pub async fn serve(options: WfmOptions, cancel: CancellationToken) -> Result<()> {
    if !options.admin_listen.ip().is_loopback() {
        bail!(
            "--admin-listen {} is not a loopback address: the admin API has no authentication",
            options.admin_listen
        );
    }
    let prefix = normalize_prefix(&options.prefix)?;
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let pki = pki::Pki::load_or_create(
        &options.dir,
        &options.trust_domain,
        &options.wfm_id,
        &options.client_id,
    )?;
    let wfm = Arc::new(Wfm {
        prefix,
        client_prefix: format!(
            "{}/client/",
            pki::wfm_spiffe_id(&options.trust_domain, &options.wfm_id)
        ),
        trust_domain: options.trust_domain.clone(),
        pki,
        desired: Mutex::new(Desired::default()),
        switches: Mutex::new(Switches::default()),
        requests: Mutex::new(Vec::new()),
        statuses: Mutex::new(BTreeMap::new()),
        capabilities: Mutex::new(BTreeMap::new()),
    });
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&wfm)?));
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let address = listener.local_addr()?;
    let admin_listener = TcpListener::bind(options.admin_listen)
        .await
        .with_context(|| format!("binding {}", options.admin_listen))?;
    let admin_address = admin_listener.local_addr()?;
    let router = TowerToHyperService::new(router(wfm.clone()));

    // Whoever started us waits for these lines to learn the ports; print them only once bound.
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on https://{address}")?;
        writeln!(stdout, "admin on http://{admin_address}")?;
        stdout.flush()?;
    }
    tracing::info!(%address, %admin_address, prefix = %wfm.prefix, dir = %options.dir.display(), "WFM serving");

    let admin = tokio::spawn(
        axum::serve(admin_listener, admin::router(wfm.clone()))
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future(),
    );
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let wfm = wfm.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            if let Err(err) = connection(tcp, acceptor, router, wfm, cancel).await {
                tracing::debug!(%peer, error = format!("{err:#}"), "connection ended");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
    match admin.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "admin listener failed"),
        Err(err) => tracing::warn!(error = %err, "admin listener panicked"),
    }
    tracing::info!("WFM stopped");
    Ok(())
}

/// `""` or `/a/b` without a trailing slash.
fn normalize_prefix(prefix: &str) -> Result<String> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if !trimmed.starts_with('/') || trimmed.contains(['?', '#']) {
        bail!("--prefix {prefix:?} must be a path starting with /");
    }
    Ok(trimmed.to_owned())
}

/// The state every handler shares.
pub(crate) struct Wfm {
    /// `--prefix`, normalized.
    prefix: String,
    /// `spiffe://<td>/margo/wfm/<wfm-id>/client/`: what a device's SPIFFE ID starts with.
    client_prefix: String,
    trust_domain: String,
    pki: pki::Pki,
    desired: Mutex<Desired>,
    switches: Mutex<Switches>,
    requests: Mutex<Vec<RequestRecord>>,
    statuses: Mutex<BTreeMap<String, Value>>,
    capabilities: Mutex<BTreeMap<String, Value>>,
}

impl Wfm {
    /// The clientId of a device SPIFFE ID of this WFM, if it is one.
    fn client_id_of(&self, spiffe_id: &str) -> Option<String> {
        let id = spiffe_id.strip_prefix(&self.client_prefix)?;
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        valid.then(|| id.to_owned())
    }
}

/// The desired state and everything served from it.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    /// `manifestVersion` of the current manifest; 0 before the first.
    version: u64,
    /// The YAML of each current deployment.
    deployments: BTreeMap<String, Bytes>,
    /// The current bundle archive, `None` without deployments.
    bundle: Option<Bytes>,
    /// Every document ever served, by deploymentId and the digest it was advertised under.
    documents: BTreeMap<String, BTreeMap<String, Bytes>>,
    /// Every bundle ever served, by the digest it was advertised under.
    bundles: BTreeMap<String, Bytes>,
    /// The manifest body and its ETag; `None` before the first `PUT /admin/deployments`.
    manifest: Option<Manifest>,
}

/// A serialized manifest: served byte for byte, so the ETag stays its digest.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    body: Bytes,
    /// `"sha256:<hex>"`, quoted.
    etag: String,
}

impl Desired {
    /// Serializes the manifest of the current deployments and version as `switches` say, and
    /// remembers the documents under the digests it advertises.
    fn render(&mut self, prefix: &str, switches: &Switches) -> Result<()> {
        let mut refs = Vec::new();
        for (id, yaml) in &self.deployments {
            let digest = switches.advertise(yaml);
            self.documents
                .entry(id.clone())
                .or_default()
                .insert(digest.clone(), yaml.clone());
            refs.push(json!({
                "deploymentId": id,
                "digest": digest,
                "sizeBytes": yaml.len(),
                "url": format!("{prefix}/api/v1/deployments/{id}/{digest}"),
            }));
        }
        let bundle = match &self.bundle {
            Some(bytes) => {
                let digest = switches.advertise(bytes);
                self.bundles.insert(digest.clone(), bytes.clone());
                json!({
                    "mediaType": BUNDLE_MEDIA_TYPE,
                    "digest": digest,
                    "sizeBytes": bytes.len(),
                    "url": format!("{prefix}/api/v1/bundles/{digest}"),
                })
            }
            None => Value::Null,
        };
        let body = serde_json::to_vec(&json!({
            "manifestVersion": self.version,
            "bundle": bundle,
            "deployments": refs,
        }))?;
        let etag = format!("\"{}\"", sha256_digest(&body));
        self.manifest = Some(Manifest {
            body: Bytes::from(body),
            etag,
        });
        Ok(())
    }

    /// Replaces the deployments, moving the version as `switches` say.
    fn replace(&mut self, deployments: BTreeMap<String, Bytes>, switches: &Switches) -> Result<()> {
        self.version = match switches.version {
            VersionSwitch::Normal => self.version.saturating_add(1),
            VersionSwitch::Down => self.version.saturating_sub(1),
            VersionSwitch::Same => self.version,
        };
        self.bundle = if deployments.is_empty() {
            // The spec forbids an empty archive: no deployments, no bundle.
            None
        } else {
            let files: Vec<(String, &[u8])> = deployments
                .iter()
                .map(|(id, yaml)| (format!("{id}.yaml"), yaml.as_ref()))
                .collect();
            let files: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(name, yaml)| (name.as_str(), *yaml))
                .collect();
            Some(Bytes::from(crate::archive::tar_gz(&files)?))
        };
        self.deployments = deployments;
        Ok(())
    }
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How the next manifest's version moves (`version` switch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum VersionSwitch {
    /// Up by one.
    #[default]
    Normal,
    /// Down by one: a rollback the device must refuse.
    Down,
    /// Unchanged although the content changes.
    Same,
}

/// `unavailable` switch: every API request answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Unavailable {
    /// `Retry-After` in seconds.
    #[serde(default = "default_retry_after")]
    retry_after: u64,
}

fn default_retry_after() -> u64 {
    5
}

/// What the WFM does wrong on purpose, set through `PUT /admin/switches`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Switches {
    /// Advertise digests that do not match the bytes served.
    wrong_digest: bool,
    /// Advertise digests as `sha999:<hex>`.
    unknown_algorithm: bool,
    /// How the version of the next `PUT /admin/deployments` moves; back to normal after it.
    version: VersionSwitch,
    /// Answer every API request 503.
    unavailable: Option<Unavailable>,
    /// Answer every API request 403 `client-retired`.
    retired: bool,
    /// The certificate presented in new handshakes.
    server_identity: pki::ServerIdentity,
    /// What the SPIFFE bundle endpoint serves.
    trust_bundle: TrustBundleSwitch,
    /// The bundle's `spiffe_refresh_hint`, in seconds (3600 when unset).
    refresh_hint: Option<u64>,
}

/// The SPIFFE bundle served (`trustBundle` switch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum TrustBundleSwitch {
    /// The CA as the `x509-svid` authority, `spiffe_sequence` 2.
    #[default]
    Good,
    /// Only a `jwt-svid` key: no X.509 anchor at all (sequence 3).
    Empty,
    /// The good bundle at `spiffe_sequence` 1, below the one served before.
    Regressed,
}

impl Switches {
    /// The digest the manifest advertises for `bytes`.
    fn advertise(&self, bytes: &[u8]) -> String {
        let mut hash = Sha256::digest(bytes);
        if self.wrong_digest {
            // Any other 32 bytes: well-formed, and never the digest of what is served.
            hash = Sha256::digest(hash);
        }
        let algorithm = if self.unknown_algorithm {
            "sha999"
        } else {
            "sha256"
        };
        format!("{algorithm}:{}", hex::encode(hash))
    }
}

/// One API request as seen by the server.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestRecord {
    method: String,
    /// As the client sent it, prefix included, without the query.
    path: String,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    /// From the client SVID; `null` when it is not a device of this WFM.
    client_id: Option<String>,
    /// The serial number of the client SVID, so a renewal can be told from the one before.
    client_serial: String,
}

/// The verified client certificate of a connection, put in every request's extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    /// The first URI SAN of the client certificate.
    spiffe_id: Option<String>,
    /// The clientId when the SPIFFE ID is a device of this WFM.
    client_id: Option<String>,
    /// The certificate's serial number.
    serial: String,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Picks the server certificate per handshake, so `serverIdentity` needs no restart.
struct IdentityResolver(Arc<Wfm>);

impl fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityResolver").finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for IdentityResolver {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let identity = lock(&self.0.switches).server_identity;
        self.0.pki.server_key(identity)
    }
}

fn server_config(wfm: &Arc<Wfm>) -> Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(wfm.pki.provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(wfm.pki.client_verifier()?)
        .with_cert_resolver(Arc::new(IdentityResolver(wfm.clone())));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The device API, paths without the prefix.
fn router(wfm: Arc<Wfm>) -> Router {
    Router::new()
        .route("/api/v1/capabilities/{device_id}", put(api::capabilities))
        .route("/api/v1/deployments", get(api::manifest))
        .route(
            "/api/v1/deployments/{deployment_id}/{digest}",
            get(api::document),
        )
        .route(
            "/api/v1/deployments/{deployment_id}/status",
            post(api::status),
        )
        .route("/api/v1/bundles/{digest}", get(api::bundle))
        // 1.0.0 and rc.2 name the client in the path; the same resources.
        .route(
            "/api/v1/clients/{client_id}/capabilities",
            put(api::clients::capabilities).post(api::clients::capabilities),
        )
        .route(
            "/api/v1/clients/{client_id}/deployments",
            get(api::clients::manifest),
        )
        .route(
            "/api/v1/clients/{client_id}/deployments/{deployment_id}/{digest}",
            get(api::clients::document),
        )
        .route(
            "/api/v1/clients/{client_id}/deployments/{deployment_id}/status",
            post(api::clients::status),
        )
        .route("/.well-known/margo", get(api::well_known))
        .route("/trust-bundle", get(api::trust_bundle))
        .route("/.well-known/spiffe/bundle.json", get(api::trust_bundle))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such resource on this WFM",
                None,
            )
        })
        .with_state(wfm)
}

/// TLS handshake, then HTTP/1.1 on the connection until it closes or the server stops.
async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    router: TowerToHyperService<Router>,
    wfm: Arc<Wfm>,
    cancel: CancellationToken,
) -> Result<()> {
    let remote = tcp.peer_addr().ok();
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            // Logged at warn: a refused device is what a negative test looks for.
            tracing::warn!(peer = ?remote, error = %err, "TLS handshake failed");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(peer = ?remote, "TLS handshake timed out");
            return Ok(());
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    let spiffe_id = leaf.and_then(|cert| pki::uri_sans(cert).into_iter().next());
    let peer = Peer {
        serial: leaf.map(|cert| pki::serial(cert)).unwrap_or_default(),
        client_id: spiffe_id.as_deref().and_then(|id| wfm.client_id_of(id)),
        spiffe_id,
    };
    tracing::debug!(peer = ?remote, spiffe_id = ?peer.spiffe_id, "TLS handshake done");
    let service = hyper::service::service_fn(move |request| {
        handle(wfm.clone(), router.clone(), peer.clone(), request)
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result?,
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await?;
        }
    }
    Ok(())
}

/// Strips the prefix, authorizes the device, applies switches and records the request.
async fn handle(
    wfm: Arc<Wfm>,
    router: TowerToHyperService<Router>,
    peer: Peer,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let content_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let bytes_read = Arc::new(AtomicU64::new(0));
    let counter = bytes_read.clone();
    let mut request = request.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        }))
    });

    let response = 'response: {
        // Well-known paths belong to the origin (RFC 8615), so they are served there too.
        let inner = strip_prefix(&path, &wfm.prefix)
            .or_else(|| path.starts_with("/.well-known/").then_some(path.as_str()));
        let Some(inner) = inner else {
            break 'response problem(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("this WFM serves its API under {:?}", wfm.prefix),
                None,
            );
        };
        if peer.client_id.is_none() {
            break 'response problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "the client SVID {:?} is not a device of this WFM ({}<id>)",
                    peer.spiffe_id.as_deref().unwrap_or("(no URI SAN)"),
                    wfm.client_prefix
                ),
                Some(false),
            );
        }
        let switches = lock(&wfm.switches).clone();
        if let Some(unavailable) = switches.unavailable {
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "service-unavailable",
                "the WFM is unavailable (switch unavailable)",
                Some(true),
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(unavailable.retry_after),
            );
            break 'response response;
        }
        if switches.retired {
            break 'response problem(
                StatusCode::FORBIDDEN,
                "client-retired",
                "this device has been retired from the WFM (switch retired)",
                Some(false),
            );
        }
        let rewritten = match request.uri().query() {
            Some(query) => format!("{inner}?{query}"),
            None => inner.to_owned(),
        };
        match rewritten.parse::<Uri>() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(err) => {
                break 'response problem(
                    StatusCode::BAD_REQUEST,
                    "invalid-request",
                    format!("bad path: {err}"),
                    Some(false),
                );
            }
        }
        request.extensions_mut().insert(peer.clone());
        call(&router, request).await
    };

    let record = RequestRecord {
        method,
        path,
        status: response.status().as_u16(),
        // Handlers read the whole body before answering; a refused request may not have been
        // read: count what it announced.
        bytes_in: bytes_read.load(Ordering::Relaxed).max(content_length),
        bytes_out: response.body().size_hint().exact().unwrap_or(0),
        client_id: peer.client_id,
        client_serial: peer.serial,
    };
    lock(&wfm.requests).push(record);
    Ok(response)
}

/// The path below `prefix`, if `path` is under it.
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

async fn call(router: &TowerToHyperService<Router>, request: Request<Body>) -> Response<Body> {
    match hyper::service::Service::call(router, request).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    }
}

/// An RFC 9457 problem response of the Margo problem type `kind`.
pub(crate) fn problem(
    status: StatusCode,
    kind: &str,
    detail: impl Into<String>,
    retryable: Option<bool>,
) -> Response<Body> {
    let mut body = json!({
        "type": format!("{PROBLEM_TYPES}#{kind}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    if let Some(retryable) = retryable {
        body["retryable"] = Value::Bool(retryable);
    }
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A 500 that logs the cause; the client gets no internals.
pub(crate) fn internal(err: &anyhow::Error) -> Response<Body> {
    tracing::error!(error = format!("{err:#}"), "request failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal-error",
        "the WFM failed to handle the request; see its log",
        Some(true),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn prefixes_are_normalized_and_stripped_on_segment_boundaries() {
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("/").unwrap(), "");
        assert_eq!(
            normalize_prefix("/v1alpha2/margo/").unwrap(),
            "/v1alpha2/margo"
        );
        assert!(normalize_prefix("v1").is_err());
        assert_eq!(
            strip_prefix("/p/api/v1/deployments", "/p"),
            Some("/api/v1/deployments")
        );
        assert_eq!(strip_prefix("/px/api", "/p"), None);
        assert_eq!(strip_prefix("/api/v1", ""), Some("/api/v1"));
    }

    #[test]
    fn versions_move_as_switched_and_the_bundle_goes_with_the_deployments() {
        let mut desired = Desired::default();
        let normal = Switches::default();
        let one = BTreeMap::from([("a".to_owned(), Bytes::from_static(b"x: 1\n"))]);
        desired.replace(one.clone(), &normal).unwrap();
        assert_eq!(desired.version, 1);
        assert!(desired.bundle.is_some());
        desired.replace(one, &normal).unwrap();
        let down = Switches {
            version: VersionSwitch::Down,
            ..Switches::default()
        };
        desired.replace(BTreeMap::new(), &down).unwrap();
        assert_eq!(desired.version, 1);
        assert!(desired.bundle.is_none());
        desired.render("", &normal).unwrap();
        let manifest = desired.manifest.clone().unwrap();
        let value: Value = serde_json::from_slice(&manifest.body).unwrap();
        assert_eq!(value["bundle"], Value::Null);
        assert_eq!(
            manifest.etag,
            format!("\"{}\"", sha256_digest(&manifest.body))
        );
    }

    #[test]
    fn wrong_and_unknown_digests_never_match_the_bytes() {
        let bytes = b"kind: ApplicationDeployment\n";
        let wrong = Switches {
            wrong_digest: true,
            ..Switches::default()
        };
        assert!(wrong.advertise(bytes).starts_with("sha256:"));
        assert_ne!(wrong.advertise(bytes), sha256_digest(bytes));
        let unknown = Switches {
            unknown_algorithm: true,
            ..Switches::default()
        };
        assert!(unknown.advertise(bytes).starts_with("sha999:"));
    }
}
