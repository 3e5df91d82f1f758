//! The data plane: rx threads, rings, per-core workers, and the sharded state they write. See
//! `../shared/DESIGN.md` for the data flow; one packet's path, file by file:
//!
//! ```text
//! socket (one per worker) ─recvmmsg─▶ worker.rs ─▶ pipeline.rs: verify → inflate → parse →
//!   apply under the shard lock (shards.rs) ─▶ change.rs records ─▶ control
//! lane socket ─recvmmsg─▶ rx.rs ─(hash of source)─▶ ring.rs ─▶ worker.rs ─▶ the lane
//! ```
//!
//! (With `rx_threads ≥ 1`, heartbeats take the lanes' path: rx threads, rings, workers.)
//!
//! The engine knows nothing above it: it sends [`Change`] records and parsed service heartbeats
//! out through the channels of [`Outputs`], and hands batches from any extra socket to a
//! [`Lane`] it is given at [`Engine::bind`] (confd's responder is one), without naming it.
//!
//! Threads: `worker-N`, `rx-LANE` per lane socket, and `rx-N` with `rx_threads ≥ 1` (one per
//! socket; several with `SO_REUSEPORT`). Start in two steps, so the durable state can be
//! restored into the shards before any packet is processed: [`Engine::bind`] binds the sockets
//! and builds the shared state, [`Engine::start`] starts the threads. Shutdown order: rx
//! threads stop receiving (after one last drain of the socket) and push their pending batches;
//! workers reading their own socket read it a bounded number of times more; when every ring
//! sender is gone the workers finish their rings and exit, which closes the [`Outputs`]
//! channels. Datagrams that arrive after that are never read.

pub mod change;
pub mod clock;
pub mod counters;
pub mod histogram;
pub mod pipeline;
pub mod ring;
mod rx;
pub mod shards;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{self, Receiver};

pub use change::Change;
pub use clock::{Clock, ManualClock, SystemClock};
pub use counters::{BatchTally, DropReason, RxCounters, WorkerCounters};
pub use pipeline::{Pipeline, PipelineShared, ServiceLane, Settings};
pub use ring::{Batch, BatchKind, FreeList, Ring, RingRx, RingTx};
pub use shards::Shards;

use crate::io::{bind_udp, RecvBatch};
use crate::proto::inflate::Backend;
use crate::proto::keyring::Keyring;
use crate::proto::service::ServiceBeat;

/// How the engine is built. Fields a reload can change live in [`Settings`] and the keyring.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// UDP address for heartbeats (port 0: any free port).
    pub heartbeat_addr: SocketAddr,
    /// Receive threads, one socket each (`SO_REUSEPORT` when more than one); 0: no receive
    /// thread, every worker reads its own `SO_REUSEPORT` socket (see `src/engine/worker.rs`).
    pub rx_threads: usize,
    /// Worker threads.
    pub workers: usize,
    /// `SO_RCVBUF` to ask for, bytes.
    pub rcvbuf: usize,
    /// Largest datagram accepted, bytes; larger ones are dropped as `truncated`.
    pub max_datagram: usize,
    /// Datagrams per `recvmmsg` call.
    pub recv_batch: usize,
    /// Microseconds a worker reading its own socket (`rx_threads = 0`) that finds the socket
    /// empty keeps asking again (non-blocking `recvmmsg`) before it sleeps in `epoll`; 0: it
    /// sleeps at once. The bound is per empty spell, not on CPU: a datagram starts a new
    /// spell, so at a trickle of one per spell a worker never sleeps. Trades CPU for fewer
    /// wake-ups (see the README's side-by-side figures).
    pub busy_poll_us: u32,
    /// `SO_BUSY_POLL` of every heartbeat socket, microseconds (0: not set): the kernel polls the
    /// device's queue on a read instead of waiting for its interrupt. It acts only on packets
    /// from a NIC driver with busy-poll support (not on loopback). Older kernels want
    /// `CAP_NET_ADMIN` to set it above `net.core.busy_read` (6.18 lets any user set it).
    pub so_busy_poll_us: u32,
    /// Batches each worker's ring holds with receive threads (`rx_threads ≥ 1`). The default,
    /// 256 (32,768 datagrams a worker at 128 a batch), absorbs the workers falling about 400 ms
    /// behind at 150k datagrams/s: a fill of a million new amphorae at that rate on two shared
    /// cores dropped 0.9-6 % as `ring_full` with 64 and 128 (across runs that also varied the
    /// store writer's priority), none with 256. Batch memory is
    /// reserved, not resident: a batch's pages count only once datagrams were written into
    /// them. A worker reading its own socket (`rx_threads = 0`) gets only lane batches through
    /// its ring, at most 16.
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

