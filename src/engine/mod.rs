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

use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use crossbeam::queue::ArrayQueue;
use rustc_hash::FxBuildHasher;

pub use clock::{Clock, ManualClock, SystemClock};
pub use counters::{BatchTally, DropReason, RxCounters, WorkerCounters};
pub use pipeline::{Change, Pipeline, PipelineShared, ServiceLane, Settings};
pub use ring::{Batch, BatchKind};
pub use shards::Shards;

use crate::control::{Command, Control, Envelope, Snapshot};
use crate::io::{bind_udp, RecvBatch};
use crate::proto::inflate::Backend;
use crate::proto::keyring::Keyring;
use crate::proto::octavia::Uuid;

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
    /// The control thread's settings.
    pub control: crate::control::ControlConfig,
    /// confd UDP address (`None`: no confd socket).
    pub confd_addr: Option<SocketAddr>,
    /// confd keys and configuration.
    pub confd: Arc<crate::confd::server::ConfdState>,
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
            control: crate::control::ControlConfig::default(),
            confd_addr: None,
            confd: Arc::new(crate::confd::server::ConfdState::default()),
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
    /// What each rx thread receives (heartbeat sockets first, then confd).
    pub rx_kinds: Vec<BatchKind>,
    rings: Vec<Receiver<Box<Batch>>>,
    ring_batches: usize,
    /// The control thread's latest published view of the fleet.
    pub snapshot: ArcSwap<Snapshot>,
    /// Commands to the control thread (admin API).
    pub commands: Sender<Envelope>,
    /// confd keys and Ganeti configuration (swapped on reload).
    pub confd: ArcSwap<crate::confd::server::ConfdState>,
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
        for (x, kind) in self.rx.iter().zip(&self.rx_kinds) {
            if *kind == BatchKind::Confd {
                // confd requests are counted by the workers' confd counters.
                continue;
            }
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

    /// Number of known amphorae (as of the latest snapshot).
    pub fn amphora_count(&self) -> usize {
        self.snapshot.load().amphorae.len()
    }

    /// Up to `limit` ids after `marker`, in id order (as of the latest snapshot).
    pub fn list(&self, marker: Option<Uuid>, limit: usize) -> Vec<Uuid> {
        use std::ops::Bound;
        let snap = self.snapshot.load();
        let lower = marker.map_or(Bound::Unbounded, Bound::Excluded);
        snap.amphorae.range((lower, Bound::Unbounded)).take(limit).map(|(id, _)| *id).collect()
    }

    /// Asks the control thread and waits for its (durable) answer.
    pub fn call(&self, command: Command) -> crate::control::CommandResult {
        crate::control::call(&self.commands, command)
    }
}

/// A running engine.
pub struct Engine {
    shared: Arc<Shared>,
    locals: Vec<SocketAddr>,
    confd_local: Option<SocketAddr>,
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
        sockets.push((first, BatchKind::Heartbeat));
        for _ in 1..rx_n {
            sockets.push((bind_udp(local, cfg.rcvbuf, true)?, BatchKind::Heartbeat));
        }
        let mut confd_local = None;
        let mut confd_send = None;
        if let Some(addr) = cfg.confd_addr {
            let bound = bind_udp(addr, 4 << 20, false)?;
            confd_local = Some(bound.local);
            confd_send = Some(bound.socket.try_clone()?);
            sockets.push((bound, BatchKind::Confd));
        }
        let rx_total = sockets.len();

        let free_n = workers_n * (cfg.ring_batches + 2) + rx_total * workers_n;
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
        let (commands_tx, commands_rx) = channel::unbounded::<Envelope>();
        let (services_tx, services_rx) = channel::unbounded();
        let pipeline = PipelineShared {
            keyring: Arc::new(ArcSwap::from_pointee(cfg.keyring.clone())),
            settings: Arc::new(ArcSwap::from_pointee(cfg.settings.clone())),
            shards: Arc::new(Shards::new(cfg.shards)),
            clock: clock.clone(),
            services: Arc::new(ServiceLane::new(Some(services_tx))),
        };
        let shared = Arc::new(Shared {
            pipeline,
            workers: (0..workers_n).map(|_| Arc::new(WorkerCounters::default())).collect(),
            rx: (0..rx_total).map(|_| Arc::new(RxCounters::default())).collect(),
            rx_kinds: sockets.iter().map(|(_, k)| *k).collect(),
            rings: ring_rx.clone(),
            ring_batches: cfg.ring_batches.max(1),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            commands: commands_tx,
            confd: ArcSwap::new(cfg.confd.clone()),
            rcvbuf,
            rates: ArcSwap::from_pointee(Rates::default()),
            started: Instant::now(),
            last_tick_ns: AtomicU64::new(clock.now_ns()),
            status_changes: AtomicU64::new(0),
            tick_ns_last: AtomicU64::new(0),
            tick_ns_max: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });

        // Restores the durable state into the shards before any packet is processed.
        let control = Control::new(shared.clone(), clock.clone(), cfg.control.clone()).map_err(io::Error::other)?;

