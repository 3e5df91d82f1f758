//! The health model: what heartsink knows of each amphora, and Octavia's rules for turning a
//! heartbeat into operating statuses.
//!
//! heartsink has no Octavia database: the set of listeners, pools and members of an amphora is
//! everything it has ever reported (until the amphora is forgotten). With that as "the DB",
//! the rules are Octavia 19.0.0's `UpdateHealthDb` (reference §3.3):
//!
//! | entity | reported as | operating status | roll-up |
//! |---|---|---|---|
//! | listener | `OPEN` / `FULL` / other | `ONLINE` / `DEGRADED` / unchanged | `FULL`: LB `ONLINE → DEGRADED` |
//! | listener | absent | `OFFLINE` (Octavia: disabled listeners are not reported) | |
//! | pool | `UP` / `DOWN` / other | `ONLINE` / `ERROR` / unchanged | `DOWN`: LB `ERROR` |
//! | pool | absent | `OFFLINE` | |
//! | member | `UP…` / `DOWN…` | `ONLINE` / `ERROR` | `DOWN…` in an `UP` pool: pool `DEGRADED`, LB `ONLINE → DEGRADED` |
//! | member | `DRAIN` / `MAINT` / `no check` | `DRAINING` / `OFFLINE` / `NO_MONITOR` | |
//! | member | `RESTARTING`, other | unchanged | |
//! | member | absent | `OFFLINE`, unless `NO_MONITOR` | |
//!
//! A new entity starts `OFFLINE`. Listeners are processed before pools, so a pool `DOWN` wins
//! over a degradation. The load balancer's rolled-up status is the amphora's operating status.
//!
//! Statistics apply to every accepted heartbeat: with `ver` ≥ 3 `tx`, `rx`, `totconns` and
//! `ereq` accumulate (saturating) and `conns` replaces; otherwise every counter replaces.
//!
//! # Order: state never moves backwards
//!
//! UDP reorders and duplicates datagrams; the sequence window ([`crate::proto::seqwin`]) sorts
//! each accepted heartbeat into one of three kinds, and [`AmphoraState::apply`] treats them so:
//!
//! * **Newest** (`seq` above every accepted one, the first heartbeat, a heartbeat without
//!   `seq`, or a restart): the only kind that sets health (listener, pool, member and load
//!   balancer statuses), `seq` and `ver`, replaces counters (`conns`, and every counter below
//!   ver 3), refreshes liveness (`last_refresh_ns`, [`Applied::revived`]) and counts a listener
//!   mismatch.
//! * **Older, not seen before** (a reordered datagram inside the window): adds its ver ≥ 3
//!   deltas (`tx`, `rx`, `totconns`, `ereq`) exactly once and changes nothing else. A listener
//!   only it names is created as the in-order state would show it (not reported, `OFFLINE`)
//!   to hold the deltas. Its absolute counters (below ver 3, and `conns`) are older than the
//!   ones already held and are ignored.
//! * **Refused** (a replay, or older than the window): changes nothing (but the window's note
//!   of a packet refused after the restart gap, for its rising-pair restart rule).
//!
//! So `seq` equals the window's highest accepted number and never goes down, except on a
//! restart (the window's restart rule, [`SeqOutcome::Restarted`]): a restarted agent's counter
//! starts again, and its first heartbeat is its newest. `last_seen_ns`, `heartbeats` and
//! `reordered` count every accepted heartbeat and never go down.

use serde::{Deserialize, Serialize};

use crate::proto::octavia::{Heartbeat, ListenerReport, ListenerStatus, MemberStatus, PoolStatus, Stats, Uuid};
use crate::proto::seqwin::{SeqError, SeqOutcome, SeqWindow};

/// Octavia's operating statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum OperatingStatus {
    /// `ONLINE`.
    Online,
    /// `DEGRADED`.
    Degraded,
    /// `ERROR`.
    Error,
    /// `OFFLINE`.
    #[default]
    Offline,
    /// `DRAINING`.
    Draining,
    /// `NO_MONITOR`.
    NoMonitor,
}

