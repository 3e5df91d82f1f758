//! The control plane's rules on the [`ControlRig`]: deterministic, on a manual clock, with no
//! thread, socket or store.

use super::failover::{FailoverReason, FailoverState};
use super::liveness::{Live, LivenessConfig};
use super::rig::{amphora, ControlRig, S};
use super::services::{PushAction, ServiceEntry};
use super::volumes::VolumeCreate;
use super::{Command, CommandError, ControlConfig, FleetCommand, RegistryCommand, Reply, VolumeCommand};
use crate::engine::counters::bump;

const T0: u64 = 1_000 * S;

/// Octavia's timing scaled down: timeout 6 s, checks every 1 s, beats every 2 s, no grace.
pub(super) fn cfg() -> ControlConfig {
    ControlConfig {
        liveness: LivenessConfig {
            heartbeat_timeout: 6.0,
            health_check_interval: 1.0,
            heartbeat_interval: 2.0,
            startup_grace: Some(0.0),
            ..LivenessConfig::default()
        },
        ..ControlConfig::default()
    }
}

fn rig() -> ControlRig {
    ControlRig::with(cfg(), T0, None)
}

/// Amphorae `0..n` beat every 2 s for `secs` seconds, except those in `dead`.
fn run(r: &mut ControlRig, n: u64, dead: &[u64], secs: u64) {
    let mut tick = 0u64;
    r.run_for(secs * S, S / 2, |r| {
        if tick.is_multiple_of(4) {
            r.beat((0..n).filter(|i| !dead.contains(i)));
        }
        tick += 1;
    });
}

#[test]
fn new_amphorae_are_published_alive_with_their_first_status() {
    let mut r = rig();
    r.beat(0..3);
    r.advance(S);
    let snap = r.snapshot();
    assert_eq!(snap.amphorae.len(), 3);
    assert!(snap.amphorae.values().all(|h| h.liveness == Live::Alive));
    assert!(snap.down.is_empty());
    assert!(r.started().is_empty());
}

#[test]
fn a_status_change_in_the_round_that_adds_an_amphora_is_kept() {
    use crate::engine::Change;
    use crate::state::OperatingStatus;
    let mut r = rig();
    let id = amphora(7);
    // The first heartbeat (ONLINE) and a later one of the same batch (ERROR): the new amphora
    // is inserted after the loop over the batch, the status change must still land on it.
    r.control.apply_changes(std::iter::once(vec![
        Change::New { id, status: OperatingStatus::Online },
        Change::Status { id, from: OperatingStatus::Online, to: OperatingStatus::Error },
    ]));
    r.advance(S);
    let snap = r.snapshot();
    assert_eq!(snap.amphorae.get(&id).map(|h| h.operating_status), Some(OperatingStatus::Error));
    assert!(snap.sick.contains(&id), "counted alive and not ONLINE");
}

#[test]
fn one_dead_amphora_is_failed_over_once_within_timeout_plus_one_check() {
    let mut r = rig();
    run(&mut r, 10, &[], 10);
    let last_beat = r.now() - 2 * S;
    run(&mut r, 10, &[3], 20);
    let started = r.started();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].amphora, amphora(3));
    assert_eq!(started[0].reason, FailoverReason::Stale);
    // Declared stale within timeout + one check of its last refresh.
    assert!(started[0].stale_since_ns <= last_beat + 8 * S + S, "{started:?}");
    assert_eq!(r.snapshot().down.len(), 1);
    r.finish_failovers(true);
    r.advance(S);
    let rec = r.control.fleet.record(started[0].id).expect("record").clone();
    assert_eq!(rec.state, FailoverState::Done);
    assert_eq!(r.snapshot().failover_counts[2], 1, "one done");
}

#[test]
fn a_quarter_of_the_fleet_dying_is_failed_over_at_most_failover_threads_at_a_time() {
    let mut c = cfg();
    c.liveness.failover_threads = 3;
    let mut r = ControlRig::with(c, T0, None);
    run(&mut r, 40, &[], 10);
    let dead: Vec<u64> = (0..10).collect();
    run(&mut r, 40, &dead, 10);
    assert_eq!(r.started().len(), 3, "only failover_threads run at once");
    for _ in 0..4 {
        r.finish_failovers(true);
        run(&mut r, 40, &dead, 2);
    }
    let mut ids: Vec<_> = r.started().iter().map(|s| s.amphora).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each dead amphora exactly once");
    assert!(ids.iter().all(|id| dead.iter().any(|d| amphora(*d) == *id)));
}

