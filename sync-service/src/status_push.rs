//! Publishing the device's current state to a status branch of its Git repository.
//!
//! gix cannot push, so this speaks the receive-pack protocol (smart HTTP, protocol v0) itself:
//! the objects are made with gix in a local bare repository that holds only the status branch,
//! the pack is written with `gix-pack` and the pkt-lines are encoded and decoded with
//! `gix-packetline`. The HTTP client uses the same TLS configuration and credentials as the
//! fetch of the desired state.
//!
//! A push only ever updates the one status branch, always with the commit it built on as the
//! expected old value, so it never overwrites what another writer pushed: when the branch
//! moved, the new tip is fetched and the commit is built again on top of it.
//!
//! Everything here is blocking; the caller runs it on a blocking thread.

use std::collections::{BTreeMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gix::ObjectId;
use gix::objs::tree::{Entry, EntryKind};
use gix_pack::data::output;
use gix_packetline::PacketLineRef;
use gix_packetline::blocking_io::encode as pkt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};

use crate::source::{
    MAX_PACKS, RepoAccess, SourceError, Target, client_builder, ensure_looks_like_a_mirror,
    mirror_error, open_options, open_or_rebuild, pack_count, read_tip, without_credentials,
};

/// The local ref that holds the status branch's tip as last fetched or pushed.
const STATUS_REF: &str = "refs/woa/status";

/// How often a push is attempted when the branch keeps moving under it.
const ATTEMPTS: u32 = 4;

/// The wait after the first rejected push; it grows linearly with each attempt.
const BACKOFF: Duration = Duration::from_millis(200);

/// The largest ref advertisement or push report read; a repository with this many refs is
/// not a device repository.
const MAX_RESPONSE: u64 = 16 << 20;

/// How many loose objects the local repository may hold before it is rebuilt. Every publish
/// adds a few (one commit, the changed trees and files) and gix cannot repack; a rebuilt
/// repository fetches the tip once and continues from there.
const MAX_LOOSE_OBJECTS: usize = 2_000;

/// Who makes the status commits.
const AUTHOR_NAME: &str = "woa-sync";
const AUTHOR_EMAIL: &str = "woa-sync@localhost";

/// The `agent` capability and the user agent of the push requests.
const AGENT: &str = concat!("woa-sync/", env!("CARGO_PKG_VERSION"));

/// The status branch of the device's repository: a directory in it holds the device's current
/// state, everything else on the branch belongs to others and is kept.
///
/// Like [`crate::source::Mirror`], only the local repository's directory is kept between
/// calls, so the value is `Send` and `Sync`.
pub struct StatusBranch {
    /// The local bare repository used only for the status branch.
    local_dir: PathBuf,
    /// The branch name, without `refs/heads/`.
    branch: String,
    /// The directory of the status files in the branch's tree, as path components.
    dir: Vec<String>,
    /// Runs before each push attempt (numbered from 1), so tests can move the branch between
    /// the fetch and the push.
    #[cfg(test)]
    before_push: Option<Box<dyn FnMut(u32) + Send + Sync>>,
}

impl std::fmt::Debug for StatusBranch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBranch")
            .field("local_dir", &self.local_dir)
            .field("branch", &self.branch)
            .field("dir", &self.dir.join("/"))
            .finish_non_exhaustive()
    }
}

/// What the server answered to the ref update.
#[derive(Debug)]
enum PushOutcome {
    /// The branch now points to the pushed commit.
    Updated,
    /// The server refused the update (`ng`), with its reason.
    Rejected(String),
}

impl StatusBranch {
    /// Opens (creating or rebuilding it like the desired-state mirror) the local repository at
    /// `local_dir`, for publishing into the directory `dir` (like `status`, or `a/b`) of the
    /// branch `branch`. The branch must be a valid, non-empty branch name and `dir` a plain
    /// relative path. Refusing the desired-state branch is the caller's job; [`publish`]
    /// refuses it too.
    ///
    /// [`publish`]: StatusBranch::publish
    pub fn open(local_dir: &Path, branch: &str, dir: &str) -> Result<Self, SourceError> {
        let invalid = |reason: &str| SourceError::InvalidStatusTarget {
            branch: branch.to_owned(),
            dir: dir.to_owned(),
            reason: reason.to_owned(),
        };
        if branch.is_empty()
            || gix::refs::FullName::try_from(format!("refs/heads/{branch}")).is_err()
        {
            return Err(invalid("the branch name is not valid"));
        }
        let components: Vec<String> = dir.split('/').map(ToOwned::to_owned).collect();
        if dir.is_empty() || !components.iter().all(|name| is_plain_name(name)) {
            return Err(invalid(
                "the directory must be a relative path of plain names, like \"status\"",
            ));
        }
        open_or_rebuild(local_dir, STATUS_REF)?;
        Ok(StatusBranch {
            local_dir: local_dir.to_owned(),
            branch: branch.to_owned(),
            dir: components,
            #[cfg(test)]
            before_push: None,
        })
    }

