//! The metadata image: topics, their ids, partitions, the shard leading each
//! partition and its leader epoch, topic configs, registered nodes, the
//! producer-id blocks handed to nodes, objects, and each partition's
//! producer state as of its uploaded end; the commands that change it, and how a command turns
//! into metadata records (`plan`) and records into a new image (`apply`).
//!
//! The controller thread plans and applies; every shard reads an immutable
//! `Arc<MetadataImage>` it received over the channel mesh. Pure logic: no
//! I/O, no await, no randomness in `apply` (replaying the log must rebuild
//! the same image; topic ids are drawn in `plan` and carried by records).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use crate::controller::records::{
    AbortedTxn, ObjectRange, ProducerSnapshot, QuotaValue, Record, ScramCredential,
};
use crate::quota::{self, ClientQuotas};
use crate::topic_config;

pub mod epochs;
pub mod objects;
pub mod producers;

use epochs::EpochHistory;
use objects::{ObjectMeta, ObjectsImage};
use producers::ProducersImage;

/// One topic as every shard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    /// `leaders[p]` is the shard that leads partition `p` (the shard part of
    /// `leader_nodes[p]`).
    pub leaders: Vec<usize>,
    /// `leader_nodes[p]` is the node id (`broker_id * 1000 + shard`) leading `p`.
    pub leader_nodes: Vec<i32>,
    /// `leader_epochs[p]` rises each time partition `p` changes leader.
    pub leader_epochs: Vec<i32>,
    pub configs: BTreeMap<String, String>,
}

/// A registered node (one shard of one broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    pub epoch: i64,
    pub host: String,
    pub port: u16,
    pub fenced: bool,
    /// Its broker is shutting down (controlled shutdown): it serves until
    /// it exits, but no partition is placed or moved onto it.
    pub shutting_down: bool,
}

/// An immutable snapshot of the cluster's metadata.
#[derive(Debug, Clone, Default)]
pub struct MetadataImage {
    /// Index of the last metadata log entry applied (0: nothing yet).
    pub version: u64,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    pub ids: HashMap<Uuid, String>,
    pub nodes: BTreeMap<i32, NodeMeta>,
    /// Each broker's rack, when it has one.
    pub racks: BTreeMap<i32, String>,
    /// The first producer id not yet handed to any node.
    pub next_producer_id: i64,
    /// The latest block of producer ids handed to each node:
    /// `(first, count)`. Not kept in snapshots: a restarted node asks for a
    /// new block, so no id is ever handed out twice.
    pub producer_id_blocks: BTreeMap<i32, (i64, i64)>,
    /// Committed objects and the partition ranges they hold.
    pub objects: ObjectsImage,
    /// Each partition's producer state as of its uploaded end.
    pub producers: ProducersImage,
    /// Client quotas (AlterClientQuotas), per entity.
    pub quotas: ClientQuotas,
    /// SCRAM credentials (AlterUserScramCredentials): user -> mechanism ->
    /// credential. Kept as Kafka keeps them; this broker speaks no SASL.
    pub scram: BTreeMap<String, BTreeMap<i8, ScramCredential>>,
    /// The first offset of each leader epoch after 0, per partition that
    /// has changed leader (`epochs.rs`).
    pub epoch_starts: imbl::OrdMap<(Uuid, i32), EpochHistory>,
    /// Dynamic group configs (IncrementalAlterConfigs on GROUP resources),
    /// by group id; checked by `crate::group_config`.
    pub group_configs: BTreeMap<String, BTreeMap<String, String>>,
}

