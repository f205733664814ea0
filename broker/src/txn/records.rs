//! The records a transaction coordinator keeps in `__transaction_state`, in
//! Kafka's layout (key v0 `(transactional id)`, value v0 `(producer id,
//! epoch, timeout, state, partitions by topic, last update, start)`), so
//! that tools reading that topic understand them. A null value is a
//! tombstone (the id expired).
//!
//! Pure encoding: no I/O. Decoding never panics on bad bytes; it returns
//! `None`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};

use super::state::{TxnMeta, TxnState};
use crate::group::records::{get_i16, get_i32, get_i64, get_str, put_str};

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

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
        let mut b = BytesMut::with_capacity(64);
        b.put_i16(VALUE_VERSION);
        b.put_i64(m.producer_id);
        b.put_i16(m.epoch);
        b.put_i32(m.timeout_ms);
        b.put_i8(m.state as i8);
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &m.partitions {
            by_topic.entry(t).or_default().push(*p);
        }
        b.put_i32(by_topic.len() as i32);
        for (t, ps) in by_topic {
            put_str(&mut b, t);
            b.put_i32(ps.len() as i32);
            for p in ps {
                b.put_i32(p);
            }
        }
        b.put_i64(m.update_ms);
        b.put_i64(m.start_ms);
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
    if get_i16(&mut v)? != VALUE_VERSION {
        return None;
    }
    let producer_id = get_i64(&mut v)?;
    let epoch = get_i16(&mut v)?;
    let timeout_ms = get_i32(&mut v)?;
    let state = TxnState::from_i8(get_i8(&mut v)?)?;
    let topics = get_i32(&mut v)?;
    let mut partitions = BTreeSet::new();
    for _ in 0..topics.max(0) {
        let topic = get_str(&mut v)?;
        let n = get_i32(&mut v)?;
        for _ in 0..n.max(0) {
            partitions.insert((topic.clone(), get_i32(&mut v)?));
        }
    }
    let update_ms = get_i64(&mut v)?;
    let start_ms = get_i64(&mut v)?;
    Some(TxnMeta {
        producer_id,
        epoch,
        last_epoch: -1,
        timeout_ms,
        state,
        partitions,
        start_ms,
        update_ms,
    })
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
