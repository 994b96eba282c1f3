//! The desired-state source: a bare Git mirror of one branch of the device's repository.
//!
//! The mirror only ever holds the tip of the configured branch (shallow, depth 1) under one
//! fixed local ref, so switching the branch in the configuration needs no migration and a
//! force-push on the server is simply followed. Files are read straight from the commit's tree;
//! there is no worktree.
//!
//! Everything here is blocking; the caller runs it on a blocking thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use gix::protocol::transport::client::blocking_io::http;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use woa_common::tls::Trust;

/// The local ref that holds the fetched tip, whatever the configured branch is called.
const TIP_REF: &str = "refs/woa/desired-state";

/// How long connecting to the Git server may take (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one HTTP request may take, including its response body. Desired-state repositories
/// are small, so this only cuts off servers that hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long asking a refusing server for its `Retry-After` may take; it answered quickly a
/// moment ago, and a poll must not hang on it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Names a bare repository directory may contain. A directory holding anything else is not
/// ours, and is never deleted to rebuild the mirror.
const GIT_DIR_ENTRIES: &[&str] = &[
    "HEAD",
    "config",
    "description",
    "hooks",
    "info",
    "objects",
    "refs",
    "packed-refs",
    "shallow",
    "logs",
    "branches",
    "FETCH_HEAD",
    "ORIG_HEAD",
    "index",
];

/// Where the desired state comes from and how to authenticate there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoAccess {
    /// The `https://` URL of the repository, without credentials.
    pub url: String,
    /// The branch that holds the desired state.
    pub branch: String,
    /// A PEM bundle of CA certificates to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// How the device authenticates to the repository.
    pub auth: RepoAuth,
}

/// How the device authenticates to the repository. Secrets stay in files, which are read at
/// every fetch so that rotated secrets apply without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoAuth {
    /// Anonymous access.
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: String,
        /// A file holding the password (a trailing newline is ignored).
        password_file: PathBuf,
    },
    /// An HTTP bearer token.
    Bearer {
        /// A file holding the token (a trailing newline is ignored).
        token_file: PathBuf,
    },
    /// A TLS client certificate.
    Mtls {
        /// The PEM certificate chain, leaf first.
        cert: PathBuf,
        /// The PEM private key of the leaf certificate.
        key: PathBuf,
    },
}

impl RepoAuth {
    fn sends_credentials(&self) -> bool {
        !matches!(self, RepoAuth::None)
    }
}

/// The result of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The commit id (hex) at the tip of the branch.
    pub tip: String,
    /// Whether the tip differs from the one known before this fetch.
    pub changed: bool,
}

/// Why the desired state could not be fetched or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The repository URL cannot be used.
    #[error("the repository URL {url} cannot be used: {reason}")]
    InvalidUrl {
        /// The URL, without credentials.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The branch name is not a valid Git branch name.
    #[error("{branch:?} is not a valid branch name for the repository {url}")]
    InvalidBranch {
        /// The URL, without credentials.
        url: String,
        /// The configured branch.
        branch: String,
    },
    /// A file holding a secret, a certificate or a key could not be read or used.
    #[error("cannot use the {what} file {}: {reason}", path.display())]
    CredentialFile {
        /// What the file should hold, like "password" or "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The CA bundle or the client certificate and key cannot be used.
    #[error(transparent)]
    Tls(woa_common::Error),
    /// The server could not be reached: connection, TLS or timeout.
    #[error("cannot reach the repository {url} (branch {branch}): {cause}")]
    Unreachable {
        /// The URL, without credentials.
        url: String,
        /// The configured branch.
        branch: String,
        /// The underlying cause.
        cause: String,
    },
    /// The server refused access with HTTP 401 or 403.
    #[error("the repository {url} (branch {branch}) {}", auth_refusal(*status, *sent_credentials))]
    AuthRefused {
        /// The URL, without credentials.
        url: String,
        /// The configured branch.
        branch: String,
        /// The HTTP status code, 401 or 403.
        status: u16,
        /// Whether credentials were sent at all.
        sent_credentials: bool,
    },
    /// The server answered with another HTTP error status.
    #[error("the repository {url} (branch {branch}) answered HTTP {status}{}", asked_wait(*retry_after))]
    HttpStatus {
        /// The URL, without credentials.
        url: String,
        /// The configured branch.
        branch: String,
        /// The HTTP status line, like "404 Not Found".
        status: String,
        /// The wait the server asked for with a 503 or 429 (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The repository has no such branch.
    #[error("the repository {url} has no branch {branch}")]
    BranchNotFound {
        /// The URL, without credentials.
        url: String,
        /// The configured branch.
        branch: String,
    },
    /// The fetch failed for another reason, like a protocol error.
    #[error("fetching branch {branch} from {url} failed: {cause}")]
    Fetch {
        /// The URL, without credentials.
        url: String,
        /// The configured branch.
        branch: String,
        /// The underlying cause.
        cause: String,
    },
    /// The server allows reading the repository but refused the receive-pack requests that
    /// write the status branch (HTTP 401 or 403).
    #[error(
        "the repository {url} allows reading but refused writing the status branch {branch} (HTTP {status})"
    )]
    WriteDenied {
        /// The URL, without credentials.
        url: String,
        /// The status branch.
        branch: String,
        /// The HTTP status code, 401 or 403.
        status: u16,
    },
    /// The server refused to update the status branch, or it kept moving while retrying.
    #[error("the repository {url} refused to update the status branch {branch}: {reason}")]
    PushRefused {
        /// The URL, without credentials.
        url: String,
        /// The status branch.
        branch: String,
        /// The server's reason, like "failed to update ref" or "hook declined".
        reason: String,
    },
    /// The push failed for another reason, like a protocol error.
    #[error("pushing the status branch {branch} to {url} failed: {cause}")]
    Push {
        /// The URL, without credentials.
        url: String,
        /// The status branch.
        branch: String,
        /// The underlying cause.
        cause: String,
    },
    /// The status branch or the directory for the status files cannot be used.
    #[error("cannot publish the status to {dir:?} on branch {branch:?}: {reason}")]
    InvalidStatusTarget {
        /// The status branch.
        branch: String,
        /// The directory in the branch's tree.
        dir: String,
        /// What is wrong.
        reason: String,
    },
    /// The local mirror could not be created, opened or updated.
    #[error("the local mirror at {} failed: {cause}", dir.display())]
    Mirror {
        /// The mirror directory.
        dir: PathBuf,
        /// The underlying cause.
        cause: String,
    },
    /// An object of a commit could not be read from the mirror.
    #[error("cannot read {path:?} of commit {commit}: {cause}")]
    Object {
        /// The commit.
        commit: String,
        /// The path in the commit's tree, empty for the commit itself.
        path: String,
        /// The underlying cause.
        cause: String,
    },
    /// The commit holds a symbolic link; desired state is made of plain files only.
    #[error(
        "commit {commit} holds a symbolic link at {path:?}; desired state may only hold plain files"
    )]
    Symlink {
        /// The commit.
        commit: String,
        /// The path of the link.
        path: String,
    },
    /// The files of the commit add up to more than the configured limit.
    #[error("the files of commit {commit} exceed the limit of {limit} bytes at {path:?}")]
    TooLarge {
        /// The commit.
        commit: String,
        /// The file that crossed the limit.
        path: String,
        /// The limit in bytes.
        limit: u64,
    },
}

