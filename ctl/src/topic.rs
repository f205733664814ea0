//! `brokerctl topic create|list|describe|alter-config|delete`: CreateTopics,
//! Metadata, ListOffsets, DescribeConfigs, IncrementalAlterConfigs and
//! DeleteTopics.
//!
//! Topic admin requests go to the bootstrap node (any node serves them);
//! ListOffsets goes to each partition's leader. This module never writes
//! records or touches groups.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
};
use serde_json::{json, Value};

use crate::client::{str_bytes, topic_name, Client, EARLIEST, LATEST, REQUEST_TIMEOUT_MS};
use crate::error::{error_name, CtlError, Result};
use crate::output::{id_list, key_values, Output, Table};

const RESOURCE_TOPIC: i8 = 2;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
/// DescribeConfigs sources (Kafka's ConfigSource ids).
const SOURCE_DEFAULT: i8 = 5;

#[derive(Subcommand, Debug)]
pub enum TopicCmd {
    /// Create a topic.
    Create(CreateArgs),
    /// List topics with their partition and replica counts.
    List {
        /// Include internal topics (__consumer_offsets, ...).
        #[arg(short = 'i', long)]
        internal: bool,
    },
    /// Partitions (leader, epoch, earliest and latest offsets) and the
    /// configs set on a topic.
    Describe { name: String },
    /// Set or remove topic configs (IncrementalAlterConfigs).
    AlterConfig(AlterConfigArgs),
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    name: String,
    /// Partition count (default: the broker's num.partitions).
    #[arg(short = 'p', long)]
    partitions: Option<i32>,
    /// Replication factor (default: the broker's).
    #[arg(short = 'r', long)]
    replicas: Option<i16>,
    /// A topic config, `key=value`; repeat for more.
    #[arg(short = 'c', long = "config", value_parser = parse_key_value)]
    configs: Vec<(String, String)>,
}

#[derive(Args, Debug)]
pub struct AlterConfigArgs {
    name: String,
    /// Set a config, `key=value`; repeat for more.
    #[arg(long = "set", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// Remove a config (back to its default); repeat for more.
    #[arg(long = "delete")]
    delete: Vec<String>,
}

/// `key=value` from the command line.
pub fn parse_key_value(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

pub fn run(client: &mut Client, out: &Output, cmd: TopicCmd) -> Result<()> {
    match cmd {
        TopicCmd::Create(args) => create(client, out, args),
        TopicCmd::List { internal } => list(client, out, internal),
        TopicCmd::Describe { name } => describe(client, out, &name),
        TopicCmd::AlterConfig(args) => alter_config(client, out, args),
        TopicCmd::Delete { names } => delete(client, out, &names),
    }
}

fn create(client: &mut Client, out: &Output, args: CreateArgs) -> Result<()> {
    let configs = args
        .configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(str_bytes(k))
                .with_value(Some(str_bytes(v)))
        })
        .collect();
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(REQUEST_TIMEOUT_MS)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(&args.name))
            .with_num_partitions(args.partitions.unwrap_or(-1))
            .with_replication_factor(args.replicas.unwrap_or(-1))
            .with_configs(configs)]);
    let resp = client.call(None, &req)?;
    let r = resp
        .topics
        .first()
        .ok_or_else(|| CtlError::Failed("CreateTopics: empty answer".into()))?;
    CtlError::check(
        || format!("create topic {}", args.name),
        r.error_code,
        r.error_message.as_deref(),
    )?;
    // Wait until every partition has a leader, so that a produce right
    // after `create` finds one.
    let layout = wait_for_leaders(client, &args.name)?;
    let replicas = layout.partitions.first().map_or(0, |p| p.replicas.len());
    if out.json {
        out.json(&json!({
            "topic": args.name,
            "topic_id": layout.id.to_string(),
            "partitions": layout.partitions.len(),
            "replicas": replicas,
            "status": "OK",
        }));
    } else {
        let mut t = Table::new(&["TOPIC", "PARTITIONS", "REPLICAS", "STATUS"]);
        t.row(vec![
            args.name,
            layout.partitions.len().to_string(),
            replicas.to_string(),
            "OK".into(),
        ]);
        out.text(&t.render());
    }
    Ok(())
}

