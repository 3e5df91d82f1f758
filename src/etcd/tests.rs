//! The decoders on answers captured from a real etcd 3.4.23 (`tests/data/etcd/`), the
//! proto3 JSON quirks one by one, and the request encoders.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;

use super::decode;
use super::encode;
use super::types::*;
use super::{Client, EtcdError};

macro_rules! data {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/etcd/", $name))
    };
}

fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> Kv {
    Kv { key: key.into(), value: value.into(), create_revision: create, mod_revision: modr, version, lease: None }
}

#[test]
fn range_reads_base64_pairs_and_string_int64s() {
    let r = decode::range(data!("range.json")).unwrap();
    assert_eq!(r.revision, 3);
    assert_eq!(r.kvs, vec![kv("hb/a", "2", 2, 3, 2)]);
    assert_eq!(r.count, 1);
    assert!(!r.more, "an omitted `more` is false");
}

#[test]
fn range_of_a_missing_key_omits_kvs_and_count() {
    let r = decode::range(data!("range_missing.json")).unwrap();
    assert_eq!((r.revision, r.kvs.len(), r.count, r.more), (3, 0, 0, false));
}

#[test]
fn range_page_says_more() {
    let r = decode::range(data!("range_page.json")).unwrap();
    assert!(r.more);
    assert_eq!((r.kvs.len(), r.count), (1, 2));
}

#[test]
fn put_gives_its_revision_and_the_previous_pair() {
    assert_eq!(decode::put(data!("put.json")).unwrap(), PutResponse { revision: 2, prev_kv: None });
    let p = decode::put(data!("put_prev_kv.json")).unwrap();
    assert_eq!(p.revision, 3);
    assert_eq!(p.prev_kv, Some(kv("hb/a", "1", 2, 2, 1)));
}

#[test]
fn delete_counts_and_an_omitted_count_is_zero() {
    assert_eq!(decode::delete_range(data!("delete.json")).unwrap().deleted, 1);
    let d = decode::delete_range(data!("delete_none.json")).unwrap();
    assert_eq!((d.deleted, d.revision), (0, 5));
}

#[test]
fn lease_grant_keepalive_and_an_expired_lease() {
    let (id, ttl) = decode::lease_grant(data!("lease_grant.json")).unwrap();
    assert_eq!((id, ttl), (LeaseId(2324035813863884046), 5));
    assert_eq!(id.to_string(), "2040a2426aa4850e", "lease ids show in hex");
    assert_eq!(decode::lease_keepalive(data!("lease_keepalive.json")).unwrap(), Some(5));
    assert_eq!(decode::lease_keepalive(data!("lease_keepalive_gone.json")).unwrap(), None, "no TTL: the lease is gone");
    assert_eq!(decode::header_only(data!("lease_revoke.json")).unwrap(), 5);
}

#[test]
fn keepalive_stream_error_is_unavailable() {
    assert_eq!(
        decode::lease_keepalive(data!("stream_err_no_leader.json")),
        Err(EtcdError::Unavailable { message: "etcdserver: no leader".into() })
    );
}

#[test]
fn txn_success_failure_and_nested_answers() {
    let ok = decode::txn(data!("txn_succeeded.json")).unwrap();
    assert!(ok.succeeded);
    assert_eq!(ok.revision, 6);
    assert_eq!(ok.responses, vec![OpResponse::Put(PutResponse { revision: 6, prev_kv: None })]);

    let failed = decode::txn(data!("txn_failed.json")).unwrap();
    assert!(!failed.succeeded, "an omitted `succeeded` is false");
    assert_eq!(failed.revision, 6);
    assert_eq!(
        failed.responses,
        vec![
            OpResponse::Range(RangeResponse {
                revision: 6,
                kvs: vec![kv("hb/l", "n1", 6, 6, 1)],
                more: false,
                count: 1
            }),
            OpResponse::Delete(DeleteResponse { revision: 6, deleted: 0, prev_kvs: vec![] }),
        ]
    );

    let del = decode::txn(data!("txn_delete_prev.json")).unwrap();
    assert_eq!(
        del.responses,
        vec![OpResponse::Delete(DeleteResponse { revision: 7, deleted: 1, prev_kvs: vec![kv("hb/l", "n1", 6, 6, 1)] })]
    );
}

