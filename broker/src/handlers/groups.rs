//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups,
//! DeleteGroups, OffsetDelete.
//!
//! Runs on the shard that received the request. FindCoordinator works on
//! any shard (it creates `__consumer_offsets` on first use through
//! `Control`); the others are answered only by the group's coordinator
//! shard (`NOT_COORDINATOR` elsewhere) through `Shard::groups`. This module
//! only translates between wire messages and `crate::group`, setting each
//! version-specific field only for versions that carry it.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::RequestHeader;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{str_bytes, topic_name, AUTH_OPS_OMITTED};
use crate::group::records::OffsetValue;
use crate::group::{now_ms, partition_for, Committed, JoinRequest, WantedOffsets, OFFSETS_TOPIC};
use crate::metadata::Command;
use crate::shard::Shard;
use crate::txn::TXN_TOPIC;

/// FindCoordinator key types.
pub(crate) const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
const KEY_TYPE_SHARE: i8 = 2;

/// Operations a group allows when the client asks (no ACLs yet: all of
/// READ, DELETE, DESCRIBE).
pub(crate) const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// A described group's authorized operations: Kafka's for a group (READ,
/// DELETE, DESCRIBE) when the client asked for them, else the "omitted"
/// marker.
pub(crate) fn group_authorized_operations(asked: bool) -> i32 {
    if asked {
        GROUP_AUTHORIZED_OPERATIONS
    } else {
        AUTH_OPS_OMITTED
    }
}

/// Who sent a request, as groups report it.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub id: String,
    pub host: String,
}

impl Client {
    pub fn of(header: &RequestHeader, peer: &str) -> Client {
        let host = peer
            .rsplit_once(':')
            .map_or(peer, |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']');
        Client {
            id: header
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            host: format!("/{host}"),
        }
    }
}

fn code(r: Result<(), ResponseError>) -> i16 {
    r.err().map_or(0, |e| e.code())
}

// ---- FindCoordinator ----

pub async fn find_coordinator(
    shard: &Rc<Shard>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys: Vec<String> = if version >= 4 {
        req.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![req.key.to_string()]
    };
    let mut coordinators = Vec::with_capacity(keys.len());
    for key in keys {
        let found = locate_coordinator(shard, &key, req.key_type).await;
        coordinators.push((key, found));
    }
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = coordinators
            .into_iter()
            .map(|(key, found)| {
                let mut c = Coordinator::default().with_key(str_bytes(&key));
                match found {
                    Ok((node, host, port)) => {
                        c.node_id = BrokerId(node);
                        c.host = str_bytes(&host);
                        c.port = port;
                    }
                    Err((e, msg)) => {
                        c.error_code = e.code();
                        c.error_message = Some(str_bytes(&msg));
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                    }
                }
                c
            })
            .collect();
        return resp;
    }
    let (_, found) = coordinators.pop().expect("one key before v4");
    match found {
        Ok((node, host, port)) => {
            resp.node_id = BrokerId(node);
            resp.host = str_bytes(&host);
            resp.port = port;
        }
        Err((e, msg)) => {
            resp.error_code = e.code();
            if version >= 1 {
                resp.error_message = Some(str_bytes(&msg));
            }
            resp.node_id = BrokerId(-1);
            resp.port = -1;
        }
    }
    resp
}

/// The shard coordinating `key`: a group's `__consumer_offsets` partition
/// or a transactional id's `__transaction_state` partition, creating the
/// topic on first use.
pub(crate) async fn locate_coordinator(
    shard: &Rc<Shard>,
    key: &str,
    key_type: i8,
) -> Result<(i32, String, i32), (ResponseError, String)> {
    let topic_name = match key_type {
        KEY_TYPE_GROUP => OFFSETS_TOPIC,
        KEY_TYPE_TRANSACTION => {
            if key.is_empty() {
                return Err((
                    ResponseError::InvalidRequest,
                    "an empty transactional id has no coordinator".into(),
                ));
            }
            TXN_TOPIC
        }
        // A share-partition key, `group:topic_id:partition`: its state is
        // kept by the group's own coordinator (broker/src/share/persister.rs).
        KEY_TYPE_SHARE => {
            let mut parts = key.rsplitn(3, ':');
            let (Some(p), Some(t), Some(group)) = (parts.next(), parts.next(), parts.next()) else {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("{key} is not a share coordinator key (group:topic_id:partition)"),
                ));
            };
            if p.parse::<i32>().is_err() || group.is_empty() || t.is_empty() {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("{key} is not a share coordinator key (group:topic_id:partition)"),
                ));
            }
            return Box::pin(locate_coordinator(shard, group, KEY_TYPE_GROUP)).await;
        }
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!("unknown coordinator key type {other}"),
            ))
        }
    };
    if shard.image().topic(topic_name).is_none() {
        create_internal_topic(shard, topic_name).await;
    }
    let image = shard.image();
    let Some(topic) = image.topic(topic_name) else {
        return Err((
            ResponseError::CoordinatorNotAvailable,
            format!("{topic_name} could not be created"),
        ));
    };
    let p = partition_for(key, topic.leader_nodes.len() as i32);
    let node = topic.leader_nodes.get(p as usize).copied().ok_or_else(|| {
        (
            ResponseError::CoordinatorNotAvailable,
            format!("{topic_name} has no partitions"),
        )
    })?;
    let live = image.live_node(node).ok_or_else(|| {
        (
            ResponseError::CoordinatorNotAvailable,
            format!("node {node}, which leads {topic_name}-{p}, is not live"),
        )
    })?;
    Ok((node, live.host.clone(), i32::from(live.port)))
}

