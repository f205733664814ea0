//! KIP-932 share groups on the partition leader: ShareFetch and
//! ShareAcknowledge. A shard keeps, for each share group consuming a
//! partition it leads, that share-partition's record states
//! (`partition::SharePartition`), and each member's share session (the
//! partitions it fetches and the epoch of its next request).
//!
//! The states are persisted with the group's coordinator, as Kafka's
//! leaders persist them with the share coordinator: read once when the
//! share-partition is first used here (`ReadShareGroupState`), written
//! after each acknowledgement before it is answered
//! (`WriteShareGroupState`), over `crate::peer` when the coordinator is
//! another node. Writes of one share-partition are serialized and merge
//! when they queue up.
//!
//! Runs on the leader's shard; never holds a `RefCell` borrow across an
//! `.await`. Memory is bounded: at most `MAX_SESSIONS` sessions, at most
//! `group.share.partition.max.record.locks` records per share-partition,
//! and a share-partition no session uses is dropped once nothing in it is
//! acquired.

pub mod partition;
pub mod persister;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::{Rc, Weak};

use event_listener::Event;
use kafka_protocol::ResponseError;
use tracing::{info, warn};
use uuid::Uuid;

use crate::clock::now_ms;
use crate::config::Config;
use crate::group::records::ShareStateValue;
use crate::group_config::{AutoOffsetReset, ShareConfig};
use crate::shard::{PartitionKey, Shard};
use partition::{Acquired, Limits, LogBatch, SharePartition};

/// Share sessions per shard (Kafka's `group.share.max.share.sessions` is
/// per broker; a shard is a broker to clients).
pub const MAX_SESSIONS: usize = 2_000;

/// A share-partition: group, topic id, partition.
pub type SpKey = (Rc<str>, Uuid, i32);

/// A share session: group, member.
type SessionKey = (Rc<str>, Rc<str>);

/// Acknowledgements of one partition: `(first, last, types)`.
pub type Acks = Vec<(i64, i64, Vec<i8>)>;

/// The epoch a share session expects after `epoch`.
pub fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

#[derive(Debug)]
struct Session {
    partitions: BTreeSet<(Uuid, i32)>,
    /// The epoch of the next request.
    epoch: i32,
    last_used: i64,
}

struct Entry {
    sp: SharePartition,
    state_epoch: i32,
    leader_epoch: i32,
    /// Changes made / written: a write covers every change before it.
    changed: u64,
    written: u64,
    writing: bool,
}

/// Share sessions, share-partitions and their records in flight held by a
/// shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareCounts {
    pub sessions: usize,
    pub partitions: usize,
    pub records_in_flight: usize,
}

/// What a share session request did to the session.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionStep {
    /// Fetch from these partitions.
    Open(Vec<(Uuid, i32)>),
    /// The session ended (epoch -1); its member's records were released.
    Closed,
}

pub struct ShareLeader {
    shard: Weak<Shard>,
    /// A session unused this long is dropped (its client is gone).
    session_idle_ms: i64,
    sessions: RefCell<HashMap<SessionKey, Session>>,
    parts: RefCell<HashMap<SpKey, Entry>>,
    loading: RefCell<HashSet<SpKey>>,
    /// Notified when a load or a write ends.
    settled: Event,
}

impl ShareLeader {
    pub fn new(shard: Weak<Shard>, config: &Config) -> Self {
        ShareLeader {
            shard,
            session_idle_ms: 2 * i64::from(config.group_share_session_timeout_ms),
            sessions: RefCell::new(HashMap::new()),
            parts: RefCell::new(HashMap::new()),
            loading: RefCell::new(HashSet::new()),
            settled: Event::new(),
        }
    }

    fn shard(&self) -> Result<Rc<Shard>, ResponseError> {
        self.shard
            .upgrade()
            .ok_or(ResponseError::NotLeaderOrFollower)
    }

