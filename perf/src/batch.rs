//! Record batches (magic v2): building them for Produce and walking them in
//! Fetch responses.
//!
//! The builder writes records straight into one buffer, so a record costs a
//! few varints and one copy of its value; the batch header and its CRC-32C
//! (over bytes 21..) are written when the batch is sealed. Compression uses
//! kafka-protocol's codecs. The reader walks batch headers without
//! allocating and decodes records only when asked to.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
pub use kafka_protocol::records::Compression;

use crate::error::{PerfError, Result};

/// Size of the v2 batch header, up to and including the record count.
pub const HEADER_LEN: usize = 61;
/// Offset of the attributes field: the CRC covers everything from here on.
const CRC_START: usize = 21;
const CRC_OFFSET: usize = 17;
const LENGTH_OFFSET: usize = 8;
const MAGIC_OFFSET: usize = 16;
/// The batch length field counts the bytes after itself.
const LOG_OVERHEAD: usize = 12;

/// Who wrote a batch, for idempotent produce: producer id and epoch from
/// InitProducerId, and the sequence of its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub id: i64,
    pub epoch: i16,
    pub sequence: i32,
}

/// Accumulates records for one partition and seals them into a v2 batch.
#[derive(Debug)]
pub struct BatchBuilder {
    /// The encoded records, without the batch header.
    records: BytesMut,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    /// An empty batch with room for about `capacity` bytes of records.
    pub fn with_capacity(capacity: usize) -> Self {
        BatchBuilder {
            records: BytesMut::with_capacity(capacity),
            count: 0,
            base_timestamp: 0,
            max_timestamp: 0,
        }
    }

    /// Whether no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Records appended so far.
    pub fn count(&self) -> i32 {
        self.count
    }

    /// Bytes the sealed batch will take, before compression.
    pub fn size(&self) -> usize {
        HEADER_LEN + self.records.len()
    }

    /// Bytes one record with this key and value adds to the batch (at most).
    pub fn record_size_bound(key: Option<&[u8]>, value: &[u8]) -> usize {
        // length, attributes, timestamp delta, offset delta, key/value
        // lengths and the header count are each at most 10 bytes.
        5 * 10 + 1 + key.map_or(0, <[u8]>::len) + value.len()
    }

    /// Appends one record with a CreateTime timestamp in milliseconds.
    pub fn append(&mut self, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8]) {
        if self.count == 0 {
            self.base_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let ts_delta = timestamp_ms - self.base_timestamp;
        let offset_delta = i64::from(self.count);
        let key_len = key.map_or(-1, |k| k.len() as i64);
        let body_len = 1
            + varlong_len(ts_delta)
            + varlong_len(offset_delta)
            + varlong_len(key_len)
            + key.map_or(0, <[u8]>::len)
            + varlong_len(value.len() as i64)
            + value.len()
            + varlong_len(0);
        let buf = &mut self.records;
        buf.reserve(body_len + 5);
        put_varlong(buf, body_len as i64);
        buf.put_i8(0); // record attributes: unused
        put_varlong(buf, ts_delta);
        put_varlong(buf, offset_delta);
        put_varlong(buf, key_len);
        if let Some(k) = key {
            buf.put_slice(k);
        }
        put_varlong(buf, value.len() as i64);
        buf.put_slice(value);
        put_varlong(buf, 0); // no headers
        self.count += 1;
    }

    /// Seals the batch: header, optional compression of the records, CRC.
    #[cfg(test)]
    pub fn finish(self, compression: Compression) -> Result<Bytes> {
        self.finish_as(compression, None)
    }

    /// Seals the batch (header, optional compression of the records, CRC)
    /// as written by idempotent producer `producer` (or by no producer id,
    /// for `None`).
    pub fn finish_as(
        self,
        compression: Compression,
        producer: Option<ProducerStamp>,
    ) -> Result<Bytes> {
        let body = match compression {
            Compression::None => self.records,
            codec => compress(codec, &self.records)?,
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
        out.put_i64(0); // base offset: the broker assigns it
        out.put_i32((HEADER_LEN + body.len() - LOG_OVERHEAD) as i32);
        out.put_i32(-1); // partition leader epoch
        out.put_i8(2); // magic
        out.put_u32(0); // CRC, filled below
        out.put_i16(compression as i16); // attributes: codec, CreateTime
        out.put_i32(self.count - 1); // last offset delta
        out.put_i64(self.base_timestamp);
        out.put_i64(self.max_timestamp);
        let p = producer.unwrap_or(ProducerStamp {
            id: -1,
            epoch: -1,
            sequence: -1,
        });
        out.put_i64(p.id);
        out.put_i16(p.epoch);
        out.put_i32(p.sequence);
        out.put_i32(self.count);
        out.put_slice(&body);
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out.freeze())
    }
}

