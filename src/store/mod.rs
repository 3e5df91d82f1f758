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
//!
//! A failed commit is kept and retried with backoff ([`Writer`], [`Pending`]), reopening the
//! database first (redb refuses every transaction of a handle after its first I/O error). An
//! unreadable or corrupt file is refused at open ([`StoreError::Corrupt`]) unless the caller
//! asks to start fresh ([`Store::open_with`]).

#![forbid(unsafe_code)]

mod backend;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use backend::FAULTS_ENV;
use backend::{Faults, FaultyBackend};
pub use writer::{Done, Job, Pending, Writer, WriterStats, PENDING_SPILL_BYTES, RETRY_FIRST, RETRY_MAX, STOP_RETRY};

const AMPHORAE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("amphorae");
const FAILOVERS: TableDefinition<u64, &[u8]> = TableDefinition::new("failovers");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const POOLS: TableDefinition<&str, &[u8]> = TableDefinition::new("pools");
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");

/// redb's page cache. Reads happen once, at start; writes are batched: a small cache keeps the
/// daemon's memory for the fleet (redb's default is 1 GiB).
pub const CACHE_BYTES: usize = 32 << 20;

/// A visitor of stored rows (key, JSON value); an error stops the walk and is returned.
pub type RowVisitor<'a> = dyn FnMut(Key, &[u8]) -> Result<(), StoreError> + 'a;

/// The database file inside the data directory.
pub const DB_FILE: &str = "heartsink.redb";

/// Why the store failed. Every variant carries the underlying message.
#[derive(Debug)]
pub enum StoreError {
    /// The data directory could not be created or read.
    Dir(String),
    /// The database could not be opened (another process holds it, no room to reopen it).
    Open(String),
    /// The database file exists but is unreadable or corrupt: refused at start.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
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
            StoreError::Corrupt { path, reason } => write!(
                f,
                "the database {} is unreadable or corrupt ({reason}); restore it from a backup or move it \
                 away, or start with --fresh-store to move it aside and start with an empty store",
                path.display()
            ),
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// A value encoded by whoever takes the batch ([`WriteBatch::encode`]): the store's writer
/// thread, so that a caller with many rows to write (the control thread) does not serialize
/// them itself.
#[derive(Clone)]
pub struct Deferred(pub std::sync::Arc<dyn Fn() -> Vec<u8> + Send + Sync>);

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

/// Writes to commit together.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
    /// Puts whose values are encoded later, applied after `ops`, in order.
    pub deferred: Vec<(Table, Key, Deferred)>,
}

impl WriteBatch {
    /// Puts a JSON-encoded value.
    pub fn put_json<T: serde::Serialize>(&mut self, table: Table, key: Key, value: &T) {
        // Serialising our own plain data types to JSON cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.ops.push(Op { table, key, value: Some(bytes) });
    }

    /// Puts `value` as it is (already JSON, e.g. read back from etcd).
    pub fn put_raw(&mut self, table: Table, key: Key, value: Vec<u8>) {
        self.ops.push(Op { table, key, value: Some(value) });
    }