/// Creates `__consumer_offsets` or `__transaction_state` (compacted, with
/// the configured partition count).
pub(crate) async fn create_internal_topic(shard: &Rc<Shard>, name: &str) {
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    let partitions = if name == TXN_TOPIC {
        shard.config.transaction_state_partitions
    } else {
        shard.config.offsets_topic_partitions
    };
    let cmd = Command::CreateTopic {
        name: name.to_string(),
        partitions,
        configs,
        assignment: None,
    };
    // Two shards may race to create it; the loser's TOPIC_ALREADY_EXISTS is fine.
    let _ = shard.control().submit(vec![cmd], false).await;
}

// ---- JoinGroup, SyncGroup, Heartbeat, LeaveGroup ----

pub async fn join_group(
    shard: &Rc<Shard>,
    req: JoinGroupRequest,
    version: i16,
    client: Client,
) -> JoinGroupResponse {
    let join = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|s| s.to_string()),
        client_id: client.id,
        client_host: client.host,
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let r = shard.groups.join(&req.group_id, join).await;
    let mut resp = JoinGroupResponse::default();
    resp.error_code = r.error.map_or(0, |e| e.code());
    resp.generation_id = r.generation;
    if version >= 7 {
        resp.protocol_type = r.protocol_type.as_deref().map(str_bytes);
        resp.protocol_name = r.protocol.as_deref().map(str_bytes);
    } else {
        resp.protocol_name = Some(str_bytes(r.protocol.as_deref().unwrap_or_default()));
    }
    resp.leader = str_bytes(&r.leader);
    resp.member_id = str_bytes(&r.member_id);
    resp.members = r
        .members
        .into_iter()
        .map(|m| {
            let mut jm = JoinGroupResponseMember::default();
            jm.member_id = str_bytes(&m.member_id);
            if version >= 5 {
                jm.group_instance_id = m.instance_id.as_deref().map(str_bytes);
            }
            jm.metadata = m.metadata;
            jm
        })
        .collect();
    resp
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let protocol_type = req.protocol_type.as_ref().map(|s| s.to_string());
    let protocol = req.protocol_name.as_ref().map(|s| s.to_string());
    let r = shard
        .groups
        .sync(
            &req.group_id,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
            protocol_type.as_deref(),
            protocol.as_deref(),
            assignments,
        )
        .await;
    let mut resp = SyncGroupResponse::default();
    resp.error_code = r.error.map_or(0, |e| e.code());
    if version >= 5 {
        resp.protocol_type = r.protocol_type.as_deref().map(str_bytes);
        resp.protocol_name = r.protocol.as_deref().map(str_bytes);
    }
    resp.assignment = r.assignment;
    resp
}

pub fn heartbeat(shard: &Rc<Shard>, req: HeartbeatRequest) -> HeartbeatResponse {
    let r = shard.groups.heartbeat(
        &req.group_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
        req.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code(r))
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let result = shard.groups.leave(&req.group_id, &members).await;
    let mut resp = LeaveGroupResponse::default();
    match result {
        Err(e) => resp.error_code = e.code(),
        Ok(results) if version < 3 => {
            resp.error_code = results.into_iter().next().map_or(0, code);
        }
        Ok(results) => {
            resp.members = members
                .into_iter()
                .zip(results)
                .map(|((member_id, instance), r)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(&member_id))
                        .with_group_instance_id(instance.as_deref().map(str_bytes))
                        .with_error_code(code(r))
                })
                .collect();
        }
    }
    resp
}

