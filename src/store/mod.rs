//! Durable control-plane state in an embedded database ([redb]) under the data directory.
//!
//! What is kept (one table each, values are JSON documents of the owning module's types):
//!
//! | table | key | value |
//! |---|---|---|
//! | `amphorae` | 16-byte id | last known health and liveness (the control plane's `StoredAmphora`, JSON) |
//! | `failovers` | record id | failover records |
//! | `meta` | name | heartsink's own state report, settings it must remember |
//! | `services` | `type\|addr` | registry services |
//! | `pools` | pool name | load-balancing pools |
//! | `volumes` | volume id | scheduler volumes |
//!
//! Nothing on the packet path writes here. The control thread gathers changes into a
//! [`WriteBatch`] and hands it to the [`Writer`] thread, which merges every batch waiting into
//! one transaction and commits it durably (fsync). A caller that must not answer before the
//! data is on disk (an admin API write) passes a completion channel and waits for it. The
//! durability contract is in the README ("Durable state").

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam::channel::{self, Receiver, Sender};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const AMPHORAE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("amphorae");
const FAILOVERS: TableDefinition<u64, &[u8]> = TableDefinition::new("failovers");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const POOLS: TableDefinition<&str, &[u8]> = TableDefinition::new("pools");
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");

/// redb's page cache. Reads happen once, at start; writes are batched: a small cache keeps the
/// daemon's memory for the fleet (redb's default is 1 GiB).
pub const CACHE_BYTES: usize = 32 << 20;

/// The database file inside the data directory.
pub const DB_FILE: &str = "heartsink.redb";

/// Why the store failed. Every variant carries the underlying message.
#[derive(Debug)]
pub enum StoreError {
    /// The data directory could not be created or read.
    Dir(String),
    /// The database could not be opened (corrupt file, another process holds it, wrong format).
    Open(String),
    /// A read or write transaction failed (I/O error, disk full).
    Transaction(String),
    /// A stored value is not the JSON the owning module expects (written by another version).
    Decode(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Dir(m) => write!(f, "data directory: {m}"),
            StoreError::Open(m) => write!(f, "opening the database: {m}"),
            StoreError::Transaction(m) => write!(f, "database transaction: {m}"),
            StoreError::Decode(m) => write!(f, "stored value: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

fn tx_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transaction(e.to_string())
}

/// A table of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// Amphora registry and last health (key: [`Key::Id`]).
    Amphorae,
    /// Failover records (key: [`Key::Num`]).
    Failovers,
    /// heartsink's own records (key: [`Key::Name`]).
    Meta,
    /// Registry services (key: [`Key::Name`]).
    Services,
    /// Pools (key: [`Key::Name`]).
    Pools,
    /// Volumes (key: [`Key::Num`]).
    Volumes,
}

/// A key of one of the tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A 16-byte id.
    Id([u8; 16]),
    /// A number.
    Num(u64),
    /// A name.
    Name(String),
}

/// One write: a value to put, or `None` to delete.
#[derive(Clone, Debug)]
pub struct Op {
    /// Table.
    pub table: Table,
    /// Key.
    pub key: Key,
    /// New value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// Writes to commit together.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl WriteBatch {
    /// Puts a JSON-encoded value.
    pub fn put_json<T: serde::Serialize>(&mut self, table: Table, key: Key, value: &T) {
        // Serialising our own plain data types to JSON cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.ops.push(Op { table, key, value: Some(bytes) });
    }

    /// Deletes a key.
    pub fn delete(&mut self, table: Table, key: Key) {
        self.ops.push(Op { table, key, value: None });
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Everything in the store, as read at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Rows of each table: key and JSON value.
    pub rows: Vec<(Table, Key, Vec<u8>)>,
}

impl Loaded {
    /// What a store would hold after committing `batches` in order, without a store: the
    /// control plane's deterministic tests restore from it.
    pub fn from_batches<'a>(batches: impl IntoIterator<Item = &'a WriteBatch>) -> Loaded {
        let mut rows: Vec<(Table, Key, Vec<u8>)> = Vec::new();
        for op in batches.into_iter().flat_map(|b| &b.ops) {
            rows.retain(|(t, k, _)| !(*t == op.table && *k == op.key));
            if let Some(v) = &op.value {
                rows.push((op.table, op.key.clone(), v.clone()));
            }
        }
        Loaded { rows }
    }

