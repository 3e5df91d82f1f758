//! Health-model tests: Octavia's status rules, statistics, the sequence rule.

use super::*;
use crate::proto::octavia::Uuid;

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
    assert_eq!(but_window(&s), but_window(&before));
    assert_eq!(s.window.highest(), before.window.highest());
}

/// The state without its sequence window (a packet refused after the restart gap leaves its
/// number there, for the window's rising-pair restart rule, and nothing else).
fn but_window(s: &AmphoraState) -> AmphoraState {
    AmphoraState { window: SeqWindow::default(), ..s.clone() }
}

/// Health: everything the newest heartbeat decides, without counters and times.
type Health = (OperatingStatus, Vec<(Uuid, ListenerStatus, OperatingStatus, bool)>, Vec<PoolState>, Option<u64>);

fn health(s: &AmphoraState) -> Health {
    let listeners = s.listeners.iter().map(|l| (l.id, l.status, l.operating_status, l.reported)).collect();
    (s.operating_status, listeners, s.pools.clone(), s.ver)
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("test uuid")
}

#[test]
fn an_older_heartbeat_adds_its_deltas_once_and_changes_nothing_else() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(5, "OPEN", "UP", "UP", "UP", 10), 1, GAP).expect("applies");
    s.expected_listeners = Some(1);
    let before = s.clone();
    // seq 3, sent before 5 and never seen: everything in it is worse, and older.
    let a = s.apply(&v3(3, "FULL", "DOWN", "DOWN", "MAINT", 7), 2, GAP).expect("accepted once");
    assert_eq!(
        a,
        Applied { seq: Some(SeqOutcome::Reordered), status_change: None, revived: false, count_mismatch: false }
    );
    assert_eq!(health(&s), health(&before));
    assert_eq!(s.seq, Some(5), "seq never moves backwards");
    assert_eq!(s.last_refresh_ns, 1, "an older heartbeat does not refresh liveness");
    let (l, l0) = (&s.listeners[0].stats, &before.listeners[0].stats);
    assert_eq!((l.tx, l.rx, l.totconns, l.ereq), (l0.tx + 7, l0.rx + 1, l0.totconns + 2, l0.ereq));
    assert_eq!(l.conns, 5, "conns is absolute: the newest value stays");
    assert_eq!((s.heartbeats, s.reordered, s.last_seen_ns), (2, 1, 2));
    // Once only.
    let after = s.clone();
    assert_eq!(s.apply(&v3(3, "FULL", "DOWN", "DOWN", "MAINT", 7), 3, GAP), Err(SeqError::Replay));
    assert_eq!(but_window(&s), but_window(&after));
    // The next newest one sets everything again.
    let a = s.apply(&v3(6, "FULL", "UP", "UP", "UP", 1), 4, GAP).expect("newest");
    assert_eq!(a.status_change, Some((Some(OperatingStatus::Online), OperatingStatus::Degraded)));
    assert_eq!((s.seq, s.listeners[0].stats.tx, s.listeners[0].stats.conns, s.last_refresh_ns), (Some(6), 18, 6, 4));
}

