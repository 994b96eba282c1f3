//! A reference WOS (Workload Orchestration Software) for trying and testing a device agent.
//!
//! One HTTPS listener serves:
//! - the REST API of the WOS (enrollment, capabilities, deployment status), DESIGN.md §3.5;
//! - one git repository per device over smart HTTP (`git http-backend` as a CGI program), with
//!   per-device credentials (Basic, bearer token or client certificate);
//! - `/admin/…`: plain JSON to inspect devices and requests, provision devices, rotate
//!   credentials and inject faults. **The admin API has no authentication**: this is a test kit,
//!   run it on a trusted network only.
//!
//! Everything it needs lives in the data dir (`--data`): the server and device CAs, the
//! devices (`wos.json`) and the repositories (`repos/<clientId>.git`), so a restart on the same
//! dir keeps enrolled devices working.

mod admin;
mod api;
mod ca;
mod git;
mod store;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::routing::{any, get, post, put};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use ca::{DEVICE_CA_FILE, SERVER_CA_FILE};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections may finish their requests after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `woa-testkit wos` options.
#[derive(Debug, Clone, clap::Args)]
pub struct WosOptions {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Data dir: CAs, devices (wos.json) and repositories; created if missing, kept on restart.
    #[arg(long)]
    pub data: PathBuf,
    /// Enrollment token a device must present to onboard; repeat for several.
    #[arg(long = "token", required = true)]
    pub tokens: Vec<String>,
    /// How devices enrolled from now on authenticate to their git repository.
    #[arg(long, value_enum, default_value_t = RepoAuth::Basic)]
    pub repo_auth: RepoAuth,
    /// Base URL of this server as devices reach it (default `https://localhost:<port>`).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Extra DNS name or IP address for the server certificate; repeat for several.
    #[arg(long = "san")]
    pub sans: Vec<String>,
}

/// How a device authenticates to its git repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RepoAuth {
    /// HTTP Basic: username = clientId, password issued at enrollment.
    #[default]
    Basic,
    /// `Authorization: Bearer <token>`, token issued at enrollment.
    Bearer,
    /// The device certificate (subject CN = clientId).
    Mtls,
}

/// Runs the WOS until `cancel` fires, then drains open connections briefly.
///
/// Prints `listening on https://ADDR:PORT` on stdout once bound; logs through `tracing`.
pub async fn serve(options: WosOptions, cancel: CancellationToken) -> Result<()> {
    let data = options.data.clone();
    std::fs::create_dir_all(data.join("repos"))
        .with_context(|| format!("creating {}", data.display()))?;
    let pki = ca::Pki::load_or_create(&data, &options.sans)?;
    let store = store::Store::load(&data.join("wos.json"))?;
    let acceptor = TlsAcceptor::from(Arc::new(pki.server_config()?));
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let address = listener.local_addr()?;
    let public_url = options
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://localhost:{}", address.port()));
    let wos = Arc::new(Wos {
        repos_dir: data.join("repos"),
        public_url: public_url.trim_end_matches('/').to_owned(),
        tokens: options.tokens.clone(),
        repo_auth: options.repo_auth,
        pki,
        store,
        fault: Mutex::new(Fault::default()),
        requests: Mutex::new(RequestLog::default()),
    });
    let router = TowerToHyperService::new(router(wos.clone()));

    // Whoever started us waits for this line to learn the port; print it only once bound.
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on https://{address}")?;
        stdout.flush()?;
    }
    tracing::info!(%address, public_url = %wos.public_url, data = %data.display(), "WOS serving");

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
        let wos = wos.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            if let Err(err) = connection(tcp, acceptor, router, wos, cancel).await {
                tracing::debug!(%peer, error = %err, "connection ended");
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
    tracing::info!("WOS stopped");
    Ok(())
}

/// The state every handler shares.
pub(crate) struct Wos {
    repos_dir: PathBuf,
    public_url: String,
    tokens: Vec<String>,
    repo_auth: RepoAuth,
    pki: ca::Pki,
    store: store::Store,
    fault: Mutex<Fault>,
    requests: Mutex<RequestLog>,
}

impl Wos {
    /// The `repository` object handed to a device.
    fn repository(&self, device: &store::Device) -> Value {
        let auth = match device.auth_type {
            RepoAuth::Basic => json!({
                "type": "basic",
                "username": device.client_id,
                "password": device.password,
            }),
            RepoAuth::Bearer => json!({"type": "bearer", "token": device.token}),
            RepoAuth::Mtls => json!({"type": "mtls"}),
        };
        json!({
            "url": format!("{}/git/{}.git", self.public_url, device.client_id),
            "branch": "main",
            "path": "deployments",
            "auth": auth,
        })
    }

