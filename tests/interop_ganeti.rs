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
//! * The real Python `ConfdClient` (`tests/interop/ganeti_peer.py`) queries the daemon and the
//!   real `heartsink serve` (confd on loopback, same file and key); both must give heartsink's
//!   answers. It refuses heartsink's own types (100–103) unless the application adds them to
//!   `ganeti.constants.CONFD_REQS`; with that, it sends them and reads the answers.
//! * Side by side: the real daemon on 127.0.0.1:P and `heartsink serve` on 127.0.0.2:P, one
//!   heartsink client with both peers and coverage all: both reply to every case, and agree.
//!
//! Every wait is bounded; the daemon is killed and the files restored on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::confd::{cases, data, data_arg, exchange, key, plain_only, same};
use heartsink::confd::client::{BlockingClient, ConfdClient, Coverage};
use heartsink::confd::ganeti::ConfigIndex;
use heartsink::confd::proto::{encode_reply, parse_reply, DictQuery, Query, ReqField, Request, RequestType};
use serde_json::{json, Value};

const CONFD: &str = "/usr/lib/ganeti/3.0/usr/sbin/ganeti-confd";
const GANETI_PY: &str = "/usr/share/ganeti/3.0";
const LIB: &str = "/var/lib/ganeti";

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `heartsink serve` with confd on `confd_addr`, answering from the same `config.data` and key
/// as the real daemon, and heartbeat key `k`.
fn heartsink_on(confd_addr: &str) -> common::Daemon {
    common::Daemon::start_confd_on(
        confd_addr,
        &["--key", "k", "--confd-config", &data_arg("config.data.json"), "--confd-key-file", &data_arg("hmac.key")],
    )
}

