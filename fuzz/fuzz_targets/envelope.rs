//! The whole per-packet path on arbitrary bytes: verify → inflate → parse.
//!
//! 1. The input as a datagram: `verify` must not panic (it verifies only inputs derived from the
//!    seeds, which are real envelopes under the key `insecure`), and what verifies goes on
//!    through the stages below.
//! 2. The input as an authenticated payload: the fuzzer cannot forge an HMAC, so the input is
//!    wrapped in a valid hex tag with `push_tag`, which must verify to exactly the input; the
//!    payload then goes through both inflate back-ends and the JSON through `Heartbeat::parse`
//!    (checked as in the `message` target).
//!
//! The inflate check runs with the production cap and with a small cap that the fuzzer can
//! cross. It is differential where the two back-ends are defined to agree, and against an
//! oracle where they are not:
//!
//! * success or failure, and the inflated bytes: the three back-ends, and the oracle, agree
//!   exactly;
//! * the error kind: `InflateError` documents `TooLarge` as "the stream inflates to more than
//!   the cap" and `Corrupt` as everything else that is not a complete stream. The oracle
//!   (flate2's streaming inflate, given one byte more than the cap) computes that definition,
//!   and heartsink's zlib-rs and small back-ends must match it (`inflate_diff` checks the
//!   small one against real zlib on far more streams). libdeflate's kind is checked only for
//!   complete streams: on a broken stream near the cap it may legitimately say either (it
//!   checks for output space before it notices an invalid distance or an incomplete Huffman
//!   code, and it rejects a stored block longer than the remaining input before copying any
//!   of it), and either way the packet is dropped.
#![no_main]

use std::cell::RefCell;

use heartsink::proto::envelope::{self, TagForm, Verified};
use heartsink::proto::inflate::{Backend, InflateError, Inflater, DEFAULT_MAX_INFLATED};
use heartsink::proto::keyring::Keyring;
use heartsink::proto::octavia::Heartbeat;
use libfuzzer_sys::fuzz_target;

mod common;

/// Small enough that the seeds' JSON (381, 485 and 799 bytes) falls on both sides of it.
const SMALL_CAP: usize = 512;

/// One cap, the three back-ends, and the oracle.
struct Pair {
    small: Inflater,
    lib: Inflater,
    zrs: Inflater,
    oracle: flate2::Decompress,
    oracle_out: Vec<u8>,
}

impl Pair {
    fn new(cap: usize) -> Pair {
        Pair {
            small: Inflater::new(Backend::Small, cap),
            lib: Inflater::new(Backend::Libdeflate, cap),
            zrs: Inflater::new(Backend::ZlibRs, cap),
            oracle: flate2::Decompress::new(true),
            oracle_out: vec![0; cap + 1],
        }
    }

    /// What the documentation of `InflateError` says the result is: the inflated bytes, or
    /// `TooLarge` when the payload yields more than `cap` bytes, or `Corrupt`.
    fn oracle<'o>(d: &mut flate2::Decompress, out: &'o mut [u8], zlib: &[u8]) -> Result<&'o [u8], InflateError> {
        let cap = out.len() - 1;
        d.reset(true);
        let status = d.decompress(zlib, out, flate2::FlushDecompress::Finish);
        let n = usize::try_from(d.total_out()).unwrap_or(usize::MAX);
        if n > cap {
            return Err(InflateError::TooLarge);
        }
        match status {
            Ok(flate2::Status::StreamEnd) => Ok(&out[..n]),
            _ => Err(InflateError::Corrupt),
        }
    }

    /// Inflates with both back-ends and the oracle, checks them, and returns the result.
    fn inflate(&mut self, v: &Verified<'_>) -> Result<&[u8], InflateError> {
        let payload = v.payload();
        let cap = self.lib.max();
        let want = Pair::oracle(&mut self.oracle, &mut self.oracle_out, payload);
        let lib = self.lib.inflate(v);
        let zrs = self.zrs.inflate(v);
        let small = self.small.inflate(v);
        let show = |r: &Result<&[u8], InflateError>| r.map(<[u8]>::len);
        let ctx = || format!("cap {cap}, payload {}", hex(payload));
        assert!(small == want, "small back-end: {:?}, expected {:?} ({})", show(&small), show(&want), ctx());
        assert!(zrs == want, "zlib-rs back-end: {:?}, expected {:?} ({})", show(&zrs), show(&want), ctx());
        match (&lib, &want) {
            (Ok(x), Ok(y)) => assert!(x == y, "libdeflate back-end inflated other bytes than zlib ({})", ctx()),
            (Err(_), Err(_)) => {}
            _ => panic!("libdeflate back-end: {:?}, expected {:?} ({})", show(&lib), show(&want), ctx()),
        }
        zrs
    }
}

struct Scratch {
    keys: Keyring,
    big: Pair,
    small: Pair,
    hb: Heartbeat,
    buf: Vec<u8>,
}

thread_local! {
    static S: RefCell<Scratch> = RefCell::new(Scratch {
        keys: Keyring::from_strs(&["insecure"], 0),
        big: Pair::new(DEFAULT_MAX_INFLATED),
        small: Pair::new(SMALL_CAP),
        hb: Heartbeat::default(),
        buf: Vec::new(),
    });
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Inflate and parse a verified payload.
fn pipeline(s: &mut Scratch, v: &Verified<'_>) {
    let small = s.small.inflate(v).map(<[u8]>::len);
    let json = match s.big.inflate(v) {
        Ok(json) => json,
        Err(e) => {
            // Under a smaller cap a broken stream may reach the cap first.
            assert!(
                small == Err(e) || small == Err(InflateError::TooLarge),
                "{e:?} under the large cap but {small:?} under the small one"
            );
            return;
        }
    };
    if json.len() <= SMALL_CAP {
        assert_eq!(small, Ok(json.len()), "a stream that fits the small cap did not inflate under it");
    } else {
        assert_eq!(small, Err(InflateError::TooLarge), "{} bytes inflated under a {SMALL_CAP}-byte cap", json.len());
    }
    if s.hb.parse(json).is_ok() {
        common::check_heartbeat(&s.hb);
    }
}

fuzz_target!(|data: &[u8]| {
    S.with(|s| {
        let s = &mut *s.borrow_mut();

        // 1. The raw input as a datagram.
        if let Ok(v) = envelope::verify(data, &s.keys) {
            pipeline(s, &v);
        }

        // 2. The raw input as an authenticated payload.
        let mut buf = std::mem::take(&mut s.buf);
        buf.clear();
        buf.extend_from_slice(data);
        let key = s.keys.keys()[0].clone();
        envelope::push_tag(&mut buf, 0, &key, TagForm::Hex);
        match envelope::verify(&buf, &s.keys) {
            Ok(v) => {
                assert_eq!(v.payload(), data, "the verified payload is not what was tagged");
                assert_eq!((v.form(), v.key_index()), (TagForm::Hex, 0));
                pipeline(s, &v);
            }
            // An empty payload leaves a 64-byte envelope, which `verify` reads as 32 payload
            // bytes and a binary tag (a hex tag needs a payload byte before it). Octavia rejects
            // it one step later (zlib.decompress(b"")), so nothing is lost.
            Err(e) => assert!(data.is_empty(), "a freshly tagged envelope did not verify: {e:?}"),
        }
        s.buf = buf;
    });
});
