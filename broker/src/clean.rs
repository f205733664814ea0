//! Which partitions this broker has told the quorum are clean: every
//! acknowledged record in committed objects, and idle. The quorum's leader
//! moves such partitions to live nodes at once when it fences this broker
//! (nothing is only in this broker's WAL), while the others wait for it.
//!
//! The promise must hold until the leader hears otherwise, so a write to a
//! partition offered in a heartbeat that may have reached the leader first
//! retracts it: the writer waits until a heartbeat sent after the
//! retraction (which leaves the partition out) has been answered. Busy
//! partitions are never offered, so only the first write after a long idle
//! waits, for one heartbeat round trip.
//!
//! Process-wide: shards offer and claim, the controller thread takes the
//! list for each heartbeat and reports answers. One mutex, held only for a
//! few map operations, never across an `.await`; a relaxed atomic lets a
//! single-process broker (and any write while the book is empty) skip it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use uuid::Uuid;

/// A partition, as the quorum names it.
pub type Key = (Uuid, i32);
/// A partition offered at a leader epoch: the leader moves it only if the
/// epoch is still current (it never moved away and back meanwhile).
pub type Offered = (Uuid, i32, i32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Clean; goes out with the next heartbeat.
    Idle,
    /// Sent in a heartbeat: may be in the leader's clean set.
    Offered,
    /// A writer waits: released once a heartbeat numbered above `after`
    /// (sent without the partition) is answered.
    Retracting { after: u64 },
}

/// The book itself, apart from the process-wide instance, so the rules can
/// be tested on their own.
#[derive(Debug, Default)]
pub struct Book {
    entries: HashMap<Key, (State, i32)>,
    /// Number of the last heartbeat taken.
    sent: u64,
    /// Highest heartbeat number the leader answered.
    answered: u64,
}

/// What a writer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Write,
    /// Wait for an answered heartbeat (ask for one now).
    Wait,
}

impl Book {
    /// The shard found the partition clean and idle at leader `epoch`.
    pub fn offer(&mut self, key: Key, epoch: i32) {
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(key, (State::Idle, epoch));
            }
            // Offered before at another epoch: offered anew (a retraction
            // in progress stays).
            Some((State::Idle | State::Offered, e)) if *e != epoch => {
                *e = epoch;
            }
            Some(_) => {}
        }
    }

    /// A write to `key` is about to be admitted.
    pub fn claim(&mut self, key: Key) -> Claim {
        match self.entries.get(&key).copied() {
            None => Claim::Write,
            Some((State::Idle, _)) => {
                self.entries.remove(&key);
                Claim::Write
            }
            Some((State::Offered, e)) => {
                self.entries
                    .insert(key, (State::Retracting { after: self.sent }, e));
                Claim::Wait
            }
            Some((State::Retracting { after }, _)) if self.answered > after => {
                self.entries.remove(&key);
                Claim::Write
            }
            Some((State::Retracting { .. }, _)) => Claim::Wait,
        }
    }

    /// The next heartbeat: its number and the partitions it offers.
    pub fn heartbeat(&mut self) -> (u64, Vec<Offered>) {
        self.sent += 1;
        let mut clean = Vec::new();
        for (k, (s, epoch)) in self.entries.iter_mut() {
            match s {
                State::Idle | State::Offered => {
                    *s = State::Offered;
                    clean.push((k.0, k.1, *epoch));
                }
                State::Retracting { .. } => {}
            }
        }
        clean.sort();
        (self.sent, clean)
    }

    /// The leader answered heartbeat `seq` (and did not fence us).
    pub fn answered(&mut self, seq: u64) {
        self.answered = self.answered.max(seq);
    }

    /// Partitions this shard no longer leads leave the book.
    pub fn forget(&mut self, key: &Key) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static ENTRIES: AtomicUsize = AtomicUsize::new(0);
