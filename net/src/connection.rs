//! The connection loop: reads frames, decodes requests, runs each request as
//! its own task so later requests are processed while earlier ones wait
//! (pipelining), and writes responses back in request order.
//!
//! Runs on the shard that accepted the connection; the request tasks stay on
//! that shard. Never blocks; the number of requests in flight per connection
//! is bounded so a fast client cannot queue unbounded work.

use std::rc::Rc;

use bytes::Bytes;
use futures_lite::io::BufReader;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use tracing::{debug, warn};

use crate::codec::{decode_request, encode_response, DecodeError, Request};
use crate::frame::read_frame;
use crate::versions::api_versions_response;

/// Requests decoded but not yet answered, per connection.
const MAX_IN_FLIGHT: usize = 128;

/// A boxed, single-threaded future.
pub type LocalBoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

/// What the broker plugs into the connection loop. `None` means "send no
/// response" (Produce with acks=0).
pub trait Service: 'static {
    fn call(self: Rc<Self>, request: Request) -> LocalBoxFuture<Option<ResponseKind>>;
}

/// Serves one connection until the peer closes it or sends something that
/// must close it. `peer` is only used in log lines.
pub async fn serve_connection<S, T>(stream: T, service: Rc<S>, max_frame: usize, peer: String)
where
    S: Service,
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (reader, writer) = futures_lite::io::split(stream);
    let (tx, rx) = local_channel::new_bounded::<glommio::Task<Outcome>>(MAX_IN_FLIGHT);
    let writer_task = glommio::spawn_local(write_responses(writer, rx, peer.clone()));
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    loop {
        let frame = match read_frame(&mut reader, max_frame).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        let task = match decode_request(frame) {
            Ok(request) => glommio::spawn_local(run_request(service.clone(), request)),
            Err(DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                version,
                correlation_id,
            }) => {
                debug!(%peer, version, "ApiVersions with an unsupported version: answering v0");
                glommio::spawn_local(async move {
                    let body = ResponseKind::ApiVersions(api_versions_response(
                        kafka_protocol::ResponseError::UnsupportedVersion.code(),
                    ));
                    match encode_response(ApiKey::ApiVersions, 0, correlation_id, &body) {
                        Ok(bytes) => Outcome::Respond(bytes),
                        Err(_) => Outcome::Close,
                    }
                })
            }
            Err(e) => {
                warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        if tx.send(task).await.is_err() {
            break;
        }
    }
    drop(tx);
    writer_task.await;
}

/// What a request task hands the writer.
enum Outcome {
    Respond(Bytes),
    /// Nothing to send (acks=0).
    Silent,
    /// The response could not be encoded: the client would wait forever, so
    /// the connection is closed and the client retries.
    Close,
}

async fn run_request<S: Service>(service: Rc<S>, request: Request) -> Outcome {
    let (api_key, version, correlation_id) =
        (request.api_key, request.version, request.correlation_id());
    let Some(body) = service.call(request).await else {
        return Outcome::Silent;
    };
    match encode_response(api_key, version, correlation_id, &body) {
        Ok(bytes) => Outcome::Respond(bytes),
        Err(e) => {
            warn!("closing connection: {e}");
            Outcome::Close
        }
    }
}

async fn write_responses<W: AsyncWrite + Unpin>(
    mut writer: W,
    rx: local_channel::LocalReceiver<glommio::Task<Outcome>>,
    peer: String,
) {
    while let Some(task) = rx.recv().await {
        let bytes = match task.await {
            Outcome::Respond(bytes) => bytes,
            Outcome::Silent => continue,
            Outcome::Close => break,
        };
        if let Err(e) = writer.write_all(&bytes).await {
            debug!(%peer, "write failed, dropping connection: {e}");
            return;
        }
        if let Err(e) = writer.flush().await {
            debug!(%peer, "flush failed, dropping connection: {e}");
            return;
        }
    }
    let _ = writer.close().await;
}
