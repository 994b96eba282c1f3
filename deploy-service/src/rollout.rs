//! Which release of each deployment the engine is driven to: local approvals, apply windows,
//! the hold on a release that failed or was refused, and the release to roll back to.
//!
//! This is bookkeeping only; the agent stores it (`rollout.json`) and acts on it. A release is a
//! deployment's resolved spec; two desired-state revisions that leave a deployment unchanged
//! carry the same release, so an unrelated commit never restarts a rollout.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use woa_common::margo::StatusError;

use crate::config::ImageGcConfig;
use crate::desired::Deployment;
use crate::error::code;
use crate::spec::{BindSource, Mount, Service};

/// Code of a pending release's reason: it waits for the site's approval.
pub const AWAITING_APPROVAL: &str = "AWAITING_APPROVAL";
/// Code of a pending release's reason: it waits for an apply window.
pub const OUTSIDE_APPLY_WINDOW: &str = "OUTSIDE_APPLY_WINDOW";

/// One deployment's spec, as it arrived with one desired-state revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The desired-state revision it arrived with.
    pub revision: String,
    /// Digest of the spec.
    pub digest: String,
    /// The resolved deployment.
    pub deployment: Deployment,
}

impl Release {
    /// The release of `deployment` at `revision`.
    pub fn new(revision: &str, deployment: &Deployment) -> Release {
        let mut h = Sha256::new();
        h.update(deployment.application_id.as_bytes());
        h.update(serde_json::to_vec(&deployment.components).unwrap_or_default());
        Release {
            revision: revision.to_string(),
            digest: hex::encode(&h.finalize()[..12]),
            deployment: Deployment {
                error: None,
                ..deployment.clone()
            },
        }
    }

    /// Every image the release runs.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.deployment
            .components
            .iter()
            .flat_map(|c| c.project.services.iter().map(|s| s.image.as_str()))
    }
}

/// Where the current release of a deployment stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Being applied; if it does not install, the previous release is restored.
    #[default]
    Rolling,
    /// The previous release being restored after a failure or by the operator; it is not rolled
    /// back any further.
    Restoring,
    /// Its containers came up and stayed up for the settle time.
    Installed,
    /// It did not install and there was nothing to go back to; not retried on its own.
    Failed,
}

/// A release that is not applied until a newer one arrives or the operator retries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// The held release.
    pub digest: String,
    /// Its revision.
    pub revision: String,
    /// What the orchestrator is told.
    pub error: StatusError,
}

/// The rollout record of one deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// The release the engine is driven to; none before the first one is let through.
    pub current: Option<Release>,
    /// Where `current` stands.
    pub phase: Phase,
    /// The last installed release before `current`: what a rollback restores.
    pub previous: Option<Release>,
    /// A release that must not be applied on its own.
    pub hold: Option<Hold>,
    /// The release the site approved, while it waits for a window.
    pub approved: Option<String>,
}

/// What happens to the release the desired state asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// It is the current release already.
    Current,
    /// It was just made current.
    Promoted,
    /// It is held (failed, rolled back or rejected).
    Held(Hold),
    /// It waits; the reason says for what.
    Pending(StatusError),
}

/// What stands between a new release and the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gates<'a> {
    /// The site must approve it first.
    pub manual: bool,
    /// When the next apply window opens, if the windows are closed now (`Some(None)`: none
    /// opens within a week).
    pub window_closed: Option<Option<&'a str>>,
}

impl Track {
    /// Whether `wanted` is new and neither held nor approved, so it needs the site's approval
    /// (under the manual policy).
    pub fn awaits_approval(&self, wanted: &Release) -> bool {
        let is = |digest: Option<&String>| digest == Some(&wanted.digest);
        !is(self.current.as_ref().map(|c| &c.digest))
            && !is(self.hold.as_ref().map(|h| &h.digest))
            && !is(self.approved.as_ref())
    }

