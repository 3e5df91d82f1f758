//! What the control thread publishes: the [`Snapshot`] every reader (admin API, confd
//! responder) sees the fleet through, and the control thread's own figures. A leaf module:
//! surfaces import it without importing the control thread's machinery.
//!
//! A snapshot is immutable and cheap to clone (persistent maps: publishing never copies the
//! fleet, and a reader never waits for a shard lock). Its `generation` is the confd serial.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::failover::FailoverState;
use super::liveness::{Live, SuspendReason};
use super::periodic;
use crate::engine::Totals;
use crate::proto::octavia::Uuid;
use crate::registry::lb::{Pool, World};
use crate::state::OperatingStatus;

/// One amphora in the snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AmphoraHealth {
    /// Rolled-up operating status.
    pub operating_status: OperatingStatus,
    /// Liveness.
    pub liveness: Live,
    /// Last liveness refresh known to the control thread (exact for stale amphorae; for live
    /// ones as of the latest deadline check, at most `heartbeat_timeout` old), ns.
    pub last_refresh_ns: u64,
    /// First heartbeat, ns.
    pub first_seen_ns: u64,
    /// The load balancer it serves (set through the API; `None`: itself).
    pub load_balancer: Option<Uuid>,
    /// Listeners a heartbeat must report to refresh liveness.
    pub expected_listeners: Option<u32>,
    /// Its zone (set through the API): the group its liveness is judged in (else its load
    /// balancer's).
    pub zone: Option<String>,
    /// Its latest failover record, with that record's state.
    pub failover: Option<(u64, FailoverState)>,
}

/// The control thread's published view: immutable, cheap to clone, read without locks.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases with every change of the fleet, registry or volumes (the confd serial). The
    /// figures (totals, tasks, store) are republished at least every 250 ms under the same
    /// generation.
    pub generation: u64,
    /// When it was published, ns.
    pub taken_ns: u64,
    /// Every known amphora, in id order. While more than a thousand new amphorae or re-armed
    /// refresh times wait, they may appear here up to a second late
    /// ([`crate::control::HOLD_MANY_NS`]); transitions never wait.
    pub amphorae: imbl::OrdMap<Uuid, AmphoraHealth>,
    /// Amphorae tracked at publication (new ones included before they appear in `amphorae`).
    pub tracked: usize,
    /// Stale amphorae.
    pub down: imbl::OrdSet<Uuid>,
    /// Load balancer → its amphorae (only those configured with one).
    pub load_balancers: imbl::OrdMap<Uuid, imbl::OrdSet<Uuid>>,
    /// Amphorae alive with a status other than `ONLINE` ([`super::census::sick`]). With
    /// `down` (disjoint from it), the unhealthy ones: lists put them first without sorting the
    /// fleet.
    pub sick: imbl::OrdSet<Uuid>,
    /// Amphorae in `amphorae` by operating status ([`super::census::STATUSES`] order) ×
    /// liveness (alive, stale).
    pub census: CensusCounts,
    /// Engine counters at publication.
    pub totals: Totals,
    /// Why automatic failovers are suspended (empty: they are not).
    pub suspended: Vec<SuspendReason>,
    /// Failover records by state, in [`FailoverState::ALL`] order.
    pub failover_counts: [u64; FailoverState::ALL.len()],
    /// The periodic tasks.
    pub tasks: Vec<periodic::Task>,
    /// Durable store figures, when there is a store.
    pub store: Option<StoreStatus>,
    /// The services as polled by the pools (rebuilt when the registry changes).
    pub world: Arc<World>,
    /// The pools, by name.
    pub pools: Arc<BTreeMap<String, Pool>>,
    /// Whether this heartsink holds the scheduler's leader lease.
    pub leader: bool,
    /// Volumes known to the scheduler.
    pub volumes: usize,
    /// The scheduler's latest tick.
    pub scheduler: Option<crate::sched::TickReport>,
    /// Registered services.
    pub services: usize,
    /// Service heartbeats the registry refused (unknown type, bad address).
    pub services_rejected: u64,
    /// Cluster mode: the term this member leads in, once its control thread leads (0: it does
    /// not lead).
    pub term: u64,
    /// True for a cluster answer view ([`super::view`]): pool picks are then a function of the
    /// serial, the query and the request's salt, so every member picks alike.
    pub cluster_view: bool,
}

