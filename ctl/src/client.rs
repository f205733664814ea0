//! The cluster as the CLI sees it: bootstrap, the node list from Metadata,
//! one connection per node, and where each request must go (a partition's
//! leader, a group's coordinator, any node).
//!
//! Each shard of the broker is its own node id with its own port, so
//! routing matters even on one machine. This module never formats output
//! and never decides what a command means.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, GroupId, ListOffsetsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};

use crate::connection::Connection;
use crate::error::{is_retriable, CtlError, Result};

/// ListOffsets timestamps with a special meaning.
pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;
const FIND_COORDINATOR_GROUP: i8 = 0;
/// How long requests that wait on the broker may take there.
pub const REQUEST_TIMEOUT_MS: i32 = 30_000;

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

pub fn group_id(s: &str) -> GroupId {
    GroupId(str_bytes(s))
}

/// One partition as Metadata describes it.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub index: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub error_code: i16,
}

/// One topic as Metadata describes it, partitions in index order.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    pub name: String,
    pub id: uuid::Uuid,
    pub internal: bool,
    pub partitions: Vec<PartitionInfo>,
}

impl TopicLayout {
    pub fn partition(&self, index: i32) -> Result<&PartitionInfo> {
        self.partitions
            .iter()
            .find(|p| p.index == index)
            .ok_or_else(|| {
                CtlError::Usage(format!(
                    "topic {} has no partition {index} ({} partitions)",
                    self.name,
                    self.partitions.len()
                ))
            })
    }

    pub fn indexes(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.index).collect()
    }

    /// `partitions` grouped by their leader node.
    pub fn by_leader(&self, partitions: &[i32]) -> Result<BTreeMap<i32, Vec<i32>>> {
        let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            let info = self.partition(p)?;
            if info.leader < 0 {
                return Err(CtlError::Failed(format!("{}-{p} has no leader", self.name)));
            }
            out.entry(info.leader).or_default().push(p);
        }
        Ok(out)
    }
}

/// The cluster reached through the bootstrap servers.
pub struct Client {
    bootstrap: Vec<String>,
    /// The bootstrap address that answered.
    home: String,
    nodes: BTreeMap<i32, String>,
    conns: HashMap<String, Connection>,
}

impl Client {
    /// Connects to the first bootstrap server that answers and reads the
    /// node list.
    pub fn connect(brokers: &str) -> Result<Client> {
        let bootstrap: Vec<String> = brokers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if bootstrap.is_empty() {
            return Err(CtlError::Usage("--brokers names no server".into()));
        }
        let mut client = Client {
            bootstrap,
            home: String::new(),
            nodes: BTreeMap::new(),
            conns: HashMap::new(),
        };
        let mut last = None;
        for addr in client.bootstrap.clone() {
            match Connection::open(&addr) {
                Ok(c) => {
                    client.conns.insert(addr.clone(), c);
                    client.home = addr;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if client.home.is_empty() {
            return Err(last.unwrap_or_else(|| CtlError::Usage("no bootstrap server".into())));
        }
        client.metadata(Some(&[]))?;
        Ok(client)
    }

    /// Node ids in the cluster, in order.
    pub fn node_ids(&self) -> Vec<i32> {
        self.nodes.keys().copied().collect()
    }

    fn conn_to(&mut self, addr: &str) -> Result<&mut Connection> {
        if !self.conns.contains_key(addr) {
            let c = Connection::open(addr)?;
            self.conns.insert(addr.to_string(), c);
        }
        self.conns
            .get_mut(addr)
            .ok_or_else(|| CtlError::Failed(format!("no connection to {addr}")))
    }

    fn addr_of(&self, node: i32) -> Result<String> {
        self.nodes
            .get(&node)
            .cloned()
            .ok_or_else(|| CtlError::Failed(format!("node {node} is not in the cluster metadata")))
    }

    /// The version `R` is sent at to `node` (`None`: the bootstrap server).
    pub fn version_on<R: Request>(&mut self, node: Option<i32>) -> Result<i16> {
        let addr = match node {
            Some(n) => self.addr_of(n)?,
            None => self.home.clone(),
        };
        self.conn_to(&addr)?.version::<R>()
    }

    /// Sends `req` to `node` (`None`: the bootstrap server). A connection
    /// that failed is dropped, so the next call reconnects.
    pub fn call<R: Request>(&mut self, node: Option<i32>, req: &R) -> Result<R::Response> {
        let addr = match node {
            Some(n) => self.addr_of(n)?,
            None => self.home.clone(),
        };
        let result = self.conn_to(&addr)?.call(req);
        if matches!(result, Err(CtlError::Io { .. } | CtlError::Protocol { .. })) {
            self.conns.remove(&addr);
        }
        result
    }

    /// Metadata for `topics` (`None`: every topic; `Some(&[])`: none, only
    /// the nodes). Refreshes the node list.
    pub fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        let topics = topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                .collect()
        });
        let req = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(false);
        let resp = self.call(None, &req)?;
        CtlError::check(|| "Metadata".into(), resp.error_code, None)?;
        self.nodes = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        Ok(resp)
    }

