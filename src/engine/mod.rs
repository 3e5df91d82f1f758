//! The running engine: rx threads, per-core workers, the control thread, and the state they
//! share. See `../shared/DESIGN.md` for the data flow:
//!
//! ```text
//! socket ─recvmmsg─▶ rx thread ─(hash of source)─▶ ring ─▶ worker: verify → inflate → parse
//!                                                              │ apply per shard, once a batch
//!                                                              ▼
//!                                   control thread ◀─ change log (new senders, status changes)
//! ```
//!
//! Threads: `rx-N` (one per socket; several with `SO_REUSEPORT`), `worker-N`, `control`.
//! Shutdown order: rx threads stop receiving (after one last drain of the socket) and push
//! their pending batches; when every ring sender is gone the workers finish their rings and
//! exit; when every worker is gone the control thread applies the last changes and exits.

pub mod clock;
pub mod counters;
pub mod histogram;
pub mod pipeline;
pub mod ring;
pub mod shards;

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use crossbeam::queue::ArrayQueue;
use parking_lot::RwLock;
use rustc_hash::FxBuildHasher;

pub use clock::{Clock, ManualClock, SystemClock};
pub use counters::{BatchTally, DropReason, RxCounters, WorkerCounters};
pub use pipeline::{Change, Pipeline, PipelineShared, Settings};
pub use ring::Batch;
pub use shards::Shards;

use crate::io::{bind_udp, RecvBatch};
use crate::proto::inflate::Backend;
use crate::proto::keyring::Keyring;
use crate::proto::octavia::Uuid;
use crate::state::OperatingStatus;

/// How the engine is built. Fields a reload can change live in [`Settings`] and the keyring.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// UDP address for heartbeats (port 0: any free port).
    pub heartbeat_addr: SocketAddr,
    /// Receive threads, one socket each (`SO_REUSEPORT` when more than one).
    pub rx_threads: usize,
    /// Worker threads.
    pub workers: usize,
    /// `SO_RCVBUF` to ask for, bytes.
    pub rcvbuf: usize,
    /// Largest datagram accepted, bytes; larger ones are dropped as `truncated`.
    pub max_datagram: usize,
    /// Datagrams per `recvmmsg` call.
    pub recv_batch: usize,
    /// Batches each worker's ring holds.
    pub ring_batches: usize,
    /// Datagrams per batch.
    pub batch_packets: usize,
    /// Bytes per batch.
    pub batch_bytes: usize,
    /// Number of state shards.
    pub shards: usize,
    /// Inflate back-end.
    pub inflate: Backend,
    /// Reloadable settings.
    pub settings: Settings,
    /// Accepted keys.
    pub keyring: Keyring,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            heartbeat_addr: SocketAddr::from(([127, 0, 0, 1], 5555)),
            rx_threads: 1,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            rcvbuf: 8 << 20,
            max_datagram: 65536,
            recv_batch: 64,
            ring_batches: 64,
            batch_packets: 128,
            batch_bytes: 256 << 10,
            shards: 64,
            inflate: Backend::default(),
            settings: Settings::default(),
            keyring: Keyring::from_strs(&[crate::proto::keyring::INSECURE_DEFAULT_KEY], 0),
        }
    }
}

/// Rates computed by the control thread once a second.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rates {
    /// Datagrams received per second, per rx thread.
    pub rx_pps: Vec<f64>,
    /// Packets processed per second, per worker.
    pub worker_pps: Vec<f64>,
    /// Heartbeats applied per second, per worker.
    pub worker_accepted_pps: Vec<f64>,
}

/// What the socket set-up granted.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct RcvBufInfo {
    /// Asked for, bytes.
    pub requested: usize,
    /// Read back from the kernel (Linux reports twice the usable size).
    pub effective: usize,
    /// Whether the kernel drop counter (`SO_RXQ_OVFL`) is on.
    pub kernel_drop_counter: bool,
}

