//! KIP-932 share-group APIs, translated between wire messages and
//! `crate::group` (the coordinator's side: ShareGroupHeartbeat,
//! ShareGroupDescribe, the share-group offset admin APIs, and the state
//! reads and writes leaders send) and `crate::share` (the leader's side:
//! ShareFetch and ShareAcknowledge).
//!
//! Runs on the shard that received the request. Coordinator APIs answer
//! NOT_COORDINATOR on any other shard; ShareFetch and ShareAcknowledge
//! answer NOT_LEADER_OR_FOLLOWER for partitions led elsewhere.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::alter_share_group_offsets_response::{
    AlterShareGroupOffsetsResponsePartition, AlterShareGroupOffsetsResponseTopic,
};
use kafka_protocol::messages::delete_share_group_offsets_response::DeleteShareGroupOffsetsResponseTopic;
use kafka_protocol::messages::describe_share_group_offsets_response::{
    DescribeShareGroupOffsetsResponseGroup, DescribeShareGroupOffsetsResponsePartition,
    DescribeShareGroupOffsetsResponseTopic,
};
use kafka_protocol::messages::share_fetch_response::{
    AcquiredRecords, LeaderIdAndEpoch, NodeEndpoint, PartitionData, ShareFetchableTopicResponse,
};
use kafka_protocol::messages::share_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member,
    TopicPartitions as DescribedPartitions,
};
use kafka_protocol::messages::share_group_heartbeat_response::{
    Assignment as WireAssignment, TopicPartitions,
};
use kafka_protocol::messages::{
    delete_share_group_state_response, initialize_share_group_state_response,
    read_share_group_state_response, read_share_group_state_summary_response,
    share_acknowledge_response, write_share_group_state_response, AlterShareGroupOffsetsRequest,
    AlterShareGroupOffsetsResponse, DeleteShareGroupOffsetsRequest,
    DeleteShareGroupOffsetsResponse, DeleteShareGroupStateRequest, DeleteShareGroupStateResponse,
    DescribeShareGroupOffsetsRequest, DescribeShareGroupOffsetsResponse,
    InitializeShareGroupStateRequest, InitializeShareGroupStateResponse,
    ReadShareGroupStateRequest, ReadShareGroupStateResponse, ReadShareGroupStateSummaryRequest,
    ReadShareGroupStateSummaryResponse, ShareAcknowledgeRequest, ShareAcknowledgeResponse,
    ShareFetchRequest, ShareFetchResponse, ShareGroupDescribeRequest, ShareGroupDescribeResponse,
    ShareGroupHeartbeatRequest, ShareGroupHeartbeatResponse, WriteShareGroupStateRequest,
    WriteShareGroupStateResponse,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::groups::{group_authorized_operations, Client};
use super::{
    check_leader_epoch, find_topic, leader_hint, locate, push_node_endpoint, str_bytes, topic_name,
    wait_for_append,
};
use crate::group::consumer::Assignment;
use crate::group::records::ShareStateValue;
use crate::group::share::ShareHeartbeat;
use crate::group_config::ShareConfig;
use crate::metadata::MetadataImage;
use crate::shard::Shard;
use crate::share::partition::{delivery_complete, LogBatch, StateBatch, ACK_REJECT, ACK_RENEW};
use crate::share::{split_batches, Acks, SessionStep, SpKey};

/// Member type in describe answers: a share-group member.
const ASSIGNOR: &str = "simple";
/// A fetch with no limit of its own gets at most this many records.
const DEFAULT_MAX_RECORDS: usize = 500;

// ---- the coordinator's side ----

pub async fn heartbeat(
    shard: &Rc<Shard>,
    req: ShareGroupHeartbeatRequest,
    client: Client,
) -> ShareGroupHeartbeatResponse {
    let hb = ShareHeartbeat {
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        rack_id: req.rack_id.map(|s| s.to_string()),
        subscribed_names: req
            .subscribed_topic_names
            .map(|v| v.into_iter().map(|t| t.0.to_string()).collect()),
        client_id: client.id,
        client_host: client.host,
    };
    let mut resp = ShareGroupHeartbeatResponse::default();
    match shard.groups.share_heartbeat(&req.group_id, hb).await {
        Ok(ok) => {
            resp.member_id = Some(str_bytes(&ok.member_id));
            resp.member_epoch = ok.member_epoch;
            resp.heartbeat_interval_ms = shard
                .groups
                .share_settings_for(&req.group_id, &shard.image())
                .heartbeat_interval_ms;
            resp.assignment = ok.assignment.map(|a| {
                WireAssignment::default().with_topic_partitions(
                    a.into_iter()
                        .map(|(t, ps)| {
                            TopicPartitions::default()
                                .with_topic_id(t)
                                .with_partitions(ps.into_iter().collect())
                        })
                        .collect(),
                )
            });
        }
        Err((e, msg)) => {
            resp.error_code = e.code();
            resp.error_message = (!msg.is_empty()).then(|| str_bytes(&msg));
        }
    }
    resp
}

fn described(image: &MetadataImage, a: &Assignment) -> DescribedAssignment {
    DescribedAssignment::default().with_topic_partitions(
        a.iter()
            .map(|(t, ps)| {
                let name = image.topic_by_id(t).map_or("", |m| m.name.as_str());
                DescribedPartitions::default()
                    .with_topic_id(*t)
                    .with_topic_name(topic_name(name))
                    .with_partitions(ps.iter().copied().collect())
            })
            .collect(),
    )
}

pub fn describe(shard: &Rc<Shard>, req: ShareGroupDescribeRequest) -> ShareGroupDescribeResponse {
    let image = shard.image();
    let mut resp = ShareGroupDescribeResponse::default();
    resp.groups = req
        .group_ids
        .into_iter()
        .map(|group_id| {
            let mut d = DescribedGroup::default();
            d.authorized_operations =
                group_authorized_operations(req.include_authorized_operations);
            match shard.groups.describe_share(&group_id) {
                Err((e, msg)) => {
                    d.error_code = e.code();
                    d.error_message = (!msg.is_empty()).then(|| str_bytes(&msg));
                }
                Ok(g) => {
                    d.group_state = str_bytes(g.state_name());
                    d.group_epoch = g.epoch;
                    d.assignment_epoch = g.epoch;
                    d.assignor_name = str_bytes(ASSIGNOR);
                    d.members = g
                        .members
                        .values()
                        .map(|m| {
                            Member::default()
                                .with_member_id(str_bytes(&m.id))
                                .with_rack_id(m.rack_id.as_deref().map(str_bytes))
                                .with_member_epoch(m.epoch)
                                .with_client_id(str_bytes(&m.client_id))
                                .with_client_host(str_bytes(&m.client_host))
                                .with_subscribed_topic_names(
                                    m.subscribed_names.iter().map(|n| topic_name(n)).collect(),
                                )
                                .with_assignment(described(&image, &m.assigned))
                        })
                        .collect();
                }
            }
            d.group_id = group_id;
            d
        })
        .collect();
    resp
}

pub fn read_state(
    shard: &Rc<Shard>,
    req: ReadShareGroupStateRequest,
) -> ReadShareGroupStateResponse {
    use read_share_group_state_response::{PartitionResult, ReadStateResult, StateBatch as Wire};
    let mut resp = ReadShareGroupStateResponse::default();
    for t in req.topics {
        let mut out = ReadStateResult::default().with_topic_id(t.topic_id);
        for p in t.partitions {
            let mut r = PartitionResult::default()
                .with_partition(p.partition)
                .with_state_epoch(-1)
                .with_start_offset(-1);
            match shard
                .groups
                .read_share_state(&req.group_id, t.topic_id, p.partition)
            {
                Ok(Some(v)) => {
                    r.state_epoch = v.state_epoch;
                    r.start_offset = v.start_offset;
                    r.state_batches = v
                        .batches
                        .iter()
                        .map(|b| {
                            Wire::default()
                                .with_first_offset(b.first)
                                .with_last_offset(b.last)
                                .with_delivery_state(b.state)
                                .with_delivery_count(b.delivery_count)
                        })
                        .collect();
                }
                Ok(None) => {}
                Err(e) => r.error_code = e.code(),
            }
            out.partitions.push(r);
        }
        resp.results.push(out);
    }
    resp
}

pub async fn write_state(
    shard: &Rc<Shard>,
    req: WriteShareGroupStateRequest,
) -> WriteShareGroupStateResponse {
    use write_share_group_state_response::{PartitionResult, WriteStateResult};
    let mut resp = WriteShareGroupStateResponse::default();
    for t in req.topics {
        let mut out = WriteStateResult::default().with_topic_id(t.topic_id);
        for p in t.partitions {
            let value = ShareStateValue {
                state_epoch: p.state_epoch,
                leader_epoch: p.leader_epoch,
                start_offset: p.start_offset,
                batches: p
                    .state_batches
                    .iter()
                    .map(|b| StateBatch {
                        first: b.first_offset,
                        last: b.last_offset,
                        state: b.delivery_state,
                        delivery_count: b.delivery_count,
                    })
                    .collect(),
            };
            let code = store_state(shard, &req.group_id, (t.topic_id, p.partition), value).await;
            out.partitions.push(
                PartitionResult::default()
                    .with_partition(p.partition)
                    .with_error_code(code),
            );
        }
        resp.results.push(out);
    }
    resp
}

/// Writes one share-partition's state at this coordinator; the error code
/// Write- and InitializeShareGroupState answer with.
async fn store_state(
    shard: &Rc<Shard>,
    group: &str,
    (topic, partition): (Uuid, i32),
    value: ShareStateValue,
) -> i16 {
    match shard
        .groups
        .write_share_state(group, topic, partition, value)
        .await
    {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

/// InitializeShareGroupState: a share-partition's state set to start at an
/// offset, with no record in flight (Kafka's group coordinator sends it
/// when offsets are reset; here AlterShareGroupOffsets does it in place).
pub async fn initialize_state(
    shard: &Rc<Shard>,
    req: InitializeShareGroupStateRequest,
) -> InitializeShareGroupStateResponse {
    use initialize_share_group_state_response::{InitializeStateResult, PartitionResult};
    let mut resp = InitializeShareGroupStateResponse::default();
    for t in req.topics {
        let mut out = InitializeStateResult::default().with_topic_id(t.topic_id);
        for p in t.partitions {
            let value = ShareStateValue {
                state_epoch: p.state_epoch,
                leader_epoch: -1,
                start_offset: p.start_offset,
                batches: Vec::new(),
            };
            let code = store_state(shard, &req.group_id, (t.topic_id, p.partition), value).await;
            out.partitions.push(
                PartitionResult::default()
                    .with_partition(p.partition)
                    .with_error_code(code),
            );
        }
        resp.results.push(out);
    }
    resp
}

/// DeleteShareGroupState: forgets share-partitions' states (an empty
/// group's, as DeleteShareGroupOffsets does).
pub async fn delete_state(
    shard: &Rc<Shard>,
    req: DeleteShareGroupStateRequest,
) -> DeleteShareGroupStateResponse {
    use delete_share_group_state_response::{DeleteStateResult, PartitionResult};
    let resets: Vec<(Uuid, i32, Option<i64>)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic_id, p.partition, None))
        })
        .collect();
    let code = match shard
        .groups
        .reset_share_offsets(&req.group_id, resets)
        .await
    {
        Ok(()) => 0,
        Err(e) => e.code(),
    };
    let mut resp = DeleteShareGroupStateResponse::default();
    for t in req.topics {
        resp.results.push(
            DeleteStateResult::default()
                .with_topic_id(t.topic_id)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            PartitionResult::default()
                                .with_partition(p.partition)
                                .with_error_code(code)
                        })
                        .collect(),
                ),
        );
    }
    resp
}