/// The ring of a worker that reads its own socket carries only lane batches (confd requests,
/// at most 128 each): this many at most, whatever `ring_batches` says.
const LANE_RING_BATCHES: usize = 16;

impl EngineConfig {
    /// How many heartbeat sockets are bound: one per rx thread, or one per worker when the
    /// workers receive (`rx_threads = 0`).
    pub fn heartbeat_sockets(&self) -> usize {
        match self.rx_threads {
            0 => self.workers.max(1),
            n => n,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            heartbeat_addr: SocketAddr::from(([127, 0, 0, 1], 5555)),
            rx_threads: 0,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            rcvbuf: 32 << 20,
            max_datagram: 65536,
            recv_batch: 64,
            busy_poll_us: 0,
            so_busy_poll_us: 0,
            ring_batches: 256,
            batch_packets: 128,
            batch_bytes: 256 << 10,
            shards: 64,
            inflate: Backend::default(),
            settings: Settings::default(),
            keyring: Keyring::from_strs(&[crate::proto::keyring::INSECURE_DEFAULT_KEY], 0),
        }
    }
}

/// A consumer of the batches from an extra socket, one per worker: the engine receives and
/// routes them (by source, like heartbeats) and calls [`Lane::process`] on the worker thread.
pub trait Lane: Send {
    /// Handles one batch; each datagram comes with its source address.
    fn process(&mut self, batch: &Batch);
}

/// Makes worker `index`'s instance of a lane, given its own handle of the lane's socket (to
/// answer from).
pub type LaneFactory = Box<dyn FnMut(usize, std::net::UdpSocket) -> Box<dyn Lane> + Send>;

/// An extra socket and the lane its datagrams go to.
pub struct LaneSpec {
    /// Short name: the rx thread's (`rx-NAME`), the socket's in bind errors and stats.
    pub name: &'static str,
    /// UDP address to bind.
    pub addr: SocketAddr,
    /// `SO_RCVBUF` to ask for, bytes.
    pub rcvbuf: usize,
    /// One lane instance per worker.
    pub factory: LaneFactory,
}

impl std::fmt::Debug for LaneSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSpec").field("name", &self.name).field("addr", &self.addr).finish()
    }
}

/// Why the engine could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// A socket could not be bound (address in use, no permission, no such address): the
    /// message names the socket and the address; choose another address or stop the holder.
    Bind {
        /// Which socket: `heartbeat`, or a lane's name (`confd`).
        socket: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The system's answer.
        source: io::Error,
    },
    /// A socket option the configuration asks for was refused (an older kernel refuses
    /// `SO_BUSY_POLL` above `net.core.busy_read` without `CAP_NET_ADMIN`): grant the capability,
    /// or lower or unset the option.
    SocketOption {
        /// The option's name.
        option: &'static str,
        /// The system's answer.
        source: io::Error,
    },
    /// A thread or a poll instance could not be created (resource limits).
    Start(io::Error),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Bind { socket, addr, source } => {
                write!(f, "cannot bind the {socket} socket to {addr}/udp: {source}")
            }
            EngineError::SocketOption { option, source } => {
                write!(f, "cannot set {option} on the heartbeat sockets: {source}")
            }
            EngineError::Start(e) => write!(f, "cannot start the engine's threads: {e}"),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Bind { source, .. } | EngineError::SocketOption { source, .. } => Some(source),
            EngineError::Start(e) => Some(e),
        }
    }
}

/// What the socket set-up granted.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RcvBufInfo {
    /// Asked for, bytes.
    pub requested: usize,
    /// Read back from the kernel (Linux reports twice the usable size).
    pub effective: usize,
    /// Whether the kernel drop counter (`SO_RXQ_OVFL`) is on.
    pub kernel_drop_counter: bool,
}

/// The data plane's state, shared by its threads and read by the layers above (control thread,
/// admin API): counters, the state shards, the ring fill.
pub struct Shared {
    /// What the workers share.
    pub pipeline: PipelineShared,
    /// Per-worker counters.
    pub workers: Vec<Arc<WorkerCounters>>,
    /// Per-rx-thread counters.
    pub rx: Vec<Arc<RxCounters>>,
    /// What each rx thread receives (heartbeat sockets first, then the lanes).
    pub rx_kinds: Vec<BatchKind>,
    /// Each rx thread's socket name (`heartbeat` or a lane's name).
    pub rx_names: Vec<&'static str>,
    rings: Vec<RingRx>,
    ring_batches: usize,
    /// Socket buffer information of the first socket, once bound.
    rcvbuf: std::sync::OnceLock<RcvBufInfo>,
    /// When the engine was built.
    pub started: Instant,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("workers", &self.workers.len()).finish()
    }
}

