//! A confd load generator: how many replies per second a confd server (heartsink or the real
//! `ganeti-confd`) gives, used by `heartsink bench`.
//!
//! Each of `threads` sender threads has its own socket and a pool of pre-encoded, signed
//! requests (the request mix in turn; timestamps taken at the start, valid for the 300 s clock
//! window of the server, so runs are limited to 240 s). Request `i` of a pool carries the rsalt
//! `t<thread>.<run>.<pass>-<i>` (`run` random per run, `pass` counting the times it was sent),
//! signed anew for each pass: the server answers each signed request once (its replay cache),
//! so no packet is ever sent twice, not even by two runs in the same second. A thread keeps up to `window` requests outstanding, sends with `sendmmsg`
//! and receives with `recvmmsg`, and counts a reply when its salt names an outstanding request
//! (the reply's salt is the request's rsalt). Every `verify_every`-th matched reply is also
//! fully verified (magic, HMAC, schema: [`parse_reply`]); a failure counts as `bad`. When
//! nothing arrives for `loss_timeout`, the outstanding requests count as lost and the window
//! refills (UDP: a server under overload drops).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::unix_now;
use super::proto::{encode_request, parse_reply, HmacKey, Query, Request, RequestType};
use crate::io::{RecvBatch, SendBatch};

/// Longest run: the requests' timestamps must stay inside the server's ±300 s window.
pub const MAX_DURATION: Duration = Duration::from_secs(240);

/// What to run.
#[derive(Clone, Debug)]
pub struct ConfdLoadConfig {
    /// The server.
    pub target: SocketAddr,
    /// The HMAC key (the key file's exact bytes).
    pub key: HmacKey,
    /// Requests to send, in turn.
    pub mix: Vec<(RequestType, Query)>,
    /// Sender threads (each with its own socket).
    pub threads: usize,
    /// Requests outstanding per thread.
    pub window: usize,
    /// How long to send.
    pub duration: Duration,
    /// Verify the signature of every n-th matched reply (1: all).
    pub verify_every: u64,
    /// Outstanding requests count as lost after this long without any reply.
    pub loss_timeout: Duration,
}

impl ConfdLoadConfig {
    /// A configuration with the defaults: 2 threads, a window of 64, 1 s, every 8th reply
    /// verified, 50 ms loss timeout.
    pub fn new(target: SocketAddr, key: HmacKey, mix: Vec<(RequestType, Query)>) -> Self {
        ConfdLoadConfig {
            target,
            key,
            mix,
            threads: 2,
            window: 64,
            duration: Duration::from_secs(1),
            verify_every: 8,
            loss_timeout: Duration::from_millis(50),
        }
    }
}

/// The outcome of a run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ConfdLoadReport {
    /// Requests sent.
    pub sent: u64,
    /// Replies that matched an outstanding request.
    pub replies: u64,
    /// Matched replies whose signature and schema were checked.
    pub verified: u64,
    /// Checked replies that failed (wrong MAC, not a reply): must be 0.
    pub bad: u64,
    /// Requests given up after the loss timeout.
    pub lost: u64,
    /// Replies that came after their request was given up, or matched nothing.
    pub unmatched: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// `replies / seconds`.
    pub replies_per_s: f64,
    /// Sender threads.
    pub threads: usize,
    /// Window per thread.
    pub window: usize,
}

/// Why a run could not start, or stopped early.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfdLoadError {
    /// An empty request mix, zero threads, a zero window or `verify_every`, or a run longer than
    /// [`MAX_DURATION`]; also a sender thread that panicked during the run.
    Config(String),
    /// A socket error: binding or connecting before the run, or a sender thread's socket setup,
    /// poll or receive.
    Io(std::io::Error),
}

impl std::fmt::Display for ConfdLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfdLoadError::Config(s) => write!(f, "confd load: {s}"),
            ConfdLoadError::Io(e) => write!(f, "confd load socket: {e}"),
        }
    }
}

impl std::error::Error for ConfdLoadError {}

impl From<std::io::Error> for ConfdLoadError {
    fn from(e: std::io::Error) -> Self {
        ConfdLoadError::Io(e)
    }
}

