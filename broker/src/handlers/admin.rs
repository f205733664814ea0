//! Admin APIs that Kafka 4.x's AdminClient and tools call, answered as
//! Kafka answers them on a cluster like this one (single replicas, no
//! authorizer, no reassignment in progress):
//!
//! * DescribeAcls, CreateAcls, DeleteAcls: SECURITY_DISABLED, as Kafka
//!   without an authorizer;
//! * ElectLeaders: every partition has one replica, already its leader:
//!   ELECTION_NOT_NEEDED (left out when all partitions were asked for);
//! * AlterPartitionReassignments: a partition moves to another node in
//!   seconds, with no data copied (`Shard::hand_over`), before the answer;
//! * ListPartitionReassignments: so none is ever in progress;
//! * DescribeTopicPartitions: Metadata's topic view, paged by cursor;
//! * DescribeLogDirs: this node's one log directory (the data directory)
//!   and the size of each partition it leads (objects plus WAL tail);
//! * ListConfigResources: topics, nodes and groups with configs (v1),
//!   client-metrics subscriptions (none);
//! * DescribeQuorum: the Raft quorum that keeps the metadata;
//! * AddRaftVoter, RemoveRaftVoter: the quorum is static (`kraft.version`
//!   0), so UNSUPPORTED_VERSION, as Kafka answers on a static quorum;
//! * AlterReplicaLogDirs: one log directory per node, so only no-op moves;
//! * UnregisterBroker: a fenced broker's nodes leave the registry (through
//!   the controller).
//!
//! Runs on the shard that received the request; reads its metadata image
//! and partitions only.

use std::rc::Rc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::alter_replica_log_dirs_response::{
    AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
};
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::DeleteAclsFilterResult;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::describe_quorum_response::{
    Listener as QuorumListener, Node as QuorumNode, PartitionData as QuorumPartition, ReplicaState,
    TopicData as QuorumTopic,
};
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::list_config_resources_response::ConfigResource;
use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, AlterPartitionReassignmentsRequest,
    AlterPartitionReassignmentsResponse, AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse,
    BrokerId, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse,
    DescribeQuorumRequest, DescribeQuorumResponse, DescribeTopicPartitionsRequest,
    DescribeTopicPartitionsResponse, ElectLeadersRequest, ElectLeadersResponse,
    ListConfigResourcesRequest, ListConfigResourcesResponse, ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse,
    UnregisterBrokerRequest, UnregisterBrokerResponse, UnregisterControllerRequest,
    UnregisterControllerResponse,
};
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name};
use crate::metadata::{Command, TopicMeta};
use crate::shard::Shard;

const NO_AUTHORIZER: &str = "No Authorizer is configured.";

pub fn describe_acls(_req: DescribeAclsRequest) -> DescribeAclsResponse {
    let mut resp = DescribeAclsResponse::default();
    resp.error_code = ResponseError::SecurityDisabled.code();
    resp.error_message = Some(str_bytes(NO_AUTHORIZER));
    resp
}

pub fn create_acls(req: CreateAclsRequest) -> CreateAclsResponse {
    let mut resp = CreateAclsResponse::default();
    resp.results = req
        .creations
        .iter()
        .map(|_| {
            AclCreationResult::default()
                .with_error_code(ResponseError::SecurityDisabled.code())
                .with_error_message(Some(str_bytes(NO_AUTHORIZER)))
        })
        .collect();
    resp
}

pub fn delete_acls(req: DeleteAclsRequest) -> DeleteAclsResponse {
    let mut resp = DeleteAclsResponse::default();
    resp.filter_results = req
        .filters
        .iter()
        .map(|_| {
            DeleteAclsFilterResult::default()
                .with_error_code(ResponseError::SecurityDisabled.code())
                .with_error_message(Some(str_bytes(NO_AUTHORIZER)))
        })
        .collect();
    resp
}

