//! The object-storage part of the metadata image: which objects are
//! committed, which offset ranges of which partition each holds, each
//! partition's log start, which objects are destroyed (no longer
//! referenced, deleted from the store after a grace period), and which
//! object ids have been handed out.
//!
//! Pure logic, applied by the controller and read by every shard through its
//! `Arc<MetadataImage>`. Persistent maps (`imbl`) keep an image clone cheap
//! however many objects there are: the controller clones the image on every
//! commit and uploads commit often.
//!
//! An object's `ranges` are its *live* ranges: retention, DeleteRecords,
//! deleted topics and compaction remove ranges; an object left with none is
//! destroyed (record `ObjectsDestroyed`, planned by `plan`), and purged from
//! the image once the store no longer has it.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use super::CommandError;
use crate::controller::records::{ObjectRange, Record};

/// A committed object (stream-set or stream object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub id: u64,
    /// The node (shard) that uploaded it.
    pub node_id: i32,
    pub size: u64,
    /// The partition ranges that still live in it.
    pub ranges: Vec<ObjectRange>,
}

/// One partition's range inside one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeRef {
    pub object_id: u64,
    pub object_size: u64,
    pub start_offset: i64,
    pub end_offset: i64,
    pub max_timestamp: i64,
    pub bytes: u64,
}

/// The objects holding one partition's data, by start offset, and its
/// offsets as the metadata knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionObjects {
    pub ranges: imbl::OrdMap<i64, RangeRef>,
    /// Set by retention and DeleteRecords: nothing below it is readable.
    pub log_start: i64,
    /// Offset after the last range ever committed: everything below it was
    /// uploaded (never decreases, also when ranges are dropped).
    pub uploaded_end: i64,
    /// Log compaction cleaned the partition up to here (0: never).
    pub cleaned_end: i64,
}

impl PartitionObjects {
    /// First readable offset.
    pub fn log_start(&self) -> i64 {
        match self.ranges.get_min() {
            Some((s, _)) => (*s).max(self.log_start),
            None => self.log_start.max(self.uploaded_end),
        }
    }

    /// First offset held in objects.
    pub fn start(&self) -> Option<i64> {
        self.ranges.get_min().map(|(s, _)| *s)
    }

    /// Offset after the last one uploaded, if anything was.
    pub fn end(&self) -> Option<i64> {
        (self.uploaded_end > 0 || !self.ranges.is_empty()).then_some(self.uploaded_end)
    }

    /// The range holding `offset`, or the first one after it (a consumer
    /// below the first range, or in a gap, moves forward).
    pub fn covering(&self, offset: i64) -> Option<RangeRef> {
        if let Some((_, r)) = self.ranges.get_prev(&offset) {
            if r.end_offset > offset {
                return Some(*r);
            }
        }
        self.ranges.get_next(&offset).map(|(_, r)| *r)
    }

    /// Ranges in offset order.
    pub fn iter(&self) -> impl Iterator<Item = &RangeRef> {
        self.ranges.values()
    }

    pub fn bytes(&self) -> u64 {
        self.ranges.values().map(|r| r.bytes).sum()
    }
}

/// Everything the metadata knows about objects.
#[derive(Debug, Clone, Default)]
pub struct ObjectsImage {
    pub objects: imbl::OrdMap<u64, Arc<ObjectMeta>>,
    pub partitions: imbl::HashMap<(Uuid, i32), PartitionObjects>,
    /// Objects no longer referenced, with when they were destroyed; deleted
    /// from the store after a grace period, then purged from here.
    pub destroyed: imbl::OrdMap<u64, i64>,
    /// The first object id not yet reserved by anyone.
    pub next_object_id: u64,
    /// The latest block of ids reserved by each node: `(first, count)`.
    pub reservations: BTreeMap<i32, (u64, u64)>,
}

impl ObjectsImage {
    pub fn partition(&self, topic: Uuid, partition: i32) -> Option<&PartitionObjects> {
        self.partitions.get(&(topic, partition))
    }

    pub fn apply_reserved(&mut self, node_id: i32, first: u64, count: u64) {
        self.next_object_id = self.next_object_id.max(first.saturating_add(count));
        if node_id >= 0 {
            self.reservations.insert(node_id, (first, count));
        }
    }

