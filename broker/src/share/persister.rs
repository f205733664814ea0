//! Reads and writes share-partition states with the share group's
//! coordinator (the shard leading the group's `__consumer_offsets`
//! partition): directly when that is this shard, else with
//! ReadShareGroupState / WriteShareGroupState over `crate::peer`, as
//! Kafka's partition leaders talk to its share coordinator.
//!
//! Runs on the leader's shard; only awaits the coordinator's answer.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    read_share_group_state_request, write_share_group_state_request, ApiKey, BrokerId,
    ListOffsetsRequest, ListOffsetsResponse, ReadShareGroupStateRequest,
    ReadShareGroupStateResponse, WriteShareGroupStateRequest, WriteShareGroupStateResponse,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::partition::StateBatch;
use crate::group::records::ShareStateValue;
use crate::handlers::groups::{locate_coordinator, KEY_TYPE_GROUP};
use crate::handlers::{error_from_code, str_bytes, topic_name};
use crate::metadata::MetadataImage;
use crate::shard::Shard;

const TIMEOUT: Duration = Duration::from_secs(10);
/// ListOffsets' timestamp for the latest offset.
const LATEST: i64 = -1;

/// Where the group's coordinator is: `None` for this shard.
async fn coordinator(shard: &Rc<Shard>, group: &str) -> Result<Option<String>, ResponseError> {
    let (node, host, port) = locate_coordinator(shard, group, KEY_TYPE_GROUP)
        .await
        .map_err(|(e, _)| e)?;
    Ok((node != shard.node_id()).then(|| format!("{host}:{port}")))
}

/// The stored state (`None`: never written).
pub async fn read(
    shard: &Rc<Shard>,
    group: &str,
    topic_id: Uuid,
    partition: i32,
) -> Result<Option<ShareStateValue>, ResponseError> {
    let Some(addr) = coordinator(shard, group).await? else {
        return shard.groups.read_share_state(group, topic_id, partition);
    };
    let req = ReadShareGroupStateRequest::default()
        .with_group_id(str_bytes(group))
        .with_topics(vec![
            read_share_group_state_request::ReadStateData::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![
                    read_share_group_state_request::PartitionData::default()
                        .with_partition(partition)
                        .with_leader_epoch(-1),
                ]),
        ]);
    let resp: ReadShareGroupStateResponse =
        crate::peer::call(&addr, ApiKey::ReadShareGroupState, 0, &req, TIMEOUT).await?;
    let p = resp
        .results
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition == partition)
        .ok_or(ResponseError::UnknownServerError)?;
    if p.error_code != 0 {
        return Err(error_from_code(p.error_code));
    }
    if p.start_offset < 0 {
        return Ok(None);
    }
    Ok(Some(ShareStateValue {
        state_epoch: p.state_epoch,
        leader_epoch: -1,
        start_offset: p.start_offset,
        batches: p
            .state_batches
            .into_iter()
            .map(|b| StateBatch {
                first: b.first_offset,
                last: b.last_offset,
                state: b.delivery_state,
                delivery_count: b.delivery_count,
            })
            .collect(),
    }))
}

/// Stores the state once the coordinator has made it durable.
pub async fn write(
    shard: &Rc<Shard>,
    group: &str,
    topic_id: Uuid,
    partition: i32,
    value: ShareStateValue,
) -> Result<(), ResponseError> {
    let Some(addr) = coordinator(shard, group).await? else {
        return shard
            .groups
            .write_share_state(group, topic_id, partition, value)
            .await;
    };
    let req = WriteShareGroupStateRequest::default()
        .with_group_id(str_bytes(group))
        .with_topics(vec![
            write_share_group_state_request::WriteStateData::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![
                    write_share_group_state_request::PartitionData::default()
                        .with_partition(partition)
                        .with_state_epoch(value.state_epoch)
                        .with_leader_epoch(value.leader_epoch)
                        .with_start_offset(value.start_offset)
                        .with_delivery_complete_count(super::partition::delivery_complete(
                            &value.batches,
                        ))
                        .with_state_batches(
                            value
                                .batches
                                .iter()
                                .map(|b| {
                                    write_share_group_state_request::StateBatch::default()
                                        .with_first_offset(b.first)
                                        .with_last_offset(b.last)
                                        .with_delivery_state(b.state)
                                        .with_delivery_count(b.delivery_count)
                                })
                                .collect(),
                        ),
                ]),
        ]);
    let resp: WriteShareGroupStateResponse =
        crate::peer::call(&addr, ApiKey::WriteShareGroupState, 1, &req, TIMEOUT).await?;
    let code = resp
        .results
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition == partition)
        .map_or(ResponseError::UnknownServerError.code(), |p| p.error_code);
    match code {
        0 => Ok(()),
        c => Err(error_from_code(c)),
    }
}

/// The end (high watermark) of each partition, asked of its leader: this
/// shard's own partitions directly, others with one ListOffsets (latest)
/// per node. A partition whose leader cannot answer is left out.
pub async fn end_offsets(
    shard: &Rc<Shard>,
    image: &MetadataImage,
    keys: &[(Uuid, i32)],
) -> HashMap<(Uuid, i32), i64> {
    let mut out = HashMap::new();
    let mut by_node: BTreeMap<i32, Vec<(Uuid, i32)>> = BTreeMap::new();
    for &(t, p) in keys {
        let Some(node) = image.leader_of(t, p) else {
            continue;
        };
        if node == shard.node_id() {
            if let Some(hw) = shard.high_watermark((t, p)) {
                out.insert((t, p), hw);
            }
        } else {
            by_node.entry(node).or_default().push((t, p));
        }
    }
    for (node, parts) in by_node {
        let Some(n) = image.live_node(node) else {
            continue;
        };
        let addr = format!("{}:{}", n.host, n.port);
        let mut topics: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
        for (t, p) in parts {
            topics.entry(t).or_default().push(p);
        }
        let names: HashMap<String, Uuid> = topics
            .keys()
            .filter_map(|id| image.topic_by_id(id).map(|m| (m.name.clone(), *id)))
            .collect();
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                names
                    .iter()
                    .map(|(name, id)| {
                        ListOffsetsTopic::default()
                            .with_name(topic_name(name))
                            .with_partitions(
                                topics[id]
                                    .iter()
                                    .map(|&p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(p)
                                            .with_current_leader_epoch(-1)
                                            .with_timestamp(LATEST)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let resp: Result<ListOffsetsResponse, _> =
            crate::peer::call(&addr, ApiKey::ListOffsets, 7, &req, TIMEOUT).await;
        let Ok(resp) = resp else { continue };
        for t in resp.topics {
            let Some(&id) = names.get(t.name.as_str()) else {
                continue;
            };
            for p in t.partitions.into_iter().filter(|p| p.error_code == 0) {
                out.insert((id, p.partition_index), p.offset);
            }
        }
    }
    out
}
