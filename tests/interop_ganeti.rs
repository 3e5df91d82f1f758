//! Interop with the real Ganeti 3.0.2 confd peers (Debian `ganeti-haskell-3.0` and `ganeti-3.0`,
//! installed by `scripts/setup-ganeti.sh`). Ignored by default; run as root with
//!
//! ```sh
//! scripts/setup-ganeti.sh && cargo test --test interop_ganeti -- --ignored --test-threads 1
//! ```
//!
//! * The real `ganeti-confd` runs standalone on 127.0.0.1 (ephemeral port) with
//!   `tests/data/confd/config.data.json` and `hmac.key` (its paths are compiled in, so they are
//!   copied to `/var/lib/ganeti/`; whatever was there is restored afterwards).
//! * heartsink's Rust client ([`BlockingClient`]) queries it for every request type, with good
//!   and bad queries; every answer, status and serial must equal `ConfigIndex::answer` for the
//!   same file (numbers compared as numbers). A raw exchange of the same requests compares the
//!   reply **bytes** wherever the answer holds no object and no float (the daemon re-serialises
//!   its typed objects in its own member order).
//! * The real Python `ConfdClient` (`tests/interop/ganeti_peer.py`) queries the daemon and a
//!   heartsink server core (parse → answer → encode on a loopback socket); both must give
//!   heartsink's answers.
//!
//! Every wait is bounded; the daemon is killed and the files restored on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heartsink::confd::client::{unix_now, BlockingClient, ConfdClient, Coverage};
use heartsink::confd::ganeti::ConfigIndex;
use heartsink::confd::proto::{
    encode_reply, encode_request, parse_reply, parse_request, DictQuery, HmacKey, Query, Reply, ReqField, Request,
    RequestType,
};
use serde_json::{json, Value};

const CONFD: &str = "/usr/lib/ganeti/3.0/usr/sbin/ganeti-confd";
const GANETI_PY: &str = "/usr/share/ganeti/3.0";
const LIB: &str = "/var/lib/ganeti";

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/confd")).join(name)
}

