//! Reads through a partition: the log cache for the tail, object storage
//! (block cache, then ranged GETs) for everything older, and the timestamp
//! lookups of ListOffsets over both.
//!
//! Runs on the shard leading the partition. A read that needs objects
//! awaits its GETs without holding any borrow; other requests go on.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use storage::batch::parse_header;
use storage::object::reader::ObjectRef;
use tracing::warn;

use super::{PartitionKey, Shard};
use crate::metadata::objects::RangeRef;
use crate::partition::ReadPlan;

/// What a read returns, with the partition's offsets at the time.
#[derive(Debug, Default, Clone)]
pub struct PartitionRead {
    pub batches: Vec<Bytes>,
    pub bytes: usize,
    pub high_watermark: i64,
    pub log_start: i64,
}

/// Why a read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The partition cannot be read here (Kafka error to answer).
    Partition(ResponseError),
    /// Outside `[log_start, high_watermark]`; carries both for the answer.
    OutOfRange { log_start: i64, high_watermark: i64 },
}

impl ReadError {
    pub fn code(&self) -> ResponseError {
        match self {
            ReadError::Partition(e) => *e,
            ReadError::OutOfRange { .. } => ResponseError::OffsetOutOfRange,
        }
    }
}

/// A batch found by timestamp.
#[derive(Debug, Clone)]
pub struct TimestampHit {
    pub base_offset: i64,
    pub max_timestamp: i64,
    pub bytes: Bytes,
}

fn object_ref(r: &RangeRef) -> ObjectRef {
    ObjectRef {
        id: r.object_id,
        size: r.object_size,
    }
}

/// Emptied object ranges one read skips before it answers with nothing.
const MAX_EMPTY_RANGES: usize = 64;

fn storage_error(e: impl std::fmt::Display, key: PartitionKey) -> ReadError {
    warn!(topic = %key.0, partition = key.1, "object read failed: {e}");
    ReadError::Partition(ResponseError::KafkaStorageError)
}

