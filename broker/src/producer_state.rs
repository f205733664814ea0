//! Producer state of one partition: for every producer id that wrote to it,
//! its epoch, the metadata of its last five batches (sequence range and
//! offsets, so a retried batch is answered with its original offsets and
//! not written again), its open transaction, and the partition's aborted
//! transactions (for `read_committed` fetches) and first unstable offset.
//!
//! Pure logic, after Kafka's `ProducerStateManager`/`ProducerAppendInfo`:
//! no I/O, time is a parameter. A `ProducerStateTable` lives inside its
//! `Partition` on the shard that leads the partition; it changes only at
//! the moment offsets are assigned (`Shard::start_append`, synchronously, so
//! pipelined requests of one producer are checked in request order) and
//! when a partition is rebuilt (the metadata image's snapshot, then the WAL
//! tail replayed through `apply`). It must never be changed by a batch that
//! gets no offsets.
//!
//! Persistence: the uploader computes, from the batches of each uploaded
//! range, the new state of every producer that wrote in it
//! (`snapshot_delta`), and commits it in the same metadata entry as the
//! object (`Record::PartitionProducers`). The image therefore always holds
//! the state as of the partition's uploaded end, and the WAL tail above it
//! brings it up to date.

use std::collections::{BTreeMap, HashMap, VecDeque};

use kafka_protocol::ResponseError;
use storage::batch::{end_txn_marker, BatchHeader, EndTxnMarker};

use crate::controller::records::{AbortedTxn, ProducerSnapshot, SnapshotBatch};

/// Batches remembered per producer, as Kafka (and its clients' in-flight
/// limit of five) expects.
pub const CACHED_BATCHES: usize = 5;
/// `RecordBatch.NO_PRODUCER_EPOCH`.
pub const NO_EPOCH: i16 = -1;
/// `RecordBatch.NO_SEQUENCE`.
const NO_SEQUENCE: i32 = -1;

/// Who is appending: clients get sequence checks; the coordinators (group
/// offsets in a transaction, transaction markers) only epoch checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Coordinator,
    /// A transactions v2 coordinator's marker (WriteTxnMarkers v2's
    /// transaction version 2, KIP-1228): its epoch was bumped by the end, so
    /// it must pass the producer's, unless it repeats a marker already
    /// written (Kafka's `ProducerAppendInfo.checkProducerEpoch`).
    CoordinatorV2,
}

/// What producer state needs to know of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub records: i32,
    pub last_offset_delta: i32,
    pub max_timestamp: i64,
    pub transactional: bool,
    /// For control batches: the transaction marker, if it is one.
    pub control: Option<Option<EndTxnMarker>>,
}

impl BatchInfo {
    /// From a batch's header and bytes (the marker is read only for
    /// control batches). `None` for batches without a producer id.
    pub fn of(h: &BatchHeader, bytes: &[u8]) -> Option<BatchInfo> {
        if h.producer_id < 0 {
            return None;
        }
        Some(BatchInfo {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            base_sequence: h.base_sequence,
            records: h.records_count,
            last_offset_delta: h.last_offset_delta,
            max_timestamp: h.max_timestamp,
            transactional: h.is_transactional(),
            control: h.is_control().then(|| end_txn_marker(bytes)),
        })
    }

    /// Sequence of the last record, wrapping as Kafka's does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence == NO_SEQUENCE {
            return NO_SEQUENCE;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.records.max(1)) - 1;
        if last > i64::from(i32::MAX) {
            (last - i64::from(i32::MAX) - 1) as i32
        } else {
            last as i32
        }
    }
}

/// Metadata of one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub timestamp: i64,
}

/// One producer's state in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub producer_id: i64,
    pub epoch: i16,
    /// The last `CACHED_BATCHES` batches of this epoch, oldest first.
    pub batches: VecDeque<BatchMeta>,
    /// Largest timestamp of its last batch or marker (expiry counts from it).
    pub last_timestamp: i64,
    pub coordinator_epoch: i32,
    /// First offset of its open transaction in this partition.
    pub txn_first_offset: Option<i64>,
}

