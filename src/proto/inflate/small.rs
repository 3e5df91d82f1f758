//! A zlib inflater built for small messages: a 260–350-byte heartbeat whose single dynamic
//! Huffman block decodes to about 500 bytes.
//!
//! On such a message the general-purpose inflaters (libdeflate, zlib, zlib-rs, miniz_oxide,
//! zune-inflate, fdeflate; measured side by side in `benches/inflaters.rs`) spend most of their
//! time building decode tables sized for megabytes: libdeflate fills an 11-bit (2,048-entry)
//! literal/length table plus sub-tables for every block. Here every table is only as large as
//! the block's own codes need:
//!
//! * **First-level tables sized to the code lengths present.** The literal/length table has
//!   2^B entries, B = the longest code length present, at most [`LITLEN_BITS`] (10); the
//!   distance table likewise, at most [`DIST_BITS`] (8); the code-length table 2^(its longest
//!   code) ≤ 128. A table is built as libdeflate does, by doubling: each code of length `l` is
//!   written once into the 2^l table, which is then copied onto its upper half to make the
//!   2^(l+1) one, so the work is one store per code plus 2^B entries of `memcpy`.
//! * **Canonical decoding for longer codes.** Codes longer than B (rare: a code of length `l`
//!   stands for about 2^-l of the symbols) have no table entries; their B-bit prefixes point to
//!   a slow path that decodes canonically from the per-length counts and the symbols sorted by
//!   code, as zlib's `puff` does. No second-level tables to build.
//! * **Fixed-Huffman blocks** use tables built once per [`Small`]; **stored blocks** are
//!   copied.
//! * **No allocation:** tables live in the [`Small`] value (boxed once per worker), the output
//!   goes to the caller's buffer.
//!
//! # Exactly what zlib accepts
//!
//! The result agrees with zlib's `inflate` (as Python's `zlib.decompress` calls it, so as
//! Octavia accepts a heartbeat) on every input, which the `inflate_diff` fuzz target checks
//! byte for byte against real zlib:
//!
//! * the zlib header: `(CMF·256 + FLG) mod 31 = 0`, CM = 8, CINFO ≤ 7, FDICT rejected (zlib asks
//!   for a dictionary, which `zlib.decompress` cannot give);
//! * block type 3, stored lengths whose NLEN is not LEN's complement, more than 286
//!   literal/length or 30 distance codes, a repeat of the previous length with none before it
//!   or past the last code, no end-of-block code;
//! * code sets: an over-subscribed set is rejected; an incomplete set is rejected, except, as
//!   zlib allows, a literal/length or distance set whose only code has length 1 (its unused
//!   code then fails when met); an incomplete code-length set always; a distance set with no
//!   codes at all is accepted (any distance then fails);
//! * literal/length codes 286–287 and distance codes 30–31 (fixed blocks), distances beyond the
//!   output so far, input that ends before the stream, and a wrong Adler-32 are errors; bytes
//!   after the Adler-32 are ignored.
//!
//! The cap is exact: output that would pass the end of the buffer is [`InflateError::TooLarge`]
//! as soon as the symbol that produces it has decoded completely and validly, which is where
//! zlib, given a buffer one byte larger than the cap, fills it (so zlib's own `total_out`
//! exceeds the cap exactly when this says `TooLarge`). Input bits are read past the end as
//! zeros, but nothing decoded from them is ever written: each symbol is checked to lie within
//! the input before it produces output.

use super::InflateError;

/// The most index bits of the first-level literal/length table.
pub const LITLEN_BITS: u32 = 10;
/// The most index bits of the first-level distance table.
pub const DIST_BITS: u32 = 8;
/// Index bits of the code-length table (its codes are at most 7 bits long).
const CODELEN_BITS: u32 = 7;

const MAX_LITLEN: usize = 288;
const MAX_DIST: usize = 32;

