//! The command line.

use clap::{Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::config::ServeArgs;

/// tradehook: receive, verify, de-duplicate, store and deliver trade signals.
#[derive(Debug, Parser)]
#[command(name = "tradehook", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (HTTP ingest, management API and delivery workers)
    Serve(ServeArgs),
    /// Measure a hub end to end: throughput, latency, losses, CPU and memory
    Bench(BenchArgs),
}