impl ProducerEntry {
    fn new(producer_id: i64) -> Self {
        ProducerEntry {
            producer_id,
            epoch: NO_EPOCH,
            batches: VecDeque::new(),
            last_timestamp: -1,
            coordinator_epoch: -1,
            txn_first_offset: None,
        }
    }

    /// Sequence of the last record written in this epoch.
    pub fn last_seq(&self) -> i32 {
        self.batches.back().map_or(NO_SEQUENCE, |b| b.last_seq)
    }

    fn update_epoch(&mut self, epoch: i16) {
        if epoch != self.epoch {
            // A new epoch starts its sequences at 0.
            self.batches.clear();
            self.epoch = epoch;
        }
    }

    fn duplicate_of(&self, b: &BatchInfo) -> Option<BatchMeta> {
        if b.epoch != self.epoch {
            return None;
        }
        let last = b.last_sequence();
        self.batches
            .iter()
            .find(|m| m.first_seq == b.base_sequence && m.last_seq == last)
            .copied()
    }
}

/// Why a batch is refused; each maps to the Kafka error a client expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("out of order sequence for producer {producer_id}: {got} (expected {expected})")]
    OutOfOrderSequence {
        producer_id: i64,
        got: i32,
        expected: i32,
    },
    #[error("producer {producer_id} epoch {got} is older than {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        got: i16,
        current: i16,
    },
    #[error("producer {producer_id} wrote a non-transactional batch inside its open transaction")]
    InvalidTxnState { producer_id: i64 },
    #[error("coordinator epoch {got} of producer {producer_id}'s marker is older than {current}")]
    CoordinatorFenced {
        producer_id: i64,
        got: i32,
        current: i32,
    },
    #[error("{0}")]
    InvalidRecord(&'static str),
}

impl ProducerError {
    pub fn code(&self) -> ResponseError {
        match self {
            ProducerError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
            ProducerError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
            ProducerError::InvalidTxnState { .. } => ResponseError::InvalidTxnState,
            ProducerError::CoordinatorFenced { .. } => ResponseError::TransactionCoordinatorFenced,
            ProducerError::InvalidRecord(_) => ResponseError::InvalidRecord,
        }
    }
}

/// What a check decided about an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Assign offsets and write it.
    Append,
    /// A retry of a batch already written: answer with its offsets.
    Duplicate(BatchMeta),
}

/// A transaction that a marker ended in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub aborted: bool,
}

/// The producer state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions by first offset: the first is the first unstable
    /// offset.
    ongoing: BTreeMap<i64, i64>,
    /// Aborted transactions by marker offset (ascending).
    aborted: VecDeque<AbortedTxn>,
}

impl ProducerStateTable {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn producers(&self) -> impl Iterator<Item = &ProducerEntry> {
        self.producers.values()
    }

    /// Checks the batches of one append, in order, as if each were applied
    /// after the one before it (offsets from `next_offset`). Changes
    /// nothing. A duplicate anywhere answers the whole append (as Kafka).
    pub fn check(
        &self,
        batches: &[BatchInfo],
        origin: Origin,
        next_offset: i64,
    ) -> Result<Verdict, ProducerError> {
        if let [one] = batches {
            // The common case: no scratch copy.
            let current = self.producers.get(&one.producer_id);
            return check_one(current, one, origin);
        }
        let mut scratch: HashMap<i64, ProducerEntry> = HashMap::new();
        let mut offset = next_offset;
        for b in batches {
            let current = scratch
                .get(&b.producer_id)
                .or_else(|| self.producers.get(&b.producer_id));
            if let Verdict::Duplicate(meta) = check_one(current, b, origin)? {
                return Ok(Verdict::Duplicate(meta));
            }
            let mut entry = current
                .cloned()
                .unwrap_or_else(|| ProducerEntry::new(b.producer_id));
            apply_to_entry(&mut entry, b, offset);
            scratch.insert(b.producer_id, entry);
            offset += i64::from(b.last_offset_delta) + 1;
        }
        Ok(Verdict::Append)
    }

