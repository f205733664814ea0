//! `brokerctl group list|describe|seek`: ListGroups on every node (each
//! lists the groups it coordinates), and the OffsetFetch both `describe`
//! and `seek` read committed offsets with.
//!
//! Group requests go to the group's coordinator (FindCoordinator). This
//! module and its children never join a group: they only look at groups
//! and commit as an admin does.

mod describe;
mod seek;

use std::collections::BTreeMap;

use clap::Subcommand;
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{ListGroupsRequest, OffsetFetchRequest};
use serde_json::{json, Value};

use crate::client::{group_id, topic_name, Client};
use crate::error::{CtlError, Result};
use crate::output::{Output, Table};

pub use seek::SeekArgs;

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Groups on every node: id, state, type and protocol type.
    List,
    /// Members, committed offsets and lag of a group.
    Describe { group: String },
    /// Move a group's committed offsets (the group must have no members).
    Seek(SeekArgs),
}

pub fn run(client: &mut Client, out: &Output, cmd: GroupCmd) -> Result<()> {
    match cmd {
        GroupCmd::List => list(client, out),
        GroupCmd::Describe { group } => describe::describe(client, out, &group),
        GroupCmd::Seek(args) => seek::seek(client, out, args),
    }
}

/// One group as ListGroups shows it.
struct Listed {
    id: String,
    state: String,
    group_type: String,
    protocol_type: String,
    coordinator: i32,
}

fn list_on(client: &mut Client, node: i32) -> Result<Vec<Listed>> {
    let resp = client.call(Some(node), &ListGroupsRequest::default())?;
    CtlError::check(
        || format!("ListGroups on node {node}"),
        resp.error_code,
        None,
    )?;
    Ok(resp
        .groups
        .iter()
        .map(|g| Listed {
            id: g.group_id.0.to_string(),
            state: g.group_state.to_string(),
            group_type: if g.group_type.is_empty() {
                "classic".into()
            } else {
                g.group_type.to_string()
            },
            protocol_type: g.protocol_type.to_string(),
            coordinator: node,
        })
        .collect())
}

fn list(client: &mut Client, out: &Output) -> Result<()> {
    let mut groups = Vec::new();
    for node in client.node_ids() {
        groups.extend(list_on(client, node)?);
    }
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    groups.dedup_by(|a, b| a.id == b.id);
    if out.json {
        let list: Vec<Value> = groups
            .iter()
            .map(|g| {
                json!({"group": g.id, "state": g.state, "type": g.group_type,
                       "protocol_type": g.protocol_type, "coordinator": g.coordinator})
            })
            .collect();
        out.json(&Value::Array(list));
        return Ok(());
    }
    let mut t = Table::new(&["GROUP", "STATE", "TYPE", "PROTOCOL-TYPE", "COORDINATOR"]);
    for g in groups {
        t.row(vec![
            g.id,
            g.state,
            g.group_type,
            g.protocol_type,
            g.coordinator.to_string(),
        ]);
    }
    out.text(&t.render());
    Ok(())
}

/// Committed offsets of `group` (`topics`: only these partitions; `None`:
/// all), keyed by (topic, partition). Partitions without a committed
/// offset are left out.
fn committed(
    client: &mut Client,
    node: i32,
    group: &str,
    topics: Option<&BTreeMap<String, Vec<i32>>>,
) -> Result<BTreeMap<(String, i32), i64>> {
    let version = client.version_on::<OffsetFetchRequest>(Some(node))?;
    let mut req = OffsetFetchRequest::default();
    if version >= 8 {
        let topics = topics.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopics::default()
                        .with_name(topic_name(t))
                        .with_partition_indexes(ps.clone())
                })
                .collect()
        });
        req.groups = vec![OffsetFetchRequestGroup::default()
            .with_group_id(group_id(group))
            .with_topics(topics)];
    } else {
        req.group_id = group_id(group);
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(topic_name(t))
                        .with_partition_indexes(ps.clone())
                })
                .collect()
        });
    }
    let resp = client.call(Some(node), &req)?;
    let what = || format!("committed offsets of group {group}");
    let mut out = BTreeMap::new();
    if version >= 8 {
        for g in &resp.groups {
            CtlError::check(what, g.error_code, None)?;
            for t in &g.topics {
                for p in &t.partitions {
                    CtlError::check(what, p.error_code, None)?;
                    if p.committed_offset >= 0 {
                        out.insert(
                            (t.name.0.to_string(), p.partition_index),
                            p.committed_offset,
                        );
                    }
                }
            }
        }
    } else {
        CtlError::check(what, resp.error_code, None)?;
        for t in &resp.topics {
            for p in &t.partitions {
                CtlError::check(what, p.error_code, None)?;
                if p.committed_offset >= 0 {
                    out.insert(
                        (t.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
    }
    Ok(out)
}
