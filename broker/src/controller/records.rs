//! The metadata records: the typed, versioned changes the controller commits
//! through Raft, and their byte encoding.
//!
//! Every record is framed as `type u16 | version u16 | length u32 | body`
//! (big endian). A broker skips record types it does not know (debug log),
//! and reads only the fields it knows of a newer version of a type it knows:
//! new versions may only append fields. Pure code: no I/O, used on the
//! controller thread, by the snapshot and log readers, and by
//! `metadata-shell`. Never panics on bytes read from disk.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{Buf, BufMut};
use tracing::debug;
use uuid::Uuid;

use crate::quota::QuotaEntity;

/// Record type numbers. Never reuse one. 100.. are object storage
/// (reserved ids, committed objects and their offset ranges).
pub mod kind {
    pub const TOPIC_CREATED: u16 = 1;
    pub const TOPIC_DELETED: u16 = 2;
    pub const PARTITIONS_ADDED: u16 = 3;
    pub const PARTITION_LEADER_CHANGED: u16 = 4;
    pub const TOPIC_CONFIG_CHANGED: u16 = 5;
    pub const NODE_REGISTERED: u16 = 6;
    pub const NODE_FENCED: u16 = 7;
    pub const PRODUCER_IDS_ALLOCATED: u16 = 8;
    pub const PARTITION_PRODUCERS: u16 = 9;
    pub const CLIENT_QUOTA_CHANGED: u16 = 10;
    pub const BROKER_RACK: u16 = 11;
    pub const SCRAM_CREDENTIAL_CHANGED: u16 = 12;
    pub const LEADER_EPOCH_STARTS: u16 = 13;
    pub const NODE_UNREGISTERED: u16 = 14;
    pub const NODE_SHUTTING_DOWN: u16 = 15;
    pub const GROUP_CONFIG_CHANGED: u16 = 16;
    pub const OBJECT_IDS_RESERVED: u16 = 100;
    pub const OBJECT_COMMITTED: u16 = 101;
    pub const LOG_START_ADVANCED: u16 = 102;
    pub const OBJECTS_DESTROYED: u16 = 103;
    pub const OBJECTS_PURGED: u16 = 104;
    pub const STREAM_OBJECT_COMMITTED: u16 = 105;
    pub const UPLOADED_END: u16 = 106;
    pub const PARTITION_CLEANED: u16 = 107;
}

/// Largest body a record may claim; metadata records are small.
const MAX_BODY: usize = 64 << 20;

/// One change to the cluster metadata. Leaders are node ids
/// (`broker_id * 1000 + shard`), so the log needs no change when more than
/// one broker joins the quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    TopicCreated {
        id: Uuid,
        name: String,
        configs: BTreeMap<String, String>,
    },
    TopicDeleted {
        id: Uuid,
    },
    /// Partitions `first..first + leaders.len()` of the topic, at leader epoch 0.
    PartitionsAdded {
        topic_id: Uuid,
        first: i32,
        leaders: Vec<i32>,
    },
    PartitionLeaderChanged {
        topic_id: Uuid,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
    },
    /// `value: None` removes the key (back to its default).
    TopicConfigChanged {
        topic_id: Uuid,
        name: String,
        value: Option<String>,
    },
    /// A group config (KIP-848's dynamic group configs: `share.*`,
    /// `consumer.*`) set, or removed (`None`). The group need not exist.
    GroupConfigChanged {
        group: String,
        name: String,
        value: Option<String>,
    },
    /// A node (shard) registered with a new epoch; registering clears fencing.
    NodeRegistered {
        node_id: i32,
        epoch: i64,
        host: String,
        port: u16,
    },
    /// The node of this epoch stopped heartbeating; its partitions must move.
    NodeFenced {
        node_id: i32,
        epoch: i64,
    },
    /// A broker's rack (`broker.rack`); empty: none.
    BrokerRack {
        broker_id: i32,
        rack: String,
    },
    /// Producer ids `first..first + count` belong to `node_id`.
    ProducerIdsAllocated {
        node_id: i32,
        first: i64,
        count: i64,
    },
    /// The producer state of a partition changed in the range up to
    /// `end_offset` (the end of an object committed in the same entry):
    /// the new state of each producer that wrote in it, the transactions it
    /// aborted, and `expire_before`: producers without an open transaction
    /// whose last write is older than this are forgotten.
    PartitionProducers {
        topic_id: Uuid,
        partition: i32,
        end_offset: i64,
        expire_before: i64,
        producers: Vec<ProducerSnapshot>,
        aborted: Vec<AbortedTxn>,
    },
    /// Object ids `first..first + count` belong to `node_id`, which may
    /// upload objects under them. An object whose id was reserved but never
    /// committed is an orphan.
    ObjectIdsReserved {
        node_id: i32,
        first: u64,
        count: u64,
    },
    /// A stream-set object is in the store, and these offset ranges of
    /// these partitions live in it.
    ObjectCommitted {
        object_id: u64,
        node_id: i32,
        size: u64,
        ranges: Vec<ObjectRange>,
    },
    /// Retention or DeleteRecords: nothing below `offset` is readable any
    /// more; object ranges wholly below it are dropped.
    LogStartAdvanced {
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    },
    /// Objects no range references any more: deleted from the store once
    /// `at_ms` is a grace period old (readers may still hold them).
    ObjectsDestroyed {
        ids: Vec<u64>,
        at_ms: i64,
    },
    /// Destroyed objects gone from the store.
    ObjectsPurged {
        ids: Vec<u64>,
    },
    /// Compaction: a stream object holding one partition's `range` takes
    /// over that partition's live ranges starting at `replaces`.
    StreamObjectCommitted {
        object_id: u64,
        node_id: i32,
        size: u64,
        range: ObjectRange,
        replaces: Vec<i64>,
    },
    /// A partition's data was uploaded up to `offset` (snapshots: the
    /// ranges that said so may all have been dropped since).
    UploadedEnd {
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    },
    /// Log compaction (`cleanup.policy=compact`) has cleaned a partition
    /// up to `offset`: what lies above it is dirty.
    PartitionCleaned {
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    },
    /// A client quota of an entity (entity type -> name, `None` the type's
    /// default, sorted by type) is set to `value`, or removed (`None`).
    ClientQuotaChanged {
        entity: QuotaEntity,
        key: String,
        value: Option<QuotaValue>,
    },
    /// A user's SCRAM credential for one mechanism (1 SCRAM-SHA-256, 2
    /// SCRAM-SHA-512, Kafka's numbers) is set, or deleted (`None`).
    ScramCredentialChanged {
        user: String,
        mechanism: i8,
        credential: Option<ScramCredential>,
    },
    /// The first offset of each leader epoch after 0 of a partition
    /// (`metadata/epochs.rs`), replacing what the image had. Written in
    /// snapshots only: in the log, each `PartitionLeaderChanged` notes the
    /// start of its epoch.
    LeaderEpochStarts {
        topic_id: Uuid,
        partition: i32,
        starts: Vec<(i32, i64)>,
    },
    /// A node leaves the registry (UnregisterBroker).
    NodeUnregistered {
        node_id: i32,
    },
    /// The node of this epoch is shutting down (its broker got SIGTERM,
    /// Kafka's controlled shutdown): it still serves, but nothing is placed
    /// on it. Registering again clears it.
    NodeShuttingDown {
        node_id: i32,
        epoch: i64,
    },
}

