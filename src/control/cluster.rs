//! What cluster mode shares between its etcd thread, the control thread and the surfaces: a
//! leaf module (plain types and atomics), so the control plane and the admin API read the
//! cluster's state without importing the etcd machinery.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// One member, as its member key in etcd says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node name.
    pub node: String,
    /// Its heartbeat (UDP) address.
    pub heartbeat: String,
    /// Its admin (HTTP) address.
    pub admin: String,
    /// Its confd address, if it serves confd.
    pub confd: Option<String>,
    /// When it joined, seconds since the Unix epoch.
    pub joined: u64,
    /// Whether it is receiving heartbeats.
    pub ready: bool,
}

/// The cluster as one member sees it (`GET /v1/cluster`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterView {
    /// `single` or `cluster`.
    pub mode: &'static str,
    /// This member's node name.
    pub node: String,
    /// The leader's node name, if one is known.
    pub leader: Option<String>,
    /// The leader's term: the etcd revision that created its leader key (0: none known).
    pub term: u64,
    /// The members whose keys are alive, by node name.
    pub members: Vec<Member>,
    /// etcd as this member reaches it.
    pub etcd: EtcdView,
}

/// etcd as one member reaches it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EtcdView {
    /// The configured client URLs.
    pub endpoints: Vec<String>,
    /// Whether the latest call succeeded.
    pub reachable: bool,
    /// The latest error, while unreachable.
    pub error: Option<String>,
}

/// The cluster state shared by the etcd thread (writer), the control thread and the surfaces
/// (readers). Leadership is a deadline, not a flag: [`Shared::is_leader`] is true only before
/// `leader_until_ns`, which the etcd thread sets to the *send* time of the last acknowledged
/// keep-alive plus the lease's TTL minus a margin; a member paused past that deadline stops
/// acting on its own clock, before etcd can hand the lease to another.
#[derive(Debug)]
pub struct Shared {
    /// Cluster mode is on.
    pub enabled: bool,
    /// Seconds between digests (a member whose digest is 3 of these late reads as silent).
    pub digest_interval_ns: AtomicU64,
    /// This member's node name.
    pub node: String,
    /// Monotonic ns ([`Shared::mono_ns`]) until which this member leads; 0: it does not.
    leader_until_ns: AtomicU64,
    /// The origin of [`Shared::mono_ns`].
    origin: std::time::Instant,
    /// The term this member leads in (0: none).
    term: AtomicU64,
    /// Whether etcd answered the latest call.
    etcd_ok: AtomicBool,
    /// Whether this member's own self-awareness rules hold its failovers back (told to peers
    /// in its digests).
    pub impaired: AtomicBool,
    /// Leadership changes seen by this member (gained or lost).
    pub leader_changes: AtomicU64,
    /// Fenced writes etcd refused because this member no longer held the term.
    pub fenced_refused: AtomicU64,
    /// Writes to etcd, and their bytes.
    pub etcd_writes: AtomicU64,
    /// Bytes written to etcd.
    pub etcd_write_bytes: AtomicU64,
    /// Digests sent to peers and received from them.
    pub digests_sent: AtomicU64,
    /// Digests received and applied.
    pub digests_received: AtomicU64,
    /// Digests refused (bad signature, malformed, unknown member), by any reason.
    pub digests_refused: AtomicU64,
    /// The view for the API.
    pub view: ArcSwap<ClusterView>,
    /// Service registrations to relay to peers (written by the control thread, read by the
    /// digest thread).
    pub relay: parking_lot::Mutex<RelayBuffer>,
    /// Writes forwarded to the leader by this member's API, and those refused for want of one.
    pub forwarded: AtomicU64,
    /// Writes this member's API refused (503) because no leader could take them.
    pub forward_refused: AtomicU64,
    /// The revision of the control-plane state this member mirrors from etcd (0: none yet).
    pub tables_revision: AtomicU64,
    /// Control-plane rows from etcd that did not decode and were skipped (id 0, a value whose
    /// id is not its key's, a duplicate id, bad JSON).
    pub bad_rows: AtomicU64,
    /// Set when this member stops leading: the mirror reads the whole state again (what a
    /// deposed leader changed in memory but etcd refused is replaced by what etcd holds).
    pub mirror_resync: AtomicBool,
    /// Node names by index (index 0: this member): a shard remembers which member heard an
    /// amphora last as two bytes.
    nodes: parking_lot::RwLock<Vec<String>>,
}