/// State shared by the engine's threads and its readers (admin API).
pub struct Shared {
    /// What the workers share.
    pub pipeline: PipelineShared,
    /// Per-worker counters.
    pub workers: Vec<Arc<WorkerCounters>>,
    /// Per-rx-thread counters.
    pub rx: Vec<Arc<RxCounters>>,
    rings: Vec<Receiver<Box<Batch>>>,
    ring_batches: usize,
    /// Known amphora ids in order, maintained by the control thread from the change log.
    pub index: RwLock<BTreeSet<Uuid>>,
    /// Socket buffer information (of the first socket).
    pub rcvbuf: RcvBufInfo,
    /// Latest rates.
    pub rates: ArcSwap<Rates>,
    /// When the engine started.
    pub started: Instant,
    /// Wall clock of the control thread's latest tick, ns since the epoch.
    pub last_tick_ns: AtomicU64,
    /// Amphora status transitions seen by the control thread.
    pub status_changes: AtomicU64,
    /// Work time of the control thread's latest tick, ns.
    pub tick_ns_last: AtomicU64,
    /// Longest control tick since start, ns.
    pub tick_ns_max: AtomicU64,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("workers", &self.workers.len()).finish()
    }
}

/// A summary of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Datagrams received from the sockets.
    pub received: u64,
    /// Heartbeats applied.
    pub accepted: u64,
    /// Drops by reason, in [`DropReason::ALL`] order.
    pub drops: [u64; DropReason::COUNT],
    /// Kernel drops (sum over sockets).
    pub kernel_drops: u64,
    /// Agent restarts recognised.
    pub restarts: u64,
}

impl Totals {
    /// Sum of all drops.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Drops of one reason.
    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
}

impl Shared {
    /// Sums the counters.
    pub fn totals(&self) -> Totals {
        let r = Ordering::Relaxed;
        let mut t = Totals::default();
        for w in &self.workers {
            t.accepted += w.accepted.load(r);
            t.restarts += w.restarts.load(r);
            for (d, c) in t.drops.iter_mut().zip(&w.drops) {
                *d += c.load(r);
            }
        }
        for x in &self.rx {
            t.received += x.packets.load(r);
            t.drops[DropReason::Truncated as usize] += x.truncated.load(r);
            t.drops[DropReason::RingFull as usize] += x.ring_full.load(r);
            t.kernel_drops += x.kernel_drops.load(r);
        }
        t
    }

    /// The send-to-applied latency histogram (heartbeats carrying `hs_sent_ns`), summed over
    /// workers (see [`histogram`]).
    pub fn latency_counts(&self) -> Vec<u64> {
        let mut c = vec![0; histogram::BUCKETS];
        for w in &self.workers {
            w.latency.add_to(&mut c);
        }
        c
    }

    /// The receive-to-applied latency histogram (kernel receive timestamp to applied), summed
    /// over workers.
    pub fn rx_latency_counts(&self) -> Vec<u64> {
        let mut c = vec![0; histogram::BUCKETS];
        for w in &self.workers {
            w.rx_latency.add_to(&mut c);
        }
        c
    }

    /// Batches waiting in each worker's ring, and the ring capacity.
    pub fn ring_fill(&self) -> (Vec<usize>, usize) {
        (self.rings.iter().map(|r| r.len()).collect(), self.ring_batches)
    }

    /// Number of known amphorae.
    pub fn amphora_count(&self) -> usize {
        self.index.read().len()
    }

    /// Up to `limit` ids after `marker`, in id order.
    pub fn list(&self, marker: Option<Uuid>, limit: usize) -> Vec<Uuid> {
        use std::ops::Bound;
        let index = self.index.read();
        let lower = marker.map_or(Bound::Unbounded, Bound::Excluded);
        index.range((lower, Bound::Unbounded)).take(limit).copied().collect()
    }
}

/// A running engine.
pub struct Engine {
    shared: Arc<Shared>,
    locals: Vec<SocketAddr>,
    rx: Vec<(JoinHandle<()>, Arc<mio::Waker>)>,
    workers: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("local", &self.locals).finish()
    }
}

const WAKE: mio::Token = mio::Token(0);
const SOCKET: mio::Token = mio::Token(1);

