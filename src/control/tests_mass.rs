//! Failover safety under mass staleness (issue 18) on the [`ControlRig`]: a fleet going quiet
//! at once, a share of it dying, zones, the rate limiter, cancellation on return.

use super::failover::FailoverState;
use super::liveness::SuspendReason;
use super::rig::{amphora, ControlRig, S};
use super::{Command, ControlConfig, FleetCommand};

const T0: u64 = 1_000 * S;
/// Beats every 2 s, stale after 10 s, checks every 1 s (Octavia's 10/60/3 scaled down).
const INTERVAL: u64 = 2 * S;
const TIMEOUT: u64 = 10 * S;

fn cfg() -> ControlConfig {
    let mut c = super::tests::cfg();
    c.liveness.heartbeat_timeout = 10.0;
    c
}

/// A fleet of `n` amphorae beating every 2 s, spread over `phases` phases of the interval.
struct Mass {
    r: ControlRig,
    n: u64,
    phases: u64,
    tick: u64,
    /// Each amphora's latest beat, ns.
    last: Vec<u64>,
}

impl Mass {
    fn new(n: u64, phases: u64) -> Mass {
        Mass { r: ControlRig::with(cfg(), T0, None), n, phases, tick: 0, last: vec![0; n as usize] }
    }

    /// Runs for `secs`, the amphorae for which `alive` holds beating in their phase; `each`
    /// after every step.
    fn run(&mut self, secs: u64, alive: impl Fn(u64) -> bool, mut each: impl FnMut(&mut ControlRig)) {
        let step = INTERVAL / self.phases;
        let end = self.r.now() + secs * S;
        while self.r.now() < end {
            let phase = self.tick % self.phases;
            let now = self.r.now();
            let ids: Vec<u64> = (phase..self.n).step_by(self.phases as usize).filter(|i| alive(*i)).collect();
            for i in &ids {
                self.last[*i as usize] = now;
            }
            for chunk in ids.chunks(4096) {
                self.r.beat(chunk.iter().copied());
            }
            self.tick += 1;
            self.r.advance(step);
            each(&mut self.r);
        }
    }

    /// Runs for `secs` with no beat at all, one step per health check; `each` after every step.
    fn quiet(&mut self, secs: u64, mut each: impl FnMut(&mut ControlRig)) {
        for _ in 0..secs {
            self.tick += self.phases * S / INTERVAL;
            self.r.advance(S);
            each(&mut self.r);
        }
    }

    fn labels(&self) -> Vec<&'static str> {
        self.r.snapshot().suspended.iter().map(SuspendReason::label).collect()
    }

    fn records(&self) -> usize {
        self.r.snapshot().failover_counts.iter().sum::<u64>() as usize
    }

    /// A fleet of `n` in `zones` (ranges of ids), beating for 12 s.
    fn zoned(n: u64, zones: &[(std::ops::Range<u64>, &str)]) -> Mass {
        let mut m = Mass::new(n, 4);
        m.run(4, |_| true, |_| {});
        for (ids, zone) in zones {
            for i in ids.clone() {
                let cmd = Command::Fleet(FleetCommand::Configure {
                    id: amphora(i),
                    expected_listeners: None,
                    load_balancer: None,
                    zone: Some(Some((*zone).to_owned())),
                });
                m.r.execute(cmd).expect("configure");
            }
        }
        m.run(8, |_| true, |_| {});
        m
    }
}