    /// Makes `<dir>/` on the remote branch hold exactly `files` (file name → content; names
    /// are plain file names like `3f2….json` or `device.json`), keeping every other path of the
    /// branch untouched. Builds on the remote's current tip (an absent branch gives a root
    /// commit). If the resulting tree equals the tip's tree, nothing is pushed and the result
    /// is `Ok(None)`. Otherwise commits with `message` and pushes with the tip as the expected
    /// old value; when the branch moved meanwhile, builds again on the new tip and retries a
    /// few times. Never forces and never touches another ref. Returns the pushed commit id
    /// (hex).
    ///
    /// `access` is the desired-state repository access; its branch is only used to refuse
    /// writing the status there.
    pub fn publish(
        &mut self,
        access: &RepoAccess,
        files: &BTreeMap<String, Vec<u8>>,
        message: &str,
    ) -> Result<Option<String>, SourceError> {
        let invalid = |reason: String| SourceError::InvalidStatusTarget {
            branch: self.branch.clone(),
            dir: self.dir.join("/"),
            reason,
        };
        if access.branch == self.branch {
            return Err(invalid(
                "it is the desired-state branch, which is never written".to_owned(),
            ));
        }
        if let Some(name) = files.keys().find(|name| !is_plain_name(name)) {
            return Err(invalid(format!("{name:?} is not a plain file name")));
        }
        let status_access = RepoAccess {
            branch: self.branch.clone(),
            ..access.clone()
        };
        // Checks the URL (https, no credentials in it) and the branch before anything is sent.
        let target = Target::new(&status_access, STATUS_REF)?;
        let remote = Remote::new(&status_access)?;
        self.compact_if_needed()?;

        // The commit a rejected push built on, and the server's reason.
        let mut rejected: Option<(Option<ObjectId>, String)> = None;
        for attempt in 1..=ATTEMPTS {
            let remote_tip = match remote.advertised_tip() {
                Ok(tip) => tip,
                Err(error @ SourceError::WriteDenied { .. }) => {
                    // Tell refused writing from refused access: if reading fails too, that
                    // error says more (like wrong credentials).
                    let repo = open_or_rebuild(&self.local_dir, STATUS_REF)?;
                    return match target.fetch_into(&repo, &self.local_dir) {
                        Ok(_) | Err(SourceError::BranchNotFound { .. }) => Err(error),
                        Err(read_error) => Err(read_error),
                    };
                }
                Err(error) => return Err(error),
            };
            if let Some((built_on, reason)) = rejected.take()
                && built_on == remote_tip
            {
                // The branch did not move, so trying again would be refused again.
                return Err(remote.refused(reason));
            }

            let parent = self.fetch_tip(&target, remote_tip)?;
            let repo = gix::open_opts(&self.local_dir, open_options())
                .map_err(|err| mirror_error(&self.local_dir, format!("{err:#}")))?;
            let Some((commit, pack)) = self.build(&repo, parent, files, message)? else {
                return Ok(None);
            };
            #[cfg(test)]
            if let Some(hook) = self.before_push.as_mut() {
                hook(attempt);
            }
            match remote.push(parent, commit, &pack)? {
                PushOutcome::Updated => {
                    // The next publish then finds the tip locally and fetches nothing.
                    repo.reference(
                        STATUS_REF,
                        commit,
                        gix::refs::transaction::PreviousValue::Any,
                        "pushed the status",
                    )
                    .map_err(|err| mirror_error(&self.local_dir, format!("{err:#}")))?;
                    return Ok(Some(commit.to_hex().to_string()));
                }
                PushOutcome::Rejected(reason) => {
                    tracing::debug!(branch = %self.branch, attempt, %reason, "status push rejected");
                    rejected = Some((parent, reason));
                    if attempt < ATTEMPTS {
                        std::thread::sleep(BACKOFF * attempt);
                    }
                }
            }
        }
        let reason = rejected.map(|(_, reason)| reason).unwrap_or_default();
        Err(remote.refused(format!(
            "{reason}; the branch kept moving during {ATTEMPTS} attempts"
        )))
    }