fn asked_wait(retry_after: Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |wait| {
        format!(" and asked to retry after {}s", wait.as_secs())
    })
}

fn auth_refusal(status: u16, sent_credentials: bool) -> String {
    match (status, sent_credentials) {
        (401, true) => "refused the credentials (HTTP 401)".to_owned(),
        (401, false) => "requires credentials (HTTP 401), but none are configured".to_owned(),
        (status, _) => format!("denied access (HTTP {status})"),
    }
}

impl SourceError {
    /// Whether the server refused the credentials or denied access (also for writing only);
    /// retrying will not help until the credentials or the permissions change.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            SourceError::AuthRefused { .. } | SourceError::WriteDenied { .. }
        )
    }

    /// The wait the server asked for (`Retry-After` of a 503 or 429), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the commit itself cannot be used as desired state (a link, too large): the
    /// repository is fine, its content is not.
    pub fn is_content(&self) -> bool {
        matches!(
            self,
            SourceError::Symlink { .. } | SourceError::TooLarge { .. }
        )
    }
}

/// A bare Git repository under the service's state directory that mirrors the tip of the
/// desired-state branch.
///
/// Only the directory is kept between calls: each call opens the repository afresh, which
/// drops every cache of the previous poll (memory stays flat) and keeps `Mirror` `Send` and
/// `Sync` (gix's repository handles are neither, as they hold `Rc`s in their configuration).
#[derive(Debug)]
pub struct Mirror {
    dir: PathBuf,
    /// The tip as of the last open or fetch; `changed` is relative to it, so a mirror rebuilt
    /// from scratch does not report a change for the same commit.
    last_tip: Option<String>,
}

impl Mirror {
    /// Opens the mirror at `dir`, creating a bare repository if missing, and rebuilding it from
    /// scratch (delete + init) if it is corrupt (cannot be opened, or its tip cannot be read).
    /// A directory that does not look like a Git repository is never deleted.
    pub fn open(dir: &Path) -> Result<Mirror, SourceError> {
        let repo = open_or_rebuild(dir, TIP_REF)?;
        let last_tip = read_tip(&repo, TIP_REF);
        Ok(Mirror {
            dir: dir.to_owned(),
            last_tip,
        })
    }

    /// Deletes the mirror (after checking that it looks like one), for a mirror whose objects
    /// cannot be read: the next fetch builds it anew.
    pub fn discard(self) -> Result<(), SourceError> {
        if self.dir.exists() {
            ensure_looks_like_a_mirror(&self.dir)?;
            std::fs::remove_dir_all(&self.dir)
                .map_err(|err| mirror_error(&self.dir, format!("cannot remove it: {err}")))?;
        }
        Ok(())
    }

    /// Fetches `access.branch`: a ref advertisement only when nothing changed, a shallow fetch
    /// (depth 1) of the new tip otherwise. Force-pushes are followed. Returns the tip and
    /// whether it changed since the last open or fetch.
    pub fn fetch(&mut self, access: &RepoAccess) -> Result<Fetched, SourceError> {
        let target = Target::new(access, TIP_REF)?;

        // Opening checks the mirror again, so one deleted or damaged since the last fetch is
        // rebuilt here.
        let repo = open_or_rebuild(&self.dir, TIP_REF)?;
        let tip = if pack_count(&self.dir) > MAX_PACKS {
            drop(repo);
            self.fetch_compacted(&target)?
        } else {
            target.fetch_into(&repo, &self.dir)?
        };
        let changed = self.last_tip.as_deref() != Some(tip.as_str());
        self.last_tip = Some(tip.clone());
        Ok(Fetched { tip, changed })
    }

    /// Every fetch of a new tip adds a pack, and gix cannot repack. Once there are too many,
    /// the tip is fetched into a fresh mirror that replaces this one, so disk use and the
    /// memory for pack indices stay bounded. The old mirror stays until the new one is
    /// complete.
    fn fetch_compacted(&self, target: &Target<'_>) -> Result<String, SourceError> {
        let fresh_dir = sibling(&self.dir, "compact");
        let old_dir = sibling(&self.dir, "old");
        for leftover in [&fresh_dir, &old_dir] {
            if leftover.exists() {
                ensure_looks_like_a_mirror(leftover)?;
                std::fs::remove_dir_all(leftover)
                    .map_err(|err| mirror_error(leftover, format!("cannot remove it: {err}")))?;
            }
        }
        let fetched = open_or_rebuild(&fresh_dir, TIP_REF)
            .and_then(|fresh| target.fetch_into(&fresh, &fresh_dir));
        let tip = match fetched {
            Ok(tip) => tip,
            Err(err) => {
                // Best effort: a leftover is removed before the next attempt anyway.
                let _ = std::fs::remove_dir_all(&fresh_dir);
                return Err(err);
            }
        };
        // A crash between the renames leaves no mirror at `dir`, which the next open or
        // fetch rebuilds; the tip is fetched again then.
        std::fs::rename(&self.dir, &old_dir)
            .map_err(|err| mirror_error(&self.dir, format!("cannot move it aside: {err}")))?;
        std::fs::rename(&fresh_dir, &self.dir).map_err(|err| {
            mirror_error(
                &self.dir,
                format!("cannot move the compacted mirror in place: {err}"),
            )
        })?;
        std::fs::remove_dir_all(&old_dir)
            .map_err(|err| mirror_error(&old_dir, format!("cannot remove it: {err}")))?;
        tracing::info!(dir = %self.dir.display(), %tip, "compacted the desired-state mirror");
        Ok(tip)
    }

