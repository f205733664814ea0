//! A partition this shard leads: the one door to its data. Handlers and
//! coordinators talk to a `Partition` (through `Shard`), never to caches or
//! stores directly.
//!
//! * `PartitionState` is pure: log start, log end, high watermark, leader
//!   epoch, lifecycle and how far the data is in object storage. It is built
//!   from the metadata image (the objects) and then the WAL tail, never from
//!   WAL replay alone, and unit-tested without I/O.
//! * `Partition` adds the log cache (the batches not yet evicted), its
//!   producer state (`ProducerStateTable`: idempotence, open and aborted
//!   transactions), its own waiters (long-polling fetches of this partition
//!   only) and the read-ahead state of cold reads.
//!
//! Lives on the shard that leads it; keyed by topic id and partition, and
//! routed by node id (`broker_id * 1000 + shard`). Never blocks, never
//! copies a payload except the one stamp copy on append.

use std::rc::Rc;

use bytes::Bytes;
use event_listener::Event;
use storage::batch::{crc_append_batch, parse_header, stamp, Stamp, ValidatedBatch};
use storage::log_cache::{LogCache, ReadResult, StoredBatch};
use storage::object::reader::Readahead;
use uuid::Uuid;

use crate::metadata::objects::PartitionObjects;
use crate::metadata::MetadataImage;
use crate::producer_state::{BatchInfo, ProducerStateTable};

/// Partitions are keyed by topic id, so a topic deleted and created again
/// under the same name never sees the old data.
pub type PartitionKey = (Uuid, i32);

/// Where a partition is in its life on this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Being rebuilt from metadata and the WAL: not served yet.
    Opening,
    /// Served: appends and reads.
    Leading,
    /// Another node leads it now (or this one was fenced): not served.
    Fenced,
    /// Being handed over: reads served, appends refused.
    Closing,
}

/// A fetch or ListOffsets offset outside `[log_start, high_watermark]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offset {offset} is outside [{log_start}, {high_watermark}]")]
pub struct OffsetOutOfRange {
    pub offset: i64,
    pub log_start: i64,
    pub high_watermark: i64,
}

/// What a WAL record did when replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// Added to the log.
    Applied,
    /// Already in object storage (a crash between commit and trim): skipped.
    AlreadyUploaded,
    /// At or below the log end already (replayed twice): skipped.
    Duplicate,
}

/// The offsets of a partition. Pure: every change is a method call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    pub log_start: i64,
    /// The next offset an append gets.
    pub log_end: i64,
    /// Offsets below this are durable and visible to readers.
    pub high_watermark: i64,
    pub leader_epoch: i32,
    pub lifecycle: Lifecycle,
    /// Everything below this is in committed objects.
    pub uploaded_end: i64,
}

impl PartitionState {
    /// The state the metadata describes: the data in objects, nothing else
    /// yet (the WAL tail is replayed on top).
    pub fn from_metadata(objects: Option<&PartitionObjects>, leader_epoch: i32) -> Self {
        let start = objects.map_or(0, |o| o.log_start());
        let end = objects.and_then(|o| o.end()).unwrap_or(0);
        PartitionState {
            log_start: start,
            log_end: end,
            high_watermark: end,
            leader_epoch,
            lifecycle: Lifecycle::Opening,
            uploaded_end: end,
        }
    }

    /// Applies a batch recovered from the WAL (durable, so visible at once).
    pub fn replay(&mut self, base_offset: i64, last_offset: i64) -> Replayed {
        if last_offset < self.uploaded_end {
            return Replayed::AlreadyUploaded;
        }
        if base_offset < self.log_end {
            return Replayed::Duplicate;
        }
        if self.log_end == 0 && self.uploaded_end == 0 {
            // Nothing in objects yet: the log starts where the WAL does
            // (or later, if records were deleted).
            self.log_start = self.log_start.max(base_offset);
        }
        self.log_end = last_offset + 1;
        self.high_watermark = self.log_end;
        Replayed::Applied
    }

    /// Assigns offsets to a batch of `records_delta + 1` offsets; not
    /// visible until `commit`.
    pub fn assign(&mut self, last_offset_delta: i32) -> (i64, i64) {
        let base = self.log_end;
        let last = base + i64::from(last_offset_delta);
        self.log_end = last + 1;
        (base, last)
    }

    /// Makes every offset below `end` visible (it is durable).
    pub fn commit(&mut self, end: i64) {
        let end = end.min(self.log_end);
        if end > self.high_watermark {
            self.high_watermark = end;
        }
    }

