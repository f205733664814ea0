//! Kafka requests this broker sends to another broker's node, as Kafka
//! brokers do among themselves: transaction markers to a partition's leader,
//! a reassignment to the broker leading the partition. One short-lived
//! connection per call, Kafka's own wire format (kafka-protocol), which
//! first authenticates with SASL/PLAIN when the listeners require SASL.
//!
//! Runs on a shard; never blocks (glommio sockets) and gives up after the
//! caller's timeout with REQUEST_TIMED_OUT (callers retry or answer it).

use std::sync::OnceLock;
use std::time::Duration;

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
    let mut stream = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|_| ResponseError::NetworkException)?;
    if let Some((user, password)) = INTER_BROKER.get() {
        let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let resp: SaslHandshakeResponse =
            exchange(&mut stream, ApiKey::SaslHandshake, 1, &hs).await?;
        check(resp.error_code)?;
        let auth = SaslAuthenticateRequest::default()
            .with_auth_bytes(crate::sasl::plain_token(user, password).into());
        let resp: SaslAuthenticateResponse =
            exchange(&mut stream, ApiKey::SaslAuthenticate, 0, &auth).await?;
        check(resp.error_code)?;
    }
    exchange(&mut stream, key, version, req).await
}

/// One request and its response on `stream`.
async fn exchange<Req: Encodable, Resp: Decodable>(
    stream: &mut glommio::net::TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Result<Resp, ResponseError> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("broker")))
        .encode(&mut buf, key.request_header_version(version))
        .map_err(|_| ResponseError::UnknownServerError)?;
    req.encode(&mut buf, version)
        .map_err(|_| ResponseError::UnknownServerError)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf).await.map_err(net_err)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(net_err)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RESPONSE {
        return Err(ResponseError::CorruptMessage);
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(net_err)?;
    let mut body = bytes::Bytes::from(body);
    ResponseHeader::decode(&mut body, key.response_header_version(version))
        .map_err(|_| ResponseError::CorruptMessage)?;
    Resp::decode(&mut body, version).map_err(|_| ResponseError::CorruptMessage)
}

fn check(code: i16) -> Result<(), ResponseError> {
    match code {
        0 => Ok(()),
        c => Err(crate::handlers::error_from_code(c)),
    }
}

fn net_err(_: std::io::Error) -> ResponseError {
    ResponseError::NetworkException
}
