//! The control plane with real processes on loopback: `heartsink agent` watching real local
//! TCP services and heartbeating them to `heartsink serve`; the registry, the pools and the
//! volume scheduler seen through the admin API. Every wait is bounded; every process is killed
//! at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, Daemon};
use serde_json::{json, Value};

const KEY: &str = "plane-key";

fn serve(dir: &std::path::Path) -> Daemon {
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        r#"
[liveness]
heartbeat_timeout = 3.0
health_check_interval = 0.5
heartbeat_interval = 1.0

[registry]
world_refresh_interval = 0.2

[[registry.types]]
name = "echo"
score_expr = "100"
lock_at_first_register = false

[[registry.types]]
name = "machine"
lock_at_first_register = false
score_variation_bound = 0

[scheduler]
tick_interval = 0.2
delay = 2.0
"#,
    )
    .unwrap();
    Daemon::start(&["--config", cfg.to_str().unwrap(), "--key", KEY])
}

struct Agent(Child);

impl Agent {
    fn start(d: &Daemon, dir: &std::path::Path, name: &str, services: &str) -> Agent {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "sinks = [\"{}\"]\nkey = \"{KEY}\"\nrise = 1\nfall = 2\ncheck_interval = 0.2\ntimeout = 0.5\n{services}",
                d.heartbeat
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_heartsink"))
            .arg("agent")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn send(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = ureq::request(method, &d.url(path)).timeout(Duration::from_secs(10));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[test]
fn agent_registers_a_tcp_service_and_pools_stop_returning_it_when_it_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path());
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = up.local_addr().unwrap().port();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let _agent = Agent::start(
        &d,
        tmp.path(),
        "agent",
        &format!(
            "[[service]]\ntype = \"echo\"\nhost = \"127.0.0.1\"\nport = {port}\nservice_id = \"echo-1\"\nlocation = \"dc1.r1.h1\"\nchecks = [{{type = \"tcp\"}}]\n\
             [[service]]\ntype = \"echo\"\nhost = \"127.0.0.1\"\nport = {other_port}\nservice_id = \"echo-2\"\nlocation = \"dc1.r1.h2\"\nchecks = [{{type = \"tcp\"}}]\n"
        ),
    );
    // Registered, scored 100, resolvable, polled.
    let list = wait_until("both services at score 100", Duration::from_secs(10), || {
        let (c, v) = d.get("/v1/services?type=echo");
        (c == 200 && v.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|s| s["score"] == 100))).then_some(v)
    });
    assert!(list.as_array().unwrap().iter().any(|s| s["id"] == "echo-1"));
    let (c, r) = d.get("/v1/services/resolve?type=echo&id=echo-1");
    assert_eq!((c, r["addr"].as_str()), (200, Some(format!("127.0.0.1:{port}").as_str())));
    assert_eq!(d.get("/v1/services/resolve?type=echo&id=nope").0, 404);
    let (c, types) = d.get("/v1/service-types");
    assert_eq!(c, 200);
    assert!(types.as_array().unwrap().iter().any(|t| t == "echo"));
    wait_until("two picks", Duration::from_secs(5), || {
        let (c, v) = d.get("/v1/pools/echo/next?size=2");
        (c == 200 && v["services"].as_array().is_some_and(|a| a.len() == 2)).then_some(())
    });
    // A pool over the type; then stop one service.
    let (c, v) = send(&d, "POST", "/v1/pools", Some(json!({"name": "two", "targets": "2,echo;min_dist=1"})));
    assert_eq!(c, 201, "{v}");
    assert_eq!(send(&d, "POST", "/v1/pools", Some(json!({"name": "two", "targets": "2,echo"}))).0, 409);
    let (c, v) = send(&d, "POST", "/v1/pools/two/poll", Some(json!({"known": ["echo-2"]})));
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["services"][0]["id"], "echo-1", "echo-2 known: the other one is picked");

    drop(up);
    // Hold the port, bound without SO_REUSEADDR and not listening: the checks are refused, and
    // no other process of the test run (which binds port 0 all the time) can take the port and
    // answer them (a full run once saw echo-1 come back up that way).
    let hold = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hold.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    // Down after `fall` (2) failed checks: score 0, still listed, no longer polled.
    wait_until("echo-1 down at score 0", Duration::from_secs(10), || {
        let (_, v) = d.get("/v1/services?type=echo");
        v.as_array()?.iter().find(|s| s["id"] == "echo-1").filter(|s| s["score"] == 0).map(|_| ())
    });
    // The polling world is rebuilt every world_refresh_interval (0.2 s).
    wait_until("pools stop returning it", Duration::from_secs(5), || {
        (0..10)
            .all(|_| {
                let (c, v) = d.get("/v1/pools/echo/next?size=1");
                c == 200 && v["services"][0]["id"] == "echo-2"
            })
            .then_some(())
    });
    for _ in 0..20 {
        let (c, v) = d.get("/v1/pools/echo/next?size=1");
        assert_eq!((c, v["services"][0]["id"].as_str()), (200, Some("echo-2")), "{v}");
    }
    let (c, v) = d.get("/v1/pools/echo/next?size=2");
    assert_eq!(c, 503, "two are asked, one is up: {v}");
    assert!(v["error"].as_str().unwrap().contains("found only"), "{v}");
    let (c, v) = send(&d, "POST", "/v1/pools/two/poll", Some(json!({})));
    assert_eq!(c, 503, "{v}");
    // Registration over HTTP: lock, unlock, deregister, flush.
    let entry = json!({"type": "echo", "addr": format!("127.0.0.1:{other_port}"), "score": 40});
    let (c, v) = send(&d, "POST", "/v1/services/lock", Some(entry.clone()));
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["services"][0]["score"], 40);
    let (c, v) = send(&d, "POST", "/v1/services/unlock", Some(json!([entry])));
    assert_eq!((c, v["services"][0]["locked"].as_bool()), (200, Some(false)));
    let (c, v) = send(&d, "POST", "/v1/services?action=register", Some(json!({"type": "nope", "addr": "127.0.0.1:1"})));
    assert_eq!(c, 400, "{v}");
    let (c, v) = send(&d, "POST", "/v1/services/flush?type=echo", None);
    assert_eq!((c, v["flushed"].as_u64().is_some()), (200, true), "{v}");
    let s = d.stats();
    assert!(s["control_plane"]["service_heartbeats"].as_u64().unwrap() > 0, "{s}");
}

