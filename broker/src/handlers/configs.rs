//! DescribeConfigs for topics, brokers and groups: every config of the
//! resource with its value, its source and its type, not only the ones set
//! explicitly. IncrementalAlterConfigs for topics and groups, and the legacy
//! AlterConfigs (which replaces a topic's whole set of configs): committed
//! through the controller.
//!
//! Runs on any shard; reads the metadata image and the broker config, and
//! goes to shard 0 (through `Control`) only to change topic configs.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    alter_configs_request, alter_configs_response, AlterConfigsRequest, AlterConfigsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::ResponseError;

use super::str_bytes;
use super::topics::{SOURCE_DEFAULT, SOURCE_STATIC_BROKER, SOURCE_TOPIC};
use crate::config::Config;
use crate::metadata::{Command, CommandError};
use crate::shard::Shard;
use crate::topic_config::{self, ConfigType, MAX_MESSAGE_BYTES, TOPIC_CONFIGS};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Dynamic group configs (`crate::group_config`).
const RESOURCE_GROUP: i8 = 32;
/// DescribeConfigs' source of a config set on the group.
const SOURCE_GROUP: i8 = 8;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// Turns one resource of an IncrementalAlterConfigs request into a command
/// (`None`: nothing to change). Broker configs are static: there are no
/// dynamic ones to set, so deleting them (as `kafka-reassign-partitions
/// --verify` does with replication throttles) changes nothing and succeeds,
/// and setting one is refused.
fn alter_command(
    res: &kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource,
) -> Result<Option<Command>, CommandError> {
    if res.resource_type == RESOURCE_BROKER
        && res.configs.iter().all(|c| c.config_operation == OP_DELETE)
    {
        return Ok(None);
    }
    if res.resource_type != RESOURCE_TOPIC && res.resource_type != RESOURCE_GROUP {
        return Err(CommandError::new(
            ResponseError::InvalidRequest,
            format!(
                "only topic and group configs can be altered (resource type {}); broker configs are static",
                res.resource_type
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut changes = Vec::with_capacity(res.configs.len());
    for c in &res.configs {
        if !seen.insert(c.name.as_str()) {
            return Err(CommandError::new(
                ResponseError::InvalidRequest,
                format!("config {} named more than once", c.name.as_str()),
            ));
        }
        let value = match (c.config_operation, &c.value) {
            (OP_SET, Some(v)) => Some(v.to_string()),
            (OP_DELETE, _) => None,
            (OP_SET, None) => {
                return Err(CommandError::new(
                    ResponseError::InvalidRequest,
                    format!("SET of {} without a value", c.name.as_str()),
                ))
            }
            (op, _) => {
                return Err(CommandError::new(
                    ResponseError::InvalidRequest,
                    format!("config operation {op} is not supported (only SET and DELETE)"),
                ))
            }
        };
        changes.push((c.name.to_string(), value));
    }
    if res.resource_type == RESOURCE_GROUP {
        if res.resource_name.is_empty() {
            return Err(CommandError::new(
                ResponseError::InvalidRequest,
                "a group config needs a group id",
            ));
        }
        return Ok(Some(Command::AlterGroupConfigs {
            group: res.resource_name.to_string(),
            changes,
        }));
    }
    Ok(Some(Command::AlterTopicConfigs {
        name: res.resource_name.to_string(),
        changes,
    }))
}

/// One resource of a legacy AlterConfigs request as a command (`None`:
/// nothing to change), checked as Kafka checks it: each name once, every
/// value given. An empty set on a broker changes nothing (its configs are
/// static); a topic's configs are replaced.
fn replace_command(
    res: &alter_configs_request::AlterConfigsResource,
) -> Result<Option<Command>, CommandError> {
    if res.resource_type == RESOURCE_BROKER && res.configs.is_empty() {
        return Ok(None);
    }
    if res.resource_type != RESOURCE_TOPIC {
        return Err(CommandError::new(
            ResponseError::InvalidRequest,
            format!(
                "only topic configs can be altered (resource type {}); broker configs are static",
                res.resource_type
            ),
        ));
    }
    let mut configs: Vec<(String, String)> = Vec::with_capacity(res.configs.len());
    for c in &res.configs {
        if configs.iter().any(|(k, _)| k == c.name.as_str()) {
            return Err(CommandError::new(
                ResponseError::InvalidRequest,
                format!("Error due to duplicate config keys: {}", c.name.as_str()),
            ));
        }
        let Some(v) = &c.value else {
            return Err(CommandError::new(
                ResponseError::InvalidRequest,
                format!(
                    "Null value not supported for topic configs: {}",
                    c.name.as_str()
                ),
            ));
        };
        configs.push((c.name.to_string(), v.to_string()));
    }
    Ok(Some(Command::ReplaceTopicConfigs {
        name: res.resource_name.to_string(),
        configs,
    }))
}

/// Submits the planned commands (those that are `Ok(Some)`) in one batch
/// and gives each resource its result, in order.
async fn submit_planned(
    shard: &std::rc::Rc<Shard>,
    planned: Vec<Result<Option<Command>, CommandError>>,
    validate_only: bool,
) -> Vec<Result<(), CommandError>> {
    let checked = planned
        .iter()
        .filter_map(|p| p.clone().transpose())
        .collect();
    let mut submitted = shard
        .control()
        .submit_checked(checked, validate_only)
        .await
        .into_iter();
    planned
        .into_iter()
        .map(|p| match p {
            Ok(None) => Ok(()),
            _ => submitted.next().map_or(Ok(()), |r| r.map(|_| ())),
        })
        .collect()
}

pub async fn alter_configs(
    shard: &std::rc::Rc<Shard>,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let planned = req.resources.iter().map(replace_command).collect();
    let results = submit_planned(shard, planned, req.validate_only).await;
    let mut resp = AlterConfigsResponse::default();
    for (res, result) in req.resources.iter().zip(results) {
        let (code, message) = error_fields(result);
        resp.responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    resp
}

/// A resource's error code and message (none on success).
fn error_fields(
    result: Result<(), CommandError>,
) -> (i16, Option<kafka_protocol::protocol::StrBytes>) {
    match result {
        Ok(()) => (0, None),
        Err(e) => (e.code, Some(str_bytes(&e.message))),
    }
}

pub async fn incremental_alter_configs(
    shard: &std::rc::Rc<Shard>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let planned = req.resources.iter().map(alter_command).collect();
    let results = submit_planned(shard, planned, req.validate_only).await;
    let mut resp = IncrementalAlterConfigsResponse::default();
    for (res, result) in req.resources.iter().zip(results) {
        let (code, message) = error_fields(result);
        resp.responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    resp
}

struct Entry {
    name: String,
    value: String,
    source: i8,
    kind: ConfigType,
    /// Broker configs cannot be changed at run time here (no dynamic
    /// broker configs), so Kafka's clients see them as read-only.
    read_only: bool,
}

pub fn describe_configs(shard: &Shard, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut resp = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        let entries = match res.resource_type {
            RESOURCE_TOPIC => topic_entries(shard, &res.resource_name),
            RESOURCE_BROKER => {
                broker_entries(&shard.config, shard.max_batch_bytes(), &res.resource_name)
            }
            RESOURCE_GROUP => Ok(group_entries(shard, &res.resource_name)),
            other => Err((
                ResponseError::InvalidRequest,
                format!("resource type {other} is not supported"),
            )),
        };
        match entries {
            Ok(entries) => {
                out.configs = entries
                    .into_iter()
                    .filter(|e| {
                        res.configuration_keys
                            .as_ref()
                            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name))
                    })
                    .map(|e| entry(e, req.include_synonyms))
                    .collect();
            }
            Err((err, msg)) => {
                out.error_code = err.code();
                out.error_message = Some(str_bytes(&msg));
            }
        }
        resp.results.push(out);
    }
    resp
}

fn entry(e: Entry, synonyms: bool) -> DescribeConfigsResourceResult {
    let mut r = DescribeConfigsResourceResult::default();
    r.name = str_bytes(&e.name);
    r.value = Some(str_bytes(&e.value));
    r.config_source = e.source;
    r.config_type = e.kind as i8;
    r.read_only = e.read_only;
    if synonyms {
        let mut s = DescribeConfigsSynonym::default();
        s.name = r.name.clone();
        s.value = r.value.clone();
        s.source = e.source;
        r.synonyms = vec![s];
    }
    r
}

/// Every group config with its effective value: the group's own, else the
/// broker's.
fn group_entries(shard: &Shard, group: &str) -> Vec<Entry> {
    let image = shard.image();
    let set = crate::group_config::set_for(&image, group);
    crate::group_config::GROUP_CONFIGS
        .iter()
        .map(|&(name, kind)| {
            let own = set.and_then(|s| s.get(name));
            Entry {
                name: name.to_string(),
                value: own
                    .cloned()
                    .unwrap_or_else(|| crate::group_config::default_value(name, &shard.config)),
                source: if own.is_some() {
                    SOURCE_GROUP
                } else {
                    SOURCE_DEFAULT
                },
                kind,
                read_only: false,
            }
        })
        .collect()
}

fn topic_entries(shard: &Shard, name: &str) -> Result<Vec<Entry>, (ResponseError, String)> {
    let image = shard.image();
    let Some(topic) = image.topic(name) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        ));
    };
    let cfg = &shard.config;
    let broker_default = Config::default().message_max_bytes;
    let cap = shard.max_batch_bytes();
    Ok(TOPIC_CONFIGS
        .iter()
        .map(|k| {
            let source = if topic.configs.contains_key(k.name) {
                SOURCE_TOPIC
            } else if k.name == MAX_MESSAGE_BYTES && cfg.message_max_bytes != broker_default {
                SOURCE_STATIC_BROKER
            } else {
                SOURCE_DEFAULT
            };
            let mut value =
                topic_config::effective(&topic.configs, k.name, cfg).unwrap_or_default();
            if k.name == MAX_MESSAGE_BYTES {
                // What produce enforces: no larger than the WAL can hold.
                value = topic_config::capped(&value, cap);
            }
            Entry {
                name: k.name.to_string(),
                value,
                source,
                kind: k.kind,
                read_only: false,
            }
        })
        .collect())
}

