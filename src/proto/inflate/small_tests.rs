//! Unit tests of the small-message inflater on hand-built streams (the `inflate_diff` fuzz
//! target compares it with real zlib on everything else).

use super::Small;
use crate::proto::inflate::InflateError::{self, Corrupt, TooLarge};

#[path = "../../../tests/common/deflate_bits.rs"]
mod deflate_bits;
use deflate_bits::BitWriter as W;

/// Test helpers on the bit writer.
trait Deflate {
    fn fixed(&mut self, sym: u32) -> &mut Self;
    fn bytes(&mut self, b: &[u8]) -> &mut Self;
}

impl Deflate for W {
    /// A fixed-Huffman literal/length symbol.
    fn fixed(&mut self, sym: u32) -> &mut Self {
        match sym {
            0..=143 => self.code(0x30 + sym, 8),
            144..=255 => self.code(0x190 + sym - 144, 9),
            256..=279 => self.code(sym - 256, 7),
            _ => self.code(0xc0 + sym - 280, 8),
        }
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.put(u32::from(x), 8);
        }
        self
    }
}

fn adler(data: &[u8]) -> [u8; 4] {
    let mut a = simd_adler32::Adler32::new();
    a.write(data);
    a.finish().to_be_bytes()
}

/// A zlib stream: header 78 01, the blocks `w` wrote, and the Adler-32 of `data`.
fn zlib(w: &mut W, data: &[u8]) -> Vec<u8> {
    w.align();
    let mut z = vec![0x78, 0x01];
    z.extend_from_slice(&w.out);
    z.extend_from_slice(&adler(data));
    z
}

fn inflate(z: &[u8], cap: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = vec![0; cap];
    Small::new().inflate(z, &mut out).map(|n| out[..n].to_vec())
}

/// "abcabcabc" as a fixed block: three literals and a match (length 6, distance 3).
fn fixed_abc() -> Vec<u8> {
    let mut w = W::default();
    w.put(1, 1).put(1, 2);
    for &b in b"abc" {
        w.fixed(u32::from(b));
    }
    w.fixed(260).code(2, 5).fixed(256); // length 6 (code 260), distance 3 (code 2)
    zlib(&mut w, b"abcabcabc")
}

#[test]
fn fixed_block() {
    assert_eq!(inflate(&fixed_abc(), 100).as_deref(), Ok(&b"abcabcabc"[..]));
}

#[test]
fn fixed_block_literal_past_255_and_codes_286_287_and_distance_30() {
    let mut w = W::default();
    w.put(1, 1).put(1, 2).fixed(200).fixed(256);
    assert_eq!(inflate(&zlib(&mut w, &[200]), 10).as_deref(), Ok(&[200u8][..]));
    for bad in [286, 287] {
        let mut w = W::default();
        w.put(1, 1).put(1, 2).fixed(u32::from(b'a')).fixed(bad);
        assert_eq!(inflate(&zlib(&mut w, b"a"), 10), Err(Corrupt), "symbol {bad}");
    }
    let mut w = W::default();
    w.put(1, 1).put(1, 2).fixed(u32::from(b'a')).fixed(257).code(30, 5).fixed(256);
    assert_eq!(inflate(&zlib(&mut w, b"aaaa"), 10), Err(Corrupt));
}

#[test]
fn stored_block_and_multi_block() {
    let mut w = W::default();
    // A stored block "hello ", a fixed block "abc" + match, a final stored empty block.
    w.put(0, 1).put(0, 2).align().bytes(&[6, 0, !6, 0xff]).bytes(b"hello ");
    w.put(0, 1).put(1, 2);
    for &b in b"abc" {
        w.fixed(u32::from(b));
    }
    w.fixed(256);
    w.put(1, 1).put(0, 2).align().bytes(&[0, 0, 0xff, 0xff]);
    let z = zlib(&mut w, b"hello abc");
    assert_eq!(inflate(&z, 100).as_deref(), Ok(&b"hello abc"[..]));
    // Exactly at the cap, and one byte over it.
    assert_eq!(inflate(&z, 9).as_deref(), Ok(&b"hello abc"[..]));
    assert_eq!(inflate(&z, 8), Err(TooLarge));
    // The stored block alone crosses a 4-byte cap.
    assert_eq!(inflate(&z, 4), Err(TooLarge));
}

#[test]
fn stored_lengths_must_complement() {
    let mut w = W::default();
    w.put(1, 1).put(0, 2).align().bytes(&[2, 0, 0xfd, 0xfe]).bytes(b"hi");
    assert_eq!(inflate(&zlib(&mut w, b"hi"), 10), Err(Corrupt));
}