#[test]
fn error_bodies_map_to_the_documented_errors() {
    assert_eq!(decode::error_body(404, data!("err_lease_not_found.json")), EtcdError::LeaseNotFound);
    assert_eq!(decode::error_body(400, data!("err_compacted.json")), EtcdError::Compacted { compact_revision: None });
    assert_eq!(
        decode::error_body(503, data!("err_no_leader.json")),
        EtcdError::Unavailable { message: "etcdserver: no leader".into() }
    );
    assert!(decode::error_body(500, data!("err_context_deadline.json")).is_retryable());
    assert_eq!(
        decode::error_body(400, data!("err_bad_base64.json")),
        EtcdError::Status { code: 3, message: "illegal base64 data at input byte 0".into() }
    );
    assert_eq!(
        decode::error_body(400, data!("err_too_many_ops.json")),
        EtcdError::Status { code: 3, message: "etcdserver: too many operations in txn request".into() }
    );
    // A body that is not the gateway's: the HTTP status decides.
    assert!(matches!(decode::error_body(503, b"<html>busy</html>"), EtcdError::Unavailable { .. }));
    assert!(matches!(decode::error_body(502, b""), EtcdError::Status { code: 2, .. }));
}

#[test]
fn watch_messages_created_events_and_cancel() {
    let created = decode::watch_message(data!("watch_created.json")).unwrap();
    assert!(created.created && !created.canceled && created.events.is_empty());
    assert_eq!(created.revision, 7);

    let h = decode::watch_message(data!("watch_history.json")).unwrap();
    let kinds: Vec<_> = h.events.iter().map(|e| (e.kind, e.kv.key.clone(), e.kv.mod_revision)).collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Put, b"hb/b".to_vec(), 4),
            (EventKind::Delete, b"hb/b".to_vec(), 5),
            (EventKind::Put, b"hb/l".to_vec(), 6),
            (EventKind::Delete, b"hb/l".to_vec(), 7),
        ],
        "an omitted type is PUT"
    );
    assert_eq!(h.events[0].kv.value, b"", "an omitted value is empty");
    assert_eq!(h.events[1].prev_kv, Some(kv("hb/b", "", 4, 4, 1)));
    assert_eq!(h.events[3].kv.create_revision, 0, "a delete's pair has only key and mod_revision");

    let t = decode::watch_message(data!("watch_txn.json")).unwrap();
    assert_eq!(t.events.len(), 2);
    assert!(t.events.iter().all(|e| e.kv.mod_revision == 9));

    let c = decode::watch_message(data!("watch_compacted.json")).unwrap();
    assert!(c.canceled);
    assert_eq!((c.compact_revision, c.revision), (3, 0));

    assert_eq!(
        decode::watch_message(data!("stream_err_no_leader.json")),
        Err(EtcdError::Unavailable { message: "etcdserver: no leader".into() })
    );
}

#[test]
fn proto3_quirks_numbers_nulls_enum_numbers_unpadded_base64() {
    let body = json!({
        "header": {"revision": 12},
        "kvs": [{"key": "aGIvYQ", "value": null, "create_revision": 3, "mod_revision": "4",
                 "version": null, "lease": "7", "unknown_field": {"nested": [1, 2]}}],
        "more": null,
        "count": 1
    });
    let r = decode::range(body.to_string().as_bytes()).unwrap();
    assert_eq!(r.revision, 12);
    assert_eq!(
        r.kvs,
        vec![Kv {
            key: b"hb/a".to_vec(),
            value: vec![],
            create_revision: 3,
            mod_revision: 4,
            version: 0,
            lease: Some(LeaseId(7))
        }]
    );
    let w = json!({"result": {"header": {"revision": "9"}, "events": [
        {"type": 1, "kv": {"key": "YQ=="}}, {"type": null, "kv": {"key": "Yg=="}}, {"type": "PUT", "kv": {"key": "Yw=="}}]}});
    let m = decode::watch_message(w.to_string().as_bytes()).unwrap();
    let kinds: Vec<_> = m.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::Delete, EventKind::Put, EventKind::Put]);
}