#[test]
fn an_older_heartbeat_keeps_absolute_counters_and_holds_deltas_of_a_listener_only_it_names() {
    let mut s = AmphoraState::new(0);
    let abs = |seq: u64, tx: u64| {
        hb(&format!(
            r#"{{"id": "{A}", "seq": {seq}, "ver": 2, "listeners": {{"{L1}": {{"status": "OPEN", "stats": {{"tx": {tx}, "rx": 1, "conns": 1, "totconns": 2, "ereq": 0}}}}}}, "pools": {{}}}}"#
        ))
    };
    s.apply(&abs(10, 100), 1, GAP).expect("applies");
    s.apply(&abs(9, 50), 2, GAP).expect("accepted");
    assert_eq!(s.listeners[0].stats.tx, 100, "an older absolute value does not replace a newer one");
    assert_eq!(s.ver, Some(2));
    // A ver-3 older heartbeat naming a listener the newest does not report.
    let old = hb(&format!(
        r#"{{"id": "{A}", "seq": 8, "ver": 3, "listeners": {{"{L2}": {{"status": "OPEN", "stats": {{"tx": 4, "rx": 0, "conns": 9, "totconns": 1, "ereq": 0}}}}}}}}"#
    ));
    s.apply(&old, 3, GAP).expect("accepted");
    assert_eq!(s.ver, Some(2), "ver is the newest heartbeat's");
    let l2 = s.listeners.iter().find(|l| l.id == uuid(L2)).expect("l2 holds the deltas");
    assert_eq!((l2.stats.tx, l2.stats.totconns, l2.stats.conns), (4, 1, 0));
    assert_eq!((l2.reported, l2.operating_status), (false, OperatingStatus::Offline));
    assert_eq!(s.operating_status, OperatingStatus::Online);
}

#[test]
fn a_heartbeat_without_seq_is_newest_and_keeps_seq() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(7, "OPEN", "UP", "UP", "UP", 1), 1, GAP).expect("applies");
    let bare =
        hb(&format!(r#"{{"id": "{A}", "ver": 3, "listeners": {{"{L1}": {{"status": "FULL"}}}}, "pools": {{}}}}"#));
    s.apply(&bare, 2, GAP).expect("applies");
    assert_eq!((s.seq, s.operating_status), (Some(7), OperatingStatus::Degraded));
    assert_eq!(s.window.highest(), Some(7));
}

#[test]
fn seq_at_the_top_of_the_space_then_a_wrap() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(u64::MAX, "OPEN", "UP", "UP", "UP", 1), 1, GAP).expect("applies");
    let before = s.clone();
    assert!(s.apply(&v3(u64::MAX, "FULL", "UP", "UP", "UP", 1), 2, GAP).is_err());
    assert!(s.apply(&v3(0, "FULL", "UP", "UP", "UP", 1), 3, GAP).is_err(), "a wrap inside the gap");
    assert_eq!(but_window(&s), but_window(&before));
    let a = s.apply(&v3(1, "FULL", "UP", "UP", "UP", 1), 1 + GAP, GAP).expect("a restart");
    assert_eq!(a.seq, Some(SeqOutcome::Restarted));
    assert_eq!((s.seq, s.restarts, s.operating_status), (Some(1), 1, OperatingStatus::Degraded));
}