// ---- offsets ----

pub async fn offset_commit(
    shard: &Rc<Shard>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let now = now_ms();
    let image = shard.image();
    // v10 names topics by id.
    let (wanted, unknown_ids) = commit_topics(
        &image,
        version >= 10,
        req.topics.iter().map(|t| {
            let parts = t.partitions.iter().map(|p| {
                let epoch = if version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                };
                let value = offset_value(p.committed_offset, epoch, &p.committed_metadata, now);
                (p.partition_index, value)
            });
            (t.name.to_string(), t.topic_id, parts.collect())
        }),
    );
    let instance_id = if version >= 7 {
        req.group_instance_id.as_ref().map(|s| s.to_string())
    } else {
        None
    };
    let member = (
        req.member_id.as_str(),
        instance_id.as_deref(),
        req.generation_id_or_member_epoch,
    );
    let answered = commit_offsets(shard, &req.group_id, member, wanted, None).await;
    let answer = |parts: Vec<(i32, i16)>| -> Vec<OffsetCommitResponsePartition> {
        parts
            .into_iter()
            .map(|(index, err)| {
                OffsetCommitResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(err)
            })
            .collect()
    };
    let mut resp = OffsetCommitResponse::default();
    resp.topics = answered
        .into_iter()
        .map(|(name, parts)| {
            let mut topic = OffsetCommitResponseTopic::default().with_partitions(answer(parts));
            if version >= 10 {
                topic.topic_id = image.topic(&name).map_or(Uuid::nil(), |t| t.id);
            } else {
                topic.name = topic_name(&name);
            }
            topic
        })
        .collect();
    let unknown = ResponseError::UnknownTopicId.code();
    resp.topics
        .extend(unknown_ids.into_iter().map(|(id, parts)| {
            let parts = parts.into_iter().map(|index| (index, unknown)).collect();
            OffsetCommitResponseTopic::default()
                .with_topic_id(id)
                .with_partitions(answer(parts))
        }));
    resp
}

/// A committed offset as a request carries it.
pub(crate) fn offset_value(
    offset: i64,
    leader_epoch: i32,
    metadata: &Option<kafka_protocol::protocol::StrBytes>,
    now: i64,
) -> OffsetValue {
    OffsetValue {
        offset,
        leader_epoch,
        metadata: metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
        commit_timestamp: now,
    }
}

/// The topics of an OffsetCommit or TxnOffsetCommit, each `(name, id,
/// offsets)`: by name, or by id (`by_id`: OffsetCommit v10, TxnOffsetCommit
/// v6). Returns the offsets by topic name, and apart the partitions of ids
/// no topic has, which Kafka answers with UNKNOWN_TOPIC_ID.
pub(crate) fn commit_topics(
    image: &crate::metadata::MetadataImage,
    by_id: bool,
    topics: impl Iterator<Item = (String, Uuid, Vec<(i32, OffsetValue)>)>,
) -> (CommitOffsets, Vec<(Uuid, Vec<i32>)>) {
    let mut wanted = Vec::new();
    let mut unknown_ids = Vec::new();
    for (name, id, parts) in topics {
        if !by_id {
            wanted.push((name, parts));
        } else if let Some(topic) = image.topic_by_id(&id) {
            wanted.push((topic.name.clone(), parts));
        } else {
            unknown_ids.push((id, parts.into_iter().map(|(index, _)| index).collect()));
        }
    }
    (wanted, unknown_ids)
}

/// Offsets to commit, by topic name.
pub(crate) type CommitOffsets = Vec<(String, Vec<(i32, OffsetValue)>)>;

/// Partitions of one topic in a commit: the ones refused up front carry
/// their error.
type CommitShape = Vec<(String, Vec<(i32, Option<ResponseError>)>)>;

