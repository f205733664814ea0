//! The records inside a v2 batch: iteration over their keys, offsets and
//! timestamps (decompressing within a bound), and rebuilding a batch that
//! keeps only some of them, as Kafka's log cleaner does: the batch keeps
//! its base offset, last offset delta, producer fields and codec, so the
//! kept records keep their offsets and a compacted partition has gaps.
//!
//! Pure functions over byte slices, run on the shard that owns the
//! partition (the log cleaner, record checks on produce to compacted
//! topics). Never allocate beyond `limit` for a decompressed payload.

use bytes::{Bytes, BytesMut};

use crate::batch::{
    parse_header, read_varint, take, BatchError, BatchHeader, CRC_START, HEADER_LEN,
};
use crate::codec;

/// The most a batch's records may decompress to wherever the broker looks
/// inside them (log compaction, keys on compacted topics, offsets by
/// timestamp); a batch beyond it is refused or kept whole, never expanded.
pub const MAX_EXPANDED_BATCH: usize = 64 << 20;

/// One record of a batch, borrowed from the (decompressed) records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// The whole record, its length prefix included, as it is encoded.
    pub raw: &'a [u8],
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone in a compacted topic.
    pub tombstone: bool,
}

/// The records section of `batch` (after the 61-byte header), decompressed
/// when the batch is, failing beyond `limit` bytes.
pub fn records_section(batch: &[u8], h: &BatchHeader, limit: usize) -> Result<Vec<u8>, BatchError> {
    let end = h.total_len().min(batch.len());
    let body = batch
        .get(HEADER_LEN..end)
        .ok_or_else(|| BatchError::Corrupt("batch shorter than its header".into()))?;
    codec::decompress(h.compression(), body, limit).map_err(|e| match e {
        codec::CodecError::TooLarge(n) => {
            BatchError::Invalid(format!("records decompress to more than {n} bytes"))
        }
        other => BatchError::Corrupt(other.to_string()),
    })
}

/// Parses the `count` records of a records section.
pub fn parse_records(mut section: &[u8], count: i32) -> Result<Vec<RawRecord<'_>>, BatchError> {
    let bad = |what: &str| BatchError::Corrupt(format!("record {what}"));
    let mut out = Vec::with_capacity((count.max(0) as usize).min(section.len() / 7 + 1));
    for _ in 0..count.max(0) {
        let whole = section;
        let len = read_varint(&mut section).ok_or_else(|| bad("length"))?;
        let prefix = whole.len() - section.len();
        let len = usize::try_from(len).map_err(|_| bad("length is negative"))?;
        let mut r = take(&mut section, len).ok_or_else(|| bad("runs past the batch"))?;
        let raw = &whole[..prefix + len];
        take(&mut r, 1).ok_or_else(|| bad("attributes"))?;
        let timestamp_delta = read_varint(&mut r).ok_or_else(|| bad("timestamp"))?;
        let offset_delta = read_varint(&mut r).ok_or_else(|| bad("offset delta"))?;
        let offset_delta = i32::try_from(offset_delta).map_err(|_| bad("offset delta"))?;
        let key_len = read_varint(&mut r).ok_or_else(|| bad("key length"))?;
        let key = if key_len < 0 {
            None
        } else {
            Some(take(&mut r, key_len as usize).ok_or_else(|| bad("key"))?)
        };
        let value_len = read_varint(&mut r).ok_or_else(|| bad("value length"))?;
        if value_len >= 0 {
            take(&mut r, value_len as usize).ok_or_else(|| bad("value"))?;
        }
        out.push(RawRecord {
            raw,
            offset_delta,
            timestamp_delta,
            key,
            tombstone: value_len < 0,
        });
    }
    Ok(out)
}

/// Whether every record of `batch` has a key (compacted topics refuse
/// keyless records). Control batches pass.
pub fn all_records_keyed(batch: &[u8], limit: usize) -> Result<bool, BatchError> {
    let h = parse_header(batch)?;
    if h.is_control() {
        return Ok(true);
    }
    let section = records_section(batch, &h, limit)?;
    Ok(parse_records(&section, h.records_count)?
        .iter()
        .all(|r| r.key.is_some()))
}