#[test]
fn the_failover_threshold_stops_failovers_and_records_them_stopped() {
    let mut c = cfg();
    c.liveness.failover_threshold = Some(5);
    c.liveness.partition_min = 1000;
    let mut r = ControlRig::with(c, T0, None);
    run(&mut r, 40, &[], 10);
    let dead: Vec<u64> = (0..8).collect();
    run(&mut r, 40, &dead, 12);
    assert!(r.started().is_empty(), "the circuit breaker holds every failover");
    assert_eq!(r.snapshot().failover_counts[4], 8, "eight stopped records");
    // Four come back: below the threshold, the remaining four are failed over.
    let still: Vec<u64> = (4..8).collect();
    run(&mut r, 40, &still, 6);
    let started = r.started();
    assert_eq!(started.len(), 4, "{started:?}");
    assert!(started.iter().all(|s| still.iter().any(|d| amphora(*d) == s.amphora)));
}

#[test]
fn startup_grace_suspends_failovers() {
    let mut c = cfg();
    c.liveness.startup_grace = Some(30.0);
    let mut r = ControlRig::with(c, T0, None);
    run(&mut r, 10, &[], 4);
    run(&mut r, 10, &[1], 15);
    let snap = r.snapshot();
    assert_eq!(snap.suspended.first().map(|s| s.label()), Some("startup_grace"));
    assert!(snap.down.contains(&amphora(1)), "stale is still reported");
    assert!(r.started().is_empty());
    run(&mut r, 10, &[1], 15);
    assert_eq!(r.started().len(), 1, "failed over once the grace is over");
}

#[test]
fn own_drops_suspend_failovers_as_overloaded() {
    let mut r = rig();
    run(&mut r, 10, &[], 10);
    // The kernel keeps dropping datagrams on the heartbeat socket: silence may be our own.
    let mut kernel_drops = 0;
    let mut tick = 0u64;
    r.run_for(12 * S, S / 2, |r| {
        bump(&r.engine.rx[0].packets, 100);
        kernel_drops += 50;
        r.engine.rx[0].kernel_drops.store(kernel_drops, std::sync::atomic::Ordering::Relaxed);
        if tick.is_multiple_of(4) {
            r.beat((0..10).filter(|i| *i != 4));
        }
        tick += 1;
    });
    assert!(r.snapshot().suspended.iter().any(|s| s.label() == "overloaded"));
    assert!(r.snapshot().down.contains(&amphora(4)), "stale is still reported");
    assert!(r.started().is_empty(), "no failover while overloaded");
    // The drops stop: the suspension lifts after heartbeat_interval and the amphora, still
    // silent, is failed over.
    run(&mut r, 10, &[4], 4);
    assert_eq!(r.started().len(), 1);
}

#[test]
fn half_the_fleet_silent_is_a_partition() {
    let mut r = rig();
    run(&mut r, 10, &[], 10);
    let dead: Vec<u64> = (0..6).collect();
    run(&mut r, 10, &dead, 15);
    assert!(r.snapshot().suspended.iter().any(|s| s.label() == "partition"));
}

#[test]
fn an_amphora_beating_again_is_alive_and_not_failed_over_twice() {
    let mut r = rig();
    run(&mut r, 4, &[], 10);
    run(&mut r, 4, &[2], 10);
    assert_eq!(r.started().len(), 1);
    r.finish_failovers(true);
    run(&mut r, 4, &[], 10);
    let snap = r.snapshot();
    assert_eq!(snap.amphorae[&amphora(2)].liveness, Live::Alive);
    assert!(snap.down.is_empty());
    assert_eq!(r.started().len(), 1);
}