    /// Every committed offset is in committed objects.
    pub fn all_uploaded(&self) -> bool {
        self.uploaded_end >= self.high_watermark
    }

    /// Data below `end` is in committed objects.
    pub fn uploaded(&mut self, end: i64) {
        self.uploaded_end = self.uploaded_end.max(end.min(self.high_watermark));
    }

    /// Retention or DeleteRecords moved the log start.
    pub fn advance_log_start(&mut self, offset: i64) {
        self.log_start = self.log_start.max(offset);
    }

    /// Whether `offset` may be read: `[log_start, high_watermark]`.
    pub fn check_read(&self, offset: i64) -> Result<(), OffsetOutOfRange> {
        if offset < self.log_start || offset > self.high_watermark {
            return Err(OffsetOutOfRange {
                offset,
                log_start: self.log_start,
                high_watermark: self.high_watermark,
            });
        }
        Ok(())
    }

    pub fn accepts_writes(&self) -> bool {
        self.lifecycle == Lifecycle::Leading
    }

    pub fn serves_reads(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Leading | Lifecycle::Closing)
    }
}

/// Where an append landed.
#[derive(Debug, Clone)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The batch as stored (offsets stamped); the WAL record's body is the
    /// partition's prefix, then this.
    pub stored: Bytes,
    /// CRC-32C of that record body, combined from the batch's own verified
    /// CRC.
    pub crc: u32,
}

/// How a read is served.
#[derive(Debug)]
pub enum ReadPlan {
    /// From the log cache, now.
    Cached(ReadResult),
    /// From object storage, starting at this offset.
    Cold,
}

pub struct Partition {
    pub key: PartitionKey,
    pub state: PartitionState,
    pub cache: LogCache,
    pub producers: ProducerStateTable,
    /// Notified when the high watermark moves or the partition goes away.
    pub waiters: Rc<Event>,
    pub readahead: Readahead,
}

impl Partition {
    pub fn new(key: PartitionKey, state: PartitionState) -> Partition {
        Partition {
            key,
            state,
            cache: LogCache::new(),
            producers: ProducerStateTable::new(),
            waiters: Rc::new(Event::new()),
            readahead: Readahead::default(),
        }
    }

    /// The producer state the image holds (as of the uploaded end); the
    /// WAL tail is replayed on top.
    pub fn producers_from(image: &MetadataImage, key: PartitionKey) -> ProducerStateTable {
        match image.producers.partition(key.0, key.1) {
            Some(p) => ProducerStateTable::from_snapshot(p.producers.values(), p.aborted.iter()),
            None => ProducerStateTable::new(),
        }
    }

