//! Record-batch codecs (gzip, snappy in Kafka's xerial framing, lz4 frame,
//! zstd) with a bound on what decompression may produce, so a small batch
//! that expands hugely costs an error, not the shard's memory.
//!
//! Pure functions over byte slices, called on the shard that owns the
//! partition (log compaction, record checks on compacted topics). They are
//! CPU-bound: callers keep batches to `max.message.bytes` and the output to
//! `limit`. Never used on the produce fast path of other topics.

use std::io::{Read, Write};

/// Compression codec ids of a v2 batch's attributes.
pub const NONE: i16 = 0;
pub const GZIP: i16 = 1;
pub const SNAPPY: i16 = 2;
pub const LZ4: i16 = 3;
pub const ZSTD: i16 = 4;

/// Why a payload could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("decompressed size exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("unknown compression codec {0}")]
    Unknown(i16),
    #[error("{0}")]
    Corrupt(String),
}

/// xerial snappy-java's stream header, which Kafka's snappy batches carry.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
const XERIAL_BLOCK: usize = 32 * 1024;

/// Largest zstd window accepted (2^25 = 32 MiB), so a crafted frame cannot
/// make the decoder allocate Zstandard's 128 MiB maximum.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// Decompresses `input` with `codec`, failing once the output would pass
/// `limit` bytes.
pub fn decompress(codec: i16, input: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    match codec {
        NONE => {
            if input.len() > limit {
                return Err(CodecError::TooLarge(limit));
            }
            Ok(input.to_vec())
        }
        GZIP => read_bounded(flate2::read::MultiGzDecoder::new(input), limit),
        SNAPPY => snappy_decompress(input, limit),
        LZ4 => {
            let d =
                lz4::Decoder::new(input).map_err(|e| CodecError::Corrupt(format!("lz4: {e}")))?;
            read_bounded(d, limit)
        }
        ZSTD => {
            let mut d = zstd::stream::read::Decoder::new(input)
                .map_err(|e| CodecError::Corrupt(format!("zstd: {e}")))?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| CodecError::Corrupt(format!("zstd: {e}")))?;
            read_bounded(d, limit)
        }
        other => Err(CodecError::Unknown(other)),
    }
}

/// Compresses `input` with `codec`, in the framing Kafka clients read.
pub fn compress(codec: i16, input: &[u8]) -> Result<Vec<u8>, CodecError> {
    let io = |e: std::io::Error| CodecError::Corrupt(e.to_string());
    match codec {
        NONE => Ok(input.to_vec()),
        GZIP => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(input).map_err(io)?;
            e.finish().map_err(io)
        }
        SNAPPY => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + input.len() / 2);
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1u32.to_be_bytes()); // version
            out.extend_from_slice(&1u32.to_be_bytes()); // minimum compatible version
            let mut enc = snap::raw::Encoder::new();
            for chunk in input.chunks(XERIAL_BLOCK) {
                let block = enc
                    .compress_vec(chunk)
                    .map_err(|e| CodecError::Corrupt(format!("snappy: {e}")))?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
        LZ4 => {
            let mut e = lz4::EncoderBuilder::new()
                .level(4)
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::new())
                .map_err(io)?;
            e.write_all(input).map_err(io)?;
            let (out, r) = e.finish();
            r.map_err(io)?;
            Ok(out)
        }
        ZSTD => zstd::bulk::compress(input, 3).map_err(io),
        other => Err(CodecError::Unknown(other)),
    }
}

fn read_bounded(r: impl Read, limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    r.take((limit as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(CodecError::TooLarge(limit));
    }
    Ok(out)
}

fn snappy_decompress(input: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let corrupt = |e: snap::Error| CodecError::Corrupt(format!("snappy: {e}"));
    let mut dec = snap::raw::Decoder::new();
    let mut out = Vec::new();
    let mut raw_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CodecError> {
        let n = snap::raw::decompress_len(block).map_err(corrupt)?;
        if n > limit.saturating_sub(out.len()) {
            return Err(CodecError::TooLarge(limit));
        }
        let at = out.len();
        out.resize(at + n, 0);
        dec.decompress(block, &mut out[at..]).map_err(corrupt)?;
        Ok(())
    };
    if !input.starts_with(XERIAL_MAGIC) {
        raw_block(input, &mut out)?;
        return Ok(out);
    }
    let mut rest = input
        .get(XERIAL_HEADER_LEN..)
        .ok_or_else(|| CodecError::Corrupt("snappy: truncated stream header".into()))?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| CodecError::Corrupt("snappy: truncated block length".into()))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = tail
            .get(..len)
            .ok_or_else(|| CodecError::Corrupt("snappy: block runs past the payload".into()))?;
        raw_block(block, &mut out)?;
        rest = &tail[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/fuzz_targets/record_batch.rs`: a limit of `usize::MAX`
    /// (no bound) overflowed the bound's arithmetic.
    #[test]
    fn no_bound_at_all_does_not_overflow() {
        for codec in [NONE, GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = compress(codec, b"records").unwrap();
            assert_eq!(decompress(codec, &packed, usize::MAX).unwrap(), b"records");
        }
    }

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample();
        for codec in [NONE, GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = compress(codec, &data).unwrap();
            assert_eq!(
                decompress(codec, &packed, data.len()).unwrap(),
                data,
                "{codec}"
            );
        }
    }

    #[test]
    fn output_beyond_the_limit_is_refused() {
        let zeros = vec![0u8; 4 << 20];
        for codec in [NONE, GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = compress(codec, &zeros).unwrap();
            assert_eq!(
                decompress(codec, &packed, 1 << 20),
                Err(CodecError::TooLarge(1 << 20)),
                "{codec}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [GZIP, SNAPPY, LZ4, ZSTD, 7] {
            for junk in [
                &b""[..],
                b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff\xff\xff\xff",
                b"hello world",
            ] {
                let _ = decompress(codec, junk, 1 << 20);
            }
        }
    }

    #[test]
    fn reads_what_kafka_protocol_writes() {
        use bytes::BytesMut;
        use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
        let data = sample();
        let write = |f: &dyn Fn(&mut BytesMut)| {
            let mut b = BytesMut::new();
            f(&mut b);
            b.to_vec()
        };
        let fill = |t: &mut BytesMut| -> anyhow::Result<()> {
            t.extend_from_slice(&sample());
            Ok(())
        };
        let gz = write(&|b| Gzip::compress(b, fill).unwrap());
        let sn = write(&|b| Snappy::compress(b, fill).unwrap());
        let lz = write(&|b| Lz4::compress(b, fill).unwrap());
        let zs = write(&|b| Zstd::compress(b, fill).unwrap());
        for (codec, packed) in [(GZIP, gz), (SNAPPY, sn), (LZ4, lz), (ZSTD, zs)] {
            assert_eq!(
                decompress(codec, &packed, data.len()).unwrap(),
                data,
                "{codec}"
            );
        }
    }
}
