//! Differential fuzzing of heartsink's own inflater (`Backend::Small`,
//! `src/proto/inflate/small.rs`) against real zlib (`libz-sys`, zlib's own C code, linked
//! statically): on every input both must agree on success or failure, on the bytes when it
//! succeeds, and on the kind of failure (`TooLarge` exactly when zlib, given a buffer one byte
//! over the cap, fills it: its `total_out` exceeds the cap; `Corrupt` otherwise).
//!
//! The first byte picks how the input becomes a zlib stream, so that deep states are reached
//! and not only the header checks:
//!
//! * 0: the bytes as they are;
//! * 1: a zlib header chosen from the bytes (any CINFO, FLEVEL, FDICT; check bits right) and a
//!   fuzzer-chosen deflate body;
//! * 2: a dynamic block header with fuzzer-chosen literal/length and distance code lengths
//!   (over-subscribed, incomplete and single-code sets, repeats across the boundary, more than
//!   286/30 codes), sent with a complete code-length code, then fuzzer-chosen bits;
//! * 3: the rest of the input compressed by zlib at a chosen level, strategy (default,
//!   filtered, Huffman-only, RLE, fixed), window and memory level, then mutated (flipped bytes,
//!   truncation, trailing bytes).
//!
//! The second byte picks the cap: the production cap, or a small one (0–2047 bytes) that the
//! fuzzer can cross anywhere in a stream.
#![no_main]

use std::cell::RefCell;

use heartsink::proto::inflate::{Backend, InflateError, Inflater, DEFAULT_MAX_INFLATED};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/zlib.rs"]
mod zlib_ref;

struct Scratch {
    ours: Inflater,
    zlib: zlib_ref::Zlib,
    zout: Vec<u8>,
    stream: Vec<u8>,
}

thread_local! {
    static S: RefCell<Scratch> = RefCell::new(Scratch {
        ours: Inflater::new(Backend::Small, DEFAULT_MAX_INFLATED),
        zlib: zlib_ref::Zlib::new(),
        zout: vec![0; DEFAULT_MAX_INFLATED + 1],
        stream: Vec::new(),
    });
}

#[path = "../../tests/common/deflate_bits.rs"]
mod deflate_bits;
use deflate_bits::BitWriter;

/// Canonical codes of a set of code lengths (as deflate assigns them).
fn canonical(lens: &[u32]) -> Vec<u32> {
    let mut count = [0u32; 16];
    for &l in lens {
        count[l as usize] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; 16];
    let mut code = 0;
    for l in 1..16 {
        code = (code + count[l - 1]) << 1;
        next[l] = code;
    }
    lens.iter()
        .map(|&l| {
            let c = next[l as usize];
            next[l as usize] += 1;
            c
        })
        .collect()
}

/// A valid zlib header (CMF, FLG) with the fields the fuzzer chose.
fn header(cmf_byte: u8, flg_byte: u8) -> [u8; 2] {
    let cmf = (cmf_byte & 0xf0) | if cmf_byte & 0x0f == 0x0f { cmf_byte & 0x0f } else { 8 };
    let flg = flg_byte & 0xe0;
    let check = 31 - ((u16::from(cmf) << 8 | u16::from(flg)) % 31);
    [cmf, flg | (check % 31) as u8]
}

