//! `ShardReport`: what one shard tells shard 0 when `/metrics` or the admin
//! API is read. Plain data (`Send`), gathered in one go on the shard's own
//! core from its counters and parts, without awaiting anything.
//!
//! Never keeps anything: a report is built on demand and dropped once
//! encoded.

use hdrhistogram::Histogram;
use storage::histogram::HistogramSnapshot;
use storage::object::reader::ReaderStats;
use storage::object::StoreStats;
use storage::wal::WalStats;

use crate::metrics::{CountersSnapshot, PartitionIo};
use crate::shard::Shard;
use crate::uploader::UploadStats;

#[derive(Debug, Clone)]
pub struct PartitionReport {
    pub topic: String,
    pub topic_id: uuid::Uuid,
    pub partition: i32,
    pub leader_epoch: i32,
    pub lifecycle: String,
    pub log_start: i64,
    pub high_watermark: i64,
    pub log_end: i64,
    pub uploaded_end: i64,
    /// Bytes of this partition held by its log cache (the WAL tail and
    /// recent data).
    pub cached_bytes: u64,
    /// Bytes of this partition in committed objects.
    pub object_bytes: u64,
    pub io: PartitionIo,
}

#[derive(Debug, Clone)]
pub struct GroupReport {
    pub id: String,
    /// "classic" or "consumer".
    pub group_type: &'static str,
    pub state: String,
    pub protocol_type: String,
    pub members: usize,
    /// Generation (classic) or group epoch (consumer): each rebalance
    /// bumps it.
    pub generation: i32,
    /// `(topic, partition, committed offset)`.
    pub committed: Vec<(String, i32, i64)>,
}

#[derive(Debug, Clone, Default)]
pub struct WalReport {
    pub stats: WalStats,
    pub stages: Option<storage::wal::WalStages>,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub flush: HistogramSnapshot,
    pub failed: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CacheReport {
    pub log_cache_bytes: u64,
    /// Bytes in log caches not yet uploaded (the upload backlog).
    pub unuploaded_bytes: u64,
    pub block_cache_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ShardReport {
    pub shard: usize,
    pub node_id: i32,
    /// The shard's listener is open (its WAL slice was recovered before).
    pub serving: bool,
    pub metadata_version: u64,
    pub counters: CountersSnapshot,
    pub wal: Option<WalReport>,
    pub store: Option<StoreStats>,
    pub reader: Option<ReaderStats>,
    pub cache: CacheReport,
    pub upload: UploadStats,
    pub partitions: Vec<PartitionReport>,
    pub groups: Vec<GroupReport>,
    /// Share groups' state on this leader (`crate::share`).
    pub share: crate::share::ShareCounts,
}

impl ShardReport {
    /// Reads the shard's counters and parts as they are now.
    pub fn collect(shard: &Shard) -> ShardReport {
        let image = shard.image();
        let (counters, mut partitions) = {
            let parts = shard.partitions.borrow();
            let counters = shard.metrics.snapshot(&|k| parts.contains_key(k));
            let reports: Vec<_> = parts
                .values()
                .filter_map(|p| {
                    let (id, index) = p.key;
                    let topic = image.topic_by_id(&id)?;
                    Some(PartitionReport {
                        topic: topic.name.clone(),
                        topic_id: id,
                        partition: index,
                        leader_epoch: p.state.leader_epoch,
                        lifecycle: format!("{:?}", p.state.lifecycle).to_lowercase(),
                        log_start: p.state.log_start,
                        high_watermark: p.state.high_watermark,
                        log_end: p.state.log_end,
                        uploaded_end: p.state.uploaded_end,
                        cached_bytes: p.cache.bytes() as u64,
                        object_bytes: image.objects.partition(id, index).map_or(0, |o| o.bytes()),
                        io: counters.partitions.get(&p.key).copied().unwrap_or_default(),
                    })
                })
                .collect();
            (counters, reports)
        };
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let usage = shard.usage();
        let reader = shard.reader();
        ShardReport {
            shard: shard.id,
            node_id: shard.node_id(),
            serving: shard.serving.get(),
            metadata_version: image.version,
            counters,
            wal: shard.wal().map(|w| WalReport {
                stats: w.stats(),
                used_bytes: w.used_bytes(),
                capacity_bytes: w.capacity(),
                flush: w.flush_latency(),
                stages: Some(w.stages()),
                failed: w.failure().is_some(),
            }),
            store: shard.store().map(|s| s.stats()),
            reader: reader.as_ref().map(|r| r.stats()),
            cache: CacheReport {
                log_cache_bytes: usage.cached as u64,
                unuploaded_bytes: usage.unuploaded as u64,
                block_cache_bytes: reader.as_ref().map_or(0, |r| r.cached_bytes() as u64),
            },
            upload: shard.uploader.stats(),
            partitions,
            groups: shard.groups.report(),
            share: shard.share.counts(),
        }
    }
}

/// Every shard's stage histograms merged: `(api, stage, histogram)`, the
/// WAL's stages under api `"Wal"`, in a stable order.
pub fn merged_stages(reports: &[ShardReport]) -> Vec<(String, &'static str, Histogram<u64>)> {
    let mut out: Vec<(String, &'static str, Histogram<u64>)> = Vec::new();
    let mut add = |api: &str, stage: &'static str, h: &Histogram<u64>| {
        match out.iter_mut().find(|(a, s, _)| a == api && *s == stage) {
            // Same bounds and precision everywhere: `add` cannot fail.
            Some((_, _, m)) => {
                let _ = m.add(h);
            }
            None => out.push((api.to_string(), stage, h.clone())),
        }
    };
    for r in reports {
        for (api, stage, h) in &r.counters.stages {
            add(api, stage, h);
        }
        if let Some(w) = r.wal.as_ref().and_then(|w| w.stages.as_ref()) {
            add("Wal", "queue_wait", &w.queue_wait);
            add("Wal", "pack", &w.pack);
            add("Wal", "write", &w.write);
            add("Wal", "flush", &w.flush);
        }
    }
    out
}
