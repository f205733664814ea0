//! One blocking TCP connection to one Kafka node: framing, request
//! headers, and ApiVersions negotiation.
//!
//! Requests go one at a time (a CLI has no use for pipelining). Every
//! length read from the wire is bounded before anything is allocated for
//! it. This module knows framing and versions only, never what a request
//! means or which node should get it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::error::{CtlError, Result};

/// Largest response frame accepted: a bigger length prefix means a broken
/// stream, not a response.
pub const MAX_FRAME: usize = 100 << 20;
const CLIENT_ID: &str = "brokerctl";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one response; requests that wait on the broker side
/// (Fetch, CreateTopics) ask for less than this.
const IO_TIMEOUT: Duration = Duration::from_secs(40);
const UNSUPPORTED_VERSION: i16 = 35;

/// A negotiated connection to one node.
pub struct Connection {
    addr: String,
    stream: TcpStream,
    next_correlation: i32,
    /// Broker's `(min, max)` per API key, from ApiVersions.
    versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects to `addr` (`host:port`) and negotiates API versions.
    pub fn open(addr: &str) -> Result<Connection> {
        let io = |source| CtlError::Io {
            addr: addr.to_string(),
            source,
        };
        let mut last = None;
        let mut stream = None;
        for sa in addr.to_socket_addrs().map_err(io)? {
            match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(io(e)),
            (None, None) => return Err(io(std::io::ErrorKind::NotFound.into())),
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            addr: addr.to_string(),
            stream,
            next_correlation: 1,
            versions: HashMap::new(),
        };
        conn.versions = conn.negotiate()?;
        Ok(conn)
    }

    /// ApiVersions v3; a broker that does not know v3 answers
    /// UNSUPPORTED_VERSION (in v0), and we ask again in v0.
    fn negotiate(&mut self) -> Result<HashMap<i16, (i16, i16)>> {
        let v3 = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp = match self.call_version(&v3, 3) {
            Ok(r) if r.error_code != UNSUPPORTED_VERSION => r,
            Ok(_) | Err(CtlError::Protocol { .. }) => {
                self.call_version(&ApiVersionsRequest::default(), 0)?
            }
            Err(e) => return Err(e),
        };
        CtlError::check(
            || format!("ApiVersions from {}", self.addr),
            resp.error_code,
            None,
        )?;
        Ok(api_ranges(&resp))
    }

    /// The version to send `R` at: the highest both this client's codec and
    /// the broker speak.
    pub fn version<R: Request>(&self) -> Result<i16> {
        let unsupported = || CtlError::Protocol {
            addr: self.addr.clone(),
            reason: format!(
                "the broker does not support {} in versions {}..{}",
                api_name(R::KEY),
                R::VERSIONS.min,
                R::VERSIONS.max
            ),
        };
        let &(min, max) = self.versions.get(&R::KEY).ok_or_else(unsupported)?;
        pick_version(R::VERSIONS.min, ours_max(R::KEY, R::VERSIONS.max), min, max)
            .ok_or_else(unsupported)
    }

    /// Sends `req` at the negotiated version and waits for the response.
    pub fn call<R: Request>(&mut self, req: &R) -> Result<R::Response> {
        let version = self.version::<R>()?;
        self.call_version(req, version)
    }

    /// Sends `req` at `version` and waits for the response.
    pub fn call_version<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        let correlation_id = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let frame =
            encode_frame(req, version, correlation_id).map_err(|reason| CtlError::Protocol {
                addr: self.addr.clone(),
                reason: format!("encoding {} v{version}: {reason}", api_name(R::KEY)),
            })?;
        let io = |source| CtlError::Io {
            addr: self.addr.clone(),
            source,
        };
        self.stream.write_all(&frame).map_err(io)?;
        let body = self.read_frame()?;
        let protocol = |reason: String| CtlError::Protocol {
            addr: self.addr.clone(),
            reason: format!("{} v{version} response: {reason}", api_name(R::KEY)),
        };
        decode_response::<R>(body, version, correlation_id).map_err(protocol)
    }

    fn read_frame(&mut self) -> Result<Bytes> {
        let io = |source| CtlError::Io {
            addr: self.addr.clone(),
            source,
        };
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(io)?;
        let len = frame_len(len).map_err(|reason| CtlError::Protocol {
            addr: self.addr.clone(),
            reason,
        })?;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).map_err(io)?;
        Ok(Bytes::from(buf))
    }
}