    /// Puts `value`, JSON-encoded when the batch is encoded ([`WriteBatch::encode`]), not now.
    pub fn put_json_deferred<T: serde::Serialize + Send + Sync + 'static>(&mut self, table: Table, key: Key, value: T) {
        let encode = move || serde_json::to_vec(&value).unwrap_or_default();
        self.deferred.push((table, key, Deferred(std::sync::Arc::new(encode))));
    }

    /// Encodes the deferred puts into `ops` (after the ops already there).
    pub fn encode(&mut self) {
        for (table, key, value) in self.deferred.drain(..) {
            self.ops.push(Op { table, key, value: Some((value.0)()) });
        }
    }

    /// Deletes a key.
    pub fn delete(&mut self, table: Table, key: Key) {
        self.ops.push(Op { table, key, value: None });
    }

    /// Whether every key fits its table (a batch that does not is a bug, refused whole).
    pub fn fits(&self) -> bool {
        let keys = self.ops.iter().map(|op| (op.table, &op.key)).chain(self.deferred.iter().map(|(t, k, _)| (*t, k)));
        keys.into_iter().all(|(table, key)| {
            matches!(
                (table, key),
                (Table::Amphorae, Key::Id(_))
                    | (Table::Failovers | Table::Volumes, Key::Num(_))
                    | (Table::Meta | Table::Services | Table::Pools, Key::Name(_))
            )
        })
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len() + self.deferred.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.deferred.is_empty()
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
        let encoded: Vec<WriteBatch> = batches
            .into_iter()
            .map(|b| {
                let mut b = b.clone();
                b.encode();
                b
            })
            .collect();
        for op in encoded.iter().flat_map(|b| &b.ops) {
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
///
/// redb latches the first I/O error of a [`Database`]: every later transaction fails with
/// "Previous I/O error occurred. Please close and re-open the database" (`PreviousIo`), even
/// once the disk has room again. So a failed commit drops the database, and the next attempt
/// opens the file again (redb repairs it from its last durable commit) before committing.
#[derive(Debug)]
pub struct Store {
    /// `None` after a failed commit, until the next attempt reopens the file.
    db: parking_lot::Mutex<Option<Database>>,
    path: PathBuf,
    faults: Arc<Faults>,
}

/// Why the database file could not be opened.
#[derive(Debug)]
struct OpenFailure {
    reason: String,
    /// The file itself is bad (refused, `--fresh-store` may move it aside); otherwise the
    /// cause is around it (no room, permissions, a lock): fix that, the file is kept.
    corrupt: bool,
}

impl std::fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Errors of the environment, not of the file's content.
fn environmental(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull
            | K::PermissionDenied
            | K::ReadOnlyFilesystem
            | K::QuotaExceeded
            | K::OutOfMemory
            | K::WouldBlock
            | K::Interrupted
            | K::ResourceBusy
            | K::NotFound
    ) || e.raw_os_error() == Some(libc::EIO)
}

fn db_failure(e: redb::DatabaseError) -> OpenFailure {
    use redb::{DatabaseError as D, StorageError as S};
    let corrupt = match &e {
        D::Storage(S::Io(io)) => !environmental(io),
        D::DatabaseAlreadyOpen | D::Storage(S::PreviousIo | S::LockPoisoned(_)) => false,
        _ => true,
    };
    OpenFailure { reason: e.to_string(), corrupt }
}

fn io_failure(e: std::io::Error) -> OpenFailure {
    OpenFailure { corrupt: !environmental(&e), reason: e.to_string() }
}

fn open_file(path: &Path, faults: &Arc<Faults>, check: bool) -> Result<Database, OpenFailure> {
    open_file_with(path, faults, check, true)
}

/// As [`open_file`]; without `create`, a missing file is an error (a reopen must never start
/// an empty database in place of one removed while running).
fn open_file_with(path: &Path, faults: &Arc<Faults>, check: bool, create: bool) -> Result<Database, OpenFailure> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(io_failure)?;
    let backend = FaultyBackend::new(file, faults.clone(), path.to_path_buf()).map_err(db_failure)?;
    // redb may panic on a file altered outside it: a panic is a corrupt file, never a crash.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(check)
            .create_with_backend(backend)
            .map_err(db_failure)?;
        if check {
            // Read every row once (nothing kept): what the restore will read must be readable.
            each_amphora_db(&db, &mut |_, _| Ok(()))
                .and_then(|()| load_db(&db, false))
                .map_err(|e| OpenFailure { reason: e.to_string(), corrupt: true })?;
        }
        Ok(db)
    }));
    match opened {
        Ok(r) => r,
        Err(panic) => {
            Err(OpenFailure { reason: format!("redb failed reading it: {}", panic_message(&*panic)), corrupt: true })
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Where `--fresh-store` moves an unreadable database: `<file>.corrupt-<unix time>`.
pub fn aside_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{secs}"));
    PathBuf::from(name)
}

impl Store {
    /// Opens (creating if missing) the database in `dir`; an unreadable or corrupt file is
    /// refused ([`StoreError::Corrupt`]).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, false)
    }

    /// As [`Store::open`]; with `fresh`, an unreadable or corrupt file is moved aside to
    /// [`aside_path`] and the store starts empty (logged). A missing file is a first start
    /// either way; a readable one is kept either way.
    pub fn open_with(dir: &Path, fresh: bool) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(format!("{}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let faults = Arc::new(Faults::from_env());
        let checked = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => open_file(&path, &faults, false),
            Err(e) => Err(io_failure(e)),
            Ok(m) if !m.is_file() => Err(OpenFailure { reason: "not a regular file".into(), corrupt: false }),
            Ok(m) if m.len() == 0 => {
                Err(OpenFailure { reason: "the file is empty: zero length".into(), corrupt: true })
            }
            Ok(_) => open_file(&path, &faults, true),
        };
        let db = match checked {
            Ok(db) => db,
            Err(e) if !e.corrupt => {
                return Err(StoreError::Open(format!(
                    "{}: {e}; fix the cause (disk space, permissions, another process) and start again",
                    path.display()
                )))
            }
            Err(OpenFailure { reason, .. }) if fresh => {
                let aside = aside_path(&path);
                std::fs::rename(&path, &aside).map_err(|e| {
                    StoreError::Open(format!("cannot move {} aside to {}: {e}", path.display(), aside.display()))
                })?;
                tracing::warn!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    reason = %reason,
                    "--fresh-store: the database was unreadable; moved it aside and starting with an empty store"
                );
                open_file(&path, &faults, false).map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?
            }
            Err(OpenFailure { reason, .. }) => return Err(StoreError::Corrupt { path, reason }),
        };
        let store = Store { db: parking_lot::Mutex::new(Some(db)), path, faults };
        // Create the tables so that a first read finds them.
        store.commit(&WriteBatch::default())?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Test-only: the next `n` writes to the file fail with `ENOSPC` (each failed commit or
    /// reopen uses one).
    #[doc(hidden)]
    pub fn inject_failures(&self, n: u64) {
        self.faults.inject(n);
    }

    /// Commits `batch` in one durable transaction.
    pub fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.commit_all(std::slice::from_ref(batch))
    }

    /// Commits several batches, in order, in one durable transaction.
    pub fn commit_all(&self, batches: &[WriteBatch]) -> Result<(), StoreError> {
        let encoded: Vec<(Table, &Key, Vec<u8>)> =
            batches.iter().flat_map(|b| &b.deferred).map(|(t, k, v)| (*t, k, (v.0)())).collect();
        let mut deferred = encoded.iter();
        // Each batch's ops, then its deferred puts, batch after batch.
        let ops = batches.iter().flat_map(|b| {
            let now: Vec<_> =
                deferred.by_ref().take(b.deferred.len()).map(|(t, k, v)| (*t, *k, Some(v.as_slice()))).collect();
            b.ops.iter().map(|op| (op.table, &op.key, op.value.as_deref())).chain(now)
        });
        self.commit_ops(ops)
    }

    /// Commits `ops` (table, key, value or `None` to delete) in one durable transaction. After
    /// a failure the database is dropped and the next call opens the file again.
    pub fn commit_ops<'a>(
        &self,
        ops: impl Iterator<Item = (Table, &'a Key, Option<&'a [u8]>)>,
    ) -> Result<(), StoreError> {
        let mut guard = self.db.lock();
        if guard.is_none() {
            let db = open_file_with(&self.path, &self.faults, false, false).map_err(|e| {
                StoreError::Open(format!(
                    "reopening {}: {e}; if it was removed while running, restore it (or restart heartsink)",
                    self.path.display()
                ))
            })?;
            tracing::info!(file = %self.path.display(), "store reopened after a failed write");
            *guard = Some(db);
        }
        let Some(db) = guard.as_ref() else { return Err(StoreError::Open("not open".into())) };
        let r = commit_db(db, ops);
        if r.is_err() {
            // redb refuses every transaction after an I/O error until the file is reopened.
            *guard = None;
        }
        r
    }

    /// Reads every table.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let guard = self.db.lock();
        let db = guard.as_ref().ok_or_else(|| StoreError::Open("not open after a failed write".into()))?;
        load_db(db, true)
    }

    /// Everything stored but the amphora rows (read with [`Store::each_amphora`]).
    pub fn load_small(&self) -> Result<Loaded, StoreError> {
        let guard = self.db.lock();
        let db = guard.as_ref().ok_or_else(|| StoreError::Open("not open after a failed write".into()))?;
        load_db(db, false)
    }

    /// Calls `f` with each stored amphora row, in key order, straight from one read
    /// transaction: no copy of the table is held.
    pub fn each_amphora(&self, f: &mut RowVisitor<'_>) -> Result<(), StoreError> {
        let guard = self.db.lock();
        let db = guard.as_ref().ok_or_else(|| StoreError::Open("not open after a failed write".into()))?;
        each_amphora_db(db, f)
    }
}

