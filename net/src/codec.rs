//! Request decoding and response encoding around the `kafka-protocol` codecs:
//! header versions, flexible versions and tagged fields, and the errors a
//! broker must tell apart (unknown API, unsupported version, malformed body).
//!
//! Sans-IO: takes and returns byte buffers. Never panics on input: the
//! codecs are called under `catch_unwind` as a last line of defence.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::versions::is_supported;

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
    /// The client's address (`ip:port`) as the connection saw it; empty
    /// when decoded outside a connection. Groups report it as client_host.
    pub peer: std::rc::Rc<str>,
    /// How long reading and decoding it took (zero outside a connection).
    pub timing: Timing,
    /// The throttle the service asked for when the request was read
    /// (`Service::on_read`): the connection reads nothing more for that long,
    /// and the response says so.
    pub throttle: std::time::Duration,
    /// The whole frame the request was decoded from; `header` and `body`
    /// hold views of it. A handler that takes it and drops every view can
    /// have the buffer back to itself (`Bytes::try_into_mut`): Produce
    /// stamps offsets into the batches where they arrived.
    pub frame: Bytes,
    /// The user the connection authenticated as (SASL), if it did.
    pub principal: Option<std::rc::Rc<str>>,
}

/// Where a request's time went before its handler ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// From its length prefix read to its last byte read.
    pub frame_read: std::time::Duration,
    pub decode: std::time::Duration,
}

/// Where a request's time went, once its response is written: what the
/// connection loop hands `Service::written`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    pub frame_read: std::time::Duration,
    pub decode: std::time::Duration,
    /// The handler (`Service::call`), waits included.
    pub handle: std::time::Duration,
    pub encode: std::time::Duration,
    /// From the response encoded to its write starting (it waits for the
    /// responses before it, which go out in request order).
    pub write_wait: std::time::Duration,
    /// Writing and flushing it to the socket.
    pub write: std::time::Duration,
}

impl Request {
    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame of {0} bytes is too short for a request header")]
    Truncated(usize),
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApi { api_key: i16, correlation_id: i32 },
    #[error("{api_key:?} v{version} is not supported (correlation id {correlation_id})")]
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Malformed {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode {api_key:?} v{version} response: {reason}")]
pub struct EncodeError {
    pub api_key: ApiKey,
    pub version: i16,
    pub reason: String,
}

/// Decodes one request frame (without its size prefix).
pub fn decode_request(mut frame: Bytes) -> Result<Request, DecodeError> {
    let whole = frame.clone();
    if frame.len() < 8 {
        return Err(DecodeError::Truncated(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| DecodeError::UnknownApi {
        api_key: raw_key,
        correlation_id,
    })?;
    if !is_supported(api_key, version) {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            version,
            correlation_id,
        });
    }
    let malformed = |reason: String| DecodeError::Malformed {
        api_key,
        version,
        reason,
    };
    let header_version = api_key.request_header_version(version);
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        let header = RequestHeader::decode(&mut frame, header_version)
            .map_err(|e| format!("header: {e}"))?;
        let body = RequestKind::decode(api_key, &mut frame, version).map_err(|e| e.to_string())?;
        Ok::<_, String>((header, body))
    }));
    let (header, body) = match decoded {
        Ok(Ok(pair)) => pair,
        Ok(Err(reason)) => return Err(malformed(reason)),
        Err(_) => return Err(malformed("decoder panicked".into())),
    };
    Ok(Request {
        api_key,
        version,
        header,
        body,
        peer: std::rc::Rc::from(""),
        timing: Timing::default(),
        throttle: std::time::Duration::ZERO,
        frame: whole,
        principal: None,
    })
}

/// A response, and record sets that go into it by reference: each
/// `Spliced` takes the place of its placeholder (the value of a records
/// field of the body) when the response is written, so its batches are
/// never copied into the response's buffer. `mute`: how long the
/// connection reads no further request once this response is written (a
/// client over its quota; Kafka mutes the channel likewise, KIP-219).
pub struct Reply {
    pub body: ResponseKind,
    pub spliced: Vec<Spliced>,
    pub mute: std::time::Duration,
}

