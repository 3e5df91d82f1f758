//! Liveness and failover decisions, without threads or I/O: Octavia's health manager rules
//! (reference `octavia-heartbeat.md` §4), with heartsink's self-awareness on top and
//! Kubernetes' node lifecycle controller as the model for mass staleness.
//!
//! **Deadlines.** Every tracked amphora has one deadline in a deadline-ordered index: while it
//! is on time, `last_refresh + overdue_after`; once overdue, `last_refresh + heartbeat_timeout`.
//! A health check pops only the deadlines that passed and asks the probe (the amphora's shard)
//! for the current `last_refresh` and heartbeat count: if it moved, the deadline is re-armed;
//! if not, the amphora is overdue, or stale. The probe also sets the shard's watch flag on an
//! overdue or stale amphora, so its next refreshing heartbeat is reported at once
//! ([`Liveness::revived`]). A beating amphora is therefore probed once per `overdue_after`,
//! never once per heartbeat and never in a scan of the fleet, and reported for the store about
//! once per `heartbeat_timeout` ([`Check::rearmed`]).
//!
//! **Overdue.** Each amphora's usual interval is learned from what the probes see (refresh time
//! and heartbeat count moved together: an average gap over several beats), as an EWMA kept in
//! four bytes, with `heartbeat_interval` as the prior, and bounded below by
//! `health_check_interval`. It is overdue when silent for `overdue_factor` (2) × that interval,
//! at most `heartbeat_timeout`. Stale amphorae are overdue too. Overdue counts are kept per
//! group and for the fleet, moved only when an amphora changes state.
//!
//! **Groups.** An amphora belongs to its zone when one is set (admin API), else to its load
//! balancer when one is set, else to the default group of unlabelled amphorae.
//!
//! **Failover.** A stale amphora without a failover in this episode of silence is a candidate.
//! Each health check starts at most `failover_threads − in flight` failovers, oldest silence
//! first, each taking a token from its group's bucket: a burst of `failover_threads`, refilled
//! at `failover_rate` (default `failover_threads` per `health_check_interval`: today's pace).
//! A group with at least `partition_fraction` (0.55, Kubernetes' `unhealthy_zone_threshold`)
//! of its amphorae overdue, and at least `partition_min`, is in partial disruption: its rate
//! drops to `secondary_failover_rate` (burst 1), or to 0 (`partition`) when the group has
//! `large_group_size` (50) amphorae or fewer. A group with at least `sink_blind_fraction` (0.9)
//! overdue is dark (full disruption) and fails over at the normal rate, as Kubernetes does —
//! unless the whole fleet is that dark ([`SuspendReason::SinkBlind`]): then nothing is failed
//! over. Octavia's circuit breaker: when the candidates number `failover_threshold` or more,
//! none is failed over and each gets a record in state `stopped`; once fewer remain, they are
//! failed over normally.
//!
//! **Self-awareness (unlike Octavia).** No automatic failover starts while heartsink cannot
//! trust its own view ([`SuspendReason`]): during the start-up grace (one `heartbeat_timeout`),
//! while it drops packets itself (kernel or ring drops) or applies heartbeats late, for one
//! `heartbeat_interval` after either (every live sender gets a beat through in that time),
//! after a stall of the control thread, and while nearly the whole fleet is overdue at once
//! (`sink_blind`: the sink's own network is likelier than the fleet dying), until
//! `overdue_factor × heartbeat_interval` after that.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::SettingError;
use crate::proto::octavia::Uuid;

const S: u64 = 1_000_000_000;

/// Most expired deadlines one health check handles; the rest wait for the next check.
pub const EXPIRED_PER_CHECK: usize = 250_000;

/// Most groups listed one by one in the suspension reasons of one check.
const GROUPS_LISTED: usize = 16;

/// Liveness settings, with Octavia's names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// Seconds without a liveness refresh after which an amphora is stale (Octavia: 60).
    pub heartbeat_timeout: f64,
    /// Seconds between health checks (Octavia: 3).
    pub health_check_interval: f64,
    /// The senders' period and the processing-delay bound, seconds (Octavia: 10). Also the
    /// prior of each amphora's learned interval.
    pub heartbeat_interval: f64,
    /// Failovers running at once, and the burst of each group's rate limiter (Octavia: 10).
    pub failover_threads: usize,
    /// Circuit breaker: this many candidates or more → none is failed over (Octavia: unset).
    pub failover_threshold: Option<usize>,
    /// A group is in partial disruption when at least this fraction of it is overdue
    /// (Kubernetes' `unhealthy_zone_threshold`).
    #[serde(alias = "unhealthy_zone_threshold")]
    pub partition_fraction: f64,
    /// …and at least this many amphorae of it; also the least overdue count read as blindness.
    pub partition_min: usize,
    /// Overdue after this many times the amphora's usual interval.
    pub overdue_factor: f64,
    /// A group this overdue is dark; the whole fleet this overdue: the sink is blind.
    pub sink_blind_fraction: f64,
    /// Failovers per second per group after the burst (default: `failover_threads` per
    /// `health_check_interval`; Kubernetes' `node-eviction-rate`).
    pub failover_rate: Option<f64>,
    /// Failovers per second in a group in partial disruption (Kubernetes'
    /// `secondary-node-eviction-rate`).
    pub secondary_failover_rate: f64,
    /// A group in partial disruption with this many amphorae or fewer fails nothing over
    /// (Kubernetes' `large-cluster-size-threshold`).
    pub large_group_size: usize,
    /// Overloaded when drops (kernel + ring) exceed this fraction of datagrams in a check.
    pub overload_drop_fraction: f64,
    /// Workers lagging when a ring is fuller than this fraction at a check.
    pub lag_ring_fraction: f64,
    /// Start-up grace, seconds (default: `heartbeat_timeout`).
    pub startup_grace: Option<f64>,
}