#[test]
fn the_census_and_the_transitions_log_follow_a_death_a_revival_and_a_forget() {
    use super::census::Moved;
    let mut r = rig();
    run(&mut r, 4, &[], 10);
    let snap = r.snapshot();
    assert_eq!(snap.census[0], [4, 0], "four ONLINE and alive");
    assert_eq!(snap.unhealthy_count(), 0);
    run(&mut r, 4, &[2], 10);
    let snap = r.snapshot();
    assert_eq!(snap.census[0], [3, 1]);
    assert_eq!(snap.down.iter().copied().collect::<Vec<_>>(), vec![amphora(2)]);
    assert!(snap.sick.is_empty(), "stale, not sick");
    assert_eq!(snap.unhealthy_count(), 1);
    run(&mut r, 4, &[], 4);
    let snap = r.snapshot();
    assert_eq!(snap.census[0], [4, 0]);
    assert_eq!(snap.unhealthy_count(), 0);
    let log = r.published.transitions.lock().of(&amphora(2));
    let moves: Vec<Moved> = log.iter().map(|t| t.moved).collect();
    assert_eq!(moves, [Moved::Liveness(Live::Stale, Live::Alive), Moved::Liveness(Live::Alive, Live::Stale)]);
    assert!(log[0].at_ns > log[1].at_ns, "newest first");
    assert!(r.published.transitions.lock().of(&amphora(1)).is_empty());
    r.execute(Command::Fleet(FleetCommand::Forget(amphora(3)))).expect("forget");
    assert_eq!(r.snapshot().census[0], [3, 0]);
}

#[test]
fn commands_answer_typed_replies_and_errors() {
    let mut r = rig();
    r.beat([1]);
    r.advance(S);
    match r.execute(Command::Fleet(FleetCommand::Failover(amphora(1)))) {
        Ok(Reply::Failover(rec)) => assert_eq!(rec.reason, FailoverReason::Manual),
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.execute(Command::Fleet(FleetCommand::Failover(amphora(1)))), Err(CommandError::Conflict(_))));
    assert!(matches!(r.execute(Command::Fleet(FleetCommand::Failover(amphora(9)))), Err(CommandError::NotFound(_))));
    let lb = amphora(100);
    let reply = r
        .execute(Command::Fleet(FleetCommand::Configure {
            id: amphora(1),
            expected_listeners: Some(Some(2)),
            load_balancer: Some(Some(lb)),
            zone: None,
        }))
        .expect("configure");
    assert!(matches!(reply, Reply::Amphora(ref h) if h.load_balancer == Some(lb)));
    assert_eq!(r.state(1).and_then(|s| s.expected_listeners), Some(2));
    assert!(r.snapshot().load_balancers[&lb].contains(&amphora(1)));
    assert!(matches!(r.execute(Command::Fleet(FleetCommand::Forget(amphora(1)))), Ok(Reply::Forgotten { .. })));
    assert!(r.state(1).is_none(), "forgotten from the shards too");
    assert!(r.snapshot().load_balancers.get(&lb).is_none());
}

fn machine(name: &str, addr: &str, free: u64) -> ServiceEntry {
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("tag.service_id".to_owned(), crate::registry::TagValue::Str(name.into()));
    tags.insert("stat.free_bytes".to_owned(), crate::registry::TagValue::Int(free as i64));
    ServiceEntry { ns: None, type_name: "machine".into(), addr: addr.into(), score: None, tags, mtime: None }
}

#[test]
fn registry_changes_reach_the_published_world_on_refresh() {
    let mut r = rig();
    let before = r.snapshot().world.clone();
    let push = Command::Registry(RegistryCommand::Push {
        action: PushAction::Register,
        entries: vec![machine("m1", "127.0.0.1:7000", 10)],
    });
    assert!(matches!(r.execute(push), Ok(Reply::Services { ref services }) if services.len() == 1));
    assert_eq!(r.snapshot().services, 1);
    r.advance(2 * S);
    assert!(!std::sync::Arc::ptr_eq(&before, &r.snapshot().world), "the world was rebuilt");
    assert!(matches!(
        r.execute(Command::Registry(RegistryCommand::Push {
            action: PushAction::Register,
            entries: vec![ServiceEntry { type_name: "nope".into(), ..machine("x", "127.0.0.1:1", 0) }]
        })),
        Err(CommandError::Invalid(_))
    ));
}

