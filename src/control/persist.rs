//! Persistence of the control plane: the writes every part queues during a round
//! ([`Writes`]), and where they go ([`Durable`]): the store's write-behind thread in the
//! daemon, memory in deterministic tests, nowhere in benches.
//!
//! Parts never touch the store: they put rows into [`Writes::batch`] and mark amphorae in
//! [`Writes::amphorae`] (their rows are read from the shards at flush time, so a heartbeat
//! storm costs one write per amphora per flush). The control thread hands a flush to the
//! [`Durable`] with an optional completion, which the writer thread calls once the
//! transaction committed: an admin write is answered only when durable, and no thread is
//! spawned per write.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustc_hash::FxHashSet;

use super::snapshot::StoreStatus;
use crate::proto::octavia::Uuid;
use crate::store::{Done, Job, Loaded, Store, StoreError, Table, WriteBatch, Writer};

/// What the parts of the control plane queued for the store in this round.
#[derive(Debug, Default)]
pub struct Writes {
    /// Rows to put or delete.
    pub batch: WriteBatch,
    /// Amphorae whose row must be rewritten from the shards.
    pub amphorae: FxHashSet<Uuid>,
    /// Rows copied from the cluster's state in etcd: for the local store only (cluster mode
    /// never writes them back to etcd).
    pub mirrored: WriteBatch,
}

impl Writes {
    /// Marks an amphora's row for rewriting.
    pub fn amphora(&mut self, id: Uuid) {
        self.amphorae.insert(id);
    }
}

/// Where flushed batches go.
pub trait Durable: Send {
    /// Everything stored but the amphora rows, for the restore at start.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Calls `f` with each stored amphora row (key, JSON), streamed from the store.
    fn each_amphora(&self, f: &mut crate::store::RowVisitor<'_>) -> Result<(), StoreError>;
    /// Writes `batch` to the local store only (rows mirrored from the cluster's state; a
    /// store that is not a cluster's writes them like any other).
    fn submit_local(&mut self, batch: WriteBatch) {
        self.submit(batch, None, false);
    }
    /// Writes `batch` behind; `done` is called with the outcome once it is durable. With
    /// `awaited` a caller waits for it: its rows are never spilled.
    fn submit(&mut self, batch: WriteBatch, done: Option<Done>, awaited: bool);
    /// The store's figures.
    fn status(&self) -> Option<StoreStatus>;
    /// False from a failed commit until the next successful one (the writer retries).
    fn healthy(&self) -> bool;
    /// Amphorae whose rows the writer dropped from its queue (over its memory bound) while
    /// failing: the caller marks them to be written again from the shards.
    fn take_spilled(&mut self) -> Vec<Uuid> {
        Vec::new()
    }
    /// Writes everything submitted and stops.
    fn finish(&mut self);
}

/// The redb store with its writer thread.
#[derive(Debug)]
pub struct StoreDurable {
    store: Arc<Store>,
    writer: Option<Writer>,
}

impl StoreDurable {
    /// Opens the store in `dir` and starts its writer thread; `fresh`: an unreadable or corrupt
    /// database is moved aside instead of refused ([`Store::open_with`]).
    pub fn open(dir: &std::path::Path, fresh: bool) -> Result<StoreDurable, StoreError> {
        let store = Arc::new(Store::open_with(dir, fresh)?);
        let writer = Writer::spawn(store.clone()).map_err(|e| StoreError::Dir(format!("store thread: {e}")))?;
        Ok(StoreDurable { store, writer: Some(writer) })
    }
}

impl Durable for StoreDurable {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.store.load_small()
    }

    fn each_amphora(&self, f: &mut crate::store::RowVisitor<'_>) -> Result<(), StoreError> {
        self.store.each_amphora(f)
    }

    fn submit(&mut self, batch: WriteBatch, done: Option<Done>, awaited: bool) {
        let sender = self.writer.as_ref().and_then(Writer::sender);
        match sender {
            Some(tx) => {
                if let Err(e) = tx.send(Job { batch, done, awaited }) {
                    if let Some(done) = e.into_inner().done {
                        done(Err(&StoreError::Transaction("the store thread has stopped".into())));
                    }
                }
            }
            None => {
                if let Some(done) = done {
                    done(Err(&StoreError::Transaction("the store thread has stopped".into())));
                }
            }
        }
    }

