//! One pass over one deployment: offer the wanted release to its rollout record, plan against
//! what the engine runs, execute, verify a new release component by component, conclude it
//! (installed, or rolled back), publish the status. Removed deployments are taken down.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use woa_common::margo::StatusError;

use crate::Result;
use crate::agent::Agent;
use crate::config::Approval;
use crate::desired::{Component, Deployment, DesiredState, status_error};
use crate::plan::{self, Step};
use crate::rollout::{Gates, Offer, Phase, Release};
use crate::runtime::{ContainerRuntime, Observed, Owner};
use crate::status::{self, release_status};
use crate::verify::{Check, Poll, Verification};
use crate::worker::{Action, Hint};

/// How often a release being verified, or a step waiting for a dependency, is looked at again.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(250);

/// What a worker keeps between the passes over its deployment.
#[derive(Default)]
pub(crate) struct Local {
    /// Apply errors by component, from the last pass.
    errors: HashMap<Owner, StatusError>,
    /// What became of the wanted release when it was last offered.
    offer: Option<Offer>,
    /// The new release being verified.
    verifying: Option<Verification>,
    /// Since when each component's steps wait for their dependencies.
    waiting: HashMap<Owner, Instant>,
    /// When a pass last finished changing the engine: an observation from before is stale.
    changed_at: Option<Instant>,
}

impl<R: ContainerRuntime> Agent<R> {
    /// One pass over deployment `id`.
    pub(crate) async fn reconcile(
        &self,
        id: &str,
        hint: Option<Hint>,
        local: &mut Local,
    ) -> Result<Action> {
        let desired = self.desired();
        let fresh = hint.filter(|h| local.changed_at.is_none_or(|at| h.at >= at));
        let observed = match fresh.map(|h| h.observed) {
            Some(Ok(observed)) => observed,
            Some(Err(error)) => {
                self.publish_unreachable(&desired, id, &error, local);
                return Ok(Action::Await);
            }
            None => match self.runtime.observe_deployment(id).await {
                Ok(observed) => observed,
                Err(e) => {
                    self.publish_unreachable(&desired, id, &status_error(&e), local);
                    return Err(e);
                }
            },
        };
        if desired.revision.is_empty() {
            // Never told what to run (first start, or the state directory was lost): removing
            // everything labelled ours would take the device's apps down before the sync
            // service had a chance to say what it wants.
            return Ok(Action::Await);
        }
        let Some(d) = desired.deployments.iter().find(|d| d.id == id) else {
            return self
                .take_down(id, &desired.revision, &observed, local)
                .await;
        };
        self.record_removal(id, None);
        self.offer(&desired.revision, d, local)?;
        let track = self.track(id).unwrap_or_default();
        // Nothing may run before a first release is promoted (pending approval or window).
        let running: &[Deployment] = match &track.current {
            Some(current) => std::slice::from_ref(&current.deployment),
            None => &[],
        };
        let rolling = matches!(track.phase, Phase::Rolling | Phase::Restoring);
        // A first release that failed with nothing to go back to is left as it is: starting
        // its containers again at every pass would be the retry loop a hold exists to stop.
        let steps: Vec<Step> = plan::plan(running, &observed, self.settings.remove_volumes)
            .into_iter()
            .filter(|s| track.phase != Phase::Failed || s.owner().is_none())
            .collect();
        if steps.is_empty() && !rolling {
            local.errors.clear();
            local.waiting.clear();
            self.publish_desired(&desired, d, &observed, local);
            return Ok(Action::Await);
        }
        self.publish_desired(&desired, d, &observed, local);
        let engine = self.workers.engine.read().await;
        let changes = !steps.is_empty();
        let (removals, work): (Vec<Step>, Vec<Step>) =
            steps.into_iter().partition(|s| s.owner().is_none());
        if let Err(e) = self.remove_unwanted(removals).await {
            tracing::warn!(deployment = %id, error = %e, "removing what is no longer wanted failed");
        }
        // Every image first, before anything is stopped: a failed pull or a full disk leaves
        // what runs running.
        let mut failed = self.pull_images(&work).await;
        let running = running.first();
        let verifying = running.filter(|_| rolling).map(|d| {
            let digest = Release::new("", d).digest;
            match local.verifying.take() {
                Some(v) if v.digest == digest => v,
                _ => Verification::new(digest),
            }
        });
        let (verifying, deferred) = match running {
            Some(r) => {
                self.apply_components(r, work, verifying, &mut failed, local)
                    .await
            }
            None => (None, false),
        };
        drop(engine);
        if changes {
            // What was observed until now may predate these steps' effects.
            local.changed_at = Some(Instant::now());
        }
        let action = match (running, verifying) {
            (Some(r), Some(v)) => self.conclude(r, v, &mut failed, local)?,
            _ if deferred => Action::Requeue(CHECK_EVERY),
            _ => Action::Await,
        };
        local.errors = failed;
        let observed = match changes {
            true => self.runtime.observe_deployment(id).await?,
            false => observed,
        };
        self.publish_desired(&desired, d, &observed, local);
        Ok(action)
    }

