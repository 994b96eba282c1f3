//! The gRPC listener: accepts TCP connections under a cap, runs each mutual-TLS handshake under
//! a deadline and hands the established connections to tonic.
//!
//! tonic's own TLS listener has no handshake deadline, retries a failing `accept` (out of file
//! descriptors) in a tight loop and logs refused handshakes only at DEBUG, so a few hundred
//! clients that connect and say nothing kept operators and woa-sync out while the process spun.

use std::convert::Infallible;
use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use woa_common::backoff::Backoff;

use crate::config::ListenerConfig;

/// At most one WARN line about refused handshakes per period, so a flood cannot fill the disk;
/// the next line says how many were not logged.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Pause after a failed `accept`, doubling while it keeps failing up to [`ACCEPT_BACKOFF_MAX`]:
/// short at first, so that a descriptor freed by a closing connection is soon used again.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The listener's limits as they apply to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Connections open at once, from accept until tonic drops them.
    pub max_connections: usize,
}

impl Limits {
    /// The configured limits, with the connection cap lowered to half the open-files limit:
    /// the other half is for the engine, registries, packages and state files.
    pub fn new(config: &ListenerConfig) -> Limits {
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let configured = config.max_connections.get();
        let max_connections = connection_cap(configured, nofile);
        if max_connections < configured {
            tracing::warn!(
                configured,
                max_connections,
                open_files_limit = nofile,
                "listener.max_connections lowered to half the open-files limit"
            );
        }
        Limits {
            handshake_timeout: config.handshake_timeout,
            max_connections,
        }
    }
}

/// `configured`, but at most half of `nofile` (`None`: unlimited), at least 1, and never more
/// than a semaphore holds.
fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    let half = nofile.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    configured.min(half).clamp(1, Semaphore::MAX_PERMITS)
}

/// A bound listener with its TLS configuration.
pub struct Listener {
    tcp: TcpListener,
    tls: TlsAcceptor,
    limits: Limits,
}

