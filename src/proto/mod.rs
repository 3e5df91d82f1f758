//! Sans-IO wire formats and rules. Nothing here touches a socket, a thread or a clock: every
//! function takes bytes (and, where time matters, a `now`) and returns a typed result.
//!
//! The stages of a heartbeat, in the order a packet meets them (cheapest rejection first):
//!
//! 1. [`envelope`]: the Octavia envelope's length and tag framing, then HMAC-SHA256 over the exact wire bytes with
//!    every key of the [`keyring::Keyring`] → [`envelope::Verified`].
//! 2. [`inflate`]: the zlib stream of a `Verified` envelope into a capped per-worker buffer.
//! 3. [`octavia`]: UTF-8 check and a typed JSON parse into a reusable [`octavia::Heartbeat`].
//! 4. [`seqwin`]: the per-sender sequence window (replay and stale suppression).
//!
//! [`service`] is the second message kind in the same Octavia envelope: a service heartbeat (type,
//! address, tags), told apart from an Octavia heartbeat by its first key.
//!
//! Each stage has one error enum. Each variant of the Octavia stages maps to one
//! `drops_total{reason}` label (the data plane's `DropReason`); a service heartbeat's errors
//! share the Octavia labels (`not_utf8`, `not_json`, and `bad_schema` for all the others).
#![forbid(unsafe_code)]

mod de;
pub mod envelope;
pub mod inflate;
pub mod keyring;
pub mod octavia;
pub mod seqwin;
pub mod service;