    /// Applies a batch that got offsets `base_offset..` (an append, or a
    /// replay of the log). Returns the transaction a marker ended.
    pub fn apply(&mut self, b: &BatchInfo, base_offset: i64) -> Option<CompletedTxn> {
        let entry = self
            .producers
            .entry(b.producer_id)
            .or_insert_with(|| ProducerEntry::new(b.producer_id));
        let was_open = entry.txn_first_offset;
        apply_to_entry(entry, b, base_offset);
        match (was_open, entry.txn_first_offset) {
            (None, Some(first)) => {
                self.ongoing.insert(first, b.producer_id);
                None
            }
            (Some(first), None) => {
                self.ongoing.remove(&first);
                let aborted = matches!(b.control, Some(Some(m)) if !m.commit);
                if aborted {
                    self.aborted.push_back(AbortedTxn {
                        producer_id: b.producer_id,
                        first_offset: first,
                        last_offset: base_offset,
                    });
                }
                Some(CompletedTxn {
                    producer_id: b.producer_id,
                    first_offset: first,
                    last_offset: base_offset,
                    aborted,
                })
            }
            _ => None,
        }
    }

    /// Applies a stored batch (its header and bytes) at its own offsets.
    pub fn apply_stored(&mut self, h: &BatchHeader, bytes: &[u8]) -> Option<CompletedTxn> {
        let info = BatchInfo::of(h, bytes)?;
        self.apply(&info, h.base_offset)
    }

    /// Whether producer `producer_id` at `epoch` has a transaction open
    /// here (its batches need no new add to the transaction).
    pub fn in_transaction(&self, producer_id: i64, epoch: i16) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|e| e.epoch == epoch && e.txn_first_offset.is_some())
    }

    /// First offset of the oldest open transaction.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.keys().next().copied()
    }

    /// Aborted transactions that overlap `[from, to)`:
    /// `(producer id, first offset)`, as Fetch lists them.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .range(start..)
            .filter(|a| a.first_offset < to)
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    }

    /// The partition's aborted transactions, oldest first.
    pub fn aborted(&self) -> impl Iterator<Item = &AbortedTxn> {
        self.aborted.iter()
    }

    /// Forgets producers idle for `expiration_ms` with no open transaction
    /// (Kafka's `producer.id.expiration.ms`), and aborted transactions that
    /// end before `log_start`. Returns how many producers went.
    pub fn expire(&mut self, now: i64, expiration_ms: i64, log_start: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.txn_first_offset.is_some() || now.saturating_sub(e.last_timestamp) < expiration_ms
        });
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            self.aborted.pop_front();
        }
        before - self.producers.len()
    }

    /// The state the metadata image holds for this partition.
    pub fn from_snapshot<'a>(
        producers: impl IntoIterator<Item = &'a ProducerSnapshot>,
        aborted: impl IntoIterator<Item = &'a AbortedTxn>,
    ) -> Self {
        let mut t = ProducerStateTable::new();
        for p in producers {
            let entry = entry_from_snapshot(p);
            if let Some(first) = entry.txn_first_offset {
                t.ongoing.insert(first, entry.producer_id);
            }
            t.producers.insert(entry.producer_id, entry);
        }
        t.aborted.extend(aborted.into_iter().copied());
        t
    }

    /// This table's producers as the image stores them.
    pub fn to_snapshot(&self) -> Vec<ProducerSnapshot> {
        let mut out: Vec<ProducerSnapshot> = self.producers.values().map(entry_snapshot).collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }
}

/// Kafka's `inSequence`: the next sequence after `last`, wrapping.
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

