//! The stage table of `heartsink bench`: the cost of each stage of a heartbeat's path, in
//! nanoseconds of the measuring thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, so a busy
//! neighbour on the shared cores does not inflate it), median of three runs, on the very
//! packets `heartsink load` sends. With `serve`'s own CPU per heartbeat from the end-to-end
//! step, the rest is the hand-off (rings, wake-ups, control, bookkeeping), so the next
//! regression shows where it is.

use std::net::{SocketAddr, UdpSocket};

use serde::Serialize;

use crate::engine::Shards;
use crate::proto::envelope;
use crate::proto::inflate::{Backend, Inflater, DEFAULT_MAX_INFLATED};
use crate::proto::keyring::Keyring;
use crate::proto::octavia::Heartbeat;
use crate::state::AmphoraState;

/// Nanoseconds per heartbeat, stage by stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageTable {
    /// `recvmmsg` in batches of up to 64 from a loopback socket another thread fills.
    pub receive_ns: f64,
    /// The HMAC tag check.
    pub verify_ns: f64,
    /// zlib inflate (the default back-end, `small`, reused).
    pub inflate_ns: f64,
    /// The typed JSON parse (reused scratch).
    pub parse_ns: f64,
    /// Applying the parsed heartbeat to its amphora's state (shard lock per heartbeat).
    pub apply_ns: f64,
    /// The whole worker pipeline in process (verify + inflate + parse + apply, batched).
    pub pipeline_ns: f64,
    /// `serve`'s CPU per heartbeat at its maximum rate (from the end-to-end step).
    pub serve_ns: f64,
    /// `serve` − receive − pipeline: the hand-off between threads, wake-ups, the control
    /// thread and bookkeeping.
    pub handoff_ns: f64,
}

