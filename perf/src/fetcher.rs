//! The consumer side: fetchers that follow partitions from a start offset.
//!
//! Consumer `c` of `C` follows the partitions `p` with `p % C == c`, with
//! one connection and one outstanding Fetch per leader node, as a Kafka
//! consumer does. No consumer group: offsets are the fetcher's own. Each
//! record's value bytes are counted; in end-to-end mode the intended send
//! time the producer stamped into the value gives the record's latency.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::batch::{for_each_record, split_batches};
use crate::cluster::{Cluster, TopicLayout};
use crate::connection::Connection;
use crate::control::RunControl;
use crate::error::{code_name, PerfError, Result};
use crate::latency::LatencyHistogram;
use crate::producer::STAMP_LEN;
use crate::schedule::Clock;
use crate::throughput::Timeline;

/// How the consumers fetch.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub consumers: usize,
    pub max_wait: Duration,
    pub fetch_max_bytes: i32,
    pub partition_max_bytes: i32,
    pub request_timeout: Duration,
    /// Read the intended send time stamped in each value (e2e).
    pub stamps: bool,
}

impl Default for FetchSettings {
    fn default() -> Self {
        // librdkafka's defaults: fetch.wait.max.ms, fetch.max.bytes,
        // max.partition.fetch.bytes.
        FetchSettings {
            consumers: 1,
            max_wait: Duration::from_millis(500),
            fetch_max_bytes: 50 << 20,
            partition_max_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
            stamps: false,
        }
    }
}

/// What the consumers measured.
#[derive(Debug, Default)]
pub struct ConsumeStats {
    pub e2e: LatencyHistogram,
    pub timeline: Timeline,
    /// Measured records and value bytes.
    pub records: u64,
    pub bytes: u64,
    pub errors: BTreeMap<String, u64>,
    pub failed_fetches: u64,
    pub last_record_ns: u64,
}

struct Shared {
    settings: FetchSettings,
    topic: TopicName,
    clock: Clock,
    control: Arc<RunControl>,
    stop: Arc<AtomicBool>,
    measure_start_ns: u64,
    stats: Mutex<ConsumeStats>,
}

/// Handle on running consumers.
pub struct Consumers {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumers {
    /// Connects and starts fetching from `offsets`; records that arrive
    /// before `measure_start_ns` (or, with stamps, were sent before it)
    /// are not measured.
    pub async fn start(
        cluster: &Cluster,
        layout: &TopicLayout,
        settings: &FetchSettings,
        offsets: &HashMap<i32, i64>,
        clock: Clock,
        control: Arc<RunControl>,
        measure_start_ns: u64,
    ) -> Result<Consumers> {
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            topic: TopicName(StrBytes::from_string(layout.name.clone())),
            clock,
            control,
            stop: Arc::new(AtomicBool::new(false)),
            measure_start_ns,
            stats: Mutex::new(ConsumeStats::default()),
        });
        let consumers = settings.consumers.max(1);
        let mut tasks = Vec::new();
        for c in 0..consumers {
            let mine: Vec<i32> = (0..layout.partitions() as i32)
                .filter(|p| *p as usize % consumers == c)
                .collect();
            for (leader, parts) in layout.by_leader(&mine) {
                let addr = cluster
                    .node_addr(leader)
                    .ok_or_else(|| PerfError::NoLeader {
                        topic: layout.name.clone(),
                        partition: parts[0],
                    })?;
                let conn = Connection::open(addr).await?;
                let positions: Vec<(i32, i64)> = parts
                    .iter()
                    .map(|p| (*p, offsets.get(p).copied().unwrap_or(0)))
                    .collect();
                tasks.push(tokio::spawn(fetch_loop(conn, positions, shared.clone())));
            }
        }
        Ok(Consumers { shared, tasks })
    }

    /// Asks the fetchers to stop after their current Fetch and waits.
    pub async fn stop(self) -> ConsumeStats {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn fetch_loop(conn: Arc<Connection>, mut positions: Vec<(i32, i64)>, shared: Arc<Shared>) {
    let s = &shared.settings;
    let mut partition_max = s.partition_max_bytes;
    let timeout = s.request_timeout + s.max_wait;
    while !shared.stop.load(Ordering::Relaxed) && !shared.control.stopped() {
        let req = fetch_request(&shared, &positions, partition_max);
        let resp = match conn.call(&req, timeout).await {
            Ok(r) => r,
            Err(e) => {
                fail(&shared, e.to_string());
                return;
            }
        };
        match absorb(&shared, &resp, &mut positions) {
            Ok(Progress::Advanced) | Ok(Progress::Empty) => {}
            Ok(Progress::TooSmall) => {
                // A batch larger than the partition limit: ask for more.
                partition_max = partition_max
                    .saturating_mul(2)
                    .min(s.fetch_max_bytes.max(partition_max));
            }
            Err(e) => {
                fail(&shared, e);
                return;
            }
        }
    }
}

fn fail(shared: &Shared, reason: String) {
    let mut stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    stats.failed_fetches += 1;
    *stats.errors.entry(reason.clone()).or_default() += 1;
    drop(stats);
    shared.control.abort(format!(
        "Fetch from {} failed: {reason}",
        shared.topic.0.as_str()
    ));
}

fn fetch_request(shared: &Shared, positions: &[(i32, i64)], partition_max: i32) -> FetchRequest {
    let s = &shared.settings;
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(s.max_wait.as_millis() as i32)
        .with_min_bytes(1)
        .with_max_bytes(s.fetch_max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(shared.topic.clone())
            .with_partitions(
                positions
                    .iter()
                    .map(|&(p, offset)| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_current_leader_epoch(-1)
                            .with_fetch_offset(offset)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(partition_max)
                    })
                    .collect(),
            )])
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Advanced,
    Empty,
    /// Bytes came back but not one whole batch.
    TooSmall,
}

