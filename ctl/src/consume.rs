//! `brokerctl consume`: Fetch from each partition's leader and print the
//! records, until `-n` records are printed or `--timeout-ms` passes with
//! nothing new.
//!
//! No consumer group: positions live only in this process and nothing is
//! committed. Reads are READ_UNCOMMITTED (records of aborted transactions
//! show too; control records never do). A fetch response's trailing
//! partial batch is left for the next fetch, never decoded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use clap::Args;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest};
use kafka_protocol::records::{Record, RecordBatchDecoder};
use serde_json::{json, Value};

use crate::client::{topic_name, Client, TopicLayout, EARLIEST, LATEST};
use crate::error::{error_name, is_retriable, CtlError, Result};
use crate::output::{text_or_null, Output, StreamTable};

const MAX_WAIT_MS: i32 = 500;
const PARTITION_MAX_BYTES: i32 = 1 << 20;
const FETCH_MAX_BYTES: i32 = 16 << 20;
/// Record batch header: base offset (8), length (4), then the length's
/// worth; lastOffsetDelta sits at bytes 23..27, the magic byte at 16.
const BATCH_HEADER: usize = 12;
const LAST_OFFSET_DELTA_AT: usize = 23;
const MAGIC_AT: usize = 16;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    topic: String,
    /// Only this partition (default: all).
    #[arg(short = 'p', long)]
    partition: Option<i32>,
    /// Where to start: `earliest`, `latest` or an offset.
    #[arg(short = 'o', long, default_value = "earliest", value_parser = parse_start)]
    offset: Start,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Stop when this long passes with no new record (0: never).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    Offset(i64),
}

pub fn parse_start(s: &str) -> std::result::Result<Start, String> {
    match s {
        "earliest" => Ok(Start::Earliest),
        "latest" => Ok(Start::Latest),
        n => n
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Start::Offset)
            .ok_or_else(|| format!("expected earliest, latest or an offset, got {s:?}")),
    }
}

pub fn run(client: &mut Client, out: &Output, args: ConsumeArgs) -> Result<()> {
    let parts = args.partition.map(|p| vec![p]);
    let mut layout = client.topic(&args.topic)?;
    let wanted = parts.clone().unwrap_or_else(|| layout.indexes());
    for &p in &wanted {
        layout.partition(p)?;
    }
    let mut positions: BTreeMap<i32, i64> = match args.offset {
        Start::Earliest => {
            client
                .list_offsets_retrying(&args.topic, Some(&wanted), EARLIEST)?
                .1
        }
        Start::Latest => {
            client
                .list_offsets_retrying(&args.topic, Some(&wanted), LATEST)?
                .1
        }
        Start::Offset(n) => wanted.iter().map(|&p| (p, n)).collect(),
    };
    let mut printer = Printer {
        out: *out,
        topic: args.topic.clone(),
        table: StreamTable::new(&[("PARTITION", 9), ("OFFSET", 8), ("KEY", 12), ("VALUE", 0)]),
        printed: 0,
    };
    let limit = args.count.unwrap_or(u64::MAX);
    let idle_limit = (args.timeout_ms > 0).then(|| Duration::from_millis(args.timeout_ms));
    let mut last_news = Instant::now();
    while printer.printed < limit {
        let before = printer.printed;
        fetch_round(client, &mut layout, &mut positions, &mut printer, limit)?;
        if printer.printed > before {
            last_news = Instant::now();
        } else if idle_limit.is_some_and(|idle| last_news.elapsed() >= idle) {
            break;
        }
    }
    Ok(())
}

struct Printer {
    out: Output,
    topic: String,
    table: StreamTable,
    printed: u64,
}

impl Printer {
    fn print(&mut self, partition: i32, r: &Record) {
        self.printed += 1;
        if self.out.json {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), text_or_null(v.as_deref())))
                .collect();
            self.out.json_line(&json!({
                "topic": self.topic,
                "partition": partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": text_or_null(r.key.as_deref()),
                "value": text_or_null(r.value.as_deref()),
                "headers": headers,
            }));
            return;
        }
        let show = |b: Option<&Bytes>| {
            b.map_or("-".to_string(), |b| String::from_utf8_lossy(b).into_owned())
        };
        let row = self.table.format_row(&[
            partition.to_string(),
            r.offset.to_string(),
            show(r.key.as_ref()),
            show(r.value.as_ref()),
        ]);
        self.out.text(&row);
    }
}