    /// The last fetched tip, without network (for start-up while offline).
    pub fn tip(&self) -> Option<String> {
        let repo = gix::open_opts(&self.dir, open_options()).ok()?;
        read_tip(&repo, TIP_REF)
    }

    /// Every file in the tree of `commit`: path (with '/') → content. Submodules are skipped;
    /// a symbolic link is an error, because whatever refers to it would otherwise find nothing.
    /// An error also if the files add up to more than `limit` bytes, naming the file that
    /// crossed it.
    pub fn read_tree(
        &self,
        commit: &str,
        limit: u64,
    ) -> Result<BTreeMap<String, Vec<u8>>, SourceError> {
        let object_error = |path: &str, cause: String| SourceError::Object {
            commit: commit.to_owned(),
            path: path.to_owned(),
            cause,
        };
        let repo = gix::open_opts(&self.dir, open_options())
            .map_err(|err| mirror_error(&self.dir, format!("{err:#}")))?;
        let id = gix::ObjectId::from_hex(commit.as_bytes())
            .map_err(|err| object_error("", format!("not a commit id: {err}")))?;
        let tree = repo
            .find_commit(id)
            .map_err(|err| object_error("", format!("{err:#}")))?
            .tree()
            .map_err(|err| object_error("", format!("{err:#}")))?;
        let entries = tree
            .traverse()
            .breadthfirst
            .files()
            .map_err(|err| object_error("", format!("{err:#}")))?;

        let mut files = BTreeMap::new();
        let mut total: u64 = 0;
        for entry in entries {
            let path = entry.filepath.to_string();
            if entry.mode.is_tree() || entry.mode.is_commit() {
                // Directories are walked into; submodules are another repository.
                continue;
            }
            if entry.mode.is_link() {
                return Err(SourceError::Symlink {
                    commit: commit.to_owned(),
                    path,
                });
            }
            let Ok(utf8_path) = std::str::from_utf8(entry.filepath.as_ref()) else {
                return Err(object_error(
                    &path,
                    "the path is not valid UTF-8".to_owned(),
                ));
            };
            if utf8_path
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
            {
                return Err(object_error(
                    &path,
                    "the path is not a plain relative path".to_owned(),
                ));
            }
            // Check the size from the object header first so a huge blob is never loaded.
            let size = repo
                .find_header(entry.oid)
                .map_err(|err| object_error(&path, format!("{err:#}")))?
                .size();
            total = total.saturating_add(size);
            if total > limit {
                return Err(SourceError::TooLarge {
                    commit: commit.to_owned(),
                    path,
                    limit,
                });
            }
            let mut blob = repo
                .find_blob(entry.oid)
                .map_err(|err| object_error(&path, format!("{err:#}")))?;
            files.insert(utf8_path.to_owned(), blob.take_data());
        }
        Ok(files)
    }
}

/// One fetch of `access.branch` into a fixed local ref.
pub(crate) struct Target<'a> {
    access: &'a RepoAccess,
    url: gix::Url,
    /// The URL without credentials, for errors.
    display_url: String,
    refspec: String,
    /// The local ref that holds the fetched tip.
    tip_ref: &'static str,
}

