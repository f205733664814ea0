//! Metrics of one shard: what its request path counts as it goes (requests
//! and errors by API, request latency, per-partition bytes and records,
//! connections, WAL append latency, upload rounds), and the `ShardReport`
//! it hands over at scrape time with everything else read off its parts
//! (WAL slice, object store, caches, uploader, groups, partitions).
//!
//! Counters are plain `Cell`s and `RefCell` maps on the shard's own core:
//! no locks, no atomics, no cross-core traffic on the hot path. Reports
//! travel over the control mesh only when `/metrics` or the admin API is
//! read, and are merged and encoded on shard 0 (`encode`).
//!
//! Never holds a borrow across an `.await` (nothing here is async).

pub mod encode;
pub mod errors;
pub mod report;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use storage::histogram::{HistogramSnapshot, LatencyHistogram, StageHistogram};

use crate::partition::PartitionKey;

/// Bytes and records a partition took in (acknowledged produce) and gave
/// out (fetch responses), since this shard started leading it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionIo {
    pub bytes_in: u64,
    pub records_in: u64,
    pub bytes_out: u64,
    pub records_out: u64,
}

#[derive(Debug, Default)]
struct ApiStats {
    requests: u64,
    latency: LatencyHistogram,
}

/// The stages of one API's requests, as the connection loop reports them
/// once a response is written (HDR: fine enough for tens of microseconds).
#[derive(Debug, Default)]
struct ApiStages {
    frame_read: StageHistogram,
    decode: StageHistogram,
    handle: StageHistogram,
    encode: StageHistogram,
    write_wait: StageHistogram,
    write: StageHistogram,
    /// From the frame's length prefix read to the response written: the
    /// broker's own share of a request's latency.
    total: StageHistogram,
}

/// APIs whose stages are kept: the hot path.
const STAGED_APIS: [ApiKey; 2] = [ApiKey::Produce, ApiKey::Fetch];

#[derive(Debug, Default)]
pub struct ShardMetrics {
    apis: RefCell<HashMap<i16, ApiStats>>,
    /// `(api key, error code)` -> occurrences (per partition or entry).
    errors: RefCell<HashMap<(i16, i16), u64>>,
    partitions: RefCell<HashMap<PartitionKey, PartitionIo>>,
    /// The same, for all partitions the shard ever led.
    totals: Cell<PartitionIo>,
    connections_open: Cell<u64>,
    connections_total: Cell<u64>,
    /// From an append's WAL write being queued to its flush completing.
    wal_append: LatencyHistogram,
    /// One upload round: snapshot, put, commit.
    upload: LatencyHistogram,
    slow_requests: Cell<u64>,
    /// Responses throttled by a client quota, and their throttle time,
    /// Produce then Fetch.
    throttled: [Cell<(u64, u64)>; 2],
    stages: [ApiStages; STAGED_APIS.len()],
    /// Produce only: checking a partition's batches (CRC, sizes, keys).
    validate: StageHistogram,
}

impl ShardMetrics {
    pub fn new() -> ShardMetrics {
        ShardMetrics::default()
    }

    /// One request answered (or, for acks=0, done): its API, how long it
    /// took from decoded to response ready, and the error codes it carried.
    pub fn request_done(&self, api: ApiKey, took: Duration, resp: Option<&ResponseKind>) {
        let key = api as i16;
        {
            let mut apis = self.apis.borrow_mut();
            let s = apis.entry(key).or_default();
            s.requests += 1;
            s.latency.record(took);
        }
        if let Some(resp) = resp {
            let mut errors = self.errors.borrow_mut();
            errors::for_each_error(resp, |code| {
                *errors.entry((key, code)).or_default() += 1;
            });
        }
    }

    /// A response was written: where its request's time went.
    pub fn written(&self, api: ApiKey, s: &net::Stages) {
        let Some(i) = STAGED_APIS.iter().position(|a| *a == api) else {
            return;
        };
        let h = &self.stages[i];
        h.frame_read.record(s.frame_read);
        h.decode.record(s.decode);
        h.handle.record(s.handle);
        h.encode.record(s.encode);
        h.write_wait.record(s.write_wait);
        h.write.record(s.write);
        h.total
            .record(s.frame_read + s.decode + s.handle + s.encode + s.write_wait + s.write);
    }