/// Nodes per broker: `node_id = broker_id * NODES_PER_BROKER + shard`.
pub const NODES_PER_BROKER: i32 = 1000;

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicMeta>> {
        self.ids.get(id).and_then(|n| self.topics.get(n))
    }

    /// Applies one committed record. Records that name a topic the image
    /// does not have are skipped with a warning (they cannot be produced by
    /// `plan`, so they mean a bug or a newer writer).
    pub fn apply(&mut self, rec: &Record) {
        match rec {
            Record::TopicCreated { id, name, configs } => {
                if let Some(old) = self.topics.get(name) {
                    warn!(topic = %name, old = %old.id, new = %id, "topic created twice: replacing");
                    let old_id = old.id;
                    self.ids.remove(&old_id);
                }
                let meta = TopicMeta {
                    name: name.clone(),
                    id: *id,
                    leaders: Vec::new(),
                    leader_nodes: Vec::new(),
                    leader_epochs: Vec::new(),
                    configs: configs.clone(),
                };
                self.ids.insert(*id, name.clone());
                self.topics.insert(name.clone(), Arc::new(meta));
            }
            Record::TopicDeleted { id } => {
                if let Some(name) = self.ids.remove(id) {
                    self.topics.remove(&name);
                }
                self.objects.drop_topic(*id);
                self.producers.drop_topic(*id);
                let gone: Vec<_> = self
                    .epoch_starts
                    .range((*id, i32::MIN)..=(*id, i32::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for k in gone {
                    self.epoch_starts.remove(&k);
                }
            }
            Record::PartitionsAdded {
                topic_id,
                first,
                leaders,
            } => self.update_topic(topic_id, rec, |t| {
                if *first as usize != t.leaders.len() {
                    warn!(topic = %t.name, first, have = t.leaders.len(), "partitions added out of order");
                    return;
                }
                for &node in leaders {
                    t.leaders.push(shard_of(node));
                    t.leader_nodes.push(node);
                    t.leader_epochs.push(0);
                }
            }),
            Record::PartitionLeaderChanged {
                topic_id,
                partition,
                leader,
                leader_epoch,
            } => {
                // The new leader's log starts where the objects end (a
                // partition moves only once its data is all there).
                let start = self
                    .objects
                    .partition(*topic_id, *partition)
                    .and_then(|o| o.end())
                    .unwrap_or(0);
                let mut known = false;
                self.update_topic(topic_id, rec, |t| {
                    let Some(p) = usize::try_from(*partition)
                        .ok()
                        .filter(|&p| p < t.leaders.len())
                    else {
                        warn!(topic = %t.name, partition, "leader change for an unknown partition");
                        return;
                    };
                    t.leaders[p] = shard_of(*leader);
                    t.leader_nodes[p] = *leader;
                    t.leader_epochs[p] = *leader_epoch;
                    known = true;
                });
                if known {
                    self.epoch_starts
                        .entry((*topic_id, *partition))
                        .or_default()
                        .started(*leader_epoch, start);
                }
            }
            Record::LeaderEpochStarts {
                topic_id,
                partition,
                starts,
            } => {
                if self.has_partition(*topic_id, *partition) {
                    self.epoch_starts.insert(
                        (*topic_id, *partition),
                        EpochHistory::from_entries(starts.clone()),
                    );
                }
            }
            Record::TopicConfigChanged {
                topic_id,
                name,
                value,
            } => self.update_topic(topic_id, rec, |t| match value {
                Some(v) => {
                    t.configs.insert(name.clone(), v.clone());
                }
                None => {
                    t.configs.remove(name);
                }
            }),
            Record::NodeRegistered {
                node_id,
                epoch,
                host,
                port,
            } => {
                self.nodes.insert(
                    *node_id,
                    NodeMeta {
                        epoch: *epoch,
                        host: host.clone(),
                        port: *port,
                        fenced: false,
                        shutting_down: false,
                    },
                );
            }
            Record::BrokerRack { broker_id, rack } => {
                if rack.is_empty() {
                    self.racks.remove(broker_id);
                } else {
                    self.racks.insert(*broker_id, rack.clone());
                }
            }
            Record::NodeUnregistered { node_id } => {
                self.nodes.remove(node_id);
                let broker = node_id.div_euclid(NODES_PER_BROKER);
                if !self
                    .nodes
                    .keys()
                    .any(|id| id.div_euclid(NODES_PER_BROKER) == broker)
                {
                    self.racks.remove(&broker);
                }
            }
            Record::NodeFenced { node_id, epoch } => {
                if let Some(n) = self.nodes.get_mut(node_id) {
                    if n.epoch == *epoch {
                        n.fenced = true;
                    }
                }
            }
            Record::NodeShuttingDown { node_id, epoch } => {
                if let Some(n) = self.nodes.get_mut(node_id) {
                    if n.epoch == *epoch {
                        n.shutting_down = true;
                    }
                }
            }
            Record::ProducerIdsAllocated {
                node_id,
                first,
                count,
            } => {
                self.next_producer_id = self.next_producer_id.max(first.saturating_add(*count));
                if *node_id >= 0 {
                    self.producer_id_blocks.insert(*node_id, (*first, *count));
                }
            }
            Record::PartitionProducers {
                topic_id,
                partition,
                end_offset,
                expire_before,
                producers,
                aborted,
            } => {
                if !self.has_partition(*topic_id, *partition) {
                    warn!(%rec, "producer state of an unknown partition: skipped");
                    return;
                }
                let log_start = self
                    .objects
                    .partition(*topic_id, *partition)
                    .and_then(|o| o.start())
                    .unwrap_or(0);
                self.producers.apply(
                    *topic_id,
                    *partition,
                    *end_offset,
                    *expire_before,
                    producers,
                    aborted,
                    log_start,
                );
            }
            Record::ObjectIdsReserved {
                node_id,
                first,
                count,
            } => self.objects.apply_reserved(*node_id, *first, *count),
            Record::ObjectCommitted {
                object_id,
                node_id,
                size,
                ranges,
            } => self.objects.apply_committed(ObjectMeta {
                id: *object_id,
                node_id: *node_id,
                size: *size,
                ranges: ranges.clone(),
            }),
            Record::LogStartAdvanced {
                topic_id,
                partition,
                offset,
            } => self
                .objects
                .apply_log_start(*topic_id, *partition, *offset),
            Record::UploadedEnd {
                topic_id,
                partition,
                offset,
            } => self
                .objects
                .apply_uploaded_end(*topic_id, *partition, *offset),
            Record::PartitionCleaned {
                topic_id,
                partition,
                offset,
            } => self.objects.apply_cleaned(*topic_id, *partition, *offset),
            Record::ObjectsDestroyed { ids, at_ms } => self.objects.apply_destroyed(ids, *at_ms),
            Record::ObjectsPurged { ids } => self.objects.apply_purged(ids),
            Record::ClientQuotaChanged { entity, key, value } => {
                self.quotas.apply(entity, key, value.map(|v| v.0))
            }
            Record::GroupConfigChanged { group, name, value } => match value {
                Some(v) => {
                    self.group_configs
                        .entry(group.clone())
                        .or_default()
                        .insert(name.clone(), v.clone());
                }
                None => {
                    if let Some(c) = self.group_configs.get_mut(group) {
                        c.remove(name);
                        if c.is_empty() {
                            self.group_configs.remove(group);
                        }
                    }
                }
            },
            Record::ScramCredentialChanged {
                user,
                mechanism,
                credential,
            } => match credential {
                Some(c) => {
                    self.scram
                        .entry(user.clone())
                        .or_default()
                        .insert(*mechanism, c.clone());
                }
                None => {
                    if let Some(m) = self.scram.get_mut(user) {
                        m.remove(mechanism);
                        if m.is_empty() {
                            self.scram.remove(user);
                        }
                    }
                }
            },
            Record::StreamObjectCommitted {
                object_id,
                node_id,
                size,
                range,
                replaces,
            } => self.objects.apply_stream_object(
                ObjectMeta {
                    id: *object_id,
                    node_id: *node_id,
                    size: *size,
                    ranges: vec![*range],
                },
                replaces,
            ),
        }
    }

    /// Whether the image has this partition.
    pub fn has_partition(&self, topic: Uuid, partition: i32) -> bool {
        self.topic_by_id(&topic)
            .is_some_and(|t| (0..t.leader_nodes.len() as i32).contains(&partition))
    }

    /// The node leading a partition.
    /// A registered node that is not fenced.
    pub fn live_node(&self, node_id: i32) -> Option<&NodeMeta> {
        self.nodes.get(&node_id).filter(|n| !n.fenced)
    }

    /// Every registered node that is not fenced, by id.
    pub fn live_nodes(&self) -> impl Iterator<Item = (&i32, &NodeMeta)> {
        self.nodes.iter().filter(|(_, n)| !n.fenced)
    }

    /// Live nodes that partitions may be placed or moved onto: not of a
    /// broker that is shutting down.
    pub fn placement_nodes(&self) -> impl Iterator<Item = (&i32, &NodeMeta)> {
        self.live_nodes().filter(|(_, n)| !n.shutting_down)
    }

    pub fn leader_of(&self, topic: Uuid, partition: i32) -> Option<i32> {
        let t = self.topic_by_id(&topic)?;
        t.leader_nodes
            .get(usize::try_from(partition).ok()?)
            .copied()
    }

    fn update_topic(&mut self, id: &Uuid, rec: &Record, f: impl FnOnce(&mut TopicMeta)) {
        let Some(meta) = self.ids.get(id).and_then(|n| self.topics.get_mut(n)) else {
            warn!(%rec, "metadata record for an unknown topic id: skipped");
            return;
        };
        f(Arc::make_mut(meta));
    }

    /// The image a snapshot's records describe. A partition's epoch
    /// history comes from its LeaderEpochStarts record alone: replayed
    /// before the objects, its leader change cannot say where its epoch
    /// started, and a snapshot written before histories were kept has none
    /// (the history is then unknown: `epoch_end`).
    pub fn from_snapshot(records: &[Record]) -> MetadataImage {
        let mut image = MetadataImage::default();
        let mut kept = std::collections::HashSet::new();
        for r in records {
            image.apply(r);
            if let Record::LeaderEpochStarts {
                topic_id,
                partition,
                ..
            } = r
            {
                kept.insert((*topic_id, *partition));
            }
        }
        let guessed: Vec<(Uuid, i32)> = image
            .epoch_starts
            .keys()
            .filter(|k| !kept.contains(k))
            .copied()
            .collect();
        for k in guessed {
            image.epoch_starts.remove(&k);
        }
        image
    }

    /// Kafka's OffsetForLeaderEpoch answer for `requested`: `(epoch, end
    /// offset)`, where `current` is the partition's leader epoch and
    /// `log_end` its log end. A partition past epoch 0 whose history is
    /// unknown (metadata from before histories were kept) answers every
    /// epoch up to the current one with the log end: its data was never
    /// truncated by a leader change this broker knows of.
    pub fn epoch_end(
        &self,
        key: (Uuid, i32),
        requested: i32,
        current: i32,
        log_end: i64,
    ) -> (i32, i64) {
        match self.epoch_starts.get(&key) {
            Some(h) => h.end_offset_for(requested, current, log_end),
            None if current == 0 => EpochHistory::default().end_offset_for(requested, 0, log_end),
            None if (0..=current).contains(&requested) => (requested, log_end),
            None => (epochs::UNDEFINED_EPOCH, epochs::UNDEFINED_OFFSET),
        }
    }

    /// The epoch `offset` of the partition was written in (-1: unknown).
    pub fn epoch_at(&self, key: (Uuid, i32), offset: i64, current: i32) -> i32 {
        match self.epoch_starts.get(&key) {
            Some(h) => h.epoch_at(offset, current),
            None if current == 0 => 0,
            None => epochs::UNDEFINED_EPOCH,
        }
    }

    /// The records that rebuild this image from an empty one (a snapshot).
    pub fn to_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (&node_id, n) in &self.nodes {
            out.push(Record::NodeRegistered {
                node_id,
                epoch: n.epoch,
                host: n.host.clone(),
                port: n.port,
            });
            if n.fenced {
                out.push(Record::NodeFenced {
                    node_id,
                    epoch: n.epoch,
                });
            }
            if n.shutting_down {
                out.push(Record::NodeShuttingDown {
                    node_id,
                    epoch: n.epoch,
                });
            }
        }
        for (&broker_id, rack) in &self.racks {
            out.push(Record::BrokerRack {
                broker_id,
                rack: rack.clone(),
            });
        }
        for t in self.topics.values() {
            out.push(Record::TopicCreated {
                id: t.id,
                name: t.name.clone(),
                configs: t.configs.clone(),
            });
            out.push(Record::PartitionsAdded {
                topic_id: t.id,
                first: 0,
                leaders: t.leader_nodes.clone(),
            });
            for (p, &epoch) in t.leader_epochs.iter().enumerate() {
                if epoch != 0 {
                    out.push(Record::PartitionLeaderChanged {
                        topic_id: t.id,
                        partition: p as i32,
                        leader: t.leader_nodes[p],
                        leader_epoch: epoch,
                    });
                }
                // After the leader change, which (before the objects are
                // back) would note a wrong start for its epoch.
                if let Some(h) = self.epoch_starts.get(&(t.id, p as i32)) {
                    out.push(Record::LeaderEpochStarts {
                        topic_id: t.id,
                        partition: p as i32,
                        starts: h.entries().to_vec(),
                    });
                }
            }
        }
        if self.next_producer_id > 0 {
            out.push(Record::ProducerIdsAllocated {
                node_id: -1,
                first: 0,
                count: self.next_producer_id,
            });
        }
        for (entity, values) in &self.quotas.entities {
            for (key, v) in values {
                out.push(Record::ClientQuotaChanged {
                    entity: entity.clone(),
                    key: key.clone(),
                    value: Some(QuotaValue(*v)),
                });
            }
        }
        for (group, configs) in &self.group_configs {
            for (name, value) in configs {
                out.push(Record::GroupConfigChanged {
                    group: group.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        for (user, creds) in &self.scram {
            for (mechanism, c) in creds {
                out.push(Record::ScramCredentialChanged {
                    user: user.clone(),
                    mechanism: *mechanism,
                    credential: Some(c.clone()),
                });
            }
        }
        out.extend(self.objects.to_records());
        // After the objects: applying one prunes by the partition's start.
        out.extend(self.producers.to_records());
        out
    }
}

/// The shard part of a node id.
pub fn shard_of(node_id: i32) -> usize {
    node_id.rem_euclid(NODES_PER_BROKER) as usize
}

/// `(mechanism, iterations, salt, salted password)` of a SCRAM credential.
pub type ScramUpsertion = (i8, i32, Vec<u8>, Vec<u8>);

/// A change to the metadata, as submitted to the controller (and sent to
/// the quorum's leader by the other controllers).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        configs: BTreeMap<String, String>,
        /// Leader node per partition when the client assigned replicas.
        assignment: Option<Vec<i32>>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i32,
        assignment: Option<Vec<i32>>,
    },
    /// Sets (`Some`) or removes (`None`) topic configs.
    AlterTopicConfigs {
        name: String,
        changes: Vec<(String, Option<String>)>,
    },
    /// Replaces every config set on the topic by `configs` (the legacy
    /// AlterConfigs): the ones left out go back to their defaults.
    ReplaceTopicConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// Hands `count` object ids to `node_id` (the image then names them in
    /// `objects.reservations`).
    ReserveObjectIds {
        node_id: i32,
        count: u64,
    },
    /// An uploaded object and the partition ranges it holds.
    CommitObject {
        object_id: u64,
        node_id: i32,
        size: u64,
        ranges: Vec<ObjectRange>,
    },
    /// Retention or DeleteRecords: moves a partition's log start up.
    AdvanceLogStart {
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    },
    /// Compaction: a stream object replaces some of a partition's ranges.
    CommitStreamObject {
        object_id: u64,
        node_id: i32,
        size: u64,
        range: ObjectRange,
        replaces: Vec<i64>,
    },
    /// Destroyed objects are gone from the store.
    PurgeObjects {
        ids: Vec<u64>,
    },
    /// Log compaction cleaned a partition up to `offset`.
    MarkCleaned {
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    },
    /// Moves a partition's leadership to node `to_node` (a partition
    /// reassignment: no data is copied, the new leader reads the objects).
    /// Submitted by the current leader once everything it held of the
    /// partition is in objects: refused unless the partition's end in
    /// objects is `uploaded_end`, so nothing acknowledged stays behind.
    MovePartition {
        topic_id: Uuid,
        partition: i32,
        to_node: i32,
        uploaded_end: i64,
    },
    /// Hands a block of `count` producer ids to `node_id` (the image then
    /// names it in `producer_id_blocks`).
    AllocateProducerIds {
        node_id: i32,
        count: i64,
    },
    /// The producer state a partition's newly uploaded range leads to;
    /// submitted right after the `CommitObject` of that range (same entry),
    /// and refused unless `end_offset` is the partition's end in objects.
    SnapshotProducers {
        topic_id: Uuid,
        partition: i32,
        end_offset: i64,
        expire_before: i64,
        producers: Vec<ProducerSnapshot>,
        aborted: Vec<AbortedTxn>,
    },
    /// Sets (`Some`) or removes (`None`) a group's dynamic configs.
    AlterGroupConfigs {
        group: String,
        changes: Vec<(String, Option<String>)>,
    },
    /// AlterClientQuotas, one entity: each op sets a key (`Some`) or
    /// removes it (`None`).
    AlterClientQuotas {
        entity: Vec<(String, Option<String>)>,
        ops: Vec<(String, Option<f64>)>,
    },
    /// AlterUserScramCredentials, one user (checked by the handler as
    /// Kafka checks it): credentials `(mechanism, iterations, salt, salted
    /// password)` to set, and mechanisms to delete (each must exist).
    AlterScramCredentials {
        user: String,
        upsertions: Vec<ScramUpsertion>,
        deletions: Vec<i8>,
    },
    /// A broker (re)starts: each of its shards becomes a live node with a
    /// new epoch; nodes of shards it no longer has are fenced.
    RegisterBroker {
        broker_id: i32,
        shards: usize,
        host: String,
        base_port: u16,
        rack: Option<String>,
    },
    /// A broker stopped heartbeating: every live node of it is fenced, and
    /// each `movable` partition (one it last said was clean: all in
    /// objects, and it writes none without first telling the leader) that
    /// it still leads at that leader epoch moves to a live node.
    FenceBroker {
        broker_id: i32,
        #[serde(default)]
        movable: Vec<(Uuid, i32, i32)>,
    },
    /// A broker begins a graceful shutdown (SIGTERM): its live nodes are
    /// marked, so drains (its own and other brokers') and new partitions
    /// go elsewhere, as Kafka's controlled shutdown keeps leaders off a
    /// stopping broker.
    BeginShutdown {
        broker_id: i32,
    },
    /// An operator removes a broker that is gone for good (Kafka's
    /// UnregisterBroker): its nodes leave the registry. Refused while any
    /// of them is live.
    UnregisterBroker {
        broker_id: i32,
    },
    /// Unclean leader election (an operator's choice): a partition whose
    /// leader is fenced goes to the least loaded live node, from what is in
    /// objects; what its old leader had not uploaded is given up.
    ElectUnclean {
        topic_id: Uuid,
        partition: i32,
    },
}

/// A refused command: the Kafka error and the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandError {
    pub code: i16,
    pub message: String,
}

impl CommandError {
    pub fn new(err: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code: err.code(),
            message: message.into(),
        }
    }
}