/// The pool index named by a reply's salt (`t<thread>.<run>.<pass>-<i>`), read without parsing the JSON: the
/// outer `salt` member's value. Both the daemon's compact form and Python's spaced form work.
pub fn reply_index(datagram: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = b"\"salt\":";
    let at = datagram.windows(NEEDLE.len()).rposition(|w| w == NEEDLE)? + NEEDLE.len();
    let rest = &datagram[at..];
    let rest = &rest[rest.iter().position(|&b| b != b' ')?..];
    let rest = rest.strip_prefix(b"\"t")?;
    let dash = rest.iter().position(|&b| b == b'-')?;
    let digits = &rest[dash + 1..];
    let end = digits.iter().position(|&b| !b.is_ascii_digit())?;
    if end == 0 || digits.get(end) != Some(&b'"') {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Requests in a sender thread's pool for a window of `window`: far more than the window, so a
/// salt is reused only long after it was answered.
pub fn pool_len(window: usize) -> usize {
    (window * 16).max(1024)
}

/// The signed request a sender thread sends: request `i` of thread `t`'s pool in run `run_id`,
/// its `pass`-th sending (`at` = (t, run_id, pass, i)), the mix in turn, timestamp `now`
/// (unix seconds).
pub fn request(mix: &[(RequestType, Query)], key: &HmacKey, now: i64, at: (usize, u64, u64, usize)) -> Vec<u8> {
    let (t, run_id, pass, i) = at;
    let Some((kind, query)) = mix.get(i % mix.len().max(1)) else { return Vec::new() };
    let rsalt = format!("t{t}.{run_id:x}.{pass}-{i}");
    encode_request(&Request::new(*kind, query.clone(), rsalt), now, key)
}

/// Runs the load; blocks for `cfg.duration` (plus at most a loss timeout).
pub fn run(cfg: &ConfdLoadConfig) -> Result<ConfdLoadReport, ConfdLoadError> {
    if cfg.mix.is_empty() || cfg.threads == 0 || cfg.window == 0 || cfg.verify_every == 0 {
        return Err(ConfdLoadError::Config("empty mix, or zero threads, window or verify_every".into()));
    }
    if cfg.duration > MAX_DURATION {
        return Err(ConfdLoadError::Config(format!("at most {} s", MAX_DURATION.as_secs())));
    }
    let now = unix_now().as_secs() as i64;
    let run_id: u64 = rand::random();
    let pool_len = pool_len(cfg.window);
    let mut sockets = Vec::with_capacity(cfg.threads);
    for _ in 0..cfg.threads {
        let bind: SocketAddr = if cfg.target.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(bind)?;
        s.connect(cfg.target)?;
        sockets.push(s);
    }
    let barrier = Arc::new(std::sync::Barrier::new(cfg.threads + 1));
    let mut handles = Vec::new();
    for (t, socket) in sockets.into_iter().enumerate() {
        let (mix, key) = (cfg.mix.clone(), cfg.key.clone());
        let encode = move |i: usize, pass: u64| request(&mix, &key, now, (t, run_id, pass, i));
        let pool = Pool { packets: (0..pool_len).map(|i| encode(i, 0)).collect(), passes: vec![0; pool_len], encode };
        let cfg = cfg.clone();
        let barrier = barrier.clone();
        handles.push(std::thread::spawn(move || {
            barrier.wait();
            sender(&cfg, &socket, pool)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut report = ConfdLoadReport { threads: cfg.threads, window: cfg.window, ..ConfdLoadReport::default() };
    for h in handles {
        let r = h.join().map_err(|_| ConfdLoadError::Config("a sender thread panicked".into()))??;
        report.sent += r.sent;
        report.replies += r.replies;
        report.verified += r.verified;
        report.bad += r.bad;
        report.lost += r.lost;
        report.unmatched += r.unmatched;
    }
    report.seconds = start.elapsed().as_secs_f64().min(cfg.duration.as_secs_f64()).max(1e-9);
    report.replies_per_s = report.replies as f64 / report.seconds;
    Ok(report)
}

/// A thread's requests: pre-encoded for the first pass, signed anew for each later one.
struct Pool<F> {
    packets: Vec<Vec<u8>>,
    passes: Vec<u64>,
    encode: F,
}

impl<F: Fn(usize, u64) -> Vec<u8>> Pool<F> {
    fn len(&self) -> usize {
        self.packets.len()
    }

    /// Request `i`, never sent before.
    fn take(&mut self, i: usize) -> &[u8] {
        if self.passes[i] > 0 {
            self.packets[i] = (self.encode)(i, self.passes[i]);
        }
        self.passes[i] += 1;
        &self.packets[i]
    }
}

fn sender<F: Fn(usize, u64) -> Vec<u8>>(
    cfg: &ConfdLoadConfig,
    socket: &UdpSocket,
    mut pool: Pool<F>,
) -> Result<ConfdLoadReport, ConfdLoadError> {
    use mio::{Events, Interest, Poll, Token};
    let mut r = ConfdLoadReport::default();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4);
    socket.set_nonblocking(true)?;
    let mut rx = mio::net::UdpSocket::from_std(socket.try_clone()?);
    poll.registry().register(&mut rx, Token(0), Interest::READABLE)?;
    let mut send = SendBatch::new(64);
    let mut recv = RecvBatch::new(64, 2048);
    let mut outstanding = vec![false; pool.len()];
    // The loss sweep runs every `loss_timeout` (an "epoch"); a request still out two epochs
    // after it was sent is lost.
    let mut sent_epoch = vec![0u64; pool.len()];
    let mut epoch = 0u64;
    let mut next_sweep = Instant::now() + cfg.loss_timeout;
    let mut in_flight = 0usize;
    let mut next = 0usize;
    let end = Instant::now() + cfg.duration;
    let target = cfg.target;
    while Instant::now() < end {
        // Fill the window.
        while in_flight < cfg.window {
            let i = next;
            next = (next + 1) % pool.len();
            if outstanding[i] {
                continue; // still out from long ago: skip it until the loss sweep
            }
            outstanding[i] = true;
            sent_epoch[i] = epoch;
            in_flight += 1;
            let packet = pool.take(i);
            send.push(&target, |b| b.extend_from_slice(packet));
            if send.is_full() {
                r.sent += flush(&mut send, socket);
            }
        }
        r.sent += flush(&mut send, socket);
        // Wait for replies.
        let left = end.saturating_duration_since(Instant::now());
        poll.poll(&mut events, Some(left.min(cfg.loss_timeout)))?;
        loop {
            let n = recv.recv(&rx)?;
            if n == 0 {
                break;
            }
            for k in 0..n {
                let (d, _, _) = recv.get(k);
                match reply_index(d) {
                    Some(i) if outstanding.get(i) == Some(&true) => {
                        outstanding[i] = false;
                        in_flight -= 1;
                        r.replies += 1;
                        if r.replies % cfg.verify_every == 0 {
                            r.verified += 1;
                            if parse_reply(d, &cfg.key).is_err() {
                                r.bad += 1;
                            }
                        }
                    }
                    _ => r.unmatched += 1,
                }
            }
        }
        if Instant::now() >= next_sweep {
            epoch += 1;
            next_sweep = Instant::now() + cfg.loss_timeout;
            for (o, e) in outstanding.iter_mut().zip(&sent_epoch) {
                if *o && e + 2 <= epoch {
                    *o = false;
                    in_flight -= 1;
                    r.lost += 1;
                }
            }
        }
    }
    Ok(r)
}

/// Sends the queued batch; a datagram the kernel refused (`WouldBlock`) is simply not sent.
fn flush(send: &mut SendBatch, socket: &UdpSocket) -> u64 {
    let sent = send.flush(socket).map_or(0, |n| n as u64);
    send.clear();
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_index_of_both_reply_styles() {
        assert_eq!(reply_index(br#"plj0{"hmac":"ab","msg":"{}","salt":"t1-42"}"#), Some(42));
        assert_eq!(reply_index(br#"plj0{"msg": "{}", "salt": "t0-7", "hmac": "ab"}"#), Some(7));
        assert_eq!(reply_index(br#"plj0{"hmac":"ab","msg":"{}","salt":"x-1"}"#), None);
        assert_eq!(reply_index(br#"plj0{"hmac":"ab","msg":"{}","salt":"t1-"}"#), None);
        assert_eq!(reply_index(b"plj0"), None);
        assert_eq!(reply_index(br#"plj0{"hmac":"ab","msg":"{}","salt":"t1.9-42"}"#), Some(42));
    }
}
