//! The admin API's answers, as JSON: built from the metadata image and the
//! shards' reports, so they can be tested without a server. The shapes are
//! those of `docs/admin-api.yaml` (the OpenAPI description); a change here
//! goes there too.
//!
//! Pure: no I/O, never fails; an unknown topic or group is `None` (a 404).

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::config::Config;
use crate::controller::QuorumState;
use crate::metadata::{MetadataImage, NODES_PER_BROKER};
use crate::metrics::report::{GroupReport, PartitionReport, ShardReport};

/// `/ready`: every shard serves (WAL recovered, listener open) and has an
/// image from the metadata log.
pub fn ready(cfg: &Config, reports: &[ShardReport]) -> (bool, Value) {
    let mut waiting = Vec::new();
    for s in 0..cfg.shards {
        match reports.iter().find(|r| r.shard == s) {
            None => waiting.push(format!("shard {s} does not answer")),
            Some(r) if !r.serving => waiting.push(format!("shard {s} is not serving yet")),
            Some(r) if r.wal.as_ref().is_none_or(|w| w.failed) => {
                waiting.push(format!("shard {s} has no working WAL slice"))
            }
            Some(r) if r.metadata_version == 0 => {
                waiting.push(format!("shard {s} has no metadata yet"))
            }
            Some(_) => {}
        }
    }
    let ready = waiting.is_empty();
    (ready, json!({ "ready": ready, "waiting": waiting }))
}

fn quorum_json(q: Option<&QuorumState>) -> Value {
    match q {
        Some(q) => json!({
            "node_id": q.id,
            "leader": q.leader,
            "term": q.term,
            "voters": q.voters,
            "last_log_index": q.last_log_index,
            "last_applied_index": q.last_applied,
        }),
        None => Value::Null,
    }
}

/// `/v1/nodes`: each registered node (one shard of one broker).
pub fn nodes(image: &MetadataImage, reports: &[ShardReport]) -> Value {
    let serving: HashMap<i32, bool> = reports.iter().map(|r| (r.node_id, r.serving)).collect();
    Value::Array(
        image
            .nodes
            .iter()
            .map(|(id, n)| {
                json!({
                    "node_id": id,
                    "broker_id": id / NODES_PER_BROKER,
                    "shard": id % NODES_PER_BROKER,
                    "host": n.host,
                    "port": n.port,
                    "epoch": n.epoch,
                    "fenced": n.fenced,
                    "shutting_down": n.shutting_down,
                    "serving": serving.get(id).copied(),
                })
            })
            .collect(),
    )
}

/// `/v1/cluster`.
pub fn cluster(
    cfg: &Config,
    image: &MetadataImage,
    reports: &[ShardReport],
    quorum: Option<&QuorumState>,
) -> Value {
    json!({
        "cluster_id": cfg.cluster_id,
        "broker_id": cfg.broker_id,
        "shards": cfg.shards,
        "metadata_version": image.version,
        "topics": image.topics.len(),
        "partitions": image.topics.values().map(|t| t.leaders.len()).sum::<usize>(),
        "controller": quorum_json(quorum),
        "nodes": nodes(image, reports),
    })
}

/// `/v1/topics`.
pub fn topics(image: &MetadataImage) -> Value {
    Value::Array(
        image
            .topics
            .values()
            .map(|t| {
                json!({
                    "name": t.name,
                    "id": t.id.to_string(),
                    "partitions": t.leaders.len(),
                    "internal": t.name.starts_with("__"),
                })
            })
            .collect(),
    )
}

fn partition_json(p: &PartitionReport, leader: i32) -> Value {
    json!({
        "partition": p.partition,
        "leader": leader,
        "leader_epoch": p.leader_epoch,
        "state": p.lifecycle,
        "log_start_offset": p.log_start,
        "high_watermark": p.high_watermark,
        "log_end_offset": p.log_end,
        "uploaded_offset": p.uploaded_end,
        "cached_bytes": p.cached_bytes,
        "object_bytes": p.object_bytes,
        "bytes_in": p.io.bytes_in,
        "records_in": p.io.records_in,
        "bytes_out": p.io.bytes_out,
        "records_out": p.io.records_out,
    })
}

