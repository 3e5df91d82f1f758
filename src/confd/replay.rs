//! The replay cache: each signed request is answered once.
//!
//! A request is valid for the whole ±300 s window of its timestamp, so a packet captured once
//! could be sent again (from any, possibly spoofed, source) and answered again each time: a
//! reflector. The cache remembers the signature (the raw HMAC, computed by the server: the case
//! of the hex digits and the layout of the envelope do not make a new request) of every request
//! answered, until its timestamp leaves the window (`timestamp + 300 s`); a request whose
//! signature is there is dropped as `replay`.
//!
//! One cache per server, shared by every worker (a replay may come from another source, hence
//! another worker): [`SHARDS`] shards, each a `parking_lot::Mutex` over a fixed array of
//! [`WAYS`]-way buckets, picked by the signature's first bytes (an HMAC output: uniform, and
//! not choosable without the key). Nothing is allocated after start.
//!
//! **When a bucket is full** of entries still inside their window, the one that leaves the
//! window first is evicted and counted ([`ReplayCache::evictions`]): the server keeps answering
//! new requests, and a replay of the evicted request would be answered once more (then
//! remembered again). This happens only when valid, distinct requests arrive faster than the
//! cache holds them for a whole window (capacity / 300 s, e.g. 131072 entries ≈ 430 requests/s
//! sustained); the evictions counter says when it does, and `confd.replay_cache` raises it.
//! Refusing new requests instead would let a busy legitimate client deny service to all.
//!
//! A signature seen again is a replay even when its entry has expired but is still in place
//! (the parser already checked the timestamp against the clock), so a clock that steps back
//! does not reopen the window of entries not yet overwritten.

use parking_lot::Mutex;

use super::proto::{HMAC_LEN, MAX_CLOCK_SKEW};

/// Shards (each with its own lock).
pub const SHARDS: usize = 16;
/// Entries per bucket.
pub const WAYS: usize = 8;
/// The default capacity, entries (4 MiB).
pub const DEFAULT_CAPACITY: usize = 131072;
/// The smallest capacity: one bucket per shard.
pub const MIN_CAPACITY: usize = SHARDS * WAYS;
/// The largest capacity (512 MiB).
pub const MAX_CAPACITY: usize = 1 << 24;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The last unix second in which the request's timestamp is inside the window;
    /// `i64::MIN`: empty.
    expires: i64,
    mac: [u8; HMAC_LEN],
}

const EMPTY: Slot = Slot { expires: i64::MIN, mac: [0; HMAC_LEN] };

/// What [`ReplayCache::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: remembered, answer it.
    New,
    /// First time, remembered in place of a request still inside its window (the bucket was
    /// full): answer it.
    NewEvicting,
    /// Seen before: drop it.
    Replay,
}

