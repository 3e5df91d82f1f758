//! Every Ganeti confd vector (`tests/data/confd/`, made by the real Ganeti 3.0.2 Python client,
//! the real Haskell `ganeti-confd` 3.0.2 and Ganeti's serializer) against heartsink's confd code,
//! with a fake clock:
//!
//! * requests parse and verify (inside the ±300 s window, edges included) and are dropped as
//!   stale or future just outside it;
//! * heartsink's encoder reproduces the real client's request bytes;
//! * heartsink's answers equal the real replies, byte for byte against the daemon's;
//! * every reply verifies and decodes;
//! * validation probes are each dropped under their reason;
//! * the client merges the captured replies of three servers as the Python client does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use heartsink::confd::client::{ConfdClient, Coverage, Event, Progress};
use heartsink::confd::ganeti::ConfigIndex;
use heartsink::confd::proto::{
    encode_reply, encode_request, parse_reply, parse_request, DictQuery, HmacKey, Query, Reply, ReplyError, ReqField,
    Request, RequestError, RequestType,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DET_CLOCK: i64 = 1_700_000_000;

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/confd"))
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn json_file(name: &str) -> Value {
    serde_json::from_slice(&read(name)).unwrap()
}

fn key_bytes() -> Vec<u8> {
    read("hmac.key")
}

fn key() -> HmacKey {
    HmacKey::new(&key_bytes())
}

fn index() -> ConfigIndex {
    ConfigIndex::load(dir().join("config.data.json")).unwrap()
}

/// The reference's decoded request JSON as a typed request.
fn request_of(v: &Value) -> Request {
    let kind = RequestType::from_number(v["type"].as_i64().unwrap()).unwrap();
    let query = match v.get("query") {
        None | Some(Value::Null) => Query::Empty,
        Some(Value::String(s)) => Query::Plain(s.clone()),
        Some(Value::Object(m)) => Query::Dict(DictQuery {
            link: m.get("0").and_then(Value::as_str).map(str::to_owned),
            ip: m.get("1").and_then(Value::as_str).map(str::to_owned),
            ip_list: m
                .get("2")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default(),
            fields: m
                .get("3")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|f| match f.as_i64().unwrap() {
                            0 => ReqField::Name,
                            1 => ReqField::Ip,
                            _ => ReqField::MNodePip,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }),
        Some(other) => panic!("query {other}"),
    };
    Request { protocol: v["protocol"].as_i64().unwrap(), kind, query, rsalt: v["rsalt"].as_str().unwrap().to_owned() }
}

fn reply_of(v: &Value) -> Reply {
    Reply {
        protocol: v["protocol"].as_i64().unwrap(),
        status: v["status"].as_i64().unwrap(),
        answer: v["answer"].clone(),
        serial: v["serial"].as_i64().unwrap(),
    }
}

#[test]
fn manifest_files_are_intact() {
    let manifest = json_file("manifest.json");
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 21);
    for e in entries {
        let name = e["file"].as_str().unwrap();
        let bytes = read(name);
        assert_eq!(bytes.len() as u64, e["bytes"].as_u64().unwrap(), "{name}");
        assert_eq!(hex::encode(Sha256::digest(&bytes)), e["sha256"].as_str().unwrap(), "{name}");
    }
    assert_eq!(key_bytes().len(), 41, "the key keeps its LF");
}

#[test]
fn manifest_requests_and_replies_verify() {
    let manifest = json_file("manifest.json");
    let ix = index();
    for e in manifest.as_array().unwrap() {
        let name = e["file"].as_str().unwrap();
        match e["kind"].as_str().unwrap() {
            "request" => {
                let ts = e["request_timestamp"].as_i64().unwrap();
                let v = parse_request(&read(name), &[key()], ts).unwrap_or_else(|err| panic!("{name}: {err}"));
                assert_eq!(v.timestamp, ts);
                assert_eq!(v.request.rsalt, e["rsalt"].as_str().unwrap(), "{name}");
                // The answer is well formed and verifies as a reply.
                let pkt = encode_reply(&ix.answer(&v.request), &v.request.rsalt, &key());
                assert!(pkt.is_ascii());
                assert_eq!(parse_reply(&pkt, &key()).unwrap().0, v.request.rsalt);
            }
            "reply" => {
                let (salt, _) = parse_reply(&read(name), &key()).unwrap_or_else(|err| panic!("{name}: {err}"));
                assert_eq!(salt, e["rsalt"].as_str().unwrap(), "{name}");
            }
            _ => {}
        }
    }
}

#[test]
fn deterministic_vectors() {
    let det = json_file("det_vectors.json");
    assert_eq!(det["fake_clock"].as_i64(), Some(DET_CLOCK));
    assert_eq!(det["hmac_key_file_content"].as_str().unwrap().as_bytes(), key_bytes());
    let ix = index();
    for v in det["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let files: Vec<&str> = v["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        let req_bytes = read(files[0]);
        let want_req = request_of(&v["request"]);
        let want_reply = reply_of(&v["reply"]);
        let rsalt = v["rsalt"].as_str().unwrap();

        // The request verifies with the fake clock, and at both edges of the window.
        for now in [DET_CLOCK, DET_CLOCK - 300, DET_CLOCK + 300] {
            let got = parse_request(&req_bytes, &[key()], now).unwrap_or_else(|e| panic!("{name} at {now}: {e}"));
            assert_eq!(got.request, want_req, "{name}");
        }
        // One second further and it is dropped.
        assert_eq!(parse_request(&req_bytes, &[key()], DET_CLOCK + 301), Err(RequestError::StaleTimestamp));
        assert_eq!(parse_request(&req_bytes, &[key()], DET_CLOCK - 301), Err(RequestError::FutureTimestamp));
        // heartsink's client encoder makes the real client's bytes.
        assert_eq!(encode_request(&want_req, DET_CLOCK, &key()), req_bytes, "{name}: request bytes");

        // The server core answers what the real daemon answered...
        let answer = ix.answer(&want_req);
        assert_eq!(answer, want_reply, "{name}");
        let ours = encode_reply(&answer, rsalt, &key());
        for f in &files[1..] {
            let bytes = read(f);
            // ...byte for byte where the daemon made the reply...
            if f.ends_with("_haskell.bin") {
                assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&bytes), "{f}");
            }
            // ...and every reply (Haskell- or Python-formatted) decodes to it.
            let (salt, reply) = parse_reply(&bytes, &key()).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!((salt.as_str(), &reply), (rsalt, &want_reply), "{f}");
        }
    }
}

