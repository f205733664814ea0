//! The uploader of a shard: moves what the shard's WAL slice holds into
//! object storage, so the WAL only buffers.
//!
//! One task per shard, in a task queue below produce and fetch. Each round:
//! snapshot every partition's committed, not yet uploaded batches (from the
//! log caches) together with the WAL offset they end at; build one
//! stream-set object; reserve an object id from the controller; put the
//! object (retrying until it is stored); commit the object and its
//! partition ranges to the metadata log; only then trim the WAL slice and
//! let the log cache evict what was uploaded. Rounds run one at a time, so
//! a shard's commits are in order.
//!
//! A round starts when `upload_bytes` have gathered, when the oldest
//! un-uploaded data is `upload_interval_ms` old, when the WAL slice is half
//! full, when appends wait for space, and on a flush (shutdown). Never holds
//! a borrow across `.await`; never trims the WAL before the commit.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use storage::log_cache::StoredBatch;
use storage::object::format::{BatchRef, ObjectBuilder};
use storage::object::keys;
use storage::object::StoreStats;
use storage::throttle::TokenBucket;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::controller::records::ObjectRange;
use crate::metadata::Command;
use crate::partition::PartitionKey;
use crate::shard::Shard;

/// Object ids reserved from the controller at a time.
const ID_BLOCK: u64 = 16;

/// Counters of one shard's uploader.
#[derive(Debug, Clone, Copy, Default)]
pub struct UploadStats {
    pub objects: u64,
    pub bytes: u64,
    pub failures: u64,
    pub trims: u64,
    pub last_duration_ms: u64,
}

pub struct Uploader {
    wake: Event,
    /// When the oldest data not in the last snapshot was appended.
    oldest: Cell<Option<Instant>>,
    space_wanted: Cell<bool>,
    flushes_wanted: Cell<u64>,
    flushed: Event,
    rounds_done: Cell<u64>,
    ids: RefCell<VecDeque<u64>>,
    stats: Cell<UploadStats>,
    throttle: TokenBucket,
    upload_bytes: usize,
    interval: Duration,
    block_bytes: usize,
    key_prefix: String,
    enabled: bool,
}

impl Uploader {
    pub fn new(cfg: &Config) -> Uploader {
        let per_shard = |v: u64| v / cfg.shards.max(1) as u64;
        Uploader {
            wake: Event::new(),
            oldest: Cell::new(None),
            space_wanted: Cell::new(false),
            flushes_wanted: Cell::new(0),
            flushed: Event::new(),
            rounds_done: Cell::new(0),
            ids: RefCell::new(VecDeque::new()),
            stats: Cell::new(UploadStats::default()),
            throttle: TokenBucket::new(per_shard(cfg.upload_bytes_per_sec), 8 << 20),
            // A round must start well before the shard's log cache fills.
            upload_bytes: cfg
                .upload_bytes()
                .min(per_shard(cfg.log_cache_bytes()) / 2)
                .max(1) as usize,
            interval: Duration::from_millis(cfg.upload_interval_ms()),
            block_bytes: cfg.object_block_bytes as usize,
            key_prefix: cfg.object_key_prefix(),
            enabled: cfg.uploads_enabled,
        }
    }

    pub fn stats(&self) -> UploadStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut UploadStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Called after every append: starts the age clock.
    pub fn note_appended(&self) {
        if self.oldest.get().is_none() {
            self.oldest.set(Some(Instant::now()));
        }
    }

    /// Called after appends commit: starts a round once enough has
    /// gathered, the WAL is half full, or appends wait for space.
    pub fn note_committed(&self, shard: &Shard) {
        let unuploaded = shard.usage().unuploaded;
        let due = unuploaded >= self.upload_bytes
            || (self.space_wanted.get() && unuploaded > 0)
            || shard.wal().is_some_and(|w| w.fill_ratio() >= 0.5);
        if due && self.enabled {
            self.wake.notify(1);
        }
    }

