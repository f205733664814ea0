//! The log cache of one partition: its newest record batches in memory, in
//! offset order, so that tail reads and uploads never touch a disk.
//!
//! Lives on the shard that leads the partition, inside its `Partition`.
//! Holds `Bytes` shared with the WAL record they were written as, never a
//! copy. What it may drop is the owner's decision (only data already in
//! object storage); it never decides on its own. It must never block or copy
//! a payload on read.

use std::collections::VecDeque;

use bytes::Bytes;

/// One batch as stored: its offsets, record count, largest timestamp and
/// bytes (base offset already stamped).
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub records: u32,
    pub max_timestamp: i64,
    pub bytes: Bytes,
}

/// What a read returns: whole batches, in order.
#[derive(Debug, Default, Clone)]
pub struct ReadResult {
    pub batches: Vec<Bytes>,
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub struct LogCache {
    batches: VecDeque<StoredBatch>,
    bytes: usize,
}

impl LogCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch after the last one. A batch that does not come after
    /// the last one is refused (returns false), so a replay cannot reorder.
    pub fn push(&mut self, batch: StoredBatch) -> bool {
        if self
            .batches
            .back()
            .is_some_and(|b| batch.base_offset <= b.last_offset)
        {
            return false;
        }
        self.bytes += batch.bytes.len();
        self.batches.push_back(batch);
        true
    }

    /// Base offset of the first cached batch.
    pub fn first_offset(&self) -> Option<i64> {
        self.batches.front().map(|b| b.base_offset)
    }

    /// Offset after the last cached batch.
    pub fn end_offset(&self) -> Option<i64> {
        self.batches.back().map(|b| b.last_offset + 1)
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether a read at `offset` can be served here (the batch holding it,
    /// or the next one, is cached).
    pub fn covers(&self, offset: i64) -> bool {
        self.first_offset().is_some_and(|f| offset >= f)
    }

    /// Drops every batch that ends before `offset`; returns the bytes freed.
    pub fn evict_before(&mut self, offset: i64) -> usize {
        let mut freed = 0;
        while let Some(b) = self.batches.front() {
            if b.last_offset >= offset {
                break;
            }
            freed += b.bytes.len();
            self.batches.pop_front();
        }
        self.bytes -= freed;
        freed
    }

    /// Drops everything; returns the bytes freed.
    pub fn clear(&mut self) -> usize {
        let freed = self.bytes;
        self.batches.clear();
        self.bytes = 0;
        freed
    }

    /// Batches wholly inside `[from, to)`, in order.
    pub fn range(&self, from: i64, to: i64) -> impl Iterator<Item = &StoredBatch> {
        let first = self.batches.partition_point(|b| b.base_offset < from);
        self.batches
            .range(first..)
            .take_while(move |b| b.last_offset < to)
    }

    /// Whole batches from the one holding `offset` up to `max_bytes`, none
    /// at or past `visible_end` (the high watermark). The first batch comes
    /// even if larger than `max_bytes` when `min_one` is set, so a consumer
    /// always makes progress.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        visible_end: i64,
    ) -> ReadResult {
        let mut out = ReadResult::default();
        let first = self.batches.partition_point(|b| b.last_offset < offset);
        for b in self.batches.range(first..) {
            if b.base_offset >= visible_end {
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
        out
    }

    /// The first batch below `visible_end` holding a record with a timestamp
    /// at or after `timestamp`.
    pub fn batch_at_timestamp(&self, timestamp: i64, visible_end: i64) -> Option<&StoredBatch> {
        self.visible(visible_end)
            .find(|b| b.max_timestamp >= timestamp)
    }

    /// The largest timestamp below `visible_end` and the last offset of the
    /// batch that holds it.
    pub fn max_timestamp(&self, visible_end: i64) -> Option<(i64, i64)> {
        self.visible(visible_end)
            .fold(None, |best: Option<(i64, i64)>, b| match best {
                Some((ts, _)) if ts >= b.max_timestamp => best,
                _ => Some((b.max_timestamp, b.last_offset)),
            })
    }

    fn visible(&self, visible_end: i64) -> impl Iterator<Item = &StoredBatch> {
        self.batches
            .iter()
            .take_while(move |b| b.base_offset < visible_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(base: i64, n: i64, ts: i64) -> StoredBatch {
        StoredBatch {
            base_offset: base,
            last_offset: base + n - 1,
            records: n as u32,
            max_timestamp: ts,
            bytes: Bytes::from(vec![0u8; 10 * n as usize]),
        }
    }

    fn offsets(c: &LogCache, r: &ReadResult) -> usize {
        let _ = c;
        r.batches.len()
    }

    #[test]
    fn push_read_evict() {
        let mut c = LogCache::new();
        assert!(c.push(b(0, 3, 100)));
        assert!(c.push(b(3, 2, 50)));
        assert!(!c.push(b(4, 1, 0)), "overlap refused");
        assert!(c.push(b(5, 2, 200)));
        assert_eq!(
            (c.first_offset(), c.end_offset(), c.bytes()),
            (Some(0), Some(7), 70)
        );
        // Inside a batch: the whole batch; stops at the visible end.
        let r = c.read(4, 1 << 20, true, 5);
        assert_eq!(offsets(&c, &r), 1);
        assert_eq!(c.read(0, 1, false, 7).batches.len(), 0);
        assert_eq!(c.read(0, 1, true, 7).batches.len(), 1);
        assert_eq!(c.read(7, 100, true, 7).batches.len(), 0);
        assert_eq!(c.range(3, 7).count(), 2);
        assert_eq!(c.range(3, 6).count(), 1);
        assert_eq!(c.batch_at_timestamp(60, 7).unwrap().base_offset, 0);
        assert_eq!(c.batch_at_timestamp(150, 5).map(|b| b.base_offset), None);
        assert_eq!(c.max_timestamp(7), Some((200, 6)));
        assert_eq!(c.evict_before(4), 30);
        assert_eq!(c.first_offset(), Some(3));
        assert!(c.covers(3) && !c.covers(2));
        assert_eq!(c.clear(), 40);
        assert!(c.is_empty());
    }
}