/// ReadShareGroupStateSummary: each share-partition's start offset and
/// epochs (-1 when it has no state).
pub fn read_state_summary(
    shard: &Rc<Shard>,
    req: ReadShareGroupStateSummaryRequest,
) -> ReadShareGroupStateSummaryResponse {
    use read_share_group_state_summary_response::{PartitionResult, ReadStateSummaryResult};
    let mut resp = ReadShareGroupStateSummaryResponse::default();
    for t in req.topics {
        let mut out = ReadStateSummaryResult::default().with_topic_id(t.topic_id);
        for p in t.partitions {
            let mut r = PartitionResult::default()
                .with_partition(p.partition)
                .with_state_epoch(-1)
                .with_leader_epoch(-1)
                .with_start_offset(-1);
            match shard
                .groups
                .read_share_state(&req.group_id, t.topic_id, p.partition)
            {
                Ok(Some(v)) => {
                    r.state_epoch = v.state_epoch;
                    r.leader_epoch = v.leader_epoch;
                    r.start_offset = v.start_offset;
                    r.delivery_complete_count = delivery_complete(&v.batches);
                }
                Ok(None) => {}
                Err(e) => r.error_code = e.code(),
            }
            out.partitions.push(r);
        }
        resp.results.push(out);
    }
    resp
}

