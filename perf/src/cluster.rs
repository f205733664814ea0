//! What the client knows of the cluster: brokers (nodes), topic layouts and
//! partition leaders, learned from Metadata; topic creation; offset lookup.
//!
//! Admin requests share one connection per node here; producers and
//! fetchers open their own connections so their traffic is not mixed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Mutex;

use crate::connection::Connection;
use crate::error::{PerfError, Result};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// Partition count and leader node of each partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub name: String,
    /// Leader node id of partition `i` at index `i`.
    pub leaders: Vec<i32>,
}

impl TopicLayout {
    pub fn partitions(&self) -> usize {
        self.leaders.len()
    }

    /// Partitions grouped by leader, in node order.
    pub fn by_leader(&self, partitions: &[i32]) -> BTreeMap<i32, Vec<i32>> {
        let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            if let Some(&leader) = self.leaders.get(p as usize) {
                out.entry(leader).or_default().push(p);
            }
        }
        out
    }
}

/// Where offsets start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// The cluster as seen through the bootstrap server.
pub struct Cluster {
    bootstrap: String,
    nodes: HashMap<i32, String>,
    controller: i32,
    admin: Mutex<HashMap<String, Arc<Connection>>>,
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

impl Cluster {
    /// Connects to the bootstrap server and reads the node list.
    pub async fn discover(bootstrap: &str) -> Result<Cluster> {
        let mut cluster = Cluster {
            bootstrap: bootstrap.to_string(),
            nodes: HashMap::new(),
            controller: -1,
            admin: Mutex::new(HashMap::new()),
        };
        let meta = cluster.metadata(None).await?;
        cluster.controller = meta.controller_id.0;
        cluster.nodes = meta
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        if cluster.nodes.is_empty() {
            return Err(PerfError::Protocol {
                addr: bootstrap.to_string(),
                reason: "Metadata lists no brokers".into(),
            });
        }
        Ok(cluster)
    }

    /// The address of a node, as Metadata advertised it.
    pub fn node_addr(&self, node: i32) -> Option<&str> {
        self.nodes.get(&node).map(String::as_str)
    }

    async fn admin_conn(&self, addr: &str) -> Result<Arc<Connection>> {
        let mut conns = self.admin.lock().await;
        if let Some(c) = conns.get(addr).filter(|c| c.failed().is_none()) {
            return Ok(c.clone());
        }
        let c = Connection::open(addr).await?;
        conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn metadata(&self, topic: Option<&str>) -> Result<MetadataResponse> {
        let conn = self.admin_conn(&self.bootstrap).await?;
        let topics =
            topic.map(|t| vec![MetadataRequestTopic::default().with_name(Some(topic_name(t)))]);
        let req = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(false);
        conn.call(&req, ADMIN_TIMEOUT).await
    }

    /// The layout of `topic`; `MissingTopic` if the broker does not know it.
    pub async fn topic(&self, topic: &str) -> Result<TopicLayout> {
        let meta = self.metadata(Some(topic)).await?;
        let t = meta
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
            .ok_or_else(|| PerfError::MissingTopic(topic.to_string()))?;
        if t.error_code == UNKNOWN_TOPIC_OR_PARTITION {
            return Err(PerfError::MissingTopic(topic.to_string()));
        }
        if let Some(e) = PerfError::from_code("Metadata", t.error_code, None) {
            return Err(e);
        }
        let mut leaders = vec![-1; t.partitions.len()];
        for p in &t.partitions {
            let slot =
                leaders
                    .get_mut(p.partition_index as usize)
                    .ok_or_else(|| PerfError::Protocol {
                        addr: self.bootstrap.clone(),
                        reason: format!(
                            "partition {} of {} partitions",
                            p.partition_index,
                            t.partitions.len()
                        ),
                    })?;
            *slot = p.leader_id.0;
        }
        for (i, &leader) in leaders.iter().enumerate() {
            if leader < 0 || !self.nodes.contains_key(&leader) {
                return Err(PerfError::NoLeader {
                    topic: topic.to_string(),
                    partition: i as i32,
                });
            }
        }
        Ok(TopicLayout {
            name: topic.to_string(),
            leaders,
        })
    }

    /// The layout of `topic`, creating it with `partitions` partitions if
    /// it does not exist, and waiting until every partition has a leader.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<TopicLayout> {
        match self.topic(topic).await {
            Ok(layout) => {
                if layout.partitions() != partitions as usize {
                    eprintln!(
                        "perf: topic '{topic}' exists with {} partitions (asked for {partitions}); using it as it is",
                        layout.partitions()
                    );
                }
                return Ok(layout);
            }
            Err(PerfError::MissingTopic(_)) => {}
            Err(e) => return Err(e),
        }
        self.create_topic(topic, partitions, replication_factor)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.topic(topic).await {
                Ok(layout) if layout.partitions() == partitions as usize => return Ok(layout),
                Ok(_) | Err(PerfError::MissingTopic(_)) | Err(PerfError::NoLeader { .. })
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(layout) => return Ok(layout),
                Err(e) => return Err(e),
            }
        }
    }

