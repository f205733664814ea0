//! Metadata and DescribeCluster: every shard is a node; each partition's
//! leader is the shard that owns it. Unknown topics are created on the fly
//! when auto-creation is on and the client allows it.
//!
//! Runs on any shard; reads the shard's metadata image, and goes to shard 0
//! (through `Control`) only to auto-create topics.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
};
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name, AUTH_OPS_OMITTED};
use crate::metadata::NODES_PER_BROKER;
use crate::metadata::{validate_topic_name, Command, MetadataImage, TopicMeta};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let cfg = &shard.config;
    let mut image = shard.image();
    // v0 asks for all topics with an empty list; v1+ with null.
    let wanted: Option<Vec<(Option<String>, uuid::Uuid)>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| (t.name.map(|n| n.to_string()), t.topic_id))
                .collect(),
        ),
    };
    let allow_auto = req.allow_auto_topic_creation || version < 4;
    if let Some(wanted) = &wanted {
        let missing: Vec<String> = wanted
            .iter()
            .filter_map(|(n, _)| n.clone())
            .filter(|n| image.topic(n).is_none() && validate_topic_name(n).is_ok())
            .collect();
        if allow_auto && cfg.auto_create_topics && !missing.is_empty() {
            let cmds = missing
                .into_iter()
                .map(|name| Command::CreateTopic {
                    name,
                    partitions: cfg.num_partitions,
                    configs: BTreeMap::new(),
                    assignment: None,
                })
                .collect();
            shard.control().submit(cmds, false).await;
            image = shard.image();
        }
    }
    // Cut off from the quorum past its serving deadline, this broker
    // answers from an image that may be stale: it does not send clients
    // back to itself for partitions it no longer serves.
    let cut_off = crate::liveness::fenced(image.version).then_some(cfg.broker_id);
    let topics = match wanted {
        None => image
            .topics
            .values()
            .map(|t| topic_response(&image, t, cut_off))
            .collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|(name, id)| requested_topic(&image, name, id, cut_off))
            .collect(),
    };
    let mut resp = MetadataResponse::default();
    resp.brokers = live_nodes(shard, &image)
        .into_iter()
        .map(|(node, host, port, rack)| {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(node);
            b.host = str_bytes(&host);
            b.port = port;
            b.rack = rack.as_deref().map(str_bytes);
            b
        })
        .collect();
    resp.cluster_id = Some(str_bytes(&cfg.cluster_id));
    resp.controller_id = BrokerId(cfg.node_id(0));
    resp.cluster_authorized_operations = AUTH_OPS_OMITTED;
    resp.topics = topics;
    resp
}

fn requested_topic(
    image: &MetadataImage,
    name: Option<String>,
    id: uuid::Uuid,
    cut_off: Option<i32>,
) -> MetadataResponseTopic {
    let found = match &name {
        Some(n) => image.topic(n),
        None => image.topic_by_id(&id),
    };
    if let Some(t) = found {
        return topic_response(image, t, cut_off);
    }
    let mut r = MetadataResponseTopic::default();
    r.name = name.as_deref().map(topic_name);
    r.topic_id = id;
    r.topic_authorized_operations = AUTH_OPS_OMITTED;
    r.error_code = match &name {
        Some(n) if validate_topic_name(n).is_err() => ResponseError::InvalidTopicException.code(),
        Some(_) => ResponseError::UnknownTopicOrPartition.code(),
        None => ResponseError::UnknownTopicId.code(),
    };
    r
}

