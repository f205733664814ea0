//! Log compaction (`cleanup.policy=compact`): keeps the latest record of
//! each key in the partitions of compacted topics, as Kafka's log cleaner
//! does, over object storage.
//!
//! A pass over one partition:
//! 1. `plan_clean` (pure) picks the dirty ranges: those above the offset
//!    cleaned so far (`cleaned_end` in metadata) whose newest record is
//!    older than `min.compaction.lag.ms`, if their share of the bytes
//!    reaches `min.cleanable.dirty.ratio` or the oldest of them is older
//!    than `max.compaction.lag.ms`;
//! 2. the dirty ranges are read into an `OffsetMap` (key → latest offset),
//!    bounded by `log_cleaner_dedupe_buffer_bytes`;
//! 3. every range from the log start to the end of what was mapped is
//!    rewritten: a record stays unless a later record of its key exists,
//!    and tombstones older than `delete.retention.ms` go. Batches keep
//!    their offsets (`storage::records::rebuild`), so the partition has
//!    gaps, exactly as in Kafka. Control batches and keyless records stay.
//!    Records of aborted transactions go, and never count as the latest
//!    record of their key (so an aborted write cannot shadow a committed
//!    one); nothing at or above the first open transaction is cleaned.
//! 4. The new stream objects replace the old ranges, and `cleaned_end`
//!    moves, in one metadata submission.
//!
//! Correctness never depends on the map being complete: a record is
//! dropped only when the map names a later offset of its key, which is a
//! record that exists. A crash between writing objects and committing
//! leaves orphans, which the object GC deletes.
//!
//! Runs in the object-compaction task (low-share queue) of the shard that
//! leads the partition, within compaction's bandwidth budget. Never holds
//! more than one input range, one output object and the map in memory.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use storage::batch::BatchHeader;
use storage::object::format::ObjectBuilder;
use storage::records::{parse_records, rebuild, records_section, MAX_EXPANDED_BATCH};
use storage::throttle::TokenBucket;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::controller::records::{AbortedTxn, ObjectRange};
use crate::metadata::objects::{PartitionObjects, RangeRef};
use crate::metadata::Command;
use crate::object_compaction::{batch_ref, read_range, write_stream_object};
use crate::partition::PartitionKey;
use crate::shard::Shard;
use crate::topic_config::{self, CleanerSettings};

/// Bytes the map counts for each key beyond the key itself.
const ENTRY_OVERHEAD: usize = 64;

/// What one pass over a partition cleans.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanPlan {
    /// Every range from the log start through the dirty ones, in order.
    pub ranges: Vec<RangeRef>,
    /// How many of `ranges` (at the end) are dirty.
    pub dirty: usize,
}

/// Which ranges a pass cleans, if the partition is due: the dirty ranges
/// (ending above `cleaned_end`, contiguous, each older than the lag) must
/// hold at least `min_cleanable_dirty_ratio` of the bytes up to them, or
/// the first of them must be older than `max_compaction_lag_ms`.
pub fn plan_clean(part: &PartitionObjects, s: &CleanerSettings, now_ms: i64) -> Option<CleanPlan> {
    let lag_limit = now_ms.saturating_sub(s.min_compaction_lag_ms);
    let mut ranges = Vec::new();
    let mut dirty = 0usize;
    let (mut clean_bytes, mut dirty_bytes) = (0u64, 0u64);
    for r in part.iter() {
        if r.end_offset <= part.cleaned_end {
            clean_bytes += r.bytes;
            ranges.push(*r);
            continue;
        }
        let contiguous = ranges
            .last()
            .is_none_or(|l: &RangeRef| l.end_offset == r.start_offset);
        if r.max_timestamp > lag_limit || (dirty > 0 && !contiguous) {
            break;
        }
        dirty_bytes += r.bytes;
        dirty += 1;
        ranges.push(*r);
    }
    if dirty == 0 {
        return None;
    }
    let total = (clean_bytes + dirty_bytes).max(1) as f64;
    let first_dirty = &ranges[ranges.len() - dirty];
    let overdue = first_dirty.max_timestamp <= now_ms.saturating_sub(s.max_compaction_lag_ms);
    if (dirty_bytes as f64) / total < s.min_cleanable_dirty_ratio && !overdue {
        return None;
    }
    Some(CleanPlan { ranges, dirty })
}

/// Key → offset of its latest record, within a byte budget. Keys are kept
/// whole (no hash collisions to reason about).
pub struct OffsetMap {
    map: HashMap<Bytes, i64>,
    bytes: usize,
    budget: usize,
}

