//! The state machine of one transactional id, after Kafka's
//! `TransactionMetadata` and `TransactionCoordinator`: which producer id and
//! epoch own it, which partitions its open transaction wrote to, and how
//! InitProducerId, AddPartitionsToTxn/AddOffsetsToTxn, EndTxn and a timeout
//! move it.
//!
//! Transactions v2 (KIP-890 part 2, `transaction.version` 2): a client that
//! ends its transactions with EndTxn v5 has its epoch bumped by every end, so
//! the markers carry an epoch its next transaction's batches do not. A
//! retried end is recognised by the epoch one below the stored one, and an
//! epoch that would overflow rotates the producer id as the transaction
//! completes.
//!
//! Pure: no I/O, time is a parameter. Each transition returns the new
//! metadata that the coordinator (`txn::TxnCoordinator`) must make durable
//! in `__transaction_state` before it takes effect, or the Kafka error the
//! client gets. Nothing here changes the metadata it is given.

use std::collections::BTreeSet;

use kafka_protocol::ResponseError;

/// Where a transaction is. The numbers are Kafka's (`TransactionState`), as
/// stored in `__transaction_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty = 0,
    Ongoing = 1,
    PrepareCommit = 2,
    PrepareAbort = 3,
    CompleteCommit = 4,
    CompleteAbort = 5,
}

impl TxnState {
    pub fn from_i8(v: i8) -> Option<TxnState> {
        Some(match v {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    /// The name ListTransactions and DescribeTransactions report.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    /// Markers are being written: every other request waits.
    pub fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// A transactional id as its coordinator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    /// The epoch before the last fencing bump (InitProducerId over an open
    /// transaction, or a timeout), so that the fenced producer's KIP-360
    /// InitProducerId (its id and old epoch) is still recognised. -1: none.
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// `(topic, partition)` the open (or ending) transaction wrote to.
    pub partitions: BTreeSet<(String, i32)>,
    pub start_ms: i64,
    pub update_ms: i64,
    /// The client uses transactions v2 (EndTxn v5, implicit adds): each end
    /// bumps the epoch.
    pub tv2: bool,
    /// The producer id before the last rotation (v2: the epoch ran out at
    /// an end), so that a retry of that end is still recognised. -1: none.
    pub prev_producer_id: i64,
    /// v2, while an end whose epoch ran out is prepared: the producer id the
    /// transaction completes with. -1: none.
    pub next_producer_id: i64,
}

/// What an InitProducerId decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitDecision {
    /// Store this and answer with its producer id and epoch.
    Ready(TxnMeta),
    /// An open transaction must be aborted first (this metadata, epoch
    /// bumped to fence its producer, in PrepareAbort); the client gets
    /// CONCURRENT_TRANSACTIONS and retries.
    AbortFirst(TxnMeta),
}

/// Epoch after which a producer gets a new id (Kafka: `Short.MaxValue - 1`).
const MAX_EPOCH: i16 = i16::MAX - 1;

/// Whether a v2 end of `m`'s open transaction must rotate its producer id
/// (the bumped epoch would pass `MAX_EPOCH`): the coordinator then passes a
/// fresh one to `end_txn`.
pub fn end_needs_fresh_id(m: &TxnMeta) -> bool {
    m.state == TxnState::Ongoing && m.epoch >= MAX_EPOCH
}

/// InitProducerId for a transactional id. `expected` is the KIP-360
/// `(producer id, epoch)` the client sends (-1, -1 when it has none);
/// `fresh_id` is a producer id nobody has had, used if a new one is due.
pub fn init_producer_id(
    current: Option<&TxnMeta>,
    timeout_ms: i32,
    max_timeout_ms: i32,
    expected: (i64, i16),
    now: i64,
    fresh_id: i64,
) -> Result<InitDecision, ResponseError> {
    if timeout_ms <= 0 || timeout_ms > max_timeout_ms {
        return Err(ResponseError::InvalidTransactionTimeout);
    }
    let Some(m) = current else {
        return Ok(InitDecision::Ready(TxnMeta {
            producer_id: fresh_id,
            epoch: 0,
            last_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            update_ms: now,
            tv2: false,
            prev_producer_id: -1,
            next_producer_id: -1,
        }));
    };
    if expected.0 >= 0 {
        let known = expected.0 == m.producer_id
            && (expected.1 == m.epoch || (m.last_epoch >= 0 && expected.1 == m.last_epoch));
        if !known {
            return Err(ResponseError::ProducerFenced);
        }
    }
    match m.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => {
            Err(ResponseError::ConcurrentTransactions)
        }
        TxnState::Ongoing => {
            let mut next = fence(m, now);
            next.state = TxnState::PrepareAbort;
            Ok(InitDecision::AbortFirst(next))
        }
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            let mut next = m.clone();
            if m.epoch >= MAX_EPOCH {
                next.producer_id = fresh_id;
                next.epoch = 0;
            } else {
                next.epoch = m.epoch + 1;
            }
            next.last_epoch = -1;
            next.timeout_ms = timeout_ms;
            next.state = TxnState::Empty;
            next.partitions.clear();
            next.start_ms = -1;
            next.update_ms = now;
            Ok(InitDecision::Ready(next))
        }
    }
}

