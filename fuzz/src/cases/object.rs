//! Stream-set objects as cold reads and compaction read them: the footer,
//! the index, block checks and batch splitting.
//!
//! The first byte picks a mode: the input as a whole object; the input as
//! the tail of a larger object (the first read of a cold read); or an object
//! built from fuzzer-chosen batches and partitions, which must decode to
//! what was put in, then decode without panicking after one byte of it is
//! changed.

use super::{batch, record, Choices};
use bytes::Bytes;
use storage::object::format::{decode_object, parse_tail, BatchRef, ObjectBuilder, Tail};

/// One input, as `cargo fuzz` hands it over (and as the corpus replay does).
pub fn run(data: &[u8]) {
    let mut c = Choices::new(data);
    match c.u8() % 3 {
        0 => {
            let _ = decode_object(&Bytes::copy_from_slice(c.rest()));
        }
        1 => {
            let extra = u64::from(c.u32());
            let tail = c.rest();
            let size = tail.len() as u64 + extra;
            if let Ok(Tail::NeedFrom(from)) = parse_tail(tail, size) {
                assert!(
                    from < size - tail.len() as u64,
                    "asked to read again what it has"
                );
            }
        }
        _ => {
            let block_target = usize::from(c.u16()) + 1;
            let streams = usize::from(c.u8() % 4) + 1;
            let mut builder = ObjectBuilder::new(block_target);
            let mut put: Vec<((u8, i32), Vec<Bytes>)> = Vec::new();
            for s in 0..streams {
                let key = ([s as u8; 16], i32::from(c.u8() % 3));
                if put.iter().any(|(k, _)| *k == (s as u8, key.1)) {
                    continue;
                }
                let mut offset = i64::from(c.u16());
                let mut batches = Vec::new();
                for _ in 0..(c.u8() % 6) {
                    let n = i32::from(c.u8() % 4) + 1;
                    let value = {
                        let n = usize::from(c.u8());
                        c.bytes(n)
                    }
                    .to_vec();
                    let mut section = Vec::new();
                    for i in 0..n {
                        section.extend_from_slice(&record(i, None, Some(&value)));
                    }
                    let b = batch(offset, 0, n, &section);
                    builder.add(
                        key,
                        &BatchRef {
                            base_offset: offset,
                            last_offset: offset + i64::from(n) - 1,
                            records: n as u32,
                            max_timestamp: 1_700_000_000_000,
                            bytes: b.clone(),
                        },
                    );
                    batches.push(b);
                    offset += i64::from(n) + i64::from(c.u8() % 3);
                }
                if !batches.is_empty() {
                    put.push(((s as u8, key.1), batches));
                }
            }
            if builder.is_empty() {
                return;
            }
            let built = builder.finish();
            let whole: Vec<u8> = built.body.iter().flat_map(|b| b.iter().copied()).collect();
            let whole = Bytes::from(whole);
            let (index, blocks) = decode_object(&whole).expect("a built object decodes");
            assert_eq!(index, built.index, "index changed in a round trip");
            for (key, batches) in &put {
                let got: Vec<Bytes> = index
                    .entries
                    .iter()
                    .zip(&blocks)
                    .filter(|(e, _)| {
                        e.topic[0] == key.0 && e.topic == [key.0; 16] && e.partition == key.1
                    })
                    .flat_map(|(_, b)| b.iter().cloned())
                    .collect();
                assert_eq!(&got, batches, "batches of a stream changed");
            }
            // One changed byte: any answer but a panic.
            let at = usize::from(c.u16()) % whole.len();
            let mut bent = whole.to_vec();
            bent[at] ^= c.u8() | 1;
            let _ = decode_object(&Bytes::from(bent));
        }
    }
}
