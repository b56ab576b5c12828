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
//! path reads from memory, `security` signatures, secrets at rest and their masking, `api` the
//! management API, `server` the bounded accept loop, and `app` puts it all together.
//!
//! The layers, lowest first; a module uses only its own layer and those below
//! (`tests/layers.rs` reads the source and checks it):
//!
//! ```text
//! domain trading metrics ratelimit   values and pure rules
//! security                           signing, verification, secrets at rest, redaction
//! model                              the records (endpoints, sources, tokens, events, deliveries,
//!                                    attempts) and the settings they carry, as plain data
//! store render exchange              records kept in SQLite or PostgreSQL; templates and
//!                                    chat-service presets; the paper exchange
//! deliver                            one attempt over HTTP, its outcome, the retry schedule
//! registry orders                    endpoints, sources and tokens held in memory; order
//!                                    destinations: decide, record, execute
//! ingest dispatch                    the pipeline stages
//! service                            what operators do with records: create, change, rotate,
//!                                    recover, replay, retry; every edge below calls it
//! config proxy tls                   settings from flags, environment and file; trusted
//!                                    proxies; HTTPS certificates
//! api ui server                      HTTP: handlers, the dashboard's pages, and the accept loop
//! app                                the hub, built and run
//! bench client tools setup cli       the commands
//! ```

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod deliver;
pub mod dispatch;
pub mod domain;
pub mod exchange;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod orders;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod render;
pub mod security;
pub mod server;
pub mod service;
pub mod setup;
pub mod store;
pub mod tls;
pub mod tools;
pub mod trading;
pub mod ui;
