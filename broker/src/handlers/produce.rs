//! Produce: validates each partition's record batches, appends them to the
//! partition log of this shard, and answers once they are committed.
//!
//! Runs on the shard that leads the partitions. Never copies a payload: once
//! the request is decoded it takes its frame back to itself, and each
//! partition's batches are stamped with their offsets where they arrived
//! (see `own_records`). Should anything else still hold a view of the
//! frame, the batches are copied as they are stamped.

use crate::clock::now_ms;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    BrokerId, ProduceRequest, ProduceResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use storage::batch::{
    validate_batches, validate_owned_batches, BatchBytes, BatchError, ValidatedBatch,
};
use tracing::debug;

use super::{find_topic, leader_hint, locate, push_node_endpoint, str_bytes};
use crate::metadata::TopicMeta;
use crate::producer_state::Origin;
use crate::shard::{DurableAppend, Shard};
use crate::topic_config;
use crate::txn::implicit::{self, Place};
use std::collections::BTreeMap;

pub async fn handle(
    shard: &Rc<Shard>,
    mut req: ProduceRequest,
    version: i16,
    frame: Bytes,
) -> Option<ResponseKind> {
    let image = shard.image();
    let acks = req.acks;
    // Transactions v2: Produce v12+ adds its partitions to the transaction.
    let txn_id = req
        .transactional_id
        .as_ref()
        .filter(|t| version >= 12 && !t.is_empty())
        .map(|t| t.to_string());
    // First what the response needs, owned, and each partition's records;
    // then every other view of the frame is dropped.
    let mut shapes = Vec::with_capacity(req.topic_data.len());
    let mut records = Vec::new();
    for topic in std::mem::take(&mut req.topic_data) {
        let meta = find_topic(&image, &topic.name, topic.topic_id).cloned();
        let mut indexes = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            indexes.push(p.index);
            records.push(p.records);
        }
        let name = TopicName(StrBytes::from_string(topic.name.to_string()));
        shapes.push((name, topic.topic_id, meta, indexes));
    }
    drop(req);
    let mut payloads = own_records(frame, records).into_iter();
    let mut checked = Vec::new();
    for (_, _, meta, indexes) in &shapes {
        for &index in indexes {
            let payload = payloads.next().flatten();
            checked.push(if version >= 13 && meta.is_none() {
                Err((ResponseError::UnknownTopicId, String::new()))
            } else if matches!(acks, -1..=1) {
                check_partition(shard, meta.as_ref(), index, payload)
            } else {
                Err((
                    ResponseError::InvalidRequiredAcks,
                    format!("acks={acks} is not one of -1, 0, 1"),
                ))
            });
        }
    }
    // Held until every append below is issued, so that the producer's next
    // request cannot overtake this one.
    let place = match &txn_id {
        Some(id) => add_to_transaction(shard, id, &mut checked).await,
        None => None,
    };
    // Appends are issued for every partition first and awaited together, so
    // all partitions of a request share one WAL flush.
    let pending: Vec<_> = checked
        .into_iter()
        .map(|c| finish_partition(shard, c.and_then(|c| append_checked(shard, c))))
        .collect();
    // Their WAL write starts now (one batch for all of them), not when
    // the WAL's writer task comes round.
    if let Some(wal) = shard.wal() {
        wal.start_writes();
    }
    // Issued: the producer's next request may go (not held until durable).
    drop(place);
    let mut results = futures::future::join_all(pending).await.into_iter();
    if acks == 0 {
        return None;
    }
    let mut resp = ProduceResponse::default();
    for (name, topic_id, meta, indexes) in shapes {
        let mut t = TopicProduceResponse::default();
        t.name = name;
        t.topic_id = topic_id;
        t.partition_responses = indexes
            .into_iter()
            .map(|index| {
                let r = results
                    .next()
                    .unwrap_or_else(|| Err((ResponseError::UnknownServerError, String::new())));
                let mut out = partition_response(index, r);
                let moved = out.error_code == ResponseError::NotLeaderOrFollower.code();
                if let Some(hint) = moved
                    .then(|| leader_hint(shard, meta.as_ref(), index))
                    .flatten()
                    .filter(|_| version >= 10)
                {
                    out.current_leader = LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(hint.node))
                        .with_leader_epoch(hint.epoch);
                    push_node_endpoint!(resp.node_endpoints, NodeEndpoint, &hint);
                }
                out
            })
            .collect();
        resp.responses.push(t);
    }
    Some(ResponseKind::Produce(resp))
}

