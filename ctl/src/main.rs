//! `brokerctl`: an operator CLI that speaks the Kafka protocol to the
//! broker (or to any Kafka cluster), and the broker's admin API for
//! `cluster health`, with rpk-like commands and either readable tables or
//! `--json`.
//!
//! This file owns the command line and the exit code only: every command
//! lives in its own module, and a failure of any kind is one line on
//! stderr and exit code 1. It never talks to the broker itself.

mod admin_http;
mod client;
mod cluster;
mod connection;
mod consume;
mod error;
mod group;
mod output;
mod partition;
mod produce;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::Client;
use crate::output::Output;

#[derive(Parser, Debug)]
#[command(
    name = "brokerctl",
    version,
    about = "Operate a Kafka-compatible broker"
)]
struct Cli {
    /// Bootstrap servers, `host:port[,host:port]`.
    #[arg(
        short = 'b',
        long,
        global = true,
        env = "BROKERCTL_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// Print JSON instead of tables (JSON lines for produce and consume).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, describe, configure and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCmd),
    /// List and describe consumer groups; move their committed offsets.
    #[command(subcommand)]
    Group(group::GroupCmd),
    /// The cluster's id, controller and nodes.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Move partitions between nodes.
    #[command(subcommand)]
    Partition(partition::PartitionCmd),
    /// Write records: `--value`, or one per stdin line.
    Produce(produce::ProduceArgs),
    /// Read records from a topic.
    Consume(consume::ConsumeArgs),
}

fn run(cli: Cli) -> error::Result<()> {
    let out = Output { json: cli.json };
    // The admin API alone: no Kafka connection needed.
    if let Command::Cluster(cluster::ClusterCmd::Health { admin }) = &cli.command {
        return cluster::health(admin, &out);
    }
    let mut client = Client::connect(&cli.brokers)?;
    match cli.command {
        Command::Topic(cmd) => topic::run(&mut client, &out, cmd),
        Command::Group(cmd) => group::run(&mut client, &out, cmd),
        Command::Cluster(cmd) => cluster::run(&mut client, &out, cmd),
        Command::Partition(cmd) => partition::run(&mut client, &out, cmd),
        Command::Produce(args) => produce::run(&mut client, &out, args),
        Command::Consume(args) => consume::run(&mut client, &out, args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brokerctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli =
            Cli::try_parse_from(["brokerctl", "topic", "list", "--json", "-b", "h:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.brokers, "h:1");
    }
}
