//! The records a transaction coordinator keeps in `__transaction_state`, in
//! Kafka's layout (key v0 `(transactional id)`, value v0 `(producer id,
//! epoch, timeout, state, partitions by topic, last update, start)`), so
//! that tools reading that topic understand them. A null value is a
//! tombstone (the id expired). An id whose client uses transactions v2 is
//! stored as value v1 (flexible), whose tagged fields carry the previous and
//! next producer ids and the client's transaction version, as Kafka 4
//! stores them.
//!
//! Pure encoding: no I/O. Decoding never panics on bad bytes; it returns
//! `None`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};

use super::state::{TxnMeta, TxnState};
use crate::group::records::{get_i16, get_i32, get_i64, get_str, put_str};

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;
/// Flexible, with KIP-890's tagged fields.
const VALUE_VERSION_V2: i16 = 1;

/// The tags of value v1 (Kafka's `TransactionLogValue`).
const TAG_PREVIOUS_PRODUCER_ID: u32 = 0;
const TAG_NEXT_PRODUCER_ID: u32 = 1;
const TAG_CLIENT_TRANSACTION_VERSION: u32 = 2;

/// One decoded `__transaction_state` record; `None`: tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub transactional_id: String,
    pub meta: Option<TxnMeta>,
}

impl TxnRecord {
    pub fn key(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(4 + self.transactional_id.len());
        b.put_i16(KEY_VERSION);
        put_str(&mut b, &self.transactional_id);
        b.freeze()
    }

    pub fn value(&self) -> Option<Bytes> {
        let m = self.meta.as_ref()?;
        let flexible = m.tv2 || m.prev_producer_id >= 0 || m.next_producer_id >= 0;
        let mut b = BytesMut::with_capacity(64);
        b.put_i16(if flexible {
            VALUE_VERSION_V2
        } else {
            VALUE_VERSION
        });
        b.put_i64(m.producer_id);
        b.put_i16(m.epoch);
        b.put_i32(m.timeout_ms);
        b.put_i8(m.state as i8);
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &m.partitions {
            by_topic.entry(t).or_default().push(*p);
        }
        if flexible {
            put_uvarint(&mut b, by_topic.len() as u32 + 1);
        } else {
            b.put_i32(by_topic.len() as i32);
        }
        for (t, ps) in by_topic {
            if flexible {
                put_uvarint(&mut b, t.len() as u32 + 1);
                b.put_slice(t.as_bytes());
                put_uvarint(&mut b, ps.len() as u32 + 1);
            } else {
                put_str(&mut b, t);
                b.put_i32(ps.len() as i32);
            }
            for p in ps {
                b.put_i32(p);
            }
            if flexible {
                put_uvarint(&mut b, 0); // no tagged fields
            }
        }
        b.put_i64(m.update_ms);
        b.put_i64(m.start_ms);
        if flexible {
            let mut tags: Vec<(u32, Vec<u8>)> = Vec::new();
            if m.prev_producer_id >= 0 {
                tags.push((
                    TAG_PREVIOUS_PRODUCER_ID,
                    m.prev_producer_id.to_be_bytes().into(),
                ));
            }
            if m.next_producer_id >= 0 {
                tags.push((
                    TAG_NEXT_PRODUCER_ID,
                    m.next_producer_id.to_be_bytes().into(),
                ));
            }
            if m.tv2 {
                tags.push((TAG_CLIENT_TRANSACTION_VERSION, 2i16.to_be_bytes().into()));
            }
            put_uvarint(&mut b, tags.len() as u32);
            for (tag, value) in tags {
                put_uvarint(&mut b, tag);
                put_uvarint(&mut b, value.len() as u32);
                b.put_slice(&value);
            }
        }
        Some(b.freeze())
    }

    /// Decodes a record of `__transaction_state`; `None` if it is not one.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<TxnRecord> {
        let mut k = key;
        if get_i16(&mut k)? != KEY_VERSION {
            return None;
        }
        let transactional_id = get_str(&mut k)?;
        let meta = match value {
            None => None,
            Some(v) => Some(decode_value(v)?),
        };
        Some(TxnRecord {
            transactional_id,
            meta,
        })
    }
}

fn decode_value(mut v: &[u8]) -> Option<TxnMeta> {
    let flexible = match get_i16(&mut v)? {
        VALUE_VERSION => false,
        VALUE_VERSION_V2 => true,
        _ => return None,
    };
    let producer_id = get_i64(&mut v)?;
    let epoch = get_i16(&mut v)?;
    let timeout_ms = get_i32(&mut v)?;
    let state = TxnState::from_i8(get_i8(&mut v)?)?;
    let topics = if flexible {
        i64::from(get_uvarint(&mut v)?) - 1
    } else {
        i64::from(get_i32(&mut v)?)
    };
    let mut partitions = BTreeSet::new();
    for _ in 0..topics.max(0) {
        let (topic, n) = if flexible {
            let len = (get_uvarint(&mut v)? as usize).checked_sub(1)?;
            let name = std::str::from_utf8(v.get(..len)?).ok()?.to_string();
            v = &v[len..];
            (name, i64::from(get_uvarint(&mut v)?) - 1)
        } else {
            (get_str(&mut v)?, i64::from(get_i32(&mut v)?))
        };
        for _ in 0..n.max(0) {
            partitions.insert((topic.clone(), get_i32(&mut v)?));
        }
        if flexible {
            skip_tagged_fields(&mut v)?;
        }
    }
    let update_ms = get_i64(&mut v)?;
    let start_ms = get_i64(&mut v)?;
    let mut meta = TxnMeta {
        producer_id,
        epoch,
        last_epoch: -1,
        timeout_ms,
        state,
        partitions,
        start_ms,
        update_ms,
        tv2: false,
        prev_producer_id: -1,
        next_producer_id: -1,
    };
    if flexible {
        let n = get_uvarint(&mut v)?;
        for _ in 0..n {
            let tag = get_uvarint(&mut v)?;
            let len = get_uvarint(&mut v)? as usize;
            let mut value = v.get(..len)?;
            v = &v[len..];
            match tag {
                // Producer ids are never negative: any negative one is
                // Kafka's "none" (-1), as the encoder writes it (by leaving
                // the tag out).
                TAG_PREVIOUS_PRODUCER_ID => meta.prev_producer_id = get_i64(&mut value)?.max(-1),
                TAG_NEXT_PRODUCER_ID => meta.next_producer_id = get_i64(&mut value)?.max(-1),
                TAG_CLIENT_TRANSACTION_VERSION => meta.tv2 = get_i16(&mut value)? >= 2,
                _ => {}
            }
        }
    }
    Some(meta)
}

