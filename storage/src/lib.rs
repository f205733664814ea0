//! Storage for the broker: record-batch parsing, the per-partition log and
//! (in `wal`) the per-shard write-ahead log. Knows nothing of the Kafka wire
//! format beyond record batches.

pub mod batch;
pub mod object;
pub mod partition_log;
pub mod wal;