/// A share-partition whose lag a DescribeShareGroupOffsets answer needs.
struct Lag {
    /// Where in the answer: group, topic and partition indexes.
    at: (usize, usize, usize),
    start: i64,
    /// Records from `start` on already delivered for good.
    done: i64,
    key: (Uuid, i32),
}

/// DescribeShareGroupOffsets: each share-partition's start offset and, from
/// v1 (KIP-1226), its lag: the records from the start offset to the
/// partition's end that are not yet delivered for good (the end asked of
/// each partition's leader; -1 when it cannot be had).
pub async fn describe_offsets(
    shard: &Rc<Shard>,
    req: DescribeShareGroupOffsetsRequest,
    version: i16,
) -> DescribeShareGroupOffsetsResponse {
    let image = shard.image();
    let mut resp = DescribeShareGroupOffsetsResponse::default();
    let mut lags: Vec<Lag> = Vec::new();
    for g in req.groups {
        let mut out = DescribeShareGroupOffsetsResponseGroup::default();
        match shard.groups.share_offsets(&g.group_id) {
            Err(e) => out.error_code = e.code(),
            Ok(states) => {
                // The topics asked for, or every one with a state.
                let wanted: Vec<(String, Option<Vec<i32>>)> = match g.topics {
                    Some(ts) => ts
                        .into_iter()
                        .map(|t| (t.topic_name.0.to_string(), Some(t.partitions)))
                        .collect(),
                    None => {
                        let mut names: Vec<String> = states
                            .keys()
                            .filter_map(|(id, _)| image.topic_by_id(id).map(|m| m.name.clone()))
                            .collect();
                        names.dedup();
                        names.into_iter().map(|n| (n, None)).collect()
                    }
                };
                for (name, partitions) in wanted {
                    let meta = image.topic(&name);
                    let id = meta.map_or(Uuid::nil(), |m| m.id);
                    let partitions = partitions.unwrap_or_else(|| {
                        states
                            .keys()
                            .filter(|(t, _)| *t == id)
                            .map(|(_, p)| *p)
                            .collect()
                    });
                    let mut topic = DescribeShareGroupOffsetsResponseTopic::default()
                        .with_topic_name(topic_name(&name))
                        .with_topic_id(id);
                    for p in partitions {
                        let mut d = DescribeShareGroupOffsetsResponsePartition::default()
                            .with_partition_index(p)
                            .with_start_offset(-1)
                            .with_leader_epoch(-1);
                        if meta.is_none() {
                            d.error_code = ResponseError::UnknownTopicOrPartition.code();
                        } else if let Some(s) = states.get(&(id, p)) {
                            d.start_offset = s.start_offset;
                            d.leader_epoch = s.leader_epoch;
                            lags.push(Lag {
                                at: (resp.groups.len(), out.topics.len(), topic.partitions.len()),
                                start: s.start_offset,
                                done: i64::from(delivery_complete(&s.batches)),
                                key: (id, p),
                            });
                        }
                        topic.partitions.push(d);
                    }
                    out.topics.push(topic);
                }
            }
        }
        out.group_id = g.group_id;
        resp.groups.push(out);
    }
    if version >= 1 && !lags.is_empty() {
        let keys: Vec<(Uuid, i32)> = lags.iter().map(|l| l.key).collect();
        let ends = crate::share::persister::end_offsets(shard, &image, &keys).await;
        for l in lags {
            if let Some(&end) = ends.get(&l.key) {
                let (g, t, p) = l.at;
                resp.groups[g].topics[t].partitions[p].lag = (end - l.start - l.done).max(0);
            }
        }
    }
    resp
}

