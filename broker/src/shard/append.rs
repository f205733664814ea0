//! The append path of a shard: admission, offsets, the WAL, and commit.
//!
//! 1. Admission: an append goes ahead only if the WAL slice has room for it
//!    and the shard's not-yet-uploaded bytes stay within its log-cache
//!    budget. Otherwise it waits, first come first served, for the uploader
//!    to free space (up to `wal_full_wait_ms`), then gets a retriable error.
//!    Offsets are assigned only once admitted, so nothing is cancelled and
//!    the log stays contiguous.
//! 2. Producer state is checked (sequences, epochs, transactions): a retry
//!    of a batch already written is answered with its offsets once they are
//!    durable, without writing anything; a refused batch gets its error.
//!    Then offsets are assigned and the stamped batch goes into the log
//!    cache and to the WAL slice at once, in call order. Check and
//!    assignment happen together, synchronously, so pipelined requests of
//!    one producer are checked in request order.
//! 3. The committer task takes the WAL's acknowledgements in WAL order and
//!    commits each append (moves its partition's high watermark, wakes that
//!    partition's waiters). So the committed appends are always a prefix of
//!    the WAL, and `committed_wal_end` is a safe trim point once they are
//!    uploaded.
//!
//! Runs on the shard's executor; never holds a borrow across `.await`.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use storage::batch::ValidatedBatch;
use storage::wal::{AppendFuture, WalError, WalSlice};
use tracing::{debug, error, warn};

use super::{PartitionKey, Shard};
use crate::producer_state::{BatchInfo, BatchMeta, Origin, Verdict};
use crate::wal_record;

/// The future of an append's durability.
pub type DurableAppend = Pin<Box<dyn Future<Output = Result<AppendOutcome, ResponseError>>>>;

/// Where a durable append landed.
#[derive(Debug, Clone, Copy)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// One WAL record waiting for its flush.
pub(super) struct InFlight {
    key: PartitionKey,
    /// Offset after the batch: the high watermark once it is durable.
    end_offset: i64,
    wal: AppendFuture,
    epoch: u64,
    /// Set on the last record of an append call: told the outcome.
    done: Option<oneshot::Sender<Result<(), ResponseError>>>,
    /// When its WAL write was queued (for the append-latency histogram).
    queued: Instant,
}

impl InFlight {
    pub(super) fn key(&self) -> PartitionKey {
        self.key
    }
}

/// How long an append waits for the quorum's leader to hear that a
/// partition offered as clean is written again.
const RETRACT_WAIT: Duration = Duration::from_secs(2);
const RETRACT_POLL: Duration = Duration::from_micros(200);

/// Why an append was not admitted at once.
enum Refused {
    /// Wait for space, then try again.
    NoRoom,
    /// Answer now with this error.
    Error(ResponseError),
}

impl Shard {
    /// Appends validated batches written by the broker itself (group
    /// coordinator records, transaction markers: epochs are checked, not
    /// sequences) to a partition this shard leads, waiting for WAL or cache
    /// space if needed. Resolves once the batches are durable and visible.
    pub async fn append(
        self: &Rc<Self>,
        key: PartitionKey,
        batches: &[ValidatedBatch],
        log_append_time: Option<i64>,
    ) -> Result<AppendOutcome, ResponseError> {
        self.append_as(key, batches, log_append_time, Origin::Coordinator)
            .await
    }

    /// `append`, checked as `origin` (a transactions v2 marker's stricter
    /// epoch check).
    pub async fn append_as(
        self: &Rc<Self>,
        key: PartitionKey,
        batches: &[ValidatedBatch],
        log_append_time: Option<i64>,
        origin: Origin,
    ) -> Result<AppendOutcome, ResponseError> {
        let batches = batches.to_vec();
        match self.try_append(key, batches, log_append_time, origin) {
            Ok(durable) => durable.await,
            Err(e) => e.await,
        }
    }

