//! Replays a partition's whole log, batch by batch: how the group and
//! transaction coordinators rebuild their state from `__consumer_offsets`
//! and `__transaction_state` when they start leading a partition.
//!
//! Runs on the shard leading the partition, on top of `read`; never holds a
//! borrow across `.await` and yields between reads.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use storage::batch::{parse_header, BatchHeader};
use tracing::{debug, warn};

use super::read::ReadError;
use super::{PartitionKey, Shard};

/// How a replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// Every batch up to the high watermark was seen.
    Done,
    /// `superseded` said stop, or the partition is no longer led here.
    Stopped,
}

impl Shard {
    /// Calls `f` with every batch of the partition from its log start, in
    /// order. While the partition is still opening (WAL recovery after a
    /// restart) or its objects are unreachable, it waits and tries again.
    /// An unreadable batch ends the replay there (with a warning).
    pub async fn replay_log(
        self: &Rc<Self>,
        key: PartitionKey,
        label: &str,
        superseded: impl Fn() -> bool,
        mut f: impl FnMut(&BatchHeader, Bytes),
    ) -> Replayed {
        let mut offset = match self.partitions.borrow().get(&key) {
            Some(part) => part.state.log_start,
            None => return Replayed::Stopped,
        };
        loop {
            let read = match self.read(key, offset, 1 << 20, true).await {
                Ok(r) => r,
                Err(e) => {
                    if superseded() {
                        return Replayed::Stopped;
                    }
                    if matches!(e, ReadError::OutOfRange { .. }) {
                        break;
                    }
                    // Only objects that cannot be read are worth a warning.
                    let opening =
                        matches!(e, ReadError::Partition(ResponseError::NotLeaderOrFollower));
                    if opening {
                        debug!("{label}: not open yet at offset {offset}; retrying");
                    } else {
                        warn!("{label}: cannot read at offset {offset} ({e:?}); retrying");
                    }
                    glommio::timer::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if read.batches.is_empty() {
                break;
            }
            for b in read.batches {
                let Ok(h) = parse_header(&b) else {
                    warn!("{label}: unreadable batch at offset {offset}; replay stops there");
                    return self.replay_end(key);
                };
                offset = offset.max(h.last_offset() + 1);
                f(&h, b);
            }
            glommio::yield_if_needed().await;
            if superseded() {
                return Replayed::Stopped;
            }
        }
        self.replay_end(key)
    }

    fn replay_end(&self, key: PartitionKey) -> Replayed {
        if self.partitions.borrow().contains_key(&key) {
            Replayed::Done
        } else {
            Replayed::Stopped
        }
    }
}