    pub fn validated(&self, took: Duration) {
        self.validate.record(took);
    }

    pub fn throttled(&self, api: ApiKey, ms: u64) {
        let i = usize::from(api == ApiKey::Fetch);
        let (n, total) = self.throttled[i].get();
        self.throttled[i].set((n + 1, total + ms));
    }

    pub fn slow_request(&self) {
        self.slow_requests.set(self.slow_requests.get() + 1);
    }

    pub fn connection_opened(&self) {
        self.connections_open.set(self.connections_open.get() + 1);
        self.connections_total.set(self.connections_total.get() + 1);
    }

    pub fn connection_closed(&self) {
        self.connections_open
            .set(self.connections_open.get().saturating_sub(1));
    }

    pub fn produced(&self, key: PartitionKey, bytes: u64, records: u64) {
        let mut p = self.partitions.borrow_mut();
        let io = p.entry(key).or_default();
        io.bytes_in += bytes;
        io.records_in += records;
        let mut t = self.totals.get();
        t.bytes_in += bytes;
        t.records_in += records;
        self.totals.set(t);
    }

    pub fn fetched(&self, key: PartitionKey, batches: &[Bytes]) {
        let bytes: usize = batches.iter().map(Bytes::len).sum();
        if bytes == 0 {
            return;
        }
        let records: u64 = batches.iter().map(|b| records_in(b)).sum();
        let mut p = self.partitions.borrow_mut();
        let io = p.entry(key).or_default();
        io.bytes_out += bytes as u64;
        io.records_out += records;
        let mut t = self.totals.get();
        t.bytes_out += bytes as u64;
        t.records_out += records;
        self.totals.set(t);
    }

    pub fn wal_appended(&self, took: Duration) {
        self.wal_append.record(took);
    }

    pub fn upload_round(&self, took: Duration) {
        self.upload.record(took);
    }

    /// This shard's counters, for a report. Partitions not in `led` are
    /// forgotten (deleted or moved away), so the map stays as large as the
    /// partitions the shard leads.
    pub fn snapshot(&self, led: &dyn Fn(&PartitionKey) -> bool) -> CountersSnapshot {
        self.partitions.borrow_mut().retain(|k, _| led(k));
        let mut apis: Vec<_> = self
            .apis
            .borrow()
            .iter()
            .map(|(k, s)| (*k, s.requests, s.latency.snapshot()))
            .collect();
        apis.sort_by_key(|a| a.0);
        let mut errors: Vec<_> = self
            .errors
            .borrow()
            .iter()
            .map(|(&(a, c), &n)| (a, c, n))
            .collect();
        errors.sort_unstable();
        CountersSnapshot {
            apis,
            errors,
            partitions: self
                .partitions
                .borrow()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect(),
            totals: self.totals.get(),
            connections_open: self.connections_open.get(),
            connections_total: self.connections_total.get(),
            wal_append: self.wal_append.snapshot(),
            upload: self.upload.snapshot(),
            slow_requests: self.slow_requests.get(),
            throttled: [self.throttled[0].get(), self.throttled[1].get()],
            stages: self.stage_snapshots(),
        }
    }
}

impl ShardMetrics {
    fn stage_snapshots(&self) -> Vec<StageSnapshot> {
        let mut out = Vec::new();
        for (api, h) in STAGED_APIS.iter().zip(&self.stages) {
            let name = format!("{api:?}");
            for (stage, hist) in [
                ("frame_read", &h.frame_read),
                ("decode", &h.decode),
                ("handle", &h.handle),
                ("encode", &h.encode),
                ("write_wait", &h.write_wait),
                ("write", &h.write),
                ("total", &h.total),
            ] {
                out.push((name.clone(), stage, hist.snapshot()));
            }
        }
        out.push(("Produce".into(), "validate", self.validate.snapshot()));
        out
    }
}

