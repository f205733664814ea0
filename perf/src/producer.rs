//! The producer: record generation on its own thread, batching per
//! partition, and pipelined Produce requests per leader node.
//!
//! Each producer has a generator thread (precise pacing: tokio's timers
//! tick in milliseconds, a target rate needs microseconds) that appends
//! records to per-partition batches and seals a batch when it is full or
//! has lingered long enough. Sealed batches go to one sender task per
//! leader node, which packs the batches that are ready into one Produce
//! request (one batch per partition) and keeps up to `max_in_flight`
//! requests outstanding on its connection. A full pipeline blocks the
//! generator: at a fixed rate the records it is late with still count from
//! their intended time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rand::{RngCore, SeedableRng};
use tokio::sync::{mpsc, Semaphore};

use crate::batch::{BatchBuilder, Compression, ProducerStamp};
use crate::cluster::{Cluster, TopicLayout};
use crate::connection::Connection;
use crate::control::RunControl;
use crate::error::{code_name, PerfError, Result};
use crate::latency::LatencyHistogram;
use crate::partitioner::{KeyDistribution, Partitioner};
use crate::schedule::{Clock, Schedule};
use crate::throughput::Timeline;

/// Largest Produce request we build from several ready batches.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// How often a ready batch is offered again while its sender is busy.
const READY_POLL_NS: u64 = 100_000;
/// Bytes at the start of each value that carry its intended send time.
pub const STAMP_LEN: usize = 8;

/// Everything that shapes a produce workload.
#[derive(Debug, Clone)]
pub struct ProduceSettings {
    pub topic: String,
    pub record_size: usize,
    pub keys: KeyDistribution,
    pub acks: i16,
    pub batch_size: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
    pub producers: usize,
    pub compression: Compression,
    /// Records per second over all producers; `None` for max rate.
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    /// Measured records (after warm-up) over all producers.
    pub records: Option<u64>,
    pub warmup: Duration,
    pub request_timeout: Duration,
    /// Go on after a rejected batch instead of stopping the run.
    pub keep_going: bool,
    /// Idempotent producers: a producer id per producer, sequences per
    /// partition.
    pub idempotent: bool,
}

/// What the producers measured.
#[derive(Debug, Default)]
pub struct ProduceStats {
    pub latency: LatencyHistogram,
    pub timeline: Timeline,
    /// Acknowledged measured records and their value bytes.
    pub records: u64,
    pub bytes: u64,
    /// Records whose batch failed (warm-up included).
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub last_ack_ns: u64,
}

/// The result of a produce run.
#[derive(Debug)]
pub struct ProduceOutcome {
    pub stats: ProduceStats,
    /// Run time at which measurement started (end of warm-up).
    pub measure_start_ns: u64,
}

impl ProduceOutcome {
    /// Length of the measured window: to the last acknowledgement.
    pub fn window_ns(&self) -> u64 {
        self.stats.last_ack_ns.saturating_sub(self.measure_start_ns)
    }
}

/// A batch ready to send, with what is needed to measure it.
#[derive(Debug)]
struct Sealed {
    partition: i32,
    bytes: Bytes,
    /// Latency origin (run ns) of every record.
    origins: Vec<u64>,
    record_size: usize,
}

struct OpenBatch {
    builder: BatchBuilder,
    origins: Vec<u64>,
    deadline_ns: u64,
}

/// A sender's in-flight slots, as its generator sees them.
struct SenderSlots {
    permits: Arc<Semaphore>,
    /// The sender holds a slot and waits for a batch.
    waiting: AtomicBool,
}

impl SenderSlots {
    /// Whether a batch handed over now would be sent at once.
    fn can_send(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) || self.permits.available_permits() > 0
    }
}

/// Shared by a producer's tasks.
struct Shared {
    settings: ProduceSettings,
    clock: Clock,
    control: Arc<RunControl>,
    stats: Mutex<ProduceStats>,
    measure_start_ns: u64,
    topic: TopicName,
}

