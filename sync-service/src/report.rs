//! The posting side: statuses and capabilities to the WOS.
//!
//! The deployment service's `WatchCurrentState` stream says what runs; every deployment whose
//! status changed goes into the outbox, and every deployment at each heartbeat. The outbox
//! keeps only the latest status per deployment and is persisted, so statuses made while the
//! WOS is unreachable (or while this service restarts) are delivered once it answers again.
//! Documents too broken to name a deployment are reported under a pseudo deployment id
//! (see `rejected`), and their removal goes through the outbox like any other status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use woa_common::backoff::Backoff;
use woa_common::margo::{DeploymentStatusManifest, StatusError};
use woa_common::store::{load_json, save_json};
use woa_proto::v1 as pb;

use crate::Error;
use crate::deploy_link::Deployer;
use crate::pull::PullProblem;
use crate::rejected::{rejected_documents, removed};
use crate::retry::{self, Messages, Outage, Severity};
use crate::wos::Wos;
use woa_common::window::Schedule;

/// What the log says while the WOS API cannot be reached; statuses wait in the outbox
/// meanwhile, so it is a warning.
const WOS_MESSAGES: Messages = Messages {
    down: "WOS not reachable; statuses wait in the outbox",
    still_down: "WOS still not reachable; statuses wait in the outbox",
    back: "WOS reachable again; waiting statuses are delivered",
};

/// How often capabilities are checked for changes (at most; the heartbeat may be shorter).
const CAPABILITIES_CHECK: Duration = Duration::from_secs(60);

/// Longest wait before reconnecting to the deployment service.
const RECONNECT_CAP: Duration = Duration::from_secs(10);

/// What is waiting to be delivered; persisted after every change.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Outbox {
    /// Deployment id → the status manifest (JSON) to post.
    statuses: BTreeMap<String, String>,
    /// The capabilities manifest (JSON) to put, when it changed since the last delivery.
    capabilities: Option<String>,
    /// The capabilities last delivered, so a restart does not re-post unchanged ones.
    delivered_capabilities: Option<String>,
    /// Pseudo deployment id → path of each rejected document reported `failed`; when the
    /// document is no longer rejected, `removed` goes into `statuses` and the entry goes.
    /// Persisted with the statuses, so a restart in between still reports the removal.
    rejected: BTreeMap<String, String>,
}

/// The reporter's settings.
pub struct Reporter {
    /// The WOS.
    pub wos: Wos,
    /// This device's id (put into the capabilities).
    pub device_id: String,
    /// The deployment service.
    pub deployer: Deployer,
    /// Where the outbox is persisted.
    pub outbox_path: PathBuf,
    /// Every status is posted at least this often.
    pub heartbeat: Duration,
    /// Failed deliveries are retried with a backoff that grows to this (the poll interval)
    /// and then stays between it and 1.25 times it, unless the WOS asked for a wait.
    pub retry_cap: Duration,
    /// The deployment service's current state, followed by [`watch_states`].
    pub states: watch::Receiver<Option<pb::CurrentState>>,
    /// Downtime windows: nothing is sent inside them.
    pub schedule: Arc<Schedule>,
    /// The pull loop's current problem, added to statuses so the WOS sees it.
    pub problems: watch::Receiver<Option<PullProblem>>,
    /// When the pull loop last polled successfully: the end of a wait for authorization.
    pub last_poll: watch::Receiver<Option<Timestamp>>,
    /// Whether the desired state comes from the same server (the Margo API): then a 403 is
    /// not asked again until a poll shows the server answers the device again. Otherwise a
    /// 403 is retried like any transient failure.
    pub forbidden_waits_for_poll: bool,
}

/// Why delivery stopped.
enum Stopped {
    /// A transient failure: try again after the wait the WOS asked for, or the backoff's.
    Retry(Option<Duration>),
    /// The WOS does not authorize the device (403): nothing is sent until a poll succeeds.
    UntilPoll,
}