// A table entry (u32): bits 0–7 the code length to consume (0 in a slow-path marker), bits 8–15
// a tag, bits 16–31 the value (literal byte, length or distance base, code-length symbol).
/// Tag: a literal byte.
const TAG_LIT: u32 = 0x00;
/// Tag bit: a length (low 5 bits: its extra bits) or, in a distance table, a distance.
const TAG_BASE: u32 = 0x20;
/// Tag: end of block.
const TAG_EOB: u32 = 0x40;
/// Tag: a prefix of codes longer than the table (decode canonically).
const TAG_SLOW: u32 = 0x80;
/// Tag: a symbol that is not valid (literal/length 286–287, distance 30–31, an unused code).
const TAG_INVALID: u32 = 0xc0;

const SLOW_ENTRY: u32 = TAG_SLOW << 8;
const INVALID_ENTRY: u32 = TAG_INVALID << 8;

const LEN_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
/// The order in which the code-length code lengths are sent.
const CODELEN_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// The entry (without its code length) of literal/length symbol `s`.
const fn litlen_entry(s: usize) -> u32 {
    if s < 256 {
        ((s as u32) << 16) | (TAG_LIT << 8)
    } else if s == 256 {
        TAG_EOB << 8
    } else if s < 286 {
        ((LEN_BASE[s - 257] as u32) << 16) | ((TAG_BASE | LEN_EXTRA[s - 257] as u32) << 8)
    } else {
        INVALID_ENTRY
    }
}

/// The entry (without its code length) of distance symbol `s`.
const fn dist_entry(s: usize) -> u32 {
    if s < 30 {
        ((DIST_BASE[s] as u32) << 16) | ((TAG_BASE | DIST_EXTRA[s] as u32) << 8)
    } else {
        INVALID_ENTRY
    }
}

/// The entry (without its code length) of code-length symbol `s`.
const fn codelen_entry(s: usize) -> u32 {
    (s as u32) << 16
}

/// Which alphabet a table decodes: it decides the entries and which incomplete sets zlib
/// accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    CodeLen,
    LitLen,
    Dist,
}

/// Bit `i` of `x` moved to bit 7 − `i`, for every byte value.
const REV8: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).reverse_bits();
        i += 1;
    }
    t
};

/// The low `l` bits of `code` in reverse order (`l` ≤ 16): Huffman codes are sent from their
/// most significant bit, and the table is indexed by the bits as they arrive.
#[inline(always)]
fn reversed(code: u32, l: u32) -> usize {
    let r = (u32::from(REV8[(code & 0xff) as usize]) << 8) | u32::from(REV8[((code >> 8) & 0xff) as usize]);
    (r >> (16 - l)) as usize
}

/// A decode table: the first level, and what canonical decoding of longer codes needs. Its
/// symbols are added by length ([`Table::push`], in increasing symbol order, as the code
/// lengths are read), so no pass over the whole alphabet counts or sorts them.
struct Table<const N: usize, const S: usize> {
    /// 2^`bits` entries used.
    entries: [u32; N],
    bits: u32,
    /// Codes per length (index 0 unused).
    count: [u16; 16],
    /// The symbols of each code length, in increasing order (the canonical order).
    by_len: [[u16; S]; 16],
}

impl<const N: usize, const S: usize> Table<N, S> {
    fn new() -> Self {
        Table { entries: [INVALID_ENTRY; N], bits: 1, count: [0; 16], by_len: [[0; S]; 16] }
    }

    /// Starts a new set of codes.
    #[inline(always)]
    fn clear(&mut self) {
        self.count = [0; 16];
    }

    /// Adds symbol `s` with code length `l` (1–15), symbols in increasing order.
    #[inline(always)]
    fn push(&mut self, s: usize, l: u8) {
        let l = usize::from(l & 15);
        let c = &mut self.count[l];
        if let Some(slot) = self.by_len[l].get_mut(usize::from(*c)) {
            *slot = s as u16;
        }
        *c += 1;
    }