fn key() -> HmacKey {
    HmacKey::from_file(data("hmac.key")).unwrap()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real daemon, with the files it needs in place; killed and cleaned up on drop.
struct Daemon {
    child: Child,
    port: u16,
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl Daemon {
    fn start() -> Daemon {
        let confd = std::env::var("HEARTSINK_GANETI_CONFD").unwrap_or_else(|_| CONFD.to_owned());
        assert!(Path::new(&confd).exists(), "{confd} is missing: run scripts/setup-ganeti.sh");
        for d in [LIB, "/var/run/ganeti", "/var/log/ganeti"] {
            std::fs::create_dir_all(d).expect("needs root: the daemon's paths are compiled in");
        }
        let mut saved = Vec::new();
        for (src, dst) in [("config.data.json", "config.data"), ("hmac.key", "hmac.key")] {
            let dst = Path::new(LIB).join(dst);
            saved.push((dst.clone(), std::fs::read(&dst).ok()));
            std::fs::copy(data(src), &dst).unwrap();
        }
        let port = free_udp_port();
        let child = Command::new(&confd)
            .args(["-f", "--no-user-checks", "-b", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut d = Daemon { child, port, saved };
        // Ready when it answers a PING (bounded: 15 s).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!(
                    "ganeti-confd exited early ({status}); another one running? see /var/log/ganeti/conf-daemon.log"
                );
            }
            let ping = Request::new(RequestType::Ping, Query::Empty, "ready");
            if exchange(d.addr(), &ping, Duration::from_millis(200)).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "ganeti-confd did not answer within 15 s");
        }
        d.port = port;
        d
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (path, old) in &self.saved {
            match old {
                Some(bytes) => {
                    let _ = std::fs::write(path, bytes);
                }
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// One raw request/reply exchange: the reply's bytes, or `None` after `timeout`.
fn exchange(to: SocketAddr, req: &Request, timeout: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.send_to(&encode_request(req, unix_now().as_secs() as i64, &key()), to).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// JSON equality with numbers compared as numbers (the daemon writes `5000000` where the file
/// has `5000000.0`, `1.36e9` where it has `1360000000.0`; a few of its node timestamps differ in
/// the last bit, hence the relative tolerance of 1e-15).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn plain_only(v: &Value) -> bool {
    match v {
        Value::Object(_) => false,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        Value::Array(a) => a.iter().all(plain_only),
        _ => true,
    }
}

fn dict(f: impl FnOnce(&mut DictQuery)) -> Query {
    let mut d = DictQuery::default();
    f(&mut d);
    Query::Dict(d)
}

fn p(s: &str) -> Query {
    Query::Plain(s.to_owned())
}

/// Good and bad queries for every request type.
fn cases() -> Vec<(RequestType, Query)> {
    use RequestType::*;
    let mut c = vec![
        (Ping, Query::Empty),
        (Ping, p("ignored")),
        (NodeRoleByName, p("node1.example.com")),
        (NodeRoleByName, p("node1")),
        (NodeRoleByName, p("node2")),
        (NodeRoleByName, p("node3.example.com")),
        (NodeRoleByName, p("2ae3d962-2dad-44f2-bdb1-85f77107f907")),
        (NodeRoleByName, p("node")),
        (NodeRoleByName, p("nope\"\\")),
        (NodeRoleByName, Query::Empty),
        (NodeRoleByName, dict(|d| d.link = Some("x\u{1}y".into()))),
        (NodePipByInstanceIp, dict(|d| d.ip = Some("198.51.100.11".into()))),
        (NodePipByInstanceIp, dict(|d| d.ip = Some("198.51.100.99".into()))),
        (
            NodePipByInstanceIp,
            dict(|d| d.ip_list = vec!["198.51.100.13".into(), "198.51.100.12".into(), "1.2.3.4".into()]),
        ),
        (
            NodePipByInstanceIp,
            dict(|d| {
                d.link = Some("br0".into());
                d.ip = Some("198.51.100.11".into());
            }),
        ),
        (NodePipByInstanceIp, dict(|_| {})),
        (NodePipByInstanceIp, p("198.51.100.11")),
        (NodePipByInstanceIp, Query::Empty),
        (ClusterMaster, Query::Empty),
        (ClusterMaster, dict(|d| d.fields = vec![ReqField::Name, ReqField::Ip, ReqField::MNodePip])),
        (ClusterMaster, dict(|d| d.fields = vec![ReqField::MNodePip, ReqField::Name, ReqField::Name])),
        (ClusterMaster, dict(|_| {})),
        (ClusterMaster, p("x")),
        (NodePipList, Query::Empty),
        (McPipList, Query::Empty),
        (InstancesIpsList, Query::Empty),
        (InstancesIpsList, p("br974")),
        (InstancesIpsList, p("br0")),
        (InstancesIpsList, dict(|_| {})),
        (NodeDrbd, p("node1.example.com")),
        (NodeDrbd, p("node2")),
        (NodeDrbd, p("node3")),
        (NodeDrbd, p("nope")),
        (NodeDrbd, Query::Empty),
        (NodeInstances, p("node1.example.com")),
        (NodeInstances, p("node2")),
        (NodeInstances, p("node3")),
        (NodeInstances, p("nope")),
        (NodeInstances, Query::Empty),
        (InstanceDisks, p("instance1")),
        (InstanceDisks, p("instance2.example.com")),
        (InstanceDisks, p("4e091bdc-e205-4ed7-8a47-0c9130a6619f")),
        (InstanceDisks, p("nope")),
        (InstanceDisks, dict(|d| d.ip_list = vec!["a".into()])),
        (ConfigQuery, Query::Empty),
        (DataCollectors, Query::Empty),
    ];
    for path in [
        "/cluster/cluster_name",
        "/cluster",
        "/nodes",
        "/instances",
        "/disks",
        "/nodegroups",
        "/networks",
        "/version",
        "/serial_no",
        "/cluster/enabled_hypervisors/0",
        "/cluster/enabled_hypervisors/00",
        "/cluster/enabled_hypervisors/5",
        "/cluster//x",
        "/cluster/",
        "/cluster/hvparams/kvm/migration_downtime",
        "/cluster/data_collectors",
        "",
        "/",
        "//",
        "/nope",
        "cluster",
    ] {
        c.push((ConfigQuery, p(path)));
    }
    c
}

#[test]
#[ignore = "needs the real ganeti-confd (scripts/setup-ganeti.sh) and root"]
fn rust_client_against_the_real_daemon() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let daemon = Daemon::start();
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let core = ConfdClient::new(key(), &[peer], Some(daemon.port)).unwrap();
    let mut client = BlockingClient::new(core).unwrap();
    let mut exact = 0;
    for (kind, query) in cases() {
        let ours = ix.answer(&Request::new(kind, query.clone(), "x"));
        // heartsink's client against the daemon.
        let (w, got) = client.query(kind, query.clone(), Coverage::All, Duration::from_secs(3)).unwrap();
        assert!(!w.timed_out, "{kind:?} {query:?}: no reply");
        assert_eq!((w.sent, w.received), (1, 1));
        let theirs = got.current.unwrap();
        assert_eq!((theirs.status, theirs.serial), (ours.status, ours.serial), "{kind:?} {query:?}: {theirs:?}");
        assert!(
            same(&theirs.answer, &ours.answer),
            "{kind:?} {query:?}:\n daemon {}\n heartsink {}",
            theirs.answer,
            ours.answer
        );
        // The same request raw: reply bytes.
        let req = Request::new(kind, query.clone(), format!("rsalt-{kind:?}"));
        let bytes = exchange(daemon.addr(), &req, Duration::from_secs(3)).expect("raw reply");
        let (salt, reply) = parse_reply(&bytes, &key()).unwrap();
        assert_eq!(salt, req.rsalt);
        assert!(same(&reply.answer, &ours.answer));
        if plain_only(&ours.answer) {
            assert_eq!(
                String::from_utf8_lossy(&encode_reply(&ours, &req.rsalt, &key())),
                String::from_utf8_lossy(&bytes),
                "{kind:?} {query:?}: reply bytes"
            );
            exact += 1;
        }
    }
    assert!(exact >= 50, "only {exact} byte-exact comparisons");
}

/// Runs `tests/interop/ganeti_peer.py` (the real Python client) against `addr`, bounded.
fn python_peer(addr: SocketAddr, cases: &[(RequestType, Query)]) -> Vec<Value> {
    let to_json = |q: &Query| match q {
        Query::Empty => Value::Null,
        Query::Plain(s) => json!(s),
        Query::Dict(d) => {
            let mut m = serde_json::Map::new();
            if let Some(l) = &d.link {
                m.insert("0".into(), json!(l));
            }
            if let Some(ip) = &d.ip {
                m.insert("1".into(), json!(ip));
            }
            if !d.ip_list.is_empty() {
                m.insert("2".into(), json!(d.ip_list));
            }
            if !d.fields.is_empty() {
                m.insert("3".into(), json!(d.fields.iter().map(|f| f.number()).collect::<Vec<_>>()));
            }
            Value::Object(m)
        }
    };
    let list: Vec<Value> = cases.iter().map(|(k, q)| json!({"type": k.number(), "query": to_json(q)})).collect();
    let dir = tempfile::tempdir().unwrap();
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_vec(&list).unwrap()).unwrap();
    let out_file = dir.path().join("out.json");
    let mut child = Command::new("/usr/bin/python3")
        .env("PYTHONPATH", GANETI_PY)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/ganeti_peer.py"))
        .args(["--host", &addr.ip().to_string(), "--port", &addr.port().to_string()])
        .arg("--key-file")
        .arg(data("hmac.key"))
        .arg("--cases")
        .arg(&cases_file)
        .stdout(std::fs::File::create(&out_file).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ganeti_peer.py did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "ganeti_peer.py failed: {status}");
    serde_json::from_slice(&std::fs::read(out_file).unwrap()).unwrap()
}

/// The Python client cannot send NODE_INSTANCES.
fn python_cases() -> Vec<(RequestType, Query)> {
    cases().into_iter().filter(|(k, _)| *k != RequestType::NodeInstances).collect()
}

fn check_python(results: &[Value], cases: &[(RequestType, Query)], ix: &ConfigIndex, who: &str) {
    assert_eq!(results.len(), cases.len());
    for (r, (kind, query)) in results.iter().zip(cases) {
        let ours = ix.answer(&Request::new(*kind, query.clone(), "x"));
        assert_eq!(r["timed_out"], json!(false), "{who}: {kind:?} {query:?} timed out");
        assert_eq!((r["sent"].as_u64(), r["received"].as_u64()), (Some(1), Some(1)));
        let got = &r["reply"];
        assert_eq!(got["status"].as_i64(), Some(ours.status), "{who}: {kind:?} {query:?}: {got}");
        assert_eq!(got["serial"].as_i64(), Some(ours.serial), "{who}: {kind:?} {query:?}");
        assert!(
            same(&got["answer"], &ours.answer),
            "{who}: {kind:?} {query:?}:\n python {}\n heartsink {}",
            got["answer"],
            ours.answer
        );
    }
}

#[test]
#[ignore = "needs the real ganeti-confd and Python client (scripts/setup-ganeti.sh) and root"]
fn python_client_against_the_real_daemon() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let daemon = Daemon::start();
    let cases = python_cases();
    let results = python_peer(daemon.addr(), &cases);
    check_python(results.as_slice(), &cases, &ix, "ganeti-confd");
}

/// A heartsink server core on a loopback socket: parse → answer → encode, until stopped.
struct CoreServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CoreServer {
    fn start(ix: ConfigIndex) -> CoreServer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let keys = [key()];
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                if let Ok(v) = parse_request(&buf[..n], &keys, unix_now().as_secs() as i64) {
                    let reply: Reply = ix.answer(&v.request);
                    let _ = sock.send_to(&encode_reply(&reply, &v.request.rsalt, &keys[0]), from);
                }
            }
        });
        CoreServer { addr, stop, thread: Some(thread) }
    }
}

