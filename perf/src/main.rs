//! `perf`: producer/consumer load against any Kafka-compatible bootstrap
//! server, with latency histograms, JSON results and plots.
//!
//! ```text
//! perf produce --bootstrap 127.0.0.1:9092 --topic t --mb-per-sec 20 --json r.json --plot r.png
//! perf consume --bootstrap 127.0.0.1:9092 --topic t --from earliest
//! perf e2e     --bootstrap 127.0.0.1:9092 --topic t --rate 10000 --consumers 2
//! perf run latency --bootstrap 127.0.0.1:9092       (a preset workload)
//! perf compare a.json b.json --plot ab.png
//! ```

mod batch;
mod cluster;
mod connection;
mod control;
mod error;
mod fetcher;
mod latency;
mod partitioner;
mod plot;
mod producer;
mod progress;
mod report;
mod run;
mod schedule;
mod throughput;
mod workload;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::batch::parse_compression;
use crate::cluster::StartFrom;
use crate::error::{PerfError, Result};
use crate::partitioner::KeyDistribution;
use crate::report::Report;
use crate::workload::{Mode, Workload, PRESETS};

#[derive(Parser)]
#[command(
    name = "perf",
    version,
    about = "Throughput and latency benchmark for Kafka-compatible brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce records and measure throughput and send-to-ack latency.
    Produce(RunArgs),
    /// Consume a topic and measure throughput.
    Consume(RunArgs),
    /// Produce and consume concurrently; measure end-to-end latency.
    E2e(RunArgs),
    /// Run a preset workload (see `perf presets`); flags override it.
    Run {
        /// single-partition, latency or fanout
        preset: String,
        #[command(flatten)]
        args: RunArgs,
    },
    /// List the preset workloads.
    Presets,
    /// Tabulate (and plot) JSON results of earlier runs side by side.
    Compare {
        /// Result files written with --json.
        #[arg(required = true)]
        files: Vec<String>,
        /// Draw all of them on one chart (.png or .svg).
        #[arg(long)]
        plot: Option<String>,
    },
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// Bootstrap server, HOST:PORT.
    #[arg(
        long,
        short = 'b',
        env = "PERF_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    /// Start from a preset's settings (single-partition, latency, fanout).
    #[arg(long)]
    workload: Option<String>,
    #[arg(long, short = 't')]
    topic: Option<String>,
    /// Partitions to create the topic with if it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    #[arg(long)]
    replication_factor: Option<i16>,
    /// Value size in bytes.
    #[arg(long)]
    record_size: Option<usize>,
    /// Key distribution: none, random, round-robin.
    #[arg(long)]
    keys: Option<String>,
    /// Number of distinct keys for random/round-robin keys.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// all (-1), 1 or 0.
    #[arg(long)]
    acks: Option<String>,
    /// Largest batch per partition, bytes.
    #[arg(long)]
    batch_size: Option<usize>,
    /// How long a batch waits for more records, milliseconds (fractions allowed).
    #[arg(long)]
    linger_ms: Option<f64>,
    /// Produce requests in flight per connection.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Producers, each with its own connections.
    #[arg(long)]
    producers: Option<usize>,
    /// Consumers (partitions are split among them).
    #[arg(long)]
    consumers: Option<usize>,
    /// none, gzip, snappy, lz4, zstd.
    #[arg(long)]
    compression: Option<String>,
    /// Fixed target rate in records/s over all producers.
    #[arg(long, conflicts_with_all = ["mb_per_sec", "max_rate"])]
    rate: Option<f64>,
    /// Fixed target rate in MB/s (MiB of values).
    #[arg(long, conflicts_with = "max_rate")]
    mb_per_sec: Option<f64>,
    /// Send as fast as the broker takes it.
    #[arg(long)]
    max_rate: bool,
    /// Measured seconds (after warm-up).
    #[arg(long, short = 'd')]
    duration: Option<f64>,
    /// Measured records (after warm-up) instead of a duration.
    #[arg(long, short = 'n')]
    records: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long)]
    warmup: Option<f64>,
    /// consume: earliest or latest.
    #[arg(long)]
    from: Option<String>,
    /// consume: stop after this many seconds without records.
    #[arg(long)]
    idle_timeout: Option<f64>,
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Do not stop the run at the first rejected batch.
    #[arg(long)]
    keep_going: bool,
    /// Produce as an idempotent producer (InitProducerId, then producer id,
    /// epoch and per-partition sequences in every batch), as Kafka clients
    /// do by default.
    #[arg(long)]
    idempotent: bool,
    /// Write every figure to this JSON file.
    #[arg(long)]
    json: Option<String>,
    /// Draw latency percentiles and throughput to this .png or .svg.
    #[arg(long)]
    plot: Option<String>,
    /// Name of this run in tables and legends.
    #[arg(long)]
    label: Option<String>,
    /// No progress line.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| PerfError::Config(format!("bad duration {s}")))
}