    /// Appends at once when there is room and nobody is waiting (producer
    /// state checked and offsets assigned before this returns, so calls keep
    /// their order); otherwise returns the future that waits its turn and
    /// then appends.
    pub fn try_append(
        self: &Rc<Self>,
        key: PartitionKey,
        batches: Vec<ValidatedBatch>,
        log_append_time: Option<i64>,
        origin: Origin,
    ) -> Result<DurableAppend, DurableAppend> {
        let bytes = record_bytes(&batches);
        match self.admit_now(key, &batches, bytes) {
            Ok(wal) => Ok(self.start_append(&wal, key, batches, log_append_time, origin)),
            Err(Refused::Error(e)) => Err(Box::pin(async move { Err(e) })),
            Err(Refused::NoRoom) => {
                let me = self.clone();
                Err(Box::pin(async move {
                    let wal = me.wait_for_room(key, batches.len(), bytes).await?;
                    me.start_append(&wal, key, batches, log_append_time, origin)
                        .await
                }))
            }
        }
    }

    /// The largest record batch this shard can append: what one WAL record
    /// holds (half the slice's ring) and what the shard's log cache holds,
    /// less the record's partition header. Produce caps `max.message.bytes`
    /// at this and DescribeConfigs reports the cap.
    pub fn max_batch_bytes(&self) -> usize {
        let record = self.wal().map_or(usize::MAX, |w| w.max_body_len());
        record
            .min(self.log_cache_budget())
            .saturating_sub(wal_record::PREFIX_LEN)
    }

    /// The checks every append passes before offsets are assigned.
    fn admit_now(
        &self,
        key: PartitionKey,
        batches: &[ValidatedBatch],
        bytes: u64,
    ) -> Result<WalSlice, Refused> {
        let count = batches.len();
        if self.storage_failed.get() {
            return Err(Refused::Error(ResponseError::KafkaStorageError));
        }
        let wal = self
            .wal
            .borrow()
            .clone()
            .ok_or(Refused::Error(ResponseError::KafkaStorageError))?;
        match self.partitions.borrow().get(&key) {
            None => return Err(Refused::Error(ResponseError::UnknownTopicOrPartition)),
            Some(p) if !p.state.accepts_writes() => {
                return Err(Refused::Error(ResponseError::NotLeaderOrFollower))
            }
            Some(_) => {}
        }
        if !fits_wal_records(&wal, batches) || bytes as usize > self.log_cache_budget() {
            // It could never fit: waiting would not help.
            return Err(Refused::Error(ResponseError::MessageTooLarge));
        }
        if !self.admission.borrow().is_empty() || !self.has_room(&wal, count, bytes) {
            return Err(Refused::NoRoom);
        }
        if crate::clean::claim(key) == crate::clean::Claim::Wait {
            // Offered to the quorum as clean: waits in line until the
            // leader has heard otherwise.
            return Err(Refused::NoRoom);
        }
        Ok(wal)
    }

    fn has_room(&self, wal: &WalSlice, count: usize, bytes: u64) -> bool {
        let budget = self.log_cache_budget();
        wal.has_room_for(count, bytes) && self.usage.get().unuploaded + bytes as usize <= budget
    }

