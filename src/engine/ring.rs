//! The hand-off between rx threads and workers: fixed-size batches of datagrams, recycled
//! through a free list so that steady traffic allocates nothing.
//!
//! Each worker has one bounded [`Ring`] (a crossbeam channel of boxed batches; the box moves,
//! the bytes do not), and every batch comes from and returns to one [`FreeList`]. An rx thread copies each datagram into the pending batch of the worker its
//! source hashes to (≈20 ns for a 352-byte heartbeat, against ≈4 µs of work behind it, measured
//! by `benches/stages.rs`) and
//! pushes the batch when it is full, when its worker's ring is empty (the worker is waiting), or
//! after at most 200 µs held for a busy worker. Workers return batches to the
//! shared free list. When a ring is full the rx thread drops the batch's datagrams as
//! `ring_full` and recycles it: the workers are behind, and the kernel buffer is the only
//! other place to queue.

use std::sync::Arc;

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use crossbeam::queue::ArrayQueue;

/// What a batch carries: every datagram of a batch came from the same socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchKind {
    /// Heartbeats (Octavia or service) from the heartbeat socket.
    #[default]
    Heartbeat,
    /// Datagrams from the socket of lane number `n` (see [`crate::engine::Lane`]): the worker
    /// hands them, source addresses included, to that lane.
    Lane(u8),
}

/// The recycled batches shared by the rx threads and the workers.
#[derive(Clone, Debug)]
pub struct FreeList(Arc<ArrayQueue<Box<Batch>>>);

impl FreeList {
    /// `n` batches of `max_entries` datagrams and `data_bytes` bytes, allocated now.
    pub fn new(n: usize, max_entries: usize, data_bytes: usize) -> FreeList {
        let q = ArrayQueue::new(n.max(1));
        for _ in 0..n {
            let _ = q.push(Box::new(Batch::new(max_entries, data_bytes)));
        }
        FreeList(Arc::new(q))
    }

    /// A free batch, `None` when every batch is in use (the workers are behind).
    pub fn take(&self) -> Option<Box<Batch>> {
        self.0.pop()
    }

    /// Returns a batch, emptied.
    pub fn give(&self, mut batch: Box<Batch>) {
        batch.clear();
        let _ = self.0.push(batch);
    }
}

/// A worker's bounded ring of batches: the rx threads push, the worker pops.
#[derive(Debug)]
pub struct Ring;

impl Ring {
    /// A ring of `capacity` batches: the sending side (cloned into every rx thread) and the
    /// receiving side (the worker's).
    pub fn bounded(capacity: usize) -> (RingTx, RingRx) {
        let (tx, rx) = channel::bounded(capacity.max(1));
        (RingTx(tx, None), RingRx(rx))
    }
}

/// The sending side of a [`Ring`].
#[derive(Clone, Debug)]
pub struct RingTx(Sender<Box<Batch>>, Option<Arc<mio::Waker>>);

impl RingTx {
    /// Wakes `waker` after each push: the worker waits in a poll (on its own socket) rather
    /// than on the ring. (Waking only on a push into an empty ring races with the worker taking
    /// the last batch, which could leave a batch waiting for the poll's timeout.)
    pub fn set_waker(&mut self, waker: Arc<mio::Waker>) {
        self.1 = Some(waker);
    }

    /// Pushes without waiting; gives the batch back when the ring is full or the worker gone.
    pub fn try_push(&self, batch: Box<Batch>) -> Result<(), Box<Batch>> {
        self.0.try_send(batch).map_err(|e| match e {
            TrySendError::Full(b) | TrySendError::Disconnected(b) => b,
        })?;
        if let Some(w) = &self.1 {
            // A failed wake leaves the batch for the worker's next round (at most 500 ms).
            let _ = w.wake();
        }
        Ok(())
    }

    /// True when the worker has taken every batch (it is waiting for work).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The receiving side of a [`Ring`].
#[derive(Clone, Debug)]
pub struct RingRx(Receiver<Box<Batch>>);

impl RingRx {
    /// The next batch; `None` once every sender is gone and the ring is empty.
    pub fn pop(&self) -> Option<Box<Batch>> {
        self.0.recv().ok()
    }

