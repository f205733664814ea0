//! ListOffsets: earliest, latest, by timestamp and max timestamp, answered
//! from this shard's partition logs.
//!
//! Runs on the shard that leads the partitions; reads only.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{find_topic, locate};
use crate::shard::Shard;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub fn handle(shard: &Shard, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let image = shard.image();
    let parts = shard.partitions.borrow();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let meta = find_topic(&image, &t.name, uuid::Uuid::nil());
        let mut out = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let mut r = ListOffsetsPartitionResponse::default();
            r.partition_index = p.partition_index;
            r.timestamp = -1;
            r.offset = -1;
            let located = locate(shard, meta, p.partition_index);
            match located.map(|key| parts.get(&key)) {
                Err(e) => r.error_code = e.code(),
                Ok(None) => {
                    r.error_code = kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
                }
                Ok(Some(part)) => {
                    let log = &part.log;
                    if version >= 4 {
                        r.leader_epoch = 0;
                    }
                    let found = match p.timestamp {
                        EARLIEST => Some((-1, log.log_start_offset())),
                        LATEST => Some((-1, log.high_watermark())),
                        MAX_TIMESTAMP => log.max_timestamp(),
                        ts => log.offset_for_timestamp(ts).map(|(o, t)| (t, o)),
                    };
                    if let Some((ts, offset)) = found {
                        r.timestamp = ts;
                        r.offset = offset;
                    }
                }
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
