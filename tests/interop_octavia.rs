//! Interop with the real Octavia 19.0.0 code (installed into a virtualenv by
//! `scripts/setup-octavia.sh`; `scripts/test` runs this with `--ignored`).
//!
//! * Octavia → heartsink: `tests/interop/octavia_peer.py send` builds heartbeats with Octavia's
//!   own `build_stats_message()` (fed by a stand-in HAProxy stats socket) and sends them with
//!   `UDPStatusSender.dosend()`, plus hand-made ver 2 / ver 1 / legacy messages (one with the
//!   Queens binary tag). Every one must be accepted, and the statuses and stats read back over
//!   the API must be what Octavia's rules give, computed here independently from the messages.
//! * heartsink → Octavia: envelopes built by heartsink are unwrapped by Octavia's
//!   `unwrap_envelope` to the original object.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::Daemon;
use heartsink::proto::envelope::{wrap, TagForm};
use heartsink::proto::keyring::Key;
use serde_json::{json, Value};

fn python() -> PathBuf {
    let p = std::env::var_os("HEARTSINK_OCTAVIA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/peers/octavia/bin/python")));
    assert!(p.exists(), "{} is missing: run scripts/setup-octavia.sh", p.display());
    p
}

fn peer() -> Command {
    let mut c = Command::new(python());
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/octavia_peer.py"));
    c
}

fn member_status(raw: &str) -> &'static str {
    if raw.starts_with("UP") {
        "ONLINE"
    } else if raw.starts_with("DOWN") {
        "ERROR"
    } else {
        match raw {
            "DRAIN" => "DRAINING",
            "MAINT" => "OFFLINE",
            "no check" => "NO_MONITOR",
            other => panic!("the peer sent a status this test does not model: {other}"),
        }
    }
}

/// Octavia's rules (reference §3.3, §3.4), applied to one amphora's messages in order.
fn expected(msgs: &[&Value]) -> Value {
    let last = msgs[msgs.len() - 1];
    let stats_ver = last.get("ver").and_then(Value::as_u64).unwrap_or(2);
    let mut listeners = BTreeMap::new();
    let mut lb = "ONLINE";
    for (id, l) in last["listeners"].as_object().unwrap() {
        let op = match l["status"].as_str().unwrap() {
            "OPEN" => "ONLINE",
            "FULL" => {
                lb = "DEGRADED";
                "DEGRADED"
            }
            other => panic!("unmodelled listener status {other}"),
        };
        let mut stats = l["stats"].clone();
        if stats_ver >= 3 {
            for k in ["tx", "rx", "totconns", "ereq"] {
                let sum: u64 = msgs.iter().filter_map(|m| m["listeners"][id]["stats"][k].as_u64()).sum();
                stats[k] = json!(sum);
            }
        }
        listeners.insert(id.clone(), json!({"operating_status": op, "stats": stats}));
    }
    let status_ver = last.get("ver").and_then(Value::as_u64).unwrap_or(0);
    let mut raw_pools = serde_json::Map::new();
    if status_ver < 2 {
        for l in last["listeners"].as_object().unwrap().values() {
            for (k, p) in l["pools"].as_object().into_iter().flatten() {
                raw_pools.insert(k.clone(), p.clone());
            }
        }
    } else {
        raw_pools = last["pools"].as_object().unwrap().clone();
    }
    let mut pools = BTreeMap::new();
    let mut any_down = false;
    for (k, p) in raw_pools {
        let id = k.rsplit_once(':').map_or(k.as_str(), |(a, _)| a).to_owned();
        let mut op = match p["status"].as_str().unwrap() {
            "UP" => "ONLINE",
            "DOWN" => {
                any_down = true;
                "ERROR"
            }
            other => panic!("unmodelled pool status {other}"),
        };
        let mut members = BTreeMap::new();
        for (m, raw) in p["members"].as_object().unwrap() {
            let s = member_status(raw.as_str().unwrap());
            if s == "ERROR" && op == "ONLINE" {
                op = "DEGRADED";
                if lb == "ONLINE" {
                    lb = "DEGRADED";
                }
            }
            members.insert(m.clone(), s);
        }
        pools.insert(id, json!({"operating_status": op, "members": members}));
    }
    if any_down {
        lb = "ERROR";
    }
    json!({"operating_status": lb, "heartbeats": msgs.len(), "listeners": listeners, "pools": pools})
}

