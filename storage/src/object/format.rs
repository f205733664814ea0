//! The stream-set object: what one upload of one shard writes, holding
//! batches of any number of partitions (after AutoMQ's S3Stream format).
//!
//! ```text
//! [data block]* [index] [footer]
//! data block  record batches of one partition, exactly as stored (offsets
//!             assigned, never recompressed), cut at about `block_target` bytes
//! index       count u32 | entry* (sorted by topic, partition, first offset)
//!   entry     topic [16] | partition i32 | first_offset i64 | end_offset i64
//!             | records u32 | max_timestamp i64 | position u64 | size u32
//!             | crc32c u32 (of the block)
//! footer      index_position u64 | index_len u32 | index_crc u32 | version u16
//!             | flags u16 | block_count u32 | reserved [12] | footer_crc u32
//!             | magic u64                                       (48 bytes)
//! ```
//!
//! All integers big endian. Every byte is covered by a CRC-32C: blocks by
//! their entry, the index by the footer, the footer by itself and the magic.
//! Blocks tile `[0, index_position)` with no gaps, so a reader that checks
//! what it reads never accepts a corrupted byte. A reader finds a
//! partition's blocks with one ranged GET of the tail (index and footer),
//! then ranged GETs of those blocks.
//!
//! Pure code (no I/O), used by the uploader and by cold reads on the shard
//! that owns the partition, and by the `objects` inspection tool. It must
//! never panic on bytes read back from a store.

use bytes::Bytes;
use nom::bytes::complete::take;
use nom::number::complete::{be_i32, be_i64, be_u16, be_u32, be_u64};
use nom::IResult;

use crate::batch::{crc_append_batch, parse_header};

/// `"SBSSOBJ1"`: the last 8 bytes of every stream-set object.
pub const MAGIC: u64 = u64::from_be_bytes(*b"SBSSOBJ1");
/// The version this code writes and the newest it reads.
pub const VERSION: u16 = 1;
pub const FOOTER_LEN: usize = 48;
pub const ENTRY_LEN: usize = 16 + 4 + 8 + 8 + 4 + 8 + 8 + 4 + 4;
/// Data blocks are cut once they reach this size (a single larger batch
/// still makes one block).
pub const DEFAULT_BLOCK_TARGET: usize = 512 << 10;

/// Why bytes are not a valid object (or part of one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("object truncated: {0}")]
    Truncated(String),
    #[error("not a stream-set object (bad magic)")]
    BadMagic,
    #[error("stream-set object version {0} is newer than this broker reads ({VERSION})")]
    UnsupportedVersion(u16),
    #[error("checksum mismatch in {0}")]
    Crc(&'static str),
    #[error("invalid object: {0}")]
    Invalid(String),
}

/// A partition as the object format knows it: topic id bytes and index.
pub type StreamKey = ([u8; 16], i32);

/// One data block as the index describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    pub topic: [u8; 16],
    pub partition: i32,
    /// Base offset of the first batch.
    pub first_offset: i64,
    /// Last offset of the last batch, plus one.
    pub end_offset: i64,
    pub records: u32,
    pub max_timestamp: i64,
    pub position: u64,
    pub size: u32,
    pub crc: u32,
}

impl BlockEntry {
    pub fn stream(&self) -> StreamKey {
        (self.topic, self.partition)
    }

    pub fn range(&self) -> std::ops::Range<u64> {
        self.position..self.position + u64::from(self.size)
    }
}

/// The decoded footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub index_position: u64,
    pub index_len: u32,
    pub index_crc: u32,
    pub version: u16,
    pub block_count: u32,
}

/// The index of an object: its blocks, sorted by partition then offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIndex {
    pub entries: Vec<BlockEntry>,
    /// Where the index starts (the end of the data blocks).
    pub index_position: u64,
    /// The whole object's size.
    pub size: u64,
}

