//! Whether this broker may serve its partitions: with a metadata quorum of
//! several processes, a broker that has not reached the quorum's leader for
//! `broker_session_timeout_ms` has been fenced by it (or soon will be), so
//! it stops answering for its partitions until the leader answers again.
//!
//! Set by the controller thread, read by every shard on each partition
//! lookup (`handlers::locate`); one relaxed atomic load, never a lock.

use std::sync::atomic::{AtomicBool, Ordering};

static FENCED: AtomicBool = AtomicBool::new(false);

/// True while this broker must not serve its partitions.
pub fn fenced() -> bool {
    FENCED.load(Ordering::Relaxed)
}

pub fn set_fenced(fenced: bool) {
    FENCED.store(fenced, Ordering::Relaxed);
}