/// Amphorae by operating status × liveness (see [`Snapshot::census`]).
pub type CensusCounts = [[u64; 2]; super::census::STATUSES.len()];

/// Durable store figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStatus {
    /// Database file.
    pub path: String,
    /// Transactions committed.
    pub commits: u64,
    /// Writes committed.
    pub writes: u64,
    /// Failed transactions.
    pub failures: u64,
    /// Latest commit, ms.
    pub last_commit_ms: f64,
    /// False while commits fail (the writer retries; `/healthz` answers 503 degraded).
    pub healthy: bool,
    /// The latest failure, while failing.
    pub error: Option<String>,
    /// Rows waiting for a commit.
    pub pending: u64,
}

impl Snapshot {
    /// Unhealthy amphorae: stale, or alive with a status other than `ONLINE`.
    pub fn unhealthy_count(&self) -> usize {
        self.down.len() + self.sick.len()
    }

    /// The rolled-up status of load balancer `lb`: the status of its live amphora refreshed
    /// most recently (Octavia: the last heartbeat written wins), `OFFLINE` when none is alive.
    /// An amphora configured with no load balancer is its own. `None` if unknown.
    pub fn load_balancer_status(&self, lb: &Uuid) -> Option<(OperatingStatus, Vec<(Uuid, &AmphoraHealth)>)> {
        let members: Vec<(Uuid, &AmphoraHealth)> = self.load_balancer_members(lb)?.collect();
        Some((Self::rolled_up_status(members.iter().copied()), members))
    }

    /// The amphorae of load balancer `lb` in id order, without collecting them (an amphora
    /// configured with no load balancer is its own). `None` if unknown.
    pub fn load_balancer_members(
        &self,
        lb: &Uuid,
    ) -> Option<impl Iterator<Item = (Uuid, &AmphoraHealth)> + Clone + '_> {
        let (ids, own) = match self.load_balancers.get(lb) {
            Some(ids) => (Some(ids), None),
            None => match self.amphorae.get(lb) {
                Some(h) if h.load_balancer.is_none() => (None, Some((*lb, h))),
                _ => return None,
            },
        };
        let members =
            ids.into_iter().flat_map(|ids| ids.iter()).filter_map(|id| self.amphorae.get(id).map(|h| (*id, h)));
        Some(members.chain(own))
    }

    /// The rolled-up status of a load balancer's members (see
    /// [`Snapshot::load_balancer_status`]).
    pub fn rolled_up_status<'a>(members: impl Iterator<Item = (Uuid, &'a AmphoraHealth)>) -> OperatingStatus {
        members
            .filter(|(_, h)| h.liveness == Live::Alive)
            .max_by_key(|(_, h)| h.last_refresh_ns)
            .map_or(OperatingStatus::Offline, |(_, h)| h.operating_status)
    }
}

/// Rates computed by the control thread once a second.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rates {
    /// Datagrams received per second, per rx thread.
    pub rx_pps: Vec<f64>,
    /// Packets processed per second, per worker.
    pub worker_pps: Vec<f64>,
    /// Heartbeats applied per second, per worker.
    pub worker_accepted_pps: Vec<f64>,
}

