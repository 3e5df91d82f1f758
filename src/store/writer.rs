//! The write-behind thread and its retry queue.
//!
//! The writer merges every batch waiting into one transaction. A commit that fails (a full
//! disk, an I/O error) is not dropped: its writes stay in the [`Pending`] queue, newer batches
//! merge into it (last write per key wins), and the whole queue is committed again after a
//! backoff of [`RETRY_FIRST`] doubling to [`RETRY_MAX`], until a commit succeeds. Completions
//! ([`Done`]) are called only then, so an admin write is answered only once it is durable.
//!
//! Memory: the queue holds at most one value per key, so it never outgrows the state the
//! control plane already holds. Past [`PENDING_SPILL_BYTES`] of values, amphora rows no caller
//! waits for are dropped from the queue and only their ids kept
//! ([`WriterStats::take_spilled`]): the control plane marks them again and re-reads their rows
//! from its shards at a later flush, so nothing is lost, only re-derived.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};

use super::{Key, Store, StoreError, Table, WriteBatch};

/// Rows committed at once after which the allocator's free pages are returned to the kernel.
const TRIM_AFTER_ROWS: usize = 4096;

/// The least time between two such trims.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Called by the writer thread with the outcome of the transaction that held a batch.
pub type Done = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// First delay before a failed commit is tried again.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between two tries of a failing commit.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a stopping writer keeps trying a failing commit before giving up (logged).
pub const STOP_RETRY: Duration = Duration::from_secs(5);
/// Bytes of values waiting past which amphora rows nobody waits for are kept as ids only.
pub const PENDING_SPILL_BYTES: usize = 64 << 20;

/// A batch for the writer thread, with an optional completion.
pub struct Job {
    /// What to write.
    pub batch: WriteBatch,
    /// Called with the outcome once the transaction holding the batch committed (or the
    /// writer gave up at a stop), on the writer thread: whoever waits for durability is told
    /// without a thread of its own.
    pub done: Option<Done>,
    /// A caller waits for these rows (an admin write): they are never spilled. Rows of a job
    /// that is only notified (the control thread counting rows in flight) may be.
    pub awaited: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("writes", &self.batch.len()).field("done", &self.done.is_some()).finish()
    }
}

#[derive(Debug)]
struct Row {
    value: Option<Vec<u8>>,
    /// A caller waits for this row: it is never spilled.
    awaited: bool,
}

/// Writes not yet committed: the latest value of each key, and the completions waiting.
#[derive(Default)]
pub struct Pending {
    rows: BTreeMap<(Table, Key), Row>,
    done: Vec<Done>,
    bytes: usize,
    spill_at: usize,
    /// When the allocator was last trimmed after a large commit.
    trimmed: Option<Instant>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("rows", &self.rows.len())
            .field("bytes", &self.bytes)
            .field("waiting", &self.done.len())
            .finish()
    }
}

impl Pending {
    /// An empty queue that spills past `spill_at` bytes of values.
    pub fn new(spill_at: usize) -> Pending {
        Pending { spill_at, ..Pending::default() }
    }