/// The API's view reduced to the same shape as [`expected`].
fn observed(a: &Value) -> Value {
    let listeners: BTreeMap<String, Value> = a["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["reported"] == true)
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_owned(),
                json!({"operating_status": l["operating_status"], "stats": l["stats"]}),
            )
        })
        .collect();
    let pools: BTreeMap<String, Value> = a["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["reported"] == true)
        .map(|p| {
            let members: BTreeMap<String, Value> = p["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["reported"] == true)
                .map(|m| (m["id"].as_str().unwrap().to_owned(), m["operating_status"].clone()))
                .collect();
            (
                p["id"].as_str().unwrap().to_owned(),
                json!({"operating_status": p["operating_status"], "members": members}),
            )
        })
        .collect();
    json!({"operating_status": a["operating_status"], "heartbeats": a["heartbeats"], "listeners": listeners, "pools": pools})
}

#[test]
#[ignore = "needs the Octavia virtualenv: run through scripts/test"]
fn octavia_senders_are_accepted_and_read_back_right() {
    let key = "s3cr3t-ключ";
    let d = Daemon::start(&["--key", key]);
    let out = peer()
        .args(["send", "--target", &d.heartbeat.to_string(), "--key", key, "--amphorae", "4", "--rounds", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "peer failed: {}", String::from_utf8_lossy(&out.stderr));
    let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = sent["sent"].as_array().unwrap();
    assert!(sent.len() >= 16, "4 amphorae x 3 rounds + 4 hand-made messages");
    assert!(sent.iter().any(|m| m["_tag"] == "binary"), "a legacy binary-tag message is part of the run");
    for v in [Some(3), Some(2), Some(1), None] {
        assert!(sent.iter().any(|m| m["ver"].as_u64() == v), "a message of ver {v:?} is part of the run");
    }
    let stats = d.wait_processed(sent.len() as u64);
    assert_eq!(stats["accepted"], sent.len(), "every Octavia heartbeat accepted: {stats}");

    let mut by_id: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for m in sent {
        by_id.entry(m["id"].as_str().unwrap()).or_default().push(m);
    }
    assert_eq!(stats["amphorae"], by_id.len());
    for (id, msgs) in &by_id {
        let (code, a) = d.get(&format!("/v1/amphorae/{id}"));
        assert_eq!(code, 200, "{id}");
        assert_eq!(observed(&a), expected(msgs), "amphora {id}");
        assert_eq!(a["seq"], msgs[msgs.len() - 1]["seq"]);
    }
}

#[test]
#[ignore = "needs the Octavia virtualenv: run through scripts/test"]
fn heartsink_envelopes_are_accepted_by_octavia() {
    let dir = tempfile::tempdir().unwrap();
    let key = "s3cr3t-ключ";
    let msg = common::heartbeat_json(7, 3, 99);
    for (form, name) in [(TagForm::Hex, "hex"), (TagForm::Binary, "binary")] {
        let path = dir.path().join(name);
        std::fs::write(&path, wrap(msg.as_bytes(), &Key::new(key.as_bytes()), form)).unwrap();
        let out = peer().args(["unwrap", "--key", key, path.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stdout));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got, serde_json::from_str::<Value>(&msg).unwrap(), "{name}");
        let out = peer().args(["unwrap", "--key", "other", path.to_str().unwrap()]).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{name}: rejected with another key");
    }
}

/// Octavia's own `UDPStatusSender` with a `controller_ip_port_list` of three cluster members
/// (round-robin over them, one controller per heartbeat): every amphora is alive on every
/// member, which heard only some of its heartbeats itself and the rest through the digests.
#[test]
#[ignore = "needs the Octavia virtualenv and etcd: run through scripts/test"]
fn octavia_round_robin_over_three_cluster_members_is_alive_on_every_member() {
    let key = "cluster-interop-key";
    let etcd = common::etcd::Etcd::single();
    let members: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|node| Daemon::start(&["--key", key, "--node", node, "--etcd", &etcd.endpoint(0), "--no-confd"]))
        .collect();
    // 4 amphorae through one sender: with 3 controllers each amphora's beats rotate over all
    // three across the rounds.
    let mut cmd = peer();
    cmd.args(["send", "--key", key, "--amphorae", "4", "--rounds", "6"]);
    for m in &members {
        cmd.args(["--target", &m.heartbeat.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "peer failed: {}", String::from_utf8_lossy(&out.stderr));
    let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<String> =
        sent["sent"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids.dedup();
    let heard: Vec<u64> = members.iter().map(|m| m.stats()["accepted"].as_u64().unwrap()).collect();
    assert!(heard.iter().all(|n| *n > 0), "every member heard some heartbeats itself: {heard:?}");
    for m in &members {
        common::wait_until("every amphora alive on every member", std::time::Duration::from_secs(15), || {
            let (code, v) = m.get("/v1/amphorae?limit=1000");
            assert_eq!(code, 200);
            let mut alive: Vec<String> = v["amphorae"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["liveness"] == "alive")
                .map(|a| a["id"].as_str().unwrap().to_owned())
                .collect();
            alive.sort();
            (alive == ids).then_some(())
        });
    }
}
