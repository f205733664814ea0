//! Record batches and their codecs, the way the broker looks inside them:
//! produce validation, decompression under a bound for every codec, record
//! parsing, and the rebuild that log compaction does.
//!
//! The first byte picks a mode: the input as a produce payload; the input as
//! compressed bytes of each codec; or the input as records wrapped in a batch
//! with a correct CRC and compressed with a chosen codec, so that the record
//! parser and the rebuild see more than CRC failures. Round trips must hold:
//! compress then decompress gives the input back, and a rebuilt batch
//! validates and holds exactly the records kept.

use super::{batch, Choices};
use bytes::{Bytes, BytesMut};
use storage::batch::{parse_header, validate_batches, validate_owned_batches};
use storage::codec::{self, CodecError};
use storage::records::{parse_records, rebuild, records_section};

/// Small, so that a bomb is found cheaply; the broker's is 64 MiB.
const LIMIT: usize = 1 << 20;

const CODECS: [i16; 5] = [
    codec::NONE,
    codec::GZIP,
    codec::SNAPPY,
    codec::LZ4,
    codec::ZSTD,
];

/// Looks inside one batch as log compaction does, and checks the rebuild.
fn inspect(b: &[u8], keep_mask: u8) {
    let Ok(h) = parse_header(b) else { return };
    let Ok(section) = records_section(b, &h, LIMIT) else {
        return;
    };
    assert!(section.len() <= LIMIT, "decompressed past the limit");
    let Ok(records) = parse_records(&section, h.records_count) else {
        return;
    };
    assert_eq!(records.len(), h.records_count.max(0) as usize);
    let kept: Vec<&[u8]> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| keep_mask & (1 << (i % 8)) != 0)
        .map(|(_, r)| r.raw)
        .collect();
    let Ok(out) = rebuild(b, &h, &kept) else {
        return;
    };
    let h2 = parse_header(&out).expect("a rebuilt batch has a header");
    assert_eq!(h2.total_len(), out.len(), "rebuilt batch length");
    assert_eq!(h2.crc, crc32c::crc32c(&out[21..]), "rebuilt batch CRC");
    if !kept.is_empty() {
        // An emptied batch keeps its offsets on disk, but a producer may not
        // send one, so only a non-empty batch must pass produce validation.
        let v = validate_batches(&out, usize::MAX).expect("a rebuilt batch validates");
        assert_eq!(v.len(), 1);
    }
    assert_eq!(
        h2.base_offset, h.base_offset,
        "rebuild moved the base offset"
    );
    assert_eq!(
        h2.last_offset_delta, h.last_offset_delta,
        "rebuild changed the last offset"
    );
    assert_eq!(h2.records_count as usize, kept.len());
    let section2 = records_section(&out, &h2, usize::MAX).expect("rebuilt batch decompresses");
    let again = parse_records(&section2, h2.records_count).expect("rebuilt records parse");
    let raws: Vec<&[u8]> = again.iter().map(|r| r.raw).collect();
    assert_eq!(raws, kept, "rebuild changed the records kept");
}

/// One input, as `cargo fuzz` hands it over (and as the corpus replay does).
pub fn run(data: &[u8]) {
    let mut c = Choices::new(data);
    let mode = c.u8();
    match mode % 4 {
        // A produce payload as it arrives.
        0 => {
            let keep = c.u8();
            let payload = Bytes::copy_from_slice(c.rest());
            let shared = validate_batches(&payload, 1 << 20);
            // A payload the handler owns is cut into the same batches.
            let owned = validate_owned_batches(BytesMut::from(&payload[..]), 1 << 20);
            match (&shared, &owned) {
                (Ok(a), Ok(b)) => {
                    let a: Vec<&[u8]> = a.iter().map(|v| &v.bytes[..]).collect();
                    let b: Vec<&[u8]> = b.iter().map(|v| &v.bytes[..]).collect();
                    assert_eq!(a, b, "owned and shared validation disagree");
                }
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => panic!("owned and shared validation disagree"),
            }
            if let Ok(batches) = shared {
                for b in &batches {
                    assert!(b.bytes.len() <= 1 << 20);
                    inspect(&b.bytes, keep);
                }
            }
        }
        // Compressed bytes of each codec, bounded.
        1 => {
            let codec = CODECS[usize::from(c.u8()) % CODECS.len()];
            let limit = usize::from(c.u16()) * 16;
            let input = c.rest();
            match codec::decompress(codec, input, limit) {
                Ok(out) => assert!(out.len() <= limit, "decompressed past the limit"),
                Err(CodecError::TooLarge(n)) => assert_eq!(n, limit),
                Err(_) => {}
            }
            let packed = codec::compress(codec, input).expect("compression never fails");
            let back =
                codec::decompress(codec, &packed, input.len()).expect("own output decompresses");
            assert_eq!(back, input, "compress/decompress round trip");
        }
        // Well-formed records built from the input: they must parse back.
        3 => {
            let codec = CODECS[usize::from(c.u8()) % CODECS.len()];
            let keep = c.u8();
            let mut section = Vec::new();
            let mut keys = Vec::new();
            let mut i = 0;
            while !c.is_empty() && i < 64 {
                let shape = c.u8();
                let key = (shape & 1 != 0).then(|| c.bytes(usize::from(shape >> 4)));
                let value = (shape & 2 != 0).then(|| {
                    let n = usize::from(c.u8());
                    c.bytes(n)
                });
                section.extend_from_slice(&super::record(i, key, value));
                keys.push(key);
                i += 1;
            }
            if i == 0 {
                return;
            }
            let packed = codec::compress(codec, &section).expect("compression never fails");
            let b = batch(0, codec, i, &packed);
            let v = validate_batches(&b, usize::MAX).expect("a well-formed batch validates");
            let h = v[0].header;
            let plain = records_section(&b, &h, usize::MAX).expect("records decompress");
            let records =
                parse_records(&plain, h.records_count).expect("well-formed records parse");
            let got: Vec<Option<&[u8]>> = records.iter().map(|r| r.key).collect();
            assert_eq!(got, keys, "keys differ from those written");
            inspect(&b, keep);
        }
        // Records (the input) in a well-formed batch with a chosen codec.
        _ => {
            let codec = CODECS[usize::from(c.u8()) % CODECS.len()];
            let count = i32::from(c.u8() % 32);
            let keep = c.u8();
            let raw = c.rest();
            let section = codec::compress(codec, raw).expect("compression never fails");
            let b = batch(1000, codec, count, &section);
            inspect(&b, keep);
            if let Ok(v) = validate_batches(&b, 1 << 20) {
                assert_eq!(v.len(), 1);
                let _ = storage::records::all_records_keyed(&v[0].bytes, LIMIT);
            }
        }
    }
}