fn compress(codec: Compression, records: &[u8]) -> Result<BytesMut> {
    let mut out = BytesMut::with_capacity(records.len() / 2 + 64);
    let fill = |tmp: &mut BytesMut| -> anyhow::Result<()> {
        tmp.put_slice(records);
        Ok(())
    };
    let res = match codec {
        Compression::Gzip => Gzip::compress(&mut out, fill),
        Compression::Snappy => Snappy::compress(&mut out, fill),
        Compression::Lz4 => Lz4::compress(&mut out, fill),
        Compression::Zstd => Zstd::compress(&mut out, fill),
        Compression::None => return Ok(BytesMut::from(records)),
    };
    res.map_err(|e| PerfError::Encode {
        what: "compressed record batch",
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// Length in bytes of a zig-zag varint.
fn varlong_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

fn put_varlong(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn get_varlong(buf: &mut &[u8]) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

fn take<'a>(buf: &mut &'a [u8], len: i64) -> Option<Option<&'a [u8]>> {
    if len < 0 {
        return Some(None);
    }
    let len = usize::try_from(len).ok()?;
    if buf.len() < len {
        return None;
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Some(Some(head))
}

/// The header fields of one batch in a Fetch response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub record_count: i32,
    pub base_timestamp: i64,
    pub compression: Compression,
    /// Whole batch size in bytes, header included.
    pub size: usize,
}

impl BatchInfo {
    /// The offset to fetch after this batch.
    pub fn next_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta) + 1
    }
}

/// One record of a batch, borrowed from the (decompressed) batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

fn bad(reason: impl Into<String>) -> PerfError {
    PerfError::Protocol {
        addr: "record batch".to_string(),
        reason: reason.into(),
    }
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Splits a Fetch response's records into whole batches. A batch cut off
/// at the end (the broker may return a partial one) ends the walk; a batch
/// of an old magic or with a nonsensical length is an error.
pub fn split_batches(records: &Bytes) -> Result<Vec<(BatchInfo, Bytes)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while records.len() - pos >= HEADER_LEN {
        let b = &records[pos..];
        let length = be_i32(b, LENGTH_OFFSET);
        let size = usize::try_from(length)
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD))
            .filter(|&s| s >= HEADER_LEN)
            .ok_or_else(|| bad(format!("batch length {length}")))?;
        if b[MAGIC_OFFSET] != 2 {
            return Err(bad(format!(
                "record batch magic {} (want 2)",
                b[MAGIC_OFFSET]
            )));
        }
        if b.len() < size {
            break;
        }
        let attributes = i16::from_be_bytes([b[21], b[22]]);
        let compression = match attributes & 0x7 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            c => return Err(bad(format!("unknown compression codec {c}"))),
        };
        let info = BatchInfo {
            base_offset: be_i64(b, 0),
            last_offset_delta: be_i32(b, 23),
            base_timestamp: be_i64(b, 27),
            record_count: be_i32(b, 57),
            compression,
            size,
        };
        out.push((info, records.slice(pos..pos + size)));
        pos += size;
    }
    Ok(out)
}

/// Checks a batch's stored CRC-32C against its bytes.
#[cfg(test)]
pub fn crc_ok(batch: &[u8]) -> bool {
    batch.len() >= HEADER_LEN
        && u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]])
            == crc32c::crc32c(&batch[CRC_START..])
}