    fn add_range(&mut self, id: u64, size: u64, r: &ObjectRange) {
        let part = self
            .partitions
            .entry((r.topic_id, r.partition))
            .or_default();
        part.uploaded_end = part.uploaded_end.max(r.end_offset);
        part.ranges.insert(
            r.start_offset,
            RangeRef {
                object_id: id,
                object_size: size,
                start_offset: r.start_offset,
                end_offset: r.end_offset,
                max_timestamp: r.max_timestamp,
                bytes: r.bytes,
            },
        );
    }

    /// Takes one range out of its object's live list.
    fn unlink(&mut self, object_id: u64, topic: Uuid, partition: i32, start: i64) {
        if let Some(meta) = self.objects.get_mut(&object_id) {
            Arc::make_mut(meta).ranges.retain(|r| {
                !(r.topic_id == topic && r.partition == partition && r.start_offset == start)
            });
        }
    }

    /// Records an object; ranges of partitions the image no longer has were
    /// dropped by `check_commit` before the record was written.
    pub fn apply_committed(&mut self, mut meta: ObjectMeta) {
        if self.objects.contains_key(&meta.id) || self.destroyed.contains_key(&meta.id) {
            warn!(object = meta.id, "object committed twice: ignored");
            return;
        }
        let mut live = Vec::with_capacity(meta.ranges.len());
        for r in &meta.ranges {
            let part = self
                .partitions
                .entry((r.topic_id, r.partition))
                .or_default();
            if r.end_offset <= part.log_start {
                // Deleted before it was uploaded: only the offset moves.
                part.uploaded_end = part.uploaded_end.max(r.end_offset);
                continue;
            }
            self.add_range(meta.id, meta.size, r);
            live.push(*r);
        }
        meta.ranges = live;
        // Saturating: an id of u64::MAX from a corrupt log must not panic
        // (found by fuzz/fuzz_targets/metadata.rs).
        self.next_object_id = self.next_object_id.max(meta.id.saturating_add(1));
        self.objects.insert(meta.id, Arc::new(meta));
    }

    /// A stream object takes over `replaces` (start offsets of ranges of the
    /// same partition) with one range.
    pub fn apply_stream_object(&mut self, meta: ObjectMeta, replaces: &[i64]) {
        let Some(range) = meta.ranges.first().copied() else {
            return;
        };
        let key = (range.topic_id, range.partition);
        let old: Vec<RangeRef> = match self.partitions.get_mut(&key) {
            Some(part) => replaces
                .iter()
                .filter_map(|s| part.ranges.remove(s))
                .collect(),
            None => Vec::new(),
        };
        for r in old {
            self.unlink(r.object_id, key.0, key.1, r.start_offset);
        }
        self.apply_committed(meta);
    }

    /// Moves a partition's log start up; ranges wholly below it go.
    pub fn apply_log_start(&mut self, topic: Uuid, partition: i32, offset: i64) {
        let part = self.partitions.entry((topic, partition)).or_default();
        if offset <= part.log_start {
            return;
        }
        part.log_start = offset;
        let below: Vec<RangeRef> = part
            .ranges
            .values()
            .take_while(|r| r.end_offset <= offset)
            .copied()
            .collect();
        for r in &below {
            part.ranges.remove(&r.start_offset);
        }
        for r in below {
            self.unlink(r.object_id, topic, partition, r.start_offset);
        }
    }

    /// A deleted topic's partitions no longer reference objects; objects left
    /// with no range are destroyed by the plan that deleted the topic.
    pub fn drop_topic(&mut self, topic: Uuid) {
        let keys: Vec<(Uuid, i32)> = self
            .partitions
            .keys()
            .filter(|(t, _)| *t == topic)
            .copied()
            .collect();
        for key in keys {
            if let Some(part) = self.partitions.remove(&key) {
                for r in part.ranges.values() {
                    self.unlink(r.object_id, key.0, key.1, r.start_offset);
                }
            }
        }
    }

    pub fn apply_destroyed(&mut self, ids: &[u64], at_ms: i64) {
        for id in ids {
            if self.objects.remove(id).is_some() {
                self.destroyed.insert(*id, at_ms);
            }
        }
    }

    pub fn apply_purged(&mut self, ids: &[u64]) {
        for id in ids {
            self.destroyed.remove(id);
        }
    }

    /// Committed objects no range references any more.
    pub fn unreferenced(&self) -> Vec<u64> {
        self.objects
            .values()
            .filter(|o| o.ranges.is_empty())
            .map(|o| o.id)
            .collect()
    }