fn commit_db<'a>(
    db: &Database,
    ops: impl Iterator<Item = (Table, &'a Key, Option<&'a [u8]>)>,
) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(tx_err)?;
    {
        let mut amphorae = txn.open_table(AMPHORAE).map_err(tx_err)?;
        let mut failovers = txn.open_table(FAILOVERS).map_err(tx_err)?;
        let mut meta = txn.open_table(META).map_err(tx_err)?;
        let mut services = txn.open_table(SERVICES).map_err(tx_err)?;
        let mut pools = txn.open_table(POOLS).map_err(tx_err)?;
        let mut volumes = txn.open_table(VOLUMES).map_err(tx_err)?;
        for (table, key, value) in ops {
            let r = match (table, key, value) {
                (Table::Amphorae, Key::Id(k), Some(v)) => amphorae.insert(&k[..], v).map(drop),
                (Table::Amphorae, Key::Id(k), None) => amphorae.remove(&k[..]).map(drop),
                (Table::Failovers, Key::Num(k), Some(v)) => failovers.insert(k, v).map(drop),
                (Table::Failovers, Key::Num(k), None) => failovers.remove(k).map(drop),
                (Table::Volumes, Key::Num(k), Some(v)) => volumes.insert(k, v).map(drop),
                (Table::Volumes, Key::Num(k), None) => volumes.remove(k).map(drop),
                (Table::Meta, Key::Name(k), Some(v)) => meta.insert(k.as_str(), v).map(drop),
                (Table::Meta, Key::Name(k), None) => meta.remove(k.as_str()).map(drop),
                (Table::Services, Key::Name(k), Some(v)) => services.insert(k.as_str(), v).map(drop),
                (Table::Services, Key::Name(k), None) => services.remove(k.as_str()).map(drop),
                (Table::Pools, Key::Name(k), Some(v)) => pools.insert(k.as_str(), v).map(drop),
                (Table::Pools, Key::Name(k), None) => pools.remove(k.as_str()).map(drop),
                (t, k, _) => return Err(StoreError::Transaction(format!("key {k:?} does not fit table {t:?}"))),
            };
            r.map_err(tx_err)?;
        }
    }
    txn.commit().map_err(tx_err)
}