/// The whole fleet goes quiet within one interval (the sink's switch fails) and comes back.
/// Coarse for large fleets: every beat goes through the real pipeline.
fn whole_fleet_quiet(n: u64, phases: u64, coarse: bool) {
    let mut m = Mass::new(n, phases);
    m.run(if coarse { 2 } else { 4 }, |_| true, |_| {});
    assert_eq!(m.r.snapshot().amphorae.len(), n as usize);
    assert!(m.labels().is_empty(), "{:?}", m.labels());
    // Quiet for two timeouts: every amphora goes stale, none is failed over, and the sink
    // reads as blind no later than the first one goes stale.
    let mut blind_first = true;
    m.quiet(20, |r| {
        let snap = r.snapshot();
        if !snap.down.is_empty() && !snap.suspended.iter().any(|s| s.label() == "sink_blind") {
            blind_first = false;
        }
    });
    assert!(blind_first, "an amphora went stale before the sink read as blind");
    let snap = m.r.snapshot();
    assert_eq!(snap.down.len(), n as usize, "stale is still reported");
    assert!(m.labels().contains(&"sink_blind"), "{:?}", snap.suspended);
    assert!(m.r.started().is_empty(), "{n}: failed over while blind: {}", m.r.started().len());
    assert_eq!(m.records(), 0);
    // Back: every amphora beats again within an interval; nothing is failed over on the way,
    // and the suspension lasts heartbeat_timeout + one check after the sink hears again.
    m.run(if coarse { 2 } else { 6 }, |_| true, |_| {});
    let snap = m.r.snapshot();
    assert!(snap.down.is_empty());
    if !coarse {
        assert_eq!(m.labels(), vec!["sink_blind"], "still suspended for a full timeout");
        m.run((TIMEOUT / S) + 1, |_| true, |_| {});
        let snap = m.r.snapshot();
        assert!(snap.suspended.is_empty(), "{:?}", snap.suspended);
    }
    assert!(m.r.started().is_empty(), "{n}: failed over on return: {}", m.r.started().len());
    assert_eq!(m.records(), 0);
}

#[test]
fn a_fleet_of_100_going_quiet_starts_no_failover() {
    whole_fleet_quiet(100, 20, false);
}

#[test]
fn a_fleet_of_1000_going_quiet_starts_no_failover() {
    whole_fleet_quiet(1000, 8, false);
}

#[test]
fn a_fleet_of_20000_going_quiet_starts_no_failover() {
    whole_fleet_quiet(20_000, 4, true);
}

/// Checks each failover of `dead` started once, on time: stale within `heartbeat_timeout` plus
/// one check of the last beat, started within `slack` of going stale.
fn on_time(m: &Mass, dead: &[u64], slack: u64) {
    let started = m.r.started();
    let mut ids: Vec<_> = started.iter().map(|s| s.amphora).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), started.len(), "each once");
    assert_eq!(ids.len(), dead.len(), "{started:?}");
    for s in &started {
        let i = dead.iter().copied().find(|d| amphora(*d) == s.amphora).expect("a dead one");
        assert!(s.stale_since_ns <= m.last[i as usize] + TIMEOUT + S, "{s:?}");
        assert!(s.created_ns <= s.stale_since_ns + slack, "{s:?}");
    }
}

#[test]
fn a_quarter_of_the_fleet_dying_is_failed_over_on_time_each_once() {
    let mut m = Mass::new(40, 4);
    m.run(12, |_| true, |_| {});
    let dead: Vec<u64> = (0..10).collect();
    m.run(20, |i| i >= 10, |r| r.finish_failovers(true));
    on_time(&m, &dead, S);
    assert!(m.labels().is_empty(), "{:?}", m.labels());
}

#[test]
fn one_dead_amphora_is_failed_over_within_timeout_plus_one_check() {
    let mut m = Mass::new(100, 20);
    m.run(12, |_| true, |_| {});
    m.run(14, |i| i != 37, |_| {});
    // Found stale by the round its deadline passed in, started by the next check.
    on_time(&m, &[37], S);
    let s = &m.r.started()[0];
    assert!(s.created_ns <= m.last[37] + TIMEOUT + S, "{s:?}");
}

