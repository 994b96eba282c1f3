//! A git smart-HTTP test server over HTTPS, shared by the tests of the fetch and the push.

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::source::{RepoAccess, RepoAuth};

/// A git smart-HTTP server over HTTPS: python3 runs the git CLI's own `git http-backend` as
/// CGI. In mode "basic" it wants `Basic woa:s3cret` or `Bearer t0ken`; in mode "mtls" a
/// client certificate from the test CA. Every request is logged as "METHOD PATH COMMAND"
/// (COMMAND is the protocol v2 command in a POST body, or "receive-pack" for the push
/// advertisement) before authentication; every request that reached `git http-backend` also as
/// "METHOD PATH COMMAND REQUEST_BYTES RESPONSE_BYTES" (bodies only) in a second log.
const SERVER: &str = r#"
import base64, gzip, http.server, os, ssl, subprocess, sys
root, cert, key, ca, log, mode = sys.argv[1:7]
accepted = {"Basic " + base64.b64encode(b"woa:s3cret").decode(), "Bearer t0ken"}
backend = os.path.join(subprocess.check_output(["git", "--exec-path"]).decode().strip(), "git-http-backend")
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))
    def serve(self, method):
        path, _, query = self.path.partition("?")
        body = self.read_body()
        plain = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        command = ""
        for name in (b"fetch", b"ls-refs"):
            if b"command=" + name in plain:
                command = name.decode()
        if query == "service=git-receive-pack":
            command = "receive-pack"
        with open(log, "a") as f:
            f.write(f"{method} {path} {command}\n")
        if mode == "basic" and self.headers.get("Authorization") not in accepted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", "Basic realm=git")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "woa",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": method,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers.get("Git-Protocol")
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers.get("Content-Encoding")
        out = subprocess.run([backend], input=body, env=env, capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, payload = out.partition(sep)
        status, headers = 200, []
        for line in head.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        with open(log + ".bytes", "a") as f:
            f.write(f"{method} {path} {command} {len(body)} {len(payload)}\n")
    def do_GET(self):
        self.serve("GET")
    def do_POST(self):
        self.serve("POST")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
if mode == "mtls":
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

pub(crate) fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// Runs the git CLI without any system or user configuration.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=WOS",
            "-c",
            "user.email=wos@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

pub(crate) struct GitServer {
    child: Child,
    /// The port the server listens on (127.0.0.1).
    pub(crate) port: u16,
    /// Holds the served root, the work repository, the PKI files, `password` and the logs.
    pub(crate) dir: tempfile::TempDir,
    /// The CA that issued the server certificate.
    pub(crate) ca_file: PathBuf,
    log: PathBuf,
    /// A work repository whose commits are pushed to the served one with [`GitServer::push`].
    pub(crate) work: PathBuf,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GitServer {
    /// Serves the bare repository `desired.git`, filled from a work repository by path.
    pub(crate) fn start(mode: &str) -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        git(&root, &["init", "--bare", "desired.git"]);
        let work = dir.path().join("work");
        git(dir.path(), &["init", "work"]);

        let ca = new_ca("woa test git CA");
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let ca_file = dir.path().join("ca.pem");
        let cert_file = dir.path().join("server.pem");
        let key_file = dir.path().join("server.key");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&cert_file, server_cert.pem()).unwrap();
        std::fs::write(&key_file, server_key.serialize_pem()).unwrap();

        // A client identity from the same CA, for the mutual TLS test.
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device-1");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();
        std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();

        let mut password = std::fs::File::create(dir.path().join("password")).unwrap();
        std::io::Write::write_all(&mut password, b"s3cret\n").unwrap();

        let log = dir.path().join("requests.log");
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(SERVER)
            .arg(&root)
            .arg(&cert_file)
            .arg(&key_file)
            .arg(&ca_file)
            .arg(&log)
            .arg(mode)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the git server tests");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = match line.trim().parse() {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!("test git server did not start: {line:?}");
            }
        };
        GitServer {
            child,
            port,
            dir,
            ca_file,
            log,
            work,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}/desired.git", self.port)
    }

    pub(crate) fn access(&self) -> RepoAccess {
        RepoAccess {
            url: self.url(),
            branch: "main".to_owned(),
            ca: Some(self.ca_file.clone()),
            auth: RepoAuth::Basic {
                username: "woa".to_owned(),
                password_file: self.dir.path().join("password"),
            },
        }
    }

    pub(crate) fn mirror_dir(&self) -> PathBuf {
        self.dir.path().join("state").join("mirror")
    }

    /// Commits `files` (path → content, `None` removes) in the work repository.
    pub(crate) fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, content) in files {
            let file = self.work.join(path);
            match content {
                Some(content) => {
                    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                    std::fs::write(&file, content).unwrap();
                }
                None => std::fs::remove_file(&file).unwrap(),
            }
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "--allow-empty", "-q", "-m", message],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Pushes `rev` of the work repository to `branch` of the served repository, forced.
    pub(crate) fn push(&self, rev: &str, branch: &str) {
        let target = self.dir.path().join("root").join("desired.git");
        git(
            &self.work,
            &[
                "push",
                "-q",
                "--force",
                target.to_str().unwrap(),
                &format!("{rev}:refs/heads/{branch}"),
            ],
        );
    }

    /// The served bare repository on disk.
    pub(crate) fn bare(&self) -> PathBuf {
        self.dir.path().join("root").join("desired.git")
    }

    /// Allows or forbids pushing to the served repository (`http.receivepack`).
    pub(crate) fn allow_push(&self, allowed: bool) {
        git(
            &self.bare(),
            &[
                "config",
                "http.receivepack",
                if allowed { "true" } else { "false" },
            ],
        );
    }

    /// The requests that reached `git http-backend`, as (request line, request body bytes,
    /// response body bytes).
    pub(crate) fn traffic(&self) -> Vec<(String, usize, usize)> {
        let mut log = self.log.clone().into_os_string();
        log.push(".bytes");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.rsplitn(3, ' ');
                let response = fields.next()?.parse().ok()?;
                let request = fields.next()?.parse().ok()?;
                Some((fields.next()?.trim_end().to_owned(), request, response))
            })
            .collect()
    }

    /// Every request, as "METHOD PATH COMMAND" (trimmed), in order.
    pub(crate) fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| line.trim_end().to_owned())
            .collect()
    }
}