    /// Applies a request's share session epoch: 0 opens (or reopens) a
    /// session, -1 closes it, anything else must be the session's next
    /// epoch. `add` and `forget` change the session's partitions.
    pub fn session_step(
        &self,
        group: &str,
        member: &str,
        epoch: i32,
        add: &[(Uuid, i32)],
        forget: &[(Uuid, i32)],
    ) -> Result<SessionStep, ResponseError> {
        let now = now_ms();
        let key: SessionKey = (group.into(), member.into());
        match epoch {
            0 => {
                self.drop_idle_sessions(now);
                let replaced = self.sessions.borrow_mut().remove(&key);
                if let Some(old) = replaced {
                    self.release(group, member, &old.partitions);
                }
                if self.sessions.borrow().len() >= MAX_SESSIONS {
                    return Err(ResponseError::ShareSessionLimitReached);
                }
                let partitions: BTreeSet<(Uuid, i32)> = add.iter().copied().collect();
                let list = partitions.iter().copied().collect();
                self.sessions.borrow_mut().insert(
                    key,
                    Session {
                        partitions,
                        epoch: 1,
                        last_used: now,
                    },
                );
                Ok(SessionStep::Open(list))
            }
            -1 => {
                let old = self
                    .sessions
                    .borrow_mut()
                    .remove(&key)
                    .ok_or(ResponseError::ShareSessionNotFound)?;
                self.release(group, member, &old.partitions);
                Ok(SessionStep::Closed)
            }
            e => {
                let mut sessions = self.sessions.borrow_mut();
                let s = sessions
                    .get_mut(&key)
                    .ok_or(ResponseError::ShareSessionNotFound)?;
                if s.epoch != e {
                    return Err(ResponseError::InvalidShareSessionEpoch);
                }
                s.epoch = next_epoch(e);
                s.last_used = now;
                s.partitions.extend(add.iter().copied());
                let mut forgotten = BTreeSet::new();
                for f in forget {
                    if s.partitions.remove(f) {
                        forgotten.insert(*f);
                    }
                }
                let list = s.partitions.iter().copied().collect();
                drop(sessions);
                if !forgotten.is_empty() {
                    self.release(group, member, &forgotten);
                }
                Ok(SessionStep::Open(list))
            }
        }
    }

    /// Checks the epoch of a request that cannot open a session (a
    /// ShareAcknowledge, or a ShareFetch's final -1, whose caller closes the
    /// session with `session_step` once its acknowledgements are applied)
    /// and, for any other epoch, moves the session to its next one.
    pub fn session_acknowledge_check(
        &self,
        group: &str,
        member: &str,
        epoch: i32,
    ) -> Result<(), ResponseError> {
        let key: SessionKey = (group.into(), member.into());
        let mut sessions = self.sessions.borrow_mut();
        let s = sessions
            .get_mut(&key)
            .ok_or(ResponseError::ShareSessionNotFound)?;
        match epoch {
            0 => Err(ResponseError::InvalidShareSessionEpoch),
            -1 => Ok(()),
            e if e != s.epoch => Err(ResponseError::InvalidShareSessionEpoch),
            e => {
                s.epoch = next_epoch(e);
                s.last_used = now_ms();
                Ok(())
            }
        }
    }