    /// Builds the table from the codes pushed, validated as zlib's `inflate_table` does; at
    /// most `max_bits` index bits.
    fn build(&mut self, max_bits: u32, kind: Kind) -> Result<(), InflateError> {
        let count = self.count;
        let mut max = 15;
        while max > 0 && count[max] == 0 {
            max -= 1;
        }
        // Kraft: over-subscribed sets never; incomplete ones only as zlib allows.
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left = (left << 1) - i32::from(c);
            if left < 0 {
                return Err(InflateError::Corrupt);
            }
        }
        if max == 0 {
            // No codes: zlib builds a table that fails on use. For code lengths that means
            // every length decodes as 0, so the block has no end-of-block code: an error
            // either way. For distances the block may still use none.
            if kind == Kind::CodeLen {
                return Err(InflateError::Corrupt);
            }
            self.bits = 1;
            self.entries[0] = SLOW_ENTRY;
            self.entries[1] = SLOW_ENTRY;
            return Ok(());
        }
        if left > 0 && (kind == Kind::CodeLen || max != 1) {
            return Err(InflateError::Corrupt);
        }
        let bits = (max as u32).min(max_bits);
        self.bits = bits;
        // Fill by doubling: codes of length l go into the 2^l table, which is then copied
        // onto its upper half; canonical codes are assigned in order of length, then symbol.
        let mut code: u32 = 0;
        let mut size = 1usize;
        for l in 1..=bits {
            let c = usize::from(count[l as usize]);
            if size > 1 || c != 0 || l == bits {
                if size == 1 {
                    // The first length with codes (or the last): start at 2^l. Entries for
                    // unassigned prefixes are garbage until the end.
                    size = 1 << l;
                } else {
                    self.entries.copy_within(0..size, size);
                    size <<= 1;
                }
            }
            for &s in self.by_len[l as usize].iter().take(c) {
                self.entries[reversed(code, l)] = entry(kind, usize::from(s)) | l;
                code += 1;
            }
            if l < bits {
                code <<= 1;
            }
        }
        // Prefixes of longer codes (or, in an incomplete set, of no code) go the slow way.
        for p in code..(1u32 << bits) {
            self.entries[reversed(p, bits)] = SLOW_ENTRY;
        }
        Ok(())
    }

    /// Canonical decoding of a code longer than the table (or of an unused code): the entry
    /// with its code length, or an invalid entry of length 1.
    #[cold]
    #[inline(never)]
    fn slow(&self, bitbuf: u64, kind: Kind) -> u32 {
        let mut code: i32 = 0;
        let mut first: i32 = 0;
        for l in 1..16u32 {
            code |= ((bitbuf >> (l - 1)) & 1) as i32;
            let c = i32::from(self.count[l as usize]);
            if code - first < c {
                let s = self.by_len[l as usize].get((code - first) as usize).copied().unwrap_or(0);
                return entry(kind, usize::from(s)) | l;
            }
            first = (first + c) << 1;
            code <<= 1;
        }
        INVALID_ENTRY | 1
    }

    /// The entry for the next code in `bitbuf` (which holds at least 15 bits).
    #[inline(always)]
    fn lookup(&self, bitbuf: u64, kind: Kind) -> u32 {
        let e = self.entries[(bitbuf & ((1u64 << self.bits) - 1)) as usize];
        // Only slow-path markers have no code length.
        if e & 0xff == 0 {
            return self.slow(bitbuf, kind);
        }
        e
    }

    /// Builds the table for the code lengths `lens`, one per symbol.
    fn build_from(&mut self, lens: &[u8], max_bits: u32, kind: Kind) -> Result<(), InflateError> {
        self.clear();
        for (s, &l) in lens.iter().enumerate() {
            if l != 0 {
                self.push(s, l);
            }
        }
        self.build(max_bits, kind)
    }
}

/// [`litlen_entry`] of every symbol.
const LITLEN_ENTRY: [u32; MAX_LITLEN] = {
    let mut t = [0u32; MAX_LITLEN];
    let mut s = 0;
    while s < MAX_LITLEN {
        t[s] = litlen_entry(s);
        s += 1;
    }
    t
};

/// [`dist_entry`] of every symbol.
const DIST_ENTRY: [u32; MAX_DIST] = {
    let mut t = [0u32; MAX_DIST];
    let mut s = 0;
    while s < MAX_DIST {
        t[s] = dist_entry(s);
        s += 1;
    }
    t
};

