//! Liveness and failover decisions, without threads or I/O: Octavia's health manager rules
//! (reference `octavia-heartbeat.md` §4), with heartsink's self-awareness on top.
//!
//! **Deadlines.** Every tracked amphora has a deadline, `last_refresh + heartbeat_timeout`, in a
//! deadline-ordered index. A health check pops only the deadlines that passed and asks the
//! probe (the amphora's shard) for the current `last_refresh`: if it moved, the deadline is
//! re-armed; if not, the amphora is stale. A beating amphora is therefore touched once per
//! `heartbeat_timeout`, never once per heartbeat and never in a scan of the fleet; workers
//! report only transitions (a stale amphora that beats again: [`Liveness::revived`]).
//!
//! **Failover.** A stale amphora without a failover in this episode of silence is a candidate.
//! Each health check starts at most `failover_threads − in flight` failovers, oldest silence
//! first. Octavia's circuit breaker: when the candidates number `failover_threshold` or more,
//! none is failed over and each gets a record in state `stopped`; once fewer remain, they are
//! failed over normally.
//!
//! **Self-awareness (unlike Octavia).** No automatic failover starts while heartsink cannot
//! trust its own view ([`SuspendReason`]): during the start-up grace (one `heartbeat_timeout`),
//! while it drops packets itself (kernel or ring drops) or applies heartbeats late, for one
//! `heartbeat_interval` after either (every live sender gets a beat through in that time),
//! after a stall of the control thread, and while a large fraction of the fleet is silent at
//! once (a partition on heartsink's side is likelier than half the fleet dying).

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::SettingError;
use crate::proto::octavia::Uuid;

const S: u64 = 1_000_000_000;

/// Most expired deadlines one health check handles; the rest wait for the next check.
pub const EXPIRED_PER_CHECK: usize = 250_000;

/// Liveness settings, with Octavia's names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// Seconds without a liveness refresh after which an amphora is stale (Octavia: 60).
    pub heartbeat_timeout: f64,
    /// Seconds between health checks (Octavia: 3).
    pub health_check_interval: f64,
    /// The senders' period and the processing-delay bound, seconds (Octavia: 10).
    pub heartbeat_interval: f64,
    /// Failovers running at once, and started per health check at most (Octavia: 10).
    pub failover_threads: usize,
    /// Circuit breaker: this many candidates or more → none is failed over (Octavia: unset).
    pub failover_threshold: Option<usize>,
    /// Suspend failovers while at least this fraction of the tracked fleet is stale.
    pub partition_fraction: f64,
    /// …and at least this many amphorae are stale.
    pub partition_min: usize,
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
            partition_fraction: 0.5,
            partition_min: 4,
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
            if !(v.is_finite() && v > 0.0) {
                return Err(SettingError::new(format!("liveness.{name}"), "a positive number of seconds"));
            }
        }
        if self.failover_threads == 0 {
            return Err(SettingError::new("liveness.failover_threads", "at least 1"));
        }
        if self.failover_threshold == Some(0) {
            return Err(SettingError::new("liveness.failover_threshold", "at least 1 (or absent)"));
        }
        for (name, v) in
            [("partition_fraction", self.partition_fraction), ("lag_ring_fraction", self.lag_ring_fraction)]
        {
            if !(0.0..=1.0).contains(&v) {
                return Err(SettingError::new(format!("liveness.{name}"), "a fraction in 0..=1"));
            }
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
}

