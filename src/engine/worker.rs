//! The worker threads: one per core. A heartbeat batch goes through the [`Pipeline`] (verify →
//! inflate → parse → apply per shard, changes to the control thread); a batch from a lane's
//! socket goes to that lane (for example the confd responder), which the engine was given at
//! start and never names. Every ring batch returns to the free list.
//!
//! Two ways to receive heartbeats (`rx_threads`):
//! - **Each worker reads its own socket** (`rx_threads = 0`, the default): every worker has a
//!   `SO_REUSEPORT` socket on the heartbeat address and drains it with `recvmmsg` straight into
//!   the pipeline. The kernel hashes each source's 4-tuple to one socket, so one sender's
//!   packets stay in order on one worker, and no thread hands datagrams to another: one wake-up
//!   per batch instead of two, and no copy. A worker that falls behind leaves datagrams in its
//!   socket buffer (counted by the kernel, `SO_RXQ_OVFL`, when it overflows). Lane batches
//!   still come through the worker's ring, whose pusher wakes the worker's poll.
//!   With `busy_poll_us > 0`, a worker whose socket runs empty asks it again (and its ring)
//!   for that long before it sleeps in `epoll`.
//! - **Rx threads** (`rx_threads ≥ 1`): see [`super::rx`]; the worker blocks on its ring.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::clock::Clock;
use super::counters::{self, RxCounters};
use super::pipeline::Pipeline;
use super::ring::{Batch, BatchKind, FreeList, RingRx};
use super::Lane;
use crate::io::RecvBatch;

/// The poll token of a receiving worker's waker (a lane batch in its ring, or the stop).
const WAKE: mio::Token = mio::Token(0);
const SOCKET: mio::Token = mio::Token(1);

/// How many `recvmmsg` calls (of up to `recv_batch` datagrams) a worker reading its own socket
/// still makes once the engine stops: what was queued is applied (a 32 MiB socket buffer holds
/// about 25,000 heartbeats: under 400 calls of 64), then it stops even if a flood goes on.
const STOP_READS: u32 = 512;

/// A worker's own heartbeat socket (`rx_threads = 0`).
pub(super) struct OwnSocket {
    poll: mio::Poll,
    socket: mio::net::UdpSocket,
    recv: RecvBatch,
    counters: Arc<RxCounters>,
    clock: Arc<dyn Clock>,
    stopping: Arc<AtomicBool>,
    /// How long an empty socket is asked again before the worker sleeps (`busy_poll_us`).
    busy_poll: Duration,
}

impl OwnSocket {
    /// Registers `socket` with a new poll; returns it and the waker that interrupts the poll
    /// (given to the ring's pushers and to the engine's stop).
    pub(super) fn new(
        socket: std::net::UdpSocket,
        recv: RecvBatch,
        counters: Arc<RxCounters>,
        clock: Arc<dyn Clock>,
        stopping: Arc<AtomicBool>,
        busy_poll: Duration,
    ) -> io::Result<(OwnSocket, Arc<mio::Waker>)> {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry().register(&mut socket, SOCKET, mio::Interest::READABLE)?;
        Ok((OwnSocket { poll, socket, recv, counters, clock, stopping, busy_poll }, waker))
    }

    /// One `recvmmsg` into the pipeline; returns how many datagrams it got (`Some(0)`: the
    /// socket is empty; `None`: it failed, which was logged).
    fn drain_once(&mut self, pipeline: &mut Pipeline) -> Option<usize> {
        let n = match self.recv.recv(&self.socket) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Some(1),
            Err(e) => {
                tracing::warn!(error = %e, "recvmmsg failed");
                return None;
            }
        };
        if n == 0 {
            return Some(0);
        }
        let now = self.clock.now_ns();
        let mut bytes = 0u64;
        let mut truncated = 0u64;
        for i in 0..n {
            let (data, trunc) = self.recv.datagram(i);
            bytes += data.len() as u64;
            truncated += u64::from(trunc);
        }
        // Counted as received before they are applied, so that received ≥ accepted + dropped
        // holds at every instant a reader looks.
        let c = &self.counters;
        counters::bump(&c.packets, n as u64);
        counters::bump(&c.bytes, bytes);
        counters::bump(&c.truncated, truncated);
        counters::bump(&c.recv_calls, 1);
        let recv = &self.recv;
        pipeline.process_timed(
            (0..n).filter_map(|i| match recv.datagram(i) {
                (data, false) => Some((data, recv.rx_ns(i))),
                (_, true) => None,
            }),
            now,
        );
        if let Some(k) = self.recv.kernel_drops() {
            c.kernel_drops.store(u64::from(k), Ordering::Relaxed);
        }
        Some(n)
    }

    /// The socket is empty: publishes the kernel's drop count (read from the kernel at most
    /// every 50 ms; `now_ns` `None`: read now).
    fn idle(&mut self, now_ns: Option<u64>) {
        if let Some(k) = self.recv.poll_kernel_drops(&self.socket, now_ns) {
            self.counters.kernel_drops.store(u64::from(k), Ordering::Relaxed);
        }
    }
}