impl Engine {
    /// Binds the sockets and starts the threads.
    pub fn start(cfg: EngineConfig, clock: Arc<dyn Clock>) -> io::Result<Engine> {
        let workers_n = cfg.workers.max(1);
        let rx_n = cfg.rx_threads.max(1);
        let mut sockets = Vec::with_capacity(rx_n);
        let first = bind_udp(cfg.heartbeat_addr, cfg.rcvbuf, rx_n > 1)?;
        let rcvbuf = RcvBufInfo {
            requested: first.rcvbuf_requested,
            effective: first.rcvbuf_effective,
            kernel_drop_counter: first.rxq_ovfl,
        };
        let local = first.local;
        sockets.push(first);
        for _ in 1..rx_n {
            sockets.push(bind_udp(local, cfg.rcvbuf, true)?);
        }

        let free_n = workers_n * (cfg.ring_batches + 2) + rx_n * workers_n;
        let free = Arc::new(ArrayQueue::new(free_n));
        for _ in 0..free_n {
            let _ = free.push(Box::new(Batch::new(cfg.batch_packets, cfg.batch_bytes.max(cfg.max_datagram))));
        }
        let mut ring_tx = Vec::new();
        let mut ring_rx = Vec::new();
        for _ in 0..workers_n {
            let (tx, rx) = channel::bounded::<Box<Batch>>(cfg.ring_batches.max(1));
            ring_tx.push(tx);
            ring_rx.push(rx);
        }
        let (changes_tx, changes_rx) = channel::unbounded::<Vec<Change>>();
        let pipeline = PipelineShared {
            keyring: Arc::new(ArcSwap::from_pointee(cfg.keyring.clone())),
            settings: Arc::new(ArcSwap::from_pointee(cfg.settings.clone())),
            shards: Arc::new(Shards::new(cfg.shards)),
            clock: clock.clone(),
        };
        let shared = Arc::new(Shared {
            pipeline,
            workers: (0..workers_n).map(|_| Arc::new(WorkerCounters::default())).collect(),
            rx: (0..rx_n).map(|_| Arc::new(RxCounters::default())).collect(),
            rings: ring_rx.clone(),
            ring_batches: cfg.ring_batches.max(1),
            index: RwLock::new(BTreeSet::new()),
            rcvbuf,
            rates: ArcSwap::from_pointee(Rates::default()),
            started: Instant::now(),
            last_tick_ns: AtomicU64::new(clock.now_ns()),
            status_changes: AtomicU64::new(0),
            tick_ns_last: AtomicU64::new(0),
            tick_ns_max: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });

        let mut workers = Vec::new();
        for (i, ring) in ring_rx.into_iter().enumerate() {
            let mut p = Pipeline::new(
                shared.pipeline.clone(),
                cfg.inflate,
                shared.workers[i].clone(),
                Some(changes_tx.clone()),
            );
            let free = free.clone();
            workers.push(std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
                while let Ok(mut batch) = ring.recv() {
                    p.process_timed(batch.timed(), batch.recv_ns);
                    batch.clear();
                    let _ = free.push(batch);
                }
            })?);
        }
        drop(changes_tx);

        let mut rx = Vec::new();
        let mut locals = Vec::new();
        for (i, bound) in sockets.into_iter().enumerate() {
            locals.push(bound.local);
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
            let mut socket = mio::net::UdpSocket::from_std(bound.socket);
            poll.registry().register(&mut socket, SOCKET, mio::Interest::READABLE)?;
            let ctx = RxThread {
                poll,
                socket,
                shared: shared.clone(),
                recv: RecvBatch::new(cfg.recv_batch, cfg.max_datagram),
                clock: clock.clone(),
                router: Router {
                    counters: shared.rx[i].clone(),
                    rings: ring_tx.clone(),
                    free: free.clone(),
                    pending: (0..workers_n).map(|_| None).collect(),
                },
            };
            let handle = std::thread::Builder::new().name(format!("rx-{i}")).spawn(move || ctx.run())?;
            rx.push((handle, waker));
        }
        drop(ring_tx);

        let control_shared = shared.clone();
        let control = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control_loop(&control_shared, &changes_rx, &*clock))?;

        Ok(Engine { shared, locals, rx, workers, control: Some(control) })
    }

    /// The bound heartbeat address.
    pub fn local_addr(&self) -> SocketAddr {
        self.locals[0]
    }

    /// The shared state, for readers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Swaps in a new keyring and settings; packets already verified are unaffected, the next
    /// batch uses the new ones.
    pub fn reload(&self, keyring: Keyring, settings: Settings) {
        self.shared.pipeline.keyring.store(Arc::new(keyring));
        self.shared.pipeline.settings.store(Arc::new(settings));
    }

    /// Graceful stop: stop receiving after one last drain of the sockets, let the workers
    /// apply everything in their rings, stop the control thread. Returns the final totals.
    pub fn shutdown(mut self) -> Totals {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for (handle, waker) in self.rx.drain(..) {
            let _ = waker.wake();
            let _ = handle.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        self.shared.totals()
    }
}