fn check_one(
    current: Option<&ProducerEntry>,
    b: &BatchInfo,
    origin: Origin,
) -> Result<Verdict, ProducerError> {
    if let Some(control) = b.control {
        return check_marker(current, b, control, origin);
    }
    if origin == Origin::Client {
        if let Some(meta) = current.and_then(|e| e.duplicate_of(b)) {
            return Ok(Verdict::Duplicate(meta));
        }
    }
    let Some(e) = current else {
        // Unknown producer: Kafka (since KIP-360) accepts any sequence;
        // its state may have expired or been deleted with the log.
        return Ok(Verdict::Append);
    };
    if b.epoch < e.epoch {
        return Err(ProducerError::InvalidProducerEpoch {
            producer_id: b.producer_id,
            got: b.epoch,
            current: e.epoch,
        });
    }
    if origin == Origin::Client {
        check_sequence(e, b)?;
    }
    if e.txn_first_offset.is_some() && !b.transactional {
        return Err(ProducerError::InvalidTxnState {
            producer_id: b.producer_id,
        });
    }
    Ok(Verdict::Append)
}

fn check_sequence(e: &ProducerEntry, b: &BatchInfo) -> Result<(), ProducerError> {
    if b.epoch != e.epoch {
        // A bumped epoch starts again at 0 (unless the entry only knew
        // markers so far).
        if b.base_sequence != 0 && e.epoch != NO_EPOCH {
            return Err(ProducerError::OutOfOrderSequence {
                producer_id: b.producer_id,
                got: b.base_sequence,
                expected: 0,
            });
        }
        return Ok(());
    }
    let last = e.last_seq();
    if !in_sequence(last, b.base_sequence) {
        return Err(ProducerError::OutOfOrderSequence {
            producer_id: b.producer_id,
            got: b.base_sequence,
            expected: last.wrapping_add(1).max(0),
        });
    }
    Ok(())
}

fn check_marker(
    current: Option<&ProducerEntry>,
    b: &BatchInfo,
    marker: Option<EndTxnMarker>,
    origin: Origin,
) -> Result<Verdict, ProducerError> {
    if origin == Origin::Client {
        return Err(ProducerError::InvalidRecord(
            "clients may not write control batches",
        ));
    }
    let Some(marker) = marker else {
        return Err(ProducerError::InvalidRecord(
            "control batch without a transaction marker",
        ));
    };
    let Some(e) = current else {
        return Ok(Verdict::Append);
    };
    let stale = if origin == Origin::CoordinatorV2 {
        // The repeat of a v2 marker finds its epoch and no transaction open.
        let repeat = b.epoch == e.epoch && (e.txn_first_offset.is_none() || b.epoch == i16::MAX);
        b.epoch <= e.epoch && !repeat
    } else {
        b.epoch < e.epoch
    };
    if stale {
        return Err(ProducerError::InvalidProducerEpoch {
            producer_id: b.producer_id,
            got: b.epoch,
            current: e.epoch,
        });
    }
    if marker.coordinator_epoch < e.coordinator_epoch {
        return Err(ProducerError::CoordinatorFenced {
            producer_id: b.producer_id,
            got: marker.coordinator_epoch,
            current: e.coordinator_epoch,
        });
    }
    Ok(Verdict::Append)
}

fn apply_to_entry(e: &mut ProducerEntry, b: &BatchInfo, base_offset: i64) {
    e.update_epoch(b.epoch);
    e.last_timestamp = b.max_timestamp;
    match b.control {
        Some(marker) => {
            if let Some(m) = marker {
                e.coordinator_epoch = m.coordinator_epoch;
            }
            e.txn_first_offset = None;
        }
        None => {
            e.batches.push_back(BatchMeta {
                first_seq: b.base_sequence,
                last_seq: b.last_sequence(),
                first_offset: base_offset,
                last_offset: base_offset + i64::from(b.last_offset_delta),
                timestamp: b.max_timestamp,
            });
            while e.batches.len() > CACHED_BATCHES {
                e.batches.pop_front();
            }
            if b.transactional && e.txn_first_offset.is_none() {
                e.txn_first_offset = Some(base_offset);
            }
        }
    }
}