fn wait_for_leaders(client: &mut Client, topic: &str) -> Result<crate::client::TopicLayout> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.topic(topic) {
            Ok(l) if !l.partitions.is_empty() && l.partitions.iter().all(|p| p.leader >= 0) => {
                return Ok(l)
            }
            Ok(_) | Err(CtlError::Kafka { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(l) => return Ok(l),
            Err(e) => return Err(e),
        }
    }
}

fn list(client: &mut Client, out: &Output, internal: bool) -> Result<()> {
    let meta = client.metadata(None)?;
    let mut topics: Vec<(String, usize, usize, bool)> = meta
        .topics
        .iter()
        .filter(|t| internal || !t.is_internal)
        .map(|t| {
            let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            let replicas = t.partitions.first().map_or(0, |p| p.replica_nodes.len());
            (name, t.partitions.len(), replicas, t.is_internal)
        })
        .collect();
    topics.sort();
    if out.json {
        let list: Vec<Value> = topics
            .iter()
            .map(|(name, partitions, replicas, internal)| {
                json!({"name": name, "partitions": partitions, "replicas": replicas,
                       "internal": internal})
            })
            .collect();
        out.json(&Value::Array(list));
        return Ok(());
    }
    let mut t = Table::new(&["NAME", "PARTITIONS", "REPLICAS"]);
    for (name, partitions, replicas, _) in topics {
        t.row(vec![name, partitions.to_string(), replicas.to_string()]);
    }
    out.text(&t.render());
    Ok(())
}

/// A topic config and where its value comes from.
struct ConfigEntry {
    name: String,
    value: Option<String>,
    source: i8,
}

fn source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

/// The configs of `topic` not at their default.
fn non_default_configs(client: &mut Client, topic: &str) -> Result<Vec<ConfigEntry>> {
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(str_bytes(topic))
            .with_configuration_keys(None)]);
    let resp = client.call(None, &req)?;
    let r = resp
        .results
        .first()
        .ok_or_else(|| CtlError::Failed("DescribeConfigs: empty answer".into()))?;
    CtlError::check(
        || format!("configs of topic {topic}"),
        r.error_code,
        r.error_message.as_deref(),
    )?;
    let mut entries: Vec<ConfigEntry> = r
        .configs
        .iter()
        .filter(|c| c.config_source != SOURCE_DEFAULT)
        .map(|c| ConfigEntry {
            name: c.name.to_string(),
            value: if c.is_sensitive {
                None
            } else {
                c.value.as_ref().map(|v| v.to_string())
            },
            source: c.config_source,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn describe(client: &mut Client, out: &Output, topic: &str) -> Result<()> {
    let (layout, earliest) = client.list_offsets_retrying(topic, None, EARLIEST)?;
    let (_, latest) = client.list_offsets_retrying(topic, None, LATEST)?;
    let configs = non_default_configs(client, topic)?;
    let replicas = layout.partitions.first().map_or(0, |p| p.replicas.len());
    let offset = |m: &std::collections::BTreeMap<i32, i64>, p: i32| m.get(&p).copied();
    if out.json {
        let partitions: Vec<Value> = layout
            .partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.index,
                    "leader": p.leader,
                    "leader_epoch": p.leader_epoch,
                    "replicas": p.replicas,
                    "earliest_offset": offset(&earliest, p.index),
                    "latest_offset": offset(&latest, p.index),
                    "error": (p.error_code != 0).then(|| error_name(p.error_code)),
                })
            })
            .collect();
        let configs: Value = configs
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    json!({"value": c.value, "source": source_name(c.source)}),
                )
            })
            .collect::<serde_json::Map<String, Value>>()
            .into();
        out.json(&json!({
            "name": layout.name,
            "topic_id": layout.id.to_string(),
            "internal": layout.internal,
            "partitions": partitions,
            "replicas": replicas,
            "configs": configs,
        }));
        return Ok(());
    }
    let mut text = key_values(&[
        ("NAME", layout.name.clone()),
        ("TOPIC ID", layout.id.to_string()),
        ("INTERNAL", layout.internal.to_string()),
        ("PARTITIONS", layout.partitions.len().to_string()),
        ("REPLICAS", replicas.to_string()),
    ]);
    text.push_str("\nCONFIGS (not default)\n");
    let mut t = Table::new(&["KEY", "VALUE", "SOURCE"]);
    for c in &configs {
        let value = c.value.clone().unwrap_or_else(|| "(sensitive)".into());
        t.row(vec![c.name.clone(), value, source_name(c.source).into()]);
    }
    text.push_str(&t.render());
    text.push_str("\nPARTITIONS\n");
    let mut t = Table::new(&[
        "PARTITION",
        "LEADER",
        "EPOCH",
        "REPLICAS",
        "EARLIEST",
        "LATEST",
    ]);
    let show = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
    for p in &layout.partitions {
        t.row(vec![
            p.index.to_string(),
            p.leader.to_string(),
            p.leader_epoch.to_string(),
            id_list(&p.replicas),
            show(offset(&earliest, p.index)),
            show(offset(&latest, p.index)),
        ]);
    }
    text.push_str(&t.render());
    out.text(&text);
    Ok(())
}