impl From<ResponseKind> for Reply {
    fn from(body: ResponseKind) -> Reply {
        Reply {
            body,
            spliced: Vec::new(),
            mute: std::time::Duration::ZERO,
        }
    }
}

/// Records sent by reference: `placeholder`, `PLACEHOLDER_LEN` random
/// bytes, stands in the body for `parts`, which follow one another.
/// Placeholders are listed in the order the body encodes them.
#[derive(Debug, Clone)]
pub struct Spliced {
    pub placeholder: Bytes,
    pub parts: Vec<Bytes>,
}

pub const PLACEHOLDER_LEN: usize = 16;

impl Spliced {
    /// `parts` behind a fresh random placeholder.
    pub fn new(parts: Vec<Bytes>) -> Spliced {
        Spliced {
            placeholder: Bytes::copy_from_slice(&rand::random::<[u8; PLACEHOLDER_LEN]>()),
            parts,
        }
    }

    fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }
}

/// Encodes a reply as the pieces to write, in order, size prefix included:
/// the body's encoding, cut where each spliced record set goes in. Should a
/// placeholder not be found where it must be, the records are copied into
/// the body instead, so the bytes sent are right either way.
pub fn encode_reply(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    reply: Reply,
) -> Result<Vec<Bytes>, EncodeError> {
    let Reply {
        mut body, spliced, ..
    } = reply;
    let frame = encode_response(api_key, version, correlation_id, &body)?;
    if spliced.is_empty() {
        return Ok(vec![frame]);
    }
    let flexible = matches!(&body, ResponseKind::Fetch(_)) && version >= 12;
    if let Some(pieces) = splice(&frame, flexible, &spliced) {
        return Ok(pieces);
    }
    inline_spliced(&mut body, &spliced);
    Ok(vec![encode_response(
        api_key,
        version,
        correlation_id,
        &body,
    )?])
}

