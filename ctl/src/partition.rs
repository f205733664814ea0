//! `brokerctl partition move`: AlterPartitionReassignments to one node,
//! and with `--wait` ListPartitionReassignments and Metadata polled until
//! that node leads the partition, with progress on stderr.
//!
//! This module asks for moves and watches them; it never moves data
//! itself or retries a refused move.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, ListPartitionReassignmentsRequest,
};
use serde_json::json;

use crate::client::{topic_name, Client, REQUEST_TIMEOUT_MS};
use crate::error::{CtlError, Result};
use crate::output::{id_list, progress, Output, Table};

const POLL: Duration = Duration::from_millis(200);

#[derive(Subcommand, Debug)]
pub enum PartitionCmd {
    /// Move a partition to another node (its only replica).
    Move(MoveArgs),
}

#[derive(Args, Debug)]
pub struct MoveArgs {
    topic: String,
    partition: i32,
    /// The node id that is to hold the partition.
    #[arg(long)]
    to: i32,
    /// Wait until the node leads the partition, showing progress.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
}

pub fn run(client: &mut Client, out: &Output, cmd: PartitionCmd) -> Result<()> {
    match cmd {
        PartitionCmd::Move(args) => move_partition(client, out, args),
    }
}

fn move_partition(client: &mut Client, out: &Output, args: MoveArgs) -> Result<()> {
    let layout = client.topic(&args.topic)?;
    let from = layout.partition(args.partition)?.leader;
    let started = Instant::now();
    request_move(client, &args)?;
    let status = if args.wait {
        wait_for_leader(client, &args)?;
        "moved"
    } else {
        "requested"
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if out.json {
        out.json(&json!({
            "topic": args.topic,
            "partition": args.partition,
            "from": from,
            "to": args.to,
            "status": status,
            "elapsed_ms": elapsed_ms,
        }));
        return Ok(());
    }
    let mut t = Table::new(&["TOPIC", "PARTITION", "FROM", "TO", "STATUS", "ELAPSED"]);
    t.row(vec![
        args.topic,
        args.partition.to_string(),
        from.to_string(),
        args.to.to_string(),
        status.into(),
        format!("{elapsed_ms} ms"),
    ]);
    out.text(&t.render());
    Ok(())
}

fn request_move(client: &mut Client, args: &MoveArgs) -> Result<()> {
    let req = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(REQUEST_TIMEOUT_MS)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(topic_name(&args.topic))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(args.partition)
                .with_replicas(Some(vec![BrokerId(args.to)]))])]);
    let resp = client.call(None, &req)?;
    let what = || format!("move {}-{} to node {}", args.topic, args.partition, args.to);
    CtlError::check(what, resp.error_code, resp.error_message.as_deref())?;
    for t in &resp.responses {
        for p in &t.partitions {
            CtlError::check(what, p.error_code, p.error_message.as_deref())?;
        }
    }
    Ok(())
}

/// What a poll saw: the reassignment still listed (replicas, adding,
/// removing) and the current leader.
#[derive(Debug, PartialEq, Eq)]
struct MoveState {
    ongoing: Option<(Vec<i32>, Vec<i32>, Vec<i32>)>,
    leader: i32,
}

fn poll(client: &mut Client, args: &MoveArgs) -> Result<MoveState> {
    let req = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(REQUEST_TIMEOUT_MS)
        .with_topics(Some(vec![ListPartitionReassignmentsTopics::default()
            .with_name(topic_name(&args.topic))
            .with_partition_indexes(vec![args.partition])]));
    let resp = client.call(None, &req)?;
    CtlError::check(
        || "ListPartitionReassignments".into(),
        resp.error_code,
        resp.error_message.as_deref(),
    )?;
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
    let ongoing = resp
        .topics
        .iter()
        .filter(|t| t.name.0.as_str() == args.topic)
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == args.partition)
        .map(|p| {
            (
                ids(&p.replicas),
                ids(&p.adding_replicas),
                ids(&p.removing_replicas),
            )
        });
    let leader = client.topic(&args.topic)?.partition(args.partition)?.leader;
    Ok(MoveState { ongoing, leader })
}

fn wait_for_leader(client: &mut Client, args: &MoveArgs) -> Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(args.timeout_ms);
    let name = format!("{}-{}", args.topic, args.partition);
    let mut last: Option<MoveState> = None;
    loop {
        let state = poll(client, args)?;
        let ms = started.elapsed().as_millis();
        if state.ongoing.is_none() && state.leader == args.to {
            progress(&format!(
                "[{ms:>6} ms] {name}: node {} leads, move done",
                args.to
            ));
            return Ok(());
        }
        if last.as_ref() != Some(&state) {
            let what = match &state.ongoing {
                Some((replicas, adding, removing)) => format!(
                    "reassignment in progress: replicas {}, adding {}, removing {}",
                    id_list(replicas),
                    id_list(adding),
                    id_list(removing)
                ),
                None => "no reassignment listed".to_string(),
            };
            progress(&format!(
                "[{ms:>6} ms] {name}: leader {}, {what}",
                state.leader
            ));
            last = Some(state);
        }
        if Instant::now() >= deadline {
            return Err(CtlError::Timeout(format!(
                "{name}: node {} does not lead it after {} ms",
                args.to, args.timeout_ms
            )));
        }
        std::thread::sleep(POLL);
    }
}
