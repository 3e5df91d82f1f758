//! Cluster mode: several sinks on one etcd, one fenced leader, liveness merged across members.
//!
//! Layers: this module sits with the surfaces (above the control plane): it drives etcd
//! ([`crate::etcd`]) and the peers, and talks to the control thread only through
//! [`crate::control::cluster`] (shared atomics and [`ClusterInput`]s).
//!
//! # What lives where
//!
//! | etcd key (under `prefix`) | what | written |
//! |---|---|---|
//! | `members/<node>` | the member's addresses (JSON), bound to its lease | at join |
//! | `leader` | the leader's node name, bound to its lease; its create revision is the **term** | at election |
//! | `failovers/<id, 20 digits>` | each failover record (JSON) | by the leader only, fenced |
//! | `amphorae/<id>` | an amphora's settings (expected listeners, load balancer, zone) | by any member, answered once committed |
//! | `tables/volumes/<id, 20 digits>` | each volume, with its state and placement promise | by the leader only, fenced |
//! | `tables/meta/sched_next_id` | the scheduler's next volume id | by the leader only, fenced |
//! | `tables/pools/<name>` | each load-balancing pool | by the leader only, fenced |
//! | `tables/locks/<type>\|<addr>` | each locked service score (`{"score": n}`) | by the leader only, fenced |
//! | `changed/amphorae`, `changed/failovers` | markers: a prefix is read back only when its marker moved | with the writes |
//!
//! # One control plane
//!
//! The leader is the only writer of `tables/` and `failovers/`: a member that does not lead
//! forwards every write of volumes, pools, locks, deregistrations and manual failovers to the
//! leader's admin API, and the leader answers once etcd has it (no leader known, or the leader
//! unreachable: `503` with `Retry-After`). Every other member follows `tables/` with a watch
//! (thread `cluster-mirror`: one full read, then only the changes) and serves the same volumes,
//! pools and locks. A new leader reads `tables/` whole before it acts, and its scheduler waits
//! for one digest from every live peer (at most `heartbeat_timeout`): the peers' digests relay
//! every service registration they accepted (newest per service), so every member's registry
//! holds every machine any member heard, and a machine is dead for the scheduler only when no
//! member heard it.
//!
//! Each member holds **one** lease (`lease_ttl`) kept alive every `lease_ttl / 3`: leases and
//! keep-alives grow with members, never with the fleet. Heartbeats never reach etcd: members
//! exchange [`digest`]s directly (see its docs), so etcd writes follow state changes only.
//!
//! # Leadership
//!
//! Cobalt's lease semantics: acquire (a transaction that creates `leader` only if absent,
//! bound to the member's lease), refresh (the lease's keep-alives), release (a graceful stop
//! deletes the key and revokes the lease: a successor within the next campaign round, about
//! 300 ms). After `kill -9` the key goes with the lease, `lease_ttl` later. A member decides it
//! leads from a **deadline**: the send time of its last acknowledged keep-alive plus the TTL
//! minus [`LEADER_MARGIN_NS`]; the control thread checks it before every dispatch, so a member
//! paused past its lease (SIGSTOP) stops acting on waking before it learns anything. Every
//! leader write is **fenced**: a transaction that compares the `leader` key's create revision
//! with the term, so a deposed leader writes nothing; a failover action runs only after its
//! record was claimed `in_progress` by such a transaction.

pub mod agent;
pub mod digest;
mod durable;
pub mod import;
mod mirror;
pub mod view;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::control::cluster::{ClusterInput, ClusterView, Member, Shared};

/// How much earlier than the lease's expiry a leader stops acting, ns (etcd.md §4.5: the
/// measured gap between a holder's deadline and a successor was 49–129 ms on loopback).
pub const LEADER_MARGIN_NS: u64 = 1_000_000_000;

/// `[cluster]`: cluster mode (absent: the embedded single node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://127.0.0.1:2379`); empty: single mode.
    pub etcd: Vec<String>,
    /// This member's name (default: the host name); unique in the cluster.
    pub node: String,
    /// The key prefix of this cluster in etcd.
    pub prefix: String,
    /// The member lease's TTL, seconds (≥ 3).
    pub lease_ttl: u64,
    /// Seconds between digests to the peers (> 0, below `heartbeat_timeout` / 3).
    pub digest_interval: f64,
    /// Per-call timeout of etcd calls, seconds.
    pub etcd_timeout: f64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            etcd: Vec::new(),
            node: String::new(),
            prefix: "/heartsink".into(),
            lease_ttl: 10,
            digest_interval: 0.5,
            etcd_timeout: 1.5,
        }
    }
}

impl ClusterConfig {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// Checks the settings; the message names the key.
    pub fn validate(&self, heartbeat_timeout: f64) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.node.is_empty() || self.node.len() > 64 || !self.node.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err("cluster.node must be 1-64 printable characters without '/'".into());
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            return Err("cluster.prefix must start with '/' and name something".into());
        }
        if !(3..=3600).contains(&self.lease_ttl) {
            return Err("cluster.lease_ttl must be in 3..=3600 seconds".into());
        }
        if !(self.digest_interval > 0.0 && self.digest_interval <= heartbeat_timeout / 3.0) {
            return Err("cluster.digest_interval must be above 0 and at most heartbeat_timeout / 3".into());
        }
        if !(self.etcd_timeout >= 0.05 && self.etcd_timeout <= 30.0) {
            return Err("cluster.etcd_timeout must be in 0.05..=30 seconds".into());
        }
        for e in &self.etcd {
            if !e.starts_with("http://") && e.contains("://") {
                return Err(format!("cluster.etcd: {e:?} is not an http:// URL (TLS to etcd is not supported)"));
            }
        }
        Ok(())
    }

    /// The per-call etcd timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.etcd_timeout)
    }

    /// `prefix` + `rest`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix.trim_end_matches('/'))
    }
}