    fn status(&self) -> Option<StoreStatus> {
        let w = self.writer.as_ref()?;
        let r = Ordering::Relaxed;
        Some(StoreStatus {
            path: self.store.path().display().to_string(),
            commits: w.stats.commits.load(r),
            writes: w.stats.writes.load(r),
            failures: w.stats.failures.load(r),
            last_commit_ms: w.stats.last_commit_ns.load(r) as f64 / 1e6,
            healthy: !w.stats.failing.load(r),
            error: w.stats.error(),
            pending: w.stats.pending.load(r),
        })
    }

    fn healthy(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| !w.stats.failing.load(Ordering::Relaxed))
    }

    fn take_spilled(&mut self) -> Vec<Uuid> {
        let Some(w) = self.writer.as_ref() else { return Vec::new() };
        w.stats.take_spilled().into_iter().map(Uuid::from_bytes).collect()
    }

    fn finish(&mut self) {
        if let Some(w) = self.writer.take() {
            w.finish();
        }
    }
}

/// Keeps every flushed batch in memory and completes at once. Clones share the batches, so a
/// deterministic test keeps one handle and restores a new control plane from
/// [`MemoryDurable::loaded`]. [`MemoryDurable::set_failing`] stands for a store that cannot
/// write: batches are held, unacknowledged, until it writes again.
#[derive(Clone, Default)]
pub struct MemoryDurable {
    inner: Arc<parking_lot::Mutex<Memory>>,
}

#[derive(Default)]
struct Memory {
    batches: Vec<WriteBatch>,
    held: Vec<(WriteBatch, Option<Done>)>,
    failing: bool,
    failures: u64,
}

impl std::fmt::Debug for MemoryDurable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.inner.lock();
        f.debug_struct("MemoryDurable").field("batches", &m.batches.len()).field("held", &m.held.len()).finish()
    }
}

impl MemoryDurable {
    /// What a store would hold now.
    pub fn loaded(&self) -> Loaded {
        Loaded::from_batches(self.inner.lock().batches.iter())
    }

    /// Puts and deletes of rows of `table` in every batch written so far.
    pub fn ops(&self, table: crate::store::Table) -> usize {
        self.inner.lock().batches.iter().map(|b| b.ops.iter().filter(|o| o.table == table).count()).sum()
    }

    /// While `failing`, batches are held and not acknowledged; back to writing, the held
    /// batches are written and acknowledged, in order.
    pub fn set_failing(&self, failing: bool) {
        let held = {
            let mut m = self.inner.lock();
            m.failing = failing;
            if failing {
                return;
            }
            let held = std::mem::take(&mut m.held);
            m.batches.extend(held.iter().map(|(b, _)| b.clone()));
            held
        };
        for (_, done) in held {
            if let Some(done) = done {
                done(Ok(()));
            }
        }
    }
}

impl Durable for MemoryDurable {
    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(self.loaded())
    }

    fn each_amphora(&self, f: &mut crate::store::RowVisitor<'_>) -> Result<(), StoreError> {
        for (table, key, value) in self.loaded().rows {
            if table == Table::Amphorae {
                f(key, &value)?;
            }
        }
        Ok(())
    }

    fn submit(&mut self, mut batch: WriteBatch, done: Option<Done>, _awaited: bool) {
        batch.encode();
        let mut m = self.inner.lock();
        if m.failing {
            m.failures += 1;
            m.held.push((batch, done));
            return;
        }
        m.batches.push(batch);
        drop(m);
        if let Some(done) = done {
            done(Ok(()));
        }
    }

    fn status(&self) -> Option<StoreStatus> {
        let m = self.inner.lock();
        Some(StoreStatus {
            path: "memory".into(),
            commits: m.batches.len() as u64,
            writes: m.batches.iter().map(WriteBatch::len).sum::<usize>() as u64,
            failures: m.failures,
            last_commit_ms: 0.0,
            healthy: !m.failing,
            error: m.failing.then(|| "memory store set failing".to_owned()),
            pending: m.held.iter().map(|(b, _)| b.len() as u64).sum(),
        })
    }

    fn healthy(&self) -> bool {
        !self.inner.lock().failing
    }

    fn finish(&mut self) {}
}