/// What a successful command did (the topic id it touched).
pub type CommandResult = Result<Uuid, CommandError>;

/// Where new partitions may go: the shards of this broker.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub broker_id: i32,
    pub shards: usize,
}

impl Placement {
    pub fn node_id(&self, shard: usize) -> i32 {
        self.broker_id * NODES_PER_BROKER + shard as i32
    }
}

/// Kafka's rule for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), CommandError> {
    let bad = |m: String| Err(CommandError::new(ResponseError::InvalidTopicException, m));
    if name.is_empty() || name == "." || name == ".." {
        return bad(format!("topic name {name:?} is illegal"));
    }
    if name.len() > 249 {
        return bad("topic name is longer than 249 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad(format!(
            "topic name {name:?} has characters other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks `cmds` against `image` in order and turns the valid ones into
/// records; a later command sees the effect of earlier ones. Returns one
/// result per command and the records to commit (nothing is changed).
///
/// Objects the commands leave without any live range are destroyed in the
/// same batch of records (at `now_ms`), so the change and its consequence
/// commit atomically.
pub fn plan(
    image: &MetadataImage,
    cmds: &[Command],
    placement: Placement,
    now_ms: i64,
) -> (Vec<CommandResult>, Vec<Record>) {
    let mut scratch = image.clone();
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(cmds.len());
    for cmd in cmds {
        match plan_one(&scratch, cmd, placement) {
            Ok((id, recs)) => {
                for r in &recs {
                    scratch.apply(r);
                }
                records.extend(recs);
                results.push(Ok(id));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    let unreferenced = scratch.objects.unreferenced();
    if !unreferenced.is_empty() && !records.is_empty() {
        records.push(Record::ObjectsDestroyed {
            ids: unreferenced,
            at_ms: now_ms,
        });
    }
    (results, records)
}

fn plan_one(
    image: &MetadataImage,
    cmd: &Command,
    placement: Placement,
) -> Result<(Uuid, Vec<Record>), CommandError> {
    match cmd {
        Command::CreateTopic {
            name,
            partitions,
            configs,
            assignment,
        } => create_topic(
            image,
            placement,
            name,
            *partitions,
            configs,
            assignment.as_deref(),
        ),
        Command::DeleteTopic { name } => {
            let meta = existing(image, name)?;
            Ok((meta.id, vec![Record::TopicDeleted { id: meta.id }]))
        }
        Command::CreatePartitions {
            name,
            count,
            assignment,
        } => create_partitions(image, placement, name, *count, assignment.as_deref()),
        Command::AlterTopicConfigs { name, changes } => alter_topic_configs(image, name, changes),
        Command::ReplaceTopicConfigs { name, configs } => {
            let meta = existing(image, name)?;
            let mut changes: Vec<(String, Option<String>)> = configs
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            changes.extend(
                meta.configs
                    .keys()
                    .filter(|k| !configs.iter().any(|(c, _)| c == *k))
                    .map(|k| (k.clone(), None)),
            );
            alter_topic_configs(image, name, &changes)
        }
        Command::ReserveObjectIds { node_id, count } => {
            if !(1..=1_000_000).contains(count) {
                return Err(CommandError::new(
                    ResponseError::InvalidRequest,
                    "object id block size must be 1..=1000000",
                ));
            }
            Ok((
                Uuid::nil(),
                vec![Record::ObjectIdsReserved {
                    node_id: *node_id,
                    first: image.objects.next_object_id,
                    count: *count,
                }],
            ))
        }
        Command::CommitObject {
            object_id,
            node_id,
            size,
            ranges,
        } => {
            let ranges = image
                .objects
                .check_commit(*object_id, ranges, |t, p| image.has_partition(t, p))?;
            Ok((
                Uuid::nil(),
                vec![Record::ObjectCommitted {
                    object_id: *object_id,
                    node_id: *node_id,
                    size: *size,
                    ranges,
                }],
            ))
        }
        Command::AdvanceLogStart {
            topic_id,
            partition,
            offset,
        } => {
            if !image.has_partition(*topic_id, *partition) {
                return Err(CommandError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("partition {topic_id}-{partition} does not exist"),
                ));
            }
            let current = image
                .objects
                .partition(*topic_id, *partition)
                .map_or(0, |p| p.log_start);
            if *offset <= current {
                return Ok((*topic_id, Vec::new()));
            }
            Ok((
                *topic_id,
                vec![Record::LogStartAdvanced {
                    topic_id: *topic_id,
                    partition: *partition,
                    offset: *offset,
                }],
            ))
        }
        Command::CommitStreamObject {
            object_id,
            node_id,
            size,
            range,
            replaces,
        } => {
            image
                .objects
                .check_stream_object(*object_id, range, replaces)?;
            Ok((
                range.topic_id,
                vec![Record::StreamObjectCommitted {
                    object_id: *object_id,
                    node_id: *node_id,
                    size: *size,
                    range: *range,
                    replaces: replaces.clone(),
                }],
            ))
        }
        Command::MovePartition {
            topic_id,
            partition,
            to_node,
            uploaded_end,
        } => move_partition(image, *topic_id, *partition, *to_node, *uploaded_end),
        Command::MarkCleaned {
            topic_id,
            partition,
            offset,
        } => {
            let current = image.objects.partition(*topic_id, *partition);
            if !image.has_partition(*topic_id, *partition) || current.is_none() {
                return Err(CommandError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("partition {topic_id}-{partition} has no objects"),
                ));
            }
            if current.is_some_and(|p| p.cleaned_end >= *offset) {
                return Ok((*topic_id, Vec::new()));
            }
            Ok((
                *topic_id,
                vec![Record::PartitionCleaned {
                    topic_id: *topic_id,
                    partition: *partition,
                    offset: *offset,
                }],
            ))
        }
        Command::AlterGroupConfigs { group, changes } => {
            let mut recs = Vec::with_capacity(changes.len());
            for (name, value) in changes {
                crate::group_config::validate(name, value.as_deref())
                    .map_err(|m| CommandError::new(ResponseError::InvalidConfig, m))?;
                recs.push(Record::GroupConfigChanged {
                    group: group.clone(),
                    name: name.clone(),
                    value: value.clone(),
                });
            }
            Ok((Uuid::nil(), recs))
        }
        Command::AlterClientQuotas { entity, ops } => {
            let (entity, changes) = quota::check_alteration(&image.quotas, entity, ops)?;
            let recs = changes
                .into_iter()
                .map(|(key, value)| Record::ClientQuotaChanged {
                    entity: entity.clone(),
                    key,
                    value: value.map(QuotaValue),
                })
                .collect();
            Ok((Uuid::nil(), recs))
        }
        Command::AlterScramCredentials {
            user,
            upsertions,
            deletions,
        } => {
            let have = image.scram.get(user);
            if deletions
                .iter()
                .any(|m| !have.is_some_and(|h| h.contains_key(m)))
            {
                return Err(CommandError::new(
                    ResponseError::ResourceNotFound,
                    "Attempt to delete a user credential that does not exist",
                ));
            }
            let deleted = deletions.iter().map(|m| Record::ScramCredentialChanged {
                user: user.clone(),
                mechanism: *m,
                credential: None,
            });
            let set = upsertions.iter().map(|(m, iterations, salt, salted)| {
                Record::ScramCredentialChanged {
                    user: user.clone(),
                    mechanism: *m,
                    credential: Some(ScramCredential {
                        iterations: *iterations,
                        salt: salt.clone(),
                        salted_password: salted.clone(),
                    }),
                }
            });
            Ok((Uuid::nil(), deleted.chain(set).collect()))
        }
        Command::PurgeObjects { ids } => {
            let ids: Vec<u64> = ids
                .iter()
                .filter(|id| image.objects.destroyed.contains_key(*id))
                .copied()
                .collect();
            if ids.is_empty() {
                return Ok((Uuid::nil(), Vec::new()));
            }
            Ok((Uuid::nil(), vec![Record::ObjectsPurged { ids }]))
        }
        Command::RegisterBroker {
            broker_id,
            shards,
            host,
            base_port,
            rack,
        } => {
            let mut records = register_broker(image, *broker_id, *shards, host, *base_port);
            let rack = rack.clone().unwrap_or_default();
            if image.racks.get(broker_id).map_or("", String::as_str) != rack {
                records.push(Record::BrokerRack {
                    broker_id: *broker_id,
                    rack,
                });
            }
            Ok((Uuid::nil(), records))
        }
        Command::UnregisterBroker { broker_id } => unregister_broker(image, *broker_id),
        Command::BeginShutdown { broker_id } => {
            let records = image
                .live_nodes()
                .filter(|(&id, n)| {
                    id.div_euclid(NODES_PER_BROKER) == *broker_id && !n.shutting_down
                })
                .map(|(&node_id, n)| Record::NodeShuttingDown {
                    node_id,
                    epoch: n.epoch,
                })
                .collect();
            Ok((Uuid::nil(), records))
        }
        Command::FenceBroker { broker_id, movable } => Ok((
            Uuid::nil(),
            fence_broker(image, placement, *broker_id, movable),
        )),
        Command::ElectUnclean {
            topic_id,
            partition,
        } => elect_unclean(image, placement, *topic_id, *partition),
        Command::AllocateProducerIds { node_id, count } => {
            allocate_producer_ids(image, *node_id, *count)
        }
        Command::SnapshotProducers {
            topic_id,
            partition,
            end_offset,
            expire_before,
            producers,
            aborted,
        } => {
            snapshot_producers(image, *topic_id, *partition, *end_offset)?;
            Ok((
                *topic_id,
                vec![Record::PartitionProducers {
                    topic_id: *topic_id,
                    partition: *partition,
                    end_offset: *end_offset,
                    expire_before: *expire_before,
                    producers: producers.clone(),
                    aborted: aborted.clone(),
                }],
            ))
        }
    }
}

/// Producer ids handed out per block.
pub const MAX_PRODUCER_ID_BLOCK: i64 = 1_000_000;

fn allocate_producer_ids(
    image: &MetadataImage,
    node_id: i32,
    count: i64,
) -> Result<(Uuid, Vec<Record>), CommandError> {
    if !(1..=MAX_PRODUCER_ID_BLOCK).contains(&count) {
        return Err(CommandError::new(
            ResponseError::InvalidRequest,
            format!("producer id block size must be 1..={MAX_PRODUCER_ID_BLOCK}"),
        ));
    }
    let first = image.next_producer_id;
    if first.checked_add(count).is_none() {
        return Err(CommandError::new(
            ResponseError::UnknownServerError,
            "producer ids are exhausted",
        ));
    }
    Ok((
        Uuid::nil(),
        vec![Record::ProducerIdsAllocated {
            node_id,
            first,
            count,
        }],
    ))
}

fn snapshot_producers(
    image: &MetadataImage,
    topic_id: Uuid,
    partition: i32,
    end_offset: i64,
) -> Result<(), CommandError> {
    let end = image
        .objects
        .partition(topic_id, partition)
        .and_then(|o| o.end());
    if !image.has_partition(topic_id, partition) || end != Some(end_offset) {
        return Err(CommandError::new(
            ResponseError::InvalidRequest,
            format!(
                "producer state of {topic_id}-{partition} at {end_offset} does not match the \
                 data in objects (up to {end:?})"
            ),
        ));
    }
    Ok(())
}

fn move_partition(
    image: &MetadataImage,
    topic_id: Uuid,
    partition: i32,
    to_node: i32,
    uploaded_end: i64,
) -> Result<(Uuid, Vec<Record>), CommandError> {
    let Some(t) = image.topic_by_id(&topic_id) else {
        return Err(CommandError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {topic_id} does not exist"),
        ));
    };
    let Some(p) = usize::try_from(partition)
        .ok()
        .filter(|&p| p < t.leader_nodes.len())
    else {
        return Err(CommandError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("{}-{partition} does not exist", t.name),
        ));
    };
    if image.nodes.get(&to_node).is_none_or(|n| n.fenced) {
        return Err(CommandError::new(
            ResponseError::InvalidReplicaAssignment,
            format!("node {to_node} is not a live node"),
        ));
    }
    if image.nodes.get(&to_node).is_some_and(|n| n.shutting_down) {
        return Err(CommandError::new(
            ResponseError::InvalidReplicaAssignment,
            format!("node {to_node} is shutting down"),
        ));
    }
    if t.leader_nodes[p] == to_node {
        return Ok((topic_id, Vec::new()));
    }
    let in_objects = image
        .objects
        .partition(topic_id, partition)
        .and_then(|o| o.end())
        .unwrap_or(0);
    if in_objects != uploaded_end {
        return Err(CommandError::new(
            ResponseError::ReassignmentInProgress,
            format!(
                "{}-{partition} has {in_objects} offsets in objects, not {uploaded_end}: \
                 its leader has not uploaded everything yet",
                t.name
            ),
        ));
    }
    Ok((topic_id, vec![leader_changed(t, partition, to_node)]))
}

/// Sets (`Some`) or removes (`None`) configs of topic `name`, each checked.
fn alter_topic_configs(
    image: &MetadataImage,
    name: &str,
    changes: &[(String, Option<String>)],
) -> Result<(Uuid, Vec<Record>), CommandError> {
    let meta = existing(image, name)?;
    let mut recs = Vec::with_capacity(changes.len());
    for (k, v) in changes {
        match v {
            Some(v) => topic_config::validate(k, v)
                .map_err(|m| CommandError::new(ResponseError::InvalidConfig, m))?,
            None if topic_config::lookup(k).is_none() => {
                return Err(CommandError::new(
                    ResponseError::InvalidConfig,
                    format!("unknown topic config {k}"),
                ))
            }
            None => {}
        }
        recs.push(Record::TopicConfigChanged {
            topic_id: meta.id,
            name: k.clone(),
            value: v.clone(),
        });
    }
    Ok((meta.id, recs))
}

fn existing<'a>(image: &'a MetadataImage, name: &str) -> Result<&'a Arc<TopicMeta>, CommandError> {
    image.topics.get(name).ok_or_else(|| {
        CommandError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        )
    })
}

