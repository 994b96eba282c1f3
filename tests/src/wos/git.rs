//! Git over smart HTTP: per-device access control in front of `git http-backend` (CGI).

use std::path::Path as FsPath;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use tokio::io::AsyncWriteExt;

use super::api::internal;
use super::store::Device;
use super::{AuthenticatedClient, Peer, Refusal, RepoAuth, Wos, problem};

/// `/git/{clientId}.git/...`: authorizes the device, then runs `git http-backend`.
pub(crate) async fn serve(
    State(wos): State<Arc<Wos>>,
    Extension(peer): Extension<Peer>,
    Path(path): Path<String>,
    request: Request<Body>,
) -> Response<Body> {
    let Some(client_id) = path
        .split('/')
        .next()
        .and_then(|repo| repo.strip_suffix(".git"))
        .filter(|id| !id.is_empty())
    else {
        return problem(StatusCode::NOT_FOUND, "no such repository");
    };
    let Some(device) = wos.store.device(client_id) else {
        return problem(StatusCode::NOT_FOUND, "no such repository");
    };
    if let Err(refusal) = authorize(&wos, &device, &peer, request.headers()) {
        return refusal.response();
    }
    let mut response = match cgi(&wos, &device, &path, request).await {
        Ok(response) => response,
        Err(err) => internal(&err),
    };
    response
        .extensions_mut()
        .insert(AuthenticatedClient(device.client_id));
    response
}

/// Checks the credentials the device's auth type asks for. Credentials of another device get
/// 403; missing or wrong ones 401 with a challenge, so the git CLI sends what it has.
fn authorize(wos: &Wos, device: &Device, peer: &Peer, headers: &HeaderMap) -> Result<(), Refusal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let other_device = |owner: Option<Device>| {
        owner.map(|other| {
            Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "credentials of {} do not open {}",
                    other.client_id, device.client_id
                ),
            )
        })
    };
    let refused = match device.auth_type {
        RepoAuth::Basic => {
            let credentials = authorization
                .strip_prefix("Basic ")
                .and_then(|encoded| decode_base64(encoded.trim()))
                .and_then(|decoded| String::from_utf8(decoded).ok());
            let (username, password) = credentials
                .as_deref()
                .and_then(|c| c.split_once(':'))
                .unwrap_or(("", ""));
            if username == device.client_id && password == device.password {
                return Ok(());
            }
            other_device(wos.store.find(|d| {
                d.auth_type == RepoAuth::Basic && d.client_id == username && d.password == password
            }))
            .unwrap_or_else(|| {
                Refusal::unauthorized("Basic realm=\"woa\"", "Basic credentials required")
            })
        }
        RepoAuth::Bearer => {
            let token = authorization.strip_prefix("Bearer ").unwrap_or("").trim();
            if !token.is_empty() && token == device.token {
                return Ok(());
            }
            other_device(
                wos.store.find(|d| {
                    !token.is_empty() && d.auth_type == RepoAuth::Bearer && d.token == token
                }),
            )
            .unwrap_or_else(|| {
                Refusal::unauthorized("Bearer realm=\"woa\"", "a bearer token is required")
            })
        }
        RepoAuth::Mtls => match peer.client_id.as_deref() {
            Some(presented) if presented == device.client_id => return Ok(()),
            Some(presented) => Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the client certificate of {presented} does not open {}",
                    device.client_id
                ),
            ),
            None => Refusal::new(
                StatusCode::UNAUTHORIZED,
                "the device certificate is required",
            ),
        },
    };
    Err(refused)
}

/// Runs `git http-backend` for one request and turns its CGI output into a response.
async fn cgi(
    wos: &Wos,
    device: &Device,
    path: &str,
    request: Request<Body>,
) -> Result<Response<Body>> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .context("reading the request body")?;
    let header = |name: HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &wos.repos_dir)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("PATH_INFO", format!("/{path}"))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", &device.client_id)
        .env("REMOTE_ADDR", "127.0.0.1")
        // Protocol v2 is negotiated through this header; without it git falls back to v0.
        .env(
            "GIT_PROTOCOL",
            header(HeaderName::from_static("git-protocol")),
        )
        // The git CLI gzips large request bodies; http-backend inflates them itself.
        .env("HTTP_CONTENT_ENCODING", header(header::CONTENT_ENCODING))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().context("starting git http-backend")?;
    let mut stdin = child.stdin.take().context("http-backend stdin")?;
    // Written concurrently with reading the output: a large push would otherwise fill both pipes.
    let writer = tokio::spawn(async move {
        let written = stdin.write_all(&body).await;
        drop(stdin);
        written
    });
    let output = child
        .wait_with_output()
        .await
        .context("running git http-backend")?;
    if let Ok(Err(err)) = writer.await {
        // http-backend may answer (e.g. an error) without reading all of the body.
        tracing::debug!(error = %err, "http-backend did not read the whole request body");
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        tracing::warn!(client_id = %device.client_id, stderr = %stderr.trim(), "git http-backend");
    }
    if !output.status.success() && output.stdout.is_empty() {
        bail!(
            "git http-backend failed ({}): {}",
            output.status,
            stderr.trim()
        );
    }
    parse_cgi(&output.stdout)
}

/// Splits CGI output into status, headers and body (RFC 3875 §6).
fn parse_cgi(output: &[u8]) -> Result<Response<Body>> {
    let (head, body) = match (find(output, b"\r\n\r\n"), find(output, b"\n\n")) {
        (Some(crlf), Some(lf)) if lf < crlf => (&output[..lf], &output[lf + 2..]),
        (Some(crlf), _) => (&output[..crlf], &output[crlf + 4..]),
        (None, Some(lf)) => (&output[..lf], &output[lf + 2..]),
        (None, None) => bail!("git http-backend printed no CGI header"),
    };
    let head = std::str::from_utf8(head).context("CGI header is not UTF-8")?;
    let mut response = Response::new(Body::from(body.to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            *response.status_mut() = StatusCode::from_bytes(code.as_bytes())
                .with_context(|| format!("bad CGI status {value:?}"))?;
        } else {
            response.headers_mut().append(
                HeaderName::from_bytes(name.trim().as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
    }
    Ok(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Standard base64 (padding optional); `None` on any other character.
fn decode_base64(encoded: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len() / 4 * 3);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in encoded.bytes().filter(|b| *b != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Runs a git command in `dir` (created if missing), e.g. to create a bare repository.
pub(crate) async fn run_git(args: &[&str], dir: &FsPath) -> Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let output = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .with_context(|| format!("running git {args:?}"))?;
    if !output.status.success() {
        bail!(
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn base64_round_trips_with_the_kit_encoder() {
        for input in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"client-1:secret",
            &[0xfb, 0xff],
        ] {
            let encoded = crate::util::base64(input);
            assert_eq!(decode_base64(&encoded).unwrap(), input);
        }
        assert!(decode_base64("not base64!").is_none());
    }

    #[test]
    fn cgi_output_gives_status_headers_and_body() {
        let response =
            parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nmissing").unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "text/plain");
        let response = parse_cgi(b"Content-Type: application/x-git\n\nPACK").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(parse_cgi(b"no header end").is_err());
    }
}