pub async fn alter_offsets(
    shard: &Rc<Shard>,
    req: AlterShareGroupOffsetsRequest,
) -> AlterShareGroupOffsetsResponse {
    let image = shard.image();
    let mut resp = AlterShareGroupOffsetsResponse::default();
    let mut resets = Vec::new();
    let mut topics = Vec::new();
    for t in &req.topics {
        let meta = image.topic(&t.topic_name);
        let mut out = AlterShareGroupOffsetsResponseTopic::default()
            .with_topic_name(t.topic_name.clone())
            .with_topic_id(meta.map_or(Uuid::nil(), |m| m.id));
        for p in &t.partitions {
            let mut d = AlterShareGroupOffsetsResponsePartition::default()
                .with_partition_index(p.partition_index);
            match meta {
                Some(m) if (0..m.leaders.len() as i32).contains(&p.partition_index) => {
                    resets.push((m.id, p.partition_index, Some(p.start_offset.max(0))));
                }
                _ => d.error_code = ResponseError::UnknownTopicOrPartition.code(),
            }
            out.partitions.push(d);
        }
        topics.push(out);
    }
    if let Err(e) = shard
        .groups
        .reset_share_offsets(&req.group_id, resets)
        .await
    {
        resp.error_code = e.code();
        for t in &mut topics {
            for p in &mut t.partitions {
                if p.error_code == 0 {
                    p.error_code = e.code();
                }
            }
        }
    }
    resp.responses = topics;
    resp
}

