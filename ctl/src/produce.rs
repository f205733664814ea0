//! `brokerctl produce`: records from `--value` or from stdin (one line, one
//! record) sent with Produce (acks=all, no producer id) to the partition's
//! leader, one batch per up to `--batch` lines.
//!
//! Partition choice: `-p`, else the key's murmur2 hash (as Kafka's Java
//! client hashes keys), else batches take the partitions in turn. This
//! module never retries a batch the broker may have written: only errors
//! that say it was not (a moved leader) are retried.

use std::io::BufRead;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use clap::Args;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde_json::json;

use crate::client::{topic_name, Client, TopicLayout, REQUEST_TIMEOUT_MS};
use crate::error::{CtlError, Result};
use crate::output::{Output, StreamTable};

const ACKS_ALL: i16 = -1;
const RETRIES: u32 = 5;
/// Errors that say the batch was not written: UNKNOWN_TOPIC_OR_PARTITION,
/// LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER. Others that Kafka calls
/// retriable (a timeout) may leave it written, and a resend would
/// duplicate it without a producer id.
const NOT_WRITTEN: [i16; 3] = [3, 5, 6];

#[derive(Args, Debug)]
pub struct ProduceArgs {
    topic: String,
    /// Partition to write to (default: by key hash, or in turn).
    #[arg(short = 'p', long)]
    partition: Option<i32>,
    /// Key of every record.
    #[arg(short = 'k', long)]
    key: Option<String>,
    /// Produce this one record instead of reading stdin.
    #[arg(long)]
    value: Option<String>,
    /// Most stdin lines per batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
}

pub fn run(client: &mut Client, out: &Output, args: ProduceArgs) -> Result<()> {
    let mut layout = client.topic(&args.topic)?;
    if let Some(p) = args.partition {
        layout.partition(p)?;
    }
    let mut producer = Producer {
        key: args.key.clone().map(Bytes::from),
        fixed: args.partition,
        next: 0,
        table: StreamTable::new(&[("PARTITION", 9), ("OFFSET", 8)]),
    };
    if let Some(v) = &args.value {
        let values = vec![Bytes::from(v.clone())];
        return producer.send(client, &mut layout, out, values);
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let mut values = Vec::new();
        for line in lines.by_ref().take(args.batch as usize) {
            let line = line.map_err(|source| CtlError::Io {
                addr: "stdin".into(),
                source,
            })?;
            values.push(Bytes::from(line));
        }
        if values.is_empty() {
            return Ok(());
        }
        producer.send(client, &mut layout, out, values)?;
    }
}

struct Producer {
    key: Option<Bytes>,
    fixed: Option<i32>,
    /// The partition the next keyless batch goes to.
    next: usize,
    table: StreamTable,
}

impl Producer {
    fn partition(&mut self, layout: &TopicLayout) -> Result<i32> {
        let count = layout.partitions.len();
        if count == 0 {
            return Err(CtlError::Failed(format!(
                "topic {} has no partitions",
                layout.name
            )));
        }
        if let Some(p) = self.fixed {
            return Ok(p);
        }
        if let Some(key) = &self.key {
            return Ok(key_partition(key, count));
        }
        let p = layout.partitions[self.next % count].index;
        self.next = self.next.wrapping_add(1);
        Ok(p)
    }

    fn send(
        &mut self,
        client: &mut Client,
        layout: &mut TopicLayout,
        out: &Output,
        values: Vec<Bytes>,
    ) -> Result<()> {
        let partition = self.partition(layout)?;
        let batch = encode_batch(self.key.as_ref(), &values, now_ms())?;
        let base = produce_batch(client, layout, partition, batch)?;
        for i in 0..values.len() as i64 {
            let offset = base + i;
            if out.json {
                out.json_line(&json!({"topic": layout.name, "partition": partition,
                                      "offset": offset}));
            } else {
                let row = self
                    .table
                    .format_row(&[partition.to_string(), offset.to_string()]);
                out.text(&row);
            }
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One v2 batch of `values`, no producer id, uncompressed.
fn encode_batch(key: Option<&Bytes>, values: &[Bytes], timestamp: i64) -> Result<Bytes> {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch when offset - sequence
            // changes; with no producer id the batch's base sequence is
            // -1 all the same.
            sequence: i as i32 - 1,
            timestamp,
            key: key.cloned(),
            value: Some(v.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options)
        .map_err(|e| CtlError::Failed(format!("encoding records: {e}")))?;
    Ok(buf.freeze())
}

/// Sends one batch to the partition's leader; returns its base offset.
/// On a moved leader, re-reads Metadata and sends again.
fn produce_batch(
    client: &mut Client,
    layout: &mut TopicLayout,
    partition: i32,
    batch: Bytes,
) -> Result<i64> {
    let mut attempt = 0;
    loop {
        let leader = layout.partition(partition)?.leader;
        let req = ProduceRequest::default()
            .with_acks(ACKS_ALL)
            .with_timeout_ms(REQUEST_TIMEOUT_MS)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(&layout.name))
                .with_topic_id(layout.id)
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch.clone()))])]);
        let resp = client.call(Some(leader), &req)?;
        let p = resp
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == partition)
            .ok_or_else(|| CtlError::Failed("Produce: no answer for the partition".into()))?;
        let what = || format!("produce to {}-{partition}", layout.name);
        match CtlError::check(what, p.error_code, p.error_message.as_deref()) {
            Ok(()) => return Ok(p.base_offset),
            Err(_) if attempt < RETRIES && NOT_WRITTEN.contains(&p.error_code) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
                *layout = client.topic(&layout.name)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Kafka's default partitioner for keyed records: murmur2, sign bit
/// cleared, modulo the partition count.
pub fn key_partition(key: &[u8], partitions: usize) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    (positive as usize % partitions.max(1)) as i32
}

/// Murmur2 as Kafka's `Utils.murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in chunks.by_ref() {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn one_batch_holds_every_line() {
        let values: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("v{i}"))).collect();
        let key = Bytes::from_static(b"k");
        let mut buf = encode_batch(Some(&key), &values, 1_700_000_000_000).unwrap();
        let sets = RecordBatchDecoder::decode_all(&mut buf).unwrap();
        assert_eq!(sets.len(), 1);
        let got: Vec<_> = sets[0].records.iter().map(|r| r.value.clone()).collect();
        assert_eq!(got, values.into_iter().map(Some).collect::<Vec<_>>());
        assert!(sets[0].records.iter().all(|r| r.producer_id == -1));
        assert_eq!(sets[0].records[4].offset, 4);
    }
}
