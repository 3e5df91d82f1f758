//! confd's pool requests (104 `POOL_NEXT`, 105 `POOL_POLL`): the in-place answer (the query
//! parsed by borrowing it, polled into a kept `PollScratch`) is byte for byte the owned API's
//! (`pool_answer_built`: `form_urlencoded`, `registry::lb::poll` / `next_instances`, a built
//! `serde_json::Value`), on a cluster view (seeded picks), for answers, refusals and malformed
//! queries, with the buffers kept from one request to the next.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::pools;
use heartsink::confd::heartsink::{answer_heartsink, pool_answer_built, HeartsinkScratch};
use heartsink::confd::proto::{Query, ReplyMsg, Request, RequestType};

const POOL_QUERIES: [&str; 22] = [
    "rawx",
    "rawx?size=3",
    "rawx?size=2&slot=ssd",
    "rawx?size=2&slot=rawx-ssd",
    "rawx?size=2&slot=",
    "rawx?size=0",
    "rawx?size=300",
    "rawx?size=x",
    "?size=2",
    "nope?size=2",
    "two",
    "two?avoid=rawx-1,rawx-2,,rawx-3&known=rawx-4",
    "ssd?known=rawx-0&known=10.0.0.2:6000,nobody",
    "ssd?known=rawx-0,rawx-2,rawx-4",
    "far",
    "mix?avoid=rawx-0&avoid=10.0.1.3%3A6000",
    "t%77o?%61void=rawx-1+x,rawx-2&&known=rawx-7",
    "rawx?si%7Ae=2&slot=%FF%2",
    "rawx?size=2&slot=ss%64",
    "two?other=1",
    "two?known",
    "mix?size=3&slot=ssd",
];

#[test]
fn pool_answers_are_byte_identical_to_the_built_ones() {
    let snap = pools::snapshot(pools::rawx(), &pools::POOLS, true);
    let (mut msg, mut built, mut scratch) = (ReplyMsg::default(), ReplyMsg::default(), HeartsinkScratch::default());
    let mut seen_ok = 0;
    for kind in [RequestType::PoolNext, RequestType::PoolPoll] {
        for (i, q) in POOL_QUERIES.iter().enumerate() {
            for salt in ["a", "b", "c"] {
                let req = Request::new(kind, Query::Plain((*q).to_owned()), format!("{salt}{i}"));
                answer_heartsink(&req.view(), &snap, &mut msg, &mut scratch);
                built.write_reply(&pool_answer_built(&req.view(), &snap));
                assert_eq!(msg.as_str(), built.as_str(), "{req:?}");
                seen_ok += usize::from(msg.as_str().contains("\"status\":0"));
            }
        }
        for query in [Query::Empty, Query::Dict(Default::default())] {
            let req = Request::new(kind, query, "s");
            answer_heartsink(&req.view(), &snap, &mut msg, &mut scratch);
            built.write_reply(&pool_answer_built(&req.view(), &snap));
            assert_eq!(msg.as_str(), built.as_str(), "{req:?}");
        }
    }
    assert!(seen_ok > 30, "{seen_ok} answers with picks");
}
