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
    /// Shows the producer's and/or the consumers' counters.
    pub fn start(control: Arc<RunControl>, produce: bool, consume: bool) -> ProgressLine {
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
                let mut line = format!("[{:>4}s]", start.elapsed().as_secs());
                if produce {
                    line += &format!(
                        " sent {} acked {} ({:.0}/s)",
                        control.sent.load(Ordering::Relaxed),
                        acked,
                        (acked - last.0) as f64 / dt
                    );
                }
                if consume {
                    line += &format!(
                        " consumed {} ({:.0}/s)",
                        consumed,
                        (consumed - last.1) as f64 / dt
                    );
                }
                line += &format!(
                    " {:.1} MB/s errors {}",
                    (bytes - last.2) as f64 / MB / dt,
                    control.failed.load(Ordering::Relaxed)
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
