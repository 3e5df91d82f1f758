//! Cluster mode's control plane with real processes: volumes, machines, pools and locks kept
//! in a real 3-member etcd, written on any of three `heartsink serve` members, placed by the
//! leader only, and answered alike by every member, through `kill -9` of the leader.
//! Every wait is bounded; every process is killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::*;
use common::etcd::Etcd;
use common::wait_until;
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

/// A machine's agent: its registration pushed to one member every 0.4 s until stopped.
struct Machine {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Machine {
    fn start(to: &Member, name: &str, port: u16, free: u64) -> Machine {
        let stop = Arc::new(AtomicBool::new(false));
        let url = to.d.url("/v1/services");
        let body = json!([{"type": "machine", "addr": format!("127.0.0.1:{port}"),
            "tags": {"tag.service_id": name, "tag.labels": "ssd", "stat.free_bytes": free}}]);
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let _ = ureq::post(&url).timeout(Duration::from_secs(2)).send_json(body.clone());
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        Machine { stop, thread: Some(thread) }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn volumes(m: &Member) -> Vec<Value> {
    let (code, v) = request(m, "GET", "/v1/volumes", None);
    assert_eq!(code, 200, "{v}");
    v["volumes"].as_array().cloned().unwrap_or_default()
}

/// id → (node, state) of every volume a member answers with.
fn placement(m: &Member) -> BTreeMap<u64, (String, String)> {
    volumes(m)
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().unwrap_or(0),
                (v["node"].as_str().unwrap_or("").to_owned(), v["state"].as_str().unwrap_or("").to_owned()),
            )
        })
        .collect()
}

fn services(m: &Member, kind: &str) -> Vec<Value> {
    let (code, v) = request(m, "GET", &format!("/v1/services?type={kind}"), None);
    assert_eq!(code, 200, "{v}");
    v.as_array().cloned().or_else(|| v["services"].as_array().cloned()).unwrap_or_default()
}

fn by_name<'a>(all: &'a [Member], name: &str) -> &'a Member {
    all.iter().find(|m| m.name == name).unwrap()
}

/// Creates a volume on `m`: its id once acknowledged (201), `None` when refused retryably
/// (503 with `Retry-After`, during a leader change).
fn create(m: &Member, size: u64) -> Option<u64> {
    let (code, v) = request(m, "POST", "/v1/volumes", Some(json!({"size": size, "constraints": ["ssd"]})));
    match code {
        201 => Some(v["id"].as_u64().expect("an id")),
        503 | 0 => None,
        other => panic!("volume create on {}: {other} {v}", m.name),
    }
}

