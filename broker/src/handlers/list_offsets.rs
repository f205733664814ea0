//! ListOffsets: earliest, latest, by timestamp and max timestamp (and
//! KIP-1005's earliest-local and latest-tiered, v8 and v9, and KIP-1023's
//! earliest-pending-upload, v11), answered
//! through this shard's partitions (log cache and objects). Under
//! `read_committed` the latest offset is the last stable offset, and a
//! timestamp lookup finds nothing at or past it.
//!
//! Runs on the shard that leads the partitions; reads only. A lookup by
//! timestamp in objects awaits GETs without blocking the shard.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use std::rc::Rc;

use kafka_protocol::ResponseError;
use storage::batch::parse_header;
use storage::records::{parse_records, records_section, MAX_EXPANDED_BATCH};

use super::{find_topic, locate};
use crate::shard::read::TimestampHit;
use crate::shard::{ReadError, Shard};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// KIP-1005: the first offset in local storage; every offset here is as
/// local as any other, so the log start (as Kafka without tiered storage).
const EARLIEST_LOCAL: i64 = -4;
/// KIP-1005: the last offset in tiered storage; Kafka answers -1 without
/// remote log storage, and objects here are the log, not a tier of it.
const LATEST_TIERED: i64 = -5;
/// KIP-1023: the first offset not yet in tiered storage. Kafka answers -1
/// (timestamp -1, epoch -1) for a log without remote storage
/// (UnifiedLog.fetchEarliestPendingUploadOffset); as for LATEST_TIERED,
/// objects here are the log itself.
const EARLIEST_PENDING_UPLOAD: i64 = -6;

pub async fn handle(
    shard: &Rc<Shard>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let image = shard.image();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let meta = find_topic(&image, &t.name, uuid::Uuid::nil());
        let mut out = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let mut r = ListOffsetsPartitionResponse::default();
            r.partition_index = p.partition_index;
            r.timestamp = -1;
            r.offset = -1;
            let key = match locate(shard, meta, p.partition_index) {
                Ok(key) => key,
                Err(e) => {
                    r.error_code = e.code();
                    out.push(r);
                    continue;
                }
            };
            let read_committed = version >= 2 && req.isolation_level == 1;
            let offsets = shard.partitions.borrow().get(&key).map(|part| {
                let end = if read_committed {
                    part.last_stable_offset()
                } else {
                    part.state.high_watermark
                };
                (part.state.log_start, end)
            });
            let Some((log_start, high_watermark)) = offsets else {
                r.error_code = ResponseError::NotLeaderOrFollower.code();
                out.push(r);
                continue;
            };
            let epoch = meta
                .and_then(|m| m.leader_epochs.get(p.partition_index as usize))
                .copied()
                .unwrap_or_default();
            let found: Result<Option<(i64, i64)>, ReadError> = match p.timestamp {
                EARLIEST => Ok(Some((-1, log_start))),
                EARLIEST_LOCAL if version >= 8 => Ok(Some((-1, log_start))),
                LATEST_TIERED if version >= 9 => Ok(None),
                EARLIEST_PENDING_UPLOAD if version >= 11 => Ok(None),
                LATEST => Ok(Some((-1, high_watermark))),
                MAX_TIMESTAMP => shard.max_timestamp(key).await,
                ts => shard
                    .batch_at_timestamp(key, ts)
                    .await
                    .map(|hit| hit.map(|b| record_at_timestamp(&b, ts))),
            };
            match found {
                // Kafka: nothing at or past the last fetchable offset.
                Ok(Some((_, offset)))
                    if (p.timestamp >= 0 || p.timestamp == MAX_TIMESTAMP)
                        && offset >= high_watermark => {}
                Ok(Some((ts, offset))) => {
                    r.timestamp = ts;
                    r.offset = offset;
                    // The epoch the offset was written in (the leader's
                    // for the log end), as Kafka answers from its cache.
                    if version >= 4 {
                        r.leader_epoch = if offset >= high_watermark {
                            epoch
                        } else {
                            image.epoch_at(key, offset, epoch)
                        };
                    }
                }
                Ok(None) => {}
                Err(e) => r.error_code = e.code().code(),
            }
            out.push(r);
        }
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name;
        tr.partitions = out;
        topics.push(tr);
    }
    let mut resp = ListOffsetsResponse::default();
    resp.topics = topics;
    resp
}

/// The first record of `batch` with a timestamp at or after `ts`:
/// `(timestamp, offset)`. The batch is decompressed only here, off the
/// produce and fetch paths, and never beyond `MAX_EXPANDED_BATCH`. A batch
/// that does not decode answers with its base offset: the client then skips
/// the earlier records itself.
pub(crate) fn record_at_timestamp(batch: &TimestampHit, ts: i64) -> (i64, i64) {
    let whole_batch = (batch.max_timestamp, batch.base_offset);
    let Ok(header) = parse_header(&batch.bytes) else {
        return whole_batch;
    };
    if header.log_append_time() {
        return whole_batch;
    }
    let Ok(section) = records_section(&batch.bytes, &header, MAX_EXPANDED_BATCH) else {
        return whole_batch;
    };
    let Ok(records) = parse_records(&section, header.records_count) else {
        return whole_batch;
    };
    records
        .iter()
        .map(|r| {
            (
                header.base_timestamp.saturating_add(r.timestamp_delta),
                header.base_offset + i64::from(r.offset_delta),
            )
        })
        .find(|(t, _)| *t >= ts)
        .unwrap_or(whole_batch)
}