impl Shared {
    /// The state of a daemon not in cluster mode.
    pub fn single() -> Arc<Shared> {
        Arc::new(Shared::new(false, String::new(), Vec::new()))
    }

    /// A cluster member's state before it has reached etcd.
    pub fn new(enabled: bool, node: String, endpoints: Vec<String>) -> Shared {
        let node_name = node.clone();
        let view = ClusterView {
            mode: if enabled { "cluster" } else { "single" },
            node: node.clone(),
            etcd: EtcdView { endpoints, reachable: false, error: None },
            ..ClusterView::default()
        };
        Shared {
            enabled,
            digest_interval_ns: AtomicU64::new(1_000_000_000),
            node,
            leader_until_ns: AtomicU64::new(0),
            origin: std::time::Instant::now(),
            term: AtomicU64::new(0),
            etcd_ok: AtomicBool::new(!enabled),
            impaired: AtomicBool::new(false),
            leader_changes: AtomicU64::new(0),
            fenced_refused: AtomicU64::new(0),
            etcd_writes: AtomicU64::new(0),
            etcd_write_bytes: AtomicU64::new(0),
            digests_sent: AtomicU64::new(0),
            digests_received: AtomicU64::new(0),
            digests_refused: AtomicU64::new(0),
            view: ArcSwap::from_pointee(view),
            relay: parking_lot::Mutex::new(RelayBuffer::default()),
            forwarded: AtomicU64::new(0),
            forward_refused: AtomicU64::new(0),
            tables_revision: AtomicU64::new(0),
            bad_rows: AtomicU64::new(0),
            mirror_resync: AtomicBool::new(false),
            nodes: parking_lot::RwLock::new(vec![node_name]),
        }
    }

    /// Monotonic ns since this state was made: the clock of the leadership deadline (a step
    /// of the wall clock can neither lengthen nor shorten a lease).
    pub fn mono_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Whether this member leads now: single mode always does; in cluster mode, until the
    /// deadline set by the etcd thread.
    pub fn is_leader(&self) -> bool {
        !self.enabled || self.mono_ns() < self.leader_until_ns.load(Ordering::Acquire)
    }

    /// The term this member leads in, while it leads (0 otherwise).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// Sets (or with `until_ns` 0, clears) this member's leadership.
    pub fn set_leader(&self, term: u64, until_ns: u64) {
        self.term.store(term, Ordering::Release);
        self.leader_until_ns.store(until_ns, Ordering::Release);
    }

    /// Whether etcd answered the latest call (always true in single mode).
    pub fn etcd_ok(&self) -> bool {
        self.etcd_ok.load(Ordering::Acquire)
    }

    /// The leader's admin address, if a leader other than this member is known.
    pub fn leader_admin(&self) -> Option<String> {
        let view = self.view.load();
        let leader = view.leader.as_ref()?;
        if *leader == self.node {
            return None;
        }
        view.members.iter().find(|m| m.node == *leader).map(|m| m.admin.clone())
    }

    /// The index of a node name (added on first use; at most 65,535 names, then index 0).
    pub fn node_index(&self, node: &str) -> u16 {
        if let Some(i) = self.nodes.read().iter().position(|n| n == node) {
            return i as u16;
        }
        let mut nodes = self.nodes.write();
        if let Some(i) = nodes.iter().position(|n| n == node) {
            return i as u16;
        }
        if nodes.len() >= usize::from(u16::MAX) {
            return 0;
        }
        nodes.push(node.to_owned());
        (nodes.len() - 1) as u16
    }

