//! Kafka requests this broker sends to another broker's node, as Kafka
//! brokers do among themselves: transaction markers to a partition's leader,
//! a partition's implicit add to its transaction's coordinator, a
//! reassignment to the broker leading the partition. Kafka's own wire format
//! (kafka-protocol), which first authenticates with SASL/PLAIN when the
//! listeners require SASL.
//!
//! Connections are kept per shard (`IDLE`, a thread-local pool: each shard
//! is one thread and its connections never leave it). A call takes an idle
//! connection to its address or opens one, and gives it back only after a
//! whole exchange, so a connection in the pool never holds half an answer.
//! A connection that sat idle past `IDLE_FOR`, or beyond `IDLE_PER_ADDR` per
//! address, is closed. A pooled connection the peer has since closed fails
//! before any answer arrives; the call then goes again on the next idle
//! connection, or on a new one once none is left (at most `IDLE_PER_ADDR`
//! + 1 tries).
//!
//! Runs on a shard; never blocks (glommio sockets), holds no pool borrow
//! across an await, and gives up after the caller's timeout with
//! REQUEST_TIMED_OUT (callers retry or answer it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

/// The largest response read.
const MAX_RESPONSE: usize = 16 << 20;

/// How long an unused connection stays open: well under a peer's idle limit
/// (`connections_max_idle_ms`, 10 minutes by default), so the peer seldom
/// closes one we are about to use.
const IDLE_FOR: Duration = Duration::from_secs(60);

/// Idle connections kept per address; more than this many calls at once
/// open extra connections, which close when done.
const IDLE_PER_ADDR: usize = 4;

thread_local! {
    /// This shard's idle connections to other brokers.
    static IDLE: RefCell<IdlePool<glommio::net::TcpStream>> =
        RefCell::new(IdlePool::new(IDLE_FOR, IDLE_PER_ADDR));
}

/// Sends `req` as `key` version `version` to `addr` and decodes the answer.
pub async fn call<Req: Encodable, Resp: Decodable>(
    addr: &str,
    key: ApiKey,
    version: i16,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, ResponseError> {
    let call = call_once(addr, key, version, req);
    let timer = async {
        glommio::timer::sleep(timeout).await;
        Err(ResponseError::RequestTimedOut)
    };
    futures_lite::future::or(call, timer).await
}

/// The user and password brokers authenticate as (PLAIN) when the client
/// listeners speak SASL; set once at startup, before any shard runs.
static INTER_BROKER: OnceLock<(String, String)> = OnceLock::new();

/// Sets the inter-broker credentials (`Config::inter_broker_credentials`).
pub fn set_credentials(user: String, password: String) {
    let _ = INTER_BROKER.set((user, password));
}

async fn call_once<Req: Encodable, Resp: Decodable>(
    addr: &str,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Result<Resp, ResponseError> {
    loop {
        let pooled = IDLE.with(|p| p.borrow_mut().take(addr, Instant::now()));
        let reused = pooled.is_some();
        let mut stream = match pooled {
            Some(s) => s,
            None => connect(addr).await?,
        };
        match exchange(&mut stream, key, version, req).await {
            Ok(resp) => {
                IDLE.with(|p| p.borrow_mut().put(addr, stream, Instant::now()));
                return Ok(resp);
            }
            // The peer closed it while it sat idle: nothing was answered, so
            // the request goes again on another connection (a fresh one
            // once the pool has none left). The callers' requests are ones
            // Kafka's brokers also send again after a network error.
            Err(Failure::BeforeAnswer) if reused => continue,
            Err(Failure::BeforeAnswer) => return Err(ResponseError::NetworkException),
            Err(Failure::Answer(e)) => return Err(e),
        }
    }
}

/// A new connection to `addr`, authenticated when the listeners want SASL.
async fn connect(addr: &str) -> Result<glommio::net::TcpStream, ResponseError> {
    let mut stream = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|_| ResponseError::NetworkException)?;
    if let Some((user, password)) = INTER_BROKER.get() {
        let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let resp: SaslHandshakeResponse = exchange(&mut stream, ApiKey::SaslHandshake, 1, &hs)
            .await
            .map_err(Failure::into_error)?;
        check(resp.error_code)?;
        let auth = SaslAuthenticateRequest::default()
            .with_auth_bytes(crate::sasl::plain_token(user, password).into());
        let resp: SaslAuthenticateResponse =
            exchange(&mut stream, ApiKey::SaslAuthenticate, 0, &auth)
                .await
                .map_err(Failure::into_error)?;
        check(resp.error_code)?;
    }
    Ok(stream)
}

/// How an exchange failed.
enum Failure {
    /// The request could not be sent, or the connection ended before the
    /// first byte of an answer.
    BeforeAnswer,
    /// An answer came and was cut short, malformed or not ours; the
    /// connection is dropped.
    Answer(ResponseError),
}

impl Failure {
    fn into_error(self) -> ResponseError {
        match self {
            Failure::BeforeAnswer => ResponseError::NetworkException,
            Failure::Answer(e) => e,
        }
    }
}

/// One request and its response on `stream`.
async fn exchange<Req: Encodable, Resp: Decodable>(
    stream: &mut glommio::net::TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Result<Resp, Failure> {
    let encode_err = |_| Failure::Answer(ResponseError::UnknownServerError);
    let corrupt = |_| Failure::Answer(ResponseError::CorruptMessage);
    let correlation_id = next_correlation_id();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("broker")))
        .encode(&mut buf, key.request_header_version(version))
        .map_err(encode_err)?;
    req.encode(&mut buf, version).map_err(encode_err)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream
        .write_all(&buf)
        .await
        .map_err(|_| Failure::BeforeAnswer)?;
    let mut len = [0u8; 4];
    match stream.read(&mut len[..1]).await {
        Ok(1) => {}
        _ => return Err(Failure::BeforeAnswer),
    }
    let net = |_| Failure::Answer(ResponseError::NetworkException);
    stream.read_exact(&mut len[1..]).await.map_err(net)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RESPONSE {
        return Err(Failure::Answer(ResponseError::CorruptMessage));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(net)?;
    let mut body = bytes::Bytes::from(body);
    let header =
        ResponseHeader::decode(&mut body, key.response_header_version(version)).map_err(corrupt)?;
    if header.correlation_id != correlation_id {
        return Err(Failure::Answer(ResponseError::CorruptMessage));
    }
    Resp::decode(&mut body, version).map_err(corrupt)
}

/// Correlation ids of this shard's calls, so that an answer read on a
/// reused connection is known to be the answer to this request.
fn next_correlation_id() -> i32 {
    thread_local! {
        static NEXT: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
    }
    NEXT.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1) & i32::MAX);
        id
    })
}