#[test]
fn a_restored_state_refuses_what_it_had_and_takes_what_is_newer() {
    let mut s = AmphoraState::new(0);
    s.apply(&v3(40, "OPEN", "UP", "UP", "UP", 1), 1, GAP).expect("applies");
    let mut r = s.clone().restored();
    assert_eq!(r.window.highest(), Some(40));
    assert!(r.apply(&v3(40, "FULL", "UP", "UP", "UP", 1), 2, GAP).is_err());
    // Inside the window below the stored seq: possibly accepted before the restart, so a
    // replay, never its deltas counted twice.
    assert_eq!(r.apply(&v3(39, "FULL", "UP", "UP", "UP", 1), 2, GAP).map(|a| a.seq), Err(SeqError::Replay));
    assert_eq!(r.listeners[0].stats.tx, s.listeners[0].stats.tx);
    assert_eq!(r.apply(&v3(41, "OPEN", "UP", "UP", "UP", 1), 3, GAP).expect("newer").seq, Some(SeqOutcome::Advanced));
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

/// One heartbeat the model sender built: what it says, and who it is.
#[derive(Clone)]
struct Sent {
    /// (epoch, seq): the identity of the datagram (a restart starts a new epoch).
    ident: (u32, u64),
    hb: Heartbeat,
    /// ver-3 deltas per listener (L1, L2): tx, rx, totconns, ereq, and the absolute conns.
    stats: [[u64; 5]; 2],
}

fn random_heartbeat(rng: &mut rand::rngs::SmallRng, ident: (u32, u64)) -> Sent {
    use rand::Rng;
    const LISTENER: [&str; 2] = ["OPEN", "FULL"];
    const POOL: [&str; 2] = ["UP", "DOWN"];
    const MEMBER: [&str; 5] = ["UP", "DOWN", "DRAIN", "MAINT", "no check"];
    let mut stats = [[0u64; 5]; 2];
    for l in &mut stats {
        for v in l.iter_mut() {
            *v = rng.random_range(0..1000);
        }
    }
    let st = |l: [u64; 5]| {
        format!(r#"{{"tx": {}, "rx": {}, "totconns": {}, "ereq": {}, "conns": {}}}"#, l[0], l[1], l[2], l[3], l[4])
    };
    let json = format!(
        r#"{{"id": "{A}", "seq": {seq}, "ver": 3,
            "listeners": {{"{L1}": {{"status": "{l1}", "stats": {s1}}}, "{L2}": {{"status": "{l2}", "stats": {s2}}}}},
            "pools": {{"{P1}:{L1}": {{"status": "{p}", "members": {{"{M1}": "{m1}", "{M2}": "{m2}"}}}}}}}}"#,
        seq = ident.1,
        l1 = LISTENER[rng.random_range(0..2)],
        l2 = LISTENER[rng.random_range(0..2)],
        s1 = st(stats[0]),
        s2 = st(stats[1]),
        p = POOL[rng.random_range(0..2)],
        m1 = MEMBER[rng.random_range(0..5)],
        m2 = MEMBER[rng.random_range(0..5)],
    );
    Sent { ident, hb: hb(&json), stats }
}

/// What the network delivers of one sender's run of heartbeats: local reordering (up to
/// `spread` places, sometimes past the window), duplicates, losses.
fn network(rng: &mut rand::rngs::SmallRng, run: Vec<Sent>, spread: u64) -> Vec<Sent> {
    use rand::Rng;
    let mut keyed: Vec<(u64, usize, Sent)> = Vec::new();
    for (i, b) in run.into_iter().enumerate() {
        let i = i as u64;
        match rng.random_range(0..10) {
            0 => {}
            1 | 2 => {
                keyed.push((i + rng.random_range(0..spread), keyed.len(), b.clone()));
                keyed.push((i + rng.random_range(0..spread + 10), keyed.len(), b));
            }
            _ => keyed.push((i + rng.random_range(0..spread), keyed.len(), b)),
        }
    }
    keyed.sort_by_key(|k| (k.0, k.1));
    keyed.into_iter().map(|k| k.2).collect()
}