    fn drop_idle_sessions(&self, now: i64) {
        let idle: Vec<(SessionKey, Session)> = {
            let mut sessions = self.sessions.borrow_mut();
            let keys: Vec<_> = sessions
                .iter()
                .filter(|(_, s)| s.last_used + self.session_idle_ms <= now)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| sessions.remove(&k).map(|s| (k, s)))
                .collect()
        };
        for ((g, m), s) in idle {
            info!(group = %g, member = %m, "share session dropped: unused");
            self.release(&g, &m, &s.partitions);
        }
    }

    /// Releases what `member` holds in `partitions`, and drops the
    /// share-partitions no session uses any more and nothing holds.
    fn release(&self, group: &str, member: &str, partitions: &BTreeSet<(Uuid, i32)>) {
        let in_use: HashSet<(Uuid, i32)> = self
            .sessions
            .borrow()
            .iter()
            .filter(|((g, _), _)| &**g == group)
            .flat_map(|(_, s)| s.partitions.iter().copied())
            .collect();
        let mut parts = self.parts.borrow_mut();
        for &(t, p) in partitions {
            let key: SpKey = (group.into(), t, p);
            let Some(e) = parts.get_mut(&key) else {
                continue;
            };
            e.sp.release_member(member);
            // Written states stay with the coordinator; unwritten changes
            // are releases, which a reload reproduces.
            if !in_use.contains(&(t, p)) && !e.writing && e.changed == e.written {
                parts.remove(&key);
            }
        }
    }

    /// Makes sure the share-partition's state is here: read from the
    /// coordinator, or, if it has none, initialized where the group's
    /// `share.auto.offset.reset` says (the log end by default) and written.
    pub async fn ensure_loaded(
        &self,
        key: &SpKey,
        pkey: PartitionKey,
        leader_epoch: i32,
        cfg: &ShareConfig,
    ) -> Result<(), ResponseError> {
        loop {
            if self.parts.borrow().contains_key(key) {
                return Ok(());
            }
            if self.loading.borrow().contains(key) {
                let l = self.settled.listen();
                if self.loading.borrow().contains(key) {
                    l.await;
                }
                continue;
            }
            self.loading.borrow_mut().insert(key.clone());
            let r = self.load(key, pkey, leader_epoch, cfg).await;
            self.loading.borrow_mut().remove(key);
            self.settled.notify(usize::MAX);
            return r;
        }
    }

    async fn load(
        &self,
        key: &SpKey,
        pkey: PartitionKey,
        leader_epoch: i32,
        cfg: &ShareConfig,
    ) -> Result<(), ResponseError> {
        let limits = limits_of(cfg);
        let shard = self.shard()?;
        let (group, topic_id, partition) = (&*key.0, key.1, key.2);
        let stored = persister::read(&shard, group, topic_id, partition).await?;
        let (sp, state_epoch) = match stored {
            Some(v) => (
                SharePartition::restore(v.start_offset, &v.batches, limits),
                v.state_epoch,
            ),
            None => {
                let end = initial_offset(&shard, pkey, cfg.auto_offset_reset).await?;
                let value = ShareStateValue {
                    state_epoch: 0,
                    leader_epoch,
                    start_offset: end,
                    batches: Vec::new(),
                };
                persister::write(&shard, group, topic_id, partition, value).await?;
                info!(
                    group,
                    %topic_id,
                    partition,
                    start_offset = end,
                    reset = ?cfg.auto_offset_reset,
                    "share-partition initialized"
                );
                (SharePartition::new(end, limits), 0)
            }
        };
        self.parts.borrow_mut().insert(
            key.clone(),
            Entry {
                sp,
                state_epoch,
                leader_epoch,
                changed: 0,
                written: 0,
                writing: false,
            },
        );
        Ok(())
    }

    /// Where a read for `key` should start, after expired locks are
    /// released and records below the log start skipped (`None`: nothing
    /// to hand out).
    pub fn fetch_from(&self, key: &SpKey, log_start: i64, cfg: &ShareConfig) -> Option<i64> {
        let mut parts = self.parts.borrow_mut();
        let e = parts.get_mut(key)?;
        e.sp.set_limits(limits_of(cfg));
        e.sp.expire_locks(now_ms());
        e.sp.skip_to(log_start);
        e.sp.fetch_from()
    }

    pub fn acquire(
        &self,
        key: &SpKey,
        member: &str,
        batches: &[LogBatch],
        end: i64,
        max_records: usize,
    ) -> Vec<Acquired> {
        let mut parts = self.parts.borrow_mut();
        let Some(e) = parts.get_mut(key) else {
            return Vec::new();
        };
        e.sp.acquire(member, batches, end, max_records, now_ms())
    }

    /// Applies a member's acknowledgements of one share-partition and
    /// persists them before returning.
    pub async fn acknowledge(
        &self,
        key: &SpKey,
        member: &str,
        batches: &[(i64, i64, Vec<i8>)],
        max_type: i8,
        cfg: &ShareConfig,
    ) -> Result<(), ResponseError> {
        {
            let now = now_ms();
            let mut parts = self.parts.borrow_mut();
            let e = parts
                .get_mut(key)
                .ok_or(ResponseError::InvalidRecordState)?;
            e.sp.set_limits(limits_of(cfg));
            e.sp.expire_locks(now);
            for (first, last, types) in batches {
                e.sp.acknowledge(member, (*first, *last), types, max_type, now)?;
            }
            e.changed += 1;
        }
        self.persist(key).await
    }

    /// Writes the share-partition's state, unless a write that started
    /// after the latest change already covered it.
    async fn persist(&self, key: &SpKey) -> Result<(), ResponseError> {
        let target = match self.parts.borrow().get(key) {
            Some(e) => e.changed,
            None => return Err(ResponseError::FencedStateEpoch),
        };
        loop {
            let l = self.settled.listen();
            let next = {
                let mut parts = self.parts.borrow_mut();
                let Some(e) = parts.get_mut(key) else {
                    return Err(ResponseError::FencedStateEpoch);
                };
                if e.written >= target {
                    return Ok(());
                }
                if e.writing {
                    None
                } else {
                    e.writing = true;
                    let value = ShareStateValue {
                        state_epoch: e.state_epoch,
                        leader_epoch: e.leader_epoch,
                        start_offset: e.sp.start(),
                        batches: e.sp.snapshot(),
                    };
                    Some((value, e.changed))
                }
            };
            let Some((value, version)) = next else {
                // Another write is on its way; it may cover this change.
                l.await;
                continue;
            };
            let shard = self.shard()?;
            let r = persister::write(&shard, &key.0, key.1, key.2, value).await;
            {
                let mut parts = self.parts.borrow_mut();
                if let Some(e) = parts.get_mut(key) {
                    e.writing = false;
                    match r {
                        Ok(()) => e.written = e.written.max(version),
                        Err(ResponseError::FencedStateEpoch) => {
                            // An admin reset the start offset: reload.
                            warn!(group = %key.0, topic_id = %key.1, partition = key.2,
                                "share-partition state fenced by a newer state epoch; reloading");
                            parts.remove(key);
                        }
                        Err(_) => {}
                    }
                }
            }
            self.settled.notify(usize::MAX);
            r?;
        }
    }

    /// Forgets the share-partitions of partitions this shard no longer
    /// leads (their states stay with the coordinator; the new leader reads
    /// them). A write under way finishes first.
    pub fn retain_led(&self, led: impl Fn(PartitionKey) -> bool) {
        self.parts
            .borrow_mut()
            .retain(|k, e| led((k.1, k.2)) || e.writing);
    }

    /// What this shard holds, for `/metrics`: bounded by configuration
    /// (sessions by `MAX_SESSIONS`, each share-partition's records by its
    /// group's `share.partition.max.record.locks`).
    pub fn counts(&self) -> ShareCounts {
        let parts = self.parts.borrow();
        ShareCounts {
            sessions: self.sessions.borrow().len(),
            partitions: parts.len(),
            records_in_flight: parts.values().map(|e| e.sp.in_flight()).sum(),
        }
    }
}

