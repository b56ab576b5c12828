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
    /// Print the headers a Standard Webhooks or HMAC sender adds for a body
    Sign(crate::tools::SignArgs),
    /// Check a captured request's signature, and say why it fails
    Verify(crate::tools::VerifyArgs),
    /// Post a payload to a source, signed as the source expects
    Send(crate::tools::SendArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}