struct RxThread {
    poll: mio::Poll,
    socket: mio::net::UdpSocket,
    shared: Arc<Shared>,
    recv: RecvBatch,
    clock: Arc<dyn Clock>,
    router: Router,
}

/// Routes datagrams into the workers' pending batches and rings.
struct Router {
    counters: Arc<RxCounters>,
    rings: Vec<Sender<Box<Batch>>>,
    free: Arc<ArrayQueue<Box<Batch>>>,
    pending: Vec<Option<Box<Batch>>>,
}

impl RxThread {
    fn run(mut self) {
        let mut events = mio::Events::with_capacity(8);
        loop {
            // A batch held for a busy worker waits at most HOLD.
            let timeout = if self.router.holding() { HOLD } else { Duration::from_millis(500) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "rx poll failed");
                    break;
                }
            }
            if events.is_empty() {
                self.router.push_all();
            }
            // Drain the socket (edge-triggered readiness), also once more when stopping.
            self.drain();
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
        }
        self.router.push_all();
    }

    fn drain(&mut self) {
        loop {
            let n = match self.recv.recv(&self.socket) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "recvmmsg failed");
                    break;
                }
            };
            let now = self.clock.now_ns();
            let workers = self.router.pending.len();
            let mut bytes = 0u64;
            let mut truncated = 0u64;
            let mut ring_full = 0u64;
            for i in 0..n {
                let (data, src, trunc) = self.recv.get(i);
                let rx_ns = self.recv.rx_ns(i);
                bytes += data.len() as u64;
                if trunc {
                    truncated += 1;
                    continue;
                }
                let w = src.map_or(0, |s| FxBuildHasher.hash_one(s) as usize % workers);
                if !self.router.place(w, data, now, rx_ns) {
                    ring_full += 1;
                }
            }
            self.router.push_idle();
            let c = &self.router.counters;
            counters::bump(&c.packets, n as u64);
            counters::bump(&c.bytes, bytes);
            counters::bump(&c.truncated, truncated);
            counters::bump(&c.ring_full, ring_full);
            counters::bump(&c.recv_calls, 1);
            if let Some(k) = self.recv.kernel_drops() {
                c.kernel_drops.store(u64::from(k), Ordering::Relaxed);
            }
        }
    }
}

/// How long the rx thread may hold a partly filled batch for a busy worker.
const HOLD: Duration = Duration::from_micros(200);

impl Router {
    /// Whether any worker has a non-empty pending batch.
    fn holding(&self) -> bool {
        self.pending.iter().any(|p| p.as_ref().is_some_and(|b| !b.is_empty()))
    }

    /// Pushes the pending batches of workers whose ring is empty (they are waiting for work).
    /// A busy worker's batch keeps filling until it is full or `HOLD` passes, so a ring's
    /// capacity counts full batches, not one batch per `recvmmsg` call.
    fn push_idle(&mut self) {
        for w in 0..self.pending.len() {
            if self.rings[w].is_empty() {
                self.push_pending(w);
            }
        }
    }

    fn push_all(&mut self) {
        for w in 0..self.pending.len() {
            self.push_pending(w);
        }
    }

    /// Copies a datagram into worker `w`'s pending batch; false if it had to be dropped.
    fn place(&mut self, w: usize, data: &[u8], now: u64, rx_ns: u64) -> bool {
        for _ in 0..2 {
            if self.pending[w].is_none() {
                match self.free.pop() {
                    Some(b) => self.pending[w] = Some(b),
                    None => return false,
                }
            }
            if let Some(b) = self.pending[w].as_mut() {
                if b.push(data, now, rx_ns) {
                    return true;
                }
                if b.is_empty() {
                    // Larger than an empty batch: cannot happen with batch_bytes ≥ max_datagram.
                    return false;
                }
            }
            self.push_pending(w);
        }
        false
    }

