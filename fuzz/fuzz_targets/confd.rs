//! Confd datagrams on arbitrary bytes: the request parser (server side) and the reply parser
//! (client side) must not panic; a request that verifies must answer from a Ganeti config
//! without panicking, and its reply must parse back to the same reply; the server's own path
//! (kept buffers, answers written in place) must write the same bytes.
#![no_main]

use std::sync::Arc;

use heartsink::confd::ganeti::ConfigIndex;
use heartsink::confd::proto::{encode_reply, parse_reply, parse_request, HmacKey};
use heartsink::confd::server::{handle, ConfdScratch, ConfdState};
use libfuzzer_sys::fuzz_target;

const CONFIG: &[u8] = include_bytes!("../../tests/data/confd/config.data.json");
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    // The key and clock of the deterministic vectors, so the seeds verify.
    let key = HmacKey::new(b"0123456789abcdef0123456789abcdef01234567\n");
    let _ = parse_reply(data, &key);
    if let Ok(v) = parse_request(data, std::slice::from_ref(&key), NOW) {
        if let Ok(ix) = ConfigIndex::from_slice(CONFIG) {
            let reply = ix.answer(&v.request);
            let bytes = encode_reply(&reply, &v.request.rsalt, &key);
            let (salt, back) = parse_reply(&bytes, &key).expect("our own reply parses");
            assert_eq!(salt, v.request.rsalt);
            assert_eq!(back.status, reply.status);
            assert_eq!(back.serial, reply.serial);
            if !v.request.kind.is_heartsink() {
                let state = ConfdState { keys: vec![key.clone()], index: Some(Arc::new(ix)), ..Default::default() };
                let mut out = Vec::new();
                let handled = handle(data, NOW, &state, None, None, &mut ConfdScratch::default(), &mut out);
                assert_eq!(handled, Ok(()));
                assert_eq!(out, bytes, "the server writes the reply encode_reply writes");
            }
        }
    }
});