struct Produced {
    base_offset: i64,
    log_start_offset: i64,
    log_append_time: Option<i64>,
}

type PartitionError = (ResponseError, String);
type PartitionResult = Result<Produced, PartitionError>;
/// The append under way, its log-append time, and what it carries (for
/// metrics): partition, bytes, records.
type Started = Result<(DurableAppend, Option<i64>, Carried), PartitionError>;
type Carried = (crate::shard::PartitionKey, u64, u64);

/// Takes each partition's records (views of `frame`) as a region of the
/// frame's buffer that it alone holds, without copying: the views are
/// dropped, the buffer taken back (`try_into_mut`) and cut at the records.
/// If anything else still holds a view, or a view is not of this frame, the
/// records stay shared views (their batches are then copied when stamped).
fn own_records(frame: Bytes, records: Vec<Option<Bytes>>) -> Vec<Option<BatchBytes>> {
    let shared = |records: Vec<Option<Bytes>>| {
        records
            .into_iter()
            .map(|r| r.map(BatchBytes::Shared))
            .collect()
    };
    // Where each lies in the frame, in order and without overlaps.
    let base = frame.as_ptr() as usize;
    let mut ranges = Vec::with_capacity(records.len());
    let mut end = 0;
    for r in &records {
        let range = match r {
            None => None,
            Some(b) if b.is_empty() => Some(end..end),
            Some(b) => match (b.as_ptr() as usize).checked_sub(base) {
                Some(start) if start >= end && start + b.len() <= frame.len() => {
                    Some(start..start + b.len())
                }
                _ => return shared(records),
            },
        };
        if let Some(r) = &range {
            end = r.end;
        }
        ranges.push(range);
    }
    drop(records);
    let mut rest = match frame.try_into_mut() {
        Ok(buf) => buf,
        Err(frame) => {
            return ranges
                .into_iter()
                .map(|r| r.map(|r| BatchBytes::Shared(frame.slice(r))))
                .collect()
        }
    };
    let mut cut = 0;
    ranges
        .into_iter()
        .map(|r| {
            r.map(|r| {
                let _skipped = rest.split_to(r.start - cut);
                cut = r.end;
                BatchBytes::Owned(rest.split_to(r.len()))
            })
        })
        .collect()
}

/// A partition's records, validated and ready to append.
struct Checked {
    topic: Arc<TopicMeta>,
    partition: i32,
    key: crate::shard::PartitionKey,
    batches: Vec<ValidatedBatch>,
    log_append_time: Option<i64>,
    carried: Carried,
}

impl Checked {
    /// The producer of its transactional batches, if any.
    fn transactional_producer(&self) -> Option<(i64, i16)> {
        self.batches
            .iter()
            .find(|b| b.header.is_transactional())
            .map(|b| (b.header.producer_id, b.header.producer_epoch))
    }
}