        let mut workers = Vec::new();
        for (i, ring) in ring_rx.into_iter().enumerate() {
            let mut p = Pipeline::new(
                shared.pipeline.clone(),
                cfg.inflate,
                shared.workers[i].clone(),
                Some(changes_tx.clone()),
            );
            let free = free.clone();
            let mut confd = match &confd_send {
                Some(s) => Some(ConfdWorker::new(s.try_clone()?, shared.clone(), i)),
                None => None,
            };
            workers.push(std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
                while let Ok(mut batch) = ring.recv() {
                    match (batch.kind, confd.as_mut()) {
                        (BatchKind::Heartbeat, _) => {
                            p.process_timed(batch.timed(), batch.recv_ns);
                        }
                        (BatchKind::Confd, Some(c)) => c.process(&batch),
                        (BatchKind::Confd, None) => {}
                    }
                    batch.clear();
                    let _ = free.push(batch);
                }
            })?);
        }
        drop(changes_tx);

        let mut rx = Vec::new();
        let mut locals = Vec::new();
        for (i, (bound, kind)) in sockets.into_iter().enumerate() {
            if kind == BatchKind::Heartbeat {
                locals.push(bound.local);
            }
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
                    kind,
                    counters: shared.rx[i].clone(),
                    rings: ring_tx.clone(),
                    free: free.clone(),
                    pending: (0..workers_n).map(|_| None).collect(),
                },
            };
            let name = if kind == BatchKind::Confd { "rx-confd".to_owned() } else { format!("rx-{i}") };
            let handle = std::thread::Builder::new().name(name).spawn(move || ctx.run())?;
            rx.push((handle, waker));
        }
        drop(ring_tx);

        let control = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || crate::control::run(control, &changes_rx, &commands_rx, &services_rx))?;

        Ok(Engine { shared, locals, confd_local, rx, workers, control: Some(control) })
    }

    /// The bound heartbeat address.
    pub fn local_addr(&self) -> SocketAddr {
        self.locals[0]
    }

    /// The bound confd address, when confd is served.
    pub fn confd_addr(&self) -> Option<SocketAddr> {
        self.confd_local
    }

    /// Swaps in new confd keys and configuration.
    pub fn reload_confd(&self, state: crate::confd::server::ConfdState) {
        self.shared.confd.store(Arc::new(state));
    }

    /// The shared state, for readers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Swaps in a new keyring and settings; packets already verified are unaffected, the next
    /// batch uses the new ones. The control settings go to the control thread.
    pub fn reload(&self, keyring: Keyring, settings: Settings, control: crate::control::ControlConfig) {
        self.shared.pipeline.keyring.store(Arc::new(keyring));
        self.shared.pipeline.settings.store(Arc::new(settings));
        if let Err(e) = self.shared.call(Command::Reload(Box::new(control))) {
            tracing::error!(error = %e, "control settings not reloaded");
        }
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
    kind: BatchKind,
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
                if !self.router.place(w, data, now, rx_ns, src) {
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
    fn place(&mut self, w: usize, data: &[u8], now: u64, rx_ns: u64, src: Option<SocketAddr>) -> bool {
        for _ in 0..2 {
            if self.pending[w].is_none() {
                match self.free.pop() {
                    Some(mut b) => {
                        b.kind = self.kind;
                        self.pending[w] = Some(b)
                    }
                    None => return false,
                }
            }
            if let Some(b) = self.pending[w].as_mut() {
                let src = if self.kind == BatchKind::Confd { src } else { None };
                if b.push_from(data, now, rx_ns, src) {
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

/// A worker's confd side: answers a batch of requests and sends the replies with `sendmmsg`.
struct ConfdWorker {
    socket: std::net::UdpSocket,
    shared: Arc<Shared>,
    send: crate::io::SendBatch,
    out: Vec<u8>,
    worker: usize,
}

impl ConfdWorker {
    fn new(socket: std::net::UdpSocket, shared: Arc<Shared>, worker: usize) -> ConfdWorker {
        ConfdWorker { socket, shared, send: crate::io::SendBatch::new(64), out: Vec::new(), worker }
    }

    fn process(&mut self, batch: &Batch) {
        use crate::confd::proto::RequestError;
        let state = self.shared.confd.load();
        let snap = self.shared.snapshot.load();
        let now = (self.shared.pipeline.clock.now_ns() / 1_000_000_000) as i64;
        let c = self.shared.workers[self.worker].clone();
        let mut replies = 0;
        for (data, src) in batch.sourced() {
            let Some(src) = src else { continue };
            match crate::confd::server::handle(data, now, &state, &snap, &mut self.out) {
                Ok(()) => {
                    if self.send.is_full() {
                        replies += self.flush();
                    }
                    let out = &self.out;
                    self.send.push(&src, |b| b.extend_from_slice(out));
                }
                Err(e) => {
                    let i = RequestError::ALL.iter().position(|x| *x == e).unwrap_or(0);
                    counters::bump(&c.confd_drops[i], 1);
                    tracing::debug!(reason = e.label(), from = %src, "confd request dropped");
                }
            }
        }
        replies += self.flush();
        counters::bump(&c.confd_requests, batch.len() as u64);
        counters::bump(&c.confd_replies, replies);
    }

    fn flush(&mut self) -> u64 {
        let queued = self.send.len() as u64;
        let sent = match self.send.flush(&self.socket) {
            Ok(n) => n as u64,
            Err(e) => {
                tracing::debug!(error = %e, "confd replies not sent");
                0
            }
        };
        self.send.clear();
        counters::bump(&self.shared.workers[self.worker].confd_send_errors, queued.saturating_sub(sent));
        sent
    }
}
