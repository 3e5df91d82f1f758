//! Every decoder of `heartsink::etcd::decode` (the answers of etcd's JSON gateway) on the same
//! arbitrary bytes: unary answers, keepalive and watch stream messages, error bodies.
//!
//! Nothing may panic. What decodes keeps the promises the client relies on: a keepalive TTL
//! is positive when present, a lease id is never 0, the errors print.
#![no_main]

use heartsink::etcd::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::range(data);
    let _ = decode::put(data);
    let _ = decode::delete_range(data);
    let _ = decode::txn(data);
    let _ = decode::header_only(data);
    if let Ok((id, _)) = decode::lease_grant(data) {
        assert_ne!(id.0, 0);
    }
    match decode::lease_keepalive(data) {
        Ok(Some(ttl)) => assert!(ttl > 0),
        Ok(None) => {}
        Err(e) => drop(e.to_string()),
    }
    if let Err(e) = decode::watch_message(data) {
        drop(e.to_string());
    }
    for status in [400, 404, 500, 503, 0, u16::MAX] {
        drop(decode::error_body(status, data).to_string());
    }
});
