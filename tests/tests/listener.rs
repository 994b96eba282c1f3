//! woa-deploy's gRPC listener under clients that connect and stall: the handshake deadline, the
//! connection cap under a low open-files limit, and refused handshakes in the log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use woa_common::tls::{Trust, client_config};
use woa_tests::{Deploy, DeployOptions, Identity, wait_until};

/// More than the open-files limit the service runs under in the first test.
const IDLE_CONNECTIONS: usize = 300;

/// Busy-looping takes a whole core; a service waiting on idle clients takes next to nothing.
/// The bound is loose so a loaded machine cannot fail the test.
const MAX_CPU_PER_SECOND: f64 = 0.3;

/// Health while idle clients fill the connection cap: each batch of them takes the default
/// 5 s handshake timeout to be closed and make room.
const HEALTH_WITHIN: Duration = Duration::from_secs(30);

fn health_serving(deploy: &Deploy) -> Result<bool> {
    let health = deploy.grpcurl("grpc.health.v1.Health/Check", &json!({}))?;
    Ok(health["status"] == "SERVING")
}

/// User plus system CPU time of process `pid`, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name comes second, in parentheses, and may hold spaces; utime and stime are
    // fields 14 and 15, so the 12th and 13th after it.
    let (_, after_name) = stat
        .rsplit_once(')')
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = fields
        .get(11..13)
        .context("unexpected /proc stat format")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    // Clock ticks are USER_HZ, which Linux fixes at 100 in its user ABI.
    Ok(Duration::from_millis(ticks * 10))
}

/// Whether the server closed `stream` (end of file or reset) before `deadline`.
fn closed_before(mut stream: &TcpStream, deadline: Instant) -> Result<bool> {
    let wait = deadline.saturating_duration_since(Instant::now());
    stream.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
    match stream.read(&mut [0; 512]) {
        Ok(0) => Ok(true),
        Ok(n) => bail!("the server sent {n} bytes instead of closing"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(_) => Ok(true),
    }
}

/// A WARN line of `deploy`'s log about a refused handshake from `peer`, once there is one.
fn refusal_warning(deploy: &Deploy, peers: &[SocketAddr]) -> Result<String> {
    wait_until(Duration::from_secs(10), || {
        Ok(deploy.log().lines().find_map(|line| {
            let refused = line.contains("WARN") && line.contains("refused a TLS handshake");
            let from_peer = peers.iter().any(|p| line.contains(&format!("peer={p}")));
            (refused && from_peer).then(|| line.to_owned())
        }))
    })
    .with_context(|| format!("no WARN line about a refused handshake from {peers:?}"))
}

#[test]
fn idle_connections_beyond_the_open_files_limit_neither_starve_health_nor_spin() -> Result<()> {
    let deploy = Deploy::start_with(&DeployOptions {
        nofile: Some(256),
        ..Default::default()
    })?;
    let pid = deploy.pid().context("woa-deploy is not running")?;
    // Plain TCP, no certificate needed: they connect and say nothing.
    let idle = (0..IDLE_CONNECTIONS)
        .map(|_| TcpStream::connect(deploy.address()))
        .collect::<std::io::Result<Vec<_>>>()?;

    let (cpu_before, started) = (cpu_time(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time(pid)?.saturating_sub(cpu_before);
    let per_second = used.as_secs_f64() / started.elapsed().as_secs_f64();
    ensure!(
        per_second < MAX_CPU_PER_SECOND,
        "woa-deploy used {per_second:.2} CPU-seconds per second with {IDLE_CONNECTIONS} idle \
         connections open; it is busy-looping"
    );

    let started = Instant::now();
    wait_until(HEALTH_WITHIN, || health_serving(&deploy)).with_context(|| {
        format!("no healthy answer while {IDLE_CONNECTIONS} idle connections are open")
    })?;
    eprintln!("healthy after {:?}", started.elapsed());
    drop(idle);
    Ok(())
}

#[test]
fn connections_that_never_finish_a_handshake_are_closed_after_the_timeout() -> Result<()> {
    let deploy = Deploy::start_with(&DeployOptions {
        extra: "[listener]\nhandshake_timeout = \"1s\"\n".into(),
        ..Default::default()
    })?;
    let silent = TcpStream::connect(deploy.address())?;
    let mut partial = TcpStream::connect(deploy.address())?;
    // A TLS record header announcing a 255-byte ClientHello, which never comes.
    partial.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, stream) in [("silent", &silent), ("partial ClientHello", &partial)] {
        ensure!(
            closed_before(stream, deadline)?,
            "the {name} connection is still open 10 s after connecting (handshake timeout 1 s)"
        );
    }
    let warning = refusal_warning(&deploy, &[silent.local_addr()?, partial.local_addr()?])?;
    ensure!(warning.contains("no handshake within"), "{warning}");
    health_serving(&deploy)?;
    Ok(())
}

#[test]
fn refused_handshakes_are_logged_at_warn_with_the_peer_address() -> Result<()> {
    let deploy = Deploy::start()?;
    // A TLS client without a certificate, on a socket whose address the test knows.
    let ca = deploy.pki().file("ca.pem");
    let config = client_config(Trust::Bundle(&ca), None)?;
    let tcp = TcpStream::connect(deploy.address())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer = tcp.local_addr()?;
    let client = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into()?)?;
    let mut tls = rustls::StreamOwned::new(client, tcp);
    // The handshake ends with the client's (empty) certificate, which the server refuses.
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    match tls.read(&mut [0; 64]) {
        Ok(0) | Err(_) => {}
        Ok(n) => bail!("the server answered a client without a certificate with {n} bytes"),
    }
    let warning = refusal_warning(&deploy, &[peer])?;
    eprintln!("{warning}");

    // The same refusal as operators see it.
    let output = deploy.grpcurl_raw(Identity::Anonymous, &[], &["grpc.health.v1.Health/Check"])?;
    ensure!(
        !output.status.success(),
        "a client without a certificate got an answer"
    );
    Ok(())
}
