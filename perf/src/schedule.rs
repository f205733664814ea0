//! When each record is meant to be sent, and the clock runs are timed on.
//!
//! At a fixed target rate record `i` of a producer is due at
//! `start + i / rate`, whether or not the producer managed to send it then.
//! Latency is measured from that intended time, so a stall in the client or
//! the broker shows up in every record that should have gone out during it
//! (the coordinated-omission correction). At max rate there is no intended
//! time: a record's latency starts when it is created.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One monotonic time base per run, with its wall-clock anchor so that
/// timestamps carried in records can be compared across tasks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    epoch_ns_at_start: u64,
}

impl Clock {
    pub fn start() -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            start: Instant::now(),
            epoch_ns_at_start: epoch.as_nanos() as u64,
        }
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Wall-clock nanoseconds since the Unix epoch of a run time.
    pub fn epoch_ns(&self, run_ns: u64) -> u64 {
        self.epoch_ns_at_start + run_ns
    }

    /// Run time of a wall-clock nanosecond timestamp (saturating at 0).
    pub fn run_ns(&self, epoch_ns: u64) -> u64 {
        epoch_ns.saturating_sub(self.epoch_ns_at_start)
    }
}

/// The send schedule of one producer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// As fast as the broker takes them.
    MaxRate,
    /// `interval_ns` apart, starting at `start_ns` (run time).
    Fixed { start_ns: u64, interval_ns: f64 },
}

impl Schedule {
    /// A fixed rate of `per_sec` records per second from `start_ns`.
    pub fn fixed(per_sec: f64, start_ns: u64) -> Self {
        Schedule::Fixed {
            start_ns,
            interval_ns: 1e9 / per_sec,
        }
    }

    /// When record `i` is due, or `None` at max rate (due now).
    pub fn intended_ns(&self, i: u64) -> Option<u64> {
        match *self {
            Schedule::MaxRate => None,
            Schedule::Fixed {
                start_ns,
                interval_ns,
            } => Some(start_ns + (i as f64 * interval_ns) as u64),
        }
    }

    /// The time latency is measured from for record `i` created at
    /// `created_ns`: its intended time at a fixed rate, else its creation.
    pub fn latency_origin_ns(&self, i: u64, created_ns: u64) -> u64 {
        self.intended_ns(i).unwrap_or(created_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_schedule_spaces_records_evenly() {
        let s = Schedule::fixed(1000.0, 5_000);
        assert_eq!(s.intended_ns(0), Some(5_000));
        assert_eq!(s.intended_ns(1), Some(1_005_000));
        assert_eq!(s.intended_ns(1000), Some(1_000_005_000));
        assert_eq!(Schedule::MaxRate.intended_ns(7), None);
    }

    #[test]
    fn latency_starts_at_intended_time_not_at_late_send() {
        let s = Schedule::fixed(100.0, 0);
        // Record 3 was due at 30 ms but the client only got to it at 80 ms.
        assert_eq!(s.latency_origin_ns(3, 80_000_000), 30_000_000);
        assert_eq!(
            Schedule::MaxRate.latency_origin_ns(3, 80_000_000),
            80_000_000
        );
    }

    #[test]
    fn clock_maps_between_run_and_wall_time() {
        let c = Clock::start();
        let e = c.epoch_ns(1234);
        assert_eq!(c.run_ns(e), 1234);
        assert_eq!(c.run_ns(0), 0);
    }
}
