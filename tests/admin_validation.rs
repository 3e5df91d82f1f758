//! Input bounds of the admin API (issue 16, item 6): every field that reaches the store or the
//! scheduler is checked before anything changes; an out-of-bounds value is `400` with a message
//! naming the field, and reading back shows nothing changed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};

fn send(d: &Daemon, method: &str, path: &str, body: &Value) -> (u16, Value) {
    match ureq::request(method, &d.url(path)).timeout(Duration::from_secs(10)).send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Asserts a `400` whose message names `field`.
fn refused(d: &Daemon, method: &str, path: &str, body: Value, field: &str) {
    let (code, v) = send(d, method, path, &body);
    let msg = v["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(code, 400, "{method} {path} {field}: {v}");
    assert!(msg.contains(field), "{method} {path}: message {msg:?} does not name {field:?}");
}

#[test]
fn out_of_bounds_volumes_are_refused_and_nothing_changes() {
    let d = Daemon::start(&[]);
    refused(&d, "POST", "/v1/volumes", json!({"size": 0}), "size");
    refused(&d, "POST", "/v1/volumes", json!({"size": u64::MAX}), "size");
    refused(&d, "POST", "/v1/volumes", json!({"size": (1u64 << 50) + 1}), "size");
    refused(&d, "POST", "/v1/volumes", json!({"name": "n".repeat(129), "size": 1}), "name");
    refused(&d, "POST", "/v1/volumes", json!({"name": "a/b", "size": 1}), "name");
    refused(&d, "POST", "/v1/volumes", json!({"size": 1, "constraints": vec!["x"; 33]}), "constraints");
    refused(&d, "POST", "/v1/volumes", json!({"size": 1, "constraints": ["bad label"]}), "constraints");
    // 500 KB of name does not even fit the route's body limit: 413 on the declared length,
    // before the body is read (a raw socket, since the daemon closes without reading it).
    {
        use std::io::{Read, Write};
        let body = json!({"name": "n".repeat(500_000), "size": 1}).to_string();
        let mut s = std::net::TcpStream::connect(d.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "POST /v1/volumes HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 413");
    }
    assert_eq!(d.get("/v1/volumes").1["volumes"].as_array().map(Vec::len), Some(0), "nothing was created");

    // One good volume; then out-of-bounds changes and reports leave it as it was.
    let (code, v) =
        send(&d, "POST", "/v1/volumes", &json!({"name": "v-1", "size": 1u64 << 30, "constraints": ["ssd"]}));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let before = d.get(&format!("/v1/volumes/{id}")).1;
    refused(&d, "PATCH", &format!("/v1/volumes/{id}"), json!({"size": 0}), "size");
    refused(&d, "PATCH", &format!("/v1/volumes/{id}"), json!({"size": u64::MAX}), "size");
    refused(&d, "PATCH", &format!("/v1/volumes/{id}"), json!({"constraints": ["é"]}), "constraints");
    refused(
        &d,
        "POST",
        &format!("/v1/volumes/{id}/state"),
        json!({"machine": "m".repeat(129), "state": "ready"}),
        "machine",
    );
    refused(&d, "POST", &format!("/v1/volumes/{id}/state"), json!({"machine": "", "state": "ready"}), "machine");
    refused(
        &d,
        "POST",
        &format!("/v1/volumes/{id}/state"),
        json!({"machine": "m1", "state": "failed", "message": "x".repeat(4097)}),
        "message",
    );
    let mut after = d.get(&format!("/v1/volumes/{id}")).1;
    // The scheduler may have moved it on its own (state, waiting reason); the request did not.
    for key in ["state", "waiting_reason", "updated_ns", "actual", "node", "error", "error_count"] {
        after[key] = before[key].clone();
    }
    assert_eq!(after, before);
}

#[test]
fn out_of_bounds_services_and_pools_are_refused_and_nothing_changes() {
    let d = Daemon::start(&[]);
    let svc = |tags: Value| json!({"type": "rawx", "addr": "127.0.0.1:6000", "tags": tags});
    refused(&d, "POST", "/v1/services", svc(json!({"tag.vol": "x".repeat(500_000)})), "tag.vol");
    let many: serde_json::Map<String, Value> = (0..=256).map(|i| (format!("tag.t{i}"), json!(1))).collect();
    refused(&d, "POST", "/v1/services", svc(Value::Object(many)), "tags");
    refused(&d, "POST", "/v1/services", svc(json!({"tag.service_id": "i".repeat(37)})), "tag.service_id");
    refused(&d, "POST", "/v1/services", svc(json!({format!("tag.{}", "k".repeat(200)): 1})), "tag name");
    refused(&d, "POST", "/v1/services", json!({"type": "t".repeat(65), "addr": "127.0.0.1:6000"}), "type");
    refused(&d, "POST", "/v1/services", json!({"type": "rawx", "addr": "1".repeat(65)}), "addr");
    // One bad entry in a list refuses the whole list.
    let list = json!([svc(json!({})), svc(json!({"tag.vol": "x".repeat(2000)}))]);
    refused(&d, "POST", "/v1/services", list, "tag.vol");
    refused(&d, "POST", "/v1/services/flush?type=RAWX", json!({}), "type");
    let (code, v) = d.get("/v1/services?type=rawx");
    assert_eq!((code, v.as_array().map(Vec::len)), (200, Some(0)), "no service was registered: {v}");

    refused(&d, "POST", "/v1/pools", json!({"name": "p".repeat(129), "targets": "1,rawx"}), "name");
    refused(&d, "POST", "/v1/pools", json!({"name": "a b", "targets": "1,rawx"}), "name");
    refused(&d, "POST", "/v1/pools", json!({"name": "p", "targets": "1,rawx;".repeat(700)}), "targets");
    assert_eq!(d.get("/v1/pools").1, json!({}), "no pool was created");

    // The agent-sized service still registers.
    let ok = svc(json!({"tag.service_id": "rawx-1", "tag.loc": "dc1.r1.h1.v1", "stat.cpu": 10}));
    assert_eq!(send(&d, "POST", "/v1/services", &ok).0, 200);
    assert_eq!(d.get("/v1/services?type=rawx").1.as_array().map(Vec::len), Some(1));
}

#[test]
fn out_of_bounds_amphora_settings_are_refused() {
    let d = Daemon::start(&[]);
    let id = common::uuid(1, 1);
    refused(&d, "PATCH", &format!("/v1/amphorae/{id}"), json!({"expected_listeners": 65536}), "expected_listeners");
    refused(&d, "PATCH", &format!("/v1/amphorae/{id}"), json!({"expected_listeners": -1}), "expected_listeners");
}
