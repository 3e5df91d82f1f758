//! The worker pipeline, without threads or sockets: a batch of datagrams in, state updates and
//! a tally out. The worker threads run it on batches from the rings; tests and benches run it
//! directly on bytes with a manual clock.
//!
//! Per packet, rejection in cost order: framing (ns) → HMAC (≈0.6 µs a key) → inflate into
//! the reused buffer → UTF-8 + typed parse into a reused [`Heartbeat`]. Then per batch: the
//! parsed heartbeats are grouped by shard and each shard lock is taken once, where the sequence
//! window and Octavia's rules run. Steady traffic allocates nothing: the scratch heartbeats,
//! the inflate buffer and the ordering vector keep their capacity, and an existing amphora's
//! state is updated in place.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam::channel::Sender;

use super::change::Change;
use super::clock::Clock;
use super::counters::{BatchTally, DropReason, WorkerCounters};
use super::shards::Shards;
use crate::proto::envelope;
use crate::proto::inflate::{Backend, Inflater};
use crate::proto::keyring::Keyring;
use crate::proto::octavia::Heartbeat;
use crate::proto::seqwin::{SeqOutcome, SeqWindow};
use crate::proto::service::{is_service_document, ServiceBeat};
use crate::state::AmphoraState;

/// Settings a reload may change while the engine runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Cap on the inflated JSON size, bytes.
    pub max_inflated: usize,
    /// The sequence window's restart gap, ns.
    pub restart_gap_ns: u64,
    /// Octavia's processing-delay bound (`heartbeat_interval`), ns: a heartbeat applied this
    /// long after it was received is dropped as `late`.
    pub max_delay_ns: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_inflated: crate::proto::inflate::DEFAULT_MAX_INFLATED,
            restart_gap_ns: 5_000_000_000,
            max_delay_ns: 10_000_000_000,
        }
    }
}

/// Handles shared by every worker's pipeline.
#[derive(Clone)]
pub struct PipelineShared {
    /// The accepted keys.
    pub keyring: Arc<ArcSwap<Keyring>>,
    /// Reloadable settings.
    pub settings: Arc<ArcSwap<Settings>>,
    /// The amphora states.
    pub shards: Arc<Shards>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Service heartbeats: sequence windows and the hand-off to the control thread.
    pub services: Arc<ServiceLane>,
}

/// Service heartbeats' path from the workers to the control thread (OpenIO-style registry).
/// They are few (one a second per service), so one mutex guards their sequence windows. The
/// parsed messages travel in recycled vectors: the control thread returns each vector to
/// `recycle` once applied, so steady traffic allocates nothing.
#[derive(Debug)]
pub struct ServiceLane {
    /// Sequence window per (type hash, address).
    pub windows: parking_lot::Mutex<rustc_hash::FxHashMap<(u64, std::net::SocketAddr), (SeqWindow, u64)>>,
    /// Batches of parsed service heartbeats for the control thread.
    pub tx: Option<Sender<Vec<ServiceBeat>>>,
    /// Emptied batches coming back.
    pub recycle: crossbeam::queue::ArrayQueue<Vec<ServiceBeat>>,
}

impl ServiceLane {
    /// A lane sending to `tx` (None: service heartbeats are verified and counted, then dropped
    /// on the floor, as in benches without a control thread).
    pub fn new(tx: Option<Sender<Vec<ServiceBeat>>>) -> ServiceLane {
        ServiceLane { windows: Default::default(), tx, recycle: crossbeam::queue::ArrayQueue::new(256) }
    }
}

impl Default for ServiceLane {
    fn default() -> ServiceLane {
        ServiceLane::new(None)
    }
}

/// One worker's pipeline state.
pub struct Pipeline {
    shared: PipelineShared,
    counters: Arc<WorkerCounters>,
    changes_tx: Option<Sender<Vec<Change>>>,
    inflater: Inflater,
    parsed: Vec<Heartbeat>,
    order: Vec<(usize, usize)>,
    sent_ns: Vec<u64>,
    rx_ns: Vec<u64>,
    applied_rx_ns: Vec<u64>,
    changes: Vec<Change>,
    services: Vec<ServiceBeat>,
    services_len: usize,
    spare: Vec<ServiceBeat>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("scratch", &self.parsed.len()).finish()
    }
}