#[test]
fn live_vectors() {
    let live = json_file("vectors.json");
    assert_eq!(live["port"].as_u64(), Some(1814));
    let ix = index();
    for v in live["vectors"].as_array().unwrap() {
        let file = v["request_file"].as_str().unwrap();
        let ts = v["request_timestamp"].as_i64().unwrap();
        let bytes = read(file);
        let want_req = request_of(&v["request_inner"]);
        for now in [ts, ts - 300, ts + 300] {
            assert_eq!(parse_request(&bytes, &[key()], now).unwrap().request, want_req, "{file}");
        }
        assert_eq!(parse_request(&bytes, &[key()], ts + 301), Err(RequestError::StaleTimestamp));
        assert_eq!(parse_request(&bytes, &[key()], ts - 301), Err(RequestError::FutureTimestamp));
        // The real client's bytes, reproduced.
        assert_eq!(encode_request(&want_req, ts, &key()), bytes, "{file}");
        assert_eq!(v["request_outer"]["salt"].as_str().unwrap(), ts.to_string());

        let answer = ix.answer(&want_req);
        let ours = encode_reply(&answer, &want_req.rsalt, &key());
        for r in v["replies"].as_array().unwrap() {
            let f = r["file"].as_str().unwrap();
            let bytes = read(f);
            assert_eq!(reply_of(&r["inner"]), answer, "{f}");
            let (salt, reply) = parse_reply(&bytes, &key()).unwrap();
            assert_eq!((salt, reply), (want_req.rsalt.clone(), answer.clone()), "{f}");
            if f.ends_with("_haskell.bin") {
                assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&bytes), "{f}");
            }
            // The decoded outer documents of the vectors match the packets.
            let outer: Value = serde_json::from_slice(&bytes[4..]).unwrap();
            assert_eq!(outer, r["outer"], "{f}");
        }
    }
}

/// `plj0` + an outer document with members in this order, signed over `salt ‖ msg`.
fn pack(msg: &str, salt: &str, extra: &str) -> Vec<u8> {
    let mac = String::from_utf8(key().sign(salt, msg).to_vec()).unwrap();
    pack_mac(msg, salt, &mac, extra)
}

fn pack_mac(msg: &str, salt: &str, mac: &str, extra: &str) -> Vec<u8> {
    let doc = format!(
        "{{\"msg\": {}, \"salt\": {}, \"hmac\": {}{extra}}}",
        serde_json::to_string(msg).unwrap(),
        serde_json::to_string(salt).unwrap(),
        serde_json::to_string(mac).unwrap()
    );
    [b"plj0".as_slice(), doc.as_bytes()].concat()
}

