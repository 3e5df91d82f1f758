//! `[liveness]`: the settings of the liveness rules, with Octavia's names and defaults, their
//! validation, and the durations derived from them.

use serde::{Deserialize, Serialize};

use crate::control::SettingError;

/// Liveness settings, with Octavia's names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// Seconds without a liveness refresh after which an amphora is stale (Octavia: 60).
    pub heartbeat_timeout: f64,
    /// Seconds between health checks (Octavia: 3).
    pub health_check_interval: f64,
    /// The senders' period and the processing-delay bound, seconds (Octavia: 10). Also the
    /// prior of each amphora's learned interval.
    pub heartbeat_interval: f64,
    /// Failovers running at once, and the burst of each group's rate limiter (Octavia: 10).
    pub failover_threads: usize,
    /// Circuit breaker: this many candidates or more → none is failed over (Octavia: unset).
    pub failover_threshold: Option<usize>,
    /// A group is in partial disruption when at least this fraction of it is overdue
    /// (Kubernetes' `unhealthy_zone_threshold`).
    #[serde(alias = "unhealthy_zone_threshold")]
    pub partition_fraction: f64,
    /// …and at least this many amphorae of it; also the least overdue count read as blindness.
    pub partition_min: usize,
    /// Overdue after this many times the amphora's usual interval.
    pub overdue_factor: f64,
    /// A group this overdue is dark; the whole fleet this overdue: the sink is blind.
    pub sink_blind_fraction: f64,
    /// Failovers per second per group after the burst (default: `failover_threads` per
    /// `health_check_interval`; Kubernetes' `node-eviction-rate`).
    pub failover_rate: Option<f64>,
    /// Failovers per second in a group in partial disruption (Kubernetes'
    /// `secondary-node-eviction-rate`).
    pub secondary_failover_rate: f64,
    /// A group in partial disruption with this many amphorae or fewer fails nothing over
    /// (Kubernetes' `large-cluster-size-threshold`).
    pub large_group_size: usize,
    /// Overloaded when drops (kernel + ring) exceed this fraction of datagrams in a check.
    pub overload_drop_fraction: f64,
    /// Workers lagging when a ring is fuller than this fraction at a check.
    pub lag_ring_fraction: f64,
    /// Start-up grace, seconds (default: `heartbeat_timeout`).
    pub startup_grace: Option<f64>,
}

impl Default for LivenessConfig {
    fn default() -> LivenessConfig {
        LivenessConfig {
            heartbeat_timeout: 60.0,
            health_check_interval: 3.0,
            heartbeat_interval: 10.0,
            failover_threads: 10,
            failover_threshold: None,
            partition_fraction: 0.55,
            partition_min: 4,
            overdue_factor: 2.0,
            sink_blind_fraction: 0.9,
            failover_rate: None,
            secondary_failover_rate: 0.1,
            large_group_size: 50,
            overload_drop_fraction: 0.001,
            lag_ring_fraction: 0.5,
            startup_grace: None,
        }
    }
}

/// Seconds to ns, saturating; negative and NaN are 0.
pub fn secs_ns(s: f64) -> u64 {
    if s.is_nan() || s <= 0.0 {
        0
    } else if s >= u64::MAX as f64 / 1e9 {
        u64::MAX
    } else {
        (s * 1e9) as u64
    }
}

impl LivenessConfig {
    /// Checks the values; the message names the setting.
    pub fn validate(&self) -> Result<(), SettingError> {
        for (name, v) in [
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("health_check_interval", self.health_check_interval),
            ("heartbeat_interval", self.heartbeat_interval),
        ] {
            if !(v.is_finite() && v >= crate::control::MIN_INTERVAL_S) {
                return Err(SettingError::new(format!("liveness.{name}"), "a number of seconds, at least 0.01"));
            }
        }
        if self.failover_threads == 0 {
            return Err(SettingError::new("liveness.failover_threads", "at least 1"));
        }
        if self.failover_threshold == Some(0) {
            return Err(SettingError::new("liveness.failover_threshold", "at least 1 (or absent)"));
        }
        for (name, v) in [
            ("partition_fraction", self.partition_fraction),
            ("lag_ring_fraction", self.lag_ring_fraction),
            ("sink_blind_fraction", self.sink_blind_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(SettingError::new(format!("liveness.{name}"), "a fraction in 0..=1"));
            }
        }
        if !(self.overdue_factor.is_finite() && self.overdue_factor >= 1.0) {
            return Err(SettingError::new("liveness.overdue_factor", "a number ≥ 1"));
        }
        if self.failover_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(SettingError::new("liveness.failover_rate", "a positive number per second (or absent)"));
        }
        if !(self.secondary_failover_rate.is_finite() && self.secondary_failover_rate >= 0.0) {
            return Err(SettingError::new("liveness.secondary_failover_rate", "a non-negative number per second"));
        }
        if self.startup_grace.is_some_and(|g| !(g.is_finite() && g >= 0.0)) {
            return Err(SettingError::new("liveness.startup_grace", "a non-negative number of seconds"));
        }
        Ok(())
    }

    /// `heartbeat_timeout`, ns.
    pub fn timeout_ns(&self) -> u64 {
        secs_ns(self.heartbeat_timeout)
    }

    /// The processing-delay bound, ns.
    pub fn max_delay_ns(&self) -> u64 {
        secs_ns(self.heartbeat_interval)
    }

    pub(super) fn grace_ns(&self) -> u64 {
        secs_ns(self.startup_grace.unwrap_or(self.heartbeat_timeout))
    }

    /// Failovers per second per group at the normal rate.
    pub fn normal_rate(&self) -> f64 {
        self.failover_rate.unwrap_or(self.failover_threads as f64 / self.health_check_interval.max(1e-3))
    }

    /// Silence after which an amphora whose usual interval is `usual_us` (0: unknown) is
    /// overdue, ns: `overdue_factor ×` the interval (at least `health_check_interval`), at most
    /// `heartbeat_timeout`.
    pub(super) fn overdue_after(&self, usual_us: u32) -> u64 {
        let usual = if usual_us == 0 { self.heartbeat_interval } else { f64::from(usual_us) / 1e6 };
        secs_ns(self.overdue_factor * usual.max(self.health_check_interval)).min(self.timeout_ns())
    }

    /// Heartbeats per second of an amphora whose learned usual interval is `usual_us` (0: not
    /// learned, `heartbeat_interval`).
    pub(super) fn usual_rate(&self, usual_us: u32) -> f64 {
        let usual = if usual_us == 0 { self.heartbeat_interval } else { f64::from(usual_us) / 1e6 };
        1.0 / usual.max(1e-3)
    }

    /// How long failovers stay suspended after the sink stops looking blind.
    pub(super) fn blind_tail_ns(&self) -> u64 {
        secs_ns(self.heartbeat_timeout + self.health_check_interval)
    }
}
