//! The log of one partition: record batches in offset order with an index by
//! base offset, the log start offset, the log end offset (next offset to
//! assign) and the high watermark (end of what readers may see).
//!
//! Lives on the shard that owns the partition and is never shared across
//! cores. Appends assign offsets at once; `commit` makes them visible once
//! they are durable, so the WAL slots in underneath without changing callers.
//! It must never block or copy a payload on read.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::batch::{stamp_into, Stamp, ValidatedBatch};

/// One batch as stored: its offsets, its largest timestamp and its bytes
/// (base offset already rewritten).
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub bytes: Bytes,
}

/// Where an append landed.
#[derive(Debug, Clone)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The prefix followed by the batch as stored: the WAL record body.
    pub framed: Bytes,
}

/// A fetch offset outside `[log_start, high_watermark]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offset {offset} is outside [{log_start}, {high_watermark}]")]
pub struct OffsetOutOfRange {
    pub offset: i64,
    pub log_start: i64,
    pub high_watermark: i64,
}

/// What a read returns: whole batches, in order.
#[derive(Debug, Default, Clone)]
pub struct ReadResult {
    pub batches: Vec<Bytes>,
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub struct PartitionLog {
    batches: VecDeque<StoredBatch>,
    log_start: i64,
    log_end: i64,
    high_watermark: i64,
}

impl PartitionLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start
    }

    /// The next offset an append gets.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end
    }

    /// Offsets below this are durable and visible to readers.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// Assigns offsets to `batch` and stores it. Not visible to readers until
    /// `commit` moves the high watermark past it. `prefix` goes in front of
    /// the stored copy in the same allocation (the WAL record header);
    /// `log_append_time` restamps the batch for LogAppendTime topics.
    pub fn append(
        &mut self,
        batch: &ValidatedBatch,
        prefix: &[u8],
        log_append_time: Option<i64>,
    ) -> Appended {
        let base_offset = self.log_end;
        let last_offset = base_offset + batch.header.last_offset_delta as i64;
        let stamp = Stamp {
            base_offset,
            log_append_time,
        };
        let framed = stamp_into(prefix, &batch.bytes, stamp);
        self.push_stored(StoredBatch {
            base_offset,
            last_offset,
            max_timestamp: log_append_time.unwrap_or(batch.header.max_timestamp),
            bytes: framed.slice(prefix.len()..),
        });
        Appended {
            base_offset,
            last_offset,
            framed,
        }
    }

    /// Puts back a batch that already carries its offsets (WAL recovery).
    /// Batches at or below the current end are ignored, so replaying a
    /// record twice cannot duplicate it.
    pub fn restore(&mut self, batch: StoredBatch) {
        if batch.base_offset < self.log_end {
            return;
        }
        if self.batches.is_empty() && self.log_end == 0 {
            self.log_start = batch.base_offset;
        }
        self.push_stored(batch);
        self.high_watermark = self.log_end;
    }

    fn push_stored(&mut self, batch: StoredBatch) {
        self.log_end = batch.last_offset + 1;
        self.batches.push_back(batch);
    }

    /// Makes every offset below `end_offset` visible.
    pub fn commit(&mut self, end_offset: i64) {
        let end = end_offset.min(self.log_end);
        if end > self.high_watermark {
            self.high_watermark = end;
        }
    }

    /// Reads whole batches from the one holding `offset`, up to `max_bytes`.
    /// The first batch is returned even if larger than `max_bytes` when
    /// `min_one` is set, so a consumer always makes progress.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<ReadResult, OffsetOutOfRange> {
        if offset < self.log_start || offset > self.high_watermark {
            return Err(OffsetOutOfRange {
                offset,
                log_start: self.log_start,
                high_watermark: self.high_watermark,
            });
        }
        let mut out = ReadResult::default();
        let first = self.batches.partition_point(|b| b.last_offset < offset);
        for b in self.batches.range(first..) {
            if b.base_offset >= self.high_watermark {
                break;
            }
            let fits = out.bytes + b.bytes.len() <= max_bytes;
            let first_one = min_one && out.batches.is_empty();
            if !(fits || first_one) {
                break;
            }
            out.bytes += b.bytes.len();
            out.batches.push(b.bytes.clone());
        }
        Ok(out)
    }

    /// The first visible batch with a timestamp at or after `timestamp`:
    /// its base offset and largest timestamp. Batch granularity: the client
    /// skips records before the one it wants.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<(i64, i64)> {
        self.visible()
            .find(|b| b.max_timestamp >= timestamp)
            .map(|b| (b.base_offset.max(self.log_start), b.max_timestamp))
    }

    /// The largest timestamp in the visible log and the last offset of the
    /// batch that holds it.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.visible()
            .fold(None, |best: Option<(i64, i64)>, b| match best {
                Some((ts, _)) if ts >= b.max_timestamp => best,
                _ => Some((b.max_timestamp, b.last_offset)),
            })
    }

    fn visible(&self) -> impl Iterator<Item = &StoredBatch> {
        let hw = self.high_watermark;
        self.batches.iter().take_while(move |b| b.base_offset < hw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{tests::make_batch, validate_batches};

    fn batch(n: i32, ts: i64) -> ValidatedBatch {
        validate_batches(&make_batch(n, ts, b"v"), 1 << 20)
            .unwrap()
            .remove(0)
    }

    impl PartitionLog {
        fn append_plain(&mut self, b: &ValidatedBatch) -> Appended {
            self.append(b, &[], None)
        }
    }

    #[test]
    fn offsets_are_assigned_in_order() {
        let mut log = PartitionLog::new();
        let a = log.append_plain(&batch(3, 0));
        let b = log.append_plain(&batch(2, 0));
        assert_eq!((a.base_offset, a.last_offset), (0, 2));
        assert_eq!((b.base_offset, b.last_offset), (3, 4));
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.high_watermark(), 0);
        let parsed = validate_batches(&b.framed, 1 << 20).unwrap();
        assert_eq!(parsed[0].header.base_offset, 3);
    }

    #[test]
    fn reads_stop_at_high_watermark() {
        let mut log = PartitionLog::new();
        log.append_plain(&batch(3, 0));
        log.append_plain(&batch(2, 0));
        assert_eq!(log.read(0, 1 << 20, true).unwrap().batches.len(), 0);
        log.commit(3);
        assert_eq!(log.read(0, 1 << 20, true).unwrap().batches.len(), 1);
        log.commit(5);
        assert_eq!(log.read(0, 1 << 20, true).unwrap().batches.len(), 2);
        assert!(log.read(6, 1 << 20, true).is_err());
        assert_eq!(log.read(5, 1 << 20, true).unwrap().batches.len(), 0);
    }

    #[test]
    fn read_inside_a_batch_returns_whole_batch() {
        let mut log = PartitionLog::new();
        log.append_plain(&batch(3, 0));
        log.append_plain(&batch(3, 0));
        log.commit(6);
        let r = log.read(4, 1 << 20, true).unwrap();
        assert_eq!(r.batches.len(), 1);
        assert_eq!(
            validate_batches(&r.batches[0], 1 << 20).unwrap()[0]
                .header
                .base_offset,
            3
        );
    }

    #[test]
    fn max_bytes_limits_but_first_batch_always_comes() {
        let mut log = PartitionLog::new();
        log.append_plain(&batch(1, 0));
        log.append_plain(&batch(1, 0));
        log.commit(2);
        let one = log.read(0, 1, true).unwrap();
        assert_eq!(one.batches.len(), 1);
        assert_eq!(log.read(0, 1, false).unwrap().batches.len(), 0);
    }

    #[test]
    fn timestamps() {
        let mut log = PartitionLog::new();
        log.append_plain(&batch(2, 100)); // ts 100..101
        log.append_plain(&batch(2, 50)); // ts 50..51
        log.append_plain(&batch(2, 200)); // ts 200..201
        log.commit(6);
        assert_eq!(log.offset_for_timestamp(101), Some((0, 101)));
        assert_eq!(log.offset_for_timestamp(150), Some((4, 201)));
        assert_eq!(log.offset_for_timestamp(300), None);
        assert_eq!(log.max_timestamp(), Some((201, 5)));
    }

    #[test]
    fn restore_ignores_replayed_batches() {
        let mut log = PartitionLog::new();
        let stored = |base, last| StoredBatch {
            base_offset: base,
            last_offset: last,
            max_timestamp: 0,
            bytes: Bytes::new(),
        };
        log.restore(stored(10, 12));
        log.restore(stored(10, 12));
        log.restore(stored(13, 13));
        assert_eq!(log.log_start_offset(), 10);
        assert_eq!(log.log_end_offset(), 14);
        assert_eq!(log.high_watermark(), 14);
    }
}
