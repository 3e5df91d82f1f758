//! An LSB-first bit writer, as deflate packs its fields: hand-built streams for the small
//! inflater's unit tests and the `inflate_diff` fuzz target (both include this file by path).
#![allow(dead_code)]

/// Bits written so far.
#[derive(Default)]
pub struct BitWriter {
    /// The whole bytes written.
    pub out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Continues after the bytes of `out`.
    pub fn new(out: Vec<u8>) -> BitWriter {
        BitWriter { out, acc: 0, n: 0 }
    }
    /// The low `k` bits of `v` (a field, least significant bit first).
    pub fn put(&mut self, v: u32, k: u32) -> &mut Self {
        self.acc |= u64::from(v & ((1u32 << k) - 1)) << self.n;
        self.n += k;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
        self
    }
    /// A Huffman code, most significant bit first.
    pub fn code(&mut self, code: u32, len: u32) -> &mut Self {
        for i in (0..len).rev() {
            self.put((code >> i) & 1, 1);
        }
        self
    }
    /// Zero bits up to the next byte boundary.
    pub fn align(&mut self) -> &mut Self {
        if self.n > 0 {
            self.put(0, 8 - self.n);
        }
        self
    }
    /// The bytes, the last one padded with zero bits.
    pub fn finish(mut self) -> Vec<u8> {
        self.align();
        self.out
    }
}