impl StageTable {
    /// The table's rows: each stage's name and its ns per heartbeat.
    pub fn rows(&self) -> [(&'static str, f64); 8] {
        [
            ("receive (recvmmsg, full batches of 64)", self.receive_ns),
            ("verify", self.verify_ns),
            ("inflate (small, reused)", self.inflate_ns),
            ("parse", self.parse_ns),
            ("apply", self.apply_ns),
            ("the in-process pipeline (verify + inflate + parse + apply, batched)", self.pipeline_ns),
            ("`serve` at its maximum rate (its CPU per heartbeat)", self.serve_ns),
            ("hand-off: serve − receive − pipeline", self.handoff_ns),
        ]
    }
}

/// A stage table's Markdown lines: the header, then one row per stage (ns, rounded).
pub(crate) fn markdown(header: &str, rows: &[(&str, f64)]) -> Vec<String> {
    let mut lines = vec![format!("| {header} | ns |"), "|---|---|".to_owned()];
    lines.extend(rows.iter().map(|(name, v)| format!("| {name} | {v:.0} |")));
    lines
}

/// The median of three calls of `f`.
pub(crate) fn median3(mut f: impl FnMut() -> f64) -> f64 {
    match try_median3(|| Ok::<f64, std::convert::Infallible>(f())) {
        Ok(v) => v,
        Err(e) => match e {},
    }
}

/// The median of three calls of `f`; the first error ends it.
pub(crate) fn try_median3<E>(mut f: impl FnMut() -> Result<f64, E>) -> Result<f64, E> {
    let mut v = [f()?, f()?, f()?];
    v.sort_by(f64::total_cmp);
    Ok(v[1])
}

/// CPU ns of the calling thread spent in `f`, per item of `n`.
pub(crate) fn per_item(n: usize, f: impl FnOnce()) -> f64 {
    let t0 = crate::io::thread_cpu_ns();
    f();
    (crate::io::thread_cpu_ns().saturating_sub(t0)) as f64 / n.max(1) as f64
}

/// Measures the table on `packets`, whose first `warm` register the amphorae (applied, not
/// timed: the apply and pipeline figures are steady state), given `serve`'s CPU-seconds per
/// heartbeat at its maximum rate.
pub fn measure(packets: &[Vec<u8>], warm: usize, key: &str, serve_s_per_heartbeat: f64) -> StageTable {
    let keys = Keyring::from_strs(&[key], 0);
    let n = packets.len();
    let verify_ns = median3(|| {
        per_item(n, || {
            for p in packets {
                std::hint::black_box(envelope::verify(p, &keys).is_ok());
            }
        })
    });
    let payloads: Vec<&[u8]> =
        packets.iter().filter_map(|p| envelope::verify(p, &keys).ok().map(|v| v.payload())).collect();
    let mut inf = Inflater::new(Backend::default(), DEFAULT_MAX_INFLATED);
    let inflate_ns = median3(|| {
        per_item(payloads.len(), || {
            for z in &payloads {
                std::hint::black_box(inf.inflate_bytes(z).map(<[u8]>::len).ok());
            }
        })
    });
    let jsons: Vec<Vec<u8>> = payloads.iter().filter_map(|z| inf.inflate_bytes(z).ok().map(<[u8]>::to_vec)).collect();
    let mut hb = Heartbeat::default();
    let parse_ns = median3(|| {
        per_item(jsons.len(), || {
            for j in &jsons {
                std::hint::black_box(hb.parse(j).is_ok());
            }
        })
    });
    let parsed: Vec<Heartbeat> = jsons
        .iter()
        .filter_map(|j| {
            let mut h = Heartbeat::default();
            h.parse(j).ok().map(|_| h)
        })
        .collect();
    let warm = warm.min(parsed.len());
    let apply_ns = median3(|| {
        // A fresh state per run: the packets' seq values are applied once each.
        let shards = Shards::new(64);
        let now = 1_000_000_000u64;
        let apply = |hbs: &[Heartbeat]| {
            for h in hbs {
                let mut shard = shards.shard(shards.index(&h.id)).lock();
                let st = shard.entry(h.id).or_insert_with(|| AmphoraState::new(now));
                std::hint::black_box(st.apply(h, now, 5_000_000_000).is_ok());
            }
        };
        apply(&parsed[..warm]);
        per_item(parsed.len() - warm, || apply(&parsed[warm..]))
    });
    let pipeline_ns = median3(|| {
        let mut p = super::pipeline();
        let (first, rest) = packets.split_at(warm.min(packets.len()));
        super::feed(&mut p, first);
        per_item(rest.len(), || {
            super::in_process_run(&mut p, rest);
        })
    });
    let receive_ns = median3(|| receive(packets).unwrap_or(0.0));
    let serve_ns = serve_s_per_heartbeat * 1e9;
    StageTable {
        receive_ns,
        verify_ns,
        inflate_ns,
        parse_ns,
        apply_ns,
        pipeline_ns,
        serve_ns,
        handoff_ns: (serve_ns - receive_ns - pipeline_ns).max(0.0),
    }
}

/// `recvmmsg` cost per datagram with full batches: another thread fills the socket buffer
/// first, then this thread drains it.
pub(crate) fn receive(packets: &[Vec<u8>]) -> std::io::Result<f64> {
    let rx = crate::io::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)), 64 << 20, false)?;
    let to = rx.socket.local_addr()?;
    let chunk = packets.len().min(20_000);
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Ok(tx) = UdpSocket::bind("127.0.0.1:0") {
                for p in &packets[..chunk] {
                    let _ = tx.send_to(p, to);
                }
            }
        })
        .join()
        .ok();
    });
    let mut batch = crate::io::RecvBatch::new(64, 2048);
    let mut got = 0;
    let t0 = crate::io::thread_cpu_ns();
    while got < chunk {
        match batch.recv(&rx.socket) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(crate::io::thread_cpu_ns().saturating_sub(t0) as f64 / got.max(1) as f64)
}