    /// Makes sure the local repository holds `remote_tip` (fetching it if not), and returns
    /// the commit to build on: the remote's tip, or none for an absent branch.
    fn fetch_tip(
        &self,
        target: &Target<'_>,
        remote_tip: Option<ObjectId>,
    ) -> Result<Option<ObjectId>, SourceError> {
        let repo = open_or_rebuild(&self.local_dir, STATUS_REF)?;
        let Some(remote_tip) = remote_tip else {
            return Ok(None);
        };
        // `open_or_rebuild` checked that the local tip's commit and tree can be read.
        if read_tip(&repo, STATUS_REF) == Some(remote_tip.to_hex().to_string()) {
            return Ok(Some(remote_tip));
        }
        match target.fetch_into(&repo, &self.local_dir) {
            // The branch may have moved since the advertisement; the server then refuses the
            // push and the next attempt builds on the newer tip.
            Ok(tip) => ObjectId::from_hex(tip.as_bytes())
                .map(Some)
                .map_err(|err| mirror_error(&self.local_dir, err)),
            // Deleted since the advertisement: build a root commit, as for a new branch.
            Err(SourceError::BranchNotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes the files, the trees and the commit on `parent` into the local repository, and
    /// packs what the server does not have yet. `None` if the tree would not change.
    fn build(
        &self,
        repo: &gix::Repository,
        parent: Option<ObjectId>,
        files: &BTreeMap<String, Vec<u8>>,
        message: &str,
    ) -> Result<Option<(ObjectId, Vec<u8>)>, SourceError> {
        let failed = |cause: String| mirror_error(&self.local_dir, cause);
        let old_tree = parent
            .map(|parent| {
                repo.find_commit(parent)
                    .and_then(|commit| commit.tree_id())
                    .map(gix::Id::detach)
            })
            .transpose()
            .map_err(|err| failed(format!("cannot read the tip: {err:#}")))?;
        let new_tree = match rebuild_tree(repo, old_tree, &self.dir, files)
            .map_err(|err| failed(format!("cannot write the status tree: {err:#}")))?
        {
            Some(tree) => tree,
            None if parent.is_none() => return Ok(None),
            None => repo
                .write_object(gix::objs::Tree::empty())
                .map(gix::Id::detach)
                .map_err(|err| failed(format!("cannot write the empty tree: {err:#}")))?,
        };
        if old_tree == Some(new_tree) {
            return Ok(None);
        }

        let signature = gix::actor::Signature {
            name: AUTHOR_NAME.into(),
            email: AUTHOR_EMAIL.into(),
            time: gix::date::Time::now_utc(),
        };
        let mut message = message.to_owned();
        if !message.ends_with('\n') {
            message.push('\n');
        }
        let commit = gix::objs::Commit {
            tree: new_tree,
            parents: parent.into_iter().collect(),
            author: signature.clone(),
            committer: signature,
            encoding: None,
            message: message.into(),
            extra_headers: Vec::new(),
        };
        let commit = repo
            .write_object(&commit)
            .map(gix::Id::detach)
            .map_err(|err| failed(format!("cannot write the commit: {err:#}")))?;

        let mut on_server = HashSet::new();
        if let Some(old_tree) = old_tree {
            collect_tree(
                repo,
                old_tree,
                &HashSet::new(),
                &mut on_server,
                &mut Vec::new(),
            )
            .map_err(|err| failed(format!("cannot read the tip's tree: {err:#}")))?;
        }
        let mut objects = vec![commit];
        let mut seen = HashSet::new();
        collect_tree(repo, new_tree, &on_server, &mut seen, &mut objects)
            .map_err(|err| failed(format!("cannot read the new tree: {err:#}")))?;
        let pack = write_pack(repo, &objects)
            .map_err(|err| failed(format!("cannot write the pack: {err:#}")))?;
        Ok(Some((commit, pack)))
    }

    /// Our own commits are loose objects, and gix cannot repack: past a bound the local
    /// repository is deleted and rebuilt, after which the tip is fetched once.
    fn compact_if_needed(&self) -> Result<(), SourceError> {
        if loose_object_count(&self.local_dir) <= MAX_LOOSE_OBJECTS
            && pack_count(&self.local_dir) <= MAX_PACKS
        {
            return Ok(());
        }
        ensure_looks_like_a_mirror(&self.local_dir)?;
        std::fs::remove_dir_all(&self.local_dir)
            .map_err(|err| mirror_error(&self.local_dir, format!("cannot remove it: {err}")))?;
        open_or_rebuild(&self.local_dir, STATUS_REF)?;
        tracing::info!(dir = %self.local_dir.display(), "rebuilt the local status repository");
        Ok(())
    }
}

/// A name that can be one path component in a Git tree that `git fsck --strict` accepts.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.eq_ignore_ascii_case(".git")
        && !name.contains(['/', '\\', '\0'])
}

/// The tree `base` (none: empty) with the directory at `path` holding exactly `files`, written
/// into `repo`. `None` if the result is empty, as Git keeps no empty directories.
fn rebuild_tree(
    repo: &gix::Repository,
    base: Option<ObjectId>,
    path: &[String],
    files: &BTreeMap<String, Vec<u8>>,
) -> gix::Result<Option<ObjectId>> {
    let mut entries = Vec::new();
    match path.split_first() {
        None => {
            for (name, content) in files {
                entries.push(Entry {
                    mode: EntryKind::Blob.into(),
                    filename: name.as_str().into(),
                    oid: repo.write_blob(content)?.detach(),
                });
            }
        }
        Some((name, rest)) => {
            if let Some(base) = base {
                entries = gix::objs::Tree::try_from(repo.find_tree(base)?)?.entries;
            }
            // Whatever is at `name` now (a directory, or a file in the way) is replaced.
            let existing = entries
                .iter()
                .position(|entry| entry.filename == name.as_str());
            let child_base = existing
                .map(|index| entries.remove(index))
                .filter(|entry| entry.mode.is_tree())
                .map(|entry| entry.oid);
            if let Some(child) = rebuild_tree(repo, child_base, rest, files)? {
                entries.push(Entry {
                    mode: EntryKind::Tree.into(),
                    filename: name.as_str().into(),
                    oid: child,
                });
            }
        }
    }
    if entries.is_empty() {
        return Ok(None);
    }
    // Git's tree order, which sorts directories as if their name ended with '/'.
    entries.sort();
    Ok(Some(
        repo.write_object(gix::objs::Tree { entries })?.detach(),
    ))
}

/// Adds `tree` and everything below it to `objects` (trees before their entries), leaving out
/// whatever is in `skip` or already in `seen`. Submodule entries are not objects of this
/// repository and are left out.
fn collect_tree(
    repo: &gix::Repository,
    tree: ObjectId,
    skip: &HashSet<ObjectId>,
    seen: &mut HashSet<ObjectId>,
    objects: &mut Vec<ObjectId>,
) -> gix::Result<()> {
    if skip.contains(&tree) || !seen.insert(tree) {
        return Ok(());
    }
    objects.push(tree);
    let entries = gix::objs::Tree::try_from(repo.find_tree(tree)?)?.entries;
    for entry in entries {
        if entry.mode.is_tree() {
            collect_tree(repo, entry.oid, skip, seen, objects)?;
        } else if !entry.mode.is_commit() && !skip.contains(&entry.oid) && seen.insert(entry.oid) {
            objects.push(entry.oid);
        }
    }
    Ok(())
}

/// A version 2 pack of `objects`, all stored whole: they are few and small, and a pack
/// without deltas is never thin, whatever the server has.
fn write_pack(repo: &gix::Repository, objects: &[ObjectId]) -> gix::Result<Vec<u8>> {
    let object_hash = repo.object_hash();
    let mut entries = Vec::with_capacity(objects.len());
    for id in objects {
        let object = repo.find_object(*id)?;
        let count = output::Count::from_data(*id, None);
        entries.push(output::Entry::from_data(
            &count,
            &gix::objs::Data::new(&object.data, object.kind, object_hash),
            gix::zlib::Compression::DEFAULT,
        )?);
    }
    let num_entries = u32::try_from(entries.len())
        .map_err(|_| gix::error::message("too many objects for one pack"))?;
    let mut pack = Vec::new();
    let writer = output::bytes::FromEntriesIter::new(
        std::iter::once(Ok::<_, gix::Error>(entries)),
        &mut pack,
        num_entries,
        gix_pack::data::Version::V2,
        object_hash,
    );
    for written in writer {
        written?;
    }
    Ok(pack)
}

/// The loose objects in the repository at `dir` (in `objects/xx/`).
fn loose_object_count(dir: &Path) -> usize {
    let Ok(fanout) = std::fs::read_dir(dir.join("objects")) else {
        return 0;
    };
    fanout
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            name.len() == 2
                && name
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit())
        })
        .filter_map(|entry| std::fs::read_dir(entry.path()).ok())
        .map(Iterator::count)
        .sum()
}

/// The receive-pack service of the repository, over smart HTTP.
struct Remote {
    client: reqwest::blocking::Client,
    /// The repository URL without a trailing slash.
    base: String,
    /// The URL without credentials, for errors.
    display_url: String,
    branch: String,
    /// The full name of the status branch.
    ref_name: String,
    object_hash: gix::hash::Kind,
}