    /// Appends are waiting for space: upload now.
    pub fn wake_for_space(&self) {
        self.space_wanted.set(true);
        self.wake.notify(1);
    }

    /// Uploads everything committed so far (and trims the WAL behind it);
    /// returns once a round that started after this call has finished.
    pub async fn flush(&self) {
        let target = self.rounds_done.get() + 2;
        self.flushes_wanted.set(self.flushes_wanted.get() + 1);
        self.wake.notify(1);
        loop {
            let listener = self.flushed.listen();
            if self.rounds_done.get() >= target {
                break;
            }
            listener.await;
        }
        self.flushes_wanted
            .set(self.flushes_wanted.get().saturating_sub(1));
    }

    /// Why a round is due now, if it is.
    fn due(&self, shard: &Shard) -> Option<&'static str> {
        if self.flushes_wanted.get() > 0 {
            return Some("flush");
        }
        if !self.enabled {
            return None;
        }
        let unuploaded = shard.usage().unuploaded;
        if unuploaded >= self.upload_bytes {
            return Some("size");
        }
        let wal = shard.wal()?;
        if unuploaded > 0 && wal.fill_ratio() >= 0.5 {
            return Some("wal half full");
        }
        if unuploaded > 0 && self.space_wanted.get() {
            return Some("appends waiting for space");
        }
        if self
            .oldest
            .get()
            .is_some_and(|t| t.elapsed() >= self.interval)
        {
            return Some("age");
        }
        None
    }

    /// How long to sleep before checking again without a wake-up.
    fn next_check(&self) -> Duration {
        match self.oldest.get() {
            Some(t) => self
                .interval
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(10)),
            None => Duration::from_secs(1),
        }
    }
}

/// Starts the uploader of `shard` in its own task queue.
pub fn start(shard: &Rc<Shard>) {
    let name = format!("uploads-{}", shard.id);
    if let Err(e) = crate::background::spawn(&name, 200, run(Rc::downgrade(shard))) {
        error!(
            shard = shard.id,
            "cannot start the uploader in its task queue: {e}"
        );
        glommio::spawn_local(run(Rc::downgrade(shard))).detach();
    }
}

async fn run(shard: Weak<Shard>) {
    let mut failures = 0u32;
    let mut reported = (
        Instant::now(),
        UploadStats::default(),
        StoreStats::default(),
    );
    loop {
        let Some(s) = shard.upgrade() else { return };
        let up = &s.uploader;
        report(&s, &mut reported);
        let listener = up.wake.listen();
        let Some(reason) = up.due(&s) else {
            let wait = up.next_check();
            drop(s);
            futures_lite::future::or(listener, glommio::timer::sleep(wait)).await;
            continue;
        };
        match round(&s, reason).await {
            Ok(Done::Uploaded) => failures = 0,
            Ok(Done::Nothing) => {
                // What is due is not committed yet (appends waiting for
                // their flush): wait for a wake-up rather than spin.
                up.rounds_done.set(up.rounds_done.get() + 1);
                up.flushed.notify(usize::MAX);
                drop(s);
                futures_lite::future::or(listener, glommio::timer::sleep(Duration::from_millis(5)))
                    .await;
                continue;
            }
            Err(e) => {
                failures += 1;
                up.count(|st| st.failures += 1);
                let delay = backoff(failures);
                warn!(
                    shard = s.id,
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "upload round failed: {e}"
                );
                drop(s);
                glommio::timer::sleep(delay).await;
                continue;
            }
        }
        drop(listener);
        up.rounds_done.set(up.rounds_done.get() + 1);
        up.flushed.notify(usize::MAX);
        glommio::yield_if_needed().await;
    }
}

