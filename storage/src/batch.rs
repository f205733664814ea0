//! Kafka v2 record batches: header parsing (`nom`), validation (magic, length,
//! record count, CRC-32C) and offset assignment by rewriting the base offset.
//!
//! Pure functions over byte slices; runs on whichever shard owns the
//! partition. Never decompresses or recompresses a payload.

use bytes::{Bytes, BytesMut};
use nom::number::complete::{be_i16, be_i32, be_i64, be_i8, be_u32};
use nom::IResult;

/// Bytes before the `attributes` field; the CRC covers everything after it.
pub const CRC_START: usize = 21;
/// Size of the fixed v2 batch header.
pub const HEADER_LEN: usize = 61;
/// Size of the `base_offset` + `batch_length` prefix (log overhead).
pub const LOG_OVERHEAD: usize = 12;

/// Why a batch was refused. Each maps to one Kafka error code in the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// CRC mismatch or a length that does not fit (`CORRUPT_MESSAGE`).
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// Structurally valid but not acceptable (`INVALID_RECORD`).
    #[error("invalid record batch: {0}")]
    Invalid(String),
    /// Magic 0 or 1 (`UNSUPPORTED_FOR_MESSAGE_FORMAT`).
    #[error("record batch magic {0} is not supported (only v2)")]
    UnsupportedMagic(i8),
    /// Batch larger than `max.message.bytes` (`MESSAGE_TOO_LARGE`).
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
}

/// The fixed header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & 0x7
    }
    /// True when timestamps are LogAppendTime.
    pub fn log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    /// Total size of the batch on the wire, prefix included.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
}

fn header(input: &[u8]) -> IResult<&[u8], BatchHeader> {
    let (i, base_offset) = be_i64(input)?;
    let (i, batch_length) = be_i32(i)?;
    let (i, partition_leader_epoch) = be_i32(i)?;
    let (i, magic) = be_i8(i)?;
    let (i, crc) = be_u32(i)?;
    let (i, attributes) = be_i16(i)?;
    let (i, last_offset_delta) = be_i32(i)?;
    let (i, base_timestamp) = be_i64(i)?;
    let (i, max_timestamp) = be_i64(i)?;
    let (i, producer_id) = be_i64(i)?;
    let (i, producer_epoch) = be_i16(i)?;
    let (i, base_sequence) = be_i32(i)?;
    let (i, records_count) = be_i32(i)?;
    Ok((
        i,
        BatchHeader {
            base_offset,
            batch_length,
            partition_leader_epoch,
            magic,
            crc,
            attributes,
            last_offset_delta,
            base_timestamp,
            max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            records_count,
        },
    ))
}

/// Parses the header of the batch at the start of `input` without checking it.
pub fn parse_header(input: &[u8]) -> Result<BatchHeader, BatchError> {
    // Magic sits at byte 16 in every format; check it first so that v0/v1
    // message sets (whose layout differs) get the right error.
    if input.len() > 16 && input[16] != 2 {
        return Err(BatchError::UnsupportedMagic(input[16] as i8));
    }
    header(input)
        .map(|(_, h)| h)
        .map_err(|_| BatchError::Corrupt(format!("batch header truncated ({} bytes)", input.len())))
}

/// A batch that passed validation, still in the bytes the producer sent.
#[derive(Debug, Clone)]
pub struct ValidatedBatch {
    pub header: BatchHeader,
    pub bytes: BatchBytes,
}

/// A batch's bytes: a view of a buffer others hold too, or a region this
/// batch alone holds, whose offsets can then be stamped in place.
#[derive(Debug)]
pub enum BatchBytes {
    Shared(Bytes),
    Owned(BytesMut),
}

impl std::ops::Deref for BatchBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            BatchBytes::Shared(b) => b,
            BatchBytes::Owned(b) => b,
        }
    }
}

impl Clone for BatchBytes {
    /// A clone of an owned batch is a copy: the region stays the original's
    /// alone.
    fn clone(&self) -> Self {
        match self {
            BatchBytes::Shared(b) => BatchBytes::Shared(b.clone()),
            BatchBytes::Owned(b) => BatchBytes::Owned(b.clone()),
        }
    }
}