/// The replay cache of one server; see the module documentation.
pub struct ReplayCache {
    shards: Box<[Mutex<Box<[Slot]>>]>,
    buckets: usize,
    evictions: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

impl ReplayCache {
    /// A cache of at least `capacity` entries (rounded up to a power of two, within
    /// [`MIN_CAPACITY`]..=[`MAX_CAPACITY`]), all allocated now.
    pub fn new(capacity: usize) -> ReplayCache {
        let capacity = capacity.clamp(MIN_CAPACITY, MAX_CAPACITY).next_power_of_two();
        let buckets = capacity / SHARDS / WAYS;
        ReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::new(vec![EMPTY; buckets * WAYS].into_boxed_slice())).collect(),
            buckets,
            evictions: Default::default(),
        }
    }

    /// Entries it holds at most.
    pub fn capacity(&self) -> usize {
        SHARDS * self.buckets * WAYS
    }

    /// Entries evicted while still inside their window (see the module documentation).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks and remembers the request signed `mac` with timestamp `timestamp`, at `now`
    /// (unix seconds).
    pub fn check(&self, mac: &[u8; HMAC_LEN], timestamp: i64, now: i64) -> Seen {
        let mut h = [0u8; 8];
        h.copy_from_slice(&mac[..8]);
        let h = u64::from_le_bytes(h);
        let shard = (h as usize) % SHARDS;
        let bucket = ((h >> 8) as usize) % self.buckets;
        let Some(lock) = self.shards.get(shard) else { return Seen::New };
        let mut slots = lock.lock();
        let Some(set) = slots.get_mut(bucket * WAYS..(bucket + 1) * WAYS) else { return Seen::New };
        if set.iter().any(|s| s.expires != i64::MIN && s.mac == *mac) {
            return Seen::Replay;
        }
        // The free or expired slot, else the one leaving the window first.
        let mut victim = 0;
        for (i, s) in set.iter().enumerate() {
            if s.expires < now {
                victim = i;
                break;
            }
            if s.expires < set[victim].expires {
                victim = i;
            }
        }
        let evicting = set[victim].expires >= now;
        set[victim] = Slot { expires: timestamp.saturating_add(MAX_CLOCK_SKEW), mac: *mac };
        drop(slots);
        if evicting {
            crate::engine::counters::bump(&self.evictions, 1);
            Seen::NewEvicting
        } else {
            Seen::New
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u64) -> [u8; HMAC_LEN] {
        // Spread like an HMAC: a cheap mix of n.
        let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n >> 7);
        let mut m = [0u8; HMAC_LEN];
        m[..8].copy_from_slice(&x.to_le_bytes());
        m[8..16].copy_from_slice(&n.to_le_bytes());
        m
    }

    #[test]
    fn each_signature_is_answered_once_within_its_window() {
        let c = ReplayCache::new(1024);
        assert_eq!(c.check(&mac(1), 1000, 1000), Seen::New);
        assert_eq!(c.check(&mac(1), 1000, 1000), Seen::Replay);
        assert_eq!(c.check(&mac(1), 1000, 1300), Seen::Replay);
        assert_eq!(c.check(&mac(2), 1000, 1000), Seen::New);
        // Another request with the same timestamp, and one nearly alike.
        let mut m = mac(1);
        m[19] ^= 1;
        assert_eq!(c.check(&m, 1000, 1000), Seen::New);
        assert_eq!(c.evictions(), 0);
    }

    #[test]
    fn expiry_follows_the_request_timestamp() {
        // One bucket per shard: WAYS entries per shard, so a shard fills fast.
        let c = ReplayCache::new(MIN_CAPACITY);
        assert_eq!(c.capacity(), MIN_CAPACITY);
        // Fill everything with requests stamped 1000 (inside the window until 1300).
        let mut n = 0;
        let mut seen = Vec::new();
        while seen.len() < MIN_CAPACITY * 4 {
            n += 1;
            if c.check(&mac(n), 1000, 1000) != Seen::Replay {
                seen.push(n);
            }
        }
        assert!(c.evictions() > 0, "a full bucket evicts");
        // After 1300 they are all outside the window: new requests take their places without
        // evicting anything.
        let before = c.evictions();
        for k in 0..MIN_CAPACITY as u64 {
            assert_ne!(c.check(&mac(1_000_000 + k), 1301, 1301), Seen::Replay);
        }
        assert!(c.evictions() - before < MIN_CAPACITY as u64 / 2, "expired entries are reused first");
    }

    #[test]
    fn bounded_and_evicts_the_entry_leaving_the_window_first() {
        let c = ReplayCache::new(MIN_CAPACITY);
        // Find WAYS + 1 signatures in one bucket.
        let same: Vec<[u8; HMAC_LEN]> = (0..u64::MAX)
            .map(mac)
            .filter(|m| {
                let h = u64::from_le_bytes(m[..8].try_into().unwrap());
                (h as usize).is_multiple_of(SHARDS)
            })
            .take(WAYS + 1)
            .collect();
        // The first is the oldest (timestamp 900), the rest newer.
        assert_eq!(c.check(&same[0], 900, 1000), Seen::New);
        for m in &same[1..WAYS] {
            assert_eq!(c.check(m, 1000, 1000), Seen::New);
        }
        assert_eq!(c.check(&same[WAYS], 1000, 1000), Seen::NewEvicting);
        assert_eq!(c.evictions(), 1);
        // The oldest went; the others are still remembered.
        for m in &same[1..] {
            assert_eq!(c.check(m, 1000, 1000), Seen::Replay);
        }
        assert_eq!(c.check(&same[0], 900, 1000), Seen::NewEvicting);
    }

    #[test]
    fn shared_by_threads_each_signature_wins_once() {
        let c = std::sync::Arc::new(ReplayCache::new(4096));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).filter(|&n| c.check(&mac(n), 1000, 1000) != Seen::Replay).count())
            })
            .collect();
        let answered: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(answered, 1000, "each of 1000 requests sent by 4 threads answered once");
    }

    #[test]
    fn cost_per_check() {
        let c = ReplayCache::new(DEFAULT_CAPACITY);
        let n = 200_000u64;
        let t = std::time::Instant::now();
        for k in 0..n {
            std::hint::black_box(c.check(&mac(k), 1000, 1000));
        }
        eprintln!("replay cache: {:.0} ns per check", t.elapsed().as_nanos() as f64 / n as f64);
    }

    #[test]
    fn capacity_is_bounded_and_rounded() {
        assert_eq!(ReplayCache::new(0).capacity(), MIN_CAPACITY);
        assert_eq!(ReplayCache::new(100_000).capacity(), 131072);
        assert_eq!(ReplayCache::new(usize::MAX).capacity(), MAX_CAPACITY);
    }
}