/// The metadata with its epoch bumped, so that the current producer is
/// fenced (its next request gets PRODUCER_FENCED).
fn fence(m: &TxnMeta, now: i64) -> TxnMeta {
    let mut next = m.clone();
    next.last_epoch = m.epoch;
    next.epoch = m.epoch.saturating_add(1);
    next.update_ms = now;
    next
}

/// Checks that a request comes from the producer that owns the id now.
fn check_owner(m: &TxnMeta, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
    if producer_id != m.producer_id {
        return Err(ResponseError::InvalidProducerIdMapping);
    }
    if epoch != m.epoch {
        return Err(ResponseError::ProducerFenced);
    }
    if m.state.is_prepare() {
        return Err(ResponseError::ConcurrentTransactions);
    }
    Ok(())
}

/// AddPartitionsToTxn / AddOffsetsToTxn: `None` when every partition is
/// already part of the open transaction (nothing to store).
///
/// `tv2`: an implicit add (a partition leader's or group coordinator's, for
/// a Produce v12+ or TxnOffsetCommit v5+ of a transactions v2 client).
pub fn add_partitions(
    current: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
    now: i64,
    tv2: bool,
) -> Result<Option<TxnMeta>, ResponseError> {
    let m = current.ok_or(ResponseError::InvalidProducerIdMapping)?;
    check_owner(m, producer_id, epoch)?;
    if m.state == TxnState::Ongoing && partitions.iter().all(|p| m.partitions.contains(p)) {
        return Ok(None);
    }
    let mut next = m.clone();
    next.tv2 = tv2;
    if m.state != TxnState::Ongoing {
        next.partitions.clear();
        next.start_ms = now;
    }
    next.state = TxnState::Ongoing;
    next.partitions.extend(partitions.iter().cloned());
    next.update_ms = now;
    Ok(Some(next))
}

/// What an EndTxn decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndDecision {
    /// Store this (PrepareCommit or PrepareAbort), write the markers, then
    /// store `complete`.
    Prepare(TxnMeta),
    /// A retry of an EndTxn that already completed: answer success.
    AlreadyDone,
}

/// EndTxn. `tv2`: the request is EndTxn v5+ (the end bumps the epoch);
/// `fresh_id`: the producer id to rotate to when `end_needs_fresh_id` (else
/// -1).
pub fn end_txn(
    current: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    now: i64,
    tv2: bool,
    fresh_id: i64,
) -> Result<EndDecision, ResponseError> {
    let m = current.ok_or(ResponseError::InvalidProducerIdMapping)?;
    let retry = if tv2 {
        check_v2_end(m, producer_id, epoch)?
    } else {
        check_owner(m, producer_id, epoch)?;
        false
    };
    let prepare = || {
        let mut next = m.clone();
        next.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        next.tv2 = tv2;
        if tv2 {
            // The markers carry the bumped epoch (at most i16::MAX: an
            // epoch past MAX_EPOCH rotates the producer id as it completes).
            next.last_epoch = m.epoch;
            next.epoch = m.epoch.saturating_add(1);
            if m.epoch >= MAX_EPOCH {
                next.next_producer_id = fresh_id;
            }
        }
        next.update_ms = now;
        EndDecision::Prepare(next)
    };
    match (m.state, commit) {
        (TxnState::Ongoing, _) => Ok(prepare()),
        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) if !tv2 || retry => {
            Ok(EndDecision::AlreadyDone)
        }
        // v2: an abort with nothing open still ends the transaction and
        // bumps the epoch (a client whose every produce failed before
        // reaching a partition aborts this way).
        (TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort, false)
            if tv2 && !retry =>
        {
            Ok(prepare())
        }
        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
            Err(ResponseError::ConcurrentTransactions)
        }
        _ => Err(ResponseError::InvalidTxnState),
    }
}