#[test]
fn volumes_pools_and_locks_live_in_etcd_and_survive_the_leaders_kill() {
    let etcd = Etcd::three();
    let mut all: Vec<Member> = ["a", "b", "c"].iter().map(|n| member(n, &etcd)).collect();
    let refs: Vec<&Member> = all.iter().collect();
    let lead = leader(&refs, Duration::from_secs(20));
    let followers: Vec<String> = all.iter().map(|m| m.name.clone()).filter(|n| *n != lead).collect();
    let (f1, f2) = (by_name(&all, &followers[0]), by_name(&all, &followers[1]));

    // Two machines, each talking to one follower only: every member's registry has both.
    let mut m0 = Machine::start(f1, "m0", 7100, 100 * GIB);
    let _m1 = Machine::start(f2, "m1", 7101, 100 * GIB);
    wait_until("both machines on every member", Duration::from_secs(10), || {
        all.iter().all(|m| services(m, "machine").len() == 2).then_some(())
    });

    // A pool defined on a follower is served by every member; a lock set on a follower holds
    // everywhere.
    let (code, v) = request(f1, "POST", "/v1/pools", Some(json!({"name": "fast", "targets": "1,rawx"})));
    assert_eq!(code, 201, "pool create forwarded to the leader: {v}");
    let (code, v) = request(
        f2,
        "POST",
        "/v1/services",
        Some(json!([{"type": "rawx", "addr": "127.0.0.1:7200", "tags": {"stat.cpu": 90, "stat.io": 90}}])),
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = request(
        f1,
        "POST",
        "/v1/services/lock",
        Some(json!([{"type": "rawx", "addr": "127.0.0.1:7200", "score": 42}])),
    );
    assert_eq!(code, 200, "lock forwarded to the leader: {v}");
    wait_until("the pool and the lock on every member within a second", Duration::from_secs(1), || {
        all.iter()
            .all(|m| {
                let pools = request(m, "GET", "/v1/pools", None).1;
                let rawx = services(m, "rawx");
                pools["fast"].is_string() && rawx.len() == 1 && rawx[0]["locked"] == true && rawx[0]["score"] == 42
            })
            .then_some(())
    });

    // Volumes created on a follower are placed by the leader, and every member agrees.
    let mut acked: Vec<u64> = (0..10).filter_map(|_| create(f2, GIB)).collect();
    assert_eq!(acked.len(), 10, "a follower forwards creates to a live leader");
    wait_until("10 volumes placed, the same on every member", Duration::from_secs(10), || {
        let views: Vec<BTreeMap<u64, (String, String)>> = all.iter().map(placement).collect();
        (views[0].len() == 10 && views[0].values().all(|(n, _)| !n.is_empty()) && views.iter().all(|v| *v == views[0]))
            .then_some(())
    });

    // kill -9 the leader in the middle of a burst of creates (sent to a follower): every
    // acknowledged volume exists afterwards and is placed exactly once.
    let burst_to = f2.d.url("/v1/volumes");
    let burst = std::thread::spawn(move || {
        let mut ids = Vec::new();
        for _ in 0..40 {
            let r = ureq::post(&burst_to)
                .timeout(Duration::from_secs(10))
                .send_json(json!({"size": GIB, "constraints": ["ssd"]}));
            if let Ok(r) = r {
                if r.status() == 201 {
                    let v: Value = r.into_json().unwrap();
                    ids.push(v["id"].as_u64().unwrap());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ids
    });
    std::thread::sleep(Duration::from_millis(500));
    let killed = lead.clone();
    {
        let l = all.iter_mut().find(|m| m.name == killed).unwrap();
        l.d.child.kill().unwrap();
        let _ = l.d.child.wait();
    }
    let burst_acked = burst.join().unwrap();
    eprintln!("burst: {} of 40 creates acknowledged around the kill", burst_acked.len());
    acked.extend(burst_acked);
    let live: Vec<&Member> = all.iter().filter(|m| m.name != killed).collect();
    let new_lead = leader(&live, Duration::from_secs(20));
    assert_ne!(new_lead, killed);
    // Creates go through again once the new leader leads.
    let more: Vec<u64> = (0..5).filter_map(|_| create(live[0], GIB)).collect();
    assert_eq!(more.len(), 5, "creates are taken again under the new leader");
    acked.extend(more);
    acked.sort_unstable();
    acked.dedup();
    let settled =
        wait_until("every acknowledged volume placed, the same on both live members", Duration::from_secs(20), || {
            let views: Vec<BTreeMap<u64, (String, String)>> = live.iter().map(|m| placement(m)).collect();
            let placed = acked.iter().all(|id| views[0].get(id).is_some_and(|(n, _)| !n.is_empty()));
            (placed && views[1] == views[0]).then(|| views[0].clone())
        });
    // None lost; none placed twice (the placement holds still: no second placement later);
    // none over-committed (200 GiB of machines, at most that promised).
    assert!(acked.iter().all(|id| settled.contains_key(id)), "acknowledged volumes lost: {acked:?} vs {settled:?}");
    std::thread::sleep(Duration::from_secs(2));
    let later = placement(live[0]);
    for (id, (node, _)) in &settled {
        assert_eq!(later.get(id).map(|(n, _)| n.as_str()), Some(node.as_str()), "volume {id} moved without cause");
    }
    let promised: u64 = settled.len() as u64 * GIB;
    assert!(promised <= 200 * GIB, "over-committed: {promised}");
    // The lock and the pool survived the leader change.
    for m in &live {
        let rawx = services(m, "rawx");
        assert_eq!((rawx[0]["locked"].clone(), rawx[0]["score"].clone()), (json!(true), json!(42)), "{}", m.name);
        assert!(request(m, "GET", "/v1/pools", None).1["fast"].is_string());
    }

    // m0's agent stops (it talked to a follower): its volumes are placed again, once, on m1,
    // within heartbeat_timeout and a few ticks.
    let on_m0: Vec<u64> = settled.iter().filter(|(_, (n, _))| n == "m0").map(|(id, _)| *id).collect();
    assert!(!on_m0.is_empty(), "m0 held volumes: {settled:?}");
    m0.stop();
    let healed = wait_until("m0's volumes on m1", Duration::from_secs_f64(TIMEOUT + 10.0), || {
        let p = placement(live[0]);
        on_m0.iter().all(|id| p.get(id).is_some_and(|(n, _)| n == "m1")).then_some(p)
    });
    assert!(healed.values().all(|(n, _)| n == "m1"), "every volume on m1 now: {healed:?}");
    eprintln!("{}", logs(&live));
}

/// A single-mode data directory with volumes and a pool is refused by cluster mode (the
/// message says how to import it), imported once by `heartsink cluster import` (refused
/// again afterwards), and then served by a member.
#[test]
fn a_single_mode_data_directory_is_refused_then_imported_once() {
    let etcd = Etcd::single();
    let dir = tempfile::tempdir().unwrap();
    let single_args = ["serve", "--heartbeat-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--no-confd"];
    let mut single = common::Daemon::start_raw_in(dir.path(), &single_args);
    let (code, v) = ureq::post(&single.url("/v1/volumes")).send_json(json!({"size": GIB})).map_or_else(
        |e| match e {
            ureq::Error::Status(c, r) => (c, r.into_json::<Value>().unwrap_or_default()),
            e => panic!("{e}"),
        },
        |r| (r.status(), r.into_json().unwrap()),
    );
    assert_eq!(code, 201, "{v}");
    let vol = v["id"].as_u64().unwrap();
    let r = ureq::post(&single.url("/v1/pools")).send_json(json!({"name": "p1", "targets": "1,rawx"})).unwrap();
    assert_eq!(r.status(), 201);
    single.signal(libc::SIGTERM);
    assert!(single.wait_exit(Duration::from_secs(20)).success());

    let endpoints = etcd.endpoints();
    let cluster_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = single_args.iter().map(|s| s.to_string()).collect();
        a.extend(["--node".into(), "a".into(), "--etcd".into(), endpoints[0].clone()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(cluster_args(&[]))
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = refused.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cluster mode on a single-mode directory must refuse to start");
    assert!(err.contains("1 volumes, 1 pools") && err.contains("heartsink cluster import"), "{err}");

    let import = |expect_ok: bool| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
            .args(["cluster", "import", "--data-dir"])
            .arg(dir.path().join("heartsink-data"))
            .args(["--etcd", &endpoints[0]])
            .output()
            .unwrap();
        assert_eq!(out.status.success(), expect_ok, "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report: Value = serde_json::from_str(&import(true)).unwrap();
    assert_eq!((report["volumes"].as_u64(), report["pools"].as_u64()), (Some(1), Some(1)), "{report}");
    import(false);

    let args = cluster_args(&[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let member = common::Daemon::start_raw_in(dir.path(), &refs);
    wait_until("the imported volume and pool served", Duration::from_secs(10), || {
        let (c, v) = member.get(&format!("/v1/volumes/{vol}"));
        let pools = member.get("/v1/pools").1;
        (c == 200 && v["id"] == vol && pools["p1"].is_string()).then_some(())
    });
}
