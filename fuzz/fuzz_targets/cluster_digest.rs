//! `cluster::digest::decode` on arbitrary bytes (a peer's digest is input from the network),
//! with a keyring of two keys; a digest that decodes must encode back to a body that decodes
//! to the same digest.
#![no_main]

use heartsink::cluster::digest::{decode, encode};
use heartsink::proto::keyring::Keyring;
use libfuzzer_sys::fuzz_target;

#[path = "signed.rs"]
mod signed;
use signed::signed;

fuzz_target!(|data: &[u8]| {
    let keys = Keyring::from_strs(&["fuzz-key", "other"], 0);
    // Unsigned inputs are refused at the tag; sign the input's body so the parser behind it
    // is reached too.
    for input in [data.to_vec(), signed(data, &keys)] {
        if let Ok(d) = decode(&input, &keys) {
            let mut again = Vec::new();
            let json: Vec<(u32, Vec<u8>)> =
                d.services.iter().map(|(age, r)| (*age, serde_json::to_vec(r).unwrap_or_default())).collect();
            let services: Vec<(u32, &[u8])> = json.iter().map(|(a, j)| (*a, &j[..])).collect();
            encode(&d.node, d.impaired, &d.heard, &services, &keys, &mut again);
            assert_eq!(decode(&again, &keys).ok(), Some(d));
        }
    }
});