const PING: &str = "{\"protocol\": 1, \"type\": 0, \"rsalt\": \"r\"}\n";

fn check(pkt: &[u8], now: i64) -> Result<Request, RequestError> {
    parse_request(pkt, &[key()], now).map(|v| v.request)
}

#[test]
fn validation_probes() {
    let now = DET_CLOCK;
    let ts = now.to_string();
    let good = pack(PING, &ts, "");
    assert!(check(&good, now).is_ok());

    // Magic.
    let mut bad_magic = good.clone();
    bad_magic[3] = b'1';
    assert_eq!(check(&bad_magic, now), Err(RequestError::BadMagic));
    assert_eq!(check(b"", now), Err(RequestError::BadMagic));
    assert_eq!(check(&good[4..], now), Err(RequestError::BadMagic));

    // MAC: flipped digit, other key, the key without its LF, truncated; upper case is fine.
    let mac = String::from_utf8(key().sign(&ts, PING).to_vec()).unwrap();
    let flipped = format!("{}{}", &mac[..39], if mac.ends_with('0') { '1' } else { '0' });
    assert_eq!(check(&pack_mac(PING, &ts, &flipped, ""), now), Err(RequestError::BadHmac));
    assert_eq!(check(&pack_mac(PING, &ts, &mac[..39], ""), now), Err(RequestError::BadHmac));
    assert!(check(&pack_mac(PING, &ts, &mac.to_uppercase(), ""), now).is_ok());
    let no_lf = HmacKey::new(&key_bytes()[..40]);
    assert_eq!(parse_request(&good, std::slice::from_ref(&no_lf), now), Err(RequestError::BadHmac));
    assert_eq!(parse_request(&good, &[no_lf, key()], now).unwrap().key_index, 1, "rotation: second key");
    // The MAC covers the salt: another timestamp with the same MAC fails.
    assert_eq!(check(&pack_mac(PING, &(now + 1).to_string(), &mac, ""), now), Err(RequestError::BadHmac));

    // Timestamp window edges.
    for (d, want) in [
        (-300, None),
        (300, None),
        (-301, Some(RequestError::StaleTimestamp)),
        (301, Some(RequestError::FutureTimestamp)),
        (-100_000, Some(RequestError::StaleTimestamp)),
    ] {
        let r = check(&pack(PING, &(now + d).to_string(), ""), now);
        assert_eq!(r.err(), want, "skew {d}");
    }
    for bad in ["", "1700000000 ", "1700000000.0", "+1700000000", "17e8", "now"] {
        assert_eq!(check(&pack(PING, bad, ""), now), Err(RequestError::BadTimestamp), "{bad:?}");
    }
    for ok in [" 1700000000", "(1700000000)", "0x6553F100"] {
        assert!(check(&pack(PING, ok, ""), now).is_ok(), "{ok:?}");
    }

    // Exact key sets: outer and inner.
    assert_eq!(check(&pack(PING, &ts, ", \"key_selector\": \"x\""), now), Err(RequestError::BadEnvelope));
    assert_eq!(check(&pack(PING, &ts, ", \"x\": 1"), now), Err(RequestError::BadEnvelope));
    let missing = format!("plj0{{\"msg\": {}, \"salt\": \"{ts}\"}}", serde_json::to_string(PING).unwrap());
    assert_eq!(check(missing.as_bytes(), now), Err(RequestError::BadEnvelope));
    let extra_inner = "{\"protocol\": 1, \"type\": 0, \"rsalt\": \"r\", \"extra\": 1}";
    assert_eq!(check(&pack(extra_inner, &ts, ""), now), Err(RequestError::BadRequest));
    let bad_type = "{\"protocol\": 1, \"type\": 12, \"rsalt\": \"r\"}";
    assert_eq!(check(&pack(bad_type, &ts, ""), now), Err(RequestError::BadRequest));
    let num_query = "{\"protocol\": 1, \"type\": 0, \"rsalt\": \"r\", \"query\": 5}";
    assert_eq!(check(&pack(num_query, &ts, ""), now), Err(RequestError::BadRequest));

    // Size: 4096 bytes are read, 4097 are not.
    let sized = |total: usize| {
        let base = pack("{\"protocol\": 1, \"type\": 0, \"rsalt\": \"\"}", &ts, "").len();
        let rsalt = "x".repeat(total - base);
        pack(&format!("{{\"protocol\": 1, \"type\": 0, \"rsalt\": \"{rsalt}\"}}"), &ts, "")
    };
    assert_eq!(sized(4096).len(), 4096);
    assert!(check(&sized(4096), now).is_ok());
    assert_eq!(check(&sized(4097), now), Err(RequestError::Oversize));

    // Not JSON: outer and inner.
    assert_eq!(check(b"plj0{\"msg\": ", now), Err(RequestError::NotJson));
    assert_eq!(check(b"plj0hello", now), Err(RequestError::NotJson));
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"x");
    assert_eq!(check(&trailing, now), Err(RequestError::NotJson));
    let mut leading = b"plj0 ".to_vec();
    leading.extend_from_slice(&good[4..]);
    assert_eq!(check(&leading, now), Err(RequestError::NotJson));
    let mut trailing_ws = good.clone();
    trailing_ws.extend_from_slice(b" \n\t");
    assert!(check(&trailing_ws, now).is_ok());
    assert_eq!(check(&pack("not json", &ts, ""), now), Err(RequestError::MsgNotJson));
    assert_eq!(check(&pack(&format!(" {PING}"), &ts, ""), now), Err(RequestError::MsgNotJson));
    let surrogate = "{\"protocol\": 1, \"type\": 0, \"rsalt\": \"\\ud800\"}";
    assert_eq!(check(&pack(surrogate, &ts, ""), now), Err(RequestError::SurrogateEscape));

    // Not UTF-8 / not ASCII. The daemon reads the datagram as Latin-1 and MACs the UTF-8 of
    // what it read: a raw 0xF6 signed over its own byte, and raw UTF-8 signed over its bytes,
    // both fail the MAC...
    let nonascii_msg = "{\"protocol\": 1, \"type\": 1, \"query\": \"n\u{f6}de\", \"rsalt\": \"r\"}";
    let mac = String::from_utf8(key().sign(&ts, nonascii_msg).to_vec()).unwrap();
    let raw_utf8 =
        format!("plj0{{\"msg\": \"{}\", \"salt\": \"{ts}\", \"hmac\": \"{mac}\"}}", nonascii_msg.replace('"', "\\\""));
    assert_eq!(check(raw_utf8.as_bytes(), now), Err(RequestError::BadHmac));
    let latin1: Vec<u8> = raw_utf8.chars().map(|c| c as u32 as u8).collect();
    assert!(std::str::from_utf8(&latin1).is_err(), "not UTF-8");
    let mut not_utf8 = latin1.clone();
    // ...signed over the raw byte 0xF6 instead of the UTF-8 of U+00F6:
    let pos = not_utf8.windows(40).position(|w| w == mac.as_bytes()).unwrap();
    let mut m = hmac_raw(&[ts.as_bytes(), &nonascii_msg.chars().map(|c| c as u32 as u8).collect::<Vec<_>>()].concat());
    m.truncate(40);
    not_utf8[pos..pos + 40].copy_from_slice(m.as_bytes());
    assert_eq!(check(&not_utf8, now), Err(RequestError::BadHmac));
    // ...while the Haskell client's way (Latin-1 bytes on the wire, MAC over the UTF-8 of the
    // characters) is answered, as by the daemon; the escaped form is the portable one.
    let got = check(&latin1, now).unwrap();
    assert_eq!(got.query, Query::Plain("n\u{f6}de".into()));
    let escaped = "{\"protocol\": 1, \"type\": 1, \"query\": \"n\\u00f6de\", \"rsalt\": \"r\"}";
    assert_eq!(check(&pack(escaped, &ts, ""), now).unwrap().query, Query::Plain("n\u{f6}de".into()));
    // The answer to it is ASCII (the daemon would send a raw 0xF6 here).
    let reply = encode_reply(&index().answer(&got), "r", &key());
    assert!(reply.is_ascii());
    assert!(String::from_utf8(reply).unwrap().contains("Node name n\\\\u00f6de not found"));

    // Every error has a distinct label.
    let labels: std::collections::BTreeSet<&str> = RequestError::ALL.iter().map(|e| e.label()).collect();
    assert_eq!(labels.len(), RequestError::ALL.len());
}

