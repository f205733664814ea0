//! Exclusive advisory locks (`flock`) held for the life of a value: one
//! broker process per data directory and per WAL, as Kafka's `.lock` in
//! each log directory.
//!
//! Taken on the main thread before any shard starts (plain blocking std I/O
//! is fine there); never used inside a shard's executor. The lock belongs to
//! the open file, so it goes away with the process, however it ends, and a
//! second `FileLock` on the same file, in this process or another, is
//! refused.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is locked by another process", path.display())]
    Held { path: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An exclusive lock on one file; released when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Opens `path` (creating an empty file if it is missing) and locks it
    /// without waiting: [`LockError::Held`] if another open file holds it.
    pub fn acquire(path: &Path) -> Result<FileLock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io_err)?;
        loop {
            // SAFETY: flock only reads the descriptor, which `file` owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    return Err(LockError::Held {
                        path: path.to_path_buf(),
                    })
                }
                _ => return Err(io_err(e)),
            }
        }
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file, e.g. to note the holder's pid in a lock file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "file-lock-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(".lock")
    }

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let path = temp_path("twice");
        let first = FileLock::acquire(&path).unwrap();
        assert!(path.exists(), "a missing lock file is created");
        // flock conflicts between open files, even inside one process.
        match FileLock::acquire(&path) {
            Err(LockError::Held { path: held }) => assert_eq!(held, path),
            other => panic!("second lock: {other:?}"),
        }
        let shown = FileLock::acquire(&path).unwrap_err().to_string();
        assert!(shown.contains(".lock") && shown.contains("locked by another process"));
        drop(first);
        let again = FileLock::acquire(&path).unwrap();
        assert_eq!(again.path(), path);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn locking_keeps_the_file_contents() {
        let path = temp_path("keep");
        std::fs::write(&path, b"data").unwrap();
        let lock = FileLock::acquire(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        drop(lock);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_directory_in_the_way_is_an_io_error() {
        let path = temp_path("dir");
        std::fs::create_dir_all(&path).unwrap();
        assert!(matches!(
            FileLock::acquire(&path),
            Err(LockError::Io { .. })
        ));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