impl ObjectIndex {
    /// The blocks of `stream` that hold offsets at or after `offset`, in
    /// offset order.
    pub fn blocks_from(&self, stream: StreamKey, offset: i64) -> &[BlockEntry] {
        let start = self
            .entries
            .partition_point(|e| (e.stream(), e.end_offset) <= (stream, offset));
        let end = self.entries.partition_point(|e| e.stream() <= stream);
        &self.entries[start..end.max(start)]
    }

    /// Every block of `stream`.
    pub fn blocks_of(&self, stream: StreamKey) -> &[BlockEntry] {
        self.blocks_from(stream, i64::MIN)
    }

    /// The partitions in the object with their offset ranges
    /// (`first..end`), record counts and largest timestamps, in order.
    pub fn streams(&self) -> Vec<StreamSummary> {
        let mut out: Vec<StreamSummary> = Vec::new();
        for e in &self.entries {
            match out.last_mut() {
                Some(s) if s.stream == e.stream() => {
                    s.end_offset = s.end_offset.max(e.end_offset);
                    s.records += u64::from(e.records);
                    s.bytes += u64::from(e.size);
                    s.max_timestamp = s.max_timestamp.max(e.max_timestamp);
                }
                _ => out.push(StreamSummary {
                    stream: e.stream(),
                    first_offset: e.first_offset,
                    end_offset: e.end_offset,
                    records: u64::from(e.records),
                    bytes: u64::from(e.size),
                    max_timestamp: e.max_timestamp,
                }),
            }
        }
        out
    }
}

/// What an object holds of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    pub stream: StreamKey,
    pub first_offset: i64,
    pub end_offset: i64,
    pub records: u64,
    pub bytes: u64,
    pub max_timestamp: i64,
}

/// A batch handed to the builder, with what its header says.
#[derive(Debug, Clone)]
pub struct BatchRef {
    pub base_offset: i64,
    pub last_offset: i64,
    pub records: u32,
    pub max_timestamp: i64,
    pub bytes: Bytes,
}

/// An object ready to upload: the body as chunks (the batches themselves,
/// then index and footer; nothing copied) and its index.
#[derive(Debug, Clone)]
pub struct BuiltObject {
    pub body: Vec<Bytes>,
    pub index: ObjectIndex,
}

struct OpenBlock {
    entry: BlockEntry,
}

/// Builds a stream-set object from batches, partition by partition.
pub struct ObjectBuilder {
    block_target: usize,
    body: Vec<Bytes>,
    entries: Vec<BlockEntry>,
    position: u64,
    open: Option<OpenBlock>,
}

impl ObjectBuilder {
    pub fn new(block_target: usize) -> ObjectBuilder {
        ObjectBuilder {
            block_target: block_target.max(1),
            body: Vec::new(),
            entries: Vec::new(),
            position: 0,
            open: None,
        }
    }

