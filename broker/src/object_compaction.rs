//! Object compaction: a partition's data moves out of stream-set objects
//! (one per upload, shared by all partitions of a shard) into stream
//! objects of its own, and small stream objects merge, so the object count
//! follows data size and partition count rather than elapsed time. A
//! stream-set object is destroyed once every partition has moved out of it
//! (or dropped it by retention); the controller plans that in the same
//! record batch as the swap, so the swap is atomic.
//!
//! The choice of what to merge (`plan_runs`) is pure and unit-tested. The
//! task runs on every shard, for the partitions it leads, every
//! `object_compaction_interval_ms`, in a low-share task queue, within its
//! own bandwidth budget (`compaction_bytes_per_sec`). It holds at most one
//! run (`stream_object_bytes`) in memory at a time.

use crate::clock::now_ms;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use storage::batch::{parse_header, BatchHeader};
use storage::object::format::{split_batches, verify_block, BatchRef, ObjectBuilder};
use storage::object::keys;
use storage::object::reader::ObjectRef;
use storage::throttle::TokenBucket;
use tracing::{debug, info, warn};

use crate::controller::records::ObjectRange;
use crate::metadata::objects::{ObjectsImage, PartitionObjects, RangeRef};
use crate::metadata::Command;
use crate::partition::PartitionKey;
use crate::shard::Shard;

/// Contiguous ranges of one partition to write as one stream object.
pub type Run = Vec<RangeRef>;

/// Ranges of a run read from the store at once.
const PARALLEL_READS: usize = 8;

/// Stream objects of a partition merged at once when they are small.
pub const MERGE_FANIN: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// In a stream-set object, shared with other partitions.
    Shared,
    /// In a stream object of its own, smaller than the target.
    Small,
}

/// The sizes and ages `plan_runs` decides by.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Size of a stream object written (`stream_object_bytes`).
    pub target: u64,
    /// Stream-set objects this large stay while mostly live
    /// (`stream_set_keep_bytes`).
    pub keep_bytes: u64,
    /// Data younger than this is left alone (`object_compaction_min_age_ms`).
    pub min_age_ms: i64,
}

impl Limits {
    pub fn of(cfg: &crate::config::Config) -> Limits {
        Limits {
            target: cfg.stream_object_bytes,
            keep_bytes: cfg.stream_set_keep_bytes,
            min_age_ms: cfg.object_compaction_min_age_ms as i64,
        }
    }
}

