//! A shard's connections to its S3 endpoint: resolving the host name,
//! dialing TCP (and TLS for https), the HTTP/1 handshake, idle keep-alive
//! connections waiting for reuse, and the cap on open connections.
//!
//! Lives on one shard and is used only by that shard's executor (`Rc`,
//! `RefCell`, glommio sockets). Each connection's hyper task is spawned on
//! the same executor with `glommio::spawn_local`. Host names are resolved on
//! glommio's blocking thread pool, never on the core; no `RefCell` borrow is
//! ever held across an `.await`. It knows nothing of S3: no signing, no
//! retries (a failed dial is reported; the caller decides).

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::pki_types::ServerName;
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use glommio::task::JoinHandle;
use hyper::client::conn::http1::{self, SendRequest};
use smol_hyper::rt::FuturesIo;

use super::http::ChunkBody;
use crate::object::ObjectError;

/// An idle connection older than this is closed rather than reused: S3
/// drops idle connections after about 20 s, and a request sent on a
/// connection the server is closing fails for nothing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a resolved address list is trusted.
const DNS_TTL: Duration = Duration::from_secs(60);

/// Where the pool connects: scheme, host and port of the bucket's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn of_url(url: &url::Url) -> Result<Endpoint, ObjectError> {
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(ObjectError::Config(format!("unsupported scheme {other}"))),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(ObjectError::Config(format!("{url} has no host"))),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| ObjectError::Config(format!("{url} has no port")))?;
        Ok(Endpoint { tls, host, port })
    }
}

/// Counters of the pool, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections dialed since the pool was made.
    pub dialed: u64,
    /// Requests that went out on a connection used before.
    pub reused: u64,
    /// Host name resolutions done on the blocking pool.
    pub resolutions: u64,
    /// Requests sent (every attempt).
    pub requests: u64,
    /// Connections open now (in use or idle).
    pub open: u64,
    /// The most connections that were ever open at once.
    pub peak_open: u64,
}

/// One keep-alive HTTP/1 connection: the handle to send requests on and
/// the task that drives the socket.
struct Conn {
    sender: SendRequest<ChunkBody>,
    task: JoinHandle<()>,
    idle_since: Instant,
    /// The pool's counters, to count this connection out when it closes.
    stats: Rc<Cell<PoolStats>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        bump(&self.stats, |s| s.open = s.open.saturating_sub(1));
        // A connection dropped mid-request (timeout, error) may still have a
        // request on the wire; ending its task closes the socket at once
        // rather than leaving it to linger until the server answers.
        self.task.cancel();
    }
}

/// A connection in use by one request. Dropping it closes the connection;
/// [`Lease::release`] returns it to the idle list instead.
pub struct Lease<'p> {
    pool: &'p Pool,
    conn: Option<Conn>,
    _slot: StaticPermit,
}

impl Lease<'_> {
    pub fn sender(&mut self) -> &mut SendRequest<ChunkBody> {
        // `conn` is only taken by `release`, which consumes the lease.
        &mut self
            .conn
            .as_mut()
            .expect("a lease holds its connection until released")
            .sender
    }

    /// The request finished cleanly (whole answer read) and the server did
    /// not say it closes the connection: keep it for the next request.
    pub fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            if conn.sender.is_closed() {
                return;
            }
            conn.idle_since = Instant::now();
            self.pool.idle.borrow_mut().push(conn);
        }
    }
}

/// The shard's connections to one endpoint.
pub struct Pool {
    endpoint: Endpoint,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    idle: RefCell<Vec<Conn>>,
    /// One unit per open connection in use. Connections are dialed only
    /// when none is idle, so open = in use + idle <= the cap.
    slots: Rc<Semaphore>,
    dns: RefCell<Option<(Vec<SocketAddr>, Instant)>>,
    stats: Rc<Cell<PoolStats>>,
}