#[test]
fn a_truncated_stored_block_fills_the_cap_first() {
    // zlib copies what input there is: 5 bytes of a 100-byte block cross a 3-byte cap.
    let mut z = vec![0x78, 0x01, 0x01, 100, 0, !100, 0xff];
    z.extend_from_slice(b"12345");
    assert_eq!(inflate(&z, 3), Err(TooLarge));
    assert_eq!(inflate(&z, 5), Err(Corrupt));
}

#[test]
fn dynamic_blocks_of_real_heartbeats() {
    for json in [&include_bytes!("../../../tests/data/octavia/v3_small_hex.json")[..], b"{}", &[b'x'; 70_000][..]] {
        let z = crate::proto::envelope::compress(json);
        assert_eq!(inflate(&z, 1 << 20).as_deref(), Ok(json), "{} bytes", json.len());
        assert_eq!(inflate(&z, json.len()).as_deref(), Ok(json));
        assert_eq!(inflate(&z, json.len() - 1), Err(TooLarge));
    }
}

#[test]
fn many_dynamic_blocks() {
    // Pseudo-random text: the compressor ends a dynamic block every few tens of KB.
    let mut x = 1u32;
    let text: Vec<u8> = (0..300_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            b"abcdefghij klmnop\n"[(x >> 16) as usize % 18]
        })
        .collect();
    let z = crate::proto::envelope::compress(&text);
    assert_eq!(inflate(&z, text.len()).as_deref(), Ok(&text[..]));
}

#[test]
fn bad_adler_truncated_and_trailing_bytes() {
    let z = fixed_abc();
    let mut bad = z.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(inflate(&bad, 100), Err(Corrupt));
    for cut in 0..z.len() {
        assert_eq!(inflate(&z[..cut], 100), Err(Corrupt), "cut at {cut}");
    }
    let mut trailing = z.clone();
    trailing.extend_from_slice(b"after the stream");
    assert_eq!(inflate(&trailing, 100).as_deref(), Ok(&b"abcabcabc"[..]));
}

#[test]
fn zlib_header_checks() {
    let z = fixed_abc();
    let with = |cmf: u8, flg: u8| {
        let mut h = z.clone();
        h[0] = cmf;
        h[1] = flg;
        inflate(&h, 100)
    };
    assert!(with(0x78, 0x9c).is_ok()); // the usual header
    assert!(with(0x08, 0x1d).is_ok()); // CINFO 0 (256-byte window)
    assert_eq!(with(0x78, 0x9d), Err(Corrupt)); // check bits wrong
    assert_eq!(with(0x88, 0x1c), Err(Corrupt)); // CINFO 8
    assert_eq!(with(0x77, 0x85), Err(Corrupt)); // CM 7: (0x77 << 8 | 0x85) % 31 == 0
    assert_eq!(with(0x78, 0xbb), Err(Corrupt)); // FDICT
    assert_eq!(inflate(&[0x78], 100), Err(Corrupt));
}

/// A dynamic block header with the given literal/length and distance code lengths (each sent
/// as a plain length with a complete 5-bit code-length code: 19 symbols, 13 of 4 bits and 6
/// of 5 bits), then `body`.
fn dynamic(ll: &[u32], dist: &[u32], body: impl FnOnce(&mut W)) -> Vec<u8> {
    let mut w = W::default();
    w.put(1, 1).put(2, 2).put(ll.len() as u32 - 257, 5).put(dist.len() as u32 - 1, 5).put(15, 4);
    let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
    let cl = |s: u32| if s < 13 { 4 } else { 5 };
    for s in order {
        w.put(cl(s), 3);
    }
    // Canonical codes: symbols 0..12 get 4-bit codes 0..12, 13..18 5-bit codes 26..31.
    let clcode = |s: u32| if s < 13 { (s, 4) } else { (26 + s - 13, 5) };
    for &l in ll.iter().chain(dist) {
        let (c, n) = clcode(l);
        w.code(c, n);
    }
    body(&mut w);
    w.align();
    let mut z = vec![0x78, 0x01];
    z.extend_from_slice(&w.out);
    z
}