impl Reporter {
    /// Reports until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut outbox = load_outbox(&self.outbox_path);
        let mut saved = outbox.clone();
        // Statuses as last enqueued, so only changes are posted between heartbeats.
        let mut enqueued: BTreeMap<String, String> = BTreeMap::new();
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut capabilities_check = tokio::time::interval(CAPABILITIES_CHECK.min(self.heartbeat));
        capabilities_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Backoff::new(Duration::from_secs(1), self.retry_cap);
        let mut outage = Outage::new(Severity::Warn, WOS_MESSAGES);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut until_poll = false;
        loop {
            let mut full = false;
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = self.states.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                changed = self.problems.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // A poll the server answered, though it failed for another reason.
                    let problem = self.problems.borrow();
                    if problem.as_ref().is_some_and(|p| p.code != crate::pull::ERR_REPOSITORY_AUTH) {
                        until_poll = false;
                    }
                }
                changed = self.last_poll.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    until_poll = false;
                }
                _ = heartbeat.tick() => full = true,
                _ = capabilities_check.tick() => self.refresh_capabilities(&mut outbox).await,
                () = sleep_until(retry_at) => {}
            }
            self.enqueue(&mut outbox, &mut enqueued, full);
            // Saved before sending, so a crash while the WOS is slow loses nothing.
            persist(&self.outbox_path, &outbox, &mut saved);
            // Inside a wait the WOS asked for (or a backoff), nothing is sent; the outbox
            // keeps collecting and is delivered when the wait is over.
            let waiting = until_poll || retry_at.is_some_and(|at| at > tokio::time::Instant::now());
            if !waiting {
                let delivered = tokio::select! {
                    delivered = self.deliver(&mut outbox, &mut outage) => delivered,
                    () = cancel.cancelled() => break,
                };
                retry_at = match delivered {
                    Ok(()) => {
                        backoff.reset();
                        None
                    }
                    Err(Stopped::Retry(asked)) => {
                        let wait = retry::delay(asked, &mut backoff);
                        tokio::time::Instant::now().checked_add(wait)
                    }
                    Err(Stopped::UntilPoll) => {
                        until_poll = true;
                        None
                    }
                };
                persist(&self.outbox_path, &outbox, &mut saved);
            }
        }
        persist(&self.outbox_path, &outbox, &mut saved);
    }

    /// Queues the status of every deployment that changed since it was last queued, or of
    /// all of them (`full`, at the heartbeat).
    fn enqueue(
        &mut self,
        outbox: &mut Outbox,
        enqueued: &mut BTreeMap<String, String>,
        full: bool,
    ) {
        let state = self.states.borrow_and_update();
        let Some(state) = state.as_ref() else {
            return;
        };
        let problem = self.problems.borrow_and_update();
        let mut queue = |deployment_id: &str, manifest: String| {
            if full || enqueued.get(deployment_id) != Some(&manifest) {
                enqueued.insert(deployment_id.to_owned(), manifest.clone());
                outbox.statuses.insert(deployment_id.to_owned(), manifest);
            }
        };
        for d in &state.deployments {
            queue(
                &d.deployment_id,
                decorate(&d.manifest_json, problem.as_ref()),
            );
        }
        let rejected = rejected_documents(state);
        for document in &rejected {
            queue(&document.deployment_id, document.manifest_json.clone());
        }
        let current: BTreeSet<String> = rejected.iter().map(|d| d.deployment_id.clone()).collect();
        for document in rejected {
            outbox
                .rejected
                .insert(document.deployment_id, document.path);
        }
        // Rejected documents that are gone or valid now: `removed`, once, like a removed
        // deployment (the deployment service reports those itself).
        let resolved: Vec<(String, String)> = outbox
            .rejected
            .iter()
            .filter(|(id, _)| !current.contains(*id))
            .map(|(id, path)| (id.clone(), path.clone()))
            .collect();
        for (deployment_id, path) in resolved {
            tracing::info!(%path, deployment = %deployment_id, "a rejected document is gone or valid now; reporting it removed");
            outbox.rejected.remove(&deployment_id);
            enqueued.remove(&deployment_id);
            outbox.statuses.insert(
                deployment_id.clone(),
                removed(&deployment_id, &state.revision),
            );
        }
    }

    /// Asks the deployment service for the capabilities and queues them if they changed.
    async fn refresh_capabilities(&self, outbox: &mut Outbox) {
        match self.deployer.capabilities().await {
            Ok(c) => {
                let manifest = with_device_id(&c.manifest_json, &self.device_id);
                if outbox.delivered_capabilities.as_ref() != Some(&manifest) {
                    outbox.capabilities = Some(manifest);
                }
            }
            Err(e) => tracing::debug!(error = %e, "capabilities not available yet"),
        }
    }

    /// Sends what the outbox holds, oldest first, stopping at the first transient failure or
    /// refusal of the device (`Err` says how long to wait).
    async fn deliver(&self, outbox: &mut Outbox, outage: &mut Outage) -> Result<(), Stopped> {
        let now = Timestamp::now();
        if self.schedule.in_downtime(now) {
            return Err(Stopped::Retry(Some(
                self.retry_cap.min(Duration::from_secs(60)),
            )));
        }
        if let Some(capabilities) = outbox.capabilities.clone() {
            match self.wos.put_capabilities(capabilities.as_bytes()).await {
                Ok(()) => {
                    outage.recovered();
                    tracing::info!("capabilities posted");
                    outbox.capabilities = None;
                    outbox.delivered_capabilities = Some(capabilities);
                }
                Err(e) => failed(&e, outage, self.forbidden_waits_for_poll, || {
                    outbox.capabilities = None
                })?,
            }
        }
        let pending: Vec<(String, String)> = outbox
            .statuses
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (deployment_id, manifest) in pending {
            match self
                .wos
                .post_status(&deployment_id, manifest.as_bytes())
                .await
            {
                Ok(()) => {
                    outage.recovered();
                    tracing::debug!(deployment = %deployment_id, "status posted");
                    outbox.statuses.remove(&deployment_id);
                }
                Err(e) => failed(&e, outage, self.forbidden_waits_for_poll, || {
                    outbox.statuses.remove(&deployment_id);
                })?,
            }
        }
        Ok(())
    }
}