impl Shard {
    /// Whole batches of a partition this shard leads, from the batch holding
    /// `offset`, up to `max_bytes` (the first batch even if larger, when
    /// `min_one`).
    pub async fn read(
        self: &Rc<Self>,
        key: PartitionKey,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<PartitionRead, ReadError> {
        // Log compaction leaves gaps: a range may end with offsets that no
        // batch holds any more, and the read then moves on to the next range.
        let (mut read, mut range_end) = self.read_once(key, offset, max_bytes, min_one).await?;
        for _ in 0..MAX_EMPTY_RANGES {
            match range_end {
                Some(end) if read.batches.is_empty() && end < read.high_watermark => {
                    (read, range_end) = self.read_once(key, end, max_bytes, min_one).await?;
                }
                _ => break,
            }
        }
        Ok(read)
    }

    /// One read: from the log cache, or from the one object range holding
    /// `offset` (then also its end).
    async fn read_once(
        self: &Rc<Self>,
        key: PartitionKey,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<(PartitionRead, Option<i64>), ReadError> {
        let (range, readahead, mut out) = {
            let mut parts = self.partitions.borrow_mut();
            let part = parts
                .get_mut(&key)
                .ok_or(ReadError::Partition(ResponseError::NotLeaderOrFollower))?;
            if !part.state.serves_reads() {
                return Err(ReadError::Partition(ResponseError::NotLeaderOrFollower));
            }
            let out = PartitionRead {
                high_watermark: part.state.high_watermark,
                log_start: part.state.log_start,
                ..PartitionRead::default()
            };
            match part.plan_read(offset, max_bytes, min_one) {
                Err(e) => {
                    return Err(ReadError::OutOfRange {
                        log_start: e.log_start,
                        high_watermark: e.high_watermark,
                    })
                }
                Ok(ReadPlan::Cached(r)) => {
                    let read = PartitionRead {
                        batches: r.batches,
                        bytes: r.bytes,
                        ..out
                    };
                    return Ok((read, None));
                }
                Ok(ReadPlan::Cold) => {}
            }
            let image = self.image();
            let range = image
                .objects
                .partition(key.0, key.1)
                .and_then(|o| o.covering(offset));
            let Some(range) = range else {
                warn!(topic = %key.0, partition = key.1, offset,
                      "no object holds this offset although it is below the log cache");
                return Err(ReadError::Partition(ResponseError::KafkaStorageError));
            };
            let cfg = self.reader_config();
            (range, part.readahead.on_read(offset, &cfg), out)
        };
        let reader = self
            .reader()
            .ok_or(ReadError::Partition(ResponseError::KafkaStorageError))?;
        let stream = (*key.0.as_bytes(), key.1);
        let batches = reader
            .read(
                object_ref(&range),
                stream,
                offset,
                max_bytes,
                min_one,
                readahead,
            )
            .await
            .map_err(|e| storage_error(e, key))?;
        let next = batches
            .last()
            .and_then(|b| parse_header(b).ok())
            .map(|h| h.last_offset() + 1);
        if let (Some(next), Some(part)) = (next, self.partitions.borrow_mut().get_mut(&key)) {
            part.readahead.read_ended(next);
        }
        out.bytes = batches.iter().map(|b| b.len()).sum();
        out.batches = batches;
        Ok((out, Some(range.end_offset)))
    }

    fn reader_config(&self) -> storage::object::reader::ReaderConfig {
        crate::objects::reader_config(&self.config)
    }

    /// The first visible batch with a record at or after `timestamp`:
    /// objects first (by their ranges' and blocks' largest timestamps),
    /// then the log cache above them.
    pub async fn batch_at_timestamp(
        self: &Rc<Self>,
        key: PartitionKey,
        timestamp: i64,
    ) -> Result<Option<TimestampHit>, ReadError> {
        let (candidates, cached) = {
            let parts = self.partitions.borrow();
            let part = parts
                .get(&key)
                .ok_or(ReadError::Partition(ResponseError::NotLeaderOrFollower))?;
            let image = self.image();
            let start = part.state.log_start;
            let candidates: Vec<RangeRef> = image
                .objects
                .partition(key.0, key.1)
                .map(|o| {
                    o.iter()
                        .filter(|r| r.end_offset > start && r.max_timestamp >= timestamp)
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            let above = part.state.uploaded_end;
            let cached = part
                .cache
                .range(above, i64::MAX)
                .take_while(|b| b.base_offset < part.state.high_watermark)
                .find(|b| b.max_timestamp >= timestamp)
                .map(|b| TimestampHit {
                    base_offset: b.base_offset,
                    max_timestamp: b.max_timestamp,
                    bytes: b.bytes.clone(),
                });
            (candidates, cached)
        };
        for range in candidates {
            if let Some(hit) = self
                .object_batch_where(key, &range, |ts| ts >= timestamp)
                .await?
            {
                return Ok(Some(hit));
            }
        }
        Ok(cached)
    }

    /// The largest timestamp in the visible log and the last offset of the
    /// batch that holds it.
    pub async fn max_timestamp(
        self: &Rc<Self>,
        key: PartitionKey,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let (best_range, cached) = {
            let parts = self.partitions.borrow();
            let part = parts
                .get(&key)
                .ok_or(ReadError::Partition(ResponseError::NotLeaderOrFollower))?;
            let image = self.image();
            let best_range = image.objects.partition(key.0, key.1).and_then(|o| {
                o.iter()
                    .filter(|r| r.end_offset > part.state.log_start)
                    .fold(None, |best: Option<RangeRef>, r| match best {
                        Some(b) if b.max_timestamp >= r.max_timestamp => best,
                        _ => Some(*r),
                    })
            });
            (
                best_range,
                part.cache.max_timestamp(part.state.high_watermark),
            )
        };
        let Some(range) = best_range else {
            return Ok(cached);
        };
        if cached.is_some_and(|(ts, _)| ts > range.max_timestamp) {
            return Ok(cached);
        }
        let hit = self
            .object_batch_where(key, &range, |ts| ts >= range.max_timestamp)
            .await?;
        Ok(hit
            .and_then(|h| {
                let last = parse_header(&h.bytes).ok()?.last_offset();
                Some((h.max_timestamp, last))
            })
            .or(cached))
    }

    /// The first batch of the partition in one object whose largest
    /// timestamp passes `want`, using the index's per-block timestamps.
    async fn object_batch_where(
        self: &Rc<Self>,
        key: PartitionKey,
        range: &RangeRef,
        want: impl Fn(i64) -> bool,
    ) -> Result<Option<TimestampHit>, ReadError> {
        let reader = self
            .reader()
            .ok_or(ReadError::Partition(ResponseError::KafkaStorageError))?;
        let obj = object_ref(range);
        let stream = (*key.0.as_bytes(), key.1);
        let index = reader.index(obj).await.map_err(|e| storage_error(e, key))?;
        for block in index.blocks_of(stream) {
            if !want(block.max_timestamp) {
                continue;
            }
            let batches = reader
                .read(
                    obj,
                    stream,
                    block.first_offset,
                    block.size as usize,
                    true,
                    0,
                )
                .await
                .map_err(|e| storage_error(e, key))?;
            for b in batches {
                let Ok(h) = parse_header(&b) else { continue };
                // Stored batches carry LogAppendTime already stamped.
                if want(h.max_timestamp) {
                    return Ok(Some(TimestampHit {
                        base_offset: h.base_offset,
                        max_timestamp: h.max_timestamp,
                        bytes: b,
                    }));
                }
            }
        }
        Ok(None)
    }
}