/// Reorderings, duplicates, losses and restarts (with and without the restart gap), mixed,
/// against the model: the sequence window's verdict sorts each heartbeat; a refused one changes
/// nothing; an older one adds its deltas once and nothing else; the newest one decides health,
/// `seq`, `ver`, `conns` and liveness, exactly as if it were the only heartbeat; `seq` goes down
/// only on a restart; the counters are the sum of the deltas of the heartbeats accepted.
#[test]
fn state_never_moves_backwards_under_reordering_duplicates_and_restarts() {
    use std::collections::BTreeMap;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    const MS: u64 = 1_000_000;
    let (l1, l2) = (uuid(L1), uuid(L2));
    let mut kinds = [0u64; 4];
    for seed in 0..300u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut s = AmphoraState::new(0);
        let mut shadow = SeqWindow::default();
        let mut last_accepted = 0u64;
        let mut now = 1_000 * MS;
        // Model: deltas summed per listener, the accepted identities since the last restart.
        let mut totals = [[0u64; 4]; 2];
        let mut accepted: BTreeMap<(u32, u64), u32> = BTreeMap::new();
        let mut restarts = 0u32;
        let mut newest_refresh = 0u64;
        let mut conns = [0u64; 2];
        let epochs = rng.random_range(1..5u32);
        for epoch in 0..epochs {
            let len = rng.random_range(1..90u64);
            let base = match (epoch, rng.random_range(0..4)) {
                (0, 1) => 5_000,
                (0, 2) => u64::MAX - (len - 1),
                _ => 0,
            };
            let run = (0..len).map(|i| random_heartbeat(&mut rng, (epoch, base + i))).collect();
            let spread = [1, 3, 20, 80][rng.random_range(0..4)];
            let delivered = network(&mut rng, run, spread);
            // A restart with the gap, or a counter reset without it.
            if epoch > 0 {
                now += if rng.random_bool(0.6) { GAP + rng.random_range(0..GAP) } else { rng.random_range(1..GAP) };
            }
            for d in delivered {
                now += rng.random_range(1..300) * MS;
                let before = s.clone();
                let verdict = shadow.check(d.ident.1, now - last_accepted, GAP);
                let got = s.apply(&d.hb, now, GAP);
                assert_eq!(got.map(|a| a.seq), verdict.map(Some), "seed {seed} {:?}", d.ident);
                assert_eq!(s.window, shadow, "seed {seed}");
                let Ok(kind) = verdict else {
                    kinds[3] += 1;
                    assert_eq!(
                        but_window(&s),
                        but_window(&before),
                        "seed {seed}: refused {:?} changed the state",
                        d.ident
                    );
                    continue;
                };
                last_accepted = now;
                if kind == SeqOutcome::Restarted {
                    restarts += 1;
                    accepted.clear();
                }
                let n = accepted.entry(d.ident).or_default();
                *n += 1;
                assert_eq!(*n, 1, "seed {seed}: {:?} accepted twice without a restart", d.ident);
                for (t, st) in totals.iter_mut().zip(d.stats) {
                    for k in 0..4 {
                        t[k] += st[k];
                    }
                }
                if kind == SeqOutcome::Reordered {
                    kinds[1] += 1;
                    assert_eq!(health(&s), health(&before), "seed {seed}: older {:?} changed health", d.ident);
                    assert_eq!((s.seq, s.last_refresh_ns), (before.seq, before.last_refresh_ns), "seed {seed}");
                    assert!(s.seq > Some(d.ident.1), "seed {seed}: an older seq is below seq");
                } else {
                    kinds[if kind == SeqOutcome::Restarted { 2 } else { 0 }] += 1;
                    let mut alone = AmphoraState::new(0);
                    alone.apply(&d.hb, now, GAP).expect("fresh state");
                    assert_eq!(health(&s), health(&alone), "seed {seed}: newest {:?} is not the health", d.ident);
                    assert_eq!(s.seq, Some(d.ident.1), "seed {seed}");
                    if kind != SeqOutcome::Restarted {
                        assert!(before.seq.is_none_or(|b| b < d.ident.1), "seed {seed}: seq moved backwards");
                    }
                    newest_refresh = now;
                    conns = [d.stats[0][4], d.stats[1][4]];
                }
                assert_eq!(s.last_refresh_ns, newest_refresh, "seed {seed}");
                assert_eq!(s.restarts, restarts, "seed {seed}");
                for ((id, t), c) in [(l1, totals[0]), (l2, totals[1])].into_iter().zip(conns) {
                    let l = s.listeners.iter().find(|l| l.id == id).expect("listener");
                    assert_eq!([l.stats.tx, l.stats.rx, l.stats.totconns, l.stats.ereq], t, "seed {seed}: deltas");
                    assert_eq!(l.stats.conns, c, "seed {seed}: conns is the newest heartbeat's");
                }
                assert_eq!(s.seq, s.window.highest(), "seed {seed}");
            }
        }
    }
    // Every kind of verdict was exercised: newest, older, restart, refused.
    eprintln!("verdicts (newest, older, restart, refused): {kinds:?}");
    assert!(kinds.iter().all(|&k| k > 50), "verdicts {kinds:?}");
}