/// Why automatic failovers are suspended.
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
    /// A large fraction of the fleet is silent at once: likely a network partition.
    Partition {
        /// Stale amphorae.
        stale: usize,
        /// Tracked amphorae.
        tracked: usize,
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
            SuspendReason::Partition { .. } => "partition",
        }
    }

    /// Every label, for metrics.
    pub const LABELS: [&'static str; 5] =
        ["startup_grace", "overloaded", "workers_lagging", "control_stalled", "partition"];
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

#[derive(Clone, Copy, Debug)]
struct Track {
    deadline: u64,
    last_refresh: u64,
    stale_since: Option<u64>,
    /// A failover was started (or stopped by the threshold) in this episode of silence.
    handled: bool,
}

/// A health check's outcome.
#[derive(Debug, Default, PartialEq)]
pub struct Check {
    /// Amphorae that became stale in this check, with their last refresh.
    pub newly_stale: Vec<(Uuid, u64)>,
    /// Deadlines that passed but had been refreshed (re-armed), with the new last refresh.
    pub rearmed: Vec<(Uuid, u64)>,
    /// Why failovers are suspended (empty: not suspended).
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
    started: u64,
    last_check: Option<u64>,
    overload_until: u64,
    overload_drops: u64,
    lag_until: u64,
    lag_seen: (u64, f64),
    stall_until: u64,
    stall_gap: u64,
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
            started: now,
            last_check: None,
            overload_until: 0,
            overload_drops: 0,
            lag_until: 0,
            lag_seen: (0, 0.0),
            stall_until: 0,
            stall_gap: 0,
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
    }

    /// Tracked amphorae.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// Stale amphorae.
    pub fn stale_count(&self) -> usize {
        self.stale
    }

    /// Failovers running.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The state of one amphora.
    pub fn state(&self, id: &Uuid) -> Option<(Live, u64)> {
        self.tracks.get(id).map(|t| (if t.stale_since.is_some() { Live::Stale } else { Live::Alive }, t.last_refresh))
    }

    /// Starts tracking an amphora (new, or restored from the store with `stale` as stored).
    /// An amphora restored stale stays a candidate only if it was not handled before.
    pub fn track(&mut self, id: Uuid, last_refresh: u64, stale_since: Option<u64>, handled: bool) {
        self.forget(&id);
        let deadline = last_refresh.saturating_add(self.cfg.timeout_ns());
        let t = Track { deadline, last_refresh, stale_since, handled };
        if let Some(since) = stale_since {
            self.stale += 1;
            if !handled {
                self.candidates.insert((since, id), last_refresh);
            }
        } else {
            self.deadlines.insert((deadline, id));
        }
        self.tracks.insert(id, t);
    }

    /// Stops tracking (the amphora was forgotten).
    pub fn forget(&mut self, id: &Uuid) {
        if let Some(t) = self.tracks.remove(id) {
            self.deadlines.remove(&(t.deadline, *id));
            if let Some(since) = t.stale_since {
                self.stale -= 1;
                self.candidates.remove(&(since, *id));
            }
        }
    }

    /// A stale amphora refreshed at `last_refresh`: alive again. Returns whether it was stale.
    pub fn revived(&mut self, id: Uuid, last_refresh: u64) -> bool {
        let timeout = self.cfg.timeout_ns();
        let Some(t) = self.tracks.get_mut(&id) else { return false };
        let Some(since) = t.stale_since.take() else { return false };
        self.stale -= 1;
        self.candidates.remove(&(since, id));
        t.handled = false;
        t.last_refresh = last_refresh.max(t.last_refresh);
        t.deadline = t.last_refresh.saturating_add(timeout);
        self.deadlines.insert((t.deadline, id));
        true
    }

    /// A failover of `id` was started outside the automatic rule (manual): this episode is
    /// handled.
    pub fn mark_handled(&mut self, id: &Uuid) {
        if let Some(t) = self.tracks.get_mut(id) {
            t.handled = true;
            if let Some(since) = t.stale_since {
                self.candidates.remove(&(since, *id));
            }
        }
    }

    /// A failover began running.
    pub fn failover_started(&mut self) {
        self.in_flight += 1;
    }

    /// A failover finished (done or failed).
    pub fn failover_finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
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
        let tracked = self.tracks.len();
        if self.stale >= self.cfg.partition_min.max(1)
            && self.stale as f64 >= self.cfg.partition_fraction * tracked as f64
        {
            out.push(SuspendReason::Partition { stale: self.stale, tracked });
        }
        out
    }

    /// One health check at `now`. `probe` reads an amphora's current `last_refresh` (None: no
    /// longer in the state, e.g. forgotten concurrently).
    pub fn check(&mut self, now: u64, signals: Signals, mut probe: impl FnMut(&Uuid) -> Option<u64>) -> Check {
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
            let Some(t) = self.tracks.get_mut(&id) else { continue };
            let refreshed = probe(&id).unwrap_or(t.last_refresh).max(t.last_refresh);
            t.last_refresh = refreshed;
            let due = refreshed.saturating_add(timeout);
            if due > now {
                t.deadline = due;
                self.deadlines.insert((due, id));
                out.rearmed.push((id, refreshed));
            } else {
                t.stale_since = Some(now);
                t.handled = false;
                self.stale += 1;
                self.candidates.insert((now, id), refreshed);
                out.newly_stale.push((id, refreshed));
            }
        }

        out.suspended = self.suspension(now);
        if !out.suspended.is_empty() || self.candidates.is_empty() {
            return out;
        }
        if self.cfg.failover_threshold.is_some_and(|t| self.candidates.len() >= t) {
            // Octavia's circuit breaker: stop them all, keep them candidates for when the count
            // falls below the threshold.
            out.stopped = self.candidates.iter().map(|(&(since, id), &last)| (id, last, since)).collect();
            return out;
        }
        let room = self.cfg.failover_threads.saturating_sub(self.in_flight);
        let picked: Vec<(u64, Uuid)> = self.candidates.keys().take(room).copied().collect();
        for (since, id) in picked {
            if let Some(last) = self.candidates.remove(&(since, id)) {
                if let Some(t) = self.tracks.get_mut(&id) {
                    t.handled = true;
                }
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

    /// A fleet where `refresh[id]` is the probe's answer.
    struct Fleet {
        live: Liveness,
        refresh: FxHashMap<Uuid, u64>,
    }

    impl Fleet {
        fn new(cfg: LivenessConfig, n: u8) -> Fleet {
            let mut live = Liveness::new(cfg, 0);
            let mut refresh = FxHashMap::default();
            for i in 0..n {
                live.track(id(i), 0, None, false);
                refresh.insert(id(i), 0);
            }
            Fleet { live, refresh }
        }
        fn beat(&mut self, i: u8, at: u64) {
            self.refresh.insert(id(i), at);
            if self.live.state(&id(i)).is_some_and(|s| s.0 == Live::Stale) {
                self.live.revived(id(i), at);
            }
        }
        fn check(&mut self, at: u64) -> Check {
            let r = &self.refresh;
            self.live.check(at, Signals::default(), |i| r.get(i).copied())
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
            last = l.check(t * S, if t == at { signals } else { Signals::default() }, |_| None);
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
        let r = &f.refresh;
        let c =
            f.live.check(60 * S, Signals { received: 100, drops: 50, late: 0, ring_fill: 0.0 }, |i| r.get(i).copied());
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
        let c = l.check(30 * S, Signals::default(), |_| None);
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
            let c = l.check(t * S, Signals::default(), |_| None);
            if t < 1060 {
                assert!(c.start.is_empty(), "start-up grace until 1060 s");
            }
            started.extend(c.start.iter().map(|s| s.0));
            t += 3;
        }
        assert_eq!(started, vec![id(1)], "one failover, after the grace; none for the handled one");
    }
}