fn parse_acks(s: &str) -> Result<i16> {
    match s {
        "all" | "-1" => Ok(-1),
        "1" => Ok(1),
        "0" => Ok(0),
        _ => Err(PerfError::Config(format!(
            "acks must be all, 1 or 0, not '{s}'"
        ))),
    }
}

/// The workload the flags describe: a preset (or the defaults) with the
/// flags given on top.
fn workload(mode: Option<Mode>, preset: Option<&str>, a: &RunArgs) -> Result<Workload> {
    let preset = preset.or(a.workload.as_deref());
    let mut w = match preset {
        Some(name) => Workload::preset(name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            PerfError::Config(format!("no preset '{name}' (have {})", names.join(", ")))
        })?,
        None => Workload::custom(mode.unwrap_or(Mode::Produce)),
    };
    if let Some(m) = mode {
        w.mode = m;
        w.fetch.stamps = m == Mode::EndToEnd;
    }
    let p = &mut w.produce;
    if let Some(t) = &a.topic {
        p.topic = t.clone();
    }
    if let Some(n) = a.partitions {
        w.partitions = n;
    }
    if let Some(r) = a.replication_factor {
        w.replication_factor = r;
    }
    if let Some(s) = a.record_size {
        p.record_size = s;
    }
    if let Some(k) = &a.keys {
        p.keys = KeyDistribution::parse(k, a.key_space).map_err(PerfError::Config)?;
    }
    if let Some(acks) = &a.acks {
        p.acks = parse_acks(acks)?;
    }
    if let Some(b) = a.batch_size {
        p.batch_size = b;
    }
    if let Some(l) = a.linger_ms {
        p.linger = secs(l / 1000.0)?;
    }
    if let Some(n) = a.max_in_flight {
        p.max_in_flight = n;
    }
    if let Some(n) = a.producers {
        p.producers = n;
    }
    if let Some(n) = a.consumers {
        w.fetch.consumers = n;
    }
    if let Some(c) = &a.compression {
        p.compression = parse_compression(c).map_err(PerfError::Config)?;
    }
    if a.max_rate {
        p.rate = None;
    }
    if let Some(r) = a.rate {
        p.rate = Some(r);
    }
    if let Some(mb) = a.mb_per_sec {
        p.rate = Some(mb * 1024.0 * 1024.0 / p.record_size.max(1) as f64);
    }
    if let Some(d) = a.duration {
        p.duration = Some(secs(d)?);
        p.records = None;
    }
    if let Some(n) = a.records {
        p.records = Some(n);
        if a.duration.is_none() {
            p.duration = None;
        }
    }
    if let Some(s) = a.warmup {
        p.warmup = secs(s)?;
    }
    if let Some(f) = &a.from {
        w.from = match f.as_str() {
            "earliest" => StartFrom::Earliest,
            "latest" => StartFrom::Latest,
            _ => {
                return Err(PerfError::Config(format!(
                    "--from must be earliest or latest, not '{f}'"
                )))
            }
        };
    }
    if let Some(s) = a.idle_timeout {
        w.idle_timeout = secs(s)?;
    }
    if let Some(ms) = a.request_timeout_ms {
        p.request_timeout = Duration::from_millis(ms);
    }
    p.keep_going |= a.keep_going;
    p.idempotent |= a.idempotent;
    validate(&w)?;
    Ok(w)
}

