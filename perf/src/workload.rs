//! A workload: what to run (produce, consume or end-to-end) with which
//! settings, and the preset workloads.
//!
//! Presets follow the OpenMessaging Benchmark's Kafka workloads (1 topic,
//! 1 KiB records, `acks=all`, `linger.ms=1`), scaled to a 2-core machine:
//! the 100-partition/4-producer/4-consumer fan-out becomes 16 partitions
//! at 10 MB/s.

use std::time::Duration;

use crate::batch::Compression;
use crate::cluster::StartFrom;
use crate::fetcher::FetchSettings;
use crate::partitioner::KeyDistribution;
use crate::producer::ProduceSettings;

/// Which side(s) of the broker a workload drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Produce,
    Consume,
    /// Produce at a fixed rate and consume concurrently.
    EndToEnd,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::EndToEnd => "e2e",
        }
    }
}

/// Everything a run needs besides the bootstrap server.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub mode: Mode,
    pub partitions: i32,
    pub replication_factor: i16,
    pub produce: ProduceSettings,
    pub fetch: FetchSettings,
    pub from: StartFrom,
    /// Consume mode: stop after this long without records.
    pub idle_timeout: Duration,
}

/// Names and one-line descriptions of the presets.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "single-partition",
        "1 partition, 1 KiB records, acks=all, max rate (produce)",
    ),
    (
        "latency",
        "1 partition, 1 KiB records, acks=all, fixed 20 MB/s (produce)",
    ),
    (
        "fanout",
        "16 partitions, 4 producers + 4 consumers, random keys, 10 MB/s (e2e)",
    ),
];

impl Workload {
    /// The base every workload starts from: one partition, 1 KiB records,
    /// acks=all, max rate, 20 s after 5 s of warm-up.
    pub fn custom(mode: Mode) -> Workload {
        Workload {
            name: mode.name().to_string(),
            mode,
            partitions: 1,
            replication_factor: 1,
            produce: ProduceSettings {
                topic: "perf".to_string(),
                record_size: 1024,
                keys: KeyDistribution::None,
                acks: -1,
                batch_size: 1 << 20,
                linger: Duration::from_millis(1),
                max_in_flight: 5,
                producers: 1,
                compression: Compression::None,
                rate: None,
                duration: Some(Duration::from_secs(20)),
                records: None,
                warmup: Duration::from_secs(5),
                request_timeout: Duration::from_secs(30),
                keep_going: false,
                idempotent: false,
            },
            fetch: FetchSettings {
                stamps: mode == Mode::EndToEnd,
                ..FetchSettings::default()
            },
            from: StartFrom::Earliest,
            idle_timeout: Duration::from_secs(5),
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Option<Workload> {
        let w = match name {
            "single-partition" => {
                let mut w = Workload::custom(Mode::Produce);
                w.produce.topic = "perf-single-partition".into();
                w
            }
            "latency" => {
                let mut w = Workload::custom(Mode::Produce);
                w.produce.topic = "perf-latency".into();
                w.produce.rate = Some(20.0 * 1024.0 * 1024.0 / 1024.0);
                w
            }
            "fanout" => {
                let mut w = Workload::custom(Mode::EndToEnd);
                w.produce.topic = "perf-fanout".into();
                w.partitions = 16;
                w.produce.producers = 4;
                w.fetch.consumers = 4;
                w.produce.keys = KeyDistribution::Random { space: 10_000 };
                w.produce.rate = Some(10.0 * 1024.0);
                w
            }
            _ => return None,
        };
        Some(Workload {
            name: name.to_string(),
            ..w
        })
    }

    /// The settings as text for reports.
    pub fn describe(&self) -> Vec<(String, String)> {
        let p = &self.produce;
        let mut out = vec![
            ("workload", self.name.clone()),
            ("mode", self.mode.name().to_string()),
            ("topic", p.topic.clone()),
            ("partitions", self.partitions.to_string()),
            ("warmup_s", p.warmup.as_secs_f64().to_string()),
        ];
        if let Some(d) = p.duration {
            out.push(("duration_s", d.as_secs_f64().to_string()));
        }
        if let Some(n) = p.records {
            out.push(("records", n.to_string()));
        }
        if self.mode != Mode::Consume {
            out.extend([
                ("record_size", p.record_size.to_string()),
                ("keys", p.keys.name().to_string()),
                ("acks", p.acks.to_string()),
                ("batch_size", p.batch_size.to_string()),
                ("linger_ms", (p.linger.as_secs_f64() * 1000.0).to_string()),
                ("max_in_flight", p.max_in_flight.to_string()),
                ("producers", p.producers.to_string()),
                ("idempotent", p.idempotent.to_string()),
                ("compression", format!("{:?}", p.compression).to_lowercase()),
                (
                    "rate",
                    p.rate
                        .map_or("max".to_string(), |r| format!("{r:.0} records/s")),
                ),
            ]);
        }
        if self.mode != Mode::Produce {
            out.push(("consumers", self.fetch.consumers.to_string()));
        }
        if self.mode == Mode::Consume {
            out.push(("from", format!("{:?}", self.from).to_lowercase()));
        }
        out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_exists_and_is_bounded() {
        for (name, _) in PRESETS {
            let w = Workload::preset(name).unwrap();
            assert_eq!(w.name, *name);
            assert!(w.produce.duration.is_some() || w.produce.records.is_some());
            assert_eq!(w.produce.record_size, 1024);
            assert_eq!(w.produce.acks, -1);
        }
        assert!(Workload::preset("nope").is_none());
        assert_eq!(
            Workload::preset("latency").unwrap().produce.rate,
            Some(20480.0)
        );
    }
}
