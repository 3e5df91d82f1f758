//! A fixed log-linear latency histogram: 8 sub-buckets per power of two (≤ 12.5 % relative
//! error), 496 buckets covering all of `u64` nanoseconds. Each worker owns one and is its only
//! writer; readers sum snapshots, and differences of two snapshots give the histogram of an
//! interval (what `heartsink bench` does).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Number of buckets.
pub const BUCKETS: usize = 496;
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;

/// The bucket of a value.
#[inline]
pub fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The largest value that falls in bucket `i`.
pub fn upper_bound(i: usize) -> u64 {
    if i < SUB as usize {
        return i as u64;
    }
    let exp = (i / SUB as usize) as u32 + SUB_BITS - 1;
    let sub = (i % SUB as usize) as u64;
    let low = (SUB + sub) << (exp - SUB_BITS);
    low.saturating_add((1u64 << (exp - SUB_BITS)) - 1)
}

/// A single-writer histogram of nanosecond values.
#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Histogram {
    /// Records one value (only the owning thread may call this).
    #[inline]
    pub fn record(&self, v: u64) {
        super::counters::bump(&self.counts[bucket(v)], 1);
    }

    /// Adds this histogram's counts into `into`.
    pub fn add_to(&self, into: &mut [u64]) {
        for (a, c) in into.iter_mut().zip(self.counts.iter()) {
            *a += c.load(Relaxed);
        }
    }
}

/// The value at quantile `q` (0..=1) of a counts array: the upper bound of its bucket.
pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(upper_bound(i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounds_contain_their_values() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS, "{v}");
            assert!(upper_bound(b) >= v, "{v} in {b} ≤ {}", upper_bound(b));
            if b > 0 {
                assert!(upper_bound(b - 1) < v, "{v}");
            }
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_an_eighth() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let mut c = vec![0; BUCKETS];
        h.add_to(&mut c);
        let p50 = quantile(&c, 0.5).unwrap() as f64;
        let p99 = quantile(&c, 0.99).unwrap() as f64;
        assert!((500_000.0..=500_000.0 * 1.125).contains(&p50), "{p50}");
        assert!((990_000.0..=990_000.0 * 1.125).contains(&p99), "{p99}");
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }
}