/// Leader nodes for `n` new partitions: the client's assignment, else the
/// live nodes leading the fewest partitions, on the broker leading the
/// fewest first (lowest node id on a tie), so partitions of all topics
/// spread over brokers, then their shards (a broker with more shards takes
/// more), and the choice depends only on the image. An image without
/// registered nodes (unit tests) places on `placement`'s shards.
fn leaders(
    image: &MetadataImage,
    placement: Placement,
    n: usize,
    assignment: Option<&[i32]>,
) -> Vec<i32> {
    if let Some(a) = assignment {
        return a.to_vec();
    }
    // Brokers shutting down get nothing while any other is live.
    let mut nodes: Vec<i32> = image.placement_nodes().map(|(&id, _)| id).collect();
    if nodes.is_empty() {
        nodes = image.live_nodes().map(|(&id, _)| id).collect();
    }
    if nodes.is_empty() {
        nodes = (0..placement.shards.max(1))
            .map(|s| placement.node_id(s))
            .collect();
    }
    let broker = |node: i32| node.div_euclid(NODES_PER_BROKER);
    let rack = |node: i32| image.racks.get(&broker(node)).map_or("", String::as_str);
    let mut load: BTreeMap<i32, usize> = nodes.iter().map(|&n| (n, 0)).collect();
    let mut broker_load: BTreeMap<i32, usize> = BTreeMap::new();
    let mut rack_load: BTreeMap<&str, usize> = BTreeMap::new();
    for t in image.topics.values() {
        for &node in &t.leader_nodes {
            if let Some(l) = load.get_mut(&node) {
                *l += 1;
                *broker_load.entry(broker(node)).or_default() += 1;
                *rack_load.entry(rack(node)).or_default() += 1;
            }
        }
    }
    // Every node takes its turn (a broker with more shards takes more);
    // among the nodes with the fewest, the emptiest rack, then broker.
    (0..n)
        .map(|_| {
            let node = nodes
                .iter()
                .copied()
                .min_by_key(|&id| {
                    (
                        load[&id],
                        rack_load.get(rack(id)).copied().unwrap_or(0),
                        broker_load.get(&broker(id)).copied().unwrap_or(0),
                        id,
                    )
                })
                .unwrap_or(0);
            *load.entry(node).or_default() += 1;
            *broker_load.entry(broker(node)).or_default() += 1;
            *rack_load.entry(rack(node)).or_default() += 1;
            node
        })
        .collect()
}