    /// Appends one batch of `stream`. Batches of one stream must come in
    /// offset order and all together (the builder cuts a block when the
    /// stream changes or the block is full).
    pub fn add(&mut self, stream: StreamKey, batch: &BatchRef) {
        let starts_new = match &self.open {
            Some(b) => b.entry.stream() != stream || b.entry.size as usize >= self.block_target,
            None => true,
        };
        if starts_new {
            self.close_block();
            self.open = Some(OpenBlock {
                entry: BlockEntry {
                    topic: stream.0,
                    partition: stream.1,
                    first_offset: batch.base_offset,
                    end_offset: batch.base_offset,
                    records: 0,
                    max_timestamp: i64::MIN,
                    position: self.position,
                    size: 0,
                    crc: 0,
                },
            });
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let e = &mut open.entry;
        e.end_offset = batch.last_offset + 1;
        e.records = e.records.saturating_add(batch.records);
        e.max_timestamp = e.max_timestamp.max(batch.max_timestamp);
        e.size += batch.bytes.len() as u32;
        // The batch's own CRC was verified when it came in (produce, the
        // WAL or an object block): combine it rather than read it again.
        e.crc = crc_append_batch(e.crc, &batch.bytes);
        self.position += batch.bytes.len() as u64;
        self.body.push(batch.bytes.clone());
    }

    /// Bytes of data added so far.
    pub fn data_len(&self) -> u64 {
        self.position
    }

    pub fn is_empty(&self) -> bool {
        self.position == 0
    }

    fn close_block(&mut self) {
        if let Some(b) = self.open.take() {
            self.entries.push(b.entry);
        }
    }

    /// Adds index and footer.
    pub fn finish(mut self) -> BuiltObject {
        self.close_block();
        let mut entries = self.entries;
        entries.sort_by_key(|e| (e.stream(), e.first_offset));
        let index = encode_index(&entries);
        let footer = Footer {
            index_position: self.position,
            index_len: index.len() as u32,
            index_crc: crc32c::crc32c(&index),
            version: VERSION,
            block_count: entries.len() as u32,
        };
        let size = self.position + index.len() as u64 + FOOTER_LEN as u64;
        self.body.push(Bytes::from(index));
        self.body
            .push(Bytes::copy_from_slice(&encode_footer(&footer)));
        BuiltObject {
            body: self.body,
            index: ObjectIndex {
                entries,
                index_position: footer.index_position,
                size,
            },
        }
    }
}

fn encode_index(entries: &[BlockEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.topic);
        out.extend_from_slice(&e.partition.to_be_bytes());
        out.extend_from_slice(&e.first_offset.to_be_bytes());
        out.extend_from_slice(&e.end_offset.to_be_bytes());
        out.extend_from_slice(&e.records.to_be_bytes());
        out.extend_from_slice(&e.max_timestamp.to_be_bytes());
        out.extend_from_slice(&e.position.to_be_bytes());
        out.extend_from_slice(&e.size.to_be_bytes());
        out.extend_from_slice(&e.crc.to_be_bytes());
    }
    out
}

fn encode_footer(f: &Footer) -> [u8; FOOTER_LEN] {
    let mut out = [0u8; FOOTER_LEN];
    out[0..8].copy_from_slice(&f.index_position.to_be_bytes());
    out[8..12].copy_from_slice(&f.index_len.to_be_bytes());
    out[12..16].copy_from_slice(&f.index_crc.to_be_bytes());
    out[16..18].copy_from_slice(&f.version.to_be_bytes());
    // 18..20 flags, 24..36 reserved: zero.
    out[20..24].copy_from_slice(&f.block_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[0..36]);
    out[36..40].copy_from_slice(&crc.to_be_bytes());
    out[40..48].copy_from_slice(&MAGIC.to_be_bytes());
    out
}

/// Decodes the footer from the last [`FOOTER_LEN`] bytes of an object of
/// `object_size` bytes.
pub fn decode_footer(tail: &[u8], object_size: u64) -> Result<Footer, FormatError> {
    if tail.len() < FOOTER_LEN || object_size < FOOTER_LEN as u64 {
        return Err(FormatError::Truncated(format!(
            "{} bytes cannot hold the {FOOTER_LEN}-byte footer",
            tail.len().min(object_size as usize)
        )));
    }
    let f = &tail[tail.len() - FOOTER_LEN..];
    if u64::from_be_bytes(f[40..48].try_into().unwrap_or_default()) != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let stored_crc = u32::from_be_bytes(f[36..40].try_into().unwrap_or_default());
    if crc32c::crc32c(&f[0..36]) != stored_crc {
        return Err(FormatError::Crc("footer"));
    }
    let parsed: IResult<&[u8], Footer> = (|i| {
        let (i, index_position) = be_u64(i)?;
        let (i, index_len) = be_u32(i)?;
        let (i, index_crc) = be_u32(i)?;
        let (i, version) = be_u16(i)?;
        let (i, _flags) = be_u16(i)?;
        let (i, block_count) = be_u32(i)?;
        Ok((
            i,
            Footer {
                index_position,
                index_len,
                index_crc,
                version,
                block_count,
            },
        ))
    })(f);
    let (_, footer) = parsed.map_err(|_| FormatError::Truncated("footer".into()))?;
    if footer.version == 0 || footer.version > VERSION {
        return Err(FormatError::UnsupportedVersion(footer.version));
    }
    let expected = footer.index_position + u64::from(footer.index_len) + FOOTER_LEN as u64;
    if expected != object_size {
        return Err(FormatError::Invalid(format!(
            "footer says the object is {expected} bytes, it is {object_size}"
        )));
    }
    Ok(footer)
}

