//! The records the group and transaction coordinators replay when they load
//! a `__consumer_offsets` or `__transaction_state` partition: a whole batch
//! as the log holds it (any bytes, or one well-formed batch around fuzzed
//! keys and values), or one key and value. Nothing may panic, and a record
//! that decodes must encode to bytes that decode to the same record.

use super::Choices;
use broker::group::records::{decode_batches, decode_kv_batches, GroupRecord};
use broker::txn::records::TxnRecord;
use bytes::Bytes;

fn group_record(key: &[u8], value: Option<&[u8]>) {
    if let Some(r) = GroupRecord::decode(key, value) {
        let again = GroupRecord::decode(&r.key(), r.value().as_deref());
        assert_eq!(
            again.as_ref(),
            Some(&r),
            "group record changed in a round trip"
        );
    }
}

fn txn_record(key: &[u8], value: Option<&[u8]>) {
    if let Some(r) = TxnRecord::decode(key, value) {
        let again = TxnRecord::decode(&r.key(), r.value().as_deref());
        assert_eq!(
            again.as_ref(),
            Some(&r),
            "transaction record changed in a round trip"
        );
    }
}

fn replay(batches: Bytes) {
    let _ = decode_batches(batches.clone());
    if let Ok(kvs) = decode_kv_batches(batches) {
        for (k, v) in kvs {
            group_record(&k, v.as_deref());
            txn_record(&k, v.as_deref());
        }
    }
}

/// One input, as `cargo fuzz` hands it over (and as the corpus replay does).
pub fn run(data: &[u8]) {
    let mut c = Choices::new(data);
    match c.u8() % 3 {
        0 => replay(Bytes::copy_from_slice(c.rest())),
        1 => {
            // Up to 4 records with fuzzed keys and values in a valid batch.
            let n = 1 + (c.u8() % 4) as i32;
            let mut section = Vec::new();
            for i in 0..n {
                let klen = c.u8() as usize;
                let key = c.bytes(klen).to_vec();
                let value = if c.u8().is_multiple_of(4) {
                    None
                } else {
                    let vlen = c.u16() as usize;
                    Some(c.bytes(vlen).to_vec())
                };
                section.extend(super::record(i, Some(&key), value.as_deref()));
            }
            replay(super::batch(0, 0, n, &section));
        }
        _ => {
            let klen = c.u8() as usize;
            let key = c.bytes(klen);
            let tombstone = c.u8().is_multiple_of(4);
            let value = c.rest();
            let value = (!tombstone).then_some(value);
            group_record(key, value);
            txn_record(key, value);
        }
    }
}
