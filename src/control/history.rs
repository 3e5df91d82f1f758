//! The daemon's recent past for the console's charts (`GET /v1/history`): one sample a second
//! (the rates task) of what the data plane did, kept for the last 15 minutes, so a chart is
//! right on its first load. Bounded: [`CAPACITY`] samples, about 200 bytes each.

use std::collections::VecDeque;

use serde::Serialize;

use crate::engine::{histogram, DropReason, Totals};

/// Samples kept: 15 minutes at one a second.
pub const CAPACITY: usize = 900;

/// One second (or so: `interval_s`) of the data plane.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// The sample's end, wall clock ms since the Unix epoch.
    pub t_ms: u64,
    /// Seconds it covers.
    pub interval_s: f64,
    /// Datagrams received per second.
    pub received_per_s: f64,
    /// Heartbeats accepted per second.
    pub accepted_per_s: f64,
    /// Datagrams dropped per second, all reasons.
    pub dropped_per_s: f64,
    /// Dropped per second by reason (only the reasons that dropped any).
    pub drops_per_s: std::collections::BTreeMap<&'static str, f64>,
    /// Datagrams the kernel dropped per second (socket buffers full).
    pub kernel_drops_per_s: f64,
    /// Receive-to-applied latency of the heartbeats applied in it, p50 and p99, µs (none
    /// applied: `None`).
    pub p50_us: Option<f64>,
    /// See `p50_us`.
    pub p99_us: Option<f64>,
}

/// The samples, oldest first, and what the next one is measured from.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
    prev: Option<(u64, Totals, Vec<u64>)>,
}

impl History {
    /// A history whose first sample counts from `start_ns` (the daemon's start: nothing was
    /// received before it).
    pub fn starting(start_ns: u64) -> History {
        History { samples: VecDeque::new(), prev: Some((start_ns, Totals::default(), vec![0; histogram::BUCKETS])) }
    }

    /// Takes a sample at `now_ns` (wall clock) from the data plane's cumulative `totals` and
    /// receive-to-applied latency `counts`; the first call only sets the start.
    pub fn sample(&mut self, now_ns: u64, totals: Totals, counts: Vec<u64>) {
        if let Some((at, prev, prev_counts)) = &self.prev {
            let secs = (now_ns.saturating_sub(*at) as f64 / 1e9).max(1e-3);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let diff: Vec<u64> = counts.iter().zip(prev_counts).map(|(a, b)| a.saturating_sub(*b)).collect();
            let q = |x: f64| histogram::quantile(&diff, x).map(|ns| ns as f64 / 1e3);
            let sample = Sample {
                t_ms: now_ns / 1_000_000,
                interval_s: secs,
                received_per_s: rate(totals.received, prev.received),
                accepted_per_s: rate(totals.accepted, prev.accepted),
                dropped_per_s: rate(totals.dropped(), prev.dropped()),
                drops_per_s: DropReason::ALL
                    .iter()
                    .filter(|d| totals.drop_count(**d) > prev.drop_count(**d))
                    .map(|d| (d.label(), rate(totals.drop_count(*d), prev.drop_count(*d))))
                    .collect(),
                kernel_drops_per_s: rate(totals.kernel_drops, prev.kernel_drops),
                p50_us: q(0.5),
                p99_us: q(0.99),
            };
            if self.samples.len() == CAPACITY {
                self.samples.pop_front();
            }
            self.samples.push_back(sample);
        }
        self.prev = Some((now_ns, totals, counts));
    }

    /// The samples ending after `since_ms` (0: all), oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Sample> {
        self.samples.iter().filter(|s| s.t_ms > since_ms).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(received: u64, accepted: u64, bad_tag: u64) -> Totals {
        let mut t = Totals { received, accepted, ..Totals::default() };
        t.drops[DropReason::ALL[0] as usize] = bad_tag;
        t
    }

    #[test]
    fn samples_are_rates_over_their_interval_and_only_the_last_fifteen_minutes_are_kept() {
        let mut h = History::default();
        let mut counts = vec![0u64; histogram::BUCKETS];
        h.sample(1_000_000_000, totals(0, 0, 0), counts.clone());
        assert!(h.since(0).is_empty(), "the first call only sets the start");
        counts[10] = 100;
        h.sample(3_000_000_000, totals(400, 300, 100), counts.clone());
        let s = &h.since(0)[0];
        assert_eq!((s.t_ms, s.interval_s), (3_000, 2.0));
        assert_eq!((s.received_per_s, s.accepted_per_s, s.dropped_per_s), (200.0, 150.0, 50.0));
        assert_eq!(s.drops_per_s.get(DropReason::ALL[0].label()), Some(&50.0));
        assert_eq!(s.drops_per_s.len(), 1);
        assert!(s.p99_us.is_some());
        // Nothing applied in the next second: no latency.
        h.sample(4_000_000_000, totals(400, 300, 100), counts.clone());
        assert_eq!(h.since(3_000).len(), 1);
        assert_eq!(h.since(3_000)[0].p99_us, None);
        for i in 0..2 * CAPACITY as u64 {
            h.sample(5_000_000_000 + i * 1_000_000_000, totals(400, 300, 100), counts.clone());
        }
        assert_eq!(h.since(0).len(), CAPACITY);
    }
}