/// Mode 2: a dynamic block with fuzzer-chosen code lengths, then fuzzer bits.
fn dynamic(data: &[u8], mut out: Vec<u8>) -> Vec<u8> {
    let [a, b, c, d, rest @ ..] = data else {
        out.extend_from_slice(data);
        return out;
    };
    out.extend_from_slice(&header(*a & 0x70, *b & 0xc0));
    let mut w = BitWriter::new(out);
    w.put(u32::from(*c & 1), 1); // BFINAL
    w.put(2, 2); // dynamic
    // HLIT and HDIST: mostly in range, sometimes over (286+ / 30+ codes).
    let hlit = u32::from(*c >> 1) & 31;
    let hdist = u32::from(*d) & 31;
    w.put(hlit, 5);
    w.put(hdist, 5);
    w.put(15, 4); // all 19 code-length code lengths
    // A complete code-length code: 13 codes of 4 bits, 6 of 5.
    let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
    let cl: Vec<u32> = (0..19).map(|s| if s < 13 { 4 } else { 5 }).collect();
    let codes = canonical(&cl);
    for &s in &order {
        w.put(cl[s], 3);
    }
    let total = (hlit + 257 + hdist + 1) as usize;
    let mut it = rest.iter();
    let mut i = 0;
    let mut bytes_for_lengths = 0;
    while i < total {
        let Some(&x) = it.next() else { break };
        bytes_for_lengths += 1;
        // Mostly plain lengths 0–15; some repeats with fuzzer-chosen extra bits.
        let sym = match x % 24 {
            s @ 0..=15 => s as usize,
            16 | 17 => 16,
            18 | 19 | 20 => 17,
            _ => 18,
        };
        w.code(codes[sym], cl[sym]);
        match sym {
            16 => {
                w.put(u32::from(x >> 6), 2);
                i += 3 + usize::from(x >> 6);
            }
            17 => {
                w.put(u32::from(x >> 5), 3);
                i += 3 + usize::from(x >> 5);
            }
            18 => {
                w.put(u32::from(x >> 1), 7);
                i += 11 + usize::from(x >> 1);
            }
            _ => i += 1,
        }
    }
    for &x in &rest[bytes_for_lengths..] {
        w.put(u32::from(x), 8);
    }
    w.finish()
}

/// Mode 3: zlib's own compression of the rest, then mutations.
fn compressed(data: &[u8], mut out: Vec<u8>) -> Vec<u8> {
    let [level, strategy, wbits, mutations, p0, p1, x0, x1, tail, rest @ ..] = data else {
        out.extend_from_slice(data);
        return out;
    };
    let z = zlib_ref::compress(
        rest,
        i32::from(*level % 10),
        i32::from(*strategy % 5),
        9 + i32::from(*wbits % 7),
        1 + i32::from(*wbits / 7 % 9),
    );
    out.extend_from_slice(&z);
    if !z.is_empty() {
        let len = z.len();
        if mutations & 1 != 0 {
            out[usize::from(*p0) * len / 256] ^= *x0 | 1;
        }
        if mutations & 2 != 0 {
            out[usize::from(*p1) * len / 256] ^= *x1 | 1;
        }
        if mutations & 4 != 0 {
            // Flip one bit anywhere.
            let bit = (usize::from(*p0) << 8 | usize::from(*p1)) % (len * 8);
            out[bit / 8] ^= 1 << (bit % 8);
        }
        if mutations & 8 != 0 {
            out.truncate(usize::from(*x0) * len / 256);
        }
    }
    if mutations & 16 != 0 {
        out.extend_from_slice(&[*tail; 5]);
    }
    out
}

fn show(r: &Result<&[u8], InflateError>) -> Result<usize, InflateError> {
    r.map(<[u8]>::len)
}

fuzz_target!(|data: &[u8]| {
    let [mode, cap_a, cap_b, body @ ..] = data else {
        return;
    };
    S.with(|s| {
        let s = &mut *s.borrow_mut();
        let cap =
            if cap_a & 0x80 != 0 { usize::from(cap_a & 0x7f) << 4 | usize::from(cap_b & 0x0f) } else { DEFAULT_MAX_INFLATED };
        let mut stream = std::mem::take(&mut s.stream);
        stream.clear();
        let stream = match mode % 4 {
            0 => {
                stream.extend_from_slice(body);
                stream
            }
            1 => match body {
                [c, f, rest @ ..] => {
                    stream.extend_from_slice(&header(*c, *f));
                    stream.extend_from_slice(rest);
                    stream
                }
                _ => stream,
            },
            2 => dynamic(body, stream),
            _ => compressed(body, stream),
        };
        s.ours.set_max(cap);
        let got = s.ours.inflate_bytes(&stream);
        let o = s.zlib.outcome(&stream, &mut s.zout[..cap + 1]);
        let want: Result<&[u8], InflateError> = if o.total_out > cap {
            Err(InflateError::TooLarge)
        } else if o.end {
            Ok(&s.zout[..o.total_out])
        } else {
            Err(InflateError::Corrupt)
        };
        if got != want {
            panic!(
                "small inflater: {:?}, zlib: {:?} (zlib total_out {}, end {}), cap {cap}, stream {}",
                show(&got),
                show(&want),
                o.total_out,
                o.end,
                stream.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
        s.stream = stream;
    });
});
