//! Drop reasons and the engine's counters.
//!
//! Every counter is written by exactly one thread (its rx thread or worker) and read by the
//! admin API and the control thread. Writers accumulate per batch and publish once per batch.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::proto::envelope::EnvelopeError;
use crate::proto::inflate::InflateError;
use crate::proto::octavia::MessageError;
use crate::proto::seqwin::SeqError;

/// Why a packet was dropped: one label of `heartsink_drops_total{reason}` each. The stage
/// error enums map onto these one-to-one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// [`EnvelopeError::TooShort`].
    TooShort,
    /// [`EnvelopeError::BadTag`].
    BadTag,
    /// [`EnvelopeError::NoKeyMatched`].
    NoKeyMatched,
    /// [`InflateError::Corrupt`].
    InflateError,
    /// [`InflateError::TooLarge`].
    TooLarge,
    /// [`MessageError::NotUtf8`].
    NotUtf8,
    /// [`MessageError::NotJson`].
    NotJson,
    /// [`MessageError::BadSchema`].
    BadSchema,
    /// [`SeqError::Replay`].
    Replay,
    /// [`SeqError::Stale`].
    Stale,
    /// Applied later than `heartbeat_interval` after it was received (Octavia's processing-delay
    /// rule): the workers are far behind; a heartbeat this old must not refresh liveness.
    Late,
    /// The datagram was larger than `max_datagram` and the kernel truncated it.
    Truncated,
    /// The worker's ring was full (the workers are behind): the packet never reached a worker.
    RingFull,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 13;
    /// Every reason, in label order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::TooShort,
        DropReason::BadTag,
        DropReason::NoKeyMatched,
        DropReason::InflateError,
        DropReason::TooLarge,
        DropReason::NotUtf8,
        DropReason::NotJson,
        DropReason::BadSchema,
        DropReason::Replay,
        DropReason::Stale,
        DropReason::Late,
        DropReason::Truncated,
        DropReason::RingFull,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::BadTag => "bad_tag",
            DropReason::NoKeyMatched => "no_key_matched",
            DropReason::InflateError => "inflate_error",
            DropReason::TooLarge => "too_large",
            DropReason::NotUtf8 => "not_utf8",
            DropReason::NotJson => "not_json",
            DropReason::BadSchema => "bad_schema",
            DropReason::Replay => "replay",
            DropReason::Stale => "stale",
            DropReason::Late => "late",
            DropReason::Truncated => "truncated",
            DropReason::RingFull => "ring_full",
        }
    }
}

impl From<EnvelopeError> for DropReason {
    fn from(e: EnvelopeError) -> DropReason {
        match e {
            EnvelopeError::TooShort => DropReason::TooShort,
            EnvelopeError::NoKeyMatched => DropReason::NoKeyMatched,
            EnvelopeError::BadTag => DropReason::BadTag,
        }
    }
}

impl From<InflateError> for DropReason {
    fn from(e: InflateError) -> DropReason {
        match e {
            InflateError::Corrupt => DropReason::InflateError,
            InflateError::TooLarge => DropReason::TooLarge,
        }
    }
}

impl From<MessageError> for DropReason {
    fn from(e: MessageError) -> DropReason {
        match e {
            MessageError::NotUtf8 => DropReason::NotUtf8,
            MessageError::NotJson => DropReason::NotJson,
            MessageError::BadSchema => DropReason::BadSchema,
        }
    }
}

impl From<crate::proto::service::ServiceError> for DropReason {
    /// A service heartbeat's parse errors use the same labels as an amphora heartbeat's.
    fn from(e: crate::proto::service::ServiceError) -> DropReason {
        use crate::proto::service::ServiceError as E;
        match e {
            E::NotUtf8 => DropReason::NotUtf8,
            E::Json => DropReason::NotJson,
            _ => DropReason::BadSchema,
        }
    }
}

impl From<SeqError> for DropReason {
    fn from(e: SeqError) -> DropReason {
        match e {
            SeqError::Replay => DropReason::Replay,
            SeqError::Stale => DropReason::Stale,
        }
    }
}

