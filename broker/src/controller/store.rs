//! The Raft log of the metadata quorum on disk, under `data_dir/metadata/`:
//!
//! * `raft.log`: entries back to back, each framed as
//!   `length u32 | crc32c u32 | body` (big endian), the CRC over the body;
//!   body = `term u64 | leader node u64 | index u64 | kind u8 | payload`
//!   (kind 0 blank, 1 metadata records, 2 membership as JSON);
//! * `vote`, `purged`: small JSON files replaced atomically.
//!
//! The commit point is not stored: each commit would cost another file
//! write, and a restarted one-voter leader commits its whole log at once.
//!
//! Every append is written and `fdatasync`ed before Raft is told it is
//! durable. On open, the first frame whose header or CRC fails ends the log:
//! the tail from there is cut (with a warning), never replayed.
//!
//! Runs on the controller thread only (blocking file I/O is fine there;
//! never on a shard).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use super::{ControllerError, RecordBatch, TypeConfig};

type NodeId = u64;
type StErr = StorageError<NodeId>;

pub const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";

/// Largest entry body accepted when reading the log back.
const MAX_ENTRY: usize = 256 << 20;

const KIND_BLANK: u8 = 0;
const KIND_RECORDS: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Encodes one entry's body (without the length/CRC frame).
pub fn encode_entry(e: &Entry<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.put_u64(e.log_id.leader_id.term);
    out.put_u64(e.log_id.leader_id.node_id);
    out.put_u64(e.log_id.index);
    match &e.payload {
        EntryPayload::Blank => out.put_u8(KIND_BLANK),
        EntryPayload::Normal(batch) => {
            out.put_u8(KIND_RECORDS);
            out.put_slice(&batch.0);
        }
        EntryPayload::Membership(m) => {
            out.put_u8(KIND_MEMBERSHIP);
            // Membership is Raft's own type; JSON keeps it readable and
            // needs no hand-written codec.
            let json = serde_json::to_vec(m).unwrap_or_default();
            out.put_slice(&json);
        }
    }
    out
}

/// Decodes one entry body; `None` when it is malformed.
pub fn decode_entry(mut body: &[u8]) -> Option<Entry<TypeConfig>> {
    if body.len() < 25 {
        return None;
    }
    let term = body.get_u64();
    let node = body.get_u64();
    let index = body.get_u64();
    let kind = body.get_u8();
    let payload = match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_RECORDS => EntryPayload::Normal(RecordBatch(body.to_vec())),
        KIND_MEMBERSHIP => EntryPayload::Membership(serde_json::from_slice(body).ok()?),
        _ => return None,
    };
    Some(Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, node), index),
        payload,
    })
}

fn frame(body: &[u8], out: &mut Vec<u8>) {
    out.put_u32(body.len() as u32);
    out.put_u32(crc32c::crc32c(body));
    out.put_slice(body);
}

/// What reading `raft.log` found.
pub struct LogScan {
    /// Entries with their byte offset in the file.
    pub entries: Vec<(u64, Entry<TypeConfig>)>,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// File length; more than `valid_len` means a torn or corrupt tail.
    pub file_len: u64,
    /// Why the scan stopped early, if it did.
    pub stopped: Option<String>,
}

/// Reads every whole, checksummed entry of `path` (a missing file is empty).
pub fn scan_log(path: &Path) -> Result<LogScan, ControllerError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|e| ControllerError::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ControllerError::io(path, e)),
    }
    Ok(scan_log_bytes(&bytes))
}

/// Every whole, checksummed entry of a log's bytes, in order, up to the
/// first frame that is torn, corrupt, malformed or out of sequence.
pub fn scan_log_bytes(bytes: &[u8]) -> LogScan {
    let mut scan = LogScan {
        entries: Vec::new(),
        valid_len: 0,
        file_len: bytes.len() as u64,
        stopped: None,
    };
    let mut pos = 0usize;
    let mut last_index: Option<u64> = None;
    while pos < bytes.len() {
        let stop = |why: String| Some(format!("at byte {pos}: {why}"));
        let Some(head) = bytes.get(pos..pos + 8) else {
            scan.stopped = stop("truncated frame header".into());
            break;
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_ENTRY {
            scan.stopped = stop(format!("entry length {len} is implausible"));
            break;
        }
        let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
            scan.stopped = stop(format!("entry of {len} bytes is truncated"));
            break;
        };
        if crc32c::crc32c(body) != crc {
            scan.stopped = stop("entry checksum mismatch".into());
            break;
        }
        let Some(entry) = decode_entry(body) else {
            scan.stopped = stop("entry body is malformed".into());
            break;
        };
        if last_index.is_some_and(|l| l.checked_add(1) != Some(entry.log_id.index)) {
            scan.stopped = stop(format!(
                "entry index {} does not follow {}",
                entry.log_id.index,
                last_index.unwrap_or_default()
            ));
            break;
        }
        last_index = Some(entry.log_id.index);
        scan.entries.push((pos as u64, entry));
        pos += 8 + len;
        scan.valid_len = pos as u64;
    }
    scan
}

