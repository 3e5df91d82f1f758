//! `heartsink load` against the real daemon on loopback: what the generator reports sending is
//! exactly what the daemon accounts for, fault kind by fault kind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::process::Command;

use common::Daemon;
use serde_json::Value;

fn load(args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_heartsink")).arg("load").args(args).output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn generator_report_matches_the_daemon_counters() {
    let d = Daemon::start(&["--key", "k"]);
    let target = d.heartbeat.to_string();
    let (code, r, err) = load(&[
        "--target",
        &target,
        "--key",
        "k",
        "--amphorae",
        "50",
        "--listeners",
        "2",
        "--pools",
        "2",
        "--members",
        "4",
        "--rate",
        "4000",
        "--count",
        "4000",
        "--bad-tag-pct",
        "3",
        "--garbage-pct",
        "3",
        "--replay-pct",
        "3",
        "--oversize-pct",
        "1",
        "--wrong-key-pct",
        "3",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(r["total"], 4000);
    let sent = &r["sent"];
    let n = |k: &str| sent[k].as_u64().unwrap();
    assert!(n("bad_tag") > 0 && n("garbage") > 0 && n("replay") > 0 && n("oversize") > 0 && n("wrong_key") > 0, "{r}");
    let s = d.wait_processed(4000);
    let dropped = |k: &str| s["dropped"][k].as_u64().unwrap();
    assert_eq!(s["accepted"].as_u64().unwrap(), n("good"), "{s}");
    assert_eq!(dropped("replay"), n("replay"));
    assert_eq!(dropped("no_key_matched"), n("wrong_key"));
    assert_eq!(dropped("too_large"), n("oversize"));
    // Garbage is too short or has no valid tag; a malformed tag is a bad tag.
    assert_eq!(dropped("bad_tag") + dropped("too_short"), n("bad_tag") + n("garbage"));
    assert_eq!(s["amphorae"], 50);
    assert_eq!(
        s["latency_us"]["send_to_applied"]["count"].as_u64().unwrap(),
        n("good"),
        "every good heartbeat carries its send time"
    );
    assert_eq!(
        s["latency_us"]["receive_to_applied"]["count"].as_u64().unwrap(),
        n("good"),
        "kernel receive timestamps"
    );
    // The shape arrives as configured.
    let (_, list) = d.get("/v1/amphorae?limit=1");
    let id = list["amphorae"][0]["id"].as_str().unwrap();
    let (_, a) = d.get(&format!("/v1/amphorae/{id}"));
    assert_eq!(a["listeners"].as_array().unwrap().len(), 2);
    assert_eq!(a["pools"].as_array().unwrap().len(), 2);
    assert!(a["pools"].as_array().unwrap().iter().all(|p| p["members"].as_array().unwrap().len() == 4));
    assert_eq!(a["operating_status"], "ONLINE");
}

#[test]
fn generator_refuses_remote_targets_and_bad_mixes() {
    let (code, _, err) = load(&["--target", "192.0.2.1:5555", "--count", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--allow-remote"), "{err}");
    let (code, _, err) = load(&["--count", "1", "--garbage-pct", "60", "--replay-pct", "50"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("fault mix"), "{err}");
}

/// Runs `heartsink load` at three UDP sockets of the test's own and returns, per socket, the
/// (amphora id, seq) of every datagram it received, with the report.
fn load_to_three(extra: &[&str]) -> (Vec<Vec<(String, u64)>>, Value) {
    use heartsink::proto::envelope::verify;
    use heartsink::proto::inflate::{Backend, Inflater};
    use heartsink::proto::keyring::Keyring;

    let sinks: Vec<std::net::UdpSocket> = (0..3).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<String> = sinks.iter().map(|s| s.local_addr().unwrap().to_string()).collect();
    let mut args = vec!["--key", "k", "--amphorae", "6", "--count", "60", "--rate", "20000", "--json"];
    for a in &addrs {
        args.extend(["--target", a.as_str()]);
    }
    args.extend_from_slice(extra);
    let (code, report, err) = load(&args);
    assert_eq!(code, Some(0), "{err}");

    let keys = Keyring::from_strs(&["k"], 0);
    let mut inflater = Inflater::new(Backend::ZlibRs, 1 << 20);
    let mut got = Vec::new();
    for s in &sinks {
        s.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 65536];
        let mut beats = Vec::new();
        // Everything was sent before the generator exited: drain until a quiet 500 ms.
        while let Ok(n) = s.recv(&mut buf) {
            let env = verify(&buf[..n], &keys).expect("a signed heartbeat");
            let v: Value = serde_json::from_slice(inflater.inflate(&env).unwrap()).unwrap();
            beats.push((v["id"].as_str().unwrap().to_owned(), v["seq"].as_u64().unwrap()));
            assert!(beats.len() <= 60);
        }
        got.push(beats);
    }
    (got, report)
}

#[test]
fn several_targets_get_each_amphoras_heartbeats_in_rotation() {
    for extra in [&["--threads", "2"][..], &["--prebuilt"][..]] {
        let (got, r) = load_to_three(extra);
        assert_eq!(r["total"], 60, "{extra:?}");
        // Per amphora: seq -> the target it went to.
        let mut by_amphora: std::collections::BTreeMap<String, Vec<(u64, usize)>> = Default::default();
        for (t, beats) in got.iter().enumerate() {
            for (id, seq) in beats {
                by_amphora.entry(id.clone()).or_default().push((*seq, t));
            }
        }
        assert_eq!(by_amphora.len(), 6, "{extra:?}");
        let mut firsts = std::collections::BTreeSet::new();
        for (id, mut beats) in by_amphora {
            beats.sort();
            assert_eq!(beats.len(), 10, "{id}: {beats:?}");
            assert!(beats.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64), "{id}: every seq once: {beats:?}");
            for w in beats.windows(2) {
                assert_eq!(
                    w[1].1,
                    (w[0].1 + 1) % 3,
                    "{extra:?} {id}: consecutive heartbeats go to the next target: {beats:?}"
                );
            }
            firsts.insert(beats[0].1);
        }
        assert_eq!(firsts.len(), 3, "the amphorae start their rotations on different targets");
        // The report counts per target what each target received.
        let targets = r["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 3);
        for (t, beats) in got.iter().enumerate() {
            assert_eq!(beats.len(), 20, "{extra:?}: an even share");
            assert_eq!(targets[t]["sent"], 20, "{r}");
            assert_eq!(targets[t]["errors"], 0, "{r}");
        }
        assert_eq!(r["target"].as_str().unwrap().split(',').count(), 3);
    }
}

#[test]
fn one_target_reports_it_and_mixed_families_are_refused() {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = sink.local_addr().unwrap().to_string();
    let (code, r, err) = load(&["--target", &target, "--count", "10", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(r["target"], target.as_str());
    assert_eq!(r["targets"][0]["target"], target.as_str());
    assert_eq!(r["targets"][0]["sent"], 10);
    let (code, _, err) = load(&["--target", &target, "--target", "[::1]:5555", "--count", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("IPv4 or all be IPv6"), "{err}");
    let (code, _, err) = load(&["--target", &target, "--target", "192.0.2.1:5555", "--count", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--allow-remote"), "{err}");
}
