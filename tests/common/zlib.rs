//! Real zlib (`libz-sys`, bundled and linked statically): the reference inflater that heartsink's
//! own is compared against, in the inflater bench, the tests and the `inflate_diff` fuzz target
//! (which includes this file by path). What zlib's `inflate` returns for a whole buffer with
//! `Z_FINISH` is what Python's `zlib.decompress` (Octavia) accepts: `Z_STREAM_END`, with any
//! bytes after the stream left unread.
#![allow(dead_code, unsafe_code)]

use libz_sys::{
    deflate, deflateEnd, deflateInit2_, inflate, inflateEnd, inflateInit_, inflateReset, uInt, voidpf, z_stream,
    zlibVersion, Z_DEFLATED, Z_FINISH, Z_OK, Z_STREAM_END,
};

extern "C" fn zalloc(_: voidpf, items: uInt, size: uInt) -> voidpf {
    // SAFETY: calloc with any sizes is sound; zlib checks the result for null.
    unsafe { libc::calloc(items as usize, size as usize) }
}

extern "C" fn zfree(_: voidpf, p: voidpf) {
    // SAFETY: zlib frees only what `zalloc` returned.
    unsafe { libc::free(p) }
}

/// What zlib says of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `inflate` returned `Z_STREAM_END`: the stream is complete and its check value right.
    pub end: bool,
    /// Bytes written to the output buffer (zlib stops when it is full, whatever follows).
    pub total_out: usize,
}

/// A reused zlib inflate stream.
pub struct Zlib {
    s: Box<z_stream>,
}

fn new_stream() -> Box<z_stream> {
    Box::new(z_stream {
        next_in: std::ptr::null_mut(),
        avail_in: 0,
        total_in: 0,
        next_out: std::ptr::null_mut(),
        avail_out: 0,
        total_out: 0,
        msg: std::ptr::null_mut(),
        state: std::ptr::null_mut(),
        zalloc,
        zfree,
        opaque: std::ptr::null_mut(),
        data_type: 0,
        adler: 0,
        reserved: 0,
    })
}

impl Zlib {
    /// A new stream (zlib wrapper, 32 KiB window).
    pub fn new() -> Zlib {
        let mut s = new_stream();
        // SAFETY: the stream is fully initialised and boxed, so its address stays put.
        let r = unsafe { inflateInit_(&mut *s, zlibVersion(), std::mem::size_of::<z_stream>() as i32) };
        assert_eq!(r, Z_OK, "inflateInit");
        Zlib { s }
    }

    /// Inflates `z` into `out` in one call with `Z_FINISH`.
    pub fn outcome(&mut self, z: &[u8], out: &mut [u8]) -> Outcome {
        // SAFETY: the stream was initialised in `new`; both buffers outlive the call, and zlib
        // reads at most `avail_in` bytes and writes at most `avail_out` bytes.
        unsafe {
            inflateReset(&mut *self.s);
            self.s.next_in = z.as_ptr() as *mut u8;
            self.s.avail_in = z.len() as u32;
            self.s.next_out = out.as_mut_ptr();
            self.s.avail_out = out.len() as u32;
            let r = inflate(&mut *self.s, Z_FINISH);
            Outcome { end: r == Z_STREAM_END, total_out: self.s.total_out as usize }
        }
    }

    /// Inflates `z` into `out`; the inflated length of a complete stream.
    pub fn inflate(&mut self, z: &[u8], out: &mut [u8]) -> Option<usize> {
        let o = self.outcome(z, out);
        o.end.then_some(o.total_out)
    }
}

impl Drop for Zlib {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended once.
        unsafe {
            inflateEnd(&mut *self.s);
        }
    }
}

/// One-shot zlib inflate of `z` into `out`.
pub fn zlib(z: &[u8], out: &mut [u8]) -> Option<usize> {
    Zlib::new().inflate(z, out)
}

/// Compresses `data` with zlib's own deflate: `level` 0–9, `strategy` one of zlib's
/// (`Z_DEFAULT_STRATEGY`, `Z_FILTERED`, `Z_HUFFMAN_ONLY`, `Z_RLE`, `Z_FIXED`), window and memory
/// levels as given (`window_bits` 9–15, `mem_level` 1–9).
pub fn compress(data: &[u8], level: i32, strategy: i32, window_bits: i32, mem_level: i32) -> Vec<u8> {
    let mut s = new_stream();
    let mut out = vec![0u8; data.len() + data.len() / 100 + 1024];
    // SAFETY: the stream is initialised before use and ended after; both buffers outlive the
    // calls and zlib writes at most `avail_out` bytes.
    unsafe {
        let r = deflateInit2_(
            &mut *s,
            level,
            Z_DEFLATED,
            window_bits,
            mem_level,
            strategy,
            zlibVersion(),
            std::mem::size_of::<z_stream>() as i32,
        );
        assert_eq!(r, Z_OK, "deflateInit2");
        s.next_in = data.as_ptr() as *mut u8;
        s.avail_in = data.len() as u32;
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len() as u32;
        let r = deflate(&mut *s, Z_FINISH);
        assert_eq!(r, Z_STREAM_END, "deflate");
        out.truncate(s.total_out as usize);
        deflateEnd(&mut *s);
    }
    out
}