/// `cut_off`: this broker's id when it may not serve (its own partitions
/// are then shown without a leader).
fn topic_response(
    image: &MetadataImage,
    t: &TopicMeta,
    cut_off: Option<i32>,
) -> MetadataResponseTopic {
    let mut r = MetadataResponseTopic::default();
    r.name = Some(topic_name(&t.name));
    r.topic_id = t.id;
    r.is_internal = is_internal(&t.name);
    r.topic_authorized_operations = AUTH_OPS_OMITTED;
    r.partitions = t
        .leader_nodes
        .iter()
        .enumerate()
        .map(|(p, &leader)| {
            let node = BrokerId(leader);
            let mut mp = MetadataResponsePartition::default();
            mp.partition_index = p as i32;
            mp.leader_epoch = t.leader_epochs.get(p).copied().unwrap_or_default();
            mp.replica_nodes = vec![node];
            let live = image.nodes.is_empty() || image.live_node(leader).is_some();
            if live && cut_off != Some(leader.div_euclid(NODES_PER_BROKER)) {
                mp.leader_id = node;
                mp.isr_nodes = vec![node];
            } else {
                // Its broker is fenced (or is this one, cut off): the data
                // it has not uploaded is in that broker's WAL only, so
                // nobody serves the partition until it is back (clients
                // retry).
                mp.error_code = ResponseError::LeaderNotAvailable.code();
                mp.leader_id = BrokerId(-1);
            }
            mp
        })
        .collect();
    r
}

/// Every live node (each shard of each live broker) as `(id, host, port)`;
/// this broker's own shards before it registered (its first moments).
pub fn live_nodes(shard: &Shard, image: &MetadataImage) -> Vec<(i32, String, i32, Option<String>)> {
    let nodes: Vec<(i32, String, i32, Option<String>)> = image
        .live_nodes()
        .map(|(&id, n)| {
            let rack = image.racks.get(&id.div_euclid(NODES_PER_BROKER)).cloned();
            (id, n.host.clone(), i32::from(n.port), rack)
        })
        .collect();
    if !nodes.is_empty() {
        return nodes;
    }
    let cfg = &shard.config;
    (0..cfg.shards)
        .map(|s| {
            (
                cfg.node_id(s),
                cfg.advertised_host().to_string(),
                i32::from(cfg.port(s)),
                cfg.rack.clone(),
            )
        })
        .collect()
}

/// Kafka's internal topics (`Topic.isInternal`).
pub fn is_internal(name: &str) -> bool {
    name == crate::group::OFFSETS_TOPIC || name == crate::txn::TXN_TOPIC
}

/// DescribeCluster: the live brokers' nodes (v2: the fenced ones too when
/// asked, marked). Every process answers as a broker endpoint: asking one
/// for controllers is MISMATCHED_ENDPOINT_TYPE, as Kafka's brokers answer.
pub fn describe_cluster(
    shard: &Shard,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let cfg = &shard.config;
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_id = str_bytes(&cfg.cluster_id);
    resp.controller_id = BrokerId(cfg.node_id(0));
    resp.cluster_authorized_operations = AUTH_OPS_OMITTED;
    resp.endpoint_type = 1;
    if version >= 1 && req.endpoint_type != 1 {
        let (code, message) = if req.endpoint_type == 2 {
            (
                ResponseError::MismatchedEndpointType,
                "The request was sent to an endpoint of type BROKER, but we wanted an endpoint \
                 of type CONTROLLER",
            )
        } else {
            (
                ResponseError::UnsupportedEndpointType,
                "Unsupported endpoint type",
            )
        };
        resp.error_code = code.code();
        resp.error_message = Some(str_bytes(message));
        return resp;
    }
    let image = shard.image();
    let mut brokers: Vec<DescribeClusterBroker> = live_nodes(shard, &image)
        .into_iter()
        .map(|(node, host, port, rack)| {
            let mut b = DescribeClusterBroker::default();
            b.broker_id = BrokerId(node);
            b.host = str_bytes(&host);
            b.port = port;
            b.rack = rack.as_deref().map(str_bytes);
            b
        })
        .collect();
    if version >= 2 && req.include_fenced_brokers {
        for (&id, n) in image.nodes.iter().filter(|(_, n)| n.fenced) {
            let mut b = DescribeClusterBroker::default();
            b.broker_id = BrokerId(id);
            b.host = str_bytes(&n.host);
            b.port = i32::from(n.port);
            b.rack = image
                .racks
                .get(&id.div_euclid(NODES_PER_BROKER))
                .map(|r| str_bytes(r));
            b.is_fenced = true;
            brokers.push(b);
        }
        brokers.sort_by_key(|b| b.broker_id.0);
    }
    resp.brokers = brokers;
    resp
}