/// Writes `value` as JSON to `dir/name` atomically (temp file, fsync, rename).
fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T, sync: bool) -> std::io::Result<()> {
    let json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&json)?;
    if sync {
        f.sync_data()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a JSON file written by `write_json`; missing is `None`.
pub fn read_json<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, ControllerError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ControllerError::Corrupt {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ControllerError::io(&path, e)),
    }
}

struct LogInner {
    dir: PathBuf,
    file: File,
    /// Entries by index, with their byte offset in `raft.log`.
    entries: BTreeMap<u64, (u64, Entry<TypeConfig>)>,
    end: u64,
    purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

/// The Raft log store. Cheap to clone (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> Result<LogStore, ControllerError> {
        std::fs::create_dir_all(dir).map_err(|e| ControllerError::io(dir, e))?;
        let path = dir.join(LOG_FILE);
        let scan = scan_log(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ControllerError::io(&path, e))?;
        if scan.valid_len < scan.file_len {
            warn!(
                file = %path.display(),
                cut_bytes = scan.file_len - scan.valid_len,
                kept_entries = scan.entries.len(),
                "metadata log has a torn or corrupt tail ({}): cutting it",
                scan.stopped.as_deref().unwrap_or("unknown")
            );
            file.set_len(scan.valid_len)
                .and_then(|_| file.sync_all())
                .map_err(|e| ControllerError::io(&path, e))?;
        }
        let purged: Option<LogId<NodeId>> = read_json(dir, PURGED_FILE)?;
        let vote = read_json(dir, VOTE_FILE)?;
        let entries = scan
            .entries
            .into_iter()
            .filter(|(_, e)| purged.is_none_or(|p| e.log_id.index > p.index))
            .map(|(off, e)| (e.log_id.index, (off, e)))
            .collect();
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                file,
                entries,
                end: scan.valid_len,
                purged,
                vote,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic while holding the lock leaves a consistent map (every
        // mutation is one insert/split); keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Index of the last entry in the log (or purged), if any.
    #[cfg(test)]
    pub fn last_index(&self) -> Option<u64> {
        let g = self.lock();
        g.entries
            .keys()
            .next_back()
            .copied()
            .or(g.purged.map(|p| p.index))
    }

    fn append_sync(&self, entries: Vec<Entry<TypeConfig>>) -> std::io::Result<()> {
        let mut g = self.lock();
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for e in &entries {
            offsets.push(g.end + buf.len() as u64);
            frame(&encode_entry(e), &mut buf);
        }
        g.file.write_all(&buf)?;
        g.file.sync_data()?;
        g.end += buf.len() as u64;
        for (off, e) in offsets.into_iter().zip(entries) {
            g.entries.insert(e.log_id.index, (off, e));
        }
        Ok(())
    }

    /// Removes entries from `index` on (conflicting entries of an old leader).
    fn truncate_sync(&self, index: u64) -> std::io::Result<()> {
        let mut g = self.lock();
        let Some(&(off, _)) = g.entries.get(&index) else {
            return Ok(());
        };
        g.file.set_len(off)?;
        g.file.sync_all()?;
        g.end = off;
        let _ = g.entries.split_off(&index);
        Ok(())
    }

    /// Drops entries up to `log_id` (they are in a snapshot): records the
    /// purge point, then rewrites the file with the entries that remain.
    fn purge_sync(&self, log_id: LogId<NodeId>) -> std::io::Result<()> {
        let mut g = self.lock();
        write_json(&g.dir, PURGED_FILE, &log_id, true)?;
        g.purged = Some(log_id);
        let keep = g.entries.split_off(&(log_id.index + 1));
        let mut buf = Vec::new();
        let mut entries = BTreeMap::new();
        for (idx, (_, e)) in keep {
            let off = buf.len() as u64;
            frame(&encode_entry(&e), &mut buf);
            entries.insert(idx, (off, e));
        }
        let tmp = g.dir.join(format!("{LOG_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        let path = g.dir.join(LOG_FILE);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&g.dir)?;
        g.file = OpenOptions::new().append(true).open(&path)?;
        g.end = buf.len() as u64;
        g.entries = entries;
        Ok(())
    }
}

fn range_start(b: Bound<&u64>) -> u64 {
    match b {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => 0,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StErr> {
        let g = self.lock();
        let start = range_start(range.start_bound());
        Ok(g.entries
            .range(start..)
            .take_while(|(i, _)| range.contains(*i))
            .map(|(_, (_, e))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StErr> {
        let g = self.lock();
        let last = g.entries.values().next_back().map(|(_, e)| e.log_id);
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: last.or(g.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StErr> {
        let mut g = self.lock();
        write_json(&g.dir, VOTE_FILE, vote, true).map_err(|e| StorageIOError::write_vote(&e))?;
        g.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StErr> {
        Ok(self.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let result = self.append_sync(entries);
        let err = result.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(result);
        match err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StErr> {
        self.truncate_sync(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StErr> {
        self.purge_sync(log_id)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "broker-meta-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entry(index: u64, payload: &[u8]) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(RecordBatch(payload.to_vec())),
        }
    }

    /// Found by `fuzz/fuzz_targets/metadata.rs`: an entry with the largest
    /// index, followed by another, overflowed the sequence check.
    #[test]
    fn an_index_at_the_end_of_the_range_ends_the_scan() {
        let mut log = Vec::new();
        for index in [u64::MAX, 0] {
            frame(&encode_entry(&entry(index, b"x")), &mut log);
        }
        let scan = scan_log_bytes(&log);
        assert_eq!(scan.entries.len(), 1);
        assert!(scan.stopped.is_some_and(|s| s.contains("does not follow")));
    }

    #[test]
    fn entries_round_trip_and_survive_reopen() {
        let dir = temp_dir("log");
        let s = LogStore::open(&dir).unwrap();
        s.append_sync(vec![entry(1, b"a"), entry(2, b"bb"), entry(3, b"")])
            .unwrap();
        drop(s);
        let s = LogStore::open(&dir).unwrap();
        assert_eq!(s.last_index(), Some(3));
        let g = s.lock();
        let e = &g.entries[&2].1;
        assert!(matches!(&e.payload, EntryPayload::Normal(b) if b.0 == b"bb"));
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut() {
        let dir = temp_dir("torn");
        let s = LogStore::open(&dir).unwrap();
        s.append_sync(vec![entry(1, b"one"), entry(2, b"two")])
            .unwrap();
        drop(s);
        let path = dir.join(LOG_FILE);
        let whole = std::fs::read(&path).unwrap();
        // Half-written third entry.
        let mut torn = whole.clone();
        torn.extend_from_slice(&[0, 0, 0, 40, 1, 2, 3]);
        std::fs::write(&path, &torn).unwrap();
        let s = LogStore::open(&dir).unwrap();
        assert_eq!(s.last_index(), Some(2));
        drop(s);
        assert_eq!(std::fs::read(&path).unwrap(), whole, "tail cut on disk");
        // A flipped bit in the last entry: cut from there.
        let mut bad = whole.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let s = LogStore::open(&dir).unwrap();
        assert_eq!(s.last_index(), Some(1));
        s.append_sync(vec![entry(2, b"again")]).unwrap();
        drop(s);
        let s = LogStore::open(&dir).unwrap();
        assert_eq!(s.last_index(), Some(2));
    }

    #[test]
    fn truncate_and_purge() {
        let dir = temp_dir("purge");
        let s = LogStore::open(&dir).unwrap();
        s.append_sync((1..=5).map(|i| entry(i, b"x")).collect())
            .unwrap();
        s.truncate_sync(4).unwrap();
        assert_eq!(s.last_index(), Some(3));
        s.purge_sync(LogId::new(CommittedLeaderId::new(1, 0), 2))
            .unwrap();
        s.append_sync(vec![entry(4, b"y")]).unwrap();
        drop(s);
        let s = LogStore::open(&dir).unwrap();
        let g = s.lock();
        assert_eq!(g.entries.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(g.purged.map(|p| p.index), Some(2));
    }

    #[test]
    fn garbage_never_panics() {
        let dir = temp_dir("garbage");
        std::fs::write(dir.join(LOG_FILE), b"\xff\xff\xff\xff garbage").unwrap();
        let s = LogStore::open(&dir).unwrap();
        assert_eq!(s.last_index(), None);
        for len in 0..40 {
            let _ = decode_entry(&vec![1u8; len]);
        }
    }
}
