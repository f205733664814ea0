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
use storage::object::s3::{S3Config, S3Store};
use storage::object::SharedStore;

use crate::config::{Config, ObjectsLocation};

/// This shard's share of the cold-read settings. A local directory shares
/// its disk with the WAL: its reads are kept short and few, so a WAL flush
/// never queues behind megabytes of them. S3 reads go over the network,
/// where larger merged GETs and more in flight pay off.
pub fn reader_config(cfg: &Config) -> ReaderConfig {
    let per_shard = |v: u64| v / cfg.shards.max(1) as u64;
    let local = matches!(cfg.objects(), Ok(ObjectsLocation::Local(_)));
    let (max_merge_bytes, max_inflight) = if local { (1 << 20, 2) } else { (4 << 20, 4) };
    ReaderConfig {
        key_prefix: cfg.object_key_prefix(),
        block_cache_bytes: per_shard(cfg.block_cache_bytes) as usize,
        bytes_per_sec: per_shard(cfg.cold_read_bytes_per_sec),
        max_merge_bytes,
        max_inflight,
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
        ObjectsLocation::S3 { bucket, prefix } => {
            let c = s3_config(cfg, bucket, prefix);
            let store = S3Store::new(c.clone())
                .map_err(|e| format!("S3 bucket {} at {}: {e}", c.bucket, c.endpoint))?;
            Ok(Rc::new(store))
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The S3 client settings: the config's keys, else the usual `AWS_*`
/// environment variables, else AWS's regional endpoint.
pub fn s3_config(cfg: &Config, bucket: String, prefix: String) -> S3Config {
    let region = cfg
        .s3_region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = cfg
        .s3_endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    S3Config {
        endpoint,
        region,
        bucket,
        prefix,
        access_key_id: cfg
            .s3_access_key_id
            .clone()
            .or_else(|| env("AWS_ACCESS_KEY_ID"))
            .unwrap_or_default(),
        secret_access_key: cfg
            .s3_secret_access_key
            .clone()
            .or_else(|| env("AWS_SECRET_ACCESS_KEY"))
            .unwrap_or_default(),
        path_style: cfg.s3_path_style,
        request_timeout_ms: cfg.s3_request_timeout_ms,
        retry_base_ms: cfg.s3_retry_base_ms,
        max_attempts: cfg.s3_max_attempts,
        ..S3Config::default()
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
