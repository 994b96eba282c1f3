//! Fetching a deployment component's compose package.
//!
//! A Margo compose component names its package with `packageLocation`: a path inside the
//! device's desired-state git repository, or an `https://` URL to a compose file or to a
//! `.tar.gz` holding one. Either way the result is a [`Package`]: the package's files in memory,
//! keyed by package-relative path, and the name of the compose file among them.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use woa_common::tls::Trust;

use crate::error::{Error, Result};

/// Names a package directory may use for its compose file, in order of preference (the order
/// `docker compose` itself looks for them).
const COMPOSE_FILE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Symlink chains longer than this are treated as loops, like the kernel's ELOOP.
const MAX_LINK_DEPTH: usize = 40;

/// The files of one component package, keyed by package-relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package-relative path of the compose file.
    pub compose_file: String,
    /// Every file of the package, keyed by package-relative path with `/` separators.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// `[packages]` section of woa-deploy's TOML config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackageConfig {
    /// PEM files of CAs trusted for package downloads, in addition to the system's.
    pub ca: Vec<PathBuf>,
    /// Credentials per host, keyed `host` or `host:port`.
    pub hosts: BTreeMap<String, Credentials>,
    /// The largest download accepted, in bytes.
    pub max_download_bytes: u64,
    /// The most entries an archive may have.
    pub max_archive_entries: usize,
    /// The most bytes an archive may unpack to; this also bounds the compression ratio.
    pub max_unpacked_bytes: u64,
}

impl Default for PackageConfig {
    fn default() -> Self {
        Self {
            ca: Vec::new(),
            hosts: BTreeMap::new(),
            max_download_bytes: 64 << 20,
            max_archive_entries: 10_000,
            max_unpacked_bytes: 256 << 20,
        }
    }
}

/// Credentials for one host (`host` or `host:port`).
///
/// Secrets are only read from files, so that the config can be world-readable and the secrets
/// can be rotated without a restart.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The user name for basic authentication; needs `password_file`.
    pub username: Option<String>,
    /// A file holding the password for basic authentication.
    pub password_file: Option<PathBuf>,
    /// A file holding a bearer token; excludes `username` and `password_file`.
    pub token_file: Option<PathBuf>,
}

/// A secret read from [`Credentials`]; its `Debug` output never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// User name and password, for basic authentication.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A bearer token.
    Bearer(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Secret::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
        }
    }
}

impl Credentials {
    /// Reads the secret files, so that a rotated secret is picked up on next use.
    pub fn read(&self) -> Result<Secret> {
        match (&self.username, &self.password_file, &self.token_file) {
            (Some(username), Some(password_file), None) => Ok(Secret::Basic {
                username: username.clone(),
                password: read_secret_file(password_file)?,
            }),
            (None, None, Some(token_file)) => Ok(Secret::Bearer(read_secret_file(token_file)?)),
            (None, Some(_), None) => Err(credentials("password_file is set but username is not")),
            (Some(_), None, None) => Err(credentials("username is set but password_file is not")),
            (None, None, None) => Err(credentials(
                "set either username and password_file, or token_file",
            )),
            (_, _, Some(_)) => Err(credentials(
                "token_file cannot be combined with username or password_file",
            )),
        }
    }
}

fn credentials(message: &str) -> Error {
    Error::Config {
        setting: "packages.hosts".into(),
        message: message.into(),
    }
}

