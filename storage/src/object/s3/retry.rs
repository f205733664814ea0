//! The retry policy of the S3 backend: which failures deserve another
//! attempt, and how long to wait before it (exponential backoff with full
//! jitter, capped).
//!
//! Pure: no clock, no randomness source, no I/O. The caller passes the
//! attempt count and a uniform random number in `[0, 1]`, and sleeps itself,
//! so the policy runs the same on a shard's executor and on a simulated clock
//! in a unit test. It must never sleep, log or read the time.

use std::time::Duration;

use crate::object::ObjectError;

/// How a shard's S3 client retries one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first wait; doubles after each failed retry.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
    /// Attempts in all, the first included (so `max_attempts - 1` retries).
    pub max_attempts: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sleep this long, then try again.
    RetryAfter(Duration),
    /// The error is final, or the attempts are used up.
    GiveUp,
}

impl RetryPolicy {
    /// The longest wait before retry number `retry` (0 for the wait after the
    /// first failure): `min(cap, base * 2^retry)`, without overflow.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Decides after attempt number `attempts_made` (1 after the first
    /// attempt) failed with `err`. `unit` is a uniform random number in
    /// `[0, 1]`: the wait is `unit * ceiling` ("full jitter"), which spreads
    /// the retries of many shards hit by the same outage.
    pub fn after_failure(&self, attempts_made: u32, err: &ObjectError, unit: f64) -> Verdict {
        if !worth_retrying(err) || attempts_made >= self.max_attempts {
            return Verdict::GiveUp;
        }
        let ceiling = self.ceiling(attempts_made.saturating_sub(1));
        // NaN would make `mul_f64` panic: a broken random source waits 0.
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        Verdict::RetryAfter(ceiling.mul_f64(unit))
    }

    /// The most time a request can spend sleeping between its attempts.
    pub fn worst_case_sleep(&self) -> Duration {
        (0..self.max_attempts.saturating_sub(1))
            .map(|retry| self.ceiling(retry))
            .sum()
    }
}

