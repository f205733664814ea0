//! Results: the figures of a run, as JSON (`--json`) and as a table.
//!
//! The JSON keeps every figure, including the percentile curve and the
//! per-second timeline, so that `perf compare` can redraw and tabulate
//! results from separate runs (or separate brokers) side by side.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::error::{PerfError, Result};
use crate::latency::LatencySummary;
use crate::throughput::Second;

/// One run's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// What the run is called in tables and legends.
    pub label: String,
    /// produce, consume or e2e.
    pub mode: String,
    pub bootstrap: String,
    pub started_at_unix_s: u64,
    /// The settings the run used, as text.
    pub settings: BTreeMap<String, String>,
    pub produce: Option<ProduceFigures>,
    pub consume: Option<ConsumeFigures>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProduceFigures {
    /// Acknowledged records in the measured window (after warm-up).
    pub records: u64,
    pub mb: f64,
    pub window_s: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// Records whose send failed, warm-up included.
    pub failed: u64,
    /// Failure reason -> records.
    pub errors: BTreeMap<String, u64>,
    /// Send-to-acknowledgement latency, from the intended send time at a
    /// fixed rate.
    pub latency: LatencySummary,
    pub timeline: Vec<Second>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsumeFigures {
    pub records: u64,
    pub mb: f64,
    pub window_s: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub failed_fetches: u64,
    pub errors: BTreeMap<String, u64>,
    /// Intended send time to receipt by the consumer (e2e mode only).
    pub e2e_latency: Option<LatencySummary>,
    pub timeline: Vec<Second>,
}

impl Report {
    /// Whether anything failed: the run then exits non-zero.
    pub fn failure(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        let failed = self.produce.as_ref().map_or(0, |p| p.failed);
        let fetches = self.consume.as_ref().map_or(0, |c| c.failed_fetches);
        if failed > 0 || fetches > 0 {
            return Some(format!(
                "{failed} records failed to send, {fetches} fetches failed"
            ));
        }
        None
    }

    pub fn write_json(&self, path: &str) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| PerfError::Json {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| PerfError::File {
            path: path.to_string(),
            source,
        })
    }

    pub fn read_json(path: &str) -> Result<Report> {
        let text = std::fs::read_to_string(path).map_err(|source| PerfError::File {
            path: path.to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| PerfError::Json {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table printed after a run, or for `perf compare`: one row per
/// report and direction, then the errors.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let w = reports
        .iter()
        .map(|r| r.label.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "{:<w$}  {:<8} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "run",
        "what",
        "records/s",
        "MB/s",
        "failed",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "p99.99",
        "max ms",
        "records"
    );
    for r in reports {
        if let Some(p) = &r.produce {
            let l = &p.latency;
            let _ =
                writeln!(
                out,
                "{:<w$}  {:<8} {:>10.0} {:>8.2} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                r.label, "produce", p.records_per_sec, p.mb_per_sec, p.failed,
                fmt_ms(l.p50_ms), fmt_ms(l.p90_ms), fmt_ms(l.p99_ms), fmt_ms(l.p999_ms),
                fmt_ms(l.p9999_ms), fmt_ms(l.max_ms), p.records
            );
        }
        if let Some(c) = &r.consume {
            let (what, l) = match &c.e2e_latency {
                Some(l) => ("e2e", Some(l)),
                None => ("consume", None),
            };
            let cell = |f: fn(&LatencySummary) -> f64| l.map_or("-".to_string(), |l| fmt_ms(f(l)));
            let _ =
                writeln!(
                out,
                "{:<w$}  {:<8} {:>10.0} {:>8.2} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                r.label, what, c.records_per_sec, c.mb_per_sec, c.failed_fetches,
                cell(|l| l.p50_ms), cell(|l| l.p90_ms), cell(|l| l.p99_ms), cell(|l| l.p999_ms),
                cell(|l| l.p9999_ms), cell(|l| l.max_ms), c.records
            );
        }
    }
    for r in reports {
        let errors = r
            .produce
            .iter()
            .flat_map(|p| p.errors.iter().map(|(e, n)| (e, *n, "records")))
            .chain(
                r.consume
                    .iter()
                    .flat_map(|c| c.errors.iter().map(|(e, n)| (e, *n, "fetches"))),
            );
        for (e, n, unit) in errors {
            let _ = writeln!(out, "{}: {n} {unit} failed: {e}", r.label);
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "{}: run stopped: {e}", r.label);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut errors = BTreeMap::new();
        errors.insert("NotLeaderOrFollower".to_string(), 12);
        Report {
            label: "single-partition".into(),
            mode: "produce".into(),
            produce: Some(ProduceFigures {
                records: 1000,
                records_per_sec: 20000.0,
                mb_per_sec: 19.53,
                failed: 12,
                errors,
                latency: LatencySummary {
                    count: 1000,
                    p50_ms: 1.234,
                    p99_ms: 12.5,
                    max_ms: 150.0,
                    curve: vec![(0.0, 0.5), (50.0, 1.2)],
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn table_shows_rates_percentiles_and_failures() {
        let t = table(&[sample()]);
        assert!(t.contains("20000"), "{t}");
        assert!(t.contains("19.53"));
        assert!(t.contains("1.23"));
        assert!(t.contains("12.5"));
        assert!(t.contains("12 records failed: NotLeaderOrFollower"), "{t}");
        assert!(sample().failure().unwrap().contains("12 records"));
    }

    #[test]
    fn json_round_trips() {
        let dir = std::env::temp_dir().join(format!("perf-report-{}", std::process::id()));
        let path = dir.to_string_lossy().to_string() + ".json";
        sample().write_json(&path).unwrap();
        let back = Report::read_json(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            back.produce.unwrap().latency,
            sample().produce.unwrap().latency
        );
        assert!(Report::read_json("/nonexistent/x.json").is_err());
    }
}
