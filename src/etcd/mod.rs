//! A blocking etcd v3 client over etcd's JSON gRPC gateway (`POST /v3/...` on a member's
//! client URL), for cluster mode: leases, keys, transactions with compares, and watches.
//!
//! Why the gateway and not gRPC: no async runtime, no `protoc`, a handful of crates, and
//! failure handling that stays explicit — every unary call carries a per-call timeout and
//! moves on to the next endpoint when a member is down, hung or without a leader
//! (`../shared/reference/etcd.md`, option 3, measured on etcd 3.4).
//!
//! It sits at the store level and imports nothing from the crate: the layers above build
//! membership, the leader lease and fencing on it.
//!
//! # Parts
//!
//! * [`Client`] — the typed unary calls ([`Client::lease_grant`],
//!   [`lease_keepalive`](Client::lease_keepalive), [`lease_revoke`](Client::lease_revoke),
//!   [`put`](Client::put), [`get`](Client::get), [`range_prefix`](Client::range_prefix) (paged),
//!   [`delete`](Client::delete), [`txn`](Client::txn), [`compact`](Client::compact)), the
//!   endpoint rotation and [`reachable`](Client::reachable)/[`last_error`](Client::last_error)
//!   for status pages.
//! * [`Watch`] — a watch on a key or prefix from a revision: a blocking stream of
//!   [`WatchEvent`]s with a read-idle timeout.
//! * [`decode`] — every answer, bytes to typed values, as pure functions (fuzzed by
//!   `fuzz/fuzz_targets/etcd_response.rs`). The proto3 JSON quirks live there and only there.
//! * [`types`] — keys, pairs, transactions and answers.
//!
//! # Failures and retries
//!
//! A call tries the endpoint that answered last; on a transport error, a timeout or an
//! "unavailable" answer (no leader, no quorum: gRPC code 14) it tries the next, each endpoint
//! at most once, so a call takes at most `timeout × endpoints`. Every request carries the
//! `hasleader` metadata, so a member cut off from its leader answers "no leader" at once
//! instead of waiting out etcd's own 7 s request timeout. Any other answer from etcd ends the
//! call. A call that timed out or lost its connection **may have been applied**: retrying a
//! put is harmless, but a retried create-if-absent [`Txn`] may fail on the key it created
//! itself (look at the failure branch's range), a retried revoke may answer
//! [`EtcdError::LeaseNotFound`], and a retried grant may leave a lease to expire unused.
//!
//! # Example
//!
//! ```no_run
//! use heartsink::etcd::{Client, Compare, CompareOp, Txn, TxnOp};
//!
//! # fn main() -> Result<(), heartsink::etcd::EtcdError> {
//! let etcd = Client::new(vec!["127.0.0.1:2379".into()], Client::DEFAULT_TIMEOUT)?;
//! let lease = etcd.lease_grant(5)?;
//! let won = etcd
//!     .txn(
//!         &Txn::new()
//!             .when([Compare::create_revision("hb/leader", CompareOp::Equal, 0)])
//!             .and_then([TxnOp::put("hb/leader", "node-a", Some(lease))])
//!             .or_else([TxnOp::get("hb/leader")]),
//!     )?
//!     .succeeded;
//! # let _ = won;
//! # Ok(())
//! # }
//! ```

mod client;
pub mod decode;
mod encode;
pub mod types;
mod watch;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use client::Client;
pub use types::{
    prefix_end, prefix_range, Compare, CompareOp, CompareTarget, DeleteResponse, EventKind, Kv, LeaseId, OpResponse,
    PutResponse, RangeResponse, Txn, TxnOp, TxnResponse, WatchEvent, WatchMessage,
};
pub use watch::Watch;

