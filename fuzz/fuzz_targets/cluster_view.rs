//! `cluster::view::decode` on arbitrary bytes (a part of the leader's answer view is input from
//! the network), with a keyring of two keys; a part that decodes must encode back to bytes that
//! decode to the same part, and applying it to a member's views must not panic.
#![no_main]

use heartsink::cluster::view::{decode, encode};
use heartsink::control::view::Receiver;
use heartsink::proto::keyring::Keyring;
use libfuzzer_sys::fuzz_target;

#[path = "signed.rs"]
mod signed;
use signed::signed;

fuzz_target!(|data: &[u8]| {
    let keys = Keyring::from_strs(&["fuzz-key", "other"], 0);
    let mut views = Receiver::default();
    // Unsigned inputs are refused at the tag; sign the input's body so the parser behind it
    // is reached too.
    for input in [data.to_vec(), signed(data, &keys)] {
        if let Ok((node, part)) = decode(&input, &keys) {
            let mut again = Vec::new();
            encode(&node, &part, &keys, &mut again);
            assert_eq!(decode(&again, &keys).ok(), Some((node, part.clone())));
            let _ = views.apply(part);
        }
    }
});