    /// Checks an object commit against the image. Returns the ranges to
    /// record: those of partitions that no longer exist, or wholly below
    /// their log start, are dropped.
    pub fn check_commit(
        &self,
        object_id: u64,
        ranges: &[ObjectRange],
        partition_exists: impl Fn(Uuid, i32) -> bool,
    ) -> Result<Vec<ObjectRange>, CommandError> {
        let bad = |m: String| Err(CommandError::new(ResponseError::InvalidRequest, m));
        if object_id >= self.next_object_id {
            return bad(format!("object id {object_id} was never reserved"));
        }
        if self.objects.contains_key(&object_id) || self.destroyed.contains_key(&object_id) {
            return bad(format!("object {object_id} is already committed"));
        }
        let mut kept = Vec::with_capacity(ranges.len());
        for r in ranges {
            if !partition_exists(r.topic_id, r.partition) {
                continue;
            }
            if r.end_offset <= r.start_offset {
                return bad(format!(
                    "empty range {}..{} for {}-{}",
                    r.start_offset, r.end_offset, r.topic_id, r.partition
                ));
            }
            let part = self.partition(r.topic_id, r.partition);
            match part.and_then(|p| p.end()) {
                Some(end) if r.start_offset < end => {
                    return bad(format!(
                        "range {}..{} of {}-{} overlaps data already in objects (up to {end})",
                        r.start_offset, r.end_offset, r.topic_id, r.partition
                    ));
                }
                Some(end) if r.start_offset > end => warn!(
                    topic = %r.topic_id, partition = r.partition, end, start = r.start_offset,
                    "object range leaves a gap after the data already in objects"
                ),
                _ => {}
            }
            kept.push(*r);
        }
        Ok(kept)
    }

    /// Checks that a stream object replaces exactly the live ranges it names,
    /// all of one partition, covering its range.
    pub fn check_stream_object(
        &self,
        object_id: u64,
        range: &ObjectRange,
        replaces: &[i64],
    ) -> Result<(), CommandError> {
        let bad = |m: String| Err(CommandError::new(ResponseError::InvalidRequest, m));
        if object_id >= self.next_object_id
            || self.objects.contains_key(&object_id)
            || self.destroyed.contains_key(&object_id)
        {
            return bad(format!("object id {object_id} is not free to commit"));
        }
        let Some(part) = self.partition(range.topic_id, range.partition) else {
            return bad("the partition has no objects any more".into());
        };
        let mut end = range.start_offset;
        for s in replaces {
            let Some(r) = part.ranges.get(s) else {
                return bad(format!(
                    "range at {s} is no longer live (retention or another compaction)"
                ));
            };
            if r.start_offset != end {
                return bad(format!("replaced ranges are not contiguous at {s}"));
            }
            end = r.end_offset;
        }
        if replaces.is_empty() || end != range.end_offset {
            return bad("the stream object does not cover exactly the ranges it replaces".into());
        }
        Ok(())
    }

