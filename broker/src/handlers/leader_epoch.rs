//! OffsetForLeaderEpoch: where a leader epoch of a partition ends, which
//! consumers ask after a leader change to detect a truncated log (KIP-320).
//! Answered from the image's epoch history (`metadata/epochs.rs`) and the
//! partition's log end, with Kafka's checks and error codes.
//!
//! Runs on the shard that leads the partitions; reads only, never awaits.

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use super::{check_leader_epoch, find_topic, locate};
use crate::metadata::epochs::{UNDEFINED_EPOCH, UNDEFINED_OFFSET};
use crate::metadata::{MetadataImage, TopicMeta};
use crate::shard::Shard;

/// Every replica id (a consumer's -1, Kafka's debugging id -2) is
/// answered by the leader: there are no followers.
pub fn handle(shard: &Rc<Shard>, req: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let image = shard.image();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let meta = find_topic(&image, &t.topic, uuid::Uuid::nil());
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let mut r = EpochEndOffset::default();
                r.partition = p.partition;
                r.leader_epoch = UNDEFINED_EPOCH;
                r.end_offset = UNDEFINED_OFFSET;
                match answer(
                    shard,
                    &image,
                    meta,
                    p.partition,
                    p.current_leader_epoch,
                    p.leader_epoch,
                ) {
                    Ok((epoch, end)) => {
                        r.leader_epoch = epoch;
                        r.end_offset = end;
                    }
                    Err(e) => r.error_code = e.code(),
                }
                r
            })
            .collect();
        let mut tr = OffsetForLeaderTopicResult::default();
        tr.topic = t.topic;
        tr.partitions = partitions;
        topics.push(tr);
    }
    let mut resp = OffsetForLeaderEpochResponse::default();
    resp.topics = topics;
    resp
}

/// `(epoch, end offset)` of `requested`, or the partition's error.
fn answer(
    shard: &Shard,
    image: &MetadataImage,
    meta: Option<&Arc<TopicMeta>>,
    partition: i32,
    current_leader_epoch: i32,
    requested: i32,
) -> Result<(i32, i64), ResponseError> {
    let key = locate(shard, meta, partition)?;
    let epoch = check_leader_epoch(meta, partition, current_leader_epoch)?;
    let log_end = shard
        .partitions
        .borrow()
        .get(&key)
        .filter(|p| p.state.serves_reads())
        .map(|p| p.state.log_end)
        .ok_or(ResponseError::NotLeaderOrFollower)?;
    Ok(image.epoch_end(key, requested, epoch, log_end))
}