fn each_amphora_db(db: &Database, f: &mut RowVisitor<'_>) -> Result<(), StoreError> {
    let txn = db.begin_read().map_err(tx_err)?;
    for entry in txn.open_table(AMPHORAE).map_err(tx_err)?.iter().map_err(tx_err)? {
        let (k, v) = entry.map_err(tx_err)?;
        let id: [u8; 16] = k
            .value()
            .try_into()
            .map_err(|_| StoreError::Decode(format!("amphora key of {} bytes", k.value().len())))?;
        f(Key::Id(id), v.value())?;
    }
    Ok(())
}

fn load_db(db: &Database, amphorae: bool) -> Result<Loaded, StoreError> {
    let mut rows = Vec::new();
    if amphorae {
        each_amphora_db(db, &mut |k, v| {
            rows.push((Table::Amphorae, k, v.to_vec()));
            Ok(())
        })?;
    }
    let txn = db.begin_read().map_err(tx_err)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel;

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
            w.sender().unwrap().send(Job { batch: b, done: None, awaited: false }).unwrap();
        }
        let mut b = WriteBatch::default();
        b.put_json(Table::Volumes, Key::Num(99), &99);
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        w.sender().unwrap().send(Job { batch: b, done: Some(done), awaited: true }).unwrap();
        rx.recv().unwrap().unwrap();
        assert_eq!(store.load().unwrap().decode::<u64>(Table::Volumes).unwrap().len(), 11);
        w.finish();
    }
}

#[cfg(test)]
mod fault_tests {
    use super::*;

    fn volume(v: u64) -> WriteBatch {
        let mut b = WriteBatch::default();
        b.put_json(Table::Volumes, Key::Num(v), &v);
        b
    }

