//! One share-partition's record states (KIP-932): which records of a
//! partition a share group has handed out, to whom, until when, and how
//! often. Records below the share-partition start offset (SPSO) are done;
//! every offset in `[start, next)` is in flight with a state; offsets from
//! `next` on were never handed out.
//!
//! Pure: the leader shard's `crate::share` feeds it what the log read
//! returned, acknowledgements and the clock, and persists its snapshot.
//! Memory is bounded: at most `max_in_flight` offsets are tracked.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;

/// Acknowledgement types of ShareFetch and ShareAcknowledge.
pub const ACK_GAP: i8 = 0;
pub const ACK_ACCEPT: i8 = 1;
pub const ACK_RELEASE: i8 = 2;
pub const ACK_REJECT: i8 = 3;
/// ShareFetch and ShareAcknowledge v2 (KIP-1222): keep the record, with a
/// fresh lock.
pub const ACK_RENEW: i8 = 4;

/// Delivery states as persisted (Kafka's `RecordState` ids).
pub const STATE_AVAILABLE: i8 = 0;
pub const STATE_ACKNOWLEDGED: i8 = 2;
pub const STATE_ARCHIVED: i8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Available,
    Acquired,
    Acknowledged,
    Archived,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight {
    state: State,
    delivery_count: i16,
    /// The member holding it while Acquired.
    owner: Option<String>,
    lock_deadline: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_in_flight: i64,
    pub max_delivery_count: i16,
    pub lock_ms: i64,
}

/// A batch as read from the log: its offsets and whether it is a control
/// batch (a transaction marker, never handed to a consumer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBatch {
    pub base: i64,
    pub last: i64,
    pub control: bool,
}

/// Offsets handed to a member: `[first, last]`, delivered `count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    pub first: i64,
    pub last: i64,
    pub delivery_count: i16,
}

/// A persisted range of offsets in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateBatch {
    pub first: i64,
    pub last: i64,
    pub state: i8,
    pub delivery_count: i16,
}

#[derive(Debug, Clone)]
pub struct SharePartition {
    start: i64,
    next: i64,
    records: BTreeMap<i64, InFlight>,
    limits: Limits,
}

impl SharePartition {
    /// A partition with nothing in flight, starting at `start`.
    pub fn new(start: i64, limits: Limits) -> Self {
        SharePartition {
            start,
            next: start,
            records: BTreeMap::new(),
            limits,
        }
    }

    /// Rebuilds from a persisted snapshot: acquired records were saved as
    /// available, so their locks are gone and they are handed out again.
    /// Only the window's worth of offsets from `start` is taken, whatever
    /// the stored batches claim (a WriteShareGroupState may come from any
    /// client).
    pub fn restore(start: i64, batches: &[StateBatch], limits: Limits) -> Self {
        let mut sp = SharePartition::new(start, limits);
        let limit = start.saturating_add(limits.max_in_flight.max(1) - 1);
        for b in batches {
            let state = match b.state {
                STATE_ACKNOWLEDGED => State::Acknowledged,
                STATE_ARCHIVED => State::Archived,
                _ => State::Available,
            };
            let last = b.last.min(limit);
            for o in b.first.max(start)..=last {
                sp.records.insert(
                    o,
                    InFlight {
                        state,
                        delivery_count: b.delivery_count,
                        owner: None,
                        lock_deadline: 0,
                    },
                );
            }
        }
        // Offsets the snapshot skipped inside the window are available.
        if let Some((&end, _)) = sp.records.last_key_value() {
            for o in start..end {
                sp.records.entry(o).or_insert(InFlight {
                    state: State::Available,
                    delivery_count: 0,
                    owner: None,
                    lock_deadline: 0,
                });
            }
            sp.next = end + 1;
        }
        sp.advance();
        sp
    }

