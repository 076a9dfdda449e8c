//! A log-line rate limit as pure arithmetic, like [`crate::backoff`]: the caller owns the clock.
//!
//! Lines an outside party can cause (a failed TLS handshake, a denied call, a bad packet) go
//! through one, so a flood of them cannot flood the log or the disk.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `burst` lines in each `window`; the lines held back are counted and the count is
/// said with the next line let through.
#[derive(Debug)]
pub struct RateLimit {
    pub burst: u32,
    pub window: Duration,
    window_start: Option<Instant>,
    in_window: u32,
    held_back: u64,
}

impl Default for RateLimit {
    /// 10 lines per 10 s.
    fn default() -> Self {
        RateLimit::new(10, Duration::from_secs(10))
    }
}

impl RateLimit {
    pub fn new(burst: u32, window: Duration) -> Self {
        RateLimit {
            burst,
            window,
            window_start: None,
            in_window: 0,
            held_back: 0,
        }
    }

    /// `Some(n)` when a line may be written at `now`, `n` being how many were held back since
    /// the last one written; `None` when it must be held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= self.window {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.burst {
            self.held_back += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// A [`RateLimit`] shared by the tasks that log one kind of line.
#[derive(Debug, Default)]
pub struct SharedRateLimit(Mutex<RateLimit>);

impl SharedRateLimit {
    /// Logs `line` at warn level if the limit lets it through now.
    pub fn warn(&self, line: std::fmt::Arguments<'_>) {
        let allowed = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now());
        match allowed {
            Some(0) => tracing::warn!("{line}"),
            Some(n) => tracing::warn!("{line} ({n} such lines held back)"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_the_rest_is_counted() {
        let t0 = Instant::now();
        let mut r = RateLimit::default();
        let allowed = (0..25).filter(|_| r.allow(t0).is_some()).count();
        assert_eq!(allowed, 10);
        // Still in the window: held back.
        assert_eq!(r.allow(t0 + Duration::from_secs(9)), None);
        // The next window lets a line through and says how many were held back.
        assert_eq!(r.allow(t0 + Duration::from_secs(10)), Some(16));
        assert_eq!(r.allow(t0 + Duration::from_secs(10)), Some(0));
    }
}