    /// Creates the bare repository of `client_id` unless it exists.
    async fn ensure_repository(&self, client_id: &str) -> Result<()> {
        let dir = self.repos_dir.join(format!("{client_id}.git"));
        if dir.join("HEAD").exists() {
            return Ok(());
        }
        git::run_git(&["init", "--quiet", "--bare", "-b", "main"], &dir).await?;
        git::run_git(&["config", "http.receivepack", "true"], &dir).await?;
        Ok(())
    }
}

/// The verified client certificate of a connection, put in every request's extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    /// Subject CN of the client certificate (the clientId), if one was presented.
    pub(crate) client_id: Option<String>,
}

/// Put in a response's extensions by handlers that authenticated a device some other way
/// (git Basic or bearer), so the request log names it.
#[derive(Debug, Clone)]
pub(crate) struct AuthenticatedClient(pub(crate) String);

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FaultScope {
    /// `/api/…`
    Api,
    /// `/git/…`
    Git,
    /// Everything but `/admin/…`.
    #[default]
    All,
}

/// What the server does wrong on purpose.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
enum FaultMode {
    /// Serve normally.
    #[default]
    None,
    /// 503 (or `status`, e.g. 429) with `Retry-After` (none when `retryAfter` is null).
    Unavailable {
        #[serde(rename = "retryAfter", default = "default_retry_after")]
        retry_after: Option<u64>,
        #[serde(default = "default_unavailable_status")]
        status: u16,
    },
    /// Wait, then serve normally.
    Slow {
        #[serde(rename = "delayMs")]
        delay_ms: u64,
    },
    /// Close the connection without answering.
    Down,
}

fn default_retry_after() -> Option<u64> {
    Some(5)
}

fn default_unavailable_status() -> u16 {
    503
}

/// The fault state set through `PUT /admin/fault`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Fault {
    #[serde(flatten)]
    mode: FaultMode,
    #[serde(default)]
    scope: FaultScope,
}

impl Fault {
    /// Why the fault cannot be served, if it cannot.
    fn invalid(&self) -> Option<String> {
        match self.mode {
            FaultMode::Unavailable { status, .. } if !(400..=599).contains(&status) => {
                Some(format!("status {status} is not an error status (400-599)"))
            }
            _ => None,
        }
    }

    fn applies_to(&self, path: &str) -> bool {
        match self.scope {
            FaultScope::All => true,
            FaultScope::Api => path.starts_with("/api/"),
            FaultScope::Git => path.starts_with("/git/"),
        }
    }
}

/// One non-admin request as seen by the server.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestRecord {
    seq: u64,
    at: String,
    method: String,
    path: String,
    query: Option<String>,
    /// 0 when the connection was closed without an answer (fault `down`).
    status: u16,
    client_id: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: u64,
}

#[derive(Debug, Default)]
struct RequestLog {
    next_seq: u64,
    records: Vec<RequestRecord>,
}

/// The connection-level error that makes hyper close a connection without an answer.
#[derive(Debug)]
struct ConnectionDropped;

impl std::fmt::Display for ConnectionDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed by fault mode down")
    }
}

impl std::error::Error for ConnectionDropped {}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn router(wos: Arc<Wos>) -> Router {
    Router::new()
        .route("/api/v1/onboarding", post(api::onboarding))
        .route("/api/v1/onboarding/certificate", get(api::ca_certificate))
        .route(
            "/api/v1/clients/{client_id}/capabilities",
            put(api::capabilities),
        )
        .route(
            "/api/v1/clients/{client_id}/deployments/{deployment_id}/status",
            post(api::status),
        )
        .route("/git/{*path}", any(git::serve))
        .route("/admin/fault", get(admin::get_fault).put(admin::put_fault))
        .route("/admin/devices", get(admin::devices).post(admin::provision))
        .route("/admin/devices/{client_id}", get(admin::device))
        .route(
            "/admin/devices/{client_id}/deployments/{deployment_id}",
            get(admin::deployment),
        )
        .route(
            "/admin/devices/{client_id}/credentials",
            post(admin::rotate_credentials),
        )
        .route(
            "/admin/requests",
            get(admin::requests).delete(admin::clear_requests),
        )
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such resource on this WOS") })
        .with_state(wos)
}