    /// Executes the steps of each component in order. While a release is verified, a
    /// component that waits must be up and settled before the next one starts, and the first
    /// failure stops the release. Returns the verification (`None` when not rolling) and
    /// whether steps wait for dependencies.
    async fn apply_components(
        &self,
        d: &Deployment,
        mut work: Vec<Step>,
        mut verifying: Option<Verification>,
        failed: &mut HashMap<Owner, StatusError>,
        local: &mut Local,
    ) -> (Option<Verification>, bool) {
        let mut deferred = false;
        for c in &d.components {
            let owner = owner_of(d, c);
            if verifying.is_some() && !failed.is_empty() {
                break;
            }
            let (mine, rest): (Vec<Step>, Vec<Step>) =
                work.into_iter().partition(|s| s.owner() == Some(&owner));
            work = rest;
            if failed.contains_key(&owner) {
                continue;
            }
            // A component under verification is looked at before its steps run: restarting
            // a crashed container first would hide the crash.
            let known = verifying
                .as_ref()
                .is_some_and(|v| v.checks.contains_key(&c.name));
            if let (Some(v), true) = (&mut verifying, known) {
                match self.poll(d, c, v).await {
                    Poll::Failed(e) => {
                        failed.insert(owner, status_error(&e));
                        break;
                    }
                    Poll::Ready => {}
                    Poll::Waiting if mine.is_empty() && c.wait => break,
                    Poll::Waiting => {}
                }
            }
            if !mine.is_empty() {
                let since = *local
                    .waiting
                    .entry(owner.clone())
                    .or_insert_with(Instant::now);
                let deadline = since + self.settings.rollout.ready_timeout;
                let (errors, waits) = self.run_component(mine, deadline).await;
                if let Some(e) = errors.first() {
                    tracing::warn!(error = %e, ?owner, "step failed");
                    failed.insert(owner.clone(), status_error(e));
                }
                if waits {
                    deferred = true;
                } else {
                    local.waiting.remove(&owner);
                }
            }
            let Some(v) = &mut verifying else { continue };
            if failed.contains_key(&owner) {
                break;
            }
            if !known {
                let timeout = c.timeout.unwrap_or(self.settings.rollout.ready_timeout);
                v.checks
                    .insert(c.name.clone(), Check::new(Instant::now(), timeout));
            }
            match self.poll(d, c, v).await {
                Poll::Failed(e) => {
                    failed.insert(owner, status_error(&e));
                    break;
                }
                Poll::Waiting if c.wait => break,
                Poll::Ready | Poll::Waiting => {}
            }
        }
        (verifying, deferred)
    }

    /// Looks at the containers of component `c` under verification `v`.
    async fn poll(&self, d: &Deployment, c: &Component, v: &mut Verification) -> Poll {
        let plans = plan::container_plans(d, c);
        let looks = join_all(plans.iter().map(|p| self.runtime.container(&p.name))).await;
        // The engine did not answer: no verdict yet, the deadline still runs.
        let Ok(containers) = looks.into_iter().collect::<Result<Vec<_>>>() else {
            return Poll::Waiting;
        };
        let Some(check) = v.checks.get_mut(&c.name) else {
            return Poll::Waiting;
        };
        check.poll(
            &c.name,
            &plans,
            &containers,
            Instant::now(),
            self.settings.rollout.settle,
        )
    }

    /// Concludes the verification of `d`'s release: installed when every component is ready,
    /// rolled back (or held) at the first failure, else looked at again soon.
    fn conclude(
        &self,
        d: &Deployment,
        verifying: Verification,
        failed: &mut HashMap<Owner, StatusError>,
        local: &mut Local,
    ) -> Result<Action> {
        // The first failure in component order is the cause.
        let cause = d
            .components
            .iter()
            .find_map(|c| failed.get(&owner_of(d, c)))
            .cloned();
        let ready = d.components.iter().all(|c| verifying.is_ready(&c.name));
        if cause.is_none() && !ready {
            local.verifying = Some(verifying);
            return Ok(Action::Requeue(CHECK_EVERY));
        }
        let digest = verifying.digest;
        let concluded = self.update_track(&d.id, |tracks| {
            // The operator may have rolled back meanwhile: conclude only what was verified.
            let track = tracks
                .get_mut(&d.id)
                .filter(|t| t.current.as_ref().is_some_and(|c| c.digest == digest))?;
            let Some(error) = &cause else {
                tracing::info!(deployment = %d.id, "release installed");
                track.phase = Phase::Installed;
                return Some(Action::Await);
            };
            let phase = track.phase;
            let restored = track.fail(error);
            // From now on the status is about the held release, not these errors.
            if let Some(hold) = &track.hold {
                failed.retain(|o, _| o.deployment != d.id);
                local.offer = Some(Offer::Held(hold.clone()));
            }
            match restored {
                Some(revision) => {
                    tracing::warn!(deployment = %d.id, error = %error.message, restoring = %revision, "release failed; rolling back");
                    self.metrics.rolled_back();
                    // Restore at once.
                    return Some(Action::Requeue(Duration::ZERO));
                }
                None if phase == Phase::Restoring => {
                    tracing::error!(deployment = %d.id, error = %error.message, "restoring the previous release failed");
                }
                None => {
                    tracing::warn!(deployment = %d.id, error = %error.message, "release failed with nothing to roll back to");
                }
            }
            Some(Action::Await)
        })?;
        self.workers.collect_garbage();
        Ok(concluded.unwrap_or(Action::Requeue(Duration::ZERO)))
    }