    /// The node name of an index from [`Shared::node_index`].
    pub fn node_name(&self, index: u16) -> String {
        self.nodes.read().get(usize::from(index)).cloned().unwrap_or_default()
    }

    /// Records whether etcd answered.
    pub fn set_etcd_ok(&self, ok: bool) {
        self.etcd_ok.store(ok, Ordering::Release);
    }
}

/// What the cluster's threads tell the control thread.
#[derive(Debug)]
pub enum ClusterInput {
    /// This member leads from now, in `term`; `records` are the failover records etcd holds
    /// (the pending and in-progress ones are resumed, each once).
    Leading {
        /// The term.
        term: u64,
        /// Every failover record in etcd.
        records: Vec<super::failover::FailoverRecord>,
        /// The control plane's state in etcd (every key under `tables/`): the new leader
        /// continues from exactly it.
        tables: Vec<TableRow>,
    },
    /// The control plane's state in etcd changed (a member that does not lead mirrors it):
    /// `full`, every row (replace what is held); otherwise the changed rows, in order.
    Tables {
        /// The rows are the whole state.
        full: bool,
        /// (key under `tables/`, value or `None`: deleted).
        rows: Vec<TableRow>,
    },
    /// This member no longer leads (lost or released its lease, or etcd fenced it out).
    Following,
    /// The failover records in etcd, for a member that does not lead (it serves them).
    Records(Vec<super::failover::FailoverRecord>),
    /// A peer's digest: the amphorae it heard, each with when (on this member's clock) and its
    /// status as heard.
    Digest {
        /// The peer.
        node: String,
        /// The peer's own self-awareness rules hold its failovers back.
        impaired: bool,
        /// (amphora, heard at ns, status).
        heard: Vec<(crate::proto::octavia::Uuid, u64, crate::state::OperatingStatus)>,
        /// Service registrations the peer accepted itself, each with when (on this member's
        /// clock, ns).
        services: Vec<(u64, Relayed)>,
    },
    /// The members whose keys are alive (this one included).
    Members(Vec<String>),
    /// The amphora settings etcd holds (every member applies them; see [`AmphoraSettings`]).
    Settings(Vec<(crate::proto::octavia::Uuid, AmphoraSettings)>),
}

/// One row of the control plane's state in etcd: its key under `<prefix>/tables/`
/// (`volumes/<id, 20 digits>`, `meta/sched_next_id`, `pools/<name>`, `locks/<type>|<addr>`)
/// and its JSON value (`None`: deleted).
pub type TableRow = (String, Option<Vec<u8>>);

/// A service registration as one member relays it to its peers (in its digests): every
/// member's registry gets every registration any member accepted, so a machine is dead for the
/// scheduler only when no member heard it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relayed {
    /// Service type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `ip:port`.
    pub addr: String,
    /// `register`, `lock`, `unlock` or `deregister`.
    pub op: String,
    /// The lock score (`lock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<i32>,
    /// Tags and stats.
    #[serde(default)]
    pub tags: Vec<(String, crate::proto::service::TagValue)>,
}

/// The registrations this member accepted itself, newest per service, with when (control
/// clock ns): the digest thread sends each peer those newer than its last delivered digest.
/// Bounded by the registry's size (one entry per service) and in time (see
/// `Control::relay_out`).
#[derive(Debug, Default)]
pub struct RelayBuffer {
    /// `type` NUL `addr` → (heard at ns, registration).
    pub heard: std::collections::BTreeMap<String, (u64, Relayed)>,
    /// When old entries were last dropped (control clock, ns).
    pub pruned_ns: u64,
}