fn entry(i: &[u8]) -> IResult<&[u8], BlockEntry> {
    let (i, topic) = take(16usize)(i)?;
    let (i, partition) = be_i32(i)?;
    let (i, first_offset) = be_i64(i)?;
    let (i, end_offset) = be_i64(i)?;
    let (i, records) = be_u32(i)?;
    let (i, max_timestamp) = be_i64(i)?;
    let (i, position) = be_u64(i)?;
    let (i, size) = be_u32(i)?;
    let (i, crc) = be_u32(i)?;
    let mut t = [0u8; 16];
    t.copy_from_slice(topic);
    Ok((
        i,
        BlockEntry {
            topic: t,
            partition,
            first_offset,
            end_offset,
            records,
            max_timestamp,
            position,
            size,
            crc,
        },
    ))
}

/// Decodes and checks the index bytes the footer points at.
pub fn decode_index(
    index: &[u8],
    footer: &Footer,
    object_size: u64,
) -> Result<ObjectIndex, FormatError> {
    if index.len() != footer.index_len as usize {
        return Err(FormatError::Truncated(format!(
            "index is {} bytes, footer says {}",
            index.len(),
            footer.index_len
        )));
    }
    if crc32c::crc32c(index) != footer.index_crc {
        return Err(FormatError::Crc("index"));
    }
    let (mut rest, count) = be_u32::<_, nom::error::Error<&[u8]>>(index)
        .map_err(|_| FormatError::Truncated("index count".into()))?;
    if count != footer.block_count || rest.len() != count as usize * ENTRY_LEN {
        return Err(FormatError::Invalid(format!(
            "index holds {} bytes for {count} entries",
            rest.len()
        )));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (r, e) = entry(rest).map_err(|_| FormatError::Truncated("index entry".into()))?;
        rest = r;
        entries.push(e);
    }
    check_entries(&entries, footer.index_position)?;
    Ok(ObjectIndex {
        entries,
        index_position: footer.index_position,
        size: object_size,
    })
}

/// Entries sorted, sane offsets, and blocks tiling the data region.
fn check_entries(entries: &[BlockEntry], index_position: u64) -> Result<(), FormatError> {
    let bad = |m: String| Err(FormatError::Invalid(m));
    for w in entries.windows(2) {
        if (w[0].stream(), w[0].first_offset) > (w[1].stream(), w[1].first_offset) {
            return bad("index entries out of order".into());
        }
        if w[0].stream() == w[1].stream() && w[0].end_offset > w[1].first_offset {
            return bad("blocks of one partition overlap".into());
        }
    }
    let mut by_pos: Vec<&BlockEntry> = entries.iter().collect();
    by_pos.sort_by_key(|e| e.position);
    let mut at = 0u64;
    for e in by_pos {
        if e.end_offset <= e.first_offset || e.size == 0 {
            return bad(format!("empty block at position {}", e.position));
        }
        if e.position != at {
            return bad(format!("gap or overlap at position {at}"));
        }
        at += u64::from(e.size);
    }
    if at != index_position {
        return bad(format!(
            "blocks end at {at}, index starts at {index_position}"
        ));
    }
    Ok(())
}

/// What the last bytes of an object gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    Index(ObjectIndex),
    /// The tail read was too short: read again from this position.
    NeedFrom(u64),
}

