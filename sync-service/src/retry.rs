//! How woa-sync waits after a failed request, and how it tells about it: one rule for the
//! repository (fetch and status push) and for the WOS API.
//!
//! - A server that answers 503 or 429 with `Retry-After` gets exactly the wait it asked for
//!   (bounded, see [`delay`]); otherwise the caller's [`Backoff`] decides, which never comes
//!   sooner than the poll interval once it has grown to it.
//! - An outage is logged when it starts (with the cause), when its cause changes, as a
//!   summary at most every [`SUMMARY_EVERY`] while it lasts, and once when it ends (how long
//!   and how many attempts failed), never once per failed attempt ([`Outage`]).

use std::time::{Duration, Instant};

use woa_common::backoff::Backoff;

/// Bounds on a `Retry-After`: a zero would mean a tight loop, a huge one a silent device.
const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// How often an ongoing outage is summarised in the log.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(300);

/// The wait before the next attempt: what the server asked for (`asked`, from `Retry-After`,
/// kept within 1 s..1 h), else the next backoff delay. A wait the server asked for does not
/// grow the backoff: it is the server's pace, not a failure streak of ours.
pub(crate) fn delay(asked: Option<Duration>, backoff: &mut Backoff) -> Duration {
    match asked {
        Some(asked) => asked.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX),
        None => backoff.next_delay(),
    }
}

/// `Retry-After` of an answer with `status`: only 503 and 429 carry a wait that means "come
/// back then" (RFC 9110 §10.2.3, RFC 6585 §4). Both forms are read: delay-seconds and an
/// HTTP-date (a date in the past means now, i.e. the minimum wait).
pub(crate) fn retry_after(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> Option<Duration> {
    if status != reqwest::StatusCode::SERVICE_UNAVAILABLE
        && status != reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        return None;
    }
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    Some(
        at.duration_since(jiff::Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO),
    )
}

/// How bad an outage of one peer is, which decides the level of its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The device keeps working, e.g. statuses wait in the outbox.
    Warn,
    /// The device cannot do its job, e.g. it cannot read its desired state.
    Error,
}

/// What the log says about one peer's outage; the messages are fixed so people and tests can
/// find them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Messages {
    /// The first failure, or a failure with a new cause.
    pub(crate) down: &'static str,
    /// The periodic summary while it lasts.
    pub(crate) still_down: &'static str,
    /// The first success after it.
    pub(crate) back: &'static str,
}

/// The log of one peer's reachability: a change is said once, an outage summarised now and
/// then, the failures in between only at debug level.
#[derive(Debug)]
pub(crate) struct Outage {
    severity: Severity,
    messages: Messages,
    summary_every: Duration,
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    /// Failed attempts in this outage.
    failures: u64,
    /// What identifies the cause; a new one is logged like a new outage.
    key: String,
    /// The last time the outage was logged (start, change or summary).
    logged: Instant,
    /// Failures since then.
    unlogged: u64,
}

/// What [`Outage::failed`] logged, for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logged {
    Down,
    Summary,
    Quiet,
}

impl Outage {
    /// An outage log for a peer whose failures are logged at `severity`.
    pub(crate) fn new(severity: Severity, messages: Messages) -> Outage {
        Outage {
            severity,
            messages,
            summary_every: SUMMARY_EVERY,
            down: None,
        }
    }

    /// Records a failed attempt. `key` identifies the cause (like the HTTP status, never the
    /// resource asked for, so one outage over many deployments stays one); `cause` is what the
    /// log says.
    pub(crate) fn failed(&mut self, key: &str, cause: &dyn std::fmt::Display) {
        self.failed_at(Instant::now(), key, cause);
    }

    /// Records a success: logs the end of an outage, if there was one.
    pub(crate) fn recovered(&mut self) {
        self.recovered_at(Instant::now());
    }