/// A transient failure stops delivery for now (logged by the rule of [`Outage`]), and so does
/// a server that does not authorize the device, until a poll shows it answers the device
/// again (when it is also the source); a refusal of the content drops the item (the WOS will
/// refuse it again) after saying so, and shows that the WOS answers.
fn failed(
    e: &Error,
    outage: &mut Outage,
    forbidden_waits_for_poll: bool,
    drop_item: impl FnOnce(),
) -> Result<(), Stopped> {
    if forbidden_waits_for_poll && e.is_forbidden() {
        outage.failed("HTTP 403", e);
        return Err(Stopped::UntilPoll);
    }
    if e.is_transient() {
        // The kind of failure, not the request: one outage over many deployments is one.
        let key = match e {
            Error::Wos {
                status: Some(status),
                ..
            } => format!("HTTP {status}"),
            Error::Wos { status: None, .. } => "no answer".to_owned(),
            other => other.to_string(),
        };
        outage.failed(&key, e);
        return Err(Stopped::Retry(e.retry_after()));
    }
    outage.recovered();
    tracing::error!(error = %e, "the WOS refused a report; dropped");
    drop_item();
    Ok(())
}

/// Follows `WatchCurrentState` until `cancel`, reconnecting with backoff when the deployment
/// service goes away; the first message after a reconnect is the full state, so nothing is
/// missed.
pub async fn watch_states(
    deployer: Deployer,
    states: watch::Sender<Option<pb::CurrentState>>,
    cancel: CancellationToken,
) {
    // An open stream waits for the next change forever: only cancellation ends it.
    tokio::select! {
        () = follow_states(deployer, states) => {}
        () = cancel.cancelled() => {}
    }
}

