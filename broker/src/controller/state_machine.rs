//! The metadata state machine: applies committed entries to the
//! `MetadataImage`, and writes and loads snapshots of it
//! (`data_dir/metadata/snapshot-<index>.snap`).
//!
//! A snapshot file is `magic "BRKMSNAP" | crc32c u32 | body`, the CRC over
//! the body; body = `has_last u8 | term u64 | node u64 | index u64 |
//! membership (u32 length + JSON) | snapshot id (u32 length + UTF-8) |
//! metadata records` (the records that rebuild the image, same framing as
//! the log). A snapshot that fails its checks is refused, naming the file:
//! silently starting from an older state would lose topics.
//!
//! Runs on the controller thread only. After each applied batch it
//! publishes the new image in `published` for the controller loop; it never
//! talks to shards itself.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use tracing::{error, info};

use super::records::{decode_all, encode_all, Record};
use super::store::sync_dir;
use super::{ControllerError, TypeConfig};
use crate::metadata::MetadataImage;

type NodeId = u64;
type StErr = StorageError<NodeId>;
type Membership = StoredMembership<NodeId, BasicNode>;

/// First bytes of a snapshot file.
pub const MAGIC: &[u8; 8] = b"BRKMSNAP";

/// A decoded snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: Membership,
    pub snapshot_id: String,
    pub records: Vec<Record>,
}

impl SnapshotFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self.last_applied {
            Some(l) => {
                body.put_u8(1);
                body.put_u64(l.leader_id.term);
                body.put_u64(l.leader_id.node_id);
                body.put_u64(l.index);
            }
            None => {
                body.put_u8(0);
                body.put_slice(&[0; 24]);
            }
        }
        let m = serde_json::to_vec(&self.membership).unwrap_or_default();
        body.put_u32(m.len() as u32);
        body.put_slice(&m);
        body.put_u32(self.snapshot_id.len() as u32);
        body.put_slice(self.snapshot_id.as_bytes());
        body.put_slice(&encode_all(&self.records));
        let mut out = Vec::with_capacity(body.len() + 12);
        out.put_slice(MAGIC);
        out.put_u32(crc32c::crc32c(&body));
        out.put_slice(&body);
        out
    }

    /// Decodes a snapshot; the error says what is wrong (not where).
    pub fn decode(bytes: &[u8]) -> Result<SnapshotFile, String> {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err("not a metadata snapshot (bad magic)".into());
        }
        let crc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let mut body = &bytes[12..];
        if crc32c::crc32c(body) != crc {
            return Err("checksum mismatch".into());
        }
        let short = || "snapshot body is truncated".to_string();
        if body.len() < 25 {
            return Err(short());
        }
        let has = body.get_u8();
        let (term, node, index) = (body.get_u64(), body.get_u64(), body.get_u64());
        let last_applied =
            (has == 1).then(|| LogId::new(CommittedLeaderId::new(term, node), index));
        let take = |body: &mut &[u8]| -> Result<Vec<u8>, String> {
            if body.len() < 4 {
                return Err(short());
            }
            let n = body.get_u32() as usize;
            if body.len() < n {
                return Err(short());
            }
            let (h, t) = body.split_at(n);
            *body = t;
            Ok(h.to_vec())
        };
        let m = take(&mut body)?;
        let membership = serde_json::from_slice(&m).map_err(|e| format!("bad membership: {e}"))?;
        let id = take(&mut body)?;
        let snapshot_id = String::from_utf8(id).map_err(|_| "bad snapshot id".to_string())?;
        let records = decode_all(body).map_err(|e| format!("bad records: {e}"))?;
        Ok(SnapshotFile {
            last_applied,
            membership,
            snapshot_id,
            records,
        })
    }

    pub fn image(&self) -> MetadataImage {
        let mut image = MetadataImage::from_snapshot(&self.records);
        image.version = self.last_applied.map_or(0, |l| l.index);
        image
    }
}

fn snapshot_name(index: u64) -> String {
    format!("snapshot-{index:020}.snap")
}

/// The newest snapshot file in `dir`, if any.
pub fn latest_snapshot_path(dir: &Path) -> Result<Option<PathBuf>, ControllerError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ControllerError::io(dir, e)),
    };
    let mut best: Option<PathBuf> = None;
    for e in rd {
        let e = e.map_err(|e| ControllerError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("snapshot-") && name.ends_with(".snap") {
            // Zero-padded names sort by index.
            if best.as_ref().is_none_or(|b| e.path() > *b) {
                best = Some(e.path());
            }
        }
    }
    Ok(best)
}

/// Loads the newest snapshot; a corrupt one is an error naming the file.
pub fn load_latest(dir: &Path) -> Result<Option<(PathBuf, SnapshotFile)>, ControllerError> {
    let Some(path) = latest_snapshot_path(dir)? else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).map_err(|e| ControllerError::io(&path, e))?;
    let snap = SnapshotFile::decode(&bytes).map_err(|reason| ControllerError::CorruptSnapshot {
        path: path.clone(),
        reason,
    })?;
    Ok(Some((path, snap)))
}

/// Writes a snapshot atomically and removes older ones.
pub fn write_snapshot(dir: &Path, snap: &SnapshotFile) -> std::io::Result<Vec<u8>> {
    let bytes = snap.encode();
    let index = snap.last_applied.map_or(0, |l| l.index);
    let name = snapshot_name(index);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(&name))?;
    sync_dir(dir)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with("snapshot-") && n.ends_with(".snap") && n < name {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(bytes)
}