    /// Offsets below this hold no open transaction and are durable: what
    /// `read_committed` consumers may see.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.state.high_watermark;
        self.producers
            .first_unstable_offset()
            .map_or(hw, |first| first.min(hw))
    }

    /// Assigns offsets to `batch`, stamps it (in place when it owns its
    /// bytes), caches it and records it in the producer state (`info`, for
    /// batches with a producer id). Not visible until committed.
    /// `prefix_crc` is the CRC-32C of the WAL record prefix it goes behind.
    pub fn append(
        &mut self,
        batch: ValidatedBatch,
        info: Option<&BatchInfo>,
        prefix_crc: u32,
        log_append_time: Option<i64>,
    ) -> Appended {
        let (base_offset, last_offset) = self.state.assign(batch.header.last_offset_delta);
        if let Some(info) = info {
            self.producers.apply(info, base_offset);
        }
        let stored = stamp(
            batch.bytes,
            Stamp {
                base_offset,
                leader_epoch: self.state.leader_epoch,
                log_append_time,
            },
        );
        let crc = crc_append_batch(prefix_crc, &stored);
        self.cache.push(StoredBatch {
            base_offset,
            last_offset,
            records: batch.header.records_count.max(0) as u32,
            max_timestamp: log_append_time.unwrap_or(batch.header.max_timestamp),
            bytes: stored.clone(),
        });
        Appended {
            base_offset,
            last_offset,
            stored,
            crc,
        }
    }

    /// Puts back a batch recovered from the WAL (and its producer state).
    pub fn replay(&mut self, batch: StoredBatch) -> Replayed {
        let r = self.state.replay(batch.base_offset, batch.last_offset);
        if r == Replayed::Applied {
            if let Ok(h) = parse_header(&batch.bytes) {
                self.producers.apply_stored(&h, &batch.bytes);
            }
            self.cache.push(batch);
        }
        r
    }

    /// Bytes in the cache not yet in object storage (they cannot be
    /// evicted).
    pub fn unuploaded_bytes(&self) -> usize {
        self.cache
            .range(self.state.uploaded_end, i64::MAX)
            .map(|b| b.bytes.len())
            .sum()
    }

    /// Decides how a read at `offset` is served.
    pub fn plan_read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<ReadPlan, OffsetOutOfRange> {
        self.state.check_read(offset)?;
        let cached_from = self.cache.first_offset().unwrap_or(self.state.log_end);
        if offset >= cached_from || offset >= self.state.uploaded_end {
            return Ok(ReadPlan::Cached(self.cache.read(
                offset,
                max_bytes,
                min_one,
                self.state.high_watermark,
            )));
        }
        Ok(ReadPlan::Cold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::ObjectRange;
    use crate::metadata::objects::{ObjectMeta, ObjectsImage};

    fn objects(ranges: &[(i64, i64)]) -> PartitionObjects {
        let mut img = ObjectsImage::default();
        for (i, &(s, e)) in ranges.iter().enumerate() {
            img.apply_committed(ObjectMeta {
                id: i as u64,
                node_id: 0,
                size: 100,
                ranges: vec![ObjectRange {
                    topic_id: Uuid::nil(),
                    partition: 0,
                    start_offset: s,
                    end_offset: e,
                    max_timestamp: 0,
                    bytes: 10,
                }],
            });
        }
        img.partition(Uuid::nil(), 0).cloned().unwrap_or_default()
    }

    #[test]
    fn built_from_objects_then_the_wal_tail() {
        let mut s = PartitionState::from_metadata(Some(&objects(&[(0, 10), (10, 25)])), 3);
        assert_eq!(
            (s.log_start, s.log_end, s.high_watermark, s.uploaded_end),
            (0, 25, 25, 25)
        );
        assert_eq!(s.lifecycle, Lifecycle::Opening);
        // A crash between commit and trim: the WAL still holds 20..24.
        assert_eq!(s.replay(20, 24), Replayed::AlreadyUploaded);
        assert_eq!(s.replay(25, 29), Replayed::Applied);
        assert_eq!(s.replay(25, 29), Replayed::Duplicate);
        assert_eq!((s.log_end, s.high_watermark), (30, 30));
        // New appends continue after it, visible once committed.
        assert_eq!(s.assign(4), (30, 34));
        assert_eq!(s.high_watermark, 30);
        s.commit(35);
        assert_eq!(s.high_watermark, 35);
        s.commit(99);
        assert_eq!(s.high_watermark, 35, "never past the log end");
        s.uploaded(40);
        assert_eq!(s.uploaded_end, 35, "never past what is visible");
        assert!(s.check_read(35).is_ok() && s.check_read(36).is_err());
    }

    #[test]
    fn no_objects_starts_where_the_wal_does() {
        let mut s = PartitionState::from_metadata(None, 0);
        assert_eq!((s.log_start, s.log_end), (0, 0));
        assert_eq!(s.replay(7, 9), Replayed::Applied);
        assert_eq!((s.log_start, s.log_end, s.uploaded_end), (7, 10, 0));
        assert!(s.check_read(6).is_err());
    }

    #[test]
    fn reads_go_cold_below_the_cache() {
        let mut p = Partition::new(
            (Uuid::nil(), 0),
            PartitionState::from_metadata(Some(&objects(&[(0, 10)])), 0),
        );
        p.state.lifecycle = Lifecycle::Leading;
        let batch = StoredBatch {
            base_offset: 10,
            last_offset: 14,
            records: 5,
            max_timestamp: 0,
            bytes: Bytes::from_static(&[0; 64]),
        };
        assert_eq!(p.replay(batch), Replayed::Applied);
        assert!(matches!(p.plan_read(3, 100, true), Ok(ReadPlan::Cold)));
        match p.plan_read(12, 100, true) {
            Ok(ReadPlan::Cached(r)) => assert_eq!(r.batches.len(), 1),
            other => panic!("{other:?}"),
        }
        match p.plan_read(15, 100, true) {
            Ok(ReadPlan::Cached(r)) => assert!(r.batches.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(p.plan_read(16, 100, true).is_err());
        assert_eq!(p.unuploaded_bytes(), 64);
        p.state.uploaded(15);
        assert_eq!(p.unuploaded_bytes(), 0);
    }
}
