//! Whether a new release's components come up and stay up: pure, over what the engine
//! reports at each look, so the rules are tested without an engine or a clock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::Error;
use crate::runtime::{ContainerPlan, ObservedContainer};

/// The verification of one release, by component.
#[derive(Debug)]
pub(crate) struct Verification {
    /// The release verified.
    pub(crate) digest: String,
    /// The components looked at so far.
    pub(crate) checks: HashMap<String, Check>,
}

impl Verification {
    pub(crate) fn new(digest: String) -> Self {
        Verification {
            digest,
            checks: HashMap::new(),
        }
    }

    /// Whether `component` was found ready and settled.
    pub(crate) fn is_ready(&self, component: &str) -> bool {
        self.checks.get(component).is_some_and(|c| c.ready)
    }
}

/// What a look at a component found.
#[derive(Debug)]
pub(crate) enum Poll {
    /// Up, and stayed up for the settle time.
    Ready,
    /// Not yet.
    Waiting,
    /// It will not come up: exited, restarted, unhealthy, or not ready in time.
    Failed(Error),
}

/// The verification of one component: it must be ready (running, and healthy where it has a
/// health check) before its deadline, then stay so for the settle time; a container that exits
/// or restarts meanwhile fails it.
#[derive(Debug)]
pub(crate) struct Check {
    deadline: Instant,
    timeout: Duration,
    /// Restart counts when first seen.
    restarts: BTreeMap<String, u32>,
    /// When it counts as settled, once ready.
    settled_at: Option<Instant>,
    ready: bool,
}

impl Check {
    pub(crate) fn new(now: Instant, timeout: Duration) -> Self {
        Check {
            deadline: now + timeout,
            timeout,
            restarts: BTreeMap::new(),
            settled_at: None,
            ready: false,
        }
    }

