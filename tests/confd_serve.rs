//! confd served by the real `heartsink serve` over loopback: Ganeti's request types against
//! `ConfigIndex::answer` for the same file, heartsink's own types against heartbeats sent to the
//! same daemon, every validation drop by its reason label (and never answered), the boundaries
//! of the timestamp window, and reloads of `config.data` (file change) and of the key (SIGHUP).
//! Every wait is bounded; the daemon is killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::confd::{cases, data, data_arg, exchange_raw, key, p};
use common::{heartbeat, uuid, Daemon};
use heartsink::confd::client::{unix_now, BlockingClient, ConfdClient, Coverage};
use heartsink::confd::ganeti::ConfigIndex;
use heartsink::confd::proto::{
    encode_request, parse_reply, HmacKey, Query, Reply, Request, RequestType, ERROR_ARGUMENT, ERROR_UNKNOWN_ENTRY,
    STATUS_ERROR, STATUS_OK,
};
use serde_json::json;

/// How long a probe waits for a reply that must not come.
const SILENCE: Duration = Duration::from_millis(300);

/// A daemon with the test `config.data` and key, and heartbeat key `k`.
fn serve() -> Daemon {
    serve_with(&[])
}

/// As [`serve`], with `extra` flags.
fn serve_with(extra: &[&str]) -> Daemon {
    let (config, key) = (data_arg("config.data.json"), data_arg("hmac.key"));
    let mut args = vec!["--key", "k", "--confd-config", &config, "--confd-key-file", &key];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

fn client(d: &Daemon, key: HmacKey) -> BlockingClient {
    let addr = d.confd_addr();
    BlockingClient::new(ConfdClient::new(key, &[addr.ip()], Some(addr.port())).unwrap()).unwrap()
}

/// One request through heartsink's client; exactly one reply expected.
fn ask(c: &mut BlockingClient, kind: RequestType, query: Query) -> Reply {
    let (w, got) = c.query(kind, query.clone(), Coverage::All, Duration::from_secs(3)).unwrap();
    assert!(!w.timed_out, "{kind:?} {query:?}: no reply");
    assert_eq!((w.sent, w.received), (1, 1), "{kind:?} {query:?}");
    got.current.unwrap()
}

/// `confd.dropped` of `/v1/stats`, by label.
fn dropped(d: &Daemon) -> BTreeMap<String, u64> {
    let s = d.stats();
    s["confd"]["dropped"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

fn confd_counter(d: &Daemon, name: &str) -> u64 {
    d.stats()["confd"][name].as_u64().unwrap()
}

/// What became of one probe datagram.
#[derive(Debug)]
struct Outcome {
    /// The reply, if one came within [`SILENCE`] (or at once, for an answered probe).
    reply: Option<Vec<u8>>,
    /// Drop counters that moved, with how much.
    drops: BTreeMap<String, u64>,
    /// Unix second at which the daemon was seen to have handled the datagram.
    seen_at: u64,
}

/// Sends `datagram` to the daemon's confd socket from a fresh socket, waits until the daemon
/// counted it (bounded), then up to [`SILENCE`] for a reply.
fn probe(d: &Daemon, datagram: &[u8]) -> Outcome {
    let before = dropped(d);
    let requests = confd_counter(d, "requests");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(datagram, d.confd_addr()).unwrap();
    d.wait_stats("the probe to be counted", |st| st["confd"]["requests"].as_u64() == Some(requests + 1));
    let seen_at = unix_now().as_secs();
    s.set_read_timeout(Some(SILENCE)).unwrap();
    let mut buf = vec![0u8; 65536];
    let reply = s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec());
    let after = dropped(d);
    let drops = after
        .iter()
        .filter_map(|(k, v)| {
            let delta = v - before.get(k).copied().unwrap_or(0);
            (delta > 0).then(|| (k.clone(), delta))
        })
        .collect();
    Outcome { reply, drops, seen_at }
}

/// Drops expected so far, by label.
type Tally = BTreeMap<String, u64>;

/// Asserts that `datagram` is dropped as `label`, once, and never answered.
fn assert_dropped(d: &Daemon, tally: &mut Tally, what: &str, datagram: &[u8], label: &str) {
    let o = probe(d, datagram);
    assert!(o.reply.is_none(), "{what}: answered");
    assert_eq!(o.drops, BTreeMap::from([(label.to_owned(), 1)]), "{what}");
    *tally.entry(label.to_owned()).or_default() += 1;
}

/// Asserts that `datagram` is answered (a reply signed with `key` for `rsalt`) and not dropped.
fn assert_answered(d: &Daemon, what: &str, datagram: &[u8], rsalt: &str, key: &HmacKey) -> Reply {
    let o = probe(d, datagram);
    assert!(o.drops.is_empty(), "{what}: dropped {:?}", o.drops);
    let bytes = o.reply.unwrap_or_else(|| panic!("{what}: no reply"));
    let (salt, reply) = parse_reply(&bytes, key).unwrap();
    assert_eq!(salt, rsalt, "{what}");
    reply
}

fn ping(rsalt: &str) -> Request {
    Request::new(RequestType::Ping, Query::Empty, rsalt)
}

/// A datagram with the given `msg`, `salt` and MAC, in the Python client's outer layout
/// (`msg` is JSON-escaped here; `extra` is appended to the outer object verbatim).
fn envelope(msg: &str, salt: &str, mac: &str, extra: &str) -> Vec<u8> {
    let msg = serde_json::to_string(msg).unwrap();
    format!("plj0{{\"msg\": {msg}, \"salt\": \"{salt}\", \"hmac\": \"{mac}\"{extra}}}").into_bytes()
}

/// `msg` signed with the test key at `now`.
fn signed(msg: &str, now: i64, extra: &str) -> Vec<u8> {
    let salt = now.to_string();
    let mac = String::from_utf8(key().sign(&salt, msg).to_vec()).unwrap();
    envelope(msg, &salt, &mac, extra)
}

fn now() -> i64 {
    unix_now().as_secs() as i64
}

/// Sleeps until just after the next wall-clock second starts, and returns that second.
fn second_start() -> i64 {
    let t = unix_now();
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(t.subsec_nanos())) + Duration::from_millis(5));
    now()
}