/// What a datagram decoded to.
enum Decoded {
    /// An amphora heartbeat, in `hb`.
    Amphora,
    /// A service heartbeat, in the service scratch.
    Service,
}

/// Verify → inflate → parse one datagram into `hb` (Octavia) or `svc` (a service heartbeat:
/// a document whose only key is `"service"`).
fn decode(
    inflater: &mut Inflater,
    keys: &Keyring,
    packet: &[u8],
    hb: &mut Heartbeat,
    svc: &mut ServiceBeat,
) -> Result<Decoded, DropReason> {
    let verified = envelope::verify(packet, keys)?;
    let json = inflater.inflate(&verified)?;
    if is_service_document(json) {
        svc.parse(json)?;
        return Ok(Decoded::Service);
    }
    hb.parse(json)?;
    Ok(Decoded::Amphora)
}

impl Pipeline {
    /// A pipeline publishing into `counters` and, when given, sending changes to the control
    /// thread.
    pub fn new(
        shared: PipelineShared,
        backend: Backend,
        counters: Arc<WorkerCounters>,
        changes_tx: Option<Sender<Vec<Change>>>,
    ) -> Pipeline {
        let max = shared.settings.load().max_inflated;
        Pipeline {
            shared,
            counters,
            changes_tx,
            inflater: Inflater::new(backend, max),
            parsed: Vec::new(),
            order: Vec::new(),
            sent_ns: Vec::new(),
            rx_ns: Vec::new(),
            applied_rx_ns: Vec::new(),
            changes: Vec::new(),
            services: Vec::new(),
            services_len: 0,
            spare: Vec::new(),
        }
    }

    /// Changes gathered since the last call (when no channel was given).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Runs the sequence window on the batch's service heartbeats and hands the accepted ones
    /// to the control thread in a recycled vector. The beats a recycled vector brings back
    /// become parse scratch again, so their buffers are reused.
    fn hand_over_services(&mut self, recv_ns: u64, restart_gap_ns: u64, tally: &mut BatchTally) {
        use std::hash::BuildHasher;
        let lane = &self.shared.services;
        let mut out = lane.recycle.pop().unwrap_or_default();
        self.spare.append(&mut out);
        {
            let mut windows = lane.windows.lock();
            for svc in self.services.drain(..self.services_len) {
                let key = (rustc_hash::FxBuildHasher.hash_one(svc.kind.as_str()), svc.addr);
                let (window, last) = windows.entry(key).or_insert((SeqWindow::default(), recv_ns));
                let since = recv_ns.saturating_sub(*last);
                match window.check(svc.seq, since, restart_gap_ns) {
                    Ok(outcome) => {
                        *last = (*last).max(recv_ns);
                        if outcome == SeqOutcome::Restarted {
                            tally.restarts += 1;
                        }
                        tally.accepted += 1;
                        tally.services += 1;
                        if outcome == SeqOutcome::Reordered {
                            // Older than one already applied: a service beat carries no
                            // deltas, so it must not overwrite newer tags and stats.
                            self.spare.push(svc);
                        } else {
                            out.push(svc);
                        }
                    }
                    Err(e) => {
                        tally.drop(e.into());
                        self.spare.push(svc);
                    }
                }
            }
        }
        self.services_len = 0;
        self.services.append(&mut self.spare);
        match &lane.tx {
            Some(tx) if !out.is_empty() => {
                let _ = tx.send(out);
            }
            _ => {
                self.services.append(&mut out);
                let _ = lane.recycle.push(out);
            }
        }
    }

