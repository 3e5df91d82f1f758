//! The file under redb, with a test-only fault-injection hook.
//!
//! [`FaultyBackend`] forwards every call to redb's own [`FileBackend`]; when [`Faults`] says
//! so, a write, length change or sync fails with `ENOSPC` instead, exactly as a full disk
//! would, so the store's retry and reopen path runs against redb's real failure handling.
//! Nothing fails unless a test asked for it: [`Store::inject_failures`](super::Store) or the
//! environment variable [`FAULTS_ENV`] read when the store opens.
//!
//! Every sync also checks that the open file is still the one at the database's path: a
//! file removed (or replaced) while open takes writes that no later start reads, so a sync
//! then fails and no write is acknowledged into it.

use std::io;
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Test-only: when set (to a file path) as the store opens, every write to the database file
/// fails with `ENOSPC` while that path exists. Never set it in production.
pub const FAULTS_ENV: &str = "HEARTSINK_STORE_FAULTS";

/// When writes fail (test-only).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Faults {
    /// Writes still to fail.
    count: AtomicU64,
    /// Fail every write while this file exists.
    trigger: Option<PathBuf>,
}

impl Faults {
    /// Reads [`FAULTS_ENV`].
    pub fn from_env() -> Faults {
        let trigger = std::env::var_os(FAULTS_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(t) = &trigger {
            tracing::warn!(trigger = %t.display(), "{FAULTS_ENV} is set: store writes fail while the file exists (test only)");
        }
        Faults { count: AtomicU64::new(0), trigger }
    }

    /// The next `n` writes fail.
    pub fn inject(&self, n: u64) {
        self.count.store(n, Ordering::Relaxed);
    }

    /// Whether this write fails.
    fn fail(&self) -> bool {
        if self.trigger.as_ref().is_some_and(|t| t.exists()) {
            return true;
        }
        self.count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
    }

    fn check(&self) -> io::Result<()> {
        if self.fail() {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            Ok(())
        }
    }
}

/// redb's file backend with [`Faults`] in front of its writes.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    faults: Arc<Faults>,
    /// The database's path, and the (device, inode) of the file opened there.
    path: PathBuf,
    id: (u64, u64),
}

impl FaultyBackend {
    /// Wraps `file`, opened at `path`.
    pub fn new(file: std::fs::File, faults: Arc<Faults>, path: PathBuf) -> Result<FaultyBackend, redb::DatabaseError> {
        let m = file.metadata().map_err(|e| redb::DatabaseError::Storage(e.into()))?;
        Ok(FaultyBackend { id: (m.dev(), m.ino()), inner: FileBackend::new(file)?, faults, path })
    }

    /// Fails unless the open file is still the one at the path.
    fn still_linked(&self) -> io::Result<()> {
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => Ok(()),
            Ok(_) => Err(io::Error::other(format!("{} was replaced while open", self.path.display()))),
            Err(e) => Err(io::Error::new(e.kind(), format!("{} was removed while open: {e}", self.path.display()))),
        }
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.check()?;
        self.inner.sync_data()?;
        self.still_linked()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.check()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