    /// Offers `d`'s release to its rollout record: promoted, pending (approval, window) or held.
    fn offer(&self, revision: &str, d: &Deployment, local: &mut Local) -> Result<()> {
        // The newest document is unusable: whatever runs keeps running.
        if d.error.is_some() {
            local.offer = None;
            return Ok(());
        }
        let rollout = &self.settings.rollout;
        let now = jiff::Timestamp::now();
        let windows = woa_common::window::Schedule::new(rollout.windows.clone(), Vec::new());
        let next_window = (!windows.allows(now))
            .then(|| {
                windows
                    .next_allowed(now)
                    .map(|t| t.round(jiff::Unit::Second))
            })
            .map(|t| t.and_then(|t| t.ok()).map(|t| t.to_string()));
        let wanted = Release::new(revision, d);
        let gates = Gates {
            manual: rollout.approval_of(&d.id) == Approval::Manual,
            window_closed: next_window.as_ref().map(|at| at.as_deref()),
        };
        let offer = self.update_track(&d.id, |tracks| {
            tracks
                .entry(d.id.clone())
                .or_default()
                .offer(&wanted, gates)
        })?;
        if offer == Offer::Promoted {
            tracing::info!(deployment = %d.id, %revision, release = %wanted.digest, "applying a new release");
        }
        local.offer = Some(offer);
        Ok(())
    }

    /// Takes down deployment `id`, no longer desired: reported `removing` while its containers
    /// exist, then `removed`.
    async fn take_down(
        &self,
        id: &str,
        revision: &str,
        observed: &Observed,
        local: &mut Local,
    ) -> Result<Action> {
        self.update_track(id, |tracks| tracks.remove(id))?;
        local.offer = None;
        local.verifying = None;
        let reported = self.reported(id);
        let (removal, shown) = status::leaving(id, revision, observed, self.removal(id), reported);
        self.record_removal(id, removal);
        self.publish(id, shown);
        let steps = plan::plan(&[], observed, self.settings.remove_volumes);
        if steps.is_empty() {
            // The data of its relative binds goes with its named volumes, and only then.
            let data = crate::desired::data_dir(&self.settings.state_dir.join("packages"), id);
            if self.settings.remove_volumes
                && data.exists()
                && let Err(e) = std::fs::remove_dir_all(&data)
            {
                tracing::warn!(deployment = %id, error = %e, "removing the data directory failed");
            }
            self.workers.collect_garbage();
            return Ok(Action::Done);
        }
        let engine = self.workers.engine.read().await;
        let removed = self.remove_unwanted(steps).await;
        drop(engine);
        local.changed_at = Some(Instant::now());
        removed?;
        // The next pass sees what is left, and reports the removal once nothing is.
        Ok(Action::Requeue(Duration::ZERO))
    }

    /// The status of desired deployment `d`, published.
    fn publish_desired(
        &self,
        desired: &DesiredState,
        d: &Deployment,
        observed: &Observed,
        local: &Local,
    ) {
        let track = self.track(&d.id);
        let rollout = (track.as_ref(), local.offer.as_ref());
        let status = release_status(d, &desired.revision, rollout, observed, &local.errors);
        self.publish(&d.id, Some(status));
    }

    /// The engine cannot be read: every component of `id` is reported failed with the reason,
    /// rather than leaving watchers with a stale "installed".
    fn publish_unreachable(
        &self,
        desired: &DesiredState,
        id: &str,
        error: &StatusError,
        local: &mut Local,
    ) {
        let Some(d) = desired.deployments.iter().find(|d| d.id == id) else {
            return;
        };
        local.errors = d
            .components
            .iter()
            .map(|c| (owner_of(d, c), error.clone()))
            .collect();
        self.publish_desired(desired, d, &Observed::default(), local);
    }
}

pub(crate) fn owner_of(d: &Deployment, c: &Component) -> Owner {
    Owner {
        deployment: d.id.clone(),
        component: c.name.clone(),
    }
}