fn validate(w: &Workload) -> Result<()> {
    let p = &w.produce;
    let bad = |m: &str| Err(PerfError::Config(m.to_string()));
    if w.partitions < 1 {
        return bad("--partitions must be at least 1");
    }
    if p.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return bad("--rate must be positive");
    }
    if w.mode == Mode::EndToEnd && p.rate.is_none() {
        return bad("e2e needs a fixed rate (--rate or --mb-per-sec): at max rate end-to-end latency only measures the backlog");
    }
    if w.mode == Mode::EndToEnd && p.record_size < producer::STAMP_LEN {
        return bad("e2e needs --record-size of at least 8 (the send time travels in the value)");
    }
    if w.mode == Mode::EndToEnd && p.acks == 0 {
        return bad("e2e needs acks=1 or all to know when consumers have caught up");
    }
    if p.duration.is_none() && p.records.is_none() && w.mode != Mode::Consume {
        return bad("give --duration or --records");
    }
    if p.idempotent && p.acks != -1 {
        return bad("--idempotent needs acks=all (as Kafka's clients require)");
    }
    if p.idempotent && p.max_in_flight > 5 {
        return bad("--idempotent allows at most 5 requests in flight (the broker remembers 5 batches per producer)");
    }
    if p.max_in_flight == 0 || p.producers == 0 || w.fetch.consumers == 0 {
        return bad("--max-in-flight, --producers and --consumers must be at least 1");
    }
    Ok(())
}

async fn run_and_report(w: Workload, a: &RunArgs) -> Result<()> {
    let label = a.label.clone().unwrap_or_else(|| w.name.clone());
    let report = run::execute(&w, &a.bootstrap, &label, !a.quiet).await?;
    let settings: Vec<String> = report
        .settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("{} against {}: {}", label, a.bootstrap, settings.join(" "));
    print!("{}", report::table(std::slice::from_ref(&report)));
    if let Some(path) = &a.json {
        report.write_json(path)?;
    }
    if let Some(path) = &a.plot {
        plot::draw(std::slice::from_ref(&report), path)?;
    }
    match report.failure() {
        Some(f) => Err(PerfError::RunFailed(f)),
        None => Ok(()),
    }
}

fn compare(files: &[String], plot_path: Option<&str>) -> Result<()> {
    let reports = files
        .iter()
        .map(|f| Report::read_json(f))
        .collect::<Result<Vec<_>>>()?;
    print!("{}", report::table(&reports));
    if let Some(path) = plot_path {
        plot::draw(&reports, path)?;
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Presets => {
            for (name, what) in PRESETS {
                println!("{name:<18} {what}");
            }
            Ok(())
        }
        Command::Compare { files, plot } => compare(&files, plot.as_deref()),
        Command::Produce(a) => block_on(Some(Mode::Produce), None, a),
        Command::Consume(a) => block_on(Some(Mode::Consume), None, a),
        Command::E2e(a) => block_on(Some(Mode::EndToEnd), None, a),
        Command::Run { preset, args } => block_on(None, Some(&preset), args),
    };
    if let Err(e) = result {
        eprintln!("perf: {e}");
        std::process::exit(1);
    }
}

fn block_on(mode: Option<Mode>, preset: Option<&str>, a: RunArgs) -> Result<()> {
    let w = workload(mode, preset, &a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| PerfError::Config(format!("cannot start the runtime: {e}")))?;
    rt.block_on(run_and_report(w, &a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["perf", "produce"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Produce(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_override_a_preset() {
        let a = args(&[
            "--workload",
            "latency",
            "--mb-per-sec",
            "10",
            "--record-size",
            "512",
            "-d",
            "3",
        ]);
        let w = workload(Some(Mode::Produce), None, &a).unwrap();
        assert_eq!(w.produce.topic, "perf-latency");
        assert_eq!(w.produce.rate, Some(20480.0));
        assert_eq!(w.produce.duration, Some(Duration::from_secs(3)));
        assert_eq!(w.produce.acks, -1);
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let e2e_max = workload(Some(Mode::EndToEnd), None, &args(&[])).unwrap_err();
        assert!(e2e_max.to_string().contains("fixed rate"));
        assert!(workload(Some(Mode::Produce), None, &args(&["--acks", "2"])).is_err());
        assert!(workload(
            Some(Mode::Produce),
            None,
            &args(&["--compression", "brotli"])
        )
        .is_err());
        assert!(workload(None, Some("nope"), &args(&[])).is_err());
    }
}