/// Three machines heartbeating with `heartsink agent` (each its own process, watching a real
/// local TCP port, reporting its labels and free space); volumes created over HTTP are placed;
/// killing one machine's agent re-places its volumes within heartbeat_timeout + tick.
#[test]
fn volumes_are_placed_on_machines_and_healed_when_one_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path());
    let ports: Vec<TcpListener> = (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let machine = |i: usize, free: u64, labels: &str| {
        format!(
            "[[service]]\ntype = \"machine\"\nhost = \"127.0.0.1\"\nport = {}\nservice_id = \"m{i}\"\nchecks = [{{type = \"tcp\"}}]\n\
             stats = [{{type = \"static\", stats = {{\"stat.free_bytes\" = {free}}}, tags = {{\"tag.labels\" = \"{labels}\"}}}}]\n",
            ports[i].local_addr().unwrap().port()
        )
    };
    let mut agents: Vec<Option<Agent>> = vec![
        Some(Agent::start(&d, tmp.path(), "m0", &machine(0, 100 << 30, "ssd,eu"))),
        Some(Agent::start(&d, tmp.path(), "m1", &machine(1, 80 << 30, "ssd"))),
        Some(Agent::start(&d, tmp.path(), "m2", &machine(2, 500 << 30, "hdd"))),
    ];
    wait_until("three machines", Duration::from_secs(10), || {
        let (_, v) = d.get("/v1/services?type=machine");
        (v.as_array().map(Vec::len) == Some(3)).then_some(())
    });
    // Three ssd volumes of 40 GiB: the most free space wins, promised space counts.
    let mut ids = Vec::new();
    for i in 0..3 {
        let (c, v) = send(
            &d,
            "POST",
            "/v1/volumes",
            Some(json!({"name": format!("v{i}"), "size": 40u64 << 30, "constraints": ["ssd"]})),
        );
        assert_eq!(c, 201, "{v}");
        assert_eq!(v["state"], "scheduling");
        ids.push(v["id"].as_u64().unwrap());
    }
    // One nobody can hold.
    let (c, big) = send(&d, "POST", "/v1/volumes", Some(json!({"size": 1u64 << 40, "constraints": ["ssd"]})));
    assert_eq!(c, 201);
    let placed = wait_until("three placed", Duration::from_secs(10), || {
        let nodes: Vec<String> = ids
            .iter()
            .map(|id| d.get(&format!("/v1/volumes/{id}")).1["node"].as_str().unwrap_or("").to_owned())
            .collect();
        nodes.iter().all(|n| !n.is_empty()).then_some(nodes)
    });
    let on = |n: &str| placed.iter().filter(|x| *x == n).count();
    assert_eq!(
        (on("m0"), on("m1"), on("m2")),
        (2, 1, 0),
        "100 GiB machine takes two, 80 GiB one, hdd none: {placed:?}"
    );
    let (_, waiting) = d.get(&format!("/v1/volumes/{}", big["id"]));
    assert_eq!(waiting["state"], "scheduling");
    assert!(waiting["waiting_reason"].as_str().is_some_and(|r| !r.is_empty()), "{waiting}");
    // The machine agent reports them ready.
    for (id, node) in ids.iter().zip(&placed) {
        let (c, v) =
            send(&d, "POST", &format!("/v1/volumes/{id}/state"), Some(json!({"machine": node, "state": "ready"})));
        assert_eq!((c, v["state"].as_str()), (200, Some("ready")), "{v}");
    }
    // Illegal: report from another machine, patch of a non-ready volume, unknown state.
    let (c, _) =
        send(&d, "POST", &format!("/v1/volumes/{}/state", ids[0]), Some(json!({"machine": "m2", "state": "ready"})));
    assert_eq!(c, 409);
    let (c, _) = send(&d, "PATCH", &format!("/v1/volumes/{}", big["id"]), Some(json!({"size": 1})));
    assert_eq!(c, 409);
    assert_eq!(d.get("/v1/volumes?state=bogus").0, 400);

    // Kill m0's agent (no final heartbeat): its two volumes go to m1, the only other ssd
    // machine, which still reports 80 GiB free (its agent reports a fixed figure), within
    // heartbeat_timeout + tick.
    let killed = Instant::now();
    agents[0].take();
    let healed = wait_until("volumes of m0 re-placed", Duration::from_secs(10), || {
        let vols: Vec<Value> = ids.iter().map(|id| d.get(&format!("/v1/volumes/{id}")).1).collect();
        vols.iter().all(|v| v["node"] != "m0").then_some(vols)
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(3 + 3), "healing took {took:?}");
    let now_on_m1 = healed.iter().filter(|v| v["node"] == "m1").count();
    assert_eq!(now_on_m1, 3, "one stayed on m1, two moved there: {healed:?}");
    let moved: Vec<&Value> = healed.iter().filter(|v| v["state"] == "scheduling").collect();
    assert_eq!(moved.len(), 2, "the two of m0 are scheduling on m1 until m1 reports: {healed:?}");
    // m1's agent makes them.
    for v in &moved {
        let (c, r) = send(
            &d,
            "POST",
            &format!("/v1/volumes/{}/state", v["id"]),
            Some(json!({"machine": "m1", "state": "ready"})),
        );
        assert_eq!(c, 200, "{r}");
    }
    // No double placement: each volume on one node, and m0 returning steals nothing.
    agents[0] = Some(Agent::start(&d, tmp.path(), "m0", &machine(0, 100 << 30, "ssd,eu")));
    std::thread::sleep(Duration::from_secs(2));
    let (_, list) = d.get("/v1/volumes");
    let by_node = |n: &str| list["volumes"].as_array().unwrap().iter().filter(|v| v["node"] == n).count();
    assert_eq!(by_node("m1"), 3, "m0 coming back does not take volumes back from m1");
    assert_eq!(by_node("m0"), 0);
    // Delete: ready → deleting; removed by the node.
    let moved = healed.iter().find(|v| v["node"] == "m1" && v["state"] == "ready").unwrap();
    let (c, v) = send(&d, "DELETE", &format!("/v1/volumes/{}", moved["id"]), None);
    assert_eq!((c, v["state"].as_str()), (202, Some("deleting")), "{v}");
    let (c, _) = send(
        &d,
        "POST",
        &format!("/v1/volumes/{}/state", moved["id"]),
        Some(json!({"machine": "m1", "state": "removed"})),
    );
    assert_eq!(c, 200);
    assert_eq!(d.get(&format!("/v1/volumes/{}", moved["id"])).0, 404);
    let s = d.stats();
    assert_eq!(s["control_plane"]["leader"], true, "{s}");
}

#[test]
fn a_second_daemon_on_the_same_data_directory_cannot_lead() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = Daemon::start_in(tmp.path(), &["--key", KEY]);
    let out = Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args([
            "serve",
            "--heartbeat-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--confd-addr",
            "127.0.0.1:0",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("leader.lock") || err.contains("held"), "{err}");
}
