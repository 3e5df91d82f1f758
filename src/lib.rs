//! heartsink: a heartbeat sink. See the README for what it does and how to run it.
//!
//! # The design contract: layers that point one way
//!
//! Each module imports only modules to its left (a test of a module may use those too):
//!
//! ```text
//! util, io  <  proto (wire)  <  state, registry, sched, store, etcd (models)  <  engine (data plane)
//!   <  control (control plane)  <  api, confd (surfaces)  <  config, daemon  <  commands
//!      (main: serve, load, bench, agent, confd)
//! ```
//!
//! The types that cross from one component to another live in leaf modules both sides
//! import: [`engine::change`] (what the workers tell the control thread),
//! [`control::snapshot`] (what the control thread publishes) and [`control::command`] (what
//! the API asks). The engine hands batches from extra sockets to a [`engine::Lane`] it is
//! given, so it never names confd. `unsafe` is denied everywhere but [`io`], where each block
//! carries a `SAFETY` line.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod agent;
pub mod api;
pub mod bench;
pub mod cluster;
pub mod confd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod etcd;
#[allow(unsafe_code)] // the one exception: the syscalls, each block with a SAFETY line
pub mod io;
pub mod load;
pub mod proto;
pub mod registry;
pub mod sched;
pub mod state;
pub mod store;
pub mod util;
