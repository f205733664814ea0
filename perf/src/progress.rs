//! The progress line on stderr during a run: records sent, current rate,
//! errors. Rewritten in place on a terminal, one line every 5 s otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::RunControl;
use crate::throughput::MB;

/// Prints progress until dropped.
pub struct ProgressLine {
    task: tokio::task::JoinHandle<()>,
    tty: bool,
}

impl ProgressLine {
    pub fn start(control: Arc<RunControl>) -> ProgressLine {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut last = (0u64, 0u64, 0u64, Instant::now());
            loop {
                tokio::time::sleep(every).await;
                let acked = control.acked.load(Ordering::Relaxed);
                let consumed = control.consumed.load(Ordering::Relaxed);
                let bytes = control.acked_bytes.load(Ordering::Relaxed)
                    + control.consumed_bytes.load(Ordering::Relaxed);
                let dt = last.3.elapsed().as_secs_f64().max(1e-3);
                let line = format!(
                    "[{:>4}s] sent {} acked {} ({:.0}/s) consumed {} ({:.0}/s) {:.1} MB/s errors {}",
                    start.elapsed().as_secs(),
                    control.sent.load(Ordering::Relaxed),
                    acked,
                    (acked - last.0) as f64 / dt,
                    consumed,
                    (consumed - last.1) as f64 / dt,
                    (bytes - last.2) as f64 / MB / dt,
                    control.failed.load(Ordering::Relaxed),
                );
                last = (acked, consumed, bytes, Instant::now());
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r{line}\x1b[K")
                } else {
                    writeln!(err, "{line}")
                };
            }
        });
        ProgressLine { task, tty }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.task.abort();
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}