/// `batch` with only the records in `kept` (raw encodings, in order, taken
/// from its own records section). Base offset, last offset delta,
/// timestamps, producer fields and codec stay; the count, length and CRC
/// are new. With nothing kept the batch is empty and uncompressed, as
/// Kafka keeps an empty batch to hold its offsets.
pub fn rebuild(batch: &[u8], h: &BatchHeader, kept: &[&[u8]]) -> Result<Bytes, BatchError> {
    let mut plain = Vec::with_capacity(kept.iter().map(|r| r.len()).sum());
    for r in kept {
        plain.extend_from_slice(r);
    }
    let codec = if kept.is_empty() {
        codec::NONE
    } else {
        h.compression()
    };
    let body = codec::compress(codec, &plain).map_err(|e| BatchError::Corrupt(e.to_string()))?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(
        batch
            .get(..HEADER_LEN)
            .ok_or_else(|| BatchError::Corrupt("batch shorter than its header".into()))?,
    );
    out.extend_from_slice(&body);
    let batch_length = (out.len() - crate::batch::LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = (h.attributes & !0x7) | codec;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_batches;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn batch(compression: Compression, keys: &[Option<&str>]) -> Bytes {
        let recs: Vec<Record> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: 7,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: 100 + i as i64,
                sequence: i as i32,
                timestamp: 1000 + i as i64,
                key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                value: (i % 3 != 2).then(|| Bytes::from(format!("value-{i}"))),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            recs.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn keeps_some_records_with_their_offsets_in_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(c, &[Some("a"), Some("b"), Some("c"), None, Some("a")]);
            let h = parse_header(&b).unwrap();
            let section = records_section(&b, &h, 1 << 20).unwrap();
            let recs = parse_records(&section, h.records_count).unwrap();
            assert_eq!(recs.len(), 5);
            assert_eq!(recs[2].key, Some(&b"c"[..]));
            assert!(recs[2].tombstone);
            assert_eq!(recs[3].key, None);
            let kept: Vec<&[u8]> = [1, 4].iter().map(|&i| recs[i].raw).collect();
            let out = rebuild(&b, &h, &kept).unwrap();
            // The broker's own validation accepts it (length, count, CRC).
            validate_batches(&out, 1 << 20).unwrap();
            let nh = parse_header(&out).unwrap();
            assert_eq!(nh.base_offset, 100);
            assert_eq!(nh.last_offset(), 104);
            assert_eq!(nh.records_count, 2);
            assert_eq!(nh.producer_id, 7);
            // A real decoder sees the kept records at their offsets.
            let set = RecordBatchDecoder::decode(&mut out.clone()).unwrap();
            let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![101, 104], "{c:?}");
            assert_eq!(set.records[1].value.as_deref(), Some(&b"value-4"[..]));
            assert_eq!(set.records[1].timestamp, 1004);
        }
    }

    #[test]
    fn an_emptied_batch_keeps_its_offsets() {
        let b = batch(Compression::Zstd, &[Some("a"), Some("b")]);
        let h = parse_header(&b).unwrap();
        let out = rebuild(&b, &h, &[]).unwrap();
        let nh = parse_header(&out).unwrap();
        assert_eq!(
            (nh.base_offset, nh.last_offset(), nh.records_count),
            (100, 101, 0)
        );
        assert_eq!(nh.compression(), 0);
        assert_eq!(crc32c::crc32c(&out[CRC_START..]), nh.crc);
    }

    #[test]
    fn keyless_records_are_found() {
        let keyed = batch(Compression::Lz4, &[Some("a"), Some("b")]);
        assert!(all_records_keyed(&keyed, 1 << 20).unwrap());
        let keyless = batch(Compression::Gzip, &[Some("a"), None]);
        assert!(!all_records_keyed(&keyless, 1 << 20).unwrap());
        assert!(all_records_keyed(&keyless, 10).is_err(), "the limit holds");
    }

    #[test]
    fn truncated_records_are_errors() {
        let b = batch(Compression::None, &[Some("a"), Some("b")]);
        let h = parse_header(&b).unwrap();
        let section = records_section(&b, &h, 1 << 20).unwrap();
        for cut in 0..section.len() {
            assert!(parse_records(&section[..cut], h.records_count).is_err());
        }
    }
}
