//! Exponential back-off as pure arithmetic: the caller owns the clock.
//!
//! The controller runtime and the service supervisor both use it, so "how long until the next
//! try" is decided in one place and tested without sleeping.

use std::time::Duration;

/// Delays of `initial * factor^n`, capped at `max`; `reset` after a success.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: u32,
    failures: u32,
}

impl Default for Backoff {
    /// 100 ms, doubling, capped at 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30), 2)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, factor: u32) -> Self {
        Backoff {
            initial,
            max,
            factor: factor.max(1),
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        let delay = self.delay_for(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The delay after the `n`th consecutive failure (0-based).
    pub fn delay_for(&self, n: u32) -> Duration {
        let mult = self.factor.checked_pow(n).unwrap_or(u32::MAX);
        self.initial.saturating_mul(mult).min(self.max)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 2);
        let got: Vec<u128> = (0..6).map(|_| b.fail().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(100));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let b = Backoff::default();
        assert_eq!(b.delay_for(u32::MAX), Duration::from_secs(30));
        assert_eq!(b.delay_for(64), Duration::from_secs(30));
    }
}