impl OperatingStatus {
    /// Octavia's name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatingStatus::Online => "ONLINE",
            OperatingStatus::Degraded => "DEGRADED",
            OperatingStatus::Error => "ERROR",
            OperatingStatus::Offline => "OFFLINE",
            OperatingStatus::Draining => "DRAINING",
            OperatingStatus::NoMonitor => "NO_MONITOR",
        }
    }

    /// From Octavia's name.
    pub fn parse(s: &str) -> Option<OperatingStatus> {
        Some(match s {
            "ONLINE" => OperatingStatus::Online,
            "DEGRADED" => OperatingStatus::Degraded,
            "ERROR" => OperatingStatus::Error,
            "OFFLINE" => OperatingStatus::Offline,
            "DRAINING" => OperatingStatus::Draining,
            "NO_MONITOR" => OperatingStatus::NoMonitor,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for OperatingStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OperatingStatus, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        OperatingStatus::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown operating status {s:?}")))
    }
}

macro_rules! serialize_as_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    )*};
}
serialize_as_str!(OperatingStatus, ListenerStatus, PoolStatus, MemberStatus);

/// A listener as last reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerState {
    /// Listener id.
    pub id: Uuid,
    /// Status in the latest heartbeat that carried it.
    pub status: ListenerStatus,
    /// Operating status after Octavia's rules.
    pub operating_status: OperatingStatus,
    /// Whether the latest heartbeat carried it.
    pub reported: bool,
    /// Counters: running totals (ver ≥ 3) or the latest absolute values.
    pub stats: Stats,
}

/// A member of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// Member id.
    pub id: Uuid,
    /// Status in the latest heartbeat that carried it.
    pub status: MemberStatus,
    /// Operating status after Octavia's rules.
    pub operating_status: OperatingStatus,
    /// Whether the latest heartbeat carried it.
    pub reported: bool,
}

/// A pool with its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// Pool id.
    pub id: Uuid,
    /// Status in the latest heartbeat that carried it.
    pub status: PoolStatus,
    /// Operating status after Octavia's rules.
    pub operating_status: OperatingStatus,
    /// Whether the latest heartbeat carried it.
    pub reported: bool,
    /// Members, sorted by id.
    pub members: Vec<MemberState>,
}

/// Everything known of one amphora.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmphoraState {
    /// Receiver wall-clock time of the first accepted heartbeat, ns since the Unix epoch.
    pub first_seen_ns: u64,
    /// Receiver wall-clock time of the latest accepted heartbeat, ns since the Unix epoch.
    pub last_seen_ns: u64,
    /// Sequence window (the highest accepted `seq` is public through it). Not stored: a
    /// restored amphora's window restarts at its stored `seq` ([`AmphoraState::restored`]).
    #[serde(skip)]
    pub window: SeqWindow,
    /// Receiver time of the latest heartbeat that refreshed liveness (Octavia's
    /// `amphora_health.last_update`): accepted, in time, and reporting the expected number of
    /// listeners. 0 = never.
    pub last_refresh_ns: u64,
    /// The number of listeners a heartbeat must report to refresh liveness (Octavia counts the
    /// load balancer's enabled listeners in its database; heartsink is told through the admin
    /// API). `None`: any count refreshes (Octavia's rule for a `PENDING_*` or disabled LB).
    #[serde(default)]
    pub expected_listeners: Option<u32>,
    /// Heartbeats that did not refresh liveness because their listener count was not
    /// `expected_listeners`.
    #[serde(default)]
    pub listener_count_mismatches: u64,
    /// Cluster mode: the newest liveness refresh another member heard (from its digest), on
    /// this member's clock, ns; 0 = none. Liveness reads the newer of this and
    /// `last_refresh_ns`; digests carry only `last_refresh_ns` (what this member heard itself).
    #[serde(skip)]
    pub remote_refresh_ns: u64,
    /// Cluster mode: refreshes heard by other members (from their digests).
    #[serde(skip)]
    pub remote_refreshes: u64,
    /// Cluster mode: the member that heard the newest remote refresh (its index in
    /// [`crate::control::cluster::Shared::node_name`]'s table).
    #[serde(skip)]
    pub remote_by: u16,
    /// Set by the control thread when it finds the amphora overdue or stale; the next heartbeat
    /// that refreshes liveness clears it and tells the control thread ([`Applied::revived`]).
    #[serde(default)]
    pub stale: bool,
    /// The highest accepted `seq` (the newest heartbeat's); it goes down only on a restart.
    /// A heartbeat without `seq` leaves it as it is.
    pub seq: Option<u64>,
    /// `ver` of the newest heartbeat.
    pub ver: Option<u64>,
    /// Accepted heartbeats.
    pub heartbeats: u64,
    /// Accepted heartbeats older than the newest (reordered): they added their deltas only.
    #[serde(default)]
    pub reordered: u64,
    /// Agent restarts recognised by the sequence window.
    pub restarts: u32,
    /// The load balancer's rolled-up operating status.
    pub operating_status: OperatingStatus,
    /// Listeners, sorted by id.
    pub listeners: Vec<ListenerState>,
    /// Pools, sorted by id.
    pub pools: Vec<PoolState>,
}

