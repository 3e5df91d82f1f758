//! The leader lease: only the holder runs the scheduler's executor (reference §4.6).
//!
//! [`Lease`] is what the control thread calls: [`campaign`](Lease::campaign) once per tick
//! (it never blocks), [`is_held`](Lease::is_held) before acting, [`release`](Lease::release) on
//! shutdown. Two implementations:
//!
//! * [`LocalLease`], for the embedded single-node store: an exclusive lock on
//!   `<data_dir>/leader.lock`, so two daemons started on one data directory cannot both lead.
//!   Held for as long as the lock is.
//! * [`KeptLease`], the keep-alive rules for a distributed store, over a [`LeaseBackend`]. An etcd
//!   v3 backend would: `try_acquire` = grant a lease of `lease_ttl`, put
//!   `/heartsink/leader/<lease id>` with it, and hold iff that key has the lowest create revision
//!   under the prefix (campaign by revision-ordered key; a follower's key lives on its own
//!   lease, so it never expires under a waiting follower — python-etcd #181/#267 — and a lost
//!   campaign revokes its lease, leaving no stray key — #228); `keep_alive` = one
//!   `LeaseKeepAlive`; `resign` = revoke. No watches are involved, so an outdated or compacted
//!   watch index cannot loop (#254).
//!
//! [`KeptLease`] semantics: a keep-alive every `refresh_ttl`; the lease is lost at the first
//! failed keep-alive, or once `lease_ttl` has passed since the last successful one (measured
//! from when the keep-alive was *sent*, so the local view expires no later than the store's).
//! On loss the control thread's next tick passes `lease_held = false` and the executor resets;
//! on gain it rescans everything.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const SEC: u64 = 1_000_000_000;

/// What a [`Lease::campaign`] call found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// This call won the lease.
    Acquired,
    /// Still held (kept alive if it was due).
    Held,
    /// This call found the lease lost (failed keep-alive or expired).
    Lost,
    /// Someone else holds it, or the campaign failed; try again next call.
    Follower,
}

impl LeaseState {
    /// True for [`Acquired`](LeaseState::Acquired) and [`Held`](LeaseState::Held).
    pub fn is_leader(self) -> bool {
        matches!(self, LeaseState::Acquired | LeaseState::Held)
    }
}

/// A leader lease, driven by the control thread with plain ns timestamps.
pub trait Lease {
    /// Campaigns when not holding, keeps alive when holding and due. Never blocks on a
    /// contender.
    fn campaign(&mut self, now_ns: u64) -> LeaseState;
    /// True while the lease is held at `now_ns` (no I/O).
    fn is_held(&self, now_ns: u64) -> bool;
    /// Gives the lease up (on shutdown); a later `campaign` may take it again.
    fn release(&mut self);
}

/// Lease timings after the reference's clamping rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// Without a successful keep-alive for this long, the lease is lost.
    pub lease_ttl_ns: u64,
    /// Keep-alive period.
    pub refresh_ttl_ns: u64,
}

impl LeaseTimings {
    /// From configured seconds: `lease_ttl = max(lease_ttl, 10)`, `refresh_ttl =
    /// max(refresh_ttl, 6)`, and when `refresh_ttl >= lease_ttl`, `refresh_ttl = 2 * lease_ttl / 3`
    /// (integer seconds).
    pub fn from_secs(lease_ttl_s: u64, refresh_ttl_s: u64) -> LeaseTimings {
        let lease = lease_ttl_s.max(10);
        let mut refresh = refresh_ttl_s.max(6);
        if refresh >= lease {
            refresh = lease.saturating_mul(2) / 3;
        }
        LeaseTimings { lease_ttl_ns: lease.saturating_mul(SEC), refresh_ttl_ns: refresh.saturating_mul(SEC) }
    }
}

impl Default for LeaseTimings {
    /// The sample configuration: 60 s and 40 s.
    fn default() -> LeaseTimings {
        LeaseTimings::from_secs(60, 40)
    }
}

/// A distributed store's lease primitives, for [`KeptLease`]. See the module docs for an etcd
/// mapping.
pub trait LeaseBackend {
    /// The store's error, shown in [`KeptLease::last_error`].
    type Error: fmt::Display;
    /// One non-blocking campaign with a lease of `ttl_ns`: `Ok(true)` when this process now
    /// holds it. A lost campaign must leave nothing behind that outlives its TTL.
    fn try_acquire(&mut self, now_ns: u64, ttl_ns: u64) -> Result<bool, Self::Error>;
    /// Extends the held lease by its TTL.
    fn keep_alive(&mut self, now_ns: u64) -> Result<(), Self::Error>;
    /// Gives the lease up, best effort (the TTL cleans up otherwise).
    fn resign(&mut self);
}

