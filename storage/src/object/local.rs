//! The embedded default object store: one file per object under a local
//! directory (`data_dir/objects`).
//!
//! Used by one shard on its own executor. Data goes through glommio's file
//! I/O (`DmaFile`, io_uring, `O_DIRECT`), never `std::fs` on the shard; the
//! few metadata calls glommio lacks (stat, listing, creating directories)
//! run on glommio's blocking thread pool. A put writes a temporary file,
//! flushes it, renames it into place and flushes the directory, so an
//! object is either absent or whole, also after a crash.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::{Directory, DmaFile};

use super::{body_len, ObjectBody, ObjectError, ObjectFuture, ObjectInfo, ObjectStore, StoreStats};

/// Size of each aligned write.
const WRITE_CHUNK: usize = 1 << 20;
/// Marks files that are not objects yet.
const TMP_MARK: &str = ".tmp-";

pub struct LocalStore {
    root: PathBuf,
    dirs: RefCell<HashSet<PathBuf>>,
    stats: Cell<StoreStats>,
    tmp_seq: Cell<u64>,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> ObjectError {
    ObjectError::Io(format!("{what} {}: {e}", path.display()))
}

fn is_not_found<T: std::fmt::Debug>(e: &glommio::GlommioError<T>) -> bool {
    match e {
        glommio::GlommioError::IoError(e) => e.kind() == std::io::ErrorKind::NotFound,
        glommio::GlommioError::EnhancedIoError { source, .. } => {
            source.kind() == std::io::ErrorKind::NotFound
        }
        _ => false,
    }
}

fn modified_ms(meta: &std::fs::Metadata) -> Option<i64> {
    meta.modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

impl LocalStore {
    /// Opens (creating if needed) the store at `root`. Must run inside a
    /// glommio executor.
    pub async fn open(root: PathBuf) -> Result<LocalStore, ObjectError> {
        let r = root.clone();
        glommio::executor()
            .spawn_blocking(move || std::fs::create_dir_all(&r))
            .await
            .map_err(|e| io_err("creating", &root, e))?;
        Ok(LocalStore {
            root,
            dirs: RefCell::new(HashSet::new()),
            stats: Cell::new(StoreStats::default()),
            tmp_seq: Cell::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stats(&self) -> StoreStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut StoreStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Counts a request that failed (there are no retries here), by cause.
    fn failed(&self, e: &ObjectError) {
        self.count(|s| {
            s.failures += 1;
            s.errors.record(e);
        });
    }

    /// The file of `key`; refuses keys that could leave the root.
    fn path(&self, key: &str) -> Result<PathBuf, ObjectError> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            || key.contains(TMP_MARK);
        if bad {
            return Err(ObjectError::Invalid(format!("object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    /// Creates the directory of a new object once (off the shard thread)
    /// and makes its entry durable.
    async fn ensure_dir(&self, dir: &Path) -> Result<(), ObjectError> {
        if self.dirs.borrow().contains(dir) {
            return Ok(());
        }
        let (d, root) = (dir.to_path_buf(), self.root.clone());
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                if d.is_dir() {
                    return Ok(());
                }
                std::fs::create_dir_all(&d)?;
                let mut at = d.parent();
                while let Some(p) = at {
                    std::fs::File::open(p)?.sync_all()?;
                    if p == root {
                        break;
                    }
                    at = p.parent();
                }
                Ok(())
            })
            .await
            .map_err(|e| io_err("creating directory", dir, e))?;
        self.dirs.borrow_mut().insert(dir.to_path_buf());
        Ok(())
    }

    async fn write_file(&self, tmp: &Path, body: &ObjectBody) -> Result<(), ObjectError> {
        let file = DmaFile::create(tmp)
            .await
            .map_err(|e| io_err("creating", tmp, e))?;
        let result = self.write_all(&file, tmp, body).await;
        let closed = file.close().await.map_err(|e| io_err("closing", tmp, e));
        result.and(closed)
    }

    /// Copies the body into aligned buffers (the one copy `O_DIRECT`
    /// needs), writes them, cuts the padding of the last one and flushes.
    async fn write_all(
        &self,
        file: &DmaFile,
        tmp: &Path,
        body: &ObjectBody,
    ) -> Result<(), ObjectError> {
        let total = body_len(body);
        let mut pos = 0u64;
        let mut buf = file.alloc_dma_buffer(WRITE_CHUNK);
        let mut filled = 0usize;
        for chunk in body {
            let mut rest: &[u8] = chunk;
            while !rest.is_empty() {
                let n = rest.len().min(WRITE_CHUNK - filled);
                buf.as_bytes_mut()[filled..filled + n].copy_from_slice(&rest[..n]);
                filled += n;
                rest = &rest[n..];
                if filled == WRITE_CHUNK {
                    file.write_at(buf, pos)
                        .await
                        .map_err(|e| io_err("writing", tmp, e))?;
                    pos += WRITE_CHUNK as u64;
                    buf = file.alloc_dma_buffer(WRITE_CHUNK);
                    filled = 0;
                }
            }
        }
        if filled > 0 {
            let aligned = file.align_up(filled as u64) as usize;
            buf.as_bytes_mut()[filled..aligned].fill(0);
            buf.trim_to_size(aligned);
            file.write_at(buf, pos)
                .await
                .map_err(|e| io_err("writing", tmp, e))?;
        }
        file.truncate(total)
            .await
            .map_err(|e| io_err("truncating", tmp, e))?;
        file.fdatasync()
            .await
            .map_err(|e| io_err("flushing", tmp, e))
    }

    async fn do_put(&self, key: &str, body: ObjectBody) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        let dir = path
            .parent()
            .ok_or_else(|| ObjectError::Invalid(format!("object key {key:?}")))?
            .to_path_buf();
        self.ensure_dir(&dir).await?;
        let seq = self.tmp_seq.get();
        self.tmp_seq.set(seq + 1);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("obj");
        let tmp = dir.join(format!("{name}{TMP_MARK}{}-{seq}", std::process::id()));
        let written = self.write_file(&tmp, &body).await;
        let placed = match written {
            Ok(()) => glommio::io::rename(&tmp, &path)
                .await
                .map_err(|e| io_err("renaming into", &path, e)),
            Err(e) => Err(e),
        };
        if let Err(e) = placed {
            let _ = glommio::io::remove(&tmp).await;
            self.failed(&e);
            return Err(e);
        }
        let d = Directory::open(&dir)
            .await
            .map_err(|e| io_err("opening", &dir, e))?;
        let synced = d.sync().await.map_err(|e| io_err("flushing", &dir, e));
        let _ = d.close().await;
        synced?;
        let len = body_len(&body);
        self.count(|s| {
            s.puts += 1;
            s.bytes_put += len;
        });
        Ok(())
    }

    async fn do_get(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        let len = (range.end.saturating_sub(range.start)) as usize;
        let mut pieces = self.do_get_pieces(key, range, &[len]).await?;
        Ok(pieces.pop().unwrap_or_default())
    }

    /// Reads the range with one O_DIRECT read and copies each piece out of
    /// the read buffer (it belongs to glommio's DMA pool): one copy in all.
    async fn do_get_pieces(
        &self,
        key: &str,
        range: Range<u64>,
        lens: &[usize],
    ) -> Result<Vec<Bytes>, ObjectError> {
        let path = self.path(key)?;
        let file = match DmaFile::open(&path).await {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Err(ObjectError::NotFound(key.into())),
            Err(e) => return Err(io_err("opening", &path, e)),
        };
        let read = async {
            let size = file
                .file_size()
                .await
                .map_err(|e| io_err("stat", &path, e))?;
            if range.start > range.end || range.end > size {
                return Err(ObjectError::Invalid(format!(
                    "range {range:?} of {key} ({size} bytes)"
                )));
            }
            let len = (range.end - range.start) as usize;
            let r = file
                .read_at(range.start, len)
                .await
                .map_err(|e| io_err("reading", &path, e))?;
            if r.len() != len {
                return Err(io_err("short read of", &path, r.len()));
            }
            super::cut_pieces(&r, lens)
        }
        .await;
        let _ = file.close().await;
        match &read {
            Ok(_) => {
                let n = range.end - range.start;
                self.count(|s| {
                    s.gets += 1;
                    s.bytes_got += n;
                });
            }
            Err(e) => self.failed(e),
        }
        read
    }

    async fn do_head(&self, key: &str) -> Result<Option<ObjectInfo>, ObjectError> {
        let path = self.path(key)?;
        self.count(|s| s.heads += 1);
        let p = path.clone();
        let meta = glommio::executor()
            .spawn_blocking(move || std::fs::metadata(&p))
            .await;
        match meta {
            Ok(m) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: m.len(),
                last_modified_ms: modified_ms(&m),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path, e)),
        }
    }

    async fn do_delete(&self, keys: &[String]) -> Result<(), ObjectError> {
        for key in keys {
            let path = self.path(key)?;
            match glommio::io::remove(&path).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    let e = io_err("deleting", &path, e);
                    self.failed(&e);
                    return Err(e);
                }
            }
            self.count(|s| s.deletes += 1);
        }
        Ok(())
    }

    async fn do_list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        self.count(|s| s.lists += 1);
        let (root, prefix_owned) = (self.root.clone(), prefix.to_string());
        glommio::executor()
            .spawn_blocking(move || list_dir(&root, &prefix_owned))
            .await
            .map_err(|e| io_err("listing", &self.root, e))
    }
}

/// Walks `root` (blocking; runs on the blocking pool) and returns the
/// objects whose key starts with `prefix`, in key order.
fn list_dir(root: &Path, prefix: &str) -> std::io::Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if key.contains(TMP_MARK) || !key.starts_with(prefix) {
                continue;
            }
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                last_modified_ms: modified_ms(&meta),
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

impl ObjectStore for LocalStore {
    fn put<'a>(&'a self, key: &'a str, body: ObjectBody) -> ObjectFuture<'a, ()> {
        Box::pin(self.do_put(key, body))
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> ObjectFuture<'a, Bytes> {
        Box::pin(self.do_get(key, range))
    }