/// Decompresses (if needed) and walks the records of one batch.
pub fn for_each_record<F>(info: &BatchInfo, batch: &Bytes, mut f: F) -> Result<()>
where
    F: FnMut(RecordView<'_>),
{
    let mut body = batch.slice(HEADER_LEN..);
    let plain: Bytes = match info.compression {
        Compression::None => body,
        codec => decompress(codec, &mut body)?,
    };
    let mut buf: &[u8] = &plain;
    for _ in 0..info.record_count {
        let rec = parse_record(&mut buf, info).ok_or_else(|| bad("truncated record"))?;
        f(rec);
    }
    Ok(())
}

fn parse_record<'a>(buf: &mut &'a [u8], info: &BatchInfo) -> Option<RecordView<'a>> {
    let len = usize::try_from(get_varlong(buf)?).ok()?;
    if buf.len() < len {
        return None;
    }
    let (mut rec, rest) = buf.split_at(len);
    *buf = rest;
    let r = &mut rec;
    let (_attributes, tail) = r.split_first()?;
    *r = tail;
    let ts_delta = get_varlong(r)?;
    let offset_delta = get_varlong(r)?;
    let key_len = get_varlong(r)?;
    let key = take(r, key_len)?;
    let value_len = get_varlong(r)?;
    let value = take(r, value_len)?;
    Some(RecordView {
        offset: info.base_offset + offset_delta,
        timestamp: info.base_timestamp + ts_delta,
        key,
        value,
    })
}

fn decompress(codec: Compression, body: &mut Bytes) -> Result<Bytes> {
    let take_all = |b: &mut Bytes| -> anyhow::Result<Bytes> { Ok(b.split_to(b.len())) };
    let res = match codec {
        Compression::Gzip => Gzip::decompress(body, take_all),
        Compression::Snappy => Snappy::decompress(body, take_all),
        Compression::Lz4 => Lz4::decompress(body, take_all),
        Compression::Zstd => Zstd::decompress(body, take_all),
        Compression::None => Ok(body.clone()),
    };
    res.map_err(|e| bad(format!("cannot decompress {codec:?} batch: {e}")))
}