/// A salted SCRAM credential (AlterUserScramCredentials). Its `Debug` shows
/// the iterations only: the salted password never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub iterations: i32,
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScramCredential {{ iterations: {} }}", self.iterations)
    }
}

/// A quota value, compared by its bits so records stay `Eq`.
#[derive(Debug, Clone, Copy)]
pub struct QuotaValue(pub f64);

impl PartialEq for QuotaValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for QuotaValue {}

/// The offsets `start..end` of one partition inside an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectRange {
    pub topic_id: Uuid,
    pub partition: i32,
    pub start_offset: i64,
    pub end_offset: i64,
    pub max_timestamp: i64,
    /// Bytes of the partition's data blocks in the object.
    pub bytes: u64,
}

const OBJECT_RANGE_LEN: usize = 16 + 4 + 8 + 8 + 8 + 8;

/// One producer's state in a partition, as the metadata keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerSnapshot {
    pub producer_id: i64,
    pub epoch: i16,
    pub coordinator_epoch: i32,
    pub last_timestamp: i64,
    /// First offset of its open transaction, -1 when none.
    pub txn_first_offset: i64,
    /// Its last batches (at most five), oldest first.
    pub batches: Vec<SnapshotBatch>,
}

/// Metadata of one batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub timestamp: i64,
}

/// An aborted transaction of a partition: its producer, first offset and
/// the offset of its abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

const PRODUCER_SNAPSHOT_MIN_LEN: usize = 8 + 2 + 4 + 8 + 8 + 4;
const SNAPSHOT_BATCH_LEN: usize = 4 + 4 + 8 + 8 + 8;
const ABORTED_TXN_LEN: usize = 8 + 8 + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record frame truncated: need {need} bytes, {have} left")]
    Truncated { need: usize, have: usize },
    #[error("record body of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("record type {kind} v{version}: {what}")]
    Invalid {
        kind: u16,
        version: u16,
        what: &'static str,
    },
}