/// Invariants over messier traffic: listener sets that change, ver 1–3 mixed, heartbeats
/// without `seq`, counters that hit the ceiling, times that go backwards. `seq` follows the
/// window and goes down only on a restart; the running counters never go down; a refused
/// heartbeat changes nothing; an older one changes no health.
#[test]
fn invariants_hold_on_mixed_traffic() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    const LISTENERS: [&str; 3] = [L1, L2, "a2b9bfbc-91ba-4257-9abe-22cad37b17c6"];
    for seed in 0..120u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut s = AmphoraState::new(0);
        let mut now = GAP;
        let mut seq = rng.random_range(0..100u64);
        for step in 0..300 {
            now = match rng.random_range(0..20) {
                0 => now.saturating_sub(GAP / 2),
                1 => now + GAP,
                _ => now + rng.random_range(0..GAP / 10),
            };
            seq = match rng.random_range(0..12) {
                0 => rng.random_range(0..70),
                1 => seq.saturating_sub(rng.random_range(0..100)),
                2 => u64::MAX - rng.random_range(0..3),
                _ => seq.saturating_add(rng.random_range(0..3)),
            };
            let tx = if rng.random_bool(0.05) { u64::MAX } else { rng.random_range(0..100) };
            let listeners: Vec<String> = LISTENERS
                .iter()
                .filter(|_| rng.random_bool(0.6))
                .map(|l| format!(r#""{l}": {{"status": "OPEN", "stats": {{"tx": {tx}, "rx": 1, "conns": 2, "totconns": 3, "ereq": 4}}}}"#))
                .collect();
            let seq_field = if rng.random_bool(0.1) { String::new() } else { format!(r#""seq": {seq}, "#) };
            let ver = rng.random_range(1..4);
            let msg = hb(&format!(
                r#"{{"id": "{A}", {seq_field}"ver": {ver}, "listeners": {{{}}}, "pools": {{}}}}"#,
                listeners.join(", ")
            ));
            let before = s.clone();
            let got = s.apply(&msg, now, GAP);
            let ctx = format!("seed {seed} step {step}: seq {:?} -> {:?}", before.seq, msg.seq);
            assert_eq!(s.seq, s.window.highest(), "{ctx}");
            assert!(s.heartbeats >= before.heartbeats && s.reordered >= before.reordered, "{ctx}");
            assert!(s.last_seen_ns >= before.last_seen_ns && s.last_refresh_ns >= before.last_refresh_ns, "{ctx}");
            for l0 in &before.listeners {
                let l = s.listeners.iter().find(|l| l.id == l0.id).expect("a listener never disappears");
                if l0.stats.tx <= l.stats.tx || got.is_ok_and(|a| a.seq != Some(SeqOutcome::Reordered)) {
                    continue;
                }
                panic!("{ctx}: an older heartbeat lowered tx");
            }
            match got {
                Err(_) => assert_eq!(but_window(&s), but_window(&before), "{ctx}"),
                Ok(a) if a.seq == Some(SeqOutcome::Reordered) => {
                    assert_eq!(
                        health(&s),
                        (before.operating_status, health(&s).1, before.pools.clone(), before.ver),
                        "{ctx}"
                    );
                    let reported = |x: &AmphoraState| {
                        x.listeners
                            .iter()
                            .filter(|l| before.listeners.iter().any(|b| b.id == l.id))
                            .map(|l| (l.id, l.status, l.operating_status, l.reported))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        reported(&s),
                        reported(&before),
                        "{ctx}: an older heartbeat changed a listener's health"
                    );
                    assert_eq!(s.seq, before.seq, "{ctx}");
                }
                Ok(a) => {
                    if msg.seq.is_some() && a.seq != Some(SeqOutcome::Restarted) {
                        assert!(s.seq >= before.seq, "{ctx}: seq went down without a restart");
                    }
                    if msg.seq.is_none() {
                        assert_eq!(s.seq, before.seq, "{ctx}");
                    }
                }
            }
        }
    }
}
