//! heartsink: a heartbeat sink. See the README for what it does and how to run it.
#![deny(missing_docs)]

pub mod agent;
pub mod api;
pub mod bench;
pub mod confd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod io;
pub mod load;
pub mod proto;
pub mod registry;
pub mod sched;
pub mod state;
pub mod store;
pub mod util;