    /// Offers `wanted`, the release the desired state asks for, through `gates`.
    pub fn offer(&mut self, wanted: &Release, gates: Gates<'_>) -> Offer {
        if self.current.as_ref().map(|c| &c.digest) == Some(&wanted.digest) {
            // The same spec under a newer revision: the status names the newest one.
            if let Some(current) = &mut self.current {
                current.revision.clone_from(&wanted.revision);
            }
            return Offer::Current;
        }
        match &self.hold {
            Some(hold) if hold.digest == wanted.digest => return Offer::Held(hold.clone()),
            // A newer release replaces whatever was held.
            Some(_) => self.hold = None,
            None => {}
        }
        if gates.manual && self.awaits_approval(wanted) {
            return Offer::Pending(StatusError::new(
                AWAITING_APPROVAL,
                &wanted.deployment.path,
                "awaiting local approval",
            ));
        }
        if let Some(opens) = gates.window_closed {
            let message = match opens {
                Some(at) => format!("outside the apply windows; the next opens at {at}"),
                None => "outside the apply windows; none opens within a week".to_string(),
            };
            return Offer::Pending(StatusError::new(OUTSIDE_APPLY_WINDOW, "", message));
        }
        if matches!(self.phase, Phase::Installed | Phase::Restoring) {
            self.previous = self.current.take();
        }
        self.current = Some(wanted.clone());
        self.phase = Phase::Rolling;
        self.approved = None;
        Offer::Promoted
    }

    /// The current release did not install because of `error`: restores the previous one if
    /// there is one, and holds the failed release either way. Returns the revision restored.
    pub fn fail(&mut self, error: &StatusError) -> Option<String> {
        let failed = self.current.as_ref()?;
        match self.phase {
            Phase::Rolling => {}
            Phase::Restoring => {
                // The restore failed too: stay on it, and say so next to the original failure.
                self.phase = Phase::Failed;
                if let Some(hold) = &mut self.hold {
                    hold.error.message = format!(
                        "{}; restoring it failed too: {}",
                        hold.error.message, error.message
                    );
                }
                return None;
            }
            Phase::Installed | Phase::Failed => return None,
        }
        let (digest, revision) = (failed.digest.clone(), failed.revision.clone());
        let restored = self.previous.take();
        // Only a rollback that happened is reported as one; a first release keeps its cause.
        let error = match &restored {
            Some(p) => StatusError::new(
                code::ROLLED_BACK,
                &error.source,
                format!(
                    "revision {} failed and was rolled back to revision {}: {}",
                    short(&revision),
                    short(&p.revision),
                    error.message
                ),
            ),
            None => StatusError::new(
                &error.code,
                &error.source,
                format!(
                    "revision {} failed (no earlier revision was installed, so nothing was rolled back): {}",
                    short(&revision),
                    error.message
                ),
            ),
        };
        self.hold = Some(Hold {
            digest,
            revision,
            error,
        });
        match restored {
            Some(previous) => {
                let revision = previous.revision.clone();
                self.current = Some(previous);
                self.phase = Phase::Restoring;
                Some(revision)
            }
            None => {
                self.phase = Phase::Failed;
                None
            }
        }
    }

    /// The operator goes back to the previous installed release; the one left is held.
    pub fn roll_back(&mut self) -> Result<&Release, &'static str> {
        let Some(previous) = self.previous.take() else {
            return Err("has no earlier installed release to roll back to");
        };
        if let Some(left) = self.current.take() {
            let message = format!(
                "revision {} was rolled back locally to revision {}; it is applied again when \
                 a newer revision arrives or after `woa-deploy retry`",
                short(&left.revision),
                short(&previous.revision)
            );
            self.hold = Some(Hold {
                digest: left.digest,
                revision: left.revision,
                error: StatusError::new(code::ROLLED_BACK, "", message),
            });
        }
        self.phase = Phase::Restoring;
        Ok(self.current.insert(previous))
    }

    /// Lets the held release apply again. Returns its digest.
    pub fn retry(&mut self) -> Option<String> {
        let hold = self.hold.take()?;
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.digest == hold.digest)
        {
            // A first release that failed with nothing to go back to: apply it again.
            self.phase = Phase::Rolling;
        }
        Some(hold.digest)
    }
}

/// The images of `pulled` (reference, pulled at in Unix seconds) that garbage collection removes
/// at `now`: those no release in `kept` uses, but for the `keep` most recently pulled and any
/// pulled less than `min_age` ago.
pub fn unused_images(
    pulled: &BTreeMap<String, u64>,
    kept: &[&Release],
    gc: &ImageGcConfig,
    now: u64,
) -> Vec<String> {
    let used: BTreeSet<&str> = kept.iter().flat_map(|r| r.images()).collect();
    let mut unused: Vec<(&String, u64)> = pulled
        .iter()
        .filter(|(image, _)| !used.contains(image.as_str()))
        .map(|(image, at)| (image, *at))
        .collect();
    unused.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
    unused
        .into_iter()
        .skip(gc.keep)
        .filter(|(_, at)| now.saturating_sub(*at) >= gc.min_age.as_secs())
        .map(|(image, _)| image.clone())
        .collect()
}

/// The first 12 characters of a revision, as people read commit ids.
pub fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

