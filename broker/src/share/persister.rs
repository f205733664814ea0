//! Reads and writes share-partition states with the share group's
//! coordinator (the shard leading the group's `__consumer_offsets`
//! partition): directly when that is this shard, else with
//! ReadShareGroupState / WriteShareGroupState over `crate::peer`, as
//! Kafka's partition leaders talk to its share coordinator.
//!
//! Runs on the leader's shard; only awaits the coordinator's answer.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::{
    read_share_group_state_request, write_share_group_state_request, ApiKey,
    ReadShareGroupStateRequest, ReadShareGroupStateResponse, WriteShareGroupStateRequest,
    WriteShareGroupStateResponse,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::partition::StateBatch;
use crate::group::records::ShareStateValue;
use crate::handlers::groups::{locate_coordinator, KEY_TYPE_GROUP};
use crate::handlers::{error_from_code, str_bytes};
use crate::shard::Shard;

const TIMEOUT: Duration = Duration::from_secs(10);

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
        crate::peer::call(&addr, ApiKey::WriteShareGroupState, 0, &req, TIMEOUT).await?;
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
