//! Emptying a WAL slice of the old shard count before the broker serves
//! with another one: the shard hands over the partitions `reshard::plan`
//! gives to other shards (`hand_over`: upload, then the leader change), then
//! uploads whatever else its slice holds, so the WAL can be formatted anew.
//!
//! Runs on a shard of the old count, which serves no client; never holds a
//! borrow across `.await`. It never reports success while a committed
//! record of its slice is only in the WAL.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Shard;
use crate::reshard::Move;

/// Pause between attempts while the object store refuses.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl Shard {
    /// Hands over `moves` and uploads everything else this shard's slice
    /// holds. Retries while the object store refuses; the caller bounds the
    /// time (`reshard_timeout_ms`) and leaves the WAL as it is on timeout.
    pub async fn empty_wal(self: &Rc<Self>, moves: &[Move]) -> Result<(), String> {
        if self.store().is_none() {
            return Err(format!("shard {} has no object store", self.id));
        }
        let started = Instant::now();
        for m in moves {
            while let Err(e) = self.hand_over(m.key, m.to_node).await {
                warn!(shard = self.id, topic = %m.key.0, partition = m.key.1,
                      to_node = m.to_node, "move for the new shard count failed ({e:?}); retrying");
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
        }
        let keys: Vec<_> = self.partitions.borrow().keys().copied().collect();
        while !self.all_uploaded(&keys) {
            self.uploader.flush().await;
            if !self.all_uploaded(&keys) {
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
        }
        info!(
            shard = self.id,
            moved = moves.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "WAL slice emptied into objects"
        );
        Ok(())
    }
}