/// `/v1/topics/{name}`: its configs and each partition as its leading
/// shard reports it (a partition whose shard did not answer shows its
/// leader only).
pub fn topic(image: &MetadataImage, reports: &[ShardReport], name: &str) -> Option<Value> {
    let t = image.topic(name)?;
    let by_partition: HashMap<i32, (&PartitionReport, i32)> = reports
        .iter()
        .flat_map(|r| r.partitions.iter().map(move |p| (p, r.node_id)))
        .filter(|(p, _)| p.topic_id == t.id)
        .map(|(p, node)| (p.partition, (p, node)))
        .collect();
    let partitions: Vec<Value> = (0..t.leaders.len())
        .map(|i| {
            let index = i as i32;
            let leader = t.leader_nodes.get(i).copied().unwrap_or(-1);
            match by_partition.get(&index) {
                Some((p, node)) => partition_json(p, *node),
                None => json!({
                    "partition": index,
                    "leader": leader,
                    "leader_epoch": t.leader_epochs.get(i).copied().unwrap_or(0),
                    "state": "unknown",
                }),
            }
        })
        .collect();
    Some(json!({
        "name": t.name,
        "id": t.id.to_string(),
        "internal": t.name.starts_with("__"),
        "configs": t.configs,
        "partitions": partitions,
    }))
}

/// `/v1/groups`.
pub fn groups(reports: &[ShardReport]) -> Value {
    let mut out: Vec<Value> = reports
        .iter()
        .flat_map(|r| r.groups.iter().map(|g| group_summary(g, r.node_id)))
        .collect();
    out.sort_by(|a, b| a["group_id"].as_str().cmp(&b["group_id"].as_str()));
    Value::Array(out)
}

/// `/v1/groups/{id}`: with each committed offset's lag behind the high
/// watermark (null when the partition's leader did not report it).
pub fn group(reports: &[ShardReport], id: &str) -> Option<Value> {
    let (coordinator, g) = reports
        .iter()
        .find_map(|r| r.groups.iter().find(|g| g.id == id).map(|g| (r.node_id, g)))?;
    let hw: HashMap<(&str, i32), i64> = reports
        .iter()
        .flat_map(|r| &r.partitions)
        .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
        .collect();
    let mut total = 0i64;
    let offsets: Vec<Value> = g
        .committed
        .iter()
        .map(|(topic, partition, offset)| {
            let end = hw.get(&(topic.as_str(), *partition)).copied();
            let lag = end.map(|e| (e - offset).max(0));
            total += lag.unwrap_or(0);
            json!({
                "topic": topic,
                "partition": partition,
                "committed_offset": offset,
                "high_watermark": end,
                "lag": lag,
            })
        })
        .collect();
    let mut out = group_summary(g, coordinator);
    out["offsets"] = Value::Array(offsets);
    out["total_lag"] = json!(total);
    Some(out)
}

/// What `/v1/groups` shows of a group.
fn group_summary(g: &GroupReport, coordinator: i32) -> Value {
    json!({
        "group_id": g.id,
        "type": g.group_type,
        "state": g.state,
        "protocol_type": g.protocol_type,
        "members": g.members,
        "generation": g.generation,
        "coordinator": coordinator,
    })
}

/// `/debug/latency`: percentiles of every stage of produce, fetch and the
/// WAL append path, all shards together, since the broker started.
pub fn latency(reports: &[ShardReport]) -> Value {
    let mut out = serde_json::Map::new();
    for (api, stage, h) in crate::metrics::report::merged_stages(reports) {
        let s = storage::histogram::StageSummary::of(&h);
        let entry = out
            .entry(api)
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(m) = entry {
            m.insert(
                stage.to_string(),
                json!({
                    "count": s.count,
                    "mean_us": s.mean_us,
                    "p50_us": s.p50_us,
                    "p90_us": s.p90_us,
                    "p99_us": s.p99_us,
                    "p999_us": s.p999_us,
                    "max_us": s.max_us,
                }),
            );
        }
    }
    Value::Object(out)
}