/// Where the control thread publishes: the latest snapshot and rates, and its tick figures.
/// Readers load; only the control thread stores.
#[derive(Debug)]
pub struct Published {
    /// The latest snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// The latest rates.
    pub rates: ArcSwap<Rates>,
    /// Wall clock of the control thread's latest tick, ns since the epoch (`/healthz`).
    pub last_tick_ns: AtomicU64,
    /// Amphora status transitions seen by the control thread.
    pub status_changes: AtomicU64,
    /// Work time of the control thread's latest round, ns.
    pub tick_ns_last: AtomicU64,
    /// Longest control round since start, ns.
    pub tick_ns_max: AtomicU64,
    /// The last 15 minutes of the data plane, a sample a second (`GET /v1/history`).
    pub history: parking_lot::Mutex<super::history::History>,
    /// Cluster mode is on: confd's heartsink types and the amphora list are answered from
    /// [`Published::cluster_view`] only.
    pub clustered: std::sync::atomic::AtomicBool,
    /// Cluster mode: the leader's answer view this member holds (`None` until one arrives).
    pub cluster_view: arc_swap::ArcSwapOption<Snapshot>,
    /// Cluster mode: assembles the views the leader sends ([`super::view`]).
    pub views: parking_lot::Mutex<super::view::Receiver>,
    /// Cluster mode: when the leader last sent (or, leading, this member last cut) a view, on
    /// the control clock, ns.
    pub view_contact_ns: AtomicU64,
    /// Cluster mode: how long a view without contact stays the amphora list's source (then the
    /// list is this member's own, until a leader is heard again), ns.
    pub view_fresh_ns: AtomicU64,
    /// The fleet's newest transitions (an amphora's detail view shows its own).
    pub transitions: parking_lot::Mutex<super::census::TransitionLog>,
}

impl Published {
    /// Nothing published yet; `now` counts as the latest tick.
    pub fn new(now: u64) -> Published {
        Published {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            rates: ArcSwap::from_pointee(Rates::default()),
            last_tick_ns: AtomicU64::new(now),
            status_changes: AtomicU64::new(0),
            tick_ns_last: AtomicU64::new(0),
            tick_ns_max: AtomicU64::new(0),
            history: parking_lot::Mutex::new(super::history::History::starting(now)),
            clustered: std::sync::atomic::AtomicBool::new(false),
            cluster_view: arc_swap::ArcSwapOption::empty(),
            views: parking_lot::Mutex::new(super::view::Receiver::default()),
            view_contact_ns: AtomicU64::new(0),
            view_fresh_ns: AtomicU64::new(u64::MAX),
            transitions: parking_lot::Mutex::new(super::census::TransitionLog::default()),
        }
    }

    /// Records the work time of one round.
    pub fn record_round(&self, spent_ns: u64) {
        self.tick_ns_last.store(spent_ns, Ordering::Relaxed);
        self.tick_ns_max.fetch_max(spent_ns, Ordering::Relaxed);
    }

    /// What answers are given from: the latest snapshot in single mode; in cluster mode the
    /// leader's answer view held here (`None` until one arrived).
    pub fn answer_view(&self) -> Option<Arc<Snapshot>> {
        if self.clustered.load(Ordering::Relaxed) {
            self.cluster_view.load_full()
        } else {
            Some(self.snapshot.load_full())
        }
    }

    /// Applies a part of a view sent by the leader (or cut by this member while it leads) at
    /// `now` (control clock, ns), publishing the view it completes; the serial held after it,
    /// or why it was refused.
    pub fn apply_view(&self, part: super::view::Part, now: u64) -> Result<u64, super::view::Refused> {
        let mut rx = self.views.lock();
        if let Some(v) = rx.apply(part)? {
            self.cluster_view.store(Some(v));
        }
        self.view_contact_ns.store(now, Ordering::Relaxed);
        Ok(rx.held_serial())
    }

    /// What the amphora list is served from at `now`, and whether it is the leader's view: in
    /// cluster mode the leader's view while the leader was heard from within
    /// [`Published::view_fresh_ns`], else (no leader: etcd lost, an election) this member's
    /// own snapshot; in single mode the snapshot.
    pub fn list_view(&self, now: u64) -> (Arc<Snapshot>, bool) {
        if self.clustered.load(Ordering::Relaxed) {
            let fresh = now.saturating_sub(self.view_contact_ns.load(Ordering::Relaxed))
                <= self.view_fresh_ns.load(Ordering::Relaxed);
            if let Some(v) = self.cluster_view.load_full().filter(|_| fresh) {
                return (v, true);
            }
        }
        (self.snapshot.load_full(), false)
    }

    /// Amphorae known, as of the latest snapshot.
    pub fn amphora_count(&self) -> usize {
        self.snapshot.load().tracked
    }
}

impl Default for Published {
    fn default() -> Published {
        Published::new(0)
    }
}
