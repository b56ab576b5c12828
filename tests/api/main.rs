//! Black-box tests of the hub over real HTTP, against a real local receiver.

mod abuse;
mod accounts;
mod acme;
mod applications;
mod bench;
mod browser;
mod config_file;
mod dashboard;
mod delivery;
mod flow;
mod formats;
mod freqtrade_bot;
mod guard;
mod helpers;
mod https;
mod inbound_limits;
mod ingest;
mod management;
mod openapi;
mod orders;
mod platforms;
#[path = "../support/postgres.rs"]
mod postgres;
mod process;
mod rendering;
mod retention;
mod secrets;
mod setup;
mod subscriptions;
mod venue_sim;
mod venues;
