//! Inflating the zlib stream of a verified Octavia envelope into a capped, reused buffer.
//!
//! Octavia has no cap (a zip bomb inflates until memory runs out); heartsink caps the inflated
//! size (`max_inflated`, default 256 KiB: the largest real heartbeat seen, 1004 members, is
//! 51,943 B; a signed zip bomb then costs at most the time to write 256 KiB).
//! Like Python's `zlib.decompress`, the stream must have a zlib header and a correct Adler-32,
//! and bytes after the end of the stream are ignored.
//!
//! Three back-ends ([`Backend`], the `inflate` setting), measured side by side in
//! `benches/inflaters.rs` (with zlib, miniz_oxide, fdeflate and zune-inflate) and
//! `benches/stages.rs`:
//!
//! * `small` (the default): heartsink's own inflater for small messages, [`small`]. A
//!   heartbeat is one dynamic Huffman block of ≈260–350 bytes, and the general-purpose
//!   inflaters spend most of their time building decode tables sized for large inputs; this
//!   one builds only what the block's codes need. On the load generator's packets it takes
//!   ≈1.4 µs per heartbeat against libdeflate's ≈2.0 µs (18.3k against 16.0k instructions:
//!   its tables cost about as many instructions but half the time). It agrees with zlib byte for byte on every input (the
//!   `inflate_diff` fuzz target compares the two).
//! * `libdeflate`: whole-buffer, the fastest general-purpose one measured; about twice as fast
//!   as zlib-rs on a 24 KB heartbeat.
//! * `zlib-rs` through `flate2` (streaming).
//!
//! All reuse one decompressor and buffer per worker: a new one per packet costs ≈22–26 µs
//! more, mostly zeroing the capped buffer. The error kinds are the same for all: output past
//! the cap is [`InflateError::TooLarge`], anything else that is not a complete stream
//! [`InflateError::Corrupt`] (libdeflate may say either on a broken stream near the cap).

use super::envelope::Verified;

pub mod small;

/// Default cap on the inflated JSON size.
pub const DEFAULT_MAX_INFLATED: usize = 256 << 10;

/// Why a verified payload did not inflate. Each variant is one drop reason (`inflate_error`,
/// `too_large`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InflateError {
    /// Not a complete zlib stream: raw deflate or gzip framing, a truncated stream, corrupt
    /// data or a bad Adler-32. The sender is broken (the tag verified, so it is not forged).
    Corrupt,
    /// The stream inflates to more than the configured cap (`max_inflated`). Raise the cap if a
    /// real sender has that many members; otherwise it is a zip bomb.
    TooLarge,
}

/// The inflate implementation (the `inflate` setting: `small`, `libdeflate` or `zlib-rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// heartsink's own inflater for small messages ([`small`]): tables sized to the block's
    /// codes; the fastest measured on heartbeats.
    #[default]
    Small,
    /// libdeflate: decompresses a whole buffer at once; the fastest general-purpose one.
    Libdeflate,
    /// zlib-rs through flate2's streaming API.
    ZlibRs,
}

enum Engine {
    Small(Box<small::Small>),
    Libdeflate(libdeflater::Decompressor),
    ZlibRs(flate2::Decompress),
}

/// A reusable decompressor with its capped output buffer.
pub struct Inflater {
    engine: Engine,
    out: Vec<u8>,
    max: usize,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("max", &self.max).finish()
    }
}

impl Inflater {
    /// A decompressor whose output is capped at `max` bytes.
    pub fn new(backend: Backend, max: usize) -> Inflater {
        let engine = match backend {
            Backend::Small => Engine::Small(small::Small::new()),
            Backend::Libdeflate => Engine::Libdeflate(libdeflater::Decompressor::new()),
            Backend::ZlibRs => Engine::ZlibRs(flate2::Decompress::new(true)),
        };
        // One byte over the cap: output that fills it proves "more than the cap".
        Inflater { engine, out: vec![0; max + 1], max }
    }

    /// The cap in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the cap (on reload); reallocates only when it grows.
    pub fn set_max(&mut self, max: usize) {
        if max + 1 > self.out.len() {
            self.out.resize(max + 1, 0);
        }
        self.max = max;
    }

