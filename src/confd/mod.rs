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
//! * [`heartsink`]: answers to heartsink's own types (100–105) from the control thread's snapshot.
//!
//! A server is: `RequestScratch::parse` (drop on error, count the label) →
//! `ConfigIndex::write_answer` or `heartsink::answer_heartsink` into a `ReplyMsg` →
//! `encode_signed` with the request's `rsalt`, sent to the datagram's source address and port,
//! from the address it was sent to ([`server::handle`]); the buffers are kept from one request
//! to the next ([`server::ConfdScratch`]), so a steady stream of requests allocates nothing
//! but `DOWN_SENDERS`'s one allocation per request (`imbl`'s range iterator; `tests/alloc.rs`). `parse_request`, `ConfigIndex::answer` and `encode_reply` are the same
//! with owned values, for clients and tests.
#![forbid(unsafe_code)]

pub mod budget;
pub mod cli;
pub mod client;
pub mod ganeti;
pub mod heartsink;
mod json;
pub mod load;
pub mod proto;
pub mod replay;
mod request;
pub mod server;
