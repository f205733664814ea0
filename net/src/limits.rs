//! Connection admission: how many connections a shard holds in all and per
//! client address, and how often a refusal is logged.
//!
//! Pure bookkeeping, no sockets and no clock of its own, so every decision
//! is tested with plain values. One `ConnectionLimits` per shard, used only
//! on that shard's thread (hence `Rc<RefCell<_>>`, never shared). The
//! limits are per shard because each shard is its own Kafka node, and
//! Kafka's `max.connections` and `max.connections.per.ip` are per broker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// At most one refusal line per this interval, so a connection flood cannot
/// flood the log; the line says how many refusals it stands for.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a new connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("max_connections ({max}) reached")]
    Total { max: usize },
    #[error("max_connections_per_ip ({max}) reached for {ip}")]
    PerIp { ip: IpAddr, max: usize },
}

/// Open connections of one shard, in all and per client address.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    refusals: RefusalLog,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            total: 0,
            per_ip: HashMap::new(),
            refusals: RefusalLog::new(REFUSAL_LOG_INTERVAL),
        }
    }

    /// Counts a new connection from `ip`, or says which limit it breaks
    /// (and then counts nothing).
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.total >= self.max_total {
            return Err(Refusal::Total {
                max: self.max_total,
            });
        }
        let from_ip = self.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Refusal::PerIp {
                ip,
                max: self.max_per_ip,
            });
        }
        *from_ip += 1;
        self.total += 1;
        Ok(())
    }

    /// Forgets a connection `admit` counted.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    pub fn open(&self) -> usize {
        self.total
    }

    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Notes a refusal at `now`; see [`RefusalLog::record`].
    pub fn note_refusal(&mut self, now: Instant) -> Option<u64> {
        self.refusals.record(now)
    }

    /// Admits a connection and returns the permit that releases it when
    /// dropped, so every way a connection ends gives its slot back.
    pub fn try_admit(
        this: &Rc<RefCell<ConnectionLimits>>,
        ip: IpAddr,
    ) -> Result<ConnectionPermit, Refusal> {
        this.borrow_mut().admit(ip)?;
        Ok(ConnectionPermit {
            limits: this.clone(),
            ip,
        })
    }
}

/// One admitted connection; gives its slot back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Rc<RefCell<ConnectionLimits>>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.borrow_mut().release(self.ip);
    }
}

/// Rate limit for a log line about an event that can repeat thousands of
/// times a second.
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    last_line: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_line: None,
            unlogged: 0,
        }
    }

    /// Records one event at `now`. `Some(n)` means: log a line now, for
    /// this event and the `n` before it that were not logged.
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            self.unlogged += 1;
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn refuses_beyond_the_per_ip_limit_only_for_that_ip() {
        let mut l = ConnectionLimits::new(100, 2);
        assert_eq!(l.admit(ip(1)), Ok(()));
        assert_eq!(l.admit(ip(1)), Ok(()));
        assert_eq!(l.admit(ip(1)), Err(Refusal::PerIp { ip: ip(1), max: 2 }));
        assert_eq!(l.admit(ip(2)), Ok(()));
        assert_eq!(l.open(), 3);
        assert_eq!(l.open_from(ip(1)), 2);
    }

    #[test]
    fn refuses_beyond_the_total_limit() {
        let mut l = ConnectionLimits::new(2, 10);
        l.admit(ip(1)).unwrap();
        l.admit(ip(2)).unwrap();
        assert_eq!(l.admit(ip(3)), Err(Refusal::Total { max: 2 }));
        // A refusal counts nothing.
        assert_eq!(l.open(), 2);
        assert_eq!(l.open_from(ip(3)), 0);
    }

    #[test]
    fn release_gives_the_slot_back() {
        let mut l = ConnectionLimits::new(1, 1);
        l.admit(ip(1)).unwrap();
        l.release(ip(1));
        assert_eq!(l.open(), 0);
        assert!(l.per_ip.is_empty(), "no entry kept for a gone client");
        assert_eq!(l.admit(ip(2)), Ok(()));
    }

    #[test]
    fn releasing_an_unknown_ip_changes_nothing() {
        let mut l = ConnectionLimits::new(5, 5);
        l.admit(ip(1)).unwrap();
        l.release(ip(9));
        assert_eq!(l.open(), 1);
    }

    #[test]
    fn permit_releases_on_drop() {
        let limits = Rc::new(RefCell::new(ConnectionLimits::new(10, 1)));
        let permit = ConnectionLimits::try_admit(&limits, ip(1)).unwrap();
        assert!(ConnectionLimits::try_admit(&limits, ip(1)).is_err());
        drop(permit);
        assert_eq!(limits.borrow().open(), 0);
        assert!(ConnectionLimits::try_admit(&limits, ip(1)).is_ok());
    }

    #[test]
    fn refusal_log_speaks_once_per_interval_and_counts_the_rest() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.record(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(log.record(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.record(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(log.record(t0 + Duration::from_secs(11)), None);
        assert_eq!(log.record(t0 + Duration::from_secs(25)), Some(1));
    }
}