impl OffsetMap {
    pub fn new(budget: usize) -> Self {
        OffsetMap {
            map: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// Records that `key` was written at `offset`. False when the key is
    /// new and the budget is spent (the map is then left as it was).
    pub fn put(&mut self, key: &[u8], offset: i64) -> bool {
        if let Some(o) = self.map.get_mut(key) {
            *o = (*o).max(offset);
            return true;
        }
        let cost = key.len() + ENTRY_OVERHEAD;
        if self.bytes + cost > self.budget {
            return false;
        }
        self.bytes += cost;
        self.map.insert(Bytes::copy_from_slice(key), offset);
        true
    }

    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.map.get(key).copied()
    }

    /// Keys held.
    pub fn entries(&self) -> usize {
        self.map.len()
    }
}

/// The aborted transactions of a partition, as its producer state lists
/// them: which transactional batches no reader may see.
#[derive(Debug, Default, Clone)]
pub struct AbortedIndex {
    /// Producer id → `(first offset, marker offset)` of its aborted
    /// transactions.
    by_producer: HashMap<i64, Vec<(i64, i64)>>,
}

impl AbortedIndex {
    pub fn new(aborted: impl IntoIterator<Item = AbortedTxn>) -> Self {
        let mut by_producer: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for a in aborted {
            by_producer
                .entry(a.producer_id)
                .or_default()
                .push((a.first_offset, a.last_offset));
        }
        AbortedIndex { by_producer }
    }

    /// Whether the batch belongs to an aborted transaction.
    pub fn holds(&self, h: &BatchHeader) -> bool {
        h.is_transactional()
            && !h.is_control()
            && self.by_producer.get(&h.producer_id).is_some_and(|ranges| {
                ranges
                    .iter()
                    .any(|&(first, last)| first <= h.base_offset && h.base_offset <= last)
            })
    }
}

/// Adds the keyed records of `batch` to `map`; false once the budget is
/// spent (some keys of the batch may be missing then). Aborted records
/// are left out.
pub fn map_batch(
    map: &mut OffsetMap,
    h: &BatchHeader,
    batch: &[u8],
    aborted: &AbortedIndex,
) -> bool {
    if h.is_control() || aborted.holds(h) {
        return true;
    }
    let Ok(section) = records_section(batch, h, MAX_EXPANDED_BATCH) else {
        return true;
    };
    let Ok(records) = parse_records(&section, h.records_count) else {
        return true;
    };
    let mut fits = true;
    for r in records {
        if let Some(k) = r.key {
            fits &= map.put(k, h.base_offset + i64::from(r.offset_delta));
        }
    }
    fits
}

/// What cleaning did to one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Cleaned {
    /// Every record stays: the batch as it was.
    Whole,
    /// Some records stay: the rebuilt batch.
    Part(Bytes),
    /// No record stays.
    Gone,
}

/// Cleans one batch against `map`: a record goes when a later record of its
/// key exists, or when it is a tombstone older than `tombstone_horizon`.
/// A batch of an aborted transaction goes whole. Control batches, keyless
/// records and batches that do not decode stay.
pub fn clean_batch(
    map: &OffsetMap,
    h: &BatchHeader,
    batch: &[u8],
    tombstone_horizon: i64,
    aborted: &AbortedIndex,
) -> Cleaned {
    if h.is_control() {
        return Cleaned::Whole;
    }
    if aborted.holds(h) {
        return Cleaned::Gone;
    }
    let section = match records_section(batch, h, MAX_EXPANDED_BATCH) {
        Ok(s) => s,
        Err(e) => {
            warn!(
                offset = h.base_offset,
                "log cleaner keeps a batch it cannot decode: {e}"
            );
            return Cleaned::Whole;
        }
    };
    let records = match parse_records(&section, h.records_count) {
        Ok(r) => r,
        Err(e) => {
            warn!(
                offset = h.base_offset,
                "log cleaner keeps a batch it cannot parse: {e}"
            );
            return Cleaned::Whole;
        }
    };
    let kept: Vec<&[u8]> = records
        .iter()
        .filter(|r| {
            let Some(key) = r.key else { return true };
            let offset = h.base_offset + i64::from(r.offset_delta);
            if map.latest(key).is_some_and(|latest| latest > offset) {
                return false;
            }
            let timestamp = if h.log_append_time() {
                h.max_timestamp
            } else {
                h.base_timestamp.saturating_add(r.timestamp_delta)
            };
            !(r.tombstone && timestamp < tombstone_horizon)
        })
        .map(|r| r.raw)
        .collect();
    if kept.len() == records.len() {
        return Cleaned::Whole;
    }
    if kept.is_empty() {
        return Cleaned::Gone;
    }
    match rebuild(batch, h, &kept) {
        Ok(b) => Cleaned::Part(b),
        Err(e) => {
            warn!(
                offset = h.base_offset,
                "log cleaner keeps a batch it cannot rebuild: {e}"
            );
            Cleaned::Whole
        }
    }
}

