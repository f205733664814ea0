//! Builds a shard's object store and cold-read path from the config: the
//! local directory (default) or an S3-compatible bucket, one client per
//! shard, plus the `ObjectReader` with this shard's share of the block cache
//! and cold-read budget, in a task queue below produce and tail reads.
//!
//! Runs inside each shard's executor at start-up, before the listener
//! opens. Never shares a client between shards.

use std::rc::Rc;

use glommio::{Latency, Shares};
use storage::object::local::LocalStore;
use storage::object::reader::{ObjectReader, ReaderConfig};
use storage::object::SharedStore;

use crate::config::{Config, ObjectsLocation};

fn env_or(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

/// This shard's share of the cold-read settings.
pub fn reader_config(cfg: &Config) -> ReaderConfig {
    let per_shard = |v: u64| v / cfg.shards.max(1) as u64;
    ReaderConfig {
        key_prefix: cfg.object_key_prefix(),
        block_cache_bytes: per_shard(cfg.block_cache_bytes) as usize,
        bytes_per_sec: per_shard(cfg.cold_read_bytes_per_sec),
        max_inflight: env_or("COLD_INFLIGHT", 4),
        max_merge_bytes: env_or("COLD_MERGE", 4 << 20) as u64,
        readahead_max: env_or("COLD_RA_MAX", 32 << 20) as u64,
        ..ReaderConfig::default()
    }
}

/// Opens the configured store for the calling shard.
pub async fn open_store(cfg: &Config) -> Result<SharedStore, String> {
    match cfg.objects().map_err(|e| e.to_string())? {
        ObjectsLocation::Local(path) => {
            let store = LocalStore::open(path.clone())
                .await
                .map_err(|e| format!("object directory {}: {e}", path.display()))?;
            Ok(Rc::new(store))
        }
        ObjectsLocation::S3 { bucket, .. } => Err(format!(
            "objects_url s3://{bucket}: the S3 backend is not built into this binary yet"
        )),
    }
}

/// The store and reader of the calling shard.
pub async fn open(cfg: &Config, shard: usize) -> Result<(SharedStore, Rc<ObjectReader>), String> {
    let store = open_store(cfg).await?;
    let tq = glommio::executor().create_task_queue(
        Shares::Static(100),
        Latency::NotImportant,
        &format!("cold-reads-{shard}"),
    );
    let reader = ObjectReader::new(store.clone(), reader_config(cfg), Some(tq));
    Ok((store, reader))
}
