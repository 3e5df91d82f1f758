//! Octavia's liveness rules on the worker pipeline, with a virtual clock: the processing-delay
//! bound and the listener-count rule, the change log's `Revived` for a stale amphora, and the
//! order rule (an older heartbeat adds its deltas only; state never moves backwards).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam::channel;
use heartsink::engine::{Change, DropReason, ManualClock, Pipeline, PipelineShared, Settings, Shards, WorkerCounters};
use heartsink::proto::envelope::{wrap, TagForm};
use heartsink::proto::inflate::Backend;
use heartsink::proto::keyring::{Key, Keyring};
use heartsink::proto::octavia::Uuid;
use heartsink::state::OperatingStatus;

const S: u64 = 1_000_000_000;

struct Rig {
    p: Pipeline,
    shards: Arc<Shards>,
    clock: Arc<ManualClock>,
    changes: channel::Receiver<Vec<Change>>,
}

fn rig() -> Rig {
    let shards = Arc::new(Shards::new(8));
    let clock = Arc::new(ManualClock::new(100 * S));
    let shared = PipelineShared {
        keyring: Arc::new(ArcSwap::from_pointee(Keyring::from_strs(&["k"], 0))),
        // heartbeat_interval 10 s (Octavia's default) bounds the processing delay.
        settings: Arc::new(ArcSwap::from_pointee(Settings::default())),
        shards: shards.clone(),
        clock: clock.clone(),
        services: Default::default(),
    };
    let (tx, changes) = channel::unbounded();
    let p = Pipeline::new(shared, Backend::Libdeflate, Arc::new(WorkerCounters::default()), Some(tx));
    Rig { p, shards, clock, changes }
}

fn id(n: u64) -> Uuid {
    Uuid::parse_str(&common::uuid(1, n)).unwrap()
}

#[test]
fn a_heartbeat_processed_after_heartbeat_interval_is_dropped_as_late() {
    let mut r = rig();
    // Received at 90 s, processed at 100 s: exactly the bound → late (Octavia: `>=`).
    let t = r.p.process([&common::heartbeat(1, 1, 1, "k")[..]], 90 * S);
    assert_eq!(t.drops[DropReason::Late as usize], 1);
    assert_eq!(t.accepted, 0);
    assert!(r.shards.get(&id(1)).is_none(), "a late heartbeat changes nothing");
    // Received 1 ns later than the bound allows: accepted.
    let t = r.p.process([&common::heartbeat(1, 2, 1, "k")[..]], 90 * S + 1);
    assert_eq!(t.accepted, 1);
    assert_eq!(r.shards.get(&id(1)).unwrap().last_refresh_ns, 90 * S + 1);
}

#[test]
fn only_the_expected_listener_count_refreshes_liveness() {
    let mut r = rig();
    r.p.process([&common::heartbeat(2, 1, 1, "k")[..]], 100 * S);
    assert_eq!(r.shards.get(&id(2)).unwrap().last_refresh_ns, 100 * S);
    // The load balancer has two enabled listeners; the amphora reports one.
    r.shards.with_mut(&id(2), |s| s.expected_listeners = Some(2));
    r.clock.set(110 * S);
    let t = r.p.process([&common::heartbeat(2, 2, 5, "k")[..]], 110 * S);
    assert_eq!((t.accepted, t.listener_count_mismatches), (1, 1));
    let s = r.shards.get(&id(2)).unwrap();
    assert_eq!(s.last_refresh_ns, 100 * S, "liveness not refreshed");
    assert_eq!(s.last_seen_ns, 110 * S, "but the heartbeat was applied (statuses, stats)");
    assert_eq!(s.listeners[0].stats.tx, 6);
    assert_eq!(s.listener_count_mismatches, 1);
    // The expected count again: refreshed.
    r.shards.with_mut(&id(2), |s| s.expected_listeners = Some(1));
    r.clock.set(120 * S);
    r.p.process([&common::heartbeat(2, 3, 1, "k")[..]], 120 * S);
    assert_eq!(r.shards.get(&id(2)).unwrap().last_refresh_ns, 120 * S);
}

#[test]
fn a_stale_amphora_that_refreshes_is_reported_revived_once() {
    let mut r = rig();
    r.p.process([&common::heartbeat(3, 1, 1, "k")[..]], 100 * S);
    assert_eq!(r.changes.try_recv().unwrap(), vec![Change::New { id: id(3), status: OperatingStatus::Online }]);
    // The control thread marks it stale.
    r.shards.with_mut(&id(3), |s| s.stale = true);
    r.clock.set(200 * S);
    r.p.process([&common::heartbeat(3, 2, 1, "k")[..]], 200 * S);
    assert_eq!(r.changes.try_recv().unwrap(), vec![Change::Revived(id(3))]);
    r.p.process([&common::heartbeat(3, 3, 1, "k")[..]], 200 * S);
    assert!(r.changes.try_recv().is_err(), "revived once");
    assert!(!r.shards.get(&id(3)).unwrap().stale);
}

