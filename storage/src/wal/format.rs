//! On-disk format of the WAL: the device header, the two slice header blocks
//! and the record header. Pure encode/decode (parsed with `nom`), no I/O, so
//! it can be unit- and property-tested with byte buffers and runs on any
//! thread. It must never trust a byte it decodes: every decoder checks
//! lengths, magic and CRC-32C and returns an error instead of panicking.
//!
//! Layout of a WAL device (all integers little endian):
//!
//! ```text
//! [0, block)                         device header
//! slice i at data_start + i * slice_size:
//!   [0, block)                       slice header copy A (written when seq is even)
//!   [block, 2 * block)               slice header copy B (written when seq is odd)
//!   [2 * block, slice_size)          ring of records, `capacity` bytes
//! ```
//!
//! A record's *logical offset* is its byte position in the endless stream of
//! the slice; it lives at ring position `offset % capacity`. Records written by
//! one flush are packed back to back and the write is padded with zeros to the
//! block size, so every write starts on a block boundary. A record never
//! crosses the end of the ring: when the next write does not fit before the
//! end, a `WRAP` marker is written at the current position and the write goes
//! to the start of the next lap.

use nom::{
    bytes::complete::tag,
    number::complete::{le_i32, le_u16, le_u32, le_u64},
    IResult,
};

use super::WalError;

/// Version of the format described in this module.
pub const FORMAT_VERSION: u32 = 1;
/// Smallest block size the WAL writes; every write is a multiple of it.
pub const MIN_BLOCK_SIZE: u32 = 4096;

const DEVICE_MAGIC: &[u8; 8] = b"KWALDEV\x01";
const SLICE_MAGIC: &[u8; 8] = b"KWALSLC\x01";
/// The first byte is non-zero on purpose: a zero byte where a record header
/// could start means "padding up to the next block".
const RECORD_MAGIC: &[u8; 4] = b"WREC";

/// Encoded size of [`DeviceHeader`] (the rest of its block is zero).
pub const DEVICE_HEADER_LEN: usize = 56;
/// Encoded size of [`SliceHeader`] (the rest of its block is zero).
pub const SLICE_HEADER_LEN: usize = 80;
/// Encoded size of [`RecordHeader`].
pub const RECORD_HEADER_LEN: usize = 32;

/// Record flag: an ordinary record whose body follows the header.
pub const FLAG_DATA: u16 = 0;
/// Record flag: nothing more in this lap, continue at the next lap's start.
pub const FLAG_WRAP: u16 = 1;

fn corrupt(what: &'static str) -> WalError {
    WalError::Corrupt { what }
}

fn parse_err<T>(_: nom::Err<nom::error::Error<&[u8]>>) -> Result<T, WalError> {
    Err(corrupt("truncated or malformed header"))
}

/// Header at byte 0 of the device: the layout every slice depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceHeader {
    pub version: u32,
    pub block_size: u32,
    pub slice_count: u32,
    pub broker_id: i32,
    pub slice_size: u64,
    pub data_start: u64,
    /// Random at format time; seeds every record's header CRC so records of an
    /// earlier format of the same device never pass as current ones.
    pub epoch: u64,
}