impl Drop for CoreServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "needs the real Python client (scripts/setup-ganeti.sh)"]
fn python_client_against_heartsink() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let server = CoreServer::start(ix.clone());
    let cases = python_cases();
    let results = python_peer(server.addr, &cases);
    check_python(results.as_slice(), &cases, &ix, "heartsink");
}

#[test]
#[ignore = "needs the real ganeti-confd (scripts/setup-ganeti.sh) and root"]
fn confd_query_cli_against_the_real_daemon() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let daemon = Daemon::start();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_heartsink"))
            .args(["confd", "query", "--peer", &daemon.addr().to_string(), "--key-file"])
            .arg(data("hmac.key"))
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null))
    };
    let (code, v) = run(&["cluster-master"]);
    assert_eq!(code, Some(0), "{v}");
    let want = ix.answer(&Request::new(RequestType::ClusterMaster, Query::Empty, "x"));
    assert!(same(&v["answer"], &want.answer), "{v}");
    assert_eq!(v["serial"], want.serial);
    assert_eq!((v["sent"].as_u64(), v["received"].as_u64(), v["consistent"].as_bool()), (Some(1), Some(1), Some(true)));
    let (code, v) = run(&["3", r#"{"3": [0, 1]}"#]);
    assert_eq!(code, Some(0), "{v}");
    let q = DictQuery { fields: vec![ReqField::Name, ReqField::Ip], ..DictQuery::default() };
    assert!(same(&v["answer"], &ix.answer(&Request::new(RequestType::ClusterMaster, Query::Dict(q), "x")).answer));
    // A second peer that never answers (nothing listens on 127.0.0.2): 2 peers need 2 replies.
    let out = Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(["confd", "query", "--peer", &daemon.addr().to_string(), "--peer", &format!("127.0.0.2:{}", daemon.port)])
        .args(["--coverage", "-1", "--timeout", "1", "--key-file"])
        .arg(data("hmac.key"))
        .arg("ping")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["timed_out"].as_bool(), v["sent"].as_u64(), v["received"].as_u64()), (Some(true), Some(2), Some(1)));
}