    /// The records that rebuild this part of the image.
    pub fn to_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if self.next_object_id > 0 {
            out.push(Record::ObjectIdsReserved {
                node_id: -1,
                first: 0,
                count: self.next_object_id,
            });
        }
        for o in self.objects.values() {
            out.push(Record::ObjectCommitted {
                object_id: o.id,
                node_id: o.node_id,
                size: o.size,
                ranges: o.ranges.clone(),
            });
        }
        for ((topic, p), part) in &self.partitions {
            if part.log_start > 0 {
                out.push(Record::LogStartAdvanced {
                    topic_id: *topic,
                    partition: *p,
                    offset: part.log_start,
                });
            }
            // Ranges dropped by retention leave no trace in any object: the
            // uploaded offset is restored by an empty commit.
            if part.uploaded_end > part.ranges.get_max().map_or(0, |(_, r)| r.end_offset) {
                out.push(Record::UploadedEnd {
                    topic_id: *topic,
                    partition: *p,
                    offset: part.uploaded_end,
                });
            }
            if part.cleaned_end > 0 {
                out.push(Record::PartitionCleaned {
                    topic_id: *topic,
                    partition: *p,
                    offset: part.cleaned_end,
                });
            }
        }
        if !self.destroyed.is_empty() {
            let mut by_time: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
            for (id, at) in &self.destroyed {
                by_time.entry(*at).or_default().push(*id);
            }
            for (at_ms, ids) in by_time {
                // A destroyed object is first committed (empty), then destroyed.
                for id in &ids {
                    out.push(Record::ObjectCommitted {
                        object_id: *id,
                        node_id: -1,
                        size: 0,
                        ranges: Vec::new(),
                    });
                }
                out.push(Record::ObjectsDestroyed { ids, at_ms });
            }
        }
        out
    }

    /// Sets a partition's uploaded offset (snapshots only).
    pub fn apply_uploaded_end(&mut self, topic: Uuid, partition: i32, offset: i64) {
        let part = self.partitions.entry((topic, partition)).or_default();
        part.uploaded_end = part.uploaded_end.max(offset);
    }

    pub fn apply_cleaned(&mut self, topic: Uuid, partition: i32, offset: i64) {
        let part = self.partitions.entry((topic, partition)).or_default();
        part.cleaned_end = part.cleaned_end.max(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(t: u128, p: i32, start: i64, end: i64) -> ObjectRange {
        ObjectRange {
            topic_id: Uuid::from_u128(t),
            partition: p,
            start_offset: start,
            end_offset: end,
            max_timestamp: end * 10,
            bytes: (end - start) as u64 * 100,
        }
    }

    fn meta(id: u64, ranges: Vec<ObjectRange>) -> ObjectMeta {
        ObjectMeta {
            id,
            node_id: 0,
            size: 1000 + id,
            ranges,
        }
    }

    fn rebuild(img: &ObjectsImage) -> ObjectsImage {
        let mut out = ObjectsImage::default();
        for r in img.to_records() {
            apply(&mut out, r);
        }
        out
    }

    fn apply(img: &mut ObjectsImage, r: Record) {
        match r {
            Record::ObjectIdsReserved {
                node_id,
                first,
                count,
            } => img.apply_reserved(node_id, first, count),
            Record::ObjectCommitted {
                object_id,
                node_id,
                size,
                ranges,
            } => img.apply_committed(ObjectMeta {
                id: object_id,
                node_id,
                size,
                ranges,
            }),
            Record::LogStartAdvanced {
                topic_id,
                partition,
                offset,
            } => img.apply_log_start(topic_id, partition, offset),
            Record::UploadedEnd {
                topic_id,
                partition,
                offset,
            } => img.apply_uploaded_end(topic_id, partition, offset),
            Record::PartitionCleaned {
                topic_id,
                partition,
                offset,
            } => img.apply_cleaned(topic_id, partition, offset),
            Record::ObjectsDestroyed { ids, at_ms } => img.apply_destroyed(&ids, at_ms),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_largest_object_id_does_not_overflow() {
        // Found by fuzz/fuzz_targets/metadata.rs: a committed object with id
        // u64::MAX (a corrupt log) overflowed next_object_id.
        let mut img = ObjectsImage::default();
        img.apply_committed(ObjectMeta {
            id: u64::MAX,
            node_id: 0,
            size: 1,
            ranges: vec![],
        });
        assert_eq!(img.next_object_id, u64::MAX);
    }

    #[test]
    fn commits_build_per_partition_ranges() {
        let mut img = ObjectsImage::default();
        img.apply_reserved(0, 0, 4);
        assert_eq!(img.next_object_id, 4);
        assert_eq!(img.reservations[&0], (0, 4));
        let exists = |_, _| true;
        let r1 = vec![range(1, 0, 0, 10), range(1, 1, 0, 5)];
        assert_eq!(img.check_commit(0, &r1, exists).unwrap(), r1);
        img.apply_committed(meta(0, r1));
        let r2 = vec![range(1, 0, 10, 30)];
        img.apply_committed(meta(1, img.check_commit(1, &r2, exists).unwrap()));
        let p0 = img.partition(Uuid::from_u128(1), 0).unwrap();
        assert_eq!(
            (p0.start(), p0.end(), p0.log_start()),
            (Some(0), Some(30), 0)
        );
        assert_eq!(p0.covering(9).unwrap().object_id, 0);
        assert_eq!(p0.covering(10).unwrap().object_id, 1);
        assert_eq!(p0.covering(-5).unwrap().object_id, 0, "below: the first");
        assert!(p0.covering(30).is_none());
        // Overlap, reuse of an id and unreserved ids are refused.
        assert!(img.check_commit(2, &[range(1, 0, 20, 40)], exists).is_err());
        assert!(img.check_commit(1, &[range(1, 0, 30, 40)], exists).is_err());
        assert!(img.check_commit(9, &[range(1, 0, 30, 40)], exists).is_err());
        // Ranges of deleted partitions are dropped, the rest kept.
        let kept = img
            .check_commit(2, &[range(1, 0, 30, 40), range(2, 0, 0, 1)], |t, _| {
                t == Uuid::from_u128(1)
            })
            .unwrap();
        assert_eq!(kept, vec![range(1, 0, 30, 40)]);
    }

    #[test]
    fn log_start_drops_whole_ranges_and_unreferenced_objects_show() {
        let mut img = ObjectsImage::default();
        img.apply_reserved(0, 0, 10);
        img.apply_committed(meta(0, vec![range(1, 0, 0, 10), range(2, 0, 0, 5)]));
        img.apply_committed(meta(1, vec![range(1, 0, 10, 20)]));
        let t1 = Uuid::from_u128(1);
        img.apply_log_start(t1, 0, 15);
        let p = img.partition(t1, 0).unwrap();
        assert_eq!((p.log_start(), p.end(), p.ranges.len()), (15, Some(20), 1));
        assert!(
            img.unreferenced().is_empty(),
            "object 0 still holds topic 2"
        );
        img.drop_topic(Uuid::from_u128(2));
        assert_eq!(img.unreferenced(), vec![0]);
        img.apply_destroyed(&[0], 777);
        assert!(!img.objects.contains_key(&0));
        assert_eq!(img.destroyed.get(&0), Some(&777));
        assert!(
            img.check_commit(0, &[], |_, _| true).is_err(),
            "destroyed ids stay taken"
        );
        // Everything dropped: the log start and end survive.
        img.apply_log_start(t1, 0, 20);
        let p = img.partition(t1, 0).unwrap();
        assert_eq!((p.log_start(), p.end(), p.ranges.len()), (20, Some(20), 0));
        assert_eq!(img.unreferenced(), vec![1]);
        // A snapshot rebuilds all of it.
        let again = rebuild(&img);
        assert_eq!(again.partitions, img.partitions);
        assert_eq!(again.objects, img.objects);
        assert_eq!(again.destroyed, img.destroyed);
        img.apply_purged(&[0]);
        assert!(img.destroyed.is_empty());
    }

    #[test]
    fn stream_objects_take_over_ranges() {
        let mut img = ObjectsImage::default();
        img.apply_reserved(0, 0, 10);
        img.apply_committed(meta(0, vec![range(1, 0, 0, 10), range(2, 0, 0, 5)]));
        img.apply_committed(meta(1, vec![range(1, 0, 10, 20)]));
        let merged = range(1, 0, 0, 20);
        assert!(img.check_stream_object(5, &merged, &[0, 10]).is_ok());
        assert!(
            img.check_stream_object(5, &merged, &[0]).is_err(),
            "must cover"
        );
        assert!(img
            .check_stream_object(5, &range(1, 0, 0, 10), &[10])
            .is_err());
        assert!(
            img.check_stream_object(1, &merged, &[0, 10]).is_err(),
            "id taken"
        );
        img.apply_stream_object(meta(5, vec![merged]), &[0, 10]);
        let p = img.partition(Uuid::from_u128(1), 0).unwrap();
        assert_eq!(p.ranges.len(), 1);
        assert_eq!(p.covering(3).unwrap().object_id, 5);
        assert_eq!(img.unreferenced(), vec![1], "object 0 still holds topic 2");
        assert_eq!(img.objects[&0].ranges, vec![range(2, 0, 0, 5)]);
        let again = rebuild(&img);
        assert_eq!(again.partitions, img.partitions);
    }

    #[test]
    fn clones_share_and_snapshots_rebuild() {
        let mut img = ObjectsImage::default();
        img.apply_reserved(3, 0, 100);
        for id in 0..50 {
            img.apply_committed(meta(
                id,
                vec![range(1, 0, id as i64 * 10, id as i64 * 10 + 10)],
            ));
        }
        let again = rebuild(&img);
        assert_eq!(again.objects, img.objects);
        assert_eq!(again.partitions, img.partitions);
        assert_eq!(again.next_object_id, 100);
        img.drop_topic(Uuid::from_u128(1));
        assert!(img.partitions.is_empty());
        assert_eq!(img.unreferenced().len(), 50);
    }
}