fn put_uvarint(b: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn get_uvarint(v: &mut &[u8]) -> Option<u32> {
    let mut out = 0u32;
    for shift in (0..35).step_by(7) {
        let b = get_i8(v)? as u8;
        out |= u32::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

fn skip_tagged_fields(v: &mut &[u8]) -> Option<()> {
    for _ in 0..get_uvarint(v)? {
        get_uvarint(v)?;
        let len = get_uvarint(v)? as usize;
        *v = v.get(len..)?;
    }
    Some(())
}

fn get_i8(v: &mut &[u8]) -> Option<i8> {
    let (&b, rest) = v.split_first()?;
    *v = rest;
    Some(b as i8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> TxnMeta {
        TxnMeta {
            producer_id: 42,
            epoch: 3,
            last_epoch: -1,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: [
                ("a".to_string(), 0),
                ("a".to_string(), 2),
                ("b".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            start_ms: 100,
            update_ms: 200,
            tv2: false,
            prev_producer_id: -1,
            next_producer_id: -1,
        }
    }

    #[test]
    fn records_round_trip() {
        let r = TxnRecord {
            transactional_id: "tx-1".into(),
            meta: Some(meta()),
        };
        let back = TxnRecord::decode(&r.key(), r.value().as_deref()).unwrap();
        assert_eq!(back, r);
        let tomb = TxnRecord {
            transactional_id: "tx-1".into(),
            meta: None,
        };
        assert_eq!(TxnRecord::decode(&tomb.key(), None).unwrap(), tomb);
    }

    #[test]
    fn v2_ids_round_trip_as_value_v1() {
        let mut m = meta();
        m.tv2 = true;
        m.prev_producer_id = 41;
        m.next_producer_id = 43;
        let r = TxnRecord {
            transactional_id: "tx-2".into(),
            meta: Some(m),
        };
        let value = r.value().unwrap();
        assert_eq!(&value[..2], &[0, 1], "value version 1");
        let back = TxnRecord::decode(&r.key(), Some(&value)).unwrap();
        assert_eq!(back, r);
    }

    /// A value v1 as Kafka 4.4's `TransactionLogValue` writes it (bytes
    /// laid out from its schema): producer 5, epoch 2, 60 s, Ongoing,
    /// topic "t" partitions [0, 3], client transaction version 2.
    #[test]
    fn reads_kafkas_value_v1() {
        let mut v = vec![0, 1];
        v.extend(5i64.to_be_bytes());
        v.extend(2i16.to_be_bytes());
        v.extend(60_000i32.to_be_bytes());
        v.push(1);
        v.extend([2, 2, b't', 3]);
        v.extend(0i32.to_be_bytes());
        v.extend(3i32.to_be_bytes());
        v.push(0);
        v.extend(200i64.to_be_bytes());
        v.extend(100i64.to_be_bytes());
        v.extend([1, 2, 2, 0, 2]);
        let mut k = BytesMut::new();
        k.put_i16(0);
        put_str(&mut k, "tx");
        let m = TxnRecord::decode(&k, Some(&v)).unwrap().meta.unwrap();
        assert_eq!((m.producer_id, m.epoch, m.state), (5, 2, TxnState::Ongoing));
        assert!(m.tv2);
        assert_eq!(m.partitions.len(), 2);
        assert_eq!((m.update_ms, m.start_ms), (200, 100));
    }

    /// Found by the coordinator_records fuzz target: a stored next producer
    /// id of -54885374190642903 came back as -1 once re-encoded. A negative
    /// id is "none" as soon as it is read.
    #[test]
    fn a_negative_producer_id_tag_reads_as_none() {
        let mut m = meta();
        m.next_producer_id = 7;
        let r = TxnRecord {
            transactional_id: "tx-3".into(),
            meta: Some(m),
        };
        let mut value = r.value().unwrap().to_vec();
        let at = value.len() - 8;
        value[at..].copy_from_slice(&(-54885374190642903i64).to_be_bytes());
        let back = TxnRecord::decode(&r.key(), Some(&value)).unwrap();
        assert_eq!(back.meta.as_ref().unwrap().next_producer_id, -1);
        let again = TxnRecord::decode(&back.key(), back.value().as_deref()).unwrap();
        assert_eq!(again, back);
    }

    #[test]
    fn a_group_record_is_not_a_transaction_record() {
        // Group keys are versions 1 and 2.
        let mut k = BytesMut::new();
        k.put_i16(2);
        put_str(&mut k, "g");
        assert!(TxnRecord::decode(&k, None).is_none());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(key in proptest::collection::vec(any::<u8>(), 0..40),
                                 value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80))) {
            let _ = TxnRecord::decode(&key, value.as_deref());
        }
    }
}