/// Which of a partition's ranges to merge into stream objects:
/// * a stream-set object of at least `keep_bytes` (a full upload) stays as
///   it is while at least half of its bytes are live: rewriting it would
///   cost a PUT per partition and buy nothing, since its ranges are read
///   with ranged GETs anyway. Once retention, DeleteRecords or a deleted
///   topic has taken more than half of it, its live ranges move out, so
///   dead bytes never outweigh live ones (0 moves every one out);
/// * consecutive ranges that live in other shared (stream-set) objects move out,
///   merged up to about `target` bytes, so those objects can go, once they
///   add up to half the target or the oldest is older than `max_age_ms`
///   (ten times `min_age_ms`): every stream object written is a PUT, so a
///   slow partition does not move out in small pieces;
/// * small stream objects of its own merge once `MERGE_FANIN` of them are
///   consecutive, or they add up to `target`, so each byte is rewritten a
///   logarithmic number of times, not on every pass.
///
/// Only ranges whose newest record is older than `min_age_ms` are touched,
/// and runs never span a gap.
pub fn plan_runs(
    objects: &ObjectsImage,
    part: &PartitionObjects,
    limits: Limits,
    now_ms: i64,
) -> Vec<Run> {
    let Limits {
        target,
        keep_bytes,
        min_age_ms,
    } = limits;
    let max_age_ms = min_age_ms.saturating_mul(10);
    let kind_of = |r: &RangeRef| -> Option<Kind> {
        let obj = objects.objects.get(&r.object_id);
        let shared = obj.is_some_and(|o| o.ranges.len() > 1);
        // Summing an object's live ranges only for the big ones, which are
        // few: this runs for every range of every partition on each pass.
        let (big, mostly_dead) = match obj {
            Some(o) if keep_bytes > 0 && o.size >= keep_bytes => {
                let live: u64 = o.ranges.iter().map(|r| r.bytes).sum();
                (true, live.saturating_mul(2) < o.size)
            }
            _ => (false, false),
        };
        if r.max_timestamp > now_ms.saturating_sub(min_age_ms) || (shared && big && !mostly_dead) {
            None
        } else if shared || (big && mostly_dead) {
            // A big upload left with one live range moves out like a
            // shared one: its dead bytes are reclaimed once it is gone.
            Some(Kind::Shared)
        } else if r.bytes < target {
            Some(Kind::Small)
        } else {
            None
        }
    };
    let mut runs: Vec<Run> = Vec::new();
    let mut cur: Run = Vec::new();
    let mut cur_kind = Kind::Shared;
    let close = |cur: &mut Run, kind: Kind, runs: &mut Vec<Run>| {
        let bytes: u64 = cur.iter().map(|r| r.bytes).sum();
        let old = cur
            .first()
            .is_some_and(|r| r.max_timestamp <= now_ms.saturating_sub(max_age_ms));
        let worth = match kind {
            Kind::Shared => !cur.is_empty() && (bytes >= target / 2 || old),
            Kind::Small => cur.len() >= MERGE_FANIN || (cur.len() > 1 && bytes >= target),
        };
        if worth {
            runs.push(std::mem::take(cur));
        } else {
            cur.clear();
        }
    };
    for r in part.iter() {
        let kind = kind_of(r);
        let contiguous = cur.last().is_none_or(|l| l.end_offset == r.start_offset);
        if kind != Some(cur_kind) || !contiguous {
            close(&mut cur, cur_kind, &mut runs);
        }
        let Some(kind) = kind else { continue };
        cur_kind = kind;
        cur.push(*r);
        if cur.iter().map(|r| r.bytes).sum::<u64>() >= target {
            close(&mut cur, cur_kind, &mut runs);
        }
    }
    close(&mut cur, cur_kind, &mut runs);
    runs
}

/// Starts the compaction task of `shard`: object compaction every
/// `object_compaction_interval_ms`, log compaction every
/// `log_cleaner_backoff_ms` (either 0: that one never runs).
pub fn start(shard: &Rc<Shard>) {
    let cfg = &shard.config;
    if cfg.object_compaction_interval_ms == 0 && cfg.log_cleaner_backoff_ms == 0 {
        return;
    }
    let budget = cfg.compaction_bytes_per_sec / cfg.shards.max(1) as u64;
    let task = run(Rc::downgrade(shard), TokenBucket::new(budget, 4 << 20));
    let name = format!("compaction-{}", shard.id);
    if let Err(e) = crate::background::spawn(&name, 50, task) {
        warn!(shard = shard.id, "cannot start object compaction: {e}");
    }
}

/// When a job last run at `last` is next due (`None`: never).
fn next_due(last: Instant, every_ms: u64) -> Option<Instant> {
    (every_ms > 0).then(|| last + Duration::from_millis(every_ms))
}

async fn run(shard: Weak<Shard>, budget: TokenBucket) {
    // Both jobs share the task, so they never rewrite the same ranges at
    // once, and its queue and budget.
    let (mut compacted, mut cleaned) = (Instant::now(), Instant::now());
    loop {
        let Some(s) = shard.upgrade() else { return };
        let (every_compact, every_clean) = (
            s.config.object_compaction_interval_ms,
            s.config.log_cleaner_backoff_ms,
        );
        drop(s);
        let now = Instant::now();
        let compact_at = next_due(compacted, every_compact);
        let clean_at = next_due(cleaned, every_clean);
        let Some(wake) = compact_at.into_iter().chain(clean_at).min() else {
            return;
        };
        glommio::timer::sleep(wake.saturating_duration_since(now)).await;
        let Some(s) = shard.upgrade() else { return };
        let now = Instant::now();
        if compact_at.is_some_and(|t| t <= now) {
            compacted = now;
            match pass(&s, &budget).await {
                Ok(0) => {}
                Ok(n) => info!(shard = s.id, stream_objects = n, "object compaction pass"),
                Err(e) => warn!(shard = s.id, "object compaction failed: {e}"),
            }
        }
        if clean_at.is_some_and(|t| t <= now) {
            cleaned = now;
            if let Err(e) = crate::log_cleaner::pass(&s, &budget).await {
                warn!(shard = s.id, "log compaction failed: {e}");
            }
        }
    }
}

