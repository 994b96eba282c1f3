//! `woa-testkit conformance`: checks that a deployment service keeps the `woa.deploy.v1`
//! contract (proto/README.md), whatever runtime it drives.
//!
//! The suite talks to the target only through the contract, over mutual TLS, as `woa-sync`
//! does. Every case uses fresh deployment ids and revisions and ends by applying an empty desired
//! state. Because `ApplyDesiredState` replaces the whole desired state, the suite owns the
//! target while it runs: whatever the target ran before is removed.

mod cases;
mod target;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use cases::Case;
use target::Target;

/// What `woa-testkit conformance` needs to reach and exercise a deployment service.
#[derive(Debug, Clone, clap::Args)]
pub struct ConformanceOptions {
    /// The deployment service, `HOST:PORT`.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// PEM file of the CA that issued the target's server certificate.
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// PEM file of a client certificate the target accepts.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// PEM file of the key of `--cert`.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Name to verify the server certificate against (default: the host of `--target`).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// A container image the target can run that idles when started with the argument `sleep`
    /// (the compose files of the suite say `command: ["sleep"]`).
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// How long a deployment may take to reach a state.
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 60)]
    pub timeout_secs: u64,
}

impl ConformanceOptions {
    /// How long a deployment may take to reach a state.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name, e.g. `apply-installs`.
    pub name: &'static str,
    /// Why the case failed; `None` when it passed.
    pub failure: Option<String>,
    /// How long the case took, its clean-up included.
    pub elapsed: Duration,
}

impl CaseResult {
    /// True when the case passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    /// `PASS <name> (<time>)` or `FAIL <name>: <reason> (<time>)`, on one line.
    pub fn line(&self) -> String {
        let time = format!("({:.1}s)", self.elapsed.as_secs_f64());
        match &self.failure {
            None => format!("PASS {} {time}", self.name),
            Some(reason) => {
                // One line per case, so the output can be grepped and read as a table.
                let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
                format!("FAIL {}: {reason} {time}", self.name)
            }
        }
    }
}

/// The outcome of a whole run, one result per case in the order they ran.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every case's result.
    pub cases: Vec<CaseResult>,
}

impl Report {
    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed()).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    /// True when every case passed.
    pub fn success(&self) -> bool {
        self.failed() == 0
    }

    /// `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }

    /// Every case's line, then the summary.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for case in &self.cases {
            let _ = writeln!(text, "{}", case.line());
        }
        let _ = writeln!(text, "{}", self.summary());
        text
    }
}

/// Runs every case against the target, in order.
pub async fn run(options: &ConformanceOptions) -> Report {
    run_reporting(options, |_| {}).await
}

/// Runs every case against the target, in order, handing each result to `on_case` as soon as
/// the case ends (the CLI prints it, so a person sees progress).
pub async fn run_reporting(
    options: &ConformanceOptions,
    mut on_case: impl FnMut(&CaseResult),
) -> Report {
    let mut report = Report::default();
    // A target the suite cannot reach over TLS fails every case for one reason: a refused
    // handshake is final, so it is tried once and named once, and the rest are not run.
    let target = match Target::new(options) {
        Ok(target) => target.handshake().await.map(|()| target),
        Err(err) => Err(err),
    };
    let mut unusable = target.as_ref().err().map(|err| format!("{err:#}"));
    for case in Case::ALL {
        let started = Instant::now();
        let failure = match (&target, unusable.take()) {
            (Ok(target), _) => run_case(case, target).await.err(),
            (Err(_), Some(reason)) => Some(reason),
            (Err(_), None) => Some("not run: the target is unusable (see above)".to_owned()),
        };
        let result = CaseResult {
            name: case.name(),
            failure,
            elapsed: started.elapsed(),
        };
        on_case(&result);
        report.cases.push(result);
    }
    report
}

