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
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit (the hub also applies them when it starts)
    Migrate {
        /// Database URL: sqlite://PATH or postgres://USER@HOST/DB
        #[arg(
            long,
            env = "TRADEHOOK_DATABASE",
            default_value = "sqlite://tradehook.db"
        )]
        database: String,
    },
    /// Measure a hub end to end: throughput, latency, losses, CPU and memory
    Bench(BenchArgs),
    /// Write a first config file (token, public URL, HTTPS, a TradingView and a Freqtrade
    /// source) and print what to paste into TradingView and Freqtrade
    Init(crate::setup::InitArgs),
    /// Check a running setup as senders see it, and say what to fix
    Doctor(crate::setup::doctor::DoctorArgs),
    /// Print the headers a Standard Webhooks or HMAC sender adds for a body
    Sign(crate::tools::SignArgs),
    /// Check a captured request's signature, and say why it fails
    Verify(crate::tools::VerifyArgs),
    /// Post a payload to a source, signed as the source expects
    Send(crate::tools::SendArgs),
    /// Manage endpoints (where deliveries go)
    Endpoints {
        #[command(flatten)]
        conn: crate::client::Conn,
        #[command(subcommand)]
        command: crate::client::EndpointCmd,
    },
    /// Manage sources (where events come from)
    Sources {
        #[command(flatten)]
        conn: crate::client::Conn,
        #[command(subcommand)]
        command: crate::client::SourceCmd,
    },
    /// Manage applications (provider mode: your customers), their keys and portal links
    Apps {
        #[command(flatten)]
        conn: crate::client::Conn,
        #[command(subcommand)]
        command: crate::client::AppCmd,
    },
    /// Manage trading accounts (where orders go) and their kill switch
    Accounts {
        #[command(flatten)]
        conn: crate::client::Conn,
        #[command(subcommand)]
        command: crate::client::AccountCmd,
    },
    /// Run stored signals through a fresh paper account with an order destination's
    /// settings, and print how it would have done
    Backtest {
        #[command(flatten)]
        conn: crate::client::Conn,
        #[command(flatten)]
        args: crate::client::BacktestArgs,
    },
    /// Look at events, or follow them live
    Events {
        #[command(flatten)]
        conn: crate::client::Conn,
        #[command(subcommand)]
        command: crate::client::EventCmd,
    },
    /// Look at deliveries and their attempts; retry one
    Deliveries {
        #[command(flatten)]
        conn: crate::client::Conn,
        #[command(subcommand)]
        command: crate::client::DeliveryCmd,
    },
    /// Deliver again every event since a time (or catch one endpoint up with --endpoint)
    Replay {
        #[command(flatten)]
        conn: crate::client::Conn,
        /// RFC 3339 time or Unix seconds
        #[arg(long)]
        since: String,
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}