    /// The root cause of a store stuck after `ENOSPC`: redb latches the first I/O error and
    /// refuses every later transaction of that `Database`, room or not.
    #[test]
    fn redb_stays_broken_after_an_io_error_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let db = open_file(&dir.path().join(DB_FILE), &faults, false).unwrap();
        let b = volume(1);
        let ops = || b.ops.iter().map(|op| (op.table, &op.key, op.value.as_deref()));
        commit_db(&db, ops()).unwrap();
        faults.inject(1);
        assert!(commit_db(&db, ops()).is_err());
        let again = commit_db(&db, ops()).unwrap_err().to_string();
        assert!(again.contains("Previous I/O error"), "{again}");
        drop(db);
        let db = open_file(&dir.path().join(DB_FILE), &faults, false).unwrap();
        commit_db(&db, ops()).unwrap();
    }

    #[test]
    fn the_store_reopens_after_a_failed_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.commit(&volume(1)).unwrap();
        store.inject_failures(1);
        assert!(store.commit(&volume(2)).is_err());
        store.commit(&volume(3)).unwrap();
        let got: Vec<u64> =
            store.load().unwrap().decode::<u64>(Table::Volumes).unwrap().into_iter().map(|r| r.1).collect();
        assert_eq!(got, vec![1, 3], "the failed commit left nothing behind");
    }

    /// A database file removed or replaced while open takes writes no later start reads: no
    /// commit may succeed into it, and a reopen must not start an empty file in its place.
    #[test]
    fn a_database_file_removed_or_replaced_while_open_fails_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.commit(&volume(1)).unwrap();
        std::fs::remove_file(store.path()).unwrap();
        let e = store.commit(&volume(2)).unwrap_err().to_string();
        assert!(e.contains("removed while open"), "{e}");
        let e = store.commit(&volume(3)).unwrap_err().to_string();
        assert!(e.contains("reopening") && e.contains("restore it"), "{e}");
        assert!(!store.path().exists(), "no empty database created in its place");

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.commit(&volume(1)).unwrap();
        let other = dir.path().join("other");
        std::fs::copy(store.path(), &other).unwrap();
        std::fs::rename(&other, store.path()).unwrap();
        let e = store.commit(&volume(2)).unwrap_err().to_string();
        assert!(e.contains("replaced while open"), "{e}");
        // The reopen takes the file now at the path, and writes go on into it.
        store.commit(&volume(3)).unwrap();
        let got: Vec<u64> =
            store.load().unwrap().decode::<u64>(Table::Volumes).unwrap().into_iter().map(|r| r.1).collect();
        assert_eq!(got, vec![1, 3]);
    }

    fn real_db(dir: &Path) -> Vec<u8> {
        {
            let store = Store::open(dir).unwrap();
            // Enough rows that the middle of the file holds data.
            for v in 0..300u64 {
                let mut b = WriteBatch::default();
                for i in 0..10 {
                    b.put_json(Table::Meta, Key::Name(format!("row-{v}-{i}")), &"x".repeat(400));
                }
                b.put_json(Table::Volumes, Key::Num(v), &v);
                store.commit(&b).unwrap();
            }
        }
        std::fs::read(dir.join(DB_FILE)).unwrap()
    }

    #[test]
    fn corrupt_files_are_refused_and_fresh_moves_them_aside() {
        let dir = tempfile::tempdir().unwrap();
        let good = real_db(dir.path());
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        for b in &mut flipped[mid - 2048..mid + 2048] {
            *b ^= 0x5a;
        }
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("zero-length", Vec::new()),
            ("random", (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
            ("truncated", good[..good.len() / 3].to_vec()),
            ("flipped", flipped),
        ];
        for (name, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join(DB_FILE);
            std::fs::write(&file, &bytes).unwrap();
            let e = Store::open(dir.path()).expect_err(name);
            assert!(matches!(e, StoreError::Corrupt { .. }), "{name}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&file.display().to_string()) && msg.contains("--fresh-store"), "{name}: {msg}");
            assert_eq!(std::fs::read(&file).unwrap(), bytes, "{name}: refused without touching the file");
            let store = Store::open_with(dir.path(), true).unwrap();
            assert!(store.load().unwrap().rows.is_empty(), "{name}: fresh store is empty");
            let aside: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("heartsink.redb.corrupt-"))
                .collect();
            assert_eq!(aside.len(), 1, "{name}");
            assert_eq!(std::fs::read(aside[0].path()).unwrap(), bytes, "{name}: kept aside as it was");
        }
    }

    #[test]
    fn a_file_held_by_another_store_is_not_called_corrupt_nor_moved() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::open(dir.path()).unwrap();
        let e = Store::open_with(dir.path(), true).unwrap_err();
        assert!(matches!(e, StoreError::Open(_)), "{e}");
        assert!(e.to_string().contains("fix the cause"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing moved aside");
    }

    #[test]
    fn a_good_file_is_kept_with_fresh_and_a_missing_one_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        real_db(dir.path());
        let store = Store::open_with(dir.path(), true).unwrap();
        assert_eq!(store.load().unwrap().rows.len(), 3300);
        let empty = tempfile::tempdir().unwrap();
        assert!(Store::open(empty.path()).unwrap().load().unwrap().rows.is_empty());
    }
}
