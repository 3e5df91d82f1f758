//! Cluster mode's answers that agree: three `heartsink serve` members on a real 3-member etcd,
//! 20,000 heartbeats a second sent round-robin over them; every member answers
//! `GET /v1/amphorae` and confd's heartsink types (100–105) from the leader's view, so equal
//! generations (serials) mean equal answers, and every member reaches the leader's generation
//! within a second. Every wait is bounded; every process is killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::confd::{key, p};
use common::etcd::Etcd;
use common::wait_until;
use heartsink::confd::client::{BlockingClient, ConfdClient, Coverage};
use heartsink::confd::proto::{Query, RequestType};
use serde_json::Value;

const AMPHORAE: u64 = 600;

/// One member's amphora list: its generation and the list itself.
fn list(m: &Member) -> Option<(u64, Value)> {
    let (code, v) = request(m, "GET", "/v1/amphorae?limit=1000", None);
    (code == 200 && v["leader_view"] == true).then(|| (v["generation"].as_u64().unwrap_or(0), v["amphorae"].clone()))
}

#[test]
fn reads_and_confd_answers_agree_across_members_under_load() {
    let etcd = Etcd::three();
    let (all, port) = with_confd(&etcd);
    let refs: Vec<&Member> = all.iter().collect();
    let lead = leader(&refs, Duration::from_secs(20));
    let follower = all.iter().find(|m| m.name != lead).unwrap();
    rawx_and_pool(follower);
    let _fleet = Fleet::at_rate(&refs, AMPHORAE, 11, 20_000);
    wait_until("every member lists the whole fleet from the leader's view", Duration::from_secs(30), || {
        all.iter()
            .all(|m| list(m).is_some_and(|(_, a)| a.as_array().is_some_and(|a| a.len() as u64 == AMPHORAE)))
            .then_some(())
    });

    // Reads: sampled on every member for 8 s. Equal generations carry equal lists, and every
    // generation the leader showed is reached by every follower within a second.
    let start = Instant::now();
    let mut samples: Vec<(Duration, String, u64)> = Vec::new();
    let mut bodies: HashMap<u64, (String, Value)> = HashMap::new();
    let mut compared = 0;
    while start.elapsed() < Duration::from_secs(8) {
        for m in &all {
            let (g, body) = list(m).unwrap_or_else(|| panic!("{} has no view", m.name));
            assert!(g >> 32 > 0, "{}: generation {g} is not a leader's serial", m.name);
            match bodies.get(&g) {
                Some((who, b)) => {
                    assert_eq!(b, &body, "{} and {who} differ at generation {g}", m.name);
                    compared += 1;
                }
                None => {
                    bodies.insert(g, (m.name.clone(), body));
                }
            }
            samples.push((start.elapsed(), m.name.clone(), g));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(compared > 20, "only {compared} samples met an earlier one's generation");
    let leader_gens: Vec<(Duration, u64)> =
        samples.iter().filter(|(_, n, _)| *n == lead).map(|(t, _, g)| (*t, *g)).collect();
    let distinct = leader_gens.iter().map(|(_, g)| g).collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct > 5, "the leader's view moved only {distinct} times in 8 s under load");
    for (t, g) in leader_gens.iter().filter(|(t, _)| *t + Duration::from_secs(1) < start.elapsed()) {
        for m in all.iter().filter(|m| m.name != lead) {
            let reached = samples.iter().any(|(u, n, h)| *n == m.name && *u <= *t + Duration::from_secs(1) && h >= g);
            assert!(reached, "{} did not reach the leader's generation {g} (seen at {t:?}) within a second", m.name);
        }
    }

    // confd: heartsink's client asks all three for each of 100–105; the answers agree.
    let ips: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].iter().map(|s| s.parse().unwrap()).collect();
    let mut client = BlockingClient::new(ConfdClient::new(key(), &ips, Some(port)).unwrap()).unwrap();
    let some = list(follower).unwrap().1[0]["id"].as_str().unwrap().to_owned();
    let cases: Vec<(RequestType, Query)> = vec![
        (RequestType::AmphoraHealth, p(&some)),
        (RequestType::LbStatus, p(&some)),
        (RequestType::DownSenders, Query::Empty),
        (RequestType::EngineCounters, Query::Empty),
        (RequestType::PoolNext, p("rawx?size=2")),
        (RequestType::PoolPoll, p("fast")),
    ];
    for round in 0..5 {
        for (kind, q) in &cases {
            let (w, got) = client.query(*kind, q.clone(), Coverage::All, Duration::from_secs(3)).unwrap();
            assert!(!w.timed_out, "{kind:?} {q:?}: no quorum");
            assert!(got.consistent, "round {round}, {kind:?} {q:?}: inconsistent answers: {:?}", got.replies);
            let best = got.best().unwrap();
            assert_eq!(best.status, 0, "{kind:?} {q:?}: {best:?}");
            assert!(best.serial >> 32 > 0, "{kind:?}: serial {} is not a leader's", best.serial);
        }
    }
    // `heartsink confd query` against the three reports the quorum.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(["confd", "query", "--peer", &format!("127.0.0.1:{port}"), "--peer", "127.0.0.2", "--peer", "127.0.0.3"])
        .arg("--key-file")
        .arg(common::confd::data("hmac.key"))
        .args(["--coverage", "-1", "amphora-health", &some])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["consistent"].as_bool(), doc["sent"].as_u64(), doc["needed"].as_u64()),
        (Some(true), Some(3), Some(2)),
        "{doc}"
    );
    assert!(doc["received"].as_u64() >= Some(2) && doc["quorum"] == true, "{doc}");
}