impl DeviceHeader {
    pub fn encode(&self) -> [u8; DEVICE_HEADER_LEN] {
        let mut b = [0u8; DEVICE_HEADER_LEN];
        b[0..8].copy_from_slice(DEVICE_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.slice_count.to_le_bytes());
        b[20..24].copy_from_slice(&self.broker_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.slice_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.data_start.to_le_bytes());
        b[40..48].copy_from_slice(&self.epoch.to_le_bytes());
        // 48..52 reserved (zero)
        let crc = crc32c::crc32c(&b[..52]);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// True when `buf` starts with the device magic (valid or not): tells a
    /// damaged WAL header apart from a device that holds something else.
    pub fn has_magic(buf: &[u8]) -> bool {
        buf.starts_with(DEVICE_MAGIC)
    }

    pub fn decode(buf: &[u8]) -> Result<DeviceHeader, WalError> {
        if buf.len() < DEVICE_HEADER_LEN {
            return Err(corrupt("device header too short"));
        }
        let stored = u32::from_le_bytes([buf[52], buf[53], buf[54], buf[55]]);
        if !Self::has_magic(buf) {
            return Err(corrupt("device header magic"));
        }
        if crc32c::crc32c(&buf[..52]) != stored {
            return Err(corrupt("device header CRC"));
        }
        match Self::parse(buf) {
            Ok((_, h)) if h.version == FORMAT_VERSION => Ok(h),
            Ok(_) => Err(corrupt("device header format version")),
            Err(e) => parse_err(e),
        }
    }

    fn parse(i: &[u8]) -> IResult<&[u8], DeviceHeader> {
        let (i, _) = tag(&DEVICE_MAGIC[..])(i)?;
        let (i, version) = le_u32(i)?;
        let (i, block_size) = le_u32(i)?;
        let (i, slice_count) = le_u32(i)?;
        let (i, broker_id) = le_i32(i)?;
        let (i, slice_size) = le_u64(i)?;
        let (i, data_start) = le_u64(i)?;
        let (i, epoch) = le_u64(i)?;
        Ok((
            i,
            DeviceHeader {
                version,
                block_size,
                slice_count,
                broker_id,
                slice_size,
                data_start,
                epoch,
            },
        ))
    }
}

/// One of the two alternating header blocks of a slice. The valid copy with
/// the higher `seq` is current; writing the other copy is how a new header is
/// made durable without ever overwriting the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceHeader {
    pub slice: u32,
    pub epoch: u64,
    /// Incremented on every header write; picks the copy block (`seq % 2`).
    pub seq: u64,
    /// Incremented every time the slice is opened. Records carry the
    /// generation that wrote them; it never decreases along the log.
    pub generation: u32,
    pub capacity: u64,
    /// Records with a logical offset below this are trimmed.
    pub trim_offset: u64,
    /// A record boundary `<= trim_offset` where recovery starts reading.
    pub scan_start: u64,
    /// Wall-clock time of this header write, milliseconds since the epoch.
    pub last_write_ms: u64,
}

impl SliceHeader {
    pub fn encode(&self) -> [u8; SLICE_HEADER_LEN] {
        let mut b = [0u8; SLICE_HEADER_LEN];
        b[0..8].copy_from_slice(SLICE_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.slice.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..32].copy_from_slice(&self.seq.to_le_bytes());
        b[32..36].copy_from_slice(&self.generation.to_le_bytes());
        // 36..40 reserved
        b[40..48].copy_from_slice(&self.capacity.to_le_bytes());
        b[48..56].copy_from_slice(&self.trim_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.scan_start.to_le_bytes());
        b[64..72].copy_from_slice(&self.last_write_ms.to_le_bytes());
        // 72..76 reserved
        let crc = crc32c::crc32c(&b[..76]);
        b[76..80].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(buf: &[u8]) -> Result<SliceHeader, WalError> {
        if buf.len() < SLICE_HEADER_LEN {
            return Err(corrupt("slice header too short"));
        }
        let stored = u32::from_le_bytes([buf[76], buf[77], buf[78], buf[79]]);
        if !buf.starts_with(SLICE_MAGIC) {
            return Err(corrupt("slice header magic"));
        }
        if crc32c::crc32c(&buf[..76]) != stored {
            return Err(corrupt("slice header CRC"));
        }
        let (_, (version, h)) = match Self::parse(buf) {
            Ok(v) => v,
            Err(e) => return parse_err(e),
        };
        if version != FORMAT_VERSION {
            return Err(corrupt("slice header format version"));
        }
        if h.scan_start > h.trim_offset {
            return Err(corrupt("slice header scan start after trim offset"));
        }
        Ok(h)
    }

    fn parse(i: &[u8]) -> IResult<&[u8], (u32, SliceHeader)> {
        let (i, _) = tag(&SLICE_MAGIC[..])(i)?;
        let (i, version) = le_u32(i)?;
        let (i, slice) = le_u32(i)?;
        let (i, epoch) = le_u64(i)?;
        let (i, seq) = le_u64(i)?;
        let (i, generation) = le_u32(i)?;
        let (i, _reserved) = le_u32(i)?;
        let (i, capacity) = le_u64(i)?;
        let (i, trim_offset) = le_u64(i)?;
        let (i, scan_start) = le_u64(i)?;
        let (i, last_write_ms) = le_u64(i)?;
        let h = SliceHeader {
            slice,
            epoch,
            seq,
            generation,
            capacity,
            trim_offset,
            scan_start,
            last_write_ms,
        };
        Ok((i, (version, h)))
    }

    /// Picks the current header from the two copies: the valid one (right
    /// slice, epoch and capacity) with the higher sequence number.
    pub fn newest(
        a: &[u8],
        b: &[u8],
        slice: u32,
        epoch: u64,
        capacity: u64,
    ) -> Result<SliceHeader, WalError> {
        let fits = |h: &SliceHeader| h.slice == slice && h.epoch == epoch && h.capacity == capacity;
        let a = SliceHeader::decode(a).ok().filter(fits);
        let b = SliceHeader::decode(b).ok().filter(fits);
        match (a, b) {
            (Some(a), Some(b)) => Ok(if a.seq >= b.seq { a } else { b }),
            (Some(h), None) | (None, Some(h)) => Ok(h),
            (None, None) => Err(corrupt("no valid slice header copy")),
        }
    }
}

/// Header in front of every record body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub flags: u16,
    pub generation: u32,
    pub body_len: u32,
    pub offset: u64,
    pub body_crc: u32,
}