#[inline(always)]
fn entry(kind: Kind, s: usize) -> u32 {
    match kind {
        Kind::LitLen => LITLEN_ENTRY.get(s).copied().unwrap_or(INVALID_ENTRY),
        Kind::Dist => DIST_ENTRY.get(s).copied().unwrap_or(INVALID_ENTRY),
        Kind::CodeLen => codelen_entry(s),
    }
}

type LitLenTable = Table<{ 1 << LITLEN_BITS }, MAX_LITLEN>;
type DistTable = Table<{ 1 << DIST_BITS }, MAX_DIST>;
type CodeLenTable = Table<{ 1 << CODELEN_BITS }, 19>;

/// The bit reader: LSB-first, refilled 8 bytes at a time; past the end of the input it reads
/// zeros, and [`Bits::overrun`] tells whether anything consumed came from there. Passed by value
/// into the hot loops so that it lives in registers.
#[derive(Clone, Copy)]
struct Bits<'a> {
    inp: &'a [u8],
    /// Next input byte to load.
    pos: usize,
    buf: u64,
    /// Valid bits in `buf` (bits above may hold the next input bytes, never anything else).
    n: u32,
}

impl<'a> Bits<'a> {
    /// Makes `n` ≥ 56.
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(w) = self.inp.get(self.pos..).and_then(<[u8]>::first_chunk::<8>) {
            self.buf |= u64::from_le_bytes(*w) << self.n;
            self.pos += ((63 - self.n) >> 3) as usize;
            self.n |= 56;
        } else {
            *self = self.refill_slow();
        }
    }

    #[cold]
    #[inline(never)]
    fn refill_slow(mut self) -> Self {
        // The bytes left (fewer than 8), zero-padded: the same word the fast path would load
        // were the input followed by zeros.
        let mut w = 0u64;
        for (i, &b) in self.inp.get(self.pos..).unwrap_or_default().iter().take(8).enumerate() {
            w |= u64::from(b) << (8 * i);
        }
        self.buf |= w << self.n;
        self.pos += ((63 - self.n) >> 3) as usize;
        self.n |= 56;
        self
    }

    #[inline(always)]
    fn peek(&self, k: u32) -> u32 {
        (self.buf & ((1u64 << k) - 1)) as u32
    }

    #[inline(always)]
    fn consume(&mut self, k: u32) {
        self.buf >>= k;
        self.n -= k;
    }

    #[inline(always)]
    fn take(&mut self, k: u32) -> u32 {
        let v = self.peek(k);
        self.consume(k);
        v
    }

    /// Whether any bit consumed so far lay past the end of the input.
    #[inline(always)]
    fn overrun(&self) -> bool {
        self.pos > self.inp.len() && (self.pos - self.inp.len()) * 8 > self.n as usize
    }

    /// Drops the bits up to the next byte boundary; returns the input offset there.
    fn align(&mut self) -> usize {
        self.consume(self.n & 7);
        self.pos.wrapping_sub(self.n as usize / 8)
    }

    /// Restarts reading at byte `pos`.
    fn seek(&mut self, pos: usize) {
        self.pos = pos;
        self.buf = 0;
        self.n = 0;
    }
}

/// The small-message inflater's tables (≈ 7 KB; one per worker, reused).
pub struct Small {
    litlen: LitLenTable,
    dist: DistTable,
    codelen: CodeLenTable,
    fixed_litlen: LitLenTable,
    fixed_dist: DistTable,
    lens: [u8; 286 + 30],
}

impl std::fmt::Debug for Small {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Small").finish_non_exhaustive()
    }
}

impl Small {
    /// New tables (the fixed-Huffman ones built here, once).
    pub fn new() -> Box<Small> {
        let mut s = Box::new(Small {
            litlen: Table::new(),
            dist: Table::new(),
            codelen: Table::new(),
            fixed_litlen: Table::new(),
            fixed_dist: Table::new(),
            lens: [0; 286 + 30],
        });
        let mut lens = [0u8; MAX_LITLEN];
        lens[..144].fill(8);
        lens[144..256].fill(9);
        lens[256..280].fill(7);
        lens[280..].fill(8);
        // Complete sets, so these cannot fail.
        let _ = s.fixed_litlen.build_from(&lens, LITLEN_BITS, Kind::LitLen);
        let _ = s.fixed_dist.build_from(&[5; MAX_DIST], DIST_BITS, Kind::Dist);
        s
    }