fn read_secret_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file("reading a secret file", woa_common::Error::file(path, e)))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(credentials(&format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

/// Limits that keep a hostile or broken package from exhausting the device's memory.
#[derive(Debug, Clone, Copy)]
struct Limits {
    download_bytes: u64,
    archive_entries: usize,
    unpacked_bytes: u64,
}

/// Fetches packages; built once from config, cheap to clone.
#[derive(Clone)]
pub struct PackageFetcher {
    client: reqwest::Client,
    hosts: Arc<BTreeMap<String, Credentials>>,
    limits: Limits,
    artifacts: Option<crate::artifact::Artifacts>,
}

impl fmt::Debug for PackageFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackageFetcher")
            .field("hosts", &self.hosts.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl PackageFetcher {
    /// Builds the HTTPS client: trusts the system's CAs plus every CA in `config.ca`.
    pub fn new(config: &PackageConfig) -> Result<Self> {
        let tls = woa_common::tls::client_config(Trust::SystemAnd(&config.ca), None)
            .map_err(|e| Error::tls("packages.ca", e))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // Also refuses redirects to http://, which would leak the download to the network.
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::service("building the HTTP client for package downloads", e))?;
        Ok(Self {
            client,
            hosts: Arc::new(config.hosts.clone()),
            limits: Limits {
                download_bytes: config.max_download_bytes,
                archive_entries: config.max_archive_entries,
                unpacked_bytes: config.max_unpacked_bytes,
            },
            artifacts: None,
        })
    }

    /// The same fetcher, also pulling OCI compose artifacts with `registries`' credentials,
    /// trusting the CAs in `ca` besides the system's (`packages.ca`), and keeping them in
    /// `cache`.
    pub fn with_artifacts(
        self,
        registries: BTreeMap<String, Credentials>,
        ca: &[PathBuf],
        cache: PathBuf,
    ) -> Result<Self> {
        let limit = self.limits.download_bytes;
        let artifacts = crate::artifact::Artifacts::new(registries, ca, cache, limit)?;
        Ok(Self {
            artifacts: Some(artifacts),
            ..self
        })
    }

    /// The package in an OCI compose artifact (`oci://host/name` at `revision`), and the
    /// reference the cache knows it by.
    pub async fn fetch_artifact(
        &self,
        repository: &str,
        revision: Option<&str>,
    ) -> Result<(Package, String)> {
        let package_error = |message: String| Error::Package {
            location: repository.to_owned(),
            message,
        };
        let artifacts = (self.artifacts.as_ref())
            .ok_or_else(|| package_error("OCI artifacts are not configured".into()))?;
        let (layer, reference) = artifacts
            .fetch(repository, revision)
            .await
            .map_err(package_error)?;
        let package = self.unpack(layer).await.map_err(package_error)?;
        Ok((package, reference))
    }

    /// Removes the cached artifacts no reference in `keep` names.
    pub(crate) fn keep_only_artifacts(&self, keep: &std::collections::BTreeSet<&str>) {
        if let Some(artifacts) = &self.artifacts {
            artifacts.retain(keep);
        }
    }

    /// Fetches the package at `location`: an `https://` URL, or a path into `artifacts`, the
    /// files of the desired-state repository keyed by repo-relative path.
    pub async fn fetch(
        &self,
        location: &str,
        artifacts: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Package> {
        let package_error = |message: String| Error::Package {
            location: location.to_owned(),
            message,
        };
        let result = if let Some((scheme, _)) = location.split_once("://") {
            if scheme.eq_ignore_ascii_case("https") {
                self.fetch_url(location).await
            } else {
                Err(format!(
                    "only https:// package URLs are supported, not {scheme}://"
                ))
            }
        } else {
            self.fetch_from_repo(location, artifacts).await
        };
        result.map_err(package_error)
    }

    async fn fetch_from_repo(
        &self,
        location: &str,
        artifacts: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Package, String> {
        let path = normalize_repo_path(location)?;
        if let Some(content) = artifacts.get(&path) {
            if is_archive_name(&path) {
                return self.unpack(content.clone()).await;
            }
            if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
                return Err(format!(
                    "{path} is neither a compose YAML file nor a .tar.gz archive"
                ));
            }
            let (dir, name) = match path.rsplit_once('/') {
                Some((dir, name)) => (dir, name),
                None => ("", path.as_str()),
            };
            return Ok(Package {
                compose_file: name.to_owned(),
                files: files_under(artifacts, dir),
            });
        }
        let files = files_under(artifacts, &path);
        if files.is_empty() {
            return Err(format!(
                "no file or directory {path} in the desired-state repository"
            ));
        }
        let compose_file = find_compose_file(&files)
            .ok_or_else(|| format!("directory {path} has no {}", compose_names_list()))?;
        Ok(Package {
            compose_file,
            files,
        })
    }

    async fn fetch_url(&self, location: &str) -> Result<Package, String> {
        let url = reqwest::Url::parse(location).map_err(|e| format!("invalid URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "credentials in the URL are not allowed; configure them in [packages.hosts]".into(),
            );
        }
        let host = url.host_str().ok_or("the URL has no host")?;
        let host_port = format!("{host}:{}", url.port_or_known_default().unwrap_or(443));
        let credentials = self
            .hosts
            .get(&host_port)
            .or_else(|| self.hosts.get(host))
            .map(|c| c.read().map_err(|e| format!("credentials for {host}: {e}")))
            .transpose()?;

        let mut request = self.client.get(url.clone());
        match credentials {
            Some(Secret::Basic { username, password }) => {
                request = request.basic_auth(username, Some(password));
            }
            Some(Secret::Bearer(token)) => {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            None => {}
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("GET failed: {}", describe_http_error(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let hint = if matches!(status.as_u16(), 401 | 403) {
                " (wrong credentials?)"
            } else {
                ""
            };
            return Err(format!("server answered HTTP {status}{hint}"));
        }
        let limit = self.limits.download_bytes;
        if let Some(length) = response.content_length()
            && length > limit
        {
            return Err(format!(
                "download is {length} bytes, over the limit of {limit} bytes"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the download: {}", describe_http_error(&e)))?
        {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(format!("download exceeds the limit of {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }

        if body.starts_with(&[0x1f, 0x8b]) || is_archive_name(url.path()) {
            return self.unpack(body).await;
        }
        let compose_file = url
            .path_segments()
            .and_then(|mut segments| segments.next_back())
            .filter(|name| !name.is_empty())
            .unwrap_or(COMPOSE_FILE_NAMES[0])
            .to_owned();
        Ok(Package {
            files: BTreeMap::from([(compose_file.clone(), body)]),
            compose_file,
        })
    }

    /// Unpacks off the async runtime: inflating up to the unpacked limit takes a while.
    async fn unpack(&self, archive: Vec<u8>) -> Result<Package, String> {
        let limits = self.limits;
        tokio::task::spawn_blocking(move || unpack_archive(&archive, limits))
            .await
            .map_err(|e| format!("unpacking the archive failed: {e}"))?
    }
}

/// reqwest's own message hides the cause (`error sending request`); the chain names it.
fn describe_http_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!(
            "timed out (connect {} s, total {} s)",
            CONNECT_TIMEOUT.as_secs(),
            REQUEST_TIMEOUT.as_secs()
        );
    }
    woa_common::chain(error)
}

fn is_archive_name(path: &str) -> bool {
    path.ends_with(".tar.gz") || path.ends_with(".tgz")
}

fn compose_names_list() -> String {
    COMPOSE_FILE_NAMES.join(", ")
}

fn find_compose_file(files: &BTreeMap<String, Vec<u8>>) -> Option<String> {
    COMPOSE_FILE_NAMES
        .iter()
        .find(|name| files.contains_key(**name))
        .map(|name| (*name).to_owned())
}

/// Every artifact under `dir` (the repository root when empty), re-rooted to it.
fn files_under(artifacts: &BTreeMap<String, Vec<u8>>, dir: &str) -> BTreeMap<String, Vec<u8>> {
    if dir.is_empty() {
        return artifacts.clone();
    }
    let prefix = format!("{dir}/");
    artifacts
        .range(prefix.clone()..)
        .take_while(|(path, _)| path.starts_with(&prefix))
        .map(|(path, content)| (path[prefix.len()..].to_owned(), content.clone()))
        .collect()
}

/// Normalises a repo-relative location; it must stay inside the repository.
fn normalize_repo_path(location: &str) -> Result<String, String> {
    if location.trim().is_empty() {
        return Err("the package location is empty".into());
    }
    if location.contains('\\') {
        return Err("the package path contains a backslash; use / as separator".into());
    }
    if location.starts_with('/') {
        return Err(
            "the package path is absolute; it must be relative to the desired-state repository"
                .into(),
        );
    }
    let components = normalize_components(location.split('/'))
        .ok_or("the package path leaves the desired-state repository (..)")?;
    if components.is_empty() {
        return Err("the package path names the repository root, not a package".into());
    }
    Ok(components.join("/"))
}

/// Resolves `.`, `..` and empty components; `None` if `..` climbs above the start.
fn normalize_components<'a>(parts: impl IntoIterator<Item = &'a str>) -> Option<Vec<&'a str>> {
    let mut components = Vec::new();
    for part in parts {
        match part {
            "" | "." => {}
            ".." => {
                components.pop()?;
            }
            part => components.push(part),
        }
    }
    Some(components)
}

/// Counts what the gzip stream inflates to, so that a tar header entry (a GNU long name, a pax
/// header) cannot inflate without bound either: the tar crate buffers those whole.
struct LimitedReader<'a, R> {
    inner: R,
    remaining: u64,
    exceeded: &'a Cell<bool>,
}

impl<R: Read> Read for LimitedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            // One byte of look-ahead tells a stream that ends exactly at the limit from one
            // that goes on.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded.set(true);
            return Err(std::io::Error::other("unpacked size limit exceeded"));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..max])?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// What an archive entry turned out to be, before links are resolved.
enum Node {
    File(Vec<u8>),
    Directory,
    /// A link, with its target already resolved to an archive-root-relative path.
    Link(String),
}

/// Unpacks a `.tar.gz` in memory and finds the compose file at its root.
fn unpack_archive(archive: &[u8], limits: Limits) -> Result<Package, String> {
    let exceeded = Cell::new(false);
    let mut reader = LimitedReader {
        inner: flate2::read::MultiGzDecoder::new(archive),
        // Headers and padding take up to about 2 KiB per entry on top of the contents.
        remaining: limits.unpacked_bytes.saturating_add(
            (limits.archive_entries as u64)
                .saturating_add(2)
                .saturating_mul(2048),
        ),
        exceeded: &exceeded,
    };
    let nodes = read_entries(&mut reader, limits);
    let nodes = match nodes {
        Err(_) if exceeded.get() => {
            return Err(format!(
                "archive unpacks to more than the limit of {} bytes",
                limits.unpacked_bytes
            ));
        }
        other => other?,
    };
    let files = resolve_links(&nodes, limits)?;
    let files = strip_common_directory(&nodes, files);
    if files.is_empty() {
        return Err("archive holds no files".into());
    }
    check_no_file_is_a_parent(&files)?;
    let compose_file = find_compose_file(&files).ok_or_else(|| {
        let top: Vec<&str> = files.keys().map(String::as_str).take(10).collect();
        format!(
            "archive has no {} at its root (found: {})",
            compose_names_list(),
            top.join(", ")
        )
    })?;
    Ok(Package {
        compose_file,
        files,
    })
}

fn read_entries(reader: &mut impl Read, limits: Limits) -> Result<BTreeMap<String, Node>, String> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a valid .tar.gz: {e}"))?;
    let mut nodes = BTreeMap::new();
    let mut count = 0usize;
    let mut unpacked = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a valid .tar.gz: {e}"))?;
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            // `git archive` writes one holding the commit id; it describes no file.
            continue;
        }
        count += 1;
        if count > limits.archive_entries {
            return Err(format!(
                "archive has more than the limit of {} entries",
                limits.archive_entries
            ));
        }
        let raw_path = entry.path_bytes();
        let name = std::str::from_utf8(&raw_path)
            .map_err(|_| {
                format!(
                    "archive entry {} has a name that is not UTF-8",
                    String::from_utf8_lossy(&raw_path)
                )
            })?
            .to_owned();
        let path = archive_entry_path(&name)?;
        let node = match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let budget = limits.unpacked_bytes.saturating_sub(unpacked);
                let mut content = Vec::new();
                (&mut entry)
                    .take(budget.saturating_add(1))
                    .read_to_end(&mut content)
                    .map_err(|e| format!("archive entry {name}: {e}"))?;
                unpacked += content.len() as u64;
                if unpacked > limits.unpacked_bytes {
                    return Err(format!(
                        "archive unpacks to more than the limit of {} bytes",
                        limits.unpacked_bytes
                    ));
                }
                Node::File(content)
            }
            tar::EntryType::Directory => Node::Directory,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| format!("archive entry {name} is a link without a target"))?;
                let target = std::str::from_utf8(&raw_target).map_err(|_| {
                    format!("archive entry {name} has a link target that is not UTF-8")
                })?;
                Node::Link(link_target(&name, &path, target, entry_type)?)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(format!("archive entry {name} is a device file"));
            }
            tar::EntryType::Fifo => return Err(format!("archive entry {name} is a fifo")),
            other => {
                return Err(format!(
                    "archive entry {name} has unsupported type {other:?}"
                ));
            }
        };
        if path.is_empty() {
            // The archive root itself, as in `tar -C dir .`.
            if matches!(node, Node::Directory) {
                continue;
            }
            return Err(format!("archive entry {name} has an empty path"));
        }
        nodes.insert(path, node);
    }
    Ok(nodes)
}