impl RecordHeader {
    /// Header for `body` at logical `offset`, written by `generation`.
    pub fn for_body(body: &[u8], offset: u64, generation: u32) -> RecordHeader {
        RecordHeader::with_crc(body.len(), crc32c::crc32c(body), offset, generation)
    }

    /// Header for a body of `len` bytes whose CRC-32C is `body_crc`.
    pub fn with_crc(len: usize, body_crc: u32, offset: u64, generation: u32) -> RecordHeader {
        RecordHeader {
            flags: FLAG_DATA,
            generation,
            body_len: len as u32,
            offset,
            body_crc,
        }
    }

    /// The marker that sends the reader to the start of the next lap.
    pub fn wrap(offset: u64, generation: u32) -> RecordHeader {
        RecordHeader {
            flags: FLAG_WRAP,
            generation,
            body_len: 0,
            offset,
            body_crc: 0,
        }
    }

    /// Encodes the header; `epoch` (from the device header) seeds the header
    /// CRC.
    pub fn encode(&self, epoch: u64) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(RECORD_MAGIC);
        b[4..6].copy_from_slice(&self.flags.to_le_bytes());
        // 6..8 reserved
        b[8..12].copy_from_slice(&self.generation.to_le_bytes());
        b[12..16].copy_from_slice(&self.body_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = header_crc(epoch, &b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a record header (magic, CRC, known flags). The
    /// caller still has to check the offset, generation and body CRC.
    pub fn decode(buf: &[u8], epoch: u64) -> Result<RecordHeader, WalError> {
        if buf.len() < RECORD_HEADER_LEN {
            return Err(corrupt("record header too short"));
        }
        let stored = u32::from_le_bytes([buf[28], buf[29], buf[30], buf[31]]);
        if header_crc(epoch, &buf[..28]) != stored {
            return Err(corrupt("record header CRC"));
        }
        let h = match Self::parse(buf) {
            Ok((_, h)) => h,
            Err(e) => return parse_err(e),
        };
        match h.flags {
            FLAG_DATA => Ok(h),
            FLAG_WRAP if h.body_len == 0 => Ok(h),
            _ => Err(corrupt("record flags")),
        }
    }

    fn parse(i: &[u8]) -> IResult<&[u8], RecordHeader> {
        let (i, _) = tag(&RECORD_MAGIC[..])(i)?;
        let (i, flags) = le_u16(i)?;
        let (i, _reserved) = le_u16(i)?;
        let (i, generation) = le_u32(i)?;
        let (i, body_len) = le_u32(i)?;
        let (i, offset) = le_u64(i)?;
        let (i, body_crc) = le_u32(i)?;
        Ok((
            i,
            RecordHeader {
                flags,
                generation,
                body_len,
                offset,
                body_crc,
            },
        ))
    }

    pub fn is_wrap(&self) -> bool {
        self.flags == FLAG_WRAP
    }

    /// Header plus body, in bytes.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.body_len)
    }

    pub fn body_matches(&self, body: &[u8]) -> bool {
        body.len() == self.body_len as usize && crc32c::crc32c(body) == self.body_crc
    }
}

fn header_crc(epoch: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&epoch.to_le_bytes()), bytes)
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub fn align_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (v + align - 1) & !(align - 1)
}