/// OffsetCommit and TxnOffsetCommit (with the producer's id and epoch):
/// partitions of unknown topics are refused up front (as Kafka does), the
/// rest go to the coordinator in one batch. Answers every partition's
/// error code, in request order (PRODUCER_FENCED as the request version
/// knows it).
pub(crate) async fn commit_offsets(
    shard: &Rc<Shard>,
    group_id: &str,
    (member_id, instance_id, generation): (&str, Option<&str>, i32),
    topics: Vec<(String, Vec<(i32, OffsetValue)>)>,
    txn: Option<((i64, i16), i16)>,
) -> Vec<(String, Vec<(i32, i16)>)> {
    let image = shard.image();
    let mut shape: CommitShape = Vec::new();
    let mut offsets = Vec::new();
    for (name, partitions) in topics {
        let topic = image.topic(&name);
        let mut parts = Vec::new();
        for (index, value) in partitions {
            let known = topic.is_some_and(|tm| (0..tm.leaders.len() as i32).contains(&index));
            if !known {
                parts.push((index, Some(ResponseError::UnknownTopicOrPartition)));
                continue;
            }
            parts.push((index, None));
            offsets.push((name.clone(), index, value));
        }
        shape.push((name, parts));
    }
    let results = shard
        .groups
        .commit(
            group_id,
            member_id,
            instance_id,
            generation,
            offsets,
            txn.map(|(producer, _)| producer),
        )
        .await;
    let code = |e: ResponseError| match txn {
        Some((_, version)) => super::transactions::fenced_as(e, version, 3).code(),
        None => e.code(),
    };
    let mut results = results.into_iter();
    shape
        .into_iter()
        .map(|(name, parts)| {
            let parts = parts
                .into_iter()
                .map(|(index, refused)| {
                    let err = match refused.map(Err).or_else(|| results.next()) {
                        Some(Err(e)) => code(e),
                        _ => 0,
                    };
                    (index, err)
                })
                .collect();
            (name, parts)
        })
        .collect()
}

pub fn offset_fetch(
    shard: &Rc<Shard>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    let stable = version >= 7 && req.require_stable;
    if version >= 8 {
        let image = shard.image();
        resp.groups = req
            .groups
            .into_iter()
            .map(|g| {
                // v10 names topics by id; ids we do not know are answered
                // with UNKNOWN_TOPIC_ID per partition, as Kafka does.
                let mut unknown_ids = Vec::new();
                let wanted = g.topics.map(|ts| {
                    let mut wanted = Vec::new();
                    for t in ts {
                        if version < 10 {
                            wanted.push((t.name.to_string(), t.partition_indexes));
                        } else if let Some(topic) = image.topic_by_id(&t.topic_id) {
                            wanted.push((topic.name.clone(), t.partition_indexes));
                        } else {
                            unknown_ids.push((t.topic_id, t.partition_indexes));
                        }
                    }
                    wanted
                });
                let member = g.member_id.as_ref().map_or("", |m| m.as_str());
                let r = if version >= 9 {
                    shard
                        .groups
                        .check_fetch_member(&g.group_id, member, g.member_epoch)
                        .and_then(|()| shard.groups.fetch_offsets(&g.group_id, wanted))
                } else {
                    shard.groups.fetch_offsets(&g.group_id, wanted)
                };
                let group_id = g.group_id.to_string();
                let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id);
                match r {
                    Err(e) => out.error_code = e.code(),
                    Ok(topics) => {
                        out.topics = topics
                            .into_iter()
                            .map(|(name, parts)| {
                                let mut topic = OffsetFetchResponseTopics::default();
                                if version >= 10 {
                                    // Kafka answers the nil id for a name it
                                    // no longer knows.
                                    topic.topic_id =
                                        image.topic(&name).map_or(Uuid::nil(), |t| t.id);
                                } else {
                                    topic.name = topic_name(&name);
                                }
                                topic.with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(p, c)| {
                                            let mut out = v8_partition(p, c);
                                            if stable && unstable(shard, &group_id, &name, p) {
                                                out.committed_offset = -1;
                                                out.error_code =
                                                    ResponseError::UnstableOffsetCommit.code();
                                            }
                                            out
                                        })
                                        .collect(),
                                )
                            })
                            .collect();
                        let unknown = ResponseError::UnknownTopicId.code();
                        out.topics
                            .extend(unknown_ids.into_iter().map(|(id, parts)| {
                                let parts = parts.into_iter().map(|p| {
                                    let mut part = v8_partition(p, None);
                                    part.error_code = unknown;
                                    part
                                });
                                OffsetFetchResponseTopics::default()
                                    .with_topic_id(id)
                                    .with_partitions(parts.collect())
                            }));
                    }
                }
                out
            })
            .collect();
        return resp;
    }
    let wanted: Option<WantedOffsets> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let r = shard.groups.fetch_offsets(&req.group_id, wanted.clone());
    let topics = match r {
        Ok(t) => t,
        Err(e) => {
            if version >= 2 {
                resp.error_code = e.code();
            }
            // v1 has no group error: every requested partition carries it.
            resp.topics = wanted
                .unwrap_or_default()
                .into_iter()
                .map(|(name, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(topic_name(&name))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|p| old_partition(p, None, version).with_error_code(e.code()))
                                .collect(),
                        )
                })
                .collect();
            return resp;
        }
    };
    resp.topics = topics
        .into_iter()
        .map(|(name, parts)| {
            OffsetFetchResponseTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(p, c)| {
                            let mut out = old_partition(p, c, version);
                            if stable && unstable(shard, &req.group_id, &name, p) {
                                out.committed_offset = -1;
                                out.error_code = ResponseError::UnstableOffsetCommit.code();
                            }
                            out
                        })
                        .collect(),
                )
        })
        .collect();
    resp
}

