//! The load generator behind `heartsink load` and `heartsink bench`: a simulated fleet of
//! amphorae sending real ver-3 Octavia heartbeats over UDP with batched `sendmmsg`.
//!
//! A heartbeat is the JSON (Octavia's shape and separators, random-looking UUIDs derived from
//! the seed and the amphora number, rising `seq`, fresh stats deltas), zlib at level 9 as the
//! amphora agent compresses (libdeflate, reused compressor), and the hex HMAC tag.
//!
//! By default each heartbeat is built when it is sent and carries the send time in an extra
//! `"hs_sent_ns"` field (Octavia ignores unknown keys; heartsink and the Octavia bench script
//! measure send-to-applied latency from it). Building costs ≈10 µs, mostly compression: one
//! thread sent 68 k heartbeats/s, two threads 121 k/s (measured on the 2-core project machine).
//! With `prebuilt` every packet is built before the clock starts and sending costs only
//! `sendmmsg`; such packets carry no send time (the daemon's receive-to-applied latency, from
//! kernel timestamps, measures them instead).
//!
//! Amphorae are spread over up to 256 source sockets per thread (consecutive amphorae share a
//! socket), so the receiver's one-source-one-worker routing sees many sources.
//!
//! With several targets each amphora sends each heartbeat to the next target in the list,
//! round-robin, as an Octavia amphora does over `controller_ip_port_list` (`health_sender.py`:
//! one controller per message, not all of them). Amphora `a` sends its `k`-th packet to target
//! `(a + k) mod targets`: a real fleet starts its rotations at random times, so the starting
//! points are spread as well, and every target gets an even share from the first round on. The
//! report counts the packets per target.
//!
//! Fault mixes replace a share of the packets: `bad_tag` (a tag with a non-hex character),
//! `garbage` (random bytes), `replay` (the thread's previous good packet again), `oversize`
//! (a signed zip bomb that inflates to 2 MiB), `wrong_key` (signed with another key).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::engine::counters::bump;
use crate::engine::{Clock, SystemClock};
use crate::io::SendBatch;
use crate::proto::envelope::{push_tag, TagForm};
use crate::proto::keyring::Key;
use crate::proto::octavia::Uuid;

/// Sockets per sender thread at most.
pub const MAX_SOCKETS_PER_THREAD: usize = 256;
/// Datagrams per `sendmmsg`.
pub const SEND_BATCH: usize = 64;

/// Why a load run cannot start.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// A target is not a loopback address and `--allow-remote` was not given.
    RemoteTarget(SocketAddr),
    /// No target, or targets of both address families (the senders' sockets are of one).
    BadTargets(String),
    /// A fault percentage is out of 0..=100, or they add up to more than 100.
    BadFaultMix(String),
    /// Zero amphorae, threads, or an unusable shape.
    BadShape(String),
    /// A socket could not be opened.
    Io(std::io::Error),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::RemoteTarget(a) => write!(f, "{a} is not a loopback address; pass --allow-remote to send there"),
            LoadError::BadTargets(m) => write!(f, "bad targets: {m}"),
            LoadError::BadFaultMix(m) => write!(f, "bad fault mix: {m}"),
            LoadError::BadShape(m) => write!(f, "bad fleet shape: {m}"),
            LoadError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// What each amphora reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Listeners per amphora.
    pub listeners: u32,
    /// Pools per amphora (pool `p` belongs to listener `p % listeners`).
    pub pools: u32,
    /// Members per pool.
    pub members: u32,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape { listeners: 1, pools: 1, members: 3 }
    }
}

/// Percentages of packets replaced by each fault.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Tag with a non-hex character.
    pub bad_tag: f64,
    /// Random bytes.
    pub garbage: f64,
    /// The previous good packet again.
    pub replay: f64,
    /// A signed zip bomb.
    pub oversize: f64,
    /// Signed with a wrong key.
    pub wrong_key: f64,
}

/// The kinds of packet sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Kind {
    /// A good heartbeat.
    Good,
    /// See [`Faults::bad_tag`].
    BadTag,
    /// See [`Faults::garbage`].
    Garbage,
    /// See [`Faults::replay`].
    Replay,
    /// See [`Faults::oversize`].
    Oversize,
    /// See [`Faults::wrong_key`].
    WrongKey,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [Kind::Good, Kind::BadTag, Kind::Garbage, Kind::Replay, Kind::Oversize, Kind::WrongKey];

    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Good => "good",
            Kind::BadTag => "bad_tag",
            Kind::Garbage => "garbage",
            Kind::Replay => "replay",
            Kind::Oversize => "oversize",
            Kind::WrongKey => "wrong_key",
        }
    }
}