/// Rounds `v` down to a multiple of `align` (a power of two).
pub fn align_down(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    v & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn device_header() -> impl Strategy<Value = DeviceHeader> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<i32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(block_size, slice_count, broker_id, slice_size, data_start, epoch)| {
                    DeviceHeader {
                        version: FORMAT_VERSION,
                        block_size,
                        slice_count,
                        broker_id,
                        slice_size,
                        data_start,
                        epoch,
                    }
                },
            )
    }

    fn slice_header() -> impl Strategy<Value = SliceHeader> {
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(slice, epoch, seq, generation, capacity, trim, ts)| SliceHeader {
                    slice,
                    epoch,
                    seq,
                    generation,
                    capacity,
                    trim_offset: trim,
                    scan_start: trim / 2,
                    last_write_ms: ts,
                },
            )
    }

    proptest! {
        #[test]
        fn device_header_round_trips(h in device_header()) {
            prop_assert_eq!(DeviceHeader::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn device_header_detects_any_flipped_byte(h in device_header(), i in 0..52usize, x in 1..=255u8) {
            let mut b = h.encode();
            b[i] ^= x;
            prop_assert!(DeviceHeader::decode(&b).is_err());
        }

        #[test]
        fn slice_header_round_trips(h in slice_header()) {
            prop_assert_eq!(SliceHeader::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn slice_header_detects_any_flipped_byte(h in slice_header(), i in 0..SLICE_HEADER_LEN, x in 1..=255u8) {
            let mut b = h.encode();
            b[i] ^= x;
            prop_assert!(SliceHeader::decode(&b).is_err());
        }

        #[test]
        fn record_round_trips(body in proptest::collection::vec(any::<u8>(), 0..2048),
                              offset in any::<u64>(), generation in any::<u32>(), epoch in any::<u64>()) {
            let h = RecordHeader::for_body(&body, offset, generation);
            let d = RecordHeader::decode(&h.encode(epoch), epoch).unwrap();
            prop_assert_eq!(d, h);
            prop_assert!(d.body_matches(&body));
        }

        /// Any single corrupted byte of a record (header or body) is caught by
        /// the header CRC or the body CRC.
        #[test]
        fn record_corruption_is_detected(body in proptest::collection::vec(any::<u8>(), 1..512),
                                         offset in any::<u64>(), epoch in any::<u64>(),
                                         pos in any::<prop::sample::Index>(), x in 1..=255u8) {
            let h = RecordHeader::for_body(&body, offset, 7);
            let mut rec = h.encode(epoch).to_vec();
            rec.extend_from_slice(&body);
            let i = pos.index(rec.len());
            rec[i] ^= x;
            let ok = match RecordHeader::decode(&rec[..RECORD_HEADER_LEN], epoch) {
                Ok(d) => d.offset == offset && d.body_matches(&rec[RECORD_HEADER_LEN..]),
                Err(_) => false,
            };
            prop_assert!(!ok, "corruption at byte {} not detected", i);
        }

        /// A record written under another format epoch never decodes.
        #[test]
        fn record_of_other_epoch_is_rejected(offset in any::<u64>(), e1 in any::<u64>(), e2 in any::<u64>()) {
            prop_assume!(e1 != e2);
            let h = RecordHeader::for_body(b"x", offset, 1);
            prop_assert!(RecordHeader::decode(&h.encode(e1), e2).is_err());
        }

        /// Decoders never panic on arbitrary bytes.
        #[test]
        fn decoders_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..128), epoch in any::<u64>()) {
            let _ = DeviceHeader::decode(&buf);
            let _ = SliceHeader::decode(&buf);
            let _ = RecordHeader::decode(&buf, epoch);
        }
    }

    #[test]
    fn newest_valid_slice_header_wins() {
        let h = SliceHeader {
            slice: 3,
            epoch: 9,
            seq: 4,
            generation: 1,
            capacity: 1 << 20,
            trim_offset: 100,
            scan_start: 64,
            last_write_ms: 0,
        };
        let newer = SliceHeader { seq: 5, ..h };
        let (a, b) = (h.encode(), newer.encode());
        assert_eq!(SliceHeader::newest(&a, &b, 3, 9, 1 << 20).unwrap(), newer);
        let mut torn = b;
        torn[50] ^= 1;
        assert_eq!(SliceHeader::newest(&a, &torn, 3, 9, 1 << 20).unwrap(), h);
        // Wrong epoch (an older format of the device) is ignored.
        assert!(SliceHeader::newest(&a, &b, 3, 8, 1 << 20).is_err());
        assert!(SliceHeader::newest(&a, &b, 2, 9, 1 << 20).is_err());
    }

    #[test]
    fn magic_starts_with_non_zero_byte() {
        // Recovery relies on it to tell padding from a record header.
        assert_ne!(RECORD_MAGIC[0], 0);
    }
}