fn limits_of(cfg: &ShareConfig) -> Limits {
    Limits {
        max_in_flight: cfg.max_record_locks,
        max_delivery_count: cfg.delivery_count_limit,
        lock_ms: cfg.lock_ms,
    }
}

/// Where a share-partition without a stored state starts (Kafka's
/// `share.auto.offset.reset`): the log end, its start, or the first record
/// at or after a time in the past (the log end if none is).
async fn initial_offset(
    shard: &Rc<Shard>,
    pkey: PartitionKey,
    reset: AutoOffsetReset,
) -> Result<i64, ResponseError> {
    let (log_start, end) = {
        let parts = shard.partitions.borrow();
        let p = parts.get(&pkey).ok_or(ResponseError::NotLeaderOrFollower)?;
        (p.state.log_start, p.state.high_watermark)
    };
    Ok(match reset {
        AutoOffsetReset::Latest => end,
        AutoOffsetReset::Earliest => log_start,
        AutoOffsetReset::ByDuration(ms) => {
            let ts = now_ms().saturating_sub(ms);
            match shard.batch_at_timestamp(pkey, ts).await {
                Ok(Some(hit)) => crate::handlers::list_offsets::record_at_timestamp(&hit, ts).1,
                Ok(None) => end,
                Err(e) => return Err(e.code()),
            }
        }
    })
}

/// The batches in `chunk` (as read from the log): offsets and whether each
/// is a control batch, with its bytes. Stops at a truncated header.
pub fn split_batches(chunk: &bytes::Bytes) -> Vec<(LogBatch, bytes::Bytes)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while chunk.len() >= pos + 61 {
        let h = &chunk[pos..];
        let base = i64::from_be_bytes(h[0..8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
        let Some(size) = usize::try_from(len).ok().and_then(|l| l.checked_add(12)) else {
            break;
        };
        if size < 61 || pos + size > chunk.len() {
            break;
        }
        let attributes = i16::from_be_bytes(h[21..23].try_into().expect("2 bytes"));
        let delta = i32::from_be_bytes(h[23..27].try_into().expect("4 bytes"));
        out.push((
            LogBatch {
                base,
                last: base + i64::from(delta.max(0)),
                control: attributes & 0x20 != 0,
            },
            chunk.slice(pos..pos + size),
        ));
        pos += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_wrap_to_one() {
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(41), 42);
        assert_eq!(next_epoch(i32::MAX), 1);
    }

    #[test]
    fn batches_are_split_from_a_chunk_and_a_torn_tail_is_left_out() {
        let mut chunk = Vec::new();
        for (base, delta, attrs) in [(10i64, 2i32, 0i16), (13, 0, 0x20)] {
            let mut b = vec![0u8; 61];
            b[0..8].copy_from_slice(&base.to_be_bytes());
            b[8..12].copy_from_slice(&49i32.to_be_bytes());
            b[21..23].copy_from_slice(&attrs.to_be_bytes());
            b[23..27].copy_from_slice(&delta.to_be_bytes());
            chunk.extend_from_slice(&b);
        }
        chunk.extend_from_slice(&[0u8; 30]);
        let got = split_batches(&bytes::Bytes::from(chunk));
        let batches: Vec<LogBatch> = got.iter().map(|(b, _)| *b).collect();
        assert_eq!(
            batches,
            vec![
                LogBatch {
                    base: 10,
                    last: 12,
                    control: false
                },
                LogBatch {
                    base: 13,
                    last: 13,
                    control: true
                },
            ]
        );
        assert!(got.iter().all(|(_, b)| b.len() == 61));
    }
}
