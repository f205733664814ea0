//! Fetch: reads whole batches through each partition (log cache, then
//! objects), honouring `max_bytes`, per-partition limits, leader epochs,
//! `isolation_level` (read_committed stops at the last stable offset and
//! lists the aborted transactions of what it returns), KIP-320's divergence
//! check (`last_fetched_epoch`) and the
//! `max_wait_ms`/`min_bytes` long poll, which only appends to the
//! requested partitions wake.
//!
//! Runs on the shard that leads the partitions. Never blocks the shard while
//! waiting: it parks on the partitions' waiters or a timer, and cold reads
//! await their GETs.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use event_listener::EventListener;
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
    PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::{
    check_leader_epoch, find_topic, leader_hint, locate, push_node_endpoint, wait_for_append,
};
use crate::metadata::epochs::{UNDEFINED_EPOCH, UNDEFINED_OFFSET};
use crate::metadata::{MetadataImage, TopicMeta};
use crate::shard::{PartitionKey, ReadError, Shard};
use net::Spliced;

/// The response, and the record sets it carries by reference (see
/// `net::Reply`).
pub async fn handle(
    shard: &Rc<Shard>,
    req: FetchRequest,
    version: i16,
) -> (FetchResponse, Vec<Spliced>) {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    loop {
        // Listen before reading, so an append between the read and the
        // wait is not missed.
        let listeners = listen(shard, &req, version);
        let (resp, spliced, bytes, errors) = read_all(shard, &req, version).await;
        let now = Instant::now();
        if bytes >= min_bytes || errors || now >= deadline || listeners.is_empty() {
            return (resp, spliced);
        }
        wait_for_append(listeners, deadline).await;
    }
}

fn topic_id(version: i16, id: uuid::Uuid) -> uuid::Uuid {
    if version >= 13 {
        id
    } else {
        uuid::Uuid::nil()
    }
}

/// Listeners on the waiters of every requested partition this shard leads.
fn listen(shard: &Shard, req: &FetchRequest, version: i16) -> Vec<EventListener> {
    let image = shard.image();
    let parts = shard.partitions.borrow();
    let mut out = Vec::new();
    for t in &req.topics {
        let meta = find_topic(&image, &t.topic, topic_id(version, t.topic_id));
        for p in &t.partitions {
            if let Some(part) = locate(shard, meta, p.partition)
                .ok()
                .and_then(|k| parts.get(&k))
            {
                out.push(part.waiters.listen());
            }
        }
    }
    out
}

/// Kafka's divergence check for a fetch that names the epoch of the last
/// batch it read (`last_fetched_epoch`, v12+): if that epoch ended before
/// the fetch offset, or the log knows only an earlier epoch, the answer
/// carries no records but the epoch and offset the client must truncate
/// to; if the log knows no end for it, OFFSET_OUT_OF_RANGE.
fn diverged(
    shard: &Shard,
    image: &MetadataImage,
    meta: Option<&Arc<TopicMeta>>,
    key: PartitionKey,
    p: &FetchPartition,
) -> Option<PartitionData> {
    let epoch = meta?.leader_epochs.get(p.partition as usize).copied()?;
    let (log_start, log_end, hw) = shard
        .partitions
        .borrow()
        .get(&key)
        .filter(|part| part.state.serves_reads())
        .map(|part| {
            (
                part.state.log_start,
                part.state.log_end,
                part.state.high_watermark,
            )
        })?;
    let (found, end) = image.epoch_end(key, p.last_fetched_epoch, epoch, log_end);
    if found == UNDEFINED_EPOCH || end == UNDEFINED_OFFSET || p.fetch_offset < log_start {
        // As Kafka: no end for that epoch (or a fetch below the log) is
        // an offset out of range, not a divergence.
        return Some(error_data(p.partition, ResponseError::OffsetOutOfRange));
    }
    if found >= p.last_fetched_epoch && end >= p.fetch_offset {
        return None;
    }
    let mut d = error_data(p.partition, ResponseError::UnknownServerError);
    d.error_code = 0;
    d.high_watermark = hw;
    d.last_stable_offset = shard.last_stable_offset(key).map_or(hw, |l| l.min(hw));
    d.log_start_offset = log_start;
    d.diverging_epoch = EpochEndOffset::default()
        .with_epoch(found)
        .with_end_offset(end);
    d.records = Some(Bytes::new());
    Some(d)
}

fn error_data(index: i32, code: ResponseError) -> PartitionData {
    let mut d = PartitionData::default();
    d.partition_index = index;
    d.error_code = code.code();
    d.high_watermark = -1;
    d.last_stable_offset = -1;
    d.log_start_offset = -1;
    d.aborted_transactions = Some(Vec::new());
    d.preferred_read_replica = (-1).into();
    d
}

