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
use crate::store::{Done, Job, Loaded, Store, StoreError, WriteBatch, Writer};

/// What the parts of the control plane queued for the store in this round.
#[derive(Debug, Default)]
pub struct Writes {
    /// Rows to put or delete.
    pub batch: WriteBatch,
    /// Amphorae whose row must be rewritten from the shards.
    pub amphorae: FxHashSet<Uuid>,
}

impl Writes {
    /// Marks an amphora's row for rewriting.
    pub fn amphora(&mut self, id: Uuid) {
        self.amphorae.insert(id);
    }
}

/// Where flushed batches go.
pub trait Durable: Send {
    /// Everything stored, for the restore at start.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Writes `batch` behind; `done` is called with the outcome once it is durable.
    fn submit(&mut self, batch: WriteBatch, done: Option<Done>);
    /// The store's figures.
    fn status(&self) -> Option<StoreStatus>;
    /// Failed transactions so far.
    fn failures(&self) -> u64;
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
    /// Opens the store in `dir` and starts its writer thread.
    pub fn open(dir: &std::path::Path) -> Result<StoreDurable, StoreError> {
        let store = Arc::new(Store::open(dir)?);
        let writer = Writer::spawn(store.clone()).map_err(|e| StoreError::Dir(format!("store thread: {e}")))?;
        Ok(StoreDurable { store, writer: Some(writer) })
    }
}

impl Durable for StoreDurable {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.store.load()
    }

    fn submit(&mut self, batch: WriteBatch, done: Option<Done>) {
        let sender = self.writer.as_ref().and_then(Writer::sender);
        match sender {
            Some(tx) => {
                if let Err(e) = tx.send(Job { batch, done }) {
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
        })
    }

    fn failures(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.stats.failures.load(Ordering::Relaxed))
    }

    fn finish(&mut self) {
        if let Some(w) = self.writer.take() {
            w.finish();
        }
    }
}

/// Keeps every flushed batch in memory and completes at once. Clones share the batches, so a
/// deterministic test keeps one handle and restores a new control plane from
/// [`MemoryDurable::loaded`].
#[derive(Clone, Debug, Default)]
pub struct MemoryDurable {
    batches: Arc<parking_lot::Mutex<Vec<WriteBatch>>>,
}

impl MemoryDurable {
    /// What a store would hold now.
    pub fn loaded(&self) -> Loaded {
        Loaded::from_batches(self.batches.lock().iter())
    }

    /// Batches flushed so far.
    pub fn flushes(&self) -> usize {
        self.batches.lock().len()
    }
}

impl Durable for MemoryDurable {
    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(self.loaded())
    }

    fn submit(&mut self, batch: WriteBatch, done: Option<Done>) {
        self.batches.lock().push(batch);
        if let Some(done) = done {
            done(Ok(()));
        }
    }

    fn status(&self) -> Option<StoreStatus> {
        let b = self.batches.lock();
        Some(StoreStatus {
            path: "memory".into(),
            commits: b.len() as u64,
            writes: b.iter().map(WriteBatch::len).sum::<usize>() as u64,
            failures: 0,
            last_commit_ms: 0.0,
        })
    }

    fn failures(&self) -> u64 {
        0
    }

    fn finish(&mut self) {}
}