/// A release waiting for the site's approval, with what it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingApproval {
    pub deployment_id: String,
    pub application_id: String,
    pub revision: String,
    /// The digest an approval must name.
    pub release: String,
    /// The revision running now; empty for a new deployment.
    pub current_revision: String,
    pub changes: Vec<Change>,
    pub path: String,
}

/// One difference between the running release and the pending one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub component: String,
    /// Empty when the whole component is added or removed.
    pub service: String,
    /// `added`, `removed` or `changed`.
    pub kind: &'static str,
    /// `component`, `service`, `image`, `environment.KEY`, ...
    pub field: String,
    pub old: String,
    pub new: String,
}

/// What applying `next` changes against `current` (none: a new deployment).
pub fn changes(current: Option<&Deployment>, next: &Deployment) -> Vec<Change> {
    let mut out = Vec::new();
    let empty = Vec::new();
    let before = current.map_or(&empty, |d| &d.components);
    let change = |component: &str, service: &str, kind, field: &str, old, new| Change {
        component: component.to_string(),
        service: service.to_string(),
        kind,
        field: field.to_string(),
        old,
        new,
    };
    for c in &next.components {
        let Some(old) = before.iter().find(|o| o.name == c.name) else {
            out.push(change(
                &c.name,
                "",
                "added",
                "component",
                String::new(),
                services(c),
            ));
            continue;
        };
        for s in &c.project.services {
            match old.project.services.iter().find(|o| o.name == s.name) {
                None => out.push(change(
                    &c.name,
                    &s.name,
                    "added",
                    "service",
                    String::new(),
                    s.image.clone(),
                )),
                Some(o) => {
                    for (field, old_value, new_value) in service_changes(o, s) {
                        let kind = match (old_value.is_empty(), new_value.is_empty()) {
                            (true, false) => "added",
                            (false, true) => "removed",
                            _ => "changed",
                        };
                        out.push(change(&c.name, &s.name, kind, &field, old_value, new_value));
                    }
                }
            }
        }
        for o in &old.project.services {
            if !c.project.services.iter().any(|s| s.name == o.name) {
                out.push(change(
                    &c.name,
                    &o.name,
                    "removed",
                    "service",
                    o.image.clone(),
                    String::new(),
                ));
            }
        }
    }
    for o in before {
        if !next.components.iter().any(|c| c.name == o.name) {
            out.push(change(
                &o.name,
                "",
                "removed",
                "component",
                services(o),
                String::new(),
            ));
        }
    }
    out
}

/// `web=nginx:1.25, db=postgres:16`.
fn services(c: &crate::desired::Component) -> String {
    let list: Vec<String> = c
        .project
        .services
        .iter()
        .map(|s| format!("{}={}", s.name, s.image))
        .collect();
    list.join(", ")
}

/// The fields of a service that differ, as (field, old, new).
fn service_changes(old: &Service, new: &Service) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    if old.image != new.image {
        out.push(("image".into(), old.image.clone(), new.image.clone()));
    }
    let keys: std::collections::BTreeSet<&String> = old
        .environment
        .keys()
        .chain(new.environment.keys())
        .collect();
    for key in keys {
        let (a, b) = (old.environment.get(key), new.environment.get(key));
        if a != b {
            out.push((
                format!("environment.{key}"),
                a.cloned().unwrap_or_default(),
                b.cloned().unwrap_or_default(),
            ));
        }
    }
    let ports = |s: &Service| {
        let list: Vec<String> = s
            .ports
            .iter()
            .map(|p| {
                let host = p.host_port.map(|h| format!("{h}:")).unwrap_or_default();
                format!("{host}{}/{}", p.container_port, p.protocol)
            })
            .collect();
        list.join(", ")
    };
    let volumes = |s: &Service| {
        let list: Vec<String> = s
            .mounts
            .iter()
            .map(|m| match m {
                Mount::Volume { source, target, .. } => format!("{source}:{target}"),
                Mount::Bind { source, target, .. } => match source {
                    BindSource::Host(path) | BindSource::Data(path) => format!("{path}:{target}"),
                    BindSource::Package(path) => format!("./{path}:{target}"),
                },
                Mount::Tmpfs { target, .. } => format!("tmpfs:{target}"),
            })
            .collect();
        list.join(", ")
    };
    let command = |s: &Service| {
        let words = |w: &Option<Vec<String>>| w.as_ref().map(|w| w.join(" ")).unwrap_or_default();
        format!("{} {}", words(&s.entrypoint), words(&s.command))
            .trim()
            .to_string()
    };
    for (field, view) in [
        ("ports", &ports as &dyn Fn(&Service) -> String),
        ("volumes", &volumes),
        ("command", &command),
    ] {
        let (a, b) = (view(old), view(new));
        if a != b {
            out.push((field.into(), a, b));
        }
    }
    // Anything else (health check, limits, labels, ...) is named but not spelled out.
    let rest = |s: &Service| {
        let mut s = s.clone();
        s.image.clear();
        s.environment.clear();
        s.ports.clear();
        s.mounts.clear();
        s.command = None;
        s.entrypoint = None;
        serde_json::to_string(&s).unwrap_or_default()
    };
    if rest(old) != rest(new) {
        out.push(("config".into(), "(differs)".into(), "(differs)".into()));
    }
    out
}

