//! Liveness, failover and durable state with the real binary on loopback: fleets sending with
//! `heartsink load`, short timeouts from a config file. Every wait is bounded; every process is
//! killed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, Daemon};
use serde_json::Value;

const KEY: &str = "live-key";

/// heartbeat_timeout 3 s, checks every 0.5 s, processing bound (and suspension tail) 1 s.
fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("heartsink.toml");
    std::fs::write(
        &p,
        format!(
            "[liveness]\nheartbeat_timeout = 3.0\nhealth_check_interval = 0.5\nheartbeat_interval = 1.0\n\
             startup_grace = 1.0\n{extra}\n[service]\nstore_flush_interval = 0.2\nreport_interval = 1.0\n"
        ),
    )
    .unwrap();
    p
}

/// A `heartsink load` child sending to `d`.
struct Fleet(Child);

impl Fleet {
    fn start(d: &Daemon, amphorae: u64, rate: &str, seconds: f64, seed: u64, extra: &[&str]) -> Fleet {
        let child = Command::new(env!("CARGO_BIN_EXE_heartsink"))
            .args(["load", "--target", &d.heartbeat.to_string(), "--key", KEY])
            .args(["--amphorae", &amphorae.to_string(), "--rate", rate])
            .args(["--duration", &seconds.to_string(), "--seed", &seed.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Fleet(child)
    }

    fn wait(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "load did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ids(d: &Daemon) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut marker: Option<String> = None;
    loop {
        let path = match &marker {
            Some(m) => format!("/v1/amphorae?limit=1000&marker={m}"),
            None => "/v1/amphorae?limit=1000".into(),
        };
        let (code, page) = d.get(&path);
        assert_eq!(code, 200);
        for a in page["amphorae"].as_array().unwrap() {
            out.insert(a["id"].as_str().unwrap().to_owned());
        }
        match page["next_marker"].as_str() {
            Some(m) => marker = Some(m.to_owned()),
            None => return out,
        }
    }
}

fn failovers(d: &Daemon) -> Vec<Value> {
    let (code, v) = d.get("/v1/failovers?limit=1000");
    assert_eq!(code, 200, "{v}");
    v["failovers"].as_array().unwrap().clone()
}

fn amphorae_of(records: &[Value]) -> BTreeSet<String> {
    records.iter().map(|r| r["amphora"].as_str().unwrap().to_owned()).collect()
}

/// Starts fleet A (40 amphorae) and, once A is known, fleet B (10 amphorae, 3 s); returns
/// the two id sets.
fn two_fleets(d: &Daemon, a_seconds: f64) -> (Fleet, Fleet, BTreeSet<String>, BTreeSet<String>) {
    let a = Fleet::start(d, 40, "200", a_seconds, 1, &[]);
    let a_ids = wait_until("fleet A known", Duration::from_secs(10), || {
        let s = ids(d);
        (s.len() == 40).then_some(s)
    });
    let b = Fleet::start(d, 10, "50", 3.0, 2, &[]);
    let all = wait_until("fleet B known", Duration::from_secs(10), || {
        let s = ids(d);
        (s.len() == 50).then_some(s)
    });
    let b_ids: BTreeSet<String> = all.difference(&a_ids).cloned().collect();
    assert_eq!(b_ids.len(), 10);
    (a, b, a_ids, b_ids)
}

#[test]
fn stopped_senders_fail_over_exactly_once_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("actions");
    std::fs::create_dir(&out).unwrap();
    // One file per action run (the shell's pid): concurrent runs do not interleave.
    let cfg = config(
        tmp.path(),
        &format!(
            "[failover]\naction = \"command\"\ncommand = [\"sh\", \"-c\", \"cat > {}/rec-$$.json\"]\n",
            out.display()
        ),
    );
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "--key", KEY]);
    let (mut fleet_a, mut fleet_b, a_ids, b_ids) = two_fleets(&d, 12.0);
    fleet_b.wait(Duration::from_secs(10));
    let records = wait_until("10 failovers done", Duration::from_secs(10), || {
        let r = failovers(&d);
        (r.len() >= 10 && r.iter().all(|x| x["state"] == "done")).then_some(r)
    });
    assert_eq!(amphorae_of(&records), b_ids, "exactly the stopped fleet fails over");
    assert!(amphorae_of(&records).is_disjoint(&a_ids));
    for r in &records {
        assert_eq!(r["reason"], "stale");
        // Declared stale within heartbeat_timeout (3 s) + health_check_interval (0.5 s) of the
        // last refresh, by the daemon's own clock (1 s of slack for a loaded machine).
        let silent = (r["stale_since_ns"].as_u64().unwrap() - r["last_seen_ns"].as_u64().unwrap()) as f64 / 1e9;
        assert!((3.0..=3.5 + 1.0).contains(&silent), "declared stale {silent} s after the last refresh: {r}");
    }
    // The command action got each record as JSON on stdin.
    let files: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 10, "one action run per failover");
    let got: BTreeSet<String> = files
        .iter()
        .map(|f| {
            serde_json::from_slice::<Value>(&std::fs::read(f).unwrap()).unwrap()["amphora"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(got, b_ids);
    // Once: still ten records two timeouts later, while fleet A keeps beating.
    std::thread::sleep(Duration::from_secs(4));
    let again = failovers(&d);
    assert_eq!(again.len(), 10, "no second failover: {again:?}");
    // The listing shows liveness.
    let (_, page) = d.get("/v1/amphorae?limit=1000");
    for a in page["amphorae"].as_array().unwrap() {
        let id = a["id"].as_str().unwrap();
        let want = if b_ids.contains(id) { "stale" } else { "alive" };
        assert_eq!(a["liveness"], want, "{a}");
    }
    fleet_a.wait(Duration::from_secs(20));
}

#[test]
fn flood_does_not_fail_over_healthy_senders() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "");
    // One worker, a small socket buffer: a flood makes heartsink drop packets itself.
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "--key", KEY, "--workers", "1", "--rcvbuf", "65536"]);
    let fleet = Fleet::start(&d, 20, "100", 14.0, 1, &[]);
    let healthy = wait_until("fleet known", Duration::from_secs(10), || {
        let s = ids(&d);
        (s.len() == 20).then_some(s)
    });
    std::thread::sleep(Duration::from_secs(2));
    // The flood: as fast as the generator can, 4 threads, large messages, for 5 s.
    let mut flood = Fleet::start(
        &d,
        20_000,
        "max",
        5.0,
        7,
        &["--threads", "4", "--listeners", "8", "--pools", "8", "--members", "8"],
    );
    let mut saw_suspended = false;
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        let s = d.stats();
        if s["liveness"]["suspended"].as_array().is_some_and(|v| v.iter().any(|r| r["reason"] == "overloaded")) {
            saw_suspended = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    flood.wait(Duration::from_secs(10));
    // Give the healthy fleet time to be seen again and the checks to settle.
    std::thread::sleep(Duration::from_secs(2));
    let s = d.stats();
    assert!(
        s["kernel_drops"].as_u64().unwrap() + s["dropped"]["ring_full"].as_u64().unwrap() > 0,
        "the flood overloaded nothing: {s}"
    );
    assert!(saw_suspended, "failovers were never suspended as overloaded: {s}");
    let records = failovers(&d);
    let failed_over = amphorae_of(&records);
    assert!(failed_over.is_disjoint(&healthy), "healthy amphorae failed over: {records:?}");
    drop(fleet);
}