/// The keep-alive rules over a [`LeaseBackend`].
#[derive(Debug)]
pub struct KeptLease<B> {
    backend: B,
    timings: LeaseTimings,
    /// When the last successful acquire or keep-alive was sent; `None` when not holding.
    last_ok: Option<u64>,
    last_error: Option<String>,
}

impl<B: LeaseBackend> KeptLease<B> {
    /// Not holding yet.
    pub fn new(backend: B, timings: LeaseTimings) -> KeptLease<B> {
        KeptLease { backend, timings, last_ok: None, last_error: None }
    }

    /// The last error from the backend, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn lose(&mut self) -> LeaseState {
        self.last_ok = None;
        self.backend.resign();
        LeaseState::Lost
    }
}

impl<B: LeaseBackend> Lease for KeptLease<B> {
    fn campaign(&mut self, now_ns: u64) -> LeaseState {
        if let Some(ok) = self.last_ok {
            if !self.is_held(now_ns) {
                return self.lose();
            }
            if now_ns.saturating_sub(ok) < self.timings.refresh_ttl_ns {
                return LeaseState::Held;
            }
            return match self.backend.keep_alive(now_ns) {
                Ok(()) => {
                    self.last_ok = Some(now_ns);
                    LeaseState::Held
                }
                Err(e) => {
                    self.last_error = Some(e.to_string());
                    self.lose()
                }
            };
        }
        match self.backend.try_acquire(now_ns, self.timings.lease_ttl_ns) {
            Ok(true) => {
                self.last_ok = Some(now_ns);
                LeaseState::Acquired
            }
            Ok(false) => LeaseState::Follower,
            Err(e) => {
                self.last_error = Some(e.to_string());
                LeaseState::Follower
            }
        }
    }

    fn is_held(&self, now_ns: u64) -> bool {
        self.last_ok.is_some_and(|ok| now_ns.saturating_sub(ok) < self.timings.lease_ttl_ns)
    }

    fn release(&mut self) {
        if self.last_ok.take().is_some() {
            self.backend.resign();
        }
    }
}

/// Why [`LocalLease::open`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LeaseError {
    /// Another process (or another `LocalLease` in this one) holds the lock: another daemon
    /// runs on this data directory. Stop it, or give this one another directory.
    HeldElsewhere {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid as written in the file, when readable.
        pid: Option<u32>,
    },
    /// The lock file cannot be created, opened, locked or written (permissions, a missing
    /// directory, a filesystem without locks).
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::HeldElsewhere { path, pid: Some(pid) } => {
                write!(f, "{} is locked by another heartsink (pid {pid})", path.display())
            }
            LeaseError::HeldElsewhere { path, pid: None } => {
                write!(f, "{} is locked by another heartsink", path.display())
            }
            LeaseError::Io { path, source } => write!(f, "cannot lock {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for LeaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LeaseError::Io { source, .. } => Some(source),
            LeaseError::HeldElsewhere { .. } => None,
        }
    }
}

/// The single-node lease: an exclusive lock (`File::try_lock`, `flock` on Unix) on
/// `<data_dir>/leader.lock`, holding this process's pid. Held while the lock is; the operating
/// system drops the lock when the process dies, so there is no TTL to wait out. The file is
/// never removed (removing a lock file lets two processes lock two different inodes).
#[derive(Debug)]
pub struct LocalLease {
    path: PathBuf,
    file: Option<File>,
}

impl LocalLease {
    /// Name of the lock file in the data directory.
    pub const FILE_NAME: &'static str = "leader.lock";