#[test]
fn sixty_percent_dying_goes_at_the_secondary_rate() {
    let mut m = Mass::new(100, 4);
    m.run(12, |_| true, |_| {});
    let quiet_from = m.r.now();
    m.run(50, |i| i >= 60, |r| r.finish_failovers(true));
    let snap = m.r.snapshot();
    assert_eq!(snap.down.len(), 60);
    assert!(m.labels().contains(&"secondary_rate"), "{:?}", snap.suspended);
    assert!(!m.labels().contains(&"sink_blind"));
    let started = m.r.started();
    // Stale from about 10 s on: one at once, then one per 10 s (0.1/s) over the ~40 s left.
    assert!((3..=6).contains(&started.len()), "{}: {started:?}", started.len());
    let first = started.iter().map(|s| s.created_ns).min().unwrap_or(0);
    assert!(first >= quiet_from + 8 * S, "not before stale");
    assert_eq!(started.iter().filter(|s| s.created_ns < first + 5 * S).count(), 1, "burst of 1");
}

#[test]
fn a_dark_zone_fails_over_at_the_normal_rate_and_changes_nothing_elsewhere() {
    let mut m = Mass::zoned(110, &[(0..20, "rack-a"), (20..60, "rack-b"), (60..100, "rack-c"), (100..110, "rack-d")]);
    // rack-a dark; one of rack-b dies; six of the ten of rack-d (a small zone: held).
    let dead = |i: u64| i < 20 || i == 33 || (100..106).contains(&i);
    m.run(20, |i| !dead(i), |r| r.finish_failovers(true));
    let mut expect: Vec<u64> = (0..20).collect();
    expect.push(33);
    // Twenty-one at the normal rate (burst of failover_threads, then 10/s): within 3 checks.
    on_time(&m, &expect, 3 * S);
    let snap = m.r.snapshot();
    let partition: Vec<_> = snap.suspended.iter().filter(|s| s.label() == "partition").collect();
    assert_eq!(partition.len(), 1, "{:?}", snap.suspended);
    assert_eq!(partition[0].group(), Some("zone:rack-d"));
    assert!(snap.suspended.iter().all(|s| s.group().is_some()), "nothing global: {:?}", snap.suspended);
    assert_eq!(snap.amphorae[&amphora(0)].zone.as_deref(), Some("rack-a"));
}

#[test]
fn every_zone_dark_is_a_blind_sink() {
    let mut m = Mass::zoned(60, &[(0..30, "rack-a"), (30..60, "rack-b")]);
    m.run(20, |_| false, |_| {});
    assert!(m.labels().contains(&"sink_blind"));
    assert!(m.r.started().is_empty());
}

#[test]
fn an_amphora_heard_again_cancels_its_pending_failover() {
    let mut m = Mass::new(6, 2);
    m.run(12, |_| true, |_| {});
    m.run(14, |i| i != 5, |_| {});
    assert_eq!(m.r.started().len(), 1, "in progress when heartsink stops");
    m.r.advance(S);
    // Restarted: the record is pending again, and the amphora is heard before it runs.
    let mut again = ControlRig::with(cfg(), m.r.now(), Some(&m.r.store));
    again.carry_seq(&m.r);
    again.beat(0..6);
    again.advance(S);
    again.advance(S);
    assert!(again.started().is_empty(), "{:?}", again.started());
    let rec = again.control.fleet.records().next().expect("the record").clone();
    assert_eq!(rec.state, FailoverState::Cancelled);
    let cancelled = FailoverState::ALL.iter().position(|s| *s == FailoverState::Cancelled).unwrap_or(0);
    assert_eq!(again.snapshot().failover_counts[cancelled], 1);
}

#[test]
fn a_stopped_failover_whose_amphora_returns_is_cancelled() {
    let mut c = cfg();
    c.liveness.failover_threshold = Some(5);
    let mut m = Mass { r: ControlRig::with(c, T0, None), n: 40, phases: 4, tick: 0, last: vec![0; 40] };
    m.run(12, |_| true, |_| {});
    // Eight of one phase die at once: the breaker (5) stops them all.
    let dead = |i: u64| i.is_multiple_of(4) && i < 32;
    m.run(14, |i| !dead(i), |_| {});
    assert_eq!(m.r.snapshot().failover_counts[4], 8, "eight stopped");
    // Four come back: theirs are cancelled; the other four fail over.
    let still = |i: u64| dead(i) && i >= 16;
    m.run(6, |i| !still(i), |_| {});
    let counts = m.r.snapshot().failover_counts;
    assert_eq!((counts[1], counts[5]), (4, 4), "{counts:?}");
    assert!(m.r.started().iter().all(|s| (16..32).step_by(4).any(|d| amphora(d) == s.amphora)));
}