    /// Merges `job` (its writes replace older ones of the same key). A batch with a key that
    /// does not fit its table is refused whole: its completion is told at once. Returns the
    /// amphora ids spilled to keep the queue under its bound.
    pub fn merge(&mut self, mut job: Job) -> Vec<[u8; 16]> {
        // Values the caller left to encode are encoded here, on the writer's thread.
        job.batch.encode();
        if !job.batch.fits() {
            let e = StoreError::Transaction("a key does not fit its table; batch refused".into());
            tracing::error!(error = %e, "store batch refused");
            if let Some(done) = job.done {
                done(Err(&e));
            }
            return Vec::new();
        }
        let awaited = job.awaited;
        for op in job.batch.ops {
            let len = op.value.as_ref().map_or(0, Vec::len);
            self.bytes += len;
            match self.rows.entry((op.table, op.key)) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let row = e.get_mut();
                    self.bytes -= row.value.as_ref().map_or(0, Vec::len);
                    row.value = op.value;
                    row.awaited |= awaited;
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(Row { value: op.value, awaited });
                }
            }
        }
        if let Some(done) = job.done {
            self.done.push(done);
        }
        if self.bytes > self.spill_at {
            self.spill()
        } else {
            Vec::new()
        }
    }

    fn spill(&mut self) -> Vec<[u8; 16]> {
        let mut ids = Vec::new();
        let mut freed = 0;
        self.rows.retain(|(table, key), row| match (table, key, &row.value) {
            (Table::Amphorae, Key::Id(id), Some(v)) if !row.awaited => {
                ids.push(*id);
                freed += v.len();
                false
            }
            _ => true,
        });
        self.bytes -= freed;
        ids
    }

    /// Rows waiting.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Bytes of values waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when nothing waits (no row, no completion).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.done.is_empty()
    }

    /// Commits everything in one transaction; on success the completions are told and the
    /// queue is empty, on failure everything stays for the next try.
    pub fn commit(&mut self, store: &Store) -> Result<usize, StoreError> {
        store.commit_ops(self.rows.iter().map(|((t, k), r)| (*t, k, r.value.as_deref())))?;
        let n = self.rows.len();
        self.rows.clear();
        self.bytes = 0;
        for done in self.done.drain(..) {
            done(Ok(()));
        }
        if n >= TRIM_AFTER_ROWS && self.trimmed.is_none_or(|t| t.elapsed() >= TRIM_EVERY) {
            // A large commit (a fleet filling up, a graceful stop) freed many row buffers:
            // hand their pages back rather than keep them resident for good (at most every
            // TRIM_EVERY: a trim walks and locks every arena in turn).
            crate::io::release_free_memory();
            self.trimmed = Some(Instant::now());
        }
        Ok(n)
    }

    /// Gives up: every completion is told `e`, the rows are dropped. Returns the rows lost.
    pub fn fail(&mut self, e: &StoreError) -> usize {
        for done in self.done.drain(..) {
            done(Err(e));
        }
        let n = self.rows.len();
        self.rows.clear();
        self.bytes = 0;
        n
    }
}

/// Counters and health of the writer thread.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Writes committed.
    pub writes: AtomicU64,
    /// Commit attempts that failed (each is retried; nothing is dropped).
    pub failures: AtomicU64,
    /// Duration of the latest commit, ns.
    pub last_commit_ns: AtomicU64,
    /// True from a failed commit until the next successful one.
    pub failing: AtomicBool,
    /// Rows waiting for a commit.
    pub pending: AtomicU64,
    /// The latest failure's message.
    error: parking_lot::Mutex<String>,
    /// Amphora ids whose rows were dropped from the queue (to re-derive).
    spilled: parking_lot::Mutex<Vec<[u8; 16]>>,
}

impl WriterStats {
    /// The error of the failing store, `None` while it writes.
    pub fn error(&self) -> Option<String> {
        self.failing.load(Relaxed).then(|| self.error.lock().clone())
    }

    /// Takes the amphora ids whose rows were spilled from the queue: mark them to be written
    /// again.
    pub fn take_spilled(&self) -> Vec<[u8; 16]> {
        std::mem::take(&mut *self.spilled.lock())
    }
}

/// The write-behind thread: merges the batches waiting into one transaction per commit and
/// retries a failed commit with backoff.
#[derive(Debug)]
pub struct Writer {
    tx: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    /// Its counters.
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer on `store`.
    pub fn spawn(store: Arc<Store>) -> std::io::Result<Writer> {
        let (tx, rx) = channel::unbounded::<Job>();
        let stats = Arc::new(WriterStats::default());
        let s = stats.clone();
        let handle = std::thread::Builder::new().name("store".into()).spawn(move || writer_loop(&store, &rx, &s))?;
        Ok(Writer { tx: Some(tx), handle: Some(handle), stats })
    }

    /// A handle to submit jobs.
    pub fn sender(&self) -> Option<Sender<Job>> {
        self.tx.clone()
    }