/// Runs the producers to the end of the workload.
pub async fn run(
    cluster: &Cluster,
    layout: &TopicLayout,
    settings: &ProduceSettings,
    clock: Clock,
    control: Arc<RunControl>,
) -> Result<ProduceOutcome> {
    let producers = settings.producers.max(1);
    let mut nodes: Vec<i32> = layout.leaders.clone();
    nodes.sort_unstable();
    nodes.dedup();
    let node_index: HashMap<i32, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let route: Vec<usize> = layout.leaders.iter().map(|l| node_index[l]).collect();

    // Connect everything before the clock starts.
    let mut conns = Vec::new();
    for _ in 0..producers {
        let mut per_node = Vec::new();
        for &node in &nodes {
            let addr = cluster.node_addr(node).ok_or_else(|| PerfError::NoLeader {
                topic: layout.name.clone(),
                partition: layout.leaders.iter().position(|&l| l == node).unwrap_or(0) as i32,
            })?;
            per_node.push(Connection::open(addr).await?);
        }
        conns.push(per_node);
    }
    // One producer id per producer, as a client gets at start.
    let mut ids = Vec::new();
    for per_node in &conns {
        ids.push(match settings.idempotent {
            true => Some(init_producer_id(&per_node[0], settings.request_timeout).await?),
            false => None,
        });
    }

    let start_ns = clock.now_ns();
    // Warm-up counts from the clock's start, so consumers started on the
    // same clock measure the same records.
    let measure_start_ns = settings.warmup.as_nanos() as u64;
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        clock,
        control: control.clone(),
        stats: Mutex::new(ProduceStats::default()),
        measure_start_ns,
        topic: TopicName(StrBytes::from_string(layout.name.clone())),
    });
    let end_ns = settings
        .duration
        .map(|d| measure_start_ns + d.as_nanos() as u64);
    let quota = settings.records.map(|n| n.div_ceil(producers as u64));

    let mut senders = Vec::new();
    let mut generators = Vec::new();
    for (p, (per_node, id)) in conns.into_iter().zip(ids).enumerate() {
        let mut txs = Vec::new();
        let mut slots = Vec::new();
        for (n, conn) in per_node.into_iter().enumerate() {
            // Room for one sealed batch per partition of the node: enough
            // to fill a request, little enough that records do not queue
            // in the client at max rate.
            let led = route.iter().filter(|&&r| r == n).count();
            let (tx, rx) = mpsc::channel(led.clamp(1, 64));
            let free = Arc::new(SenderSlots {
                permits: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
                waiting: AtomicBool::new(false),
            });
            senders.push(tokio::spawn(send_loop(
                conn,
                rx,
                free.clone(),
                shared.clone(),
            )));
            txs.push(tx);
            slots.push(free);
        }
        let schedule = match settings.rate {
            None => Schedule::MaxRate,
            Some(rate) => {
                let per_producer = rate / producers as f64;
                let offset = (1e9 / rate * p as f64) as u64;
                Schedule::fixed(per_producer, start_ns + offset)
            }
        };
        let generator = Generator {
            shared: shared.clone(),
            schedule,
            partitioner: Partitioner::new(settings.keys, layout.partitions(), p as u64 + 1),
            route: route.clone(),
            txs,
            slots,
            end_ns,
            quota,
            seed: p as u64,
            producer: id,
            sequences: vec![0; route.len()],
        };
        generators.push(tokio::task::spawn_blocking(move || generator.run()));
    }
    for g in generators {
        let _ = g.await;
    }
    for s in senders {
        let _ = s.await;
    }
    let stats = std::mem::take(&mut *lock(&shared.stats));
    Ok(ProduceOutcome {
        stats,
        measure_start_ns,
    })
}