fn check(code: i16) -> Result<(), ResponseError> {
    match code {
        0 => Ok(()),
        c => Err(crate::handlers::error_from_code(c)),
    }
}

/// Idle connections by address, oldest first; the pool's rules without its
/// I/O, so they can be tested with plain values and a made-up clock.
struct IdlePool<T> {
    idle_for: Duration,
    per_addr: usize,
    by_addr: HashMap<String, Vec<(T, Instant)>>,
}

impl<T> IdlePool<T> {
    fn new(idle_for: Duration, per_addr: usize) -> Self {
        IdlePool {
            idle_for,
            per_addr,
            by_addr: HashMap::new(),
        }
    }

    /// The most recently used idle connection to `addr` that has not sat
    /// past `idle_for`; older ones are closed (dropped) on the way.
    fn take(&mut self, addr: &str, now: Instant) -> Option<T> {
        let idle = self.by_addr.get_mut(addr)?;
        let idle_for = self.idle_for;
        idle.retain(|(_, since)| now.saturating_duration_since(*since) < idle_for);
        let conn = idle.pop().map(|(conn, _)| conn);
        if idle.is_empty() {
            self.by_addr.remove(addr);
        }
        conn
    }

    /// Keeps `conn` for the next call to `addr`, closing the oldest idle one
    /// when `addr` already has `per_addr`.
    fn put(&mut self, addr: &str, conn: T, now: Instant) {
        let idle = self.by_addr.entry(addr.to_string()).or_default();
        idle.push((conn, now));
        if idle.len() > self.per_addr {
            idle.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> IdlePool<u32> {
        IdlePool::new(Duration::from_secs(60), 2)
    }

    #[test]
    fn a_connection_given_back_is_taken_again_for_its_address_only() {
        let mut p = pool();
        let t0 = Instant::now();
        assert_eq!(p.take("a:1", t0), None);
        p.put("a:1", 7, t0);
        assert_eq!(p.take("b:1", t0), None);
        assert_eq!(p.take("a:1", t0 + Duration::from_secs(1)), Some(7));
        assert_eq!(
            p.take("a:1", t0 + Duration::from_secs(1)),
            None,
            "taken once"
        );
    }

    #[test]
    fn the_most_recently_used_goes_first_and_the_oldest_is_closed_past_the_cap() {
        let mut p = pool();
        let t0 = Instant::now();
        p.put("a:1", 1, t0);
        p.put("a:1", 2, t0 + Duration::from_secs(1));
        p.put("a:1", 3, t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(3);
        assert_eq!(p.take("a:1", now), Some(3));
        assert_eq!(p.take("a:1", now), Some(2));
        assert_eq!(p.take("a:1", now), None, "1 was closed when 3 came back");
        assert!(p.by_addr.is_empty());
    }

    #[test]
    fn a_connection_idle_past_the_limit_is_closed_not_reused() {
        let mut p = pool();
        let t0 = Instant::now();
        p.put("a:1", 1, t0);
        p.put("a:1", 2, t0 + Duration::from_secs(30));
        let now = t0 + Duration::from_secs(75);
        assert_eq!(p.take("a:1", now), Some(2), "45 s idle: kept");
        p.put("a:1", 3, t0);
        assert_eq!(p.take("a:1", now), None, "75 s idle: closed");
        assert!(p.by_addr.is_empty());
    }
}