/// Adds `n` to a counter that only the calling thread writes (no locked instruction needed).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }
}

/// Counts of one batch, published into [`WorkerCounters`] at its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchTally {
    /// Packets processed.
    pub packets: u64,
    /// Heartbeats applied.
    pub accepted: u64,
    /// Drops by reason.
    pub drops: [u64; DropReason::COUNT],
    /// Agent restarts recognised.
    pub restarts: u64,
    /// Amphorae seen for the first time.
    pub new_senders: u64,
    /// Heartbeats applied whose listener count was not the expected one (liveness not refreshed).
    pub listener_count_mismatches: u64,
    /// Service heartbeats accepted (also counted in `accepted`).
    pub services: u64,
}

impl BatchTally {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
}

/// The counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Packets taken from the ring.
    pub packets: AtomicU64,
    /// Heartbeats applied to the state.
    pub accepted: AtomicU64,
    /// Drops by reason (indexed by `DropReason as usize`).
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Batches processed.
    pub batches: AtomicU64,
    /// Agent restarts recognised by the sequence window.
    pub restarts: AtomicU64,
    /// Amphorae seen for the first time.
    pub new_senders: AtomicU64,
    /// Heartbeats applied whose listener count was not the expected one.
    pub listener_count_mismatches: AtomicU64,
    /// Service heartbeats accepted and handed to the control thread.
    pub services: AtomicU64,
    /// Send-to-applied latency (ns) of heartbeats carrying the load generator's `hs_sent_ns`.
    pub latency: super::histogram::Histogram,
    /// Receive-to-applied latency (ns): the kernel's receive timestamp to the end of the batch
    /// that applied the heartbeat. On loopback the kernel stamps a datagram inside the sender's
    /// `sendmmsg`, so this is send-to-applied there.
    pub rx_latency: super::histogram::Histogram,
}

impl WorkerCounters {
    /// Publishes a batch's tally.
    pub fn publish(&self, t: &BatchTally) {
        bump(&self.packets, t.packets);
        bump(&self.accepted, t.accepted);
        for (c, n) in self.drops.iter().zip(t.drops) {
            bump(c, n);
        }
        bump(&self.batches, 1);
        bump(&self.restarts, t.restarts);
        bump(&self.new_senders, t.new_senders);
        bump(&self.listener_count_mismatches, t.listener_count_mismatches);
        bump(&self.services, t.services);
    }
}

/// The counters of one rx thread.
#[derive(Debug, Default)]
pub struct RxCounters {
    /// Datagrams received from the socket.
    pub packets: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
    /// Datagrams dropped because they were truncated.
    pub truncated: AtomicU64,
    /// Datagrams dropped because the worker ring was full.
    pub ring_full: AtomicU64,
    /// The kernel's count of datagrams dropped on this socket (`SO_RXQ_OVFL`), latest value.
    pub kernel_drops: AtomicU64,
    /// `recvmmsg` calls that returned data.
    pub recv_calls: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_label_and_is_listed_once() {
        let mut labels: Vec<&str> = DropReason::ALL.iter().map(|d| d.label()).collect();
        for (i, d) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "ALL is in discriminant order");
        }
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT, "labels are unique");
    }

    #[test]
    fn each_stage_error_maps_to_exactly_one_reason() {
        let mapped: Vec<DropReason> = [
            DropReason::from(EnvelopeError::TooShort),
            EnvelopeError::NoKeyMatched.into(),
            EnvelopeError::BadTag.into(),
            InflateError::Corrupt.into(),
            InflateError::TooLarge.into(),
            MessageError::NotUtf8.into(),
            MessageError::NotJson.into(),
            MessageError::BadSchema.into(),
            SeqError::Replay.into(),
            SeqError::Stale.into(),
        ]
        .to_vec();
        let mut unique = mapped.clone();
        unique.sort_by_key(|d| *d as usize);
        unique.dedup();
        assert_eq!(unique.len(), mapped.len(), "no two stage errors share a label");
        // The rest are the engine's own: late, truncated, ring_full.
        assert_eq!(mapped.len() + 3, DropReason::COUNT);
    }
}