/// Election types: 0 preferred, 1 unclean. With one replica per partition
/// a preferred election is never needed; an unclean one moves a partition
/// whose broker is fenced to a live node, from what is in objects (the
/// operator gives up what that broker had not uploaded, as Kafka's unclean
/// election gives up what the new leader lacks).
pub async fn elect_leaders(
    shard: &Rc<Shard>,
    req: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    let image = shard.image();
    let mut resp = ElectLeadersResponse::default();
    if version >= 1 && !(0..=1).contains(&req.election_type) {
        resp.error_code = ResponseError::InvalidRequest.code();
        return resp;
    }
    let unclean = version >= 1 && req.election_type == 1;
    let wanted: Vec<(String, Vec<i32>)> = match req.topic_partitions {
        Some(w) => w
            .into_iter()
            .map(|t| (t.topic.to_string(), t.partitions))
            .collect(),
        // All partitions: Kafka lists only those it elected a leader for.
        None if unclean => image
            .topics
            .values()
            .map(|t| {
                let down = (0..t.leader_nodes.len() as i32)
                    .filter(|&p| image.live_node(t.leader_nodes[p as usize]).is_none())
                    .collect::<Vec<_>>();
                (t.name.clone(), down)
            })
            .filter(|(_, p)| !p.is_empty())
            .collect(),
        None => return resp,
    };
    for (topic, partitions) in wanted {
        let meta = image.topic(&topic).cloned();
        let mut results = Vec::with_capacity(partitions.len());
        for p in partitions {
            let exists = meta
                .as_ref()
                .is_some_and(|m| (0..m.leader_nodes.len() as i32).contains(&p));
            let (code, message) = match (&meta, exists, unclean) {
                (_, false, _) => (
                    ResponseError::UnknownTopicOrPartition.code(),
                    "The partition does not exist.".to_string(),
                ),
                (Some(m), true, true) => {
                    let cmd = crate::metadata::Command::ElectUnclean {
                        topic_id: m.id,
                        partition: p,
                    };
                    match shard.control().submit(vec![cmd], false).await.pop() {
                        Some(Ok(_)) => {
                            tracing::warn!(topic = %topic, partition = p,
                                "unclean election: a fenced broker's partition moved; what it had not uploaded is given up");
                            (0, String::new())
                        }
                        Some(Err(e)) => (e.code, e.message),
                        None => (ResponseError::UnknownServerError.code(), String::new()),
                    }
                }
                _ => (
                    ResponseError::ElectionNotNeeded.code(),
                    "Leader election not needed for topic partition.".to_string(),
                ),
            };
            results.push(
                PartitionResult::default()
                    .with_partition_id(p)
                    .with_error_code(code)
                    .with_error_message((!message.is_empty()).then(|| str_bytes(&message))),
            );
        }
        resp.replica_election_results.push(
            ReplicaElectionResult::default()
                .with_topic(topic_name(&topic))
                .with_partition_result(results),
        );
    }
    resp
}

/// AlterPartitionReassignments: with one replica per partition, the target
/// replica list names the new leader. The move is a hand-over, not a copy
/// (`Shard::hand_over` on the leading shard), so it is done, or refused,
/// before the answer. Cancelling (null replicas) finds nothing in
/// progress: NO_REASSIGNMENT_IN_PROGRESS, as Kafka.
pub async fn alter_partition_reassignments(
    shard: &Rc<Shard>,
    req: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    let mut resp = AlterPartitionReassignmentsResponse::default();
    // v1 (KIP-860): a client may forbid changing a partition's replication
    // factor, which is 1 here.
    let fixed_factor = version >= 1 && !req.allow_replication_factor_change;
    resp.allow_replication_factor_change = req.allow_replication_factor_change;
    for t in req.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let outcome = match p.replicas.as_deref() {
                Some(r) if fixed_factor && r.len() != 1 => Err((
                    ResponseError::InvalidReplicationFactor,
                    format!(
                        "The replication factor is changed from 1 to {} but \
                         allowReplicationFactorChange is false",
                        r.len()
                    ),
                )),
                replicas => reassign(shard, &t.name, p.partition_index, replicas).await,
            };
            let mut out =
                ReassignablePartitionResponse::default().with_partition_index(p.partition_index);
            if let Err((e, msg)) = outcome {
                out.error_code = e.code();
                out.error_message = Some(str_bytes(&msg));
            }
            partitions.push(out);
        }
        resp.responses.push(
            ReassignableTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    resp
}