    fn failed_at(&mut self, now: Instant, key: &str, cause: &dyn std::fmt::Display) -> Logged {
        let Some(down) = self.down.as_mut() else {
            self.down = Some(Down {
                since: now,
                failures: 1,
                key: key.to_owned(),
                logged: now,
                unlogged: 0,
            });
            self.log_down(cause);
            return Logged::Down;
        };
        down.failures += 1;
        if down.key != key {
            down.key = key.to_owned();
            down.logged = now;
            down.unlogged = 0;
            self.log_down(cause);
            return Logged::Down;
        }
        if now.duration_since(down.logged) < self.summary_every {
            down.unlogged += 1;
            tracing::debug!(error = %cause, failures = down.failures, "failed again");
            return Logged::Quiet;
        }
        let (failures, since_last) = (down.failures, down.unlogged + 1);
        let down_for = whole_seconds(now.duration_since(down.since));
        down.logged = now;
        down.unlogged = 0;
        let message = self.messages.still_down;
        match self.severity {
            Severity::Warn => {
                tracing::warn!(error = %cause, down_for = ?down_for, failures, since_last, "{message}");
            }
            Severity::Error => {
                tracing::error!(error = %cause, down_for = ?down_for, failures, since_last, "{message}");
            }
        }
        Logged::Summary
    }

    fn recovered_at(&mut self, now: Instant) {
        if let Some(down) = self.down.take() {
            let down_for = whole_seconds(now.duration_since(down.since));
            let message = self.messages.back;
            tracing::info!(down_for = ?down_for, failures = down.failures, "{message}");
        }
    }

    fn log_down(&self, cause: &dyn std::fmt::Display) {
        let message = self.messages.down;
        match self.severity {
            Severity::Warn => tracing::warn!(error = %cause, "{message}"),
            Severity::Error => tracing::error!(error = %cause, "{message}"),
        }
    }
}

/// `duration` rounded down to whole seconds, which read well in a log (`12s`, not
/// `12.004361s`); under a second it stays as it is.
fn whole_seconds(duration: Duration) -> Duration {
    if duration < Duration::from_secs(1) {
        duration
    } else {
        Duration::from_secs(duration.as_secs())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    const MESSAGES: Messages = Messages {
        down: "down",
        still_down: "still down",
        back: "back",
    };

    #[test]
    fn an_outage_is_logged_at_its_start_its_changes_and_now_and_then() {
        let mut outage = Outage::new(Severity::Warn, MESSAGES);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(outage.failed_at(at(0), "503", &"x"), Logged::Down);
        assert!(outage.down.is_some());
        // One failure a second for 10 minutes: a summary every 5 minutes, nothing else.
        let logged: Vec<Logged> = (1..=600)
            .map(|s| outage.failed_at(at(s), "503", &"x"))
            .filter(|l| *l != Logged::Quiet)
            .collect();
        assert_eq!(logged, [Logged::Summary, Logged::Summary]);
        // A new cause is news.
        assert_eq!(outage.failed_at(at(601), "none", &"y"), Logged::Down);
        assert_eq!(outage.failed_at(at(602), "none", &"y"), Logged::Quiet);
        assert_eq!(outage.down.as_ref().unwrap().failures, 603);
        outage.recovered_at(at(602));
        assert!(outage.down.is_none());
        // The next failure starts a new outage, logged at once.
        assert_eq!(outage.failed_at(at(604), "none", &"y"), Logged::Down);
    }

    #[test]
    fn the_server_s_wait_is_taken_as_asked_within_bounds() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        let asked = |s| {
            delay(
                Some(Duration::from_secs(s)),
                &mut Backoff::new(Duration::ZERO, Duration::ZERO),
            )
        };
        assert_eq!(asked(5), Duration::from_secs(5));
        assert_eq!(asked(0), RETRY_AFTER_MIN);
        assert_eq!(asked(86_400), RETRY_AFTER_MAX);
        assert!(delay(None, &mut backoff) >= Duration::from_secs(1));
        assert_eq!(backoff.failures(), 1);
        delay(Some(Duration::from_secs(5)), &mut backoff);
        assert_eq!(
            backoff.failures(),
            1,
            "an asked-for wait is no failure streak"
        );
    }

    #[test]
    fn retry_after_is_read_from_503_and_429_in_both_forms() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            headers
        };
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            retry_after(unavailable, &headers("5")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &headers(" 7 ")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after(StatusCode::BAD_GATEWAY, &headers("5")), None);
        assert_eq!(retry_after(unavailable, &HeaderMap::new()), None);
        assert_eq!(retry_after(unavailable, &headers("soon")), None);
        let in_a_minute = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&in_a_minute)
            .unwrap();
        let wait = retry_after(unavailable, &headers(&date)).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{date}: {wait:?}"
        );
        assert_eq!(
            retry_after(unavailable, &headers("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(Duration::ZERO)
        );
    }
}
