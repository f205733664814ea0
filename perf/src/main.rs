//! `perf`: producer/consumer load against any Kafka-compatible bootstrap
//! server, with latency histograms, JSON results and plots.

mod batch;
mod cluster;
mod connection;
mod error;
mod latency;
mod schedule;

fn main() {
    eprintln!("perf: not implemented yet");
    std::process::exit(2);
}