pub async fn delete_offsets(
    shard: &Rc<Shard>,
    req: DeleteShareGroupOffsetsRequest,
) -> DeleteShareGroupOffsetsResponse {
    let image = shard.image();
    let mut resp = DeleteShareGroupOffsetsResponse::default();
    let states = match shard.groups.share_offsets(&req.group_id) {
        Ok(s) => s,
        Err(e) => {
            resp.error_code = e.code();
            return resp;
        }
    };
    let mut resets = Vec::new();
    let mut topics = Vec::new();
    for t in &req.topics {
        let meta = image.topic(&t.topic_name);
        let mut out = DeleteShareGroupOffsetsResponseTopic::default()
            .with_topic_name(t.topic_name.clone())
            .with_topic_id(meta.map_or(Uuid::nil(), |m| m.id));
        match meta {
            Some(m) => resets.extend(
                states
                    .keys()
                    .filter(|(id, _)| *id == m.id)
                    .map(|&(id, p)| (id, p, None)),
            ),
            None => out.error_code = ResponseError::UnknownTopicOrPartition.code(),
        }
        topics.push(out);
    }
    if let Err(e) = shard
        .groups
        .reset_share_offsets(&req.group_id, resets)
        .await
    {
        resp.error_code = e.code();
    }
    resp.responses = topics;
    resp
}

// ---- the leader's side ----

/// The share-partitions of a request, located: `Ok` with the partition key
/// and leader epoch, or the error to answer for it.
type Located = Result<(crate::shard::PartitionKey, i32), ResponseError>;

fn locate_share(shard: &Shard, image: &MetadataImage, t: Uuid, p: i32) -> Located {
    let meta = find_topic(image, "", t);
    if meta.is_none() {
        return Err(ResponseError::UnknownTopicId);
    }
    let key = locate(shard, meta, p)?;
    let epoch = check_leader_epoch(meta, p, -1)?;
    Ok((key, epoch))
}

/// Applies the acknowledgements of one partition (types up to
/// `max_type`); the error code to answer.
async fn acknowledge_partition(
    shard: &Rc<Shard>,
    image: &MetadataImage,
    who: &Who<'_>,
    (t, p): (Uuid, i32),
    batches: Acks,
    max_type: i8,
) -> i16 {
    let (pkey, epoch) = match locate_share(shard, image, t, p) {
        Ok(x) => x,
        Err(e) => return e.code(),
    };
    let key: SpKey = (who.group.into(), t, p);
    if let Err(e) = shard.share.ensure_loaded(&key, pkey, epoch, who.cfg).await {
        return e.code();
    }
    let r = shard
        .share
        .acknowledge(&key, who.member, &batches, max_type, who.cfg)
        .await;
    tracing::debug!(group = who.group, member = who.member, %t, partition = p,
        batches = batches.len(), result = ?r, "share acknowledgements");
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

/// The highest acknowledge type a request may carry: renewal from v2, if
/// the group allows it.
fn max_ack_type(version: i16, cfg: &ShareConfig) -> i8 {
    if version >= 2 && cfg.renew_enabled {
        ACK_RENEW
    } else {
        ACK_REJECT
    }
}

/// One partition's fetch result.
struct Fetched {
    error: Option<ResponseError>,
    records: Option<Bytes>,
    acquired: Vec<AcquiredRecords>,
    bytes: usize,
}

/// Who fetches: the share group, its settings and its member.
struct Who<'a> {
    group: &'a str,
    member: &'a str,
    cfg: &'a ShareConfig,
}