    /// Processes one batch of datagrams received at `recv_ns` (wall clock, ns since the epoch).
    pub fn process<'p>(&mut self, packets: impl IntoIterator<Item = &'p [u8]>, recv_ns: u64) -> BatchTally {
        self.process_timed(packets.into_iter().map(|p| (p, 0)), recv_ns)
    }

    /// As [`Pipeline::process`], with each datagram's kernel receive time (0 = unknown), for the
    /// receive-to-applied latency histogram.
    pub fn process_timed<'p>(
        &mut self,
        packets: impl IntoIterator<Item = (&'p [u8], u64)>,
        recv_ns: u64,
    ) -> BatchTally {
        let mut tally = BatchTally::default();
        let keys = self.shared.keyring.load();
        let settings = self.shared.settings.load();
        if settings.max_inflated != self.inflater.max() {
            self.inflater.set_max(settings.max_inflated);
        }
        let shards = &*self.shared.shards;
        self.order.clear();
        self.rx_ns.clear();
        for (packet, rx_ns) in packets {
            tally.packets += 1;
            let n = self.order.len();
            if n == self.parsed.len() {
                self.parsed.push(Heartbeat::default());
            }
            let hb = &mut self.parsed[n];
            if self.services_len == self.services.len() {
                self.services.push(ServiceBeat::default());
            }
            let svc = &mut self.services[self.services_len];
            match decode(&mut self.inflater, &keys, packet, hb, svc) {
                Ok(Decoded::Amphora) => {
                    self.order.push((shards.index(&hb.id), n));
                    self.rx_ns.push(rx_ns);
                }
                Ok(Decoded::Service) => self.services_len += 1,
                Err(r) => tally.drop(r),
            }
        }

        // Group by shard, keeping arrival order within a shard (so within a sender).
        self.order.sort_unstable();
        // Octavia's processing-delay rule, against the kernel receive time when known, else the
        // time the rx thread took the batch. One clock read per batch.
        let now = if self.order.is_empty() { 0 } else { self.shared.clock.now_ns() };
        let max_delay = settings.max_delay_ns;
        self.sent_ns.clear();
        self.applied_rx_ns.clear();
        let mut i = 0;
        while i < self.order.len() {
            let shard_index = self.order[i].0;
            let mut shard = shards.shard(shard_index).lock();
            while let Some(&(s, n)) = self.order.get(i) {
                if s != shard_index {
                    break;
                }
                i += 1;
                let hb = &self.parsed[n];
                let received = if self.rx_ns[n] != 0 { self.rx_ns[n] } else { recv_ns };
                if now.saturating_sub(received) >= max_delay {
                    tally.drop(DropReason::Late);
                    continue;
                }
                let entry = shard.entry(hb.id);
                let new = matches!(entry, Entry::Vacant(_));
                let state = entry.or_insert_with(|| AmphoraState::new(recv_ns));
                match state.apply(hb, recv_ns, settings.restart_gap_ns) {
                    Ok(applied) => {
                        tally.accepted += 1;
                        if applied.seq == Some(SeqOutcome::Restarted) {
                            tally.restarts += 1;
                        }
                        if new {
                            tally.new_senders += 1;
                            self.changes.push(Change::New { id: hb.id, status: state.operating_status });
                        } else if let Some((Some(from), to)) = applied.status_change {
                            self.changes.push(Change::Status { id: hb.id, from, to });
                        }
                        if applied.revived {
                            self.changes.push(Change::Revived(hb.id));
                        }
                        if applied.count_mismatch {
                            tally.listener_count_mismatches += 1;
                        }
                        if let Some(sent) = hb.sent_ns {
                            self.sent_ns.push(sent);
                        }
                        if self.rx_ns[n] != 0 {
                            self.applied_rx_ns.push(self.rx_ns[n]);
                        }
                    }
                    Err(e) => tally.drop(e.into()),
                }
            }
        }
        if !self.sent_ns.is_empty() || !self.applied_rx_ns.is_empty() {
            // The batch's heartbeats count as applied at `now`, read once for the batch.
            for sent in &self.sent_ns {
                self.counters.latency.record(now.saturating_sub(*sent));
            }
            for rx in &self.applied_rx_ns {
                self.counters.rx_latency.record(now.saturating_sub(*rx));
            }
        }
        if self.services_len > 0 {
            self.hand_over_services(recv_ns, settings.restart_gap_ns, &mut tally);
        }
        self.counters.publish(&tally);
        if !self.changes.is_empty() {
            if let Some(tx) = &self.changes_tx {
                // The control thread outlives the workers; a send error only happens at exit.
                let _ = tx.send(std::mem::take(&mut self.changes));
            }
        }
        tally
    }
}