    /// The next batch if one waits.
    pub fn try_pop(&self) -> Option<Box<Batch>> {
        self.0.try_recv().ok()
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no batch waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A batch of datagrams bound for one worker.
#[derive(Debug)]
pub struct Batch {
    data: Vec<u8>,
    entries: Vec<Entry>,
    max_entries: usize,
    /// When the first datagram was received, ns since the Unix epoch.
    pub recv_ns: u64,
    /// Which socket the datagrams came from.
    pub kind: BatchKind,
}

/// Where one datagram lies in a batch, when the kernel received it (ns since the epoch,
/// 0 = unknown), and where from.
#[derive(Clone, Copy, Debug)]
struct Entry {
    start: u32,
    len: u32,
    rx_ns: u64,
    src: Option<std::net::SocketAddr>,
}

impl Batch {
    /// A batch of up to `max_entries` datagrams and `data_bytes` bytes.
    pub fn new(max_entries: usize, data_bytes: usize) -> Batch {
        Batch {
            data: Vec::with_capacity(data_bytes),
            entries: Vec::with_capacity(max_entries),
            max_entries,
            recv_ns: 0,
            kind: BatchKind::Heartbeat,
        }
    }

    /// Appends a datagram; false when it does not fit (push the batch and take another).
    pub fn push(&mut self, bytes: &[u8], recv_ns: u64, rx_ns: u64) -> bool {
        self.push_from(bytes, recv_ns, rx_ns, None)
    }

    /// [`Batch::push`] with the datagram's source address (confd replies go there).
    pub fn push_from(&mut self, bytes: &[u8], recv_ns: u64, rx_ns: u64, src: Option<std::net::SocketAddr>) -> bool {
        if self.entries.len() == self.max_entries || self.data.len() + bytes.len() > self.data.capacity() {
            return false;
        }
        if self.entries.is_empty() {
            self.recv_ns = recv_ns;
        }
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        self.entries.push(Entry { start, len: bytes.len() as u32, rx_ns, src });
        true
    }

    /// Number of datagrams.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
    }

    /// The datagrams.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.timed().map(|(p, _)| p)
    }

    /// The datagrams with their source addresses.
    pub fn sourced(&self) -> impl Iterator<Item = (&[u8], Option<std::net::SocketAddr>)> + '_ {
        self.entries.iter().map(|e| (&self.data[e.start as usize..(e.start + e.len) as usize], e.src))
    }

    /// The datagrams with their kernel receive times.
    pub fn timed(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        self.entries.iter().map(|e| (&self.data[e.start as usize..(e.start + e.len) as usize], e.rx_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_free_list_recycles() {
        let free = FreeList::new(3, 4, 64);
        let (tx, rx) = Ring::bounded(2);
        for _ in 0..2 {
            let mut b = free.take().expect("a free batch");
            assert!(b.push(b"x", 1, 1));
            assert!(tx.try_push(b).is_ok());
        }
        let b = free.take().expect("the third batch");
        let back = tx.try_push(b).expect_err("the ring holds two");
        free.give(back);
        assert_eq!(rx.len(), 2);
        let got = rx.pop().expect("a batch");
        assert_eq!(got.len(), 1);
        free.give(got);
        assert!(free.take().is_some_and(|b| b.is_empty()), "given back emptied");
    }

    #[test]
    fn batch_limits_and_reuse() {
        let mut b = Batch::new(2, 10);
        assert!(b.push(b"abcd", 7, 1));
        assert!(!b.push(b"0123456789", 8, 1), "over the byte capacity");
        assert!(b.push(b"ef", 9, 2));
        assert!(!b.push(b"g", 9, 3), "over the entry capacity");
        assert_eq!(b.timed().map(|(_, t)| t).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(b.recv_ns, 7);
        assert_eq!(b.packets().collect::<Vec<_>>(), vec![&b"abcd"[..], &b"ef"[..]]);
        let cap = b.data.capacity();
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.data.capacity(), cap);
    }
}