#[test]
fn kill_9_and_restart_keeps_state_and_does_not_storm() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "");
    let args = ["--config", cfg.to_str().unwrap(), "--key", KEY];
    let mut d = Daemon::start_in(tmp.path(), &args);
    let (mut fleet_a, mut fleet_b, a_ids, b_ids) = two_fleets(&d, 10.0);
    fleet_b.wait(Duration::from_secs(10));
    let before = wait_until("fleet B failed over", Duration::from_secs(10), || {
        let r = failovers(&d);
        (r.len() == 10 && r.iter().all(|x| x["state"] == "done")).then_some(r)
    });
    // Give the write-behind two flush intervals, then kill -9.
    std::thread::sleep(Duration::from_millis(600));
    let (_, health_before) = d.get("/v1/amphorae?limit=1000");
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let _ = fleet_a.0.kill();

    let d2 = Daemon::start_in(tmp.path(), &args);
    // Known again at once, before any heartbeat, with their last health.
    let (_, health_after) = d2.get("/v1/amphorae?limit=1000");
    let statuses = |v: &Value| -> Vec<(String, String, String)> {
        v["amphorae"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["id"].as_str().unwrap().to_owned(),
                    a["operating_status"].as_str().unwrap().to_owned(),
                    a["liveness"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(statuses(&health_after), statuses(&health_before));
    assert_eq!(d2.stats()["amphorae"], 50);
    let after = failovers(&d2);
    assert_eq!(after.len(), 10);
    assert_eq!(amphorae_of(&after), amphorae_of(&before));
    assert!(after.iter().all(|r| r["state"] == "done"));
    // The fleet comes back (seq continues past the stored window); no storm after the grace.
    let _fleet_a2 = Fleet::start(&d2, 40, "200", 8.0, 1, &["--first-seq", "1000000"]);
    std::thread::sleep(Duration::from_secs(6));
    let later = failovers(&d2);
    assert_eq!(later.len(), 10, "no new failover after the restart: {later:?}");
    assert!(amphorae_of(&later).is_disjoint(&a_ids));
    assert_eq!(amphorae_of(&later), b_ids);
    let s = d2.stats();
    assert!(s["accepted"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn admin_api_manual_failover_forget_and_expected_listeners() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "");
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "--key", KEY]);
    let sock = common::client();
    for i in 0..3u64 {
        sock.send_to(&common::heartbeat(i, 1, 1, KEY), d.heartbeat).unwrap();
    }
    wait_until("3 amphorae", Duration::from_secs(10), || (ids(&d).len() == 3).then_some(()));
    let a0 = common::uuid(1, 0);
    let post = |path: &str| match ureq::post(&d.url(path)).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_json::<Value>().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json::<Value>().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let (code, rec) = post(&format!("/v1/amphorae/{a0}/failover"));
    assert_eq!(code, 202, "{rec}");
    assert_eq!(rec["reason"], "manual");
    let id = rec["id"].as_u64().unwrap();
    let done = wait_until("manual failover done", Duration::from_secs(10), || {
        let (c, r) = d.get(&format!("/v1/failovers/{id}"));
        (c == 200 && r["state"] == "done").then_some(r)
    });
    assert_eq!(done["amphora"], a0.as_str());
    assert_eq!(post("/v1/amphorae/00000000-0000-4000-8000-000000000999/failover").0, 404);
    assert_eq!(d.get("/v1/failovers/999").0, 404);

    // Expected listeners: the heartbeats carry 1 listener; expecting 2 stops the refresh.
    let patch = |body: &str| match ureq::patch(&d.url(&format!("/v1/amphorae/{}", common::uuid(1, 1))))
        .timeout(Duration::from_secs(5))
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_json::<Value>().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json::<Value>().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let lb = common::uuid(9, 1);
    let (code, v) = patch(&format!(r#"{{"expected_listeners": 2, "load_balancer": "{lb}"}}"#));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["expected_listeners"], 2);
    assert_eq!(patch(r#"{"expected_listenerz": 2}"#).0, 400);
    assert_eq!(patch("[1]").0, 400);
    sock.send_to(&common::heartbeat(1, 2, 1, KEY), d.heartbeat).unwrap();
    wait_until("a listener-count mismatch counted", Duration::from_secs(10), || {
        let (_, a) = d.get(&format!("/v1/amphorae/{}", common::uuid(1, 1)));
        (a["listener_count_mismatches"] == 1).then_some(())
    });
    let (_, a) = d.get(&format!("/v1/amphorae/{}", common::uuid(1, 1)));
    assert_eq!(a["load_balancer"], lb.as_str());

    // Forget: gone from the listing and the store; a new heartbeat makes it new again.
    let del = ureq::delete(&d.url(&format!("/v1/amphorae/{}", common::uuid(1, 2)))).call().unwrap();
    assert_eq!(del.status(), 200);
    assert!(!ids(&d).contains(&common::uuid(1, 2)));
    assert_eq!(d.get(&format!("/v1/amphorae/{}", common::uuid(1, 2))).0, 404);
    sock.send_to(&common::heartbeat(2, 5, 1, KEY), d.heartbeat).unwrap();
    wait_until("forgotten amphora back as new", Duration::from_secs(10), || {
        ids(&d).contains(&common::uuid(1, 2)).then_some(())
    });
}

#[test]
fn healthz_reports_the_control_thread_and_stats_report_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "");
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(d.get("/healthz").0, 200);
    let s = wait_until("self report ran", Duration::from_secs(10), || {
        let s = d.stats();
        s["liveness"]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "report_state" && t["runs"].as_u64().unwrap() >= 1)
            .then_some(s)
    });
    assert!(s["liveness"]["store"]["path"].as_str().unwrap().ends_with("heartsink.redb"), "{s}");
    wait_until("the report committed", Duration::from_secs(10), || {
        (d.stats()["liveness"]["store"]["commits"].as_u64().unwrap() >= 1).then_some(())
    });
    // Startup grace over after 1 s: not suspended.
    let s = wait_until("grace over", Duration::from_secs(10), || {
        let s = d.stats();
        (s["liveness"]["failovers_suspended"] == false).then_some(s)
    });
    assert_eq!(s["liveness"]["stale"], 0);
    // SIGSTOP the daemon for longer than the tick limit: /healthz is not answered while it is
    // stopped, and a stall is reported once it runs again.
    d.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    d.signal(libc::SIGCONT);
    let s = wait_until("stall noticed", Duration::from_secs(5), || {
        let s = d.stats();
        s["liveness"]["suspended"].as_array().unwrap().iter().any(|r| r["reason"] == "control_stalled").then_some(s)
    });
    assert_eq!(s["liveness"]["failovers_suspended"], true);
}