    async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<()> {
        let addr = self
            .node_addr(self.controller)
            .unwrap_or(&self.bootstrap)
            .to_string();
        let conn = self.admin_conn(&addr).await?;
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)])
            .with_timeout_ms(ADMIN_TIMEOUT.as_millis() as i32);
        let resp = conn.call(&req, ADMIN_TIMEOUT).await?;
        for t in &resp.topics {
            if t.error_code == TOPIC_ALREADY_EXISTS {
                continue;
            }
            let msg = t.error_message.as_ref().map(|m| m.as_str());
            if let Some(e) = PerfError::from_code("CreateTopics", t.error_code, msg) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The earliest or latest offset of each partition in `partitions`.
    pub async fn offsets(
        &self,
        layout: &TopicLayout,
        partitions: &[i32],
        from: StartFrom,
    ) -> Result<HashMap<i32, i64>> {
        let timestamp = match from {
            StartFrom::Earliest => -2,
            StartFrom::Latest => -1,
        };
        let mut out = HashMap::new();
        for (leader, parts) in layout.by_leader(partitions) {
            let addr = self.node_addr(leader).ok_or_else(|| PerfError::NoLeader {
                topic: layout.name.clone(),
                partition: parts[0],
            })?;
            let conn = self.admin_conn(addr).await?;
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
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
            // A topic just created may not have its leaders in place yet
            // (Apache Kafka propagates them after CreateTopics answers):
            // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE and
            // UNKNOWN_TOPIC_OR_PARTITION are retried for a while.
            const SETTLING: [i16; 3] = [3, 5, 6];
            let mut attempt = 0;
            let resp = loop {
                let resp = conn.call(&req, ADMIN_TIMEOUT).await?;
                let settling = resp
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .any(|p| SETTLING.contains(&p.error_code));
                if !settling || attempt >= 100 {
                    break resp;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            for p in resp.topics.iter().flat_map(|t| &t.partitions) {
                if let Some(e) = PerfError::from_code("ListOffsets", p.error_code, None) {
                    return Err(e);
                }
                out.insert(p.partition_index, p.offset);
            }
        }
        for p in partitions {
            if !out.contains_key(p) {
                return Err(PerfError::Protocol {
                    addr: self.bootstrap.clone(),
                    reason: format!("ListOffsets gave no offset for partition {p}"),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_group_by_leader() {
        let layout = TopicLayout {
            name: "t".into(),
            leaders: vec![0, 1, 0, 1, 0],
        };
        let g = layout.by_leader(&[0, 1, 2, 3, 4, 9]);
        assert_eq!(g[&0], vec![0, 2, 4]);
        assert_eq!(g[&1], vec![1, 3]);
        assert_eq!(g.len(), 2);
    }
}