/// One pass over the partitions this shard leads; returns the stream
/// objects written.
pub async fn pass(shard: &Rc<Shard>, budget: &TokenBucket) -> Result<usize, String> {
    let image = shard.image();
    let cfg = &shard.config;
    let now = now_ms();
    let keys: Vec<PartitionKey> = shard.partitions.borrow().keys().copied().collect();
    let mut written = 0;
    for key in keys {
        let Some(part) = image.objects.partition(key.0, key.1) else {
            continue;
        };
        let runs = plan_runs(&image.objects, part, Limits::of(cfg), now);
        for r in runs {
            compact(shard, key, &r, budget).await?;
            written += 1;
        }
    }
    Ok(written)
}

/// Reads one run, writes it as a stream object and commits the swap.
async fn compact(
    shard: &Rc<Shard>,
    key: PartitionKey,
    run: &[RangeRef],
    budget: &TokenBucket,
) -> Result<(), String> {
    let stream = (*key.0.as_bytes(), key.1);
    let mut builder = ObjectBuilder::new(shard.config.object_block_bytes as usize);
    let mut max_timestamp = i64::MIN;
    let mut bytes = 0u64;
    // Ranges are read a few at a time: one GET each, so a run of many
    // small ranges is bound by request latency, not bandwidth, when read
    // one after the other. The run (at most the target size) is held anyway.
    let mut reads = futures::stream::iter(run.iter().map(|r| read_range(shard, key, r, budget)))
        .buffered(PARALLEL_READS);
    while let Some(batches) = reads.next().await {
        for (h, batch) in batches? {
            max_timestamp = max_timestamp.max(h.max_timestamp);
            bytes += batch.len() as u64;
            builder.add(stream, &batch_ref(&h, batch));
        }
    }
    let range = ObjectRange {
        topic_id: key.0,
        partition: key.1,
        start_offset: run[0].start_offset,
        end_offset: run[run.len() - 1].end_offset,
        max_timestamp,
        bytes,
    };
    let replaces = run.iter().map(|r| r.start_offset).collect();
    let cmd = write_stream_object(shard, builder, range, replaces, budget).await?;
    let results = shard.control().submit(vec![cmd], false).await;
    match results.into_iter().next() {
        Some(Ok(_)) => {
            debug!(shard = shard.id, ranges = run.len(), "stream object");
            Ok(())
        }
        // Retention or a deleted topic got there first: the new object is
        // an orphan and will be collected.
        Some(Err(e)) => Err(format!("stream object not committed: {}", e.message)),
        None => Err("no answer to the stream object commit".into()),
    }
}

/// How a batch is listed in an object under construction.
pub fn batch_ref(h: &BatchHeader, bytes: Bytes) -> BatchRef {
    BatchRef {
        base_offset: h.base_offset,
        last_offset: h.last_offset(),
        records: h.records_count.max(0) as u32,
        max_timestamp: h.max_timestamp,
        bytes,
    }
}

/// The batches of one range of a partition, read from its object within
/// `budget`, each block's checksum verified.
pub async fn read_range(
    shard: &Rc<Shard>,
    key: PartitionKey,
    r: &RangeRef,
    budget: &TokenBucket,
) -> Result<Vec<(BatchHeader, Bytes)>, String> {
    let store = shard.store().ok_or("no object store")?;
    let reader = shard.reader().ok_or("no object reader")?;
    let stream = (*key.0.as_bytes(), key.1);
    let obj = ObjectRef {
        id: r.object_id,
        size: r.object_size,
    };
    let index = reader.index(obj).await.map_err(|e| e.to_string())?;
    let blocks: Vec<_> = index
        .blocks_of(stream)
        .iter()
        .filter(|b| b.first_offset >= r.start_offset && b.end_offset <= r.end_offset)
        .copied()
        .collect();
    let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
        return Err(format!(
            "object {} holds no blocks of the range",
            r.object_id
        ));
    };
    let span = first.position..last.position + u64::from(last.size);
    budget.acquire(span.end - span.start).await;
    let data = store
        .get_range(
            &keys::object_key(&shard.config.object_key_prefix(), r.object_id),
            span.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for b in &blocks {
        let at = (b.position - span.start) as usize;
        let block = data.slice(at..at + b.size as usize);
        verify_block(b, &block).map_err(|e| e.to_string())?;
        for batch in split_batches(&block).map_err(|e| e.to_string())? {
            let h = parse_header(&batch).map_err(|e| e.to_string())?;
            out.push((h, batch));
        }
    }
    Ok(out)
}