/// The real daemon, with the files it needs in place; killed and cleaned up on drop.
struct GanetiConfd {
    child: Child,
    port: u16,
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl GanetiConfd {
    fn start() -> GanetiConfd {
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
        let mut d = GanetiConfd { child, port, saved };
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

impl Drop for GanetiConfd {
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

#[test]
#[ignore = "needs the real ganeti-confd (scripts/setup-ganeti.sh) and root"]
fn rust_client_against_the_real_daemon() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let daemon = GanetiConfd::start();
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
fn python_peer(addr: SocketAddr, cases: &[(RequestType, Query)], extra: &[&str]) -> Vec<Value> {
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
        .args(extra)
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
    let daemon = GanetiConfd::start();
    let cases = python_cases();
    let results = python_peer(daemon.addr(), &cases, &[]);
    check_python(results.as_slice(), &cases, &ix, "ganeti-confd");
}

#[test]
#[ignore = "needs the real Python client (scripts/setup-ganeti.sh)"]
fn python_client_against_heartsink() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let hs = heartsink_on("127.0.0.1:0");
    let cases = python_cases();
    let results = python_peer(hs.confd_addr(), &cases, &[]);
    check_python(results.as_slice(), &cases, &ix, "heartsink");
    let st = hs.stats();
    assert_eq!(st["confd"]["replies"].as_u64(), Some(cases.len() as u64), "{}", st["confd"]);
    assert!(st["confd"]["dropped"].as_object().unwrap().values().all(|n| n == 0), "{}", st["confd"]);
}

/// heartsink's own types through the real Python client. Unmodified, it refuses them
/// (`ConfdClientRequest` raises `ConfdClientError("Invalid request type")` for a type outside
/// `constants.CONFD_REQS`, and `SendRequest` checks again) and sends nothing. Both checks read
/// `ganeti.constants.CONFD_REQS` at call time, so an application that adds 100–103 to it uses
/// them through the same client: the replies are ordinary `ConfdReply`s (the client never looks
/// at a reply's type), and its serial filter works on the snapshot generation.
#[test]
#[ignore = "needs the real Python client (scripts/setup-ganeti.sh)"]
fn python_client_queries_heartsink_own_types() {
    use common::confd::p;
    let hs = heartsink_on("127.0.0.1:0");
    let sock = common::client();
    for a in 1..=3 {
        sock.send_to(&common::heartbeat(a, 1, 10, "k"), hs.heartbeat).unwrap();
    }
    hs.wait_processed(3);
    let addr = hs.confd_addr();
    let mut ours = BlockingClient::new(ConfdClient::new(key(), &[addr.ip()], Some(addr.port())).unwrap()).unwrap();
    let ask = |c: &mut BlockingClient, kind, q: &Query| {
        let (w, got) = c.query(kind, q.clone(), Coverage::All, Duration::from_secs(3)).unwrap();
        assert!(!w.timed_out, "{kind:?} {q:?}");
        got.current.unwrap()
    };
    // Wait (bounded) until the snapshot holds all three and counts them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(&mut ours, RequestType::EngineCounters, &Query::Empty).answer["amphorae"] != 3 {
        assert!(Instant::now() < deadline, "the snapshot never held 3 amphorae");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cases: Vec<(RequestType, Query)> = vec![
        (RequestType::AmphoraHealth, p(&common::uuid(1, 2))),
        (RequestType::AmphoraHealth, p(&common::uuid(1, 99))),
        (RequestType::AmphoraHealth, p("not-an-id")),
        (RequestType::LbStatus, p(&common::uuid(1, 1))),
        (RequestType::DownSenders, Query::Empty),
        (RequestType::EngineCounters, Query::Empty),
    ];

    // Unmodified: refused before sending.
    let requests = hs.stats()["confd"]["requests"].as_u64().unwrap();
    let refused = python_peer(addr, &cases, &[]);
    assert_eq!(refused.len(), cases.len());
    for r in &refused {
        assert_eq!(r["error"], "Invalid request type", "{r}");
        assert_eq!((r["sent"].as_u64(), r["reply"].is_null()), (Some(0), true), "{r}");
    }
    assert_eq!(hs.stats()["confd"]["requests"].as_u64(), Some(requests), "the refused requests were sent");

    // With 100–103 added to CONFD_REQS: answered as heartsink's own client is answered.
    let results = python_peer(addr, &cases, &["--extend-reqs", "100,101,102,103"]);
    assert_eq!(results.len(), cases.len());
    for (r, (kind, q)) in results.iter().zip(&cases) {
        assert_eq!(r["error"], Value::Null, "{kind:?}: {r}");
        assert_eq!(r["timed_out"], json!(false), "{kind:?}: {r}");
        assert_eq!((r["sent"].as_u64(), r["received"].as_u64()), (Some(1), Some(1)));
        let want = ask(&mut ours, *kind, q);
        let got = &r["reply"];
        assert_eq!(got["status"].as_i64(), Some(want.status), "{kind:?} {q:?}: {got}");
        assert_eq!(got["serial"].as_i64(), Some(want.serial), "{kind:?} {q:?}: {got}");
        assert_eq!(got["answer"], want.answer, "{kind:?} {q:?}");
    }
    let health = &results[0]["reply"];
    assert_eq!((health["status"].as_i64(), &health["answer"]["operating_status"]), (Some(0), &json!("ONLINE")));
    assert_eq!(health["answer"]["liveness"], "alive");
    assert_eq!((results[1]["reply"]["status"].as_i64(), &results[1]["reply"]["answer"]), (Some(1), &json!(0)));
    assert_eq!((results[2]["reply"]["status"].as_i64(), &results[2]["reply"]["answer"]), (Some(1), &json!(2)));
    assert_eq!(results[4]["reply"]["answer"]["total"], 0);
    assert_eq!(results[5]["reply"]["answer"]["accepted"], 3);
}

/// The real daemon on 127.0.0.1:P and `heartsink serve` on 127.0.0.2:P, same file and key; one
/// heartsink client with both peers asks every case of every type with coverage all.
#[test]
#[ignore = "needs the real ganeti-confd (scripts/setup-ganeti.sh) and root"]
fn side_by_side_real_daemon_and_heartsink() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let ganeti = GanetiConfd::start();
    let hs = heartsink_on(&format!("127.0.0.2:{}", ganeti.port));
    assert_eq!(hs.confd_addr(), SocketAddr::from(([127, 0, 0, 2], ganeti.port)));
    let peers: [IpAddr; 2] = [[127, 0, 0, 1].into(), [127, 0, 0, 2].into()];
    let mut client = BlockingClient::new(ConfdClient::new(key(), &peers, Some(ganeti.port)).unwrap()).unwrap();
    for (kind, query) in cases() {
        let want = ix.answer(&Request::new(kind, query.clone(), "x"));
        let (w, got) = client.query(kind, query.clone(), Coverage::All, Duration::from_secs(3)).unwrap();
        assert!(!w.timed_out, "{kind:?} {query:?}: {w:?}");
        assert_eq!((w.sent, w.received, got.replies.len()), (2, 2, 2), "{kind:?} {query:?}");
        let from = |ip: IpAddr| {
            let r = got.replies.iter().find(|(a, _)| a.ip() == ip);
            &r.unwrap_or_else(|| panic!("{kind:?} {query:?}: no reply from {ip}")).1
        };
        let (theirs, ours) = (from(peers[0]), from(peers[1]));
        assert_eq!((theirs.status, theirs.serial), (ours.status, ours.serial), "{kind:?} {query:?}");
        assert!(
            same(&theirs.answer, &ours.answer),
            "{kind:?} {query:?}:\n daemon {}\n heartsink {}",
            theirs.answer,
            ours.answer
        );
        assert_eq!((ours.status, ours.serial), (want.status, want.serial), "{kind:?} {query:?}");
        assert_eq!(ours.answer, want.answer, "{kind:?} {query:?}");
        assert!(
            got.consistent,
            "{kind:?} {query:?}: the client saw them as inconsistent:\n daemon {}\n heartsink {}",
            theirs.answer, ours.answer
        );
    }
    let st = hs.stats();
    assert_eq!(st["confd"]["replies"].as_u64(), Some(cases().len() as u64), "{}", st["confd"]);
}

#[test]
#[ignore = "needs the real ganeti-confd (scripts/setup-ganeti.sh) and root"]
fn confd_query_cli_against_the_real_daemon() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let daemon = GanetiConfd::start();
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

/// The real Python client with three cluster members as its peers (coverage 3) asks heartsink's
/// types 100–105: every answer is consistent (`ConfdFilterCallback.consistent`), before the
/// leader is killed with `kill -9`, right after (the survivors answer from the views they hold),
/// and once the new leader's views arrive (higher serials).
#[test]
#[ignore = "needs the real Python client (scripts/setup-ganeti.sh) and etcd (scripts/setup-etcd.sh)"]
fn python_client_with_three_cluster_members_gets_consistent_answers_through_a_leader_kill() {
    use common::cluster::{leader, rawx_and_pool, request, with_confd, Fleet, Member, TTL};
    let etcd = common::etcd::Etcd::three();
    let (mut all, port) = with_confd(&etcd);
    let refs: Vec<&Member> = all.iter().collect();
    let lead = leader(&refs, Duration::from_secs(20));
    rawx_and_pool(all.iter().find(|m| m.name != lead).unwrap());
    let _fleet = Fleet::at_rate(&refs, 30, 5, 300);
    let first_id = |m: &Member| {
        let (code, v) = request(m, "GET", "/v1/amphorae?limit=1000", None);
        (code == 200 && v["leader_view"] == true && v["amphorae"].as_array().is_some_and(|a| a.len() == 30)).then(
            || (v["amphorae"][0]["id"].as_str().unwrap_or_default().to_owned(), v["generation"].as_u64().unwrap_or(0)),
        )
    };
    let id = common::wait_until("every member lists the fleet from the leader's view", Duration::from_secs(30), || {
        let ids: Vec<_> = all.iter().filter_map(first_id).collect();
        (ids.len() == 3).then(|| ids[0].0.clone())
    });
    let cases: Vec<(RequestType, Query)> = vec![
        (RequestType::AmphoraHealth, Query::Plain(id.clone())),
        (RequestType::LbStatus, Query::Plain(id)),
        (RequestType::DownSenders, Query::Empty),
        (RequestType::EngineCounters, Query::Empty),
        (RequestType::PoolNext, Query::Plain("rawx?size=2".into())),
        (RequestType::PoolPoll, Query::Plain("fast".into())),
    ];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ask = |timeout: &str| {
        let extra =
            ["--hosts", "127.0.0.1,127.0.0.2,127.0.0.3", "--coverage", "3", "--extend-reqs", "100,101,102,103,104,105"];
        python_peer(addr, &cases, &[&extra[..], &["--timeout", timeout]].concat())
    };
    let check = |results: &[Value], replies: u64, when: &str| -> u64 {
        let mut low = u64::MAX;
        for (r, (kind, q)) in results.iter().zip(&cases) {
            assert_eq!(r["error"], Value::Null, "{when}: {kind:?}: {r}");
            assert_eq!(
                (r["sent"].as_u64(), r["received"].as_u64()),
                (Some(3), Some(replies)),
                "{when}: {kind:?} {q:?}: {r}"
            );
            assert_eq!(r["consistent"], true, "{when}: {kind:?} {q:?}: inconsistent: {r}");
            assert_eq!(r["reply"]["status"], 0, "{when}: {kind:?} {q:?}: {r}");
            let serial = r["reply"]["serial"].as_u64().unwrap_or(0);
            assert!(serial >> 32 > 0, "{when}: {kind:?}: serial {serial} is not a leader's");
            low = low.min(serial);
        }
        low
    };
    // The services reach the leader in a digest, then every member in its view.
    let first = common::wait_until("the pool served from the leader's view", Duration::from_secs(20), || {
        let r = ask("3");
        r[4..].iter().all(|r| r["reply"]["status"] == 0).then_some(r)
    });
    let before = check(&first, 3, "all three members");

    let l = all.iter_mut().find(|m| m.name == lead).unwrap();
    l.d.child.kill().unwrap();
    let _ = l.d.child.wait();
    let killed = Instant::now();
    check(&ask("0.4"), 2, "right after the leader's kill");
    assert!(killed.elapsed() < Duration::from_secs(TTL), "the check after the kill took {:?}", killed.elapsed());

    let live: Vec<&Member> = all.iter().filter(|m| m.name != lead).collect();
    leader(&live, Duration::from_secs(20));
    common::wait_until("the new leader's view on both survivors", Duration::from_secs(10), || {
        live.iter().all(|m| first_id(m).is_some_and(|(_, g)| g >> 32 > before >> 32)).then_some(())
    });
    let after = check(&ask("1"), 2, "under the new leader");
    assert!(after >> 32 > before >> 32, "serial {after} is not of a later term than {before}");
}