/// Why an etcd call failed. [`EtcdError::is_retryable`] tells the failures another endpoint
/// (or a later try) may not have.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EtcdError {
    /// The endpoint list is empty, or an endpoint is not `[http://]host:port` (no TLS: only
    /// plain `http://`). Remedy: fix the configured endpoints.
    BadEndpoint(String),
    /// No HTTP exchange with `endpoint`: connection refused or reset, closed mid-answer, host
    /// not found. The member is down or the address is wrong; the call tried every endpoint
    /// and this is the last failure.
    Unreachable {
        /// The endpoint that failed last.
        endpoint: String,
        /// What the transport said.
        reason: String,
    },
    /// `endpoint` did not answer within the per-call timeout: hung (e.g. SIGSTOPped),
    /// overloaded, or a black-holed network. The request may have been applied.
    Timeout {
        /// The endpoint that failed last.
        endpoint: String,
    },
    /// etcd answered "unavailable" (gRPC code 14, HTTP 503): the member has no leader, lost
    /// quorum, or timed out inside raft. Another member, or a later try once a leader is
    /// elected, may succeed.
    Unavailable {
        /// etcd's message (e.g. `etcdserver: no leader`).
        message: String,
    },
    /// etcd refused the request with another gRPC status, e.g. code 3 (invalid argument: too
    /// many operations in a txn, a request over `--max-request-bytes`) or 9 (failed
    /// precondition). Retrying the same request will not help.
    Status {
        /// The gRPC status code (2 when the gateway gave none).
        code: i32,
        /// etcd's message.
        message: String,
    },
    /// The answer is not the JSON etcd sends (a proxy in the way, a newer or broken server,
    /// or an answer over the size limit). The text says what did not fit.
    Decode(String),
    /// The revision asked for has been compacted away (a range at an old revision, or a
    /// watch starting below the compaction). Remedy: list again and watch from the new
    /// revision.
    Compacted {
        /// The compaction revision, when etcd tells it (a watch does, a range does not).
        compact_revision: Option<i64>,
    },
    /// The lease does not exist: it expired or was revoked (from a revoke, or a put or txn
    /// binding a key to it). A keepalive on such a lease is not an error: it returns `None`.
    LeaseNotFound,
    /// A watch received nothing for `idle`: the member may be hung, or the range is quiet.
    /// Remedy: check the state with a unary call (which fails over) and watch again from
    /// [`Watch::revision`] + 1.
    WatchIdle {
        /// The read-idle timeout that passed.
        idle: Duration,
    },
    /// The server canceled the watch for a reason other than compaction (etcd's reason as
    /// given, possibly empty). Remedy: watch again from [`Watch::revision`] + 1.
    WatchCanceled {
        /// etcd's cancel reason.
        reason: String,
    },
    /// The watch stream ended without a cancel: the member closed the connection (stopped,
    /// restarted). Remedy: watch again from [`Watch::revision`] + 1.
    WatchClosed,
}

impl EtcdError {
    /// Whether another endpoint, or a later try, may succeed where this failed: unreachable,
    /// timed out, unavailable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EtcdError::Unreachable { .. } | EtcdError::Timeout { .. } | EtcdError::Unavailable { .. })
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::BadEndpoint(e) => write!(f, "bad etcd endpoint: {e}"),
            EtcdError::Unreachable { endpoint, reason } => write!(f, "etcd at {endpoint} unreachable: {reason}"),
            EtcdError::Timeout { endpoint } => write!(f, "etcd at {endpoint} did not answer in time"),
            EtcdError::Unavailable { message } => write!(f, "etcd unavailable: {message}"),
            EtcdError::Status { code, message } => write!(f, "etcd refused the request (code {code}): {message}"),
            EtcdError::Decode(e) => write!(f, "unexpected answer from etcd: {e}"),
            EtcdError::Compacted { compact_revision: Some(r) } => {
                write!(f, "etcd revision compacted (compaction at revision {r})")
            }
            EtcdError::Compacted { compact_revision: None } => write!(f, "etcd revision compacted"),
            EtcdError::LeaseNotFound => write!(f, "etcd lease not found (expired or revoked)"),
            EtcdError::WatchIdle { idle } => write!(f, "etcd watch received nothing for {idle:?}"),
            EtcdError::WatchCanceled { reason } => write!(f, "etcd canceled the watch: {reason}"),
            EtcdError::WatchClosed => write!(f, "etcd watch stream closed"),
        }
    }
}

impl std::error::Error for EtcdError {}
