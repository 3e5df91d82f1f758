//! The reply budget: reply bytes per second, per source address and in total.
//!
//! A confd reply can be far larger than its request (a `DOWN_SENDERS` page, a `CONFIG_QUERY`
//! of a big subtree), and UDP sources can be spoofed: without a bound, a server with a known
//! key is an amplifier aimed at whatever address the requests claim to come from. Each reply's
//! bytes are taken from two token buckets: its source address's (the IP address, any port;
//! `confd.reply_budget` bytes per second, bursts of one second's worth) and the server's
//! (`confd.reply_budget_total`, split evenly between the workers: a source always lands on the
//! same worker). A reply that does not fit is not sent and counted as `reply_budget`; its
//! request still counts as seen by the replay cache. 0 turns a bucket off.
//!
//! Each worker has its own table of [`SOURCES`] source buckets, [`WAYS`]-way set-associative
//! by a per-process random hash of the address, allocated at start. A new source takes a free
//! slot of its set, else the least recently used one: a source idle for a second has a full
//! bucket again, so evicting it forgets nothing; evicting a busy one (more than `SOURCES`
//! sources replying within a second on one worker) gives it a fresh bucket, which the total
//! budget still bounds.

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};

/// Source buckets per worker.
pub const SOURCES: usize = 4096;
/// Buckets per set.
pub const WAYS: usize = 4;
/// Default bytes per second per source address (64 KiB).
pub const DEFAULT_PER_SOURCE: u64 = 64 * 1024;
/// Default bytes per second for the whole server (8 MiB).
pub const DEFAULT_TOTAL: u64 = 8 * 1024 * 1024;

/// The budget's rates, bytes per second (0: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Per source address.
    pub per_source: u64,
    /// The whole server.
    pub total: u64,
}

impl Default for ReplyLimits {
    fn default() -> ReplyLimits {
        ReplyLimits { per_source: DEFAULT_PER_SOURCE, total: DEFAULT_TOTAL }
    }
}

/// A token bucket of bytes, bursts of one second's worth.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tokens: u64,
    last_ns: u64,
}