/// Failures that another attempt may cure: throttling (429, 503 SlowDown),
/// server errors (500, 502, 504), request timeouts (408, and the 400
/// `RequestTimeout` S3 sends when a body stalls), our own timeouts, and
/// broken connections (refused, reset, bodies cut short). Anything else
/// (404, 403, bad requests, bad data, configuration) fails the same way
/// however often it is sent.
pub fn worth_retrying(err: &ObjectError) -> bool {
    match err {
        ObjectError::Io(_) | ObjectError::Timeout(_) => true,
        ObjectError::Http { status, message } => {
            matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
                || (*status == 400 && message.starts_with("RequestTimeout"))
        }
        ObjectError::NotFound(_) | ObjectError::Invalid(_) | ObjectError::Config(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base_ms: u64, cap_ms: u64, max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms),
            max_attempts,
        }
    }

    fn http(status: u16, message: &str) -> ObjectError {
        ObjectError::Http {
            status,
            message: message.to_string(),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let p = policy(1000, 60_000, 10);
        let ceilings: Vec<u64> = (0..9).map(|r| p.ceiling(r).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        // Huge retry numbers neither overflow nor exceed the cap.
        assert_eq!(p.ceiling(31), Duration::from_secs(60));
        assert_eq!(p.ceiling(200), Duration::from_secs(60));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let p = policy(100, 10_000, 10);
        let err = http(503, "SlowDown: reduce your request rate");
        assert_eq!(
            p.after_failure(3, &err, 0.0),
            Verdict::RetryAfter(Duration::ZERO)
        );
        assert_eq!(
            p.after_failure(3, &err, 1.0),
            Verdict::RetryAfter(Duration::from_millis(400))
        );
        assert_eq!(
            p.after_failure(3, &err, 0.5),
            Verdict::RetryAfter(Duration::from_millis(200))
        );
        // Out-of-range random numbers are clamped, never panic.
        assert_eq!(
            p.after_failure(1, &err, 7.0),
            Verdict::RetryAfter(Duration::from_millis(100))
        );
        assert_eq!(
            p.after_failure(1, &err, f64::NAN),
            Verdict::RetryAfter(Duration::ZERO)
        );
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let p = policy(1, 10, 3);
        let err = ObjectError::Io("connection reset".into());
        assert!(matches!(
            p.after_failure(1, &err, 1.0),
            Verdict::RetryAfter(_)
        ));
        assert!(matches!(
            p.after_failure(2, &err, 1.0),
            Verdict::RetryAfter(_)
        ));
        assert_eq!(p.after_failure(3, &err, 1.0), Verdict::GiveUp);
        assert_eq!(
            policy(1, 10, 1).after_failure(1, &err, 1.0),
            Verdict::GiveUp
        );
        assert_eq!(
            policy(1, 10, 0).after_failure(1, &err, 1.0),
            Verdict::GiveUp
        );
    }

    #[test]
    fn retries_only_what_can_heal() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(worth_retrying(&http(status, "x")), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 411, 416, 501, 505] {
            assert!(!worth_retrying(&http(status, "x")), "{status}");
        }
        assert!(worth_retrying(&http(
            400,
            "RequestTimeout: socket not read"
        )));
        assert!(worth_retrying(&ObjectError::Timeout(30_000)));
        assert!(worth_retrying(&ObjectError::Io("refused".into())));
        assert!(!worth_retrying(&ObjectError::NotFound("k".into())));
        assert!(!worth_retrying(&ObjectError::Invalid("short".into())));
        assert!(!worth_retrying(&ObjectError::Config("bad".into())));
        let p = policy(1, 10, 10);
        assert_eq!(
            p.after_failure(1, &ObjectError::NotFound("k".into()), 1.0),
            Verdict::GiveUp
        );
    }

    #[test]
    fn defaults_sleep_at_most_four_minutes() {
        // 1 + 2 + 4 + 8 + 16 + 32 + 60 + 60 + 60 s over the 9 retries.
        assert_eq!(
            policy(1000, 60_000, 10).worst_case_sleep(),
            Duration::from_secs(243)
        );
        assert_eq!(policy(1000, 60_000, 1).worst_case_sleep(), Duration::ZERO);
    }

    /// An outage seen through the policy on a simulated clock: every
    /// attempt takes `attempt_ms` and fails while the clock is before
    /// `outage_ms`. Returns (attempts, virtual time at the end, success).
    fn simulate(p: &RetryPolicy, outage_ms: u64, attempt_ms: u64, unit: f64) -> (u32, u64, bool) {
        let mut now = 0u64;
        let mut attempts = 0;
        loop {
            now += attempt_ms;
            attempts += 1;
            if now > outage_ms {
                return (attempts, now, true);
            }
            let err = ObjectError::Io("connection refused".into());
            match p.after_failure(attempts, &err, unit) {
                Verdict::RetryAfter(d) => now += d.as_millis() as u64,
                Verdict::GiveUp => return (attempts, now, false),
            }
        }
    }

    #[test]
    fn simulated_outage_shorter_than_the_budget_is_ridden_out() {
        let p = policy(1000, 60_000, 10);
        // Worst case (unit = 1): waits 1, 2, 4, 8, 16 s -> back at t = 36 s.
        let (attempts, end, ok) = simulate(&p, 30_000, 5, 1.0);
        assert!(ok);
        assert_eq!(attempts, 6);
        assert_eq!(end, 31_000 + 6 * 5);
    }

    #[test]
    fn simulated_outage_longer_than_the_budget_gives_up_in_bounded_time() {
        let p = policy(1000, 60_000, 10);
        for unit in [0.0, 0.3, 1.0] {
            let (attempts, end, ok) = simulate(&p, 10 * 60_000, 5, unit);
            assert!(!ok);
            assert_eq!(attempts, 10);
            assert!(end <= p.worst_case_sleep().as_millis() as u64 + 10 * 5);
        }
    }

    #[test]
    fn jittered_waits_stay_under_their_ceiling() {
        // A cheap deterministic sequence stands in for the random source.
        let p = policy(10, 1000, 12);
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for attempt in 1..12 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            let err = http(500, "InternalError");
            match p.after_failure(attempt, &err, unit) {
                Verdict::RetryAfter(d) => assert!(d <= p.ceiling(attempt - 1)),
                Verdict::GiveUp => panic!("gave up at attempt {attempt}"),
            }
        }
    }
}