async fn fetch_partition(
    shard: &Rc<Shard>,
    image: &MetadataImage,
    who: &Who<'_>,
    (t, p): (Uuid, i32),
    max_bytes: usize,
    max_records: usize,
    first: bool,
) -> Fetched {
    let mut out = Fetched {
        error: None,
        records: None,
        acquired: Vec::new(),
        bytes: 0,
    };
    let (pkey, epoch) = match locate_share(shard, image, t, p) {
        Ok(x) => x,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let key: SpKey = (who.group.into(), t, p);
    if let Err(e) = shard.share.ensure_loaded(&key, pkey, epoch, who.cfg).await {
        out.error = Some(e);
        return out;
    }
    let (log_start, mut end) = {
        let parts = shard.partitions.borrow();
        match parts.get(&pkey) {
            Some(part) => (part.state.log_start, part.state.high_watermark),
            None => {
                out.error = Some(ResponseError::NotLeaderOrFollower);
                return out;
            }
        }
    };
    if who.cfg.read_committed {
        end = end.min(shard.last_stable_offset(pkey).unwrap_or(end));
    }
    let Some(from) = shard.share.fetch_from(&key, log_start, who.cfg) else {
        return out;
    };
    if from >= end || max_records == 0 {
        return out;
    }
    // Retention may move the log start meanwhile: then next time.
    let (read, aborted) = if who.cfg.read_committed {
        match shard.read_committed(pkey, from, max_bytes, first).await {
            Ok((r, aborted)) => (r, aborted),
            Err(_) => return out,
        }
    } else {
        match shard.read(pkey, from, max_bytes, first).await {
            Ok(r) => (r, Vec::new()),
            Err(_) => return out,
        }
    };
    let mut batches: Vec<(LogBatch, Bytes)> = read.batches.iter().flat_map(split_batches).collect();
    skip_aborted(&mut batches, &aborted);
    let logs: Vec<LogBatch> = batches.iter().map(|(b, _)| *b).collect();
    let got = shard.share.acquire(
        &key,
        who.member,
        &logs,
        end.min(read.high_watermark),
        max_records,
    );
    if got.is_empty() {
        return out;
    }
    let mut buf = BytesMut::new();
    for (b, bytes) in &batches {
        if !b.control && got.iter().any(|a| a.first <= b.last && b.base <= a.last) {
            buf.extend_from_slice(bytes);
        }
    }
    out.bytes = buf.len();
    out.records = Some(buf.freeze());
    out.acquired = got
        .iter()
        .map(|a| {
            AcquiredRecords::default()
                .with_first_offset(a.first)
                .with_last_offset(a.last)
                .with_delivery_count(a.delivery_count)
        })
        .collect();
    out
}

/// Marks the batches of aborted transactions as never to be handed out
/// (as control batches are), as a read_committed consumer skips them:
/// from each aborted transaction's first offset, its producer's batches
/// until that producer's next control batch (the abort marker).
fn skip_aborted(batches: &mut [(LogBatch, Bytes)], aborted: &[(i64, i64)]) {
    if aborted.is_empty() {
        return;
    }
    let mut pending: Vec<(i64, i64)> = aborted.to_vec();
    pending.sort_by_key(|&(_, first)| first);
    let mut next = 0;
    let mut open: std::collections::HashSet<i64> = std::collections::HashSet::new();
    for (b, bytes) in batches.iter_mut() {
        let Some(h) = storage::batch::parse_header(bytes).ok() else {
            continue;
        };
        // Each aborted transaction opens once, when the read reaches it.
        while next < pending.len() && pending[next].1 <= b.base {
            open.insert(pending[next].0);
            next += 1;
        }
        if b.control {
            open.remove(&h.producer_id);
        } else if h.is_transactional() && open.contains(&h.producer_id) {
            b.control = true;
        }
    }
}

fn acks_of(
    batches: Vec<kafka_protocol::messages::share_fetch_request::AcknowledgementBatch>,
) -> Vec<(i64, i64, Vec<i8>)> {
    batches
        .into_iter()
        .map(|b| (b.first_offset, b.last_offset, b.acknowledge_types))
        .collect()
}

pub async fn share_fetch(
    shard: &Rc<Shard>,
    req: ShareFetchRequest,
    version: i16,
) -> ShareFetchResponse {
    let mut resp = ShareFetchResponse::default();
    let group = req
        .group_id
        .as_ref()
        .map(|g| g.to_string())
        .unwrap_or_default();
    let member = req
        .member_id
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    if group.is_empty() {
        resp.error_code = ResponseError::InvalidGroupId.code();
        return resp;
    }
    if member.is_empty() {
        resp.error_code = ResponseError::InvalidRequest.code();
        resp.error_message = Some(str_bytes("MemberId can't be empty."));
        return resp;
    }
    let mut add = Vec::new();
    let mut acks: Vec<((Uuid, i32), Acks)> = Vec::new();
    for t in req.topics {
        for p in t.partitions {
            add.push((t.topic_id, p.partition_index));
            if !p.acknowledgement_batches.is_empty() {
                acks.push((
                    (t.topic_id, p.partition_index),
                    acks_of(p.acknowledgement_batches),
                ));
            }
        }
    }
    let forget: Vec<(Uuid, i32)> = req
        .forgotten_topics_data
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic_id, *p)))
        .collect();
    // A session's first request carries no acknowledgements (there is
    // nothing acquired yet); its last one fetches nothing.
    if req.share_session_epoch == 0 && !acks.is_empty() {
        resp.error_code = ResponseError::InvalidRequest.code();
        resp.error_message = Some(str_bytes(
            "Acknowledgement data is present on the initial fetch request",
        ));
        return resp;
    }
    let image = shard.image();
    let cfg = crate::group_config::share(&image, &group, &shard.config);
    resp.acquisition_lock_timeout_ms = cfg.lock_ms.min(i32::MAX as i64) as i32;
    // The session's epoch is checked first; acknowledgements are applied
    // (and persisted) before the session's epoch -1 releases the rest.
    let epoch = req.share_session_epoch;
    let opened = if epoch == -1 {
        shard
            .share
            .session_acknowledge_check(&group, &member, -1)
            .map(|()| Vec::new())
    } else {
        shard
            .share
            .session_step(&group, &member, epoch, &add, &forget)
            .map(|step| match step {
                SessionStep::Open(ps) => ps,
                SessionStep::Closed => Vec::new(),
            })
    };
    let partitions = match opened {
        Ok(ps) => ps,
        Err(e) => {
            tracing::debug!(group, member, epoch, error = ?e, "ShareFetch refused");
            resp.error_code = e.code();
            return resp;
        }
    };
    let mut results: BTreeMap<(Uuid, i32), PartitionData> = BTreeMap::new();
    let who = Who {
        group: &group,
        member: &member,
        cfg: &cfg,
    };
    for ((t, p), batches) in acks {
        let max_type = max_ack_type(version, &cfg);
        let code = acknowledge_partition(shard, &image, &who, (t, p), batches, max_type).await;
        let d = results.entry((t, p)).or_insert_with(|| empty_data(p));
        d.acknowledge_error_code = code;
    }
    if epoch == -1 {
        let _ = shard.share.session_step(&group, &member, -1, &[], &[]);
    }
    let max_records = if req.max_records > 0 {
        req.max_records as usize
    } else {
        DEFAULT_MAX_RECORDS
    };
    let max_bytes = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(1) as usize;
    // Renewing locks (KIP-1222) fetches nothing.
    let answer_now = !results.is_empty() || req.is_renew_ack;
    loop {
        let listeners: Vec<_> = {
            let parts = shard.partitions.borrow();
            partitions
                .iter()
                .filter_map(|&(t, p)| locate_share(shard, &image, t, p).ok())
                .filter_map(|(k, _)| parts.get(&k).map(|part| part.waiters.listen()))
                .collect()
        };
        let mut records_left = max_records;
        let mut bytes_left = max_bytes;
        let mut total = 0usize;
        let mut errors = false;
        let mut fetched = Vec::new();
        for &(t, p) in &partitions {
            if records_left == 0 || bytes_left == 0 || req.is_renew_ack {
                break;
            }
            let f = fetch_partition(
                shard,
                &image,
                &who,
                (t, p),
                bytes_left,
                records_left,
                total == 0,
            )
            .await;
            let n: i64 = f
                .acquired
                .iter()
                .map(|a| a.last_offset - a.first_offset + 1)
                .sum();
            records_left = records_left.saturating_sub(n as usize);
            bytes_left = bytes_left.saturating_sub(f.bytes);
            total += f.bytes;
            errors |= f.error.is_some();
            fetched.push(((t, p), f));
        }
        let now = Instant::now();
        let done =
            total >= min_bytes || errors || answer_now || now >= deadline || listeners.is_empty();
        if done || fetched.iter().any(|(_, f)| !f.acquired.is_empty()) {
            for ((t, p), f) in fetched {
                if f.error.is_none() && f.acquired.is_empty() {
                    continue;
                }
                let d = results.entry((t, p)).or_insert_with(|| empty_data(p));
                if let Some(e) = f.error {
                    d.error_code = e.code();
                    if e == ResponseError::NotLeaderOrFollower {
                        let meta = find_topic(&image, "", t);
                        if let Some(hint) = leader_hint(shard, meta, p) {
                            d.current_leader = LeaderIdAndEpoch::default()
                                .with_leader_id(hint.node)
                                .with_leader_epoch(hint.epoch);
                            push_node_endpoint!(resp.node_endpoints, NodeEndpoint, &hint);
                        }
                    }
                }
                d.records = f.records;
                d.acquired_records = f.acquired;
            }
            break;
        }
        wait_for_append(listeners, deadline).await;
    }
    let mut by_topic: BTreeMap<Uuid, Vec<PartitionData>> = BTreeMap::new();
    for ((t, _), d) in results {
        by_topic.entry(t).or_default().push(d);
    }
    resp.responses = by_topic
        .into_iter()
        .map(|(t, ps)| {
            ShareFetchableTopicResponse::default()
                .with_topic_id(t)
                .with_partitions(ps)
        })
        .collect();
    resp
}