/// A summary of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// A data plane's shared state with no sockets and no threads (deterministic tests of the
    /// layers above: they read its counters and shards, and may bump them).
    pub fn detached(pipeline: PipelineShared, workers: usize, ring_batches: usize) -> Shared {
        let (_, rx) = Ring::bounded(ring_batches);
        Shared {
            pipeline,
            workers: (0..workers.max(1)).map(|_| Arc::new(WorkerCounters::default())).collect(),
            rx: vec![Arc::new(RxCounters::default())],
            rx_kinds: vec![BatchKind::Heartbeat],
            rx_names: vec!["heartbeat"],
            rings: (0..workers.max(1)).map(|_| rx.clone()).collect(),
            ring_batches: ring_batches.max(1),
            rcvbuf: std::sync::OnceLock::new(),
            started: Instant::now(),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Socket buffer information of the first heartbeat socket (zeros before it is bound).
    pub fn rcvbuf(&self) -> RcvBufInfo {
        self.rcvbuf.get().copied().unwrap_or_default()
    }

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
            if *kind != BatchKind::Heartbeat {
                // A lane's datagrams are counted by the lane.
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
        (self.rings.iter().map(RingRx::len).collect(), self.ring_batches)
    }

    /// Now, by the engine's clock (ns since the epoch).
    pub fn now_ns(&self) -> u64 {
        self.pipeline.clock.now_ns()
    }
}

/// What the engine sends up: the channels the control thread reads. Both close when the last
/// worker exits.
#[derive(Debug)]
pub struct Outputs {
    /// Change records, one vector per worker batch that had any.
    pub changes: Receiver<Vec<Change>>,
    /// Parsed service heartbeats (vectors to return through [`ServiceLane::recycle`]).
    pub services: Receiver<Vec<ServiceBeat>>,
}

/// A bound socket waiting for its rx thread.
struct Bound {
    socket: std::net::UdpSocket,
    kind: BatchKind,
    name: &'static str,
}

/// The engine: bound by [`Engine::bind`], running after [`Engine::start`].
pub struct Engine {
    cfg: EngineConfig,
    shared: Arc<Shared>,
    locals: Vec<SocketAddr>,
    lane_locals: Vec<(&'static str, SocketAddr)>,
    bound: Vec<Bound>,
    lanes: Vec<LaneSpec>,
    ring_tx: Vec<RingTx>,
    ring_rx: Vec<RingRx>,
    free: FreeList,
    changes_tx: Option<channel::Sender<Vec<Change>>>,
    outputs: Option<Outputs>,
    rx: Vec<(JoinHandle<()>, Arc<mio::Waker>)>,
    workers: Vec<JoinHandle<()>>,
    /// The wakers of workers that read their own socket (`rx_threads = 0`).
    worker_wakers: Vec<Arc<mio::Waker>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("local", &self.locals).finish()
    }
}

impl Engine {
    /// Binds the heartbeat sockets and each lane's socket and builds the shared state; no
    /// thread runs yet, so the caller can fill the shards before any packet is processed.
    /// [`Engine::new`] then [`Engine::bind_sockets`].
    pub fn bind(cfg: EngineConfig, lanes: Vec<LaneSpec>, clock: Arc<dyn Clock>) -> Result<Engine, EngineError> {
        let mut e = Engine::new(cfg, lanes, clock)?;
        e.bind_sockets()?;
        Ok(e)
    }

    /// Builds the shared state (shards, counters, rings) without binding anything: the daemon
    /// restores the store into the shards before the heartbeat socket exists, so no datagram
    /// waits in (or overflows) a socket nobody reads.
    pub fn new(cfg: EngineConfig, lanes: Vec<LaneSpec>, clock: Arc<dyn Clock>) -> Result<Engine, EngineError> {
        let workers_n = cfg.workers.max(1);
        let rx_n = cfg.heartbeat_sockets();
        if lanes.len() > 256 {
            return Err(EngineError::Start(io::Error::other("more than 256 lanes")));
        }
        let rx_total = rx_n + lanes.len();
        let mut rx_kinds = vec![BatchKind::Heartbeat; rx_n];
        let mut rx_names = vec!["heartbeat"; rx_n];
        for (i, lane) in lanes.iter().enumerate() {
            rx_kinds.push(BatchKind::Lane(i as u8));
            rx_names.push(lane.name);
        }
        // Workers reading their own socket take only the lanes' batches from their ring: a
        // small ring, and no batch at all without a lane (the free list is the memory bound).
        let own = cfg.rx_threads == 0;
        let ring_batches = if own { cfg.ring_batches.min(LANE_RING_BATCHES) } else { cfg.ring_batches };
        let batch_users = if own { lanes.len() } else { rx_total };
        let batches = if batch_users == 0 { 0 } else { workers_n * (ring_batches + 2) + batch_users * workers_n };
        let free = FreeList::new(batches, cfg.batch_packets, cfg.batch_bytes.max(cfg.max_datagram));
        let (ring_tx, ring_rx): (Vec<_>, Vec<_>) = (0..workers_n).map(|_| Ring::bounded(ring_batches)).unzip();
        let (changes_tx, changes) = channel::unbounded::<Vec<Change>>();
        let (services_tx, services) = channel::unbounded();
        let pipeline = PipelineShared {
            keyring: Arc::new(ArcSwap::from_pointee(cfg.keyring.clone())),
            settings: Arc::new(ArcSwap::from_pointee(cfg.settings.clone())),
            shards: Arc::new(Shards::new(cfg.shards)),
            clock,
            services: Arc::new(ServiceLane::new(Some(services_tx))),
        };
        let shared = Arc::new(Shared {
            pipeline,
            workers: (0..workers_n).map(|_| Arc::new(WorkerCounters::default())).collect(),
            rx: (0..rx_total).map(|_| Arc::new(RxCounters::default())).collect(),
            rx_kinds,
            rx_names,
            rings: ring_rx.clone(),
            ring_batches: ring_batches.max(1),
            rcvbuf: std::sync::OnceLock::new(),
            started: Instant::now(),
            stopping: Arc::new(AtomicBool::new(false)),
        });
        Ok(Engine {
            cfg,
            shared,
            locals: Vec::new(),
            lane_locals: Vec::new(),
            bound: Vec::new(),
            lanes,
            ring_tx,
            ring_rx,
            free,
            changes_tx: Some(changes_tx),
            outputs: Some(Outputs { changes, services }),
            rx: Vec::new(),
            workers: Vec::new(),
            worker_wakers: Vec::new(),
        })
    }

    /// Binds the heartbeat sockets and each lane's socket (once; errors name the socket and
    /// the address). Nothing reads them until [`Engine::start`].
    pub fn bind_sockets(&mut self) -> Result<(), EngineError> {
        if !self.locals.is_empty() {
            return Ok(());
        }
        let cfg = &self.cfg;
        let rx_n = cfg.heartbeat_sockets();
        let bind_err = |socket, addr| move |source| EngineError::Bind { socket, addr, source };
        let mut addr = cfg.heartbeat_addr;
        if rx_n > 1 {
            // A group of SO_REUSEPORT sockets would silently share the port with another
            // process of the same user that bound it the same way (a second daemon), and with
            // port 0 the kernel may even pick such a group's port: bind once without the
            // option first, which fails while anyone holds the port (or picks a port nobody
            // holds), then bind the group to that port.
            let probe = bind_udp(addr, 0, false).map_err(bind_err("heartbeat", addr))?;
            addr = probe.local;
        }
        let first = bind_udp(addr, cfg.rcvbuf, rx_n > 1).map_err(bind_err("heartbeat", addr))?;
        let _ = self.shared.rcvbuf.set(RcvBufInfo {
            requested: first.rcvbuf_requested,
            effective: first.rcvbuf_effective,
            kernel_drop_counter: first.rxq_ovfl,
        });
        let local = first.local;
        let mut locals = vec![local];
        let mut bound = vec![Bound { socket: first.socket, kind: BatchKind::Heartbeat, name: "heartbeat" }];
        for _ in 1..rx_n {
            let b = bind_udp(local, cfg.rcvbuf, true).map_err(bind_err("heartbeat", local))?;
            locals.push(b.local);
            bound.push(Bound { socket: b.socket, kind: BatchKind::Heartbeat, name: "heartbeat" });
        }
        if cfg.so_busy_poll_us > 0 {
            for b in &bound {
                socket2::SockRef::from(&b.socket)
                    .set_busy_poll(cfg.so_busy_poll_us)
                    .map_err(|source| EngineError::SocketOption { option: "SO_BUSY_POLL", source })?;
            }
        }
        let mut lane_locals = Vec::new();
        for (i, lane) in self.lanes.iter().enumerate() {
            let b = bind_udp(lane.addr, lane.rcvbuf, false).map_err(bind_err(lane.name, lane.addr))?;
            lane_locals.push((lane.name, b.local));
            bound.push(Bound { socket: b.socket, kind: BatchKind::Lane(i as u8), name: lane.name });
        }
        self.locals = locals;
        self.lane_locals = lane_locals;
        self.bound = bound;
        Ok(())
    }

    /// The channels the control thread reads (once; `None` after the first call).
    pub fn take_outputs(&mut self) -> Option<Outputs> {
        self.outputs.take()
    }

    /// Starts the workers, then the rx threads (binding the sockets first if
    /// [`Engine::bind_sockets`] was not called). Call once.
    pub fn start(&mut self) -> Result<(), EngineError> {
        self.bind_sockets()?;
        let cfg = &self.cfg;
        let Some(changes_tx) = self.changes_tx.take() else { return Ok(()) };
        // Workers that read their own socket take the heartbeat sockets (the first ones bound).
        let mut own_sockets = Vec::new();
        if cfg.rx_threads == 0 {
            for (i, b) in self.bound.drain(..self.ring_rx.len()).enumerate() {
                let (own, waker) = worker::OwnSocket::new(
                    b.socket,
                    RecvBatch::new(cfg.recv_batch, cfg.max_datagram),
                    self.shared.rx[i].clone(),
                    self.shared.pipeline.clock.clone(),
                    self.shared.stopping.clone(),
                    Duration::from_micros(u64::from(cfg.busy_poll_us)),
                )
                .map_err(EngineError::Start)?;
                self.ring_tx[i].set_waker(waker.clone());
                self.worker_wakers.push(waker);
                own_sockets.push(own);
            }
        }
        let mut own_sockets = own_sockets.into_iter();
        for (i, ring) in self.ring_rx.drain(..).enumerate() {
            let p = Pipeline::new(
                self.shared.pipeline.clone(),
                cfg.inflate,
                self.shared.workers[i].clone(),
                Some(changes_tx.clone()),
            );
            let mut lanes = Vec::with_capacity(self.lanes.len());
            for (spec, b) in self.lanes.iter_mut().zip(self.bound.iter().filter(|b| b.kind != BatchKind::Heartbeat)) {
                lanes.push((spec.factory)(i, b.socket.try_clone().map_err(EngineError::Start)?));
            }
            let own = own_sockets.next();
            self.workers.push(worker::spawn(i, ring, self.free.clone(), p, lanes, own).map_err(EngineError::Start)?);
        }
        drop(changes_tx);
        // Counter slots: the heartbeat sockets' first, then the lanes'.
        let first_rx = if cfg.rx_threads == 0 { self.worker_wakers.len() } else { 0 };
        for (i, b) in self.bound.drain(..).enumerate() {
            let i = first_rx + i;
            let (thread, waker) = rx::RxThread::new(
                b.socket,
                b.kind,
                self.shared.rx[i].clone(),
                self.ring_tx.clone(),
                self.free.clone(),
                self.shared.stopping.clone(),
                RecvBatch::new(cfg.recv_batch, cfg.max_datagram),
                self.shared.pipeline.clock.clone(),
            )
            .map_err(EngineError::Start)?;
            let name = if b.kind == BatchKind::Heartbeat { format!("rx-{i}") } else { format!("rx-{}", b.name) };
            let handle =
                std::thread::Builder::new().name(name).spawn(move || thread.run()).map_err(EngineError::Start)?;
            self.rx.push((handle, waker));
        }
        // The rx threads hold the only senders now: the workers end when they do.
        self.ring_tx.clear();
        Ok(())
    }

    /// The bound heartbeat address (the configured one before [`Engine::bind_sockets`]).
    pub fn local_addr(&self) -> SocketAddr {
        self.locals.first().copied().unwrap_or(self.cfg.heartbeat_addr)
    }

    /// The bound address of lane `name`.
    pub fn lane_addr(&self, name: &str) -> Option<SocketAddr> {
        self.lane_locals.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
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
    /// apply everything in their rings. Returns the final totals; the [`Outputs`] channels are
    /// closed once this returns.
    pub fn shutdown(mut self) -> Totals {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for (handle, waker) in self.rx.drain(..) {
            let _ = waker.wake();
            let _ = handle.join();
        }
        // Never started: the workers' senders are ours.
        self.ring_tx.clear();
        self.changes_tx = None;
        // Workers reading their own socket drain it once more, then their ring.
        for waker in self.worker_wakers.drain(..) {
            let _ = waker.wake();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.shared.totals()
    }
}