/// One pass over every requested partition: the response, the record bytes
/// in it, and whether any partition had an error (which answers at once).
async fn read_all(
    shard: &Rc<Shard>,
    req: &FetchRequest,
    version: i16,
) -> (FetchResponse, Vec<Spliced>, usize, bool) {
    let image = shard.image();
    let mut spliced = Vec::new();
    let read_committed = req.isolation_level == 1;
    let mut remaining = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut total = 0usize;
    let mut errors = false;
    let mut endpoints: Vec<NodeEndpoint> = Vec::new();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let meta = find_topic(&image, &t.topic, topic_id(version, t.topic_id));
        let mut out = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let located: Result<PartitionKey, ResponseError> = locate(shard, meta, p.partition)
                .and_then(|k| {
                    check_leader_epoch(meta, p.partition, p.current_leader_epoch).map(|_| k)
                });
            let key = match located {
                Ok(key) => key,
                Err(e) => {
                    let code = if version >= 13 && meta.is_none() {
                        ResponseError::UnknownTopicId
                    } else {
                        e
                    };
                    errors = true;
                    let mut d = error_data(p.partition, code);
                    if code == ResponseError::NotLeaderOrFollower && version >= 12 {
                        if let Some(hint) = leader_hint(shard, meta, p.partition) {
                            d.current_leader = LeaderIdAndEpoch::default()
                                .with_leader_id(BrokerId(hint.node))
                                .with_leader_epoch(hint.epoch);
                            if version >= 16 {
                                push_node_endpoint!(endpoints, NodeEndpoint, &hint);
                            }
                        }
                    }
                    out.push(d);
                    continue;
                }
            };
            if version >= 12 && p.last_fetched_epoch >= 0 {
                if let Some(d) = diverged(shard, &image, meta, key, p) {
                    // Answered at once, as an error is: the client must
                    // truncate before it fetches again.
                    errors = true;
                    out.push(d);
                    continue;
                }
            }
            let limit = (p.partition_max_bytes.max(0) as usize).min(remaining);
            let read = if read_committed {
                shard
                    .read_committed(key, p.fetch_offset, limit, total == 0)
                    .await
                    .map(|(read, aborted)| (read, Some(aborted)))
            } else {
                shard
                    .read(key, p.fetch_offset, limit, total == 0)
                    .await
                    .map(|read| (read, None))
            };
            let lso = shard.last_stable_offset(key);
            match read {
                Ok((read, aborted)) => {
                    let mut d = error_data(p.partition, ResponseError::UnknownServerError);
                    d.error_code = 0;
                    d.high_watermark = read.high_watermark;
                    d.last_stable_offset =
                        lso.map_or(read.high_watermark, |l| l.min(read.high_watermark));
                    d.log_start_offset = read.log_start;
                    if let Some(aborted) = aborted {
                        d.aborted_transactions = Some(
                            aborted
                                .into_iter()
                                .map(|(pid, first)| {
                                    AbortedTransaction::default()
                                        .with_producer_id(ProducerId(pid))
                                        .with_first_offset(first)
                                })
                                .collect(),
                        );
                    }
                    remaining = remaining.saturating_sub(read.bytes);
                    total += read.bytes;
                    shard.metrics.fetched(key, &read.batches);
                    d.records = Some(if by_reference(&read.batches, read.bytes) {
                        let s = Spliced::new(read.batches);
                        let placeholder = s.placeholder.clone();
                        spliced.push(s);
                        placeholder
                    } else {
                        concat(read.batches, read.bytes)
                    });
                    out.push(d);
                }
                Err(e) => {
                    let mut d = error_data(p.partition, e.code());
                    if let ReadError::OutOfRange {
                        log_start,
                        high_watermark,
                    } = e
                    {
                        d.high_watermark = high_watermark;
                        d.last_stable_offset = lso.unwrap_or(high_watermark).min(high_watermark);
                        d.log_start_offset = log_start;
                    }
                    errors = true;
                    out.push(d);
                }
            }
        }
        let mut r = FetchableTopicResponse::default();
        r.topic = t.topic.clone();
        r.topic_id = t.topic_id;
        r.partitions = out;
        topics.push(r);
    }
    let mut resp = FetchResponse::default();
    resp.responses = topics;
    resp.node_endpoints = endpoints;
    (resp, spliced, total, errors)
}

/// Batches averaging this size or more go into the response by reference
/// (written to the socket from the cache); smaller ones are joined into
/// one buffer, which costs less than a write each.
const BY_REFERENCE_AVERAGE: usize = 16 * 1024;

fn by_reference(batches: &[Bytes], bytes: usize) -> bool {
    !batches.is_empty() && bytes / batches.len() >= BY_REFERENCE_AVERAGE
}

/// One batch is passed through as is; several small ones are joined.
fn concat(batches: Vec<Bytes>, bytes: usize) -> Bytes {
    match batches.len() {
        0 => Bytes::new(),
        1 => batches.into_iter().next().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(bytes);
            for chunk in &batches {
                b.extend_from_slice(chunk);
            }
            b.freeze()
        }
    }
}