    /// Waits in line until the append fits, up to `wal_full_wait_ms`.
    async fn wait_for_room(
        self: &Rc<Self>,
        key: PartitionKey,
        count: usize,
        bytes: u64,
    ) -> Result<WalSlice, ResponseError> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.admission.borrow_mut().push_back(ticket);
        let deadline = Instant::now() + Duration::from_millis(self.config.wal_full_wait_ms);
        let mut retracting = None;
        let result = loop {
            self.uploader.wake_for_space();
            let listener = self.space.listen();
            if self.admission.borrow().front() == Some(&ticket) {
                if crate::clean::claim(key) == crate::clean::Claim::Wait {
                    retracting.get_or_insert_with(Instant::now);
                } else {
                    retracting = None;
                    match self.admit_first(key, count, bytes) {
                        Ok(Some(wal)) => break Ok(wal),
                        Ok(None) => {}
                        Err(e) => break Err(e),
                    }
                }
            }
            let now = Instant::now();
            if retracting.is_some_and(|since| now - since >= RETRACT_WAIT) {
                // The quorum's leader does not answer: this broker is about
                // to stop serving anyway.
                warn!(shard = self.id, topic = %key.0, partition = key.1,
                    "no answer from the quorum's leader to take back a clean partition");
                break Err(ResponseError::NotLeaderOrFollower);
            }
            if now >= deadline {
                self.warn_full();
                break Err(ResponseError::KafkaStorageError);
            }
            // The leader's answer comes from another thread: look again soon.
            let step = if retracting.is_some() {
                RETRACT_POLL
            } else {
                Duration::from_millis(100)
            };
            let wait = (deadline - now).min(step);
            futures_lite::future::or(listener, glommio::timer::sleep(wait)).await;
        };
        self.admission.borrow_mut().retain(|&t| t != ticket);
        self.space.notify(usize::MAX);
        result
    }

    /// The head of the line: admitted (`Some`), still no room (`None`), or
    /// refused for good.
    fn admit_first(
        &self,
        key: PartitionKey,
        count: usize,
        bytes: u64,
    ) -> Result<Option<WalSlice>, ResponseError> {
        if self.storage_failed.get() {
            return Ok(None);
        }
        let Some(wal) = self.wal.borrow().clone() else {
            return Err(ResponseError::KafkaStorageError);
        };
        match self.partitions.borrow().get(&key) {
            None => return Err(ResponseError::UnknownTopicOrPartition),
            Some(p) if !p.state.accepts_writes() => return Err(ResponseError::NotLeaderOrFollower),
            Some(_) => {}
        }
        Ok(self.has_room(&wal, count, bytes).then_some(wal))
    }

    /// Checks producer state, assigns offsets, caches and queues the
    /// batches on the WAL (all before the first await), and returns the
    /// future of their durability.
    pub(super) fn start_append(
        self: &Rc<Self>,
        wal: &WalSlice,
        key: PartitionKey,
        batches: Vec<ValidatedBatch>,
        log_append_time: Option<i64>,
        origin: Origin,
    ) -> DurableAppend {
        // A record the slice would refuse is refused here, before offsets
        // are assigned: refused after, it would leave a hole in the log that
        // only a WAL recovery could close.
        if !fits_wal_records(wal, &batches) {
            return Box::pin(async { Err(ResponseError::MessageTooLarge) });
        }
        // One small buffer per call, shared by the WAL records of all its
        // batches.
        let prefix = Bytes::copy_from_slice(&wal_record::batch_prefix(key.0, key.1));
        let prefix_crc = crc32c::crc32c(&prefix);
        let epoch = self.wal_epoch.get();
        let (tx, rx) = oneshot::channel();
        let mut base_offset = None;
        let mut added = 0usize;
        let mut parts = self.partitions.borrow_mut();
        let Some(part) = parts.get_mut(&key) else {
            return Box::pin(async { Err(ResponseError::UnknownTopicOrPartition) });
        };
        // Only batches with a producer id have producer state; the common
        // non-idempotent append allocates nothing here.
        let infos: Vec<Option<BatchInfo>> = if batches.iter().any(|b| b.header.producer_id >= 0) {
            batches
                .iter()
                .map(|b| BatchInfo::of(&b.header, &b.bytes))
                .collect()
        } else {
            Vec::new()
        };
        if !infos.is_empty() {
            let checked: Vec<BatchInfo> = infos.iter().flatten().copied().collect();
            match part.producers.check(&checked, origin, part.state.log_end) {
                Ok(Verdict::Append) => {}
                Ok(Verdict::Duplicate(meta)) => {
                    drop(parts);
                    return Box::pin(self.clone().await_duplicate(key, meta, epoch));
                }
                Err(e) => {
                    debug!(shard = self.id, topic = %key.0, partition = key.1, "append refused: {e}");
                    let code = e.code();
                    return Box::pin(async move { Err(code) });
                }
            }
        }
        let mut queue = self.commit_queue.borrow_mut();
        let n = batches.len();
        let mut done = Some(tx);
        for (i, b) in batches.into_iter().enumerate() {
            let info = infos.get(i).and_then(Option::as_ref);
            let appended = part.append(b, info, prefix_crc, log_append_time);
            base_offset.get_or_insert(appended.base_offset);
            added += appended.stored.len();
            queue.push_back(InFlight {
                key,
                end_offset: appended.last_offset + 1,
                wal: wal.append_with_crc(prefix.clone(), appended.stored, appended.crc),
                epoch,
                done: if i + 1 == n { done.take() } else { None },
                queued: Instant::now(),
            });
        }
        let log_start_offset = part.state.log_start;
        drop((parts, queue));
        if added > 0 {
            self.change_usage(added as isize, added as isize);
            self.uploader.note_appended();
            self.commit_wake.notify(1);
        }
        let shard = self.clone();
        Box::pin(async move {
            let Some(base_offset) = base_offset else {
                return Err(ResponseError::InvalidRecord);
            };
            match rx.await {
                Ok(Ok(())) => Ok(AppendOutcome {
                    base_offset,
                    log_start_offset: shard
                        .partitions
                        .borrow()
                        .get(&key)
                        .map_or(log_start_offset, |p| p.state.log_start),
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ResponseError::KafkaStorageError),
            }
        })
    }

    /// Answers a retried batch with the offsets it got the first time, once
    /// they are durable. If the WAL recovered meanwhile, the original may be
    /// gone (the rebuilt log then has other data at those offsets): the
    /// client gets a retriable error and retries against the rebuilt state.
    async fn await_duplicate(
        self: Rc<Self>,
        key: PartitionKey,
        meta: BatchMeta,
        epoch: u64,
    ) -> Result<AppendOutcome, ResponseError> {
        loop {
            let listener = {
                let parts = self.partitions.borrow();
                let Some(p) = parts.get(&key) else {
                    return Err(ResponseError::NotLeaderOrFollower);
                };
                if self.wal_epoch.get() != epoch || self.storage_failed.get() {
                    return Err(ResponseError::KafkaStorageError);
                }
                if p.state.high_watermark > meta.last_offset {
                    debug!(
                        shard = self.id,
                        topic = %key.0,
                        partition = key.1,
                        base_offset = meta.first_offset,
                        "retried batch answered with its offsets"
                    );
                    return Ok(AppendOutcome {
                        base_offset: meta.first_offset,
                        log_start_offset: p.state.log_start,
                    });
                }
                p.waiters.listen()
            };
            listener.await;
        }
    }

    /// Waits until no append is queued for its WAL flush or being committed:
    /// of partition `key`, or of any partition (`None`). A hand-over and a
    /// shutdown wait for this; each committed append wakes them.
    pub(super) async fn appends_settled(&self, key: Option<PartitionKey>) {
        loop {
            let listener = self.commit_done.listen();
            let busy = match key {
                Some(k) => {
                    self.committing.get() == Some(k)
                        || self.commit_queue.borrow().iter().any(|f| f.key() == k)
                }
                None => self.committing.get().is_some() || !self.commit_queue.borrow().is_empty(),
            };
            if !busy {
                return;
            }
            listener.await;
        }
    }

    /// Takes WAL acknowledgements in order and commits each append. Runs
    /// for the life of the shard.
    pub(super) async fn run_committer(self: Rc<Self>) {
        loop {
            let next = self.commit_queue.borrow_mut().pop_front();
            let Some(inflight) = next else {
                let listener = self.commit_wake.listen();
                if self.commit_queue.borrow().is_empty() {
                    listener.await;
                }
                continue;
            };
            let InFlight {
                key,
                end_offset,
                wal,
                epoch,
                done,
                queued,
            } = inflight;
            self.committing.set(Some(key));
            let result = wal.await;
            self.committing.set(None);
            let answer = if epoch != self.wal_epoch.get() {
                // A recovery ran in between: the partition was rebuilt from
                // what the WAL holds; this append's fate is unknown to the
                // client, which saw or will see an error and retries.
                Err(ResponseError::KafkaStorageError)
            } else {
                match result {
                    Ok(record_offset) => {
                        self.metrics.wal_appended(queued.elapsed());
                        self.committed_wal_end.set(record_offset + 1);
                        match self.partitions.borrow_mut().get_mut(&key) {
                            Some(p) => {
                                p.state.commit(end_offset);
                                p.waiters.notify(usize::MAX);
                                Ok(())
                            }
                            // Deleted, or led elsewhere now: the record is in
                            // no partition's log, so the client must not be
                            // told it is stored (it retries at the leader).
                            None => Err(ResponseError::NotLeaderOrFollower),
                        }
                    }
                    Err(e) if e.is_device_failure() => {
                        self.on_wal_failure(epoch, &e);
                        Err(ResponseError::KafkaStorageError)
                    }
                    Err(e) => {
                        // Not the device's fault: no recovery, and the
                        // slice keeps serving everyone else.
                        warn!(shard = self.id, "WAL refused an append: {e}");
                        Err(refusal_code(&e))
                    }
                }
            };
            if let Some(tx) = done {
                let _ = tx.send(answer);
            }
            self.commit_done.notify(usize::MAX);
            if self.commit_queue.borrow().is_empty() {
                // Every acknowledged record is committed: the whole durable
                // WAL (up to its last flush group's end) may be trimmed once
                // uploaded, not only up to the last record's start.
                if let Some(wal) = self.wal() {
                    let end = wal.durable_offset().max(self.committed_wal_end.get());
                    self.committed_wal_end.set(end);
                }
            }
            self.uploader.note_committed(&self);
        }
    }

    /// Logs that appends wait for space, at most once every 10 s.
    fn warn_full(&self) {
        let now = Instant::now();
        let last = self.wal_full_warned.get();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            return;
        }
        self.wal_full_warned.set(Some(now));
        let usage = self.usage.get();
        let wal = self.wal.borrow().clone();
        warn!(
            shard = self.id,
            wal_used_bytes = wal.as_ref().map_or(0, |w| w.used_bytes()),
            wal_capacity = wal.as_ref().map_or(0, |w| w.capacity()),
            unuploaded_bytes = usage.unuploaded,
            log_cache_budget = self.log_cache_budget(),
            waited_ms = self.config.wal_full_wait_ms,
            "no room for appends: the WAL slice or the log cache is full of data not yet in \
             object storage (is the store reachable?); produce answers KAFKA_STORAGE_ERROR \
             (retriable) until uploads catch up"
        );
    }

    /// A WAL write or flush failed: stop acknowledging, then run recovery
    /// again (never retry the failed flush and call it success).
    pub(super) fn on_wal_failure(self: &Rc<Self>, epoch: u64, err: &WalError) {
        if self.storage_failed.get() || epoch != self.wal_epoch.get() {
            return;
        }
        error!(
            shard = self.id,
            "WAL failed, refusing writes until recovery: {err}"
        );
        self.storage_failed.set(true);
        let shard = self.clone();
        glommio::spawn_local(async move { shard.recover_wal().await }).detach();
    }
}

/// Whether each batch fits in one record of `wal` (header prefix included).
fn fits_wal_records(wal: &WalSlice, batches: &[ValidatedBatch]) -> bool {
    let max = wal.max_body_len();
    batches
        .iter()
        .all(|b| wal_record::PREFIX_LEN + b.bytes.len() <= max)
}

/// The error a client gets for an append the WAL refused without failing.
fn refusal_code(e: &WalError) -> ResponseError {
    match e {
        WalError::RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        // Closed on purpose (shutdown): retriable, elsewhere or later.
        _ => ResponseError::KafkaStorageError,
    }
}

/// WAL record bytes of `batches` (header prefix included).
fn record_bytes(batches: &[ValidatedBatch]) -> u64 {
    batches
        .iter()
        .map(|b| (wal_record::PREFIX_LEN + b.bytes.len()) as u64)
        .sum()
}