/// The highest version of `key` this tool speaks: the codec's, except where
/// a newer version changes what the tool would have to send. OffsetCommit
/// and OffsetFetch v10 name topics by id, and the tool names them by name.
fn ours_max(key: i16, codec_max: i16) -> i16 {
    match ApiKey::try_from(key) {
        Ok(ApiKey::OffsetCommit | ApiKey::OffsetFetch) => codec_max.min(9),
        _ => codec_max,
    }
}

/// The highest version in both `[ours_min, ours_max]` and
/// `[theirs_min, theirs_max]`.
fn pick_version(ours_min: i16, ours_max: i16, theirs_min: i16, theirs_max: i16) -> Option<i16> {
    let v = ours_max.min(theirs_max);
    (v >= ours_min.max(theirs_min)).then_some(v)
}

/// Validates a response length prefix.
fn frame_len(prefix: [u8; 4]) -> std::result::Result<usize, String> {
    let len = i32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(n) if (4..=MAX_FRAME).contains(&n) => Ok(n),
        _ => Err(format!(
            "response length {len} outside 4..={MAX_FRAME}: not a Kafka response"
        )),
    }
}

fn api_ranges(resp: &ApiVersionsResponse) -> HashMap<i16, (i16, i16)> {
    resp.api_keys
        .iter()
        .map(|k| (k.api_key, (k.min_version, k.max_version)))
        .collect()
}

/// The readable name of an API key (`Produce`, `Fetch`, ...).
pub fn api_name(key: i16) -> String {
    ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("api {key}"))
}

/// Length prefix, request header, body.
fn encode_frame<R: Request>(
    req: &R,
    version: i16,
    correlation_id: i32,
) -> std::result::Result<Bytes, String> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = R::header_version(version);
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + req.compute_size(version)?))
        .map_err(|e| e.to_string())?;
    let len = u32::try_from(size).map_err(|_| format!("request of {size} bytes"))?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_u32(len);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    req.encode(&mut buf, version).map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Checks the correlation id, strips the response header, decodes the body.
fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> std::result::Result<R::Response, String> {
    let header_version = R::Response::header_version(version);
    let header = ResponseHeader::decode(&mut frame, header_version)
        .map_err(|e| format!("bad response header: {e}"))?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "correlation id {} but expected {correlation_id}",
            header.correlation_id
        ));
    }
    R::Response::decode(&mut frame, version).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

    #[test]
    fn versions_meet_in_the_middle() {
        assert_eq!(pick_version(0, 13, 0, 12), Some(12));
        assert_eq!(pick_version(4, 18, 4, 17), Some(17));
        assert_eq!(pick_version(2, 7, 0, 1), None);
        assert_eq!(pick_version(0, 0, 0, 0), Some(0));
    }

    #[test]
    fn offsets_stay_on_topic_names() {
        use kafka_protocol::messages::{OffsetCommitRequest, OffsetFetchRequest};
        use kafka_protocol::protocol::Message;
        let key = |k: ApiKey| k as i16;
        assert_eq!(
            ours_max(key(ApiKey::OffsetFetch), OffsetFetchRequest::VERSIONS.max),
            9
        );
        assert_eq!(
            ours_max(key(ApiKey::OffsetCommit), OffsetCommitRequest::VERSIONS.max),
            9
        );
        assert_eq!(ours_max(key(ApiKey::Metadata), 13), 13);
    }

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(frame_len(8u32.to_be_bytes()), Ok(8));
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()).is_err());
        assert!(frame_len((-1i32).to_be_bytes()).is_err());
        assert!(frame_len(0u32.to_be_bytes()).is_err());
    }

    #[test]
    fn frame_round_trips_and_checks_correlation() {
        let frame = encode_frame(&MetadataRequest::default(), 12, 7).unwrap();
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);

        let resp = MetadataResponse::default();
        let mut buf = BytesMut::new();
        let hv = MetadataResponse::header_version(12);
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut buf, hv)
            .unwrap();
        resp.encode(&mut buf, 12).unwrap();
        let body = buf.freeze();
        assert_eq!(
            decode_response::<MetadataRequest>(body.clone(), 12, 7).unwrap(),
            resp
        );
        assert!(decode_response::<MetadataRequest>(body, 12, 8)
            .unwrap_err()
            .contains("correlation"));
    }
}