impl Bucket {
    /// Takes `n` bytes at `now_ns` at `rate` bytes/s; false (nothing taken) if they are not there.
    fn take(&mut self, n: u64, rate: u64, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        let refill = u64::try_from(u128::from(elapsed) * u128::from(rate) / 1_000_000_000).unwrap_or(u64::MAX);
        self.tokens = self.tokens.saturating_add(refill).min(rate);
        self.last_ns = self.last_ns.max(now_ns);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct SourceSlot {
    /// The address, IPv4 as mapped IPv6; `None`: free.
    addr: Option<u128>,
    bucket: Bucket,
}

/// One worker's reply budget; see the module documentation.
#[derive(Debug)]
pub struct ReplyBudget {
    slots: Box<[SourceSlot]>,
    total: Bucket,
    /// This worker's share of the total (`total / workers`).
    workers: u64,
    hasher: std::collections::hash_map::RandomState,
}

impl ReplyBudget {
    /// A budget for one of `workers` workers, all allocated now.
    pub fn new(workers: usize) -> ReplyBudget {
        ReplyBudget {
            slots: vec![SourceSlot::default(); SOURCES].into_boxed_slice(),
            total: Bucket::default(),
            workers: workers.max(1) as u64,
            hasher: Default::default(),
        }
    }

    /// Takes `bytes` for a reply to `src` at `now_ns`; false when either bucket is short (the
    /// reply must not be sent, and nothing was taken).
    pub fn allow(&mut self, limits: ReplyLimits, src: &SocketAddr, bytes: usize, now_ns: u64) -> bool {
        let n = bytes as u64;
        let share = limits.total / self.workers;
        // The total is checked first without taking, so a refused source takes nothing of it.
        if limits.total > 0 {
            let mut probe = self.total;
            if !probe.take(n, share.max(1), now_ns) {
                self.total = probe;
                return false;
            }
        }
        if limits.per_source > 0 && !self.source(src, now_ns).take(n, limits.per_source, now_ns) {
            return false;
        }
        if limits.total > 0 {
            self.total.take(n, share.max(1), now_ns);
        }
        true
    }

    /// The bucket of `src`, found or made (full) in its set.
    fn source(&mut self, src: &SocketAddr, now_ns: u64) -> &mut Bucket {
        let ip = match src.ip() {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        let key = u128::from(ip);
        let set = (self.hasher.hash_one(key) as usize) % (SOURCES / WAYS) * WAYS;
        let mut at = set;
        let mut found = false;
        for i in set..set + WAYS {
            let s = &self.slots[i];
            if s.addr == Some(key) {
                at = i;
                found = true;
                break;
            }
            let cur = &self.slots[at];
            if cur.addr.is_some() && (s.addr.is_none() || s.bucket.last_ns < cur.bucket.last_ns) {
                at = i;
            }
        }
        let slot = &mut self.slots[at];
        if !found {
            *slot = SourceSlot { addr: Some(key), bucket: Bucket { tokens: u64::MAX, last_ns: now_ns } };
        }
        &mut slot.bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_bucket_refills_at_its_rate() {
        let limits = ReplyLimits { per_source: 10_000, total: 0 };
        let mut b = ReplyBudget::new(1);
        let a = addr("10.0.0.1:1000");
        let t = 5 * S;
        assert!(b.allow(limits, &a, 6_000, t));
        assert!(!b.allow(limits, &a, 6_000, t), "over the burst");
        // Another port of the same address shares it; another address does not.
        assert!(!b.allow(limits, &addr("10.0.0.1:2000"), 6_000, t));
        assert!(b.allow(limits, &addr("10.0.0.2:1000"), 6_000, t));
        // Half a second later: 4000 + 5000 tokens.
        assert!(b.allow(limits, &a, 9_000, t + S / 2));
        assert!(!b.allow(limits, &a, 1, t + S / 2));
        // Long idle: full again, never more than one second's worth.
        assert!(b.allow(limits, &a, 10_000, t + 100 * S));
        assert!(!b.allow(limits, &a, 1, t + 100 * S));
    }

    #[test]
    fn total_is_shared_by_sources_and_split_between_workers() {
        let limits = ReplyLimits { per_source: 0, total: 20_000 };
        let mut b = ReplyBudget::new(2); // this worker: 10_000/s
        let t = S;
        b.total = Bucket { tokens: 10_000, last_ns: t };
        assert!(b.allow(limits, &addr("10.0.0.1:1"), 6_000, t));
        assert!(!b.allow(limits, &addr("10.0.0.2:1"), 6_000, t));
        assert!(b.allow(limits, &addr("10.0.0.3:1"), 4_000, t));
        assert!(b.allow(limits, &addr("10.0.0.3:1"), 1_000, t + S / 10));
    }

    #[test]
    fn a_source_refused_takes_nothing_of_the_total() {
        let limits = ReplyLimits { per_source: 1_000, total: 10_000 };
        let mut b = ReplyBudget::new(1);
        let t = S;
        b.total = Bucket { tokens: 10_000, last_ns: t };
        for _ in 0..100 {
            b.allow(limits, &addr("10.0.0.1:1"), 900, t);
        }
        assert!(b.allow(limits, &addr("10.0.0.2:1"), 900, t));
        assert_eq!(b.total.tokens, 10_000 - 2 * 900);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_least_recently_used() {
        let limits = ReplyLimits { per_source: 1_000, total: 0 };
        let mut b = ReplyBudget::new(1);
        // Many more sources than slots, each spending its whole bucket.
        let mut arrivals = vec![0usize; SOURCES / WAYS];
        for i in 0..(SOURCES as u32 * 4) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let a = SocketAddr::from((ip, 1));
            assert!(b.allow(limits, &a, 1_000, S + u64::from(i)));
            arrivals[(b.hasher.hash_one(u128::from(ip.to_ipv6_mapped())) as usize) % (SOURCES / WAYS)] += 1;
        }
        assert_eq!(b.slots.len(), SOURCES);
        // A set fills its empty ways before it evicts: every set that saw WAYS sources is full
        // (the hash is seeded per process, so which sets those are varies from run to run).
        for (set, n) in arrivals.iter().enumerate() {
            let filled = b.slots[set * WAYS..(set + 1) * WAYS].iter().filter(|s| s.addr.is_some()).count();
            assert_eq!(filled, (*n).min(WAYS), "set {set} saw {n} sources");
        }
        // The most recent source is still remembered (and empty).
        let last = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + SOURCES as u32 * 4 - 1), 1));
        assert!(!b.allow(limits, &last, 1, S + SOURCES as u64 * 4));
    }
}