    /// The rows of one table, decoded; a row that does not decode is an error naming its key.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, table: Table) -> Result<Vec<(Key, T)>, StoreError> {
        self.rows
            .iter()
            .filter(|(t, _, _)| *t == table)
            .map(|(_, k, v)| {
                serde_json::from_slice(v)
                    .map(|t| (k.clone(), t))
                    .map_err(|e| StoreError::Decode(format!("{table:?} {k:?}: {e}")))
            })
            .collect()
    }
}

/// The open database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(format!("{}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let store = Store { db, path };
        // Create the tables so that a first read finds them.
        store.commit(&WriteBatch::default())?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits `batch` in one durable transaction.
    pub fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.commit_all(std::slice::from_ref(batch))
    }

    /// Commits several batches, in order, in one durable transaction.
    pub fn commit_all(&self, batches: &[WriteBatch]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(tx_err)?;
        {
            let mut amphorae = txn.open_table(AMPHORAE).map_err(tx_err)?;
            let mut failovers = txn.open_table(FAILOVERS).map_err(tx_err)?;
            let mut meta = txn.open_table(META).map_err(tx_err)?;
            let mut services = txn.open_table(SERVICES).map_err(tx_err)?;
            let mut pools = txn.open_table(POOLS).map_err(tx_err)?;
            let mut volumes = txn.open_table(VOLUMES).map_err(tx_err)?;
            for op in batches.iter().flat_map(|b| &b.ops) {
                let r = match (op.table, &op.key, &op.value) {
                    (Table::Amphorae, Key::Id(k), Some(v)) => amphorae.insert(&k[..], &v[..]).map(drop),
                    (Table::Amphorae, Key::Id(k), None) => amphorae.remove(&k[..]).map(drop),
                    (Table::Failovers, Key::Num(k), Some(v)) => failovers.insert(k, &v[..]).map(drop),
                    (Table::Failovers, Key::Num(k), None) => failovers.remove(k).map(drop),
                    (Table::Volumes, Key::Num(k), Some(v)) => volumes.insert(k, &v[..]).map(drop),
                    (Table::Volumes, Key::Num(k), None) => volumes.remove(k).map(drop),
                    (Table::Meta, Key::Name(k), Some(v)) => meta.insert(k.as_str(), &v[..]).map(drop),
                    (Table::Meta, Key::Name(k), None) => meta.remove(k.as_str()).map(drop),
                    (Table::Services, Key::Name(k), Some(v)) => services.insert(k.as_str(), &v[..]).map(drop),
                    (Table::Services, Key::Name(k), None) => services.remove(k.as_str()).map(drop),
                    (Table::Pools, Key::Name(k), Some(v)) => pools.insert(k.as_str(), &v[..]).map(drop),
                    (Table::Pools, Key::Name(k), None) => pools.remove(k.as_str()).map(drop),
                    (t, k, _) => return Err(StoreError::Transaction(format!("key {k:?} does not fit table {t:?}"))),
                };
                r.map_err(tx_err)?;
            }
        }
        txn.commit().map_err(tx_err)
    }

    /// Reads every table.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(tx_err)?;
        let mut rows = Vec::new();
        for entry in txn.open_table(AMPHORAE).map_err(tx_err)?.iter().map_err(tx_err)? {
            let (k, v) = entry.map_err(tx_err)?;
            let id: [u8; 16] = k
                .value()
                .try_into()
                .map_err(|_| StoreError::Decode(format!("amphora key of {} bytes", k.value().len())))?;
            rows.push((Table::Amphorae, Key::Id(id), v.value().to_vec()));
        }
        for (def, table) in [(FAILOVERS, Table::Failovers), (VOLUMES, Table::Volumes)] {
            for entry in txn.open_table(def).map_err(tx_err)?.iter().map_err(tx_err)? {
                let (k, v) = entry.map_err(tx_err)?;
                rows.push((table, Key::Num(k.value()), v.value().to_vec()));
            }
        }
        for (def, table) in [(META, Table::Meta), (SERVICES, Table::Services), (POOLS, Table::Pools)] {
            for entry in txn.open_table(def).map_err(tx_err)?.iter().map_err(tx_err)? {
                let (k, v) = entry.map_err(tx_err)?;
                rows.push((table, Key::Name(k.value().to_string()), v.value().to_vec()));
            }
        }
        Ok(Loaded { rows })
    }
}