/// Validates a partition's records.
fn check_partition(
    shard: &Rc<Shard>,
    topic: Option<&Arc<TopicMeta>>,
    partition: i32,
    records: Option<BatchBytes>,
) -> Result<Checked, PartitionError> {
    let key = locate(shard, topic, partition).map_err(|e| (e, String::new()))?;
    let topic = topic.expect("located topics exist");
    let Some(records) = records else {
        return Err((ResponseError::InvalidRecord, "no records".into()));
    };
    // Checked here, at the edge: a batch the WAL cannot hold is the
    // request's fault (MESSAGE_TOO_LARGE, not retried), whatever the topic's
    // max.message.bytes says.
    let max = topic_config::max_message_bytes(&topic.configs, shard.config.message_max_bytes)
        .min(shard.max_batch_bytes());
    let validating = std::time::Instant::now();
    let validated = match records {
        BatchBytes::Shared(b) => validate_batches(&b, max),
        BatchBytes::Owned(b) => validate_owned_batches(b, max),
    };
    let batches = validated.map_err(|e| {
        debug!(topic = %topic.name, partition, "rejecting batch: {e}");
        (batch_error_code(&e), e.to_string())
    })?;
    let log_append_time = topic_config::uses_log_append_time(&topic.configs).then(now_ms);
    if let Some(why) = refused_from_clients(&batches) {
        return Err((ResponseError::InvalidRecord, why.into()));
    }
    if topic_config::is_compacted(&topic.configs) {
        check_keys(&batches).map_err(|why| {
            debug!(topic = %topic.name, partition, "rejecting batch: {why}");
            (
                ResponseError::InvalidRecord,
                format!("{why} in topic partition {}-{partition}", topic.name),
            )
        })?;
    }
    shard.metrics.validated(validating.elapsed());
    let carried = (
        key,
        batches.iter().map(|b| b.bytes.len() as u64).sum(),
        batches
            .iter()
            .map(|b| u64::try_from(b.header.records_count).unwrap_or(0))
            .sum(),
    );
    Ok(Checked {
        topic: topic.clone(),
        partition,
        key,
        batches,
        log_append_time,
        carried,
    })
}

/// Appends checked records (offsets assigned now): at once when there is
/// room, keeping the order of requests; otherwise it waits its turn for
/// space.
fn append_checked(shard: &Rc<Shard>, c: Checked) -> Started {
    let durable = match shard.try_append(c.key, c.batches, c.log_append_time, Origin::Client) {
        Ok(now) => now,
        Err(waiting) => waiting,
    };
    Ok((durable, c.log_append_time, c.carried))
}

/// Whether producer `(id, epoch)` has a transaction open in the partition.
fn in_transaction(shard: &Shard, key: crate::shard::PartitionKey, producer: (i64, i16)) -> bool {
    shard
        .partitions
        .borrow()
        .get(&key)
        .is_some_and(|p| p.producers.in_transaction(producer.0, producer.1))
}

/// Transactions v2: adds to the transaction every partition whose first
/// transactional batch of this transaction this is, before anything is
/// appended (Kafka's implicit add, KIP-890 part 2). A partition whose add
/// fails gets the error. Returns the request's place in its producer's
/// line when it had to wait, to be held until its appends are issued.
async fn add_to_transaction(
    shard: &Rc<Shard>,
    transactional_id: &str,
    checked: &mut [Result<Checked, PartitionError>],
) -> Option<Place> {
    let producer = checked
        .iter()
        .flatten()
        .find_map(Checked::transactional_producer)?;
    // The producer of partition `i`'s transactional batches, if they are
    // the first of its transaction there (the partition must be added).
    let needs_add = |checked: &[Result<Checked, PartitionError>], i: usize| {
        let c = checked[i].as_ref().ok()?;
        let p = c.transactional_producer()?;
        (!in_transaction(shard, c.key, p)).then_some(p)
    };
    let any = (0..checked.len()).any(|i| needs_add(checked, i).is_some());
    if !any && !shard.producer_lines.is_waiting(producer.0) {
        return None;
    }
    let place = shard.producer_lines.join(producer.0).await;
    // Requests ahead in the line may have opened the transaction here.
    let mut by_producer: BTreeMap<(i64, i16), Vec<usize>> = BTreeMap::new();
    for i in 0..checked.len() {
        if let Some(p) = needs_add(checked, i) {
            by_producer.entry(p).or_default().push(i);
        }
    }
    for ((producer_id, epoch), indexes) in by_producer {
        let partitions = indexes
            .iter()
            .filter_map(|&i| checked[i].as_ref().ok())
            .map(|c| (c.topic.name.clone(), c.partition))
            .collect();
        if let Err(e) = implicit::add(shard, transactional_id, producer_id, epoch, partitions).await
        {
            let answer = implicit::for_produce(e);
            debug!(
                transactional_id,
                producer_id, "implicit add to the transaction failed: {e:?}, answering {answer:?}"
            );
            for i in indexes {
                checked[i] = Err((answer, String::new()));
            }
        }
    }
    Some(place)
}