impl Record {
    pub fn kind(&self) -> u16 {
        match self {
            Record::TopicCreated { .. } => kind::TOPIC_CREATED,
            Record::TopicDeleted { .. } => kind::TOPIC_DELETED,
            Record::PartitionsAdded { .. } => kind::PARTITIONS_ADDED,
            Record::PartitionLeaderChanged { .. } => kind::PARTITION_LEADER_CHANGED,
            Record::TopicConfigChanged { .. } => kind::TOPIC_CONFIG_CHANGED,
            Record::GroupConfigChanged { .. } => kind::GROUP_CONFIG_CHANGED,
            Record::NodeRegistered { .. } => kind::NODE_REGISTERED,
            Record::NodeFenced { .. } => kind::NODE_FENCED,
            Record::BrokerRack { .. } => kind::BROKER_RACK,
            Record::ProducerIdsAllocated { .. } => kind::PRODUCER_IDS_ALLOCATED,
            Record::PartitionProducers { .. } => kind::PARTITION_PRODUCERS,
            Record::ObjectIdsReserved { .. } => kind::OBJECT_IDS_RESERVED,
            Record::ObjectCommitted { .. } => kind::OBJECT_COMMITTED,
            Record::LogStartAdvanced { .. } => kind::LOG_START_ADVANCED,
            Record::ObjectsDestroyed { .. } => kind::OBJECTS_DESTROYED,
            Record::ObjectsPurged { .. } => kind::OBJECTS_PURGED,
            Record::StreamObjectCommitted { .. } => kind::STREAM_OBJECT_COMMITTED,
            Record::UploadedEnd { .. } => kind::UPLOADED_END,
            Record::PartitionCleaned { .. } => kind::PARTITION_CLEANED,
            Record::ClientQuotaChanged { .. } => kind::CLIENT_QUOTA_CHANGED,
            Record::ScramCredentialChanged { .. } => kind::SCRAM_CREDENTIAL_CHANGED,
            Record::LeaderEpochStarts { .. } => kind::LEADER_EPOCH_STARTS,
            Record::NodeUnregistered { .. } => kind::NODE_UNREGISTERED,
            Record::NodeShuttingDown { .. } => kind::NODE_SHUTTING_DOWN,
        }
    }

    /// The version this broker writes; all types are at their first version.
    pub fn version(&self) -> u16 {
        0
    }

    /// Appends the framed record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16(self.kind());
        out.put_u16(self.version());
        let len_at = out.len();
        out.put_u32(0);
        let body_at = out.len();
        self.encode_body(out);
        let len = (out.len() - body_at) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Record::TopicCreated { id, name, configs } => {
                put_uuid(out, id);
                put_str(out, name);
                out.put_u32(configs.len() as u32);
                for (k, v) in configs {
                    put_str(out, k);
                    put_str(out, v);
                }
            }
            Record::TopicDeleted { id } => put_uuid(out, id),
            Record::PartitionsAdded {
                topic_id,
                first,
                leaders,
            } => {
                put_uuid(out, topic_id);
                out.put_i32(*first);
                out.put_u32(leaders.len() as u32);
                for l in leaders {
                    out.put_i32(*l);
                }
            }
            Record::PartitionLeaderChanged {
                topic_id,
                partition,
                leader,
                leader_epoch,
            } => {
                put_uuid(out, topic_id);
                out.put_i32(*partition);
                out.put_i32(*leader);
                out.put_i32(*leader_epoch);
            }
            Record::NodeUnregistered { node_id } => out.put_i32(*node_id),
            Record::LeaderEpochStarts {
                topic_id,
                partition,
                starts,
            } => {
                put_uuid(out, topic_id);
                out.put_i32(*partition);
                out.put_u32(starts.len() as u32);
                for (epoch, start) in starts {
                    out.put_i32(*epoch);
                    out.put_i64(*start);
                }
            }
            Record::TopicConfigChanged {
                topic_id,
                name,
                value,
            } => {
                put_uuid(out, topic_id);
                put_str(out, name);
                match value {
                    Some(v) => {
                        out.put_u8(1);
                        put_str(out, v);
                    }
                    None => out.put_u8(0),
                }
            }
            Record::NodeRegistered {
                node_id,
                epoch,
                host,
                port,
            } => {
                out.put_i32(*node_id);
                out.put_i64(*epoch);
                put_str(out, host);
                out.put_u16(*port);
            }
            Record::NodeFenced { node_id, epoch } | Record::NodeShuttingDown { node_id, epoch } => {
                out.put_i32(*node_id);
                out.put_i64(*epoch);
            }
            Record::BrokerRack { broker_id, rack } => {
                out.put_i32(*broker_id);
                put_str(out, rack);
            }
            Record::ProducerIdsAllocated {
                node_id,
                first,
                count,
            } => {
                out.put_i32(*node_id);
                out.put_i64(*first);
                out.put_i64(*count);
            }
            Record::PartitionProducers {
                topic_id,
                partition,
                end_offset,
                expire_before,
                producers,
                aborted,
            } => {
                put_uuid(out, topic_id);
                out.put_i32(*partition);
                out.put_i64(*end_offset);
                out.put_i64(*expire_before);
                out.put_u32(producers.len() as u32);
                for p in producers {
                    out.put_i64(p.producer_id);
                    out.put_i16(p.epoch);
                    out.put_i32(p.coordinator_epoch);
                    out.put_i64(p.last_timestamp);
                    out.put_i64(p.txn_first_offset);
                    out.put_u32(p.batches.len() as u32);
                    for b in &p.batches {
                        out.put_i32(b.first_seq);
                        out.put_i32(b.last_seq);
                        out.put_i64(b.first_offset);
                        out.put_i64(b.last_offset);
                        out.put_i64(b.timestamp);
                    }
                }
                out.put_u32(aborted.len() as u32);
                for a in aborted {
                    out.put_i64(a.producer_id);
                    out.put_i64(a.first_offset);
                    out.put_i64(a.last_offset);
                }
            }
            Record::ObjectIdsReserved {
                node_id,
                first,
                count,
            } => {
                out.put_i32(*node_id);
                out.put_u64(*first);
                out.put_u64(*count);
            }
            Record::ObjectCommitted {
                object_id,
                node_id,
                size,
                ranges,
            } => {
                out.put_u64(*object_id);
                out.put_i32(*node_id);
                out.put_u64(*size);
                out.put_u32(ranges.len() as u32);
                for r in ranges {
                    put_range(out, r);
                }
            }
            Record::LogStartAdvanced {
                topic_id,
                partition,
                offset,
            }
            | Record::UploadedEnd {
                topic_id,
                partition,
                offset,
            }
            | Record::PartitionCleaned {
                topic_id,
                partition,
                offset,
            } => {
                put_uuid(out, topic_id);
                out.put_i32(*partition);
                out.put_i64(*offset);
            }
            Record::ClientQuotaChanged { entity, key, value } => {
                out.put_u32(entity.len() as u32);
                for (t, n) in entity {
                    put_str(out, t);
                    put_opt_str(out, n.as_deref());
                }
                put_str(out, key);
                match value {
                    Some(v) => {
                        out.put_u8(1);
                        out.put_f64(v.0);
                    }
                    None => out.put_u8(0),
                }
            }
            Record::GroupConfigChanged { group, name, value } => {
                put_str(out, group);
                put_str(out, name);
                put_opt_str(out, value.as_deref());
            }
            Record::ScramCredentialChanged {
                user,
                mechanism,
                credential,
            } => {
                put_str(out, user);
                out.put_i8(*mechanism);
                match credential {
                    Some(c) => {
                        out.put_u8(1);
                        out.put_i32(c.iterations);
                        put_bytes(out, &c.salt);
                        put_bytes(out, &c.salted_password);
                    }
                    None => out.put_u8(0),
                }
            }
            Record::ObjectsDestroyed { ids, at_ms } => {
                out.put_i64(*at_ms);
                put_ids(out, ids);
            }
            Record::ObjectsPurged { ids } => put_ids(out, ids),
            Record::StreamObjectCommitted {
                object_id,
                node_id,
                size,
                range,
                replaces,
            } => {
                out.put_u64(*object_id);
                out.put_i32(*node_id);
                out.put_u64(*size);
                put_range(out, range);
                out.put_u32(replaces.len() as u32);
                for s in replaces {
                    out.put_i64(*s);
                }
            }
        }
    }
}

