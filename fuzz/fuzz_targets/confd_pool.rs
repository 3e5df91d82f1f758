//! The query of confd's pools' requests (104 `POOL_NEXT`, 105 `POOL_POLL`) on arbitrary bytes:
//! `NAME?size=N&slot=S&avoid=a,b&known=c,d`, parsed in place (percent-decoded into a kept
//! buffer, src/confd/heartsink.rs) and polled into a kept `PollScratch`
//! (src/registry/lb/poll.rs). The confd target reaches answers only through a valid HMAC and
//! skips heartsink's types; here the query goes straight to `answer_heartsink`, as the server
//! calls it once a request verified.
//!
//! For both types, on a snapshot with a world of services and a few pools, in both modes of
//! the generator (the thread's, and a cluster view's seeded one): no panic, and the reply is
//! valid JSON. In the seeded mode the answer must also be byte for byte the one the owned API
//! gives (`pool_answer_built`: `form_urlencoded` parsing, `registry::lb::poll` /
//! `next_instances`, a `serde_json::Value` reply), as the code before the in-place rewrite
//! built it.
#![no_main]

use std::sync::OnceLock;

use heartsink::confd::heartsink::{answer_heartsink, pool_answer_built, HeartsinkScratch};
use heartsink::confd::proto::{Query, ReplyMsg, Request, RequestType};
use heartsink::control::Snapshot;
use heartsink::registry::lb::WorldEntry;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/pools.rs"]
mod pools;

/// The fixture's `rawx` services and pools, 3 services of type `meta2` in a slot of non-ASCII
/// and quote characters, and two more pools, one named like a type.
fn snapshot(cluster_view: bool) -> Snapshot {
    let meta2 = (0..3u64).map(|i| WorldEntry {
        type_name: "meta2".into(),
        addr: format!("10.1.0.{i}:6120"),
        id: format!("10.1.0.{i}:6120"),
        score: 50,
        location: i << 48,
        slots: vec!["é \"x\\".into()],
    });
    let mut specs = pools::POOLS.to_vec();
    specs.extend([("meta2", "2,meta2"), ("big", "9,rawx;strict_location_constraint=0.0.2.3")]);
    pools::snapshot(pools::rawx().chain(meta2), &specs, cluster_view)
}

struct Fixture {
    seeded: Snapshot,
    thread: Snapshot,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture { seeded: snapshot(true), thread: snapshot(false) })
}

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else { return };
    let f = fixture();
    // Kept from one answer to the next, as a worker keeps them: a query must not see the
    // buffers of the one before.
    let (mut msg, mut built, mut scratch) = (ReplyMsg::default(), ReplyMsg::default(), HeartsinkScratch::default());
    for kind in [RequestType::PoolNext, RequestType::PoolPoll] {
        for rsalt in ["a", "salt-2"] {
            let req = Request::new(kind, Query::Plain(q.to_owned()), rsalt);
            answer_heartsink(&req.view(), &f.thread, &mut msg, &mut scratch);
            if let Err(e) = serde_json::from_str::<serde_json::Value>(msg.as_str()) {
                panic!("thread mode: {kind:?} {q:?}: not JSON ({e}): {}", msg.as_str());
            }
            answer_heartsink(&req.view(), &f.seeded, &mut msg, &mut scratch);
            if let Err(e) = serde_json::from_str::<serde_json::Value>(msg.as_str()) {
                panic!("seeded mode: {kind:?} {q:?}: not JSON ({e}): {}", msg.as_str());
            }
            built.write_reply(&pool_answer_built(&req.view(), &f.seeded));
            assert_eq!(msg.as_str(), built.as_str(), "in place vs owned: {kind:?} {q:?} salt {rsalt}");
        }
    }
});