impl<'a> Target<'a> {
    /// Checks the URL and the branch name of `access`, to fetch the branch into `tip_ref`.
    pub(crate) fn new(
        access: &'a RepoAccess,
        tip_ref: &'static str,
    ) -> Result<Target<'a>, SourceError> {
        let display_url = without_credentials(&access.url);
        let url = parse_url(&access.url, &display_url)?;
        let branch = gix::refs::FullName::try_from(format!("refs/heads/{}", access.branch))
            .map_err(|_| SourceError::InvalidBranch {
                url: display_url.clone(),
                branch: access.branch.clone(),
            })?;
        Ok(Target {
            access,
            url,
            display_url,
            refspec: format!("+{}:{tip_ref}", branch.as_bstr()),
            tip_ref,
        })
    }

    fn failed(&self, err: gix::Error) -> SourceError {
        let mut error = classify_fetch_error(
            &err,
            &self.display_url,
            &self.access.branch,
            self.access.auth.sends_credentials(),
        );
        if let SourceError::HttpStatus { retry_after, .. } = &mut error
            && find_cause::<reqwest::Error>(&err)
                .and_then(reqwest::Error::status)
                .is_some_and(asks_to_wait)
        {
            *retry_after = self.probe_retry_after();
        }
        error
    }

    /// The `Retry-After` the server sends with its 503 or 429, read by asking once more.
    ///
    /// gix's reqwest backend turns an HTTP error status into an error (`error_for_status`)
    /// that keeps the status code but drops the headers, and it offers no hook that sees a
    /// response. So after a 503 or 429 the first request of a fetch (the ref advertisement,
    /// which changes nothing on the server) is sent once more with the same TLS
    /// configuration and credentials, and its `Retry-After` is what the server asked for.
    /// It costs one small request per refused poll, and the wait it reveals saves many.
    fn probe_retry_after(&self) -> Option<Duration> {
        let client = match client_builder(self.access).and_then(|builder| {
            builder
                .timeout(PROBE_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|err| SourceError::Fetch {
                    url: self.display_url.clone(),
                    branch: self.access.branch.clone(),
                    cause: woa_common::chain(&err),
                })
        }) {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!(error = %err, "cannot ask the repository for its Retry-After");
                return None;
            }
        };
        let url = format!(
            "{}/info/refs?service=git-upload-pack",
            self.access.url.trim_end_matches('/')
        );
        match client.get(url).header("Git-Protocol", "version=2").send() {
            Ok(response) => crate::retry::retry_after(response.status(), response.headers()),
            Err(err) => {
                tracing::debug!(error = %woa_common::chain(&err), "cannot ask the repository for its Retry-After");
                None
            }
        }
    }

    /// Lists the branch on the server and, if its tip is not the local one, fetches it into
    /// `repo` (at `dir`). Returns the tip.
    pub(crate) fn fetch_into(
        &self,
        repo: &gix::Repository,
        dir: &Path,
    ) -> Result<String, SourceError> {
        let failed = |err| self.failed(err);
        // Secrets are read here, at every fetch, so rotated ones apply.
        let backend = http_backend(self.access)?;
        let mut transport_options = repo
            .transport_options(self.access.url.as_str(), None)
            .map_err(failed)?
            .ok_or_else(|| SourceError::InvalidUrl {
                url: self.display_url.clone(),
                reason: "no HTTP transport is available for it".to_owned(),
            })?;
        let http_options = transport_options
            .downcast_mut::<http::Options>()
            .ok_or_else(|| SourceError::InvalidUrl {
                url: self.display_url.clone(),
                reason: "the transport for it is not the HTTP transport".to_owned(),
            })?;
        http_options.backend = Some(Arc::new(Mutex::new(backend)));
        http_options.connect_timeout = Some(CONNECT_TIMEOUT);

        let remote = repo
            .remote_at_without_url_rewrite(self.url.clone())
            .map_err(failed)?
            .with_refspecs([self.refspec.as_str()], gix::remote::Direction::Fetch)
            .map_err(failed)?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let prepare = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(failed)?
            // Credentials travel in the client's default headers; never ask a helper or a
            // terminal for more when the server says 401.
            .with_credentials(refuse_credential_requests)
            .with_transport_options(transport_options)
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(failed)?;
        let Some(advertised) = prepare
            .ref_map()
            .mappings
            .iter()
            .find_map(|mapping| mapping.remote.as_id().map(ToOwned::to_owned))
        else {
            return Err(SourceError::BranchNotFound {
                url: self.display_url.clone(),
                branch: self.access.branch.clone(),
            });
        };
        let advertised = advertised.to_hex().to_string();
        if read_tip(repo, self.tip_ref).as_deref() == Some(advertised.as_str()) {
            // Nothing moved: end the session after the ref advertisement. Receiving anyway
            // would not be free, as with a shallow depth gix always negotiates and the
            // server always sends a pack.
            drop(prepare);
        } else {
            fetch_tip(prepare).map_err(failed)?;
        }

        let tip_ref = self.tip_ref;
        let tip = read_tip(repo, tip_ref)
            .ok_or_else(|| mirror_error(dir, format!("the fetch did not update {tip_ref}")))?;
        if tip != advertised {
            return Err(mirror_error(
                dir,
                format!(
                    "{tip_ref} points to {tip} after the fetch, but the server advertised {advertised}"
                ),
            ));
        }
        Ok(tip)
    }
}

/// How many packs the mirror may hold before it is compacted.
pub(crate) const MAX_PACKS: usize = 16;

pub(crate) fn pack_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("objects").join("pack")).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "pack"))
            .count()
    })
}

/// `dir` with `.suffix` appended to its name.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

/// Receives the advertised tip, shallow (depth 1), and moves the local ref to it.
fn fetch_tip<T>(prepare: gix::remote::fetch::Prepare<'_, '_, T>) -> gix::Result<()>
where
    T: gix::protocol::transport::client::blocking_io::Transport,
{
    prepare
        .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
            std::num::NonZeroU32::MIN,
        ))
        .receive(gix::progress::Discard, &AtomicBool::new(false))
        .map(drop)
}

/// Answers gix's request for credentials after an HTTP 401: the configured credentials were
/// already sent, so the server refused them.
fn refuse_credential_requests(
    action: gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    match action {
        gix::credentials::helper::Action::Get(_) => Err(gix::error::message(
            "the server asked for credentials; only the configured ones are sent",
        )
        .unauthenticated_error()),
        // Store and erase only follow a successful get; there is nothing to store or erase.
        _ => Ok(None),
    }
}

pub(crate) fn mirror_error(dir: &Path, cause: impl std::fmt::Display) -> SourceError {
    SourceError::Mirror {
        dir: dir.to_owned(),
        cause: cause.to_string(),
    }
}

pub(crate) fn open_options() -> gix::open::Options {
    // Isolated: no system or user Git configuration (credential helpers, URL rewrites, proxies
    // of whoever runs the service) and no GIT_* environment variables apply.
    gix::open::Options::isolated()
}

/// Opens the bare repository at `dir`, creating it if missing and rebuilding it if damaged
/// (including when `tip_ref` names a commit it cannot read).
pub(crate) fn open_or_rebuild(dir: &Path, tip_ref: &str) -> Result<gix::Repository, SourceError> {
    let exists = dir
        .try_exists()
        .map_err(|err| mirror_error(dir, format!("cannot look at the directory: {err}")))?;
    if exists {
        match open_existing(dir, tip_ref) {
            Ok(repo) => return Ok(repo),
            Err(cause) => {
                ensure_looks_like_a_mirror(dir)?;
                tracing::warn!(dir = %dir.display(), %cause, "the local repository is damaged, rebuilding it");
                std::fs::remove_dir_all(dir).map_err(|err| {
                    mirror_error(dir, format!("cannot remove the damaged mirror: {err}"))
                })?;
            }
        }
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|err| {
            mirror_error(dir, format!("cannot create the parent directory: {err}"))
        })?;
    }
    gix::ThreadSafeRepository::init_opts(
        dir,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        open_options(),
    )
    .map(gix::Repository::from)
    .map_err(|err| mirror_error(dir, format!("cannot create a bare repository: {err:#}")))
}