#[test]
fn ganeti_types_equal_config_index_answers() {
    let ix = ConfigIndex::load(data("config.data.json")).unwrap();
    let d = serve();
    let mut c = client(&d, key());
    let all = cases();
    let kinds: std::collections::BTreeSet<RequestType> = all.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, RequestType::ALL.into_iter().collect(), "every Ganeti type 0–11 is asked");
    for (kind, query) in all {
        let want = ix.answer(&Request::new(kind, query.clone(), "x"));
        let got = ask(&mut c, kind, query.clone());
        assert_eq!((got.status, got.serial), (want.status, want.serial), "{kind:?} {query:?}: {got:?}");
        assert_eq!(got.answer, want.answer, "{kind:?} {query:?}");
    }
    let st = d.stats();
    assert_eq!(st["confd"]["config_serial"], json!(ix.serial_no()));
    assert_eq!(st["confd"]["keys"], json!(1));
    assert_eq!(st["confd"]["requests"], st["confd"]["replies"]);
    assert!(dropped(&d).values().all(|&n| n == 0), "{:?}", dropped(&d));
}

/// Asks `kind` until `f` holds for the reply (the control thread publishes a snapshot each tick).
fn ask_until(c: &mut BlockingClient, kind: RequestType, query: Query, what: &str, f: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ask(c, kind, query.clone());
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last reply {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn heartsink_types_answer_from_the_live_snapshot() {
    let d = serve();
    let hb = common::client();
    for a in 1..=3 {
        hb.send_to(&heartbeat(a, 1, 100, "k"), d.heartbeat).unwrap();
    }
    d.wait_processed(3);
    let mut c = client(&d, key());
    let first = uuid(1, 2);
    let r =
        ask_until(&mut c, RequestType::AmphoraHealth, p(&first), "amphora 2 to be known", |r| r.status == STATUS_OK);
    assert_eq!(r.answer["id"], json!(first));
    assert_eq!(r.answer["operating_status"], "ONLINE");
    assert_eq!(r.answer["liveness"], "alive");
    assert!(r.answer["last_refresh"].is_string());
    let serial = r.serial;
    assert!(serial > 0);

    // Unknown id and malformed query, as Ganeti's own types answer them.
    let r = ask(&mut c, RequestType::AmphoraHealth, p(&uuid(1, 999)));
    assert_eq!((r.status, r.answer.clone()), (STATUS_ERROR, json!(ERROR_UNKNOWN_ENTRY)));
    let r = ask(&mut c, RequestType::AmphoraHealth, p("not-an-id"));
    assert_eq!((r.status, r.answer.clone()), (STATUS_ERROR, json!(ERROR_ARGUMENT)));
    let r = ask(&mut c, RequestType::AmphoraHealth, Query::Empty);
    assert_eq!((r.status, r.answer.clone()), (STATUS_ERROR, json!(ERROR_ARGUMENT)));

    let r = ask(&mut c, RequestType::DownSenders, Query::Empty);
    assert_eq!(r.status, STATUS_OK);
    assert_eq!(r.answer["total"], 0);
    assert_eq!(r.answer["ids"], json!([]));

    let accepted = d.stats()["accepted"].as_u64().unwrap();
    assert_eq!(accepted, 3);
    let r = ask_until(&mut c, RequestType::EngineCounters, Query::Empty, "3 accepted in the snapshot", |r| {
        r.answer["accepted"] == json!(accepted)
    });
    assert_eq!(r.status, STATUS_OK);
    assert_eq!(r.answer["amphorae"], 3);
    assert_eq!(r.answer["down"], 0);
    assert_eq!(r.answer["generation"], json!(r.serial));

    // New amphorae: a newer snapshot, a higher serial.
    for a in 4..=5 {
        hb.send_to(&heartbeat(a, 1, 100, "k"), d.heartbeat).unwrap();
    }
    d.wait_processed(5);
    let r = ask_until(&mut c, RequestType::AmphoraHealth, p(&uuid(1, 5)), "amphora 5 to be known", |r| {
        r.status == STATUS_OK
    });
    assert!(r.serial > serial, "serial {} after {serial}", r.serial);
    let r = ask(&mut c, RequestType::AmphoraHealth, p(&first));
    assert!(r.serial > serial);
    let r = ask_until(&mut c, RequestType::EngineCounters, Query::Empty, "5 accepted", |r| r.answer["accepted"] == 5);
    assert_eq!(r.answer["amphorae"], 5);
}

#[test]
fn invalid_requests_are_dropped_by_reason_and_never_answered() {
    let mut d = serve();
    let mut tally = Tally::new();
    let k = key();
    let t = now();

    // A valid request first: answered.
    let good = encode_request(&ping("good"), t, &k);
    assert_eq!(assert_answered(&d, "valid ping", &good, "good", &k).status, STATUS_OK);

    let mut bad_magic = good.clone();
    bad_magic[3] = b'1';
    assert_dropped(&d, &mut tally, "bad magic", &bad_magic, "bad_magic");
    assert_dropped(&d, &mut tally, "wrong key", &encode_request(&ping("w"), t, &HmacKey::new(b"wrong\n")), "bad_hmac");
    let mut flipped = good.clone();
    let at = flipped.len() - 5; // a hex digit of the MAC
    flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
    assert_dropped(&d, &mut tally, "corrupted MAC", &flipped, "bad_hmac");
    assert_dropped(
        &d,
        &mut tally,
        "extra envelope key",
        &signed(r#"{"protocol": 1, "type": 0, "rsalt": "e"}"#, t, r#", "key_selector": """#),
        "bad_envelope",
    );
    assert_dropped(
        &d,
        &mut tally,
        "extra msg key",
        &signed(r#"{"protocol": 1, "type": 0, "rsalt": "m", "extra": 1}"#, t, ""),
        "bad_request",
    );
    assert_dropped(
        &d,
        &mut tally,
        "unknown type",
        &signed(r#"{"protocol": 1, "type": 12, "rsalt": "u"}"#, t, ""),
        "bad_request",
    );

    // Size: the daemon reads 4096 bytes; trailing whitespace is allowed, so pad a valid request.
    let mut max = encode_request(&ping("max"), t, &k);
    max.resize(4096, b' ');
    assert_answered(&d, "4096 bytes", &max, "max", &k);
    let mut over = max.clone();
    over.push(b' ');
    assert_dropped(&d, &mut tally, "4097 bytes", &over, "oversize");
    assert_dropped(&d, &mut tally, "64 KiB", &vec![b' '; 65000], "oversize");

    assert_dropped(&d, &mut tally, "not JSON", b"plj0hello", "not_json");
    assert_dropped(&d, &mut tally, "truncated JSON", &good[..good.len() / 2], "not_json");
    assert_dropped(&d, &mut tally, "msg not JSON", &signed("not json", t, ""), "msg_not_json");
    assert_dropped(&d, &mut tally, "empty datagram", b"", "bad_magic");

    // Bytes that are not UTF-8. The daemon reads a datagram as Latin-1 and MACs the UTF-8 of
    // the characters: a raw 0xF6 outside the strings is not JSON; inside `msg`, signed over the
    // raw byte itself, the MAC fails; signed over the UTF-8 of U+00F6 it is answered.
    let mut latin1_outside = good.clone();
    latin1_outside.insert(4, 0xF6);
    assert_dropped(&d, &mut tally, "Latin-1 byte before the JSON", &latin1_outside, "not_json");
    let msg = "{\"protocol\": 1, \"type\": 1, \"query\": \"n\u{f6}de\", \"rsalt\": \"l1\"}";
    let salt = t.to_string();
    let latin1 = |mac: &str| -> Vec<u8> {
        let text =
            format!("plj0{{\"msg\": \"{}\", \"salt\": \"{salt}\", \"hmac\": \"{mac}\"}}", msg.replace('"', "\\\""));
        let bytes: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
        assert!(std::str::from_utf8(&bytes).is_err());
        bytes
    };
    let raw: Vec<u8> = [salt.as_bytes(), &msg.chars().map(|c| c as u32 as u8).collect::<Vec<_>>()].concat();
    let mac_over_raw = {
        use hmac::Mac;
        let mut m = hmac::Hmac::<sha1::Sha1>::new_from_slice(&std::fs::read(data("hmac.key")).unwrap()).unwrap();
        m.update(&raw);
        hex::encode(m.finalize().into_bytes())
    };
    assert_dropped(&d, &mut tally, "Latin-1 byte, MAC over the raw byte", &latin1(&mac_over_raw), "bad_hmac");
    let mac_over_utf8 = String::from_utf8(k.sign(&salt, msg).to_vec()).unwrap();
    let r = assert_answered(&d, "Latin-1 byte, MAC over its UTF-8", &latin1(&mac_over_utf8), "l1", &k);
    assert_eq!(r.status, STATUS_ERROR, "no node n\u{f6}de: {r:?}");
    assert_dropped(&d, &mut tally, "raw UTF-8, MAC over it", &signed(msg, t, ""), "bad_hmac");

    assert_dropped(
        &d,
        &mut tally,
        "surrogate escape",
        &signed(r#"{"protocol": 1, "type": 0, "rsalt": "\ud800"}"#, t, ""),
        "surrogate_escape",
    );
    {
        let msg = r#"{"protocol": 1, "type": 0, "rsalt": "b"}"#;
        let mac = String::from_utf8(k.sign("17e8", msg).to_vec()).unwrap();
        assert_dropped(&d, &mut tally, "salt with an exponent", &envelope(msg, "17e8", &mac, ""), "bad_timestamp");
    }

    // The timestamp window is now-300 ..= now+300, inclusive, in the daemon's clock (the same
    // wall clock as ours). A request built in second `s` is handled in a second `h >= s`, and
    // on a busy machine possibly `h = s + 1`. Hence, with margins that hold whatever `h` is
    // (as long as h <= s + 1):
    //   s+300 accepted (ts <= h+300 since h >= s), s-301 stale (ts < h-300 since h >= s),
    //   s-299 accepted (needs h <= s+1),           s+302 future (needs h <= s+1).
    let t = now();
    for (off, name) in [(300, "now+300"), (-299, "now-299"), (299, "now+299")] {
        let req = ping(name);
        assert_answered(&d, name, &encode_request(&req, t + off, &k), name, &k);
    }
    assert_dropped(&d, &mut tally, "now-301", &encode_request(&ping("a"), t - 301, &k), "stale_timestamp");
    assert_dropped(&d, &mut tally, "now-302", &encode_request(&ping("b"), t - 302, &k), "stale_timestamp");
    assert_dropped(&d, &mut tally, "now+302", &encode_request(&ping("c"), t + 302, &k), "future_timestamp");
    // The two remaining edges, s-300 accepted and s+301 future, hold only when h = s. Built just
    // after a second starts, and judged only when the daemon is seen to have handled the probe
    // in that same second (otherwise retried): deterministic, never flaky.
    let mut judged = [false; 2];
    for _ in 0..5 {
        let s = second_start();
        let o = probe(&d, &encode_request(&ping("edge-300"), s - 300, &k));
        for (label, n) in &o.drops {
            *tally.entry(label.clone()).or_default() += n;
        }
        if o.seen_at == s as u64 {
            assert!(o.drops.is_empty(), "now-300 dropped: {:?}", o.drops);
            assert!(o.reply.is_some(), "now-300 not answered");
            judged[0] = true;
        }
        let s = second_start();
        let o = probe(&d, &encode_request(&ping("edge+301"), s + 301, &k));
        for (label, n) in &o.drops {
            *tally.entry(label.clone()).or_default() += n;
        }
        if o.seen_at == s as u64 {
            assert!(o.reply.is_none(), "now+301 answered");
            assert_eq!(o.drops, BTreeMap::from([("future_timestamp".to_owned(), 1)]));
            judged[1] = true;
        }
        if judged == [true, true] {
            break;
        }
    }
    assert_eq!(judged, [true, true], "the exact edges were never handled within the second they were built in");

    // Still serving, and every drop counted under its label.
    let mut c = client(&d, k.clone());
    assert_eq!(ask(&mut c, RequestType::Ping, Query::Empty).status, STATUS_OK);
    let drops: Tally = dropped(&d).into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(drops, tally);
    for label in [
        "bad_magic",
        "bad_hmac",
        "bad_envelope",
        "bad_request",
        "oversize",
        "not_json",
        "msg_not_json",
        "surrogate_escape",
        "bad_timestamp",
        "stale_timestamp",
        "future_timestamp",
    ] {
        assert!(drops.get(label).is_some_and(|n| *n > 0), "no {label} drop: {drops:?}");
    }
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon exited");
}

#[test]
fn config_data_reloads_when_the_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.data");
    std::fs::copy(data("config.data.json"), &path).unwrap();
    let d = Daemon::start(&["--confd-config", path.to_str().unwrap(), "--confd-key-file", &data_arg("hmac.key")]);
    let mut c = client(&d, key());
    let name = p("/cluster/cluster_name");
    let r = ask(&mut c, RequestType::ConfigQuery, name.clone());
    assert_eq!((r.status, r.serial, r.answer.clone()), (STATUS_OK, 3189, json!("cluster.name.example.com")));
    assert_eq!(d.stats()["confd"]["config_serial"], 7627);

    // A newer configuration: higher serials, another cluster name. Written beside and renamed
    // over, as Ganeti does, so the daemon never sees half a file.
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["serial_no"] = json!(7628);
    doc["cluster"]["serial_no"] = json!(3190);
    doc["cluster"]["cluster_name"] = json!("renamed.example.com");
    let new = tmp.path().join("config.data.new");
    std::fs::write(&new, serde_json::to_vec(&doc).unwrap()).unwrap();
    std::fs::rename(&new, &path).unwrap();
    let r = ask_until(&mut c, RequestType::ConfigQuery, name.clone(), "the new configuration", |r| r.serial == 3190);
    assert_eq!((r.status, r.answer.clone()), (STATUS_OK, json!("renamed.example.com")));
    assert_eq!(d.stats()["confd"]["config_serial"], 7628);
    let want = ConfigIndex::load(&path).unwrap().answer(&Request::new(RequestType::ClusterMaster, Query::Empty, "x"));
    let r = ask(&mut c, RequestType::ClusterMaster, Query::Empty);
    assert_eq!((r.status, r.serial, r.answer), (want.status, 3190, want.answer));

    // A broken file is not loaded: the last good configuration stays in use.
    std::fs::write(&new, b"{not json").unwrap();
    std::fs::rename(&new, &path).unwrap();
    d.wait_stderr("confd configuration not reloaded");
    let r = ask(&mut c, RequestType::ConfigQuery, name);
    assert_eq!((r.status, r.serial, r.answer), (STATUS_OK, 3190, json!("renamed.example.com")));
}

#[test]
fn sighup_reloads_the_confd_key() {
    let tmp = tempfile::tempdir().unwrap();
    let key_path = tmp.path().join("hmac.key");
    std::fs::copy(data("hmac.key"), &key_path).unwrap();
    let d = Daemon::start(&[
        "--confd-config",
        &data_arg("config.data.json"),
        "--confd-key-file",
        key_path.to_str().unwrap(),
    ]);
    let old = key();
    let mut c = client(&d, old.clone());
    assert_eq!(ask(&mut c, RequestType::Ping, Query::Empty).status, STATUS_OK);

    let new_bytes = b"fedcba9876543210fedcba9876543210fedcba98\n";
    std::fs::write(&key_path, new_bytes).unwrap();
    let new = HmacKey::new(new_bytes);
    d.signal(libc::SIGHUP);
    // Answered with the new key once the reload happened (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = ping("new-key");
        if let Some(bytes) =
            exchange_raw(d.confd_addr(), &encode_request(&req, now(), &new), Duration::from_millis(200))
        {
            let (salt, r) = parse_reply(&bytes, &new).expect("the reply is signed with the new key");
            assert_eq!((salt.as_str(), r.status), ("new-key", STATUS_OK));
            break;
        }
        assert!(Instant::now() < deadline, "the new key was never accepted: {}", d.stderr_text());
    }
    assert_eq!(d.stats()["confd"]["keys"], 1);
    // The old key is refused now.
    let mut tally = Tally::new();
    assert_dropped(&d, &mut tally, "old key", &encode_request(&ping("old"), now(), &old), "bad_hmac");
    let (w, _) = c.query(RequestType::Ping, Query::Empty, Coverage::All, Duration::from_millis(500)).unwrap();
    assert!(w.timed_out && w.received == 0, "{w:?}");
}

/// Every reply that reaches any of `sockets` within [`SILENCE`] of the last one.
fn replies(sockets: &[UdpSocket]) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut quiet_since = Instant::now();
    for s in sockets {
        s.set_nonblocking(true).unwrap();
    }
    while quiet_since.elapsed() < SILENCE {
        let mut any = false;
        for s in sockets {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                got.push(buf[..n].to_vec());
                any = true;
            }
        }
        if any {
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    got
}

#[test]
fn a_replayed_request_is_answered_once_from_any_source() {
    let d = serve();
    let k = key();
    let packet = encode_request(&ping("captured"), now(), &k);
    // 25 times from the client's own socket, 25 times from other sockets (other source ports:
    // other workers, as a spoofed source would be).
    let own = UdpSocket::bind("127.0.0.1:0").unwrap();
    let others: Vec<UdpSocket> = (0..25).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for i in 0..50 {
        let s = if i % 2 == 0 { &own } else { &others[i / 2] };
        s.send_to(&packet, d.confd_addr()).unwrap();
    }
    d.wait_stats("50 requests counted", |st| st["confd"]["requests"].as_u64() == Some(50));
    let mut all = others;
    all.push(own);
    let got = replies(&all);
    assert_eq!(got.len(), 1, "one reply for one request sent 50 times");
    let (salt, r) = parse_reply(&got[0], &k).unwrap();
    assert_eq!((salt.as_str(), r.status), ("captured", STATUS_OK));
    assert_eq!(dropped(&d).get("replay"), Some(&49));

    // Two distinct requests, even in the same second with the same query: both answered.
    let mut tally = Tally::from([("replay".to_owned(), 49)]);
    let t = now();
    for rsalt in ["one", "two"] {
        assert_answered(&d, rsalt, &encode_request(&ping(rsalt), t, &k), rsalt, &k);
    }
    // The same signature with its hex digits in upper case is the same request.
    let text = String::from_utf8(encode_request(&ping("case"), t, &k)).unwrap();
    assert_answered(&d, "lower case", text.as_bytes(), "case", &k);
    let at = text.find("\"hmac\": \"").unwrap() + 9;
    let upper = format!("{}{}{}", &text[..at], text[at..at + 40].to_uppercase(), &text[at + 40..]);
    assert_dropped(&d, &mut tally, "upper case replay", upper.as_bytes(), "replay");
    let drops: Tally = dropped(&d).into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(drops, tally);
    assert_eq!(d.stats()["confd"]["replay_cache"]["evictions"], 0);
}

#[test]
fn the_reply_budget_bounds_a_flood_per_source() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("heartsink.toml");
    std::fs::write(
        &cfg,
        "[liveness]\nheartbeat_timeout = 1.0\nhealth_check_interval = 0.2\nheartbeat_interval = 0.5\n\
         startup_grace = 0.5\nfailover_threshold = 1000\n",
    )
    .unwrap();
    let d = serve_with(&["--config", cfg.to_str().unwrap()]);
    // 400 amphorae beat once, then go silent: all down.
    let hb = common::client();
    for a in 1..=400 {
        hb.send_to(&heartbeat(a, 1, 100, "k"), d.heartbeat).unwrap();
        if a % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    d.wait_processed(400);
    let k = key();
    let mut c = client(&d, k.clone());
    let r = ask_until(&mut c, RequestType::DownSenders, Query::Empty, "400 down", |r| r.answer["total"] == 400);
    assert_eq!(r.answer["ids"].as_array().unwrap().len(), heartsink::confd::server::DOWN_PAGE);
    let before = dropped(&d).get("reply_budget").copied().unwrap_or(0);
    assert_eq!(before, 0);

    // A flood of distinct DOWN_SENDERS queries from one source. The count before it is read
    // first: read after, it may already include part of the flood.
    let requests = confd_counter(&d, "requests");
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = now();
    let sent = 200u64;
    let mut request_bytes = 0;
    for i in 0..sent {
        let p = encode_request(&Request::new(RequestType::DownSenders, Query::Empty, format!("f{i}")), t, &k);
        request_bytes = p.len();
        flood.send_to(&p, d.confd_addr()).unwrap();
    }
    let st = d.wait_stats("the flood counted", |st| {
        st["confd"]["dropped"]["reply_budget"].as_u64().unwrap() + st["confd"]["replies"].as_u64().unwrap()
            >= requests + sent - 1
    });
    let got = replies(std::slice::from_ref(&flood));
    let reply_bytes: usize = got.iter().map(Vec::len).sum();
    let limited = st["confd"]["dropped"]["reply_budget"].as_u64().unwrap();
    eprintln!(
        "flood: {sent} requests of {request_bytes} B, {} replies ({reply_bytes} B, largest {} B), {limited} over budget",
        got.len(),
        got.iter().map(Vec::len).max().unwrap_or(0)
    );
    assert!(got.iter().all(|g| g.len() <= heartsink::confd::server::DOWN_REPLY_MAX + 8));
    // 64 KiB of burst, refilled at 64 KiB/s while the flood lasts (well under a second).
    assert!((5..=25).contains(&got.len()), "{} replies", got.len());
    assert!(reply_bytes <= 2 * 65536, "{reply_bytes} bytes");
    assert_eq!(limited + got.len() as u64, sent);

    // Another source is still answered.
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    let p = encode_request(&Request::new(RequestType::DownSenders, Query::Empty, "other"), now(), &k);
    other.send_to(&p, d.confd_addr()).unwrap();
    let got = replies(std::slice::from_ref(&other));
    assert_eq!(got.len(), 1, "another source answered");
    assert_eq!(parse_reply(&got[0], &k).unwrap().0, "other");
    // The metric says so too.
    let m = d.get_text("/metrics");
    assert!(m.contains(&format!("heartsink_confd_drops_total{{reason=\"reply_budget\"}} {limited}")), "{m}");
}

/// Runs `serve` with `args` (ephemeral ports otherwise) and expects it to refuse to start.
fn refused(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{args:?}");
    assert!(out.stdout.is_empty(), "nothing listened: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

/// `serve` with the heartbeat and confd sockets on these addresses, and `extra` flags.
fn serve_on(heartbeat: &str, confd: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["serve", "--heartbeat-addr", heartbeat, "--admin-addr", "127.0.0.1:0", "--confd-addr", confd];
    args.extend_from_slice(extra);
    Daemon::start_raw(&args)
}

#[test]
fn the_built_in_key_is_refused_on_non_loopback_sockets() {
    let err = refused(&["--heartbeat-addr", "0.0.0.0:0", "--confd-addr", "127.0.0.1:0"]);
    assert!(err.contains("heartbeat socket on 0.0.0.0:0"), "{err}");
    assert!(err.contains("--allow-insecure-key") && err.contains("\"insecure\""), "{err}");
    let err = refused(&["--heartbeat-addr", "127.0.0.1:0", "--key", "k", "--confd-addr", "0.0.0.0:0"]);
    assert!(err.contains("confd socket on 0.0.0.0:0") && err.contains("--confd-key-file"), "{err}");
    assert!(err.contains("--allow-insecure-key"), "{err}");

    // Loopback, a configured key, or the explicit opt-in: served.
    let d = Daemon::start(&[]);
    assert_eq!(d.stats()["keys"]["insecure_default"], true);
    drop(d);
    let d = serve_on("0.0.0.0:0", "127.0.0.1:0", &["--key", "k"]);
    assert_eq!(d.stats()["keys"]["insecure_default"], false);
    drop(d);
    let d = serve_on("0.0.0.0:0", "0.0.0.0:0", &["--allow-insecure-key"]);
    assert_eq!(d.stats()["keys"]["insecure_default"], true);
    let hb = common::client();
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], d.heartbeat.port()));
    hb.send_to(&heartbeat(1, 1, 100, "insecure"), to).unwrap();
    d.wait_processed(1);
}

#[test]
fn a_reload_to_the_built_in_key_on_a_non_loopback_socket_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("heartsink.toml");
    std::fs::write(&cfg, "[heartbeat]\nkeys = [\"k\"]\n").unwrap();
    let d = serve_on("0.0.0.0:0", "127.0.0.1:0", &["--config", cfg.to_str().unwrap()]);
    std::fs::write(&cfg, "").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_stderr("refusing to serve the heartbeat socket on 0.0.0.0:");
    assert_eq!(d.stats()["keys"]["insecure_default"], false);
    // Still running on the old key.
    let hb = common::client();
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], d.heartbeat.port()));
    hb.send_to(&heartbeat(1, 1, 100, "k"), to).unwrap();
    let st = d.wait_processed(1);
    assert_eq!(st["accepted"], 1);
}