impl Default for LivenessConfig {
    fn default() -> LivenessConfig {
        LivenessConfig {
            heartbeat_timeout: 60.0,
            health_check_interval: 3.0,
            heartbeat_interval: 10.0,
            failover_threads: 10,
            failover_threshold: None,
            partition_fraction: 0.55,
            partition_min: 4,
            overdue_factor: 2.0,
            sink_blind_fraction: 0.9,
            failover_rate: None,
            secondary_failover_rate: 0.1,
            large_group_size: 50,
            overload_drop_fraction: 0.001,
            lag_ring_fraction: 0.5,
            startup_grace: None,
        }
    }
}

/// Seconds to ns, saturating; negative and NaN are 0.
pub fn secs_ns(s: f64) -> u64 {
    if s.is_nan() || s <= 0.0 {
        0
    } else if s >= u64::MAX as f64 / 1e9 {
        u64::MAX
    } else {
        (s * 1e9) as u64
    }
}

impl LivenessConfig {
    /// Checks the values; the message names the setting.
    pub fn validate(&self) -> Result<(), SettingError> {
        for (name, v) in [
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("health_check_interval", self.health_check_interval),
            ("heartbeat_interval", self.heartbeat_interval),
        ] {
            if !(v.is_finite() && v >= super::MIN_INTERVAL_S) {
                return Err(SettingError::new(format!("liveness.{name}"), "a number of seconds, at least 0.01"));
            }
        }
        if self.failover_threads == 0 {
            return Err(SettingError::new("liveness.failover_threads", "at least 1"));
        }
        if self.failover_threshold == Some(0) {
            return Err(SettingError::new("liveness.failover_threshold", "at least 1 (or absent)"));
        }
        for (name, v) in [
            ("partition_fraction", self.partition_fraction),
            ("lag_ring_fraction", self.lag_ring_fraction),
            ("sink_blind_fraction", self.sink_blind_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(SettingError::new(format!("liveness.{name}"), "a fraction in 0..=1"));
            }
        }
        if !(self.overdue_factor.is_finite() && self.overdue_factor >= 1.0) {
            return Err(SettingError::new("liveness.overdue_factor", "a number ≥ 1"));
        }
        if self.failover_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(SettingError::new("liveness.failover_rate", "a positive number per second (or absent)"));
        }
        if !(self.secondary_failover_rate.is_finite() && self.secondary_failover_rate >= 0.0) {
            return Err(SettingError::new("liveness.secondary_failover_rate", "a non-negative number per second"));
        }
        if self.startup_grace.is_some_and(|g| !(g.is_finite() && g >= 0.0)) {
            return Err(SettingError::new("liveness.startup_grace", "a non-negative number of seconds"));
        }
        Ok(())
    }

    fn timeout_ns(&self) -> u64 {
        secs_ns(self.heartbeat_timeout)
    }

    /// The processing-delay bound, ns.
    pub fn max_delay_ns(&self) -> u64 {
        secs_ns(self.heartbeat_interval)
    }

    fn grace_ns(&self) -> u64 {
        secs_ns(self.startup_grace.unwrap_or(self.heartbeat_timeout))
    }

    /// Failovers per second per group at the normal rate.
    pub fn normal_rate(&self) -> f64 {
        self.failover_rate.unwrap_or(self.failover_threads as f64 / self.health_check_interval.max(1e-3))
    }

    /// Silence after which an amphora whose usual interval is `usual_us` (0: unknown) is
    /// overdue, ns: `overdue_factor ×` the interval (at least `health_check_interval`), at most
    /// `heartbeat_timeout`.
    fn overdue_after(&self, usual_us: u32) -> u64 {
        let usual = if usual_us == 0 { self.heartbeat_interval } else { f64::from(usual_us) / 1e6 };
        secs_ns(self.overdue_factor * usual.max(self.health_check_interval)).min(self.timeout_ns())
    }

    /// How long failovers stay suspended after the sink stops looking blind.
    fn blind_tail_ns(&self) -> u64 {
        secs_ns(self.overdue_factor * self.heartbeat_interval)
    }
}

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
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// Nearly the whole fleet is overdue at once: the sink's own network or switch is likelier
    /// than the fleet dying. Every group stops (Kubernetes: every zone in full disruption).
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
    pub const LABELS: [&'static str; 7] = [
        "startup_grace",
        "overloaded",
        "workers_lagging",
        "control_stalled",
        "sink_blind",
        "partition",
        "secondary_rate",
    ];
}

/// What the engine's counters said since the previous health check.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// Datagrams received.
    pub received: u64,
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

#[derive(Clone, Copy, Debug)]
struct Track {
    deadline: u64,
    last_refresh: u64,
    /// The refresh last reported in [`Check::rearmed`] (or tracked with).
    reported: u64,
    stale_since: Option<u64>,
    /// Learned usual interval, µs (0: not yet, the prior applies).
    usual_us: u32,
    /// Heartbeat count read with `last_refresh` (valid when `counted`).
    beats: u32,
    counted: bool,
    overdue: bool,
    /// A failover was started (or stopped by the threshold) in this episode of silence.
    handled: bool,
    group: u32,
}

/// One group's counts and rate limiter.
#[derive(Clone, Debug)]
struct Group {
    key: GroupKey,
    tracked: usize,
    overdue: usize,
    stale: usize,
    /// Candidates of this group.
    waiting: usize,
    tokens: f64,
    refilled: u64,
}

