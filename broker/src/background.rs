//! Starts a shard's background work (uploads, retention, compaction, object
//! GC, the idle-partition scan) detached in a throughput task queue of its
//! own, so that it yields to the latency-sensitive serving queue.
//!
//! Runs on the calling shard's executor; it only creates a queue and
//! spawns, and must never be called off a glommio executor.

use std::future::Future;

use glommio::{Latency, Shares};

/// Spawns `task` detached in a new `Latency::NotImportant` queue named
/// `name` with `shares` shares.
pub fn spawn(
    name: &str,
    shares: usize,
    task: impl Future<Output = ()> + 'static,
) -> glommio::Result<(), ()> {
    let tq =
        glommio::executor().create_task_queue(Shares::Static(shares), Latency::NotImportant, name);
    glommio::spawn_local_into(task, tq).map(|t| {
        t.detach();
    })
}