/// Parses a compression name as used by Kafka clients.
pub fn parse_compression(s: &str) -> std::result::Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(format!(
            "unknown compression '{s}' (none, gzip, snappy, lz4, zstd)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    type KeyValue = (Option<Vec<u8>>, Vec<u8>);

    fn build(n: usize, compression: Compression) -> (Bytes, Vec<KeyValue>) {
        let mut b = BatchBuilder::with_capacity(1024);
        let mut expect = Vec::new();
        for i in 0..n {
            let key = (i % 3 != 0).then(|| format!("key-{i}").into_bytes());
            let value: Vec<u8> = (0..(i * 37 % 300)).map(|j| (i + j) as u8).collect();
            b.append(1_700_000_000_000 + i as i64 * 7, key.as_deref(), &value);
            expect.push((key, value));
        }
        (b.finish(compression).unwrap(), expect)
    }

    fn decode_with_kafka_protocol(batch: &Bytes) -> kafka_protocol::records::RecordSet {
        let mut buf = batch.clone();
        RecordBatchDecoder::decode_with_custom_compression(
            &mut buf,
            None::<fn(&mut Bytes, Compression) -> anyhow::Result<Bytes>>,
        )
        .unwrap()
    }

    #[test]
    fn round_trips_through_kafka_protocol_decoder() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let (batch, expect) = build(50, codec);
            assert!(crc_ok(&batch), "{codec:?}: CRC-32C over bytes 21..");
            let set = decode_with_kafka_protocol(&batch);
            assert_eq!(set.compression, codec);
            assert_eq!(set.records.len(), expect.len());
            for (i, (rec, (key, value))) in set.records.iter().zip(&expect).enumerate() {
                assert_eq!(rec.offset, i as i64);
                assert_eq!(rec.timestamp, 1_700_000_000_000 + i as i64 * 7);
                assert_eq!(rec.key.as_deref(), key.as_deref());
                assert_eq!(rec.value.as_deref(), Some(&value[..]));
                assert!(rec.headers.is_empty());
            }
        }
    }

    #[test]
    fn storage_batch_validator_accepts_what_we_build() {
        for codec in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let (batch, _) = build(40, codec);
            let valid = storage::batch::validate_batches(&batch, 1 << 20).unwrap();
            assert_eq!(valid.len(), 1);
            let h = valid[0].header;
            assert_eq!(h.records_count, 40);
            assert_eq!(h.last_offset_delta, 39);
            assert_eq!(h.compression(), codec as i16);
            assert_eq!(h.base_timestamp, 1_700_000_000_000);
            assert_eq!(h.max_timestamp, 1_700_000_000_000 + 39 * 7);
            assert_eq!((h.producer_id, h.base_sequence), (-1, -1));
            assert_eq!(h.total_len(), batch.len());
        }
    }

    #[test]
    fn idempotent_batches_carry_producer_and_sequence() {
        let mut b = BatchBuilder::with_capacity(64);
        b.append(5, None, b"v");
        b.append(6, None, b"w");
        let stamp = ProducerStamp {
            id: 77,
            epoch: 3,
            sequence: 10,
        };
        let bytes = b.finish_as(Compression::None, Some(stamp)).unwrap();
        let h = storage::batch::validate_batches(&bytes, 1 << 20).unwrap()[0].header;
        assert_eq!(
            (
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.records_count
            ),
            (77, 3, 10, 2)
        );
    }

    #[test]
    fn header_fields_match_the_v2_layout() {
        let (batch, _) = build(3, Compression::None);
        assert_eq!(be_i32(&batch, LENGTH_OFFSET) as usize, batch.len() - 12);
        assert_eq!(batch[MAGIC_OFFSET], 2);
        assert_eq!(be_i32(&batch, 23), 2, "last offset delta");
        assert_eq!(be_i64(&batch, 27), 1_700_000_000_000);
        assert_eq!(be_i64(&batch, 35), 1_700_000_000_014, "max timestamp");
        assert_eq!(be_i64(&batch, 43), -1, "producer id");
        assert_eq!(be_i32(&batch, 57), 3, "record count");
        let mut flipped = batch.to_vec();
        flipped[70] ^= 1;
        assert!(!crc_ok(&flipped));
    }

    #[test]
    fn reader_walks_what_builder_wrote_and_stops_at_partial_batch() {
        for codec in [Compression::None, Compression::Lz4] {
            let (a, expect) = build(10, codec);
            let (b, _) = build(4, codec);
            let mut joined = BytesMut::new();
            joined.extend_from_slice(&a);
            joined.extend_from_slice(&b);
            joined.extend_from_slice(&b[..b.len() - 1]);
            let joined = joined.freeze();
            let batches = split_batches(&joined).unwrap();
            assert_eq!(batches.len(), 2);
            assert_eq!(batches[0].0.record_count, 10);
            assert_eq!(batches[0].0.next_offset(), 10);
            let mut seen = Vec::new();
            for_each_record(&batches[0].0, &batches[0].1, |r| {
                seen.push((
                    r.key.map(<[u8]>::to_vec),
                    r.value.unwrap_or_default().to_vec(),
                ))
            })
            .unwrap();
            assert_eq!(seen, expect);
        }
    }

    #[test]
    fn reader_rejects_garbage_without_panicking() {
        let mut junk = vec![0u8; 80];
        junk[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(split_batches(&Bytes::from(junk.clone())).is_err());
        junk[8..12].copy_from_slice(&68i32.to_be_bytes());
        junk[16] = 1;
        assert!(split_batches(&Bytes::from(junk.clone())).is_err());
        junk[16] = 2;
        junk[57..61].copy_from_slice(&5i32.to_be_bytes());
        let batches = split_batches(&Bytes::from(junk)).unwrap();
        assert!(for_each_record(&batches[0].0, &batches[0].1, |_| {}).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_varlong(&mut b, v);
            assert_eq!(b.len(), varlong_len(v));
            let mut s: &[u8] = &b;
            assert_eq!(get_varlong(&mut s), Some(v));
        }
    }
}