/// How a group is failed over now.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pace {
    Normal,
    Secondary,
    Held,
}

/// A health check's outcome.
#[derive(Debug, Default, PartialEq)]
pub struct Check {
    /// Amphorae that became stale in this check, with their last refresh.
    pub newly_stale: Vec<(Uuid, u64)>,
    /// Deadlines that passed and had been refreshed, reported when the previous report would
    /// otherwise grow older than `heartbeat_timeout` before the next probe (store writes), with
    /// the new last refresh.
    pub rearmed: Vec<(Uuid, u64)>,
    /// Deadlines probed in this check.
    pub probed: usize,
    /// Why failovers are suspended or held back (empty: they are not).
    pub suspended: Vec<SuspendReason>,
    /// Failovers to start now: amphora, its last refresh, when it went stale.
    pub start: Vec<(Uuid, u64, u64)>,
    /// The circuit breaker tripped: these candidates are stopped (not failed over).
    pub stopped: Vec<(Uuid, u64, u64)>,
}

/// The liveness state machine.
#[derive(Debug)]
pub struct Liveness {
    cfg: LivenessConfig,
    tracks: FxHashMap<Uuid, Track>,
    deadlines: BTreeSet<(u64, Uuid)>,
    /// Stale and not yet handled, by when they went stale.
    candidates: BTreeMap<(u64, Uuid), u64>,
    stale: usize,
    overdue: usize,
    groups: FxHashMap<u32, Group>,
    group_ids: FxHashMap<GroupKey, u32>,
    next_group: u32,
    /// Groups with at least `partition_min` overdue (the only ones that can be disrupted).
    disrupted: BTreeSet<u32>,
    /// Groups with candidates.
    groups_waiting: usize,
    started: u64,
    last_check: Option<u64>,
    overload_until: u64,
    overload_drops: u64,
    lag_until: u64,
    lag_seen: (u64, f64),
    stall_until: u64,
    stall_gap: u64,
    blind_until: u64,
    in_flight: usize,
}