    fn push_pending(&mut self, w: usize) {
        let Some(batch) = self.pending[w].take() else { return };
        if batch.is_empty() {
            self.pending[w] = Some(batch);
            return;
        }
        match self.rings[w].try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(mut b)) | Err(TrySendError::Disconnected(mut b)) => {
                counters::bump(&self.counters.ring_full, b.len() as u64);
                b.clear();
                let _ = self.free.push(b);
            }
        }
    }
}

/// How often the control thread ticks when no change arrives.
const TICK: Duration = Duration::from_millis(250);

fn control_loop(shared: &Shared, changes: &Receiver<Vec<Change>>, clock: &dyn Clock) {
    let r = Ordering::Relaxed;
    let mut last_rates = Instant::now();
    let snapshot = |s: &Shared| {
        (
            s.rx.iter().map(|c| c.packets.load(r)).collect::<Vec<_>>(),
            s.workers.iter().map(|c| c.packets.load(r)).collect::<Vec<_>>(),
            s.workers.iter().map(|c| c.accepted.load(r)).collect::<Vec<_>>(),
        )
    };
    let mut prev = snapshot(shared);
    let mut prev_totals = shared.totals();
    let mut last_summary = Instant::now();
    loop {
        let first = match changes.recv_timeout(TICK) {
            Ok(v) => Some(v),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let tick_start = Instant::now();
        if let Some(first) = first {
            apply_changes(shared, std::iter::once(first).chain(changes.try_iter()));
        }
        shared.last_tick_ns.store(clock.now_ns(), r);
        let elapsed = last_rates.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let now = snapshot(shared);
            let per_s = |a: &[u64], b: &[u64]| -> Vec<f64> {
                a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y) as f64 / elapsed.as_secs_f64()).collect()
            };
            shared.rates.store(Arc::new(Rates {
                rx_pps: per_s(&now.0, &prev.0),
                worker_pps: per_s(&now.1, &prev.1),
                worker_accepted_pps: per_s(&now.2, &prev.2),
            }));
            prev = now;
            last_rates = Instant::now();
        }
        if last_summary.elapsed() >= Duration::from_secs(10) {
            let t = shared.totals();
            let new_drops: Vec<String> = DropReason::ALL
                .iter()
                .filter(|d| t.drop_count(**d) > prev_totals.drop_count(**d))
                .map(|d| format!("{}={}", d.label(), t.drop_count(*d) - prev_totals.drop_count(*d)))
                .collect();
            if !new_drops.is_empty() || t.kernel_drops > prev_totals.kernel_drops {
                tracing::warn!(
                    drops = %new_drops.join(" "),
                    kernel_drops = t.kernel_drops - prev_totals.kernel_drops,
                    "packets dropped in the last 10 s"
                );
            }
            prev_totals = t;
            last_summary = Instant::now();
        }
        let spent = tick_start.elapsed().as_nanos() as u64;
        shared.tick_ns_last.store(spent, r);
        shared.tick_ns_max.fetch_max(spent, r);
    }
    // Workers are gone: apply what they sent last.
    apply_changes(shared, changes.try_iter());
}

fn apply_changes(shared: &Shared, batches: impl Iterator<Item = Vec<Change>>) {
    let mut index = shared.index.write();
    for batch in batches {
        for c in batch {
            match c {
                Change::New(id) => {
                    index.insert(id);
                    tracing::debug!(amphora = %id, "new amphora");
                }
                Change::Status { id, from, to } => {
                    shared.status_changes.fetch_add(1, Ordering::Relaxed);
                    let level_up = to == OperatingStatus::Online;
                    if level_up {
                        tracing::debug!(amphora = %id, from = from.as_str(), to = to.as_str(), "amphora status changed");
                    } else {
                        tracing::info!(amphora = %id, from = from.as_str(), to = to.as_str(), "amphora status changed");
                    }
                }
            }
        }
    }
}