/// A load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Where to send: each amphora sends to these in turn, round-robin (one target: all there).
    pub targets: Vec<SocketAddr>,
    /// The heartbeat key.
    pub key: String,
    /// Simulated amphorae.
    pub amphorae: u64,
    /// What each reports.
    pub shape: Shape,
    /// Heartbeats per second over all threads; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many packets.
    pub count: Option<u64>,
    /// Sender threads.
    pub threads: usize,
    /// Fault mix.
    pub faults: Faults,
    /// Allow a non-loopback target.
    pub allow_remote: bool,
    /// Seed of the ids and the random choices.
    pub seed: u64,
    /// First `seq` of every amphora.
    pub first_seq: u64,
    /// Build every packet before sending (needs `count`).
    pub prebuilt: bool,
}

impl Default for LoadConfig {
    fn default() -> LoadConfig {
        LoadConfig {
            targets: vec![SocketAddr::from(([127, 0, 0, 1], 5555))],
            key: crate::proto::keyring::INSECURE_DEFAULT_KEY.into(),
            amphorae: 1000,
            shape: Shape::default(),
            rate: None,
            duration: Some(Duration::from_secs(10)),
            count: None,
            threads: 1,
            faults: Faults::default(),
            allow_remote: false,
            seed: 1,
            first_seq: 0,
            prebuilt: false,
        }
    }
}

/// What one target was sent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetReport {
    /// The target's address.
    pub target: String,
    /// Packets sent there, of every kind.
    pub sent: u64,
    /// Send errors there.
    pub errors: u64,
}

/// The end-of-run report (`--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    /// The target addresses, comma-separated (one address with one target).
    pub target: String,
    /// Packets per target, in the order given.
    pub targets: Vec<TargetReport>,
    /// Packets sent, by kind.
    pub sent: std::collections::BTreeMap<&'static str, u64>,
    /// All packets sent.
    pub total: u64,
    /// Send errors.
    pub errors: u64,
    /// Wall time of the run, seconds (after any pre-building).
    pub duration_s: f64,
    /// Time spent pre-building, seconds.
    pub build_s: f64,
    /// Achieved rate, packets per second.
    pub rate: f64,
    /// Simulated amphorae.
    pub amphorae: u64,
    /// Sender threads.
    pub threads: usize,
}

/// Builds heartbeat datagrams for a fleet.
pub struct Builder {
    seed: u64,
    shape: Shape,
    key: Key,
    wrong_key: Key,
    compressor: libdeflater::Compressor,
    json: Vec<u8>,
    rng: SmallRng,
    bomb: Vec<u8>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("shape", &self.shape).finish()
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id of entity `n` of `kind` (0 amphora, 1 listener, 2 pool, 3 member) of amphora `a`:
/// a random-looking version-4 UUID (so the JSON compresses like Octavia's), the same for the
/// same inputs.
pub fn fleet_id(seed: u64, kind: u8, amphora: u64, n: u64) -> Uuid {
    let hi = splitmix(seed ^ splitmix(amphora ^ (u64::from(kind) << 56)));
    let lo = splitmix(hi ^ splitmix(n.wrapping_add(0x5bd1_e995)));
    let v = (u128::from(hi) << 64) | u128::from(lo);
    Uuid::from_u128((v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62))
}

fn write_id(out: &mut Vec<u8>, id: Uuid) {
    let mut buf = [0u8; 36];
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
}

impl Builder {
    /// A builder for `shape` with ids from `seed`, signing with `key`.
    pub fn new(seed: u64, shape: Shape, key: &str) -> Builder {
        let key = Key::new(key.as_bytes());
        let bomb = {
            let mut z = crate::proto::envelope::compress(&vec![b' '; 2 << 20]);
            push_tag(&mut z, 0, &key, TagForm::Hex);
            z
        };
        Builder {
            seed,
            shape,
            wrong_key: Key::new(b"heartsink-load-wrong-key"),
            key,
            // Level 9, as the amphora agent's `zlib.compress(…, 9)`.
            compressor: libdeflater::Compressor::new(libdeflater::CompressionLvl::new(9).unwrap_or_default()),
            json: Vec::with_capacity(4096),
            rng: SmallRng::seed_from_u64(seed),
            bomb,
        }
    }