/// Splits a produce payload into batches and validates each: magic 2, lengths
/// that fit, a sane record count, offset delta and CRC-32C over
/// `attributes..end`. `max_batch_bytes` is `max.message.bytes`. The batches
/// are views of `payload`.
pub fn validate_batches(
    payload: &Bytes,
    max_batch_bytes: usize,
) -> Result<Vec<ValidatedBatch>, BatchError> {
    let mut pos = 0;
    Ok(validate_lengths(payload, max_batch_bytes)?
        .into_iter()
        .map(|(header, len)| {
            let bytes = BatchBytes::Shared(payload.slice(pos..pos + len));
            pos += len;
            ValidatedBatch { header, bytes }
        })
        .collect())
}

/// `validate_batches` of a payload the caller alone holds: each batch gets
/// its own region of it (no copy), to be stamped in place.
pub fn validate_owned_batches(
    mut payload: BytesMut,
    max_batch_bytes: usize,
) -> Result<Vec<ValidatedBatch>, BatchError> {
    Ok(validate_lengths(&payload, max_batch_bytes)?
        .into_iter()
        .map(|(header, len)| ValidatedBatch {
            header,
            bytes: BatchBytes::Owned(payload.split_to(len)),
        })
        .collect())
}

/// Validates each batch of `payload`: their headers and lengths, in order.
fn validate_lengths(
    payload: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<(BatchHeader, usize)>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    if payload.is_empty() {
        return Err(BatchError::Invalid("empty record set".into()));
    }
    while pos < payload.len() {
        let rest = &payload[pos..];
        let h = parse_header(rest)?;
        if h.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::Corrupt(format!(
                "batch length {} below the header size",
                h.batch_length
            )));
        }
        let total = h.total_len();
        if total > rest.len() {
            return Err(BatchError::Corrupt(format!(
                "batch length {} runs past the {} bytes sent",
                h.batch_length,
                rest.len() - LOG_OVERHEAD.min(rest.len())
            )));
        }
        if total > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size: total,
                max: max_batch_bytes,
            });
        }
        let body = &rest[CRC_START..total];
        let crc = crc32c::crc32c(body);
        if crc != h.crc {
            return Err(BatchError::Corrupt(format!(
                "CRC-32C mismatch: header says {:#010x}, computed {:#010x}",
                h.crc, crc
            )));
        }
        check_counts(&h)?;
        out.push((h, total));
        pos += total;
    }
    Ok(out)
}

fn check_counts(h: &BatchHeader) -> Result<(), BatchError> {
    if h.records_count <= 0 {
        return Err(BatchError::Invalid(format!(
            "record count {} must be positive",
            h.records_count
        )));
    }
    if h.last_offset_delta < 0 || h.last_offset_delta as i64 + 1 < h.records_count as i64 {
        return Err(BatchError::Invalid(format!(
            "last offset delta {} does not cover {} records",
            h.last_offset_delta, h.records_count
        )));
    }
    // Each record takes at least 7 bytes; a count beyond that is a lie.
    let body_len = h.batch_length as i64 - (HEADER_LEN - LOG_OVERHEAD) as i64;
    if h.compression() == 0 && (h.records_count as i64) * 7 > body_len {
        return Err(BatchError::Invalid(format!(
            "record count {} does not fit in {} bytes",
            h.records_count, body_len
        )));
    }
    Ok(())
}

/// How the stored copy of a batch differs from what the producer sent.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Offset of the first record.
    pub base_offset: i64,
    /// The leader epoch the batch is appended at (outside the CRC, as the
    /// base offset): what OffsetForLeaderEpoch and consumers' truncation
    /// checks (KIP-320) read back.
    pub leader_epoch: i32,
    /// `Some(now)` for topics with `message.timestamp.type=LogAppendTime`:
    /// the batch's timestamp type and max timestamp are set and the CRC is
    /// computed again.
    pub log_append_time: Option<i64>,
}

