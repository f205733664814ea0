//! The connection loop: reads frames, decodes requests, runs each request as
//! its own task so later requests are processed while earlier ones wait
//! (pipelining), and writes responses back in request order.
//!
//! Runs on the shard that accepted the connection; the request tasks stay on
//! that shard. Never blocks; the number of requests in flight per connection
//! is bounded so a fast client cannot queue unbounded work.
//!
//! What one connection can cost, whatever the peer does:
//! * a frame being read holds at most `max_frame`, and, once the shard's
//!   budget for frames allocated ahead is used up, about twice the bytes
//!   that have arrived (see `frame`);
//! * a peer that never reads its responses holds at most `MAX_IN_FLIGHT`
//!   requests, and about `MAX_UNSENT_BYTES` of responses plus one Fetch
//!   response: the loop stops reading from it once either fills. Fetches
//!   of one connection run one at a time (every Kafka client keeps one in
//!   flight per broker), so pipelined fetches cannot each build a response
//!   of `fetch.max.bytes` before the first is sent;
//! * a peer that completes no request for `idle_timeout` (idle, dribbling a
//!   frame, or stuck because it does not read) is closed and all of it is
//!   freed, including responses the writer could not send.
//!
//! A client over a quota is throttled here: the service names a throttle as
//! a request is read (`Service::on_read`) or with its response
//! (`Reply::mute`), and the loop reads no further request until it passes.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::io::BufReader;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel;
use kafka_protocol::messages::ApiKey;
use tracing::{debug, warn};

use crate::codec::{decode_request, encode_reply, DecodeError, Reply, Request, Stages};
use crate::frame::{read_frame_timed, FrameError};
use crate::sasl::SaslExchange;
use crate::versions::unsupported_api_versions;

/// Requests decoded but not yet answered, per connection.
const MAX_IN_FLIGHT: usize = 128;

/// Encoded responses a connection may hold unsent before the loop stops
/// reading its requests. Produce and metadata responses are small; a
/// consumer that reads its fetch responses never comes near it.
const MAX_UNSENT_BYTES: usize = 16 << 20;

/// Read buffer per connection. Small, because every open connection holds
/// one, idle or not; large frames bypass it and are read straight into
/// their own buffer.
const READ_BUFFER: usize = 8 * 1024;

/// How the broker wants its connections served.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Largest request frame; a larger one closes the connection.
    pub max_frame: usize,
    /// `connections.max.idle.ms`: a connection that completes no request
    /// for this long is closed.
    pub idle_timeout: Duration,
}

/// A boxed, single-threaded future.
pub type LocalBoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

/// What the broker plugs into the connection loop. `None` means "send no
/// response" (Produce with acks=0).
pub trait Service: 'static {
    fn call(self: Rc<Self>, request: Request) -> LocalBoxFuture<Option<Reply>>;

    /// Called as each request is read, before the next one is: how long the
    /// connection must then read nothing (a client over a quota). Requests
    /// are pipelined, so a throttle that waited for the response would come
    /// too late for the requests already read behind it.
    fn on_read(&self, _request: &Request) -> Duration {
        Duration::ZERO
    }

    /// A response has been written: where the request's time went (for
    /// latency metrics). Not called for requests that get no response.
    fn written(&self, _api: ApiKey, _stages: &Stages) {}

    /// The SASL mechanisms a connection must authenticate with before
    /// anything else (a SASL_PLAINTEXT listener); empty for PLAINTEXT.
    fn sasl_mechanisms(&self) -> Rc<[String]> {
        Rc::from([])
    }

    /// A new exchange of `mechanism`, one of `sasl_mechanisms`.
    fn sasl_start(&self, _mechanism: &str) -> Option<Box<dyn SaslExchange>> {
        None
    }
}

/// What a connection's answers hold: encoded responses not yet written, and
/// Fetch requests not yet answered; the reader waits on it. `muted_until`:
/// a throttled response was written, and no request is read before then.
#[derive(Default)]
struct Backlog {
    unsent: Cell<usize>,
    fetches: Cell<usize>,
    reader: Cell<Option<Waker>>,
    muted_until: Cell<Option<Instant>>,
}