#[test]
fn malformed_answers_are_decode_errors() {
    let bad: &[&[u8]] = &[
        b"",
        b"{",
        b"null",
        b"[]",
        b"{}",                                                       // no header
        br#"{"header":{"revision":"x"}}"#,                           // not an integer
        br#"{"header":{"revision":"99999999999999999999"}}"#,        // out of range
        br#"{"header":{"revision":1.5}}"#,                           // a float
        br#"{"header":{},"kvs":[{"key":"!!"}]}"#,                    // bad base64
        br#"{"header":{},"kvs":{"key":"YQ=="}}"#,                    // kvs not a list
        br#"{"header":{},"more":"yes"}"#,                            // not a bool
        br#"{"header":{"revision":"1"},"header":{"revision":"2"}}"#, // duplicate field
        "{\"header\":{\"revision\":\"\u{e9}\u{e9}\"}}".as_bytes(),   // non-ASCII digits
    ];
    for b in bad {
        assert!(
            matches!(decode::range(b), Err(EtcdError::Decode(_))),
            "{:?} -> {:?}",
            String::from_utf8_lossy(b),
            decode::range(b)
        );
    }
    assert!(matches!(decode::txn(br#"{"header":{},"responses":[{}]}"#), Err(EtcdError::Decode(_))));
    assert!(matches!(
        decode::txn(br#"{"header":{},"responses":[{"response_put":{},"response_range":{}}]}"#),
        Err(EtcdError::Decode(_))
    ));
    assert!(matches!(
        decode::watch_message(br#"{"result":{"events":[{"type":"EXPIRE","kv":{}}]}}"#),
        Err(EtcdError::Decode(_))
    ));
    assert!(matches!(decode::watch_message(br#"{"result":{"events":[{"type":"PUT"}]}}"#), Err(EtcdError::Decode(_))));
    assert!(matches!(decode::watch_message(br#"{}"#), Err(EtcdError::Decode(_))));
    assert!(matches!(decode::lease_grant(br#"{"header":{},"TTL":"5"}"#), Err(EtcdError::Decode(_))));
    assert!(matches!(
        decode::lease_grant(br#"{"header":{},"ID":"1","error":"lease exists"}"#),
        Err(EtcdError::Status { .. })
    ));
}

#[test]
fn requests_use_base64_and_string_int64s() {
    let t = Txn::new()
        .when([
            Compare::create_revision("k", CompareOp::Equal, 0),
            Compare::mod_revision("k", CompareOp::Less, 9),
            Compare::version("k", CompareOp::Greater, 1),
            Compare::value("k", CompareOp::NotEqual, "v"),
        ])
        .and_then([TxnOp::put("k", "v", Some(LeaseId(42))), TxnOp::delete("d")])
        .or_else([TxnOp::get("k"), TxnOp::get_prefix("p/")]);
    assert_eq!(
        encode::txn(&t),
        json!({
            "compare": [
                {"key": "aw==", "result": "EQUAL", "target": "CREATE", "create_revision": "0"},
                {"key": "aw==", "result": "LESS", "target": "MOD", "mod_revision": "9"},
                {"key": "aw==", "result": "GREATER", "target": "VERSION", "version": "1"},
                {"key": "aw==", "result": "NOT_EQUAL", "target": "VALUE", "value": "dg=="},
            ],
            "success": [
                {"request_put": {"key": "aw==", "value": "dg==", "lease": "42"}},
                {"request_delete_range": {"key": "ZA=="}},
            ],
            "failure": [
                {"request_range": {"key": "aw=="}},
                {"request_range": {"key": "cC8=", "range_end": "cDA="}},
            ],
        })
    );
    assert_eq!(encode::lease_id(LeaseId(-1)), json!({"ID": "-1"}));
    assert_eq!(
        encode::watch_create(b"a", Some(b"b"), 5, true),
        json!({"create_request": {"key": "YQ==", "range_end": "Yg==", "start_revision": "5", "prev_kv": true}})
    );
}

#[test]
fn prefix_ranges() {
    assert_eq!(prefix_end(b"hb/"), b"hb0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    assert_eq!(prefix_range(Vec::new()), (vec![0], vec![0]), "every key");
    assert_eq!(prefix_range(b"x".to_vec()), (b"x".to_vec(), b"y".to_vec()));
}

#[test]
fn endpoints_are_checked_and_normalized() {
    let c = Client::new(vec!["127.0.0.1:2379".into(), "http://[::1]:2380/".into()], Client::DEFAULT_TIMEOUT).unwrap();
    assert_eq!(c.endpoints(), ["http://127.0.0.1:2379", "http://[::1]:2380"]);
    assert_eq!(c.endpoint(), "http://127.0.0.1:2379");
    assert!(!c.reachable(), "nothing asked yet");
    for bad in ["", "https://127.0.0.1:2379", "127.0.0.1", "127.0.0.1:x", "http://h:1/v3", ":2379", "h :1"] {
        assert!(
            matches!(Client::new(vec![bad.into()], Client::DEFAULT_TIMEOUT), Err(EtcdError::BadEndpoint(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(Client::new(vec![], Client::DEFAULT_TIMEOUT), Err(EtcdError::BadEndpoint(_))));
}

#[test]
fn a_closed_port_is_unreachable_and_rotation_tries_each_endpoint_once() {
    // Two ports nobody listens on (bound, then released).
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let c = Client::new(ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(), Client::DEFAULT_TIMEOUT).unwrap();
    let t = std::time::Instant::now();
    match c.put("k", "v", None) {
        Err(EtcdError::Unreachable { endpoint, .. }) => assert_eq!(endpoint, format!("http://127.0.0.1:{}", ports[1])),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Client::DEFAULT_TIMEOUT, "refused connections fail fast");
    assert!(!c.reachable());
    let (_, e) = c.last_error().unwrap();
    assert!(e.contains(&ports[1].to_string()), "{e}");
}
