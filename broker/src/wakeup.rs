//! Keeps every shard's reactor from sleeping through a lost wake-up.
//!
//! glommio 0.9 sometimes misses a wake-up from another thread while its
//! reactor sleeps (glommio issues #326 and #547): the notifier that a
//! blocking-pool job or a shared channel writes to is not written, and the
//! shard sleeps for good. Seen as a start that hangs (about one in 300
//! under load, in the channel-mesh join: gdb showed the shard's reactor
//! asleep on its main ring, its blocking threads idle, and the other shard
//! waiting on it). A timer on the shard does not help (timers live on the
//! latency ring, which wakes the main ring through the same fragile link),
//! nor did a blocking-pool job that sleeps and returns (its completion is
//! signalled through that notifier).
//!
//! So one plain thread (`ticker`) writes a byte every `TICK` to one end of a
//! socket pair per shard, and each shard keeps a read pending on the other
//! end: the reactor polls that socket on its main ring, the path client
//! traffic takes, so the kernel itself completes the poll and the reactor
//! wakes, runs whatever a lost wake-up left runnable, and sleeps again.
//!
//! `start` runs on the main thread; `listen` on each shard (it only reads
//! and drops bytes). The ticker thread never touches a shard's state.

use std::io::Write;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use futures_lite::AsyncReadExt;
use tracing::warn;

/// How often every reactor is woken.
const TICK: Duration = Duration::from_millis(100);

/// Creates one socket pair per shard and the thread that ticks them; returns
/// the ends the shards read, in shard order.
pub fn start(shards: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut readers = Vec::with_capacity(shards);
    let mut writers = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (w, r) = UnixStream::pair()?;
        // A shard that does not read (busy, or gone at shutdown) must never
        // block the ticker: a full socket just drops the tick.
        w.set_nonblocking(true)?;
        writers.push(w);
        readers.push(OwnedFd::from(r));
    }
    std::thread::Builder::new()
        .name("reactor-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            for w in &mut writers {
                let _ = w.write(&[0]);
            }
        })?;
    Ok(readers)
}

/// Keeps a read pending on this shard's end, forever. Runs on the shard.
pub fn listen(fd: OwnedFd) {
    // SAFETY: `fd` is an open Unix stream socket (one end of
    // `UnixStream::pair` in `start`), owned here and handed to glommio,
    // which closes it when the stream drops.
    let mut sock = unsafe {
        <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd.into_raw_fd())
    };
    glommio::spawn_local(async move {
        let mut buf = [0u8; 256];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    warn!("reactor ticker socket failed, wake-ups are no longer guarded: {e}");
                    return;
                }
            }
        }
    })
    .detach();
}
