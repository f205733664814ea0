//! One TCP connection to one Kafka node, with pipelined requests.
//!
//! A writer task sends frames in submission order and a reader task matches
//! responses to requests by correlation id, so any number of requests can be
//! in flight; callers bound that number themselves. When the connection
//! fails, every outstanding and later request fails with the reason.
//! This module knows framing and headers only, never what a request means.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::{PerfError, Result};

/// Largest response frame we accept; a bigger length prefix means a broken
/// stream, not a response.
const MAX_FRAME: usize = 256 << 20;
const CLIENT_ID: &str = "perf";

/// The highest version of each API this client speaks. Produce 13 and
/// Fetch 13+ name topics by id only; staying below keeps names working.
pub fn client_max_version(key: ApiKey) -> i16 {
    match key {
        ApiKey::Produce => 12,
        ApiKey::Fetch => 12,
        ApiKey::Metadata => 12,
        ApiKey::ListOffsets => 7,
        ApiKey::CreateTopics => 7,
        ApiKey::ApiVersions => 3,
        ApiKey::InitProducerId => 4,
        _ => 0,
    }
}

type Reply = oneshot::Sender<Result<Bytes>>;

struct Pending {
    correlation_id: i32,
    response_header_version: i16,
    reply: Reply,
}

struct Outgoing {
    frame: Bytes,
    pending: Option<Pending>,
}

/// A connection to one node. Cheap to share behind an `Arc`.
pub struct Connection {
    addr: String,
    tx: mpsc::UnboundedSender<Outgoing>,
    next_correlation: AtomicI32,
    versions: HashMap<i16, (i16, i16)>,
    failure: Arc<Mutex<Option<String>>>,
}

/// A response still on its way.
pub struct ResponseFuture<R: Request> {
    rx: Option<oneshot::Receiver<Result<Bytes>>>,
    version: i16,
    addr: String,
    _r: std::marker::PhantomData<R>,
}

impl<R: Request> ResponseFuture<R> {
    /// Waits for the response and decodes it; `Ok(None)` for a request that
    /// expects no response (Produce with acks=0) once it is written.
    pub async fn wait(self, timeout: Duration) -> Result<Option<R::Response>> {
        let Some(rx) = self.rx else {
            return Ok(None);
        };
        let bytes = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                return Err(PerfError::Timeout {
                    request: api_name(R::KEY),
                    addr: self.addr,
                    secs: timeout.as_secs(),
                })
            }
            Ok(Err(_)) => {
                return Err(PerfError::ConnectionLost {
                    addr: self.addr,
                    reason: "connection closed".into(),
                })
            }
            Ok(Ok(r)) => r?,
        };
        let mut bytes = bytes;
        R::Response::decode(&mut bytes, self.version)
            .map(Some)
            .map_err(|e| PerfError::Protocol {
                addr: self.addr.clone(),
                reason: format!("{} v{} response: {e}", api_name(R::KEY), self.version),
            })
    }
}

/// The readable name of an API key.
pub fn api_name(key: i16) -> &'static str {
    match ApiKey::try_from(key) {
        Ok(ApiKey::Produce) => "Produce",
        Ok(ApiKey::Fetch) => "Fetch",
        Ok(ApiKey::Metadata) => "Metadata",
        Ok(ApiKey::ListOffsets) => "ListOffsets",
        Ok(ApiKey::CreateTopics) => "CreateTopics",
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        _ => "request",
    }
}

