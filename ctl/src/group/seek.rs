//! `brokerctl group seek`: a target (earliest, latest, a timestamp, an
//! offset) resolved with ListOffsets, then committed with OffsetCommit as an
//! admin does (generation -1, no member id).
//!
//! The coordinator refuses such a commit while the group has members; this
//! module reports that and never tries to get around it.

use std::collections::BTreeMap;

use clap::Args;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::OffsetCommitRequest;
use serde_json::{json, Value};

use super::committed;
use crate::client::{group_id, str_bytes, topic_name, Client, EARLIEST, LATEST};
use crate::error::{error_name, CtlError, Result};
use crate::output::{Output, Table};

#[derive(Args, Debug)]
pub struct SeekArgs {
    group: String,
    #[arg(long)]
    topic: String,
    /// Partitions to move, e.g. `0,1` (default: all).
    #[arg(long, value_delimiter = ',')]
    partitions: Option<Vec<i32>>,
    /// `earliest`, `latest`, `timestamp:MS` (first offset at or after
    /// MS) or `offset:N` (kept within earliest..latest).
    #[arg(long, value_parser = parse_target)]
    to: SeekTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTarget {
    Earliest,
    Latest,
    Timestamp(i64),
    Offset(i64),
}

pub fn parse_target(s: &str) -> std::result::Result<SeekTarget, String> {
    let number = |n: &str| {
        n.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{n:?} is not a non-negative number"))
    };
    match s.split_once(':') {
        None if s == "earliest" => Ok(SeekTarget::Earliest),
        None if s == "latest" => Ok(SeekTarget::Latest),
        Some(("timestamp", ms)) => number(ms).map(SeekTarget::Timestamp),
        Some(("offset", n)) => number(n).map(SeekTarget::Offset),
        _ => Err(format!(
            "expected earliest, latest, timestamp:MS or offset:N, got {s:?}"
        )),
    }
}

/// Where each partition goes: `target` resolved with ListOffsets.
fn resolve(
    client: &mut Client,
    topic: &str,
    partitions: Option<&[i32]>,
    target: SeekTarget,
) -> Result<BTreeMap<i32, i64>> {
    let (_, latest) = client.list_offsets_retrying(topic, partitions, LATEST)?;
    match target {
        SeekTarget::Latest => Ok(latest),
        SeekTarget::Earliest => Ok(client.list_offsets_retrying(topic, partitions, EARLIEST)?.1),
        SeekTarget::Timestamp(ms) => {
            let (_, found) = client.list_offsets_retrying(topic, partitions, ms)?;
            // No record at or after `ms`: the end, as Kafka's reset tool does.
            Ok(found
                .into_iter()
                .map(|(p, o)| {
                    (
                        p,
                        if o < 0 {
                            latest.get(&p).copied().unwrap_or(o)
                        } else {
                            o
                        },
                    )
                })
                .collect())
        }
        SeekTarget::Offset(n) => {
            let (_, earliest) = client.list_offsets_retrying(topic, partitions, EARLIEST)?;
            Ok(latest
                .into_iter()
                .map(|(p, end)| {
                    let start = earliest.get(&p).copied().unwrap_or(0).min(end);
                    (p, n.clamp(start, end))
                })
                .collect())
        }
    }
}

pub(super) fn seek(client: &mut Client, out: &Output, args: SeekArgs) -> Result<()> {
    let targets = resolve(client, &args.topic, args.partitions.as_deref(), args.to)?;
    let node = client.coordinator(&args.group)?;
    let wanted: BTreeMap<String, Vec<i32>> =
        BTreeMap::from([(args.topic.clone(), targets.keys().copied().collect())]);
    let before = committed(client, node, &args.group, Some(&wanted))?;
    let req = OffsetCommitRequest::default()
        .with_group_id(group_id(&args.group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(str_bytes(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(&args.topic))
            .with_partitions(
                targets
                    .iter()
                    .map(|(&p, &o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(o)
                            .with_committed_leader_epoch(-1)
                            .with_committed_metadata(Some(str_bytes("")))
                    })
                    .collect(),
            )]);
    let resp = client.call(Some(node), &req)?;
    for t in &resp.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(CtlError::Failed(format!(
                    "group {} refused the new offset of {}-{}: {}{}",
                    args.group,
                    args.topic,
                    p.partition_index,
                    error_name(p.error_code),
                    refusal_hint(p.error_code)
                )));
            }
        }
    }
    let previous = |p: i32| before.get(&(args.topic.clone(), p)).copied();
    if out.json {
        let list: Vec<Value> = targets
            .iter()
            .map(|(&p, &o)| {
                json!({"group": args.group, "topic": args.topic, "partition": p,
                       "previous_offset": previous(p), "new_offset": o})
            })
            .collect();
        out.json(&Value::Array(list));
        return Ok(());
    }
    let mut t = Table::new(&["TOPIC", "PARTITION", "PREVIOUS-OFFSET", "NEW-OFFSET"]);
    for (&p, &o) in &targets {
        t.row(vec![
            args.topic.clone(),
            p.to_string(),
            previous(p).map_or("-".into(), |o| o.to_string()),
            o.to_string(),
        ]);
    }
    out.text(&t.render());
    Ok(())
}

/// Why a coordinator refuses an admin commit, in words.
fn refusal_hint(code: i16) -> &'static str {
    match code {
        // UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS,
        // STALE_MEMBER_EPOCH: the group has members.
        25 | 22 | 27 | 113 => " (the group is not empty: stop its consumers first)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("earliest"), Ok(SeekTarget::Earliest));
        assert_eq!(parse_target("latest"), Ok(SeekTarget::Latest));
        assert_eq!(
            parse_target("timestamp:1700000000000"),
            Ok(SeekTarget::Timestamp(1_700_000_000_000))
        );
        assert_eq!(parse_target("offset:5"), Ok(SeekTarget::Offset(5)));
        assert!(parse_target("offset:-5").is_err());
        assert!(parse_target("offset:").is_err());
        assert!(parse_target("start").is_err());
    }
}
