//! `heartsink bench` end to end on loopback, shortened: it starts `serve`, drives it with the
//! pre-built load, and writes a report whose figures hang together.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::Command;

use serde_json::Value;

/// The bench runs measure a daemon and its load generators on a two-core machine: one at a
/// time, so that a run's short measurement windows are not starved by another's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn pipeline_only_applies_every_heartbeat() {
    let _serial = one_at_a_time();
    let out =
        Command::new(env!("CARGO_BIN_EXE_heartsink")).args(["bench", "--pipeline-only", "3000"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["accepted"], 3000);
}

#[test]
fn short_bench_without_octavia_writes_a_consistent_report() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args([
            "bench",
            "--skip-octavia",
            "--skip-ganeti",
            "--seconds",
            "0.5",
            "--amphorae",
            "200",
            "--steps",
            "0.2,0.5",
            // A debug build's pipeline is ten times slower: keep the ingest beside confd light,
            // so that confd is measured, not starved.
            "--ingest-rate",
            "2000",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    assert!(doc["in_process_bound"].as_f64().unwrap() > 0.0);
    let e2e = &doc["heartsink_e2e"];
    assert!(e2e["accepted"].as_u64().unwrap() > 0);
    assert!(e2e["accepted"].as_u64().unwrap() <= e2e["sent"].as_u64().unwrap());
    assert!(e2e["p99_us"].as_f64().unwrap() >= e2e["p50_us"].as_f64().unwrap());
    let steps = doc["heartsink_steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for s in steps {
        assert!(s["offered"].as_f64().unwrap() > 0.0);
        assert!(s["accepted"].as_u64().unwrap() > 0);
    }
    let ratio = doc["ratios"]["e2e_over_in_process"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio.is_finite());
    let svg = std::fs::read_to_string(dir.path().join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("heartsink"));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("in-process bound") && table.contains("ratios"));
    assert!(doc["confd"]["heartsink"]["replies"].as_u64().unwrap() > 0);
}

#[test]
fn confd_only_measures_heartsink_and_merges_into_the_report() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.json"), br#"{"in_process_bound": 1.5}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(["bench", "--confd-only", "--skip-ganeti", "--seconds", "0.5", "--amphorae", "50"])
        .args(["--ingest-rate", "2000", "--confd-threads", "1", "--confd-window", "8"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    assert_eq!(doc["in_process_bound"], 1.5, "the earlier report is kept");
    let c = &doc["confd"];
    for k in ["heartsink", "heartsink_amphora_health"] {
        let r = &c[k];
        assert!(r["replies"].as_u64().unwrap() > 0, "{k}: {r}");
        assert!(r["replies"].as_u64().unwrap() <= r["sent"].as_u64().unwrap());
        assert_eq!(r["bad"], 0);
        assert!(r["verified"].as_u64().unwrap() > 0);
        assert!(r["replies_per_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(c["heartsink_amphora_health_found"], true);
    assert_eq!(c["ganeti_confd"], Value::Null);
    assert_eq!(c["ganeti_confd_skipped"], "--skip-ganeti");
    assert!(c["ingest"]["accepted_during_confd"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["heartsink_confd_stats"]["dropped"]["bad_hmac"], 0);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("AMPHORA_HEALTH") && table.contains("skipped"), "{table}");
}
