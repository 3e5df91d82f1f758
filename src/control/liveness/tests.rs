//! The liveness state machine's rules, on bare checks.

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
    /// Beats since the last check (the `accepted` signal).
    beats: u64,
}

impl Fleet {
    fn new(cfg: LivenessConfig, n: u8) -> Fleet {
        let mut live = Liveness::new(cfg, 0);
        let mut refresh = FxHashMap::default();
        for i in 0..n {
            live.track(id(i), 0, None, false);
            refresh.insert(id(i), Shard::default());
        }
        Fleet { live, refresh, beats: 0 }
    }
    fn beat(&mut self, i: u8, at: u64) {
        let s = self.refresh.entry(id(i)).or_default();
        s.last = at;
        s.beats += 1;
        self.beats += 1;
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
        let accepted = std::mem::take(&mut self.beats);
        self.check_with(at, Signals { accepted, ..Signals::default() })
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
    // Everyone beats every 3 s until 99 s; a check every 3 s.
    let (mut probed, mut checks) = (0, 0);
    for t in (0..=99).step_by(3) {
        for i in 0..200 {
            f.beat(i, t * S);
        }
        let c = f.check(t * S);
        probed += c.probed;
        checks += 1;
        assert!(c.newly_stale.is_empty());
    }
    // First deadlines at 20 s (the prior interval of 10 s, × 2), then once per learned
    // overdue_after (2 × 3 s): about (99 − 20) / 6 + 2 ≈ 15 probes each, never one per check
    // (34 checks) nor one per heartbeat.
    assert_eq!(checks, 34);
    let per = probed as f64 / 200.0;
    assert!((10.0..=18.0).contains(&per), "{per} probes per amphora");
    assert_eq!(f.live.overdue_count(), 0);
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
    let c = f.check_with(60 * S, Signals { received: 100, drops: 50, ..Signals::default() });
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
