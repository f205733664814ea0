//! The shards' listening sockets. The main thread binds every shard's port
//! before the WAL is opened or any shard starts, so a port another process
//! already serves stops the start with a message naming it; each shard
//! then listens on the socket it was handed once it is ready to serve.
//!
//! No socket sets `SO_REUSEPORT`: every shard has a port of its own, so
//! nothing of ours shares one, and with it a second broker could bind a
//! port this one serves and the kernel would spread clients over two
//! unrelated brokers. `SO_REUSEADDR` stays, so a restart is not refused
//! because of connections of the previous run in TIME_WAIT.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::info;

use crate::config::Config;

/// Connections the kernel completes before the shard accepts them.
const BACKLOG: i32 = 1024;

/// How long a port in use is tried again before the start stops. A broker
/// killed a moment ago can leave its listening sockets behind for a while
/// (io_uring closes them in a kernel worker after the process is gone), and
/// a restart right after a crash must not fail on them; a port that is
/// really served is still refused, only this much later.
const IN_USE_GRACE: Duration = Duration::from_secs(5);
const IN_USE_RETRY: Duration = Duration::from_millis(100);

/// A shard's bound (not yet listening) socket.
#[derive(Debug)]
pub struct ShardSocket {
    socket: Socket,
    pub addr: SocketAddr,
}

impl ShardSocket {
    /// Binds `addr` exclusively.
    pub fn bind(addr: SocketAddr) -> io::Result<ShardSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        Ok(ShardSocket { socket, addr })
    }

    /// Starts listening and hands the socket to the calling shard's
    /// executor. Fails (`EADDRINUSE`) if another process started listening
    /// on the port since it was bound.
    pub fn listen(self) -> io::Result<glommio::net::TcpListener> {
        self.socket.listen(BACKLOG)?;
        let fd = self.socket.into_raw_fd();
        // SAFETY: `fd` is a bound, listening TCP socket that we own (taken
        // out of `Socket`, which no longer closes it); the listener takes
        // it over. Called on the shard's executor, as glommio requires.
        Ok(unsafe { glommio::net::TcpListener::from_raw_fd(fd) })
    }
}

/// Binds every shard's port (`base_port + shard` on `listen_host`), or says
/// which port cannot be had and why. Blocks the calling (main) thread for
/// up to [`IN_USE_GRACE`] while a port is in use.
pub fn bind_all(cfg: &Config) -> Result<Vec<ShardSocket>, String> {
    (0..cfg.shards)
        .map(|s| {
            let port = cfg.port(s);
            let addr = resolve(&cfg.listen_host, port)?;
            bind_waiting(addr, IN_USE_GRACE).map_err(|e| bind_error(s, addr, &e))
        })
        .collect()
}

/// Binds `addr`, trying again for up to `grace` while it is in use.
fn bind_waiting(addr: SocketAddr, grace: Duration) -> io::Result<ShardSocket> {
    let deadline = Instant::now() + grace;
    let mut logged = false;
    loop {
        match ShardSocket::bind(addr) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !logged {
                    info!(
                        "{addr} is in use; trying again for {} s in case a previous broker's \
                         socket is still closing",
                        grace.as_secs()
                    );
                    logged = true;
                }
                std::thread::sleep(IN_USE_RETRY);
            }
            other => return other,
        }
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve listen_host {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("listen_host {host} has no address"))
}

/// The message an operator sees when a shard's port cannot be bound.
pub fn bind_error(shard: usize, addr: SocketAddr, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::AddrInUse {
        format!(
            "cannot listen on {addr} (shard {shard}): the address is already in use, \
             another broker or program serves it; stop it or choose another base_port \
             or listen_host"
        )
    } else {
        format!("cannot listen on {addr} (shard {shard}): {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn localhost(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_port_someone_listens_on_is_refused() {
        let taken = std::net::TcpListener::bind(localhost(0)).unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_waiting(addr, Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let msg = bind_error(3, addr, &e);
        assert!(msg.contains(&addr.to_string()) && msg.contains("already in use"));
        assert!(msg.contains("shard 3"));
    }

    #[test]
    fn a_port_freed_within_the_grace_is_taken() {
        let taken = std::net::TcpListener::bind(localhost(0)).unwrap();
        let addr = taken.local_addr().unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(taken);
        });
        let sock = bind_waiting(addr, Duration::from_secs(5)).unwrap();
        closer.join().unwrap();
        sock.socket.listen(BACKLOG).unwrap();
    }

    #[test]
    fn a_bound_port_cannot_be_listened_on_twice() {
        // Two brokers may bind before either listens; the second to listen
        // loses, never shares.
        let first = ShardSocket::bind(localhost(0)).unwrap();
        let addr = first.socket.local_addr().unwrap().as_socket().unwrap();
        first.socket.listen(BACKLOG).unwrap();
        match ShardSocket::bind(addr) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::AddrInUse),
            Ok(second) => {
                let e = second.socket.listen(BACKLOG).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
            }
        }
    }

    #[test]
    fn bind_all_binds_each_shard_or_names_the_problem() {
        let cfg = Config {
            shards: 1,
            base_port: 0, // the kernel picks a free port
            ..Config::default()
        };
        let socks = bind_all(&cfg).unwrap();
        assert_eq!(socks.len(), 1);
        let cfg = Config {
            shards: 1,
            listen_host: "no-such-host.invalid".into(),
            ..Config::default()
        };
        assert!(bind_all(&cfg).unwrap_err().contains("no-such-host.invalid"));
    }
}
