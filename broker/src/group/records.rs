//! The records a group coordinator keeps in `__consumer_offsets`, in Kafka's
//! own layout so that tools which read that topic understand them:
//!
//! * offset commit: key v1 `(group, topic, partition)`, value v3
//!   `(offset, leader_epoch, metadata, commit_timestamp)`;
//! * group metadata: key v2 `(group)`, value v3 (protocol type, generation,
//!   protocol, leader, members with their subscriptions and assignments);
//! * consumer (KIP-848) group metadata: key v3 `(group)`, value v0
//!   (`epoch`, flexible: a trailing empty tag buffer). Only the group's
//!   type and epoch are kept; its members rejoin after a coordinator change.
//! * share and streams group metadata: Kafka's `ShareGroupMetadataKey`
//!   (11) and `StreamsGroupMetadataKey` (17), their epoch likewise (the
//!   streams value's metadata hash is written as 0: members rejoin and
//!   send their topology again).
//!
//! A null value is a tombstone (offset or group deleted), so compaction can
//! later keep only the latest record of each key. Pure encoding: no I/O.
//! Decoding never panics on bad bytes; it returns `None`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Key version of an offset commit record.
const OFFSET_KEY_VERSION: i16 = 1;
/// Key version of a group metadata record.
const GROUP_KEY_VERSION: i16 = 2;
/// Key version of a consumer (KIP-848) group metadata record.
const CONSUMER_GROUP_KEY_VERSION: i16 = 3;
/// Key version of a share group's metadata record (Kafka's
/// `ShareGroupMetadataKey`): value v0 is its epoch, as for key v3.
const SHARE_GROUP_KEY_VERSION: i16 = 11;
/// Key version of a streams group's metadata record (Kafka's
/// `StreamsGroupMetadataKey`): value v0 is its epoch and metadata hash.
const STREAMS_GROUP_KEY_VERSION: i16 = 17;
/// Key version of a share-partition's state (SPSO and record states). Kafka
/// keeps these in `__share_group_state`; we keep them with the group, under
/// a key version Kafka does not use.
const SHARE_STATE_KEY_VERSION: i16 = 1000;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

/// One member as stored in a group metadata record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group as stored after each completed rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<StoredMember>,
}

/// A decoded `__consumer_offsets` record; `None` values are tombstones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
    Group {
        group: String,
        value: Option<GroupValue>,
    },
    /// A consumer-protocol group and its epoch.
    ConsumerGroup { group: String, epoch: Option<i32> },
    /// A share group and its epoch.
    ShareGroup { group: String, epoch: Option<i32> },
    /// A streams group and its epoch.
    StreamsGroup { group: String, epoch: Option<i32> },
    /// A share-partition's state, written by the partition's leader.
    ShareState {
        group: String,
        topic_id: uuid::Uuid,
        partition: i32,
        value: Option<ShareStateValue>,
    },
}

/// A share-partition's persisted state: its start offset and the states
/// of the records in flight above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareStateValue {
    /// Bumped when an admin resets the start offset: a leader holding an
    /// older epoch is fenced and reloads.
    pub state_epoch: i32,
    pub leader_epoch: i32,
    pub start_offset: i64,
    pub batches: Vec<crate::share::partition::StateBatch>,
}

/// Bytes of one stored state batch.
const STATE_BATCH_BYTES: usize = 8 + 8 + 1 + 2;