/// Starts worker `index` on `ring`, receiving heartbeats from its own socket when `own` is
/// given.
pub(super) fn spawn(
    index: usize,
    ring: RingRx,
    free: FreeList,
    mut pipeline: Pipeline,
    mut lanes: Vec<Box<dyn Lane>>,
    own: Option<OwnSocket>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
        let mut process = |batch: Box<Batch>, pipeline: &mut Pipeline| {
            match batch.kind {
                BatchKind::Heartbeat => {
                    pipeline.process_timed(batch.timed(), batch.recv_ns);
                }
                BatchKind::Lane(n) => {
                    if let Some(lane) = lanes.get_mut(usize::from(n)) {
                        lane.process(&batch);
                    }
                }
            }
            free.give(batch);
        };
        match own {
            None => {
                while let Some(batch) = ring.pop() {
                    process(batch, &mut pipeline);
                }
            }
            Some(mut own) => {
                let mut events = mio::Events::with_capacity(8);
                // Once stopping: reads left before the worker stops even if datagrams keep
                // coming (a flood must not hold up a graceful stop).
                let mut reads_left = None;
                loop {
                    while let Some(batch) = ring.try_pop() {
                        process(batch, &mut pipeline);
                    }
                    if own.stopping.load(Ordering::Relaxed) {
                        let left = reads_left.get_or_insert(STOP_READS);
                        if *left == 0 {
                            own.idle(None);
                            break;
                        }
                        *left -= 1;
                    }
                    // Edge-triggered: read until the socket is empty before waiting again.
                    let drained = own.drain_once(&mut pipeline);
                    if drained.is_some_and(|n| n > 0) {
                        continue;
                    }
                    if drained.is_some() && !own.busy_poll.is_zero() && !own.stopping.load(Ordering::Relaxed) {
                        // Bounded busy-polling: ask again for a while before sleeping (real
                        // time, not the engine's clock). Each empty spell spins at most this
                        // long, and a datagram starts a new one: at a trickle of one per spell
                        // the worker never sleeps. A failed read ends the spell (it was logged
                        // once; the poll below waits as it would have).
                        let until = std::time::Instant::now() + own.busy_poll;
                        let mut got = false;
                        while !got && std::time::Instant::now() < until {
                            std::hint::spin_loop();
                            if let Some(batch) = ring.try_pop() {
                                process(batch, &mut pipeline);
                                got = true;
                            } else {
                                match own.drain_once(&mut pipeline) {
                                    Some(0) => {}
                                    Some(_) => got = true,
                                    None => break,
                                }
                            }
                        }
                        if got {
                            continue;
                        }
                    }
                    let stopping = own.stopping.load(Ordering::SeqCst);
                    own.idle((!stopping).then(|| own.clock.now_ns()));
                    if stopping {
                        break;
                    }
                    if let Err(e) = own.poll.poll(&mut events, Some(Duration::from_millis(500))) {
                        if e.kind() != io::ErrorKind::Interrupted {
                            tracing::error!(error = %e, "worker poll failed");
                            break;
                        }
                    }
                }
                // Stopping: the socket was drained; apply what the lanes' rx threads (already
                // gone) left in the ring.
                while let Some(batch) = ring.pop() {
                    process(batch, &mut pipeline);
                }
            }
        }
    })
}