fn put_range(out: &mut Vec<u8>, r: &ObjectRange) {
    put_uuid(out, &r.topic_id);
    out.put_i32(r.partition);
    out.put_i64(r.start_offset);
    out.put_i64(r.end_offset);
    out.put_i64(r.max_timestamp);
    out.put_u64(r.bytes);
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
    out.put_u32(ids.len() as u32);
    for id in ids {
        out.put_u64(*id);
    }
}

/// Encodes records back to back.
pub fn encode_all(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode(&mut out);
    }
    out
}

/// Decodes framed records back to back. Unknown types are skipped; any
/// malformed frame is an error (the caller's CRC said the bytes are whole).
pub fn decode_all(mut buf: &[u8]) -> Result<Vec<Record>, RecordError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        need(buf, 8)?;
        let kind = buf.get_u16();
        let version = buf.get_u16();
        let len = buf.get_u32() as usize;
        if len > MAX_BODY {
            return Err(RecordError::TooLarge(len));
        }
        need(buf, len)?;
        let (body, rest) = buf.split_at(len);
        buf = rest;
        match decode_body(kind, version, body)? {
            Some(r) => out.push(r),
            None => debug!(kind, version, len, "skipping unknown metadata record type"),
        }
    }
    Ok(out)
}

fn decode_body(kind: u16, version: u16, body: &[u8]) -> Result<Option<Record>, RecordError> {
    let mut r = Reader {
        buf: body,
        kind,
        version,
    };
    let rec = match kind {
        kind::TOPIC_CREATED => {
            let id = r.uuid()?;
            let name = r.string()?;
            let n = r.u32()?;
            let mut configs = BTreeMap::new();
            for _ in 0..n {
                let k = r.string()?;
                let v = r.string()?;
                configs.insert(k, v);
            }
            Record::TopicCreated { id, name, configs }
        }
        kind::TOPIC_DELETED => Record::TopicDeleted { id: r.uuid()? },
        kind::PARTITIONS_ADDED => {
            let topic_id = r.uuid()?;
            let first = r.i32()?;
            let n = r.u32()? as usize;
            // Each leader is 4 bytes: refuse counts the body cannot hold
            // before allocating.
            if n > r.buf.len() / 4 {
                return Err(r.invalid("leader count exceeds the record"));
            }
            let leaders = (0..n).map(|_| r.i32()).collect::<Result<_, _>>()?;
            Record::PartitionsAdded {
                topic_id,
                first,
                leaders,
            }
        }
        kind::PARTITION_LEADER_CHANGED => Record::PartitionLeaderChanged {
            topic_id: r.uuid()?,
            partition: r.i32()?,
            leader: r.i32()?,
            leader_epoch: r.i32()?,
        },
        kind::NODE_UNREGISTERED => Record::NodeUnregistered { node_id: r.i32()? },
        kind::NODE_SHUTTING_DOWN => Record::NodeShuttingDown {
            node_id: r.i32()?,
            epoch: r.i64()?,
        },
        kind::LEADER_EPOCH_STARTS => {
            let topic_id = r.uuid()?;
            let partition = r.i32()?;
            let n = r.u32()? as usize;
            if n > r.buf.len() / 12 {
                return Err(r.invalid("epoch count exceeds the record"));
            }
            let starts = (0..n)
                .map(|_| Ok((r.i32()?, r.i64()?)))
                .collect::<Result<_, RecordError>>()?;
            Record::LeaderEpochStarts {
                topic_id,
                partition,
                starts,
            }
        }
        kind::TOPIC_CONFIG_CHANGED => {
            let topic_id = r.uuid()?;
            let name = r.string()?;
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.string()?),
                _ => return Err(r.invalid("bad option tag")),
            };
            Record::TopicConfigChanged {
                topic_id,
                name,
                value,
            }
        }
        kind::NODE_REGISTERED => Record::NodeRegistered {
            node_id: r.i32()?,
            epoch: r.i64()?,
            host: r.string()?,
            port: r.u16()?,
        },
        kind::NODE_FENCED => Record::NodeFenced {
            node_id: r.i32()?,
            epoch: r.i64()?,
        },
        kind::BROKER_RACK => Record::BrokerRack {
            broker_id: r.i32()?,
            rack: r.string()?,
        },
        kind::PRODUCER_IDS_ALLOCATED => Record::ProducerIdsAllocated {
            node_id: r.i32()?,
            first: r.i64()?,
            count: r.i64()?,
        },
        kind::PARTITION_PRODUCERS => decode_partition_producers(&mut r)?,
        kind::OBJECT_IDS_RESERVED => Record::ObjectIdsReserved {
            node_id: r.i32()?,
            first: r.u64()?,
            count: r.u64()?,
        },
        kind::OBJECT_COMMITTED => {
            let object_id = r.u64()?;
            let node_id = r.i32()?;
            let size = r.u64()?;
            let n = r.u32()? as usize;
            if n > r.buf.len() / OBJECT_RANGE_LEN {
                return Err(r.invalid("range count exceeds the record"));
            }
            let mut ranges = Vec::with_capacity(n);
            for _ in 0..n {
                ranges.push(r.range()?);
            }
            Record::ObjectCommitted {
                object_id,
                node_id,
                size,
                ranges,
            }
        }
        kind::LOG_START_ADVANCED => Record::LogStartAdvanced {
            topic_id: r.uuid()?,
            partition: r.i32()?,
            offset: r.i64()?,
        },
        kind::UPLOADED_END => Record::UploadedEnd {
            topic_id: r.uuid()?,
            partition: r.i32()?,
            offset: r.i64()?,
        },
        kind::PARTITION_CLEANED => Record::PartitionCleaned {
            topic_id: r.uuid()?,
            partition: r.i32()?,
            offset: r.i64()?,
        },
        kind::OBJECTS_DESTROYED => {
            let at_ms = r.i64()?;
            Record::ObjectsDestroyed {
                at_ms,
                ids: r.ids()?,
            }
        }
        kind::OBJECTS_PURGED => Record::ObjectsPurged { ids: r.ids()? },
        kind::CLIENT_QUOTA_CHANGED => {
            let n = r.u32()? as usize;
            // Each entry is at least a 4-byte length and a flag.
            if n > r.buf.len() / 5 {
                return Err(r.invalid("entity entry count exceeds the record"));
            }
            let mut entity = Vec::with_capacity(n);
            for _ in 0..n {
                let t = r.string()?;
                let name = match r.u8()? {
                    0 => None,
                    _ => Some(r.string()?),
                };
                entity.push((t, name));
            }
            let key = r.string()?;
            let value = match r.u8()? {
                0 => None,
                _ => Some(QuotaValue(f64::from_bits(r.u64()?))),
            };
            Record::ClientQuotaChanged { entity, key, value }
        }
        kind::GROUP_CONFIG_CHANGED => {
            let group = r.string()?;
            let name = r.string()?;
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.string()?),
                _ => return Err(r.invalid("bad option tag")),
            };
            Record::GroupConfigChanged { group, name, value }
        }
        kind::SCRAM_CREDENTIAL_CHANGED => {
            let user = r.string()?;
            let mechanism = r.u8()? as i8;
            let credential = match r.u8()? {
                0 => None,
                _ => Some(ScramCredential {
                    iterations: r.i32()?,
                    salt: r.bytes()?,
                    salted_password: r.bytes()?,
                }),
            };
            Record::ScramCredentialChanged {
                user,
                mechanism,
                credential,
            }
        }
        kind::STREAM_OBJECT_COMMITTED => {
            let object_id = r.u64()?;
            let node_id = r.i32()?;
            let size = r.u64()?;
            let range = r.range()?;
            let n = r.u32()? as usize;
            if n > r.buf.len() / 8 {
                return Err(r.invalid("replaced range count exceeds the record"));
            }
            let replaces = (0..n).map(|_| r.i64()).collect::<Result<_, _>>()?;
            Record::StreamObjectCommitted {
                object_id,
                node_id,
                size,
                range,
                replaces,
            }
        }
        _ => return Ok(None),
    };
    // Bytes left over belong to fields of a newer version: ignored.
    Ok(Some(rec))
}