#[test]
fn code_sets_as_zlib_validates_them() {
    // Literal/length: 'a' and end-of-block, both 1 bit: complete. Distance: one 1-bit code
    // (incomplete, allowed). "a" then EOB: codes 0 ('a' < 256) and 1.
    let mut ll = vec![0; 257];
    ll[97] = 1;
    ll[256] = 1;
    let z = dynamic(&ll, &[1], |w| {
        w.code(0, 1).code(1, 1);
    });
    let mut ok = z.clone();
    ok.extend_from_slice(&adler(b"a"));
    assert_eq!(inflate(&ok, 10).as_deref(), Ok(&b"a"[..]));
    // No distance codes at all: fine while no match is used.
    let z = dynamic(&ll, &[0], |w| {
        w.code(0, 1).code(1, 1);
    });
    let mut ok = z.clone();
    ok.extend_from_slice(&adler(b"a"));
    assert_eq!(inflate(&ok, 10).as_deref(), Ok(&b"a"[..]));
    // Over-subscribed literal/length set: three 1-bit codes.
    let mut over = ll.clone();
    over[98] = 1;
    assert_eq!(inflate(&dynamic(&over, &[1], |_| {}), 10), Err(Corrupt));
    // Incomplete literal/length set with a 2-bit code: rejected.
    let mut inc = ll.clone();
    inc[97] = 2;
    assert_eq!(inflate(&dynamic(&inc, &[1], |_| {}), 10), Err(Corrupt));
    // Only end-of-block, 1 bit (incomplete, allowed); its unused code fails when met.
    let mut eob = vec![0; 257];
    eob[256] = 1;
    let mut ok = dynamic(&eob, &[1], |w| {
        w.code(0, 1);
    });
    ok.extend_from_slice(&adler(b""));
    assert_eq!(inflate(&ok, 10).as_deref(), Ok(&b""[..]));
    let bad = dynamic(&eob, &[1], |w| {
        w.code(1, 1);
    });
    assert_eq!(inflate(&bad, 10), Err(Corrupt));
    // No end-of-block code.
    let mut no_eob = vec![0; 257];
    no_eob[97] = 1;
    no_eob[98] = 1;
    assert_eq!(inflate(&dynamic(&no_eob, &[1], |_| {}), 10), Err(Corrupt));
    // Incomplete distance set with a 2-bit code: rejected.
    assert_eq!(inflate(&dynamic(&ll, &[2], |_| {}), 10), Err(Corrupt));
}

#[test]
fn long_codes_take_the_canonical_path() {
    // Literal/length codes of 1..=15 bits (a complete set: lengths 1, 2, ..., 15, 15), so that
    // codes past the 10-bit table decode canonically. Symbols 0..=14 get lengths 1..=15, EOB 15.
    let mut ll = vec![0; 257];
    for (s, l) in ll.iter_mut().take(15).enumerate() {
        *l = s as u32 + 1;
    }
    ll[256] = 15;
    // Canonical codes: length l (l < 15) has code (2^l - 2) (ones then a zero), symbol 14 has
    // 15 ones but one bit less... computed below.
    let mut codes = vec![(0u32, 0u32); 257];
    let mut code = 0u32;
    for l in 1..=15u32 {
        for (s, &len) in ll.iter().enumerate() {
            if len == l {
                codes[s] = (code, l);
                code += 1;
            }
        }
        code <<= 1;
    }
    let data: Vec<u8> = (0..15).rev().chain(0..15).collect();
    let z = dynamic(&ll, &[1], |w| {
        for &b in &data {
            let (c, l) = codes[usize::from(b)];
            w.code(c, l);
        }
        let (c, l) = codes[256];
        w.code(c, l);
    });
    let mut ok = z.clone();
    ok.extend_from_slice(&adler(&data));
    assert_eq!(inflate(&ok, 100).as_deref(), Ok(&data[..]));
}

#[test]
fn distances_beyond_the_output_are_corrupt() {
    // 'a', then a match of length 3 at distance 2 (code 1): only 1 byte written so far.
    let mut w = W::default();
    w.put(1, 1).put(1, 2).fixed(u32::from(b'a')).fixed(257).code(1, 5).fixed(256);
    assert_eq!(inflate(&zlib(&mut w, b"aaaa"), 10), Err(Corrupt));
    // Distance 1 is fine: a run.
    let mut w = W::default();
    w.put(1, 1).put(1, 2).fixed(u32::from(b'a')).fixed(257).code(0, 5).fixed(256);
    assert_eq!(inflate(&zlib(&mut w, b"aaaa"), 10).as_deref(), Ok(&b"aaaa"[..]));
    // … and crossing the cap is TooLarge.
    assert_eq!(inflate(&zlib(&mut w, b"aaaa"), 3), Err(TooLarge));
}

#[test]
fn block_type_3_is_corrupt() {
    assert_eq!(inflate(&[0x78, 0x01, 0x07, 0, 0, 0, 1], 10), Err(Corrupt));
}

#[test]
fn a_code_length_code_of_19_lengths_needs_two_refills() {
    // 14 header bits and 57 bits of code-length code lengths: a regression found by the fuzz
    // target (the reader ran out of bits).
    let mut ll = vec![0; 257];
    ll[97] = 1;
    ll[256] = 1;
    let mut z = dynamic(&ll, &[1], |w| {
        w.code(0, 1).code(0, 1).code(1, 1);
    });
    z.extend_from_slice(&adler(b"aa"));
    assert_eq!(inflate(&z, 10).as_deref(), Ok(&b"aa"[..]));
}