impl Liveness {
    /// A liveness machine started at `now`.
    pub fn new(cfg: LivenessConfig, now: u64) -> Liveness {
        Liveness {
            cfg,
            tracks: FxHashMap::default(),
            deadlines: BTreeSet::new(),
            candidates: BTreeMap::new(),
            stale: 0,
            overdue: 0,
            groups: FxHashMap::default(),
            group_ids: FxHashMap::default(),
            next_group: 0,
            disrupted: BTreeSet::new(),
            groups_waiting: 0,
            started: now,
            last_check: None,
            overload_until: 0,
            overload_drops: 0,
            lag_until: 0,
            lag_seen: (0, 0.0),
            stall_until: 0,
            stall_gap: 0,
            blind_until: 0,
            in_flight: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LivenessConfig {
        &self.cfg
    }

    /// New settings (on reload). Existing deadlines keep their times and are re-armed with the
    /// new timeout as they expire.
    pub fn set_config(&mut self, cfg: LivenessConfig) {
        self.cfg = cfg;
        let groups: Vec<u32> = self.groups.keys().copied().collect();
        for g in groups {
            self.regroup(g);
        }
    }

    /// Tracked amphorae.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// Stale amphorae.
    pub fn stale_count(&self) -> usize {
        self.stale
    }

    /// Overdue amphorae (stale ones included).
    pub fn overdue_count(&self) -> usize {
        self.overdue
    }

    /// Failovers running.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The state of one amphora.
    pub fn state(&self, id: &Uuid) -> Option<(Live, u64)> {
        self.tracks.get(id).map(|t| (if t.stale_since.is_some() { Live::Stale } else { Live::Alive }, t.last_refresh))
    }

    /// Whether an amphora is overdue (stale included).
    pub fn is_overdue(&self, id: &Uuid) -> bool {
        self.tracks.get(id).is_some_and(|t| t.overdue)
    }

    /// Its learned usual interval, seconds (`None`: not learned yet).
    pub fn usual_interval(&self, id: &Uuid) -> Option<f64> {
        self.tracks.get(id).filter(|t| t.usual_us > 0).map(|t| f64::from(t.usual_us) / 1e6)
    }

    /// A group's tracked, overdue and stale counts.
    pub fn group_counts(&self, key: &GroupKey) -> Option<(usize, usize, usize)> {
        let g = self.groups.get(self.group_ids.get(key)?)?;
        Some((g.tracked, g.overdue, g.stale))
    }

    fn group_id(&mut self, key: GroupKey) -> u32 {
        if let Some(&g) = self.group_ids.get(&key) {
            return g;
        }
        let id = self.next_group;
        self.next_group = self.next_group.wrapping_add(1);
        let tokens = self.cfg.failover_threads as f64;
        self.group_ids.insert(key.clone(), id);
        self.groups.insert(id, Group { key, tracked: 0, overdue: 0, stale: 0, waiting: 0, tokens, refilled: 0 });
        id
    }

    /// Adds (`sign` 1) or removes (-1) a track's contribution to its group's counts.
    fn count(&mut self, t: &Track, sign: isize) {
        let candidate = t.stale_since.is_some() && !t.handled;
        let Some(g) = self.groups.get_mut(&t.group) else { return };
        let add = |n: &mut usize, on: bool| {
            if on {
                *n = n.saturating_add_signed(sign);
            }
        };
        add(&mut g.tracked, true);
        add(&mut g.overdue, t.overdue);
        add(&mut g.stale, t.stale_since.is_some());
        let waited = g.waiting > 0;
        add(&mut g.waiting, candidate);
        let waits = g.waiting > 0;
        add(&mut self.overdue, t.overdue);
        add(&mut self.stale, t.stale_since.is_some());
        self.groups_waiting = match (waited, waits) {
            (false, true) => self.groups_waiting + 1,
            (true, false) => self.groups_waiting.saturating_sub(1),
            _ => self.groups_waiting,
        };
        self.regroup(t.group);
    }

    /// Keeps the disrupted set.
    fn regroup(&mut self, gid: u32) {
        let Some(g) = self.groups.get(&gid) else { return };
        if g.tracked > 0 && g.overdue >= self.cfg.partition_min.max(1) {
            self.disrupted.insert(gid);
        } else {
            self.disrupted.remove(&gid);
        }
    }

    /// Drops a group left empty.
    fn drop_if_empty(&mut self, gid: u32) {
        if let Some(g) = self.groups.get(&gid).filter(|g| g.tracked == 0) {
            let key = g.key.clone();
            self.groups.remove(&gid);
            self.group_ids.remove(&key);
            self.disrupted.remove(&gid);
        }
    }

    /// Applies `f` to a track with its counts taken out and put back.
    fn update(&mut self, id: &Uuid, f: impl FnOnce(&mut Track)) {
        let Some(mut t) = self.tracks.get(id).copied() else { return };
        self.count(&t, -1);
        f(&mut t);
        self.count(&t, 1);
        self.tracks.insert(*id, t);
    }

    /// Starts tracking an amphora (new, or restored from the store with `stale` as stored), in
    /// the group it was in (a new one: the default group). An amphora restored stale stays a
    /// candidate only if it was not handled before.
    pub fn track(&mut self, id: Uuid, last_refresh: u64, stale_since: Option<u64>, handled: bool) {
        let key = self.tracks.get(&id).and_then(|t| self.groups.get(&t.group)).map(|g| g.key.clone());
        self.forget(&id);
        let group = self.group_id(key.unwrap_or(GroupKey::Default));
        let mut t = Track {
            deadline: 0,
            last_refresh,
            reported: last_refresh,
            stale_since,
            usual_us: 0,
            beats: 0,
            counted: false,
            overdue: stale_since.is_some(),
            handled,
            group,
        };
        if let Some(since) = stale_since {
            if !handled {
                self.candidates.insert((since, id), last_refresh);
            }
        } else {
            t.deadline = last_refresh.saturating_add(self.cfg.overdue_after(0));
            self.deadlines.insert((t.deadline, id));
        }
        self.count(&t, 1);
        self.tracks.insert(id, t);
    }

    /// Moves an amphora to another group.
    pub fn set_group(&mut self, id: &Uuid, key: GroupKey) {
        let Some(t) = self.tracks.get(id).copied() else { return };
        if self.groups.get(&t.group).is_some_and(|g| g.key == key) {
            return;
        }
        self.count(&t, -1);
        self.drop_if_empty(t.group);
        let group = self.group_id(key);
        let t = Track { group, ..t };
        self.count(&t, 1);
        self.tracks.insert(*id, t);
    }

    /// Stops tracking (the amphora was forgotten).
    pub fn forget(&mut self, id: &Uuid) {
        if let Some(t) = self.tracks.remove(id) {
            self.deadlines.remove(&(t.deadline, *id));
            if let Some(since) = t.stale_since {
                self.candidates.remove(&(since, *id));
            }
            self.count(&t, -1);
            self.drop_if_empty(t.group);
        }
    }

    /// An overdue or stale amphora refreshed at `last_refresh` (its shard's watch flag was
    /// set): on time again. Returns whether it was stale.
    pub fn revived(&mut self, id: Uuid, last_refresh: u64) -> bool {
        let Some(t) = self.tracks.get(&id).copied() else { return false };
        if !t.overdue {
            return false;
        }
        let was_stale = t.stale_since.is_some();
        self.deadlines.remove(&(t.deadline, id));
        if let Some(since) = t.stale_since {
            self.candidates.remove(&(since, id));
        }
        let cfg = &self.cfg;
        let last = last_refresh.max(t.last_refresh);
        let deadline = last.saturating_add(cfg.overdue_after(t.usual_us));
        self.update(&id, |t| {
            t.stale_since = None;
            t.overdue = false;
            t.handled = false;
            t.last_refresh = last;
            // The count read with the old refresh no longer matches: learn from the next pair.
            t.counted = false;
            t.deadline = deadline;
        });
        self.deadlines.insert((deadline, id));
        was_stale
    }

    /// A failover of `id` was started outside the automatic rule (manual): this episode is
    /// handled.
    pub fn mark_handled(&mut self, id: &Uuid) {
        let Some(t) = self.tracks.get(id).copied() else { return };
        if let Some(since) = t.stale_since {
            self.candidates.remove(&(since, *id));
        }
        self.update(id, |t| t.handled = true);
    }

    /// A failover began running.
    pub fn failover_started(&mut self) {
        self.in_flight += 1;
    }

    /// A failover finished (done or failed).
    pub fn failover_finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Whether the fleet reads as the sink being blind now: at least `sink_blind_fraction` of
    /// it (and `partition_min` amphorae) overdue.
    fn blind_now(&self) -> bool {
        self.overdue >= self.cfg.partition_min.max(1)
            && self.overdue as f64 >= self.cfg.sink_blind_fraction * self.tracks.len() as f64
    }

    /// How a group is failed over now.
    fn pace(cfg: &LivenessConfig, g: &Group) -> Pace {
        let n = g.tracked as f64;
        let o = g.overdue as f64;
        if g.overdue < cfg.partition_min.max(1) || o >= cfg.sink_blind_fraction * n || o < cfg.partition_fraction * n {
            // Normal, or dark (full disruption): Kubernetes fails a dark zone over at the
            // normal rate unless every zone is dark (then the sink is blind: nothing starts).
            Pace::Normal
        } else if g.tracked > cfg.large_group_size && cfg.secondary_failover_rate > 0.0 {
            Pace::Secondary
        } else {
            Pace::Held
        }
    }

    /// Why failovers are suspended at `now` (without new signals).
    pub fn suspension(&self, now: u64) -> Vec<SuspendReason> {
        let secs = |ns: u64| ns as f64 / 1e9;
        let mut out = Vec::new();
        let grace_end = self.started.saturating_add(self.cfg.grace_ns());
        if now < grace_end {
            out.push(SuspendReason::StartupGrace { remaining_s: secs(grace_end - now) });
        }
        if now < self.overload_until {
            out.push(SuspendReason::Overloaded {
                drops: self.overload_drops,
                remaining_s: secs(self.overload_until - now),
            });
        }
        if now < self.lag_until {
            out.push(SuspendReason::WorkersLagging {
                late: self.lag_seen.0,
                ring_fill: self.lag_seen.1,
                remaining_s: secs(self.lag_until - now),
            });
        }
        if now < self.stall_until {
            out.push(SuspendReason::ControlStalled {
                gap_s: secs(self.stall_gap),
                remaining_s: secs(self.stall_until - now),
            });
        }
        if now < self.blind_until {
            out.push(SuspendReason::SinkBlind {
                overdue: self.overdue,
                stale: self.stale,
                tracked: self.tracks.len(),
                remaining_s: secs(self.blind_until - now),
            });
        }
        let mut listed = (0, 0);
        for gid in &self.disrupted {
            let Some(g) = self.groups.get(gid) else { continue };
            let (group, overdue, stale, tracked) = (g.key.to_string(), g.overdue, g.stale, g.tracked);
            match Liveness::pace(&self.cfg, g) {
                Pace::Normal => {}
                Pace::Held if listed.0 < GROUPS_LISTED => {
                    listed.0 += 1;
                    out.push(SuspendReason::Partition { group, overdue, stale, tracked });
                }
                Pace::Secondary if listed.1 < GROUPS_LISTED => {
                    listed.1 += 1;
                    let rate_per_s = self.cfg.secondary_failover_rate;
                    out.push(SuspendReason::SecondaryRate { group, overdue, stale, tracked, rate_per_s });
                }
                Pace::Held | Pace::Secondary => {}
            }
        }
        out
    }

    /// One health check at `now`. `probe(id, watch_upto)` reads an amphora's shard (None: no
    /// longer there, e.g. forgotten concurrently) and sets its watch flag if its
    /// `last_refresh` is at or before `watch_upto` (overdue or stale), atomically with the read.
    pub fn check(&mut self, now: u64, signals: Signals, mut probe: impl FnMut(&Uuid, u64) -> Option<Probed>) -> Check {
        let mut out = Check::default();
        let interval = secs_ns(self.cfg.heartbeat_interval);
        // Self-awareness signals first.
        if let Some(last) = self.last_check {
            let gap = now.saturating_sub(last);
            let expected = secs_ns(self.cfg.health_check_interval);
            if gap > expected.saturating_mul(2).saturating_add(S) {
                self.stall_gap = gap;
                self.stall_until = now.saturating_add(interval);
            }
        }
        self.last_check = Some(now);
        let seen = signals.received + signals.drops;
        if signals.drops > 0 && signals.drops as f64 > self.cfg.overload_drop_fraction * seen as f64 {
            self.overload_drops = signals.drops;
            self.overload_until = now.saturating_add(interval);
        }
        if signals.late > 0 || signals.ring_fill > self.cfg.lag_ring_fraction {
            self.lag_seen = (signals.late, signals.ring_fill);
            self.lag_until = now.saturating_add(interval);
        }

        // Expired deadlines only, at most EXPIRED_PER_CHECK of them: a fleet whose deadlines
        // all fall at once (a million senders started together) is worked through over a few
        // checks instead of one long one.
        let timeout = self.cfg.timeout_ns();
        let mut budget = EXPIRED_PER_CHECK;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now || budget == 0 {
                break;
            }
            budget -= 1;
            self.deadlines.pop_first();
            let Some(t) = self.tracks.get(&id).copied() else { continue };
            out.probed += 1;
            let overdue_after = self.cfg.overdue_after(t.usual_us);
            let read = probe(&id, now.saturating_sub(overdue_after));
            let refreshed = read.map_or(t.last_refresh, |p| p.last_refresh).max(t.last_refresh);
            let mut next = t;
            next.last_refresh = refreshed;
            if let Some(p) = read {
                // Learn the usual interval from refresh time and heartbeat count moved together.
                let beats = p.heartbeats as u32;
                let n = beats.wrapping_sub(t.beats);
                if t.counted && refreshed > t.last_refresh && n > 0 && n < u32::MAX / 2 {
                    let sample = ((refreshed - t.last_refresh) / 1000 / u64::from(n)).clamp(1, u64::from(u32::MAX));
                    let sample = sample as u32;
                    next.usual_us = if t.usual_us == 0 {
                        sample
                    } else {
                        // EWMA, weight 1/4.
                        ((u64::from(t.usual_us) * 3 + u64::from(sample)) / 4) as u32
                    };
                }
                next.beats = beats;
                next.counted = true;
            }
            if refreshed.saturating_add(timeout) <= now {
                next.stale_since = Some(now);
                next.overdue = true;
                next.handled = false;
                self.candidates.insert((now, id), refreshed);
                out.newly_stale.push((id, refreshed));
            } else if refreshed.saturating_add(overdue_after) <= now {
                next.overdue = true;
                next.deadline = refreshed.saturating_add(timeout);
                self.deadlines.insert((next.deadline, id));
            } else {
                next.overdue = false;
                next.deadline = refreshed.saturating_add(self.cfg.overdue_after(next.usual_us));
                self.deadlines.insert((next.deadline, id));
                // Reported now if the next probe would leave the reported refresh more than
                // heartbeat_timeout old: the store's copy is never older than that.
                if next.deadline > t.reported.saturating_add(timeout) {
                    next.reported = refreshed;
                    out.rearmed.push((id, refreshed));
                }
            }
            self.update(&id, |t| *t = next);
        }

        if self.blind_now() {
            self.blind_until = now.saturating_add(self.cfg.blind_tail_ns().max(1));
        }
        out.suspended = self.suspension(now);
        if out.suspended.iter().any(|s| s.group().is_none()) || self.candidates.is_empty() {
            return out;
        }
        if self.cfg.failover_threshold.is_some_and(|t| self.candidates.len() >= t) {
            // Octavia's circuit breaker: stop them all, keep them candidates for when the count
            // falls below the threshold.
            out.stopped = self.candidates.iter().map(|(&(since, id), &last)| (id, last, since)).collect();
            return out;
        }
        let room = self.cfg.failover_threads.saturating_sub(self.in_flight);
        let mut picked: Vec<(u64, Uuid)> = Vec::new();
        let mut exhausted: FxHashSet<u32> = FxHashSet::default();
        let normal = self.cfg.normal_rate();
        for &(since, id) in self.candidates.keys() {
            if picked.len() >= room || exhausted.len() >= self.groups_waiting {
                break;
            }
            let Some(gid) = self.tracks.get(&id).map(|t| t.group) else { continue };
            if exhausted.contains(&gid) {
                continue;
            }
            let Some(g) = self.groups.get_mut(&gid) else { continue };
            let (rate, cap) = match Liveness::pace(&self.cfg, g) {
                Pace::Normal => (normal, self.cfg.failover_threads as f64),
                Pace::Secondary => (self.cfg.secondary_failover_rate, 1.0),
                Pace::Held => (0.0, 0.0),
            };
            if g.refilled != now {
                let dt = now.saturating_sub(g.refilled) as f64 / 1e9;
                g.tokens = (g.tokens + rate * dt).min(cap);
                g.refilled = now;
            }
            if g.tokens >= 1.0 {
                g.tokens -= 1.0;
                picked.push((since, id));
            } else {
                exhausted.insert(gid);
            }
        }
        for (since, id) in picked {
            if let Some(last) = self.candidates.remove(&(since, id)) {
                self.update(&id, |t| t.handled = true);
                out.start.push((id, last, since));
            }
        }
        out
    }

    /// When an amphora went stale, if it is.
    pub fn stale_since(&self, id: &Uuid) -> Option<u64> {
        self.tracks.get(id).and_then(|t| t.stale_since)
    }

    /// Whether an amphora's stale episode was handled (a failover started or stopped).
    pub fn handled(&self, id: &Uuid) -> bool {
        self.tracks.get(id).is_some_and(|t| t.handled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn cfg() -> LivenessConfig {
        LivenessConfig { partition_min: 1000, ..LivenessConfig::default() }
    }

    /// What a shard holds: last refresh, heartbeats, watch flag.
    #[derive(Clone, Copy, Default)]
    struct Shard {
        last: u64,
        beats: u64,
        watch: bool,
    }

    /// A fleet where `refresh[id]` is the probe's answer (as a shard would: the watch flag set
    /// by the probe, cleared and reported by the next beat).
    struct Fleet {
        live: Liveness,
        refresh: FxHashMap<Uuid, Shard>,
    }

    impl Fleet {
        fn new(cfg: LivenessConfig, n: u8) -> Fleet {
            let mut live = Liveness::new(cfg, 0);
            let mut refresh = FxHashMap::default();
            for i in 0..n {
                live.track(id(i), 0, None, false);
                refresh.insert(id(i), Shard::default());
            }
            Fleet { live, refresh }
        }
        fn beat(&mut self, i: u8, at: u64) {
            let s = self.refresh.entry(id(i)).or_default();
            s.last = at;
            s.beats += 1;
            if std::mem::take(&mut s.watch) {
                self.live.revived(id(i), at);
            }
        }
        fn check_with(&mut self, at: u64, signals: Signals) -> Check {
            let r = &mut self.refresh;
            self.live.check(at, signals, |i, upto| {
                r.get_mut(i).map(|s| {
                    s.watch |= s.last <= upto;
                    Probed { last_refresh: s.last, heartbeats: s.beats }
                })
            })
        }
        fn check(&mut self, at: u64) -> Check {
            self.check_with(at, Signals::default())
        }
        /// Checks every 3 s from `from` to `to` (as the control thread does), merging the
        /// outcomes; `suspended` is the last check's.
        fn run(&mut self, from: u64, to: u64) -> Check {
            let mut all = Check::default();
            let mut t = from;
            while t <= to {
                let c = self.check(t * S);
                all.newly_stale.extend(c.newly_stale);
                all.start.extend(c.start);
                all.stopped = c.stopped;
                all.suspended = c.suspended;
                t += 3;
            }
            all
        }
    }

    /// A bare machine checked every 3 s from `from` to `to` with `signals` at `at`.
    fn run_bare(l: &mut Liveness, from: u64, to: u64, at: u64, signals: Signals) -> Check {
        let mut last = Check::default();
        let mut t = from;
        while t <= to {
            last = l.check(t * S, if t == at { signals } else { Signals::default() }, |_, _| None);
            t += 3;
        }
        last
    }

    #[test]
    fn stale_after_timeout_not_before_and_once() {
        let mut f = Fleet::new(cfg(), 3);
        for t in (0..=120).step_by(3) {
            if t <= 100 {
                f.beat(0, t * S);
                f.beat(1, t * S);
            }
            // Amphora 2 beats until 30 s.
            if t <= 30 {
                f.beat(2, t * S);
            }
            let c = f.check(t * S);
            if t < 90 {
                assert!(c.newly_stale.is_empty(), "nothing stale at {t}");
            }
            if t == 90 {
                assert_eq!(c.newly_stale, vec![(id(2), 30 * S)], "stale exactly at 30 + 60 s");
                assert_eq!(c.start, vec![(id(2), 30 * S, 90 * S)]);
            }
            if t > 90 {
                assert!(c.start.iter().all(|s| s.0 != id(2)), "failed over once");
            }
        }
    }

    #[test]
    fn tick_touches_only_expired_deadlines() {
        let mut f = Fleet::new(cfg(), 200);
        // Everyone beats every 10 s until 100 s.
        let mut rearmed = 0;
        for t in (0..=99).step_by(3) {
            for i in 0..200 {
                f.beat(i, t * S);
            }
            let c = f.check(t * S);
            rearmed += c.rearmed.len();
        }
        // Deadlines at 60 s, then each re-armed once per ~60 s: 200 re-arms, not 200 per check.
        assert_eq!(rearmed, 200);
    }

    #[test]
    fn startup_grace_suspends_then_fails_over() {
        let c = LivenessConfig { startup_grace: Some(90.0), ..cfg() };
        let mut f = Fleet::new(c, 1);
        let c1 = f.run(0, 87);
        assert_eq!(c1.newly_stale.len(), 1, "stale at 60 s");
        assert!(c1.start.is_empty(), "not failed over during the grace");
        assert!(matches!(c1.suspended[0], SuspendReason::StartupGrace { .. }));
        let c2 = f.run(90, 90);
        assert!(c2.suspended.is_empty());
        assert_eq!(c2.start.len(), 1);
    }

    #[test]
    fn revived_before_end_of_suspension_is_not_failed_over() {
        let mut f = Fleet::new(LivenessConfig { startup_grace: Some(0.0), ..cfg() }, 2);
        assert!(f.run(0, 57).newly_stale.is_empty());
        // Overload at 60 s: drops above the fraction.
        let c = f.check_with(60 * S, Signals { received: 100, drops: 50, late: 0, ring_fill: 0.0 });
        assert_eq!(c.newly_stale.len(), 2);
        assert!(c.start.is_empty());
        assert_eq!(c.suspended[0].label(), "overloaded");
        // One beats again within heartbeat_interval; the other does not.
        f.beat(0, 65 * S);
        let c = f.run(63, 69);
        assert_eq!(c.suspended.len(), 1, "still suspended until 70 s");
        assert!(c.start.is_empty());
        let c = f.run(72, 72);
        assert!(c.suspended.is_empty());
        assert_eq!(c.start.iter().map(|s| s.0).collect::<Vec<_>>(), vec![id(1)]);
    }

    #[test]
    fn late_and_ring_fill_suspend() {
        let mut l = Liveness::new(LivenessConfig { startup_grace: Some(0.0), ..cfg() }, 0);
        let c = run_bare(&mut l, 3, 3, 3, Signals { late: 1, ..Signals::default() });
        assert_eq!(c.suspended[0].label(), "workers_lagging");
        let c = run_bare(&mut l, 6, 12, 12, Signals { ring_fill: 0.9, ..Signals::default() });
        assert_eq!(c.suspended[0].label(), "workers_lagging");
        let c = run_bare(&mut l, 15, 24, 0, Signals::default());
        assert!(c.suspended.is_empty());
    }

    #[test]
    fn control_stall_suspends() {
        let mut l = Liveness::new(LivenessConfig { startup_grace: Some(0.0), ..cfg() }, 0);
        assert!(run_bare(&mut l, 3, 9, 0, Signals::default()).suspended.is_empty());
        let c = l.check(30 * S, Signals::default(), |_, _| None);
        assert_eq!(c.suspended[0].label(), "control_stalled");
        let c = run_bare(&mut l, 33, 42, 0, Signals::default());
        assert!(c.suspended.is_empty(), "lifted heartbeat_interval after the stall");
    }

    #[test]
    fn partition_suspends() {
        let c = LivenessConfig { startup_grace: Some(0.0), partition_min: 2, partition_fraction: 0.5, ..cfg() };
        let mut f = Fleet::new(c, 4);
        for t in (0..=70).step_by(3) {
            f.beat(0, t * S);
            f.beat(1, t * S);
            let c = f.check(t * S);
            if t >= 60 {
                assert!(c.start.is_empty(), "half the fleet silent: suspended");
                assert!(c.suspended.iter().any(|s| s.label() == "partition"));
            }
        }
        // Three of four beating: 1/4 < 1/2, the silent one fails over.
        f.beat(0, 72 * S);
        f.beat(1, 72 * S);
        f.beat(2, 72 * S);
        let c = f.check(72 * S);
        assert_eq!(c.start.iter().map(|s| s.0).collect::<Vec<_>>(), vec![id(3)]);
    }

    #[test]
    fn threshold_stops_then_releases() {
        let c = LivenessConfig { startup_grace: Some(0.0), failover_threshold: Some(3), ..cfg() };
        let mut f = Fleet::new(c, 10);
        for i in 3..10 {
            f.beat(i, 50 * S);
        }
        let c = f.check(61 * S);
        assert_eq!(c.newly_stale.len(), 3);
        assert!(c.start.is_empty());
        assert_eq!(c.stopped.len(), 3, "three candidates reach the threshold of 3");
        // One comes back: two remain, below the threshold: both fail over.
        f.beat(0, 62 * S);
        let c = f.check(64 * S);
        assert!(c.stopped.is_empty());
        assert_eq!(c.start.iter().map(|s| s.0).collect::<BTreeSet<_>>(), [id(1), id(2)].into());
    }

    #[test]
    fn failover_threads_bound_each_check() {
        let c = LivenessConfig { startup_grace: Some(0.0), failover_threads: 2, ..cfg() };
        let mut f = Fleet::new(c, 5);
        let c = f.check(61 * S);
        assert_eq!(c.start.len(), 2);
        f.live.failover_started();
        f.live.failover_started();
        assert!(f.check(64 * S).start.is_empty(), "both slots busy");
        f.live.failover_finished();
        assert_eq!(f.check(67 * S).start.len(), 1);
    }

    #[test]
    fn restored_tracks_resume_from_stored_times() {
        let mut l = Liveness::new(LivenessConfig { startup_grace: Some(60.0), ..cfg() }, 1000 * S);
        // Last refreshed 30 s before the restart.
        l.track(id(1), 970 * S, None, false);
        // Stale and handled before the restart: no second failover.
        l.track(id(2), 900 * S, Some(960 * S), true);
        let c = run_bare(&mut l, 1003, 1027, 0, Signals::default());
        assert!(c.newly_stale.is_empty(), "deadline 970 + 60 = 1030 s not reached");
        let mut started = Vec::new();
        let mut t = 1030;
        while t <= 1063 {
            let c = l.check(t * S, Signals::default(), |_, _| None);
            if t < 1060 {
                assert!(c.start.is_empty(), "start-up grace until 1060 s");
            }
            started.extend(c.start.iter().map(|s| s.0));
            t += 3;
        }
        assert_eq!(started, vec![id(1)], "one failover, after the grace; none for the handled one");
    }

    #[test]
    fn the_usual_interval_is_learned_and_overdue_is_counted_then_cleared() {
        let mut f = Fleet::new(cfg(), 2);
        // The prior (10 s) probes at 20 s, then 40 s: the second read learns 3 s.
        for t in (0..=45).step_by(3) {
            f.beat(0, t * S);
            f.beat(1, t * S);
            f.check(t * S);
        }
        let usual = f.live.usual_interval(&id(0)).expect("learned");
        assert!((usual - 3.0).abs() < 0.01, "{usual}");
        // Amphora 1 falls silent after 45 s: overdue 2 × 3 s later, long before stale.
        for t in (48..=57).step_by(3) {
            f.beat(0, t * S);
            f.check(t * S);
        }
        assert!(f.live.is_overdue(&id(1)) && !f.live.is_overdue(&id(0)));
        assert_eq!((f.live.overdue_count(), f.live.stale_count()), (1, 0));
        assert_eq!(f.live.group_counts(&GroupKey::Default), Some((2, 1, 0)));
        // Its next beat is reported (the watch flag) and clears it at once.
        f.beat(1, 58 * S);
        assert_eq!(f.live.overdue_count(), 0);
        assert_eq!(f.live.state(&id(1)), Some((Live::Alive, 58 * S)));
    }

    #[test]
    fn a_group_in_partial_disruption_is_held_or_slowed_and_others_go_on() {
        let c = LivenessConfig { startup_grace: Some(0.0), partition_min: 4, large_group_size: 6, ..cfg() };
        let mut f = Fleet::new(c, 20);
        for i in 0..10 {
            f.live.set_group(&id(i), GroupKey::Zone("a".into()));
        }
        for i in 10..16 {
            f.live.set_group(&id(i), GroupKey::Zone("b".into()));
        }
        // Zone a: 6 of 10 silent (partial, larger than 6: secondary rate). Zone b: 4 of 6
        // silent (partial, small: held). Default: one of four silent (normal).
        let silent = |i: u8| i < 6 || (10..14).contains(&i) || i == 19;
        let mut started = Vec::new();
        let mut reasons = Vec::new();
        for t in (0..=90).step_by(3) {
            for i in (0..20).filter(|i| !silent(*i) || t < 9) {
                f.beat(i, t * S);
            }
            let c = f.check(t * S);
            started.extend(c.start.iter().map(|s| (t, s.0)));
            reasons = c.suspended.iter().map(|s| (s.label(), s.group().map(str::to_owned))).collect();
        }
        assert!(reasons.contains(&("partition", Some("zone:b".into()))), "{reasons:?}");
        assert!(reasons.contains(&("secondary_rate", Some("zone:a".into()))), "{reasons:?}");
        assert!(started.iter().all(|s| !(10..14).any(|i| id(i) == s.1)), "zone b held: {started:?}");
        assert!(started.iter().any(|s| s.1 == id(19)), "the default group goes on: {started:?}");
        // Zone a, stale from 66 s: one at once, then 0.1/s.
        let a: Vec<u64> = started.iter().filter(|s| (0..6).any(|i| id(i) == s.1)).map(|s| s.0).collect();
        assert_eq!(a.len(), 3, "{a:?}");
    }

    #[test]
    fn unhealthy_zone_threshold_is_an_alias() {
        let c: LivenessConfig = toml::from_str("unhealthy_zone_threshold = 0.6").expect("parses");
        assert_eq!(c.partition_fraction, 0.6);
        assert!(toml::from_str::<LivenessConfig>("nope = 1").is_err());
    }
}
