//! Stopping a run: at its end, on Ctrl-C, or when something fails.
//!
//! Tasks and generator threads poll `stopped()`; the first fatal error is
//! kept so the report and the exit code can name it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Shared by every task of a run.
#[derive(Debug, Default)]
pub struct RunControl {
    stop: AtomicBool,
    fatal: Mutex<Option<String>>,
    /// Progress counters: records handed to the client, acknowledged,
    /// failed, consumed.
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub acked_bytes: AtomicU64,
    pub failed: AtomicU64,
    pub consumed: AtomicU64,
    pub consumed_bytes: AtomicU64,
}

impl RunControl {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Stops the run because of `reason`; the first reason wins.
    pub fn abort(&self, reason: String) {
        if let Ok(mut f) = self.fatal.lock() {
            if f.is_none() {
                *f = Some(reason);
            }
        }
        self.stop();
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }
}
