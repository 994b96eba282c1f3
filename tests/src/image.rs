//! The test image: `tests/testapp/main.rs`, compiled static and copied into `FROM scratch`.
//!
//! No registry is reachable from test machines, so the image is built locally and never pulled.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};

use crate::util::{output, run};

const DOCKERFILE: &str = "FROM scratch\nCOPY testapp /testapp\nENTRYPOINT [\"/testapp\"]\n";

/// The tag of the testapp image, built on first use (`woa-testapp:<content hash>`).
///
/// The tag follows the program's source, so an unchanged program is not rebuilt across runs.
/// Run it as `command: ["serve", "8080"]`, `["probe", "8080"]` or `["sleep"]`.
pub fn testapp_image() -> Result<&'static str> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build().map_err(|err| format!("{err:#}")))
        .as_deref()
        .map_err(|err| anyhow!("{err}"))
}

fn build() -> Result<String> {
    let source_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testapp/main.rs");
    let source = std::fs::read(&source_path)
        .with_context(|| format!("reading {}", source_path.display()))?;
    let mut hasher = DefaultHasher::new();
    (source.as_slice(), DOCKERFILE).hash(&mut hasher);
    let tag = format!("woa-testapp:{:016x}", hasher.finish());

    let present = output(Command::new("docker").args(["image", "inspect", &tag]))?;
    if present.status.success() {
        return Ok(tag);
    }
    let context = tempfile::tempdir()?;
    run(Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .arg(&source_path)
        .arg("-o")
        .arg(context.path().join("testapp")))
    .context("compiling testapp")?;
    std::fs::write(context.path().join("Dockerfile"), DOCKERFILE)?;
    // The classic builder needs no buildx plugin and never pulls for FROM scratch.
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--tag", &tag])
        .arg(context.path()))
    .context("building the testapp image")?;
    Ok(tag)
}