    /// Renders the JSON of one heartbeat into the internal buffer (Octavia's separators).
    pub fn render(&mut self, amphora: u64, seq: u64, sent_ns: Option<u64>) -> &[u8] {
        let (s, shape) = (self.seed, self.shape);
        let j = &mut self.json;
        j.clear();
        j.extend_from_slice(b"{\"id\": \"");
        write_id(j, fleet_id(s, 0, amphora, 0));
        let _ = write!(j, "\", \"seq\": {seq}, \"listeners\": {{");
        for l in 0..u64::from(shape.listeners) {
            if l > 0 {
                j.extend_from_slice(b", ");
            }
            j.push(b'"');
            write_id(j, fleet_id(s, 1, amphora, l));
            let r = &mut self.rng;
            let _ = write!(
                j,
                "\": {{\"status\": \"OPEN\", \"stats\": {{\"tx\": {}, \"rx\": {}, \"conns\": {}, \"totconns\": {}, \"ereq\": {}}}}}",
                r.random_range(0..100_000u32),
                r.random_range(0..20_000u32),
                r.random_range(0..50u32),
                r.random_range(0..200u32),
                r.random_range(0..3u32)
            );
        }
        j.extend_from_slice(b"}, \"pools\": {");
        for p in 0..u64::from(shape.pools) {
            if p > 0 {
                j.extend_from_slice(b", ");
            }
            j.push(b'"');
            write_id(j, fleet_id(s, 2, amphora, p));
            j.push(b':');
            write_id(j, fleet_id(s, 1, amphora, p % u64::from(shape.listeners.max(1))));
            j.extend_from_slice(b"\": {\"status\": \"UP\", \"members\": {");
            for m in 0..u64::from(shape.members) {
                if m > 0 {
                    j.extend_from_slice(b", ");
                }
                j.push(b'"');
                write_id(j, fleet_id(s, 3, amphora, p * u64::from(shape.members) + m));
                j.extend_from_slice(b"\": \"UP\"");
            }
            j.extend_from_slice(b"}}");
        }
        j.extend_from_slice(b"}, \"ver\": 3");
        if let Some(t) = sent_ns {
            let _ = write!(j, ", \"hs_sent_ns\": {t}");
        }
        j.push(b'}');
        &self.json
    }

    /// Appends a complete signed heartbeat datagram to `out`.
    pub fn heartbeat(&mut self, out: &mut Vec<u8>, amphora: u64, seq: u64, sent_ns: Option<u64>, wrong_key: bool) {
        self.render(amphora, seq, sent_ns);
        let start = out.len();
        let bound = self.compressor.zlib_compress_bound(self.json.len());
        out.resize(start + bound, 0);
        let n = self.compressor.zlib_compress(&self.json, &mut out[start..]).unwrap_or(0);
        out.truncate(start + n);
        let key = if wrong_key { &self.wrong_key } else { &self.key };
        push_tag(out, start, key, TagForm::Hex);
    }

    /// Appends a packet of `kind` to `out`; `last_good` is the thread's previous good packet and
    /// `sent_ns` the send time to carry (none for pre-built packets).
    pub fn packet(
        &mut self,
        kind: Kind,
        out: &mut Vec<u8>,
        amphora: u64,
        seq: u64,
        sent_ns: Option<u64>,
        last_good: &[u8],
    ) {
        match kind {
            Kind::Good => self.heartbeat(out, amphora, seq, sent_ns, false),
            Kind::WrongKey => self.heartbeat(out, amphora, seq, sent_ns, true),
            Kind::BadTag => {
                self.heartbeat(out, amphora, seq, sent_ns, false);
                if let Some(last) = out.last_mut() {
                    *last = b'g';
                }
            }
            Kind::Garbage => {
                let n = self.rng.random_range(1..600);
                out.extend((0..n).map(|_| self.rng.random::<u8>()));
            }
            Kind::Replay => out.extend_from_slice(last_good),
            Kind::Oversize => out.extend_from_slice(&self.bomb),
        }
    }

