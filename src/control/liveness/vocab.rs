//! What the liveness state machine takes and tells: the groups amphorae are judged in, the
//! engine's signals, what a probe reads, an amphora's liveness, and why failovers are
//! suspended.

use serde::{Deserialize, Serialize};

use crate::proto::octavia::Uuid;

/// The group an amphora is judged in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    /// Neither a zone nor a load balancer set.
    Default,
    /// Its zone (set through the admin API).
    Zone(String),
    /// Its load balancer, when no zone is set.
    LoadBalancer(Uuid),
}

impl GroupKey {
    /// The group of an amphora with `zone` and `load_balancer`.
    pub fn of(zone: Option<&str>, load_balancer: Option<Uuid>) -> GroupKey {
        match (zone, load_balancer) {
            (Some(z), _) => GroupKey::Zone(z.to_owned()),
            (None, Some(lb)) => GroupKey::LoadBalancer(lb),
            (None, None) => GroupKey::Default,
        }
    }
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupKey::Default => f.write_str("default"),
            GroupKey::Zone(z) => write!(f, "zone:{z}"),
            GroupKey::LoadBalancer(lb) => write!(f, "lb:{lb}"),
        }
    }
}

/// Why automatic failovers are suspended (or, for [`SuspendReason::Partition`] and
/// [`SuspendReason::SecondaryRate`], held back in one group).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SuspendReason {
    /// heartsink started less than the grace ago; senders have not all had time to beat.
    StartupGrace {
        /// Seconds left.
        remaining_s: f64,
    },
    /// heartsink itself dropped datagrams (kernel buffer or rings): silence may be its own.
    Overloaded {
        /// Drops in the check that saw them.
        drops: u64,
        /// Seconds until the suspension lifts if no new drops come.
        remaining_s: f64,
    },
    /// Workers applied heartbeats late or their rings are filling up.
    WorkersLagging {
        /// Late heartbeats in the check that saw them.
        late: u64,
        /// Fullest ring, fraction.
        ring_fill: f64,
        /// Seconds until the suspension lifts.
        remaining_s: f64,
    },
    /// The control thread itself was stalled (paused process, starved CPU).
    ControlStalled {
        /// The gap between two checks, seconds.
        gap_s: f64,
        /// Seconds until the suspension lifts.
        remaining_s: f64,
    },
    /// Nearly the whole fleet is overdue at once, or the sink hears almost none of the
    /// heartbeats its fleet sends in an interval: the sink's own network or switch is likelier
    /// than the fleet dying. Every group stops (Kubernetes: every zone in full disruption),
    /// and stays stopped for `heartbeat_timeout` after it sees again (Kubernetes resets every
    /// node's probe time when it leaves full disruption), so every amphora has a full timeout
    /// to be heard before it can be failed over.
    SinkBlind {
        /// Overdue amphorae (stale ones included).
        overdue: usize,
        /// Stale amphorae.
        stale: usize,
        /// Tracked amphorae.
        tracked: usize,
        /// Seconds the suspension lasts once fewer are overdue.
        remaining_s: f64,
    },
    /// Cluster mode: this member does not lead; only the leader fails amphorae over.
    NotLeader,
    /// Cluster mode: etcd does not answer (no quorum, or this member is cut off from it); no
    /// member can lead, so none fails anything over.
    EtcdUnreachable,
    /// Cluster mode: this member became leader less than `heartbeat_timeout` ago; its view of
    /// the fleet may be partial, so every amphora gets a full timeout first (Nomad's new
    /// leader grants every node a fresh TTL).
    LeaderGrace {
        /// Seconds left.
        remaining_s: f64,
    },
    /// Cluster mode: a live member's own self-awareness rules hold its failovers back (it may
    /// be deaf or overloaded): amphorae it would have heard must not be failed over.
    MemberImpaired {
        /// The member.
        node: String,
    },
    /// Cluster mode: a live member's digests stopped arriving: what it heard is unknown.
    MemberSilent {
        /// The member.
        node: String,
        /// Seconds since its last digest (`null`: none yet).
        silent_s: Option<f64>,
    },
    /// A small group in partial disruption: its failovers wait (the others go on).
    Partition {
        /// The group (`default`, `zone:NAME`, `lb:ID`).
        group: String,
        /// Its overdue amphorae.
        overdue: usize,
        /// Its stale amphorae.
        stale: usize,
        /// Its tracked amphorae.
        tracked: usize,
    },
    /// A large group in partial disruption: its failovers go at the secondary rate.
    SecondaryRate {
        /// The group.
        group: String,
        /// Its overdue amphorae.
        overdue: usize,
        /// Its stale amphorae.
        stale: usize,
        /// Its tracked amphorae.
        tracked: usize,
        /// Failovers per second.
        rate_per_s: f64,
    },
}

impl SuspendReason {
    /// A short label (metrics).
    pub fn label(&self) -> &'static str {
        match self {
            SuspendReason::StartupGrace { .. } => "startup_grace",
            SuspendReason::Overloaded { .. } => "overloaded",
            SuspendReason::WorkersLagging { .. } => "workers_lagging",
            SuspendReason::ControlStalled { .. } => "control_stalled",
            SuspendReason::SinkBlind { .. } => "sink_blind",
            SuspendReason::NotLeader => "not_leader",
            SuspendReason::EtcdUnreachable => "etcd_unreachable",
            SuspendReason::LeaderGrace { .. } => "leader_grace",
            SuspendReason::MemberImpaired { .. } => "member_impaired",
            SuspendReason::MemberSilent { .. } => "member_silent",
            SuspendReason::Partition { .. } => "partition",
            SuspendReason::SecondaryRate { .. } => "secondary_rate",
        }
    }

    /// The group it concerns (`None`: every automatic failover is suspended).
    pub fn group(&self) -> Option<&str> {
        match self {
            SuspendReason::Partition { group, .. } | SuspendReason::SecondaryRate { group, .. } => Some(group),
            _ => None,
        }
    }

    /// Every label, for metrics.
    pub const LABELS: [&'static str; 12] = [
        "startup_grace",
        "overloaded",
        "workers_lagging",
        "control_stalled",
        "sink_blind",
        "not_leader",
        "etcd_unreachable",
        "leader_grace",
        "member_impaired",
        "member_silent",
        "partition",
        "secondary_rate",
    ];
}

/// What the engine's counters said since the previous health check.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// Datagrams received.
    pub received: u64,
    /// Heartbeats applied (verified, in time) since the last check: the fleet the sink still
    /// hears. Far fewer than the fleet's usual rate means the sink is blind
    /// ([`SuspendReason::SinkBlind`]).
    pub accepted: u64,
    /// Kernel and ring drops.
    pub drops: u64,
    /// Heartbeats dropped as `late`.
    pub late: u64,
    /// Fullest worker ring, fraction of its capacity.
    pub ring_fill: f64,
}

/// The liveness view of one amphora.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Live {
    /// Refreshed within `heartbeat_timeout`.
    Alive,
    /// Silent for `heartbeat_timeout` or more.
    Stale,
}

/// What a probe read in an amphora's shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probed {
    /// Its latest liveness refresh, ns.
    pub last_refresh: u64,
    /// Its accepted heartbeats so far (for learning its interval; wraps).
    pub heartbeats: u64,
}