/// Validates an entry name and returns it normalised (no `.`, no empty components).
fn archive_entry_path(name: &str) -> Result<String, String> {
    if name.starts_with('/') {
        return Err(format!("archive entry {name} has an absolute path"));
    }
    let mut components = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("archive entry {name} has a .. component")),
            part => components.push(part),
        }
    }
    Ok(components.join("/"))
}

/// Resolves a link target to an archive-root-relative path, refusing any that leave the archive.
fn link_target(
    name: &str,
    path: &str,
    target: &str,
    entry_type: tar::EntryType,
) -> Result<String, String> {
    let outside = || format!("archive entry {name} links to {target}, outside the archive");
    if target.starts_with('/') {
        return Err(outside());
    }
    let resolved = if entry_type == tar::EntryType::Link {
        // Hard link targets are archive paths; symlink targets are relative to the link's
        // directory.
        normalize_components(target.split('/'))
    } else {
        let parent = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        normalize_components(parent.split('/').chain(target.split('/')))
    };
    let resolved = resolved.ok_or_else(outside)?;
    if resolved.is_empty() {
        return Err(format!(
            "archive entry {name} links to the archive root, which is not supported"
        ));
    }
    Ok(resolved.join("/"))
}

/// Replaces every link by a copy of what it points to: a file's bytes, or a directory's files.
fn resolve_links(
    nodes: &BTreeMap<String, Node>,
    limits: Limits,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut resolver = LinkResolver {
        nodes,
        limits,
        files: BTreeMap::new(),
        produced: 0,
        unpacked: 0,
    };
    for (path, node) in nodes {
        match node {
            Node::File(content) => resolver.insert(path, content)?,
            Node::Directory => {}
            Node::Link(target) => resolver.copy_link(path, path, target, 0)?,
        }
    }
    Ok(resolver.files)
}