    /// Chooses a packet kind for the fault mix.
    pub fn choose(&mut self, f: &Faults) -> Kind {
        let x: f64 = self.rng.random_range(0.0..100.0);
        let mut acc = 0.0;
        for (k, p) in [
            (Kind::BadTag, f.bad_tag),
            (Kind::Garbage, f.garbage),
            (Kind::Replay, f.replay),
            (Kind::Oversize, f.oversize),
            (Kind::WrongKey, f.wrong_key),
        ] {
            acc += p;
            if x < acc {
                return k;
            }
        }
        Kind::Good
    }
}

/// Checks a configuration before any socket is opened.
pub fn validate(cfg: &LoadConfig) -> Result<(), LoadError> {
    let Some(first) = cfg.targets.first() else {
        return Err(LoadError::BadTargets("at least one target is needed".into()));
    };
    if cfg.targets.iter().any(|t| t.is_ipv4() != first.is_ipv4()) {
        return Err(LoadError::BadTargets("targets must all be IPv4 or all be IPv6".into()));
    }
    if cfg.targets.len() > u32::MAX as usize {
        return Err(LoadError::BadTargets("too many targets".into()));
    }
    if let Some(remote) = cfg.targets.iter().find(|t| !t.ip().is_loopback()).filter(|_| !cfg.allow_remote) {
        return Err(LoadError::RemoteTarget(*remote));
    }
    let f = cfg.faults;
    let all = [f.bad_tag, f.garbage, f.replay, f.oversize, f.wrong_key];
    if all.iter().any(|p| !(0.0..=100.0).contains(p)) || all.iter().sum::<f64>() > 100.0 {
        return Err(LoadError::BadFaultMix("each percentage must be in 0..=100 and their sum at most 100".into()));
    }
    if cfg.amphorae == 0 || cfg.threads == 0 || cfg.shape.listeners == 0 {
        return Err(LoadError::BadShape("amphorae, threads and listeners must be at least 1".into()));
    }
    if cfg.amphorae > 1 << 40 {
        return Err(LoadError::BadShape("at most 2^40 amphorae".into()));
    }
    if cfg.prebuilt && cfg.count.is_none() {
        return Err(LoadError::BadShape("pre-building needs a packet count".into()));
    }
    if let Some(r) = cfg.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(LoadError::BadShape("rate must be positive".into()));
        }
    }
    Ok(())
}

#[derive(Default)]
struct ThreadCounts {
    sent: [AtomicU64; 6],
    errors: AtomicU64,
    /// Packets sent and send errors per target.
    per_target: Vec<(AtomicU64, AtomicU64)>,
}

/// Runs a load until its duration or count is reached or `stop` is set. With `progress`, a
/// line a second goes to stderr.
pub fn run(cfg: &LoadConfig, stop: &AtomicBool, progress: bool) -> Result<LoadReport, LoadError> {
    validate(cfg)?;
    let threads = cfg.threads.min(cfg.amphorae as usize).max(1);
    let counts: Vec<Arc<ThreadCounts>> = (0..threads)
        .map(|_| {
            Arc::new(ThreadCounts {
                per_target: cfg.targets.iter().map(|_| Default::default()).collect(),
                ..ThreadCounts::default()
            })
        })
        .collect();
    let t_build = Instant::now();
    let barrier = std::sync::Barrier::new(threads + 1);
    let mut senders = Vec::new();
    for (t, counts_t) in counts.iter().enumerate() {
        let lo = cfg.amphorae * t as u64 / threads as u64;
        let hi = cfg.amphorae * (t as u64 + 1) / threads as u64;
        let budget = cfg.count.map(|c| c * (t as u64 + 1) / threads as u64 - c * t as u64 / threads as u64);
        let sockets = open_sockets(&cfg.targets, ((hi - lo) as usize).clamp(1, MAX_SOCKETS_PER_THREAD))?;
        senders.push(Sender {
            cfg,
            lo,
            hi,
            budget,
            rate: cfg.rate.map(|r| r / threads as f64),
            sockets,
            counts: counts_t.clone(),
        });
    }
    let total = |c: &[Arc<ThreadCounts>]| -> (u64, u64) {
        c.iter().fold((0, 0), |(s, e), t| {
            (s + t.sent.iter().map(|x| x.load(Ordering::Relaxed)).sum::<u64>(), e + t.errors.load(Ordering::Relaxed))
        })
    };
    let (start, build_s) = std::thread::scope(|scope| {
        let barrier = &barrier;
        let handles: Vec<_> =
            senders.into_iter().map(|sender| scope.spawn(move || sender.run(stop, barrier))).collect();
        // Every thread has built what it pre-builds when the barrier opens.
        barrier.wait();
        let build_s = t_build.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut last = (Instant::now(), 0u64);
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if progress && last.0.elapsed() >= Duration::from_secs(1) {
                let (sent, errors) = total(&counts);
                let rate = (sent - last.1) as f64 / last.0.elapsed().as_secs_f64();
                eprintln!("load: {:6.1} s sent={sent} rate={rate:.0}/s errors={errors}", start.elapsed().as_secs_f64());
                last = (Instant::now(), sent);
            }
        }
        (start, build_s)
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut report = LoadReport {
        target: cfg.targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        targets: cfg
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| TargetReport {
                target: t.to_string(),
                sent: counts.iter().map(|c| c.per_target[i].0.load(Ordering::Relaxed)).sum(),
                errors: counts.iter().map(|c| c.per_target[i].1.load(Ordering::Relaxed)).sum(),
            })
            .collect(),
        amphorae: cfg.amphorae,
        threads,
        duration_s: elapsed,
        build_s,
        ..LoadReport::default()
    };
    for k in Kind::ALL {
        let n: u64 = counts.iter().map(|c| c.sent[k as usize].load(Ordering::Relaxed)).sum();
        report.sent.insert(k.name(), n);
        report.total += n;
    }
    report.errors = counts.iter().map(|c| c.errors.load(Ordering::Relaxed)).sum();
    report.rate = report.total as f64 / elapsed.max(1e-9);
    Ok(report)
}