    /// The group's settings changed (its group configs): they apply from
    /// now on; a smaller window hands out nothing new until it drains.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn start(&self) -> i64 {
        self.start
    }

    pub fn next(&self) -> i64 {
        self.next
    }

    /// Offsets handed out and not yet done.
    pub fn in_flight(&self) -> usize {
        self.records.len()
    }

    pub fn acquired_by(&self, member: &str) -> usize {
        self.records
            .values()
            .filter(|r| r.state == State::Acquired && r.owner.as_deref() == Some(member))
            .count()
    }

    /// Records below the log start are gone: the share partition moves past
    /// them.
    pub fn skip_to(&mut self, log_start: i64) {
        if log_start <= self.start {
            return;
        }
        self.records = self.records.split_off(&log_start);
        self.start = log_start;
        self.next = self.next.max(log_start);
        self.advance();
    }

    /// Where a read should begin to find something to hand out: the first
    /// available record in flight, else `next` if the window has room.
    pub fn fetch_from(&self) -> Option<i64> {
        self.records
            .iter()
            .find(|(_, r)| r.state == State::Available)
            .map(|(&o, _)| o)
            .or_else(|| (self.window_room() > 0).then_some(self.next))
    }

    fn window_room(&self) -> i64 {
        self.limits.max_in_flight - (self.next - self.start)
    }

    /// Hands up to `max_records` records of `batches` (as read from the
    /// log, below the high watermark `end`) to `member`: available ones in
    /// flight again, then new ones, as long as the window has room. Control
    /// batches are archived, never handed out.
    pub fn acquire(
        &mut self,
        member: &str,
        batches: &[LogBatch],
        end: i64,
        max_records: usize,
        now: i64,
    ) -> Vec<Acquired> {
        let mut out: Vec<Acquired> = Vec::new();
        let mut taken = 0usize;
        let deadline = now + self.limits.lock_ms;
        'batches: for b in batches {
            let last = b.last.min(end - 1);
            let mut o = b.base.max(self.start);
            while o <= last {
                if o < self.next {
                    let r = self.records.get_mut(&o).expect("window is dense");
                    if r.state == State::Available && !b.control {
                        if taken >= max_records {
                            break 'batches;
                        }
                        r.state = State::Acquired;
                        r.delivery_count = r.delivery_count.saturating_add(1);
                        r.owner = Some(member.to_string());
                        r.lock_deadline = deadline;
                        push(&mut out, o, r.delivery_count);
                        taken += 1;
                    } else if r.state == State::Available {
                        r.state = State::Archived;
                    }
                } else {
                    if taken >= max_records && !b.control {
                        break 'batches;
                    }
                    // Offsets the log skipped (compacted away) are done:
                    // with nothing in flight the window jumps over them;
                    // else they are archived, if the window has room.
                    if o > self.next {
                        if self.records.is_empty() {
                            self.start = o;
                            self.next = o;
                        } else if o - self.next >= self.window_room() {
                            break 'batches;
                        } else {
                            while self.next < o {
                                self.records.insert(self.next, archived());
                                self.next += 1;
                            }
                        }
                    }
                    if self.window_room() <= 0 {
                        break 'batches;
                    }
                    if b.control {
                        self.records.insert(o, archived());
                    } else {
                        self.records.insert(
                            o,
                            InFlight {
                                state: State::Acquired,
                                delivery_count: 1,
                                owner: Some(member.to_string()),
                                lock_deadline: deadline,
                            },
                        );
                        push(&mut out, o, 1);
                        taken += 1;
                    }
                    self.next = o + 1;
                }
                o += 1;
            }
        }
        self.advance();
        out
    }

    /// Applies a member's acknowledgement of `[first, last]`: one type for
    /// the whole range, or one per offset; types above `max_type` are
    /// refused (a v1 request cannot renew). Nothing changes unless every
    /// offset is acquired by `member`.
    pub fn acknowledge(
        &mut self,
        member: &str,
        (first, last): (i64, i64),
        types: &[i8],
        max_type: i8,
        now: i64,
    ) -> Result<(), ResponseError> {
        let n = last.checked_sub(first).map(|d| d + 1).unwrap_or(0);
        if n <= 0 || !(types.len() == 1 || types.len() as i64 == n) {
            return Err(ResponseError::InvalidRequest);
        }
        if types
            .iter()
            .any(|t| !(ACK_GAP..=max_type.min(ACK_RENEW)).contains(t))
        {
            return Err(ResponseError::InvalidRequest);
        }
        for o in first..=last {
            match self.records.get(&o) {
                Some(r) if r.state == State::Acquired && r.owner.as_deref() == Some(member) => {}
                _ => return Err(ResponseError::InvalidRecordState),
            }
        }
        for (i, o) in (first..=last).enumerate() {
            let t = if types.len() == 1 { types[0] } else { types[i] };
            let max = self.limits.max_delivery_count;
            let r = self.records.get_mut(&o).expect("checked above");
            if t == ACK_RENEW {
                r.lock_deadline = now + self.limits.lock_ms;
                continue;
            }
            r.owner = None;
            r.state = match t {
                ACK_ACCEPT => State::Acknowledged,
                ACK_RELEASE if r.delivery_count < max => State::Available,
                _ => State::Archived,
            };
        }
        self.advance();
        Ok(())
    }

    /// Gives back what `member` holds (its session ended).
    pub fn release_member(&mut self, member: &str) -> usize {
        let max = self.limits.max_delivery_count;
        let mut n = 0;
        for r in self.records.values_mut() {
            if r.state == State::Acquired && r.owner.as_deref() == Some(member) {
                release(r, max);
                n += 1;
            }
        }
        self.advance();
        n
    }

    /// Releases records whose acquisition lock is up.
    pub fn expire_locks(&mut self, now: i64) -> usize {
        let max = self.limits.max_delivery_count;
        let mut n = 0;
        for r in self.records.values_mut() {
            if r.state == State::Acquired && r.lock_deadline <= now {
                release(r, max);
                n += 1;
            }
        }
        self.advance();
        n
    }

    /// Moves the start past finished records.
    fn advance(&mut self) {
        while let Some(e) = self.records.first_entry() {
            if matches!(e.get().state, State::Acknowledged | State::Archived) {
                e.remove();
                self.start += 1;
            } else {
                break;
            }
        }
        if self.records.is_empty() {
            self.start = self.next;
        }
    }

    /// The state to persist: ranges of equal state and delivery count, an
    /// acquired record saved as available.
    pub fn snapshot(&self) -> Vec<StateBatch> {
        let mut out: Vec<StateBatch> = Vec::new();
        for (&o, r) in &self.records {
            let state = match r.state {
                State::Available | State::Acquired => STATE_AVAILABLE,
                State::Acknowledged => STATE_ACKNOWLEDGED,
                State::Archived => STATE_ARCHIVED,
            };
            match out.last_mut() {
                Some(b)
                    if b.last + 1 == o
                        && b.state == state
                        && b.delivery_count == r.delivery_count =>
                {
                    b.last = o
                }
                _ => out.push(StateBatch {
                    first: o,
                    last: o,
                    state,
                    delivery_count: r.delivery_count,
                }),
            }
        }
        out
    }
}