fn decode_partition_producers(r: &mut Reader<'_>) -> Result<Record, RecordError> {
    let topic_id = r.uuid()?;
    let partition = r.i32()?;
    let end_offset = r.i64()?;
    let expire_before = r.i64()?;
    let n = r.u32()? as usize;
    if n > r.buf.len() / PRODUCER_SNAPSHOT_MIN_LEN {
        return Err(r.invalid("producer count exceeds the record"));
    }
    let mut producers = Vec::with_capacity(n);
    for _ in 0..n {
        let producer_id = r.i64()?;
        let epoch = r.i16()?;
        let coordinator_epoch = r.i32()?;
        let last_timestamp = r.i64()?;
        let txn_first_offset = r.i64()?;
        let nb = r.u32()? as usize;
        if nb > r.buf.len() / SNAPSHOT_BATCH_LEN {
            return Err(r.invalid("batch count exceeds the record"));
        }
        let mut batches = Vec::with_capacity(nb);
        for _ in 0..nb {
            batches.push(SnapshotBatch {
                first_seq: r.i32()?,
                last_seq: r.i32()?,
                first_offset: r.i64()?,
                last_offset: r.i64()?,
                timestamp: r.i64()?,
            });
        }
        producers.push(ProducerSnapshot {
            producer_id,
            epoch,
            coordinator_epoch,
            last_timestamp,
            txn_first_offset,
            batches,
        });
    }
    let m = r.u32()? as usize;
    if m > r.buf.len() / ABORTED_TXN_LEN {
        return Err(r.invalid("aborted transaction count exceeds the record"));
    }
    let mut aborted = Vec::with_capacity(m);
    for _ in 0..m {
        aborted.push(AbortedTxn {
            producer_id: r.i64()?,
            first_offset: r.i64()?,
            last_offset: r.i64()?,
        });
    }
    Ok(Record::PartitionProducers {
        topic_id,
        partition,
        end_offset,
        expire_before,
        producers,
        aborted,
    })
}

