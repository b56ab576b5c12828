//! Venues: where an account's orders execute. [`paper`] is the hub's own simulated exchange,
//! pure and deterministic; live venues will sit beside it behind one interface.

pub mod paper;
