//! A `woa-testkit wfm` process under test, its admin API, and an HTTPS client that checks a
//! server's SPIFFE ID instead of a host name.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::Method;
use reqwest::blocking::Client;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;
use tempfile::TempDir;

use crate::binaries;
use crate::wfm::{CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE};

/// How long the server may take to print its addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`WfmServer::start_again`] retries while the old ports are still taken.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start the server.
#[derive(Debug, Clone)]
pub struct WfmServerOptions {
    /// `--trust-domain`.
    pub trust_domain: String,
    /// `--wfm-id`.
    pub wfm_id: String,
    /// `--client-id`.
    pub client_id: String,
    /// `--prefix`, e.g. `/v1alpha2/margo`; empty for none.
    pub prefix: String,
    /// The `woa-testkit` binary to run. Integration tests of this crate pass
    /// `env!("CARGO_BIN_EXE_woa-testkit")`, which cargo has built; `None` builds the workspace
    /// once to find it (as the other servers of the kit do).
    pub binary: Option<PathBuf>,
}

impl Default for WfmServerOptions {
    fn default() -> Self {
        WfmServerOptions {
            trust_domain: "margo.test".to_owned(),
            wfm_id: "wfm-1".to_owned(),
            client_id: "device-1".to_owned(),
            prefix: String::new(),
            binary: None,
        }
    }
}

/// A running reference WFM on loopback ports with its own dir.
///
/// Killed when dropped; its log (stderr) is printed then, which libtest shows for failed tests.
pub struct WfmServer {
    child: Option<Child>,
    dir: TempDir,
    options: WfmServerOptions,
    binary: PathBuf,
    port: u16,
    admin_port: u16,
    admin: Client,
}

impl WfmServer {
    /// Starts `woa-testkit wfm` on `127.0.0.1:0` (both listeners) with a fresh dir.
    pub fn start(options: WfmServerOptions) -> Result<WfmServer> {
        let binary = match &options.binary {
            Some(binary) => binary.clone(),
            None => binaries::woa_testkit()?,
        };
        let dir = tempfile::tempdir()?;
        let (child, port, admin_port) = spawn(&binary, dir.path(), &options, 0, 0)?;
        let admin = admin_client()?;
        Ok(WfmServer {
            child: Some(child),
            dir,
            options,
            binary,
            port,
            admin_port,
            admin,
        })
    }