/// Called by the writer thread with the outcome of the transaction that held a batch.
pub type Done = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// A batch for the writer thread, with an optional completion.
pub struct Job {
    /// What to write.
    pub batch: WriteBatch,
    /// Called with the outcome once the transaction holding the batch committed (or failed),
    /// on the writer thread: whoever waits for durability is told without a thread of its own.
    pub done: Option<Done>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("writes", &self.batch.len()).field("done", &self.done.is_some()).finish()
    }
}

/// Counters of the writer thread.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: std::sync::atomic::AtomicU64,
    /// Writes committed.
    pub writes: std::sync::atomic::AtomicU64,
    /// Transactions that failed (their batches are lost; the error is logged).
    pub failures: std::sync::atomic::AtomicU64,
    /// Duration of the latest commit, ns.
    pub last_commit_ns: std::sync::atomic::AtomicU64,
}

/// The write-behind thread: merges the batches waiting into one transaction per commit.
#[derive(Debug)]
pub struct Writer {
    tx: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    /// Its counters.
    pub stats: std::sync::Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer on `store`.
    pub fn spawn(store: std::sync::Arc<Store>) -> std::io::Result<Writer> {
        let (tx, rx) = channel::unbounded::<Job>();
        let stats = std::sync::Arc::new(WriterStats::default());
        let s = stats.clone();
        let handle = std::thread::Builder::new().name("store".into()).spawn(move || writer_loop(&store, &rx, &s))?;
        Ok(Writer { tx: Some(tx), handle: Some(handle), stats })
    }

    /// A handle to submit jobs.
    pub fn sender(&self) -> Option<Sender<Job>> {
        self.tx.clone()
    }

    /// Writes everything submitted, then stops the thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer_loop(store: &Store, rx: &Receiver<Job>, stats: &WriterStats) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let batches: Vec<WriteBatch> = jobs.iter_mut().map(|j| std::mem::take(&mut j.batch)).collect();
        let writes: usize = batches.iter().map(WriteBatch::len).sum();
        let start = std::time::Instant::now();
        let outcome = store.commit_all(&batches);
        stats.last_commit_ns.store(start.elapsed().as_nanos() as u64, Relaxed);
        match &outcome {
            Ok(()) => {
                stats.commits.fetch_add(1, Relaxed);
                stats.writes.fetch_add(writes as u64, Relaxed);
            }
            Err(e) => {
                stats.failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, writes, "store commit failed; these writes are lost");
            }
        }
        for j in jobs {
            if let Some(done) = j.done {
                done(outcome.as_ref().map(|_| ()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_reopen_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put_json(Table::Amphorae, Key::Id([7; 16]), &serde_json::json!({"a": 1}));
            b.put_json(Table::Failovers, Key::Num(3), &"x");
            b.put_json(Table::Meta, Key::Name("self".into()), &1);
            b.put_json(Table::Services, Key::Name("rawx|1.2.3.4:5".into()), &2);
            b.put_json(Table::Pools, Key::Name("p".into()), &3);
            b.put_json(Table::Volumes, Key::Num(9), &4);
            store.commit(&b).unwrap();
            let mut d = WriteBatch::default();
            d.delete(Table::Pools, Key::Name("p".into()));
            store.commit(&d).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.rows.len(), 5);
        let a: Vec<(Key, serde_json::Value)> = loaded.decode(Table::Amphorae).unwrap();
        assert_eq!(a, vec![(Key::Id([7; 16]), serde_json::json!({"a": 1}))]);
        assert!(loaded.decode::<u32>(Table::Pools).unwrap().is_empty());
        assert!(loaded.decode::<u32>(Table::Failovers).is_err(), "a string is not a u32: decode error");
    }

    #[test]
    fn mismatched_key_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        b.put_json(Table::Amphorae, Key::Num(1), &1);
        assert!(matches!(store.commit(&b), Err(StoreError::Transaction(_))));
    }

    #[test]
    fn writer_merges_and_acknowledges() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let w = Writer::spawn(store.clone()).unwrap();
        let (tx, rx) = channel::bounded(1);
        for i in 0..10u64 {
            let mut b = WriteBatch::default();
            b.put_json(Table::Volumes, Key::Num(i), &i);
            w.sender().unwrap().send(Job { batch: b, done: None }).unwrap();
        }
        let mut b = WriteBatch::default();
        b.put_json(Table::Volumes, Key::Num(99), &99);
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        w.sender().unwrap().send(Job { batch: b, done: Some(done) }).unwrap();
        rx.recv().unwrap().unwrap();
        assert_eq!(store.load().unwrap().decode::<u64>(Table::Volumes).unwrap().len(), 11);
        w.finish();
    }
}