/// Stamps `batch`: base offset and partition leader epoch (outside the
/// CRC, so the CRC stays valid) and, for LogAppendTime topics, the timestamp fields (the CRC is
/// recomputed). An owned batch is stamped in place; a shared one (a view of
/// a buffer others read) is copied first.
pub fn stamp(batch: BatchBytes, stamp: Stamp) -> Bytes {
    let mut b = match batch {
        BatchBytes::Owned(b) => b,
        BatchBytes::Shared(b) => BytesMut::from(&b[..]),
    };
    b[0..8].copy_from_slice(&stamp.base_offset.to_be_bytes());
    b[12..16].copy_from_slice(&stamp.leader_epoch.to_be_bytes());
    if let Some(now) = stamp.log_append_time {
        let attributes = i16::from_be_bytes([b[21], b[22]]) | 0x8;
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        b[35..43].copy_from_slice(&now.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    b.freeze()
}

/// Batches at least this long get their whole CRC by combining, not by
/// reading them again; shorter ones are cheap to read (a combine does up to
/// 64 small GF(2) multiplications whatever the length).
const COMBINE_MIN: usize = 16 * 1024;

/// `crc` (the CRC-32C of some bytes A) extended over all of `batch`'s
/// bytes: the CRC of A then `batch`, as the WAL and object blocks store it.
/// Only for a batch whose own CRC is known to be right: validated on
/// produce, or read back under the WAL's or an object block's checksum. A
/// large batch's is combined from its first 21 bytes and the CRC it carries
/// (which covers the rest), so its payload is not read a second time.
pub fn crc_append_batch(crc: u32, batch: &[u8]) -> u32 {
    let out = match batch.get(17..21) {
        Some(stored) if batch.len() >= COMBINE_MIN => crate::crc::combine(
            crc32c::crc32c_append(crc, &batch[..CRC_START]),
            u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]),
            batch.len() - CRC_START,
        ),
        _ => crc32c::crc32c_append(crc, batch),
    };
    debug_assert_eq!(
        out,
        crc32c::crc32c_append(crc, batch),
        "a batch with a wrong CRC"
    );
    out
}

/// A transaction marker: the one record of a control batch that ends a
/// producer's transaction in a partition (Kafka's `EndTransactionMarker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTxnMarker {
    /// Commit (control type 1) or abort (control type 0).
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// Control record types that are transaction markers.
const CONTROL_ABORT: i16 = 0;
const CONTROL_COMMIT: i16 = 1;

/// Reads the transaction marker of a control batch (its first record).
/// `None` when the batch holds no record, is compressed, or its first
/// record is another control type or does not parse: such a batch ends no
/// transaction. Never panics on any bytes.
pub fn end_txn_marker(batch: &[u8]) -> Option<EndTxnMarker> {
    let h = parse_header(batch).ok()?;
    if !h.is_control() || h.compression() != 0 || h.records_count < 1 {
        return None;
    }
    let mut r = batch.get(HEADER_LEN..h.total_len().min(batch.len()))?;
    let _len = read_varint(&mut r)?;
    let _attributes = take(&mut r, 1)?;
    let _ts_delta = read_varint(&mut r)?;
    let _offset_delta = read_varint(&mut r)?;
    let key_len = usize::try_from(read_varint(&mut r)?).ok()?;
    let key = take(&mut r, key_len)?;
    if key.len() < 4 {
        return None;
    }
    let kind = i16::from_be_bytes([key[2], key[3]]);
    let value_len = usize::try_from(read_varint(&mut r)?).ok()?;
    let value = take(&mut r, value_len)?;
    let coordinator_epoch = match value {
        [_, _, a, b, c, d, ..] => i32::from_be_bytes([*a, *b, *c, *d]),
        _ => return None,
    };
    match kind {
        CONTROL_ABORT | CONTROL_COMMIT => Some(EndTxnMarker {
            commit: kind == CONTROL_COMMIT,
            coordinator_epoch,
        }),
        _ => None,
    }
}

pub(crate) fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, rest) = r.split_at(n);
    *r = rest;
    Some(head)
}

/// A zigzag varint of at most 10 bytes.
pub(crate) fn read_varint(r: &mut &[u8]) -> Option<i64> {
    let mut z = 0u64;
    for i in 0..10 {
        let b = *take(r, 1)?.first()?;
        z |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    None
}

fn put_varint(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.extend_from_slice(&[z as u8]);
            return;
        }
        out.extend_from_slice(&[(z as u8 & 0x7f) | 0x80]);
        z >>= 7;
    }
}