/// Kafka's checks of a transactions v2 EndTxn: the current epoch starts an
/// end, the epoch one below retries one that bumped it, and the last epoch
/// of the previous producer id retries one that rotated it. Whether it is
/// such a retry.
fn check_v2_end(m: &TxnMeta, producer_id: i64, epoch: i16) -> Result<bool, ResponseError> {
    let retry_of_bump =
        m.tv2 && producer_id == m.producer_id && i32::from(m.epoch) == i32::from(epoch) + 1;
    let retry_of_rotation = m.tv2
        && m.prev_producer_id >= 0
        && producer_id == m.prev_producer_id
        && epoch >= MAX_EPOCH
        && m.epoch == 0;
    if producer_id != m.producer_id && !retry_of_rotation {
        return Err(ResponseError::InvalidProducerIdMapping);
    }
    let retry = retry_of_bump || retry_of_rotation;
    let valid = match m.state {
        TxnState::Empty | TxnState::Ongoing => epoch == m.epoch,
        TxnState::PrepareCommit | TxnState::PrepareAbort => retry,
        TxnState::CompleteCommit | TxnState::CompleteAbort => retry || epoch == m.epoch,
    };
    if !valid {
        return Err(ResponseError::ProducerFenced);
    }
    Ok(retry)
}

/// The metadata once every marker of a prepared transaction is written.
pub fn complete(m: &TxnMeta, now: i64) -> TxnMeta {
    let mut next = m.clone();
    next.state = match m.state {
        TxnState::PrepareCommit => TxnState::CompleteCommit,
        _ => TxnState::CompleteAbort,
    };
    next.partitions.clear();
    next.update_ms = now;
    if m.next_producer_id >= 0 {
        // A v2 end ran out of epochs: the producer carries on under a new id.
        next.prev_producer_id = m.producer_id;
        next.producer_id = m.next_producer_id;
        next.next_producer_id = -1;
        next.epoch = 0;
        next.last_epoch = -1;
    }
    next
}

/// An open transaction past its timeout: the abort to store (epoch bumped,
/// so its producer is fenced), or `None` while it has time left.
pub fn timed_out(m: &TxnMeta, now: i64) -> Option<TxnMeta> {
    if m.state != TxnState::Ongoing || now < m.start_ms.saturating_add(i64::from(m.timeout_ms)) {
        return None;
    }
    let mut next = fence(m, now);
    next.state = TxnState::PrepareAbort;
    if m.tv2 {
        // As Kafka's v2 abort after its fence: bumped once more, so that
        // the fenced producer's retried end (one epoch below) is not taken
        // for a retry of this abort.
        next.last_epoch = next.epoch;
        next.epoch = next.epoch.saturating_add(1);
    }
    Some(next)
}

