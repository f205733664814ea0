//! The fuzz targets' bodies, one module each (`run(data)`), and the helpers
//! they share: a cursor that takes fuzzer bytes as choices, and a builder of
//! well-formed record batches so that targets can get past CRCs to the code
//! behind them.
//!
//! Compiled twice: into the `fuzz` crate, whose `fuzz_targets/` hand each
//! body to libFuzzer (`scripts/fuzz`), and into `broker/tests/fuzz_corpus.rs`,
//! which replays every stored corpus input in the unit tests. Plain
//! synchronous code on the test's thread; it needs no shard.

pub mod coordinator_records;
pub mod frame;
pub mod metadata;
pub mod object;
pub mod record_batch;
pub mod request;
pub mod sasl;
pub mod wal_recovery;

use bytes::{BufMut, Bytes, BytesMut};

/// Fuzzer bytes read as a stream of choices; once they run out every read
/// gives zero, so a target never has to handle "not enough input".
pub struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Choices { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer when the input ends).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Kafka's zigzag varint, as records encode lengths and deltas.
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// One record as a v2 batch encodes it: `None` key or value is null.
pub fn record(offset_delta: i32, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![0u8]; // attributes
    put_varint(&mut body, 0); // timestamp delta
    put_varint(&mut body, i64::from(offset_delta));
    for field in [key, value] {
        match field {
            Some(b) => {
                put_varint(&mut body, b.len() as i64);
                body.extend_from_slice(b);
            }
            None => put_varint(&mut body, -1),
        }
    }
    put_varint(&mut body, 0); // headers
    let mut out = Vec::with_capacity(body.len() + 5);
    put_varint(&mut out, body.len() as i64);
    out.extend_from_slice(&body);
    out
}

/// A v2 batch around an already encoded (and maybe compressed) records
/// section, with a correct CRC-32C. `attributes` carries the codec.
pub fn batch(base_offset: i64, attributes: i16, count: i32, section: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(61 + section.len());
    b.put_i64(base_offset);
    b.put_i32((49 + section.len()) as i32); // batch length: from epoch on
    b.put_i32(0); // partition leader epoch
    b.put_i8(2); // magic
    b.put_u32(0); // CRC, set below
    b.put_i16(attributes);
    b.put_i32(count.saturating_sub(1).max(0)); // last offset delta
    b.put_i64(1_700_000_000_000); // base timestamp
    b.put_i64(1_700_000_000_000); // max timestamp
    b.put_i64(-1); // producer id
    b.put_i16(-1); // producer epoch
    b.put_i32(-1); // base sequence
    b.put_i32(count);
    b.put_slice(section);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}
