//! `ServiceBeat::parse` on arbitrary bytes (the service heartbeat JSON stage).
//!
//! Nothing may panic; parsing into a reused `ServiceBeat` (as a worker does) gives exactly what
//! a fresh one gives; a parsed beat has one tag per name, and building it back and parsing the
//! result gives the same beat (floats within a few ULP); `is_service_document` agrees with every successful parse of a
//! document written without escapes in its first key.
#![no_main]

use std::cell::RefCell;

use heartsink::proto::service::{build_service_json, is_service_document, ServiceBeat, TagValue};
use libfuzzer_sys::fuzz_target;

/// Equal, except that floats may differ in the last place: serde_json's default float parser
/// (without the `float_roundtrip` feature) is not always exact on the shortest representation
/// its own writer produces.
fn same(a: &ServiceBeat, b: &ServiceBeat) -> bool {
    let scalars = (&a.kind, a.addr, a.id(), a.seq, a.op, a.score, a.ignored_tags)
        == (&b.kind, b.addr, b.id(), b.seq, b.op, b.score, b.ignored_tags);
    scalars
        && a.tags().len() == b.tags().len()
        && a.tags().iter().zip(b.tags()).all(|(x, y)| {
            x.name == y.name
                && match (&x.value, &y.value) {
                    (TagValue::Float(p), TagValue::Float(q)) => {
                        (p - q).abs() <= p.abs().max(q.abs()) * 4.0 * f64::EPSILON
                    }
                    (p, q) => p == q,
                }
        })
}

thread_local! {
    /// A worker's scratch value, reused across inputs like in the engine.
    static REUSED: RefCell<ServiceBeat> = RefCell::new(ServiceBeat::default());
}

fuzz_target!(|data: &[u8]| {
    let mut fresh = ServiceBeat::default();
    let result = fresh.parse(data);
    REUSED.with(|r| {
        let mut reused = r.borrow_mut();
        let again = reused.parse(data);
        assert_eq!(result, again, "a reused ServiceBeat parses differently from a fresh one");
        if again.is_ok() {
            assert_eq!(fresh, *reused, "a reused ServiceBeat keeps stale content");
        }
    });
    if result.is_err() {
        return;
    }
    let tags = fresh.tags();
    for (i, t) in tags.iter().enumerate() {
        assert!(t.name.starts_with("tag.") || t.name.starts_with("stat."), "kept tag {:?}", t.name);
        assert!(tags[..i].iter().all(|u| u.name != t.name), "tag {:?} twice", t.name);
    }
    let json = build_service_json(&fresh);
    assert!(is_service_document(&json));
    let mut back = ServiceBeat::default();
    back.parse(&json).expect("a built document parses");
    back.ignored_tags = fresh.ignored_tags;
    assert!(same(&back, &fresh), "build then parse changes the beat: {fresh:?} became {back:?}");
    if data.starts_with(b"{\"service\"") {
        assert!(is_service_document(data));
    }
});
