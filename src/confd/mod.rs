//! Ganeti confd: the UDP query protocol of Ganeti clusters (reference: Ganeti 3.0.2), sans-IO.
//!
//! * [`proto`]: the wire format — request parsing and verification with the real daemon's
//!   rules and drop reasons ([`proto::RequestError`]), signed replies in the daemon's exact
//!   formatting, request encoding in the Python client's exact formatting, reply verification.
//! * [`ganeti`]: answers to request types 0–11 from a Ganeti `config.data`
//!   ([`ganeti::ConfigIndex`]), with the daemon's statuses, error texts and serials.
//! * [`client`]: the Python `ConfdClient`'s semantics (coverage, quorum, serial filter, expiry)
//!   as a sans-IO core, with blocking and `mio` drivers.
//! * [`load`]: a confd load generator (windowed, pre-signed requests) for `heartsink bench`.
//!
//! A server is: `parse_request` (drop on error, count the label) → `ConfigIndex::answer` →
//! `encode_reply` with the request's `rsalt`, sent to the datagram's source address and port,
//! from the address it was sent to.
#![forbid(unsafe_code)]

pub mod budget;
pub mod cli;
pub mod client;
pub mod ganeti;
mod json;
pub mod load;
pub mod proto;
pub mod replay;
pub mod server;