/// TLS handshake, then HTTP/1.1 on the connection until it closes or the server stops.
async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    router: TowerToHyperService<Router>,
    wos: Arc<Wos>,
    cancel: CancellationToken,
) -> Result<()> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    let peer = Peer {
        client_id: tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| ca::common_name(cert)),
    };
    let service = hyper::service::service_fn(move |request| {
        handle(wos.clone(), router.clone(), peer.clone(), request)
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

/// Applies faults and records the request around the router.
async fn handle(
    wos: Arc<Wos>,
    router: TowerToHyperService<Router>,
    peer: Peer,
    request: Request<Incoming>,
) -> Result<Response<Body>, ConnectionDropped> {
    let started = Instant::now();
    let at = store::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
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
    request.extensions_mut().insert(peer.clone());

    if path.starts_with("/admin/") || path == "/admin" {
        return Ok(call(&router, request).await);
    }

    let fault = lock(&wos.fault).clone();
    let faulted = fault.applies_to(&path);
    let response = match fault.mode {
        FaultMode::Down if faulted => None,
        FaultMode::Unavailable {
            retry_after,
            status,
        } if faulted => {
            // `put_fault` admits only error statuses.
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut response = problem(status, "the WOS is unavailable (injected fault)");
            if let Some(retry_after) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Some(response)
        }
        FaultMode::Slow { delay_ms } if faulted => {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Some(call(&router, request).await)
        }
        _ => Some(call(&router, request).await),
    };

    let client_id = response
        .as_ref()
        .and_then(|r| r.extensions().get::<AuthenticatedClient>())
        .map(|client| client.0.clone())
        .or(peer.client_id);
    let record = RequestRecord {
        seq: 0,
        at,
        method,
        path,
        query,
        status: response.as_ref().map_or(0, |r| r.status().as_u16()),
        client_id,
        // Handlers read the whole body before answering, so the count is complete here;
        // a refused request may not have been read: count what it announced.
        bytes_in: bytes_read.load(Ordering::Relaxed).max(content_length),
        bytes_out: response
            .as_ref()
            .and_then(|r| r.body().size_hint().exact())
            .unwrap_or(0),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    {
        let mut log = lock(&wos.requests);
        log.next_seq += 1;
        let seq = log.next_seq;
        log.records.push(RequestRecord { seq, ..record });
    }
    response.ok_or(ConnectionDropped)
}

async fn call(router: &TowerToHyperService<Router>, request: Request<Body>) -> Response<Body> {
    match hyper::service::Service::call(router, request).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    }
}

/// An RFC 9457 problem response.
pub(crate) fn problem(status: StatusCode, detail: impl Into<String>) -> Response<Body> {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// A request refused before any work, answered as problem+json; `challenge` goes into
/// `WWW-Authenticate` (git clients send credentials only after one).
pub(crate) struct Refusal {
    status: StatusCode,
    detail: String,
    challenge: Option<&'static str>,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            status,
            detail: detail.into(),
            challenge: None,
        }
    }

    pub(crate) fn unauthorized(challenge: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal {
            challenge: Some(challenge),
            ..Refusal::new(StatusCode::UNAUTHORIZED, detail)
        }
    }

    pub(crate) fn response(self) -> Response<Body> {
        let mut response = problem(self.status, self.detail);
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn faults_parse_with_defaults_and_scopes() {
        let fault: Fault = serde_json::from_value(json!({"mode": "unavailable"})).unwrap();
        assert!(matches!(
            fault.mode,
            FaultMode::Unavailable {
                retry_after: Some(5),
                status: 503
            }
        ));
        let fault: Fault = serde_json::from_value(
            json!({"mode": "unavailable", "status": 429, "retryAfter": null, "scope": "git"}),
        )
        .unwrap();
        assert!(matches!(
            fault.mode,
            FaultMode::Unavailable {
                retry_after: None,
                status: 429
            }
        ));
        assert!(fault.applies_to("/git/x.git/info/refs"));
        let fault: Fault =
            serde_json::from_value(json!({"mode": "slow", "delayMs": 10, "scope": "api"})).unwrap();
        assert!(matches!(fault.mode, FaultMode::Slow { delay_ms: 10 }));
        assert!(fault.applies_to("/api/v1/onboarding"));
        assert!(!fault.applies_to("/git/x.git/info/refs"));
        assert!(serde_json::from_value::<Fault>(json!({"mode": "broken"})).is_err());
    }
}