impl Pool {
    pub fn new(endpoint: Endpoint, max_connections: usize) -> Result<Pool, ObjectError> {
        let tls = if endpoint.tls {
            let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                ObjectError::Config(format!("TLS server name {:?}: {e}", endpoint.host))
            })?;
            Some((TlsConnector::from(tls_config()?), name))
        } else {
            None
        };
        Ok(Pool {
            endpoint,
            tls,
            idle: RefCell::new(Vec::new()),
            slots: Rc::new(Semaphore::new(max_connections as u64)),
            dns: RefCell::new(None),
            stats: Rc::new(Cell::new(PoolStats::default())),
        })
    }

    pub fn stats(&self) -> PoolStats {
        self.stats.get()
    }

    /// Waits until this shard may use one more connection. Kept apart from
    /// [`Pool::lease`] so that a request's timeout does not run while it
    /// only queues behind the shard's other requests.
    pub async fn slot(&self) -> Result<StaticPermit, ObjectError> {
        self.slots
            .acquire_static_permit(1)
            .await
            .map_err(|e| ObjectError::Io(format!("connection pool closed: {e}")))
    }

    /// A ready connection: the most recently used idle one that still
    /// works, or a new one.
    pub async fn lease(&self, slot: StaticPermit) -> Result<Lease<'_>, ObjectError> {
        self.bump(|s| s.requests += 1);
        loop {
            let candidate = self.idle.borrow_mut().pop();
            let Some(mut conn) = candidate else { break };
            if conn.sender.is_closed() || conn.idle_since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            if conn.sender.ready().await.is_err() {
                continue;
            }
            self.bump(|s| s.reused += 1);
            return Ok(Lease {
                pool: self,
                conn: Some(conn),
                _slot: slot,
            });
        }
        let conn = self.dial().await?;
        Ok(Lease {
            pool: self,
            conn: Some(conn),
            _slot: slot,
        })
    }

    async fn dial(&self) -> Result<Conn, ObjectError> {
        let addrs = self.resolve().await?;
        let mut last_err = None;
        for addr in &addrs {
            match TcpStream::connect(*addr).await {
                Ok(stream) => {
                    // Requests are written whole; Nagle would only delay the
                    // last segment of each.
                    let _ = stream.set_nodelay(true);
                    self.bump(|s| s.dialed += 1);
                    return self.handshake(stream).await;
                }
                Err(e) => last_err = Some(format!("{addr}: {e}")),
            }
        }
        // The name may point elsewhere now: resolve again next time.
        self.dns.borrow_mut().take();
        Err(ObjectError::Io(format!(
            "connect to {}:{} failed ({})",
            self.endpoint.host,
            self.endpoint.port,
            last_err.unwrap_or_else(|| "no address".into())
        )))
    }

    async fn handshake(&self, stream: TcpStream) -> Result<Conn, ObjectError> {
        let stats = self.stats.clone();
        match &self.tls {
            None => start_http1(FuturesIo::new(stream), stats).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| ObjectError::Io(format!("TLS handshake: {e}")))?;
                start_http1(FuturesIo::new(tls), stats).await
            }
        }
    }

    /// The endpoint's addresses: an IP literal as it is, a name from the
    /// cache or resolved on the blocking thread pool (getaddrinfo blocks).
    async fn resolve(&self) -> Result<Vec<SocketAddr>, ObjectError> {
        let (host, port) = (&self.endpoint.host, self.endpoint.port);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let cached = self
            .dns
            .borrow()
            .as_ref()
            .filter(|(_, at)| at.elapsed() < DNS_TTL)
            .map(|(addrs, _)| addrs.clone());
        if let Some(addrs) = cached {
            return Ok(addrs);
        }
        let name = host.clone();
        let resolved = glommio::executor()
            .spawn_blocking(move || {
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|it| it.collect::<Vec<_>>())
            })
            .await;
        self.bump(|s| s.resolutions += 1);
        let addrs = resolved.map_err(|e| ObjectError::Io(format!("resolve {host}: {e}")))?;
        if addrs.is_empty() {
            return Err(ObjectError::Io(format!("resolve {host}: no addresses")));
        }
        *self.dns.borrow_mut() = Some((addrs.clone(), Instant::now()));
        Ok(addrs)
    }

    fn bump(&self, f: impl FnOnce(&mut PoolStats)) {
        bump(&self.stats, f);
    }
}

fn bump(stats: &Cell<PoolStats>, f: impl FnOnce(&mut PoolStats)) {
    let mut s = stats.get();
    f(&mut s);
    stats.set(s);
}

/// HTTP/1 handshake on a connected stream; the connection's driver task
/// runs on this shard's executor.
async fn start_http1<T>(io: T, stats: Rc<Cell<PoolStats>>) -> Result<Conn, ObjectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new()
        // Queue the body's `Bytes` and write them as they are, instead of
        // copying them into hyper's write buffer first.
        .writev(true)
        .handshake::<T, ChunkBody>(io)
        .await
        .map_err(|e| ObjectError::Io(format!("HTTP handshake: {e}")))?;
    let task = glommio::spawn_local(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "S3 connection ended with an error");
        }
    })
    .detach();
    bump(&stats, |s| {
        s.open += 1;
        s.peak_open = s.peak_open.max(s.open);
    });
    Ok(Conn {
        sender,
        task,
        idle_since: Instant::now(),
        stats,
    })
}

/// rustls with the ring provider and Mozilla's root certificates.
fn tls_config() -> Result<Arc<ClientConfig>, ObjectError> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ObjectError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_of_urls() {
        let e = |s: &str| Endpoint::of_url(&s.parse().unwrap());
        assert_eq!(
            e("http://127.0.0.1:9000/b/").unwrap(),
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000
            }
        );
        assert_eq!(
            e("https://b.s3.amazonaws.com/").unwrap(),
            Endpoint {
                tls: true,
                host: "b.s3.amazonaws.com".into(),
                port: 443
            }
        );
        assert_eq!(e("http://[::1]:80/").unwrap().host, "::1");
        assert!(e("ftp://x/").is_err());
    }

    #[test]
    fn tls_config_builds_with_ring() {
        let config = tls_config().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