impl GroupRecord {
    pub fn key(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                ..
            } => {
                b.put_i16(OFFSET_KEY_VERSION);
                put_str(&mut b, group);
                put_str(&mut b, topic);
                b.put_i32(*partition);
            }
            GroupRecord::Group { group, .. } => {
                b.put_i16(GROUP_KEY_VERSION);
                put_str(&mut b, group);
            }
            GroupRecord::ConsumerGroup { group, .. } => {
                b.put_i16(CONSUMER_GROUP_KEY_VERSION);
                put_str(&mut b, group);
            }
            GroupRecord::ShareGroup { group, .. } => {
                b.put_i16(SHARE_GROUP_KEY_VERSION);
                put_str(&mut b, group);
            }
            GroupRecord::StreamsGroup { group, .. } => {
                b.put_i16(STREAMS_GROUP_KEY_VERSION);
                put_str(&mut b, group);
            }
            GroupRecord::ShareState {
                group,
                topic_id,
                partition,
                ..
            } => {
                b.put_i16(SHARE_STATE_KEY_VERSION);
                put_str(&mut b, group);
                b.put_slice(topic_id.as_bytes());
                b.put_i32(*partition);
            }
        }
        b.freeze()
    }

    pub fn value(&self) -> Option<Bytes> {
        let mut b = BytesMut::new();
        match self {
            GroupRecord::Offset { value, .. } => {
                let v = value.as_ref()?;
                b.put_i16(OFFSET_VALUE_VERSION);
                b.put_i64(v.offset);
                b.put_i32(v.leader_epoch);
                put_str(&mut b, &v.metadata);
                b.put_i64(v.commit_timestamp);
            }
            GroupRecord::Group { value, .. } => {
                let v = value.as_ref()?;
                b.put_i16(GROUP_VALUE_VERSION);
                put_str(&mut b, &v.protocol_type);
                b.put_i32(v.generation);
                put_nullable_str(&mut b, v.protocol.as_deref());
                put_nullable_str(&mut b, v.leader.as_deref());
                b.put_i64(v.state_timestamp);
                b.put_i32(v.members.len() as i32);
                for m in &v.members {
                    put_str(&mut b, &m.member_id);
                    put_nullable_str(&mut b, m.instance_id.as_deref());
                    put_str(&mut b, &m.client_id);
                    put_str(&mut b, &m.client_host);
                    b.put_i32(m.rebalance_timeout_ms);
                    b.put_i32(m.session_timeout_ms);
                    put_bytes(&mut b, &m.subscription);
                    put_bytes(&mut b, &m.assignment);
                }
            }
            GroupRecord::ConsumerGroup { epoch, .. } | GroupRecord::ShareGroup { epoch, .. } => {
                b.put_i16(0);
                b.put_i32((*epoch)?);
                b.put_u8(0); // no tagged fields
            }
            GroupRecord::StreamsGroup { epoch, .. } => {
                b.put_i16(0);
                b.put_i32((*epoch)?);
                b.put_i64(0); // metadata hash
                b.put_u8(0); // no tagged fields
            }
            GroupRecord::ShareState { value, .. } => {
                let v = value.as_ref()?;
                b.put_i16(0);
                b.put_i32(v.state_epoch);
                b.put_i32(v.leader_epoch);
                b.put_i64(v.start_offset);
                b.put_i32(v.batches.len() as i32);
                for s in &v.batches {
                    b.put_i64(s.first);
                    b.put_i64(s.last);
                    b.put_i8(s.state);
                    b.put_i16(s.delivery_count);
                }
            }
        }
        Some(b.freeze())
    }

    /// Decodes one record's key and value; `None` for anything we do not
    /// understand (newer versions, garbage), which replay skips.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<GroupRecord> {
        let mut k = key;
        let version = get_i16(&mut k)?;
        match version {
            0 | 1 => {
                let group = get_str(&mut k)?;
                let topic = get_str(&mut k)?;
                let partition = get_i32(&mut k)?;
                let value = match value {
                    None => None,
                    Some(v) => Some(decode_offset_value(v)?),
                };
                Some(GroupRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            2 => {
                let group = get_str(&mut k)?;
                let value = match value {
                    None => None,
                    Some(v) => Some(decode_group_value(v)?),
                };
                Some(GroupRecord::Group { group, value })
            }
            CONSUMER_GROUP_KEY_VERSION | SHARE_GROUP_KEY_VERSION | STREAMS_GROUP_KEY_VERSION => {
                let group = get_str(&mut k)?;
                // Value v0 starts with the epoch (a null value is a
                // tombstone); what follows it is not kept.
                let epoch = match value {
                    None => None,
                    Some(mut v) => {
                        get_i16(&mut v)?;
                        Some(get_i32(&mut v)?)
                    }
                };
                Some(match version {
                    SHARE_GROUP_KEY_VERSION => GroupRecord::ShareGroup { group, epoch },
                    STREAMS_GROUP_KEY_VERSION => GroupRecord::StreamsGroup { group, epoch },
                    _ => GroupRecord::ConsumerGroup { group, epoch },
                })
            }
            SHARE_STATE_KEY_VERSION => {
                let group = get_str(&mut k)?;
                if k.len() < 16 {
                    return None;
                }
                let topic_id = uuid::Uuid::from_slice(&k[..16]).ok()?;
                k = &k[16..];
                let partition = get_i32(&mut k)?;
                let value = match value {
                    None => None,
                    Some(v) => Some(decode_share_state(v)?),
                };
                Some(GroupRecord::ShareState {
                    group,
                    topic_id,
                    partition,
                    value,
                })
            }
            _ => None,
        }
    }
}

