//! The confd stage table of `heartsink bench`: what one confd reply costs, stage by stage, in
//! nanoseconds of the measuring thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), median of three
//! runs, on the very requests the confd load generator sends for the Ganeti mix
//! ([`crate::confd::load::request`]).
//!
//! - receive: `recvmmsg` of the requests in batches of up to 64 from a loopback socket another
//!   thread filled first (as the heartbeat stage table measures it);
//! - verify+parse: the envelope's HMAC-SHA1 check and the parse, with a reused
//!   [`RequestScratch`] (the first step of [`handle`]);
//! - answer+sign: the answer written from the loaded `config.data` and the reply signed
//!   ([`answer_into`] and [`encode_signed`], the last steps of [`handle`]);
//! - handle: the whole [`handle`] call as `serve`'s responders make it (the two above and the
//!   replay cache check, against a cache already full);
//! - send: `sendmmsg` of the real replies in batches of 64 to a loopback socket another thread
//!   drains as the load generator does (waiting in `poll`): on loopback the send also runs the
//!   receiver's side (its softirq, the wake-up) in the sender's context.
//!
//! receive + send is the kernel floor of a server doing one receive and one send per reply on
//! this machine: with no user-space work at all, it could answer at most 1e9 / floor replies
//! per CPU-second. The rest of `serve`'s CPU per reply (from its replies per CPU-second under
//! load) beyond receive + handle + send is the remainder: wake-ups, the hand-off from the confd
//! rx thread to the workers, and the heartbeat ingest it runs meanwhile.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::stages::{median3, per_item, receive, try_median3};
use super::Error;
use crate::confd::client::unix_now;
use crate::confd::load;
use crate::confd::proto::{
    encode_signed, parse_request, HmacKey, ParseOptions, Query, ReplyMsg, RequestScratch, RequestType, HMAC_LEN,
};
use crate::confd::replay::ReplayCache;
use crate::confd::server::{answer_into, handle, ConfdScratch, ConfdState, HeartsinkScratch};
use crate::io::{RecvBatch, SendBatch};

/// Requests measured (about 20 rounds of one load thread's pool at the default window).
pub const REQUESTS: usize = 20_480;

/// Nanoseconds per reply, stage by stage, and what they imply.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConfdStageTable {
    /// Requests measured.
    pub requests: usize,
    /// Mean request size, bytes.
    pub request_bytes: f64,
    /// Mean reply size, bytes.
    pub reply_bytes: f64,
    /// `recvmmsg` in batches of up to 64 from a loopback socket another thread filled.
    pub receive_ns: f64,
    /// The envelope's HMAC-SHA1 check and the request's parse (reused scratch).
    pub verify_parse_ns: f64,
    /// The answer from the index and the signed reply.
    pub answer_sign_ns: f64,
    /// The whole `handle` call: verify+parse, the replay cache check, answer+sign.
    pub handle_ns: f64,
    /// `sendmmsg` of the replies in batches of 64 to a loopback socket another thread drains
    /// (the receiver's softirq and wake-up included, as loopback runs them in the sender).
    pub send_ns: f64,
    /// receive + send: the kernel's cost per reply.
    pub kernel_floor_ns: f64,
    /// 1e9 / kernel floor: replies per CPU-second with no user-space work at all.
    pub floor_replies_per_cpu_second: f64,
    /// That over ganeti-confd's replies per CPU-second, when it was measured: the highest ratio
    /// a server doing one receive and one send per reply could reach on this machine.
    pub floor_ratio_over_ganeti: Option<f64>,
    /// `serve`'s CPU per reply under the load (1e9 / its replies per CPU-second; 0 unknown).
    pub serve_ns: f64,
    /// serve − receive − handle − send (not clamped): wake-ups, the rx thread's hand-off to
    /// the workers, the heartbeat ingest meanwhile.
    pub remainder_ns: f64,
}