fn broker_entries(
    cfg: &Config,
    max_batch_bytes: usize,
    name: &str,
) -> Result<Vec<Entry>, (ResponseError, String)> {
    let ours = name.is_empty()
        || name
            .parse::<i32>()
            .ok()
            .and_then(|id| cfg.shard_of_node(id))
            .is_some();
    if !ours {
        return Err((
            ResponseError::InvalidRequest,
            format!("broker {name} is not a node of this broker"),
        ));
    }
    let d = Config::default();
    let src = |same: bool| {
        if same {
            SOURCE_DEFAULT
        } else {
            SOURCE_STATIC_BROKER
        }
    };
    let listeners = (0..cfg.shards)
        .map(|s| format!("PLAINTEXT://{}:{}", cfg.listen_host, cfg.port(s)))
        .collect::<Vec<_>>()
        .join(",");
    let advertised = (0..cfg.shards)
        .map(|s| format!("PLAINTEXT://{}:{}", cfg.advertised_host(), cfg.port(s)))
        .collect::<Vec<_>>()
        .join(",");
    let e = |name: &str, value: String, source: i8, kind: ConfigType| Entry {
        name: name.to_string(),
        value,
        source,
        kind,
        read_only: true,
    };
    Ok(vec![
        e(
            "broker.id",
            cfg.broker_id.to_string(),
            SOURCE_STATIC_BROKER,
            ConfigType::Int,
        ),
        e(
            "num.partitions",
            cfg.num_partitions.to_string(),
            src(cfg.num_partitions == d.num_partitions),
            ConfigType::Int,
        ),
        e(
            "auto.create.topics.enable",
            cfg.auto_create_topics.to_string(),
            src(cfg.auto_create_topics == d.auto_create_topics),
            ConfigType::Boolean,
        ),
        e(
            "message.max.bytes",
            cfg.message_max_bytes.min(max_batch_bytes).to_string(),
            src(cfg.message_max_bytes == d.message_max_bytes),
            ConfigType::Int,
        ),
        e(
            "socket.request.max.bytes",
            cfg.max_frame_bytes.to_string(),
            src(cfg.max_frame_bytes == d.max_frame_bytes),
            ConfigType::Int,
        ),
        e(
            "max.connections",
            cfg.max_connections.to_string(),
            src(cfg.max_connections == d.max_connections),
            ConfigType::Int,
        ),
        e(
            "max.connections.per.ip",
            cfg.max_connections_per_ip.to_string(),
            src(cfg.max_connections_per_ip == d.max_connections_per_ip),
            ConfigType::Int,
        ),
        e(
            "connections.max.idle.ms",
            cfg.connections_max_idle_ms.to_string(),
            src(cfg.connections_max_idle_ms == d.connections_max_idle_ms),
            ConfigType::Long,
        ),
        e(
            "log.dirs",
            cfg.data_dir.display().to_string(),
            src(cfg.data_dir == d.data_dir),
            ConfigType::String,
        ),
        e(
            "listeners",
            listeners,
            SOURCE_STATIC_BROKER,
            ConfigType::List,
        ),
        e(
            "advertised.listeners",
            advertised,
            SOURCE_STATIC_BROKER,
            ConfigType::List,
        ),
        e(
            "default.replication.factor",
            "1".into(),
            SOURCE_DEFAULT,
            ConfigType::Int,
        ),
        e(
            "min.insync.replicas",
            "1".into(),
            SOURCE_DEFAULT,
            ConfigType::Int,
        ),
        e(
            "log.retention.ms",
            cfg.log_retention_ms.to_string(),
            src(cfg.log_retention_ms == d.log_retention_ms),
            ConfigType::Long,
        ),
        e(
            "log.retention.bytes",
            cfg.log_retention_bytes.to_string(),
            src(cfg.log_retention_bytes == d.log_retention_bytes),
            ConfigType::Long,
        ),
        e(
            "compression.type",
            "producer".into(),
            SOURCE_DEFAULT,
            ConfigType::String,
        ),
        e(
            "log.message.timestamp.type",
            "CreateTime".into(),
            SOURCE_DEFAULT,
            ConfigType::String,
        ),
    ])
}
