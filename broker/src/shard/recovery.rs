//! Opening and recovering a shard's partitions: each partition starts from
//! what the metadata image says is in object storage, then the WAL tail is
//! replayed on top (records already in objects are skipped, so a crash
//! between an object's commit and the WAL trim never duplicates data). The
//! same rebuild runs after a WAL write or flush failed.
//!
//! Runs on the shard's executor, before the listener opens and after a WAL
//! failure; never holds a borrow across `.await`.

use std::rc::Rc;

use storage::wal::{RecoveredRecord, WalError, WalLayout, WalSlice, WalTuning};
use tracing::{debug, error, info, warn};

use super::{CacheUsage, Shard};
use crate::partition::{Lifecycle, Partition, PartitionState, Replayed};
use crate::wal_record::{self, WalEntry};

/// What a rebuild did, for the log and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub restored: usize,
    pub already_uploaded: usize,
    pub skipped: usize,
}

impl Shard {
    /// Opens this shard's WAL slice, rebuilds its partitions from metadata
    /// plus what the slice holds, and starts the committer and uploader.
    /// Runs before the listener starts.
    pub async fn open_wal(self: &Rc<Self>, layout: &WalLayout) -> Result<(), WalError> {
        let tuning = WalTuning {
            dsync_writes: self.config.wal_dsync,
            batches_in_flight: self.config.wal_batches_in_flight,
            ..WalTuning::default()
        };
        let (wal, records) = WalSlice::open_tuned(layout, self.id as u32, tuning).await?;
        self.attach_wal(wal, records);
        Ok(())
    }

    /// Takes a freshly opened slice and what it recovered.
    pub(crate) fn attach_wal(self: &Rc<Self>, wal: WalSlice, records: Vec<RecoveredRecord>) {
        let rebuilt = self.rebuild_from(&wal, records);
        info!(
            shard = self.id,
            used_bytes = wal.used_bytes(),
            capacity = wal.capacity(),
            restored = rebuilt.restored,
            already_uploaded = rebuilt.already_uploaded,
            "WAL slice recovered"
        );
        *self.wal.borrow_mut() = Some(wal);
        glommio::spawn_local(self.clone().run_committer()).detach();
        glommio::spawn_local(self.clone().run_producer_expiry()).detach();
        if self.store().is_some() {
            crate::uploader::start(self);
        }
    }

    /// Replaces every partition's state and log cache with what the image
    /// and the WAL records say. Records of partitions this shard does not
    /// lead (deleted topics) are skipped.
    pub(crate) fn rebuild_from(&self, wal: &WalSlice, records: Vec<RecoveredRecord>) -> Rebuilt {
        let image = self.image();
        let mut parts = self.partitions.borrow_mut();
        for part in parts.values_mut() {
            let (topic, p) = part.key;
            let epoch = image
                .topic_by_id(&topic)
                .and_then(|t| t.leader_epochs.get(p as usize).copied())
                .unwrap_or(0);
            part.state = PartitionState::from_metadata(image.objects.partition(topic, p), epoch);
            part.producers = Partition::producers_from(&image, part.key);
            part.cache.clear();
        }
        self.evictable.borrow_mut().clear();
        let mut usage = CacheUsage::default();
        let mut out = Rebuilt::default();
        let last_offset = records.last().map(|r| r.offset);
        for r in records {
            match wal_record::decode(&r.body) {
                Ok(WalEntry::Batch {
                    topic,
                    partition,
                    batch,
                }) => match parts.get_mut(&(topic, partition)) {
                    Some(part) => {
                        let len = batch.bytes.len();
                        match part.replay(batch) {
                            Replayed::Applied => {
                                usage.cached += len;
                                usage.unuploaded += len;
                                out.restored += 1;
                            }
                            Replayed::AlreadyUploaded => out.already_uploaded += 1,
                            Replayed::Duplicate => out.skipped += 1,
                        }
                    }
                    None => out.skipped += 1,
                },
                Ok(WalEntry::Unknown(kind)) => {
                    debug!(shard = self.id, kind, "skipping WAL record of unknown kind");
                    out.skipped += 1;
                }
                Err(e) => {
                    // The WAL checked the record's CRC, so this is a bug or
                    // a newer format, not a torn write: keep going.
                    warn!(
                        shard = self.id,
                        offset = r.offset,
                        "unreadable WAL record: {e}"
                    );
                    out.skipped += 1;
                }
            }
        }
        for part in parts.values_mut() {
            part.state.lifecycle = Lifecycle::Leading;
            part.waiters.notify(usize::MAX);
        }
        drop(parts);
        self.usage.set(usage);
        if usage.unuploaded > 0 {
            // Recovered data counts as just appended: it goes up on the age
            // trigger even if nothing is produced after the restart.
            self.uploader.note_appended();
        }
        // Everything recovered is committed: the next upload covers it, and
        // the WAL may then be trimmed past it.
        self.committed_wal_end
            .set(last_offset.map_or(wal.trim_offset(), |o| o + 1));
        info!(
            shard = self.id,
            restored = out.restored,
            already_uploaded = out.already_uploaded,
            skipped = out.skipped,
            "partitions rebuilt from metadata and the WAL"
        );
        // Group state comes from the (refilled) __consumer_offsets logs.
        self.groups.reload();
        self.txns.reload();
        self.space.notify(usize::MAX);
        out
    }

    pub(super) async fn recover_wal(self: Rc<Self>) {
        let Some(wal) = self.wal.borrow().clone() else {
            return;
        };
        loop {
            match wal.reopen().await {
                Ok(records) => {
                    self.wal_epoch.set(self.wal_epoch.get() + 1);
                    self.rebuild_from(&wal, records);
                    self.storage_failed.set(false);
                    info!(shard = self.id, "WAL recovered; accepting writes again");
                    return;
                }
                Err(e) => {
                    error!(shard = self.id, "WAL recovery failed, retrying in 1 s: {e}");
                    glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}
