//! Liveness and failover decisions, without threads or I/O: Octavia's health manager rules
//! (reference `octavia-heartbeat.md` §4), with heartsink's self-awareness on top and
//! Kubernetes' node lifecycle controller as the model for mass staleness.
//!
//! **Deadlines.** Every tracked amphora has one deadline in a coarse timer wheel ([`wheel`]):
//! while it is on time, `last_refresh + overdue_after`; once overdue, `last_refresh +
//! heartbeat_timeout`. A heartbeat never touches it. A health check expires only the wheel's
//! slots that began, and asks the probe (the amphora's shard) for the current `last_refresh`
//! and heartbeat count of each entry whose deadline passed: if it moved, the deadline is
//! re-armed (a push onto a slot, O(1)); if not, the amphora is overdue, or stale. The probe
//! also sets the shard's watch flag on an overdue or stale amphora, so its next refreshing
//! heartbeat is reported at once ([`Liveness::revived`]). A beating amphora is therefore probed
//! once per `overdue_after`, never once per heartbeat and never in a scan of the fleet; its
//! new refresh time is published ([`Check::rearmed`]) but not written to the store: the store
//! is written on transitions only.
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
//! after a stall of the control thread, and while nearly the whole fleet is overdue at once or
//! the sink hears under a tenth of what its fleet sends (`sink_blind`: the sink's own network
//! is likelier than the fleet dying), until `heartbeat_timeout` + one check after that.

mod config;
#[cfg(test)]
mod tests;
mod vocab;
pub mod wheel;

pub use config::{secs_ns, LivenessConfig};
pub use vocab::{GroupKey, Live, Probed, Signals, SuspendReason};

use std::collections::{BTreeMap, BTreeSet};

use wheel::Wheel;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::proto::octavia::Uuid;

const S: u64 = 1_000_000_000;

/// Most expired deadlines one health check, or one control round between checks
/// ([`Liveness::advance`]), handles; the rest wait for the next one. (20,000 took 40-54 ms
/// at a million amphorae after a synchronised pass, measured; this is a quarter of that.)
pub const EXPIRED_PER_CHECK: usize = 5_000;

/// Most groups listed one by one in the suspension reasons of one check.
const GROUPS_LISTED: usize = 16;

/// Wheel slots per health check interval: a passed deadline waits at most one slot (this
/// fraction of an interval) for the round that expires it.
const SLOTS_PER_CHECK: u64 = 8;

/// A learned interval updated with `sample` (µs): the sample itself first, then an EWMA of
/// weight 1/4.
fn ewma_us(usual_us: u32, sample: u32) -> u32 {
    if usual_us == 0 {
        sample
    } else {
        ((u64::from(usual_us) * 3 + u64::from(sample)) / 4) as u32
    }
}

/// The wheel for `cfg`, its first slot holding `now`.
fn wheel_for(cfg: &LivenessConfig, now: u64) -> Wheel {
    let width = (secs_ns(cfg.health_check_interval) / SLOTS_PER_CHECK).max(1_000_000);
    Wheel::new(width, cfg.timeout_ns(), now)
}

#[derive(Clone, Copy, Debug)]
struct Track {
    /// The deadline in the wheel (meaningless while stale: a stale amphora has none).
    deadline: u64,
    last_refresh: u64,
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
    /// Deadlines that passed and had been refreshed, with the new last refresh (published,
    /// not stored).
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
    /// Reasons from outside the sink's own signals (cluster mode), added to every suspension.
    external: Vec<SuspendReason>,
    tracks: FxHashMap<Uuid, Track>,
    wheel: Wheel,
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
    /// Heartbeats applied per check over the last `heartbeat_interval`: (from, to, count).
    heard: std::collections::VecDeque<(u64, u64, u64)>,
    /// The sink hears almost nothing of its fleet (the rate rule of [`SuspendReason::SinkBlind`]).
    deaf: bool,
    /// The last expiry stopped at its budget with deadlines left.
    expired_out: bool,
    /// Amphorae expected to beat (tracked, less the stale ones already failed over).
    expecting: usize,
    /// Their heartbeats per second, from their learned usual intervals (the prior where not
    /// learned yet).
    expected_rate: f64,
    in_flight: usize,
}

