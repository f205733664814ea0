//! Produce: validates each partition's record batches, appends them to the
//! partition log of this shard, and answers once they are committed.
//!
//! Runs on the shard that leads the partitions. Never copies a payload
//! except the one copy that stamps offsets (see `storage::batch`).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use kafka_protocol::ResponseError;
use storage::batch::{validate_batches, BatchError};
use tracing::debug;

use super::{find_topic, locate, str_bytes};
use crate::metadata::MetadataImage;
use crate::shard::Shard;
use crate::topic_config::{self, MAX_MESSAGE_BYTES, TIMESTAMP_TYPE};

pub async fn handle(shard: &Rc<Shard>, req: ProduceRequest, _version: i16) -> Option<ResponseKind> {
    let image = shard.image();
    let acks = req.acks;
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let meta = find_topic(&image, &topic.name, topic.topic_id);
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let result = if !matches!(acks, -1..=1) {
                Err((
                    ResponseError::InvalidRequiredAcks,
                    format!("acks={acks} is not one of -1, 0, 1"),
                ))
            } else {
                produce_partition(
                    shard,
                    &image,
                    meta.map(|m| m.name.as_str()),
                    topic.topic_id,
                    p.index,
                    p.records,
                )
            };
            parts.push(partition_response(p.index, result));
        }
        let mut t = TopicProduceResponse::default();
        t.name = topic.name;
        t.topic_id = topic.topic_id;
        t.partition_responses = parts;
        responses.push(t);
    }
    if acks == 0 {
        return None;
    }
    let mut resp = ProduceResponse::default();
    resp.responses = responses;
    Some(ResponseKind::Produce(resp))
}

struct Produced {
    base_offset: i64,
    log_start_offset: i64,
    log_append_time: Option<i64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

type PartitionResult = Result<Produced, (ResponseError, String)>;

fn produce_partition(
    shard: &Shard,
    image: &MetadataImage,
    name: Option<&str>,
    id: uuid::Uuid,
    partition: i32,
    records: Option<Bytes>,
) -> PartitionResult {
    let topic = find_topic(image, name.unwrap_or(""), id);
    let key = locate(shard, topic, partition).map_err(|e| (e, String::new()))?;
    let topic = topic.expect("located topics exist");
    let Some(records) = records else {
        return Err((ResponseError::InvalidRecord, "no records".into()));
    };
    let max = topic_config::effective(
        &topic.configs,
        MAX_MESSAGE_BYTES,
        shard.config.message_max_bytes,
    )
    .and_then(|v| v.parse::<usize>().ok())
    .unwrap_or(shard.config.message_max_bytes);
    let batches = validate_batches(&records, max).map_err(|e| {
        debug!(topic = %topic.name, partition, "rejecting batch: {e}");
        (batch_error_code(&e), e.to_string())
    })?;
    let log_append_time = (topic_config::effective(&topic.configs, TIMESTAMP_TYPE, 0).as_deref()
        == Some("LogAppendTime"))
    .then(now_ms);
    let mut parts = shard.partitions.borrow_mut();
    let part = parts
        .get_mut(&key)
        .ok_or((ResponseError::UnknownTopicOrPartition, String::new()))?;
    let mut base_offset = None;
    let mut end = 0;
    for b in &batches {
        let appended = part.log.append(b, &[], log_append_time);
        base_offset.get_or_insert(appended.base_offset);
        end = appended.last_offset + 1;
    }
    // Durability point: the WAL append will be awaited here before commit.
    part.log.commit(end);
    let log_start_offset = part.log.log_start_offset();
    drop(parts);
    shard.appended.notify(usize::MAX);
    Ok(Produced {
        base_offset: base_offset.unwrap_or(end),
        log_start_offset,
        log_append_time,
    })
}

fn batch_error_code(e: &BatchError) -> ResponseError {
    match e {
        BatchError::Corrupt(_) => ResponseError::CorruptMessage,
        BatchError::Invalid(_) => ResponseError::InvalidRecord,
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
    }
}

fn partition_response(index: i32, result: PartitionResult) -> PartitionProduceResponse {
    let mut r = PartitionProduceResponse::default();
    r.index = index;
    r.log_append_time_ms = -1;
    match result {
        Ok(p) => {
            r.base_offset = p.base_offset;
            r.log_start_offset = p.log_start_offset;
            r.log_append_time_ms = p.log_append_time.unwrap_or(-1);
        }
        Err((err, msg)) => {
            r.error_code = err.code();
            r.base_offset = -1;
            r.log_start_offset = -1;
            if !msg.is_empty() {
                r.error_message = Some(str_bytes(&msg));
            }
        }
    }
    r
}
