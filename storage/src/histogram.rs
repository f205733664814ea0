//! Latency histograms, recorded on one shard without locks or atomics:
//!
//! * `LatencyHistogram`: fixed buckets (plain `Cell`s), copied out as a
//!   `HistogramSnapshot` (plain data, `Send`) that merges across shards
//!   bucket by bucket and encodes in Prometheus's format. Recording costs a
//!   bucket search over a dozen bounds and two additions.
//! * `StageHistogram`: an HDR histogram (2 significant digits, 1 ns to
//!   60 s, about 30 KB) for the stages of produce and fetch, where a
//!   bucket 2.5x wide would hide the tens of microseconds that matter.
//!
//! Neither allocates when recording.

use std::cell::Cell;
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (a last bucket, +Inf,
/// follows).
pub const BOUNDS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Bucket count, including +Inf.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [Cell<u64>; BUCKETS],
    sum_us: Cell<u64>,
    count: Cell<u64>,
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        LatencyHistogram::default()
    }

    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        let b = &self.buckets[i];
        b.set(b.get() + 1);
        self.sum_us.set(self.sum_us.get().saturating_add(us));
        self.count.set(self.count.get() + 1);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].get()),
            sum_us: self.sum_us.get(),
            count: self.count.get(),
        }
    }
}

/// A histogram's counts at one moment: per bucket (not cumulative), the sum
/// of the samples in microseconds, and their count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
    pub count: u64,
}

impl HistogramSnapshot {
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.count += other.count;
    }

    /// `(upper bound in seconds, count in that bucket)`, the last bound
    /// `f64::MAX` (+Inf): the shape the `prometheus-client` encoder takes.
    pub fn buckets_seconds(&self) -> Vec<(f64, u64)> {
        BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain(std::iter::once(f64::MAX))
            .zip(self.buckets.iter().copied())
            .collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }
}

/// An HDR histogram of durations in nanoseconds.
#[derive(Debug)]
pub struct StageHistogram {
    h: std::cell::RefCell<hdrhistogram::Histogram<u64>>,
}

/// Largest duration a `StageHistogram` tells apart (larger ones count as
/// this).
const STAGE_MAX_NS: u64 = 60_000_000_000;

impl Default for StageHistogram {
    fn default() -> Self {
        StageHistogram::new()
    }
}

impl StageHistogram {
    pub fn new() -> StageHistogram {
        StageHistogram {
            h: std::cell::RefCell::new(
                hdrhistogram::Histogram::new_with_bounds(1, STAGE_MAX_NS, 2)
                    .expect("valid histogram bounds"),
            ),
        }
    }

    pub fn record(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.h
            .borrow_mut()
            .saturating_record(ns.clamp(1, STAGE_MAX_NS));
    }

    /// A copy, to merge with other shards' and read percentiles from.
    pub fn snapshot(&self) -> hdrhistogram::Histogram<u64> {
        self.h.borrow().clone()
    }
}

/// Percentiles of a stage, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageSummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl StageSummary {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> StageSummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        StageSummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = LatencyHistogram::new();
        h.record(Duration::from_micros(50)); // on the bound: first bucket
        h.record(Duration::from_micros(51));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(3600)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[6], 1); // 2.5 ms < 3 ms <= 5 ms
        assert_eq!(s.buckets[BUCKETS - 1], 1);
        assert_eq!(s.sum_us, 50 + 51 + 3_000 + 3_600_000_000);
        let b = s.buckets_seconds();
        assert_eq!(b.len(), BUCKETS);
        assert_eq!(b[4], (0.001, 0));
        assert_eq!(b[BUCKETS - 1].0, f64::MAX);
    }

    #[test]
    fn stage_percentiles_keep_two_digits() {
        let h = StageHistogram::new();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        h.record(Duration::from_secs(3600)); // clamped, not lost
        let s = StageSummary::of(&h.snapshot());
        assert_eq!(s.count, 101);
        assert!((49.0..=51.5).contains(&s.p50_us), "{s:?}");
        assert!((99.0..=101.0).contains(&s.p99_us), "{s:?}");
        assert!(s.max_us >= 59_000_000.0);
    }

    #[test]
    fn snapshots_merge_bucket_by_bucket() {
        let (a, b) = (LatencyHistogram::new(), LatencyHistogram::new());
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(10));
        b.record(Duration::from_millis(20));
        let mut m = a.snapshot();
        m.merge(&b.snapshot());
        assert_eq!(m.count, 3);
        assert_eq!(m.buckets[0], 2);
        assert_eq!(m.buckets[8], 1);
        assert_eq!(m.sum_us, 20 + 20_000);
    }
}