/// What applying a heartbeat did, for the change log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The sequence window's verdict.
    pub seq: Option<SeqOutcome>,
    /// The operating status before (None for a new amphora) and after.
    pub status_change: Option<(Option<OperatingStatus>, OperatingStatus)>,
    /// Liveness was refreshed while the amphora was marked stale: it is back.
    pub revived: bool,
    /// The listener count was not the expected one: liveness was not refreshed.
    pub count_mismatch: bool,
}

/// Finds `id` in a vector sorted by id, inserting `make()` in order if absent.
fn upsert<T>(v: &mut Vec<T>, id: Uuid, key: impl Fn(&T) -> Uuid, make: impl FnOnce() -> T) -> &mut T {
    let i = match v.binary_search_by_key(&id, key) {
        Ok(i) => i,
        Err(i) => {
            // Exact capacity: a fleet's million amphorae each hold a listener or two, and the
            // default growth (to 4) would triple their memory. A new entry is rare.
            if v.len() < 16 {
                v.reserve_exact(1);
            }
            v.insert(i, make());
            i
        }
    };
    &mut v[i]
}

/// The listener of report `r`, created `OFFLINE` with `reported` if new.
fn listener<'l>(listeners: &'l mut Vec<ListenerState>, r: &ListenerReport, reported: bool) -> &'l mut ListenerState {
    upsert(
        listeners,
        r.id,
        |l| l.id,
        || ListenerState {
            id: r.id,
            status: r.status,
            operating_status: OperatingStatus::Offline,
            reported,
            stats: Stats::default(),
        },
    )
}

/// Adds ver ≥ 3 deltas (`tx`, `rx`, `totconns`, `ereq`, saturating); `conns` is left alone.
fn add_deltas(t: &mut Stats, s: &Stats) {
    t.tx = t.tx.saturating_add(s.tx);
    t.rx = t.rx.saturating_add(s.rx);
    t.totconns = t.totconns.saturating_add(s.totconns);
    t.ereq = t.ereq.saturating_add(s.ereq);
}

impl AmphoraState {
    /// A state for an amphora never seen before.
    pub fn new(now_ns: u64) -> AmphoraState {
        AmphoraState {
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            window: SeqWindow::default(),
            last_refresh_ns: 0,
            remote_refresh_ns: 0,
            remote_refreshes: 0,
            remote_by: 0,
            expected_listeners: None,
            listener_count_mismatches: 0,
            stale: false,
            seq: None,
            ver: None,
            heartbeats: 0,
            reordered: 0,
            restarts: 0,
            operating_status: OperatingStatus::Offline,
            listeners: Vec::new(),
            pools: Vec::new(),
        }
    }

