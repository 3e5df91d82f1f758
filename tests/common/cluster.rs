//! Cluster mode's test helpers: three `heartsink serve` members on loopback against a real
//! etcd, each with its own data directory; a fleet sent round-robin over them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::etcd::Etcd;
use super::{wait_until, Daemon};
use serde_json::Value;

pub const KEY: &str = "cluster-test-key";
/// `lease_ttl`, seconds.
pub const TTL: u64 = 3;
/// `heartbeat_timeout`, seconds.
pub const TIMEOUT: f64 = 4.0;
/// `health_check_interval`, seconds.
pub const CHECK: f64 = 0.5;

pub fn config(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("heartsink.toml");
    std::fs::write(
        &p,
        format!(
            "[liveness]\nheartbeat_interval = 0.5\nheartbeat_timeout = {TIMEOUT}\nhealth_check_interval = {CHECK}\n\
             startup_grace = 1.0\nfailover_threads = 10\n\n[cluster]\nlease_ttl = {TTL}\ndigest_interval = 0.5\n\
             prefix = \"/hs-test\"\n"
        ),
    )
    .unwrap();
    p
}

pub struct Member {
    pub name: String,
    pub d: Daemon,
    pub _dir: tempfile::TempDir,
}

pub fn member(name: &str, etcd: &Etcd) -> Member {
    member_with(name, etcd, &["--no-confd"])
}

/// A member serving confd on `ip:port` with the test key file (`tests/data/confd/hmac.key`).
pub fn member_with_confd(name: &str, etcd: &Etcd, ip: &str, port: u16) -> Member {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/confd/hmac.key");
    member_with(name, etcd, &["--confd-addr", &format!("{ip}:{port}"), "--confd-key-file", key])
}

/// A member with `extra` arguments.
pub fn member_with(name: &str, etcd: &Etcd, extra: &[&str]) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--heartbeat-addr".into(),
        "127.0.0.1:0".into(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
        "--config".into(),
        cfg.to_str().unwrap().into(),
        "--key".into(),
        KEY.into(),
        "--node".into(),
        name.into(),
    ];
    for e in etcd.endpoints() {
        args.push("--etcd".into());
        args.push(e);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start_raw_in(dir.path(), &refs);
    Member { name: name.into(), d, _dir: dir }
}

pub fn cluster(m: &Member) -> Value {
    m.d.get("/v1/cluster").1
}

/// The member that leads, once exactly one of `live` says it does and all agree on it.
pub fn leader(members: &[&Member], within: Duration) -> String {
    wait_until("exactly one agreed leader", within, || {
        let views: Vec<Value> = members.iter().map(|m| cluster(m)).collect();
        let leading: Vec<&str> =
            views.iter().filter(|v| v["leading"] == true).filter_map(|v| v["node"].as_str()).collect();
        let named: Vec<Option<&str>> = views.iter().map(|v| v["leader"].as_str()).collect();
        (leading.len() == 1 && named.iter().all(|n| *n == Some(leading[0]))).then(|| leading[0].to_owned())
    })
}

/// A fleet of `n` amphorae (ids from `seed`), each heartbeat to the next member, bounded.
pub struct Fleet(pub super::KillOnDrop);

impl Fleet {
    pub fn start(targets: &[&Member], n: u64, seed: u64) -> Fleet {
        Fleet::at_rate(targets, n, seed, 2 * n)
    }

    /// `n` amphorae sending `rate` heartbeats a second in all.
    pub fn at_rate(targets: &[&Member], n: u64, seed: u64, rate: u64) -> Fleet {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartsink"));
        cmd.arg("load");
        for t in targets {
            cmd.args(["--target", &t.d.heartbeat.to_string()]);
        }
        let child = cmd
            .args(["--key", KEY, "--amphorae", &n.to_string(), "--rate", &rate.to_string()])
            .args(["--duration", "150", "--seed", &seed.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn heartsink load");
        Fleet(super::KillOnDrop(child))
    }
}

pub fn logs(members: &[&Member]) -> String {
    members
        .iter()
        .map(|m| {
            let lines: Vec<String> =
                m.d.stderr
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("lead"))
                    .take(40)
                    .cloned()
                    .collect();
            format!("--- {}:\n{}", m.name, lines.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `method path` with a JSON body on `m` (`10 s` at most): the status and the JSON answer.
pub fn request(m: &Member, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = ureq::request(method, &m.d.url(path)).timeout(Duration::from_secs(10));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

pub fn patch(m: &Member, path: &str, body: &str) -> (u16, Value) {
    request(m, "PATCH", path, Some(serde_json::from_str(body).expect("a JSON body")))
}

/// Three members `a`, `b`, `c` serving confd on 127.0.0.1–3 at one free port (a confd client
/// asks every peer on one port), and that port.
pub fn with_confd(etcd: &Etcd) -> (Vec<Member>, u16) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let all = [("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "127.0.0.3")]
        .iter()
        .map(|(n, ip)| member_with_confd(n, etcd, ip, port))
        .collect();
    (all, port)
}

/// Three `rawx` services (pushed to `m`) and a pool `fast` of one of them (defined on `m`).
pub fn rawx_and_pool(m: &Member) {
    let services: Vec<Value> = (0..3)
        .map(|i| {
            serde_json::json!({"type": "rawx", "addr": format!("127.0.0.1:{}", 7300 + i),
                "tags": {"stat.cpu": 90, "stat.io": 80, "stat.space": 70 + i}})
        })
        .collect();
    let (code, v) = request(m, "POST", "/v1/services", Some(Value::Array(services)));
    assert_eq!(code, 200, "{v}");
    let (code, v) = request(m, "POST", "/v1/pools", Some(serde_json::json!({"name": "fast", "targets": "1,rawx"})));
    assert_eq!(code, 201, "{v}");
}