/// One log-compaction pass over the compacted partitions this shard leads;
/// returns how many partitions were cleaned.
pub async fn pass(shard: &Rc<Shard>, budget: &TokenBucket) -> Result<usize, String> {
    let image = shard.image();
    let now = now_ms();
    let keys: Vec<PartitionKey> = shard.partitions.borrow().keys().copied().collect();
    let mut cleaned = 0;
    for key in keys {
        let Some(topic) = image.topic_by_id(&key.0) else {
            continue;
        };
        let Some(settings) = topic_config::cleaner(&topic.configs, &shard.config) else {
            continue;
        };
        let Some(part) = image.objects.partition(key.0, key.1) else {
            continue;
        };
        let Some(plan) = plan_clean(part, &settings, now) else {
            continue;
        };
        clean(shard, key, &topic.name, plan, &settings, now, budget).await?;
        cleaned += 1;
    }
    Ok(cleaned)
}

/// A new stream object being filled with cleaned ranges.
struct Group {
    builder: ObjectBuilder,
    replaces: Vec<i64>,
    start: i64,
    end: i64,
    max_timestamp: i64,
    bytes: u64,
    batches: usize,
    /// The last batch seen, kept empty if the group would hold none.
    last: Option<(BatchHeader, Bytes)>,
}

impl Group {
    fn new(block_bytes: usize, start: i64) -> Self {
        Group {
            builder: ObjectBuilder::new(block_bytes),
            replaces: Vec::new(),
            start,
            end: start,
            max_timestamp: i64::MIN,
            bytes: 0,
            batches: 0,
            last: None,
        }
    }
}