/// InitProducerId without a transactional id: `(producer id, epoch)`.
async fn init_producer_id(conn: &Connection, timeout: Duration) -> Result<(i64, i16)> {
    let req = InitProducerIdRequest::default()
        .with_transaction_timeout_ms(60_000)
        .with_producer_id((-1).into())
        .with_producer_epoch(-1);
    let resp = conn.call(&req, timeout).await?;
    if let Some(e) = PerfError::from_code("InitProducerId", resp.error_code, None) {
        return Err(e);
    }
    Ok((resp.producer_id.0, resp.producer_epoch))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked task poisons the lock; its figures are still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The record-generating side of one producer, run on its own thread.
struct Generator {
    shared: Arc<Shared>,
    schedule: Schedule,
    partitioner: Partitioner,
    route: Vec<usize>,
    txs: Vec<mpsc::Sender<Sealed>>,
    /// Each sender's free in-flight slots.
    slots: Vec<Arc<SenderSlots>>,
    end_ns: Option<u64>,
    quota: Option<u64>,
    seed: u64,
    /// Idempotent: this producer's id and epoch.
    producer: Option<(i64, i16)>,
    /// Next sequence per partition (batches of a partition are sealed and
    /// sent in order, so sequences follow the order the broker sees).
    sequences: Vec<i32>,
}

impl Generator {
    fn run(mut self) {
        let s = &self.shared.settings;
        let record_size = s.record_size;
        let mut value = vec![0u8; record_size];
        rand::rngs::SmallRng::seed_from_u64(self.seed).fill_bytes(&mut value);
        let mut open: Vec<Option<OpenBatch>> = (0..self.route.len()).map(|_| None).collect();
        let linger_ns = s.linger.as_nanos() as u64;
        let batch_size = s.batch_size.max(1);
        let clock = self.shared.clock;
        let measure_start = self.shared.measure_start_ns;
        let mut measured = 0u64;
        let mut i = 0u64;
        loop {
            if self.shared.control.stopped() {
                break;
            }
            let now = clock.now_ns();
            if !self.offer_expired(&mut open, now) {
                break;
            }
            let due = self.schedule.intended_ns(i).unwrap_or(now);
            if self.end_ns.is_some_and(|end| due >= end)
                || self.quota.is_some_and(|q| measured >= q)
            {
                break;
            }
            if due > now {
                // A ready batch whose sender is busy is offered again soon.
                let wake = open
                    .iter()
                    .flatten()
                    .map(|b| {
                        if b.deadline_ns <= now {
                            now + READY_POLL_NS
                        } else {
                            b.deadline_ns
                        }
                    })
                    .min()
                    .map_or(due, |d| d.min(due));
                if wake > now {
                    std::thread::sleep(Duration::from_nanos((wake - now).min(50_000_000)));
                }
                continue;
            }
            let origin = self.schedule.latency_origin_ns(i, now);
            if record_size >= STAMP_LEN {
                value[..STAMP_LEN].copy_from_slice(&clock.epoch_ns(origin).to_be_bytes());
            }
            let (key, partition) = self.partitioner.next(i);
            let slot = &mut open[partition as usize];
            let batch = slot.get_or_insert_with(|| OpenBatch {
                builder: BatchBuilder::with_capacity(batch_size.min(64 << 10)),
                origins: Vec::new(),
                deadline_ns: now + linger_ns,
            });
            if !batch.builder.is_empty()
                && batch.builder.size() + BatchBuilder::record_size_bound(key, &value) > batch_size
            {
                let full = slot.take();
                if !self.seal(partition, full) {
                    break;
                }
                // The sticky partition may have moved: place the record again.
                continue;
            }
            let ts_ms = (clock.epoch_ns(origin) / 1_000_000) as i64;
            batch.builder.append(ts_ms, key, &value);
            batch.origins.push(origin);
            if origin >= measure_start {
                measured += 1;
            }
            self.shared.control.sent.fetch_add(1, Ordering::Relaxed);
            i += 1;
            if batch.builder.size() >= batch_size {
                let full = slot.take();
                if !self.seal(partition, full) {
                    break;
                }
            }
        }
        for (p, slot) in open.iter_mut().enumerate() {
            if !self.seal(p as i32, slot.take()) {
                break;
            }
        }
    }

    /// Hands each batch whose linger time is up to its sender if the
    /// sender has a free in-flight slot. Otherwise the batch stays open and
    /// keeps filling: linger makes a batch ready, the sender takes it when
    /// it can (as the Java client and librdkafka do), so a slow broker gets
    /// fewer, larger batches instead of a queue of small ones. False if the
    /// run ended.
    fn offer_expired(&mut self, open: &mut [Option<OpenBatch>], now: u64) -> bool {
        for (p, slot) in open.iter_mut().enumerate() {
            if slot.as_ref().is_none_or(|b| b.deadline_ns > now) {
                continue;
            }
            let node = self.route[p];
            if !self.slots[node].can_send() {
                continue;
            }
            let Ok(permit) = self.txs[node].try_reserve() else {
                if self.txs[node].is_closed() {
                    return false;
                }
                continue;
            };
            let batch = slot.take();
            let stamp = stamp(self.producer, &mut self.sequences, p as i32, batch.as_ref());
            let Some(sealed) = finish(&self.shared, &mut self.partitioner, p as i32, batch, stamp)
            else {
                return false;
            };
            permit.send(sealed);
        }
        true
    }

    /// Finishes a full batch and hands it to its node's sender, blocking
    /// while the pipeline is full; false if the run ended.
    fn seal(&mut self, partition: i32, batch: Option<OpenBatch>) -> bool {
        if batch.is_none() {
            return true;
        }
        let stamp = stamp(
            self.producer,
            &mut self.sequences,
            partition,
            batch.as_ref(),
        );
        let Some(sealed) = finish(&self.shared, &mut self.partitioner, partition, batch, stamp)
        else {
            return false;
        };
        self.txs[self.route[partition as usize]]
            .blocking_send(sealed)
            .is_ok()
    }
}

/// The producer id, epoch and first sequence of a batch about to be sealed
/// (idempotent producers only); advances the partition's sequence by its
/// record count, wrapping as Kafka's do.
fn stamp(
    producer: Option<(i64, i16)>,
    sequences: &mut [i32],
    partition: i32,
    batch: Option<&OpenBatch>,
) -> Option<ProducerStamp> {
    let (id, epoch) = producer?;
    let count = batch?.builder.count();
    let seq = &mut sequences[partition as usize];
    let sequence = *seq;
    *seq = ((i64::from(*seq) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32;
    Some(ProducerStamp {
        id,
        epoch,
        sequence,
    })
}

/// Closes a batch (header, compression, CRC); `None` if that failed, after
/// aborting the run.
fn finish(
    shared: &Shared,
    partitioner: &mut Partitioner,
    partition: i32,
    batch: Option<OpenBatch>,
    stamp: Option<ProducerStamp>,
) -> Option<Sealed> {
    let batch = batch?;
    partitioner.batch_sealed(partition);
    let s = &shared.settings;
    match batch.builder.finish_as(s.compression, stamp) {
        Ok(bytes) => Some(Sealed {
            partition,
            bytes,
            origins: batch.origins,
            record_size: s.record_size,
        }),
        Err(e) => {
            shared.control.abort(e.to_string());
            None
        }
    }
}

/// Sends one node's batches, keeping up to `max_in_flight` requests open.
async fn send_loop(
    conn: Arc<Connection>,
    mut rx: mpsc::Receiver<Sealed>,
    slots: Arc<SenderSlots>,
    shared: Arc<Shared>,
) {
    let s = &shared.settings;
    let in_flight = s.max_in_flight.max(1);
    let permits = slots.permits.clone();
    let mut carry: Option<Sealed> = None;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let first = match carry.take() {
            Some(b) => b,
            None => {
                slots.waiting.store(true, Ordering::Relaxed);
                let next = rx.recv().await;
                slots.waiting.store(false, Ordering::Relaxed);
                match next {
                    Some(b) => b,
                    None => break,
                }
            }
        };
        let mut size = first.bytes.len();
        let mut partitions: HashSet<i32> = HashSet::from([first.partition]);
        let mut batches = vec![first];
        while size < MAX_REQUEST_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            // Kafka takes one batch per partition per request.
            if !partitions.insert(next.partition) || size + next.bytes.len() > MAX_REQUEST_BYTES {
                carry = Some(next);
                break;
            }
            size += next.bytes.len();
            batches.push(next);
        }
        let req = ProduceRequest::default()
            .with_acks(s.acks)
            .with_timeout_ms(s.request_timeout.as_millis() as i32)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(shared.topic.clone())
                .with_partition_data(
                    batches
                        .iter()
                        .map(|b| {
                            PartitionProduceData::default()
                                .with_index(b.partition)
                                .with_records(Some(b.bytes.clone()))
                        })
                        .collect(),
                )]);
        let fut = match conn.submit(&req, s.acks != 0) {
            Ok(f) => f,
            Err(e) => {
                complete(&shared, batches, Err(e));
                continue;
            }
        };
        let shared = shared.clone();
        let timeout = s.request_timeout + Duration::from_secs(5);
        tokio::spawn(async move {
            let result = fut.wait(timeout).await;
            complete(&shared, batches, result);
            drop(permit);
        });
    }
    // Wait for the responses still outstanding.
    let _ = permits.acquire_many(in_flight as u32).await;
}

