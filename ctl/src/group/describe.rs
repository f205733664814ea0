//! `brokerctl group describe`: DescribeGroups for classic groups,
//! ConsumerGroupDescribe for KIP-848 (`consumer`) groups, the committed
//! offsets, and lag against each partition's end (ListOffsets).
//!
//! Read-only: this module never commits or changes a group.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Buf;
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, DescribeGroupsRequest,
};
use kafka_protocol::protocol::Decodable;
use serde_json::{json, Value};

use super::{committed, list_on};
use crate::client::{group_id, Client, LATEST};
use crate::error::{CtlError, Result};
use crate::output::{key_values, Output, Table};

struct Member {
    id: String,
    client_id: String,
    host: String,
    /// topic -> partitions assigned to this member.
    assignment: BTreeMap<String, Vec<i32>>,
}

struct GroupDescription {
    state: String,
    group_type: String,
    protocol: String,
    members: Vec<Member>,
}

/// A classic consumer's assignment: ConsumerProtocolAssignment behind its
/// version. Anything else (another protocol type) shows as no assignment.
fn decode_assignment(mut bytes: bytes::Bytes) -> BTreeMap<String, Vec<i32>> {
    let mut out = BTreeMap::new();
    if bytes.remaining() < 2 {
        return out;
    }
    let version = bytes.get_i16().clamp(0, 3);
    if let Ok(a) = ConsumerProtocolAssignment::decode(&mut bytes, version) {
        for tp in a.assigned_partitions {
            out.insert(tp.topic.0.to_string(), tp.partitions);
        }
    }
    out
}

fn describe_classic(client: &mut Client, node: i32, group: &str) -> Result<GroupDescription> {
    let req = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let resp = client.call(Some(node), &req)?;
    let g = resp
        .groups
        .first()
        .ok_or_else(|| CtlError::Failed("DescribeGroups: empty answer".into()))?;
    CtlError::check(
        || format!("describe group {group}"),
        g.error_code,
        g.error_message.as_deref(),
    )?;
    let consumer = g.protocol_type.as_str() == "consumer";
    Ok(GroupDescription {
        state: g.group_state.to_string(),
        group_type: "classic".into(),
        protocol: g.protocol_data.to_string(),
        members: g
            .members
            .iter()
            .map(|m| Member {
                id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assignment: if consumer {
                    decode_assignment(m.member_assignment.clone())
                } else {
                    BTreeMap::new()
                },
            })
            .collect(),
    })
}

fn describe_consumer(client: &mut Client, node: i32, group: &str) -> Result<GroupDescription> {
    let req = ConsumerGroupDescribeRequest::default().with_group_ids(vec![group_id(group)]);
    let resp = client.call(Some(node), &req)?;
    let g = resp
        .groups
        .first()
        .ok_or_else(|| CtlError::Failed("ConsumerGroupDescribe: empty answer".into()))?;
    CtlError::check(
        || format!("describe group {group}"),
        g.error_code,
        g.error_message.as_deref(),
    )?;
    Ok(GroupDescription {
        state: g.group_state.to_string(),
        group_type: "consumer".into(),
        protocol: g.assignor_name.to_string(),
        members: g
            .members
            .iter()
            .map(|m| Member {
                id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assignment: m
                    .assignment
                    .topic_partitions
                    .iter()
                    .map(|tp| (tp.topic_name.0.to_string(), tp.partitions.clone()))
                    .collect(),
            })
            .collect(),
    })
}

/// One row of `group describe`: a partition the group has an offset for
/// or a member is assigned.
struct Lag {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    latest: Option<i64>,
    member: Option<usize>,
}

impl Lag {
    fn lag(&self) -> Option<i64> {
        match (self.committed, self.latest) {
            (Some(c), Some(l)) => Some((l - c).max(0)),
            _ => None,
        }
    }
}