/// Runs `case` and then, for a case that applies desired states, clears the target; a failed
/// clean-up fails the case, since the next case would start from a state it did not expect.
async fn run_case(case: Case, target: &Target) -> Result<(), String> {
    // A backstop: every wait in a case is bounded, but a target that stops answering
    // mid-stream must not hang the whole suite.
    let limit = target.timeout() * 4 + Duration::from_secs(30);
    let outcome = match tokio::time::timeout(limit, case.run(target)).await {
        Ok(outcome) => outcome.map_err(|err| format!("{err:#}")),
        Err(_) => Err(format!("no result within {limit:?}")),
    };
    if !case.applies() {
        return outcome;
    }
    let cleared = match tokio::time::timeout(limit, target.clear()).await {
        Ok(cleared) => cleared.map_err(|err| format!("{err:#}")),
        Err(_) => Err(format!("no result within {limit:?}")),
    };
    match (outcome, cleared) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(reason), Ok(())) => Err(reason),
        (Ok(()), Err(clean)) => Err(format!("clean-up: {clean}")),
        (Err(reason), Err(clean)) => Err(format!("{reason}; clean-up: {clean}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use super::*;

    fn result(name: &'static str, failure: Option<&str>) -> CaseResult {
        CaseResult {
            name,
            failure: failure.map(str::to_owned),
            elapsed: Duration::from_millis(1250),
        }
    }

    #[test]
    fn lines_name_the_case_the_reason_on_one_line_and_the_time() {
        assert_eq!(result("update", None).line(), "PASS update (1.2s)");
        assert_eq!(
            result("remove", Some("still\n  INSTALLED")).line(),
            "FAIL remove: still INSTALLED (1.2s)"
        );
    }

    #[test]
    fn the_summary_counts_passes_and_failures() {
        let report = Report {
            cases: vec![result("a", None), result("b", Some("x")), result("c", None)],
        };
        assert_eq!(report.summary(), "2 passed, 1 failed");
        assert!(!report.success());
        assert_eq!(
            report.to_text(),
            "PASS a (1.2s)\nFAIL b: x (1.2s)\nPASS c (1.2s)\n2 passed, 1 failed\n"
        );
    }

    #[tokio::test]
    async fn unreadable_files_fail_every_case_with_the_reason() {
        let options = ConformanceOptions {
            target: "127.0.0.1:1".to_owned(),
            ca: PathBuf::from("/nonexistent/ca.pem"),
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
            server_name: None,
            image: "unused".to_owned(),
            timeout_secs: 1,
        };
        let mut seen = Vec::new();
        let report = run_reporting(&options, |case| seen.push(case.name)).await;
        assert_eq!(report.cases.len(), Case::ALL.len());
        assert_eq!(seen, Case::ALL.map(Case::name));
        assert_eq!(report.failed(), Case::ALL.len());
        // The reason is given once, by the first case; the others say they did not run.
        let reasons: Vec<&str> = report
            .cases
            .iter()
            .map(|case| case.failure.as_deref().unwrap_or_default())
            .collect();
        assert!(reasons[0].contains("/nonexistent/ca.pem"), "{reasons:?}");
        for reason in &reasons[1..] {
            assert!(reason.starts_with("not run"), "{reasons:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_fails_every_case_at_once() {
        let pki = crate::pki::Pki::init().unwrap();
        // Nothing listens on port 1 of loopback: the connection is refused at once.
        let options = ConformanceOptions {
            target: "127.0.0.1:1".to_owned(),
            ca: pki.file("ca.pem"),
            cert: pki.file("sync.pem"),
            key: pki.file("sync-key.pem"),
            server_name: None,
            image: "unused".to_owned(),
            timeout_secs: 60,
        };
        let report = run(&options).await;
        let text = report.to_text();
        assert_eq!(report.failed(), Case::ALL.len(), "{text}");
        // Said once, by the first case; no case waited out its timeout on the target.
        let first = report.cases[0].failure.as_deref().unwrap_or_default();
        assert!(first.contains("127.0.0.1:1"), "{text}");
        for case in &report.cases[1..] {
            assert!(
                case.failure
                    .as_deref()
                    .is_some_and(|r| r.starts_with("not run")),
                "{text}"
            );
        }
    }
}
