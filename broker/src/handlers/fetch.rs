//! Fetch: reads whole batches from this shard's partition logs, honouring
//! `max_bytes`, per-partition limits, and the `max_wait_ms`/`min_bytes` long
//! poll, which appends on this shard wake.
//!
//! Runs on the shard that leads the partitions. Never blocks the shard while
//! waiting: it parks on the shard's append event or a timer.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use storage::partition_log::ReadResult;

use super::{find_topic, locate};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    loop {
        // Listen before reading: an append between the read and the wait
        // would otherwise be missed. Nothing can append in between anyway
        // (no await), but the order keeps it obviously right.
        let listener = shard.appended.listen();
        let (resp, bytes, errors) = read_all(shard, &req, version);
        let now = Instant::now();
        if bytes >= min_bytes || errors || now >= deadline {
            return resp;
        }
        futures_lite::future::or(
            async {
                listener.await;
            },
            async {
                glommio::timer::sleep(deadline - now).await;
            },
        )
        .await;
    }
}

/// One pass over every requested partition: the response, the record bytes
/// in it, and whether any partition had an error (which answers at once).
fn read_all(shard: &Shard, req: &FetchRequest, version: i16) -> (FetchResponse, usize, bool) {
    let image = shard.image();
    let mut remaining = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut total = 0usize;
    let mut errors = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    let parts = shard.partitions.borrow();
    for t in &req.topics {
        let id = if version >= 13 {
            t.topic_id
        } else {
            uuid::Uuid::nil()
        };
        let meta = find_topic(&image, &t.topic, id);
        let mut out = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let mut d = PartitionData::default();
            d.partition_index = p.partition;
            d.aborted_transactions = Some(Vec::new());
            d.preferred_read_replica = (-1).into();
            let key = match locate(shard, meta, p.partition) {
                Ok(key) => key,
                Err(e) => {
                    if version >= 13 && meta.is_none() {
                        d.error_code = ResponseError::UnknownTopicId.code();
                    } else {
                        d.error_code = e.code();
                    }
                    d.high_watermark = -1;
                    d.last_stable_offset = -1;
                    d.log_start_offset = -1;
                    errors = true;
                    out.push(d);
                    continue;
                }
            };
            let Some(part) = parts.get(&key) else {
                d.error_code = ResponseError::UnknownTopicOrPartition.code();
                errors = true;
                out.push(d);
                continue;
            };
            let log = &part.log;
            d.high_watermark = log.high_watermark();
            d.last_stable_offset = log.high_watermark();
            d.log_start_offset = log.log_start_offset();
            let limit = (p.partition_max_bytes.max(0) as usize).min(remaining);
            match log.read(p.fetch_offset, limit, total == 0) {
                Ok(read) => {
                    remaining = remaining.saturating_sub(read.bytes);
                    total += read.bytes;
                    d.records = Some(concat(read));
                }
                Err(_) => {
                    d.error_code = ResponseError::OffsetOutOfRange.code();
                    errors = true;
                }
            }
            out.push(d);
        }
        let mut r = FetchableTopicResponse::default();
        r.topic = t.topic.clone();
        r.topic_id = t.topic_id;
        r.partitions = out;
        topics.push(r);
    }
    let mut resp = FetchResponse::default();
    resp.responses = topics;
    (resp, total, errors)
}

/// One batch is passed through as is; several are joined (the codec copies
/// the records into the response frame anyway).
fn concat(read: ReadResult) -> Bytes {
    match read.batches.len() {
        0 => Bytes::new(),
        1 => read.batches.into_iter().next().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(read.bytes);
            for chunk in &read.batches {
                b.extend_from_slice(chunk);
            }
            b.freeze()
        }
    }
}
