//! The object-storage part of the metadata image: which objects are
//! committed, which offset ranges of which partition each holds, and which
//! object ids have been handed out.
//!
//! Pure logic, applied by the controller and read by every shard through its
//! `Arc<MetadataImage>`. Persistent maps (`imbl`) keep an image clone cheap
//! however many objects there are: the controller clones the image on every
//! commit and uploads commit often.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use super::CommandError;
use crate::controller::records::{ObjectRange, Record};

/// A committed stream-set object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub id: u64,
    /// The node (shard) that uploaded it.
    pub node_id: i32,
    pub size: u64,
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

/// The objects holding one partition's data, by start offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionObjects {
    pub ranges: imbl::OrdMap<i64, RangeRef>,
}

impl PartitionObjects {
    /// First offset held in objects.
    pub fn start(&self) -> Option<i64> {
        self.ranges.get_min().map(|(s, _)| *s)
    }

    /// Offset after the last one held in objects: everything below it has
    /// been uploaded.
    pub fn end(&self) -> Option<i64> {
        self.ranges.get_max().map(|(_, r)| r.end_offset)
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

    /// Records an object; ranges of partitions the image no longer has were
    /// dropped by `check_commit` before the record was written.
    pub fn apply_committed(&mut self, meta: ObjectMeta) {
        if self.objects.contains_key(&meta.id) {
            warn!(object = meta.id, "object committed twice: ignored");
            return;
        }
        for r in &meta.ranges {
            let part = self
                .partitions
                .entry((r.topic_id, r.partition))
                .or_default();
            part.ranges.insert(
                r.start_offset,
                RangeRef {
                    object_id: meta.id,
                    object_size: meta.size,
                    start_offset: r.start_offset,
                    end_offset: r.end_offset,
                    max_timestamp: r.max_timestamp,
                    bytes: r.bytes,
                },
            );
        }
        self.next_object_id = self.next_object_id.max(meta.id + 1);
        self.objects.insert(meta.id, Arc::new(meta));
    }

    /// A deleted topic's partitions no longer reference objects (the
    /// objects themselves stay until garbage collection).
    pub fn drop_topic(&mut self, topic: Uuid) {
        self.partitions.retain(|(t, _), _| *t != topic);
    }

    /// Checks an object commit against the image. Returns the ranges to
    /// record: those of partitions that no longer exist are dropped.
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
        if self.objects.contains_key(&object_id) {
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
            let end = self
                .partition(r.topic_id, r.partition)
                .and_then(|p| p.end());
            match end {
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
        out
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
        assert_eq!((p0.start(), p0.end()), (Some(0), Some(30)));
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
    fn records_rebuild_and_clones_share() {
        let mut img = ObjectsImage::default();
        img.apply_reserved(3, 0, 100);
        for id in 0..50 {
            img.apply_committed(meta(
                id,
                vec![range(1, 0, id as i64 * 10, id as i64 * 10 + 10)],
            ));
        }
        img.drop_topic(Uuid::from_u128(7));
        let mut rebuilt = ObjectsImage::default();
        for r in img.to_records() {
            match r {
                Record::ObjectIdsReserved {
                    node_id,
                    first,
                    count,
                } => rebuilt.apply_reserved(node_id, first, count),
                Record::ObjectCommitted {
                    object_id,
                    node_id,
                    size,
                    ranges,
                } => rebuilt.apply_committed(ObjectMeta {
                    id: object_id,
                    node_id,
                    size,
                    ranges,
                }),
                other => panic!("{other}"),
            }
        }
        assert_eq!(rebuilt.objects, img.objects);
        assert_eq!(rebuilt.partitions, img.partitions);
        assert_eq!(rebuilt.next_object_id, 100);
        img.drop_topic(Uuid::from_u128(1));
        assert!(img.partitions.is_empty());
        assert_eq!(img.objects.len(), 50, "objects stay until collected");
    }
}