impl ConfdStageTable {
    /// The table's rows: each stage's name and its ns per reply (the first five measured
    /// here, the rest derived or from `serve`).
    pub fn rows(&self) -> [(&'static str, f64); 8] {
        [
            ("receive (recvmmsg, batches of up to 64)", self.receive_ns),
            ("verify+parse (envelope HMAC-SHA1 check and parse, reused scratch)", self.verify_parse_ns),
            ("answer+sign (answer from config.data, reply signed)", self.answer_sign_ns),
            ("handle (the whole call: verify+parse, replay cache check, answer+sign)", self.handle_ns),
            ("send (sendmmsg, batches of 64, the real replies; the receiver's softirq included)", self.send_ns),
            ("kernel floor: receive + send", self.kernel_floor_ns),
            ("`serve` per reply under load (1e9 / its replies per CPU-second)", self.serve_ns),
            (
                "remainder: serve − receive − handle − send (wake-ups, rx thread hand-off, heartbeat ingest)",
                self.remainder_ns,
            ),
        ]
    }
}

/// Measures the table for `mix` (as the load generator signs it with `key`, its pool for a
/// window of `window`) answered from the `config.data` at `config`, given `serve`'s and
/// ganeti-confd's measured replies per CPU-second (0 or `None`: unknown).
pub fn measure(
    key: &HmacKey,
    config: &Path,
    mix: &[(RequestType, Query)],
    window: usize,
    serve_per_cpu_s: f64,
    ganeti_per_cpu_s: Option<f64>,
) -> Result<ConfdStageTable, Error> {
    measure_n(key, config, mix, window, REQUESTS, (serve_per_cpu_s, ganeti_per_cpu_s))
}

fn measure_n(
    key: &HmacKey,
    config: &Path,
    mix: &[(RequestType, Query)],
    window: usize,
    n: usize,
    (serve_per_cpu_s, ganeti_per_cpu_s): (f64, Option<f64>),
) -> Result<ConfdStageTable, Error> {
    let state = ConfdState::load(vec![key.clone()], Some(config.to_path_buf()))?;
    let now = unix_now().as_secs() as i64;
    let run_id: u64 = rand::random();
    let pool = load::pool_len(window);
    let requests: Vec<Vec<u8>> =
        (0..n).map(|k| load::request(mix, key, now, (0, run_id, (k / pool) as u64, k % pool))).collect();
    let n = requests.len().max(1);

    // The replies, and every buffer grown to its largest.
    let mut scratch = ConfdScratch::default();
    let mut replies = Vec::with_capacity(requests.len());
    for r in &requests {
        let mut out = Vec::new();
        handle(r, now, &state, None, None, &mut scratch, &mut out)
            .map_err(|e| format!("confd stages: a load generator request was dropped: {e}"))?;
        replies.push(out);
    }

    let mut request_scratch = RequestScratch::default();
    let verify_parse_ns = median3(|| {
        per_item(n, || {
            for r in &requests {
                std::hint::black_box(request_scratch.parse(r, &state.keys, now, ParseOptions::default()).is_ok());
            }
        })
    });

    let verified = requests.iter().map(|r| parse_request(r, &state.keys, now)).collect::<Result<Vec<_>, _>>()?;
    let views: Vec<_> = verified.iter().map(|v| v.request.view()).collect();
    let (mut msg, mut heartsink, mut out) = (ReplyMsg::default(), HeartsinkScratch::default(), Vec::new());
    let answer_sign_ns = median3(|| {
        per_item(n, || {
            for v in &views {
                answer_into(v, &state, None, &mut msg, &mut heartsink);
                encode_signed(&mut out, &msg, v.rsalt, key);
                std::hint::black_box(out.len());
            }
        })
    });

    let mut out = Vec::new();
    let handle_ns = median3(|| {
        // A cache as full as a busy server's, so that these requests are new to it.
        let cache = full_replay_cache(state.limits.replay_cache, now);
        per_item(n, || {
            for r in &requests {
                out.clear();
                std::hint::black_box(handle(r, now, &state, None, Some(&cache), &mut scratch, &mut out).is_ok());
            }
        })
    });

    let receive_ns = try_median3(|| receive(&requests))?;
    let send_ns = try_median3(|| send(&replies))?;
    let kernel_floor_ns = receive_ns + send_ns;
    let floor_replies_per_cpu_second = if kernel_floor_ns > 0.0 { 1e9 / kernel_floor_ns } else { 0.0 };
    let serve_ns = if serve_per_cpu_s > 0.0 { 1e9 / serve_per_cpu_s } else { 0.0 };
    let mean = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / v.len().max(1) as f64;
    Ok(ConfdStageTable {
        requests: requests.len(),
        request_bytes: mean(&requests),
        reply_bytes: mean(&replies),
        receive_ns,
        verify_parse_ns,
        answer_sign_ns,
        handle_ns,
        send_ns,
        kernel_floor_ns,
        floor_replies_per_cpu_second,
        floor_ratio_over_ganeti: ganeti_per_cpu_s
            .filter(|g| *g > 0.0 && floor_replies_per_cpu_second > 0.0)
            .map(|g| floor_replies_per_cpu_second / g),
        serve_ns,
        remainder_ns: if serve_ns > 0.0 { serve_ns - receive_ns - handle_ns - send_ns } else { 0.0 },
    })
}

/// A replay cache of `capacity` entries, every one taken by a signature none of the measured
/// requests has (its pages touched, as a busy server's are).
fn full_replay_cache(capacity: usize, now: i64) -> ReplayCache {
    let cache = ReplayCache::new(capacity);
    let mut mac = [0u8; HMAC_LEN];
    for k in 0..capacity as u64 {
        let h = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
        mac[..8].copy_from_slice(&h.to_le_bytes());
        mac[8..16].copy_from_slice(&k.to_le_bytes());
        cache.check(&mac, now, now);
    }
    cache
}

/// `sendmmsg` cost per reply in full batches of 64 (only the calls are timed, not the copies
/// into the batch), to a loopback socket another thread drains as the load generator does:
/// waiting in `poll`, then `recvmmsg` until empty.
fn send(replies: &[Vec<u8>]) -> Result<f64, Error> {
    let rx = crate::io::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)), 64 << 20, false)?;
    let to = rx.local;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let chunk = &replies[..replies.len().min(20_000)];
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let drainer = s.spawn(|| drain(&rx.socket, &done));
        let mut batch = SendBatch::new(64);
        let (mut ns, mut sent) = (0u64, 0usize);
        let result = chunk.chunks(64).try_for_each(|group| {
            for r in group {
                batch.push(&to, |b| b.extend_from_slice(r));
            }
            let t0 = crate::io::thread_cpu_ns();
            let n = batch.flush(&tx);
            ns += crate::io::thread_cpu_ns().saturating_sub(t0);
            batch.clear();
            sent += n?;
            Ok::<(), std::io::Error>(())
        });
        done.store(true, Ordering::Release);
        let drained = drainer.join().map_err(|_| "confd stages: the draining thread panicked")?;
        result?;
        drained?;
        Ok(ns as f64 / sent.max(1) as f64)
    })
}