/// Kafka's check of a replica assignment: every leader a live node.
fn check_assignment(image: &MetadataImage, assignment: Option<&[i32]>) -> Result<(), CommandError> {
    let Some(a) = assignment else {
        return Ok(());
    };
    if image.nodes.is_empty() {
        return Ok(());
    }
    match a.iter().find(|&&n| image.live_node(n).is_none()) {
        Some(n) => Err(CommandError::new(
            ResponseError::InvalidReplicaAssignment,
            format!("assignment names node {n}, which is not a live node"),
        )),
        None => Ok(()),
    }
}

/// The records of a broker's registration.
fn register_broker(
    image: &MetadataImage,
    broker_id: i32,
    shards: usize,
    host: &str,
    base_port: u16,
) -> Vec<Record> {
    let registered = (0..shards).map(|s| {
        let node_id = broker_id * NODES_PER_BROKER + s as i32;
        Record::NodeRegistered {
            node_id,
            epoch: image
                .nodes
                .get(&node_id)
                .map_or(1, |n| n.epoch.saturating_add(1)),
            host: host.to_string(),
            port: base_port.saturating_add(s as u16),
        }
    });
    let gone = image
        .nodes
        .iter()
        .filter(|(&id, n)| {
            !n.fenced && id.div_euclid(NODES_PER_BROKER) == broker_id && shard_of(id) >= shards
        })
        .map(|(&node_id, n)| Record::NodeFenced {
            node_id,
            epoch: n.epoch,
        });
    registered.chain(gone).collect()
}

/// Removes every node of `broker_id` from the registry, as Kafka's
/// controller does on UnregisterBroker. Unlike Kafka, a broker with a live
/// node is refused: a Kafka broker registers again at its next heartbeat,
/// but a broker that leads the quorum (or runs alone) sends none and would
/// stay unlisted while it serves. Its partitions keep it as their leader
/// and wait, as for a fenced broker, until it registers again (or an
/// unclean election moves them).
fn unregister_broker(
    image: &MetadataImage,
    broker_id: i32,
) -> Result<(Uuid, Vec<Record>), CommandError> {
    let nodes: Vec<(&i32, &NodeMeta)> = image
        .nodes
        .iter()
        .filter(|(&id, _)| id.div_euclid(NODES_PER_BROKER) == broker_id)
        .collect();
    if nodes.is_empty() {
        return Err(CommandError::new(
            ResponseError::BrokerIdNotRegistered,
            format!("Broker ID {broker_id} is not currently registered"),
        ));
    }
    if nodes.iter().any(|(_, n)| !n.fenced) {
        return Err(CommandError::new(
            ResponseError::InvalidRequest,
            format!(
                "broker {broker_id} is live: stop it and let the quorum fence it before \
                 unregistering it"
            ),
        ));
    }
    let records = nodes
        .iter()
        .map(|(&node_id, _)| Record::NodeUnregistered { node_id })
        .collect();
    Ok((Uuid::nil(), records))
}

fn elect_unclean(
    image: &MetadataImage,
    placement: Placement,
    topic_id: Uuid,
    partition: i32,
) -> Result<(Uuid, Vec<Record>), CommandError> {
    let (t, p) = image
        .topic_by_id(&topic_id)
        .and_then(|t| Some((t, usize::try_from(partition).ok()?)))
        .filter(|(t, p)| *p < t.leader_nodes.len())
        .ok_or_else(|| {
            CommandError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("partition {partition} of {topic_id} does not exist"),
            )
        })?;
    if image.live_node(t.leader_nodes[p]).is_some() {
        return Err(CommandError::new(
            ResponseError::ElectionNotNeeded,
            "the partition's leader is live",
        ));
    }
    let to = leaders(image, placement, 1, None).first().copied();
    let Some(to) = to.filter(|&n| image.live_node(n).is_some()) else {
        return Err(CommandError::new(
            ResponseError::EligibleLeadersNotAvailable,
            "no live node",
        ));
    };
    Ok((topic_id, vec![leader_changed(t, partition, to)]))
}

/// `partition` of `t` led by `to` from now, at the next leader epoch.
fn leader_changed(t: &TopicMeta, partition: i32, to: i32) -> Record {
    Record::PartitionLeaderChanged {
        topic_id: t.id,
        partition,
        leader: to,
        leader_epoch: t
            .leader_epochs
            .get(partition as usize)
            .copied()
            .unwrap_or(0)
            + 1,
    }
}

