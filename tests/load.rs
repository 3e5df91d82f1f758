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