pub(super) fn describe(client: &mut Client, out: &Output, group: &str) -> Result<()> {
    let node = client.coordinator(group)?;
    let listed = list_on(client, node)?.into_iter().find(|g| g.id == group);
    let is_consumer = listed.as_ref().is_some_and(|g| g.group_type == "consumer");
    let desc = if is_consumer
        && client
            .version_on::<ConsumerGroupDescribeRequest>(Some(node))
            .is_ok()
    {
        describe_consumer(client, node, group)?
    } else {
        describe_classic(client, node, group)?
    };
    let offsets = committed(client, node, group, None)?;

    let mut owner: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for (i, m) in desc.members.iter().enumerate() {
        for (t, ps) in &m.assignment {
            for &p in ps {
                owner.insert((t.clone(), p), i);
            }
        }
    }
    let keys: BTreeSet<(String, i32)> = offsets.keys().chain(owner.keys()).cloned().collect();
    let topics: BTreeSet<String> = keys.iter().map(|(t, _)| t.clone()).collect();
    let mut latest: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for t in &topics {
        // A topic deleted since the commit has no end offset to compare.
        if let Ok((_, ends)) = client.list_offsets_retrying(t, None, LATEST) {
            latest.extend(ends.into_iter().map(|(p, o)| ((t.clone(), p), o)));
        }
    }
    let rows: Vec<Lag> = keys
        .into_iter()
        .map(|k| Lag {
            committed: offsets.get(&k).copied(),
            latest: latest.get(&k).copied(),
            member: owner.get(&k).copied(),
            topic: k.0,
            partition: k.1,
        })
        .collect();
    let total_lag: i64 = rows.iter().filter_map(Lag::lag).sum();
    if out.json {
        print_describe_json(out, group, node, &desc, &rows, total_lag);
    } else {
        print_describe_text(out, group, node, &desc, &rows, total_lag);
    }
    Ok(())
}

fn print_describe_json(
    out: &Output,
    group: &str,
    node: i32,
    desc: &GroupDescription,
    rows: &[Lag],
    total_lag: i64,
) {
    let members: Vec<Value> = desc
        .members
        .iter()
        .map(|m| {
            let assignment: Vec<Value> = m
                .assignment
                .iter()
                .map(|(t, ps)| json!({"topic": t, "partitions": ps}))
                .collect();
            json!({"member_id": m.id, "client_id": m.client_id, "host": m.host,
                   "assignment": assignment})
        })
        .collect();
    let partitions: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "topic": r.topic,
                "partition": r.partition,
                "committed_offset": r.committed,
                "latest_offset": r.latest,
                "lag": r.lag(),
                "member_id": r.member.map(|i| desc.members[i].id.clone()),
            })
        })
        .collect();
    out.json(&json!({
        "group": group,
        "coordinator": node,
        "state": desc.state,
        "type": desc.group_type,
        "protocol": desc.protocol,
        "members": members,
        "partitions": partitions,
        "total_lag": total_lag,
    }));
}

fn print_describe_text(
    out: &Output,
    group: &str,
    node: i32,
    desc: &GroupDescription,
    rows: &[Lag],
    total_lag: i64,
) {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut text = key_values(&[
        ("GROUP", group.to_string()),
        ("COORDINATOR", node.to_string()),
        ("STATE", desc.state.clone()),
        ("TYPE", desc.group_type.clone()),
        ("PROTOCOL", dash(&desc.protocol)),
        ("MEMBERS", desc.members.len().to_string()),
        ("TOTAL-LAG", total_lag.to_string()),
    ]);
    text.push('\n');
    let mut t = Table::new(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "MEMBER-ID",
        "CLIENT-ID",
        "HOST",
    ]);
    let show = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
    for r in rows {
        let m = r.member.map(|i| &desc.members[i]);
        t.row(vec![
            r.topic.clone(),
            r.partition.to_string(),
            show(r.committed),
            show(r.latest),
            show(r.lag()),
            m.map_or("-".into(), |m| m.id.clone()),
            m.map_or("-".into(), |m| dash(&m.client_id)),
            m.map_or("-".into(), |m| dash(&m.host)),
        ]);
    }
    text.push_str(&t.render());
    out.text(&text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    use crate::client::topic_name;

    #[test]
    fn classic_assignments_decode() {
        let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(topic_name("t"))
                .with_partitions(vec![0, 2]),
        ]);
        let mut buf = bytes::BytesMut::new();
        buf.put_i16(3);
        a.encode(&mut buf, 3).unwrap();
        let got = decode_assignment(buf.freeze());
        assert_eq!(got, BTreeMap::from([("t".to_string(), vec![0, 2])]));
        assert!(decode_assignment(bytes::Bytes::from_static(&[0])).is_empty());
        assert!(decode_assignment(bytes::Bytes::from_static(&[0, 1, 255])).is_empty());
    }

    #[test]
    fn lag_is_end_minus_committed() {
        let row = |c, l| Lag {
            topic: "t".into(),
            partition: 0,
            committed: c,
            latest: l,
            member: None,
        };
        assert_eq!(row(Some(3), Some(10)).lag(), Some(7));
        assert_eq!(row(None, Some(10)).lag(), None);
        assert_eq!(row(Some(12), Some(10)).lag(), Some(0));
    }
}
