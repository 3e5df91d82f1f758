//! Ganeti's request types (0–11) on arbitrary queries, past the HMAC (which the confd target
//! cannot forge): the answers written in place (`ConfigIndex::write_answer`: the index walked
//! as it is written, error texts and Haskell `show` renderings formatted into the reply,
//! src/confd/ganeti/write.rs) must be byte for byte the reply of the built answer
//! (`ConfigIndex::answer_view`), and valid JSON.
//!
//! Input: a type byte (mod 12), a shape byte (empty, plain, dict), then the rest, lossy UTF-8:
//! a plain query whole; a dict's link, ip and ip list split at NUL, its fields from the last
//! part's bytes (mod 3).
#![no_main]

use std::sync::OnceLock;

use heartsink::confd::ganeti::ConfigIndex;
use heartsink::confd::proto::{DictQuery, Query, ReplyMsg, ReqField, Request, RequestType};
use libfuzzer_sys::fuzz_target;

const CONFIG: &[u8] = include_bytes!("../../tests/data/confd/config.data.json");

fn index() -> &'static ConfigIndex {
    static IX: OnceLock<ConfigIndex> = OnceLock::new();
    IX.get_or_init(|| ConfigIndex::from_slice(CONFIG).expect("the test config loads"))
}

fuzz_target!(|data: &[u8]| {
    let [kind, shape, rest @ ..] = data else { return };
    let Some(kind) = RequestType::from_number(i64::from(*kind % 12)) else { return };
    let text = String::from_utf8_lossy(rest);
    let query = match shape % 3 {
        0 => Query::Empty,
        1 => Query::Plain(text.into_owned()),
        _ => {
            let parts: Vec<&str> = text.split('\0').collect();
            let opt = |i: usize| parts.get(i).filter(|s| !s.is_empty()).map(|s| (*s).to_owned());
            let (link, ip) = (opt(0), opt(1));
            let (fields, ip_list) = parts.get(2..).and_then(<[&str]>::split_last).unwrap_or((&"", &[]));
            let fields = fields
                .bytes()
                .map(|b| match b % 3 {
                    0 => ReqField::Name,
                    1 => ReqField::Ip,
                    _ => ReqField::MNodePip,
                })
                .collect();
            let ip_list = ip_list.iter().map(|s| (*s).to_owned()).collect();
            Query::Dict(DictQuery { link, ip, ip_list, fields })
        }
    };
    let req = Request::new(kind, query, "fuzz");
    let ix = index();
    let (mut written, mut built) = (ReplyMsg::default(), ReplyMsg::default());
    ix.write_answer(&req.view(), &mut written);
    built.write(&ix.answer_view(&req.view()));
    assert_eq!(written.as_str(), built.as_str(), "{req:?}");
    if let Err(e) = serde_json::from_str::<serde_json::Value>(written.as_str()) {
        panic!("{req:?}: not JSON ({e}): {}", written.as_str());
    }
});