    /// Looks at the component's containers (`containers[i]` is what the engine has under
    /// `plans[i]`'s name) at `now`.
    pub(crate) fn poll(
        &mut self,
        component: &str,
        plans: &[ContainerPlan],
        containers: &[Option<ObservedContainer>],
        now: Instant,
        settle: Duration,
    ) -> Poll {
        if self.ready {
            return Poll::Ready;
        }
        let failed = |message: String| {
            Poll::Failed(Error::NotReady {
                component: component.to_string(),
                message,
            })
        };
        let mut ready = true;
        for (p, o) in plans.iter().zip(containers) {
            let name = p.name.as_str();
            // Missing, or still the container of the release before.
            let Some(o) = o.as_ref().filter(|o| o.spec_hash == p.spec_hash) else {
                ready = false;
                continue;
            };
            let before = *self
                .restarts
                .entry(name.to_string())
                .or_insert(o.restart_count);
            if o.restart_count > before || o.state == "restarting" {
                return failed(format!(
                    "container {name} restarted (last exit code {})",
                    o.exit_code
                ));
            }
            if o.health == "unhealthy" {
                return failed(format!("container {name} is unhealthy"));
            }
            let one_shot = p
                .service
                .restart
                .as_deref()
                .is_none_or(|r| r == "no" || r.starts_with("on-failure"));
            match o.state.as_str() {
                "exited" if one_shot && o.exit_code == 0 => {}
                "exited" | "dead" => {
                    return failed(format!("container {name} exited with code {}", o.exit_code));
                }
                _ if o.is_ready() => {}
                _ => ready = false,
            }
        }
        match (ready, self.settled_at) {
            (true, None) => self.settled_at = Some(now + settle),
            (true, Some(_)) => {}
            // Not ready any more after it was: the restart check above names why.
            (false, Some(_)) => self.settled_at = None,
            (false, None) if now >= self.deadline => {
                let waiting: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
                return failed(format!(
                    "{} not ready within {}",
                    waiting.join(", "),
                    humantime_serde::re::humantime::format_duration(self.timeout)
                ));
            }
            (false, None) => {}
        }
        self.ready = ready && self.settled_at.is_some_and(|at| now >= at);
        if self.ready {
            Poll::Ready
        } else {
            Poll::Waiting
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::Owner;
    use crate::spec::Service;

    fn plan(restart: Option<&str>) -> ContainerPlan {
        ContainerPlan {
            name: "d_c_web".into(),
            owner: Owner {
                deployment: "d".into(),
                component: "c".into(),
            },
            service: Service {
                name: "web".into(),
                image: "web:1".into(),
                restart: restart.map(str::to_string),
                ..Default::default()
            },
            spec_hash: "h1".into(),
            networks: Default::default(),
            volumes: Default::default(),
            package_dir: "/p".into(),
            containers: Default::default(),
        }
    }

    fn container(state: &str, restarts: u32, exit_code: i64) -> Option<ObservedContainer> {
        Some(ObservedContainer {
            id: "id".into(),
            name: "d_c_web".into(),
            owner: plan(None).owner,
            service: "web".into(),
            spec_hash: "h1".into(),
            image: "web:1".into(),
            state: state.into(),
            health: String::new(),
            restart_count: restarts,
            exit_code,
            depends_on: vec![],
        })
    }

    const SETTLE: Duration = Duration::from_secs(10);

    #[test]
    fn ready_only_after_staying_up_for_the_settle_time() {
        let t0 = Instant::now();
        let plans = [plan(Some("always"))];
        let mut check = Check::new(t0, Duration::from_secs(60));
        let up = [container("running", 0, 0)];
        assert!(matches!(
            check.poll("c", &plans, &up, t0, SETTLE),
            Poll::Waiting
        ));
        let t1 = t0 + Duration::from_secs(5);
        assert!(matches!(
            check.poll("c", &plans, &up, t1, SETTLE),
            Poll::Waiting
        ));
        let t2 = t0 + SETTLE;
        assert!(matches!(
            check.poll("c", &plans, &up, t2, SETTLE),
            Poll::Ready
        ));
        assert!(check.ready);
    }

    #[test]
    fn a_restart_while_settling_fails_the_component() {
        let t0 = Instant::now();
        let plans = [plan(Some("always"))];
        let mut check = Check::new(t0, Duration::from_secs(60));
        let _ = check.poll("c", &plans, &[container("running", 0, 0)], t0, SETTLE);
        let later = t0 + Duration::from_secs(2);
        let Poll::Failed(e) = check.poll("c", &plans, &[container("running", 1, 1)], later, SETTLE)
        else {
            panic!("a restart went unnoticed");
        };
        assert!(e.to_string().contains("restarted"), "{e}");
    }

    #[test]
    fn an_outdated_or_missing_container_is_not_ready_and_times_out() {
        let t0 = Instant::now();
        let plans = [plan(None)];
        let mut check = Check::new(t0, Duration::from_secs(30));
        let mut old = container("running", 0, 0);
        old.as_mut().unwrap().spec_hash = "h0".into();
        assert!(matches!(
            check.poll("c", &plans, &[old], t0, SETTLE),
            Poll::Waiting
        ));
        let late = t0 + Duration::from_secs(31);
        let Poll::Failed(e) = check.poll("c", &plans, &[None], late, SETTLE) else {
            panic!("no timeout");
        };
        assert!(e.to_string().contains("not ready within 30s"), "{e}");
    }

    #[test]
    fn a_one_shot_service_that_completed_is_ready_and_one_that_failed_is_not() {
        let t0 = Instant::now();
        let plans = [plan(Some("no"))];
        let mut done = Check::new(t0, Duration::from_secs(30));
        let _ = done.poll("c", &plans, &[container("exited", 0, 0)], t0, SETTLE);
        let at = t0 + SETTLE;
        assert!(matches!(
            done.poll("c", &plans, &[container("exited", 0, 0)], at, SETTLE),
            Poll::Ready
        ));
        let mut crashed = Check::new(t0, Duration::from_secs(30));
        assert!(matches!(
            crashed.poll("c", &plans, &[container("exited", 0, 2)], t0, SETTLE),
            Poll::Failed(_)
        ));
    }
}