/// `n` sockets of the targets' family (checked to be one), on loopback when every target is.
fn open_sockets(targets: &[SocketAddr], n: usize) -> Result<Vec<UdpSocket>, LoadError> {
    let Some(first) = targets.first() else {
        return Err(LoadError::BadTargets("at least one target is needed".into()));
    };
    let loopback = targets.iter().all(|t| t.ip().is_loopback());
    let bind: IpAddr = match (first.ip(), loopback) {
        (IpAddr::V4(_), true) => Ipv4Addr::LOCALHOST.into(),
        (IpAddr::V4(_), false) => Ipv4Addr::UNSPECIFIED.into(),
        (IpAddr::V6(_), true) => Ipv6Addr::LOCALHOST.into(),
        (IpAddr::V6(_), false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    (0..n).map(|_| UdpSocket::bind(SocketAddr::new(bind, 0)).map_err(LoadError::Io)).collect()
}

struct Sender<'c> {
    cfg: &'c LoadConfig,
    lo: u64,
    hi: u64,
    budget: Option<u64>,
    rate: Option<f64>,
    sockets: Vec<UdpSocket>,
    counts: Arc<ThreadCounts>,
}

/// Packets built ahead of time: one contiguous buffer.
#[derive(Default)]
struct Prebuilt {
    data: Vec<u8>,
    ends: Vec<usize>,
    kinds: Vec<Kind>,
}

impl Prebuilt {
    fn get(&self, i: usize) -> (&[u8], Kind) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (&self.data[start..self.ends[i]], self.kinds[i])
    }
}

