//! `perf`: producer/consumer load against any Kafka-compatible bootstrap
//! server, with latency histograms, JSON results and plots.

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
mod schedule;
mod throughput;

fn main() {
    eprintln!("perf: not implemented yet");
    std::process::exit(2);
}