/// The rollout records of every deployment, by id.
pub type Tracks = BTreeMap<String, Track>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::desired::Component;
    use crate::spec::Project;

    fn deployment(image: &str, env: &[(&str, &str)]) -> Deployment {
        Deployment {
            id: "d".into(),
            application_id: "app".into(),
            path: "deployments/d.yaml".into(),
            components: vec![Component {
                name: "app".into(),
                project: Project {
                    services: vec![Service {
                        name: "web".into(),
                        image: image.into(),
                        environment: (env.iter())
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect::<BTreeMap<_, _>>()
                            .into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                package_dir: "/p".into(),
                bind_digests: BTreeMap::new(),
                wait: true,
                timeout: None,
                artifact: None,
            }],
            component_names: vec!["app".into()],
            error: None,
        }
    }

    const OPEN: Gates<'static> = Gates {
        manual: false,
        window_closed: None,
    };

    #[test]
    fn a_new_release_is_promoted_and_the_installed_one_becomes_the_rollback_target() {
        let mut t = Track::default();
        let r1 = Release::new("rev1", &deployment("web:1", &[]));
        assert_eq!(t.offer(&r1, OPEN), Offer::Promoted);
        // Not installed yet: a newer release does not make r1 a rollback target.
        let r2 = Release::new("rev2", &deployment("web:2", &[]));
        assert_eq!(t.offer(&r2, OPEN), Offer::Promoted);
        assert!(t.previous.is_none());
        t.phase = Phase::Installed;
        let r3 = Release::new("rev3", &deployment("web:3", &[]));
        assert_eq!(t.offer(&r3, OPEN), Offer::Promoted);
        assert_eq!(t.previous.as_ref().unwrap().revision, "rev2");
        // An unrelated commit: same spec, newer revision.
        let same = Release::new("rev4", &deployment("web:3", &[]));
        assert_eq!(same.digest, r3.digest);
        assert_eq!(t.offer(&same, OPEN), Offer::Current);
        assert_eq!(t.current.as_ref().unwrap().revision, "rev4");
    }

    #[test]
    fn a_failed_release_is_rolled_back_held_and_not_offered_again_until_a_newer_one() {
        let mut t = Track::default();
        let good = Release::new("good", &deployment("web:1", &[]));
        t.offer(&good, OPEN);
        t.phase = Phase::Installed;
        let bad = Release::new("bad", &deployment("web:2", &[]));
        t.offer(&bad, OPEN);
        let error = StatusError::new("ERR_NOT_READY", "app", "container exited with code 1");
        assert_eq!(t.fail(&error).as_deref(), Some("good"));
        assert_eq!(t.phase, Phase::Restoring);
        let hold = t.hold.clone().unwrap();
        assert_eq!(hold.error.code, code::ROLLED_BACK);
        assert!(hold.error.message.contains("rolled back to revision good"));
        assert!(hold.error.message.contains("exited with code 1"));
        assert_eq!(t.offer(&bad, OPEN), Offer::Held(hold));
        // The restored release failing too is not rolled back further.
        assert_eq!(t.fail(&error), None);
        assert_eq!(t.phase, Phase::Failed);
        // A newer release clears the hold.
        let newer = Release::new("newer", &deployment("web:3", &[]));
        assert_eq!(t.offer(&newer, OPEN), Offer::Promoted);
        assert!(t.hold.is_none());
    }

    #[test]
    fn retry_lets_the_held_release_apply_again() {
        let mut t = Track::default();
        let first = Release::new("first", &deployment("web:1", &[]));
        t.offer(&first, OPEN);
        let error = StatusError::new("ERR_IMAGE_PULL", "web:1", "not found");
        assert_eq!(t.fail(&error), None);
        assert_eq!(t.phase, Phase::Failed);
        let held = &t.hold.as_ref().unwrap().error;
        assert_eq!(held.code, "ERR_IMAGE_PULL", "nothing was rolled back");
        assert!(held.message.contains("nothing was rolled back"), "{held:?}");
        assert!(held.message.contains("not found"), "{held:?}");
        assert_eq!(t.retry(), Some(first.digest.clone()));
        assert_eq!(t.phase, Phase::Rolling);
        assert_eq!(t.offer(&first, OPEN), Offer::Current);
    }

    #[test]
    fn manual_approval_holds_a_release_until_that_very_release_is_approved() {
        let mut t = Track::default();
        let manual = Gates {
            manual: true,
            window_closed: None,
        };
        let r1 = Release::new("r1", &deployment("web:1", &[]));
        assert!(matches!(t.offer(&r1, manual), Offer::Pending(e) if e.code == AWAITING_APPROVAL));
        t.approved = Some(r1.digest.clone());
        // A newer release supersedes the approved one: it needs its own approval.
        let r2 = Release::new("r2", &deployment("web:2", &[]));
        assert!(matches!(t.offer(&r2, manual), Offer::Pending(_)));
        t.approved = Some(r2.digest.clone());
        let closed = Gates {
            manual: true,
            window_closed: Some(Some("2026-11-25T06:00:00Z")),
        };
        assert!(
            matches!(t.offer(&r2, closed), Offer::Pending(e) if e.code == OUTSIDE_APPLY_WINDOW && e.message.contains("06:00"))
        );
        assert_eq!(t.offer(&r2, manual), Offer::Promoted);
        assert!(t.approved.is_none());
    }

    #[test]
    fn the_operator_rolls_back_to_the_previous_installed_release() {
        let mut t = Track::default();
        assert!(t.roll_back().is_err());
        let r1 = Release::new("r1", &deployment("web:1", &[]));
        t.offer(&r1, OPEN);
        t.phase = Phase::Installed;
        let r2 = Release::new("r2", &deployment("web:2", &[]));
        t.offer(&r2, OPEN);
        t.phase = Phase::Installed;
        assert_eq!(t.roll_back().unwrap().revision, "r1");
        assert!(matches!(t.offer(&r2, OPEN), Offer::Held(_)));
        assert!(t.roll_back().is_err(), "one step back only");
        t.retry();
        t.phase = Phase::Installed;
        assert_eq!(t.offer(&r2, OPEN), Offer::Promoted);
        assert_eq!(t.previous.as_ref().unwrap().revision, "r1");
    }

    #[test]
    fn garbage_collection_spares_used_images_the_newest_few_and_the_young() {
        let current = Release::new("r3", &deployment("app:3", &[]));
        let previous = Release::new("r2", &deployment("app:2", &[]));
        let pulled: BTreeMap<String, u64> = [
            ("app:1", 100),
            ("app:2", 200),
            ("app:3", 300),
            ("old:1", 50),
            ("old:2", 60),
            ("fresh:1", 990),
        ]
        .into_iter()
        .map(|(i, at)| (i.to_string(), at))
        .collect();
        let kept = [&current, &previous];
        let gc = |keep, min_age| ImageGcConfig {
            enabled: true,
            keep,
            min_age: std::time::Duration::from_secs(min_age),
        };
        assert_eq!(
            unused_images(&pulled, &kept, &gc(0, 0), 1000),
            ["fresh:1", "app:1", "old:2", "old:1"]
        );
        // The newest unused one is kept, and those pulled under 100 s ago.
        assert_eq!(
            unused_images(&pulled, &kept, &gc(1, 100), 1000),
            ["app:1", "old:2", "old:1"]
        );
        assert_eq!(
            unused_images(&pulled, &kept, &gc(0, 935), 1000),
            ["old:2", "old:1"]
        );
    }

    #[test]
    fn changes_name_images_environment_and_services() {
        let old = deployment("web:1", &[("A", "1"), ("B", "2")]);
        let new = deployment("web:2", &[("A", "1"), ("B", "3"), ("C", "4")]);
        let c = changes(Some(&old), &new);
        let seen: Vec<(String, String, String, String)> = c
            .iter()
            .map(|c| {
                (
                    c.kind.to_string(),
                    c.field.clone(),
                    c.old.clone(),
                    c.new.clone(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "changed".into(),
                    "image".into(),
                    "web:1".into(),
                    "web:2".into()
                ),
                (
                    "changed".into(),
                    "environment.B".into(),
                    "2".into(),
                    "3".into()
                ),
                (
                    "added".into(),
                    "environment.C".into(),
                    String::new(),
                    "4".into()
                ),
            ]
        );
        let fresh = changes(None, &new);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].field, "component");
        assert_eq!(fresh[0].new, "web=web:2");
    }
}