static BOOK: LazyLock<Mutex<Book>> = LazyLock::new(|| Mutex::new(Book::default()));
/// Rung by a waiting writer: the controller sends a heartbeat now.
pub static KICK: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn with<T>(f: impl FnOnce(&mut Book) -> T) -> T {
    let mut book = BOOK.lock().unwrap_or_else(|e| e.into_inner());
    let out = f(&mut book);
    ENTRIES.store(book.len(), Ordering::Relaxed);
    out
}

/// Turns the book on (a quorum of several processes, this one a broker).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub fn offer(key: Key, epoch: i32) {
    if enabled() {
        with(|b| b.offer(key, epoch));
    }
}

/// Whether a write to `key` may be admitted now; when it may not, a
/// heartbeat is requested.
pub fn claim(key: Key) -> Claim {
    if !enabled() || ENTRIES.load(Ordering::Relaxed) == 0 {
        return Claim::Write;
    }
    let c = with(|b| b.claim(key));
    if c == Claim::Wait {
        KICK.notify_one();
    }
    c
}

pub fn heartbeat() -> (u64, Vec<Offered>) {
    with(Book::heartbeat)
}

pub fn answered(seq: u64) {
    with(|b| b.answered(seq));
}

pub fn forget(key: &Key) {
    if enabled() && ENTRIES.load(Ordering::Relaxed) > 0 {
        with(|b| b.forget(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> Key {
        (Uuid::from_u128(1), p)
    }

    fn offered(p: i32) -> Offered {
        (Uuid::from_u128(1), p, 0)
    }

    #[test]
    fn a_partition_never_offered_is_written_at_once() {
        let mut b = Book::default();
        assert_eq!(b.claim(key(0)), Claim::Write);
        b.offer(key(0), 0);
        assert_eq!(b.claim(key(0)), Claim::Write, "offered to no heartbeat yet");
        assert!(b.is_empty());
    }

    #[test]
    fn an_offered_partition_waits_for_a_heartbeat_sent_after_the_retraction() {
        let mut b = Book::default();
        b.offer(key(0), 0);
        b.offer(key(1), 0);
        let (s1, clean) = b.heartbeat();
        assert_eq!(clean, vec![offered(0), offered(1)]);
        assert_eq!(b.claim(key(0)), Claim::Wait);
        // The answer to the heartbeat that offered it releases nothing.
        b.answered(s1);
        assert_eq!(b.claim(key(0)), Claim::Wait);
        let (s2, clean) = b.heartbeat();
        assert_eq!(
            clean,
            vec![offered(1)],
            "a retracted partition is not offered"
        );
        assert_eq!(b.claim(key(0)), Claim::Wait, "sent, not answered");
        b.answered(s2);
        assert_eq!(b.claim(key(0)), Claim::Write);
        assert_eq!(b.claim(key(0)), Claim::Write, "gone from the book");
        // Clean again later: offered again.
        b.offer(key(0), 0);
        let (_, clean) = b.heartbeat();
        assert_eq!(clean, vec![offered(0), offered(1)]);
    }

    #[test]
    fn an_offer_carries_the_epoch_it_was_made_at() {
        let mut b = Book::default();
        b.offer(key(0), 3);
        assert_eq!(b.heartbeat().1, vec![(Uuid::from_u128(1), 0, 3)]);
        // Moved away and back (a new epoch) before the scan forgot it.
        b.offer(key(0), 5);
        assert_eq!(b.heartbeat().1, vec![(Uuid::from_u128(1), 0, 5)]);
    }

    #[test]
    fn a_late_answer_to_an_old_heartbeat_releases_nothing() {
        let mut b = Book::default();
        b.offer(key(0), 0);
        let (s1, _) = b.heartbeat();
        let (s2, _) = b.heartbeat();
        assert_eq!(b.claim(key(0)), Claim::Wait);
        b.answered(s2);
        assert_eq!(
            b.claim(key(0)),
            Claim::Wait,
            "s2 was sent before the retraction"
        );
        b.answered(s1);
        let (s3, _) = b.heartbeat();
        b.answered(s3);
        assert_eq!(b.claim(key(0)), Claim::Write);
    }
}