/// Records the outcome of one Produce request.
fn complete(shared: &Shared, batches: Vec<Sealed>, result: Result<Option<ProduceResponse>>) {
    let ack_ns = shared.clock.now_ns();
    let control = &shared.control;
    let errors: HashMap<i32, String> = match &result {
        Err(e) => {
            control.abort(e.to_string());
            batches
                .iter()
                .map(|b| (b.partition, e.to_string()))
                .collect()
        }
        Ok(None) => HashMap::new(),
        Ok(Some(resp)) => partition_errors(resp, &batches),
    };
    let mut stats = lock(&shared.stats);
    for b in batches {
        let n = b.origins.len() as u64;
        if let Some(err) = errors.get(&b.partition) {
            stats.failed += n;
            *stats.errors.entry(err.clone()).or_default() += n;
            control.failed.fetch_add(n, Ordering::Relaxed);
            if !shared.settings.keep_going {
                control.abort(format!(
                    "Produce to {}-{} failed: {err}",
                    shared.topic.0.as_str(),
                    b.partition
                ));
            }
            continue;
        }
        control.acked.fetch_add(n, Ordering::Relaxed);
        control
            .acked_bytes
            .fetch_add(n * b.record_size as u64, Ordering::Relaxed);
        let mut measured = 0;
        for &origin in &b.origins {
            if origin >= shared.measure_start_ns {
                stats.latency.record_ns(ack_ns.saturating_sub(origin));
                measured += 1;
            }
        }
        if measured > 0 {
            let bytes = measured * b.record_size as u64;
            stats.records += measured;
            stats.bytes += bytes;
            let since = ack_ns.saturating_sub(shared.measure_start_ns);
            stats.timeline.add(since, measured, bytes);
            stats.last_ack_ns = stats.last_ack_ns.max(ack_ns);
        }
    }
}