#[test]
fn a_zone_is_stored_and_restored() {
    let mut m = Mass::zoned(10, &[(0..5, "rack-a")]);
    m.r.advance(2 * S);
    let again = ControlRig::with(cfg(), m.r.now(), Some(&m.r.store));
    let snap = again.snapshot();
    assert_eq!(snap.amphorae[&amphora(0)].zone.as_deref(), Some("rack-a"));
    assert_eq!(snap.amphorae[&amphora(7)].zone, None);
}

/// Amphora rows the store received so far.
fn amphora_writes(r: &ControlRig) -> usize {
    r.store.ops(crate::store::Table::Amphorae)
}

/// Store writes of amphora rows over 60 s of a steady fleet of `n`, sweeping `sweep` rows/s.
fn steady_writes(n: u64, sweep: f64) -> usize {
    let mut c = cfg();
    c.lifecycle.amphora_sweep_rate = sweep;
    let mut m = Mass { r: ControlRig::with(c, T0, None), n, phases: 4, tick: 0, last: vec![0; n as usize] };
    // Fill, and let the first writes (new amphorae) and the learning settle.
    m.run(30, |_| true, |_| {});
    let before = amphora_writes(&m.r);
    m.run(60, |_| true, |_| {});
    assert_eq!(m.r.snapshot().failover_counts.iter().sum::<u64>(), 0);
    amphora_writes(&m.r) - before
}

#[test]
fn a_steady_fleet_writes_no_amphora_row_without_the_sweep() {
    assert_eq!(steady_writes(1_000, 0.0), 0);
    assert_eq!(steady_writes(4_000, 0.0), 0);
}

#[test]
fn the_sweep_writes_at_its_rate_whatever_the_fleet_size() {
    let (small, large) = (steady_writes(1_000, 100.0), steady_writes(4_000, 100.0));
    // 100 rows a second for 60 s, give or take a flush.
    for w in [small, large] {
        assert!((5_800..=6_200).contains(&w), "{w} rows in 60 s");
    }
}

#[test]
fn a_restored_amphora_is_heard_as_late_as_the_sinks_last_report() {
    let mut c = cfg();
    c.lifecycle.amphora_sweep_rate = 0.0;
    c.lifecycle.report_interval = 5.0;
    let mut m = Mass { r: ControlRig::with(c.clone(), T0, None), n: 10, phases: 1, tick: 0, last: vec![0; 10] };
    m.run(120, |_| true, |_| {});
    let again = ControlRig::with(c, m.r.now(), Some(&m.r.store));
    let restored = again.state(3).map(|s| s.last_refresh_ns).unwrap_or(0);
    // Stored at its first beat (T0), refreshed since; the last report was at most 5 s ago, so
    // its refresh is restored as at least that report minus heartbeat_timeout.
    assert!(restored >= m.r.now() - 5 * S - TIMEOUT, "{}", (m.r.now() - restored) as f64 / 1e9);
    assert!(restored <= m.r.now());
}