/// Parses the last bytes of an object (`tail` ends at `object_size`). If the
/// index is not all there, says where a second read must start.
pub fn parse_tail(tail: &[u8], object_size: u64) -> Result<Tail, FormatError> {
    let footer = decode_footer(tail, object_size)?;
    let tail_start = object_size - tail.len() as u64;
    if footer.index_position < tail_start {
        return Ok(Tail::NeedFrom(footer.index_position));
    }
    let from = (footer.index_position - tail_start) as usize;
    let index = &tail[from..tail.len() - FOOTER_LEN];
    decode_index(index, &footer, object_size).map(Tail::Index)
}

/// Checks a block read back against its index entry.
pub fn verify_block(entry: &BlockEntry, bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() != entry.size as usize {
        return Err(FormatError::Truncated(format!(
            "block at {} is {} bytes, index says {}",
            entry.position,
            bytes.len(),
            entry.size
        )));
    }
    if crc32c::crc32c(bytes) != entry.crc {
        return Err(FormatError::Crc("data block"));
    }
    Ok(())
}

/// Splits a verified block into its batches.
pub fn split_batches(block: &Bytes) -> Result<Vec<Bytes>, FormatError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < block.len() {
        let h = parse_header(&block[at..])
            .map_err(|e| FormatError::Invalid(format!("batch at block byte {at}: {e}")))?;
        let len = h.total_len();
        if h.batch_length < 0 || at + len > block.len() {
            return Err(FormatError::Invalid(format!(
                "batch at block byte {at} runs past the block"
            )));
        }
        out.push(block.slice(at..at + len));
        at += len;
    }
    Ok(out)
}