/// Moves `topic`-`partition` to the one node in `replicas` (`None`: a
/// cancel, and moves here finish before they answer, so there is none).
pub async fn reassign(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    replicas: Option<&[BrokerId]>,
) -> Result<(), (ResponseError, String)> {
    let image = shard.image();
    let Some(meta) = image.topic(topic) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("topic {topic} does not exist"),
        ));
    };
    let Some(&leader) = usize::try_from(partition)
        .ok()
        .and_then(|p| meta.leader_nodes.get(p))
    else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("{topic}-{partition} does not exist"),
        ));
    };
    let Some(replicas) = replicas else {
        return Err((
            ResponseError::NoReassignmentInProgress,
            format!("no reassignment of {topic}-{partition} is in progress"),
        ));
    };
    let [target] = replicas else {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            format!(
                "{topic}-{partition}: one replica per partition here, not {}",
                replicas.len()
            ),
        ));
    };
    let to_node = target.0;
    let known = if image.nodes.is_empty() {
        shard.config.shard_of_node(to_node).is_some()
    } else {
        image.live_node(to_node).is_some()
    };
    if !known {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            format!("{topic}-{partition}: node {to_node} is not a live node of this cluster"),
        ));
    }
    if to_node == leader {
        return Ok(());
    }
    let Some(from) = shard.config.shard_of_node(leader) else {
        // Another broker leads it: that broker hands it over.
        return reassign_on(&image, leader, topic, partition, to_node).await;
    };
    let key = (meta.id, partition);
    let moved = if from == shard.id {
        shard.hand_over(key, to_node).await
    } else {
        shard.control().hand_over(from, key, to_node).await
    };
    moved.map_err(|e| {
        (
            e,
            format!("{topic}-{partition} was not moved to node {to_node}"),
        )
    })
}

/// Sends the reassignment of one partition to the broker leading it (the
/// node `leader`), which moves it and answers when done.
async fn reassign_on(
    image: &crate::metadata::MetadataImage,
    leader: i32,
    topic: &str,
    partition: i32,
    to_node: i32,
) -> Result<(), (ResponseError, String)> {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    let Some(n) = image.live_node(leader) else {
        return Err((
            ResponseError::NotLeaderOrFollower,
            format!("{topic}-{partition}: its leader {leader} is fenced; it moves once back"),
        ));
    };
    let addr = format!("{}:{}", n.host, n.port);
    let req = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(60_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(Some(vec![BrokerId(to_node)]))])]);
    let resp: AlterPartitionReassignmentsResponse = crate::peer::call(
        &addr,
        kafka_protocol::messages::ApiKey::AlterPartitionReassignments,
        0,
        &req,
        std::time::Duration::from_secs(60),
    )
    .await
    .map_err(|e| {
        (
            e,
            format!("{topic}-{partition}: its leader {leader} did not answer"),
        )
    })?;
    let code = if resp.error_code != 0 {
        resp.error_code
    } else {
        resp.responses
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .map_or(ResponseError::UnknownServerError.code(), |p| p.error_code)
    };
    match code {
        0 => Ok(()),
        c => Err((
            super::error_from_code(c),
            format!("{topic}-{partition}: its leader {leader} did not move it"),
        )),
    }
}

pub fn list_partition_reassignments(
    _req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    // Moves finish before AlterPartitionReassignments answers.
    ListPartitionReassignmentsResponse::default()
}

/// Operations a topic allows without an authorizer (Kafka reports every
/// operation the resource type supports): READ, WRITE, CREATE, DELETE,
/// ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);

/// Partitions one DescribeTopicPartitions response carries at most
/// (Kafka's `max.request.partition.size.limit` default).
const PARTITION_LIMIT: i32 = 2000;