impl Liveness {
    /// A liveness machine started at `now`.
    pub fn new(cfg: LivenessConfig, now: u64) -> Liveness {
        Liveness {
            external: Vec::new(),
            wheel: wheel_for(&cfg, now),
            cfg,
            tracks: FxHashMap::default(),
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
            heard: std::collections::VecDeque::new(),
            deaf: false,
            expired_out: false,
            expecting: 0,
            expected_rate: 0.0,
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
        let rebuild = cfg.health_check_interval != self.cfg.health_check_interval
            || cfg.heartbeat_timeout != self.cfg.heartbeat_timeout;
        self.cfg = cfg;
        // The prior rate of amphorae not learned yet may have changed.
        self.expected_rate = self
            .tracks
            .values()
            .filter(|t| !(t.stale_since.is_some() && t.handled))
            .map(|t| self.cfg.usual_rate(t.usual_us))
            .sum();
        if rebuild {
            // Another slot width or horizon: every armed deadline moves into the new wheel.
            let now = self.last_check.unwrap_or(self.started);
            self.wheel = wheel_for(&self.cfg, now);
            for (id, t) in &self.tracks {
                if t.stale_since.is_none() {
                    self.wheel.arm(*id, t.deadline);
                }
            }
        }
        let groups: Vec<u32> = self.groups.keys().copied().collect();
        for g in groups {
            self.regroup(g);
        }
    }

    /// Tracked amphorae.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// Sets the reasons from outside the sink's own signals (cluster mode: not the leader,
    /// etcd unreachable, a new leader's grace, an impaired or silent member); they hold back
    /// every automatic failover while set.
    pub fn set_external(&mut self, reasons: Vec<SuspendReason>) {
        self.external = reasons;
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

    /// Starts the start-up grace again at `now`: the restore is over and heartbeats are read
    /// from now on, so the grace counts from here, not from the process start.
    ///
    /// Every amphora not stale is also treated as heard now (as Kubernetes resets every node's
    /// probe time): its stored last refresh may be old (rows are written on transitions), and
    /// it gets a full interval, and a full timeout, from here before it can be overdue or stale.
    pub fn restart_grace(&mut self, now: u64) {
        self.started = now;
        let ids: Vec<Uuid> = self.tracks.iter().filter(|(_, t)| t.stale_since.is_none()).map(|(id, _)| *id).collect();
        for id in ids {
            let Some(t) = self.tracks.get(&id).copied() else { continue };
            let deadline = now.saturating_add(self.cfg.overdue_after(t.usual_us));
            self.update(&id, |t| {
                t.last_refresh = t.last_refresh.max(now);
                t.overdue = false;
                t.counted = false;
                t.deadline = deadline;
            });
            self.wheel.arm(id, deadline);
        }
    }

    /// Whether a suspension without a group holds at `now` (the sink cannot trust what it
    /// hears, so a silence then says nothing about an amphora's own interval).
    fn globally_suspended(&self, now: u64) -> bool {
        now < self.started.saturating_add(self.cfg.grace_ns())
            || now < self.overload_until
            || now < self.lag_until
            || now < self.stall_until
            || now < self.blind_until
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
        if !(t.stale_since.is_some() && t.handled) {
            // Still expected to beat: its usual rate counts towards what the sink should hear.
            let rate = self.cfg.usual_rate(t.usual_us);
            self.expecting = self.expecting.saturating_add_signed(sign);
            self.expected_rate =
                if self.expecting == 0 { 0.0 } else { (self.expected_rate + sign as f64 * rate).max(0.0) };
        }
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
            self.wheel.arm(id, t.deadline);
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
            // Its wheel entry is left behind and skipped when its slot expires.
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
        if let Some(since) = t.stale_since {
            self.candidates.remove(&(since, id));
        }
        let cfg = &self.cfg;
        let last = last_refresh.max(t.last_refresh);
        // An overdue (not stale) amphora's first refreshing beat after the probe that found it
        // silent is one interval after the refresh that probe read: a sample of its usual
        // interval. Without it, a fleet beating slower than `heartbeat_interval` would never
        // learn its interval (every probe would find it overdue, every beat revive it).
        // Not while the sink itself was suspect (the silence may be its own), and at most
        // twice the current estimate per sample, so one long gap cannot jump it.
        let mut usual_us = t.usual_us;
        if !was_stale && t.last_refresh > 0 && last > t.last_refresh && !self.globally_suspended(last) {
            let current = if t.usual_us == 0 { secs_ns(cfg.heartbeat_interval) / 1000 } else { u64::from(t.usual_us) };
            let sample = ((last - t.last_refresh) / 1000).clamp(1, current.saturating_mul(2).max(1));
            usual_us = ewma_us(t.usual_us, sample.min(u64::from(u32::MAX)) as u32);
        }
        let deadline = last.saturating_add(cfg.overdue_after(usual_us));
        self.update(&id, |t| {
            t.stale_since = None;
            t.overdue = false;
            t.handled = false;
            t.last_refresh = last;
            t.usual_us = usual_us;
            // The count read with the old refresh no longer matches: learn from the next pair.
            t.counted = false;
            t.deadline = deadline;
        });
        self.wheel.arm(id, deadline);
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
    /// it (and `partition_min` amphorae) overdue, or the rate rule ([`Liveness::hears_almost_nothing`])
    /// holds.
    fn blind_now(&self) -> bool {
        self.deaf
            || (self.overdue >= self.cfg.partition_min.max(1)
                && self.overdue as f64 >= self.cfg.sink_blind_fraction * self.tracks.len() as f64)
    }

    /// The rate rule: over the last usual interval of the fleet (its mean learned interval, at
    /// least `heartbeat_interval`'s floor of one check, at most half the timeout; at least half
    /// of it seen), the heartbeats applied fall short of `1 − sink_blind_fraction` of what the
    /// amphorae still expected to beat (tracked, less the stale ones already failed over) send
    /// in that time at their learned rates, with enough of them (`partition_min`, and twice
    /// that many beats expected) for the share to mean something. When the sink's own network
    /// fails, this sees it within about one interval, before any amphora can be stale; a dying
    /// rack or zone only lowers the rate by its share. Learned rates, not the configured
    /// interval, so a fleet beating slower than configured does not read as blind.
    fn hears_almost_nothing(&mut self, last: Option<u64>, now: u64, accepted: u64) -> bool {
        let mean_s = if self.expected_rate > 0.0 {
            self.expecting as f64 / self.expected_rate
        } else {
            self.cfg.heartbeat_interval
        };
        let window = secs_ns(mean_s.max(self.cfg.health_check_interval)).min(self.cfg.timeout_ns() / 2).max(1);
        if let Some(from) = last {
            self.heard.push_back((from, now, accepted));
        }
        while self.heard.front().is_some_and(|&(_, to, _)| to.saturating_add(window) <= now) {
            self.heard.pop_front();
        }
        let Some(&(from, _, _)) = self.heard.front() else { return false };
        let span = now.saturating_sub(from).min(window);
        let heard: u64 = self.heard.iter().map(|e| e.2).sum();
        let min = self.cfg.partition_min.max(1);
        let expected = self.expected_rate * span as f64 / 1e9;
        self.expecting >= min
            && span >= window / 2
            && expected >= 2.0 * min as f64
            && (heard as f64) < (1.0 - self.cfg.sink_blind_fraction) * expected
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
        out.extend(self.external.iter().cloned());
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
        self.deaf = self.hears_almost_nothing(self.last_check, now, signals.accepted);
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

        // Expired deadlines only, at most EXPIRED_PER_CHECK of them (the control rounds between
        // checks expire more, see [`Liveness::advance`]).
        self.expire_due(now, EXPIRED_PER_CHECK, &mut probe, &mut out);

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

    /// Expires up to `budget` passed deadlines between health checks (each control round), so
    /// that a fleet whose deadlines fall together (a million senders started at once) is worked
    /// through in short rounds rather than in one long check. Only `newly_stale`, `rearmed` and
    /// `probed` of the returned [`Check`] are filled: failovers are decided by
    /// [`Liveness::check`] alone.
    pub fn advance(&mut self, now: u64, budget: usize, mut probe: impl FnMut(&Uuid, u64) -> Option<Probed>) -> Check {
        let mut out = Check::default();
        self.expire_due(now, budget, &mut probe, &mut out);
        out
    }

    /// Whether the last expiry stopped at its budget with passed deadlines left.
    pub fn behind(&self) -> bool {
        self.expired_out
    }

    fn expire_due(
        &mut self,
        now: u64,
        budget: usize,
        probe: &mut impl FnMut(&Uuid, u64) -> Option<Probed>,
        out: &mut Check,
    ) {
        let timeout = self.cfg.timeout_ns();
        let mut budget = budget;
        self.expired_out = false;
        self.wheel.skip_empty(now);
        while budget > 0 {
            let Some((slot, ids)) = self.wheel.expire_next(now) else { break };
            let mut rest = ids.into_iter();
            for id in rest.by_ref() {
                // Entries left behind by a re-arm, a staleness or a forget are skipped.
                let Some(t) = self.tracks.get(&id).copied() else { continue };
                if t.stale_since.is_some() {
                    continue;
                }
                let at = self.wheel.slot_of(t.deadline);
                if at > slot {
                    if self.wheel.laps_ahead(slot, t.deadline) {
                        self.wheel.arm(id, t.deadline);
                    }
                    continue;
                }
                if t.deadline > now {
                    // In the slot holding `now`, not due yet: into the next slot.
                    self.wheel.arm(id, t.deadline);
                    continue;
                }
                budget -= 1;
                self.expire(id, t, now, timeout, probe, out);
                if budget == 0 {
                    self.wheel.put_back(slot, rest.collect());
                    self.expired_out = true;
                    return;
                }
            }
        }
    }

    /// Probes one amphora whose deadline passed and moves it on: re-armed, overdue, or stale.
    fn expire(
        &mut self,
        id: Uuid,
        t: Track,
        now: u64,
        timeout: u64,
        probe: &mut impl FnMut(&Uuid, u64) -> Option<Probed>,
        out: &mut Check,
    ) {
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
                next.usual_us = ewma_us(t.usual_us, sample as u32);
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
            self.wheel.arm(id, next.deadline);
        } else {
            next.overdue = false;
            next.deadline = refreshed.saturating_add(self.cfg.overdue_after(next.usual_us));
            self.wheel.arm(id, next.deadline);
            if refreshed > t.last_refresh {
                out.rearmed.push((id, refreshed));
            }
        }
        self.update(&id, |t| *t = next);
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
