//! A token bucket in bytes per second: the bandwidth budget of uploads and
//! of catch-up reads, so that they cannot crowd out produce and tail reads.
//!
//! One per shard and purpose, used on that shard's executor; waiting sleeps
//! on a glommio timer and never blocks the core. The arithmetic
//! (`reserve`) is pure and takes the time as an argument.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Rate 0 means unlimited.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: Cell<f64>,
    last: Cell<Option<Instant>>,
}

impl TokenBucket {
    /// `bytes_per_sec` = 0: no limit. `burst` bytes may go at once.
    pub fn new(bytes_per_sec: u64, burst: u64) -> TokenBucket {
        TokenBucket {
            rate: bytes_per_sec as f64,
            burst: burst.max(1) as f64,
            tokens: Cell::new(burst.max(1) as f64),
            last: Cell::new(None),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    /// Takes `n` bytes at time `now` and says how long the caller must wait
    /// before using them (the bucket may go into debt, so a request larger
    /// than the burst still goes, just later).
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        if self.is_unlimited() {
            return Duration::ZERO;
        }
        let last = self.last.get().unwrap_or(now);
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (self.tokens.get() + elapsed * self.rate).min(self.burst) - n as f64;
        self.tokens.set(tokens);
        self.last.set(Some(now));
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }

    /// Waits until `n` bytes may be used.
    pub async fn acquire(&self, n: u64) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate_after_the_burst() {
        let b = TokenBucket::new(1000, 500);
        let t0 = Instant::now();
        assert_eq!(b.reserve(500, t0), Duration::ZERO);
        // Empty now: 250 bytes need 0.25 s.
        let w = b.reserve(250, t0);
        assert!((w.as_secs_f64() - 0.25).abs() < 1e-6, "{w:?}");
        // A second later 1000 tokens came back, capped at the burst, minus the debt.
        let w = b.reserve(200, t0 + Duration::from_secs(1));
        assert_eq!(w, Duration::ZERO);
        assert!(TokenBucket::new(0, 0).reserve(1 << 40, t0).is_zero());
    }

    #[test]
    fn long_run_rate_holds() {
        let b = TokenBucket::new(10_000, 1000);
        let mut now = Instant::now();
        let mut sent = 0u64;
        let start = now;
        for _ in 0..1000 {
            now += b.reserve(700, now);
            sent += 700;
        }
        let secs = (now - start).as_secs_f64();
        let rate = sent as f64 / secs;
        assert!((rate - 10_000.0).abs() / 10_000.0 < 0.01, "{rate}");
    }
}