fn decode_share_state(mut v: &[u8]) -> Option<ShareStateValue> {
    if get_i16(&mut v)? != 0 {
        return None;
    }
    let state_epoch = get_i32(&mut v)?;
    let leader_epoch = get_i32(&mut v)?;
    let start_offset = get_i64(&mut v)?;
    let count = usize::try_from(get_i32(&mut v)?).ok()?;
    // The count is checked against the bytes there before anything is
    // allocated for it.
    if count.checked_mul(STATE_BATCH_BYTES)? > v.len() {
        return None;
    }
    let mut batches = Vec::with_capacity(count);
    for _ in 0..count {
        let first = get_i64(&mut v)?;
        let last = get_i64(&mut v)?;
        let state = *v.first()? as i8;
        v = &v[1..];
        let delivery_count = get_i16(&mut v)?;
        batches.push(crate::share::partition::StateBatch {
            first,
            last,
            state,
            delivery_count,
        });
    }
    Some(ShareStateValue {
        state_epoch,
        leader_epoch,
        start_offset,
        batches,
    })
}

fn decode_offset_value(mut v: &[u8]) -> Option<OffsetValue> {
    let version = get_i16(&mut v)?;
    let offset = get_i64(&mut v)?;
    let leader_epoch = if version >= 3 { get_i32(&mut v)? } else { -1 };
    let metadata = get_str(&mut v)?;
    let commit_timestamp = get_i64(&mut v)?;
    Some(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
    })
}

