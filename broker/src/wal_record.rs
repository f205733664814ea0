//! What the broker puts in a WAL record body: one record batch of one
//! partition, behind a small header naming the partition.
//!
//! Layout: kind (u8, 1 = batch), topic id (16 bytes), partition (i32 BE),
//! then the batch exactly as stored in the log (offsets assigned). Pure
//! encoding, used on every shard; unknown kinds are skipped on recovery so a
//! newer broker can add kinds.

use bytes::Bytes;
use storage::batch::{parse_header, BatchError};
use storage::log_cache::StoredBatch;
use uuid::Uuid;

pub const KIND_BATCH: u8 = 1;
pub const PREFIX_LEN: usize = 21;

/// The header in front of a batch.
pub fn batch_prefix(topic: Uuid, partition: i32) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[0] = KIND_BATCH;
    p[1..17].copy_from_slice(topic.as_bytes());
    p[17..21].copy_from_slice(&partition.to_be_bytes());
    p
}

/// A recovered WAL record.
#[derive(Debug)]
pub enum WalEntry {
    Batch {
        topic: Uuid,
        partition: i32,
        batch: StoredBatch,
    },
    /// A kind this broker does not know (written by a newer one).
    Unknown(u8),
}

#[derive(Debug, thiserror::Error)]
pub enum WalRecordError {
    #[error("WAL record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("WAL record holds a bad batch: {0}")]
    Batch(#[from] BatchError),
}

pub fn decode(body: &Bytes) -> Result<WalEntry, WalRecordError> {
    let Some(&kind) = body.first() else {
        return Err(WalRecordError::Short(0));
    };
    if kind != KIND_BATCH {
        return Ok(WalEntry::Unknown(kind));
    }
    if body.len() < PREFIX_LEN {
        return Err(WalRecordError::Short(body.len()));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&body[1..17]);
    let partition = i32::from_be_bytes([body[17], body[18], body[19], body[20]]);
    let bytes = body.slice(PREFIX_LEN..);
    let h = parse_header(&bytes)?;
    if h.total_len() != bytes.len() {
        return Err(WalRecordError::Short(body.len()));
    }
    Ok(WalEntry::Batch {
        topic: Uuid::from_bytes(id),
        partition,
        batch: StoredBatch {
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            records: h.records_count.max(0) as u32,
            max_timestamp: h.max_timestamp,
            bytes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        // A minimal valid-looking batch header (61 bytes, 1 record).
        let mut batch = vec![0u8; 61];
        batch[0..8].copy_from_slice(&42i64.to_be_bytes());
        batch[8..12].copy_from_slice(&49i32.to_be_bytes());
        batch[16] = 2;
        batch[23..27].copy_from_slice(&3i32.to_be_bytes());
        batch[35..43].copy_from_slice(&777i64.to_be_bytes());
        let id = Uuid::new_v4();
        let mut body = batch_prefix(id, 5).to_vec();
        body.extend_from_slice(&batch);
        match decode(&Bytes::from(body)).unwrap() {
            WalEntry::Batch {
                topic,
                partition,
                batch,
            } => {
                assert_eq!((topic, partition), (id, 5));
                assert_eq!(
                    (batch.base_offset, batch.last_offset, batch.max_timestamp),
                    (42, 45, 777)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(&Bytes::from_static(&[9, 1])).unwrap(),
            WalEntry::Unknown(9)
        ));
        assert!(decode(&Bytes::from_static(&[1, 1])).is_err());
    }
}
