//! Sans-IO wire formats and rules. Nothing here touches a socket, a thread or a clock: every
//! function takes bytes (and, where time matters, a `now`) and returns a typed result.
//!
//! The stages of a heartbeat, in the order a packet meets them (cheapest rejection first):
//!
//! 1. [`envelope`]: length and tag framing, then HMAC-SHA256 over the exact wire bytes with
//!    every key of the [`keyring::Keyring`] → [`envelope::Verified`].
//! 2. [`inflate`]: the zlib stream of a `Verified` envelope into a capped per-worker buffer.
//! 3. [`octavia`]: UTF-8 check and a typed JSON parse into a reusable [`octavia::Heartbeat`].
//! 4. [`seqwin`]: the per-sender sequence window (replay and stale suppression).
//!
//! [`service`] is the second message kind in the same envelope: a service heartbeat (type,
//! address, tags), told apart from an Octavia heartbeat by its first key.
//!
//! Each stage has one error enum; each variant maps to one `drops_total{reason}` label
//! (see [`crate::engine::DropReason`]).
#![forbid(unsafe_code)]

mod de;
pub mod envelope;
pub mod inflate;
pub mod keyring;
pub mod octavia;
pub mod seqwin;
pub mod service;