async fn clean(
    shard: &Rc<Shard>,
    key: PartitionKey,
    topic: &str,
    plan: CleanPlan,
    settings: &CleanerSettings,
    now: i64,
    budget: &TokenBucket,
) -> Result<(), String> {
    let cfg = &shard.config;
    let per_shard = (cfg.log_cleaner_dedupe_buffer_bytes / cfg.shards.max(1) as u64) as usize;
    let mut map = OffsetMap::new(per_shard);
    // Which transactions aborted, and where the first open one starts: an
    // open transaction's records (and everything after them) wait until it
    // ends, as Kafka's cleaner stops at the last stable offset.
    let (aborted, first_unstable) = match shard.partitions.borrow().get(&key) {
        Some(p) => (
            AbortedIndex::new(p.producers.aborted().copied()),
            p.producers.first_unstable_offset(),
        ),
        None => return Ok(()),
    };
    // 1. Map the dirty ranges, as far as the budget goes.
    let dirty_from = plan.ranges.len() - plan.dirty;
    let mut mapped_end = None;
    for r in &plan.ranges[dirty_from..] {
        if first_unstable.is_some_and(|fu| r.end_offset > fu) {
            break;
        }
        let mut fits = true;
        for (h, batch) in read_range(shard, key, r, budget).await? {
            fits &= map_batch(&mut map, &h, &batch, &aborted);
        }
        if !fits && mapped_end.is_some() {
            break;
        }
        mapped_end = Some(r.end_offset);
        if !fits {
            warn!(
                topic,
                partition = key.1,
                keys = map.entries(),
                "log cleaner: the dedupe buffer is full within one range; \
                   raise log_cleaner_dedupe_buffer_bytes to clean more per pass"
            );
            break;
        }
    }
    let Some(clean_end) = mapped_end else {
        return Ok(());
    };
    // 2. Rewrite everything up to there.
    let horizon = now.saturating_sub(settings.delete_retention_ms);
    let stream = (*key.0.as_bytes(), key.1);
    let block_bytes = cfg.object_block_bytes as usize;
    let target = cfg.stream_object_bytes;
    let mut cmds = Vec::new();
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut group: Option<Group> = None;
    let to_clean: Vec<RangeRef> = plan
        .ranges
        .iter()
        .take_while(|r| r.end_offset <= clean_end)
        .copied()
        .collect();
    for r in &to_clean {
        let g = group.get_or_insert_with(|| Group::new(block_bytes, r.start_offset));
        if g.end != r.start_offset {
            // A gap: what came before goes into its own object.
            let done = group.take().expect("group");
            cmds.extend(finish(shard, key, done, budget).await?);
            group = Some(Group::new(block_bytes, r.start_offset));
        }
        let g = group.as_mut().expect("group");
        g.replaces.push(r.start_offset);
        g.end = r.end_offset;
        g.max_timestamp = g.max_timestamp.max(r.max_timestamp);
        for (h, batch) in read_range(shard, key, r, budget).await? {
            bytes_in += batch.len() as u64;
            let out = match clean_batch(&map, &h, &batch, horizon, &aborted) {
                Cleaned::Whole => batch.clone(),
                Cleaned::Part(b) => b,
                Cleaned::Gone => {
                    g.last = Some((h, batch));
                    continue;
                }
            };
            let oh = storage::batch::parse_header(&out).map_err(|e| e.to_string())?;
            g.bytes += out.len() as u64;
            g.batches += 1;
            g.builder.add(stream, &batch_ref(&oh, out));
            g.last = None;
        }
        if g.bytes >= target && g.batches > 0 {
            let done = group.take().expect("group");
            bytes_out += done.bytes;
            cmds.extend(finish(shard, key, done, budget).await?);
        }
    }
    if let Some(done) = group.take() {
        bytes_out += done.bytes;
        cmds.extend(finish(shard, key, done, budget).await?);
    }
    cmds.push(Command::MarkCleaned {
        topic_id: key.0,
        partition: key.1,
        offset: clean_end,
    });
    let n = cmds.len();
    let results = shard.control().submit(cmds, false).await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        // Retention or a deleted topic got there first; new objects whose
        // commit failed are orphans and will be collected.
        return Err(format!(
            "log cleaning of {topic}-{} not committed: {}",
            key.1, e.message
        ));
    }
    shard.evict_cached_before(key, clean_end);
    info!(
        topic,
        partition = key.1,
        cleaned_to = clean_end,
        keys = map.entries(),
        bytes_in,
        bytes_out,
        objects = n - 1,
        "log cleaner pass"
    );
    Ok(())
}