impl Backlog {
    fn change(&self, unsent: isize, fetches: isize) {
        self.unsent
            .set(self.unsent.get().saturating_add_signed(unsent));
        self.fetches
            .set(self.fetches.get().saturating_add_signed(fetches));
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// A response that mutes the connection for `mute` has been written.
    fn mute(&self, mute: Duration) {
        let until = Instant::now() + mute;
        if self.muted_until.get().is_none_or(|u| u < until) {
            self.muted_until.set(Some(until));
        }
    }

    /// Waits until a request of `api` may start: the connection not muted,
    /// no unanswered Fetch when it is one, and the unsent responses under
    /// `MAX_UNSENT_BYTES`.
    async fn admit(&self, api: ApiKey) {
        while let Some(until) = self.muted_until.get() {
            if until <= Instant::now() {
                self.muted_until.set(None);
                break;
            }
            glommio::timer::sleep(until - Instant::now()).await;
        }
        futures_lite::future::poll_fn(|cx| {
            let fetch_waits = api == ApiKey::Fetch && self.fetches.get() > 0;
            if fetch_waits || self.unsent.get() > MAX_UNSENT_BYTES {
                self.reader.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// Serves one connection until the peer closes it, sends something that
/// must close it, or stays idle too long. `peer` is only used in log lines.
pub async fn serve_connection<S, T>(
    stream: T,
    service: Rc<S>,
    settings: ConnectionSettings,
    peer: String,
) where
    S: Service,
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (reader, mut writer) = futures_lite::io::split(stream);
    // Shared by every request of the connection: no copy per request.
    let peer_name: Rc<str> = Rc::from(peer.as_str());
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let idle = settings.idle_timeout;
    let mechanisms = service.sasl_mechanisms();
    let principal: Option<Rc<str>> = if mechanisms.is_empty() {
        None
    } else {
        // The whole exchange has one idle period, so a client cannot keep
        // an unauthenticated connection open by sending ApiVersions.
        let deadline = Instant::now() + idle;
        let user = crate::sasl::authenticate(
            &mut reader,
            &mut writer,
            &service,
            &mechanisms,
            deadline,
            &peer,
        )
        .await;
        let Some(user) = user else {
            let _ = writer.close().await;
            return;
        };
        debug!(%peer, %user, "authenticated");
        Some(Rc::from(user.as_str()))
    };
    let (tx, rx) = local_channel::new_bounded::<glommio::Task<Outcome>>(MAX_IN_FLIGHT);
    let backlog = Rc::new(Backlog::default());
    let writer_task = glommio::spawn_local(write_responses(
        writer,
        rx,
        peer.clone(),
        backlog.clone(),
        service.clone(),
    ));
    // The idle clock restarts with every complete request; waiting for a
    // free in-flight slot does not restart it, so a peer that never reads
    // its responses is closed too.
    let mut idle_deadline = Instant::now() + idle;
    let mut timed_out = false;
    loop {
        let Some(read) = before(
            idle_deadline,
            read_frame_timed(&mut reader, settings.max_frame),
        )
        .await
        else {
            debug!(%peer, "closing connection: no complete request for {idle:?}");
            timed_out = true;
            break;
        };
        idle_deadline = Instant::now() + idle;
        let (frame, frame_read) = match read {
            Ok(Some(read)) => read,
            Ok(None) => break,
            Err(e @ (FrameError::Io(_) | FrameError::Truncated { .. })) => {
                // Resets, aborts and closes mid-frame are how clients often
                // leave; at warn level a crowd of them would flood the log.
                debug!(%peer, "connection closed: {e}");
                break;
            }
            Err(e) => {
                warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        let decoding = Instant::now();
        let task = match decode_request(frame) {
            Ok(mut request) => {
                request.timing.frame_read = frame_read;
                request.timing.decode = decoding.elapsed();
                request.peer = peer_name.clone();
                request.principal.clone_from(&principal);
                if before(idle_deadline, backlog.admit(request.api_key))
                    .await
                    .is_none()
                {
                    debug!(%peer, "closing connection: its responses are not read");
                    timed_out = true;
                    break;
                }
                if request.api_key == ApiKey::Fetch {
                    backlog.change(0, 1);
                }
                request.throttle = service.on_read(&request);
                if !request.throttle.is_zero() {
                    backlog.mute(request.throttle);
                }
                glommio::spawn_local(run_request(service.clone(), request, backlog.clone()))
            }
            Err(DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                version,
                correlation_id,
            }) => {
                debug!(%peer, version, "ApiVersions with an unsupported version: answering v0");
                glommio::spawn_local(async move {
                    match unsupported_api_versions(correlation_id) {
                        Ok(bytes) => Outcome::Respond(vec![bytes], None, Duration::ZERO),
                        Err(_) => Outcome::Close,
                    }
                })
            }
            Err(e) => {
                warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        match before(idle_deadline, tx.send(task)).await {
            Some(Ok(())) => {}
            Some(Err(_)) => break,
            None => {
                debug!(%peer, "closing connection: its responses are not read");
                timed_out = true;
                break;
            }
        }
    }
    drop(tx);
    if timed_out {
        // Dropping the writer task cancels it: a response it is stuck
        // writing to a peer that does not read is freed with it.
        return;
    }
    // Responses already queued still go out, unless the peer does not read
    // them either.
    if before(Instant::now() + idle, writer_task).await.is_none() {
        debug!(%peer, "closing connection: its responses are not read");
    }
}

/// Runs `fut` until `deadline`; `None` if the deadline came first (and `fut`
/// is dropped).
pub(crate) async fn before<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let timer = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        None
    };
    futures_lite::future::or(async { Some(fut.await) }, timer).await
}

/// What a request task hands the writer: the response's pieces, and for
/// timing its API, its stages so far and when it was encoded.
enum Outcome {
    Respond(Vec<Bytes>, Option<(ApiKey, Stages, Instant)>, Duration),
    /// Nothing to send (acks=0).
    Silent,
    /// The response could not be encoded: the client would wait forever, so
    /// the connection is closed and the client retries.
    Close,
}

async fn run_request<S: Service>(
    service: Rc<S>,
    request: Request,
    backlog: Rc<Backlog>,
) -> Outcome {
    let (api_key, version, correlation_id) =
        (request.api_key, request.version, request.correlation_id());
    let mut stages = Stages {
        frame_read: request.timing.frame_read,
        decode: request.timing.decode,
        ..Stages::default()
    };
    let fetch = isize::from(api_key == ApiKey::Fetch);
    let handling = Instant::now();
    let Some(reply) = service.call(request).await else {
        backlog.change(0, -fetch);
        return Outcome::Silent;
    };
    let encoding = Instant::now();
    stages.handle = encoding - handling;
    let mute = reply.mute;
    match encode_reply(api_key, version, correlation_id, reply) {
        Ok(pieces) => {
            backlog.change(total_len(&pieces) as isize, -fetch);
            let encoded = Instant::now();
            stages.encode = encoded - encoding;
            Outcome::Respond(pieces, Some((api_key, stages, encoded)), mute)
        }
        Err(e) => {
            backlog.change(0, -fetch);
            warn!("closing connection: {e}");
            Outcome::Close
        }
    }
}

async fn write_responses<W: AsyncWrite + Unpin, S: Service>(
    mut writer: W,
    rx: local_channel::LocalReceiver<glommio::Task<Outcome>>,
    peer: String,
    backlog: Rc<Backlog>,
    service: Rc<S>,
) {
    while let Some(task) = rx.recv().await {
        let (pieces, timing, mute) = match task.await {
            Outcome::Respond(pieces, timing, mute) => (pieces, timing, mute),
            Outcome::Silent => continue,
            Outcome::Close => break,
        };
        let writing = Instant::now();
        if let Err(e) = write_pieces(&mut writer, &pieces).await {
            debug!(%peer, "write failed, dropping connection: {e}");
            return;
        }
        if let Err(e) = writer.flush().await {
            debug!(%peer, "flush failed, dropping connection: {e}");
            return;
        }
        if !mute.is_zero() {
            backlog.mute(mute);
        }
        backlog.change(-(total_len(&pieces) as isize), 0);
        if let Some((api, mut stages, encoded)) = timing {
            stages.write_wait = writing.saturating_duration_since(encoded);
            stages.write = writing.elapsed();
            service.written(api, &stages);
        }
    }
    let _ = writer.close().await;
}

fn total_len(pieces: &[Bytes]) -> usize {
    pieces.iter().map(Bytes::len).sum()
}

/// Pieces shorter than this are gathered into one buffer and written
/// together; longer ones (record batches) are written from where they are.
const GATHER_BELOW: usize = 16 * 1024;

/// Writes a response's pieces in order. Small pieces (headers, lengths,
/// small batches) are copied together so they cost one write; large ones
/// go to the socket without a copy.
async fn write_pieces<W: AsyncWrite + Unpin>(
    writer: &mut W,
    pieces: &[Bytes],
) -> std::io::Result<()> {
    if let [one] = pieces {
        return writer.write_all(one).await;
    }
    let mut gathered = Vec::new();
    for p in pieces {
        if p.len() < GATHER_BELOW {
            gathered.extend_from_slice(p);
            continue;
        }
        if !gathered.is_empty() {
            writer.write_all(&gathered).await?;
            gathered.clear();
        }
        writer.write_all(p).await?;
    }
    if !gathered.is_empty() {
        writer.write_all(&gathered).await?;
    }
    Ok(())
}