pub fn describe_topic_partitions(
    shard: &Shard,
    req: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let image = shard.image();
    let mut names: Vec<String> = if req.topics.is_empty() {
        image.topics.keys().cloned().collect()
    } else {
        req.topics.iter().map(|t| t.name.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let (start_topic, start_partition) = match &req.cursor {
        Some(c) => (c.topic_name.to_string(), c.partition_index.max(0)),
        None => (String::new(), 0),
    };
    let mut budget = req.response_partition_limit.clamp(1, PARTITION_LIMIT);
    let mut resp = DescribeTopicPartitionsResponse::default();
    for name in names.into_iter().filter(|n| *n >= start_topic) {
        let first = if name == start_topic {
            start_partition
        } else {
            0
        };
        if budget == 0 {
            resp.next_cursor = Some(cursor(&name, first));
            break;
        }
        let Some(t) = image.topic(&name) else {
            let mut out = DescribeTopicPartitionsResponseTopic::default();
            out.name = Some(topic_name(&name));
            out.error_code = ResponseError::UnknownTopicOrPartition.code();
            out.topic_authorized_operations = TOPIC_OPERATIONS;
            resp.topics.push(out);
            continue;
        };
        let count = t.leaders.len() as i32;
        let first = first.min(count);
        let take = (count - first).min(budget);
        let mut out = topic_view(t);
        out.partitions.drain(..first as usize);
        out.partitions.truncate(take as usize);
        budget -= take;
        resp.topics.push(out);
        if first + take < count {
            resp.next_cursor = Some(cursor(&name, first + take));
            break;
        }
    }
    resp
}

fn cursor(topic: &str, partition: i32) -> Cursor {
    Cursor::default()
        .with_topic_name(topic_name(topic))
        .with_partition_index(partition)
}

fn topic_view(t: &TopicMeta) -> DescribeTopicPartitionsResponseTopic {
    let mut out = DescribeTopicPartitionsResponseTopic::default();
    out.name = Some(topic_name(&t.name));
    out.topic_id = t.id;
    out.is_internal = super::metadata::is_internal(&t.name);
    out.topic_authorized_operations = TOPIC_OPERATIONS;
    out.partitions = t
        .leader_nodes
        .iter()
        .enumerate()
        .map(|(p, &leader)| {
            let node = BrokerId(leader);
            let mut d = DescribeTopicPartitionsResponsePartition::default();
            d.partition_index = p as i32;
            d.leader_id = node;
            d.leader_epoch = t.leader_epochs.get(p).copied().unwrap_or_default();
            d.replica_nodes = vec![node];
            d.isr_nodes = vec![node];
            d.eligible_leader_replicas = Some(Vec::new());
            d.last_known_elr = Some(Vec::new());
            d
        })
        .collect();
    out
}

pub fn describe_log_dirs(
    shard: &Rc<Shard>,
    req: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    let image = shard.image();
    let parts = shard.partitions.borrow();
    let mut topics: Vec<DescribeLogDirsTopic> = Vec::new();
    let mut add = |t: &TopicMeta, p: i32| {
        let Some(part) = parts.get(&(t.id, p)) else {
            return; // not led by this node: not in its log directory
        };
        let in_objects: u64 = image
            .objects
            .partition(t.id, p)
            .map_or(0, |o| o.iter().map(|r| r.bytes).sum());
        let size = in_objects.saturating_add(part.unuploaded_bytes() as u64);
        let entry = DescribeLogDirsPartition::default()
            .with_partition_index(p)
            .with_partition_size(size as i64)
            .with_offset_lag(0)
            .with_is_future_key(false);
        match topics.iter_mut().find(|x| x.name.as_str() == t.name) {
            Some(x) => x.partitions.push(entry),
            None => topics.push(
                DescribeLogDirsTopic::default()
                    .with_name(topic_name(&t.name))
                    .with_partitions(vec![entry]),
            ),
        }
    };
    match req.topics {
        None => {
            for t in image.topics.values() {
                for p in 0..t.leaders.len() as i32 {
                    add(t, p);
                }
            }
        }
        Some(wanted) => {
            for w in wanted {
                if let Some(t) = image.topic(&w.topic) {
                    for p in w.partitions {
                        add(t, p);
                    }
                }
            }
        }
    }
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(&shard.config.data_dir.display().to_string()))
        .with_topics(topics);
    if version >= 4 {
        // Unknown (Kafka's -1): the volume is not measured on the shard.
        result.total_bytes = -1;
        result.usable_bytes = -1;
    }
    let mut resp = DescribeLogDirsResponse::default();
    resp.results = vec![result];
    resp
}

/// ConfigResource types (Kafka's `ConfigResource.Type`).
const TYPE_TOPIC: i8 = 2;
const TYPE_BROKER: i8 = 4;
const TYPE_CLIENT_METRICS: i8 = 16;
const TYPE_GROUP: i8 = 32;

pub fn list_config_resources(
    shard: &Shard,
    req: ListConfigResourcesRequest,
    version: i16,
) -> ListConfigResourcesResponse {
    let mut resp = ListConfigResourcesResponse::default();
    // v0 (ListClientMetricsResources) lists client-metrics subscriptions
    // only, and there are none.
    if version == 0 {
        return resp;
    }
    let known = [TYPE_TOPIC, TYPE_BROKER, TYPE_CLIENT_METRICS, TYPE_GROUP];
    if req.resource_types.iter().any(|t| !known.contains(t)) {
        resp.error_code = ResponseError::UnsupportedVersion.code();
        return resp;
    }
    let wants = |t: i8| req.resource_types.is_empty() || req.resource_types.contains(&t);
    let image = shard.image();
    let resource = |name: String, kind: i8| {
        ConfigResource::default()
            .with_resource_name(str_bytes(&name))
            .with_resource_type(kind)
    };
    if wants(TYPE_TOPIC) {
        let mut names: Vec<&String> = image.topics.keys().collect();
        names.sort();
        resp.config_resources
            .extend(names.into_iter().map(|n| resource(n.clone(), TYPE_TOPIC)));
    }
    if wants(TYPE_BROKER) {
        resp.config_resources.extend(
            (0..shard.config.shards)
                .map(|s| resource(shard.config.node_id(s).to_string(), TYPE_BROKER)),
        );
    }
    if wants(TYPE_GROUP) {
        // Groups with dynamic configs (they are kept in the metadata).
        resp.config_resources.extend(
            image
                .group_configs
                .keys()
                .map(|g| resource(g.clone(), TYPE_GROUP)),
        );
    }
    resp
}

/// The message Kafka's Raft client gives a voter change on a static quorum.
fn static_quorum(what: &str) -> String {
    format!("Cluster doesn't support {what} voter because the kraft.version feature is 0")
}

/// The error for a request naming another cluster, as Kafka checks first.
fn other_cluster(shard: &Shard, cluster_id: Option<&str>) -> bool {
    cluster_id.is_some_and(|c| c != shard.config.cluster_id)
}

/// AddRaftVoter (KIP-853): the quorum is static (`controller_quorum_voters`,
/// as Kafka's `controller.quorum.voters`: `kraft.version` 0), so a voter
/// cannot be added; answered as Kafka's Raft client answers on such a
/// cluster: UNSUPPORTED_VERSION, after the cluster id check.
pub fn add_raft_voter(shard: &Shard, req: AddRaftVoterRequest) -> AddRaftVoterResponse {
    let mut resp = AddRaftVoterResponse::default();
    if other_cluster(shard, req.cluster_id.as_deref()) {
        resp.error_code = ResponseError::InconsistentClusterId.code();
        return resp;
    }
    resp.error_code = ResponseError::UnsupportedVersion.code();
    resp.error_message = Some(str_bytes(&static_quorum("adding")));
    resp
}

/// RemoveRaftVoter: as AddRaftVoter, on a static quorum.
pub fn remove_raft_voter(shard: &Shard, req: RemoveRaftVoterRequest) -> RemoveRaftVoterResponse {
    let mut resp = RemoveRaftVoterResponse::default();
    if other_cluster(shard, req.cluster_id.as_deref()) {
        resp.error_code = ResponseError::InconsistentClusterId.code();
        return resp;
    }
    resp.error_code = ResponseError::UnsupportedVersion.code();
    resp.error_message = Some(str_bytes(&static_quorum("removing")));
    resp
}

/// UnregisterController: Kafka's controllers register themselves at start
/// (KIP-919) and this removes a registration, typically a controller's that
/// left the quorum. Here the controllers are the static quorum's voters,
/// with the ids DescribeQuorum gives them, and a voter cannot leave. For a
/// voter the answer is Kafka's net effect on a live controller (its
/// manager re-registers as soon as it sees "Registration removed for this
/// node ID."): no error, and it stays. Any other id was never registered:
/// CONTROLLER_ID_NOT_REGISTERED, with Kafka's message.
pub async fn unregister_controller(
    shard: &Rc<Shard>,
    req: UnregisterControllerRequest,
) -> UnregisterControllerResponse {
    let mut resp = UnregisterControllerResponse::default();
    let Some(q) = shard.control().quorum().await else {
        resp.error_code = ResponseError::NotController.code();
        return resp;
    };
    let node = shard.config.node_id(0);
    let registered = q
        .voters
        .iter()
        .any(|&v| req.controller_id == voter_id(&q, v, node));
    if !registered {
        resp.error_code = ResponseError::ControllerIdNotRegistered.code();
        resp.error_message = Some(str_bytes(&format!(
            "Controller ID {} is not currently registered.",
            req.controller_id
        )));
    }
    resp
}

/// The id clients know a quorum voter by (DescribeQuorum, UnregisterController):
/// this broker's controller is node `node` (shard 0's), any other voter its
/// Raft id.
fn voter_id(q: &crate::controller::QuorumState, voter: u64, node: i32) -> i32 {
    if voter == q.id {
        node
    } else {
        voter as i32
    }
}

/// The metadata log as Kafka names it in DescribeQuorum.
const METADATA_TOPIC: &str = "__cluster_metadata";

/// DescribeQuorum: the Raft quorum that keeps the metadata. Its one voter is
/// this broker's controller, which clients know as node `node_id(0)` (the
/// controller id of Metadata and DescribeCluster), reached through shard
/// 0's listener; shards follow the log in process, so there are no
/// observers. Offsets are Raft log indexes + 1.
pub async fn describe_quorum(
    shard: &Rc<Shard>,
    req: DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let mut resp = DescribeQuorumResponse::default();
    let asked = req.topics.iter().any(|t| {
        t.topic_name.as_str() == METADATA_TOPIC
            && t.partitions.iter().any(|p| p.partition_index == 0)
    });
    if !asked {
        resp.error_code = ResponseError::UnknownTopicOrPartition.code();
        return resp;
    }
    let Some(q) = shard.control().quorum().await else {
        resp.error_code = ResponseError::NotController.code();
        return resp;
    };
    let now = crate::clock::now_ms();
    let node = BrokerId(shard.config.node_id(0));
    let end = |index: Option<u64>| index.map_or(0, |i| i as i64 + 1);
    let voters = q
        .voters
        .iter()
        .map(|&v| {
            let mut r = ReplicaState::default()
                .with_replica_id(BrokerId(voter_id(&q, v, node.0)))
                .with_log_end_offset(end(q.last_log_index));
            r.last_fetch_timestamp = now;
            r.last_caught_up_timestamp = now;
            r
        })
        .collect();
    let mut p = QuorumPartition::default()
        .with_partition_index(0)
        .with_leader_id(if q.leader == Some(q.id) {
            node
        } else {
            BrokerId(-1)
        })
        .with_leader_epoch(q.term as i32)
        .with_high_watermark(end(q.last_applied));
    p.current_voters = voters;
    resp.topics = vec![QuorumTopic::default()
        .with_topic_name(topic_name(METADATA_TOPIC))
        .with_partitions(vec![p])];
    // v2: where the voter is reached. It has no listener of its own; every
    // shard's Kafka listener forwards to it, shard 0's is named here.
    let cfg = &shard.config;
    resp.nodes = vec![QuorumNode::default()
        .with_node_id(node)
        .with_listeners(vec![QuorumListener::default()
            .with_name(str_bytes("PLAINTEXT"))
            .with_host(str_bytes(cfg.advertised_host()))
            .with_port(cfg.port(0))])];
    resp
}

/// AlterReplicaLogDirs: a node has one log directory (its data directory),
/// so moving a replica there is a no-op and any other path is
/// LOG_DIR_NOT_FOUND; a partition this node does not lead is
/// REPLICA_NOT_AVAILABLE, as Kafka answers for a replica it lacks.
pub fn alter_replica_log_dirs(
    shard: &Shard,
    req: AlterReplicaLogDirsRequest,
) -> AlterReplicaLogDirsResponse {
    let image = shard.image();
    let ours = shard.config.data_dir.display().to_string();
    let mut resp = AlterReplicaLogDirsResponse::default();
    for dir in req.dirs {
        for t in dir.topics {
            let meta = image.topic(&t.name);
            let partitions = t
                .partitions
                .iter()
                .map(|&p| {
                    let error = match super::locate(shard, meta, p) {
                        Err(ResponseError::UnknownTopicOrPartition) => {
                            Some(ResponseError::UnknownTopicOrPartition)
                        }
                        Err(_) => Some(ResponseError::ReplicaNotAvailable),
                        Ok(_) if dir.path.as_str() != ours => Some(ResponseError::LogDirNotFound),
                        Ok(_) => None,
                    };
                    AlterReplicaLogDirPartitionResult::default()
                        .with_partition_index(p)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            resp.results.push(
                AlterReplicaLogDirTopicResult::default()
                    .with_topic_name(t.name)
                    .with_partitions(partitions),
            );
        }
    }
    resp
}

/// UnregisterBroker: committed by the controller, which refuses a broker
/// it does not know (BROKER_ID_NOT_REGISTERED) or one still live.
pub async fn unregister_broker(
    shard: &Rc<Shard>,
    req: UnregisterBrokerRequest,
) -> UnregisterBrokerResponse {
    let broker_id = req.broker_id.0;
    let cmd = Command::UnregisterBroker { broker_id };
    let result = shard.control().submit(vec![cmd], false).await.pop();
    let mut resp = UnregisterBrokerResponse::default().with_error_message(None);
    match result {
        Some(Ok(_)) => tracing::info!(broker = broker_id, "broker unregistered"),
        Some(Err(e)) => {
            tracing::info!(broker = broker_id, "broker not unregistered: {}", e.message);
            resp.error_code = e.code;
            resp.error_message = Some(str_bytes(&e.message));
        }
        None => resp.error_code = ResponseError::UnknownServerError.code(),
    }
    resp
}
