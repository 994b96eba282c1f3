//! Capped exponential backoff with jitter, shared by everything that retries a remote call.
//!
//! The delay grows as `base * 2^failures`; below `cap` the actual delay is drawn uniformly from
//! the upper half of that range ("equal jitter"). Keeping at least half of the exponential delay
//! spaces retries out reliably, while the random half keeps a fleet of devices that failed
//! together (e.g. when the orchestrator restarted) from retrying in lockstep.
//!
//! Once the growth reaches `cap`, the delay is drawn from `[cap, cap * 1.25]` instead: the cap
//! is what the caller considers its normal pace (the poll interval, the resync interval), and a
//! peer that keeps failing must never be asked more often than a healthy one is.

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
    /// A backoff whose first delay is about `base` and which, once grown to `cap`, waits between
    /// `cap` and `cap * 1.25`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// Records one more failure and returns the delay before the next attempt.
    ///
    /// Let `d = base * 2^n`, where `n` is the number of failures recorded before this one. While
    /// `d < cap` the delay is random in `[d/2, d]`, so the first delay is at most `base`. From
    /// `d >= cap` on it is random in `[cap, cap + cap/4]`: never sooner than the cap, which a
    /// caller sets to its normal pace, with jitter on top so a fleet spreads out. Huge failure
    /// counts saturate instead of overflowing.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// [`Backoff::next_delay`] with a caller-provided random source (deterministic in tests).
    fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let (low, high) = self.bounds();
        self.failures = self.failures.saturating_add(1);
        rng.random_range(low..=high)
    }

    /// The range `[low, high]` the next delay is drawn from.
    fn bounds(&self) -> (Duration, Duration) {
        let grown = match 2u32.checked_pow(self.failures) {
            Some(factor) => self.base.saturating_mul(factor),
            // 2^failures does not fit: the product is at least 2^32 times base, which is beyond
            // any sensible cap unless base is zero.
            None if self.base.is_zero() => Duration::ZERO,
            None => Duration::MAX,
        };
        if grown >= self.cap {
            (self.cap, self.cap.saturating_add(self.cap / 4))
        } else {
            (grown / 2, grown)
        }
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

    /// A delay of a backoff that reached `cap`: never sooner than the cap, at most a quarter
    /// more.
    fn assert_capped(delay: Duration, cap: Duration) {
        assert!(
            delay >= cap && delay <= cap + cap / 4,
            "{delay:?} not in [{cap:?}, {:?}]",
            cap + cap / 4
        );
    }

    #[test]
    fn delays_grow_exponentially_from_base() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut rng = StdRng::seed_from_u64(1);
        for n in 0..6u32 {
            assert_eq!(backoff.failures(), n);
            let ceiling = BASE * 2u32.pow(n);
            assert_eq!(backoff.bounds(), (ceiling / 2, ceiling));
            assert_within(backoff.next_delay_with(&mut rng), ceiling);
        }
        assert_eq!(backoff.failures(), 6);
    }

    #[test]
    fn capped_delays_are_never_sooner_than_the_cap() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut rng = StdRng::seed_from_u64(3);
        // 100 ms doubled 10 times is past the cap of 60 s.
        for _ in 0..10 {
            assert!(backoff.next_delay_with(&mut rng) < CAP);
        }
        let (mut lowest, mut highest) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let delay = backoff.next_delay_with(&mut rng);
            assert_capped(delay, CAP);
            lowest = lowest.min(delay);
            highest = highest.max(delay);
        }
        // Still jittered across the whole range, so a fleet does not retry in lockstep.
        assert!(lowest < CAP + CAP / 40, "lowest {lowest:?}");
        assert!(highest > CAP + CAP / 4 - CAP / 40, "highest {highest:?}");

        // A base above the cap (the pull loop: 2 s base, 1 s poll interval) is capped at once:
        // the very first retry comes no sooner than the interval.
        let second = Duration::from_secs(1);
        let mut fast = Backoff::new(Duration::from_secs(2), second);
        for _ in 0..100 {
            assert_capped(fast.next_delay_with(&mut rng), second);
        }
    }

    #[test]
    fn reset_starts_over_from_base() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.bounds(), (BASE / 2, BASE));
        assert!(backoff.next_delay() <= BASE);
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(u64::MAX / 2), CAP);
        assert_eq!(backoff.bounds(), (CAP, CAP + CAP / 4));
        backoff.failures = u32::MAX - 1;
        assert_capped(backoff.next_delay(), CAP);
        assert_capped(backoff.next_delay(), CAP);
        assert_eq!(backoff.failures(), u32::MAX);

        let mut zero = Backoff::new(Duration::ZERO, CAP);
        zero.failures = 40;
        assert_eq!(zero.next_delay(), Duration::ZERO);

        let mut huge_cap = Backoff::new(BASE, Duration::MAX);
        huge_cap.failures = 40;
        assert_eq!(huge_cap.next_delay(), Duration::MAX);
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
            assert_capped(backoff.next_delay(), short);
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