/// Encodes the control batch a transaction coordinator writes to end a
/// producer's transaction in a partition: transactional and control
/// attributes, one record whose key is `(version 0, type)` and whose value
/// is `(version 0, coordinator epoch)`, base offset 0 (assigned on append).
pub fn end_txn_marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: EndTxnMarker,
    timestamp: i64,
) -> Bytes {
    let kind = if marker.commit {
        CONTROL_COMMIT
    } else {
        CONTROL_ABORT
    };
    let mut rec = BytesMut::with_capacity(24);
    rec.extend_from_slice(&[0]); // attributes
    put_varint(&mut rec, 0); // timestamp delta
    put_varint(&mut rec, 0); // offset delta
    put_varint(&mut rec, 4);
    rec.extend_from_slice(&0i16.to_be_bytes());
    rec.extend_from_slice(&kind.to_be_bytes());
    put_varint(&mut rec, 6);
    rec.extend_from_slice(&0i16.to_be_bytes());
    rec.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    put_varint(&mut rec, 0); // headers
    let mut b = BytesMut::with_capacity(HEADER_LEN + rec.len() + 2);
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // batch length, below
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.extend_from_slice(&[2]);
    b.extend_from_slice(&0u32.to_be_bytes()); // CRC, below
    b.extend_from_slice(&0x30i16.to_be_bytes()); // transactional | control
    b.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&1i32.to_be_bytes());
    put_varint(&mut b, rec.len() as i64);
    b.extend_from_slice(&rec);
    let batch_length = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds an uncompressed v2 batch of `n` records with values `value`.
    pub fn make_batch(n: i32, base_ts: i64, value: &[u8]) -> Bytes {
        let mut records = Vec::new();
        for i in 0..n {
            let mut rec = Vec::new();
            rec.push(0u8); // attributes
            put_varint(&mut rec, i as i64); // timestamp delta
            put_varint(&mut rec, i as i64); // offset delta
            put_varint(&mut rec, -1); // key null
            put_varint(&mut rec, value.len() as i64);
            rec.extend_from_slice(value);
            put_varint(&mut rec, 0); // headers
            put_varint(&mut records, rec.len() as i64);
            records.extend_from_slice(&rec);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(n - 1).to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        b.extend_from_slice(&(base_ts + n as i64 - 1).to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    #[test]
    fn a_large_batch_crc_is_combined_from_its_own() {
        for (n, value) in [
            (3, vec![7u8; 10]),
            (100, vec![9u8; 1000]),
            (8, vec![1u8; 40_000]),
        ] {
            let b = make_batch(n, 1000, &value);
            for seed in [0u32, 0xdead_beef] {
                assert_eq!(
                    crc_append_batch(seed, &b),
                    crc32c::crc32c_append(seed, &b),
                    "{} bytes",
                    b.len()
                );
            }
        }
    }

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    #[test]
    fn valid_batch_parses() {
        let b = make_batch(3, 1000, b"hello");
        let v = validate_batches(&b, 1 << 20).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].header.records_count, 3);
        assert_eq!(v[0].header.last_offset_delta, 2);
        assert_eq!(v[0].header.max_timestamp, 1002);
    }

    #[test]
    fn two_batches_in_one_payload() {
        let mut p = BytesMut::new();
        p.extend_from_slice(&make_batch(2, 0, b"a"));
        p.extend_from_slice(&make_batch(5, 0, b"b"));
        let v = validate_batches(&p.freeze(), 1 << 20).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].header.records_count, 5);
    }

    #[test]
    fn wrong_crc_is_corrupt() {
        let mut b = BytesMut::from(&make_batch(1, 0, b"x")[..]);
        let last = b.len() - 2;
        b[last] ^= 0xff;
        assert!(matches!(
            validate_batches(&b.freeze(), 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn old_magic_is_unsupported() {
        let mut b = BytesMut::from(&make_batch(1, 0, b"x")[..]);
        b[16] = 1;
        assert_eq!(
            validate_batches(&b.freeze(), 1 << 20).unwrap_err(),
            BatchError::UnsupportedMagic(1)
        );
    }

    #[test]
    fn too_large_is_refused() {
        let b = make_batch(1, 0, &[7u8; 2000]);
        assert!(matches!(
            validate_batches(&b, 1000),
            Err(BatchError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_record_count_is_invalid() {
        let mut b = BytesMut::from(&make_batch(2, 0, b"x")[..]);
        b[57..61].copy_from_slice(&1000i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_batches(&b.freeze(), 1 << 20),
            Err(BatchError::Invalid(_))
        ));
    }

    #[test]
    fn base_offset_rewrite_keeps_crc() {
        let b = make_batch(4, 0, b"v");
        let stamp_at = |batch| {
            stamp(
                batch,
                Stamp {
                    base_offset: 1234,
                    leader_epoch: 5,
                    log_append_time: None,
                },
            )
        };
        // A shared batch is copied; the bytes it was a view of are unchanged.
        let shared = stamp_at(BatchBytes::Shared(b.clone()));
        assert_eq!(parse_header(&b).unwrap().base_offset, 0);
        assert_ne!(shared.as_ptr(), b.as_ptr());
        // An owned one is stamped where it lies.
        let owned = BytesMut::from(&b[..]);
        let at = owned.as_ptr();
        let in_place = stamp_at(BatchBytes::Owned(owned));
        assert_eq!(in_place.as_ptr(), at);
        for r in [shared, in_place] {
            let v = validate_batches(&r, 1 << 20).unwrap();
            assert_eq!(v[0].header.base_offset, 1234);
            assert_eq!(v[0].header.partition_leader_epoch, 5);
            assert_eq!(v[0].header.last_offset(), 1237);
        }
    }

    #[test]
    fn owned_payloads_split_into_their_batches_without_copies() {
        let (a, b) = (make_batch(2, 0, b"first"), make_batch(3, 5, b"second"));
        let mut payload = BytesMut::from(&a[..]);
        payload.extend_from_slice(&b);
        let start = payload.as_ptr();
        let v = validate_owned_batches(payload, 1 << 20).unwrap();
        assert_eq!(v.len(), 2);
        assert!(matches!(&v[0].bytes, BatchBytes::Owned(x) if x.as_ptr() == start));
        assert_eq!((&v[0].bytes[..], &v[1].bytes[..]), (&a[..], &b[..]));
        assert_eq!(v[1].header.records_count, 3);
        // The same checks as for shared payloads.
        let mut bad = BytesMut::from(&a[..]);
        bad[30] ^= 1;
        assert!(matches!(
            validate_owned_batches(bad, 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn log_append_time_restamps_and_keeps_crc_valid() {
        let b = make_batch(2, 10, b"v");
        let st = Stamp {
            base_offset: 7,
            leader_epoch: 2,
            log_append_time: Some(99_000),
        };
        for batch in [
            BatchBytes::Shared(b.clone()),
            BatchBytes::Owned(BytesMut::from(&b[..])),
        ] {
            let r = stamp(batch, st);
            let v = validate_batches(&r, 1 << 20).unwrap();
            assert!(v[0].header.log_append_time());
            assert_eq!(v[0].header.max_timestamp, 99_000);
            assert_eq!(v[0].header.base_offset, 7);
        }
    }

    #[test]
    fn end_txn_markers_round_trip_and_validate() {
        for commit in [true, false] {
            let m = EndTxnMarker {
                commit,
                coordinator_epoch: 7,
            };
            let b = end_txn_marker_batch(42, 3, m, 1234);
            let v = validate_batches(&b, 1 << 20).unwrap();
            let h = v[0].header;
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.records_count),
                (42, 3, 1)
            );
            assert_eq!(end_txn_marker(&b), Some(m));
        }
        // A data batch is no marker; neither is a control batch cut short.
        assert_eq!(end_txn_marker(&make_batch(1, 0, b"x")), None);
        let b = end_txn_marker_batch(
            1,
            0,
            EndTxnMarker {
                commit: true,
                coordinator_epoch: 0,
            },
            0,
        );
        assert_eq!(end_txn_marker(&b[..b.len() - 3]), None);
    }

    proptest! {
        #[test]
        fn any_bytes_give_batch_or_error(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = validate_batches(&Bytes::from(data), 1 << 20);
        }

        #[test]
        fn any_bytes_give_a_marker_or_none(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut b = end_txn_marker_batch(1, 0, EndTxnMarker { commit: true, coordinator_epoch: 0 }, 0).to_vec();
            b.truncate(HEADER_LEN);
            b.extend_from_slice(&data);
            let _ = end_txn_marker(&b);
        }

        #[test]
        fn any_flipped_byte_after_crc_is_caught(n in 1i32..5, pos in 0usize..1000, flip in 1u8..=255) {
            let b = make_batch(n, 5, b"payload");
            let mut m = BytesMut::from(&b[..]);
            let i = CRC_START + pos % (m.len() - CRC_START);
            m[i] ^= flip;
            prop_assert!(validate_batches(&m.freeze(), 1 << 20).is_err());
        }
    }
}