fn need(buf: &[u8], n: usize) -> Result<(), RecordError> {
    if buf.len() < n {
        return Err(RecordError::Truncated {
            need: n,
            have: buf.len(),
        });
    }
    Ok(())
}

fn put_uuid(out: &mut Vec<u8>, id: &Uuid) {
    out.put_slice(id.as_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    kind: u16,
    version: u16,
}

impl Reader<'_> {
    fn invalid(&self, what: &'static str) -> RecordError {
        RecordError::Invalid {
            kind: self.kind,
            version: self.version,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.buf.len() < n {
            return Err(self.invalid("body too short"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(self.take(2)?.get_u16())
    }
    fn i16(&mut self) -> Result<i16, RecordError> {
        Ok(self.take(2)?.get_i16())
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(self.take(4)?.get_u32())
    }
    fn i32(&mut self) -> Result<i32, RecordError> {
        Ok(self.take(4)?.get_i32())
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(self.take(8)?.get_i64())
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(self.take(8)?.get_u64())
    }
    fn range(&mut self) -> Result<ObjectRange, RecordError> {
        Ok(ObjectRange {
            topic_id: self.uuid()?,
            partition: self.i32()?,
            start_offset: self.i64()?,
            end_offset: self.i64()?,
            max_timestamp: self.i64()?,
            bytes: self.u64()?,
        })
    }
    fn ids(&mut self) -> Result<Vec<u64>, RecordError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() / 8 {
            return Err(self.invalid("id count exceeds the record"));
        }
        (0..n).map(|_| self.u64()).collect()
    }
    fn uuid(&mut self) -> Result<Uuid, RecordError> {
        let b = self.take(16)?;
        Uuid::from_slice(b).map_err(|_| self.invalid("bad uuid"))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, RecordError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, RecordError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?.to_vec();
        String::from_utf8(b).map_err(|_| self.invalid("string is not UTF-8"))
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::TopicCreated { id, name, configs } => {
                write!(f, "TopicCreated name={name} id={id}")?;
                if !configs.is_empty() {
                    write!(f, " configs={configs:?}")?;
                }
                Ok(())
            }
            Record::TopicDeleted { id } => write!(f, "TopicDeleted id={id}"),
            Record::PartitionsAdded {
                topic_id,
                first,
                leaders,
            } => write!(
                f,
                "PartitionsAdded topic={topic_id} first={first} leaders={leaders:?}"
            ),
            Record::PartitionLeaderChanged {
                topic_id,
                partition,
                leader,
                leader_epoch,
            } => write!(
                f,
                "PartitionLeaderChanged topic={topic_id} partition={partition} leader={leader} epoch={leader_epoch}"
            ),
            Record::NodeUnregistered { node_id } => write!(f, "NodeUnregistered node={node_id}"),
            Record::NodeShuttingDown { node_id, epoch } => {
                write!(f, "NodeShuttingDown node={node_id} epoch={epoch}")
            }
            Record::LeaderEpochStarts {
                topic_id,
                partition,
                starts,
            } => write!(
                f,
                "LeaderEpochStarts topic={topic_id} partition={partition} starts={starts:?}"
            ),
            Record::TopicConfigChanged {
                topic_id,
                name,
                value,
            } => write!(f, "TopicConfigChanged topic={topic_id} {name}={value:?}"),
            Record::NodeRegistered {
                node_id,
                epoch,
                host,
                port,
            } => write!(f, "NodeRegistered node={node_id} epoch={epoch} {host}:{port}"),
            Record::NodeFenced { node_id, epoch } => {
                write!(f, "NodeFenced node={node_id} epoch={epoch}")
            }
            Record::BrokerRack { broker_id, rack } => {
                write!(f, "BrokerRack broker={broker_id} rack={rack:?}")
            }
            Record::ProducerIdsAllocated {
                node_id,
                first,
                count,
            } => write!(
                f,
                "ProducerIdsAllocated node={node_id} first={first} count={count}"
            ),
            Record::PartitionProducers {
                topic_id,
                partition,
                end_offset,
                expire_before,
                producers,
                aborted,
            } => write!(
                f,
                "PartitionProducers {topic_id}-{partition} end={end_offset} \
                 expire_before={expire_before} producers={} aborted={}",
                producers.len(),
                aborted.len()
            ),
            Record::ObjectIdsReserved {
                node_id,
                first,
                count,
            } => write!(
                f,
                "ObjectIdsReserved node={node_id} first={first} count={count}"
            ),
            Record::ObjectCommitted {
                object_id,
                node_id,
                size,
                ranges,
            } => {
                write!(
                    f,
                    "ObjectCommitted id={object_id} node={node_id} size={size}"
                )?;
                for r in ranges {
                    write!(
                        f,
                        " {}-{}:{}..{}",
                        r.topic_id, r.partition, r.start_offset, r.end_offset
                    )?;
                }
                Ok(())
            }
            Record::LogStartAdvanced {
                topic_id,
                partition,
                offset,
            } => write!(f, "LogStartAdvanced {topic_id}-{partition} to {offset}"),
            Record::UploadedEnd {
                topic_id,
                partition,
                offset,
            } => write!(f, "UploadedEnd {topic_id}-{partition} at {offset}"),
            Record::PartitionCleaned {
                topic_id,
                partition,
                offset,
            } => write!(f, "PartitionCleaned {topic_id}-{partition} up to {offset}"),
            Record::ObjectsDestroyed { ids, at_ms } => {
                write!(f, "ObjectsDestroyed at {at_ms} ms: {ids:?}")
            }
            Record::ObjectsPurged { ids } => write!(f, "ObjectsPurged {ids:?}"),
            Record::GroupConfigChanged { group, name, value } => {
                write!(f, "GroupConfigChanged group={group} {name}={value:?}")
            }
            Record::ScramCredentialChanged {
                user,
                mechanism,
                credential,
            } => match credential {
                Some(c) => write!(
                    f,
                    "ScramCredentialChanged user={user} mechanism={mechanism} iterations={}",
                    c.iterations
                ),
                None => write!(
                    f,
                    "ScramCredentialChanged user={user} mechanism={mechanism} (deleted)"
                ),
            },
            Record::ClientQuotaChanged { entity, key, value } => {
                write!(f, "ClientQuotaChanged {entity:?} {key}=")?;
                match value {
                    Some(v) => write!(f, "{}", v.0),
                    None => write!(f, "(removed)"),
                }
            }
            Record::StreamObjectCommitted {
                object_id,
                node_id,
                size,
                range,
                replaces,
            } => write!(
                f,
                "StreamObjectCommitted id={object_id} node={node_id} size={size} {}-{}:{}..{} replaces {replaces:?}",
                range.topic_id, range.partition, range.start_offset, range.end_offset
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One record of every type.
    pub(crate) fn every_type() -> Vec<Record> {
        let id = Uuid::from_u128(0x1234);
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        vec![
            Record::GroupConfigChanged {
                group: "g".into(),
                name: "share.auto.offset.reset".into(),
                value: Some("earliest".into()),
            },
            Record::GroupConfigChanged {
                group: "g".into(),
                name: "share.record.lock.duration.ms".into(),
                value: None,
            },
            Record::ScramCredentialChanged {
                user: "alice".into(),
                mechanism: 1,
                credential: Some(ScramCredential {
                    iterations: 4096,
                    salt: b"salt".to_vec(),
                    salted_password: vec![7; 32],
                }),
            },
            Record::ScramCredentialChanged {
                user: "bob".into(),
                mechanism: 2,
                credential: None,
            },
            Record::ClientQuotaChanged {
                entity: vec![
                    ("client-id".into(), None),
                    ("user".into(), Some("alice".into())),
                ],
                key: "producer_byte_rate".into(),
                value: Some(QuotaValue(1024.0)),
            },
            Record::ClientQuotaChanged {
                entity: vec![("ip".into(), Some("10.0.0.1".into()))],
                key: "connection_creation_rate".into(),
                value: None,
            },
            Record::TopicCreated {
                id,
                name: "t".into(),
                configs,
            },
            Record::PartitionsAdded {
                topic_id: id,
                first: 0,
                leaders: vec![0, 1, 1000],
            },
            Record::PartitionLeaderChanged {
                topic_id: id,
                partition: 2,
                leader: 1,
                leader_epoch: 3,
            },
            Record::LeaderEpochStarts {
                topic_id: id,
                partition: 2,
                starts: vec![(1, 10), (3, 250)],
            },
            Record::NodeUnregistered { node_id: 2001 },
            Record::NodeShuttingDown {
                node_id: 2001,
                epoch: 4,
            },
            Record::TopicConfigChanged {
                topic_id: id,
                name: "retention.ms".into(),
                value: Some("5".into()),
            },
            Record::TopicConfigChanged {
                topic_id: id,
                name: "retention.ms".into(),
                value: None,
            },
            Record::NodeRegistered {
                node_id: 1,
                epoch: 7,
                host: "127.0.0.1".into(),
                port: 9093,
            },
            Record::NodeFenced {
                node_id: 1,
                epoch: 7,
            },
            Record::BrokerRack {
                broker_id: 1,
                rack: "us-east-1a".into(),
            },
            Record::ProducerIdsAllocated {
                node_id: 0,
                first: 1000,
                count: 1000,
            },
            Record::PartitionProducers {
                topic_id: id,
                partition: 0,
                end_offset: 10,
                expire_before: 5,
                producers: vec![ProducerSnapshot {
                    producer_id: 1000,
                    epoch: 2,
                    coordinator_epoch: 1,
                    last_timestamp: 9,
                    txn_first_offset: -1,
                    batches: vec![SnapshotBatch {
                        first_seq: 0,
                        last_seq: 4,
                        first_offset: 5,
                        last_offset: 9,
                        timestamp: 9,
                    }],
                }],
                aborted: vec![AbortedTxn {
                    producer_id: 1001,
                    first_offset: 0,
                    last_offset: 4,
                }],
            },
            Record::ObjectIdsReserved {
                node_id: 1,
                first: 0,
                count: 16,
            },
            Record::ObjectCommitted {
                object_id: 3,
                node_id: 1,
                size: 4096,
                ranges: vec![ObjectRange {
                    topic_id: id,
                    partition: 0,
                    start_offset: 0,
                    end_offset: 10,
                    max_timestamp: 77,
                    bytes: 4000,
                }],
            },
            Record::LogStartAdvanced {
                topic_id: id,
                partition: 0,
                offset: 4,
            },
            Record::StreamObjectCommitted {
                object_id: 4,
                node_id: 1,
                size: 100,
                range: ObjectRange {
                    topic_id: id,
                    partition: 0,
                    start_offset: 4,
                    end_offset: 10,
                    max_timestamp: 77,
                    bytes: 90,
                },
                replaces: vec![0],
            },
            Record::UploadedEnd {
                topic_id: id,
                partition: 0,
                offset: 10,
            },
            Record::PartitionCleaned {
                topic_id: id,
                partition: 0,
                offset: 8,
            },
            Record::ObjectsDestroyed {
                ids: vec![3],
                at_ms: 1234,
            },
            Record::ObjectsPurged { ids: vec![3] },
            Record::TopicDeleted { id },
        ]
    }

    #[test]
    fn every_type_round_trips() {
        let all = every_type();
        let kinds: std::collections::BTreeSet<u16> = all.iter().map(|r| r.kind()).collect();
        assert_eq!(kinds.len(), 24, "a record type is missing from the test");
        for r in &all {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(decode_all(&buf).unwrap(), vec![r.clone()], "{r}");
        }
        assert_eq!(decode_all(&encode_all(&all)).unwrap(), all);
    }

    #[test]
    fn unknown_types_are_skipped() {
        let all = every_type();
        let mut buf = Vec::new();
        all[0].encode(&mut buf);
        // A record type from a newer broker.
        buf.put_u16(999);
        buf.put_u16(3);
        buf.put_u32(5);
        buf.put_slice(b"hello");
        all[1].encode(&mut buf);
        assert_eq!(
            decode_all(&buf).unwrap(),
            vec![all[0].clone(), all[1].clone()]
        );
    }

    #[test]
    fn newer_version_with_appended_fields_is_read() {
        let r = Record::TopicDeleted {
            id: Uuid::from_u128(9),
        };
        let mut buf = Vec::new();
        buf.put_u16(kind::TOPIC_DELETED);
        buf.put_u16(1);
        buf.put_u32(20);
        buf.put_slice(Uuid::from_u128(9).as_bytes());
        buf.put_u32(0xdead_beef);
        assert_eq!(decode_all(&buf).unwrap(), vec![r]);
    }

    #[test]
    fn truncated_frames_are_errors() {
        let buf = encode_all(&every_type());
        for cut in 1..buf.len() {
            let _ = decode_all(&buf[..cut]);
        }
        assert!(decode_all(&buf[..buf.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_all(&bytes);
        }

        #[test]
        fn topic_records_round_trip(name in "[a-z._-]{1,40}", leaders in proptest::collection::vec(any::<i32>(), 0..50),
                                    id in any::<u128>(), first in any::<i32>()) {
            let recs = vec![
                Record::TopicCreated { id: Uuid::from_u128(id), name, configs: BTreeMap::new() },
                Record::PartitionsAdded { topic_id: Uuid::from_u128(id), first, leaders },
            ];
            prop_assert_eq!(decode_all(&encode_all(&recs)).unwrap(), recs);
        }
    }
}