/// Logs the shard's upload counters, and the requests its object store
/// made so far (cumulative), once a minute while they change.
fn report(shard: &Shard, last: &mut (Instant, UploadStats, StoreStats)) {
    if last.0.elapsed() < Duration::from_secs(60) {
        return;
    }
    let now = shard.uploader.stats();
    let store = shard.store().map(|s| s.stats()).unwrap_or_default();
    if now.objects != last.1.objects || now.failures != last.1.failures || store != last.2 {
        let usage = shard.usage();
        info!(
            shard = shard.id,
            objects = now.objects - last.1.objects,
            mbytes = (now.bytes - last.1.bytes) >> 20,
            failures = now.failures - last.1.failures,
            last_upload_ms = now.last_duration_ms,
            unuploaded_bytes = usage.unuploaded,
            log_cache_bytes = usage.cached,
            store_puts = store.puts,
            store_gets = store.gets,
            store_heads = store.heads,
            store_deletes = store.deletes,
            store_lists = store.lists,
            "uploads in the last minute"
        );
    }
    *last = (Instant::now(), now, store);
}

/// What a round did.
enum Done {
    Uploaded,
    Nothing,
}

/// 100 ms, doubling, capped at 2 s, with jitter: the store client backs off
/// itself; this only keeps a long outage from spinning.
fn backoff(failures: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(5)).min(2_000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// What one round takes from the log caches.
struct Snapshot {
    trim_to: u64,
    epoch: u64,
    partitions: Vec<(PartitionKey, Vec<StoredBatch>)>,
}

fn snapshot(shard: &Shard) -> Snapshot {
    let parts = shard.partitions.borrow();
    let mut partitions: Vec<(PartitionKey, Vec<StoredBatch>)> = parts
        .values()
        .filter_map(|p| {
            let batches: Vec<StoredBatch> = p
                .cache
                .range(p.state.uploaded_end, p.state.high_watermark)
                .cloned()
                .collect();
            (!batches.is_empty()).then_some((p.key, batches))
        })
        .collect();
    partitions.sort_by_key(|(k, _)| *k);
    Snapshot {
        trim_to: shard.committed_wal_end(),
        epoch: shard.wal_epoch(),
        partitions,
    }
}

async fn round(shard: &Rc<Shard>, reason: &'static str) -> Result<Done, String> {
    let up = &shard.uploader;
    let started = Instant::now();
    up.space_wanted.set(false);
    let snap = snapshot(shard);
    // Appends not in this snapshot (not committed yet) restart the age
    // clock, so they go up with the next round even if nothing else comes.
    let taken: usize = snap
        .partitions
        .iter()
        .flat_map(|(_, b)| b.iter())
        .map(|b| b.bytes.len())
        .sum();
    let left = shard.usage().unuploaded > taken;
    up.oldest.set(left.then(Instant::now));
    if snap.partitions.is_empty() {
        trim(shard, &snap).await;
        return Ok(Done::Nothing);
    }
    let mut builder = ObjectBuilder::new(up.block_bytes);
    let mut ranges = Vec::with_capacity(snap.partitions.len());
    for (key, batches) in &snap.partitions {
        let stream = (*key.0.as_bytes(), key.1);
        let mut range = ObjectRange {
            topic_id: key.0,
            partition: key.1,
            start_offset: batches[0].base_offset,
            end_offset: batches[0].base_offset,
            max_timestamp: i64::MIN,
            bytes: 0,
        };
        for b in batches {
            builder.add(
                stream,
                &BatchRef {
                    base_offset: b.base_offset,
                    last_offset: b.last_offset,
                    records: b.records,
                    max_timestamp: b.max_timestamp,
                    bytes: b.bytes.clone(),
                },
            );
            range.end_offset = b.last_offset + 1;
            range.max_timestamp = range.max_timestamp.max(b.max_timestamp);
            range.bytes += b.bytes.len() as u64;
        }
        ranges.push(range);
    }
    let built = builder.finish();
    let size = built.index.size;
    let id = next_object_id(shard).await?;
    let key = keys::object_key(&up.key_prefix, id);
    put(shard, &key, built.body, size, snap.epoch).await?;
    // The producer state as of each range's end goes in the same metadata
    // entry, so the image's state always matches its objects.
    let mut cmds = vec![Command::CommitObject {
        object_id: id,
        node_id: shard.node_id(),
        size,
        ranges: ranges.clone(),
    }];
    cmds.extend(shard.producer_snapshots(&snap.partitions));
    let results = shard.control().submit(cmds, false).await;
    match results.into_iter().next() {
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            return Err(format!(
                "commit of object {key} refused ({}): {}; it is an orphan and will be collected",
                e.code, e.message
            ))
        }
        None => return Err("the controller gave no answer to the commit".into()),
    }
    // The image with the object is installed on this shard now: the
    // partitions' uploaded offsets have moved.
    trim(shard, &snap).await;
    shard.evict_to_budget();
    up.count(|s| {
        s.objects += 1;
        s.bytes += size;
        s.last_duration_ms = started.elapsed().as_millis() as u64;
    });
    shard.metrics.upload_round(started.elapsed());
    debug!(
        shard = shard.id,
        object = id,
        size,
        partitions = ranges.len(),
        reason,
        ms = started.elapsed().as_millis() as u64,
        "uploaded"
    );
    Ok(Done::Uploaded)
}