/// Counts the records of one Fetch response and moves the positions on.
fn absorb(
    shared: &Shared,
    resp: &FetchResponse,
    positions: &mut [(i32, i64)],
) -> std::result::Result<Progress, String> {
    if resp.error_code != 0 {
        return Err(code_name(resp.error_code));
    }
    let mut progress = Progress::Empty;
    let now = shared.clock.now_ns();
    let now_epoch = shared.clock.epoch_ns(now);
    let counting = now >= shared.measure_start_ns;
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut e2e = LatencyHistogram::default();
    let mut stamped = 0u64;
    let mut stamped_bytes = 0u64;
    for t in &resp.responses {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(format!(
                    "partition {}: {}",
                    p.partition_index,
                    code_name(p.error_code)
                ));
            }
            let Some(pos) = positions
                .iter_mut()
                .find(|(id, _)| *id == p.partition_index)
            else {
                continue;
            };
            let Some(data) = p.records.as_ref().filter(|r| !r.is_empty()) else {
                continue;
            };
            let batches = split_batches(data).map_err(|e| e.to_string())?;
            if batches.is_empty() {
                progress = Progress::TooSmall;
                continue;
            }
            for (info, batch) in &batches {
                if info.next_offset() <= pos.1 {
                    continue;
                }
                let from = pos.1;
                for_each_record(info, batch, |r| {
                    // A fetch may start inside a batch: skip what came before.
                    if r.offset < from {
                        return;
                    }
                    let value = r.value.unwrap_or_default();
                    records += 1;
                    bytes += value.len() as u64;
                    if shared.settings.stamps && value.len() >= STAMP_LEN {
                        let mut a = [0u8; STAMP_LEN];
                        a.copy_from_slice(&value[..STAMP_LEN]);
                        let sent_epoch = u64::from_be_bytes(a);
                        if shared.clock.run_ns(sent_epoch) >= shared.measure_start_ns {
                            e2e.record_ns(now_epoch.saturating_sub(sent_epoch));
                            stamped += 1;
                            stamped_bytes += value.len() as u64;
                        }
                    }
                })
                .map_err(|e| e.to_string())?;
                pos.1 = info.next_offset();
                progress = Progress::Advanced;
            }
        }
    }
    shared
        .control
        .consumed
        .fetch_add(records, Ordering::Relaxed);
    shared
        .control
        .consumed_bytes
        .fetch_add(bytes, Ordering::Relaxed);
    let mut stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    if shared.settings.stamps {
        // End-to-end: a record is measured if it was sent after warm-up.
        stats.e2e.add(&e2e);
        if stamped > 0 {
            stats.records += stamped;
            stats.bytes += stamped_bytes;
            let since = now.saturating_sub(shared.measure_start_ns);
            stats.timeline.add(since, stamped, stamped_bytes);
            stats.last_record_ns = now;
        }
    } else if counting && records > 0 {
        stats.records += records;
        stats.bytes += bytes;
        stats
            .timeline
            .add(now - shared.measure_start_ns, records, bytes);
        stats.last_record_ns = now;
    }
    Ok(progress)
}