impl Listener {
    /// A listener on `tcp` that requires what `tls` requires (client certificates, ALPN).
    pub fn new(tcp: TcpListener, tls: Arc<ServerConfig>, limits: Limits) -> Listener {
        Listener {
            tcp,
            tls: TlsAcceptor::from(tls),
            limits,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Starts accepting. The stream yields authenticated connections until `cancel`, or until
    /// it is dropped (tonic drops it when shutdown begins); then the port closes.
    pub fn incoming(
        self,
        cancel: CancellationToken,
    ) -> impl Stream<Item = Result<Connection, Infallible>> {
        // Unbounded, yet bounded by the permits every connection in it holds.
        let (established, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.accept_loop(established, cancel));
        UnboundedReceiverStream::new(rx).map(Ok)
    }

    async fn accept_loop(
        self,
        established: mpsc::UnboundedSender<Connection>,
        cancel: CancellationToken,
    ) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let refusals = Arc::new(RefusalLog::new(REFUSAL_LOG_PERIOD));
        let mut backoff = Backoff::new(ACCEPT_BACKOFF_FIRST, ACCEPT_BACKOFF_MAX);
        loop {
            let (permit, accepted) = tokio::select! {
                () = cancel.cancelled() => return,
                () = established.closed() => return,
                next = self.accept(&permits) => match next {
                    Some(next) => next,
                    None => return,
                },
            };
            match accepted {
                Ok((tcp, peer)) => {
                    backoff.reset();
                    tokio::spawn(handshake(
                        self.tls.clone(),
                        tcp,
                        peer,
                        permit,
                        self.limits.handshake_timeout,
                        refusals.clone(),
                        established.clone(),
                    ));
                }
                // The client gave up while waiting in the queue; the next one is fine.
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "accepting a connection");
                }
                // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) or worse:
                // retrying at once fails the same way until something closes, at full CPU.
                Err(e) => {
                    let delay = backoff.next_delay();
                    if backoff.failures() == 1 {
                        tracing::warn!(error = %e, "cannot accept connections; retrying with backoff");
                    }
                    drop(permit);
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Waits for a free place under the cap, then for a connection. Waiting before accepting
    /// leaves excess clients in the kernel's accept queue, where they cost no descriptor,
    /// instead of accepting them only to drop them.
    async fn accept(
        &self,
        permits: &Arc<Semaphore>,
    ) -> Option<(OwnedSemaphorePermit, io::Result<(TcpStream, SocketAddr)>)> {
        // Only a closed semaphore fails, and this one is never closed.
        let permit = permits.clone().acquire_owned().await.ok()?;
        Some((permit, self.tcp.accept().await))
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// One handshake, in its own task so that a slow client delays nobody else.
async fn handshake(
    tls: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    deadline: Duration,
    refusals: Arc<RefusalLog>,
    established: mpsc::UnboundedSender<Connection>,
) {
    match tokio::time::timeout(deadline, tls.accept(tcp)).await {
        Ok(Ok(tls)) => {
            // Fails only when serving has stopped; the connection just closes then.
            let _ = established.send(Connection {
                tls,
                _permit: permit,
            });
        }
        Ok(Err(e)) => refusals.refused(peer, &e),
        Err(_) => refusals.refused(peer, &format_args!("no handshake within {deadline:?}")),
    }
}

/// An authenticated connection. It keeps its place under the connection cap for as long as
/// tonic serves it.
pub struct Connection {
    tls: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

/// The same connect info as tonic's own TLS listener, so `Request::peer_certs` and
/// `Request::remote_addr` work.
impl Connected for Connection {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Refused handshakes: every one at DEBUG, at most one per period at WARN.
struct RefusalLog {
    period: Duration,
    state: Mutex<RefusalState>,
}

#[derive(Default)]
struct RefusalState {
    last_warned: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn new(period: Duration) -> RefusalLog {
        RefusalLog {
            period,
            state: Mutex::default(),
        }
    }

    fn refused(&self, peer: SocketAddr, reason: &dyn Display) {
        match self.admit(Instant::now()) {
            Some(suppressed) => {
                tracing::warn!(%peer, error = %reason, suppressed, "refused a TLS handshake");
            }
            None => tracing::debug!(%peer, error = %reason, "refused a TLS handshake"),
        }
    }

    /// Whether a refusal at `now` gets a WARN line; if so, with how many did not since the last.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .last_warned
            .is_some_and(|last| now.saturating_duration_since(last) < self.period)
        {
            state.suppressed += 1;
            return None;
        }
        state.last_warned = Some(now);
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_cap_is_at_most_half_the_open_files_limit() {
        assert_eq!(connection_cap(256, None), 256);
        assert_eq!(connection_cap(256, Some(1024)), 256);
        assert_eq!(connection_cap(256, Some(256)), 128);
        assert_eq!(connection_cap(256, Some(1)), 1);
        assert_eq!(connection_cap(usize::MAX, None), Semaphore::MAX_PERMITS);
    }

    #[test]
    fn refusals_warn_once_per_period_and_count_the_rest() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(9)), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(log.admit(t0 + Duration::from_secs(11)), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(30)), Some(1));
    }

    #[test]
    fn the_limits_are_a_duration_and_a_count_above_zero() {
        let parse = serde_json::from_value::<ListenerConfig>;
        let config = parse(serde_json::json!({"handshake_timeout": "1s"})).unwrap();
        assert_eq!(config.handshake_timeout, Duration::from_secs(1));
        assert_eq!(config.max_connections.get(), 256);
        let e = parse(serde_json::json!({"handshake_timeout": "0s"})).unwrap_err();
        assert!(e.to_string().contains("above zero"), "{e}");
        assert!(parse(serde_json::json!({"max_connections": 0})).is_err());
    }

    /// The connection tonic gets carries the client's certificate and address.
    #[tokio::test]
    async fn connections_carry_the_peer_certificate_and_address() {
        let dir = tempfile::tempdir().unwrap();
        woa_common::pki::init(dir.path(), false).unwrap();
        let files = crate::config::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("deploy.pem"),
            key: dir.path().join("deploy-key.pem"),
        };
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let limits = Limits {
            handshake_timeout: Duration::from_secs(5),
            max_connections: 4,
        };
        let tls = Arc::new(crate::server::tls_config(&files).unwrap());
        let cancel = CancellationToken::new();
        let mut incoming = Box::pin(Listener::new(tcp, tls, limits).incoming(cancel.clone()));

        let client = woa_common::tls::client_config(
            woa_common::tls::Trust::Bundle(&files.ca),
            Some((
                &dir.path().join("sync.pem"),
                &dir.path().join("sync-key.pem"),
            )),
        )
        .unwrap();
        let connect = async {
            let tcp = TcpStream::connect(address).await.unwrap();
            let local = tcp.local_addr().unwrap();
            let name = "localhost".try_into().unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap();
            (local, tls)
        };
        let ((local, _client), accepted) = tokio::join!(connect, incoming.next());
        let info = accepted.unwrap().unwrap().connect_info();
        assert_eq!(info.get_ref().remote_addr(), Some(local));
        assert_eq!(info.peer_certs().unwrap().len(), 1);
        cancel.cancel();
    }
}