fn hmac_raw(data: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(&key_bytes()).unwrap();
    m.update(data);
    hex::encode(m.finalize().into_bytes())
}

#[test]
fn reply_probes() {
    let good = read("det_rep_ping_haskell.bin");
    assert!(parse_reply(&good, &key()).is_ok());
    let mut bad = good.clone();
    bad[0] = b'x';
    assert_eq!(parse_reply(&bad, &key()), Err(ReplyError::BadMagic));
    assert_eq!(parse_reply(&good, &HmacKey::new(b"other\n")), Err(ReplyError::BadHmac));
    assert_eq!(parse_reply(b"plj0{", &key()), Err(ReplyError::NotJson));
    assert_eq!(parse_reply(b"plj0{\"msg\": \"x\"}", &key()), Err(ReplyError::BadEnvelope));
    // A reply with an extra member is refused (the Python client would crash on it).
    let extra = "{\"protocol\":1,\"status\":0,\"answer\":1,\"serial\":0,\"x\":1}";
    assert_eq!(parse_reply(&pack(extra, "r", ""), &key()), Err(ReplyError::BadReply));
    let no_serial = "{\"protocol\":1,\"status\":0,\"answer\":1}";
    assert_eq!(parse_reply(&pack(no_serial, "r", ""), &key()), Err(ReplyError::BadReply));
    assert_eq!(parse_reply(&pack("nope", "r", ""), &key()), Err(ReplyError::MsgNotJson));
}

