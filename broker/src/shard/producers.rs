//! The producer-id side of a shard: handing out producer ids from blocks
//! the metadata log allocated to this shard's node, expiring idle producers
//! from its partitions, and computing the producer-state snapshots the
//! uploader commits with each object.
//!
//! Runs on the shard's executor. Never holds a borrow across `.await`; a
//! block allocation is single-flight (other InitProducerId requests wait
//! for it, they do not allocate again).

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use storage::batch::parse_header;
use storage::log_cache::StoredBatch;
use tracing::{debug, info, warn};

use super::{PartitionKey, Shard};
use crate::group::now_ms;
use crate::metadata::Command;
use crate::producer_state::snapshot_delta;

/// Producer ids asked for at a time (Kafka's block size).
const PRODUCER_ID_BLOCK: i64 = 1000;

/// The ids left in this shard's current block: `next..end`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProducerIdBlock {
    pub next: i64,
    pub end: i64,
}

impl Shard {
    /// A producer id never handed out before, anywhere in the cluster (ids
    /// come in blocks from the metadata log; a restarted broker never
    /// reuses the rest of a block it held).
    pub async fn new_producer_id(self: &Rc<Self>) -> Result<i64, ResponseError> {
        loop {
            let mut block = self.producer_ids.get();
            if block.next < block.end {
                let id = block.next;
                block.next += 1;
                self.producer_ids.set(block);
                return Ok(id);
            }
            if self.producer_ids_pending.replace(true) {
                let listener = self.producer_ids_ready.listen();
                if self.producer_ids_pending.get() {
                    listener.await;
                }
                continue;
            }
            let result = self.allocate_producer_ids().await;
            self.producer_ids_pending.set(false);
            self.producer_ids_ready.notify(usize::MAX);
            result?;
        }
    }

    async fn allocate_producer_ids(self: &Rc<Self>) -> Result<(), ResponseError> {
        let node_id = self.node_id();
        let cmd = Command::AllocateProducerIds {
            node_id,
            count: PRODUCER_ID_BLOCK,
        };
        match self.control().submit(vec![cmd], false).await.pop() {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                warn!(
                    shard = self.id,
                    "cannot allocate producer ids: {}", e.message
                );
                return Err(ResponseError::CoordinatorLoadInProgress);
            }
            None => return Err(ResponseError::CoordinatorLoadInProgress),
        }
        let image = self.image();
        let Some(&(first, count)) = image.producer_id_blocks.get(&node_id) else {
            return Err(ResponseError::CoordinatorLoadInProgress);
        };
        let old = self.producer_ids.get();
        if first < old.end {
            // Not a new block (cannot happen while allocation is single
            // flight); never hand out an id twice.
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        self.producer_ids.set(ProducerIdBlock {
            next: first,
            end: first + count,
        });
        info!(shard = self.id, first, count, "producer ids allocated");
        Ok(())
    }

    /// Forgets idle producers of every partition now and then, for the
    /// life of the shard.
    pub(super) async fn run_producer_expiry(self: Rc<Self>) {
        let every = Duration::from_millis(self.config.producer_id_expiration_check_interval_ms);
        loop {
            glommio::timer::sleep(every).await;
            let now = now_ms();
            let expiration = self.config.producer_id_expiration_ms;
            let mut expired = 0;
            for p in self.partitions.borrow_mut().values_mut() {
                let log_start = p.state.log_start;
                expired += p.producers.expire(now, expiration, log_start);
            }
            if expired > 0 {
                debug!(shard = self.id, expired, "idle producers expired");
            }
        }
    }

    /// The producer-state changes of the ranges one upload takes: one
    /// `SnapshotProducers` per partition whose range holds batches with a
    /// producer id, computed from the image's state (as of the partition's
    /// uploaded end) and the range's batches. Submitted after the object's
    /// `CommitObject`, in the same metadata entry.
    pub fn producer_snapshots(
        &self,
        partitions: &[(PartitionKey, Vec<StoredBatch>)],
    ) -> Vec<Command> {
        let image = self.image();
        let expire_before = now_ms().saturating_sub(self.config.producer_id_expiration_ms);
        let mut out = Vec::new();
        for ((topic, partition), batches) in partitions {
            let Some(end_offset) = batches.last().map(|b| b.last_offset + 1) else {
                continue;
            };
            let headers: Vec<_> = batches
                .iter()
                .filter_map(|b| parse_header(&b.bytes).ok().map(|h| (h, b.bytes.clone())))
                .filter(|(h, _)| h.producer_id >= 0)
                .collect();
            if headers.is_empty() {
                continue;
            }
            let before = image.producers.partition(*topic, *partition);
            let (producers, aborted) = snapshot_delta(
                |pid| before.and_then(|p| p.producers.get(&pid)),
                headers.iter().map(|(h, b)| (h, &b[..])),
            );
            out.push(Command::SnapshotProducers {
                topic_id: *topic,
                partition: *partition,
                end_offset,
                expire_before,
                producers,
                aborted,
            });
        }
        out
    }
}
