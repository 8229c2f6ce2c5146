//! The long-running node (`meshstudio up`): owns the data dir while it runs
//! — database, blob store, network endpoint — and serves the local API the
//! CLI (and later the web UI) goes through.
//!
//! Knows how to run and expose requests; what a request does is
//! `request`'s business, how bytes sync is the network modules' (later).

pub mod api;
pub mod info;
mod logging;
pub mod relay;
mod run;

pub use run::{UpOptions, up};