/// A transactional id idle past `transactional.id.expiration.ms` with no
/// transaction open: its coordinator forgets it.
pub fn expired(m: &TxnMeta, now: i64, expiration_ms: i64) -> bool {
    matches!(
        m.state,
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
    ) && now.saturating_sub(m.update_ms) >= expiration_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: i32 = 900_000;

    fn ready(d: Result<InitDecision, ResponseError>) -> TxnMeta {
        match d {
            Ok(InitDecision::Ready(m)) => m,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    fn parts(v: &[(&str, i32)]) -> Vec<(String, i32)> {
        v.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn a_new_id_starts_empty_and_each_init_bumps_the_epoch() {
        let m = ready(init_producer_id(None, 60_000, MAX, (-1, -1), 1, 7));
        assert_eq!((m.producer_id, m.epoch, m.state), (7, 0, TxnState::Empty));
        let m2 = ready(init_producer_id(Some(&m), 60_000, MAX, (-1, -1), 2, 8));
        assert_eq!((m2.producer_id, m2.epoch), (7, 1));
        // The old epoch is fenced.
        assert_eq!(
            add_partitions(Some(&m2), 7, 0, &parts(&[("t", 0)]), 3, false),
            Err(ResponseError::ProducerFenced)
        );
        let mut old = m2.clone();
        old.epoch = MAX_EPOCH;
        let m3 = ready(init_producer_id(Some(&old), 60_000, MAX, (-1, -1), 4, 9));
        assert_eq!((m3.producer_id, m3.epoch), (9, 0));
    }

    #[test]
    fn timeouts_out_of_range_are_refused() {
        for t in [0, -1, MAX + 1] {
            assert_eq!(
                init_producer_id(None, t, MAX, (-1, -1), 0, 1),
                Err(ResponseError::InvalidTransactionTimeout)
            );
        }
    }

    #[test]
    fn commit_runs_through_prepare_to_complete_and_a_retry_succeeds() {
        let m = ready(init_producer_id(None, 60_000, MAX, (-1, -1), 1, 7));
        assert_eq!(
            end_txn(Some(&m), 7, 0, true, 2, false, -1),
            Err(ResponseError::InvalidTxnState)
        );
        let m = add_partitions(Some(&m), 7, 0, &parts(&[("t", 0), ("t", 1)]), 10, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.state, m.start_ms, m.partitions.len()),
            (TxnState::Ongoing, 10, 2)
        );
        // Adding what is already there stores nothing.
        assert_eq!(
            add_partitions(Some(&m), 7, 0, &parts(&[("t", 1)]), 11, false),
            Ok(None)
        );
        let EndDecision::Prepare(p) = end_txn(Some(&m), 7, 0, true, 12, false, -1).unwrap() else {
            panic!("expected Prepare")
        };
        assert_eq!(p.state, TxnState::PrepareCommit);
        // While markers are written, everything else waits.
        assert_eq!(
            add_partitions(Some(&p), 7, 0, &parts(&[("t", 2)]), 13, false),
            Err(ResponseError::ConcurrentTransactions)
        );
        assert_eq!(
            init_producer_id(Some(&p), 60_000, MAX, (-1, -1), 13, 8),
            Err(ResponseError::ConcurrentTransactions)
        );
        let c = complete(&p, 14);
        assert_eq!((c.state, c.partitions.len()), (TxnState::CompleteCommit, 0));
        assert_eq!(
            end_txn(Some(&c), 7, 0, true, 15, false, -1),
            Ok(EndDecision::AlreadyDone)
        );
        assert_eq!(
            end_txn(Some(&c), 7, 0, false, 15, false, -1),
            Err(ResponseError::InvalidTxnState)
        );
        // The next transaction starts afresh.
        let n = add_partitions(Some(&c), 7, 0, &parts(&[("u", 0)]), 20, false)
            .unwrap()
            .unwrap();
        assert_eq!(n.partitions.len(), 1);
        assert_eq!(n.start_ms, 20);
    }

    #[test]
    fn a_second_producer_aborts_the_open_transaction_and_fences_the_first() {
        let m = ready(init_producer_id(None, 60_000, MAX, (-1, -1), 1, 7));
        let m = add_partitions(Some(&m), 7, 0, &parts(&[("t", 0)]), 2, false)
            .unwrap()
            .unwrap();
        let Ok(InitDecision::AbortFirst(a)) =
            init_producer_id(Some(&m), 60_000, MAX, (-1, -1), 3, 8)
        else {
            panic!("expected AbortFirst")
        };
        assert_eq!(
            (a.epoch, a.last_epoch, a.state),
            (1, 0, TxnState::PrepareAbort)
        );
        assert_eq!(
            end_txn(Some(&a), 7, 0, true, 4, false, -1),
            Err(ResponseError::ProducerFenced)
        );
        let done = complete(&a, 5);
        let m2 = ready(init_producer_id(Some(&done), 60_000, MAX, (-1, -1), 6, 8));
        assert_eq!((m2.producer_id, m2.epoch), (7, 2));
    }

    #[test]
    fn kip360_recovery_needs_the_current_or_fenced_epoch() {
        let m = ready(init_producer_id(None, 60_000, MAX, (-1, -1), 1, 7));
        let m = add_partitions(Some(&m), 7, 0, &parts(&[("t", 0)]), 2, false)
            .unwrap()
            .unwrap();
        let aborted = complete(&timed_out(&m, 60_002).unwrap(), 60_003);
        assert_eq!(aborted.epoch, 1);
        // The timed-out producer recovers with its old epoch.
        let r = ready(init_producer_id(
            Some(&aborted),
            60_000,
            MAX,
            (7, 0),
            60_004,
            8,
        ));
        assert_eq!((r.producer_id, r.epoch), (7, 2));
        assert_eq!(
            init_producer_id(Some(&aborted), 60_000, MAX, (7, 5), 60_004, 8),
            Err(ResponseError::ProducerFenced)
        );
        assert_eq!(
            init_producer_id(Some(&aborted), 60_000, MAX, (99, 0), 60_004, 8),
            Err(ResponseError::ProducerFenced)
        );
    }

    #[test]
    fn timeouts_and_expiry() {
        let m = ready(init_producer_id(None, 1000, MAX, (-1, -1), 0, 7));
        assert!(timed_out(&m, 10_000).is_none(), "no open transaction");
        let m = add_partitions(Some(&m), 7, 0, &parts(&[("t", 0)]), 100, false)
            .unwrap()
            .unwrap();
        assert!(timed_out(&m, 1099).is_none());
        let a = timed_out(&m, 1100).unwrap();
        assert_eq!((a.state, a.epoch), (TxnState::PrepareAbort, 1));
        assert!(
            !expired(&m, i64::MAX, 1),
            "an open transaction never expires"
        );
        let done = complete(&a, 2000);
        assert!(!expired(&done, 2999, 1000));
        assert!(expired(&done, 3000, 1000));
    }

    #[test]
    fn requests_from_another_producer_id_are_refused() {
        let m = ready(init_producer_id(None, 60_000, MAX, (-1, -1), 1, 7));
        assert_eq!(
            add_partitions(Some(&m), 8, 0, &parts(&[("t", 0)]), 2, false),
            Err(ResponseError::InvalidProducerIdMapping)
        );
        assert_eq!(
            add_partitions(None, 7, 0, &parts(&[("t", 0)]), 2, false),
            Err(ResponseError::InvalidProducerIdMapping)
        );
        assert_eq!(
            end_txn(Some(&m), 8, 0, true, 2, false, -1),
            Err(ResponseError::InvalidProducerIdMapping)
        );
    }

    /// Transactions v2: every end bumps the epoch; a retry one epoch below
    /// is answered as done; the old epoch is fenced once the next
    /// transaction starts.
    #[test]
    fn v2_ends_bump_the_epoch_and_retries_are_recognised() {
        let m = ready(init_producer_id(None, 60_000, MAX, (-1, -1), 1, 7));
        let m = add_partitions(Some(&m), 7, 0, &parts(&[("t", 0)]), 2, true)
            .unwrap()
            .unwrap();
        assert!(m.tv2);
        let EndDecision::Prepare(p) = end_txn(Some(&m), 7, 0, true, 3, true, -1).unwrap() else {
            panic!("expected Prepare")
        };
        assert_eq!(
            (p.state, p.epoch, p.last_epoch),
            (TxnState::PrepareCommit, 1, 0)
        );
        // A retry while the markers are written waits.
        assert_eq!(
            end_txn(Some(&p), 7, 0, true, 4, true, -1),
            Err(ResponseError::ConcurrentTransactions)
        );
        let c = complete(&p, 5);
        assert_eq!((c.producer_id, c.epoch), (7, 1));
        // A retry with the old epoch is done; the opposite result is not.
        assert_eq!(
            end_txn(Some(&c), 7, 0, true, 6, true, -1),
            Ok(EndDecision::AlreadyDone)
        );
        assert_eq!(
            end_txn(Some(&c), 7, 0, false, 6, true, -1),
            Err(ResponseError::InvalidTxnState)
        );
        // The old epoch may not add to the next transaction; the new one may.
        assert_eq!(
            add_partitions(Some(&c), 7, 0, &parts(&[("t", 0)]), 7, true),
            Err(ResponseError::ProducerFenced)
        );
        let n = add_partitions(Some(&c), 7, 1, &parts(&[("t", 0)]), 7, true)
            .unwrap()
            .unwrap();
        assert_eq!((n.state, n.epoch), (TxnState::Ongoing, 1));
        // Two epochs below is no retry: fenced.
        assert_eq!(
            end_txn(Some(&n), 7, 0, true, 8, true, -1),
            Err(ResponseError::ProducerFenced)
        );
        let EndDecision::Prepare(a) = end_txn(Some(&n), 7, 1, false, 8, true, -1).unwrap() else {
            panic!("expected Prepare")
        };
        assert_eq!((a.state, a.epoch), (TxnState::PrepareAbort, 2));
    }

    #[test]
    fn a_v2_abort_with_nothing_open_bumps_the_epoch() {
        let m = ready(init_producer_id(None, 60_000, MAX, (-1, -1), 1, 7));
        // Commit of nothing is refused, as in Kafka.
        assert_eq!(
            end_txn(Some(&m), 7, 0, true, 2, true, -1),
            Err(ResponseError::InvalidTxnState)
        );
        let EndDecision::Prepare(a) = end_txn(Some(&m), 7, 0, false, 2, true, -1).unwrap() else {
            panic!("expected Prepare")
        };
        assert_eq!(
            (a.state, a.epoch, a.partitions.len()),
            (TxnState::PrepareAbort, 1, 0)
        );
        let done = complete(&a, 3);
        // Its retry is done; a new abort at the new epoch bumps again.
        assert_eq!(
            end_txn(Some(&done), 7, 0, false, 4, true, -1),
            Ok(EndDecision::AlreadyDone)
        );
        let EndDecision::Prepare(again) = end_txn(Some(&done), 7, 1, false, 4, true, -1).unwrap()
        else {
            panic!("expected Prepare")
        };
        assert_eq!(again.epoch, 2);
        // v1 keeps refusing it.
        assert_eq!(
            end_txn(Some(&m), 7, 0, false, 2, false, -1),
            Err(ResponseError::InvalidTxnState)
        );
    }

    #[test]
    fn a_v2_end_that_runs_out_of_epochs_rotates_the_producer_id() {
        let m = ready(init_producer_id(None, 60_000, MAX, (-1, -1), 1, 7));
        let mut m = add_partitions(Some(&m), 7, 0, &parts(&[("t", 0)]), 2, true)
            .unwrap()
            .unwrap();
        m.epoch = MAX_EPOCH;
        assert!(end_needs_fresh_id(&m));
        let EndDecision::Prepare(p) = end_txn(Some(&m), 7, MAX_EPOCH, true, 3, true, 99).unwrap()
        else {
            panic!("expected Prepare")
        };
        // The markers carry the last epoch of the old id.
        assert_eq!(
            (p.producer_id, p.epoch, p.next_producer_id),
            (7, i16::MAX, 99)
        );
        let c = complete(&p, 4);
        assert_eq!((c.producer_id, c.epoch, c.prev_producer_id), (99, 0, 7));
        // The retry under the old id is recognised.
        assert_eq!(
            end_txn(Some(&c), 7, MAX_EPOCH, true, 5, true, -1),
            Ok(EndDecision::AlreadyDone)
        );
        assert_eq!(
            end_txn(Some(&c), 7, 3, true, 5, true, -1),
            Err(ResponseError::InvalidProducerIdMapping)
        );
    }

    #[test]
    fn a_v2_timeout_fences_the_producer_past_its_retry_epoch() {
        let m = ready(init_producer_id(None, 1000, MAX, (-1, -1), 0, 7));
        let m = add_partitions(Some(&m), 7, 0, &parts(&[("t", 0)]), 100, true)
            .unwrap()
            .unwrap();
        let a = timed_out(&m, 1100).unwrap();
        assert_eq!((a.state, a.epoch), (TxnState::PrepareAbort, 2));
        let done = complete(&a, 1200);
        // The producer's own abort (epoch 0) is not a retry of this one.
        assert_eq!(
            end_txn(Some(&done), 7, 0, false, 1300, true, -1),
            Err(ResponseError::ProducerFenced)
        );
    }
}
