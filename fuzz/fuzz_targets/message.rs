//! `Heartbeat::parse` on arbitrary bytes (the inflated-JSON stage).
//!
//! Nothing may panic; on success the public lists are sorted and deduplicated, and parsing into
//! a reused `Heartbeat` (as a worker does) gives exactly what a fresh one gives.
#![no_main]

use std::cell::RefCell;

use heartsink::proto::octavia::Heartbeat;
use libfuzzer_sys::fuzz_target;

mod common;

thread_local! {
    /// A worker's scratch value, reused across inputs like in the engine.
    static REUSED: RefCell<Heartbeat> = RefCell::new(Heartbeat::default());
}

fuzz_target!(|data: &[u8]| {
    let mut fresh = Heartbeat::default();
    let result = fresh.parse(data);
    REUSED.with(|r| {
        let mut reused = r.borrow_mut();
        let again = reused.parse(data);
        assert_eq!(result, again, "a reused Heartbeat parses differently from a fresh one");
        if again.is_ok() {
            assert_eq!(format!("{fresh:?}"), format!("{reused:?}"), "a reused Heartbeat keeps stale content");
        }
    });
    if result.is_ok() {
        common::check_heartbeat(&fresh);
    }
});