#[test]
fn volumes_are_placed_on_live_machines_and_healed_when_they_die() {
    let mut r = rig();
    let m = |r: &mut ControlRig, name: &str, addr: &str| {
        let push = Command::Registry(RegistryCommand::Push {
            action: PushAction::Register,
            entries: vec![machine(name, addr, 1 << 40)],
        });
        r.execute(push).expect("register");
    };
    m(&mut r, "m1", "127.0.0.1:7001");
    let v = match r.execute(Command::Volumes(VolumeCommand::Create(VolumeCreate {
        name: "v".into(),
        size: 1 << 30,
        constraints: vec![],
        clone_of: None,
    }))) {
        Ok(Reply::Volume(v)) => v.id,
        other => panic!("{other:?}"),
    };
    r.advance(2 * S);
    let node = |r: &mut ControlRig| match r.execute(Command::Volumes(VolumeCommand::Get(v))) {
        Ok(Reply::Volume(v)) => v.node.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(node(&mut r).as_deref(), Some("m1"));
    assert!(r.snapshot().leader);
    // m1 stops beating, m2 is alive: after heartbeat_timeout the volume moves.
    r.run_for(12 * S, S, |r| m(r, "m2", "127.0.0.1:7002"));
    assert_eq!(node(&mut r).as_deref(), Some("m2"));
}

#[test]
fn restore_brings_back_amphorae_and_reruns_unfinished_failovers() {
    let mut r = rig();
    run(&mut r, 6, &[], 10);
    run(&mut r, 6, &[5], 10);
    assert_eq!(r.started().len(), 1, "in progress, not finished");
    r.execute(Command::Fleet(FleetCommand::Configure {
        id: amphora(1),
        expected_listeners: None,
        load_balancer: Some(Some(amphora(50))),
        zone: None,
    }))
    .expect("configure");
    r.advance(2 * S);
    let stored = r.store.clone();
    let before = r.snapshot();
    let mut again = ControlRig::with(cfg(), r.now(), Some(&stored));
    let snap = again.snapshot();
    assert_eq!(snap.amphorae.len(), 6);
    assert_eq!(snap.amphorae[&amphora(5)].liveness, Live::Stale);
    assert_eq!(snap.amphorae[&amphora(1)].load_balancer, Some(amphora(50)));
    assert_eq!((snap.census[0], snap.unhealthy_count()), ([5, 1], 1), "the census is restored too");
    // A beating amphora's counts reach the store by the sweep (100 rows a second: all 6 each flush).
    assert!(before.amphorae.contains_key(&amphora(0)));
    let (restored, live) = (again.state(0).and_then(|s| s.seq), r.state(0).and_then(|s| s.seq));
    assert!(restored.zip(live).is_some_and(|(a, b)| a <= b && a + 3 >= b), "{restored:?} {live:?}");
    // The failover that was in progress runs again, once.
    again.advance(S);
    let started = again.started();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].amphora, amphora(5));
}

#[test]
fn a_machine_beating_every_second_with_a_1_5_s_timeout_never_dies() {
    let mut c = cfg();
    c.liveness.heartbeat_timeout = 1.5;
    let mut r = ControlRig::with(c, T0 + 300_000_000, None);
    let beat = |r: &mut ControlRig| {
        let push = Command::Registry(RegistryCommand::Push {
            action: PushAction::Register,
            entries: vec![machine("m1", "127.0.0.1:7001", 1 << 40)],
        });
        r.execute(push).expect("register");
    };
    beat(&mut r);
    for _ in 0..40 {
        r.advance(S / 4);
        let now = r.now();
        let alive = r.control.services.machines("machine", 1.5, now).iter().all(|m| m.alive);
        assert!(alive, "alive at {now}");
        if (now - T0) % S == 300_000_000 {
            beat(&mut r);
        }
    }
    // Silent 1.5 s + 1 µs: dead.
    let now = r.now();
    let last = now - (now - T0 - 300_000_000) % S;
    let m = r.control.services.machines("machine", 1.5, last + 1_500_001_000);
    assert!(!m.is_empty() && m.iter().all(|m| !m.alive), "{m:?}");
}

/// A store that cannot write: the admin write is not answered, the snapshot says the store is
/// unhealthy; once it writes again the answer comes, the write is stored, the snapshot is
/// healthy again.
#[test]
fn failing_store_holds_admin_answers_and_is_published() {
    let mut r = rig();
    r.beat([1]);
    r.advance(S);
    assert!(r.snapshot().store.as_ref().is_some_and(|s| s.healthy));
    r.store.set_failing(true);
    let (reply, answers) = crossbeam::channel::bounded(1);
    let command = Command::Fleet(FleetCommand::Configure {
        id: amphora(1),
        expected_listeners: Some(Some(3)),
        load_balancer: None,
        zone: None,
    });
    r.control.command(super::Call { command, reply });
    r.advance(S);
    assert!(answers.try_recv().is_err(), "not answered while the store cannot write");
    let st = r.snapshot().store.clone().expect("store status");
    assert!(!st.healthy && st.error.is_some() && st.pending > 0, "{st:?}");
    r.store.set_failing(false);
    assert!(answers.try_recv().expect("answered once durable").is_ok());
    r.advance(S);
    assert!(r.snapshot().store.as_ref().is_some_and(|s| s.healthy && s.error.is_none()));
    let restored = ControlRig::with(cfg(), r.now(), Some(&r.store));
    let listeners = restored.snapshot().amphorae.get(&amphora(1)).and_then(|h| h.expected_listeners);
    assert_eq!(listeners, Some(3), "the held write was stored");
}