impl Remote {
    /// A client with the same TLS configuration and credentials as the fetch. Secret files
    /// are read here, at every publish, so rotated ones apply.
    fn new(access: &RepoAccess) -> Result<Remote, SourceError> {
        let display_url = without_credentials(&access.url);
        let client = client_builder(access)?
            // A redirected POST would lose its body, and credentials must not follow a
            // redirect to somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| SourceError::Push {
                url: display_url.clone(),
                branch: access.branch.clone(),
                cause: woa_common::chain(&err),
            })?;
        Ok(Remote {
            client,
            base: access.url.trim_end_matches('/').to_owned(),
            display_url,
            branch: access.branch.clone(),
            ref_name: format!("refs/heads/{}", access.branch),
            object_hash: gix::hash::Kind::Sha1,
        })
    }

    fn failed(&self, cause: impl Into<String>) -> SourceError {
        SourceError::Push {
            url: self.display_url.clone(),
            branch: self.branch.clone(),
            cause: cause.into(),
        }
    }

    fn refused(&self, reason: String) -> SourceError {
        SourceError::PushRefused {
            url: self.display_url.clone(),
            branch: self.branch.clone(),
            reason,
        }
    }

    /// Sends `request` and reads the body of a successful answer of `content_type`.
    fn exchange(
        &self,
        request: reqwest::blocking::RequestBuilder,
        content_type: &str,
    ) -> Result<Vec<u8>, SourceError> {
        let response = request.send().map_err(|err| {
            if err.is_connect() || err.is_timeout() || err.is_request() {
                SourceError::Unreachable {
                    url: self.display_url.clone(),
                    branch: self.branch.clone(),
                    cause: woa_common::chain(&err),
                }
            } else {
                self.failed(woa_common::chain(&err))
            }
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(SourceError::WriteDenied {
                url: self.display_url.clone(),
                branch: self.branch.clone(),
                status: status.as_u16(),
            });
        }
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .map(without_credentials)
                .unwrap_or_default();
            return Err(self.failed(format!(
                "the server redirects the push to {location:?} (HTTP {}); configure that repository URL",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(SourceError::HttpStatus {
                url: self.display_url.clone(),
                branch: self.branch.clone(),
                status: status.to_string(),
                retry_after: crate::retry::retry_after(status, response.headers()),
            });
        }
        let answered = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // Only the media type counts: `; charset=…` and the like may follow it.
        let media_type = answered.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case(content_type) {
            return Err(self.failed(format!(
                "the server answered {answered:?} instead of {content_type:?}; it does not offer pushing over the smart HTTP protocol"
            )));
        }
        let mut body = Vec::new();
        response
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut body)
            .map_err(|err| self.failed(format!("cannot read the answer: {err}")))?;
        if body.len() as u64 > MAX_RESPONSE {
            return Err(self.failed(format!("the answer is larger than {MAX_RESPONSE} bytes")));
        }
        Ok(body)
    }

    /// The status branch's tip as the receive-pack service advertises it; none if absent.
    fn advertised_tip(&self) -> Result<Option<ObjectId>, SourceError> {
        let body = self.exchange(
            self.client
                .get(format!("{}/info/refs?service=git-receive-pack", self.base)),
            "application/x-git-receive-pack-advertisement",
        )?;
        let advertisement = parse_advertisement(&body, &self.ref_name, self.object_hash)
            .map_err(|cause| self.failed(cause))?;
        if !advertisement
            .capabilities
            .iter()
            .any(|capability| capability == "report-status")
        {
            return Err(self.failed(
                "the server does not offer report-status, so the outcome of a push could not be known",
            ));
        }
        Ok(advertisement.tip)
    }

    /// Asks the server to move the branch from `old` (none: create it) to `new`, sending
    /// `pack` with the objects it lacks.
    fn push(
        &self,
        old: Option<ObjectId>,
        new: ObjectId,
        pack: &[u8],
    ) -> Result<PushOutcome, SourceError> {
        let old = old.unwrap_or_else(|| self.object_hash.null());
        let command = format!(
            "{old} {new} {}\0report-status agent={AGENT}\n",
            self.ref_name
        );
        let mut body = Vec::with_capacity(command.len() + 8 + pack.len());
        pkt::data_to_write(command.as_bytes(), &mut body)
            .and_then(|_| pkt::flush_to_write(&mut body))
            .map_err(|err| self.failed(format!("cannot encode the command: {err}")))?;
        body.extend_from_slice(pack);
        let answer = self.exchange(
            self.client
                .post(format!("{}/git-receive-pack", self.base))
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-git-receive-pack-request"),
                )
                .header(
                    ACCEPT,
                    HeaderValue::from_static("application/x-git-receive-pack-result"),
                )
                .body(body),
            "application/x-git-receive-pack-result",
        )?;
        parse_report(&answer, &self.ref_name).map_err(|cause| self.failed(cause))
    }
}

/// What the receive-pack service advertises that a push needs.
#[derive(Debug, PartialEq, Eq)]
struct Advertisement {
    /// The tip of the wanted ref, none if the server does not have it.
    tip: Option<ObjectId>,
    /// The capabilities, like `report-status` or `agent=git/2.43.0`.
    capabilities: Vec<String>,
}

/// The pkt-lines of `body`: `Some(data)` for a data line, `None` for a flush.
fn pkt_lines(body: &[u8]) -> Result<Vec<Option<&[u8]>>, String> {
    let mut lines = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        match gix_packetline::decode::streaming(rest).map_err(|err| format!("{err:#}"))? {
            gix_packetline::decode::Stream::Complete {
                line,
                bytes_consumed,
            } => {
                lines.push(match line {
                    PacketLineRef::Data(data) => {
                        if let Some(error) = line.check_error() {
                            return Err(format!(
                                "the server reported an error: {}",
                                String::from_utf8_lossy(error.0).trim_end()
                            ));
                        }
                        Some(data)
                    }
                    PacketLineRef::Flush => None,
                    PacketLineRef::Delimiter | PacketLineRef::ResponseEnd => {
                        return Err("unexpected protocol v2 packet in a v0 answer".to_owned());
                    }
                });
                rest = &rest[bytes_consumed..];
            }
            gix_packetline::decode::Stream::Incomplete { .. } => {
                return Err("the answer ends in the middle of a packet".to_owned());
            }
        }
    }
    Ok(lines)
}

/// Parses the answer to `GET info/refs?service=git-receive-pack` (protocol v0): an optional
/// `# service=git-receive-pack` line and flush, then `<oid> <ref>\0<capabilities>` and one
/// `<oid> <ref>` per further ref, then a flush. An empty repository advertises
/// `<zero-id> capabilities^{}` instead of refs.
fn parse_advertisement(
    body: &[u8],
    wanted: &str,
    object_hash: gix::hash::Kind,
) -> Result<Advertisement, String> {
    let mut lines = pkt_lines(body)?.into_iter().peekable();
    if let Some(Some(first)) = lines.peek()
        && first.starts_with(b"# service=")
    {
        if trim_newline(first) != b"# service=git-receive-pack" {
            return Err(format!(
                "the server announced {:?} instead of git-receive-pack",
                String::from_utf8_lossy(trim_newline(first))
            ));
        }
        lines.next();
        if lines.next() != Some(None) {
            return Err("no flush after the service announcement".to_owned());
        }
    }
    let mut advertisement = Advertisement {
        tip: None,
        capabilities: Vec::new(),
    };
    let mut first = true;
    let mut flushed = false;
    for line in lines {
        let Some(line) = line else {
            flushed = true;
            break;
        };
        let line = trim_newline(line);
        if !first && line.starts_with(b"shallow ") {
            // A shallow server repository lists its shallow commits after the refs.
            continue;
        }
        let (reference, capabilities) = match line.iter().position(|&b| b == 0) {
            Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
            None => (line, None),
        };
        if first {
            if reference.starts_with(b"version ") {
                return Err(format!(
                    "the server answered with protocol {}, expected version 0",
                    String::from_utf8_lossy(reference)
                ));
            }
            let capabilities = capabilities.ok_or("the first ref carries no capabilities")?;
            advertisement.capabilities = String::from_utf8_lossy(capabilities)
                .split(' ')
                .filter(|capability| !capability.is_empty())
                .map(ToOwned::to_owned)
                .collect();
            first = false;
        }
        let text = std::str::from_utf8(reference).map_err(|_| "a ref line is not UTF-8")?;
        let (id, name) = text
            .split_once(' ')
            .ok_or_else(|| format!("malformed ref line {text:?}"))?;
        let id = ObjectId::from_hex(id.as_bytes())
            .map_err(|_| format!("malformed object id in the ref line {text:?}"))?;
        if id.kind() != object_hash {
            return Err(format!(
                "the repository uses {} object ids, only {object_hash} is supported",
                id.kind()
            ));
        }
        if name == wanted {
            advertisement.tip = Some(id);
        }
    }
    if first {
        return Err("the server advertised no refs and no capabilities".to_owned());
    }
    if !flushed {
        // Cut short: a missing ref would look like an absent branch.
        return Err("the ref advertisement ends without a flush".to_owned());
    }
    if let Some(format) = advertisement
        .capabilities
        .iter()
        .find_map(|capability| capability.strip_prefix("object-format="))
        && format != object_hash.to_string()
    {
        return Err(format!(
            "the repository uses {format} object ids, only {object_hash} is supported"
        ));
    }
    Ok(advertisement)
}