/// The last snapshot's metadata and bytes.
type CurrentSnapshot = Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>;
/// The last snapshot, kept in memory for Raft to hand to followers.
type Current = Arc<Mutex<CurrentSnapshot>>;

pub struct StateMachine {
    dir: PathBuf,
    image: MetadataImage,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    current: Current,
    /// Where the controller loop reads the image after a commit.
    published: Arc<Mutex<Arc<MetadataImage>>>,
}

impl StateMachine {
    /// Loads the newest snapshot under `dir` (refusing a corrupt one).
    pub fn open(
        dir: &Path,
        published: Arc<Mutex<Arc<MetadataImage>>>,
    ) -> Result<StateMachine, ControllerError> {
        let mut sm = StateMachine {
            dir: dir.to_path_buf(),
            image: MetadataImage::default(),
            last_applied: None,
            membership: Membership::default(),
            current: Arc::new(Mutex::new(None)),
            published,
        };
        if let Some((path, snap)) = load_latest(dir)? {
            info!(
                file = %path.display(),
                last_applied = ?snap.last_applied.map(|l| l.index),
                records = snap.records.len(),
                "loaded metadata snapshot"
            );
            let bytes = std::fs::read(&path).map_err(|e| ControllerError::io(&path, e))?;
            sm.install(&snap);
            let meta = SnapshotMeta {
                last_log_id: snap.last_applied,
                last_membership: snap.membership.clone(),
                snapshot_id: snap.snapshot_id.clone(),
            };
            *sm.current_lock() = Some((meta, bytes));
        }
        sm.publish();
        Ok(sm)
    }

    fn current_lock(&self) -> std::sync::MutexGuard<'_, CurrentSnapshot> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn install(&mut self, snap: &SnapshotFile) {
        self.image = snap.image();
        self.last_applied = snap.last_applied;
        self.membership = snap.membership.clone();
    }

    fn publish(&self) {
        let mut p = self.published.lock().unwrap_or_else(|p| p.into_inner());
        *p = Arc::new(self.image.clone());
    }

    /// Applies one entry (also used by `metadata-shell` to replay a log).
    pub fn apply_entry(image: &mut MetadataImage, entry: &Entry<TypeConfig>) -> Option<Membership> {
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(batch) => match decode_all(&batch.0) {
                Ok(recs) => {
                    for r in &recs {
                        image.apply(r);
                    }
                }
                // The log frame's CRC passed, so this is a writer bug: keep
                // serving rather than refuse every later entry.
                Err(e) => error!(
                    index = entry.log_id.index,
                    "undecodable metadata entry: {e}"
                ),
            },
            EntryPayload::Membership(m) => {
                return Some(StoredMembership::new(Some(entry.log_id), m.clone()))
            }
        }
        image.version = entry.log_id.index;
        None
    }
}

pub struct SnapshotBuilder {
    dir: PathBuf,
    snap: SnapshotFile,
    current: Current,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StErr> {
        let bytes = write_snapshot(&self.dir, &self.snap)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        info!(
            last_applied = ?self.snap.last_applied.map(|l| l.index),
            bytes = bytes.len(),
            "wrote metadata snapshot"
        );
        let meta = SnapshotMeta {
            last_log_id: self.snap.last_applied,
            last_membership: self.snap.membership.clone(),
            snapshot_id: self.snap.snapshot_id.clone(),
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StErr> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            if let Some(m) = Self::apply_entry(&mut self.image, &e) {
                self.membership = m;
            }
            self.image.version = e.log_id.index;
            self.last_applied = Some(e.log_id);
            out.push(());
        }
        self.publish();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        SnapshotBuilder {
            dir: self.dir.clone(),
            snap: SnapshotFile {
                last_applied: self.last_applied,
                membership: self.membership.clone(),
                snapshot_id: format!("{}-{millis}", self.last_applied.map_or(0, |l| l.index)),
                records: self.image.to_records(),
            },
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StErr> {
        let bytes = snapshot.into_inner();
        let snap = SnapshotFile::decode(&bytes).map_err(|reason| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(reason))
        })?;
        write_snapshot(&self.dir, &snap)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.install(&snap);
        *self.current_lock() = Some((meta.clone(), bytes));
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StErr> {
        Ok(self.current_lock().as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::tests::every_type;
    use proptest::prelude::*;

    fn sample() -> SnapshotFile {
        SnapshotFile {
            last_applied: Some(LogId::new(CommittedLeaderId::new(3, 0), 42)),
            membership: Membership::default(),
            snapshot_id: "42-1".into(),
            records: every_type(),
        }
    }

    #[test]
    fn snapshot_round_trips() {
        let s = sample();
        let d = SnapshotFile::decode(&s.encode()).unwrap();
        assert_eq!(d.records, s.records);
        assert_eq!(d.last_applied, s.last_applied);
        assert_eq!(d.snapshot_id, s.snapshot_id);
        assert_eq!(d.image().version, 42);
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(SnapshotFile::decode(&b).is_err(), "flip at byte {i}");
        }
        assert!(SnapshotFile::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = SnapshotFile::decode(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&crc32c::crc32c(&bytes).to_be_bytes());
            framed.extend_from_slice(&bytes);
            let _ = SnapshotFile::decode(&framed);
        }
    }
}
