//! Storage for the broker: record-batch parsing, the per-partition log
//! cache, the per-shard write-ahead log (`wal`), object storage (`object`:
//! backends, the stream-set object format, cold reads), the block cache and
//! bandwidth budgets, and latency histograms for metrics. Knows nothing of the Kafka wire format beyond record
//! batches.

pub mod batch;
pub mod block_cache;
pub mod codec;
pub mod crc;
pub mod file_lock;
pub mod histogram;
pub mod log_cache;
pub mod object;
pub mod records;
pub mod throttle;
pub mod wal;