    /// Takes the lock, creating `data_dir` and the file when missing.
    pub fn open(data_dir: &Path) -> Result<LocalLease, LeaseError> {
        let path = data_dir.join(Self::FILE_NAME);
        std::fs::create_dir_all(data_dir).map_err(|source| LeaseError::Io { path: path.clone(), source })?;
        let file = lock(&path)?;
        Ok(LocalLease { path, file: Some(file) })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock(path: &Path) -> Result<File, LeaseError> {
    let io = |source| LeaseError::Io { path: path.to_owned(), source };
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok());
            return Err(LeaseError::HeldElsewhere { path: path.to_owned(), pid });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

impl Lease for LocalLease {
    fn campaign(&mut self, _now_ns: u64) -> LeaseState {
        if self.file.is_some() {
            return LeaseState::Held;
        }
        match lock(&self.path) {
            Ok(f) => {
                self.file = Some(f);
                LeaseState::Acquired
            }
            Err(_) => LeaseState::Follower,
        }
    }

    fn is_held(&self, _now_ns: u64) -> bool {
        self.file.is_some()
    }

    fn release(&mut self) {
        if let Some(f) = self.file.take() {
            // Closing the file drops the lock as well; unlock explicitly to say so.
            let _ = f.unlock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamping_rules() {
        let t = LeaseTimings::from_secs(10, 11);
        assert_eq!((t.lease_ttl_ns / SEC, t.refresh_ttl_ns / SEC), (10, 6));
        let t = LeaseTimings::from_secs(1, 1);
        assert_eq!((t.lease_ttl_ns / SEC, t.refresh_ttl_ns / SEC), (10, 6));
        let t = LeaseTimings::from_secs(60, 40);
        assert_eq!((t.lease_ttl_ns / SEC, t.refresh_ttl_ns / SEC), (60, 40));
        let t = LeaseTimings::from_secs(30, 30);
        assert_eq!((t.lease_ttl_ns / SEC, t.refresh_ttl_ns / SEC), (30, 20));
    }

    /// A scripted store: who holds, and whether keep-alives fail.
    #[derive(Debug, Default)]
    struct Fake {
        other_holds: bool,
        fail_keep_alive: bool,
        keep_alives: u32,
        resigned: u32,
    }

    impl LeaseBackend for Fake {
        type Error = &'static str;
        fn try_acquire(&mut self, _: u64, _: u64) -> Result<bool, &'static str> {
            Ok(!self.other_holds)
        }
        fn keep_alive(&mut self, _: u64) -> Result<(), &'static str> {
            self.keep_alives += 1;
            if self.fail_keep_alive {
                Err("store unreachable")
            } else {
                Ok(())
            }
        }
        fn resign(&mut self) {
            self.resigned += 1;
        }
    }

    #[test]
    fn kept_lease_keeps_alive_every_refresh_ttl() {
        let t = LeaseTimings::from_secs(10, 6);
        let mut l = KeptLease::new(Fake { other_holds: true, ..Fake::default() }, t);
        assert_eq!(l.campaign(0), LeaseState::Follower);
        assert!(!l.is_held(0));
        l.backend.other_holds = false;
        assert_eq!(l.campaign(SEC), LeaseState::Acquired);
        assert_eq!(l.campaign(6 * SEC), LeaseState::Held);
        assert_eq!(l.backend().keep_alives, 0, "not due before refresh_ttl");
        assert_eq!(l.campaign(7 * SEC), LeaseState::Held);
        assert_eq!(l.backend().keep_alives, 1);
        assert!(l.is_held(16 * SEC) && !l.is_held(17 * SEC), "held lease_ttl after the last keep-alive");
    }

    #[test]
    fn kept_lease_lost_at_first_failed_keep_alive() {
        let mut l = KeptLease::new(Fake::default(), LeaseTimings::from_secs(10, 6));
        assert_eq!(l.campaign(0), LeaseState::Acquired);
        l.backend.fail_keep_alive = true;
        assert_eq!(l.campaign(6 * SEC), LeaseState::Lost);
        assert!(!l.is_held(6 * SEC));
        assert_eq!(l.last_error(), Some("store unreachable"));
        assert_eq!(l.backend().resigned, 1);
    }

    #[test]
    fn kept_lease_lost_after_lease_ttl_without_keep_alive() {
        let mut l = KeptLease::new(Fake::default(), LeaseTimings::from_secs(10, 6));
        assert_eq!(l.campaign(0), LeaseState::Acquired);
        // The control thread stalled past lease_ttl: no longer held, even before campaigning.
        assert!(!l.is_held(10 * SEC));
        assert_eq!(l.campaign(10 * SEC), LeaseState::Lost);
        assert_eq!(l.campaign(11 * SEC), LeaseState::Acquired, "campaigns again");
        l.release();
        assert!(!l.is_held(11 * SEC));
        assert_eq!(l.backend().resigned, 2);
    }

    #[test]
    fn local_lease_excludes_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = LocalLease::open(dir.path()).unwrap();
        assert!(a.is_held(0));
        assert_eq!(a.campaign(0), LeaseState::Held);
        let pid = std::fs::read_to_string(a.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        match LocalLease::open(dir.path()) {
            Err(LeaseError::HeldElsewhere { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second opener got {other:?}"),
        }
        a.release();
        assert!(!a.is_held(0));
        let mut b = LocalLease::open(dir.path()).unwrap();
        assert_eq!(a.campaign(1), LeaseState::Follower, "b holds it now");
        b.release();
        assert_eq!(a.campaign(2), LeaseState::Acquired);
        drop(a);
        assert!(LocalLease::open(dir.path()).is_ok(), "dropping releases");
    }
}