/// Offsets of a stored state that are done (acknowledged or archived):
/// KIP-1226's delivery-complete count, which the lag leaves out.
pub fn delivery_complete(batches: &[StateBatch]) -> i32 {
    let n: i64 = batches
        .iter()
        .filter(|b| b.state == STATE_ACKNOWLEDGED || b.state == STATE_ARCHIVED)
        .map(|b| (b.last - b.first + 1).max(0))
        .sum();
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn archived() -> InFlight {
    InFlight {
        state: State::Archived,
        delivery_count: 0,
        owner: None,
        lock_deadline: 0,
    }
}

fn release(r: &mut InFlight, max_delivery: i16) {
    r.owner = None;
    r.state = if r.delivery_count >= max_delivery {
        State::Archived
    } else {
        State::Available
    };
}

fn push(out: &mut Vec<Acquired>, o: i64, count: i16) {
    match out.last_mut() {
        Some(a) if a.last + 1 == o && a.delivery_count == count => a.last = o,
        _ => out.push(Acquired {
            first: o,
            last: o,
            delivery_count: count,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_in_flight: 10,
        max_delivery_count: 2,
        lock_ms: 1000,
    };

    fn batch(base: i64, last: i64) -> LogBatch {
        LogBatch {
            base,
            last,
            control: false,
        }
    }

    fn acq(first: i64, last: i64, delivery_count: i16) -> Acquired {
        Acquired {
            first,
            last,
            delivery_count,
        }
    }

    #[test]
    fn each_record_goes_to_one_member_and_accepted_ones_move_the_start() {
        let mut sp = SharePartition::new(0, LIMITS);
        let log = [batch(0, 4), batch(5, 7)];
        assert_eq!(sp.acquire("a", &log, 8, 3, 0), vec![acq(0, 2, 1)]);
        assert_eq!(sp.fetch_from(), Some(3));
        assert_eq!(sp.acquire("b", &log, 8, 100, 0), vec![acq(3, 7, 1)]);
        assert_eq!(sp.acquire("c", &log, 8, 100, 0), vec![], "nothing left");
        // Only the holder may acknowledge, and only what it holds.
        assert_eq!(
            sp.acknowledge("b", (0, 2), &[ACK_ACCEPT], ACK_RENEW, 0),
            Err(ResponseError::InvalidRecordState)
        );
        assert_eq!(
            sp.acknowledge("a", (0, 3), &[ACK_ACCEPT], ACK_RENEW, 0),
            Err(ResponseError::InvalidRecordState)
        );
        sp.acknowledge("a", (0, 2), &[ACK_ACCEPT], ACK_RENEW, 0)
            .unwrap();
        assert_eq!(sp.start(), 3);
        sp.acknowledge(
            "b",
            (3, 7),
            &[ACK_ACCEPT, ACK_REJECT, ACK_GAP, ACK_ACCEPT, ACK_ACCEPT],
            ACK_REJECT,
            0,
        )
        .unwrap();
        assert_eq!((sp.start(), sp.in_flight()), (8, 0));
    }

    #[test]
    fn released_and_expired_records_return_until_the_delivery_limit() {
        let mut sp = SharePartition::new(0, LIMITS);
        let log = [batch(0, 1)];
        assert_eq!(sp.acquire("a", &log, 2, 10, 0), vec![acq(0, 1, 1)]);
        sp.acknowledge("a", (0, 0), &[ACK_RELEASE], ACK_RENEW, 0)
            .unwrap();
        assert_eq!(sp.fetch_from(), Some(0));
        // The lock of offset 1 runs out: both come back to b, delivered twice.
        assert_eq!(sp.expire_locks(999), 0);
        assert_eq!(sp.expire_locks(1000), 1);
        assert_eq!(sp.acquire("b", &log, 2, 10, 1000), vec![acq(0, 1, 2)]);
        // Released at the limit: archived, and the start moves on.
        assert_eq!(sp.release_member("b"), 2);
        assert_eq!((sp.start(), sp.in_flight()), (2, 0));
        assert_eq!(sp.acquire("c", &log, 2, 10, 0), vec![]);
    }

    #[test]
    fn the_window_bounds_memory_and_control_batches_are_never_handed_out() {
        let mut sp = SharePartition::new(0, LIMITS);
        let log = [
            batch(0, 5),
            LogBatch {
                base: 6,
                last: 6,
                control: true,
            },
            batch(9, 20),
        ];
        // 0-5, the marker (archived), 7-8 missing from the log (archived),
        // then 9 only: the window holds 10 offsets.
        assert_eq!(
            sp.acquire("a", &log, 21, 100, 0),
            vec![acq(0, 5, 1), acq(9, 9, 1)]
        );
        assert_eq!(sp.next(), 10);
        assert_eq!(sp.fetch_from(), None, "window full, nothing available");
        sp.acknowledge("a", (0, 5), &[ACK_ACCEPT], ACK_RENEW, 0)
            .unwrap();
        assert_eq!(sp.start(), 9);
        assert_eq!(sp.fetch_from(), Some(10));
    }

    #[test]
    fn a_snapshot_restores_what_is_done_and_hands_out_the_rest_again() {
        let mut sp = SharePartition::new(5, LIMITS);
        let log = [batch(5, 9)];
        sp.acquire("a", &log, 10, 10, 0);
        sp.acknowledge("a", (5, 5), &[ACK_RELEASE], ACK_RENEW, 0)
            .unwrap();
        sp.acknowledge("a", (7, 7), &[ACK_ACCEPT], ACK_RENEW, 0)
            .unwrap();
        sp.acknowledge("a", (8, 8), &[ACK_REJECT], ACK_RENEW, 0)
            .unwrap();
        let snap = sp.snapshot();
        assert_eq!(
            snap,
            vec![
                StateBatch {
                    first: 5,
                    last: 6,
                    state: STATE_AVAILABLE,
                    delivery_count: 1
                },
                StateBatch {
                    first: 7,
                    last: 7,
                    state: STATE_ACKNOWLEDGED,
                    delivery_count: 1
                },
                StateBatch {
                    first: 8,
                    last: 8,
                    state: STATE_ARCHIVED,
                    delivery_count: 1
                },
                StateBatch {
                    first: 9,
                    last: 9,
                    state: STATE_AVAILABLE,
                    delivery_count: 1
                },
            ]
        );
        let mut back = SharePartition::restore(sp.start(), &snap, LIMITS);
        assert_eq!((back.start(), back.next()), (5, 10));
        // 5, 6 and 9 again (second delivery); 7 and 8 never.
        assert_eq!(
            back.acquire("b", &log, 10, 10, 0),
            vec![acq(5, 6, 2), acq(9, 9, 2)]
        );
        // A log whose start moved past records drops them.
        back.skip_to(7);
        assert_eq!(back.start(), 9);
    }

    #[test]
    fn malformed_acknowledgements_change_nothing() {
        let mut sp = SharePartition::new(0, LIMITS);
        sp.acquire("a", &[batch(0, 2)], 3, 10, 0);
        assert_eq!(
            sp.acknowledge("a", (2, 0), &[1], ACK_RENEW, 0),
            Err(ResponseError::InvalidRequest)
        );
        assert_eq!(
            sp.acknowledge("a", (0, 2), &[1, 1], ACK_RENEW, 0),
            Err(ResponseError::InvalidRequest)
        );
        assert_eq!(
            sp.acknowledge("a", (0, 2), &[9], ACK_RENEW, 0),
            Err(ResponseError::InvalidRequest)
        );
        // A v1 request cannot renew.
        assert_eq!(
            sp.acknowledge("a", (0, 2), &[ACK_RENEW], ACK_REJECT, 0),
            Err(ResponseError::InvalidRequest)
        );
        assert_eq!(sp.acquired_by("a"), 3);
    }

    #[test]
    fn a_compacted_gap_is_jumped_not_filled() {
        let mut sp = SharePartition::new(0, LIMITS);
        // Offsets 2..1_000_000 were compacted away.
        let log = [batch(0, 1), batch(1_000_000, 1_000_001)];
        assert_eq!(sp.acquire("a", &log, 1_000_002, 100, 0), vec![acq(0, 1, 1)]);
        assert_eq!(
            sp.in_flight(),
            2,
            "the gap is not filled while 0-1 are held"
        );
        sp.acknowledge("a", (0, 1), &[ACK_ACCEPT], ACK_RENEW, 0)
            .unwrap();
        assert_eq!(
            sp.acquire("a", &log, 1_000_002, 100, 0),
            vec![acq(1_000_000, 1_000_001, 1)]
        );
        assert_eq!((sp.start(), sp.in_flight()), (1_000_000, 2));
    }

    #[test]
    fn a_stored_state_cannot_make_the_window_grow() {
        let far = StateBatch {
            first: 0,
            last: 1 << 40,
            state: STATE_ARCHIVED,
            delivery_count: 1,
        };
        let sp = SharePartition::restore(0, &[far], LIMITS);
        assert!(sp.in_flight() as i64 <= LIMITS.max_in_flight);
        let sp = SharePartition::restore(
            0,
            &[StateBatch {
                first: 1 << 40,
                ..far
            }],
            LIMITS,
        );
        assert_eq!(sp.in_flight(), 0);
    }

    #[test]
    fn a_renewed_lock_keeps_the_records_with_their_holder() {
        let mut sp = SharePartition::new(0, LIMITS);
        sp.acquire("a", &[batch(0, 1)], 2, 10, 0);
        sp.acknowledge("a", (0, 0), &[ACK_RENEW], ACK_RENEW, 900)
            .unwrap();
        // Offset 1's lock ends at 1000; offset 0's now at 1900.
        assert_eq!(sp.expire_locks(1000), 1);
        assert_eq!(sp.acquired_by("a"), 1);
        sp.acknowledge("a", (0, 0), &[ACK_ACCEPT], ACK_RENEW, 1800)
            .unwrap();
        assert_eq!(sp.start(), 1);
    }
}
