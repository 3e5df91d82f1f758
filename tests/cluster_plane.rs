//! Cluster mode's control plane with real processes: volumes, machines, pools and locks kept
//! in a real 3-member etcd, written on any of three `heartsink serve` members, placed by the
//! leader only, and answered alike by every member, through `kill -9` of the leader.
//! Every wait is bounded; every process is killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    // An import that stopped half-way (its marker and one row in etcd) is resumed from the
    // same directory only, and the marker goes with the last write.
    let client = heartsink::etcd::Client::new(endpoints.clone(), Duration::from_secs(5)).unwrap();
    client.put("/heartsink/tables/meta/importing", b"\"/elsewhere\"", None).unwrap();
    client.put(format!("/heartsink/tables/volumes/{vol:020}"), b"{}", None).unwrap();
    import(false);
    let ours = serde_json::to_vec(&dir.path().join("heartsink-data").display().to_string()).unwrap();
    client.put("/heartsink/tables/meta/importing", ours, None).unwrap();
    let report: Value = serde_json::from_str(&import(true)).unwrap();
    assert!(client.get("/heartsink/tables/meta/importing").unwrap().0.is_none(), "the marker is gone");
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

/// Latency of `POST /v1/volumes` until the volume is placed, p50 / p99 / max of `n`
/// sequential creates sent to `to` (placement is observed by polling `at` every 5 ms).
fn create_to_placed(to: &Member, at: &Member, n: usize) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = (0..n)
        .map(|_| {
            let t0 = std::time::Instant::now();
            let id = create(to, GIB).expect("created");
            loop {
                let (_, v) = request(at, "GET", &format!("/v1/volumes/{id}"), None);
                if let Some(node) = v["node"].as_str().filter(|n| !n.is_empty()) {
                    let took = t0.elapsed().as_secs_f64() * 1e3;
                    // The machine's agent reports it made (as Cobalt's agent does).
                    let (code, r) = request(
                        to,
                        "POST",
                        &format!("/v1/volumes/{id}/state"),
                        Some(json!({"machine": node, "state": "ready"})),
                    );
                    assert_eq!(code, 200, "{r}");
                    break took;
                }
                assert!(t0.elapsed() < Duration::from_secs(10), "volume {id} not placed");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[n / 2], ms[(n * 99 / 100).min(n - 1)], ms[n - 1])
}

fn etcd_keys_written(m: &Member) -> u64 {
    request(m, "GET", "/v1/cluster", None).1["etcd"]["writes"].as_u64().unwrap_or(0)
}

/// The README's cluster control-plane figures (run by hand: `cargo test --release --test
/// cluster_plane -- --ignored --nocapture`): create-to-placed latency in single and cluster
/// mode, etcd keys written per placed volume, and the time a new leader takes to resume
/// scheduling with 100,000 volumes in etcd.
#[test]
#[ignore]
fn measure_control_plane_in_etcd() {
    const N: usize = 100;
    // Single mode.
    {
        let etcd_less = tempfile::tempdir().unwrap();
        let args = ["serve", "--heartbeat-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--no-confd"];
        let d = common::Daemon::start_raw_in(etcd_less.path(), &args);
        let m = Member { name: "single".into(), d, _dir: etcd_less };
        let _machine = Machine::start(&m, "m0", 7300, 1 << 50);
        wait_until("machine", Duration::from_secs(10), || (services(&m, "machine").len() == 1).then_some(()));
        let (p50, p99, max) = create_to_placed(&m, &m, N);
        eprintln!("single: create-to-placed over {N} volumes: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    }
    // Cluster mode: creates sent to a follower.
    let etcd = Etcd::three();
    let mut all: Vec<Member> = ["a", "b", "c"].iter().map(|n| member(n, &etcd)).collect();
    let refs: Vec<&Member> = all.iter().collect();
    let lead = leader(&refs, Duration::from_secs(20));
    let (l, f) = (by_name(&all, &lead), all.iter().find(|m| m.name != lead).unwrap());
    let _machine = Machine::start(f, "m0", 7301, 1 << 50);
    wait_until("machine", Duration::from_secs(10), || {
        all.iter().all(|m| services(m, "machine").len() == 1).then_some(())
    });
    let before = etcd_keys_written(l);
    let (p50, p99, max) = create_to_placed(f, f, N);
    std::thread::sleep(Duration::from_millis(500));
    let keys = etcd_keys_written(l) - before;
    eprintln!(
        "cluster: create (on a follower) to placed (seen on that follower) over {N} volumes: p50 {p50:.1} ms, p99 \
         {p99:.1} ms, max {max:.1} ms; etcd keys written by the leader for create, placement and the ready report: {keys} ({:.2} per volume)",
        keys as f64 / N as f64
    );
    // 100,000 volumes written straight into etcd (as a leader would have), then the leader
    // killed: the successor's resume.
    let template = request(l, "GET", "/v1/volumes", None).1["volumes"][0].clone();
    let client = heartsink::etcd::Client::new(etcd.endpoints(), Duration::from_secs(5)).unwrap();
    let t = std::time::Instant::now();
    for chunk in (1_000u64..101_000).collect::<Vec<_>>().chunks(100) {
        let ops = chunk.iter().map(|id| {
            let mut v = template.clone();
            v["id"] = json!(id);
            v["requested"]["reserved_size"] = json!(1 << 20);
            heartsink::etcd::TxnOp::put(
                format!("/hs-test/tables/volumes/{id:020}"),
                serde_json::to_vec(&v).unwrap(),
                None,
            )
        });
        client.txn(&heartsink::etcd::Txn::new().and_then(ops)).unwrap();
    }
    eprintln!("wrote 100,000 volumes to etcd in {:.1} s", t.elapsed().as_secs_f64());
    wait_until("followers mirror 100,000 volumes", Duration::from_secs(60), || {
        all.iter().filter(|m| m.name != lead).all(|m| volumes(m).len() > 100_000).then_some(())
    });
    let killed = Instant::now();
    {
        let l = all.iter_mut().find(|m| m.name == lead).unwrap();
        l.d.child.kill().unwrap();
        let _ = l.d.child.wait();
    }
    let live: Vec<&Member> = all.iter().filter(|m| m.name != lead).collect();
    let next = leader(&live, Duration::from_secs(30));
    let elected = killed.elapsed();
    let n = by_name(&all, &next);
    wait_until("the successor schedules", Duration::from_secs(60), || {
        n.d.stderr.lock().unwrap().iter().any(|l| l.contains("leader lease acquired: scheduling")).then_some(())
    });
    let scheduling = killed.elapsed();
    let read = n.d.stderr.lock().unwrap().iter().find(|l| l.contains("read the control plane's state")).cloned();
    eprintln!(
        "kill -9 of the leader with 100,000 volumes in etcd: successor agreed {:.2} s after the kill, scheduling {:.2} \
         s after it; {}",
        elected.as_secs_f64(),
        scheduling.as_secs_f64(),
        read.unwrap_or_default()
    );
}

fn pools(m: &Member) -> Vec<String> {
    let (_, v) = request(m, "GET", "/v1/pools", None);
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// A leader paused (SIGSTOP) past its lease while writes pour in: a follower's own reads and
/// registrations never wait on it (forwards have their own bounded slots), the writes sent to
/// the follower are refused with 503 + `Retry-After` within the forward budget, and when the
/// paused member wakes it holds exactly what etcd holds (nothing it took but etcd refused).
#[test]
fn a_paused_leader_starves_no_follower_and_wakes_up_holding_what_etcd_holds() {
    let etcd = Etcd::three();
    let all: Vec<Member> = ["a", "b", "c"].iter().map(|n| member(n, &etcd)).collect();
    let refs: Vec<&Member> = all.iter().collect();
    let lead = leader(&refs, Duration::from_secs(20));
    let l = by_name(&all, &lead);
    let f = all.iter().find(|m| m.name != lead).unwrap();
    // Pool writes sent straight to the leader the whole time, paused or not.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (l.d.url("/v1/pools"), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let _ = ureq::post(&url)
                    .timeout(Duration::from_secs(15))
                    .send_json(json!({"name": format!("p{i}"), "targets": "1,rawx"}));
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    l.d.signal(libc::SIGSTOP);
    // Twenty writes on their way to the paused leader through the follower.
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let url = f.d.url("/v1/volumes");
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = ureq::post(&url).timeout(Duration::from_secs(20)).send_json(json!({"size": GIB}));
                let code = match r {
                    Ok(r) => r.status(),
                    Err(ureq::Error::Status(c, r)) => {
                        assert!(c != 503 || r.header("retry-after").is_some(), "503 without Retry-After");
                        c
                    }
                    Err(_) => 0,
                };
                (code, t.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(request(f, "GET", "/v1/volumes", None).0, 200);
    let body = json!([{"type": "machine", "addr": "127.0.0.1:7400", "tags": {"tag.service_id": "m0"}}]);
    assert_eq!(request(f, "POST", "/v1/services", Some(body)).0, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "the follower's own calls waited {:?}", t.elapsed());
    for h in flood {
        let (code, took) = h.join().unwrap();
        assert!(code == 503 || code == 201, "a write through the follower: {code}");
        assert!(took < Duration::from_secs(7), "a forward took {took:?}");
    }
    std::thread::sleep(Duration::from_secs(TTL + 2));
    l.d.signal(libc::SIGCONT);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    // Every member, the woken one included, serves exactly the pools etcd holds.
    let client = heartsink::etcd::Client::new(etcd.endpoints(), Duration::from_secs(5)).unwrap();
    wait_until("every member holds what etcd holds", Duration::from_secs(15), || {
        let (kvs, _) = client.range_prefix("/hs-test/tables/pools/").ok()?;
        let mut in_etcd: Vec<String> = kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).trim_start_matches("/hs-test/tables/pools/").to_owned())
            .collect();
        in_etcd.sort();
        all.iter().all(|m| pools(m) == in_etcd).then_some(())
    });
}