    fn get_pieces<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        lens: &'a [usize],
    ) -> ObjectFuture<'a, Vec<Bytes>> {
        Box::pin(self.do_get_pieces(key, range, lens))
    }

    fn head<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, Option<ObjectInfo>> {
        Box::pin(self.do_head(key))
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> ObjectFuture<'a, ()> {
        Box::pin(self.do_delete(keys))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> ObjectFuture<'a, Vec<ObjectInfo>> {
        Box::pin(self.do_list(prefix))
    }

    fn stats(&self) -> StoreStats {
        LocalStore::stats(self)
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::object::cut_pieces;
    use crate::object::run_local as run;

    fn temp_root(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "local-store-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ))
    }

    #[test]
    fn put_get_head_list_delete() {
        let root = temp_root("ops");
        run(move || async move {
            let s = LocalStore::open(root.clone()).await.unwrap();
            // Sizes around the alignment and the write chunk.
            let sizes = [0usize, 1, 511, 4096, 4097, WRITE_CHUNK, WRITE_CHUNK * 2 + 3];
            for (i, &n) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..n).map(|x| (x * 7 + i) as u8).collect();
                // Split into uneven chunks.
                let body = vec![
                    Bytes::copy_from_slice(&data[..n / 3]),
                    Bytes::copy_from_slice(&data[n / 3..]),
                ];
                let key = format!("d{}/obj{i}", i % 2);
                s.put(&key, body).await.unwrap();
                let head = s.head(&key).await.unwrap().unwrap();
                assert_eq!(head.size, n as u64);
                if n > 0 {
                    let all = s.get_range(&key, 0..n as u64).await.unwrap();
                    assert_eq!(&all[..], &data[..]);
                    let mid = s.get_range(&key, (n / 2) as u64..n as u64).await.unwrap();
                    assert_eq!(&mid[..], &data[n / 2..]);
                    // In pieces, through the local store's own cutting and
                    // through the trait's default (a get_range, then cut).
                    let lens = [n / 4, 0, n - n / 4 - n / 5, n / 5];
                    let pieces = s.get_pieces(&key, 0..n as u64, &lens).await.unwrap();
                    let default = cut_pieces(&all, &lens).unwrap();
                    assert_eq!(pieces, default);
                    assert_eq!(pieces.concat(), data);
                    assert!(s.get_pieces(&key, 0..n as u64, &[n + 1]).await.is_err());
                }
                assert!(s.get_range(&key, 0..n as u64 + 1).await.is_err());
            }
            let listed = s.list("d1/").await.unwrap();
            assert_eq!(
                listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
                vec!["d1/obj1", "d1/obj3", "d1/obj5"]
            );
            assert_eq!(s.list("").await.unwrap().len(), sizes.len());
            let gone: Vec<String> = vec!["d1/obj1".into(), "d1/nothere".into()];
            s.delete_many(&gone).await.unwrap();
            assert!(s.head("d1/obj1").await.unwrap().is_none());
            assert_eq!(
                s.get_range("d1/obj1", 0..1).await.unwrap_err(),
                ObjectError::NotFound("d1/obj1".into())
            );
            assert!(s.put("../escape", vec![]).await.is_err());
            assert!(s.put("a//b", vec![]).await.is_err());
            let _ = std::fs::remove_dir_all(&root);
        });
    }

    #[test]
    fn temporary_files_are_not_listed() {
        let root = temp_root("tmp");
        run(move || async move {
            let s = LocalStore::open(root.clone()).await.unwrap();
            s.put("a/x", vec![Bytes::from_static(b"hello")])
                .await
                .unwrap();
            std::fs::write(root.join("a").join(format!("y{TMP_MARK}1-1")), b"partial").unwrap();
            let keys: Vec<String> = s
                .list("")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
            assert_eq!(keys, vec!["a/x".to_string()]);
            let _ = std::fs::remove_dir_all(&root);
        });
    }
}