impl RelayBuffer {
    /// Records `r` as heard at `now`. A service already in the buffer is updated in place, so
    /// its repeated heartbeats allocate nothing (`key` is scratch space for the lookup).
    pub fn put(&mut self, key: &mut String, now: u64, r: &Relayed) {
        key.clear();
        key.push_str(&r.type_name);
        key.push('\0');
        key.push_str(&r.addr);
        match self.heard.get_mut(key.as_str()) {
            Some((at, e)) => {
                *at = now;
                e.assign(&r.type_name, &r.addr, &r.op, r.score, &r.tags);
            }
            None => {
                self.heard.insert(key.clone(), (now, r.clone()));
            }
        }
    }
}

impl Relayed {
    /// Makes this a copy of the given registration, reusing this one's strings and tags: no
    /// allocation when they fit what it held (a service's repeated heartbeats).
    pub fn assign(
        &mut self,
        type_name: &str,
        addr: &str,
        op: &str,
        score: Option<i32>,
        tags: &[(String, crate::proto::service::TagValue)],
    ) {
        use crate::proto::service::TagValue;
        for (dst, src) in [(&mut self.type_name, type_name), (&mut self.addr, addr), (&mut self.op, op)] {
            if dst != src {
                dst.clear();
                dst.push_str(src);
            }
        }
        self.score = score;
        self.tags.truncate(tags.len());
        for (i, (k, v)) in tags.iter().enumerate() {
            let Some((dk, dv)) = self.tags.get_mut(i) else {
                self.tags.push((k.clone(), v.clone()));
                continue;
            };
            if dk != k {
                dk.clear();
                dk.push_str(k);
            }
            match (dv, v) {
                (TagValue::Str(d), TagValue::Str(s)) => {
                    if d != s {
                        d.clear();
                        d.push_str(s);
                    }
                }
                (d, s) => *d = s.clone(),
            }
        }
    }
}

/// An amphora's settings that decide its liveness, kept in etcd in cluster mode
/// (`<prefix>/amphorae/<id>`), so they survive any member's death and every member judges the
/// amphora alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmphoraSettings {
    /// Listeners a heartbeat must report to refresh liveness.
    pub expected_listeners: Option<u32>,
    /// Its load balancer.
    pub load_balancer: Option<crate::proto::octavia::Uuid>,
    /// Its zone.
    pub zone: Option<String>,
}

/// What a write to etcd reports when it is done (`Err`: its message).
pub type WriteDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A write to etcd by the `cluster` thread: keys relative to the cluster's prefix, values or
/// `None` to delete. `fenced`: a leader write, committed only while this member's term holds.
pub struct EtcdWrite {
    /// (key under the prefix, value or `None`).
    pub ops: Vec<(String, Option<Vec<u8>>)>,
    /// Only under this member's leader term.
    pub fenced: bool,
    /// Told the outcome.
    pub done: Option<WriteDone>,
}

impl std::fmt::Debug for EtcdWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdWrite").field("ops", &self.ops.len()).field("fenced", &self.fenced).finish()
    }
}

/// The scheduler's leader lease in cluster mode: the cluster's leadership (one leader for
/// liveness, failovers and the scheduler). It keeps the local lease it replaces (the data
/// directory's lock) held, so two daemons still cannot share a data directory.
pub struct ClusterLease(pub Arc<Shared>, pub Box<dyn crate::sched::lease::Lease + Send>);

impl std::fmt::Debug for ClusterLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClusterLease").field(&self.0.node).finish()
    }
}

impl crate::sched::lease::Lease for ClusterLease {
    fn campaign(&mut self, _now_ns: u64) -> crate::sched::lease::LeaseState {
        if self.0.is_leader() {
            crate::sched::lease::LeaseState::Held
        } else {
            crate::sched::lease::LeaseState::Follower
        }
    }
    fn is_held(&self, _now_ns: u64) -> bool {
        self.0.is_leader()
    }
    fn release(&mut self) {}
}