fn alter_config(client: &mut Client, out: &Output, args: AlterConfigArgs) -> Result<()> {
    if args.set.is_empty() && args.delete.is_empty() {
        return Err(CtlError::Usage(
            "nothing to change: give --set key=value or --delete key".into(),
        ));
    }
    let mut configs: Vec<AlterableConfig> = args
        .set
        .iter()
        .map(|(k, v)| {
            AlterableConfig::default()
                .with_name(str_bytes(k))
                .with_config_operation(OP_SET)
                .with_value(Some(str_bytes(v)))
        })
        .collect();
    configs.extend(args.delete.iter().map(|k| {
        AlterableConfig::default()
            .with_name(str_bytes(k))
            .with_config_operation(OP_DELETE)
            .with_value(None)
    }));
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(str_bytes(&args.name))
            .with_configs(configs),
    ]);
    let resp = client.call(None, &req)?;
    let r = resp
        .responses
        .first()
        .ok_or_else(|| CtlError::Failed("IncrementalAlterConfigs: empty answer".into()))?;
    CtlError::check(
        || format!("alter configs of topic {}", args.name),
        r.error_code,
        r.error_message.as_deref(),
    )?;
    if out.json {
        let set: serde_json::Map<String, Value> = args
            .set
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out.json(
            &json!({"topic": args.name, "set": set, "deleted": args.delete,
                         "status": "OK"}),
        );
        return Ok(());
    }
    let mut t = Table::new(&["KEY", "OPERATION", "VALUE"]);
    for (k, v) in &args.set {
        t.row(vec![k.clone(), "SET".into(), v.clone()]);
    }
    for k in &args.delete {
        t.row(vec![k.clone(), "DELETE".into(), "-".into()]);
    }
    out.text(&t.render());
    Ok(())
}

fn delete(client: &mut Client, out: &Output, names: &[String]) -> Result<()> {
    let version = client.version_on::<DeleteTopicsRequest>(None)?;
    let mut req = DeleteTopicsRequest::default().with_timeout_ms(REQUEST_TIMEOUT_MS);
    if version >= 6 {
        req.topics = names
            .iter()
            .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
            .collect();
    } else {
        req.topic_names = names.iter().map(|n| topic_name(n)).collect();
    }
    let resp = client.call(None, &req)?;
    let mut results: Vec<(String, i16, Option<String>)> = resp
        .responses
        .iter()
        .map(|r| {
            let name = r.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            let message = r.error_message.as_ref().map(|m| m.to_string());
            (name, r.error_code, message)
        })
        .collect();
    results.sort();
    let failed = results.iter().filter(|r| r.1 != 0).count();
    if out.json {
        let list: Vec<Value> = results
            .iter()
            .map(|(name, code, message)| {
                let error = (*code != 0).then(|| error_name(*code));
                json!({"topic": name, "status": if *code == 0 { "OK" } else { "FAILED" },
                       "error": error, "message": message})
            })
            .collect();
        out.json(&Value::Array(list));
    } else {
        let mut t = Table::new(&["TOPIC", "STATUS"]);
        for (name, code, message) in &results {
            let status = match (code, message) {
                (0, _) => "OK".to_string(),
                (c, Some(m)) if !m.is_empty() => format!("{}: {m}", error_name(*c)),
                (c, _) => error_name(*c),
            };
            t.row(vec![name.clone(), status]);
        }
        out.text(&t.render());
    }
    if failed > 0 {
        return Err(CtlError::Failed(format!(
            "{failed} of {} topics not deleted",
            results.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_parse() {
        assert_eq!(
            parse_key_value("retention.ms=1000"),
            Ok(("retention.ms".into(), "1000".into()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