/// The live capture: one request answered by the daemon (127.0.0.1) and two Python responders
/// (127.0.0.2, 127.0.0.3). Fed to heartsink's client as if it had sent the request.
#[test]
fn client_merges_the_captured_replies() {
    let live = json_file("vectors.json");
    let peers: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].iter().map(|s| s.parse().unwrap()).collect();
    for v in live["vectors"].as_array().unwrap() {
        let req = request_of(&v["request_inner"]);
        let ts = Duration::from_secs(v["request_timestamp"].as_u64().unwrap());
        let mut c = ConfdClient::new(key(), &peers, None).unwrap().with_seed(1);
        let salt = c.send_request(req.clone(), Coverage::Default, ts).unwrap();
        // The payload sent is the real client's, to each of the three peers.
        let sent: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert_eq!(sent.len(), 3);
        assert_eq!(&*sent[0].payload, read(v["request_file"].as_str().unwrap()).as_slice());
        let replies = v["replies"].as_array().unwrap();
        for (i, r) in replies.iter().enumerate() {
            let from = SocketAddr::new(r["from"].as_str().unwrap().parse().unwrap(), 1814);
            c.handle_datagram(&read(r["file"].as_str().unwrap()), from, ts + Duration::from_millis(i as u64)).unwrap();
        }
        let n = replies.len();
        assert_eq!(c.progress(&salt), Some(Progress { sent: 3, received: n, needed: 2 }));
        assert!(c.progress(&salt).unwrap().answered());
        assert_eq!(c.consistent(&salt), Some(true));
        // Same serial and answer from every server: the filter passes the first only.
        let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(events.len(), 1, "{events:?}");
        let want = reply_of(&replies[0]["inner"]);
        assert!(matches!(&events[0], Event::Reply { reply, .. } if *reply == want));
        // A duplicate from the same IP does not count twice.
        let r0 = &replies[0];
        let from = SocketAddr::new(r0["from"].as_str().unwrap().parse().unwrap(), 1814);
        c.handle_datagram(&read(r0["file"].as_str().unwrap()), from, ts).unwrap();
        assert_eq!(c.progress(&salt).unwrap().received, n);
        let got = c.finish(&salt).unwrap();
        assert_eq!(got.best(), Some(&want));
        assert_eq!(got.replies.len(), n + 1);
        // Once finished (or expired), late replies are unknown.
        assert_eq!(c.handle_datagram(&read(r0["file"].as_str().unwrap()), from, ts), Err(ReplyError::UnknownSalt));
    }
}

#[test]
fn client_expires_after_ten_seconds() {
    let det = json_file("det_vectors.json");
    let v = &det["vectors"][0];
    let req = request_of(&v["request"]);
    let t0 = Duration::from_secs(DET_CLOCK as u64);
    let mut c = ConfdClient::new(key(), &["127.0.0.1".parse().unwrap()], None).unwrap();
    let salt = c.send_request(req, Coverage::Default, t0).unwrap();
    let from: SocketAddr = "127.0.0.1:1814".parse().unwrap();
    // At 10 s the request expires; a reply after that is unknown.
    c.handle_timeout(t0 + Duration::from_secs(10));
    assert!(matches!(c.poll_event(), Some(Event::Expired { .. })));
    assert_eq!(
        c.handle_datagram(&read("det_rep_ping_haskell.bin"), from, t0 + Duration::from_secs(10)),
        Err(ReplyError::UnknownSalt)
    );
    assert!(c.progress(&salt).is_none());
    assert_eq!(json!(c.outstanding()), json!(0));
}
