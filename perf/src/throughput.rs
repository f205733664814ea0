//! Throughput over time: records and bytes per one-second bucket.

use serde::{Deserialize, Serialize};

/// Per-second counts from the start of measurement.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    buckets: Vec<(u64, u64)>,
}

/// One second of a timeline, as reports carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since measurement started (end of this bucket).
    pub t: u64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
}

/// Bytes in a megabyte (MiB, as Kafka tools print "MB/sec").
pub const MB: f64 = 1024.0 * 1024.0;

impl Timeline {
    /// Counts `records` and `bytes` at `ns` after measurement started.
    pub fn add(&mut self, ns: u64, records: u64, bytes: u64) {
        let s = (ns / 1_000_000_000) as usize;
        if self.buckets.len() <= s {
            self.buckets.resize(s + 1, (0, 0));
        }
        self.buckets[s].0 += records;
        self.buckets[s].1 += bytes;
    }

    /// Every whole second up to `window_ns` (a trailing partial second
    /// would read as a drop in throughput, so it is left out).
    pub fn seconds(&self, window_ns: u64) -> Vec<Second> {
        let whole = (window_ns / 1_000_000_000) as usize;
        (0..whole)
            .map(|i| {
                let (r, b) = self.buckets.get(i).copied().unwrap_or_default();
                Second {
                    t: i as u64 + 1,
                    records_per_sec: r as f64,
                    mb_per_sec: b as f64 / MB,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_second() {
        let mut t = Timeline::default();
        t.add(0, 1, 1024);
        t.add(999_999_999, 1, 1024);
        t.add(2_500_000_000, 5, MB as u64);
        t.add(1_000_000_000, 3, 0);
        let s = t.seconds(3_200_000_000);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].records_per_sec, 2.0);
        assert_eq!(s[1].records_per_sec, 3.0);
        assert_eq!(s[2].t, 3);
        assert_eq!(s[2].mb_per_sec, 1.0);
    }
}
