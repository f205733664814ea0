//! Graceful shutdown on SIGTERM or SIGINT (or the admin API's
//! `POST /v1/drain`): every shard stops taking writes,
//! lets its in-flight appends finish, uploads what its WAL holds and trims
//! it; then the process exits. A broker stopped this way restarts with an
//! empty WAL tail. `kill -9` stays safe too (the WAL replays), just slower.
//!
//! The signals are blocked in every thread (the mask is set on the main
//! thread before any other starts) and taken by one waiting thread, so no
//! shard is ever interrupted by a handler.

use std::sync::mpsc;
use std::time::Duration;

use futures::channel::oneshot;
use tracing::{error, info, warn};

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it
/// starts afterwards. Call first thing in `main`.
pub fn block_signals() {
    // SAFETY: sigset_t is plain data; the calls only write the set we own
    // and change this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for SIGTERM or SIGINT and returns its number.
fn wait_for_signal() -> i32 {
    // SAFETY: as above; sigwait writes the signal number into `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// Asks for the shutdown SIGTERM starts (the admin API's drain): the
/// signal thread takes it like any other.
pub fn request() {
    // SAFETY: kill(2) on this process with a signal every thread blocks;
    // it stays pending until the signal thread's sigwait takes it.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}

/// What a shard gets: a request to shut down, and where to say it is done.
pub struct ShardShutdown {
    pub requested: oneshot::Receiver<()>,
    pub done: mpsc::Sender<usize>,
}

/// Starts the thread that waits for a signal, asks every shard to shut
/// down, waits for them (at most `timeout`), and exits.
pub fn start(shards: usize, timeout: Duration) -> Vec<ShardShutdown> {
    let (done_tx, done_rx) = mpsc::channel();
    let mut senders = Vec::with_capacity(shards);
    let mut out = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = oneshot::channel();
        senders.push(tx);
        out.push(ShardShutdown {
            requested: rx,
            done: done_tx.clone(),
        });
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = wait_for_signal();
            info!(
                signal = sig,
                "shutting down: shards stop taking writes and upload what their WAL holds"
            );
            for tx in senders {
                let _ = tx.send(());
            }
            let deadline = std::time::Instant::now() + timeout;
            let mut left = shards;
            while left > 0 {
                let wait = deadline.saturating_duration_since(std::time::Instant::now());
                match done_rx.recv_timeout(wait) {
                    Ok(_) => left -= 1,
                    Err(_) => {
                        warn!(
                            shards_left = left,
                            "shutdown timed out; the WAL keeps what was not uploaded"
                        );
                        std::process::exit(0);
                    }
                }
            }
            info!("shutdown complete");
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        error!("cannot start the signal thread: {e}; SIGTERM will kill the broker at once");
    }
    out
}
