//! Cluster mode with real processes: a 3-member etcd and three `heartsink serve` members on
//! loopback, fleets sent round-robin over the three (as Octavia amphorae over their
//! `controller_ip_port_list`), members killed and paused. Every wait is bounded; every
//! process is killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::etcd::Etcd;
use common::wait_until;
use serde_json::Value;

fn failovers(m: &Member) -> Vec<Value> {
    let (code, v) = m.d.get("/v1/failovers?limit=1000");
    assert_eq!(code, 200, "{v}");
    v["failovers"].as_array().cloned().unwrap_or_default()
}

/// (amphora, state, attempts) of every record, sorted.
fn record_states(m: &Member) -> Vec<(String, String, u64)> {
    let mut v: Vec<(String, String, u64)> = failovers(m)
        .iter()
        .map(|r| {
            (
                r["amphora"].as_str().unwrap_or("").to_owned(),
                r["state"].as_str().unwrap_or("").to_owned(),
                r["attempts"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

fn amphorae(m: &Member) -> Vec<Value> {
    let (code, v) = m.d.get("/v1/amphorae?limit=1000");
    assert_eq!(code, 200, "{v}");
    v["amphorae"].as_array().cloned().unwrap_or_default()
}

fn alive(m: &Member) -> usize {
    amphorae(m).iter().filter(|a| a["liveness"] == "alive").count()
}

fn record_amphorae(m: &Member) -> Vec<String> {
    let mut ids: Vec<String> = failovers(m).iter().filter_map(|r| r["amphora"].as_str().map(str::to_owned)).collect();
    ids.sort();
    ids
}

#[test]
fn three_members_one_leader_failovers_once_cluster_wide_through_kill_and_pause() {
    let etcd = Etcd::three();
    let mut ms = vec![member("a", &etcd), member("b", &etcd), member("c", &etcd)];
    let first = {
        let all: Vec<&Member> = ms.iter().collect();
        leader(&all, Duration::from_secs(15))
    };

    // 100 amphorae round-robin over the three: 90 that keep beating, 10 that will stop.
    let (_keep, mut stopping) = {
        let all: Vec<&Member> = ms.iter().collect();
        (Fleet::start(&all, 90, 1), Fleet::start(&all, 10, 2))
    };
    let ten = {
        let all: Vec<&Member> = ms.iter().collect();
        for m in &all {
            wait_until(&format!("100 amphorae alive on {}", m.name), Duration::from_secs(15), || {
                (alive(m) == 100).then_some(())
            });
        }
        // Three timeouts: nothing is failed over, and every member lists every amphora alive.
        std::thread::sleep(Duration::from_secs_f64(3.0 * TIMEOUT));
        for m in &all {
            assert_eq!(alive(m), 100, "{} lists every amphora alive\n{}", m.name, logs(&all));
            assert!(failovers(m).is_empty(), "no failover on {}: {:?}\n{}", m.name, failovers(m), logs(&all));
        }

        // 10 stop: exactly those 10 are failed over, once, and every member says so.
        stopping.0.stop();
        let stopped_at = Instant::now();
        let lead = all.iter().find(|m| m.name == first).unwrap();
        let ten = wait_until("10 failover records on the leader", Duration::from_secs(20), || {
            let ids = record_amphorae(lead);
            (ids.len() >= 10).then_some(ids)
        });
        let took = stopped_at.elapsed();
        eprintln!("cluster: 10 failover records {took:?} after the 10 stopped (timeout {TIMEOUT} s)");
        assert_eq!(ten.len(), 10, "exactly 10 records: {ten:?}\n{}", logs(&all));
        let mut distinct = ten.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 10, "one record per amphora: {ten:?}");
        for m in &all {
            wait_until(&format!("{} serves the leader's records", m.name), Duration::from_secs(5), || {
                (record_amphorae(m) == ten).then_some(())
            });
        }
        assert!(took < Duration::from_secs_f64(TIMEOUT + 6.0), "failed over {took:?} after the stop");
        // Every member serves every record done, run once (the final state reached etcd).
        for m in &all {
            wait_until(&format!("{} serves 10 records done", m.name), Duration::from_secs(10), || {
                let states = record_states(m);
                states.iter().all(|(_, st, n)| st == "done" && *n == 1).then_some(())
            });
        }
        ten
    };

    // kill -9 the leader: a successor within lease_ttl + one check (+ one campaign round), no
    // new record, the records kept.
    let i = ms.iter().position(|m| m.name == first).unwrap();
    let mut dead = ms.remove(i);
    let killed_at = Instant::now();
    let _ = dead.d.child.kill();
    let _ = dead.d.child.wait();
    let others: Vec<&Member> = ms.iter().collect();
    let second = leader(&others, Duration::from_secs(TTL + 5));
    let took = killed_at.elapsed();
    assert_ne!(second, first);
    eprintln!("cluster: successor {took:?} after kill -9 of the leader (lease_ttl {TTL} s)");
    assert!(took <= Duration::from_secs_f64(TTL as f64 + CHECK + 1.5), "successor after {took:?}");
    std::thread::sleep(Duration::from_secs_f64(TIMEOUT + 2.0));
    for m in &others {
        assert_eq!(record_amphorae(m), ten, "no new record on {} after the leader died\n{}", m.name, logs(&others));
        assert!(
            record_states(m).iter().all(|(_, st, n)| st == "done" && *n == 1),
            "no record run again by the new leader on {}: {:?}",
            m.name,
            record_states(m)
        );
    }

    // SIGSTOP the new leader past its lease, then SIGCONT: the third member leads meanwhile,
    // the paused one writes nothing when it wakes, and nothing is failed over twice.
    let paused = others.iter().find(|m| m.name == second).unwrap();
    let third = others.iter().find(|m| m.name != second).unwrap();
    paused.d.signal(libc::SIGSTOP);
    let _ = leader(&[third], Duration::from_secs(TTL + 5));
    std::thread::sleep(Duration::from_secs(TTL + 1));
    paused.d.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_secs_f64(TIMEOUT));
    let now_leader = leader(&others, Duration::from_secs(TTL + 5));
    assert_eq!(now_leader, third.name, "the member that took over keeps the lead");
    for m in &others {
        assert_eq!(record_amphorae(m), ten, "no double failover on {}\n{}", m.name, logs(&others));
    }
}

fn reasons(m: &Member) -> Vec<String> {
    m.d.stats()["liveness"]["suspended"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["reason"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn settings_joins_a_graceful_handover_and_a_lost_quorum_fail_nothing_over_wrongly() {
    let mut etcd = Etcd::three();
    let mut ms = vec![member("a", &etcd), member("b", &etcd)];
    let first = leader(&ms.iter().collect::<Vec<_>>(), Duration::from_secs(15));
    let (_keep, mut fleet) = {
        let all: Vec<&Member> = ms.iter().collect();
        (Fleet::start(&all, 25, 4), Fleet::start(&all, 5, 3))
    };
    for m in &ms {
        wait_until(&format!("30 alive on {}", m.name), Duration::from_secs(15), || (alive(m) == 30).then_some(()));
    }

    // A second member started with a node name in use waits for the name: it never leads and
    // the running member keeps its key.
    {
        let dup = member("a", &etcd);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(cluster(&dup)["leading"], false, "the duplicate does not lead");
        let owner = ms.iter().find(|m| m.name == "a").unwrap();
        let listed = cluster(&ms[1])["members"].as_array().cloned().unwrap_or_default();
        let a = listed.iter().find(|m| m["node"] == "a").cloned().unwrap_or_default();
        assert_eq!(a["admin"], owner.d.admin.to_string(), "the running member keeps its key: {listed:?}");
        assert!(dup.d.stderr_text().contains("another member holds this node name"), "the duplicate says why");
    }
    // A setting written on the member that does not lead is answered once in etcd, and every
    // member applies it.
    let follower = ms.iter().find(|m| m.name != first).unwrap();
    let id = amphorae(follower)[0]["id"].as_str().unwrap().to_owned();
    let (code, v) = patch(follower, &format!("/v1/amphorae/{id}"), r#"{"expected_listeners": 1}"#);
    assert_eq!(code, 200, "{v}");
    for m in &ms {
        wait_until(&format!("the setting on {}", m.name), Duration::from_secs(5), || {
            let (_, a) = m.d.get(&format!("/v1/amphorae/{id}"));
            (a["expected_listeners"] == 1).then_some(())
        });
    }

    // A member joins: nothing is failed over.
    ms.push(member("c", &etcd));
    wait_until("30 alive on the new member", Duration::from_secs(15), || (alive(&ms[2]) == 30).then_some(()));
    std::thread::sleep(Duration::from_secs_f64(TIMEOUT + 1.0));

    // The leader stops gracefully: a successor within about a second, nothing failed over.
    let i = ms.iter().position(|m| m.name == first).unwrap();
    let mut gone = ms.remove(i);
    let stopped_at = Instant::now();
    gone.d.signal(libc::SIGTERM);
    let second = leader(&ms.iter().collect::<Vec<_>>(), Duration::from_secs(TTL + 5));
    let handover = stopped_at.elapsed();
    assert_ne!(second, first);
    eprintln!("cluster: successor {handover:?} after a graceful stop of the leader");
    assert!(handover < Duration::from_secs(2), "successor {handover:?} after a graceful stop");
    let _ = gone.d.wait_exit(Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs_f64(TIMEOUT + 1.0));
    for m in &ms {
        assert!(failovers(m).is_empty(), "no failover on {} after a join and a handover\n{}", m.name, logs(&[m]));
    }

    // etcd loses its quorum, and 5 amphorae stop: nobody fails anything over.
    etcd.kill(1);
    etcd.kill(2);
    fleet.0.stop();
    for m in &ms {
        wait_until(&format!("etcd unreachable on {}", m.name), Duration::from_secs(10), || {
            reasons(m).iter().any(|r| r == "etcd_unreachable").then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs_f64(2.0 * TIMEOUT));
    for m in &ms {
        assert_eq!(alive(m), 25, "{} sees the 5 stale", m.name);
        assert!(failovers(m).is_empty(), "no failover without quorum on {}\n{}", m.name, logs(&[m]));
    }

    // Quorum back: a leader, its grace, then the 5 stale amphorae are failed over, each once.
    let back = Instant::now();
    etcd.restart(1);
    etcd.restart(2);
    let all: Vec<&Member> = ms.iter().collect();
    let third = leader(&all, Duration::from_secs(TTL + 10));
    let lead = all.iter().find(|m| m.name == third).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = loop {
        let ids = record_amphorae(lead);
        if ids.len() >= 5 {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "5 failover records after the grace: {} so far; reasons {:?}\n{}",
            ids.len(),
            reasons(lead),
            logs(&all)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(back.elapsed() >= Duration::from_secs_f64(TIMEOUT), "the grace came first: {:?}", back.elapsed());
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!((ids.len(), distinct.len()), (5, 5), "each amphora once: {ids:?}");
}
