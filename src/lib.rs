//! tradehook: a self-hosted trading webhook hub.
//!
//! The modules follow the data flow:
//!
//! ```text
//! api::inbound ─> ingest ─> store ─> dispatch ─> deliver
//!  (HTTP in)      verify     event +   due work    sign, send,
//!                 parse      deliveries per        classify
//!                 dedupe     in one    endpoint
//!                            commit
//! ```
//!
//! `domain` holds the validated types every layer shares, `registry` the configuration the hot
//! path reads from memory, `api` the management API, `server` the bounded accept loop, and
//! `app` puts it all together.

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod deliver;
pub mod dispatch;
pub mod domain;
pub mod ingest;
pub mod metrics;
pub mod ratelimit;
pub mod redact;
pub mod registry;
pub mod render;
pub mod server;
pub mod store;
pub mod tools;
pub mod trading;
