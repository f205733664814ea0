//! What `read_committed` consumers see of a partition: data below the last
//! stable offset (no open transaction before it, all of it durable), and
//! the aborted transactions overlapping what a fetch returns, so that
//! clients drop the aborted records.
//!
//! Runs on the shard leading the partition, on top of `read` (log cache,
//! then objects). The aborted-transaction index lives in the partition's
//! producer state, rebuilt from the metadata image and the WAL tail, so it
//! covers data already uploaded to objects. Never holds a borrow across
//! `.await`.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use storage::batch::parse_header;

use super::read::{PartitionRead, ReadError};
use super::{PartitionKey, Shard};

impl Shard {
    /// The partition's last stable offset.
    pub fn last_stable_offset(&self, key: PartitionKey) -> Option<i64> {
        self.partitions
            .borrow()
            .get(&key)
            .map(|p| p.last_stable_offset())
    }

    /// The partition's high watermark, if this shard has it.
    pub fn high_watermark(&self, key: PartitionKey) -> Option<i64> {
        self.partitions
            .borrow()
            .get(&key)
            .map(|p| p.state.high_watermark)
    }

    /// Like `read`, but nothing at or past the last stable offset, and with
    /// the aborted transactions `(producer id, first offset)` that overlap
    /// the batches returned.
    pub async fn read_committed(
        self: &Rc<Self>,
        key: PartitionKey,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<(PartitionRead, Vec<(i64, i64)>), ReadError> {
        // The LSO only moves forward, so cutting at the value from before
        // the read never shows an unstable record.
        let lso = self
            .last_stable_offset(key)
            .ok_or(ReadError::Partition(ResponseError::NotLeaderOrFollower))?;
        let mut read = self.read(key, offset, max_bytes, min_one).await?;
        let mut end = offset;
        let mut keep = 0;
        for b in &read.batches {
            match parse_header(b) {
                // Transactions start and end on batch boundaries, so no
                // batch straddles the LSO.
                Ok(h) if h.base_offset < lso => {
                    end = end.max(h.last_offset() + 1);
                    keep += 1;
                }
                _ => break,
            }
        }
        read.batches.truncate(keep);
        read.bytes = read.batches.iter().map(|b| b.len()).sum();
        let aborted = if keep == 0 {
            Vec::new()
        } else {
            self.partitions
                .borrow()
                .get(&key)
                .map(|p| p.producers.aborted_between(offset, end))
                .unwrap_or_default()
        };
        Ok((read, aborted))
    }
}
