//! The rx threads: one per socket. Each drains its socket with `recvmmsg` into recycled
//! batches, one pending batch per worker, and picks the worker by a hash of the source address,
//! so one sender's packets stay in order on one worker.
//!
//! A pending batch is pushed when it is full, when its worker's ring is empty (the worker is
//! waiting), or after at most [`HOLD`] held for a busy worker. A full ring drops the batch's
//! datagrams as `ring_full`: the workers are behind, and the kernel buffer is the only other
//! place to queue.

use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxBuildHasher;

use super::clock::Clock;
use super::counters::{self, RxCounters};
use super::ring::{Batch, BatchKind, FreeList, RingTx};
use crate::io::RecvBatch;

/// How long the rx thread may hold a partly filled batch for a busy worker.
pub const HOLD: Duration = Duration::from_micros(200);

/// The poll token of the waker (stop).
pub(super) const WAKE: mio::Token = mio::Token(0);
const SOCKET: mio::Token = mio::Token(1);

/// One rx thread's state.
pub(super) struct RxThread {
    poll: mio::Poll,
    socket: mio::net::UdpSocket,
    stopping: Arc<AtomicBool>,
    recv: RecvBatch,
    clock: Arc<dyn Clock>,
    router: Router,
}

impl RxThread {
    /// An rx thread for `socket` feeding `rings`; returns it and the waker that interrupts its
    /// poll at stop.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        socket: std::net::UdpSocket,
        kind: BatchKind,
        counters: Arc<RxCounters>,
        rings: Vec<RingTx>,
        free: FreeList,
        stopping: Arc<AtomicBool>,
        recv: RecvBatch,
        clock: Arc<dyn Clock>,
    ) -> io::Result<(RxThread, Arc<mio::Waker>)> {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry().register(&mut socket, SOCKET, mio::Interest::READABLE)?;
        let pending = rings.iter().map(|_| None).collect();
        let router = Router { kind, counters, rings, free, pending };
        Ok((RxThread { poll, socket, stopping, recv, clock, router }, waker))
    }

    /// Runs until the engine stops, then drains the socket once more and pushes what it holds.
    pub(super) fn run(mut self) {
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
            // Empty now: drops at the end of a burst have no later datagram to report them.
            let stopping = self.stopping.load(Ordering::SeqCst);
            let now = (!stopping).then(|| self.clock.now_ns());
            if let Some(k) = self.recv.poll_kernel_drops(&self.socket, now) {
                self.router.counters.kernel_drops.store(u64::from(k), Ordering::Relaxed);
            }
            if stopping {
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

/// Routes datagrams into the workers' pending batches and rings.
struct Router {
    kind: BatchKind,
    counters: Arc<RxCounters>,
    rings: Vec<RingTx>,
    free: FreeList,
    pending: Vec<Option<Box<Batch>>>,
}

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
                match self.free.take() {
                    Some(mut b) => {
                        b.kind = self.kind;
                        self.pending[w] = Some(b)
                    }
                    None => return false,
                }
            }
            if let Some(b) = self.pending[w].as_mut() {
                // Heartbeats need no source; a lane answers to it.
                let src = if self.kind == BatchKind::Heartbeat { None } else { src };
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
        if let Err(b) = self.rings[w].try_push(batch) {
            counters::bump(&self.counters.ring_full, b.len() as u64);
            self.free.give(b);
        }
    }
}