/// A whole object, decoded and every byte checked: its index and each
/// block's batches (for tests and inspection tools).
pub fn decode_object(bytes: &Bytes) -> Result<(ObjectIndex, Vec<Vec<Bytes>>), FormatError> {
    let size = bytes.len() as u64;
    let index = match parse_tail(bytes, size)? {
        Tail::Index(i) => i,
        Tail::NeedFrom(_) => return Err(FormatError::Invalid("index before the object".into())),
    };
    let mut blocks = Vec::with_capacity(index.entries.len());
    for e in &index.entries {
        let r = e.range();
        let block = bytes.slice(r.start as usize..r.end as usize);
        verify_block(e, &block)?;
        blocks.push(split_batches(&block)?);
    }
    Ok((index, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::make_batch;
    use proptest::prelude::*;

    fn stamped(base: i64, n: i32, ts: i64) -> BatchRef {
        let raw = make_batch(n, ts, b"value");
        let mut b = raw.to_vec();
        b[0..8].copy_from_slice(&base.to_be_bytes());
        BatchRef {
            base_offset: base,
            last_offset: base + i64::from(n) - 1,
            records: n as u32,
            max_timestamp: ts + i64::from(n) - 1,
            bytes: Bytes::from(b),
        }
    }

    fn concat(body: &[Bytes]) -> Bytes {
        let mut v = Vec::new();
        for b in body {
            v.extend_from_slice(b);
        }
        Bytes::from(v)
    }

    fn topic(n: u8) -> [u8; 16] {
        [n; 16]
    }

    /// Streams of batches: (topic byte, partition, batch count, records per batch).
    fn build(spec: &[(u8, i32, usize, i32)], block_target: usize) -> (BuiltObject, Bytes) {
        let mut b = ObjectBuilder::new(block_target);
        for &(t, p, batches, n) in spec {
            let mut off = 100;
            for i in 0..batches {
                b.add((topic(t), p), &stamped(off, n, 1000 + i as i64));
                off += i64::from(n);
            }
        }
        let built = b.finish();
        let whole = concat(&built.body);
        (built, whole)
    }

    #[test]
    fn round_trip_and_lookup() {
        let (built, whole) = build(&[(2, 0, 30, 3), (1, 5, 10, 1), (2, 1, 1, 7)], 1024);
        assert_eq!(whole.len() as u64, built.index.size);
        let (index, blocks) = decode_object(&whole).unwrap();
        assert_eq!(index, built.index);
        // Sorted by stream: topic 1 first although added second.
        assert_eq!(index.entries[0].stream(), (topic(1), 5));
        let streams = index.streams();
        assert_eq!(streams.len(), 3);
        assert_eq!((streams[1].first_offset, streams[1].end_offset), (100, 190));
        assert_eq!(streams[1].records, 90);
        assert_eq!((streams[2].first_offset, streams[2].end_offset), (100, 107));
        let all: usize = blocks.iter().map(|b| b.len()).sum();
        assert_eq!(all, 41);
        // Lookup from inside the range starts at the block holding it.
        let from = index.blocks_from((topic(2), 0), 150);
        assert!(from[0].first_offset <= 150 && from[0].end_offset > 150);
        assert_eq!(from.last().unwrap().end_offset, 190);
        assert!(index.blocks_from((topic(2), 0), 190).is_empty());
        assert!(index.blocks_from((topic(3), 0), 0).is_empty());
        assert_eq!(index.blocks_of((topic(2), 1)).len(), 1);
    }

    #[test]
    fn tail_parse_asks_for_more_when_short() {
        let (built, whole) = build(&[(1, 0, 200, 1)], 512);
        let size = whole.len() as u64;
        let short = &whole[whole.len() - FOOTER_LEN - 10..];
        match parse_tail(short, size).unwrap() {
            Tail::NeedFrom(p) => assert_eq!(p, built.index.index_position),
            t => panic!("{t:?}"),
        }
        let from = built.index.index_position as usize - 3;
        assert_eq!(
            parse_tail(&whole[from..], size).unwrap(),
            Tail::Index(built.index)
        );
    }

    #[test]
    fn truncated_objects_are_refused_clearly() {
        let (_, whole) = build(&[(1, 0, 5, 2)], 256);
        for cut in [0, 1, FOOTER_LEN - 1, whole.len() / 2, whole.len() - 1] {
            let t = whole.slice(0..cut);
            let err = decode_object(&t).unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::Truncated(_) | FormatError::BadMagic | FormatError::Invalid(_)
                ),
                "{cut}: {err}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_object_round_trips(
            spec in proptest::collection::vec((0u8..4, 0i32..3, 1usize..20, 1i32..5), 1..6),
            target in 64usize..4096,
        ) {
            // One run per stream.
            let mut spec = spec;
            spec.sort_by_key(|s| (s.0, s.1));
            spec.dedup_by_key(|s| (s.0, s.1));
            let (built, whole) = build(&spec, target);
            let (index, blocks) = decode_object(&whole).unwrap();
            prop_assert_eq!(&index, &built.index);
            let batches: usize = blocks.iter().map(|b| b.len()).sum();
            prop_assert_eq!(batches, spec.iter().map(|s| s.2).sum::<usize>());
            for (e, bl) in index.entries.iter().zip(&blocks) {
                let first = parse_header(&bl[0]).unwrap();
                prop_assert_eq!(first.base_offset, e.first_offset);
                let last = parse_header(bl.last().unwrap()).unwrap();
                prop_assert_eq!(last.last_offset() + 1, e.end_offset);
            }
        }

        #[test]
        fn any_corrupted_byte_is_detected(
            at in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (_, whole) = build(&[(1, 0, 6, 2), (2, 3, 4, 1)], 300);
            let mut bad = whole.to_vec();
            let i = at.index(bad.len());
            bad[i] ^= flip;
            prop_assert!(decode_object(&Bytes::from(bad)).is_err(), "byte {} flipped", i);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let b = Bytes::from(bytes);
            let _ = decode_object(&b);
            let _ = parse_tail(&b, b.len() as u64);
        }
    }
}