fn old_partition(index: i32, c: Option<Committed>, version: i16) -> OffsetFetchResponsePartition {
    let mut p = OffsetFetchResponsePartition::default().with_partition_index(index);
    match c {
        Some(c) => {
            p.committed_offset = c.offset;
            if version >= 5 {
                p.committed_leader_epoch = c.leader_epoch;
            }
            p.metadata = Some(str_bytes(&c.metadata));
        }
        None => {
            p.committed_offset = -1;
            p.metadata = Some(str_bytes(""));
        }
    }
    p
}

/// An offset of the partition waits for its transaction to end (asked
/// with `require_stable`, the client retries).
fn unstable(shard: &Shard, group: &str, topic: &str, partition: i32) -> bool {
    shard.groups.has_pending_txn_offset(group, topic, partition)
}

fn v8_partition(index: i32, c: Option<Committed>) -> OffsetFetchResponsePartitions {
    let mut p = OffsetFetchResponsePartitions::default().with_partition_index(index);
    match c {
        Some(c) => {
            p.committed_offset = c.offset;
            p.committed_leader_epoch = c.leader_epoch;
            p.metadata = Some(str_bytes(&c.metadata));
        }
        None => {
            p.committed_offset = -1;
            p.metadata = Some(str_bytes(""));
        }
    }
    p
}

// ---- ListGroups, DescribeGroups, DeleteGroups, OffsetDelete ----

pub fn list_groups(shard: &Rc<Shard>, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let mut resp = ListGroupsResponse::default();
    resp.groups = shard
        .groups
        .list()
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
        .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type))
        .map(|l| {
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&l.id)))
                .with_protocol_type(str_bytes(&l.protocol_type));
            if version >= 4 {
                g.group_state = str_bytes(&l.state);
            }
            if version >= 5 {
                g.group_type = str_bytes(l.group_type);
            }
            g
        })
        .collect();
    resp
}

pub fn describe_groups(
    shard: &Rc<Shard>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    resp.groups = req
        .groups
        .into_iter()
        .map(|group_id| {
            let mut d = DescribedGroup::default();
            d.authorized_operations =
                group_authorized_operations(version >= 3 && req.include_authorized_operations);
            match shard.groups.describe(&group_id) {
                Err(e) => {
                    d.error_code = e.code();
                    d.group_state = str_bytes("");
                }
                Ok(s) if version >= 6 && s.missing.is_some() => {
                    // KIP-1043: v6 says the group is not there.
                    d.error_code = ResponseError::GroupIdNotFound.code();
                    d.error_message = s.missing.as_deref().map(str_bytes);
                    d.group_state = str_bytes(s.state.name());
                }
                Ok(s) => {
                    d.group_state = str_bytes(s.state.name());
                    d.protocol_type = str_bytes(&s.protocol_type);
                    d.protocol_data = str_bytes(&s.protocol);
                    d.members = s
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut dm = DescribedGroupMember::default();
                            dm.member_id = str_bytes(&m.member_id);
                            if version >= 4 {
                                dm.group_instance_id = m.instance_id.as_deref().map(str_bytes);
                            }
                            dm.client_id = str_bytes(&m.client_id);
                            dm.client_host = str_bytes(&m.client_host);
                            dm.member_metadata = m.metadata;
                            dm.member_assignment = m.assignment;
                            dm
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

pub async fn delete_groups(shard: &Rc<Shard>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for group_id in req.groups_names {
        let r = if group_id.is_empty() {
            Err(ResponseError::InvalidGroupId)
        } else {
            shard.groups.delete(&group_id).await
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code(r)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(shard: &Rc<Shard>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let mut resp = OffsetDeleteResponse::default();
    let mut results = match shard.groups.delete_offsets(&req.group_id, partitions).await {
        Ok(r) => r.into_iter(),
        Err(e) => {
            resp.error_code = e.code();
            return resp;
        }
    };
    resp.topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(results.next().map_or(0, code))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    resp
}
