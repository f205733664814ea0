//! The broker as a library: every module of the `broker` binary, so that
//! `src/main.rs` stays a thin start-up and the fuzz targets in `fuzz/` can
//! reach the decoders (metadata records, log entries, snapshots).
//!
//! Nothing here runs by itself; `main.rs` starts the shards.

pub mod admin;
pub mod background;
pub mod clean;
pub mod clock;
pub mod config;
pub mod control;
pub mod controller;
pub mod coordinator_partitions;
pub mod data_dir;
pub mod group;
pub mod group_config;
pub mod handlers;
pub mod liveness;
pub mod log_cleaner;
pub mod metadata;
pub mod metrics;
pub mod object_compaction;
pub mod object_gc;
pub mod objects;
pub mod objects_tool;
pub mod partition;
pub mod peer;
pub mod producer_state;
pub mod quota;
pub mod reshard;
pub mod retention;
pub mod sasl;
pub mod shard;
pub mod share;
pub mod shutdown;
pub mod topic_config;
pub mod txn;
pub mod uploader;
pub mod wakeup;
pub mod wal_record;