fn entry_snapshot(e: &ProducerEntry) -> ProducerSnapshot {
    ProducerSnapshot {
        producer_id: e.producer_id,
        epoch: e.epoch,
        coordinator_epoch: e.coordinator_epoch,
        last_timestamp: e.last_timestamp,
        txn_first_offset: e.txn_first_offset.unwrap_or(-1),
        batches: e
            .batches
            .iter()
            .map(|m| SnapshotBatch {
                first_seq: m.first_seq,
                last_seq: m.last_seq,
                first_offset: m.first_offset,
                last_offset: m.last_offset,
                timestamp: m.timestamp,
            })
            .collect(),
    }
}

fn entry_from_snapshot(p: &ProducerSnapshot) -> ProducerEntry {
    ProducerEntry {
        producer_id: p.producer_id,
        epoch: p.epoch,
        batches: p
            .batches
            .iter()
            .rev()
            .take(CACHED_BATCHES)
            .rev()
            .map(|m| BatchMeta {
                first_seq: m.first_seq,
                last_seq: m.last_seq,
                first_offset: m.first_offset,
                last_offset: m.last_offset,
                timestamp: m.timestamp,
            })
            .collect(),
        last_timestamp: p.last_timestamp,
        coordinator_epoch: p.coordinator_epoch,
        txn_first_offset: (p.txn_first_offset >= 0).then_some(p.txn_first_offset),
    }
}