    /// Applies a heartbeat received at `now_ns` by the module's order rule: the sequence window
    /// runs first and a refused `seq` changes nothing; an older heartbeat never seen before adds
    /// its deltas only; the newest sets everything.
    pub fn apply(&mut self, hb: &Heartbeat, now_ns: u64, restart_gap_ns: u64) -> Result<Applied, SeqError> {
        let before = (self.heartbeats > 0).then_some(self.operating_status);
        let seq = match hb.seq {
            Some(seq) => {
                let since = now_ns.saturating_sub(self.last_seen_ns);
                Some(self.window.check(seq, since, restart_gap_ns)?)
            }
            None => None,
        };
        self.last_seen_ns = self.last_seen_ns.max(now_ns);
        self.heartbeats = self.heartbeats.saturating_add(1);
        if seq == Some(SeqOutcome::Reordered) {
            self.reordered = self.reordered.saturating_add(1);
            self.add_older_deltas(hb);
            return Ok(Applied { seq, status_change: None, revived: false, count_mismatch: false });
        }
        if seq == Some(SeqOutcome::Restarted) {
            self.restarts = self.restarts.saturating_add(1);
        }
        if hb.seq.is_some() {
            self.seq = hb.seq;
        }
        self.ver = hb.ver;

        let mut lb = OperatingStatus::Online;
        self.apply_listeners(hb, &mut lb);
        self.apply_pools(hb, &mut lb);
        self.operating_status = lb;
        let status_change = (before != Some(lb)).then_some((before, lb));
        let count_mismatch = self.expected_listeners.is_some_and(|e| hb.listeners().len() != e as usize);
        let mut revived = false;
        if count_mismatch {
            self.listener_count_mismatches = self.listener_count_mismatches.saturating_add(1);
        } else {
            self.last_refresh_ns = self.last_refresh_ns.max(now_ns);
            revived = std::mem::take(&mut self.stale);
        }
        Ok(Applied { seq, status_change, revived, count_mismatch })
    }

    /// The newest liveness refresh anyone in the cluster heard (this member or a peer).
    pub fn refreshed_ns(&self) -> u64 {
        self.last_refresh_ns.max(self.remote_refresh_ns)
    }

    /// Cluster mode: a peer heard this amphora refresh its liveness at `at_ns` (this member's
    /// clock) with `status`. A refresh newer than any known is taken: the status too when it
    /// is newer than this member's own latest heartbeat. Returns (revived: the watch flag was
    /// set and is now cleared, the operating status changed).
    pub fn heard_remotely(&mut self, at_ns: u64, status: OperatingStatus, by: u16) -> (bool, bool) {
        if at_ns <= self.refreshed_ns() {
            return (false, false);
        }
        self.remote_refresh_ns = at_ns;
        self.remote_by = by;
        self.remote_refreshes = self.remote_refreshes.saturating_add(1);
        let changed = at_ns > self.last_seen_ns && status != self.operating_status;
        if at_ns > self.last_seen_ns {
            self.operating_status = status;
        }
        (std::mem::take(&mut self.stale), changed)
    }

    /// An older heartbeat never seen before: its ver ≥ 3 deltas, nothing else.
    fn add_older_deltas(&mut self, hb: &Heartbeat) {
        if !hb.stats_are_deltas() {
            return;
        }
        for r in hb.listeners() {
            let Some(s) = r.stats else { continue };
            // Created as the in-order state would show it: the newest heartbeat did not report it.
            add_deltas(&mut listener(&mut self.listeners, r, false).stats, &s);
        }
    }

    /// A state read back from the durable store: the sequence window restarts at the stored
    /// `seq`, so the amphora's next heartbeats (higher `seq`) are accepted and an old one is not
    /// (not even one inside the window: the bitmap was not stored, so a replay of a datagram
    /// accepted before the restart must not add its deltas again).
    pub fn restored(mut self) -> AmphoraState {
        self.window = self.seq.map(SeqWindow::restored_at).unwrap_or_default();
        // Decoded vectors grow by doubling: keep exactly what is held, as live ones do. Copied
        // into new exact allocations rather than shrunk in place: a shrink leaves a small free
        // tail between long-lived allocations (a restore of a million rows fragmented the heap
        // by about 200 B an amphora), while the freed decode buffers are reused by the next row.
        self.listeners = self.listeners.to_vec();
        self.pools = self
            .pools
            .iter()
            .map(|p| PoolState { members: p.members.to_vec(), ..p.clone() })
            .collect::<Vec<_>>()
            .into_boxed_slice()
            .into_vec();
        self
    }