/// Parses the `report-status` answer to a push of the single ref `wanted`: `unpack ok`, then
/// `ok <ref>` or `ng <ref> <reason>`, then a flush.
fn parse_report(body: &[u8], wanted: &str) -> Result<PushOutcome, String> {
    let lines = pkt_lines(body)?;
    let mut lines = lines.into_iter().map_while(|line| line.map(trim_newline));
    let unpack = lines
        .next()
        .ok_or("the server sent no report on the push")?;
    let unpack = String::from_utf8_lossy(unpack);
    match unpack.strip_prefix("unpack ") {
        Some("ok") => {}
        Some(problem) => return Err(format!("the server could not unpack the pack: {problem}")),
        None => return Err(format!("unexpected report line {unpack:?}")),
    }
    for line in lines {
        let line = String::from_utf8_lossy(line);
        if let Some(name) = line.strip_prefix("ok ")
            && name == wanted
        {
            return Ok(PushOutcome::Updated);
        }
        if let Some(rest) = line.strip_prefix("ng ")
            && let Some((name, reason)) = rest.split_once(' ')
            && name == wanted
        {
            return Ok(PushOutcome::Rejected(reason.to_owned()));
        }
    }
    Err(format!("the server's report does not mention {wanted}"))
}

fn trim_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;
    use crate::source::{Mirror, RepoAuth};
    use crate::testserver::{GitServer, git};
    use std::sync::{Arc, Mutex};

    const BRANCH: &str = "woa/status";

    fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(name, content)| (name.to_string(), content.as_bytes().to_vec()))
            .collect()
    }

    /// A server with a desired-state commit on `main`, accepting pushes.
    fn server() -> (GitServer, String) {
        let server = GitServer::start("basic");
        let main = server.commit(&[("deployments/app.yaml", Some("kind: App\n"))], "app");
        server.push("HEAD", "main");
        server.allow_push(true);
        (server, main)
    }

    fn status(server: &GitServer) -> StatusBranch {
        let dir = server.dir.path().join("state").join("status.git");
        StatusBranch::open(&dir, BRANCH, "status").unwrap()
    }

    /// `rev` resolved in the served repository.
    fn rev(server: &GitServer, rev: &str) -> String {
        git(&server.bare(), &["rev-parse", "--verify", "-q", rev])
    }

    /// The files on the branch as the git CLI sees them: path → exact content.
    fn branch_files(server: &GitServer) -> BTreeMap<String, Vec<u8>> {
        let paths = git(
            &server.bare(),
            &[
                "ls-tree",
                "-r",
                "--name-only",
                &format!("refs/heads/{BRANCH}"),
            ],
        );
        paths
            .lines()
            .map(|path| {
                // Not through `git()`, which trims the output.
                let output = std::process::Command::new("git")
                    .current_dir(server.bare())
                    .args(["cat-file", "blob", &format!("refs/heads/{BRANCH}:{path}")])
                    .output()
                    .unwrap();
                assert!(output.status.success());
                (path.to_owned(), output.stdout)
            })
            .collect()
    }

    /// The parents of `commit` in the served repository.
    fn parents(server: &GitServer, commit: &str) -> Vec<String> {
        git(&server.bare(), &["rev-list", "--parents", "-n1", commit])
            .split(' ')
            .skip(1)
            .map(ToOwned::to_owned)
            .collect()
    }

    /// Commits `files` on the status branch with the git CLI, as another writer would.
    fn commit_on_branch(server: &GitServer, name: &str, files: &[(&str, &str)]) -> String {
        let clone = server.dir.path().join(name);
        if clone.exists() {
            std::fs::remove_dir_all(&clone).unwrap();
        }
        git(
            server.dir.path(),
            &["clone", "-q", server.bare().to_str().unwrap(), name],
        );
        let exists = !git(&clone, &["ls-remote", "origin", BRANCH]).is_empty();
        if exists {
            git(&clone, &["checkout", "-q", BRANCH]);
        } else {
            git(&clone, &["checkout", "-q", "--orphan", BRANCH]);
            git(&clone, &["rm", "-q", "-rf", "--ignore-unmatch", "."]);
        }
        for (path, content) in files {
            let file = clone.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        git(&clone, &["add", "-A"]);
        git(&clone, &["commit", "-q", "-m", name]);
        // Not forced: fails if the branch moved meanwhile.
        git(
            &clone,
            &["push", "-q", "origin", &format!("HEAD:refs/heads/{BRANCH}")],
        );
        git(&clone, &["rev-parse", "HEAD"])
    }

    #[test]
    fn first_publish_creates_the_branch() {
        let (server, _) = server();
        let mut status = status(&server);
        let published = files(&[
            ("3f2a.json", "{\"state\":\"RUNNING\"}\n"),
            ("device.json", "{\"capabilities\":{}}\n"),
        ]);
        let commit = status
            .publish(&server.access(), &published, "status of 2 deployments")
            .unwrap()
            .unwrap();
        assert_eq!(rev(&server, &format!("refs/heads/{BRANCH}")), commit);
        assert_eq!(
            git(&server.bare(), &["rev-list", "--count", &commit]),
            "1",
            "a root commit"
        );
        assert_eq!(
            git(
                &server.bare(),
                &["log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", &commit]
            ),
            "woa-sync <woa-sync@localhost>|woa-sync <woa-sync@localhost>|status of 2 deployments"
        );
        git(&server.bare(), &["fsck", "--strict", "--no-dangling"]);

        // A plain clone of the branch holds exactly the files.
        git(
            server.dir.path(),
            &[
                "clone",
                "-q",
                "-b",
                BRANCH,
                server.bare().to_str().unwrap(),
                "check",
            ],
        );
        let checkout = server.dir.path().join("check");
        assert_eq!(
            std::fs::read(checkout.join("status/3f2a.json")).unwrap(),
            b"{\"state\":\"RUNNING\"}\n"
        );
        assert_eq!(
            std::fs::read(checkout.join("status/device.json")).unwrap(),
            b"{\"capabilities\":{}}\n"
        );
        assert_eq!(
            git(&checkout, &["ls-files"]),
            "status/3f2a.json\nstatus/device.json"
        );

        // The branch was absent: no fetch, one advertisement and one push.
        let requests = server.requests();
        assert_eq!(
            requests,
            [
                "GET /desired.git/info/refs receive-pack",
                "POST /desired.git/git-receive-pack"
            ],
            "{requests:?}"
        );
    }

    #[test]
    fn publishing_changes_only_what_changed() {
        let (server, _) = server();
        let mut status = status(&server);
        let mut published = files(&[("a.json", "1\n"), ("b.json", "2\n"), ("device.json", "d\n")]);
        let first = status
            .publish(&server.access(), &published, "first")
            .unwrap()
            .unwrap();

        // The same files again: nothing is committed, only the refs are listed.
        let before = server.requests().len();
        assert_eq!(
            status
                .publish(&server.access(), &published, "again")
                .unwrap(),
            None
        );
        assert_eq!(rev(&server, &format!("refs/heads/{BRANCH}")), first);
        assert_eq!(
            server.requests()[before..],
            ["GET /desired.git/info/refs receive-pack"]
        );

        // One file changes: one commit on top of the previous one, without a fetch.
        published.insert("b.json".to_owned(), b"22\n".to_vec());
        let before_traffic = server.traffic().len();
        let second = status
            .publish(&server.access(), &published, "second")
            .unwrap()
            .unwrap();
        assert_eq!(rev(&server, &format!("refs/heads/{BRANCH}")), second);
        assert_eq!(parents(&server, &second), [first.as_str()]);
        assert_eq!(branch_files(&server)["status/b.json"], b"22\n");
        let push = server.traffic()[before_traffic..].to_vec();
        assert_eq!(
            push.iter()
                .map(|(line, ..)| line.as_str())
                .collect::<Vec<_>>(),
            [
                "GET /desired.git/info/refs receive-pack",
                "POST /desired.git/git-receive-pack"
            ]
        );
        let (sent, received): (usize, usize) =
            push.iter().fold((0, 0), |(sent, received), (_, up, down)| {
                (sent + up, received + down)
            });
        eprintln!(
            "one status push of one changed file: {} requests, {sent} bytes sent, {received} bytes received (bodies)",
            push.len()
        );
        // The pack holds the commit, the root tree, the status tree and the one new file.
        assert!(sent < 1_000, "{sent} bytes sent");

        // A file left out is deleted from the branch.
        published.remove("a.json");
        let third = status
            .publish(&server.access(), &published, "third")
            .unwrap()
            .unwrap();
        assert_eq!(parents(&server, &third), [second.as_str()]);
        assert_eq!(
            branch_files(&server),
            files(&[("status/b.json", "22\n"), ("status/device.json", "d\n")])
        );

        // No files at all: the directory goes away, the branch stays.
        let fourth = status
            .publish(&server.access(), &BTreeMap::new(), "nothing")
            .unwrap()
            .unwrap();
        assert_eq!(parents(&server, &fourth), [third.as_str()]);
        assert!(branch_files(&server).is_empty());
        git(&server.bare(), &["fsck", "--strict", "--no-dangling"]);

        // A fresh local repository (as after a lost state directory) fetches the tip and
        // builds on it.
        let mut fresh =
            StatusBranch::open(&server.dir.path().join("fresh.git"), BRANCH, "status").unwrap();
        let fifth = fresh
            .publish(&server.access(), &files(&[("x.json", "x\n")]), "fresh")
            .unwrap()
            .unwrap();
        assert_eq!(parents(&server, &fifth), [fourth.as_str()]);
        assert_eq!(branch_files(&server), files(&[("status/x.json", "x\n")]));
    }

    #[test]
    fn other_paths_on_the_branch_are_kept() {
        let (server, _) = server();
        // Someone else made the branch, with a README and a stale status file.
        let theirs = commit_on_branch(
            &server,
            "theirs",
            &[
                ("README.md", "status of the device\n"),
                ("status/stale.json", "old\n"),
                ("other/notes.txt", "keep\n"),
                ("status.txt", "a file next to the directory\n"),
            ],
        );
        let mut status = status(&server);
        let ours = status
            .publish(&server.access(), &files(&[("a.json", "1\n")]), "ours")
            .unwrap()
            .unwrap();
        assert_eq!(parents(&server, &ours), [theirs.as_str()]);
        assert_eq!(
            branch_files(&server),
            files(&[
                ("README.md", "status of the device\n"),
                ("other/notes.txt", "keep\n"),
                ("status.txt", "a file next to the directory\n"),
                ("status/a.json", "1\n"),
            ])
        );

        // They change the README; our next publish keeps it.
        let readme = commit_on_branch(&server, "readme", &[("README.md", "v2\n")]);
        let again = status
            .publish(&server.access(), &files(&[("a.json", "2\n")]), "ours again")
            .unwrap()
            .unwrap();
        assert_eq!(parents(&server, &again), [readme.as_str()]);
        assert_eq!(branch_files(&server)["README.md"], b"v2\n");
        assert_eq!(branch_files(&server)["status/a.json"], b"2\n");
        git(&server.bare(), &["fsck", "--strict", "--no-dangling"]);
    }

    #[test]
    fn a_concurrent_writer_is_built_upon_never_overwritten() {
        let (server, _) = server();
        let mut status = status(&server);
        let first = status
            .publish(&server.access(), &files(&[("a.json", "1\n")]), "first")
            .unwrap()
            .unwrap();

        // Another writer pushes after our fetch, right before our push.
        let theirs = Arc::new(Mutex::new(None));
        let (bare, dir) = (server.bare(), server.dir.path().to_owned());
        status.before_push = Some(Box::new({
            let theirs = theirs.clone();
            move |attempt| {
                if attempt == 1 {
                    let clone = dir.join("racer");
                    git(
                        &dir,
                        &["clone", "-q", "-b", BRANCH, bare.to_str().unwrap(), "racer"],
                    );
                    std::fs::write(clone.join("README.md"), "racing\n").unwrap();
                    git(&clone, &["add", "-A"]);
                    git(&clone, &["commit", "-q", "-m", "racer"]);
                    git(&clone, &["push", "-q", "origin", "HEAD"]);
                    *theirs.lock().unwrap() = Some(git(&clone, &["rev-parse", "HEAD"]));
                }
            }
        }));
        let before = server.requests().len();
        let ours = status
            .publish(&server.access(), &files(&[("a.json", "2\n")]), "second")
            .unwrap()
            .unwrap();
        let theirs = theirs.lock().unwrap().clone().unwrap();
        assert_eq!(rev(&server, &format!("refs/heads/{BRANCH}")), ours);
        assert_eq!(parents(&server, &ours), [theirs.as_str()], "ours on top");
        assert_eq!(parents(&server, &theirs), [first.as_str()]);
        assert_eq!(
            branch_files(&server),
            files(&[("README.md", "racing\n"), ("status/a.json", "2\n")])
        );
        let pushes = server.requests()[before..]
            .iter()
            .filter(|line| *line == "POST /desired.git/git-receive-pack")
            .count();
        assert_eq!(
            pushes, 2,
            "the first push was refused, the second built on theirs"
        );
        git(&server.bare(), &["fsck", "--strict", "--no-dangling"]);
    }

    #[test]
    fn a_branch_that_keeps_moving_ends_in_a_refusal() {
        let (server, _) = server();
        let mut status = status(&server);
        status
            .publish(&server.access(), &files(&[("a.json", "1\n")]), "first")
            .unwrap()
            .unwrap();
        let (bare, dir) = (server.bare(), server.dir.path().to_owned());
        status.before_push = Some(Box::new(move |attempt| {
            let name = format!("racer-{attempt}");
            git(
                &dir,
                &["clone", "-q", "-b", BRANCH, bare.to_str().unwrap(), &name],
            );
            let clone = dir.join(&name);
            std::fs::write(clone.join("README.md"), &name).unwrap();
            git(&clone, &["add", "-A"]);
            git(&clone, &["commit", "-q", "-m", &name]);
            git(&clone, &["push", "-q", "origin", "HEAD"]);
        }));
        let error = status
            .publish(&server.access(), &files(&[("a.json", "2\n")]), "second")
            .unwrap_err();
        assert!(
            matches!(error, SourceError::PushRefused { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("kept moving"), "{error}");
        assert_eq!(branch_files(&server)["README.md"], b"racer-4");
        assert_eq!(branch_files(&server)["status/a.json"], b"1\n");
    }

    #[test]
    fn a_refusal_without_a_race_is_not_retried() {
        let (server, _) = server();
        let hook = server.bare().join("hooks").join("pre-receive");
        std::fs::write(&hook, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut status = status(&server);
        let error = status
            .publish(&server.access(), &files(&[("a.json", "1\n")]), "x")
            .unwrap_err();
        assert!(
            matches!(&error, SourceError::PushRefused { reason, .. } if reason.contains("hook declined")),
            "{error:?}"
        );
        assert!(!error.is_auth());
        let pushes = server
            .requests()
            .iter()
            .filter(|line| *line == "POST /desired.git/git-receive-pack")
            .count();
        assert_eq!(pushes, 1, "the branch did not move, so no retry");
        assert_eq!(
            git(&server.bare(), &["for-each-ref", "--format=%(refname)"]),
            "refs/heads/main"
        );
    }

    #[test]
    fn too_many_loose_objects_rebuild_the_local_repository() {
        let (server, _) = server();
        let mut status = status(&server);
        let first = status
            .publish(&server.access(), &files(&[("a.json", "1\n")]), "first")
            .unwrap()
            .unwrap();
        let local = server.dir.path().join("state").join("status.git");
        let fanout = local.join("objects").join("ff");
        std::fs::create_dir_all(&fanout).unwrap();
        for index in 0..=MAX_LOOSE_OBJECTS {
            std::fs::write(fanout.join(format!("{index:038x}")), b"").unwrap();
        }
        let before = server.requests().len();
        let second = status
            .publish(&server.access(), &files(&[("a.json", "2\n")]), "second")
            .unwrap()
            .unwrap();
        assert_eq!(parents(&server, &second), [first.as_str()]);
        assert!(
            loose_object_count(&local) < 20,
            "{}",
            loose_object_count(&local)
        );
        assert!(
            server.requests()[before..]
                .contains(&"POST /desired.git/git-upload-pack fetch".to_owned()),
            "the rebuilt repository fetched the tip: {:?}",
            &server.requests()[before..]
        );
    }

    #[test]
    fn the_desired_state_branch_is_never_touched() {
        let (server, main) = server();
        let mut status = status(&server);
        for round in 0..3 {
            let content = format!("{round}\n");
            status
                .publish(
                    &server.access(),
                    &files(&[("a.json", content.as_str())]),
                    "round",
                )
                .unwrap()
                .unwrap();
        }
        assert_eq!(rev(&server, "refs/heads/main"), main);
        assert_eq!(
            git(&server.bare(), &["for-each-ref", "--format=%(refname)"]),
            format!("refs/heads/main\nrefs/heads/{BRANCH}")
        );

        // Publishing to the desired-state branch is refused before anything is sent.
        let before = server.requests().len();
        let mut wrong =
            StatusBranch::open(&server.dir.path().join("wrong.git"), "main", "status").unwrap();
        let error = wrong
            .publish(&server.access(), &files(&[("a.json", "x")]), "x")
            .unwrap_err();
        assert!(
            matches!(error, SourceError::InvalidStatusTarget { .. }),
            "{error:?}"
        );
        assert_eq!(server.requests().len(), before);
        assert_eq!(rev(&server, "refs/heads/main"), main);

        // The desired-state mirror still reads main as before.
        let mut mirror = Mirror::open(&server.mirror_dir()).unwrap();
        assert_eq!(mirror.fetch(&server.access()).unwrap().tip, main);
    }

    #[test]
    fn read_only_repository_is_a_clear_write_denial() {
        let (server, main) = server();
        server.allow_push(false);
        let mut status = status(&server);
        let started = std::time::Instant::now();
        let error = status
            .publish(&server.access(), &files(&[("a.json", "1\n")]), "x")
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(error, SourceError::WriteDenied { status: 403, .. }),
            "{error:?}"
        );
        assert!(error.is_auth());
        assert_eq!(
            error.to_string(),
            format!(
                "the repository {} allows reading but refused writing the status branch {BRANCH} (HTTP 403)",
                server.url()
            )
        );
        assert!(!format!("{error:?}").contains("s3cret"));
        assert_eq!(rev(&server, "refs/heads/main"), main);
        assert_eq!(
            git(&server.bare(), &["for-each-ref", "--format=%(refname)"]),
            "refs/heads/main"
        );
    }

    #[test]
    fn wrong_password_is_an_auth_error_without_the_secret() {
        let (server, _) = server();
        std::fs::write(server.dir.path().join("password"), "Wr0ngPassw0rd\n").unwrap();
        let mut status = status(&server);
        let error = status
            .publish(&server.access(), &files(&[("a.json", "1\n")]), "x")
            .unwrap_err();
        assert!(error.is_auth(), "{error:?}");
        assert!(
            matches!(error, SourceError::AuthRefused { status: 401, .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "the repository {} (branch {BRANCH}) refused the credentials (HTTP 401)",
                server.url()
            )
        );
        assert!(!format!("{error:?}").contains("Wr0ngPassw0rd"));
    }

    #[test]
    fn an_empty_repository_gets_the_branch() {
        let server = GitServer::start("basic");
        server.allow_push(true);
        let mut status = status(&server);
        let commit = status
            .publish(
                &server.access(),
                &files(&[("device.json", "{}\n")]),
                "first",
            )
            .unwrap()
            .unwrap();
        assert_eq!(rev(&server, &format!("refs/heads/{BRANCH}")), commit);
        assert_eq!(
            branch_files(&server),
            files(&[("status/device.json", "{}\n")])
        );
        git(&server.bare(), &["fsck", "--strict", "--no-dangling"]);
    }

    #[test]
    fn nested_directories_and_bad_names() {
        let (server, _) = server();
        let dir = server.dir.path().join("nested.git");
        let mut status = StatusBranch::open(&dir, BRANCH, "devices/dev-1").unwrap();
        status
            .publish(&server.access(), &files(&[("a.json", "1\n")]), "nested")
            .unwrap()
            .unwrap();
        assert_eq!(
            branch_files(&server),
            files(&[("devices/dev-1/a.json", "1\n")])
        );

        for (branch, dir) in [
            ("", "status"),
            ("bad..name", "status"),
            (BRANCH, ""),
            (BRANCH, "a/../b"),
            (BRANCH, "/abs"),
            (BRANCH, ".git"),
        ] {
            let error =
                StatusBranch::open(&server.dir.path().join("x.git"), branch, dir).unwrap_err();
            assert!(
                matches!(error, SourceError::InvalidStatusTarget { .. }),
                "{branch:?} {dir:?}: {error:?}"
            );
        }
        for name in ["a/b.json", "..", ".git", ""] {
            let error = status
                .publish(&server.access(), &files(&[(name, "x")]), "x")
                .unwrap_err();
            assert!(
                matches!(error, SourceError::InvalidStatusTarget { .. }),
                "{name:?}: {error:?}"
            );
        }
        let mut access = server.access();
        access.auth = RepoAuth::None;
        access.url = format!("https://woa:s3cret@127.0.0.1:{}/desired.git", server.port);
        let error = status
            .publish(&access, &files(&[("a.json", "1\n")]), "x")
            .unwrap_err();
        assert!(matches!(error, SourceError::InvalidUrl { .. }), "{error:?}");
        assert!(!format!("{error:?}").contains("s3cret"));
    }

    #[test]
    fn advertisements_and_reports_are_parsed() {
        fn pkts(lines: &[Option<&[u8]>]) -> Vec<u8> {
            let mut out = Vec::new();
            for line in lines {
                match line {
                    Some(data) => pkt::data_to_write(data, &mut out).unwrap(),
                    None => pkt::flush_to_write(&mut out).unwrap(),
                };
            }
            out
        }
        let zero = gix::hash::Kind::Sha1.null();
        let one = ObjectId::from_hex(b"1111111111111111111111111111111111111111").unwrap();
        let empty = pkts(&[
            Some(b"# service=git-receive-pack\n"),
            None,
            Some(
                format!("{zero} capabilities^{{}}\0report-status delete-refs agent=git/2\n")
                    .as_bytes(),
            ),
            None,
        ]);
        let parsed =
            parse_advertisement(&empty, "refs/heads/woa/status", gix::hash::Kind::Sha1).unwrap();
        assert_eq!(parsed.tip, None);
        assert_eq!(
            parsed.capabilities,
            ["report-status", "delete-refs", "agent=git/2"]
        );

        let with_refs = pkts(&[
            Some(format!("{zero} refs/heads/main\0report-status\n").as_bytes()),
            Some(format!("{one} refs/heads/woa/status\n").as_bytes()),
            None,
        ]);
        let parsed =
            parse_advertisement(&with_refs, "refs/heads/woa/status", gix::hash::Kind::Sha1)
                .unwrap();
        assert_eq!(parsed.tip, Some(one));

        // Shallow lines after the refs are skipped; a list cut before its flush is refused.
        let shallow = pkts(&[
            Some(format!("{one} refs/heads/woa/status\0report-status\n").as_bytes()),
            Some(format!("shallow {one}\n").as_bytes()),
            None,
        ]);
        let parsed =
            parse_advertisement(&shallow, "refs/heads/woa/status", gix::hash::Kind::Sha1).unwrap();
        assert_eq!(parsed.tip, Some(one));
        let cut = pkts(&[Some(
            format!("{zero} refs/heads/main\0report-status\n").as_bytes(),
        )]);
        let message =
            parse_advertisement(&cut, "refs/heads/woa/status", gix::hash::Kind::Sha1).unwrap_err();
        assert!(message.contains("without a flush"), "{message}");

        let error = pkts(&[Some(b"ERR access denied\n")]);
        let message =
            parse_advertisement(&error, "refs/heads/x", gix::hash::Kind::Sha1).unwrap_err();
        assert!(message.contains("access denied"), "{message}");
        assert!(parse_advertisement(b"0032trunc", "refs/heads/x", gix::hash::Kind::Sha1).is_err());

        let ok = pkts(&[Some(b"unpack ok\n"), Some(b"ok refs/heads/x\n"), None]);
        assert!(matches!(
            parse_report(&ok, "refs/heads/x"),
            Ok(PushOutcome::Updated)
        ));
        let ng = pkts(&[
            Some(b"unpack ok\n"),
            Some(b"ng refs/heads/x failed to update ref\n"),
            None,
        ]);
        assert!(
            matches!(parse_report(&ng, "refs/heads/x"), Ok(PushOutcome::Rejected(reason)) if reason == "failed to update ref")
        );
        let unpack = pkts(&[Some(b"unpack index-pack failed\n"), None]);
        assert!(
            parse_report(&unpack, "refs/heads/x")
                .unwrap_err()
                .contains("index-pack failed")
        );
        assert!(parse_report(b"", "refs/heads/x").is_err());
    }

    #[test]
    fn status_branch_can_move_to_a_blocking_thread() {
        fn send_and_sync<T: Send + Sync>() {}
        send_and_sync::<StatusBranch>();
    }
}
