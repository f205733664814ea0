//! Latency histograms (HdrHistogram, microsecond resolution) and the
//! percentile summary every report carries.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded exactly: one hour. Larger values saturate.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            // 3 significant digits: 0.1% error at any magnitude.
            hist: Histogram::new_with_bounds(1, MAX_US, 3)
                .expect("static histogram bounds are valid"),
        }
    }
}

impl LatencyHistogram {
    /// Records a latency in nanoseconds (rounded to µs, at least 1 µs).
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record((ns / 1000).max(1));
    }

    pub fn add(&mut self, other: &LatencyHistogram) {
        // Both have the same bounds, so addition cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Percentiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &self.hist;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            p9999_ms: ms(h.value_at_quantile(0.9999)),
            max_ms: ms(h.max()),
            curve: self.curve(),
        }
    }

    /// The percentile curve: (percentile, ms) points, denser towards the
    /// tail, as HdrHistogram's percentile distribution prints it.
    fn curve(&self) -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = self
            .hist
            .iter_quantiles(4)
            .map(|v| {
                (
                    v.quantile_iterated_to() * 100.0,
                    v.value_iterated_to() as f64 / 1000.0,
                )
            })
            .collect();
        points.dedup_by(|a, b| a.0 == b.0);
        points
    }
}

/// The figures a report gives for one latency distribution (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
    /// (percentile 0..100, latency ms) points for plotting.
    pub curve: Vec<(f64, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 0.002 + 0.001
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = LatencyHistogram::default();
        for us in 1..=10_000u64 {
            h.record_ns(us * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        assert!(close(s.p50_ms, 5.0), "{}", s.p50_ms);
        assert!(close(s.p90_ms, 9.0), "{}", s.p90_ms);
        assert!(close(s.p99_ms, 9.9), "{}", s.p99_ms);
        assert!(close(s.p999_ms, 9.99), "{}", s.p999_ms);
        assert!(close(s.max_ms, 10.0), "{}", s.max_ms);
        assert!(close(s.min_ms, 0.001));
        let last = s.curve.last().unwrap();
        assert!(close(last.1, 10.0));
        assert!(s
            .curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn empty_histogram_gives_zeroes() {
        assert_eq!(
            LatencyHistogram::default().summary(),
            LatencySummary::default()
        );
    }

    /// A 1 s stall at 1000 records/s. A client that measures from the
    /// moment it actually sent (after the stall) sees one slow record and
    /// a clean p99; measured from the intended time, every record that
    /// was due during the stall is late, as a user would see it.
    #[test]
    fn coordinated_omission_correction_shows_the_stall() {
        let schedule = Schedule::fixed(1000.0, 0);
        let service_ns = 500_000u64; // 0.5 ms per request when healthy
        let stall = (2_000_000_000u64, 3_000_000_000u64);
        let mut corrected = LatencyHistogram::default();
        let mut naive = LatencyHistogram::default();
        let mut free_at = 0u64; // one request at a time, like a closed loop
        for i in 0..10_000u64 {
            let intended = schedule.intended_ns(i).unwrap();
            let sent = intended.max(free_at);
            let mut done = sent + service_ns;
            if sent < stall.1 && done > stall.0 {
                done = stall.1 + service_ns;
            }
            free_at = done;
            naive.record_ns(done - sent);
            corrected.record_ns(done - schedule.latency_origin_ns(i, sent));
        }
        let n = naive.summary();
        let c = corrected.summary();
        assert!(n.p99_ms < 1.0, "naive p99 hides the stall: {}", n.p99_ms);
        assert!(c.p90_ms > 400.0, "corrected p90 shows it: {}", c.p90_ms);
        assert!(c.max_ms > 990.0 && c.max_ms < 1010.0, "{}", c.max_ms);
        assert!(
            close(c.p50_ms, 0.5),
            "healthy half stays at 0.5 ms: {}",
            c.p50_ms
        );
    }

    #[test]
    fn adding_histograms_adds_counts() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        for _ in 0..3 {
            a.record_ns(1_000_000);
        }
        b.record_ns(5_000_000);
        a.add(&b);
        assert_eq!(a.summary().count, 4);
        assert!(close(a.summary().max_ms, 5.0));
    }
}