    fn apply_listeners(&mut self, hb: &Heartbeat, lb: &mut OperatingStatus) {
        for l in &mut self.listeners {
            l.reported = false;
        }
        let deltas = hb.stats_are_deltas();
        for r in hb.listeners() {
            let l = listener(&mut self.listeners, r, true);
            l.reported = true;
            l.status = r.status;
            match r.status {
                ListenerStatus::Open => l.operating_status = OperatingStatus::Online,
                ListenerStatus::Full => {
                    l.operating_status = OperatingStatus::Degraded;
                    if *lb == OperatingStatus::Online {
                        *lb = OperatingStatus::Degraded;
                    }
                }
                ListenerStatus::Stop | ListenerStatus::Down | ListenerStatus::Other => {}
            }
            if let Some(s) = r.stats {
                if deltas {
                    add_deltas(&mut l.stats, &s);
                    l.stats.conns = s.conns;
                } else {
                    l.stats = s;
                }
            }
        }
        for l in &mut self.listeners {
            if !l.reported {
                l.operating_status = OperatingStatus::Offline;
            }
        }
    }

    fn apply_pools(&mut self, hb: &Heartbeat, lb: &mut OperatingStatus) {
        for p in &mut self.pools {
            p.reported = false;
        }
        for r in hb.status_pools() {
            let p = upsert(
                &mut self.pools,
                r.id,
                |p| p.id,
                || PoolState {
                    id: r.id,
                    status: r.status,
                    operating_status: OperatingStatus::Offline,
                    reported: true,
                    members: Vec::new(),
                },
            );
            p.reported = true;
            p.status = r.status;
            let mut pool_status = match r.status {
                PoolStatus::Up => Some(OperatingStatus::Online),
                PoolStatus::Down => {
                    *lb = OperatingStatus::Error;
                    Some(OperatingStatus::Error)
                }
                PoolStatus::Other => None,
            };
            for m in &mut p.members {
                m.reported = false;
            }
            for mr in hb.members(r) {
                let m = upsert(
                    &mut p.members,
                    mr.id,
                    |m| m.id,
                    || MemberState {
                        id: mr.id,
                        status: mr.status,
                        operating_status: OperatingStatus::Offline,
                        reported: true,
                    },
                );
                m.reported = true;
                m.status = mr.status;
                let new = match mr.status {
                    MemberStatus::Up => Some(OperatingStatus::Online),
                    MemberStatus::Down => {
                        if pool_status == Some(OperatingStatus::Online) {
                            pool_status = Some(OperatingStatus::Degraded);
                            if *lb == OperatingStatus::Online {
                                *lb = OperatingStatus::Degraded;
                            }
                        }
                        Some(OperatingStatus::Error)
                    }
                    MemberStatus::Drain => Some(OperatingStatus::Draining),
                    MemberStatus::Maint => Some(OperatingStatus::Offline),
                    MemberStatus::NoCheck => Some(OperatingStatus::NoMonitor),
                    MemberStatus::Restarting | MemberStatus::Other => None,
                };
                if let Some(s) = new {
                    m.operating_status = s;
                }
            }
            for m in &mut p.members {
                if !m.reported && m.operating_status != OperatingStatus::NoMonitor {
                    m.operating_status = OperatingStatus::Offline;
                }
            }
            if let Some(s) = pool_status {
                p.operating_status = s;
            }
        }
        for p in &mut self.pools {
            if !p.reported {
                p.operating_status = OperatingStatus::Offline;
            }
        }
    }

    /// Number of members over all pools.
    pub fn member_count(&self) -> usize {
        self.pools.iter().map(|p| p.members.len()).sum()
    }
}

#[cfg(test)]
mod tests;