    /// Inflates the payload of `env`; the result borrows the internal buffer.
    pub fn inflate(&mut self, env: &Verified<'_>) -> Result<&[u8], InflateError> {
        self.inflate_bytes(env.payload())
    }

    /// Inflates raw zlib bytes. Prefer [`Inflater::inflate`], which only takes verified input;
    /// this entry point exists for benches and fuzzing.
    pub fn inflate_bytes(&mut self, zlib: &[u8]) -> Result<&[u8], InflateError> {
        // Inflate into cap + 1 bytes: producing more than `max` bytes is `TooLarge`, whatever
        // follows in the stream; anything else that is not a complete stream is `Corrupt`.
        let max = self.max;
        let out = &mut self.out[..max + 1];
        let n = match &mut self.engine {
            // Output that would not fit in `max` bytes is `TooLarge`.
            Engine::Small(d) => d.inflate(zlib, &mut out[..max])?,
            Engine::Libdeflate(d) => match d.zlib_decompress(zlib, out) {
                Ok(n) => n,
                Err(libdeflater::DecompressionError::InsufficientSpace) => max + 1,
                Err(libdeflater::DecompressionError::BadData) => return Err(InflateError::Corrupt),
            },
            Engine::ZlibRs(d) => {
                d.reset(true);
                let status = d.decompress(zlib, out, flate2::FlushDecompress::Finish);
                let n = usize::try_from(d.total_out()).unwrap_or(usize::MAX);
                match status {
                    _ if n > max => n,
                    Ok(flate2::Status::StreamEnd) => n,
                    // Input ended before the end of the stream, or bad data.
                    Ok(_) | Err(_) => return Err(InflateError::Corrupt),
                }
            }
        };
        if n > max {
            return Err(InflateError::TooLarge);
        }
        Ok(&self.out[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envelope::compress;

    fn both(max: usize) -> [Inflater; 3] {
        [
            Inflater::new(Backend::Small, max),
            Inflater::new(Backend::Libdeflate, max),
            Inflater::new(Backend::ZlibRs, max),
        ]
    }

    #[test]
    fn round_trip_any_level() {
        let json = br#"{"id": "x", "listeners": {}}"#;
        for level in 0..=9 {
            use std::io::Write;
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level));
            e.write_all(json).expect("vec");
            let z = e.finish().expect("vec");
            for mut inf in both(1024) {
                assert_eq!(inf.inflate_bytes(&z).expect("inflates"), json);
            }
        }
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut z = compress(b"{}");
        z.extend_from_slice(b"garbage after the stream");
        for mut inf in both(1024) {
            assert_eq!(inf.inflate_bytes(&z).expect("inflates"), b"{}");
        }
    }

    #[test]
    fn truncated_bad_checksum_raw_and_gzip_are_corrupt() {
        let json = b"{\"a\": 1}";
        let z = compress(json);
        let mut bad_adler = z.clone();
        let n = bad_adler.len();
        bad_adler[n - 1] ^= 1;
        let raw = &z[2..z.len() - 4];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, json).expect("vec");
        let gz = gz.finish().expect("vec");
        for mut inf in both(1024) {
            assert_eq!(inf.inflate_bytes(&z[..z.len() - 3]), Err(InflateError::Corrupt));
            assert_eq!(inf.inflate_bytes(&bad_adler), Err(InflateError::Corrupt));
            assert_eq!(inf.inflate_bytes(raw), Err(InflateError::Corrupt));
            assert_eq!(inf.inflate_bytes(&gz), Err(InflateError::Corrupt));
            assert_eq!(inf.inflate_bytes(b""), Err(InflateError::Corrupt));
        }
    }

    #[test]
    fn the_cap_is_exact() {
        let json = vec![b' '; 1000];
        let z = compress(&json);
        for mut inf in both(1000) {
            assert_eq!(inf.inflate_bytes(&z).expect("fits exactly").len(), 1000);
            inf.set_max(999);
            assert_eq!(inf.inflate_bytes(&z), Err(InflateError::TooLarge));
        }
    }

    #[test]
    fn zip_bomb_is_too_large() {
        let z = compress(&vec![0u8; 50 << 20]);
        for mut inf in both(DEFAULT_MAX_INFLATED) {
            assert_eq!(inf.inflate_bytes(&z), Err(InflateError::TooLarge));
        }
    }
}