async fn follow_states(deployer: Deployer, states: watch::Sender<Option<pb::CurrentState>>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), RECONNECT_CAP);
    let mut reported = false;
    loop {
        match deployer.watch().await {
            Ok(mut stream) => {
                tracing::info!("watching the deployment service");
                reported = false;
                backoff.reset();
                while let Some(message) = stream.next().await {
                    match message {
                        Ok(state) => {
                            states.send_replace(Some(state));
                        }
                        Err(status) => {
                            tracing::warn!(error = %crate::deploy_link::failed("WatchCurrentState", status), "watch ended");
                            break;
                        }
                    }
                }
            }
            Err(e) if !reported => {
                tracing::warn!(error = %e, "deployment service not reachable; retrying");
                reported = true;
            }
            Err(e) => tracing::debug!(error = %e, "deployment service still not reachable"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The status as posted: the deployment service's manifest, plus the pull problem in
/// `status.error` when the deployment has no error of its own, so the WOS learns that the
/// device cannot read its desired state.
pub(crate) fn decorate(manifest_json: &str, problem: Option<&PullProblem>) -> String {
    let Some(problem) = problem else {
        return manifest_json.to_owned();
    };
    match serde_json::from_str::<DeploymentStatusManifest>(manifest_json) {
        Ok(mut manifest) if manifest.status.error.is_none() => {
            manifest.status.error = Some(StatusError::new(
                problem.code,
                &problem.source,
                &problem.message,
            ));
            serde_json::to_string(&manifest).unwrap_or_else(|_| manifest_json.to_owned())
        }
        _ => manifest_json.to_owned(),
    }
}

/// The capabilities manifest with `properties.id` set to the device id.
pub(crate) fn with_device_id(manifest_json: &str, device_id: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(manifest_json) else {
        return manifest_json.to_owned();
    };
    if let Some(properties) = value
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        properties.insert("id".into(), device_id.into());
    }
    value.to_string()
}

/// The persisted outbox; one that cannot be read is set aside (and said so), since the
/// first full state from the deployment service refills it anyway.
fn load_outbox(path: &std::path::Path) -> Outbox {
    match load_json::<Outbox>(path) {
        Ok(outbox) => {
            let outbox = outbox.unwrap_or_default();
            if !outbox.statuses.is_empty() {
                tracing::info!(
                    pending = outbox.statuses.len(),
                    "statuses from before the restart are waiting for delivery"
                );
            }
            outbox
        }
        Err(e) => {
            let aside = path.with_extension("json.unreadable");
            tracing::error!(error = %e, aside = %aside.display(), "the status outbox cannot be read; starting empty");
            let _ = std::fs::rename(path, aside);
            Outbox::default()
        }
    }
}

/// Writes the outbox if it changed since `saved`.
fn persist(path: &std::path::Path, outbox: &Outbox, saved: &mut Outbox) {
    if outbox == saved {
        return;
    }
    match save_json(path, outbox) {
        Ok(()) => *saved = outbox.clone(),
        Err(e) => tracing::error!(error = %e, "could not persist the status outbox"),
    }
}

pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use woa_common::margo::{ComponentStatus, DeploymentState};

    fn manifest(error: Option<StatusError>) -> String {
        serde_json::to_string(&DeploymentStatusManifest::new(
            "d1",
            "abc",
            DeploymentState::Installed,
            error,
            vec![ComponentStatus {
                name: "web".into(),
                state: DeploymentState::Installed,
                error: None,
            }],
        ))
        .unwrap()
    }

    #[test]
    fn a_pull_problem_reaches_statuses_without_hiding_their_own_errors() {
        let problem = PullProblem {
            code: "ERR_REPOSITORY_AUTH",
            source: "https://wos/git/d.git".into(),
            message: "the repository refused the credentials (HTTP 401)".into(),
        };
        let plain = manifest(None);
        assert_eq!(decorate(&plain, None), plain);
        let decorated: serde_json::Value =
            serde_json::from_str(&decorate(&plain, Some(&problem))).unwrap();
        assert_eq!(decorated["status"]["state"], "installed");
        assert_eq!(decorated["status"]["error"]["code"], "ERR_REPOSITORY_AUTH");
        assert_eq!(decorated["revision"], "abc");
        let own = manifest(Some(StatusError::new(
            "ERR_IMAGE_PULL",
            "web",
            "no such image",
        )));
        assert_eq!(decorate(&own, Some(&problem)), own);
    }

    #[test]
    fn capabilities_carry_the_device_id() {
        let m = with_device_id(
            r#"{"kind":"DeviceCapabilitiesManifest","properties":{"id":"host"}}"#,
            "dev-1",
        );
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["properties"]["id"], "dev-1");
        assert_eq!(with_device_id("not json", "x"), "not json");
    }
}