/// Batches only the broker itself may write (Kafka's `LogValidator`
/// refuses them from clients the same way).
fn refused_from_clients(batches: &[ValidatedBatch]) -> Option<&'static str> {
    for b in batches {
        if b.header.is_control() {
            return Some("clients may not write control batches");
        }
        if b.header.is_transactional() && b.header.producer_id < 0 {
            return Some("a transactional batch needs a producer id");
        }
    }
    None
}

/// Compacted topics take only keyed records (Kafka's `LogValidator`).
fn check_keys(batches: &[ValidatedBatch]) -> Result<(), String> {
    for b in batches {
        match storage::records::all_records_keyed(&b.bytes, storage::records::MAX_EXPANDED_BATCH) {
            Ok(true) => {}
            Ok(false) => return Err("Compacted topic cannot accept message without key".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

async fn finish_partition(shard: &Shard, started: Started) -> PartitionResult {
    let (durable, log_append_time, (key, bytes, records)) = started?;
    let outcome = durable.await.map_err(|e| (e, String::new()))?;
    shard.metrics.produced(key, bytes, records);
    Ok(Produced {
        base_offset: outcome.base_offset,
        log_start_offset: outcome.log_start_offset,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as the connection reads it, and views of two regions of it.
    fn frame_and_views() -> (Bytes, Vec<Option<Bytes>>) {
        let frame = Bytes::from((0..100u8).collect::<Vec<u8>>());
        let views = vec![
            Some(frame.slice(10..30)),
            None,
            Some(frame.slice(30..30)),
            Some(frame.slice(50..90)),
        ];
        (frame, views)
    }

    fn describe(out: &[Option<BatchBytes>]) -> Vec<Option<(bool, Vec<u8>)>> {
        out.iter()
            .map(|b| {
                b.as_ref()
                    .map(|b| (matches!(b, BatchBytes::Owned(_)), b.to_vec()))
            })
            .collect()
    }

    #[test]
    fn records_are_cut_out_of_the_frame_when_nothing_else_holds_it() {
        let (frame, views) = frame_and_views();
        let start = frame.as_ptr();
        let out = own_records(frame, views);
        let want: Vec<Option<(bool, Vec<u8>)>> = vec![
            Some((true, (10..30).collect())),
            None,
            Some((true, vec![])),
            Some((true, (50..90).collect())),
        ];
        assert_eq!(describe(&out), want);
        // Not copied: the first region is where the frame's byte 10 was.
        let Some(BatchBytes::Owned(first)) = &out[0] else {
            panic!("owned")
        };
        assert_eq!(first.as_ptr(), start.wrapping_add(10));
    }

    #[test]
    fn records_stay_shared_when_the_frame_is_held_elsewhere() {
        let (frame, views) = frame_and_views();
        let held = frame.clone();
        let out = own_records(frame, views);
        assert!(out
            .iter()
            .flatten()
            .all(|b| matches!(b, BatchBytes::Shared(_))));
        assert_eq!(out[3].as_deref(), Some(&held[50..90]));
        // Views out of order or of another buffer: shared too.
        let (frame, mut views) = frame_and_views();
        views.swap(0, 3);
        assert!(own_records(frame, views)
            .iter()
            .flatten()
            .all(|b| matches!(b, BatchBytes::Shared(_))));
        let (frame, _) = frame_and_views();
        let other = vec![Some(Bytes::from_static(b"elsewhere"))];
        assert!(matches!(
            own_records(frame, other)[0],
            Some(BatchBytes::Shared(_))
        ));
    }
}