/// The records that fence every live node of `broker_id`, then move each
/// of `movable` it still leads at that epoch to the least loaded live node.
fn fence_broker(
    image: &MetadataImage,
    placement: Placement,
    broker_id: i32,
    movable: &[(Uuid, i32, i32)],
) -> Vec<Record> {
    let mut records: Vec<Record> = image
        .live_nodes()
        .filter(|(&id, _)| id.div_euclid(NODES_PER_BROKER) == broker_id)
        .map(|(&node_id, n)| Record::NodeFenced {
            node_id,
            epoch: n.epoch,
        })
        .collect();
    if movable.is_empty() || records.is_empty() {
        return records;
    }
    let mut after = image.clone();
    for r in &records {
        after.apply(r);
    }
    for &(topic_id, partition, epoch) in movable {
        let Some(t) = after.topic_by_id(&topic_id).cloned() else {
            continue;
        };
        let Ok(p) = usize::try_from(partition) else {
            continue;
        };
        let still_there = t
            .leader_nodes
            .get(p)
            .map(|n| n.div_euclid(NODES_PER_BROKER))
            == Some(broker_id)
            && t.leader_epochs.get(p) == Some(&epoch);
        if !still_there {
            continue;
        }
        let Some(to) = leaders(&after, placement, 1, None)
            .first()
            .copied()
            .filter(|&n| after.live_node(n).is_some())
        else {
            break;
        };
        let moved = leader_changed(&t, partition, to);
        after.apply(&moved);
        records.push(moved);
    }
    records
}

fn create_topic(
    image: &MetadataImage,
    placement: Placement,
    name: &str,
    partitions: i32,
    configs: &BTreeMap<String, String>,
    assignment: Option<&[i32]>,
) -> Result<(Uuid, Vec<Record>), CommandError> {
    validate_topic_name(name)?;
    if image.topics.contains_key(name) {
        return Err(CommandError::new(
            ResponseError::TopicAlreadyExists,
            format!("topic {name} already exists"),
        ));
    }
    if partitions < 1 {
        return Err(CommandError::new(
            ResponseError::InvalidPartitions,
            format!("number of partitions must be at least 1, got {partitions}"),
        ));
    }
    if partitions > 100_000 {
        return Err(CommandError::new(
            ResponseError::InvalidPartitions,
            format!("{partitions} partitions is more than this broker allows (100000)"),
        ));
    }
    for (k, v) in configs {
        topic_config::validate(k, v)
            .map_err(|m| CommandError::new(ResponseError::InvalidConfig, m))?;
    }
    let mut id = Uuid::new_v4();
    while image.ids.contains_key(&id) {
        id = Uuid::new_v4();
    }
    check_assignment(image, assignment)?;
    let leaders = leaders(image, placement, partitions as usize, assignment);
    Ok((
        id,
        vec![
            Record::TopicCreated {
                id,
                name: name.to_string(),
                configs: configs.clone(),
            },
            Record::PartitionsAdded {
                topic_id: id,
                first: 0,
                leaders,
            },
        ],
    ))
}

fn create_partitions(
    image: &MetadataImage,
    placement: Placement,
    name: &str,
    count: i32,
    assignment: Option<&[i32]>,
) -> Result<(Uuid, Vec<Record>), CommandError> {
    let meta = existing(image, name)?;
    let current = meta.leaders.len() as i32;
    if count <= current {
        return Err(CommandError::new(
            ResponseError::InvalidPartitions,
            format!("topic {name} has {current} partitions; the new count {count} must be larger"),
        ));
    }
    if count > 100_000 {
        return Err(CommandError::new(
            ResponseError::InvalidPartitions,
            format!("{count} partitions is more than this broker allows (100000)"),
        ));
    }
    if assignment.is_some_and(|a| a.len() as i32 != count - current) {
        return Err(CommandError::new(
            ResponseError::InvalidReplicaAssignment,
            "assignment must name one leader per new partition",
        ));
    }
    check_assignment(image, assignment)?;
    let added = leaders(image, placement, (count - current) as usize, assignment);
    Ok((
        meta.id,
        vec![Record::PartitionsAdded {
            topic_id: meta.id,
            first: current,
            leaders: added,
        }],
    ))
}

/// An image with `plan` and `apply` joined, as the controller uses them,
/// without Raft: for tests.
#[cfg(test)]
#[derive(Debug)]
pub struct TopicTable {
    image: MetadataImage,
    placement: Placement,
}