    /// Writes everything submitted (trying a failing store for at most [`STOP_RETRY`]), then
    /// stops the thread.
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

fn merge(pending: &mut Pending, job: Job, stats: &WriterStats) {
    let spilled = pending.merge(job);
    if !spilled.is_empty() {
        tracing::warn!(rows = spilled.len(), "store queue over its bound: amphora rows kept as ids, re-read later");
        stats.spilled.lock().extend(spilled);
    }
}

/// The store writer's nice value: below the workers, so that writing a million new amphorae
/// never takes the CPU the packet path needs (the rows wait, bounded, in memory).
const WRITER_NICE: i32 = 10;

fn writer_loop(store: &Store, rx: &Receiver<Job>, stats: &WriterStats) {
    if !crate::io::lower_thread_priority(WRITER_NICE) {
        tracing::debug!("store writer: could not lower its priority");
    }
    let mut pending = Pending::new(PENDING_SPILL_BYTES);
    // While failing: when to try again, the current delay, when the failure began.
    let mut retry: Option<(Instant, Duration, Instant)> = None;
    let mut stop_by: Option<Instant> = None;
    loop {
        if pending.is_empty() {
            if stop_by.is_some() {
                return;
            }
            match rx.recv() {
                Ok(job) => merge(&mut pending, job, stats),
                Err(_) => return,
            }
        } else if let (Some((at, _, _)), None) = (retry, stop_by) {
            // Failing: gather what comes until the next try is due.
            match rx.recv_deadline(at) {
                Ok(job) => {
                    merge(&mut pending, job, stats);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop_by = Some(Instant::now() + STOP_RETRY),
            }
        } else if let Some((at, _, _)) = retry {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        for job in rx.try_iter() {
            merge(&mut pending, job, stats);
        }
        if pending.is_empty() {
            continue;
        }
        stats.pending.store(pending.len() as u64, Relaxed);
        let start = Instant::now();
        let outcome = pending.commit(store);
        stats.last_commit_ns.store(start.elapsed().as_nanos() as u64, Relaxed);
        match outcome {
            Ok(writes) => {
                stats.commits.fetch_add(1, Relaxed);
                stats.writes.fetch_add(writes as u64, Relaxed);
                stats.pending.store(0, Relaxed);
                if let Some((_, _, since)) = retry.take() {
                    stats.failing.store(false, Relaxed);
                    tracing::info!(
                        failed_for_s = since.elapsed().as_secs_f64(),
                        writes,
                        "store writes recovered; everything queued is written"
                    );
                }
            }
            Err(e) => {
                stats.failures.fetch_add(1, Relaxed);
                *stats.error.lock() = e.to_string();
                let now = Instant::now();
                retry = Some(match retry {
                    None => {
                        stats.failing.store(true, Relaxed);
                        tracing::error!(
                            error = %e,
                            file = %store.path().display(),
                            rows = pending.len(),
                            "store writes are failing; retrying with backoff, admin writes wait until durable"
                        );
                        (now + RETRY_FIRST, RETRY_FIRST, now)
                    }
                    Some((_, delay, since)) => {
                        tracing::debug!(error = %e, "store commit failed again");
                        let delay = (delay * 2).min(RETRY_MAX);
                        (now + delay, delay, since)
                    }
                });
                if stop_by.is_some_and(|by| now >= by) {
                    let lost = pending.fail(&e);
                    tracing::error!(error = %e, rows = lost, "store still failing at stop; these writes are not saved");
                    return;
                }
                if let (Some(by), Some((at, delay, since))) = (stop_by, retry) {
                    retry = Some((at.min(by), delay, since));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(table: Table, key: Key, v: u64, done: Option<Done>) -> Job {
        let mut batch = WriteBatch::default();
        batch.put_json(table, key, &v);
        let awaited = done.is_some();
        Job { batch, done, awaited }
    }

    fn counter() -> (Arc<AtomicU64>, impl Fn() -> Done) {
        let n = Arc::new(AtomicU64::new(0));
        let m = n.clone();
        (n, move || -> Done {
            let m = m.clone();
            Box::new(move |r| {
                if r.is_ok() {
                    m.fetch_add(1, Relaxed);
                }
            })
        })
    }

    #[test]
    fn pending_keeps_the_last_write_per_key() {
        let mut p = Pending::new(usize::MAX);
        for v in 0..100 {
            p.merge(job(Table::Volumes, Key::Num(v % 10), v, None));
        }
        assert_eq!(p.len(), 10);
        let mut d = WriteBatch::default();
        d.delete(Table::Volumes, Key::Num(3));
        p.merge(Job { batch: d, done: None, awaited: false });
        assert_eq!(p.len(), 10, "a delete replaces the put");
        assert_eq!(p.bytes(), 9 * 2);
    }

    #[test]
    fn pending_refuses_a_misfit_batch_whole() {
        let mut p = Pending::new(usize::MAX);
        let told = Arc::new(AtomicBool::new(false));
        let t = told.clone();
        let mut batch = WriteBatch::default();
        batch.put_json(Table::Volumes, Key::Num(1), &1);
        batch.put_json(Table::Amphorae, Key::Num(1), &1);
        p.merge(Job { batch, done: Some(Box::new(move |r| t.store(r.is_err(), Relaxed))), awaited: true });
        assert!(told.load(Relaxed));
        assert!(p.is_empty());
    }

    #[test]
    fn pending_spills_unawaited_amphora_rows_past_its_bound() {
        let mut p = Pending::new(100);
        let (_, done) = counter();
        p.merge(job(Table::Amphorae, Key::Id([1; 16]), 1_000_000_000, Some(done())));
        p.merge(job(Table::Volumes, Key::Num(1), 1_000_000_000, None));
        let mut spilled = Vec::new();
        for i in 2..40u8 {
            spilled.extend(p.merge(job(Table::Amphorae, Key::Id([i; 16]), 1_000_000_000, None)));
        }
        assert!(!spilled.is_empty());
        assert!(p.bytes() <= 100 + 10, "{}", p.bytes());
        assert!(!spilled.contains(&[1; 16]), "a row a caller waits for stays");
        assert!(p.rows.contains_key(&(Table::Amphorae, Key::Id([1; 16]))));
        assert!(p.rows.contains_key(&(Table::Volumes, Key::Num(1))), "only amphora rows spill");
    }

    #[test]
    fn failed_commit_keeps_everything_and_the_next_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut p = Pending::new(usize::MAX);
        let (n, done) = counter();
        p.merge(job(Table::Volumes, Key::Num(1), 1, Some(done())));
        store.inject_failures(1);
        assert!(p.commit(&store).is_err());
        assert_eq!(n.load(Relaxed), 0, "not acknowledged while failing");
        p.merge(job(Table::Volumes, Key::Num(2), 2, Some(done())));
        assert_eq!(p.commit(&store).unwrap(), 2);
        assert_eq!(n.load(Relaxed), 2);
        assert_eq!(store.load().unwrap().decode::<u64>(Table::Volumes).unwrap().len(), 2);
    }

    #[test]
    fn writer_retries_until_the_store_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // Three failed tries: 100 + 200 + 400 ms of backoff.
        store.inject_failures(3);
        let w = Writer::spawn(store.clone()).unwrap();
        let (tx, rx) = channel::bounded(4);
        let send = |v: u64| {
            let tx = tx.clone();
            let done: Done = Box::new(move |r| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            });
            w.sender().unwrap().send(job(Table::Volumes, Key::Num(v), v, Some(done))).unwrap();
        };
        send(1);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "no answer while failing");
        let deadline = Instant::now() + Duration::from_secs(2);
        while w.stats.error().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            w.stats.error().is_some_and(|e| e.contains("No space left") || e.contains("I/O")),
            "{:?}",
            w.stats.error()
        );
        send(2);
        rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        // The completions run inside the commit, just before the writer clears its error.
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.stats.error().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(w.stats.error().is_none());
        assert_eq!(w.stats.failures.load(Relaxed), 3);
        assert_eq!(store.load().unwrap().decode::<u64>(Table::Volumes).unwrap().len(), 2);
        w.finish();
    }
}