fn decode_group_value(mut v: &[u8]) -> Option<GroupValue> {
    let version = get_i16(&mut v)?;
    if !(0..=3).contains(&version) {
        return None;
    }
    let protocol_type = get_str(&mut v)?;
    let generation = get_i32(&mut v)?;
    let protocol = get_nullable_str(&mut v)?;
    let leader = get_nullable_str(&mut v)?;
    let state_timestamp = if version >= 2 { get_i64(&mut v)? } else { -1 };
    let count = get_i32(&mut v)?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        let member_id = get_str(&mut v)?;
        let instance_id = if version >= 3 {
            get_nullable_str(&mut v)?
        } else {
            None
        };
        let client_id = get_str(&mut v)?;
        let client_host = get_str(&mut v)?;
        let rebalance_timeout_ms = if version >= 1 { get_i32(&mut v)? } else { -1 };
        let session_timeout_ms = get_i32(&mut v)?;
        let subscription = get_bytes(&mut v)?;
        let assignment = get_bytes(&mut v)?;
        members.push(StoredMember {
            member_id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Some(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

/// Encodes records as one uncompressed v2 batch (offsets are assigned by
/// the partition log on append).
pub fn encode_batch(records: &[GroupRecord], now_ms: i64) -> Result<Bytes, String> {
    let pairs: Vec<(Bytes, Option<Bytes>)> = records.iter().map(|r| (r.key(), r.value())).collect();
    encode_kv_batch(&pairs, now_ms, None)
}

/// Encodes key/value records as one uncompressed v2 batch; with a producer
/// `(id, epoch)` the batch is transactional (offsets committed inside a
/// transaction, visible once its commit marker follows).
pub fn encode_kv_batch(
    records: &[(Bytes, Option<Bytes>)],
    now_ms: i64,
    txn_producer: Option<(i64, i16)>,
) -> Result<Bytes, String> {
    let (producer_id, producer_epoch) = txn_producer.unwrap_or((-1, -1));
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: txn_producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now_ms,
            key: Some(k.clone()),
            value: v.clone(),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, recs.iter(), &options).map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Decodes every record of the batches in `bytes` (as read from the log),
/// skipping records that are not ours.
pub fn decode_batches(bytes: Bytes) -> Result<Vec<GroupRecord>, String> {
    Ok(decode_kv_batches(bytes)?
        .into_iter()
        .filter_map(|(k, v)| GroupRecord::decode(&k, v.as_deref()))
        .collect())
}

/// The keyed records of the batches in `bytes`, control records left out.
pub fn decode_kv_batches(bytes: Bytes) -> Result<Vec<(Bytes, Option<Bytes>)>, String> {
    let mut buf = bytes;
    let mut out = Vec::new();
    while buf.has_remaining() {
        let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| e.to_string())?;
        for r in set.records {
            if r.control {
                continue;
            }
            let Some(key) = r.key else { continue };
            out.push((key, r.value));
        }
    }
    Ok(out)
}

pub(crate) fn put_str(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len().min(i16::MAX as usize) as i16);
    b.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_nullable_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

pub(crate) fn get_i16(b: &mut &[u8]) -> Option<i16> {
    (b.len() >= 2).then(|| b.get_i16())
}

pub(crate) fn get_i32(b: &mut &[u8]) -> Option<i32> {
    (b.len() >= 4).then(|| b.get_i32())
}

pub(crate) fn get_i64(b: &mut &[u8]) -> Option<i64> {
    (b.len() >= 8).then(|| b.get_i64())
}

pub(crate) fn get_nullable_str(b: &mut &[u8]) -> Option<Option<String>> {
    let len = get_i16(b)?;
    if len < 0 {
        return Some(None);
    }
    let len = len as usize;
    if b.len() < len {
        return None;
    }
    let s = String::from_utf8(b[..len].to_vec()).ok()?;
    b.advance(len);
    Some(Some(s))
}

pub(crate) fn get_str(b: &mut &[u8]) -> Option<String> {
    get_nullable_str(b).map(Option::unwrap_or_default)
}

fn get_bytes(b: &mut &[u8]) -> Option<Bytes> {
    let len = get_i32(b)?;
    if len < 0 {
        return Some(Bytes::new());
    }
    let len = len as usize;
    if b.len() < len {
        return None;
    }
    let v = Bytes::copy_from_slice(&b[..len]);
    b.advance(len);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<GroupRecord> {
        vec![
            GroupRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: Some(OffsetValue {
                    offset: 42,
                    leader_epoch: -1,
                    metadata: "meta".into(),
                    commit_timestamp: 7,
                }),
            },
            GroupRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 4,
                value: None,
            },
            GroupRecord::Group {
                group: "g".into(),
                value: Some(GroupValue {
                    protocol_type: "consumer".into(),
                    generation: 5,
                    protocol: Some("range".into()),
                    leader: Some("m1".into()),
                    state_timestamp: 9,
                    members: vec![StoredMember {
                        member_id: "m1".into(),
                        instance_id: Some("i1".into()),
                        client_id: "c".into(),
                        client_host: "/127.0.0.1".into(),
                        rebalance_timeout_ms: 1000,
                        session_timeout_ms: 500,
                        subscription: Bytes::from_static(b"sub"),
                        assignment: Bytes::from_static(b"asg"),
                    }],
                }),
            },
            GroupRecord::Group {
                group: "h".into(),
                value: None,
            },
            GroupRecord::ConsumerGroup {
                group: "k".into(),
                epoch: Some(12),
            },
            GroupRecord::ShareGroup {
                group: "s".into(),
                epoch: Some(3),
            },
            GroupRecord::ShareGroup {
                group: "s2".into(),
                epoch: None,
            },
            GroupRecord::ShareState {
                group: "s".into(),
                topic_id: uuid::Uuid::from_u128(99),
                partition: 2,
                value: Some(ShareStateValue {
                    state_epoch: 1,
                    leader_epoch: 4,
                    start_offset: 100,
                    batches: vec![crate::share::partition::StateBatch {
                        first: 100,
                        last: 104,
                        state: 2,
                        delivery_count: 1,
                    }],
                }),
            },
            GroupRecord::ShareState {
                group: "s".into(),
                topic_id: uuid::Uuid::from_u128(99),
                partition: 3,
                value: None,
            },
            GroupRecord::ConsumerGroup {
                group: "k".into(),
                epoch: None,
            },
            GroupRecord::StreamsGroup {
                group: "wc".into(),
                epoch: Some(7),
            },
            GroupRecord::StreamsGroup {
                group: "wc".into(),
                epoch: None,
            },
        ]
    }

    #[test]
    fn round_trip_through_a_batch() {
        let recs = sample();
        let batch = encode_batch(&recs, 1000).unwrap();
        storage::batch::validate_batches(&batch, 1 << 20).unwrap();
        assert_eq!(decode_batches(batch).unwrap(), recs);
    }

    #[test]
    fn a_batch_claiming_billions_of_records_is_refused_without_allocating_them() {
        // Found by fuzz/fuzz_targets/coordinator_records.rs: a valid batch
        // (CRC and all) whose record count says i32::MAX made the decoder
        // reserve 14 GB.
        let mut b = encode_batch(&sample(), 1000).unwrap().to_vec();
        b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(decode_batches(Bytes::from(b)).is_err());
    }

    #[test]
    fn garbage_is_skipped_not_a_panic() {
        assert_eq!(GroupRecord::decode(&[0, 9, 1], None), None);
        assert_eq!(GroupRecord::decode(&[0, 1, 0, 5, b'a'], Some(&[1])), None);
        assert_eq!(GroupRecord::decode(&[], None), None);
        let key = sample()[2].key();
        assert_eq!(GroupRecord::decode(&key, Some(&[0, 3, 0, 200])), None);
    }
}