/// Where a chain of links ends.
enum LinkEnd<'a> {
    File(&'a Vec<u8>),
    Directory(String),
}

struct LinkResolver<'a> {
    nodes: &'a BTreeMap<String, Node>,
    limits: Limits,
    files: BTreeMap<String, Vec<u8>>,
    /// Files and followed links so far; bounded by the entry limit, so that links cannot
    /// multiply the archive (many links to one file, a directory linking to itself).
    produced: usize,
    unpacked: u64,
}

impl<'a> LinkResolver<'a> {
    fn count(&mut self) -> Result<(), String> {
        self.produced += 1;
        if self.produced > self.limits.archive_entries {
            return Err(format!(
                "archive has more than the limit of {} entries (counting links as copies)",
                self.limits.archive_entries
            ));
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, content: &[u8]) -> Result<(), String> {
        self.count()?;
        self.unpacked += content.len() as u64;
        if self.unpacked > self.limits.unpacked_bytes {
            return Err(format!(
                "archive unpacks to more than the limit of {} bytes (counting links as copies)",
                self.limits.unpacked_bytes
            ));
        }
        self.files.insert(path.to_owned(), content.to_vec());
        Ok(())
    }

    /// Puts at `dest` what the link entry `link` (pointing to `target`) ends at.
    fn copy_link(
        &mut self,
        dest: &str,
        link: &str,
        target: &str,
        depth: usize,
    ) -> Result<(), String> {
        match self.follow(link, target)? {
            LinkEnd::File(content) => self.insert(dest, content),
            LinkEnd::Directory(dir) => {
                if depth >= MAX_LINK_DEPTH {
                    return Err(format!(
                        "archive entry {link}: too many levels of links (a loop?)"
                    ));
                }
                self.count()?;
                let prefix = format!("{dir}/");
                let nodes = self.nodes;
                for (path, node) in nodes
                    .range(prefix.clone()..)
                    .take_while(|(path, _)| path.starts_with(&prefix))
                {
                    let copy = format!("{dest}/{}", &path[prefix.len()..]);
                    match node {
                        Node::File(content) => self.insert(&copy, content)?,
                        Node::Directory => {}
                        Node::Link(target) => self.copy_link(&copy, path, target, depth + 1)?,
                    }
                }
                Ok(())
            }
        }
    }

    /// Follows a chain of links, including links in the middle of a path.
    fn follow(&self, link: &str, target: &str) -> Result<LinkEnd<'a>, String> {
        let mut current = target.to_owned();
        for _ in 0..MAX_LINK_DEPTH {
            match self.nodes.get(&current) {
                Some(Node::File(content)) => return Ok(LinkEnd::File(content)),
                Some(Node::Directory) => return Ok(LinkEnd::Directory(current)),
                Some(Node::Link(next)) => {
                    current = next.clone();
                    continue;
                }
                None => {}
            }
            let prefix_link = current
                .match_indices('/')
                .rev()
                .map(|(at, _)| &current[..at])
                .find_map(|prefix| match self.nodes.get(prefix) {
                    Some(Node::Link(target)) => Some((prefix.len(), target)),
                    _ => None,
                });
            if let Some((len, target)) = prefix_link {
                current = format!("{target}{}", &current[len..]);
                continue;
            }
            // Archives need not list a directory before the files in it.
            let children = format!("{current}/");
            if self
                .nodes
                .range(children.clone()..)
                .next()
                .is_some_and(|(path, _)| path.starts_with(&children))
            {
                return Ok(LinkEnd::Directory(current));
            }
            return Err(format!(
                "archive entry {link} links to {current}, which is not in the archive"
            ));
        }
        Err(format!(
            "archive entry {link}: too many levels of links (a loop?)"
        ))
    }
}