impl Sender<'_> {
    /// Chooses the next packet's kind (a replay needs a previous good packet), appends it to
    /// `out`, and advances the amphora's `seq` for a good one.
    fn next_packet(
        &self,
        builder: &mut Builder,
        seqs: &mut [u64],
        cursor: u64,
        sent_ns: Option<u64>,
        last_good: &[u8],
        out: &mut Vec<u8>,
    ) -> Kind {
        let kind = match builder.choose(&self.cfg.faults) {
            Kind::Replay if last_good.is_empty() => Kind::Good,
            other => other,
        };
        let seq = &mut seqs[cursor as usize];
        builder.packet(kind, out, self.lo + cursor, *seq, sent_ns, last_good);
        if kind == Kind::Good {
            *seq += 1;
        }
        kind
    }

    /// Builds this thread's whole budget, in the order `run` sends it.
    fn prebuild(&self, builder: &mut Builder, seqs: &mut [u64]) -> Prebuilt {
        let n = self.hi - self.lo;
        let total = self.budget.unwrap_or(0) as usize;
        let mut p = Prebuilt {
            data: Vec::with_capacity(total * 400),
            ends: Vec::with_capacity(total),
            kinds: Vec::with_capacity(total),
        };
        let mut last_good: Vec<u8> = Vec::new();
        for i in 0..total {
            let start = p.data.len();
            let kind = self.next_packet(builder, seqs, i as u64 % n, None, &last_good, &mut p.data);
            if kind == Kind::Good {
                last_good.clear();
                last_good.extend_from_slice(&p.data[start..]);
            }
            p.ends.push(p.data.len());
            p.kinds.push(kind);
        }
        p
    }

    fn run(self, stop: &AtomicBool, barrier: &std::sync::Barrier) {
        let n = self.hi - self.lo;
        // Ids come from the run's seed; the random choices differ per thread.
        let mut builder = Builder::new(self.cfg.seed, self.cfg.shape, &self.cfg.key);
        builder.rng = SmallRng::seed_from_u64(self.cfg.seed ^ self.lo.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut seqs = vec![self.cfg.first_seq; n as usize];
        let plan = self.cfg.prebuilt.then(|| self.prebuild(&mut builder, &mut seqs));
        barrier.wait();
        let mut batch = SendBatch::new(SEND_BATCH);
        let mut last_good: Vec<u8> = Vec::new();
        let mut kinds = [Kind::Good; SEND_BATCH];
        let clock = SystemClock;
        let start = Instant::now();
        let deadline = self.cfg.duration.map(|d| start + d);
        let mut sent = 0u64;
        let mut cursor = 0u64;
        // Times the cursor went round the thread's amphorae: amphora `lo + c` sends its packet
        // of round `r` to target `(lo + c + r) mod targets`.
        let mut round = 0u64;
        let targets = &self.cfg.targets[..];
        let ntargets = targets.len() as u64;
        let mut to = [0u32; SEND_BATCH];
        let socket_of = |c: u64| (c * self.sockets.len() as u64 / n) as usize;
        loop {
            if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let mut allowed = SEND_BATCH as u64;
            if let Some(b) = self.budget {
                allowed = allowed.min(b - sent);
                if allowed == 0 {
                    break;
                }
            }
            if let Some(r) = self.rate {
                let due = (start.elapsed().as_secs_f64() * r) as u64;
                if due <= sent {
                    let wait =
                        Duration::from_secs_f64(((sent + 1) as f64 / r - start.elapsed().as_secs_f64()).max(0.0));
                    std::thread::sleep(wait.min(Duration::from_millis(5)));
                    continue;
                }
                allowed = allowed.min(due - sent);
            }
            let sock = socket_of(cursor);
            let now = clock.now_ns();
            let mut k = 0;
            while (k as u64) < allowed && socket_of(cursor) == sock {
                let t = if ntargets == 1 { 0 } else { ((self.lo + cursor + round) % ntargets) as usize };
                let kind = match &plan {
                    Some(p) => {
                        let (bytes, kind) = p.get((sent as usize) + k);
                        batch.push(&targets[t], |buf| buf.extend_from_slice(bytes));
                        kind
                    }
                    None => {
                        let mut kind = Kind::Good;
                        batch.push(&targets[t], |buf| {
                            kind = self.next_packet(&mut builder, &mut seqs, cursor, Some(now), &last_good, buf)
                        });
                        kind
                    }
                };
                kinds[k] = kind;
                to[k] = t as u32;
                k += 1;
                cursor += 1;
                if cursor == n {
                    cursor = 0;
                    round += 1;
                }
            }
            if let Some(i) = kinds[..k].iter().rposition(|k| *k == Kind::Good) {
                batch.copy_out(i, &mut last_good);
            }
            let m = match batch.flush(&self.sockets[sock]) {
                Ok(m) => {
                    for kind in &kinds[..m.min(k)] {
                        bump(&self.counts.sent[*kind as usize], 1);
                    }
                    if m < k {
                        bump(&self.counts.errors, (k - m) as u64);
                        batch.clear();
                    }
                    m.min(k)
                }
                Err(_) => {
                    bump(&self.counts.errors, k as u64);
                    batch.clear();
                    0
                }
            };
            let per_target = &self.counts.per_target;
            if ntargets == 1 {
                bump(&per_target[0].0, m as u64);
                bump(&per_target[0].1, (k - m) as u64);
            } else {
                for (i, t) in to[..k].iter().enumerate() {
                    let (ok, err) = &per_target[*t as usize];
                    bump(if i < m { ok } else { err }, 1);
                }
            }
            sent += k as u64;
        }
    }
}