/// One Fetch to every leader of the partitions still read.
fn fetch_round(
    client: &mut Client,
    layout: &mut TopicLayout,
    positions: &mut BTreeMap<i32, i64>,
    printer: &mut Printer,
    limit: u64,
) -> Result<()> {
    let partitions: Vec<i32> = positions.keys().copied().collect();
    let mut stale = false;
    for (leader, parts) in layout.by_leader(&partitions)? {
        let req = fetch_request(layout, &parts, positions);
        let resp = client.call(Some(leader), &req)?;
        CtlError::check(|| "Fetch".into(), resp.error_code, None)?;
        for p in resp.responses.iter().flat_map(|t| t.partitions.iter()) {
            let index = p.partition_index;
            if p.error_code != 0 {
                if is_retriable(p.error_code) {
                    stale = true;
                    continue;
                }
                return Err(CtlError::Failed(format!(
                    "fetch {}-{index} at offset {}: {}",
                    layout.name,
                    positions.get(&index).copied().unwrap_or(-1),
                    error_name(p.error_code)
                )));
            }
            let Some(position) = positions.get_mut(&index) else {
                continue;
            };
            let records = p.records.clone().unwrap_or_default();
            for batch in split_batches(records) {
                read_batch(&layout.name, index, batch, position, printer, limit)?;
                if printer.printed >= limit {
                    return Ok(());
                }
            }
        }
    }
    if stale {
        std::thread::sleep(Duration::from_millis(200));
        *layout = client.topic(&layout.name)?;
    }
    Ok(())
}

fn fetch_request(
    layout: &TopicLayout,
    parts: &[i32],
    positions: &BTreeMap<i32, i64>,
) -> FetchRequest {
    let partitions = parts
        .iter()
        .map(|&p| {
            FetchPartition::default()
                .with_partition(p)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(positions.get(&p).copied().unwrap_or(0))
                .with_log_start_offset(-1)
                .with_partition_max_bytes(PARTITION_MAX_BYTES)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(&layout.name))
            .with_topic_id(layout.id)
            .with_partitions(partitions)])
}

/// The complete batches in a Fetch answer's records; a trailing partial
/// batch (the answer was cut at the size limit) is dropped.
fn split_batches(mut records: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while records.len() >= BATCH_HEADER {
        let len = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
        let Ok(len) = usize::try_from(len) else {
            break;
        };
        let total = BATCH_HEADER.saturating_add(len);
        if records.len() < total {
            break;
        }
        out.push(records.split_to(total));
    }
    out
}

/// Prints the records of one batch at or after `position`, and moves
/// `position` past the batch.
fn read_batch(
    topic: &str,
    partition: i32,
    batch: Bytes,
    position: &mut i64,
    printer: &mut Printer,
    limit: u64,
) -> Result<()> {
    let corrupt = |why: String| CtlError::Failed(format!("{topic}-{partition}: {why}"));
    if batch.len() < LAST_OFFSET_DELTA_AT + 4 {
        return Err(corrupt(format!("record batch of {} bytes", batch.len())));
    }
    if batch[MAGIC_AT] != 2 {
        return Err(corrupt(format!(
            "record batch magic {} (only v2 is read)",
            batch[MAGIC_AT]
        )));
    }
    let base = (&batch[0..8]).get_i64();
    let delta = (&batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]).get_i32();
    let mut buf = batch;
    let set = RecordBatchDecoder::decode(&mut buf)
        .map_err(|e| corrupt(format!("undecodable batch at offset {base}: {e}")))?;
    for r in set.records.iter().filter(|r| !r.control) {
        if r.offset < *position {
            continue;
        }
        printer.print(partition, r);
        *position = r.offset + 1;
        if printer.printed >= limit {
            return Ok(());
        }
    }
    *position = (*position).max(base.saturating_add(i64::from(delta)) + 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};

    fn batch(base: i64, n: usize) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: base + i as i64,
                sequence: i as i32 - 1,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(format!("v{}", base + i as i64))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        buf.freeze()
    }

    #[test]
    fn partial_trailing_batch_is_left() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&batch(0, 3));
        all.extend_from_slice(&batch(3, 2));
        let full = all.len();
        all.extend_from_slice(&batch(5, 2)[..20]);
        let got = split_batches(all.freeze());
        assert_eq!(got.len(), 2);
        assert_eq!(got.iter().map(Bytes::len).sum::<usize>(), full);
        assert!(split_batches(Bytes::from_static(&[0; 11])).is_empty());
        let mut negative = vec![0u8; 12];
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(split_batches(Bytes::from(negative)).is_empty());
    }

    #[test]
    fn records_before_the_position_are_skipped_and_count_stops() {
        let mut printer = Printer {
            out: Output { json: true },
            topic: "t".into(),
            table: StreamTable::new(&[]),
            printed: 0,
        };
        let mut position = 1;
        read_batch("t", 0, batch(0, 4), &mut position, &mut printer, 2).unwrap();
        assert_eq!((printer.printed, position), (2, 3));
        read_batch("t", 0, batch(0, 4), &mut position, &mut printer, 10).unwrap();
        assert_eq!((printer.printed, position), (3, 4));
    }

    #[test]
    fn starts_parse() {
        assert_eq!(parse_start("earliest"), Ok(Start::Earliest));
        assert_eq!(parse_start("latest"), Ok(Start::Latest));
        assert_eq!(parse_start("42"), Ok(Start::Offset(42)));
        assert!(parse_start("-1").is_err());
    }
}