/// The change a range of stored batches makes to a partition whose state
/// before the range is `before`: the new state of every producer that wrote
/// in the range, and the transactions it aborted. What the uploader commits
/// next to the object holding the range.
pub fn snapshot_delta<'a>(
    before: impl Fn(i64) -> Option<&'a ProducerSnapshot>,
    batches: impl IntoIterator<Item = (&'a BatchHeader, &'a [u8])>,
) -> (Vec<ProducerSnapshot>, Vec<AbortedTxn>) {
    let mut touched = ProducerStateTable::new();
    for (h, bytes) in batches {
        let Some(info) = BatchInfo::of(h, bytes) else {
            continue;
        };
        if !touched.producers.contains_key(&info.producer_id) {
            if let Some(p) = before(info.producer_id) {
                let entry = entry_from_snapshot(p);
                if let Some(first) = entry.txn_first_offset {
                    touched.ongoing.insert(first, entry.producer_id);
                }
                touched.producers.insert(entry.producer_id, entry);
            }
        }
        touched.apply(&info, h.base_offset);
    }
    let aborted = touched.aborted.iter().copied().collect();
    (touched.to_snapshot(), aborted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pid: i64, epoch: i16, seq: i32, n: i32, ts: i64) -> BatchInfo {
        BatchInfo {
            producer_id: pid,
            epoch,
            base_sequence: seq,
            records: n,
            last_offset_delta: n - 1,
            max_timestamp: ts,
            transactional: false,
            control: None,
        }
    }

    fn txn(pid: i64, epoch: i16, seq: i32, n: i32) -> BatchInfo {
        BatchInfo {
            transactional: true,
            ..data(pid, epoch, seq, n, 0)
        }
    }

    fn marker(pid: i64, epoch: i16, commit: bool) -> BatchInfo {
        BatchInfo {
            producer_id: pid,
            epoch,
            base_sequence: -1,
            records: 1,
            last_offset_delta: 0,
            max_timestamp: 0,
            transactional: true,
            control: Some(Some(EndTxnMarker {
                commit,
                coordinator_epoch: 0,
            })),
        }
    }

    /// Checks then applies at `*next`, as `start_append` does.
    fn append(
        t: &mut ProducerStateTable,
        b: BatchInfo,
        next: &mut i64,
    ) -> Result<Verdict, ProducerError> {
        let origin = if b.control.is_some() {
            Origin::Coordinator
        } else {
            Origin::Client
        };
        let v = t.check(&[b], origin, *next)?;
        if v == Verdict::Append {
            t.apply(&b, *next);
            *next += i64::from(b.last_offset_delta) + 1;
        }
        Ok(v)
    }

    #[test]
    fn sequences_count_records_and_retries_get_their_offsets() {
        let mut t = ProducerStateTable::new();
        let mut next = 100;
        assert_eq!(
            append(&mut t, data(7, 0, 0, 10, 1), &mut next),
            Ok(Verdict::Append)
        );
        assert_eq!(
            append(&mut t, data(7, 0, 10, 5, 2), &mut next),
            Ok(Verdict::Append)
        );
        assert_eq!(next, 115);
        // The first batch again: answered with its offsets, nothing applied.
        match append(&mut t, data(7, 0, 0, 10, 1), &mut next) {
            Ok(Verdict::Duplicate(m)) => assert_eq!((m.first_offset, m.last_offset), (100, 109)),
            other => panic!("{other:?}"),
        }
        assert_eq!(next, 115);
        // A gap, or a sequence inside a known batch, is out of order.
        assert!(matches!(
            append(&mut t, data(7, 0, 16, 1, 3), &mut next),
            Err(ProducerError::OutOfOrderSequence { expected: 15, .. })
        ));
        assert!(matches!(
            append(&mut t, data(7, 0, 3, 2, 3), &mut next),
            Err(ProducerError::OutOfOrderSequence { .. })
        ));
        assert_eq!(
            t.check(&[data(7, 0, 16, 1, 3)], Origin::Client, next)
                .unwrap_err()
                .code(),
            ResponseError::OutOfOrderSequenceNumber
        );
        assert_eq!(
            append(&mut t, data(7, 0, 15, 1, 3), &mut next),
            Ok(Verdict::Append)
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut t = ProducerStateTable::new();
        let mut next = 0;
        for i in 0..7 {
            append(&mut t, data(1, 0, i, 1, 0), &mut next).unwrap();
        }
        assert_eq!(t.get(1).unwrap().batches.len(), CACHED_BATCHES);
        assert!(matches!(
            append(&mut t, data(1, 0, 2, 1, 0), &mut next),
            Ok(Verdict::Duplicate(_))
        ));
        // Older than the five: no longer known, so out of order.
        assert!(append(&mut t, data(1, 0, 1, 1, 0), &mut next).is_err());
    }

    #[test]
    fn unknown_producers_start_anywhere_and_sequences_wrap() {
        let mut t = ProducerStateTable::new();
        let mut next = 0;
        assert_eq!(
            append(&mut t, data(3, 0, i32::MAX - 1, 2, 0), &mut next),
            Ok(Verdict::Append)
        );
        assert_eq!(t.get(3).unwrap().last_seq(), i32::MAX);
        assert_eq!(
            append(&mut t, data(3, 0, 0, 1, 0), &mut next),
            Ok(Verdict::Append)
        );
        // A batch that wraps within itself.
        assert_eq!(data(3, 0, i32::MAX, 3, 0).last_sequence(), 1);
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut t = ProducerStateTable::new();
        let mut next = 0;
        append(&mut t, data(5, 2, 0, 3, 0), &mut next).unwrap();
        let err = append(&mut t, data(5, 1, 3, 1, 0), &mut next).unwrap_err();
        assert_eq!(err.code(), ResponseError::InvalidProducerEpoch);
        // A new epoch must start at 0.
        assert!(matches!(
            append(&mut t, data(5, 3, 3, 1, 0), &mut next),
            Err(ProducerError::OutOfOrderSequence { .. })
        ));
        assert_eq!(
            append(&mut t, data(5, 3, 0, 1, 0), &mut next),
            Ok(Verdict::Append)
        );
        assert_eq!(
            t.get(5).unwrap().batches.len(),
            1,
            "old epoch's batches forgotten"
        );
        // A retry from the old epoch is not a duplicate: it is fenced.
        assert!(append(&mut t, data(5, 2, 0, 3, 0), &mut next).is_err());
    }

    #[test]
    fn several_batches_of_one_append_are_checked_in_order() {
        let t = ProducerStateTable::new();
        let ok = [data(1, 0, 0, 2, 0), data(1, 0, 2, 2, 0)];
        assert_eq!(t.check(&ok, Origin::Client, 0), Ok(Verdict::Append));
        let gap = [data(1, 0, 0, 2, 0), data(1, 0, 5, 2, 0)];
        assert!(t.check(&gap, Origin::Client, 0).is_err());
        assert!(t.is_empty(), "checks change nothing");
    }

    #[test]
    fn transactions_set_the_first_unstable_offset_and_aborts_are_indexed() {
        let mut t = ProducerStateTable::new();
        let mut next = 0;
        append(&mut t, txn(1, 0, 0, 5), &mut next).unwrap(); // 0..4
        append(&mut t, txn(2, 0, 0, 5), &mut next).unwrap(); // 5..9
        append(&mut t, txn(1, 0, 5, 5), &mut next).unwrap(); // 10..14
        assert_eq!(t.first_unstable_offset(), Some(0));
        // A non-transactional write inside the open transaction is refused.
        assert_eq!(
            append(&mut t, data(1, 0, 10, 1, 0), &mut next)
                .unwrap_err()
                .code(),
            ResponseError::InvalidTxnState
        );
        append(&mut t, marker(1, 0, false), &mut next).unwrap(); // 15: abort
        assert_eq!(t.first_unstable_offset(), Some(5));
        append(&mut t, marker(2, 0, true), &mut next).unwrap(); // 16: commit
        assert_eq!(t.first_unstable_offset(), None);
        assert_eq!(t.aborted_between(0, 100), vec![(1, 0)]);
        assert_eq!(t.aborted_between(16, 100), vec![]);
        assert_eq!(t.aborted_between(3, 4), vec![(1, 0)]);
        // Clients cannot write markers; stale coordinators' markers fail.
        assert_eq!(
            t.check(&[marker(1, 0, true)], Origin::Client, next)
                .unwrap_err()
                .code(),
            ResponseError::InvalidRecord
        );
        assert_eq!(
            t.check(&[marker(1, 0, true)], Origin::Coordinator, next),
            Ok(Verdict::Append),
            "a marker without an open transaction is harmless"
        );
    }

    /// KIP-1228: a v2 marker must carry a bumped epoch; repeating one
    /// already written is allowed, a stale or unbumped one is not.
    #[test]
    fn v2_markers_must_pass_the_producers_epoch() {
        let mut t = ProducerStateTable::new();
        let mut next = 0;
        append(&mut t, txn(1, 3, 0, 2), &mut next).unwrap();
        for epoch in [2, 3] {
            assert_eq!(
                t.check(&[marker(1, epoch, true)], Origin::CoordinatorV2, next)
                    .unwrap_err()
                    .code(),
                ResponseError::InvalidProducerEpoch,
                "epoch {epoch} with the transaction open at 3"
            );
        }
        // v1 takes the equal epoch.
        assert!(t
            .check(&[marker(1, 3, true)], Origin::Coordinator, next)
            .is_ok());
        let m = marker(1, 4, true);
        assert_eq!(
            t.check(&[m], Origin::CoordinatorV2, next),
            Ok(Verdict::Append)
        );
        t.apply(&m, next);
        next += 1;
        // Written again (a coordinator finishing after a crash): allowed.
        assert_eq!(
            t.check(&[m], Origin::CoordinatorV2, next),
            Ok(Verdict::Append)
        );
        assert!(t
            .check(&[marker(1, 3, true)], Origin::CoordinatorV2, next)
            .is_err());
    }

    #[test]
    fn a_marker_with_a_bumped_epoch_fences_the_old_one() {
        let mut t = ProducerStateTable::new();
        let mut next = 0;
        append(&mut t, txn(1, 0, 0, 2), &mut next).unwrap();
        append(&mut t, marker(1, 1, false), &mut next).unwrap();
        assert_eq!(
            append(&mut t, txn(1, 0, 2, 1), &mut next)
                .unwrap_err()
                .code(),
            ResponseError::InvalidProducerEpoch
        );
        assert_eq!(
            append(&mut t, txn(1, 1, 0, 1), &mut next),
            Ok(Verdict::Append)
        );
    }

    #[test]
    fn idle_producers_expire_on_a_simulated_clock() {
        let mut t = ProducerStateTable::new();
        let mut next = 0;
        append(&mut t, data(1, 0, 0, 1, 1_000), &mut next).unwrap();
        append(&mut t, txn(2, 0, 0, 1), &mut next).unwrap(); // open: never expires
        append(&mut t, marker(3, 0, false), &mut next).unwrap();
        assert_eq!(
            t.expire(1_500, 1_000, 0),
            1,
            "the marker-only producer (ts 0)"
        );
        assert_eq!(t.expire(2_000, 1_000, 0), 1);
        assert!(t.get(1).is_none() && t.get(2).is_some());
        // A producer forgotten accepts any sequence again.
        assert_eq!(
            append(&mut t, data(1, 0, 57, 1, 3_000), &mut next),
            Ok(Verdict::Append)
        );
        // Aborted transactions below the log start go.
        append(&mut t, marker(2, 0, false), &mut next).unwrap();
        assert_eq!(t.aborted().count(), 1);
        t.expire(3_000, 1_000, next);
        assert_eq!(t.aborted().count(), 0);
    }

    #[test]
    fn snapshots_round_trip_and_deltas_rebuild_the_same_state() {
        let mut t = ProducerStateTable::new();
        let mut next = 0;
        append(&mut t, data(1, 0, 0, 3, 10), &mut next).unwrap();
        append(&mut t, txn(2, 4, 0, 2), &mut next).unwrap();
        let mid = t.clone();
        // Everything after `mid`, as stored batches.
        let later = [
            (data(1, 0, 3, 2, 20), false),
            (txn(2, 4, 2, 1), false),
            (marker(2, 4, false), true),
            (data(9, 0, 0, 1, 30), false),
        ];
        let mut headers = Vec::new();
        for (b, _) in &later {
            headers.push((
                BatchHeader {
                    base_offset: next,
                    batch_length: 0,
                    partition_leader_epoch: 0,
                    magic: 2,
                    crc: 0,
                    attributes: if b.control.is_some() {
                        0x30
                    } else if b.transactional {
                        0x10
                    } else {
                        0
                    },
                    last_offset_delta: b.last_offset_delta,
                    base_timestamp: 0,
                    max_timestamp: b.max_timestamp,
                    producer_id: b.producer_id,
                    producer_epoch: b.epoch,
                    base_sequence: b.base_sequence,
                    records_count: b.records,
                },
                if b.control.is_some() {
                    storage::batch::end_txn_marker_batch(
                        b.producer_id,
                        b.epoch,
                        EndTxnMarker {
                            commit: false,
                            coordinator_epoch: 0,
                        },
                        0,
                    )
                    .to_vec()
                } else {
                    Vec::new()
                },
            ));
            append(&mut t, *b, &mut next).unwrap();
        }
        let base = mid.to_snapshot();
        let (delta, aborted) = snapshot_delta(
            |pid| base.iter().find(|p| p.producer_id == pid),
            headers.iter().map(|(h, b)| (h, b.as_slice())),
        );
        assert_eq!(delta.len(), 3, "producers 1, 2 and 9 wrote");
        assert_eq!(aborted.len(), 1);
        // The image merges the delta into what it had.
        let mut merged: BTreeMap<i64, ProducerSnapshot> =
            base.into_iter().map(|p| (p.producer_id, p)).collect();
        for p in delta {
            merged.insert(p.producer_id, p);
        }
        let rebuilt = ProducerStateTable::from_snapshot(merged.values(), aborted.iter());
        assert_eq!(rebuilt, t);
        assert_eq!(rebuilt.first_unstable_offset(), None);
    }
}