/// [`common::heartbeat`] with its pool reported `DOWN` (the load balancer goes to `ERROR`).
fn heartbeat_pool_down(amphora: u64, seq: u64, tx: u64) -> Vec<u8> {
    let json = common::heartbeat_json(amphora, seq, tx)
        .replace(r#""status": "UP", "members""#, r#""status": "DOWN", "members""#);
    assert!(json.contains(r#""status": "DOWN""#));
    wrap(json.as_bytes(), &Key::new(b"k"), TagForm::Hex)
}

#[test]
fn a_reordered_heartbeat_adds_its_deltas_and_never_moves_state_backwards() {
    let mut r = rig();
    r.p.process([&common::heartbeat(4, 5, 10, "k")[..]], 100 * S);
    assert_eq!(r.changes.try_recv().unwrap(), vec![Change::New { id: id(4), status: OperatingStatus::Online }]);
    // seq 4 was sent before 5 and arrives after it: older, never seen.
    r.clock.set(101 * S);
    let t = r.p.process([&heartbeat_pool_down(4, 4, 7)[..]], 101 * S);
    assert_eq!(t.accepted, 1);
    let s = r.shards.get(&id(4)).unwrap();
    assert_eq!(s.operating_status, OperatingStatus::Online, "an older heartbeat does not set health");
    assert_eq!((s.seq, s.listeners[0].stats.tx, s.reordered), (Some(5), 17, 1));
    assert_eq!(s.last_refresh_ns, 100 * S, "nor liveness");
    assert!(r.changes.try_recv().is_err(), "no status change");
    // Its duplicate: a replay.
    let t = r.p.process([&heartbeat_pool_down(4, 4, 7)[..]], 101 * S);
    assert_eq!(t.drops[DropReason::Replay as usize], 1);
    assert_eq!(r.shards.get(&id(4)).unwrap().listeners[0].stats.tx, 17);
    // The newest one sets health.
    r.p.process([&heartbeat_pool_down(4, 6, 1)[..]], 101 * S);
    let s = r.shards.get(&id(4)).unwrap();
    assert_eq!((s.operating_status, s.seq, s.listeners[0].stats.tx), (OperatingStatus::Error, Some(6), 18));
    assert_eq!(
        r.changes.try_recv().unwrap(),
        vec![Change::Status { id: id(4), from: OperatingStatus::Online, to: OperatingStatus::Error }]
    );
}

#[test]
fn seq_beyond_the_sequence_space_is_refused_and_its_top_is_an_end() {
    let mut r = rig();
    let signed = |seq: &str| {
        let json = common::heartbeat_json(5, 0, 1).replace(r#""seq": 0,"#, &format!(r#""seq": {seq},"#));
        assert!(json.contains(seq));
        wrap(json.as_bytes(), &Key::new(b"k"), TagForm::Hex)
    };
    // 2^64 and beyond (Python counts on): not a seq heartsink can order, so not applied.
    for seq in ["18446744073709551616", "100000000000000000000000"] {
        let t = r.p.process([&signed(seq)[..]], 100 * S);
        assert_eq!((t.accepted, t.drops[DropReason::BadSchema as usize]), (0, 1), "seq {seq}");
    }
    assert!(r.shards.get(&id(5)).is_none());
    // 2^64 - 1 is the last number: a repeat is a replay, a wrap to 0 waits for the restart gap.
    assert_eq!(r.p.process([&signed("18446744073709551615")[..]], 100 * S).accepted, 1);
    let t = r.p.process([&signed("18446744073709551615")[..]], 100 * S);
    assert_eq!(t.drops[DropReason::Replay as usize], 1);
    let t = r.p.process([&signed("0")[..]], 100 * S + 1);
    assert_eq!(t.drops[DropReason::Stale as usize], 1);
    let gap = Settings::default().restart_gap_ns;
    r.clock.set(100 * S + gap);
    let t = r.p.process([&signed("1")[..]], 100 * S + gap);
    assert_eq!((t.accepted, t.restarts), (1, 1));
    assert_eq!(r.shards.get(&id(5)).unwrap().seq, Some(1));
}