/// The fleet beats every 1.6 s though the sink is told 1 s, with `heartbeat_timeout` 4 s and
/// checks every 0.5 s: learned intervals near 1.6 s make amphorae overdue only 3.2 s after
/// their last beat, so when the fleet goes dark the first is stale before 90 % are overdue.
/// The rate rule (the sink hears almost nothing of what its fleet sends) reads the sink as
/// blind within an interval, before any amphora can be stale: no failover, going dark or
/// coming back.
#[test]
fn a_fleet_slower_than_configured_going_dark_is_seen_blind_by_its_rate() {
    let mut c = super::tests::cfg();
    c.liveness.heartbeat_interval = 1.0;
    c.liveness.heartbeat_timeout = 4.0;
    c.liveness.health_check_interval = 0.5;
    let mut r = ControlRig::with(c, T0, None);
    let n = 2_000u64;
    let step = S / 10;
    let every = 16; // steps: 1.6 s
    let mut tick = 0u64;
    let beat = |r: &mut ControlRig, tick: u64| {
        let ids: Vec<u64> = (0..n).filter(|i| i % every == tick % every).collect();
        r.beat(ids);
    };
    for _ in 0..200 {
        beat(&mut r, tick);
        tick += 1;
        r.advance(step);
    }
    assert!(r.snapshot().suspended.is_empty(), "{:?}", r.snapshot().suspended);
    // Dark for 10 s.
    let mut blind_first = true;
    for _ in 0..100 {
        r.advance(step);
        let snap = r.snapshot();
        if !snap.down.is_empty() && !snap.suspended.iter().any(|s| s.label() == "sink_blind") {
            blind_first = false;
        }
    }
    assert!(blind_first, "an amphora went stale before the sink read as blind");
    assert_eq!(r.snapshot().down.len(), n as usize);
    // Back for 10 s: everything revives, nothing is failed over.
    for _ in 0..100 {
        beat(&mut r, tick);
        tick += 1;
        r.advance(step);
    }
    assert!(r.snapshot().down.is_empty());
    assert!(r.started().is_empty(), "failed over: {}", r.started().len());
    assert_eq!(r.snapshot().failover_counts.iter().sum::<u64>(), 0);
}

/// A fleet beating every 8 s though the sink is told 1 s (timeout 30 s): the rate rule judges
/// by learned intervals, so the sink does not read as blind, and one amphora that dies is
/// failed over on time.
#[test]
fn a_fleet_slower_than_configured_is_not_blind_and_its_dead_are_failed_over() {
    let mut c = super::tests::cfg();
    c.liveness.heartbeat_interval = 1.0;
    c.liveness.heartbeat_timeout = 30.0;
    c.liveness.health_check_interval = 1.0;
    let mut r = ControlRig::with(c, T0, None);
    let n = 400u64;
    let every = 8u64; // steps of 1 s
    let mut last_beat_of_7 = 0;
    for tick in 0..120u64 {
        let dead = tick >= 60;
        let ids: Vec<u64> = (0..n).filter(|i| i % every == tick % every && !(dead && *i == 7)).collect();
        if ids.contains(&7) {
            last_beat_of_7 = r.now();
        }
        r.beat(ids);
        r.advance(S);
        if tick >= 30 {
            let labels: Vec<&str> = r.snapshot().suspended.iter().map(|s| s.label()).collect();
            assert!(labels.is_empty(), "at {tick} s: {labels:?}");
        }
    }
    let started = r.started();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].amphora, amphora(7));
    assert!(started[0].created_ns <= last_beat_of_7 + 31 * S, "{:?}", started[0]);
}

/// After an unclean restart, rows older than the sink's last report (written only on
/// transitions) do not make the fleet stale before it could beat: every amphora not stale is
/// treated as heard at the restore's end, and gets a full interval and timeout from there.
#[test]
fn a_restart_from_old_rows_declares_nothing_stale_before_the_fleet_can_beat() {
    let mut c = cfg();
    c.lifecycle.amphora_sweep_rate = 0.0;
    c.lifecycle.report_interval = 5.0;
    let mut m = Mass { r: ControlRig::with(c.clone(), T0, None), n: 50, phases: 1, tick: 0, last: vec![0; 50] };
    m.run(120, |_| true, |_| {});
    // Restarted 2 s later (kill -9: no final write); nobody beats for 3 s.
    let mut again = ControlRig::with(c, m.r.now() + 2 * S, Some(&m.r.store));
    for _ in 0..3 {
        again.advance(S);
    }
    let snap = again.snapshot();
    assert_eq!(snap.amphorae.len(), 50);
    assert!(snap.down.is_empty(), "{} stale right after the restart", snap.down.len());
    // Still silent a full timeout later: now they are stale (and the grace holds failovers).
    again.run_for(TIMEOUT, S, |_| {});
    assert_eq!(again.snapshot().down.len(), 50);
}
