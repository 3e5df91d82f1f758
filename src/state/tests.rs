//! Health-model tests: Octavia's status rules, statistics, the sequence rule.

use super::*;

const A: &str = "79c8c292-6b94-45b5-b498-82321e35049e";
const L1: &str = "82b9bfbc-91ba-4257-9abe-22cad37b17c6";
const L2: &str = "92b9bfbc-91ba-4257-9abe-22cad37b17c6";
const P1: &str = "515c6123-6c88-4537-bcf3-bd58da60fb1c";
const P2: &str = "615c6123-6c88-4537-bcf3-bd58da60fb1c";
const M1: &str = "88718c96-6f3d-48f7-b4b1-b64633be40f5";
const M2: &str = "5b08acc2-13a5-4f07-9a1b-195060c40eb7";
const GAP: u64 = 5_000_000_000;

fn hb(s: &str) -> Heartbeat {
    let mut h = Heartbeat::default();
    h.parse(s.as_bytes()).expect("test message parses");
    h
}

fn v3(seq: u64, lstatus: &str, pstatus: &str, m1: &str, m2: &str, tx: u64) -> Heartbeat {
    hb(&format!(
        r#"{{"id": "{A}", "seq": {seq}, "ver": 3,
            "listeners": {{"{L1}": {{"status": "{lstatus}", "stats": {{"tx": {tx}, "rx": 1, "conns": {seq}, "totconns": 2, "ereq": 0}}}}}},
            "pools": {{"{P1}:{L1}": {{"status": "{pstatus}", "members": {{"{M1}": "{m1}", "{M2}": "{m2}"}}}}}}}}"#
    ))
}

fn pool(s: &AmphoraState) -> &PoolState {
    &s.pools[0]
}

fn member<'s>(s: &'s AmphoraState, id: &str) -> &'s MemberState {
    pool(s).members.iter().find(|m| m.id.to_string() == id).expect("member")
}

#[test]
fn all_up_is_online_and_deltas_accumulate() {
    let mut s = AmphoraState::new(0);
    let a = s.apply(&v3(0, "OPEN", "UP", "UP", "no check", 10), 1, GAP).expect("applies");
    assert_eq!(a.status_change, Some((None, OperatingStatus::Online)));
    s.apply(&v3(1, "OPEN", "UP", "UP", "no check", 5), 2, GAP).expect("applies");
    assert_eq!(s.operating_status, OperatingStatus::Online);
    let l = &s.listeners[0];
    assert_eq!((l.stats.tx, l.stats.totconns, l.stats.conns), (15, 4, 1));
    assert_eq!(member(&s, M2).operating_status, OperatingStatus::NoMonitor);
    assert_eq!(s.last_seen_ns, 2);
    assert_eq!(s.heartbeats, 2);
}

#[test]
fn absolute_counters_replace() {
    let mut s = AmphoraState::new(0);
    let msg = |tx: u64| {
        hb(&format!(
            r#"{{"id": "{A}", "ver": 2, "listeners": {{"{L1}": {{"status": "OPEN", "stats": {{"tx": {tx}, "rx": 1, "conns": 1, "totconns": 2, "ereq": 0}}}}}}, "pools": {{}}}}"#
        ))
    };
    s.apply(&msg(10), 1, GAP).expect("applies");
    s.apply(&msg(7), 2, GAP).expect("applies");
    assert_eq!(s.listeners[0].stats.tx, 7);
}

#[test]
fn member_down_degrades_an_up_pool_and_the_lb() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(0, "OPEN", "UP", "DOWN 1/2", "UP", 0), 1, GAP).expect("applies");
    assert_eq!(member(&s, M1).operating_status, OperatingStatus::Error);
    assert_eq!(pool(&s).operating_status, OperatingStatus::Degraded);
    assert_eq!(s.operating_status, OperatingStatus::Degraded);
}

#[test]
fn pool_down_is_error_and_wins_over_full() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(0, "FULL", "DOWN", "DOWN", "UP", 0), 1, GAP).expect("applies");
    assert_eq!(s.listeners[0].operating_status, OperatingStatus::Degraded);
    assert_eq!(pool(&s).operating_status, OperatingStatus::Error);
    assert_eq!(s.operating_status, OperatingStatus::Error);
}

#[test]
fn full_listener_degrades() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(0, "FULL", "UP", "UP", "UP", 0), 1, GAP).expect("applies");
    assert_eq!(s.operating_status, OperatingStatus::Degraded);
}

#[test]
fn unknown_statuses_leave_values_unchanged() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(0, "OPEN", "UP", "UP", "DRAIN", 0), 1, GAP).expect("applies");
    s.apply(&v3(1, "STOP", "WEIRD", "RESTARTING", "NOLB", 0), 2, GAP).expect("applies");
    assert_eq!(s.listeners[0].operating_status, OperatingStatus::Online);
    assert_eq!(pool(&s).operating_status, OperatingStatus::Online);
    assert_eq!(member(&s, M1).operating_status, OperatingStatus::Online);
    assert_eq!(member(&s, M2).operating_status, OperatingStatus::Draining);
    // A member DOWN in a pool of unknown status does not degrade it.
    s.apply(&v3(2, "OPEN", "WEIRD", "DOWN", "MAINT", 0), 3, GAP).expect("applies");
    assert_eq!(pool(&s).operating_status, OperatingStatus::Online);
    assert_eq!(s.operating_status, OperatingStatus::Online);
    assert_eq!(member(&s, M2).operating_status, OperatingStatus::Offline);
}

#[test]
fn absent_entities_go_offline_but_no_monitor_stays() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(0, "OPEN", "UP", "UP", "no check", 0), 1, GAP).expect("applies");
    let other = hb(&format!(
        r#"{{"id": "{A}", "seq": 1, "ver": 3, "listeners": {{"{L2}": {{"status": "OPEN"}}}},
            "pools": {{"{P2}": {{"status": "UP", "members": {{}}}}, "{P1}": {{"status": "UP", "members": {{}}}}}}}}"#
    ));
    s.apply(&other, 2, GAP).expect("applies");
    let l1 = s.listeners.iter().find(|l| l.id.to_string() == L1).expect("l1");
    assert!(!l1.reported);
    assert_eq!(l1.operating_status, OperatingStatus::Offline);
    assert_eq!(member(&s, M1).operating_status, OperatingStatus::Offline);
    assert_eq!(member(&s, M2).operating_status, OperatingStatus::NoMonitor);
    let only = hb(&format!(r#"{{"id": "{A}", "seq": 2, "ver": 3, "listeners": {{}}, "pools": {{}}}}"#));
    s.apply(&only, 3, GAP).expect("applies");
    assert!(s.pools.iter().all(|p| p.operating_status == OperatingStatus::Offline && !p.reported));
    assert_eq!(s.operating_status, OperatingStatus::Online);
}

#[test]
fn replay_changes_nothing() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(4, "OPEN", "UP", "UP", "UP", 10), 1, GAP).expect("applies");
    let before = s.clone();
    assert_eq!(s.apply(&v3(4, "OPEN", "UP", "UP", "UP", 10), 2, GAP), Err(SeqError::Replay));
    assert_eq!(s, before);
}

#[test]
fn restart_is_counted() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(900, "OPEN", "UP", "UP", "UP", 1), 1, GAP).expect("applies");
    let a = s.apply(&v3(0, "OPEN", "UP", "UP", "UP", 1), 1 + GAP, GAP).expect("restart");
    assert_eq!(a.seq, Some(SeqOutcome::Restarted));
    assert_eq!(s.restarts, 1);
    assert_eq!(s.listeners[0].stats.tx, 2);
}
