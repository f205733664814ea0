//! One module per Kafka API family. Every handler runs on the shard that
//! received the request and touches only that shard's partitions; a request
//! for a partition led elsewhere gets `NOT_LEADER_OR_FOLLOWER`.

pub mod admin;
pub mod api_versions;
pub mod auth;
pub mod configs;
pub mod consumer_groups;
pub mod delete_records;
pub mod features;
pub mod fetch;
pub mod groups;
pub mod leader_epoch;
pub mod list_offsets;
pub mod metadata;
pub mod produce;
pub mod quotas;
pub mod share;
pub mod streams_groups;
pub mod topics;
pub mod transactions;

use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::metadata::{MetadataImage, TopicMeta};
use crate::shard::{PartitionKey, Shard};

/// Authorized-operations value when the client did not ask for them.
pub const AUTH_OPS_OMITTED: i32 = i32::MIN;

/// The error a peer or the controller answered with: Kafka's, or
/// UNKNOWN_SERVER_ERROR for a code this crate does not know.
pub fn error_from_code(code: i16) -> kafka_protocol::ResponseError {
    kafka_protocol::ResponseError::try_from_code(code)
        .unwrap_or(kafka_protocol::ResponseError::UnknownServerError)
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// Finds the topic a request names (by id when it has one, else by name).
pub fn find_topic<'a>(
    image: &'a MetadataImage,
    name: &str,
    id: Uuid,
) -> Option<&'a Arc<TopicMeta>> {
    if !id.is_nil() {
        return image.topic_by_id(&id);
    }
    image.topic(name)
}

/// Routes a partition to this shard, or says why not.
pub fn locate(
    shard: &Shard,
    topic: Option<&Arc<TopicMeta>>,
    partition: i32,
) -> Result<PartitionKey, ResponseError> {
    let Some(topic) = topic else {
        return Err(ResponseError::UnknownTopicOrPartition);
    };
    let Some(&leader) = usize::try_from(partition)
        .ok()
        .and_then(|p| topic.leader_nodes.get(p))
    else {
        return Err(ResponseError::UnknownTopicOrPartition);
    };
    if leader != shard.node_id() || crate::liveness::fenced(shard.image_version()) {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    Ok((topic.id, partition))
}

/// Checks a request's `current_leader_epoch` against the partition's, as
/// Kafka does (-1: not checked); returns the partition's leader epoch.
pub fn check_leader_epoch(
    topic: Option<&Arc<TopicMeta>>,
    partition: i32,
    current: i32,
) -> Result<i32, ResponseError> {
    let epoch = topic
        .and_then(|t| t.leader_epochs.get(usize::try_from(partition).ok()?))
        .copied()
        .unwrap_or(0);
    match current {
        e if e < 0 || e == epoch => Ok(epoch),
        e if e < epoch => Err(ResponseError::FencedLeaderEpoch),
        _ => Err(ResponseError::UnknownLeaderEpoch),
    }
}

/// Where a partition's leader is: what a NOT_LEADER_OR_FOLLOWER answer
/// carries from Produce v10 and Fetch v12/v16 on (KIP-951), so the client
/// goes there without a Metadata round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    pub node: i32,
    pub epoch: i32,
    pub host: String,
    pub port: i32,
}

pub fn leader_hint(
    shard: &Shard,
    topic: Option<&Arc<TopicMeta>>,
    partition: i32,
) -> Option<LeaderHint> {
    let topic = topic?;
    let p = usize::try_from(partition).ok()?;
    let node = *topic.leader_nodes.get(p)?;
    let image = shard.image();
    let live = image.live_node(node)?;
    Some(LeaderHint {
        node,
        epoch: topic.leader_epochs.get(p).copied().unwrap_or(0),
        host: live.host.clone(),
        port: i32::from(live.port),
    })
}

/// Adds the hinted leader to a response's `node_endpoints` unless it is
/// listed already. Produce, Fetch and ShareFetch each have their own
/// generated `NodeEndpoint` type with the same fields, hence a macro.
macro_rules! push_node_endpoint {
    ($endpoints:expr, $ty:ty, $hint:expr) => {{
        let hint: &$crate::handlers::LeaderHint = $hint;
        if !$endpoints.iter().any(|e: &$ty| e.node_id.0 == hint.node) {
            $endpoints.push(
                <$ty>::default()
                    .with_node_id(kafka_protocol::messages::BrokerId(hint.node))
                    .with_host($crate::handlers::str_bytes(&hint.host))
                    .with_port(hint.port),
            );
        }
    }};
}
pub(crate) use push_node_endpoint;

/// The long poll of Fetch and ShareFetch: waits until one of the
/// partitions' waiters fires (an append) or the deadline passes. Parks the
/// task; never blocks the shard.
pub async fn wait_for_append(listeners: Vec<event_listener::EventListener>, deadline: Instant) {
    let woken = futures::future::select_all(listeners);
    futures_lite::future::or(
        async {
            woken.await;
        },
        async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        },
    )
    .await;
}