    /// `https://127.0.0.1:PORT<prefix>`: the base of every API path.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{}", self.port, self.prefix())
    }

    /// `http://127.0.0.1:ADMIN_PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The port of the API listener (kept across [`WfmServer::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `--prefix` without a trailing slash.
    pub fn prefix(&self) -> &str {
        self.options.prefix.trim_end_matches('/')
    }

    /// The server's dir (CA, SVIDs, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The trust bundle's anchor (PEM file).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir().join(CA_FILE)
    }

    /// The device's SVID (PEM file).
    pub fn client_cert(&self) -> PathBuf {
        self.dir().join(CLIENT_CERT_FILE)
    }

    /// The device's key (PEM file, mode 0600).
    pub fn client_key(&self) -> PathBuf {
        self.dir().join(CLIENT_KEY_FILE)
    }

    /// `--trust-domain`.
    pub fn trust_domain(&self) -> &str {
        &self.options.trust_domain
    }

    /// `--client-id`.
    pub fn client_id(&self) -> &str {
        &self.options.client_id
    }

    /// `--wfm-id`.
    pub fn wfm_id(&self) -> &str {
        &self.options.wfm_id
    }

    /// The SPIFFE ID the server's SVID carries: `spiffe://<td>/margo/wfm/<wfm-id>`.
    pub fn server_spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/margo/wfm/{}",
            self.options.trust_domain, self.options.wfm_id
        )
    }

    /// An API client as the device: the client SVID, trusting `ca.pem`, expecting the WFM's
    /// SPIFFE ID.
    pub fn api_client(&self) -> Result<Client> {
        let cert = std::fs::read(self.client_cert())?;
        let key = std::fs::read(self.client_key())?;
        spiffe_client(
            &std::fs::read(self.ca_pem())?,
            &self.server_spiffe_id(),
            Some((&cert, &key)),
        )
    }

    /// Everything the server logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("wfm.log")).unwrap_or_default()
    }

    /// `kill -9` and wait: the WFM is down, connections are refused.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // std's kill is SIGKILL on Unix.
            child.kill().context("killing woa-testkit wfm")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again (stopping it first if it runs) on the same ports and dir; the
    /// PKI is kept, the desired state and logs in memory are not.
    pub fn start_again(&mut self) -> Result<()> {
        self.stop()?;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match spawn(
                &self.binary,
                self.dir.path(),
                &self.options,
                self.port,
                self.admin_port,
            ) {
                Ok((child, _, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                // The old ports may not be free yet; only the last failure is worth reporting.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => return Err(err.context("restarting the WFM on its old ports")),
            }
        }
    }

    /// `PUT /admin/deployments`: the whole desired state, deploymentId to YAML; answers
    /// `{"manifestVersion": N, "etag": "…"}`.
    pub fn set_deployments(&self, deployments: &BTreeMap<String, String>) -> Result<Value> {
        let body = serde_json::to_value(deployments)?;
        self.admin(Method::PUT, "/admin/deployments", Some(&body))
    }

    /// `GET /admin/manifest`: `{"manifestVersion": N, "etag": "…"}`.
    pub fn manifest(&self) -> Result<Value> {
        self.admin(Method::GET, "/admin/manifest", None)
    }

    /// `GET /admin/requests`: every API request since the start or the last clear.
    pub fn requests(&self) -> Result<Vec<Value>> {
        let requests = self.admin(Method::GET, "/admin/requests", None)?;
        serde_json::from_value(requests).context("/admin/requests is not a list")
    }

    /// `DELETE /admin/requests`
    pub fn clear_requests(&self) -> Result<()> {
        self.admin(Method::DELETE, "/admin/requests", None)?;
        Ok(())
    }

    /// `GET /admin/statuses`: `{"<deploymentId>": <last status posted>}`.
    pub fn statuses(&self) -> Result<Value> {
        self.admin(Method::GET, "/admin/statuses", None)
    }

    /// `GET /admin/capabilities`: `{"<deviceId>": <last capabilities put>}`.
    pub fn capabilities(&self) -> Result<Value> {
        self.admin(Method::GET, "/admin/capabilities", None)
    }

    /// `PUT /admin/switches` with any subset, e.g. `json!({"retired": true})`; answers all
    /// switches in force.
    pub fn switches(&self, switches: Value) -> Result<Value> {
        self.admin(Method::PUT, "/admin/switches", Some(&switches))
    }

    /// `POST /admin/renew-client`: issues `client-renewed.pem` (same key) and returns its path.
    pub fn renew_client(&self) -> Result<PathBuf> {
        let answer = self.admin(Method::POST, "/admin/renew-client", None)?;
        let path = answer["path"]
            .as_str()
            .with_context(|| format!("/admin/renew-client answered {answer}"))?;
        Ok(PathBuf::from(path))
    }

    /// `POST /admin/sign`: the operator's signer; the device SVID (PEM) for the key and
    /// SPIFFE ID of the certificate request `csr_pem`, signed by `ca.pem`.
    pub fn sign(&self, csr_pem: &str) -> Result<String> {
        let path = "/admin/sign";
        let request = self
            .admin
            .post(self.admin_url() + path)
            .body(csr_pem.to_owned());
        self.send_admin(&Method::POST, path, request)
    }

    fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut request = self.admin.request(method.clone(), self.admin_url() + path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let text = self.send_admin(&method, path, request)?;
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path} answered {text:?}"))
    }

    /// Sends an admin request; the body of a success, an error with the answer otherwise.
    fn send_admin(
        &self,
        method: &Method,
        path: &str,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<String> {
        let response = request.send().with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response.text()?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(text)
    }
}