    /// Inflates the zlib stream at the start of `zlib` into `out`; returns the inflated length.
    /// Output that would not fit in `out` is [`InflateError::TooLarge`].
    pub fn inflate(&mut self, zlib: &[u8], out: &mut [u8]) -> Result<usize, InflateError> {
        let [cmf, flg, ..] = *zlib else {
            return Err(InflateError::Corrupt);
        };
        if (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 || cmf & 15 != 8 || cmf >> 4 > 7 || flg & 0x20 != 0 {
            return Err(InflateError::Corrupt);
        }
        let mut bits = Bits { inp: zlib, pos: 2, buf: 0, n: 0 };
        let mut n = 0usize;
        loop {
            bits.refill();
            let hdr = bits.take(3);
            match hdr >> 1 {
                0 => n = stored(&mut bits, out, n)?,
                1 => n = decode(&mut bits, out, n, &self.fixed_litlen, &self.fixed_dist)?,
                2 => {
                    self.dynamic_header(&mut bits)?;
                    n = decode(&mut bits, out, n, &self.litlen, &self.dist)?;
                }
                _ => return Err(InflateError::Corrupt),
            }
            if hdr & 1 != 0 {
                break;
            }
        }
        if bits.overrun() {
            return Err(InflateError::Corrupt);
        }
        let at = bits.align();
        let want = match zlib.get(at..).and_then(<[u8]>::first_chunk::<4>) {
            Some(b) => u32::from_be_bytes(*b),
            None => return Err(InflateError::Corrupt),
        };
        let got = out.get(..n).map(|o| {
            let mut a = simd_adler32::Adler32::new();
            a.write(o);
            a.finish()
        });
        if got != Some(want) {
            return Err(InflateError::Corrupt);
        }
        Ok(n)
    }

    /// Reads a dynamic block's header and builds its tables.
    fn dynamic_header(&mut self, bits: &mut Bits<'_>) -> Result<(), InflateError> {
        bits.refill();
        let nlen = bits.take(5) as usize + 257;
        let ndist = bits.take(5) as usize + 1;
        let ncode = bits.take(4) as usize + 4;
        if nlen > 286 || ndist > 30 {
            return Err(InflateError::Corrupt);
        }
        // Up to 57 bits: more than one refill guarantees.
        bits.refill();
        let mut cl = [0u8; 19];
        for &i in &CODELEN_ORDER[..ncode] {
            if bits.n < 3 {
                bits.refill();
            }
            cl[i] = bits.take(3) as u8;
        }
        self.codelen.build_from(&cl, CODELEN_BITS, Kind::CodeLen)?;
        let total = nlen + ndist;
        self.litlen.clear();
        self.dist.clear();
        let lens = &mut self.lens[..total];
        let mut i = 0;
        while i < total {
            if bits.n < 14 {
                bits.refill();
            }
            let e = self.codelen.entries[bits.peek(self.codelen.bits) as usize];
            bits.consume(e & 0xff);
            let sym = e >> 16;
            let (value, rep) = match sym {
                0..=15 => {
                    let Some(slot) = lens.get_mut(i) else {
                        return Err(InflateError::Corrupt);
                    };
                    *slot = sym as u8;
                    if sym != 0 {
                        if i < nlen {
                            self.litlen.push(i, sym as u8);
                        } else {
                            self.dist.push(i - nlen, sym as u8);
                        }
                    }
                    i += 1;
                    continue;
                }
                16 => {
                    let Some(&prev) = i.checked_sub(1).and_then(|p| lens.get(p)) else {
                        return Err(InflateError::Corrupt);
                    };
                    (prev, 3 + bits.take(2) as usize)
                }
                17 => (0, 3 + bits.take(3) as usize),
                _ => (0, 11 + bits.take(7) as usize),
            };
            let Some(run) = lens.get_mut(i..i + rep) else {
                return Err(InflateError::Corrupt);
            };
            run.fill(value);
            if value != 0 {
                for s in i..i + rep {
                    if s < nlen {
                        self.litlen.push(s, value);
                    } else {
                        self.dist.push(s - nlen, value);
                    }
                }
            }
            i += rep;
        }
        if lens[256] == 0 {
            return Err(InflateError::Corrupt);
        }
        self.litlen.build(LITLEN_BITS, Kind::LitLen)?;
        self.dist.build(DIST_BITS, Kind::Dist)
    }
}

/// Copies a stored block.
fn stored(bits: &mut Bits<'_>, out: &mut [u8], n: usize) -> Result<usize, InflateError> {
    let at = bits.align();
    let inp = bits.inp;
    let Some(h) = inp.get(at..).and_then(<[u8]>::first_chunk::<4>) else {
        return Err(InflateError::Corrupt);
    };
    let len = usize::from(u16::from_le_bytes([h[0], h[1]]));
    if u16::from_le_bytes([h[2], h[3]]) != !(len as u16) {
        return Err(InflateError::Corrupt);
    }
    let start = at + 4;
    // zlib copies what input there is before it notices the input ends.
    let avail = (inp.len() - start).min(len);
    let Some(dst) = out.get_mut(n..n + avail) else {
        return Err(InflateError::TooLarge);
    };
    dst.copy_from_slice(&inp[start..start + avail]);
    if avail < len {
        return Err(InflateError::Corrupt);
    }
    bits.seek(start + len);
    Ok(n + len)
}

/// Decodes one Huffman block's symbols up to its end-of-block code.
#[inline(always)]
fn decode(
    reader: &mut Bits<'_>,
    out: &mut [u8],
    n: usize,
    litlen: &LitLenTable,
    dist: &DistTable,
) -> Result<usize, InflateError> {
    let mut bits = *reader;
    let r = decode_symbols(&mut bits, out, n, litlen, dist);
    *reader = bits;
    r
}

#[inline(always)]
fn decode_symbols(
    bits: &mut Bits<'_>,
    out: &mut [u8],
    mut n: usize,
    litlen: &LitLenTable,
    dist: &DistTable,
) -> Result<usize, InflateError> {
    let inp = bits.inp;
    let end = inp.len();
    let ll_mask = (1u64 << litlen.bits) - 1;
    let d_mask = (1u64 << dist.bits) - 1;
    // The fast loop: while a refill loads a whole word (so every bit in the buffer is real
    // input) and the longest match plus a chunked copy's overshoot fits in `out`, no symbol
    // needs the end-of-input or the cap check.
    //
    // Each iteration starts with `e`, the table entry of its first symbol, looked up before the
    // refill (as libdeflate does): a refill only adds bits above the valid ones, so the lookup
    // need not wait for it. After a refill from whole words all 64 bits of the buffer are input
    // bits in order (only whole bytes are counted in `nb`), so even after a match has used 48
    // of them the next 10-bit index is real input.
    bits.refill();
    let (mut buf, mut nb, mut pos) = (bits.buf, bits.n, bits.pos);
    let mut e = litlen.entries[(buf & ll_mask) as usize & ((1 << LITLEN_BITS) - 1)];
    while n + 258 + 16 <= out.len() {
        let Some(w) = inp.get(pos..).and_then(<[u8]>::first_chunk::<8>) else {
            break;
        };
        buf |= u64::from_le_bytes(*w) << nb;
        pos += ((63 - nb) >> 3) as usize;
        nb |= 56;
        if e & 0xff == 0 {
            e = litlen.slow(buf, Kind::LitLen);
        }
        buf >>= e & 0xff;
        nb -= e & 0xff;
        if e & 0xff00 == 0 {
            out[n] = (e >> 16) as u8;
            n += 1;
            // At least 41 bits are left: room for two more literals without a refill (a
            // slow-path marker is not a literal: it goes round the loop).
            e = litlen.entries[(buf & ll_mask) as usize & ((1 << LITLEN_BITS) - 1)];
            for _ in 0..2 {
                if e & 0xff00 != 0 {
                    break;
                }
                buf >>= e & 0xff;
                nb -= e & 0xff;
                out[n] = (e >> 16) as u8;
                n += 1;
                e = litlen.entries[(buf & ll_mask) as usize & ((1 << LITLEN_BITS) - 1)];
            }
            continue;
        }
        let tag = (e >> 8) & 0xff;
        if tag & TAG_BASE == 0 {
            *bits = Bits { inp, pos, buf, n: nb };
            return if tag == TAG_EOB { Ok(n) } else { Err(InflateError::Corrupt) };
        }
        let extra = tag & 0x1f;
        let len = (e >> 16) as usize + (buf & ((1u64 << extra) - 1)) as usize;
        buf >>= extra;
        nb -= extra;
        let mut d = dist.entries[(buf & d_mask) as usize & ((1 << DIST_BITS) - 1)];
        if d & 0xff == 0 {
            d = dist.slow(buf, Kind::Dist);
        }
        buf >>= d & 0xff;
        nb -= d & 0xff;
        let dtag = (d >> 8) & 0xff;
        if dtag & TAG_SLOW != 0 {
            return Err(InflateError::Corrupt);
        }
        let extra = dtag & 0x1f;
        let distance = (d >> 16) as usize + (buf & ((1u64 << extra) - 1)) as usize;
        buf >>= extra;
        nb -= extra;
        if distance > n {
            return Err(InflateError::Corrupt);
        }
        e = litlen.entries[(buf & ll_mask) as usize & ((1 << LITLEN_BITS) - 1)];
        n = copy_match(out, n, distance, len)?;
    }
    *bits = Bits { inp, pos, buf, n: nb };
    // The careful loop, near the end of the input or of the output.
    loop {
        // A symbol with its extra bits and distance takes at most 15 + 5 + 15 + 13 bits.
        if bits.n < 48 {
            bits.refill();
        }
        let e = litlen.lookup(bits.buf, Kind::LitLen);
        bits.consume(e & 0xff);
        let tag = (e >> 8) & 0xff;
        if tag == TAG_LIT {
            if bits.pos > end && bits.overrun() {
                return Err(InflateError::Corrupt);
            }
            let Some(slot) = out.get_mut(n) else {
                return Err(InflateError::TooLarge);
            };
            *slot = (e >> 16) as u8;
            n += 1;
            continue;
        }
        if tag & TAG_SLOW != 0 {
            // Invalid (a slow marker never reaches here: `lookup` resolved it).
            return Err(InflateError::Corrupt);
        }
        if tag == TAG_EOB {
            return Ok(n);
        }
        let len = (e >> 16) as usize + bits.take(tag & 0x1f) as usize;
        let d = dist.lookup(bits.buf, Kind::Dist);
        bits.consume(d & 0xff);
        let dtag = (d >> 8) & 0xff;
        if dtag & TAG_SLOW != 0 {
            return Err(InflateError::Corrupt);
        }
        let distance = (d >> 16) as usize + bits.take(dtag & 0x1f) as usize;
        if bits.pos > end && bits.overrun() {
            return Err(InflateError::Corrupt);
        }
        if distance > n {
            return Err(InflateError::Corrupt);
        }
        n = copy_match(out, n, distance, len)?;
    }
}

/// Copies `len` bytes from `distance` back; returns the new output length.
#[inline(always)]
fn copy_match(out: &mut [u8], n: usize, distance: usize, len: usize) -> Result<usize, InflateError> {
    let end = n + len;
    if end > out.len() {
        return Err(InflateError::TooLarge);
    }
    let src = n - distance;
    if distance >= 16 && end + 16 <= out.len() {
        // 16 bytes at a time, overshooting into space not yet written.
        let mut s = src;
        let mut d = n;
        while d < end {
            out.copy_within(s..s + 16, d);
            s += 16;
            d += 16;
        }
    } else if distance >= 8 && end + 8 <= out.len() {
        let mut s = src;
        let mut d = n;
        while d < end {
            out.copy_within(s..s + 8, d);
            s += 8;
            d += 8;
        }
    } else if distance >= len {
        out.copy_within(src..src + len, n);
    } else {
        for i in n..end {
            out[i] = out[i - distance];
        }
    }
    Ok(end)
}

#[cfg(test)]
#[path = "small_tests.rs"]
mod tests;