/// Writes what `builder` holds as a new stream object of `range` and
/// returns the command that commits it in place of `replaces`.
pub async fn write_stream_object(
    shard: &Rc<Shard>,
    builder: ObjectBuilder,
    range: ObjectRange,
    replaces: Vec<i64>,
    budget: &TokenBucket,
) -> Result<Command, String> {
    let store = shard.store().ok_or("no object store")?;
    let built = builder.finish();
    let size = built.index.size;
    let id = crate::uploader::next_object_id(shard).await?;
    let object_key = keys::object_key(&shard.config.object_key_prefix(), id);
    budget.acquire(size).await;
    let put = if size >= storage::object::MULTIPART_THRESHOLD {
        store
            .put_multipart(&object_key, built.body, storage::object::MULTIPART_PART)
            .await
    } else {
        store.put(&object_key, built.body).await
    };
    put.map_err(|e| format!("writing stream object {object_key}: {e}"))?;
    debug!(shard = shard.id, object = id, size, "stream object written");
    Ok(Command::CommitStreamObject {
        object_id: id,
        node_id: shard.node_id(),
        size,
        range,
        replaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::objects::ObjectMeta;
    use uuid::Uuid;

    fn range(t: u128, start: i64, end: i64, bytes: u64, ts: i64) -> ObjectRange {
        ObjectRange {
            topic_id: Uuid::from_u128(t),
            partition: 0,
            start_offset: start,
            end_offset: end,
            max_timestamp: ts,
            bytes,
        }
    }

    fn commit(img: &mut ObjectsImage, id: u64, ranges: Vec<ObjectRange>) {
        img.apply_committed(ObjectMeta {
            id,
            node_id: 0,
            size: 1,
            ranges,
        });
    }

    /// Limits that move every stream-set object out (the policy before
    /// `keep_bytes`), so the tests below exercise moving out and merging.
    fn lim(target: u64, min_age_ms: i64) -> Limits {
        Limits {
            target,
            keep_bytes: 0,
            min_age_ms,
        }
    }

    fn starts(runs: &[Run]) -> Vec<Vec<i64>> {
        runs.iter()
            .map(|r| r.iter().map(|x| x.start_offset).collect())
            .collect()
    }

    #[test]
    fn shared_ranges_move_out_big_own_ones_stay() {
        let mut img = ObjectsImage::default();
        // A big stream object of its own, then three uploads shared with
        // topic 2, then a small object of its own, then a young upload.
        commit(&mut img, 0, vec![range(1, 0, 100, 1000, 10)]);
        for i in 0..3 {
            let s = 100 + i * 10;
            commit(
                &mut img,
                1 + i as u64,
                vec![range(1, s, s + 10, 10, 10), range(2, s, s + 10, 10, 10)],
            );
        }
        commit(&mut img, 4, vec![range(1, 130, 140, 10, 10)]);
        commit(&mut img, 5, vec![range(1, 140, 150, 10, 19_500)]);
        let part = img.partition(Uuid::from_u128(1), 0).unwrap().clone();
        // 30 shared bytes: too few for a 500-byte target while they are
        // younger than ten times the minimum age...
        assert!(plan_runs(&img, &part, lim(500, 1000), 5000).is_empty());
        // ...enough for a 60-byte target...
        assert_eq!(
            starts(&plan_runs(&img, &part, lim(60, 1000), 5000)),
            vec![vec![100, 110, 120]]
        );
        // ...and they move out anyway once old.
        let runs = plan_runs(&img, &part, lim(500, 1000), 20_000);
        assert_eq!(starts(&runs), vec![vec![100, 110, 120]]);
        // A run is cut at the target size.
        let runs = plan_runs(&img, &part, lim(15, 1000), 20_000);
        assert_eq!(starts(&runs), vec![vec![100, 110], vec![120]]);
    }

    #[test]
    fn full_uploads_stay_until_mostly_dead() {
        let mut img = ObjectsImage::default();
        // Two full uploads (1000 bytes each, the keep size) shared by
        // topics 1 and 2, and one short upload (a timer's) after them.
        for (id, s) in [(0u64, 0i64), (1, 10)] {
            img.apply_committed(ObjectMeta {
                id,
                node_id: 0,
                size: 1000,
                ranges: vec![range(1, s, s + 10, 400, 10), range(2, s, s + 10, 580, 10)],
            });
        }
        img.apply_committed(ObjectMeta {
            id: 2,
            node_id: 0,
            size: 100,
            ranges: vec![range(1, 20, 30, 40, 10), range(2, 20, 30, 50, 10)],
        });
        let limits = Limits {
            target: 500,
            keep_bytes: 1000,
            min_age_ms: 1000,
        };
        let part = |img: &ObjectsImage| img.partition(Uuid::from_u128(1), 0).unwrap().clone();
        // Only the short upload is worth moving out (once old).
        assert!(plan_runs(&img, &part(&img), limits, 5000).is_empty());
        assert_eq!(
            starts(&plan_runs(&img, &part(&img), limits, 1_000_000)),
            vec![vec![20]]
        );
        // Retention takes topic 2's first range: object 0 is 40% live, so
        // topic 1's range leaves it too; object 1 is still whole.
        img.apply_log_start(Uuid::from_u128(2), 0, 10);
        assert_eq!(
            starts(&plan_runs(&img, &part(&img), limits, 5000)),
            vec![vec![0]]
        );
        // With keep_bytes 0 every shared range moves out, and object 0,
        // left with one range, counts as topic 1's own small object.
        let all = Limits {
            keep_bytes: 0,
            ..limits
        };
        assert_eq!(
            starts(&plan_runs(&img, &part(&img), all, 1_000_000)),
            vec![vec![10, 20]]
        );
    }

    #[test]
    fn small_own_objects_wait_for_the_fan_in_or_the_target() {
        let mut img = ObjectsImage::default();
        for i in 0..(MERGE_FANIN as i64 - 1) {
            commit(
                &mut img,
                i as u64,
                vec![range(1, i * 10, i * 10 + 10, 10, 10)],
            );
        }
        let part = img.partition(Uuid::from_u128(1), 0).unwrap().clone();
        assert!(
            plan_runs(&img, &part, lim(500, 0), 5000).is_empty(),
            "not enough yet"
        );
        // Enough bytes: merge.
        assert_eq!(plan_runs(&img, &part, lim(30, 0), 5000).len(), 2);
        let n = MERGE_FANIN as i64 - 1;
        commit(&mut img, 99, vec![range(1, n * 10, n * 10 + 10, 10, 10)]);
        let part = img.partition(Uuid::from_u128(1), 0).unwrap().clone();
        let runs = plan_runs(&img, &part, lim(500, 0), 5000);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].len(), MERGE_FANIN);
    }

    #[test]
    fn one_range_alone_in_a_small_object_stays() {
        let mut img = ObjectsImage::default();
        commit(&mut img, 0, vec![range(1, 0, 10, 10, 10)]);
        let part = img.partition(Uuid::from_u128(1), 0).unwrap().clone();
        assert!(
            plan_runs(&img, &part, lim(500, 0), 5000).is_empty(),
            "nothing to gain"
        );
        // One range in a shared object moves out, so the object can go.
        commit(
            &mut img,
            1,
            vec![range(1, 10, 20, 10, 10), range(2, 0, 5, 10, 10)],
        );
        let part = img.partition(Uuid::from_u128(1), 0).unwrap().clone();
        assert_eq!(
            starts(&plan_runs(&img, &part, lim(500, 0), 5000)),
            vec![vec![10]]
        );
    }

    #[test]
    fn gaps_split_runs() {
        let mut img = ObjectsImage::default();
        let shared = |s: i64| vec![range(1, s, s + 10, 10, 10), range(2, s, s + 10, 10, 10)];
        commit(&mut img, 0, shared(0));
        commit(&mut img, 1, shared(10));
        commit(&mut img, 2, shared(30));
        commit(&mut img, 3, shared(40));
        let part = img.partition(Uuid::from_u128(1), 0).unwrap().clone();
        assert_eq!(
            starts(&plan_runs(&img, &part, lim(500, 0), 5000)),
            vec![vec![0, 10], vec![30, 40]]
        );
    }
}
