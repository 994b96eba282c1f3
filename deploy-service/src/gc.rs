//! Garbage collection, shared across deployments: images the agent pulled that no current or
//! rollback release uses, package directories no release refers to, and the cached OCI
//! artifacts none was pulled from.

use std::collections::BTreeSet;
use std::path::Path;

use woa_common::store;

use crate::agent::{Agent, lock};
use crate::execute::unix_now;
use crate::rollout::{self, Release};
use crate::runtime::ContainerRuntime;

impl<R: ContainerRuntime> Agent<R> {
    /// Collects garbage unless a pass is changing the engine (it is tried again later).
    pub(crate) async fn collect_garbage(&self) {
        let Ok(_engine) = self.workers.engine.try_write() else {
            return;
        };
        let tracks = self.tracks();
        let kept: Vec<&Release> = tracks
            .values()
            .flat_map(|t| t.current.iter().chain(t.previous.iter()))
            .collect();
        // An apply stores its packages and artifacts while it holds `applying`: none is
        // removed half-way between being written and being referenced.
        if let Ok(_applying) = self.applying.try_lock() {
            let desired = self.desired();
            let components: Vec<_> = (kept.iter())
                .flat_map(|r| r.deployment.components.iter())
                .chain(desired.deployments.iter().flat_map(|d| d.components.iter()))
                .collect();
            let packages: BTreeSet<&Path> =
                components.iter().map(|c| c.package_dir.as_path()).collect();
            remove_other_packages(&self.settings.state_dir.join("packages"), &packages);
            let artifacts = components.iter().filter_map(|c| c.artifact.as_deref());
            self.fetcher.keep_only_artifacts(&artifacts.collect());
        }

        let gc = &self.settings.image_gc;
        if !gc.enabled {
            return;
        }
        let doomed = rollout::unused_images(&lock(&self.pulled), &kept, gc, unix_now());
        let mut removed = Vec::new();
        for image in doomed {
            match self.runtime.remove_image(&image).await {
                Ok(true) => {
                    tracing::info!(%image, "removed an unused image");
                    self.metrics.image_removed();
                    removed.push(image);
                }
                Ok(false) => tracing::debug!(%image, "unused image kept: a container uses it"),
                Err(e) => tracing::warn!(%image, error = %e, "removing an unused image failed"),
            }
        }
        if removed.is_empty() {
            return;
        }
        let mut pulled = lock(&self.pulled);
        for image in &removed {
            pulled.remove(image);
        }
        if let Err(e) = store::save_json(&self.settings.state_dir.join("images.json"), &*pulled) {
            tracing::warn!(error = %e, "storing the pulled images failed");
        }
    }
}

/// Removes the package directories under `dir` that are not in `keep`.
fn remove_other_packages(dir: &Path, keep: &BTreeSet<&Path>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let staging = entry.file_name().to_string_lossy().starts_with(".tmp-");
        if staging || keep.contains(path.as_path()) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::debug!(package = %path.display(), "removed an unused package"),
            Err(e) => {
                tracing::warn!(package = %path.display(), error = %e, "removing an unused package failed")
            }
        }
    }
}