fn empty_data(p: i32) -> PartitionData {
    let mut d = PartitionData::default().with_partition_index(p);
    d.current_leader = LeaderIdAndEpoch::default()
        .with_leader_id(-1)
        .with_leader_epoch(-1);
    d
}

pub async fn share_acknowledge(
    shard: &Rc<Shard>,
    req: ShareAcknowledgeRequest,
    version: i16,
) -> ShareAcknowledgeResponse {
    use share_acknowledge_response::{
        LeaderIdAndEpoch as Leader, PartitionData as Data, ShareAcknowledgeTopicResponse,
    };
    let mut resp = ShareAcknowledgeResponse::default();
    let group = req
        .group_id
        .as_ref()
        .map(|g| g.to_string())
        .unwrap_or_default();
    let member = req
        .member_id
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    if group.is_empty() {
        resp.error_code = ResponseError::InvalidGroupId.code();
        return resp;
    }
    if let Err(e) = shard
        .share
        .session_acknowledge_check(&group, &member, req.share_session_epoch)
    {
        tracing::debug!(group, member, epoch = req.share_session_epoch, error = ?e,
            "ShareAcknowledge refused");
        resp.error_code = e.code();
        return resp;
    }
    let image = shard.image();
    let cfg = crate::group_config::share(&image, &group, &shard.config);
    resp.acquisition_lock_timeout_ms = cfg.lock_ms.min(i32::MAX as i64) as i32;
    let who = Who {
        group: &group,
        member: &member,
        cfg: &cfg,
    };
    for t in req.topics {
        let mut out = ShareAcknowledgeTopicResponse::default().with_topic_id(t.topic_id);
        for p in t.partitions {
            let batches = p
                .acknowledgement_batches
                .into_iter()
                .map(|b| (b.first_offset, b.last_offset, b.acknowledge_types))
                .collect();
            let code = acknowledge_partition(
                shard,
                &image,
                &who,
                (t.topic_id, p.partition_index),
                batches,
                max_ack_type(version, &cfg),
            )
            .await;
            out.partitions.push(
                Data::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code)
                    .with_current_leader(
                        Leader::default().with_leader_id(-1).with_leader_epoch(-1),
                    ),
            );
        }
        resp.responses.push(out);
    }
    if req.share_session_epoch == -1 {
        let _ = shard.share.session_step(&group, &member, -1, &[], &[]);
    }
    resp
}
