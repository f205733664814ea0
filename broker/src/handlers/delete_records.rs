//! DeleteRecords: moves partitions' log start up (the low watermark), as
//! retention does, through the metadata log; objects left with no range are
//! then destroyed and deleted after `object_delete_delay_ms`.
//!
//! Runs on the shard that leads the partitions (clients send each partition
//! to its leader); other partitions get `NOT_LEADER_OR_FOLLOWER`.

use std::rc::Rc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use super::{find_topic, locate};
use crate::metadata::Command;
use crate::shard::{PartitionKey, Shard};

/// `offset` -1 means the high watermark.
const HIGH_WATERMARK: i64 = -1;

/// One requested partition: where its log start moves, or why it cannot.
type Planned = (i32, Result<(PartitionKey, i64), ResponseError>);

pub async fn handle(shard: &Rc<Shard>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let image = shard.image();
    // Per partition: the key to move and where, or the error to answer.
    let mut planned: Vec<Planned> = Vec::new();
    let mut shapes = Vec::with_capacity(req.topics.len());
    let mut cmds = Vec::new();
    for t in &req.topics {
        let meta = find_topic(&image, &t.name, uuid::Uuid::nil());
        let first = planned.len();
        for p in &t.partitions {
            let r = locate(shard, meta, p.partition_index).and_then(|key| {
                let parts = shard.partitions.borrow();
                let part = parts.get(&key).ok_or(ResponseError::NotLeaderOrFollower)?;
                let hw = part.state.high_watermark;
                let target = match p.offset {
                    HIGH_WATERMARK => hw,
                    o if o < 0 || o > hw => return Err(ResponseError::OffsetOutOfRange),
                    o => o,
                };
                Ok((key, target.max(part.state.log_start)))
            });
            if let Ok((key, target)) = &r {
                cmds.push(Command::AdvanceLogStart {
                    topic_id: key.0,
                    partition: key.1,
                    offset: *target,
                });
            }
            planned.push((p.partition_index, r));
        }
        shapes.push((t.name.clone(), first..planned.len()));
    }
    let results = if cmds.is_empty() {
        Vec::new()
    } else {
        shard.control().submit(cmds, false).await
    };
    let mut results = results.into_iter();
    let mut resp = DeleteRecordsResponse::default();
    for (name, range) in shapes {
        let mut topic = DeleteRecordsTopicResult::default();
        topic.name = name;
        for (index, planned) in &planned[range] {
            let mut r = DeleteRecordsPartitionResult::default();
            r.partition_index = *index;
            r.low_watermark = -1;
            match planned {
                Err(e) => r.error_code = e.code(),
                Ok((key, target)) => match results.next() {
                    Some(Ok(_)) => {
                        r.low_watermark = shard
                            .partitions
                            .borrow()
                            .get(key)
                            .map_or(*target, |p| p.state.log_start.max(*target));
                    }
                    Some(Err(e)) => r.error_code = e.code,
                    None => r.error_code = ResponseError::UnknownServerError.code(),
                },
            }
            topic.partitions.push(r);
        }
        resp.topics.push(topic);
    }
    resp
}