#[test]
fn figures_are_republished_within_a_second_in_a_steady_fleet() {
    let mut r = rig();
    r.beat(0..3);
    r.advance(S);
    let before = r.snapshot();
    bump(&r.engine.rx[0].packets, 7);
    r.advance(S / 2);
    r.advance(S / 2 + 1);
    let after = r.snapshot();
    assert_eq!(after.generation, before.generation, "no change of state, no new generation");
    assert_eq!(after.totals.received, before.totals.received + 7, "the counters are current");
    assert!(after.taken_ns > before.taken_ns);
}

/// One control loop round at the rig's clock, publishing as the loop does.
fn round(r: &mut ControlRig, ns: u64) {
    r.clock.advance(ns);
    r.control.run_due();
    r.control.publish_round();
}

#[test]
fn a_fill_of_new_amphorae_is_published_held_back_and_counted_at_once() {
    let mut r = rig();
    r.beat(0..10);
    r.advance(S);
    assert_eq!(r.snapshot().amphorae.len(), 10);
    // More than HOLD_FEW new amphorae: held up to HOLD_MANY_NS, counted in `tracked` at once.
    let many = super::HOLD_FEW as u64 + 100;
    r.beat(10..10 + many);
    round(&mut r, super::HOLD_MANY_NS / 20);
    let s = r.snapshot();
    assert_eq!(s.amphorae.len(), 10, "the bulk of new amphorae waits");
    assert_eq!(s.tracked, 10 + many as usize, "the count does not wait");
    assert_eq!(r.published.amphora_count(), 10 + many as usize);
    round(&mut r, super::HOLD_MANY_NS / 2);
    assert_eq!(r.snapshot().amphorae.len(), 10, "more than HOLD_FEW wait up to HOLD_MANY_NS");
    round(&mut r, super::HOLD_MANY_NS);
    assert_eq!(r.snapshot().amphorae.len(), 10 + many as usize);
    // A few new amphorae are published in the round.
    r.beat(100_000..100_003);
    round(&mut r, 1);
    assert_eq!(r.snapshot().amphorae.len(), 13 + many as usize);
}

#[test]
fn a_transition_is_published_in_the_round_it_happens() {
    let mut r = rig();
    run(&mut r, 3, &[], 4);
    let before = r.snapshot().generation;
    // Amphora 2 stops; the others beat on. Its stale transition is published in the round of
    // the check that finds it, not held back like a refresh.
    let mut stale_at = None;
    for step in 0..40u64 {
        if step % 4 == 0 {
            r.beat(0..2);
        }
        round(&mut r, S / 2);
        if r.control.fleet.down().contains(&amphora(2)) {
            stale_at = Some(step);
            assert!(r.snapshot().down.contains(&amphora(2)), "published with the transition");
            assert_eq!(r.snapshot().amphorae.get(&amphora(2)).map(|h| h.liveness), Some(Live::Stale));
            break;
        }
    }
    assert!(stale_at.is_some(), "amphora 2 went stale");
    assert!(r.snapshot().generation > before);
}

#[test]
fn a_read_command_is_answered_without_waiting_for_the_store() {
    let mut r = rig();
    r.beat(0..3);
    r.advance(S);
    // The store fails: writes wait for it, reads do not.
    r.store.set_failing(true);
    r.beat(3..6);
    let (tx, rx) = crossbeam::channel::bounded(1);
    r.control.command(super::Call {
        command: Command::Fleet(FleetCommand::Failovers { marker: None, limit: 10 }),
        reply: tx,
    });
    let reply = rx.try_recv().expect("a read is answered at once");
    assert!(matches!(reply, Ok(Reply::Failovers { .. })), "{reply:?}");
    let (tx, rx) = crossbeam::channel::bounded(1);
    r.control.command(super::Call { command: Command::Fleet(FleetCommand::Forget(amphora(0))), reply: tx });
    assert!(rx.try_recv().is_err(), "a write waits for its commit");
}