    /// The layout of `topic`, or its Metadata error (UNKNOWN_TOPIC_OR_PARTITION).
    pub fn topic(&mut self, topic: &str) -> Result<TopicLayout> {
        let meta = self.metadata(Some(&[topic]))?;
        let t = meta
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
            .ok_or_else(|| CtlError::Kafka {
                what: format!("topic {topic}"),
                code: 3,
                message: None,
            })?;
        CtlError::check(|| format!("topic {topic}"), t.error_code, None)?;
        let mut partitions: Vec<PartitionInfo> = t
            .partitions
            .iter()
            .map(|p| PartitionInfo {
                index: p.partition_index,
                leader: p.leader_id.0,
                leader_epoch: p.leader_epoch,
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                error_code: p.error_code,
            })
            .collect();
        partitions.sort_by_key(|p| p.index);
        Ok(TopicLayout {
            name: topic.to_string(),
            id: t.topic_id,
            internal: t.is_internal,
            partitions,
        })
    }

    /// The node that coordinates `group`.
    pub fn coordinator(&mut self, group: &str) -> Result<i32> {
        let version = self.version_on::<FindCoordinatorRequest>(None)?;
        let mut req = FindCoordinatorRequest::default();
        if version >= 4 {
            req.coordinator_keys = vec![str_bytes(group)];
        } else {
            req.key = str_bytes(group);
        }
        if version >= 1 {
            req.key_type = FIND_COORDINATOR_GROUP;
        }
        let resp = self.call(None, &req)?;
        let what = || format!("coordinator of group {group}");
        let node = if version >= 4 {
            let c = resp
                .coordinators
                .first()
                .ok_or_else(|| CtlError::Failed(format!("{}: empty answer", what())))?;
            CtlError::check(what, c.error_code, c.error_message.as_deref())?;
            c.node_id.0
        } else {
            CtlError::check(what, resp.error_code, resp.error_message.as_deref())?;
            resp.node_id.0
        };
        if !self.nodes.contains_key(&node) {
            self.metadata(Some(&[]))?;
        }
        Ok(node)
    }

    /// Offsets of `partitions` of `layout` at `timestamp` (EARLIEST,
    /// LATEST, or milliseconds: the first offset at or after it, -1 if
    /// none), asking each partition's leader.
    pub fn list_offsets(
        &mut self,
        layout: &TopicLayout,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>> {
        let mut out = BTreeMap::new();
        for (leader, parts) in layout.by_leader(partitions)? {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_timeout_ms(REQUEST_TIMEOUT_MS)
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(&layout.name))
                    .with_partitions(
                        parts
                            .iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )]);
            let resp = self.call(Some(leader), &req)?;
            for t in &resp.topics {
                for p in &t.partitions {
                    CtlError::check(
                        || format!("ListOffsets {}-{}", layout.name, p.partition_index),
                        p.error_code,
                        None,
                    )?;
                    out.insert(p.partition_index, p.offset);
                }
            }
        }
        Ok(out)
    }

    /// As `list_offsets`, re-reading Metadata and retrying (a few times)
    /// when a leader moved.
    pub fn list_offsets_retrying(
        &mut self,
        topic: &str,
        partitions: Option<&[i32]>,
        timestamp: i64,
    ) -> Result<(TopicLayout, BTreeMap<i32, i64>)> {
        let mut attempt = 0;
        loop {
            let layout = self.topic(topic)?;
            let parts = partitions.map(<[i32]>::to_vec).unwrap_or(layout.indexes());
            match self.list_offsets(&layout, &parts, timestamp) {
                Ok(offsets) => return Ok((layout, offsets)),
                Err(e) if attempt < 5 && e.code().is_some_and(is_retriable) => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
