//! Whether this broker may serve its partitions. With a metadata quorum of
//! several processes, the quorum's leader fences a broker it has not heard
//! from for `broker_session_timeout_ms`; so a broker serves only until a
//! deadline that each answered heartbeat moves on: the time the heartbeat
//! was *sent* plus the session timeout minus one heartbeat interval. It
//! therefore stops serving before the leader can have fenced it, even when
//! the whole process was frozen (SIGSTOP, a VM pause) and its controller
//! thread has not run yet: the check is a clock comparison on each
//! partition lookup, not a flag someone must remember to set.
//!
//! Written by the controller thread, read by every shard
//! (`handlers::locate`); one relaxed atomic load, never a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since `base()` until which this broker serves; `u64::MAX`:
/// no deadline (a single process is its own quorum).
static SERVE_UNTIL_MS: AtomicU64 = AtomicU64::new(u64::MAX);
/// The metadata version the leader had applied when it last answered: a
/// shard whose image is older (it was frozen, or cut off, and has not caught
/// up yet) does not serve, so it never acts on a leadership it lost.
static MIN_VERSION: AtomicU64 = AtomicU64::new(0);

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn ms(at: Instant) -> u64 {
    at.saturating_duration_since(base()).as_millis() as u64
}

/// True while this broker must not serve its partitions from a shard
/// whose metadata image has version `image_version`.
pub fn fenced(image_version: u64) -> bool {
    let until = SERVE_UNTIL_MS.load(Ordering::Relaxed);
    if until == u64::MAX {
        return false;
    }
    ms(Instant::now()) >= until || image_version < MIN_VERSION.load(Ordering::Relaxed)
}

/// The leader answered a heartbeat sent at `sent`, having applied the
/// metadata up to `version`: serve until `sent + session - interval`, from
/// images at least that new.
pub fn renew(sent: Instant, session: Duration, interval: Duration, version: u64) {
    MIN_VERSION.fetch_max(version, Ordering::Relaxed);
    let until = ms(sent + session.saturating_sub(interval));
    SERVE_UNTIL_MS.fetch_max(until, Ordering::Relaxed);
}

/// Starts the clock (several voters): a broker serves for one session from
/// its start before its first heartbeat is answered.
pub fn start(session: Duration, interval: Duration) {
    SERVE_UNTIL_MS.store(
        ms(Instant::now() + session.saturating_sub(interval)),
        Ordering::Relaxed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_ends_at_the_deadline_and_renewals_move_it_on() {
        let (session, interval) = (Duration::from_millis(60), Duration::from_millis(20));
        assert!(!fenced(0), "no deadline until started");
        start(session, interval);
        assert!(!fenced(0));
        std::thread::sleep(Duration::from_millis(50));
        assert!(fenced(0), "40 ms passed: the leader may fence us soon");
        renew(Instant::now(), session, interval, 7);
        assert!(!fenced(7));
        assert!(
            fenced(6),
            "an image older than the leader's is not served from"
        );
        // An old answer never moves the deadline or the version back.
        renew(base(), session, interval, 3);
        assert!(!fenced(7) && fenced(6));
        SERVE_UNTIL_MS.store(u64::MAX, Ordering::Relaxed);
        MIN_VERSION.store(0, Ordering::Relaxed);
    }
}