/// `frame` with each placeholder (and the length before it) replaced by
/// its records (and their length); `None` if one is not where it must be.
fn splice(frame: &Bytes, flexible: bool, spliced: &[Spliced]) -> Option<Vec<Bytes>> {
    let placeholder_len: &[u8] = if flexible {
        &[PLACEHOLDER_LEN as u8 + 1]
    } else {
        &[0, 0, 0, PLACEHOLDER_LEN as u8]
    };
    let mut pieces = Vec::with_capacity(3 * spliced.len() + 2);
    pieces.push(Bytes::new()); // the size prefix, once known
    let mut total = frame.len().checked_sub(4)?;
    let mut cursor = 4;
    for s in spliced {
        let at = cursor + memchr::memmem::find(frame.get(cursor..)?, &s.placeholder)?;
        let before = at
            .checked_sub(placeholder_len.len())
            .filter(|&b| b >= cursor)?;
        if frame[before..at] != *placeholder_len {
            return None;
        }
        let len = s.len();
        let mut prefix = BytesMut::with_capacity(5);
        if flexible {
            let mut n = u32::try_from(len).ok()?.checked_add(1)?;
            while n >= 0x80 {
                prefix.put_u8((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            prefix.put_u8(n as u8);
        } else {
            prefix.put_i32(i32::try_from(len).ok()?);
        }
        total = total - placeholder_len.len() - PLACEHOLDER_LEN + prefix.len() + len;
        pieces.push(frame.slice(cursor..before));
        pieces.push(prefix.freeze());
        pieces.extend(s.parts.iter().filter(|p| !p.is_empty()).cloned());
        cursor = at + PLACEHOLDER_LEN;
    }
    pieces.push(frame.slice(cursor..));
    pieces[0] = Bytes::copy_from_slice(&i32::try_from(total).ok()?.to_be_bytes());
    pieces.retain(|p| !p.is_empty());
    Some(pieces)
}

/// Puts each spliced record set into the body in place of its placeholder
/// (a copy): the path for a body whose placeholders could not be found.
fn inline_spliced(body: &mut ResponseKind, spliced: &[Spliced]) {
    let ResponseKind::Fetch(f) = body else {
        return;
    };
    for p in f.responses.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        let Some(s) = p
            .records
            .as_ref()
            .and_then(|r| spliced.iter().find(|s| s.placeholder == r))
        else {
            continue;
        };
        let mut joined = BytesMut::with_capacity(s.len());
        for part in &s.parts {
            joined.extend_from_slice(part);
        }
        p.records = Some(joined.freeze());
    }
}

/// Encodes a response frame, size prefix included.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, EncodeError> {
    let err = |reason: String| EncodeError {
        api_key,
        version,
        reason,
    };
    // A Fetch response is mostly record batches: sized up front, it is
    // encoded in one buffer that never regrows (each regrowth copies all of
    // it again).
    let capacity = match body {
        ResponseKind::Fetch(f) => 64 + f.compute_size(version).unwrap_or(0),
        _ => 256,
    };
    let mut buf = BytesMut::with_capacity(capacity);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(|e| err(e.to_string()))?;
    body.encode(&mut buf, version)
        .map_err(|e| err(e.to_string()))?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use proptest::prelude::*;

    /// A Fetch response with two partitions whose records are `a` and `b`
    /// (by placeholder when `spliced` is given), and a third with none.
    fn fetch_body(records: [Option<Bytes>; 2]) -> ResponseKind {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::{FetchResponse, TopicName};
        let mut t = FetchableTopicResponse::default();
        t.topic = TopicName(kafka_protocol::protocol::StrBytes::from_static_str("topic"));
        for (i, r) in records.into_iter().enumerate() {
            let mut p = PartitionData::default();
            p.partition_index = i as i32;
            p.high_watermark = 1 << 40;
            p.records = r;
            t.partitions.push(p);
        }
        t.partitions.push(PartitionData::default());
        let mut f = FetchResponse::default();
        f.responses.push(t);
        ResponseKind::Fetch(f)
    }

    fn records(n: usize, seed: u8) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(vec![seed.wrapping_add(i as u8); 20_000 + i * 700]))
            .collect()
    }

    #[test]
    fn spliced_records_are_sent_by_reference_byte_for_byte() {
        for version in [4i16, 11, 12, 16] {
            let (a, b) = (records(3, 1), records(200, 9));
            let joined = |parts: &[Bytes]| Bytes::from(parts.concat());
            let want = encode_response(
                ApiKey::Fetch,
                version,
                77,
                &fetch_body([Some(joined(&a)), Some(joined(&b))]),
            )
            .unwrap();
            let (sa, sb) = (Spliced::new(a.clone()), Spliced::new(b.clone()));
            let reply = Reply {
                body: fetch_body([Some(sa.placeholder.clone()), Some(sb.placeholder.clone())]),
                spliced: vec![sa, sb],
                mute: std::time::Duration::ZERO,
            };
            let pieces = encode_reply(ApiKey::Fetch, version, 77, reply).unwrap();
            assert_eq!(pieces.concat(), &want[..], "v{version}");
            // The batches went in as they were, not copied.
            assert!(
                pieces.iter().any(|p| p.as_ptr() == a[0].as_ptr()),
                "v{version}"
            );
            assert!(
                pieces.iter().any(|p| p.as_ptr() == b[199].as_ptr()),
                "v{version}"
            );
        }
    }

    #[test]
    fn a_placeholder_not_found_in_order_means_a_copy_not_a_wrong_frame() {
        let version = 12;
        let (a, b) = (records(2, 3), records(2, 5));
        let want = encode_response(
            ApiKey::Fetch,
            version,
            1,
            &fetch_body([Some(Bytes::from(a.concat())), Some(Bytes::from(b.concat()))]),
        )
        .unwrap();
        let (sa, sb) = (Spliced::new(a), Spliced::new(b));
        // Listed in the wrong order: the second is not found after the first.
        let reply = Reply {
            body: fetch_body([Some(sa.placeholder.clone()), Some(sb.placeholder.clone())]),
            spliced: vec![sb, sa],
            mute: std::time::Duration::ZERO,
        };
        let pieces = encode_reply(ApiKey::Fetch, version, 1, reply).unwrap();
        assert_eq!(pieces.len(), 1, "copied into one frame");
        assert_eq!(pieces[0], want);
    }

    /// Found by `fuzz/fuzz_targets/request.rs`: a tag past `i32::MAX` was
    /// kept under a negative key that the encoder counts but never writes.
    #[test]
    fn a_tag_beyond_i32_is_malformed() {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::DescribeCluster as i16);
        frame.put_i16(0);
        frame.put_i32(7);
        frame.put_i16(0); // client id ""
        frame.put_slice(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0]); // tag 2^32-1, empty
        frame.put_slice(&[0, 0]); // body: false, no tagged fields
        match decode_request(frame.freeze()) {
            Err(DecodeError::Malformed { reason, .. }) => {
                assert!(reason.contains("tag"), "{reason}")
            }
            other => panic!("decoded: {other:?}"),
        }
    }

    fn request_frame<T: Encodable>(key: ApiKey, version: i16, corr: i32, body: &T) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(corr)
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_flexible_and_old_headers() {
        for v in [0, 3] {
            let f = request_frame(ApiKey::ApiVersions, v, 7, &ApiVersionsRequest::default());
            let r = decode_request(f).unwrap();
            assert_eq!(
                (r.api_key, r.version, r.correlation_id()),
                (ApiKey::ApiVersions, v, 7)
            );
        }
        let f = request_frame(ApiKey::Metadata, 12, 9, &MetadataRequest::default());
        assert!(matches!(
            decode_request(f).unwrap().body,
            RequestKind::Metadata(_)
        ));
    }

    #[test]
    fn tells_errors_apart() {
        let mut f = BytesMut::new();
        f.put_i16(9999);
        f.put_i16(0);
        f.put_i32(5);
        assert_eq!(
            decode_request(f.freeze()).unwrap_err(),
            DecodeError::UnknownApi {
                api_key: 9999,
                correlation_id: 5
            }
        );
        let f = request_frame(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
        let mut raw = BytesMut::from(&f[..]);
        raw[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            decode_request(raw.freeze()),
            Err(DecodeError::UnsupportedVersion { version: 99, .. })
        ));
        let f = request_frame(ApiKey::Metadata, 12, 9, &MetadataRequest::default());
        let cut = f.slice(0..f.len() - 3);
        assert!(matches!(
            decode_request(cut),
            Err(DecodeError::Malformed { .. })
        ));
        assert_eq!(
            decode_request(Bytes::from_static(b"abc")).unwrap_err(),
            DecodeError::Truncated(3)
        );
    }

    #[test]
    fn huge_array_count_does_not_allocate() {
        // Metadata v1: header, then topics array claiming i32::MAX entries.
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::Metadata as i16);
        f.put_i16(1);
        f.put_i32(1);
        f.put_i16(-1);
        f.put_i32(i32::MAX);
        assert!(matches!(
            decode_request(f.freeze()),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn response_has_size_prefix_and_correlation_id() {
        let body = ResponseKind::ApiVersions(crate::versions::api_versions_response(0, 3));
        let out = encode_response(ApiKey::ApiVersions, 3, 42, &body).unwrap();
        assert_eq!(
            i32::from_be_bytes(out[0..4].try_into().unwrap()) as usize,
            out.len() - 4
        );
        assert_eq!(i32::from_be_bytes(out[4..8].try_into().unwrap()), 42);
        // ApiVersions' response header is v0 even for flexible versions: the
        // error code follows the correlation id directly.
        assert_eq!(&out[8..10], &[0, 0]);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail(data in proptest::collection::vec(any::<u8>(), 0..300), key in 0i16..70, ver in 0i16..13) {
            let mut f = BytesMut::new();
            f.put_i16(key);
            f.put_i16(ver);
            f.put_i32(1);
            f.extend_from_slice(&data);
            let _ = decode_request(f.freeze());
        }
    }
}
