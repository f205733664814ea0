//! Offers this shard's idle, fully uploaded partitions to the clean book
//! (`crate::clean`), so that the quorum's leader can move them at once if
//! this broker is fenced. A partition qualifies when it is led here, every
//! offset is durable and in committed objects, and its log end has not
//! moved for `IDLE_SCANS` scans in a row: busy partitions are never
//! offered, so their writes never wait on a retraction.
//!
//! Runs on the shard's own executor, once a second, in a throughput task
//! queue; it only reads the shard's partitions and calls into the book.

use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use tracing::warn;

use super::Shard;
use crate::partition::{Lifecycle, PartitionKey};

const SCAN_EVERY: Duration = Duration::from_secs(1);
/// Scans in a row with the same log end before a partition is offered.
const IDLE_SCANS: u32 = 5;

/// Starts the scan of `shard` (only with a quorum of several processes).
pub fn start(shard: &Rc<Shard>) {
    if !crate::clean::enabled() {
        return;
    }
    let name = format!("idle-{}", shard.id);
    if let Err(e) = crate::background::spawn(&name, 100, run(Rc::downgrade(shard))) {
        warn!(
            shard = shard.id,
            "cannot start the idle-partition scan: {e}"
        );
    }
}

async fn run(shard: Weak<Shard>) {
    let mut seen: HashMap<PartitionKey, (i64, u32)> = HashMap::new();
    loop {
        glommio::timer::sleep(SCAN_EVERY).await;
        let Some(s) = shard.upgrade() else { return };
        scan(&s, &mut seen);
    }
}

fn scan(shard: &Shard, seen: &mut HashMap<PartitionKey, (i64, u32)>) {
    let parts = shard.partitions.borrow();
    seen.retain(|k, _| {
        let here = parts.contains_key(k);
        if !here {
            crate::clean::forget(k);
        }
        here
    });
    for (key, p) in parts.iter() {
        let st = &p.state;
        let clean = st.lifecycle == Lifecycle::Leading
            && st.log_end == st.high_watermark
            && st.all_uploaded();
        if !clean {
            seen.remove(key);
            if st.lifecycle != Lifecycle::Leading {
                crate::clean::forget(key);
            }
            continue;
        }
        let e = seen.entry(*key).or_insert((st.log_end, 0));
        if e.0 != st.log_end {
            *e = (st.log_end, 0);
        }
        e.1 = e.1.saturating_add(1);
        if e.1 >= IDLE_SCANS {
            crate::clean::offer(*key, st.leader_epoch);
        }
    }
}