/// The error of each partition the broker did not accept.
fn partition_errors(resp: &ProduceResponse, batches: &[Sealed]) -> HashMap<i32, String> {
    let mut answered = HashMap::new();
    for t in &resp.responses {
        for p in &t.partition_responses {
            answered.insert(p.index, (p.error_code, p.error_message.clone()));
        }
    }
    let mut out = HashMap::new();
    for b in batches {
        match answered.get(&b.partition) {
            None => {
                out.insert(
                    b.partition,
                    "partition missing from Produce response".to_string(),
                );
            }
            Some((0, _)) => {}
            Some((code, msg)) => {
                let mut text = code_name(*code);
                if let Some(m) = msg.as_ref().filter(|m| !m.is_empty()) {
                    text = format!("{text}: {}", m.as_str());
                }
                out.insert(b.partition, text);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    fn sealed(partition: i32) -> Sealed {
        Sealed {
            partition,
            bytes: Bytes::new(),
            origins: vec![0, 1],
            record_size: 10,
        }
    }

    #[test]
    fn partition_errors_name_the_code_and_catch_missing_partitions() {
        let resp = ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_partition_responses(vec![
                PartitionProduceResponse::default().with_index(0),
                PartitionProduceResponse::default()
                    .with_index(1)
                    .with_error_code(6)
                    .with_error_message(Some(StrBytes::from_static_str("moved"))),
            ])]);
        let errs = partition_errors(&resp, &[sealed(0), sealed(1), sealed(2)]);
        assert_eq!(errs.len(), 2);
        assert!(errs[&1].contains("moved"), "{}", errs[&1]);
        assert!(errs[&1].contains("NotLeader"), "{}", errs[&1]);
        assert!(errs[&2].contains("missing"));
    }
}
