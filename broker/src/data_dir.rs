//! The data directory's lock: `data_dir/.lock`, as Kafka keeps one in each
//! log directory. A second broker started on the same directory stops with
//! a message naming the lock instead of sharing the metadata log and the
//! WAL with the first.
//!
//! Runs on the main thread before anything else opens the directory
//! (blocking std I/O is fine there). The lock is held until the process
//! ends, however it ends.

use std::os::unix::fs::FileExt;
use std::path::Path;

use storage::file_lock::{FileLock, LockError};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = ".lock";

/// Creates the data directory if needed and locks it for this process. The
/// lock file holds the holder's pid, so that the next one can name it.
pub fn lock(dir: &Path) -> Result<FileLock, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    match FileLock::acquire(&path) {
        Ok(lock) => {
            note_pid(&lock);
            Ok(lock)
        }
        Err(LockError::Held { .. }) => Err(format!(
            "the data directory {} is in use: its lock {} is held by another process{}; \
             another broker runs on this directory (each broker needs its own data_dir)",
            dir.display(),
            path.display(),
            holder(&path)
        )),
        Err(e) => Err(format!(
            "cannot lock the data directory {}: {e}",
            dir.display()
        )),
    }
}

fn note_pid(lock: &FileLock) {
    let pid = format!("{}\n", std::process::id());
    // Only a hint for the message of a second broker: failing to write it
    // does not matter.
    let _ = lock.file().set_len(0);
    let _ = lock.file().write_all_at(pid.as_bytes(), 0);
}

/// " (pid N)" when the lock file names its holder.
fn holder(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(|pid| format!(" (pid {pid})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_lock_file_and_the_holder() {
        let dir = std::env::temp_dir().join(format!("data-dir-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = lock(&dir.join("data")).unwrap();
        let msg = lock(&dir.join("data")).unwrap_err();
        let lock_path = dir.join("data").join(LOCK_FILE);
        assert!(msg.contains(&lock_path.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        let _again = lock(&dir.join("data")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