/// Trims the WAL behind what the snapshot covered, unless a WAL recovery
/// ran in the meantime (the next round covers it then).
async fn trim(shard: &Rc<Shard>, snap: &Snapshot) {
    let Some(wal) = shard.wal() else { return };
    if snap.epoch != shard.wal_epoch() || snap.trim_to <= wal.trim_offset() {
        return;
    }
    match wal.trim(snap.trim_to).await {
        Ok(()) => {
            shard.uploader.count(|s| s.trims += 1);
            shard.space_freed();
        }
        Err(e) => warn!(shard = shard.id, "WAL trim failed: {e}"),
    }
}

/// Puts the object, retrying until it is stored (the store client retries
/// transient errors itself; this loop outlasts outages).
async fn put(
    shard: &Rc<Shard>,
    key: &str,
    body: Vec<Bytes>,
    size: u64,
    epoch: u64,
) -> Result<(), String> {
    let store = shard.store().ok_or("no object store")?;
    let up = &shard.uploader;
    up.throttle.acquire(size).await;
    let mut attempt = 0u32;
    loop {
        let result = if size >= storage::object::MULTIPART_THRESHOLD {
            store
                .put_multipart(key, body.clone(), storage::object::MULTIPART_PART)
                .await
        } else {
            store.put(key, body.clone()).await
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                attempt += 1;
                up.count(|s| s.failures += 1);
                if epoch != shard.wal_epoch() {
                    return Err(format!("WAL recovered during the upload of {key}: {e}"));
                }
                let delay = backoff(attempt);
                if attempt == 1 || attempt.is_multiple_of(10) {
                    warn!(
                        shard = shard.id,
                        key, attempt, "object upload failed, retrying: {e}"
                    );
                }
                glommio::timer::sleep(delay).await;
            }
        }
    }
}

/// The next reserved object id, reserving a block from the controller when
/// none is left.
pub async fn next_object_id(shard: &Rc<Shard>) -> Result<u64, String> {
    if let Some(id) = shard.uploader.ids.borrow_mut().pop_front() {
        return Ok(id);
    }
    let node_id = shard.node_id();
    let results = shard
        .control()
        .submit(
            vec![Command::ReserveObjectIds {
                node_id,
                count: ID_BLOCK,
            }],
            false,
        )
        .await;
    match results.into_iter().next() {
        Some(Ok(_)) => {}
        Some(Err(e)) => return Err(format!("reserving object ids: {}", e.message)),
        None => return Err("reserving object ids: no answer".into()),
    }
    let image = shard.image();
    let Some(&(first, count)) = image.objects.reservations.get(&node_id) else {
        return Err("reserved object ids are not in the image".into());
    };
    let mut ids = shard.uploader.ids.borrow_mut();
    ids.extend(first..first + count);
    info!(shard = shard.id, first, count, "object ids reserved");
    ids.pop_front().ok_or_else(|| "empty id block".into())
}