/// Opens `dir` and checks that what a fetch and `read_tree` rely on is there.
fn open_existing(dir: &Path, tip_ref: &str) -> Result<gix::Repository, String> {
    let repo = gix::open_opts(dir, open_options()).map_err(|err| format!("{err:#}"))?;
    if !repo.is_bare() {
        return Err("it is not a bare repository".to_owned());
    }
    repo.head()
        .map_err(|err| format!("its HEAD cannot be read: {err:#}"))?;
    if !dir.join("objects").join("pack").is_dir() {
        return Err("its object database is missing".to_owned());
    }
    let tip = repo
        .try_find_reference(tip_ref)
        .map_err(|err| format!("cannot read {tip_ref}: {err:#}"))?
        .map(|reference| reference.target().try_id().map(ToOwned::to_owned));
    match tip {
        None => {}
        Some(None) => return Err(format!("{tip_ref} is not a commit id")),
        Some(Some(id)) => {
            repo.find_commit(id)
                .and_then(|commit| commit.tree())
                .map_err(|err| format!("cannot read the tip {id}: {err:#}"))?;
        }
    }
    Ok(repo)
}

/// Refuses to delete a directory that holds anything a bare repository would not, so a
/// misconfigured path never costs someone their files.
pub(crate) fn ensure_looks_like_a_mirror(dir: &Path) -> Result<(), SourceError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|err| mirror_error(dir, format!("cannot list the directory: {err}")))?;
    for entry in entries {
        let entry =
            entry.map_err(|err| mirror_error(dir, format!("cannot list the directory: {err}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let known = GIT_DIR_ENTRIES.contains(&name.as_ref()) || name.ends_with(".lock");
        if !known {
            return Err(mirror_error(
                dir,
                format!(
                    "it cannot be opened as a Git repository and holds {name:?}, which a mirror would not; refusing to delete it"
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn read_tip(repo: &gix::Repository, tip_ref: &str) -> Option<String> {
    let reference = repo.try_find_reference(tip_ref).ok()??;
    reference
        .target()
        .try_id()
        .map(|id| id.to_hex().to_string())
}

/// `url` with any `user:password@` removed, for messages and logs.
pub fn without_credentials(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]);
        }
    }
    url.to_owned()
}

fn parse_url(url: &str, display_url: &str) -> Result<gix::Url, SourceError> {
    let invalid = |reason: &str| SourceError::InvalidUrl {
        url: display_url.to_owned(),
        reason: reason.to_owned(),
    };
    if display_url != url {
        return Err(invalid(
            "it holds credentials; configure them as a password or token file instead",
        ));
    }
    let parsed = gix::url::parse(url).map_err(|_| invalid("it is not a valid URL"))?;
    if parsed.scheme != gix::url::Scheme::Https {
        return Err(invalid("only https:// URLs are supported"));
    }
    Ok(parsed)
}

fn read_secret(what: &'static str, path: &Path) -> Result<String, SourceError> {
    let content = std::fs::read_to_string(path).map_err(|err| SourceError::CredentialFile {
        what,
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    let secret = content.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(SourceError::CredentialFile {
            what,
            path: path.to_owned(),
            reason: "it is empty".to_owned(),
        });
    }
    Ok(secret)
}

/// The `Authorization` header for `auth`, marked sensitive so it is never logged.
fn authorization(auth: &RepoAuth) -> Result<Option<HeaderValue>, SourceError> {
    let (value, what, path) = match auth {
        RepoAuth::None | RepoAuth::Mtls { .. } => return Ok(None),
        RepoAuth::Basic {
            username,
            password_file,
        } => {
            let password = read_secret("password", password_file)?;
            let value = format!(
                "Basic {}",
                BASE64_STANDARD.encode(format!("{username}:{password}"))
            );
            (value, "password", password_file)
        }
        RepoAuth::Bearer { token_file } => {
            let token = read_secret("token", token_file)?;
            (format!("Bearer {token}"), "token", token_file)
        }
    };
    let mut value = HeaderValue::try_from(value).map_err(|_| SourceError::CredentialFile {
        what,
        path: path.clone(),
        reason: "it holds characters that cannot be sent in an HTTP header".to_owned(),
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// The rustls configuration: the configured CA bundle (or the system roots) and, for mutual
/// TLS, the client certificate.
fn tls_config(access: &RepoAccess) -> Result<rustls::ClientConfig, SourceError> {
    let trust = access.ca.as_deref().map_or(Trust::System, Trust::Bundle);
    let identity = match &access.auth {
        RepoAuth::Mtls { cert, key } => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    woa_common::tls::client_config(trust, identity).map_err(SourceError::Tls)
}

/// Whether an HTTP status may come with a `Retry-After` worth reading (503, 429).
fn asks_to_wait(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::SERVICE_UNAVAILABLE
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// A blocking HTTP client for the repository like the one gix uses for fetching: the TLS
/// configuration, the credentials (secret files are read here, at every call), the user agent
/// and the timeouts. Callers add what their requests need, like the redirect policy.
pub(crate) fn client_builder(
    access: &RepoAccess,
) -> Result<reqwest::blocking::ClientBuilder, SourceError> {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization(&access.auth)? {
        headers.insert(AUTHORIZATION, value);
    }
    Ok(reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls_config(access)?)
        .default_headers(headers)
        .user_agent(concat!("git/woa-sync/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT))
}

/// The reqwest backend options for gix: TLS, credentials and timeouts. Secret files are read
/// here, at every fetch.
fn http_backend(access: &RepoAccess) -> Result<http::reqwest::Options, SourceError> {
    let tls = tls_config(access)?;
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization(&access.auth)? {
        headers.insert(AUTHORIZATION, value);
    }
    Ok(http::reqwest::Options {
        // gix may call this more than once (after a failed request it builds a new client).
        configure_client: Some(Box::new(move |builder| {
            Ok(builder
                .tls_backend_preconfigured(tls.clone())
                .default_headers(headers.clone())
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT))
        })),
        configure_request: None,
    })
}

/// Finds an error of type `T` in the tree of `err`, looking through native source chains and
/// into `std::io::Error`s (whose `source()` skips the error they wrap).
fn find_cause<T: std::error::Error + 'static>(err: &gix::Error) -> Option<&T> {
    fn walk<'a, T: std::error::Error + 'static>(
        mut current: Option<&'a (dyn std::error::Error + 'static)>,
    ) -> Option<&'a T> {
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<T>() {
                return Some(found);
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && let Some(inner) = io.get_ref()
            {
                let inner: &(dyn std::error::Error + 'static) = inner;
                if let Some(found) = walk::<T>(Some(inner)) {
                    return Some(found);
                }
            }
            current = error.source();
        }
        None
    }
    err.iter_errors().find_map(|error| walk::<T>(Some(error)))
}

fn classify_fetch_error(
    err: &gix::Error,
    url: &str,
    branch: &str,
    sent_credentials: bool,
) -> SourceError {
    let url = url.to_owned();
    let branch = branch.to_owned();
    if err.is_unauthenticated() {
        return SourceError::AuthRefused {
            url,
            branch,
            status: 401,
            sent_credentials,
        };
    }
    if let Some(http_error) = find_cause::<reqwest::Error>(err) {
        if let Some(status) = http_error.status() {
            if status == reqwest::StatusCode::FORBIDDEN {
                return SourceError::AuthRefused {
                    url,
                    branch,
                    status: status.as_u16(),
                    sent_credentials,
                };
            }
            return SourceError::HttpStatus {
                url,
                branch,
                status: status.to_string(),
                // Filled in by the caller, which can ask the server again.
                retry_after: None,
            };
        }
        if http_error.is_connect() || http_error.is_timeout() || http_error.is_request() {
            return SourceError::Unreachable {
                url,
                branch,
                cause: woa_common::chain(http_error),
            };
        }
    }
    if err.is_permission_denied() {
        return SourceError::AuthRefused {
            url,
            branch,
            status: 403,
            sent_credentials,
        };
    }
    SourceError::Fetch {
        url,
        branch,
        cause: format!("{err:#}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;
    use crate::testserver::{GitServer, git, new_ca};

    fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(path, content)| (path.to_string(), content.as_bytes().to_vec()))
            .collect()
    }

    const APP: &str = "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n";

    #[test]
    fn first_fetch_gets_the_tip_and_its_files_only() {
        let server = GitServer::start("basic");
        let parent = server.commit(&[("old.txt", Some("old"))], "first");
        let tip = server.commit(
            &[
                ("old.txt", None),
                ("deployments/app.yaml", Some(APP)),
                ("apps/web/compose.yaml", Some("services: {}\n")),
                ("README", Some("desired state\n")),
            ],
            "second",
        );
        server.push("HEAD", "main");

        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();
        assert_eq!(mirror.tip(), None);
        let fetched = mirror.fetch(&server.access()).unwrap();
        assert_eq!(
            fetched,
            Fetched {
                tip: tip.clone(),
                changed: true
            }
        );
        assert_eq!(mirror.tip(), Some(tip.clone()));
        assert_eq!(
            mirror.read_tree(&tip, 1 << 20).unwrap(),
            files(&[
                ("README", "desired state\n"),
                ("apps/web/compose.yaml", "services: {}\n"),
                ("deployments/app.yaml", APP),
            ])
        );

        // Depth 1: the parent commit was not transferred.
        assert!(server.mirror_dir().join("shallow").is_file());
        let error = mirror.read_tree(&parent, 1 << 20).unwrap_err();
        assert!(matches!(error, SourceError::Object { .. }), "{error}");
        assert!(error.to_string().contains(&parent), "{error}");

        // The tip survives a restart without network.
        drop(mirror);
        let mirror = Mirror::open(&server.mirror_dir()).unwrap();
        assert_eq!(mirror.tip(), Some(tip));
    }

    #[test]
    fn read_tree_enforces_the_size_limit_and_refuses_symlinks() {
        let server = GitServer::start("basic");
        let tip = server.commit(
            &[("a.txt", Some("12345")), ("b/c.txt", Some("67890"))],
            "files",
        );
        server.push("HEAD", "main");
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();
        mirror.fetch(&server.access()).unwrap();

        assert_eq!(mirror.read_tree(&tip, 10).unwrap().len(), 2);
        let error = mirror.read_tree(&tip, 9).unwrap_err();
        assert!(
            matches!(&error, SourceError::TooLarge { path, limit: 9, .. } if path == "b/c.txt"),
            "{error}"
        );
        let error = mirror.read_tree("not-a-commit", 10).unwrap_err();
        assert!(matches!(error, SourceError::Object { .. }), "{error}");

        std::os::unix::fs::symlink("a.txt", server.work.join("link")).unwrap();
        let linked = server.commit(&[], "a link");
        server.push("HEAD", "main");
        mirror.fetch(&server.access()).unwrap();
        let error = mirror.read_tree(&linked, 1 << 20).unwrap_err();
        assert!(
            matches!(&error, SourceError::Symlink { path, .. } if path == "link"),
            "{error}"
        );
    }

    #[test]
    fn fetch_without_change_only_lists_refs() {
        let server = GitServer::start("basic");
        let tip = server.commit(&[("deployments/app.yaml", Some(APP))], "app");
        server.push("HEAD", "main");
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();
        mirror.fetch(&server.access()).unwrap();
        let first = server.requests();
        assert!(
            first.iter().any(|line| line.ends_with(" fetch")),
            "the first fetch transfers a pack: {first:?}"
        );

        for _ in 0..3 {
            let before = server.requests().len();
            let fetched = mirror.fetch(&server.access()).unwrap();
            assert_eq!(
                fetched,
                Fetched {
                    tip: tip.clone(),
                    changed: false
                }
            );
            let requests = server.requests()[before..].to_vec();
            // Observed: GET info/refs (protocol v2 capabilities) and one POST with ls-refs.
            assert_eq!(
                requests,
                [
                    "GET /desired.git/info/refs",
                    "POST /desired.git/git-upload-pack ls-refs"
                ],
                "{requests:?}"
            );
        }
    }

    #[test]
    fn new_commits_and_force_pushes_are_followed() {
        let server = GitServer::start("basic");
        let first = server.commit(&[("deployments/app.yaml", Some(APP))], "first");
        server.push("HEAD", "main");
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();
        assert_eq!(mirror.fetch(&server.access()).unwrap().tip, first);

        let second = server.commit(&[("deployments/db.yaml", Some("db"))], "second");
        server.push("HEAD", "main");
        assert_eq!(
            mirror.fetch(&server.access()).unwrap(),
            Fetched {
                tip: second.clone(),
                changed: true
            }
        );
        assert_eq!(
            mirror.read_tree(&second, 1 << 20).unwrap(),
            files(&[("deployments/app.yaml", APP), ("deployments/db.yaml", "db")])
        );

        // Force-push back to the older commit.
        server.push(&first, "main");
        assert_eq!(
            mirror.fetch(&server.access()).unwrap(),
            Fetched {
                tip: first.clone(),
                changed: true
            }
        );
        assert_eq!(
            mirror.read_tree(&first, 1 << 20).unwrap(),
            files(&[("deployments/app.yaml", APP)])
        );

        // Force-push to an unrelated history.
        git(&server.work, &["checkout", "-q", "--orphan", "other"]);
        git(&server.work, &["rm", "-q", "-rf", "."]);
        let unrelated = server.commit(&[("deployments/other.yaml", Some("other"))], "other");
        server.push("HEAD", "main");
        assert_eq!(
            mirror.fetch(&server.access()).unwrap(),
            Fetched {
                tip: unrelated.clone(),
                changed: true
            }
        );
        assert_eq!(
            mirror.read_tree(&unrelated, 1 << 20).unwrap(),
            files(&[("deployments/other.yaml", "other")])
        );
        assert_eq!(mirror.tip(), Some(unrelated));
    }

    #[test]
    fn many_changes_do_not_pile_up_packs() {
        let server = GitServer::start("basic");
        let dir = server.mirror_dir();
        let mut mirror = Mirror::open(&dir).unwrap();
        let mut most_packs = 0;
        let mut tip = String::new();
        for round in 0..=MAX_PACKS + 2 {
            let content = format!("round {round}");
            tip = server.commit(
                &[("deployments/app.yaml", Some(content.as_str()))],
                "change",
            );
            server.push("HEAD", "main");
            assert_eq!(mirror.fetch(&server.access()).unwrap().tip, tip);
            most_packs = most_packs.max(pack_count(&dir));
        }
        assert_eq!(
            most_packs,
            MAX_PACKS + 1,
            "one pack per change until compaction"
        );
        assert!(pack_count(&dir) <= 2, "compacted: {}", pack_count(&dir));
        let content = format!("round {}", MAX_PACKS + 2);
        assert_eq!(
            mirror.read_tree(&tip, 1 << 20).unwrap(),
            files(&[("deployments/app.yaml", content.as_str())])
        );
        assert!(!sibling(&dir, "compact").exists());
        assert!(!sibling(&dir, "old").exists());
        assert!(!mirror.fetch(&server.access()).unwrap().changed);
    }

    #[test]
    fn refused_credentials_are_an_auth_error_without_the_secret() {
        let server = GitServer::start("basic");
        server.commit(&[("deployments/app.yaml", Some(APP))], "app");
        server.push("HEAD", "main");
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();

        std::fs::write(server.dir.path().join("password"), "Wr0ngPassw0rd\n").unwrap();
        let error = mirror.fetch(&server.access()).unwrap_err();
        assert!(error.is_auth(), "{error:?}");
        let message = error.to_string();
        assert_eq!(
            message,
            format!(
                "the repository {} (branch main) refused the credentials (HTTP 401)",
                server.url()
            )
        );
        assert!(!format!("{error:?}").contains("Wr0ngPassw0rd"));

        let mut access = server.access();
        access.auth = RepoAuth::None;
        let error = mirror.fetch(&access).unwrap_err();
        assert!(error.is_auth(), "{error:?}");
        assert!(error.to_string().contains("none are configured"), "{error}");

        // A rotated secret applies at the next fetch, here as a bearer token.
        let token_file = server.dir.path().join("token");
        std::fs::write(&token_file, "t0ken\n").unwrap();
        access.auth = RepoAuth::Bearer { token_file };
        mirror.fetch(&access).unwrap();
        assert_eq!(mirror.tip().unwrap().len(), 40);
    }

    #[test]
    fn missing_secret_file_is_named() {
        let server = GitServer::start("basic");
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();
        let missing = server.dir.path().join("no-such-password");
        let mut access = server.access();
        access.auth = RepoAuth::Basic {
            username: "woa".to_owned(),
            password_file: missing.clone(),
        };
        let error = mirror.fetch(&access).unwrap_err();
        assert!(
            matches!(&error, SourceError::CredentialFile { path, what: "password", .. } if *path == missing),
            "{error:?}"
        );
        assert!(
            error.to_string().contains(missing.to_str().unwrap()),
            "{error}"
        );
        assert!(
            server.requests().is_empty(),
            "nothing is sent without credentials"
        );
    }

    #[test]
    fn missing_branch_and_repository_are_told_apart() {
        let server = GitServer::start("basic");
        server.commit(&[("deployments/app.yaml", Some(APP))], "app");
        server.push("HEAD", "main");
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();

        let mut access = server.access();
        access.branch = "device-7".to_owned();
        let error = mirror.fetch(&access).unwrap_err();
        assert!(
            matches!(error, SourceError::BranchNotFound { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("the repository {} has no branch device-7", server.url())
        );

        access.branch = "bad..name".to_owned();
        let error = mirror.fetch(&access).unwrap_err();
        assert!(
            matches!(error, SourceError::InvalidBranch { .. }),
            "{error:?}"
        );

        let mut access = server.access();
        access.url = format!("https://127.0.0.1:{}/elsewhere.git", server.port);
        let error = mirror.fetch(&access).unwrap_err();
        assert!(
            matches!(&error, SourceError::HttpStatus { status, .. } if status.starts_with("404")),
            "{error:?}"
        );
    }

    #[test]
    fn damaged_or_deleted_mirror_is_rebuilt() {
        let server = GitServer::start("basic");
        let tip = server.commit(&[("deployments/app.yaml", Some(APP))], "app");
        server.push("HEAD", "main");
        let dir = server.mirror_dir();
        let mut mirror = Mirror::open(&dir).unwrap();
        mirror.fetch(&server.access()).unwrap();

        // Deleted between fetches: rebuilt, and the same tip is no change.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            mirror.fetch(&server.access()).unwrap(),
            Fetched {
                tip: tip.clone(),
                changed: false
            }
        );
        assert_eq!(mirror.read_tree(&tip, 1 << 20).unwrap().len(), 1);

        // Object database removed between fetches.
        std::fs::remove_dir_all(dir.join("objects")).unwrap();
        assert_eq!(mirror.fetch(&server.access()).unwrap().tip, tip);
        assert_eq!(mirror.read_tree(&tip, 1 << 20).unwrap().len(), 1);

        // Packs removed, so the tip's objects are gone while the repository still opens.
        std::fs::remove_dir_all(dir.join("objects").join("pack")).unwrap();
        std::fs::create_dir(dir.join("objects").join("pack")).unwrap();
        assert_eq!(mirror.fetch(&server.access()).unwrap().tip, tip);
        assert_eq!(mirror.read_tree(&tip, 1 << 20).unwrap().len(), 1);

        // Garbage in HEAD: the next open rebuilds it.
        drop(mirror);
        std::fs::write(dir.join("HEAD"), "garbage\0\n").unwrap();
        let mut mirror = Mirror::open(&dir).unwrap();
        assert_eq!(mirror.tip(), None);
        assert_eq!(mirror.fetch(&server.access()).unwrap().tip, tip);
        assert_eq!(mirror.tip(), Some(tip));
    }

    #[test]
    fn a_directory_that_is_not_a_mirror_is_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious.txt");
        std::fs::write(&precious, "keep me").unwrap();
        let error = Mirror::open(dir.path()).unwrap_err();
        assert!(matches!(error, SourceError::Mirror { .. }), "{error:?}");
        assert!(error.to_string().contains("precious.txt"), "{error}");
        assert!(precious.is_file());

        // An empty directory becomes a mirror.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        Mirror::open(&empty).unwrap();
        assert!(empty.join("HEAD").is_file());
    }

    #[test]
    fn server_with_an_unknown_ca_is_refused() {
        let server = GitServer::start("basic");
        server.commit(&[("deployments/app.yaml", Some(APP))], "app");
        server.push("HEAD", "main");
        let other_ca = server.dir.path().join("other-ca.pem");
        std::fs::write(&other_ca, new_ca("another CA").pem()).unwrap();
        let mut access = server.access();
        access.ca = Some(other_ca);
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();
        let error = mirror.fetch(&access).unwrap_err();
        assert!(
            matches!(error, SourceError::Unreachable { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&server.url()), "{message}");
        assert!(message.to_lowercase().contains("certificate"), "{message}");
        assert!(server.requests().is_empty(), "no request passed TLS");

        let mut access = server.access();
        access.ca = Some(server.dir.path().join("password"));
        let error = mirror.fetch(&access).unwrap_err();
        assert!(matches!(error, SourceError::Tls(_)), "{error:?}");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, new_ca("unused CA").pem()).unwrap();
        let access = RepoAccess {
            url: format!("https://127.0.0.1:{port}/desired.git"),
            branch: "main".to_owned(),
            ca: Some(ca),
            auth: RepoAuth::None,
        };
        let mut mirror = Mirror::open(&dir.path().join("mirror")).unwrap();
        let error = mirror.fetch(&access).unwrap_err();
        assert!(
            matches!(error, SourceError::Unreachable { .. }),
            "{error:?}"
        );
        assert!(!error.is_auth() && !error.is_content());
        assert!(error.to_string().contains("branch main"), "{error}");
    }

    #[test]
    fn mutual_tls_sends_the_client_certificate() {
        let server = GitServer::start("mtls");
        let tip = server.commit(&[("deployments/app.yaml", Some(APP))], "app");
        server.push("HEAD", "main");
        let mut access = server.access();
        access.auth = RepoAuth::Mtls {
            cert: server.dir.path().join("client.pem"),
            key: server.dir.path().join("client.key"),
        };
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();
        assert_eq!(mirror.fetch(&access).unwrap().tip, tip);

        access.auth = RepoAuth::None;
        let error = mirror.fetch(&access).unwrap_err();
        assert!(
            matches!(error, SourceError::Unreachable { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn urls_with_credentials_are_refused_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut mirror = Mirror::open(&dir.path().join("mirror")).unwrap();
        let access = RepoAccess {
            url: "https://woa:hunter2@example.invalid/desired.git".to_owned(),
            branch: "main".to_owned(),
            ca: None,
            auth: RepoAuth::None,
        };
        let error = mirror.fetch(&access).unwrap_err();
        assert!(matches!(error, SourceError::InvalidUrl { .. }), "{error:?}");
        assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
        assert!(
            error
                .to_string()
                .contains("https://example.invalid/desired.git")
        );

        let access = RepoAccess {
            url: "http://example.invalid/desired.git".to_owned(),
            ..access
        };
        let error = mirror.fetch(&access).unwrap_err();
        assert!(error.to_string().contains("only https://"), "{error}");
        assert_eq!(
            without_credentials("https://a@b:c@host:443/x@y"),
            "https://host:443/x@y"
        );
    }

    #[test]
    fn mirror_can_move_to_a_blocking_thread() {
        fn send_and_sync<T: Send + Sync>() {}
        send_and_sync::<Mirror>();
        send_and_sync::<SourceError>();
    }
}
