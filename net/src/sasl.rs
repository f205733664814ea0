//! SASL authentication of a connection on a SASL_PLAINTEXT listener (KIP-43,
//! KIP-152): the exchange that must complete before any other request is
//! served. It owns the order of the exchange (ApiVersions, SaslHandshake,
//! then SaslAuthenticate requests, or raw tokens after a v0 handshake) and
//! what each step answers; the mechanisms themselves (PLAIN, SCRAM) are the
//! service's (`Service::sasl_start`), through [`SaslExchange`].
//!
//! Runs on the shard that accepted the connection, one request at a time
//! (nothing is pipelined before authentication). Never blocks. A client that
//! has not authenticated holds at most one frame of `MAX_UNAUTHENTICATED`
//! bytes, as Kafka's `sasl.server.max.receive.size`, and is closed after
//! `idle_timeout` without a request, after a failed authentication, or
//! after any request other than the three above, as Kafka closes it. Each
//! refusal is one info line (Kafka logs failed authentications at INFO):
//! a misconfigured client reconnecting would otherwise flood warnings.

use std::rc::Rc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{debug, info};

use crate::codec::{decode_request, encode_reply, encode_response, DecodeError};
use crate::frame::read_frame_timed;
use crate::versions::unsupported_api_versions;
use crate::Service;

/// The largest frame read before a client has authenticated (Kafka's
/// `sasl.server.max.receive.size` default).
pub const MAX_UNAUTHENTICATED: usize = 512 * 1024;

/// One mechanism's server side for one connection. `step` gets each token
/// the client sends, in order.
pub trait SaslExchange {
    /// The answer to `token`: a challenge to send back, the exchange done
    /// (with a last token, possibly empty, and the authenticated user), or
    /// the reason it failed, in words the client may see.
    fn step(&mut self, token: &[u8]) -> Result<SaslStep, String>;
}

/// What one step of an exchange gives.
pub enum SaslStep {
    Challenge(Vec<u8>),
    Done { token: Vec<u8>, user: String },
}

/// Where a connection is in its exchange.
enum State {
    /// Nothing but ApiVersions so far.
    Start,
    /// A SaslHandshake v1+ chose a mechanism: SaslAuthenticate requests
    /// carry the tokens.
    Framed(Box<dyn SaslExchange>),
    /// A SaslHandshake v0 chose a mechanism: the client sends raw tokens,
    /// each in a size-prefixed frame with no Kafka header.
    Raw(Box<dyn SaslExchange>),
}

/// Runs the exchange until the client has authenticated (its user), or
/// `None` if the connection must close. `mechanisms` are those enabled.
pub async fn authenticate<S, R, W>(
    reader: &mut R,
    writer: &mut W,
    service: &Rc<S>,
    mechanisms: &[String],
    deadline: Instant,
    peer: &str,
) -> Option<String>
where
    S: Service,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut state = State::Start;
    loop {
        let read =
            crate::connection::before(deadline, read_frame_timed(reader, MAX_UNAUTHENTICATED))
                .await;
        let frame = match read {
            None => {
                debug!(%peer, "closing connection: not authenticated in time");
                return None;
            }
            Some(Ok(Some((frame, _)))) => frame,
            Some(Ok(None)) => return None,
            Some(Err(e)) => {
                debug!(%peer, "closing connection before authentication: {e}");
                return None;
            }
        };
        if let State::Raw(exchange) = &mut state {
            // KIP-43's v0 exchange: a token in, a token out, no headers; a
            // failure closes the connection, there is no error to send.
            match exchange.step(&frame) {
                Ok(SaslStep::Challenge(token)) => send(writer, vec![raw_token(&token)]).await?,
                Ok(SaslStep::Done { token, user }) => {
                    send(writer, vec![raw_token(&token)]).await?;
                    return Some(user);
                }
                Err(reason) => {
                    info!(%peer, "SASL authentication refused: {reason}");
                    return None;
                }
            }
            continue;
        }
        let request = match decode_request(frame) {
            Ok(r) => r,
            Err(DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                correlation_id,
                ..
            }) => {
                send(writer, vec![unsupported_api_versions(correlation_id).ok()?]).await?;
                continue;
            }
            Err(e) => {
                info!(%peer, "closing connection before authentication: {e}");
                return None;
            }
        };
        let (api, version, correlation_id) =
            (request.api_key, request.version, request.correlation_id());
        let respond = |body: ResponseKind| encode_response(api, version, correlation_id, &body);
        if api == ApiKey::ApiVersions {
            let reply = service.clone().call(request).await?;
            send(
                writer,
                encode_reply(api, version, correlation_id, reply).ok()?,
            )
            .await?;
            continue;
        }
        match (request.body, &mut state) {
            (RequestKind::SaslHandshake(hs), State::Start) => {
                let mut resp = SaslHandshakeResponse::default().with_mechanisms(
                    mechanisms
                        .iter()
                        .map(|m| StrBytes::from_string(m.clone()))
                        .collect(),
                );
                let wanted = hs.mechanism.as_str();
                let exchange = mechanisms
                    .iter()
                    .any(|m| m == wanted)
                    .then(|| service.sasl_start(wanted))
                    .flatten();
                let Some(exchange) = exchange else {
                    // Kafka answers, then closes the connection.
                    info!(%peer, mechanism = wanted, "SASL mechanism not enabled");
                    resp.error_code = ResponseError::UnsupportedSaslMechanism.code();
                    let bytes = respond(ResponseKind::SaslHandshake(resp)).ok()?;
                    let _ = send(writer, vec![bytes]).await;
                    return None;
                };
                let bytes = respond(ResponseKind::SaslHandshake(resp)).ok()?;
                send(writer, vec![bytes]).await?;
                state = if version == 0 {
                    State::Raw(exchange)
                } else {
                    State::Framed(exchange)
                };
            }
            (RequestKind::SaslAuthenticate(auth), State::Framed(exchange)) => {
                let mut resp = SaslAuthenticateResponse::default();
                match exchange.step(&auth.auth_bytes) {
                    Ok(SaslStep::Challenge(token)) => {
                        resp.auth_bytes = Bytes::from(token);
                        send(
                            writer,
                            vec![respond(ResponseKind::SaslAuthenticate(resp)).ok()?],
                        )
                        .await?;
                    }
                    Ok(SaslStep::Done { token, user }) => {
                        resp.auth_bytes = Bytes::from(token);
                        send(
                            writer,
                            vec![respond(ResponseKind::SaslAuthenticate(resp)).ok()?],
                        )
                        .await?;
                        return Some(user);
                    }
                    Err(reason) => {
                        // Kafka sends the failure, then closes.
                        info!(%peer, "SASL authentication refused: {reason}");
                        resp.error_code = ResponseError::SaslAuthenticationFailed.code();
                        resp.error_message = Some(StrBytes::from_string(reason));
                        let bytes = respond(ResponseKind::SaslAuthenticate(resp)).ok()?;
                        let _ = send(writer, vec![bytes]).await;
                        return None;
                    }
                }
            }
            _ => {
                info!(
                    %peer,
                    "closing connection: unexpected {api:?} request during SASL authentication"
                );
                return None;
            }
        }
    }
}

/// A v0 exchange's token as sent: its size, then its bytes.
fn raw_token(token: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + token.len());
    out.put_u32(token.len() as u32);
    out.put_slice(token);
    out.freeze()
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, pieces: Vec<Bytes>) -> Option<()> {
    for p in &pieces {
        writer.write_all(p).await.ok()?;
    }
    writer.flush().await.ok()
}