/// Packages are often archived as `name/…`; the package root is then `name/`.
fn strip_common_directory(
    nodes: &BTreeMap<String, Node>,
    files: BTreeMap<String, Vec<u8>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut tops = nodes.iter().map(|(path, node)| {
        let top = path.split('/').next().unwrap_or(path);
        (
            top,
            top.len() == path.len() && !matches!(node, Node::Directory),
        )
    });
    let Some((first, first_is_file)) = tops.next() else {
        return files;
    };
    if first_is_file || tops.any(|(top, is_file)| top != first || is_file) {
        return files;
    }
    let prefix = format!("{first}/");
    files
        .into_iter()
        .map(|(path, content)| match path.strip_prefix(&prefix) {
            Some(rest) => (rest.to_owned(), content),
            None => (path, content),
        })
        .collect()
}

/// A path that is both a file and a directory cannot be written out as a package.
fn check_no_file_is_a_parent(files: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    for path in files.keys() {
        let prefix = format!("{path}/");
        if let Some((child, _)) = files.range(prefix.clone()..).next()
            && child.starts_with(&prefix)
        {
            return Err(format!(
                "archive entry {path} is a file but {child} uses it as a directory"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};

    use super::*;

    const COMPOSE: &[u8] = b"services:\n  web:\n    image: nginx\n";

    fn repo(files: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .map(|(path, content)| (path.to_string(), content.to_vec()))
            .collect()
    }

    fn fetcher(config: &PackageConfig) -> PackageFetcher {
        PackageFetcher::new(config).unwrap()
    }

    fn message(error: Error) -> String {
        match error {
            Error::Package { message, .. } => message,
            other => panic!("expected a package error, got {other:?}"),
        }
    }

    async fn fetch_err(location: &str, artifacts: &BTreeMap<String, Vec<u8>>) -> String {
        let fetcher = fetcher(&PackageConfig::default());
        let error = fetcher.fetch(location, artifacts).await.unwrap_err();
        match &error {
            Error::Package { location: l, .. } => assert_eq!(l, location),
            other => panic!("expected a package error, got {other:?}"),
        }
        message(error)
    }

    enum Entry<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
    }

    /// Writes raw headers, because `tar::Builder` itself refuses the hostile names tested here.
    fn tar_gz(entries: &[Entry]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match entry
            {
                Entry::File(name, data) => (name, tar::EntryType::Regular, data, None),
                Entry::Dir(name) => (name, tar::EntryType::Directory, b"", None),
                Entry::Symlink(name, to) => (name, tar::EntryType::Symlink, b"", Some(to)),
                Entry::Hardlink(name, to) => (name, tar::EntryType::Link, b"", Some(to)),
                Entry::Fifo(name) => (name, tar::EntryType::Fifo, b"", None),
            };
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                header.set_link_name_literal(link).unwrap();
            }
            header.set_entry_type(kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn unpack(entries: &[Entry]) -> Result<Package, String> {
        let limits = Limits {
            download_bytes: 1 << 20,
            archive_entries: 100,
            unpacked_bytes: 1 << 20,
        };
        unpack_archive(&tar_gz(entries), limits)
    }

    #[tokio::test]
    async fn repo_yaml_file_roots_the_package_at_its_directory() {
        let artifacts = repo(&[
            ("apps/web/app.yaml", COMPOSE),
            ("apps/web/conf/nginx.conf", b"conf"),
            ("apps/webber/other.yaml", b"not ours"),
            ("deployment.yaml", b"margo"),
        ]);
        let package = fetcher(&PackageConfig::default())
            .fetch("./apps//web/app.yaml", &artifacts)
            .await
            .unwrap();
        assert_eq!(package.compose_file, "app.yaml");
        assert_eq!(
            package.files,
            repo(&[("app.yaml", COMPOSE), ("conf/nginx.conf", b"conf")])
        );
    }

    #[tokio::test]
    async fn repo_directory_uses_the_preferred_compose_file_name() {
        let artifacts = repo(&[
            ("apps/old/../web/docker-compose.yml", b"old"),
            ("apps/web/compose.yml", COMPOSE),
            ("apps/web/docker-compose.yml", b"old"),
        ]);
        let package = fetcher(&PackageConfig::default())
            .fetch("apps/old/../web/", &artifacts)
            .await
            .unwrap();
        assert_eq!(package.compose_file, "compose.yml");
        assert_eq!(package.files.len(), 2);
        assert_eq!(package.files["compose.yml"], COMPOSE);
    }

    #[tokio::test]
    async fn repo_directory_without_compose_file_is_an_error() {
        let artifacts = repo(&[("apps/web/readme.md", b"hi")]);
        let message = fetch_err("apps/web", &artifacts).await;
        assert!(
            message.contains("directory apps/web has no compose.yaml"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn repo_paths_outside_the_repository_are_refused() {
        let artifacts = repo(&[("compose.yaml", COMPOSE)]);
        let message = fetch_err("apps/../../etc/compose.yaml", &artifacts).await;
        assert!(
            message.contains("leaves the desired-state repository"),
            "{message}"
        );
        let message = fetch_err("/etc/compose.yaml", &artifacts).await;
        assert!(message.contains("absolute"), "{message}");
        let message = fetch_err("apps\\web", &artifacts).await;
        assert!(message.contains("backslash"), "{message}");
        let message = fetch_err("  ", &artifacts).await;
        assert!(message.contains("empty"), "{message}");
        let message = fetch_err("apps/..", &artifacts).await;
        assert!(message.contains("repository root"), "{message}");
    }

    #[tokio::test]
    async fn repo_path_that_is_missing_or_not_yaml_is_an_error() {
        let artifacts = repo(&[("apps/web/compose.yaml", COMPOSE), ("notes.txt", b"x")]);
        let message = fetch_err("apps/db", &artifacts).await;
        assert_eq!(
            message,
            "no file or directory apps/db in the desired-state repository"
        );
        // A prefix of a directory name is not that directory.
        let message = fetch_err("apps/we", &artifacts).await;
        assert!(message.contains("no file or directory"), "{message}");
        let message = fetch_err("notes.txt", &artifacts).await;
        assert!(message.contains("neither a compose YAML file"), "{message}");
    }

    #[tokio::test]
    async fn repo_archive_is_unpacked() {
        let archive = tar_gz(&[Entry::File("compose.yaml", COMPOSE)]);
        let artifacts = repo(&[("pkgs/web.tgz", &archive)]);
        let package = fetcher(&PackageConfig::default())
            .fetch("pkgs/web.tgz", &artifacts)
            .await
            .unwrap();
        assert_eq!(package.compose_file, "compose.yaml");
        assert_eq!(package.files, repo(&[("compose.yaml", COMPOSE)]));
    }

    #[test]
    fn archive_with_a_top_level_directory_is_rooted_inside_it() {
        let package = unpack(&[
            Entry::Dir("web-1.0/"),
            Entry::File("web-1.0/docker-compose.yaml", COMPOSE),
            Entry::Dir("web-1.0/conf/"),
            Entry::File("./web-1.0/conf/app.conf", b"a=1"),
        ])
        .unwrap();
        assert_eq!(package.compose_file, "docker-compose.yaml");
        assert_eq!(
            package.files,
            repo(&[("docker-compose.yaml", COMPOSE), ("conf/app.conf", b"a=1")])
        );
    }

    #[test]
    fn archive_top_level_directory_is_kept_when_not_everything_is_under_it() {
        let error = unpack(&[
            Entry::File("web/compose.yaml", COMPOSE),
            Entry::File("README", b"x"),
        ])
        .unwrap_err();
        assert!(error.contains("no compose.yaml"), "{error}");
        assert!(error.contains("web/compose.yaml"), "{error}");
    }

    #[test]
    fn archive_entry_with_dotdot_is_refused() {
        let error = unpack(&[
            Entry::File("compose.yaml", COMPOSE),
            Entry::File("../evil", b"x"),
        ])
        .unwrap_err();
        assert_eq!(error, "archive entry ../evil has a .. component");
        let error = unpack(&[Entry::File("a/../../evil", b"x")]).unwrap_err();
        assert!(error.contains("a/../../evil"), "{error}");
    }

    #[test]
    fn archive_entry_with_absolute_path_is_refused() {
        let error = unpack(&[Entry::File("/etc/passwd", b"x")]).unwrap_err();
        assert_eq!(error, "archive entry /etc/passwd has an absolute path");
    }

    #[test]
    fn archive_links_leaving_the_archive_are_refused() {
        let error = unpack(&[
            Entry::File("compose.yaml", COMPOSE),
            Entry::Symlink("conf/secret", "../../etc/shadow"),
        ])
        .unwrap_err();
        assert_eq!(
            error,
            "archive entry conf/secret links to ../../etc/shadow, outside the archive"
        );
        let error = unpack(&[Entry::Symlink("key", "/etc/ssh/key")]).unwrap_err();
        assert!(
            error.contains("archive entry key links to /etc/ssh/key, outside"),
            "{error}"
        );
        let error = unpack(&[Entry::Hardlink("key", "../key")]).unwrap_err();
        assert!(
            error.contains("archive entry key links to ../key, outside"),
            "{error}"
        );
    }

    #[test]
    fn archive_links_inside_are_resolved_to_the_target_bytes() {
        let package = unpack(&[
            Entry::Dir("pkg/"),
            Entry::Symlink("pkg/compose.yaml", "variants/prod.yaml"),
            Entry::File("pkg/variants/prod.yaml", COMPOSE),
            Entry::Hardlink("pkg/conf/app.conf", "pkg/conf/base.conf"),
            Entry::File("pkg/conf/base.conf", b"base"),
            Entry::Symlink("pkg/etc", "conf"),
            Entry::Symlink("pkg/via-dir.conf", "etc/base.conf"),
        ])
        .unwrap();
        assert_eq!(package.compose_file, "compose.yaml");
        assert_eq!(
            package.files,
            repo(&[
                ("compose.yaml", COMPOSE),
                ("variants/prod.yaml", COMPOSE),
                ("conf/app.conf", b"base"),
                ("conf/base.conf", b"base"),
                ("etc/app.conf", b"base"),
                ("etc/base.conf", b"base"),
                ("via-dir.conf", b"base"),
            ])
        );
    }

    #[test]
    fn archive_dangling_and_looping_links_are_errors() {
        let error = unpack(&[Entry::Symlink("compose.yaml", "missing.yaml")]).unwrap_err();
        assert_eq!(
            error,
            "archive entry compose.yaml links to missing.yaml, which is not in the archive"
        );
        let error = unpack(&[Entry::Symlink("a", "b"), Entry::Symlink("b", "a")]).unwrap_err();
        assert!(error.contains("too many levels of links"), "{error}");
        // A directory holding links to itself would unfold without end.
        let error = unpack(&[
            Entry::File("compose.yaml", COMPOSE),
            Entry::Dir("d/"),
            Entry::Symlink("d/x", "."),
            Entry::Symlink("d/y", "."),
        ])
        .unwrap_err();
        assert_eq!(
            error,
            "archive entry d/x: too many levels of links (a loop?)"
        );
    }

    #[test]
    fn archive_fifo_is_refused() {
        let error =
            unpack(&[Entry::File("compose.yaml", COMPOSE), Entry::Fifo("pipe")]).unwrap_err();
        assert_eq!(error, "archive entry pipe is a fifo");
    }

    #[tokio::test]
    async fn archive_limits_come_from_the_config() {
        let config = PackageConfig {
            max_archive_entries: 3,
            max_unpacked_bytes: 1000,
            ..PackageConfig::default()
        };
        let fetcher = fetcher(&config);
        let fetch = |archive: Vec<u8>| {
            let fetcher = fetcher.clone();
            async move {
                let artifacts = repo(&[("p.tar.gz", &archive)]);
                fetcher.fetch("p.tar.gz", &artifacts).await.map_err(message)
            }
        };

        let three = tar_gz(&[
            Entry::File("compose.yaml", COMPOSE),
            Entry::File("a", b"a"),
            Entry::File("b", b"b"),
        ]);
        assert_eq!(fetch(three).await.unwrap().files.len(), 3);
        let four = tar_gz(&[
            Entry::File("compose.yaml", COMPOSE),
            Entry::File("a", b"a"),
            Entry::File("b", b"b"),
            Entry::File("c", b"c"),
        ]);
        assert_eq!(
            fetch(four).await.unwrap_err(),
            "archive has more than the limit of 3 entries"
        );

        let zeros = vec![0u8; 2000];
        let large = tar_gz(&[
            Entry::File("compose.yaml", COMPOSE),
            Entry::File("big", &zeros),
        ]);
        let error = fetch(large).await.unwrap_err();
        assert!(error.contains("limit of 1000 bytes"), "{error}");

        // Links are copies in memory, so they count against the limit as well.
        let content = vec![b'x'; 400];
        let linked = tar_gz(&[
            Entry::File("compose.yaml", &content),
            Entry::Hardlink("a", "compose.yaml"),
            Entry::Hardlink("b", "compose.yaml"),
        ]);
        let error = fetch(linked).await.unwrap_err();
        assert!(error.contains("counting links as copies"), "{error}");
    }

    #[test]
    fn garbage_is_not_an_archive() {
        let error = unpack_archive(
            b"\x1f\x8bnot really gzip",
            Limits {
                download_bytes: 100,
                archive_entries: 10,
                unpacked_bytes: 100,
            },
        )
        .unwrap_err();
        assert!(error.starts_with("not a valid .tar.gz"), "{error}");
    }

    #[test]
    fn config_has_limits_by_default_and_refuses_unknown_keys() {
        let config: PackageConfig =
            serde_json::from_str(r#"{"hosts": {"git.example:8443": {"token_file": "/t"}}}"#)
                .unwrap();
        assert_eq!(config.max_download_bytes, 64 << 20);
        assert_eq!(config.max_archive_entries, 10_000);
        assert_eq!(config.max_unpacked_bytes, 256 << 20);
        assert!(config.hosts.contains_key("git.example:8443"));
        let error =
            serde_json::from_str::<PackageConfig>(r#"{"hosts": {"h": {"password": "inline"}}}"#)
                .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `password`"),
            "{error}"
        );
    }

    #[test]
    fn credentials_read_secret_files_and_hide_them() {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "s3cret\n").unwrap();
        let basic = Credentials {
            username: Some("deploy".into()),
            password_file: Some(password_file.clone()),
            token_file: None,
        };
        let secret = basic.read().unwrap();
        assert_eq!(
            secret,
            Secret::Basic {
                username: "deploy".into(),
                password: "s3cret".into()
            }
        );
        let shown = format!("{secret:?}");
        assert!(
            shown.contains("deploy") && !shown.contains("s3cret"),
            "{shown}"
        );

        let token = Credentials {
            token_file: Some(password_file.clone()),
            ..Credentials::default()
        };
        let shown = format!("{:?}", token.read().unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");

        let both = Credentials {
            username: Some("deploy".into()),
            token_file: Some(password_file),
            ..Credentials::default()
        };
        assert!(both.read().is_err());
        let missing = Credentials {
            token_file: Some(dir.path().join("nope")),
            ..Credentials::default()
        };
        let error = missing.read().unwrap_err().to_string();
        assert!(error.contains("nope"), "{error}");
    }

    /// An HTTPS file server in python3: `/private/` needs basic auth, `/token/` a bearer token,
    /// `/stream/` is sent in chunks without a length.
    const SERVER: &str = r#"
import base64, http.server, os, ssl, sys
root, cert, key = sys.argv[1:4]
expected = {
    "/private/": "Basic " + base64.b64encode(b"deploy:s3cret").decode(),
    "/token/": "Bearer t0ken",
}
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.path.split("?")[0]
        for prefix, auth in expected.items():
            if path.startswith(prefix) and self.headers.get("Authorization") != auth:
                self.send_response(401)
                self.send_header("WWW-Authenticate", "Basic realm=test")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if path == "/download":
            path = "/pkg.tar.gz"
        file = os.path.join(root, path.lstrip("/"))
        if not os.path.isfile(file):
            self.send_error(404)
            return
        with open(file, "rb") as f:
            body = f.read()
        self.send_response(200)
        if path.startswith("/stream/"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for at in range(0, len(body), 1000):
                chunk = body[at:at + 1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

    struct TestServer {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
        config: PackageConfig,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl TestServer {
        /// Serves `files` with a certificate from a fresh CA, which `config` trusts.
        fn start(files: &[(&str, &[u8])]) -> TestServer {
            let dir = tempfile::tempdir().unwrap();
            let www = dir.path().join("www");
            for (path, content) in files {
                let file = www.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, content).unwrap();
            }

            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "woa test CA");
            let ca =
                rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                    .unwrap();
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

            let mut child = Command::new("python3")
                .arg("-c")
                .arg(SERVER)
                .arg(&www)
                .arg(&cert_file)
                .arg(&key_file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 is needed for the HTTPS tests");
            // The server prints its port once it listens, so requests after that are accepted;
            // letting it pick the port avoids racing other tests for a free one.
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let port = match line.trim().parse() {
                Ok(port) => port,
                Err(_) => {
                    let _ = child.kill();
                    panic!("test HTTPS server did not start: {line:?}");
                }
            };

            let password_file = dir.path().join("password");
            let mut file = std::fs::File::create(&password_file).unwrap();
            writeln!(file, "s3cret").unwrap();
            let config = PackageConfig {
                ca: vec![ca_file],
                hosts: BTreeMap::from([(
                    format!("127.0.0.1:{port}"),
                    Credentials {
                        username: Some("deploy".into()),
                        password_file: Some(password_file),
                        token_file: None,
                    },
                )]),
                ..PackageConfig::default()
            };
            TestServer {
                child,
                port,
                dir,
                config,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("https://127.0.0.1:{}/{path}", self.port)
        }
    }

    #[tokio::test]
    async fn https_compose_file_with_basic_auth() {
        let server = TestServer::start(&[("private/web/compose.yaml", COMPOSE)]);
        let package = fetcher(&server.config)
            .fetch(&server.url("private/web/compose.yaml"), &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(package.compose_file, "compose.yaml");
        assert_eq!(package.files, repo(&[("compose.yaml", COMPOSE)]));
    }

    #[tokio::test]
    async fn https_wrong_password_says_credentials() {
        let server = TestServer::start(&[("private/compose.yaml", COMPOSE)]);
        std::fs::write(server.dir.path().join("password"), "wrong\n").unwrap();
        let location = server.url("private/compose.yaml");
        let error = fetcher(&server.config)
            .fetch(&location, &BTreeMap::new())
            .await
            .unwrap_err();
        assert_eq!(error.source_ref(), location);
        assert_eq!(
            message(error),
            "server answered HTTP 401 Unauthorized (wrong credentials?)"
        );

        // Credentials match on the host alone too; here a token, sent as a bearer token.
        let token_file = server.dir.path().join("token");
        std::fs::write(&token_file, "t0ken\n").unwrap();
        let config = PackageConfig {
            hosts: BTreeMap::from([(
                "127.0.0.1".to_owned(),
                Credentials {
                    token_file: Some(token_file),
                    ..Credentials::default()
                },
            )]),
            ..server.config.clone()
        };
        std::fs::create_dir_all(server.dir.path().join("www/token")).unwrap();
        std::fs::write(server.dir.path().join("www/token/app.yml"), COMPOSE).unwrap();
        let package = fetcher(&config)
            .fetch(&server.url("token/app.yml"), &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(package.compose_file, "app.yml");
    }

    #[tokio::test]
    async fn https_archive_is_unpacked() {
        let archive = tar_gz(&[
            Entry::File("web/compose.yaml", COMPOSE),
            Entry::File("web/nginx.conf", b"conf"),
        ]);
        let server =
            TestServer::start(&[("private/web.tar.gz", &archive), ("pkg.tar.gz", &archive)]);
        let fetcher = fetcher(&server.config);
        let expected = repo(&[("compose.yaml", COMPOSE), ("nginx.conf", b"conf")]);
        let package = fetcher
            .fetch(&server.url("private/web.tar.gz"), &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(package.files, expected);
        // Recognised by the gzip magic when the URL does not say.
        let package = fetcher
            .fetch(&server.url("download?version=1"), &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(package.files, expected);
    }

    #[tokio::test]
    async fn https_errors_name_the_status_and_the_limit() {
        let big = vec![b'#'; 5000];
        let server =
            TestServer::start(&[("big/compose.yaml", &big), ("stream/compose.yaml", &big)]);
        let error = fetcher(&server.config)
            .fetch(&server.url("missing.yaml"), &BTreeMap::new())
            .await
            .unwrap_err();
        assert_eq!(message(error), "server answered HTTP 404 Not Found");

        let config = PackageConfig {
            max_download_bytes: 4096,
            ..server.config.clone()
        };
        let error = fetcher(&config)
            .fetch(&server.url("big/compose.yaml"), &BTreeMap::new())
            .await
            .unwrap_err();
        assert_eq!(
            message(error),
            "download is 5000 bytes, over the limit of 4096 bytes"
        );
        // Without a length up front the body is cut off while streaming.
        let error = fetcher(&config)
            .fetch(&server.url("stream/compose.yaml"), &BTreeMap::new())
            .await
            .unwrap_err();
        assert_eq!(message(error), "download exceeds the limit of 4096 bytes");
        let package = fetcher(&server.config)
            .fetch(&server.url("stream/compose.yaml"), &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(package.files["compose.yaml"], big);

        // Without the test CA the server is not trusted.
        let config = PackageConfig {
            ca: Vec::new(),
            ..server.config.clone()
        };
        let error = fetcher(&config)
            .fetch(&server.url("big/compose.yaml"), &BTreeMap::new())
            .await
            .unwrap_err();
        let error = message(error);
        assert!(error.contains("certificate"), "{error}");
    }

    #[tokio::test]
    async fn other_schemes_and_inline_credentials_are_refused() {
        let none = BTreeMap::new();
        let message = fetch_err("http://example.com/compose.yaml", &none).await;
        assert_eq!(
            message,
            "only https:// package URLs are supported, not http://"
        );
        let message = fetch_err("oci://example.com/web", &none).await;
        assert!(message.contains("not oci://"), "{message}");
        let message = fetch_err("https://u:p@example.com/compose.yaml", &none).await;
        assert!(
            message.contains("credentials in the URL are not allowed"),
            "{message}"
        );
    }
}
