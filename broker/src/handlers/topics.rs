//! CreateTopics, DeleteTopics and CreatePartitions: check the request on the
//! receiving shard, then submit the changes to shard 0 (through `Control`)
//! and answer once every shard has the new metadata.
//!
//! Runs on any shard. Data durability comes from the WAL and object storage,
//! not replicas, so any replication factor >= 1 is accepted and reported as 1.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
};
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name};
use crate::config::Config;
use crate::metadata::{Command, CommandError};
use crate::shard::Shard;
use crate::topic_config::{self, TOPIC_CONFIGS};

/// DescribeConfigs/CreateTopics config sources.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

type Checked<T> = Result<T, CommandError>;

/// The leader node of each partition of a client's replica assignment (its
/// first replica); they must be live nodes (checked by the controller).
fn leader_nodes(replicas: impl Iterator<Item = Vec<BrokerId>>) -> Checked<Vec<i32>> {
    replicas
        .map(|ids| {
            ids.first().map(|id| id.0).ok_or_else(|| {
                CommandError::new(
                    ResponseError::InvalidReplicaAssignment,
                    "assignment names no node",
                )
            })
        })
        .collect()
}

fn creatable(
    cfg: &Config,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Checked<Command> {
    let rf = t.replication_factor;
    if rf == 0 || rf < -1 {
        return Err(CommandError::new(
            ResponseError::InvalidReplicationFactor,
            format!("replication factor must be -1 or at least 1, got {rf}"),
        ));
    }
    let assignment = if t.assignments.is_empty() {
        None
    } else {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err(CommandError::new(
                ResponseError::InvalidRequest,
                "with a replica assignment, num_partitions and replication_factor must be -1",
            ));
        }
        let mut a: Vec<_> = t.assignments.iter().collect();
        a.sort_by_key(|x| x.partition_index);
        if a.iter()
            .enumerate()
            .any(|(i, x)| x.partition_index != i as i32)
        {
            return Err(CommandError::new(
                ResponseError::InvalidReplicaAssignment,
                "partitions must be numbered 0..n",
            ));
        }
        Some(leader_nodes(a.into_iter().map(|x| x.broker_ids.clone()))?)
    };
    let partitions = match (&assignment, t.num_partitions) {
        (Some(a), _) => a.len() as i32,
        (None, -1) => cfg.num_partitions,
        (None, n) => n,
    };
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        if let Some(v) = &c.value {
            configs.insert(c.name.to_string(), v.to_string());
        }
    }
    Ok(Command::CreateTopic {
        name: t.name.to_string(),
        partitions,
        configs,
        assignment,
    })
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let cfg = shard.config.clone();
    let mut seen = HashSet::new();
    let dups: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.to_string()))
        .map(|t| t.name.to_string())
        .collect();
    let checked: Vec<Checked<Command>> = req
        .topics
        .iter()
        .map(|t| {
            if dups.contains(t.name.as_str()) {
                return Err(CommandError::new(
                    ResponseError::InvalidRequest,
                    "topic named more than once",
                ));
            }
            creatable(&cfg, t)
        })
        .collect();
    let results = shard
        .control()
        .submit_checked(checked, req.validate_only)
        .await;
    let image = shard.image();
    let mut resp = CreateTopicsResponse::default();
    for (t, result) in req.topics.iter().zip(results) {
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        r.num_partitions = -1;
        r.replication_factor = -1;
        match result {
            Ok(id) => {
                let meta = image.topic(&t.name);
                r.topic_id = if req.validate_only {
                    uuid::Uuid::nil()
                } else {
                    id
                };
                r.num_partitions = match (meta, req.validate_only) {
                    (Some(m), false) => m.leaders.len() as i32,
                    _ => creatable(&cfg, t).ok().map_or(-1, |c| match c {
                        Command::CreateTopic { partitions, .. } => partitions,
                        _ => -1,
                    }),
                };
                r.replication_factor = 1;
                if version >= 5 {
                    let set: BTreeMap<String, String> = t
                        .configs
                        .iter()
                        .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                        .collect();
                    r.configs = Some(topic_configs(&cfg, &set, shard.max_batch_bytes()));
                }
            }
            Err(e) => {
                r.error_code = e.code;
                r.error_message = Some(str_bytes(&e.message));
            }
        }
        resp.topics.push(r);
    }
    resp
}

/// The created topic's configs as DescribeConfigs would report them
/// (`max.message.bytes` capped at `max_batch_bytes`, what produce enforces).
fn topic_configs(
    cfg: &Config,
    set: &BTreeMap<String, String>,
    max_batch_bytes: usize,
) -> Vec<CreatableTopicConfigs> {
    TOPIC_CONFIGS
        .iter()
        .map(|k| {
            let mut c = CreatableTopicConfigs::default();
            c.name = str_bytes(k.name);
            c.value = topic_config::effective(set, k.name, cfg)
                .map(|v| match k.name {
                    topic_config::MAX_MESSAGE_BYTES => topic_config::capped(&v, max_batch_bytes),
                    _ => v,
                })
                .map(|v| str_bytes(&v));
            c.config_source = if set.contains_key(k.name) {
                SOURCE_TOPIC
            } else {
                SOURCE_DEFAULT
            };
            c
        })
        .collect()
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let image = shard.image();
    // (name, id) per requested topic; v6+ may name topics by id.
    let wanted: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let resolved: Vec<Checked<String>> = wanted
        .iter()
        .map(|(name, id)| match name {
            Some(n) => Ok(n.clone()),
            None => image
                .topic_by_id(id)
                .map(|t| t.name.clone())
                .ok_or_else(|| {
                    CommandError::new(ResponseError::UnknownTopicId, "no topic with this id")
                }),
        })
        .collect();
    let checked = resolved
        .into_iter()
        .map(|r| r.map(|name| Command::DeleteTopic { name }))
        .collect();
    let results = shard.control().submit_checked(checked, false).await;
    let mut resp = DeleteTopicsResponse::default();
    for ((name, id), result) in wanted.into_iter().zip(results) {
        let mut d = DeletableTopicResult::default();
        d.name = name.as_deref().map(topic_name);
        d.topic_id = id;
        match result {
            Ok(deleted_id) => d.topic_id = deleted_id,
            Err(e) => {
                d.error_code = e.code;
                d.error_message = Some(str_bytes(&e.message));
            }
        }
        resp.responses.push(d);
    }
    resp
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let checked: Vec<Checked<Command>> = req
        .topics
        .iter()
        .map(|t| {
            let assignment = match &t.assignments {
                Some(a) => Some(leader_nodes(a.iter().map(|x| x.broker_ids.clone()))?),
                None => None,
            };
            Ok(Command::CreatePartitions {
                name: t.name.to_string(),
                count: t.count,
                assignment,
            })
        })
        .collect();
    let results = shard
        .control()
        .submit_checked(checked, req.validate_only)
        .await;
    let mut resp = CreatePartitionsResponse::default();
    for (t, result) in req.topics.iter().zip(results) {
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        if let Err(e) = result {
            r.error_code = e.code;
            r.error_message = Some(str_bytes(&e.message));
        }
        resp.results.push(r);
    }
    resp
}