/// Writes a group as a stream object; `None` when it replaces nothing.
async fn finish(
    shard: &Rc<Shard>,
    key: PartitionKey,
    mut g: Group,
    budget: &TokenBucket,
) -> Result<Option<Command>, String> {
    if g.replaces.is_empty() {
        return Ok(None);
    }
    if g.batches == 0 {
        // Every record of the group went: keep its last batch, emptied, so
        // the object and the offsets it covers stay readable.
        let Some((h, batch)) = g.last.take() else {
            return Err("a cleaned group has no batch at all".into());
        };
        let empty = rebuild(&batch, &h, &[]).map_err(|e| e.to_string())?;
        let oh = storage::batch::parse_header(&empty).map_err(|e| e.to_string())?;
        g.bytes += empty.len() as u64;
        g.builder
            .add((*key.0.as_bytes(), key.1), &batch_ref(&oh, empty));
    }
    let range = ObjectRange {
        topic_id: key.0,
        partition: key.1,
        start_offset: g.start,
        end_offset: g.end,
        max_timestamp: g.max_timestamp,
        bytes: g.bytes,
    };
    write_stream_object(shard, g.builder, range, g.replaces, budget)
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::objects::{ObjectMeta, ObjectsImage};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };
    use storage::batch::parse_header;
    use uuid::Uuid;

    fn settings(ratio: f64, lag: i64) -> CleanerSettings {
        CleanerSettings {
            delete_retention_ms: 1000,
            min_compaction_lag_ms: lag,
            min_cleanable_dirty_ratio: ratio,
            max_compaction_lag_ms: i64::MAX,
        }
    }

    fn part(ranges: &[(i64, i64, u64, i64)], cleaned_end: i64) -> PartitionObjects {
        let mut img = ObjectsImage::default();
        for (i, &(start, end, bytes, ts)) in ranges.iter().enumerate() {
            img.apply_committed(ObjectMeta {
                id: i as u64,
                node_id: 0,
                size: bytes,
                ranges: vec![ObjectRange {
                    topic_id: Uuid::nil(),
                    partition: 0,
                    start_offset: start,
                    end_offset: end,
                    max_timestamp: ts,
                    bytes,
                }],
            });
        }
        img.apply_cleaned(Uuid::nil(), 0, cleaned_end);
        img.partition(Uuid::nil(), 0).unwrap().clone()
    }

    #[test]
    fn dirty_ratio_and_lag_decide() {
        // 100 clean bytes, then 50 + 50 dirty.
        let p = part(&[(0, 10, 100, 1), (10, 20, 50, 2), (20, 30, 50, 3)], 10);
        let plan = plan_clean(&p, &settings(0.5, 0), 100).unwrap();
        assert_eq!((plan.ranges.len(), plan.dirty), (3, 2));
        assert!(
            plan_clean(&p, &settings(0.6, 0), 100).is_none(),
            "50% dirty < 60%"
        );
        // The newest range is too young: only one dirty range counts.
        let plan = plan_clean(&p, &settings(0.3, 98), 100).unwrap();
        assert_eq!((plan.ranges.len(), plan.dirty), (2, 1));
        assert!(
            plan_clean(&p, &settings(0.4, 98), 100).is_none(),
            "50/150 < 0.4"
        );
        // Nothing dirty.
        let p = part(&[(0, 10, 100, 1)], 10);
        assert!(plan_clean(&p, &settings(0.0, 0), 100).is_none());
        // Below the ratio, but overdue by max.compaction.lag.ms: the
        // oldest dirty range (newest record at 2) is 98 ms old at 100.
        let p = part(&[(0, 10, 100, 1), (10, 20, 50, 2), (20, 30, 50, 3)], 10);
        let overdue = CleanerSettings {
            max_compaction_lag_ms: 98,
            ..settings(0.6, 0)
        };
        assert_eq!(plan_clean(&p, &overdue, 100).unwrap().dirty, 2);
        let not_yet = CleanerSettings {
            max_compaction_lag_ms: 99,
            ..settings(0.6, 0)
        };
        assert!(plan_clean(&p, &not_yet, 100).is_none());
        // Never cleaned: everything is dirty.
        let p = part(&[(0, 10, 100, 1), (10, 20, 100, 1)], 0);
        assert_eq!(plan_clean(&p, &settings(0.9, 0), 100).unwrap().dirty, 2);
    }

    #[test]
    fn offset_map_keeps_the_latest_within_its_budget() {
        let mut m = OffsetMap::new(2 * (ENTRY_OVERHEAD + 1));
        assert!(m.put(b"a", 5));
        assert!(m.put(b"a", 3), "an existing key never needs room");
        assert_eq!(m.latest(b"a"), Some(5));
        assert!(m.put(b"b", 7));
        assert!(!m.put(b"c", 8), "budget spent");
        assert_eq!(m.latest(b"c"), None);
        assert!(m.put(b"b", 9));
        assert_eq!((m.latest(b"b"), m.entries()), (Some(9), 2));
    }

    fn batch(base: i64, recs: &[(Option<&str>, Option<&str>, i64)], c: Compression) -> Bytes {
        producer_batch(base, -1, recs, c)
    }

    /// A batch of producer `pid`: transactional when `pid >= 0`.
    fn producer_batch(
        base: i64,
        pid: i64,
        recs: &[(Option<&str>, Option<&str>, i64)],
        c: Compression,
    ) -> Bytes {
        let recs: Vec<Record> = recs
            .iter()
            .enumerate()
            .map(|(i, (k, v, ts))| Record {
                transactional: pid >= 0,
                control: false,
                partition_leader_epoch: 0,
                producer_id: pid,
                producer_epoch: if pid >= 0 { 0 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                // The encoder starts a new batch unless sequences follow offsets.
                sequence: i as i32,
                timestamp: *ts,
                key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            recs.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: c,
            },
        )
        .unwrap();
        buf.freeze()
    }

    fn values(b: &Bytes) -> Vec<(i64, Option<String>, Option<String>)> {
        let set = RecordBatchDecoder::decode(&mut b.clone()).unwrap();
        set.records
            .iter()
            .map(|r| {
                (
                    r.offset,
                    r.key.as_ref().map(|k| String::from_utf8_lossy(k).into()),
                    r.value.as_ref().map(|v| String::from_utf8_lossy(v).into()),
                )
            })
            .collect()
    }

    #[test]
    fn keeps_the_latest_per_key_and_drops_old_tombstones() {
        let b1 = batch(
            0,
            &[
                (Some("a"), Some("a1"), 10),
                (Some("b"), Some("b1"), 10),
                (None, Some("keyless"), 10),
                (Some("c"), Some("c1"), 10),
            ],
            Compression::Snappy,
        );
        let b2 = batch(
            4,
            &[
                (Some("a"), Some("a2"), 20),
                (Some("c"), None, 20),   // old tombstone
                (Some("d"), None, 5000), // young tombstone
            ],
            Compression::None,
        );
        let none = AbortedIndex::default();
        let mut map = OffsetMap::new(1 << 20);
        for b in [&b1, &b2] {
            assert!(map_batch(&mut map, &parse_header(b).unwrap(), b, &none));
        }
        let h1 = parse_header(&b1).unwrap();
        let Cleaned::Part(c1) = clean_batch(&map, &h1, &b1, 1000, &none) else {
            panic!("some records go")
        };
        assert_eq!(
            values(&c1),
            vec![
                (1, Some("b".into()), Some("b1".into())),
                (2, None, Some("keyless".into()))
            ]
        );
        let h2 = parse_header(&b2).unwrap();
        let Cleaned::Part(c2) = clean_batch(&map, &h2, &b2, 1000, &none) else {
            panic!("the old tombstone goes")
        };
        assert_eq!(
            values(&c2),
            vec![
                (4, Some("a".into()), Some("a2".into())),
                (6, Some("d".into()), None)
            ]
        );
        // Cleaning again changes nothing more.
        let mut map2 = OffsetMap::new(1 << 20);
        for b in [&c1, &c2] {
            map_batch(&mut map2, &parse_header(b).unwrap(), b, &none);
        }
        for b in [&c1, &c2] {
            assert_eq!(
                clean_batch(&map2, &parse_header(b).unwrap(), b, 1000, &none),
                Cleaned::Whole
            );
        }
        // A batch whose every record is superseded goes.
        let b3 = batch(7, &[(Some("b"), Some("b2"), 30)], Compression::None);
        map.put(b"b", 7);
        assert_eq!(
            clean_batch(&map, &h1, &b1, 0, &none),
            Cleaned::Part(c1_without_b(&b1, &h1))
        );
        let b0 = batch(0, &[(Some("b"), Some("b0"), 1)], Compression::None);
        assert_eq!(
            clean_batch(&map, &parse_header(&b0).unwrap(), &b0, 0, &none),
            Cleaned::Gone
        );
        assert_eq!(
            clean_batch(&map, &parse_header(&b3).unwrap(), &b3, 0, &none),
            Cleaned::Whole
        );
    }

    #[test]
    fn an_aborted_write_never_shadows_a_committed_one() {
        let committed = batch(0, &[(Some("a"), Some("a1"), 10)], Compression::None);
        let aborted = producer_batch(1, 7, &[(Some("a"), Some("a2"), 20)], Compression::None);
        let other = producer_batch(3, 8, &[(Some("b"), Some("b1"), 20)], Compression::None);
        // Producer 7 aborted its transaction (marker at offset 2); producer
        // 8's committed.
        let index = AbortedIndex::new([AbortedTxn {
            producer_id: 7,
            first_offset: 1,
            last_offset: 2,
        }]);
        let mut map = OffsetMap::new(1 << 20);
        for b in [&committed, &aborted, &other] {
            assert!(map_batch(&mut map, &parse_header(b).unwrap(), b, &index));
        }
        assert_eq!(
            map.latest(b"a"),
            Some(0),
            "the aborted a2 is not the latest a"
        );
        let clean = |b: &Bytes| clean_batch(&map, &parse_header(b).unwrap(), b, 0, &index);
        assert_eq!(clean(&committed), Cleaned::Whole);
        assert_eq!(clean(&aborted), Cleaned::Gone);
        assert_eq!(clean(&other), Cleaned::Whole);
        // Without the index the aborted write would have won.
        let mut blind = OffsetMap::new(1 << 20);
        for b in [&committed, &aborted] {
            map_batch(
                &mut blind,
                &parse_header(b).unwrap(),
                b,
                &AbortedIndex::default(),
            );
        }
        assert_eq!(blind.latest(b"a"), Some(1));
    }

    /// b1 cleaned when `a`, `b` and `c` all have later records.
    fn c1_without_b(b1: &Bytes, h1: &BatchHeader) -> Bytes {
        let section = records_section(b1, h1, 1 << 20).unwrap();
        let recs = parse_records(&section, h1.records_count).unwrap();
        rebuild(b1, h1, &[recs[2].raw]).unwrap()
    }
}