impl Connection {
    /// Connects and negotiates API versions.
    pub async fn open(addr: &str) -> Result<Arc<Connection>> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| PerfError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Connection::start(addr, stream);
        conn.versions = conn.negotiate().await?;
        Ok(Arc::new(conn))
    }

    fn start(addr: &str, stream: TcpStream) -> Connection {
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let failure = Arc::new(Mutex::new(None));
        tokio::spawn(write_loop(write, rx, pending_tx, failure.clone()));
        tokio::spawn(read_loop(
            addr.to_string(),
            read,
            pending_rx,
            failure.clone(),
        ));
        Connection {
            addr: addr.to_string(),
            tx,
            next_correlation: AtomicI32::new(1),
            versions: HashMap::new(),
            failure,
        }
    }

    /// ApiVersions v3, falling back to v0 for brokers that answer v3 with
    /// UNSUPPORTED_VERSION (they reply in v0).
    async fn negotiate(&self) -> Result<HashMap<i16, (i16, i16)>> {
        let timeout = Duration::from_secs(10);
        let v3 = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp = match self.submit_version(&v3, 3, true)?.wait(timeout).await {
            Ok(Some(r)) if r.error_code == 0 => r,
            Ok(_) | Err(PerfError::Protocol { .. }) => {
                let v0 = ApiVersionsRequest::default();
                self.submit_version(&v0, 0, true)?
                    .wait(timeout)
                    .await?
                    .unwrap_or_default()
            }
            Err(e) => return Err(e),
        };
        if let Some(e) = PerfError::from_code("ApiVersions", resp.error_code, None) {
            return Err(e);
        }
        Ok(api_ranges(&resp))
    }

    /// The version to use for `R`: the highest both sides speak.
    pub fn version<R: Request>(&self) -> Result<i16> {
        let ours = ApiKey::try_from(R::KEY)
            .map(client_max_version)
            .unwrap_or(0)
            .min(R::VERSIONS.max);
        let unsupported = || PerfError::Unsupported {
            addr: self.addr.clone(),
            api: api_name(R::KEY),
            min: R::VERSIONS.min,
            max: ours,
        };
        let &(min, max) = self.versions.get(&R::KEY).ok_or_else(unsupported)?;
        let v = ours.min(max);
        if v < min.max(R::VERSIONS.min) {
            return Err(unsupported());
        }
        Ok(v)
    }

    /// Queues a request at the negotiated version.
    pub fn submit<R: Request>(&self, req: &R, expect_response: bool) -> Result<ResponseFuture<R>> {
        let version = self.version::<R>()?;
        self.submit_version(req, version, expect_response)
    }

    /// Sends a request and waits for its response.
    pub async fn call<R: Request>(&self, req: &R, timeout: Duration) -> Result<R::Response> {
        self.submit(req, true)?
            .wait(timeout)
            .await?
            .ok_or_else(|| PerfError::Protocol {
                addr: self.addr.clone(),
                reason: "no response".into(),
            })
    }

    fn submit_version<R: Request>(
        &self,
        req: &R,
        version: i16,
        expect_response: bool,
    ) -> Result<ResponseFuture<R>> {
        if let Some(reason) = self.failed() {
            return Err(PerfError::ConnectionLost {
                addr: self.addr.clone(),
                reason,
            });
        }
        let correlation_id = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let frame =
            encode_frame(req, version, correlation_id).map_err(|reason| PerfError::Encode {
                what: api_name(R::KEY),
                reason,
            })?;
        let (pending, rx) = if expect_response {
            let (reply, rx) = oneshot::channel();
            let p = Pending {
                correlation_id,
                response_header_version: R::Response::header_version(version),
                reply,
            };
            (Some(p), Some(rx))
        } else {
            (None, None)
        };
        self.tx
            .send(Outgoing { frame, pending })
            .map_err(|_| PerfError::ConnectionLost {
                addr: self.addr.clone(),
                reason: self.failed().unwrap_or_else(|| "connection closed".into()),
            })?;
        Ok(ResponseFuture {
            rx,
            version,
            addr: self.addr.clone(),
            _r: std::marker::PhantomData,
        })
    }

    /// Why the connection failed, if it did.
    pub fn failed(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

fn api_ranges(resp: &ApiVersionsResponse) -> HashMap<i16, (i16, i16)> {
    resp.api_keys
        .iter()
        .map(|k| (k.api_key, (k.min_version, k.max_version)))
        .collect()
}

/// Length prefix, request header, body.
pub fn encode_frame<R: Request>(
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
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_u32(size as u32);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    // The records of a Produce are copied once here: kafka-protocol encodes
    // into one contiguous buffer.
    req.encode(&mut buf, version).map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

fn record_failure(failure: &Mutex<Option<String>>, reason: &str) {
    if let Ok(mut f) = failure.lock() {
        if f.is_none() {
            *f = Some(reason.to_string());
        }
    }
}

async fn write_loop(
    write: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    pending_tx: mpsc::UnboundedSender<Pending>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut out = BufWriter::with_capacity(256 << 10, write);
    while let Some(mut msg) = rx.recv().await {
        loop {
            if let Some(p) = msg.pending.take() {
                // The reader is gone: the connection failed; `p` drops and
                // its caller sees the failure.
                if pending_tx.send(p).is_err() {
                    return;
                }
            }
            if let Err(e) = out.write_all(&msg.frame).await {
                record_failure(&failure, &format!("write failed: {e}"));
                return;
            }
            // Coalesce whatever else is queued into the same flush.
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        if let Err(e) = out.flush().await {
            record_failure(&failure, &format!("write failed: {e}"));
            return;
        }
    }
}

async fn read_loop(
    addr: String,
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut pending_rx: mpsc::UnboundedReceiver<Pending>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let reason = loop {
        let frame = match read_frame(&mut read).await {
            Ok(f) => f,
            Err(reason) => break reason,
        };
        let Some(p) = pending_rx.recv().await else {
            break "connection closed".to_string();
        };
        match split_response(frame, &p) {
            Ok(body) => {
                let _ = p.reply.send(Ok(body));
            }
            Err(reason) => {
                let _ = p.reply.send(Err(PerfError::Protocol {
                    addr: addr.clone(),
                    reason: reason.clone(),
                }));
                break reason;
            }
        }
    };
    record_failure(&failure, &reason);
    pending_rx.close();
    while let Some(p) = pending_rx.recv().await {
        let _ = p.reply.send(Err(PerfError::ConnectionLost {
            addr: addr.clone(),
            reason: reason.clone(),
        }));
    }
}

async fn read_frame(
    read: &mut tokio::net::tcp::OwnedReadHalf,
) -> std::result::Result<Bytes, String> {
    let len = match read.read_u32().await {
        Ok(l) => l as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err("closed by broker".to_string())
        }
        Err(e) => return Err(format!("read failed: {e}")),
    };
    if !(4..=MAX_FRAME).contains(&len) {
        return Err(format!("invalid response length {len}"));
    }
    let mut buf = BytesMut::zeroed(len);
    read.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read failed mid-response: {e}"))?;
    Ok(buf.freeze())
}

/// Checks the correlation id and strips the response header.
fn split_response(mut frame: Bytes, p: &Pending) -> std::result::Result<Bytes, String> {
    let header = ResponseHeader::decode(&mut frame, p.response_header_version)
        .map_err(|e| format!("bad response header: {e}"))?;
    if header.correlation_id != p.correlation_id {
        return Err(format!(
            "response correlation id {} but expected {}",
            header.correlation_id, p.correlation_id
        ));
    }
    let _ = frame.remaining();
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;
    use kafka_protocol::protocol::decode_request_header_from_buffer;

    #[test]
    fn frame_carries_length_header_and_body() {
        let req = MetadataRequest::default();
        let frame = encode_frame(&req, 9, 42).unwrap();
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        let mut body = frame.slice(4..);
        let header = decode_request_header_from_buffer(&mut body).unwrap();
        assert_eq!(header.request_api_key, ApiKey::Metadata as i16);
        assert_eq!(header.request_api_version, 9);
        assert_eq!(header.correlation_id, 42);
        let decoded = MetadataRequest::decode(&mut body, 9).unwrap();
        assert_eq!(decoded, req);
    }

    #[test]
    fn mismatched_correlation_id_is_an_error() {
        let (reply, _rx) = oneshot::channel();
        let p = Pending {
            correlation_id: 7,
            response_header_version: 0,
            reply,
        };
        let frame = Bytes::from_static(&[0, 0, 0, 8, 1, 2]);
        assert!(split_response(frame, &p)
            .unwrap_err()
            .contains("correlation"));
        let frame = Bytes::from_static(&[0, 0, 0, 7, 1, 2]);
        assert_eq!(&split_response(frame, &p).unwrap()[..], &[1, 2]);
    }
}
