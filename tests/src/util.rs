//! Small helpers shared by the kit: polling, ids, ports, encoding, HTTP and running commands.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How often [`wait_until`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What a [`wait_until`] check returns: `bool`, or `Option<T>` to hand back what it found.
pub trait Outcome {
    /// What `wait_until` returns once the check is satisfied.
    type Value;
    /// `Some` once the awaited condition holds.
    fn ready(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` until it is satisfied or `timeout` passes.
///
/// An `Err` from `check` counts as "not yet" (services restart, containers come and go); the
/// last one is reported if the wait times out.
pub fn wait_until<O: Outcome>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<O>,
) -> Result<O::Value> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(outcome) => {
                if let Some(value) = outcome.ready() {
                    return Ok(value);
                }
            }
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            return match last_error {
                Some(err) => Err(err.context(format!("condition not met within {timeout:?}"))),
                None => bail!("condition not met within {timeout:?}"),
            };
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A fresh random UUID (v4), so test runs never share deployment ids.
pub fn new_deployment_id() -> Result<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("reading a random UUID from the kernel")?;
    Ok(id.trim().to_owned())
}

/// A loopback port that is free right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Standard base64 with padding, as protobuf JSON expects for `bytes` fields.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET path` on `127.0.0.1:port`; returns the status code and the body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from port {port}: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line from port {port}: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Runs `command` and returns its stdout, or an error holding the command and its stderr.
pub(crate) fn run(command: &mut Command) -> Result<String> {
    let output = output(command)?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` to completion, whatever its exit status.
pub(crate) fn output(command: &mut Command) -> Result<Output> {
    command
        .output()
        .with_context(|| format!("running {command:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn base64_pads_like_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn wait_until_returns_what_the_check_found() {
        let mut calls = 0;
        let found = wait_until(Duration::from_secs(5), || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        });
        assert_eq!(found.ok(), Some(3));
    }

    #[test]
    fn wait_until_reports_the_last_error_on_timeout() {
        let result: Result<()> = wait_until(Duration::from_millis(300), || -> Result<bool> {
            bail!("engine away")
        });
        let message = format!("{:#}", result.unwrap_err());
        assert!(message.contains("not met within"), "{message}");
        assert!(message.contains("engine away"), "{message}");
    }

    #[test]
    fn deployment_ids_are_fresh_uuids() {
        let a = new_deployment_id().unwrap();
        let b = new_deployment_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
