//! Capped exponential backoff with jitter, shared by everything that retries a remote call.
//!
//! The delay grows as `base * 2^failures` up to `cap`; the actual delay is drawn uniformly from
//! the upper half of that range ("equal jitter"). Keeping at least half of the exponential delay
//! spaces retries out reliably, while the random half keeps a fleet of devices that failed
//! together (e.g. when the orchestrator restarted) from retrying in lockstep.

use std::time::Duration;

use rand::Rng;

/// Retry state for one remote peer: how many attempts failed in a row and how long to wait next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff whose first delay is about `base` and which never waits longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// Records one more failure and returns the delay before the next attempt.
    ///
    /// The delay is random in `[d/2, d]` where `d = min(cap, base * 2^n)` and `n` is the number
    /// of failures recorded before this one, so the first delay is at most `base`. It never
    /// exceeds the cap, and huge failure counts saturate instead of overflowing.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// [`Backoff::next_delay`] with a caller-provided random source (deterministic in tests).
    fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        rng.random_range(ceiling / 2..=ceiling)
    }

    /// The upper bound `min(cap, base * 2^failures)` of the next delay.
    fn ceiling(&self) -> Duration {
        let grown = match 2u32.checked_pow(self.failures) {
            Some(factor) => self.base.saturating_mul(factor),
            // 2^failures does not fit: the product is at least 2^32 times base, which is beyond
            // any sensible cap unless base is zero.
            None if self.base.is_zero() => Duration::ZERO,
            None => Duration::MAX,
        };
        grown.min(self.cap)
    }

    /// Forgets all failures after a success, so the next delay starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Number of failures recorded since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Caps further delays (e.g. at the poll interval when it changes), without forgetting the
    /// failure count.
    pub fn set_cap(&mut self, cap: Duration) {
        self.cap = cap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(60);

    fn assert_within(delay: Duration, ceiling: Duration) {
        assert!(
            delay >= ceiling / 2 && delay <= ceiling,
            "{delay:?} not in [{:?}, {ceiling:?}]",
            ceiling / 2
        );
    }

    #[test]
    fn delays_grow_exponentially_from_base() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut rng = StdRng::seed_from_u64(1);
        for n in 0..6u32 {
            assert_eq!(backoff.failures(), n);
            let ceiling = BASE * 2u32.pow(n);
            assert_eq!(backoff.ceiling(), ceiling);
            assert_within(backoff.next_delay_with(&mut rng), ceiling);
        }
        assert_eq!(backoff.failures(), 6);
    }

    #[test]
    fn delays_never_exceed_cap() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..30 {
            assert!(backoff.next_delay() <= CAP);
        }
        assert_eq!(backoff.ceiling(), CAP);
        // Once capped, delays still jitter in the upper half of the cap.
        assert!(backoff.next_delay() >= CAP / 2);
    }

    #[test]
    fn reset_starts_over_from_base() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.ceiling(), BASE);
        assert!(backoff.next_delay() <= BASE);
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(u64::MAX / 2), CAP);
        assert_eq!(backoff.ceiling(), CAP);
        backoff.failures = u32::MAX - 1;
        assert!(backoff.next_delay() <= CAP);
        assert!(backoff.next_delay() <= CAP);
        assert_eq!(backoff.failures(), u32::MAX);

        let mut zero = Backoff::new(Duration::ZERO, CAP);
        zero.failures = 40;
        assert_eq!(zero.next_delay(), Duration::ZERO);
    }

    #[test]
    fn set_cap_limits_later_delays_and_keeps_failures() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..20 {
            backoff.next_delay();
        }
        let short = Duration::from_secs(5);
        backoff.set_cap(short);
        assert_eq!(backoff.failures(), 20);
        for _ in 0..100 {
            assert_within(backoff.next_delay(), short);
        }
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let ceiling = BASE * 8;
        let mut rng = StdRng::seed_from_u64(7);
        let (mut lowest, mut highest) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let mut backoff = Backoff::new(BASE, CAP);
            backoff.failures = 3;
            let delay = backoff.next_delay_with(&mut rng);
            assert_within(delay, ceiling);
            lowest = lowest.min(delay);
            highest = highest.max(delay);
        }
        // The samples must actually be random, covering most of [d/2, d].
        assert!(lowest < ceiling / 2 + ceiling / 20, "lowest {lowest:?}");
        assert!(highest > ceiling - ceiling / 20, "highest {highest:?}");
    }
}