/// Receives until `done` is set and the socket stays empty for 50 ms; returns how many.
fn drain(socket: &UdpSocket, done: &AtomicBool) -> std::io::Result<usize> {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4);
    let mut rx = mio::net::UdpSocket::from_std(socket.try_clone()?);
    poll.registry().register(&mut rx, Token(0), Interest::READABLE)?;
    let mut batch = RecvBatch::new(64, 2048);
    let mut got = 0;
    loop {
        let finishing = done.load(Ordering::Acquire);
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        let before = got;
        loop {
            let k = batch.recv(&rx)?;
            if k == 0 {
                break;
            }
            got += k;
        }
        if finishing && got == before {
            return Ok(got);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confd_stage_bench_measures_every_stage() {
        let data = super::super::repo().join("tests/data/confd");
        let key = HmacKey::from_file(data.join("hmac.key")).expect("the test key");
        let mix = super::super::confd::ganeti_mix();
        let t = measure_n(&key, &data.join("config.data.json"), &mix, 64, 512, (100_000.0, Some(25_000.0)))
            .expect("measured");
        assert_eq!(t.requests, 512);
        for (name, v) in &t.rows()[..5] {
            assert!(*v > 0.0, "{name}: {v}");
        }
        assert!(t.reply_bytes > 0.0 && t.request_bytes > 0.0);
        assert_eq!(t.kernel_floor_ns, t.receive_ns + t.send_ns);
        assert_eq!(t.serve_ns, 10_000.0);
        let ratio = t.floor_ratio_over_ganeti.expect("ganeti known");
        assert!((ratio - 1e9 / t.kernel_floor_ns / 25_000.0).abs() < 1e-9);
    }
}