/// `(api, stage, histogram)`.
pub type StageSnapshot = (String, &'static str, hdrhistogram::Histogram<u64>);

/// The counters of a shard at one moment (plain data, `Send`).
#[derive(Debug, Clone, Default)]
pub struct CountersSnapshot {
    /// `(api key, requests, latency)`, by api key.
    pub apis: Vec<(i16, u64, HistogramSnapshot)>,
    /// `(api key, error code, count)`.
    pub errors: Vec<(i16, i16, u64)>,
    pub partitions: HashMap<PartitionKey, PartitionIo>,
    pub totals: PartitionIo,
    pub connections_open: u64,
    pub connections_total: u64,
    pub wal_append: HistogramSnapshot,
    pub upload: HistogramSnapshot,
    pub slow_requests: u64,
    /// `(responses, total ms)` throttled by quotas: Produce, Fetch.
    pub throttled: [(u64, u64); 2],
    pub stages: Vec<StageSnapshot>,
}

/// Records in a run of record batches, read from their headers (a batch
/// cut short at the end counts if its header is whole).
pub fn records_in(mut batches: &[u8]) -> u64 {
    // baseOffset(8) batchLength(4) ... recordsCount at byte 57 (v2).
    const COUNT_AT: usize = 57;
    let mut n = 0u64;
    while batches.len() >= COUNT_AT + 4 {
        let len = i32::from_be_bytes(batches[8..12].try_into().expect("4 bytes"));
        let count =
            i32::from_be_bytes(batches[COUNT_AT..COUNT_AT + 4].try_into().expect("4 bytes"));
        n += u64::try_from(count).unwrap_or(0);
        let Some(total) = usize::try_from(len).ok().and_then(|l| l.checked_add(12)) else {
            break;
        };
        if total > batches.len() {
            break;
        }
        batches = &batches[total..];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: i32, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[8..12].copy_from_slice(&((len - 12) as i32).to_be_bytes());
        b[57..61].copy_from_slice(&records.to_be_bytes());
        b
    }

    #[test]
    fn records_are_counted_from_batch_headers() {
        let mut run = batch(3, 80);
        run.extend(batch(5, 100));
        assert_eq!(records_in(&run), 8);
        // A cut-off last batch with a whole header still counts.
        run.extend(&batch(2, 90)[..70]);
        assert_eq!(records_in(&run), 10);
        assert_eq!(records_in(&run[..30]), 0);
    }

    #[test]
    fn partitions_no_longer_led_are_forgotten() {
        let m = ShardMetrics::new();
        let (a, b) = ((uuid::Uuid::from_u128(1), 0), (uuid::Uuid::from_u128(2), 0));
        m.produced(a, 100, 2);
        m.produced(b, 10, 1);
        m.fetched(a, &[Bytes::from(batch(2, 100))]);
        let s = m.snapshot(&|k| *k == a);
        assert_eq!(s.partitions.len(), 1);
        assert_eq!(
            s.partitions[&a],
            PartitionIo {
                bytes_in: 100,
                records_in: 2,
                bytes_out: 100,
                records_out: 2
            }
        );
    }

    #[test]
    fn requests_and_errors_are_counted_by_api() {
        use kafka_protocol::messages::{HeartbeatResponse, ResponseKind};
        let m = ShardMetrics::new();
        let mut hb = HeartbeatResponse::default();
        hb.error_code = 27; // REBALANCE_IN_PROGRESS
        let resp = ResponseKind::Heartbeat(hb);
        m.request_done(ApiKey::Heartbeat, Duration::from_micros(300), Some(&resp));
        m.request_done(ApiKey::Heartbeat, Duration::from_micros(300), None);
        let s = m.snapshot(&|_| true);
        assert_eq!(s.apis.len(), 1);
        assert_eq!(s.apis[0].0, ApiKey::Heartbeat as i16);
        assert_eq!(s.apis[0].1, 2);
        assert_eq!(s.apis[0].2.count, 2);
        assert_eq!(s.errors, vec![(ApiKey::Heartbeat as i16, 27, 1)]);
    }
}