#[cfg(test)]
impl TopicTable {
    pub fn new(placement: Placement) -> Self {
        Self {
            image: MetadataImage::default(),
            placement,
        }
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Plans `cmds` and, unless `dry_run`, applies the records as one new
    /// version. Returns the results and the records applied.
    pub fn apply(&mut self, cmds: &[Command], dry_run: bool) -> (Vec<CommandResult>, Vec<Record>) {
        let (results, records) = plan(&self.image, cmds, self.placement, 0);
        if dry_run || records.is_empty() {
            return (results, Vec::new());
        }
        for r in &records {
            self.image.apply(r);
        }
        self.image.version += 1;
        (results, records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::tests::every_type;

    const P2: Placement = Placement {
        broker_id: 0,
        shards: 2,
    };

    fn create(name: &str, partitions: i32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            partitions,
            configs: BTreeMap::new(),
            assignment: None,
        }
    }

    fn register(t: &mut TopicTable, broker_id: i32, shards: usize, rack: Option<&str>) {
        let cmd = Command::RegisterBroker {
            broker_id,
            shards,
            host: "127.0.0.1".into(),
            base_port: 9092 + 100 * broker_id as u16,
            rack: rack.map(str::to_string),
        };
        assert!(t.apply(&[cmd], false).0[0].is_ok());
    }

    #[test]
    fn only_a_fenced_broker_is_unregistered() {
        let mut t = TopicTable::new(P2);
        register(&mut t, 0, 1, None);
        register(&mut t, 1, 2, Some("r1"));
        let unregister = |b| Command::UnregisterBroker { broker_id: b };
        let code = |t: &mut TopicTable, b| t.apply(&[unregister(b)], false).0[0].clone().err();
        assert_eq!(
            code(&mut t, 7).map(|e| e.code),
            Some(ResponseError::BrokerIdNotRegistered.code())
        );
        assert_eq!(
            code(&mut t, 1).map(|e| e.code),
            Some(ResponseError::InvalidRequest.code()),
            "broker 1 is live"
        );
        let fence = Command::FenceBroker {
            broker_id: 1,
            movable: vec![],
        };
        assert!(t.apply(&[fence], false).0[0].is_ok());
        let (r, recs) = t.apply(&[unregister(1)], false);
        assert!(r[0].is_ok());
        assert_eq!(recs.len(), 2, "both of its nodes");
        let img = t.image();
        assert!(img.nodes.keys().all(|&n| n < NODES_PER_BROKER));
        assert!(!img.racks.contains_key(&1));
        assert_eq!(
            code(&mut t, 1).map(|e| e.code),
            Some(ResponseError::BrokerIdNotRegistered.code())
        );
        // It may come back: registering makes its nodes live again.
        register(&mut t, 1, 2, None);
        assert!(t.image().live_node(1001).is_some());
    }

    #[test]
    fn a_broker_shutting_down_gets_no_partition() {
        let mut t = TopicTable::new(P2);
        register(&mut t, 0, 1, None);
        register(&mut t, 1, 2, None);
        register(&mut t, 2, 1, None);
        let shut = |b| Command::BeginShutdown { broker_id: b };
        let (r, recs) = t.apply(&[shut(1)], false);
        assert!(r[0].is_ok());
        assert_eq!(recs.len(), 2, "both of its nodes");
        assert!(t.apply(&[shut(1)], false).1.is_empty(), "marked once");
        // Still live (it serves until it exits), but no placement.
        let img = t.image();
        assert!(img.live_node(1001).is_some());
        assert!(img
            .placement_nodes()
            .all(|(&n, _)| n / NODES_PER_BROKER != 1));
        // A snapshot keeps the mark.
        let again = MetadataImage::from_snapshot(&img.to_records());
        assert!(again.nodes[&1000].shutting_down && !again.nodes[&0].shutting_down);
        // New partitions and moves go elsewhere.
        t.apply(&[create("s", 6)], false);
        let leaders = t.image().topic("s").unwrap().leader_nodes.clone();
        assert!(
            leaders.iter().all(|&n| n / NODES_PER_BROKER != 1),
            "{leaders:?}"
        );
        let id = t.image().topic("s").unwrap().id;
        let mv = Command::MovePartition {
            topic_id: id,
            partition: 0,
            to_node: 1001,
            uploaded_end: 0,
        };
        let refused = t.apply(&[mv], false).0[0].clone().unwrap_err();
        assert!(
            refused.message.contains("shutting down"),
            "{}",
            refused.message
        );
        // When every broker is stopping, partitions still get a leader.
        t.apply(&[shut(0), shut(2)], false);
        t.apply(&[create("all", 2)], false);
        assert_eq!(t.image().topic("all").unwrap().leader_nodes.len(), 2);
        // Registering again (a restart) clears the mark.
        register(&mut t, 1, 2, None);
        assert!(!t.image().nodes[&1000].shutting_down);
    }

    #[test]
    fn fencing_moves_only_the_clean_partitions_still_led_at_their_epoch() {
        let mut t = TopicTable::new(P2);
        register(&mut t, 0, 1, None);
        register(&mut t, 1, 1, None);
        let assign = Command::CreateTopic {
            name: "f".into(),
            partitions: 4,
            configs: BTreeMap::new(),
            assignment: Some(vec![1000, 1000, 1000, 0]),
        };
        assert!(t.apply(&[assign], false).0[0].is_ok());
        let id = t.image().topic("f").unwrap().id;
        let fence = Command::FenceBroker {
            broker_id: 1,
            // 0: clean; 1: offered at an older epoch; 2: not offered;
            // 3: led by another broker.
            movable: vec![(id, 0, 0), (id, 1, 7), (id, 3, 0)],
        };
        assert!(t.apply(&[fence], false).0[0].is_ok());
        let img = t.image();
        let f = img.topic("f").unwrap();
        assert_eq!(f.leader_nodes, vec![0, 1000, 1000, 0]);
        assert_eq!(f.leader_epochs, vec![1, 0, 0, 0]);
        assert!(img.live_node(1000).is_none(), "fenced all the same");
    }

    #[test]
    fn partitions_spread_over_racks_then_brokers_then_shards() {
        let mut t = TopicTable::new(P2);
        register(&mut t, 0, 1, Some("a"));
        register(&mut t, 1, 1, Some("a"));
        register(&mut t, 2, 2, Some("b"));
        assert_eq!(t.image().racks.len(), 3);
        t.apply(&[create("r", 4)], false);
        let leaders = &t.image().topic("r").unwrap().leader_nodes;
        let rack = |n: i32| if n / NODES_PER_BROKER < 2 { "a" } else { "b" };
        let racks: Vec<&str> = leaders.iter().map(|&n| rack(n)).collect();
        assert_eq!(racks, vec!["a", "b", "a", "b"], "{leaders:?}");
        // Every node takes its turn: broker 2 (two shards) gets two of four.
        assert_eq!(leaders.iter().filter(|&&n| n >= 2000).count(), 2);
        // A fenced broker gets nothing; a client's assignment to it is refused.
        let fence = Command::FenceBroker {
            broker_id: 1,
            movable: vec![],
        };
        assert!(t.apply(&[fence], false).0[0].is_ok());
        t.apply(&[create("s", 6)], false);
        let leaders = &t.image().topic("s").unwrap().leader_nodes;
        assert!(
            leaders.iter().all(|&n| n / NODES_PER_BROKER != 1),
            "{leaders:?}"
        );
        let assigned = Command::CreateTopic {
            name: "x".into(),
            partitions: 1,
            configs: BTreeMap::new(),
            assignment: Some(vec![1000]),
        };
        let r = t.apply(&[assigned], false).0;
        assert_eq!(
            r[0].as_ref().unwrap_err().code,
            ResponseError::InvalidReplicaAssignment.code()
        );
        // Registering again (a restart) unfences it, with a new epoch.
        register(&mut t, 1, 1, Some("a"));
        assert!(t.image().live_node(1000).is_some());
        assert_eq!(t.image().nodes[&1000].epoch, 2);
    }

    #[test]
    fn partitions_spread_round_robin() {
        let mut t = TopicTable::new(P2);
        assert!(t
            .apply(&[create("a", 4), create("b", 1)], false)
            .0
            .iter()
            .all(|r| r.is_ok()));
        assert_eq!(t.image().topic("a").unwrap().leaders, vec![0, 1, 0, 1]);
        assert_eq!(t.image().topic("b").unwrap().leaders, vec![0]);
        assert_eq!(t.image().version, 1);
    }

    #[test]
    fn a_partition_moves_only_with_everything_in_objects() {
        let mut t = TopicTable::new(P2);
        t.apply(&[create("a", 2)], false);
        for node in [0, 1] {
            t.image.apply(&Record::NodeRegistered {
                node_id: node,
                epoch: 1,
                host: "h".into(),
                port: 1,
            });
        }
        let id = t.image().topic("a").unwrap().id;
        let mv = |to_node, uploaded_end| Command::MovePartition {
            topic_id: id,
            partition: 0,
            to_node,
            uploaded_end,
        };
        // Nothing uploaded yet: a move claiming 10 offsets is refused.
        let (r, _) = t.apply(&[mv(1, 10)], false);
        assert_eq!(r[0].as_ref().unwrap_err().code, 60); // REASSIGNMENT_IN_PROGRESS
        let (r, recs) = t.apply(&[mv(1, 0)], false);
        assert!(r[0].is_ok());
        assert_eq!(recs.len(), 1);
        let a = t.image().topic("a").unwrap();
        assert_eq!(
            (a.leader_nodes[0], a.leaders[0], a.leader_epochs[0]),
            (1, 1, 1)
        );
        // Already there: nothing to do.
        assert!(t.apply(&[mv(1, 0)], false).1.is_empty());
        // Not a node.
        let (r, _) = t.apply(&[mv(7, 0)], false);
        assert_eq!(r[0].as_ref().unwrap_err().code, 39); // INVALID_REPLICA_ASSIGNMENT
    }

    #[test]
    fn errors() {
        let mut t = TopicTable::new(P2);
        t.apply(&[create("a", 1)], false);
        let (r, _) = t.apply(
            &[create("a", 1), create("bad name", 1), create("z", 0)],
            false,
        );
        let codes: Vec<i16> = r.iter().map(|r| r.as_ref().unwrap_err().code).collect();
        assert_eq!(codes, vec![36, 17, 37]);
        assert_eq!(t.image().version, 1, "nothing changed");
        let mut cfg = BTreeMap::new();
        cfg.insert("retention.ms".to_string(), "x".to_string());
        let (r, _) = t.apply(
            &[Command::CreateTopic {
                name: "c".into(),
                partitions: 1,
                configs: cfg,
                assignment: None,
            }],
            false,
        );
        assert_eq!(r[0].as_ref().unwrap_err().code, 40);
    }

    #[test]
    fn dry_run_changes_nothing() {
        let mut t = TopicTable::new(P2);
        assert!(t.apply(&[create("a", 3)], true).0[0].is_ok());
        assert!(t.image().topic("a").is_none());
        assert_eq!(t.image().version, 0);
    }

    #[test]
    fn delete_and_grow() {
        let mut t = TopicTable::new(Placement {
            broker_id: 0,
            shards: 3,
        });
        t.apply(&[create("a", 2)], false);
        let grow = Command::CreatePartitions {
            name: "a".into(),
            count: 5,
            assignment: None,
        };
        assert!(t.apply(std::slice::from_ref(&grow), false).0[0].is_ok());
        assert_eq!(t.image().topic("a").unwrap().leaders.len(), 5);
        assert_eq!(t.apply(&[grow], false).0[0].as_ref().unwrap_err().code, 37);
        let id = t.image().topic("a").unwrap().id;
        assert!(t
            .apply(&[Command::DeleteTopic { name: "a".into() }], false)
            .0[0]
            .is_ok());
        assert!(t.image().topic_by_id(&id).is_none());
        let del = Command::DeleteTopic { name: "a".into() };
        assert_eq!(t.apply(&[del], false).0[0].as_ref().unwrap_err().code, 3);
    }

    #[test]
    fn every_record_type_applies() {
        let mut img = MetadataImage::default();
        let recs = every_type();
        // Everything but the final TopicDeleted.
        for r in &recs[..recs.len() - 1] {
            img.apply(r);
        }
        let t = img.topic("t").unwrap();
        // Added as nodes 0, 1, 1000; partition 2 then moved to node 1.
        assert_eq!(t.leader_nodes, vec![0, 1, 1]);
        assert_eq!(t.leaders, vec![0, 1, 1]);
        assert_eq!(t.leader_epochs, vec![0, 0, 3]);
        assert!(t.configs.is_empty(), "config set then removed");
        assert!(img.nodes[&1].fenced);
        assert_eq!(img.next_producer_id, 2000);
        assert_eq!(img.producer_id_blocks[&0], (1000, 1000));
        let p = img.producers.partition(t.id, 0).unwrap();
        assert_eq!((p.producers.len(), p.aborted.len()), (1, 1));
        img.apply(recs.last().unwrap());
        assert!(img.topics.is_empty() && img.ids.is_empty());
        assert!(
            img.producers.partitions.is_empty(),
            "dropped with the topic"
        );
    }

    #[test]
    fn scram_credentials_are_set_deleted_and_kept_in_snapshots() {
        let mut t = TopicTable::new(P2);
        let set = |user: &str, mechanism: i8| Command::AlterScramCredentials {
            user: user.into(),
            upsertions: vec![(mechanism, 4096, b"salt".to_vec(), vec![9; 32])],
            deletions: vec![],
        };
        let delete = |user: &str, mechanism: i8| Command::AlterScramCredentials {
            user: user.into(),
            upsertions: vec![],
            deletions: vec![mechanism],
        };
        let r = t.apply(&[set("alice", 1), set("alice", 2), set("bob", 1)], false);
        assert!(r.0.iter().all(|r| r.is_ok()));
        let code = |r: &CommandResult| r.as_ref().map(|_| 0).unwrap_or_else(|e| e.code);
        let r = t.apply(&[delete("bob", 2), delete("alice", 1)], false);
        assert_eq!(
            r.0.iter().map(code).collect::<Vec<_>>(),
            vec![ResponseError::ResourceNotFound.code(), 0],
            "only an existing credential is deleted"
        );
        let img = t.image();
        assert_eq!(
            img.scram["alice"].keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
        let mut again = MetadataImage::default();
        for r in img.to_records() {
            again.apply(&r);
        }
        assert_eq!(again.scram, img.scram);
        t.apply(&[delete("bob", 1)], false);
        assert!(
            !t.image().scram.contains_key("bob"),
            "a user without credentials is gone"
        );
    }

    #[test]
    fn producer_id_blocks_never_overlap_and_snapshots_follow_objects() {
        let mut t = TopicTable::new(P2);
        t.apply(&[create("a", 1)], false);
        let alloc = |node_id| Command::AllocateProducerIds {
            node_id,
            count: 1000,
        };
        t.apply(&[alloc(0), alloc(1), alloc(0)], false);
        assert_eq!(t.image().producer_id_blocks[&1], (1000, 1000));
        assert_eq!(t.image().producer_id_blocks[&0], (2000, 1000));
        assert_eq!(t.image().next_producer_id, 3000);
        let bad = Command::AllocateProducerIds {
            node_id: 0,
            count: 0,
        };
        assert!(t.apply(&[bad], false).0[0].is_err());
        // A snapshot must sit at the partition's end in objects.
        let id = t.image().topic("a").unwrap().id;
        let snap = |end_offset| Command::SnapshotProducers {
            topic_id: id,
            partition: 0,
            end_offset,
            expire_before: 0,
            producers: vec![ProducerSnapshot {
                producer_id: 5,
                epoch: 0,
                coordinator_epoch: -1,
                last_timestamp: 1,
                txn_first_offset: -1,
                batches: Vec::new(),
            }],
            aborted: Vec::new(),
        };
        assert!(t.apply(&[snap(0)], false).0[0].is_err(), "no objects yet");
        let commit = Command::CommitObject {
            object_id: 0,
            node_id: 0,
            size: 10,
            ranges: vec![ObjectRange {
                topic_id: id,
                partition: 0,
                start_offset: 0,
                end_offset: 7,
                max_timestamp: 1,
                bytes: 10,
            }],
        };
        let reserve = Command::ReserveObjectIds {
            node_id: 0,
            count: 1,
        };
        let (r, _) = t.apply(&[reserve, commit, snap(7)], false);
        assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
        assert!(t.image().producers.partition(id, 0).is_some());
        let mut rebuilt = MetadataImage::default();
        for r in t.image().to_records() {
            rebuilt.apply(&r);
        }
        assert_eq!(rebuilt.producers.partitions, t.image().producers.partitions);
        assert_eq!(rebuilt.next_producer_id, 3000);
    }

    #[test]
    fn records_rebuild_the_image() {
        let mut t = TopicTable::new(P2);
        t.apply(&[create("a", 3), create("b", 2)], false);
        let alter = Command::AlterTopicConfigs {
            name: "a".into(),
            changes: vec![("retention.ms".into(), Some("10".into()))],
        };
        assert!(t.apply(&[alter], false).0[0].is_ok());
        let mut img = t.image().clone();
        img.apply(&Record::PartitionLeaderChanged {
            topic_id: img.topic("a").unwrap().id,
            partition: 1,
            leader: 0,
            leader_epoch: 4,
        });
        let mut rebuilt = MetadataImage::default();
        for r in img.to_records() {
            rebuilt.apply(&r);
        }
        assert_eq!(rebuilt.topics, img.topics);
        assert_eq!(rebuilt.ids, img.ids);
        assert_eq!(rebuilt.topic("a").unwrap().configs["retention.ms"], "10");
    }

    #[test]
    fn each_leader_epoch_starts_where_the_objects_end() {
        let mut img = MetadataImage::default();
        let id = Uuid::from_u128(7);
        img.apply(&Record::TopicCreated {
            id,
            name: "a".into(),
            configs: BTreeMap::new(),
        });
        img.apply(&Record::PartitionsAdded {
            topic_id: id,
            first: 0,
            leaders: vec![0, 0],
        });
        let commit = |img: &mut MetadataImage, object_id, start_offset, end_offset| {
            img.apply(&Record::ObjectCommitted {
                object_id,
                node_id: 0,
                size: 10,
                ranges: vec![ObjectRange {
                    topic_id: id,
                    partition: 1,
                    start_offset,
                    end_offset,
                    max_timestamp: 1,
                    bytes: 10,
                }],
            })
        };
        let moved = |leader, leader_epoch| Record::PartitionLeaderChanged {
            topic_id: id,
            partition: 1,
            leader,
            leader_epoch,
        };
        commit(&mut img, 1, 0, 100);
        img.apply(&moved(1, 1));
        commit(&mut img, 2, 100, 250);
        img.apply(&moved(0, 2));
        let h = img.epoch_starts[&(id, 1)].clone();
        assert_eq!(h.entries(), &[(1, 100), (2, 250)]);
        assert_eq!(h.end_offset_for(1, 2, 300), (1, 250));
        assert_eq!(h.end_offset_for(0, 2, 300), (0, 100));
        assert!(!img.epoch_starts.contains_key(&(id, 0)));
        // A snapshot keeps it, although its leader change is replayed
        // before the objects.
        let mut rebuilt = MetadataImage::from_snapshot(&img.to_records());
        assert_eq!(rebuilt.epoch_starts, img.epoch_starts);
        rebuilt.apply(&Record::TopicDeleted { id });
        assert!(rebuilt.epoch_starts.is_empty());
    }

    #[test]
    fn a_snapshot_without_epoch_histories_leaves_them_unknown() {
        // As a broker before histories wrote it: the leader change (epoch
        // 3) comes before the objects, and no LeaderEpochStarts follows.
        let id = Uuid::from_u128(9);
        let records = vec![
            Record::TopicCreated {
                id,
                name: "old".into(),
                configs: BTreeMap::new(),
            },
            Record::PartitionsAdded {
                topic_id: id,
                first: 0,
                leaders: vec![0],
            },
            Record::PartitionLeaderChanged {
                topic_id: id,
                partition: 0,
                leader: 1,
                leader_epoch: 3,
            },
            Record::ObjectCommitted {
                object_id: 1,
                node_id: 0,
                size: 10,
                ranges: vec![ObjectRange {
                    topic_id: id,
                    partition: 0,
                    start_offset: 0,
                    end_offset: 500,
                    max_timestamp: 1,
                    bytes: 10,
                }],
            },
        ];
        let img = MetadataImage::from_snapshot(&records);
        assert!(img.epoch_starts.is_empty(), "no start guessed for epoch 3");
        // No truncation is reported for any epoch up to the current one.
        assert_eq!(img.epoch_end((id, 0), 1, 3, 700), (1, 700));
        assert_eq!(img.epoch_end((id, 0), 3, 3, 700), (3, 700));
        assert_eq!(img.epoch_end((id, 0), 4, 3, 700), (-1, -1));
        assert_eq!(img.epoch_at((id, 0), 10, 3), -1);
        // A plain image replay (the log) still notes where epoch 3 began.
        let mut replayed = MetadataImage::default();
        for r in &records {
            replayed.apply(r);
        }
        assert_eq!(replayed.epoch_starts[&(id, 0)].entries(), &[(3, 0)]);
    }

    #[test]
    fn bad_config_changes_are_refused() {
        let mut t = TopicTable::new(P2);
        t.apply(&[create("a", 1)], false);
        let bad = |k: &str, v: Option<&str>| Command::AlterTopicConfigs {
            name: "a".into(),
            changes: vec![(k.into(), v.map(String::from))],
        };
        let (r, recs) = t.apply(&[bad("retention.ms", Some("x")), bad("nope", None)], false);
        assert!(recs.is_empty());
        assert!(r.iter().all(|r| r.as_ref().unwrap_err().code == 40));
        let (r, _) = t.apply(
            &[Command::AlterTopicConfigs {
                name: "zz".into(),
                changes: vec![],
            }],
            false,
        );
        assert_eq!(r[0].as_ref().unwrap_err().code, 3);
    }
}