impl Drop for WfmServer {
    fn drop(&mut self) {
        let _ = self.stop();
        // libtest shows a test's captured output only when it fails, which is when it matters.
        eprintln!(
            "---- woa-testkit wfm log ({}) ----\n{}",
            self.url(),
            self.log()
        );
    }
}

/// Starts the server on `port`/`admin_port` (0: any) and returns it with the ports it printed.
fn spawn(
    binary: &Path,
    dir: &Path,
    options: &WfmServerOptions,
    port: u16,
    admin_port: u16,
) -> Result<(Child, u16, u16)> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("wfm.log"))?;
    let mut child = Command::new(binary)
        .arg("wfm")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--trust-domain", &options.trust_domain])
        .args(["--wfm-id", &options.wfm_id])
        .args(["--client-id", &options.client_id])
        .args(["--prefix", &options.prefix])
        .env("RUST_LOG", "info,woa_tests=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting woa-testkit wfm")?;
    let stdout = child.stdout.take().context("woa-testkit stdout")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let read = (|| -> std::io::Result<(String, String)> {
            let mut next = || lines.next().unwrap_or_else(|| Ok(String::new()));
            Ok((next()?, next()?))
        })();
        let _ = sender.send(read);
    });
    let lines = match receiver.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Ok(lines)) => lines,
        Ok(Err(err)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err).context("reading the WFM addresses");
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the WFM printed no addresses within {STARTUP_TIMEOUT:?}");
        }
    };
    let ports =
        parse_port(&lines.0, "listening on https://").zip(parse_port(&lines.1, "admin on http://"));
    match ports {
        Some((port, admin_port)) => Ok((child, port, admin_port)),
        None => {
            let _ = child.kill();
            let status = child.wait()?;
            let log = std::fs::read_to_string(dir.join("wfm.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
            bail!("the WFM did not start ({status}), printed {lines:?}; log ends:\n{tail}")
        }
    }
}

/// The port of `<prefix>127.0.0.1:PORT`.
fn parse_port(line: &str, prefix: &str) -> Option<u16> {
    line.trim()
        .strip_prefix(prefix)?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

/// A plain HTTP client; reqwest is built without a default TLS provider, so it gets one.
fn admin_client() -> Result<Client> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the admin client")
}

/// A blocking HTTPS client for a Margo WFM: trusts only `ca_pem`, and accepts a server whose
/// SVID carries exactly the URI SAN `server_spiffe_id` whatever host name the URL has
/// (SVIDs have no DNS or IP SAN); `identity` is the client SVID `(certificate PEM, key PEM)`.
pub fn spiffe_client(
    ca_pem: &[u8],
    server_spiffe_id: &str,
    identity: Option<(&[u8], &[u8])>,
) -> Result<Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("reading the CA")?)?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("server certificate verifier")?;
    let verifier = SpiffeServerVerifier {
        webpki,
        expected: server_spiffe_id.to_owned(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((certificate_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(certificate_pem)
                .collect::<Result<Vec<_>, _>>()
                .context("reading the client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the client key")?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTPS client")
}

/// Chain, validity and usage checked by webpki; the name checked as a SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            // webpki checks the name after the chain, so this error means the chain is good;
            // the name that counts is the SPIFFE ID below.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(err) => return Err(err),
        }
        let sans = crate::wfm::uri_sans(end_entity);
        if sans != [self.expected.as_str()] {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_lines_give_the_ports() {
        assert_eq!(
            parse_port(
                "listening on https://127.0.0.1:41234\n",
                "listening on https://"
            ),
            Some(41234)
        );
        assert_eq!(
            parse_port("admin on http://127.0.0.1:80", "admin on http://"),
            Some(80)
        );
        assert_eq!(
            parse_port("error: address in use", "admin on http://"),
            None
        );
    }
}
