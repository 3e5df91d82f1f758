//! The fleet part of the control plane: amphora liveness and failovers (Octavia's health
//! manager). It keeps the amphorae's published health, turns the workers' change records and
//! the health checks' outcomes into failover records, starts them on the [`Runner`] within
//! `failover_threads`, and executes the amphora commands of the admin API.
//!
//! Every method takes `now` and queues its durable writes into [`Writes`]: no thread, socket
//! or store is needed to run it (see the control plane's rig tests).

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::census::Census;
use super::command::{CommandError, FleetCommand, Reply};
use super::failover::{FailoverReason, FailoverRecord, FailoverState, Outcome, Runner};
use super::liveness::{GroupKey, Live, Liveness, LivenessConfig, Probed, Signals, SuspendReason};
use super::persist::Writes;
use super::snapshot::AmphoraHealth;
use crate::engine::{Change, Shards};
use crate::proto::octavia::Uuid;
use crate::state::{AmphoraState, OperatingStatus};
use crate::store::{Key, Loaded, StoreError, Table};

/// Amphorae logged one by one per event (stale, back) in one round; the rest are summed up.
const LOG_EACH: usize = 16;

/// Reads an amphora's refresh time and heartbeat count from its shard for the liveness
/// machine, and sets its watch flag if it refreshed at or before `watch_upto` (overdue or
/// stale), under the shard lock: a concurrent heartbeat either is read here or reports itself.
fn probe(shards: &Shards, id: &Uuid, watch_upto: u64) -> Option<Probed> {
    shards.with_mut(id, |s| {
        let refreshed = s.refreshed_ns();
        if refreshed <= watch_upto {
            s.stale = true;
        }
        Probed { last_refresh: refreshed, heartbeats: s.heartbeats.wrapping_add(s.remote_refreshes) }
    })
}

/// What is stored of an amphora.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredAmphora {
    /// Its state (statuses, stats, liveness refresh, expected listeners).
    pub state: AmphoraState,
    /// Its load balancer.
    pub load_balancer: Option<Uuid>,
    /// When it went stale, if it is.
    pub stale_since_ns: Option<u64>,
    /// Whether its stale episode was handled (failover started or stopped).
    pub handled: bool,
    /// Its zone (the group its liveness is judged in).
    #[serde(default)]
    pub zone: Option<String>,
}

/// What a restore found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Amphorae restored.
    pub amphorae: usize,
    /// Failover records restored.
    pub records: usize,
    /// Pending or in-progress records queued to run again.
    pub requeued: usize,
}

/// Liveness, health and failover records of the fleet.
#[derive(Debug)]
pub struct Fleet {
    live: Liveness,
    runner: Box<dyn Runner>,
    records: BTreeMap<u64, FailoverRecord>,
    latest_record: FxHashMap<Uuid, u64>,
    next_record: u64,
    queue: VecDeque<u64>,
    health: imbl::OrdMap<Uuid, AmphoraHealth>,
    down: imbl::OrdSet<Uuid>,
    lbs: imbl::OrdMap<Uuid, imbl::OrdSet<Uuid>>,
    suspended: Vec<SuspendReason>,
    /// Something published changed since the last [`Fleet::take_changed`].
    changed: bool,
    /// Bulk updates since `changed` was last taken (published when due, not at once).
    held: usize,
    /// Scratch: the new amphorae of one round of changes.
    new_ids: Vec<(Uuid, OperatingStatus)>,
    /// Status changes of amphorae new in the same round, applied after they are inserted.
    late_status: Vec<(Uuid, OperatingStatus)>,
    /// Whether this member runs failovers (single mode: always; cluster mode: the leader).
    leading: bool,
    /// Amphora status transitions applied.
    pub status_changes: u64,
    /// Where the store sweep stopped (the next one starts after this id).
    sweep_after: Option<Uuid>,
    /// Revivals logged in the current second: (second, logged one by one, not logged).
    revived_log: (u64, usize, usize),
    /// Counts by status and liveness, the index of those alive and not ONLINE, transitions to log.
    census: Census,
}

/// An amphora's (status, liveness), what the census counts.
fn state_of(h: &AmphoraHealth) -> (OperatingStatus, Live) {
    (h.operating_status, h.liveness)
}

impl Fleet {
    /// An empty fleet at `now`, running failovers on `runner`.
    pub fn new(cfg: LivenessConfig, runner: Box<dyn Runner>, now: u64) -> Fleet {
        let live = Liveness::new(cfg, now);
        let suspended = live.suspension(now);
        Fleet {
            live,
            runner,
            records: BTreeMap::new(),
            latest_record: FxHashMap::default(),
            next_record: 1,
            queue: VecDeque::new(),
            health: imbl::OrdMap::new(),
            down: imbl::OrdSet::new(),
            lbs: imbl::OrdMap::new(),
            suspended,
            changed: true,
            held: 0,
            new_ids: Vec::new(),
            late_status: Vec::new(),
            leading: true,
            status_changes: 0,
            sweep_after: None,
            revived_log: (0, 0, 0),
            census: Census::default(),
        }
    }

    /// The liveness rules in force.
    pub fn config(&self) -> &LivenessConfig {
        self.live.config()
    }

    /// New liveness rules and failover action settings (reload).
    pub fn set_config(&mut self, cfg: LivenessConfig, failover: super::failover::FailoverConfig) {
        self.live.set_config(cfg);
        self.runner.set_config(failover);
    }

    /// Whether anything published changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        self.held = 0;
        std::mem::take(&mut self.changed)
    }

    /// Cluster mode: the reasons from outside this member's own signals (see
    /// [`Liveness::set_external`]).
    pub fn set_external(&mut self, reasons: Vec<SuspendReason>) {
        self.live.set_external(reasons);
    }

    /// Cluster mode: whether this member leads (runs failovers). While it does not, no record
    /// is dispatched; manual failovers are refused.
    pub fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
    }

    /// Whether this member runs failovers.
    pub fn leading(&self) -> bool {
        self.leading
    }

    /// Cluster mode: takes the failover records etcd holds as this member's. A member that does
    /// not lead serves them as they are; a new leader also queues the pending and in-progress
    /// ones to run (an in-progress one's leader died or lost its term mid-action: it runs again,
    /// once). Record ids continue after the highest.
    pub fn mirror_records(&mut self, records: Vec<FailoverRecord>, leading: bool, now: u64) {
        self.records = records.into_iter().map(|r| (r.id, r)).collect();
        self.latest_record.clear();
        for r in self.records.values() {
            self.latest_record.insert(r.amphora, r.id);
        }
        if let Some(max) = self.records.keys().next_back() {
            self.next_record = self.next_record.max(max + 1);
        }
        for (amphora, id) in &self.latest_record {
            if let (Some(h), Some(r)) = (self.health.get_mut(amphora), self.records.get(id)) {
                if h.failover != Some((*id, r.state)) {
                    h.failover = Some((*id, r.state));
                }
            }
        }
        if leading {
            self.queue.clear();
            for r in self.records.values_mut() {
                if matches!(r.state, FailoverState::Pending | FailoverState::InProgress) {
                    r.state = FailoverState::Pending;
                    r.updated_ns = now;
                    self.queue.push_back(r.id);
                }
            }
        }
        self.changed = true;
    }

    /// Whether a transition changed what is published since the last [`Fleet::take_changed`].
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// Bulk updates (new amphorae, re-armed refresh times) since the last
    /// [`Fleet::take_changed`].
    pub fn held(&self) -> usize {
        self.held
    }

    /// Restores amphorae into the shards, one stored row at a time, then the failover records;
    /// pending and in-progress records are queued to run again (at least once). `amphorae`
    /// calls its argument with each stored amphora row (the store streams them: a million rows
    /// are never held in memory at once).
    ///
    /// An amphora's row is written on its transitions and by the sweep, not on every
    /// heartbeat, so its stored last refresh may be old; `heard_at` is when the sink last
    /// recorded itself running (its `report_state` record): an amphora not stale then had
    /// refreshed within about `heartbeat_timeout` of it (expiry may lag a little), so its last
    /// refresh is shown as at least `heard_at − heartbeat_timeout`. Liveness does not judge by
    /// it: the restart treats every amphora not stale as heard at the restore's end
    /// ([`Fleet::restart_grace`]).
    pub fn restore(
        &mut self,
        amphorae: impl FnOnce(&mut crate::store::RowVisitor<'_>) -> Result<(), StoreError>,
        loaded: &Loaded,
        heard_at: Option<u64>,
        shards: &Shards,
    ) -> Result<Restored, StoreError> {
        let floor = heard_at.map_or(0, |t| t.saturating_sub(self.live.config().timeout_ns()));
        let mut report = Restored::default();
        let mut health = Vec::new();
        amphorae(&mut |key, bytes| {
            let Key::Id(raw) = key else { return Ok(()) };
            let stored: StoredAmphora = serde_json::from_slice(bytes)
                .map_err(|e| StoreError::Decode(format!("{:?} {key:?}: {e}", Table::Amphorae)))?;
            report.amphorae += 1;
            let id = Uuid::from_bytes(raw);
            health.push((id, self.restore_amphora(id, stored, floor, shards)));
            Ok(())
        })?;
        // The rows come in id order; inserted in that order, the published B-tree would keep
        // every node half full (each split leaves its left half alone for good), half as large
        // again as the same map filled by live traffic. Inserted in a hashed order instead.
        health.sort_unstable_by_key(|(id, _)| {
            let b = id.as_bytes();
            u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        for (id, h) in health {
            self.health.insert(id, h);
        }
        let records: Vec<(Key, FailoverRecord)> = loaded.decode(Table::Failovers)?;
        report.records = records.len();
        for (_, mut r) in records {
            self.next_record = self.next_record.max(r.id + 1);
            if matches!(r.state, FailoverState::Pending | FailoverState::InProgress) {
                // Decided before the restart and maybe not carried out: run again (at least once).
                r.state = FailoverState::Pending;
                self.queue.push_back(r.id);
                report.requeued += 1;
            }
            self.latest_record.insert(r.amphora, r.id);
            if let Some(h) = self.health.get_mut(&r.amphora) {
                h.failover = Some((r.id, r.state));
            }
            self.records.insert(r.id, r);
        }
        self.changed = true;
        Ok(report)
    }

    /// Restores one amphora into the shards and the liveness machine; returns its published
    /// health (inserted by the caller).
    fn restore_amphora(&mut self, id: Uuid, stored: StoredAmphora, floor: u64, shards: &Shards) -> AmphoraHealth {
        let mut state = stored.state.restored();
        state.stale = stored.stale_since_ns.is_some();
        if !state.stale && state.last_refresh_ns > 0 {
            state.last_refresh_ns = state.last_refresh_ns.max(floor);
        }
        let health = AmphoraHealth {
            operating_status: state.operating_status,
            liveness: if state.stale { Live::Stale } else { Live::Alive },
            last_refresh_ns: state.last_refresh_ns,
            first_seen_ns: state.first_seen_ns,
            load_balancer: stored.load_balancer,
            expected_listeners: state.expected_listeners,
            zone: stored.zone.clone(),
            failover: None,
        };
        self.live.track(id, state.last_refresh_ns, stored.stale_since_ns, stored.handled);
        self.live.set_group(&id, GroupKey::of(stored.zone.as_deref(), stored.load_balancer));
        if stored.stale_since_ns.is_some() {
            self.down.insert(id);
        }
        self.census.moved(id, None, Some(state_of(&health)), 0, false);
        if let Some(lb) = stored.load_balancer {
            self.lbs.entry(lb).or_default().insert(id);
        }
        shards.insert_if_absent(id, state);
        health
    }

    /// Applies batches of change records from the workers (a new amphora's first status comes
    /// with it, so no shard is read).
    pub fn apply_changes(&mut self, batches: impl Iterator<Item = Vec<Change>>, now: u64, out: &mut Writes) {
        // One window a second: LOG_EACH revivals logged one by one, the rest summed up when
        // the window ends (a fleet coming back at once is one summary line a second, not one
        // line per amphora).
        let second = now / 1_000_000_000;
        if self.revived_log.0 != second {
            if self.revived_log.2 > 0 {
                tracing::info!(
                    more = self.revived_log.2,
                    "more stale amphorae are beating again (not logged one by one)"
                );
            }
            self.revived_log = (second, 0, 0);
        }
        for batch in batches {
            for c in batch {
                match c {
                    // Inserted after the loop, in id order: neighbouring inserts share the
                    // upper nodes of the published map (a fill costs fewer cache misses).
                    Change::New { id, status } => self.new_ids.push((id, status)),
                    Change::Status { id, from, to } => {
                        self.changed = true;
                        self.status_changes += 1;
                        if let Some(h) = self.health.get_mut(&id) {
                            let before = state_of(h);
                            h.operating_status = to;
                            self.census.moved(id, Some(before), Some(state_of(h)), now, true);
                        } else {
                            // New in this same round (inserted below): it takes the latest.
                            self.late_status.push((id, to));
                        }
                        out.amphora(id);
                        if to == OperatingStatus::Online {
                            tracing::debug!(amphora = %id, from = from.as_str(), to = to.as_str(), "amphora status changed");
                        } else {
                            tracing::info!(amphora = %id, from = from.as_str(), to = to.as_str(), "amphora status changed");
                        }
                    }
                    Change::Revived(id) => self.revive(id, now, out),
                }
            }
        }
        // New amphorae, with the status of their first heartbeat; a status change that came in
        // the same round (after that heartbeat) is applied once they are in.
        let mut new_ids = std::mem::take(&mut self.new_ids);
        new_ids.sort_unstable_by_key(|&(id, _)| id);
        for (id, status) in new_ids.drain(..) {
            self.add_new(id, status, now, out);
        }
        if new_ids.capacity() > 4096 {
            new_ids = Vec::new();
        }
        self.new_ids = new_ids;
        for (id, to) in std::mem::take(&mut self.late_status) {
            if let Some(h) = self.health.get_mut(&id) {
                let before = state_of(h);
                h.operating_status = to;
                self.census.moved(id, Some(before), Some(state_of(h)), now, true);
            }
        }
    }

    /// Starts tracking a new amphora first heard (here or by a peer) at `now`, with the
    /// operating status its first heartbeat set.
    fn add_new(&mut self, id: Uuid, operating_status: OperatingStatus, now: u64, out: &mut Writes) {
        self.held += 1;
        self.live.track(id, now, None, false);
        // One walk of the ordered map: the insert returns what it replaced (an amphora a peer
        // reported before this member's first heartbeat, say).
        let replaced = self.health.insert(
            id,
            AmphoraHealth {
                operating_status,
                liveness: Live::Alive,
                last_refresh_ns: now,
                first_seen_ns: now,
                load_balancer: None,
                expected_listeners: None,
                zone: None,
                failover: None,
            },
        );
        let before = replaced.as_ref().map(state_of);
        self.census.moved(id, before, Some((operating_status, Live::Alive)), now, true);
        out.amphora(id);
        tracing::debug!(amphora = %id, "new amphora");
    }

    /// An overdue or stale amphora refreshed at `at` (its watch flag was set): alive again.
    fn revive(&mut self, id: Uuid, at: u64, out: &mut Writes) {
        if !self.live.revived(id, at) {
            return;
        }
        self.changed = true;
        if let Some(h) = self.health.get_mut(&id) {
            let before = state_of(h);
            h.liveness = Live::Alive;
            h.last_refresh_ns = at;
            self.census.moved(id, Some(before), Some(state_of(h)), at, true);
        }
        self.down.remove(&id);
        out.amphora(id);
        if self.revived_log.1 < LOG_EACH {
            self.revived_log.1 += 1;
            tracing::info!(amphora = %id, "stale amphora is beating again");
        } else {
            self.revived_log.2 += 1;
        }
        self.cancel_unstarted(id, at, out);
    }

    /// Cluster mode: applies a peer's digest (amphora, heard at, status). Each refresh newer
    /// than any known is taken into the shard (liveness reads the newest of this member's and
    /// its peers'); an amphora only a peer heard is tracked as new. Returns the refreshes taken.
    pub fn apply_remote(
        &mut self,
        heard: &[(Uuid, u64, OperatingStatus)],
        by: u16,
        now: u64,
        shards: &Shards,
        out: &mut Writes,
    ) -> u64 {
        let mut taken = 0;
        for &(id, at, status) in heard {
            // Never in the future of this member's clock.
            let at = at.min(now);
            match shards.with_mut(&id, |s| s.heard_remotely(at, status, by)) {
                Some((revived, changed)) => {
                    taken += 1;
                    if changed {
                        self.changed = true;
                        self.status_changes += 1;
                        if let Some(h) = self.health.get_mut(&id) {
                            let before = state_of(h);
                            h.operating_status = status;
                            self.census.moved(id, Some(before), Some(state_of(h)), now, true);
                        }
                        out.amphora(id);
                    }
                    if revived {
                        self.revive(id, at, out);
                    }
                }
                None => {
                    let mut st = AmphoraState::new(at);
                    st.remote_refresh_ns = at;
                    st.remote_refreshes = 1;
                    st.remote_by = by;
                    st.operating_status = status;
                    shards.insert_if_absent(id, st);
                    self.add_new(id, status, at, out);
                    taken += 1;
                }
            }
        }
        taken
    }

    /// A stale amphora was heard again: its failover record, if not started yet (`pending`,
    /// or `stopped` by the breaker), is cancelled and will never run.
    fn cancel_unstarted(&mut self, id: Uuid, now: u64, out: &mut Writes) {
        let Some(&r) = self.latest_record.get(&id) else { return };
        let Some(rec) = self.records.get_mut(&r) else { return };
        if rec.reason != FailoverReason::Stale || !matches!(rec.state, FailoverState::Pending | FailoverState::Stopped)
        {
            return;
        }
        tracing::info!(amphora = %id, failover = r, was = rec.state.as_str(), "failover cancelled: the amphora is beating again");
        rec.state = FailoverState::Cancelled;
        rec.updated_ns = now;
        self.touch_record(r, out);
    }

    /// One health check: expired deadlines are probed in the shards (and the overdue or stale
    /// ones flagged there, under the shard lock, so a concurrent heartbeat either re-arms or
    /// reports itself), suspension is decided from `signals` and the overdue shares, and
    /// failovers are decided.
    pub fn health_check(&mut self, now: u64, signals: Signals, shards: &Shards, out: &mut Writes) {
        let check = self.live.check(now, signals, |id, watch_upto| probe(shards, id, watch_upto));
        let was = std::mem::take(&mut self.suspended);
        self.suspended = check.suspended.clone();
        let keys =
            |v: &[SuspendReason]| v.iter().map(|s| (s.label(), s.group().map(str::to_owned))).collect::<Vec<_>>();
        if keys(&was) != keys(&self.suspended) {
            self.changed = true;
            if self.suspended.is_empty() {
                tracing::info!("automatic failovers resumed");
            } else {
                let reasons: Vec<String> = self
                    .suspended
                    .iter()
                    .map(|s| s.group().map_or_else(|| s.label().to_owned(), |g| format!("{}({g})", s.label())))
                    .collect();
                tracing::warn!(?reasons, detail = ?self.suspended, "automatic failovers suspended or held back");
            }
        }
        self.absorb(&check, now, out);
        if !check.stopped.is_empty() {
            tracing::error!(
                stale = check.stopped.len(),
                threshold = ?self.live.config().failover_threshold,
                "stale amphora count reached the failover threshold: failovers stopped"
            );
        }
        for (id, last, since) in check.stopped {
            match self.record_for_episode(id, since) {
                Some(r) if self.records.get(&r).is_some_and(|r| r.state == FailoverState::Stopped) => {}
                _ => {
                    self.new_record(id, FailoverReason::Stale, FailoverState::Stopped, last, since, now, out);
                }
            }
        }
        for (id, last, since) in check.start {
            // A record made for this silence already (by this member, or by a leader before it:
            // a new leader's view of an amphora its predecessor failed over): never a second
            // one. A record covers the silence when it was made after the amphora's last
            // refresh (member clocks are assumed to agree to well within a timeout).
            // The amphora's last real refresh (heard here or by a peer), not the liveness
            // machine's, which a restart or a new leader's grace moves to "now".
            let heard = shards.with(&id, |s| s.refreshed_ns()).unwrap_or(last);
            let covered = self.latest_record.get(&id).and_then(|r| self.records.get(r)).is_some_and(|r| {
                r.reason == FailoverReason::Stale
                    && r.state != FailoverState::Cancelled
                    && r.state != FailoverState::Stopped
                    && r.created_ns >= heard
            });
            if covered {
                self.live.mark_handled(&id);
                continue;
            }
            let existing = self
                .record_for_episode(id, since)
                .filter(|r| self.records.get(r).is_some_and(|r| r.state == FailoverState::Stopped));
            let rid = match existing {
                Some(r) => {
                    if let Some(rec) = self.records.get_mut(&r) {
                        rec.state = FailoverState::Pending;
                        rec.updated_ns = now;
                    }
                    self.touch_record(r, out);
                    r
                }
                None => self.new_record(id, FailoverReason::Stale, FailoverState::Pending, last, since, now, out),
            };
            self.queue.push_back(rid);
        }
    }

    /// Expires passed deadlines between health checks (each control round), at most
    /// `budget`: re-armed refreshes are published, newly stale amphorae recorded; failovers
    /// are still decided only by [`Fleet::health_check`].
    /// Returns whether passed deadlines are left beyond `budget`.
    pub fn advance(&mut self, now: u64, budget: usize, shards: &Shards, out: &mut Writes) -> bool {
        let check = self.live.advance(now, budget, |id, watch_upto| probe(shards, id, watch_upto));
        self.absorb(&check, now, out);
        self.live.behind()
    }

    /// The re-armed and newly stale amphorae of an expiry.
    fn absorb(&mut self, check: &super::liveness::Check, now: u64, out: &mut Writes) {
        // A re-armed deadline is no transition: published, not written to the store.
        for (id, last) in &check.rearmed {
            if let Some(h) = self.health.get_mut(id) {
                h.last_refresh_ns = *last;
            }
            self.held += 1;
        }
        for (i, (id, last)) in check.newly_stale.iter().enumerate() {
            if let Some(h) = self.health.get_mut(id) {
                let before = state_of(h);
                h.liveness = Live::Stale;
                h.last_refresh_ns = *last;
                self.census.moved(*id, Some(before), Some(state_of(h)), now, true);
            }
            self.down.insert(*id);
            out.amphora(*id);
            self.changed = true;
            if i < LOG_EACH {
                tracing::warn!(amphora = %id, silent_s = now.saturating_sub(*last) as f64 / 1e9, "amphora is stale");
            }
        }
        if check.newly_stale.len() > LOG_EACH {
            tracing::warn!(
                more = check.newly_stale.len() - LOG_EACH,
                "more amphorae are stale (not logged one by one)"
            );
        }
    }

    fn record_for_episode(&self, id: Uuid, since: u64) -> Option<u64> {
        self.latest_record.get(&id).copied().filter(|r| self.records.get(r).is_some_and(|r| r.stale_since_ns == since))
    }

    #[allow(clippy::too_many_arguments)]
    fn new_record(
        &mut self,
        amphora: Uuid,
        reason: FailoverReason,
        state: FailoverState,
        last: u64,
        since: u64,
        now: u64,
        out: &mut Writes,
    ) -> u64 {
        let id = self.next_record;
        self.next_record += 1;
        let first_seen_ns = self.health.get(&amphora).map_or(0, |h| h.first_seen_ns);
        let rec = FailoverRecord {
            id,
            amphora,
            reason,
            state,
            first_seen_ns,
            last_seen_ns: last,
            stale_since_ns: since,
            created_ns: now,
            updated_ns: now,
            attempts: 0,
            action: self.runner.action(),
            error: None,
        };
        self.records.insert(id, rec);
        self.latest_record.insert(amphora, id);
        self.touch_record(id, out);
        id
    }

    fn touch_record(&mut self, id: u64, out: &mut Writes) {
        self.changed = true;
        if let Some(r) = self.records.get(&id) {
            if let Some(h) = self.health.get_mut(&r.amphora) {
                if self.latest_record.get(&r.amphora) == Some(&id) {
                    h.failover = Some((id, r.state));
                }
            }
            out.batch.put_json(Table::Failovers, Key::Num(id), r);
            // The amphora's `handled` flag changed with it.
            out.amphora(r.amphora);
        }
    }

    /// Starts queued failovers while fewer than `failover_threads` run.
    pub fn dispatch(&mut self, now: u64, out: &mut Writes) {
        if !self.leading {
            return;
        }
        while self.live.in_flight() < self.live.config().failover_threads.max(1) {
            let Some(id) = self.queue.pop_front() else { break };
            let Some(rec) = self.records.get_mut(&id) else { continue };
            if rec.state != FailoverState::Pending {
                continue;
            }
            rec.state = FailoverState::InProgress;
            rec.updated_ns = now;
            let copy = rec.clone();
            tracing::warn!(amphora = %copy.amphora, failover = id, reason = ?copy.reason, action = %copy.action, "failover started");
            self.live.failover_started();
            self.runner.run(copy);
            self.touch_record(id, out);
        }
    }

    /// Records the runner's outcomes.
    pub fn collect_outcomes(&mut self, now: u64, out: &mut Writes) {
        let outcomes = self.runner.outcomes();
        self.apply_outcomes(outcomes, now, out);
    }

    fn apply_outcomes(&mut self, outcomes: Vec<Outcome>, now: u64, out: &mut Writes) {
        for o in outcomes {
            self.live.failover_finished();
            if o.fenced {
                // Not run: this member lost its term. The record stays pending in etcd for
                // the leader, which resumes it; here it is pending again, not failed.
                if let Some(rec) = self.records.get_mut(&o.id) {
                    rec.state = FailoverState::Pending;
                    rec.error = o.error;
                }
                self.changed = true;
                continue;
            }
            if let Some(rec) = self.records.get_mut(&o.id) {
                rec.state = if o.ok { FailoverState::Done } else { FailoverState::Failed };
                rec.attempts = o.attempts;
                rec.error = o.error;
                rec.updated_ns = now;
                if o.ok {
                    tracing::info!(amphora = %rec.amphora, failover = o.id, attempts = o.attempts, "failover done");
                } else {
                    tracing::error!(amphora = %rec.amphora, failover = o.id, error = ?rec.error, "failover failed");
                }
            }
            self.touch_record(o.id, out);
        }
    }

    /// Stops the runner, letting running actions finish, and records their outcomes.
    pub fn stop(&mut self, now: u64, out: &mut Writes) {
        let outcomes = self.runner.stop();
        self.apply_outcomes(outcomes, now, out);
    }

    /// Marks up to `n` amphorae for rewriting, in id order from where the last sweep stopped
    /// (wrapping around): their heartbeat counts and statistics reach the store at a fixed
    /// rate, whatever the fleet's size. Returns how many were marked.
    pub fn sweep(&mut self, n: usize, out: &mut Writes) -> usize {
        use std::ops::Bound::{Excluded, Unbounded};
        let n = n.min(self.health.len());
        let mut marked = 0;
        while marked < n {
            let from = self.sweep_after.map_or(Unbounded, Excluded);
            let mut last = None;
            for (id, _) in self.health.range((from, Unbounded)).take(n - marked) {
                out.amphora(*id);
                last = Some(*id);
                marked += 1;
            }
            // Past the end: on from the first id.
            self.sweep_after = if marked < n { None } else { last };
            if last.is_none() && from == Unbounded {
                break;
            }
        }
        marked
    }

    /// Marks every amphora for rewriting (a graceful stop: the store gets every count).
    pub fn mark_all(&self, out: &mut Writes) {
        for id in self.health.keys() {
            out.amphora(*id);
        }
    }

    /// The start-up grace counts from `now`: heartbeats are read from now on.
    pub fn restart_grace(&mut self, now: u64) {
        self.live.restart_grace(now);
        self.suspended = self.live.suspension(now);
        self.changed = true;
    }

    /// Prunes the oldest finished records beyond `max`.
    pub fn prune(&mut self, max: usize, out: &mut Writes) {
        let max = max.max(1);
        // The latest record of an amphora still stale is kept: it is what tells this member,
        // and any later leader, that the silence was handled (pruned, a second failover of the
        // same silence would follow).
        let finished: Vec<u64> = self
            .records
            .values()
            .filter(|r| matches!(r.state, FailoverState::Done | FailoverState::Failed | FailoverState::Cancelled))
            .filter(|r| !(self.down.contains(&r.amphora) && self.latest_record.get(&r.amphora) == Some(&r.id)))
            .map(|r| r.id)
            .collect();
        let excess = self.records.len().saturating_sub(max).min(finished.len());
        for id in finished.into_iter().take(excess) {
            if let Some(r) = self.records.remove(&id) {
                if self.latest_record.get(&r.amphora) == Some(&id) {
                    self.latest_record.remove(&r.amphora);
                }
            }
            out.batch.delete(Table::Failovers, Key::Num(id));
        }
    }

    /// The stored row of each amphora in `states` (read from the shards by the caller).
    pub fn stored(&self, id: &Uuid, state: AmphoraState) -> Option<StoredAmphora> {
        let h = self.health.get(id)?;
        Some(StoredAmphora {
            state,
            load_balancer: h.load_balancer,
            stale_since_ns: self.live.stale_since(id),
            handled: self.live.handled(id),
            zone: h.zone.clone(),
        })
    }

    /// The amphora commands of the admin API.
    pub fn execute(
        &mut self,
        command: FleetCommand,
        now: u64,
        shards: &Shards,
        out: &mut Writes,
    ) -> Result<Reply, CommandError> {
        self.changed |= !matches!(command, FleetCommand::Failovers { .. } | FleetCommand::Record(_));
        match command {
            FleetCommand::Failover(_) if !self.leading => {
                Err(CommandError::NotLeader("manual failovers run on the leader; see GET /v1/cluster".into()))
            }
            FleetCommand::Failover(id) => {
                let Some(h) = self.health.get(&id) else {
                    return Err(CommandError::NotFound(format!("no amphora {id}")));
                };
                if let Some((r, st)) = h.failover {
                    if matches!(st, FailoverState::Pending | FailoverState::InProgress) {
                        return Err(CommandError::Conflict(format!(
                            "failover {r} of amphora {id} is already {}",
                            st.as_str()
                        )));
                    }
                }
                let last = h.last_refresh_ns;
                self.live.mark_handled(&id);
                let rid = self.new_record(id, FailoverReason::Manual, FailoverState::Pending, last, now, now, out);
                self.queue.push_back(rid);
                self.dispatch(now, out);
                self.records
                    .get(&rid)
                    .cloned()
                    .map(Reply::Failover)
                    .ok_or_else(|| CommandError::NotFound(format!("no failover record {rid}")))
            }
            FleetCommand::Forget(id) => {
                let Some(h) = self.health.remove(&id) else {
                    return Err(CommandError::NotFound(format!("no amphora {id}")));
                };
                self.census.moved(id, Some(state_of(&h)), None, now, false);
                shards.remove(&id);
                self.live.forget(&id);
                self.down.remove(&id);
                if let Some(lb) = h.load_balancer {
                    self.leave_lb(lb, &id);
                }
                out.amphorae.remove(&id);
                out.batch.delete(Table::Amphorae, Key::Id(*id.as_bytes()));
                tracing::info!(amphora = %id, "amphora forgotten");
                Ok(Reply::Forgotten { forgotten: id })
            }
            FleetCommand::Configure { id, expected_listeners, load_balancer, zone } => {
                let Some(h) = self.health.get_mut(&id) else {
                    return Err(CommandError::NotFound(format!("no amphora {id}")));
                };
                if let Some(e) = expected_listeners {
                    h.expected_listeners = e;
                    shards.with_mut(&id, |s| s.expected_listeners = e);
                }
                let old = h.load_balancer;
                if let Some(lb) = load_balancer {
                    h.load_balancer = lb;
                }
                if let Some(z) = zone {
                    h.zone = z;
                }
                let group = GroupKey::of(h.zone.as_deref(), h.load_balancer);
                let reply = Reply::Amphora(h.clone());
                self.live.set_group(&id, group);
                if let Some(lb) = load_balancer {
                    if let Some(old) = old {
                        self.leave_lb(old, &id);
                    }
                    if let Some(new) = lb {
                        self.lbs.entry(new).or_default().insert(id);
                    }
                }
                out.amphora(id);
                Ok(reply)
            }
            FleetCommand::Failovers { marker, limit } => {
                let lower = marker.map_or(0, |m| m + 1);
                let failovers: Vec<FailoverRecord> =
                    self.records.range(lower..).take(limit).map(|(_, r)| r.clone()).collect();
                let next_marker = if failovers.len() == limit { failovers.last().map(|r| r.id) } else { None };
                Ok(Reply::Failovers { failovers, next_marker })
            }
            FleetCommand::Record(id) => self
                .records
                .get(&id)
                .cloned()
                .map(Reply::Failover)
                .ok_or_else(|| CommandError::NotFound(format!("no failover record {id}"))),
        }
    }

    fn leave_lb(&mut self, lb: Uuid, id: &Uuid) {
        if let Some(set) = self.lbs.get_mut(&lb) {
            set.remove(id);
            if set.is_empty() {
                self.lbs.remove(&lb);
            }
        }
    }

    /// Every known amphora's published health.
    pub fn health(&self) -> &imbl::OrdMap<Uuid, AmphoraHealth> {
        &self.health
    }

    /// Stale amphorae.
    pub fn down(&self) -> &imbl::OrdSet<Uuid> {
        &self.down
    }

    /// Load balancer → its amphorae.
    pub fn load_balancers(&self) -> &imbl::OrdMap<Uuid, imbl::OrdSet<Uuid>> {
        &self.lbs
    }

    /// Why failovers are suspended now.
    pub fn suspended(&self) -> &[SuspendReason] {
        &self.suspended
    }

    /// Records by state, in [`FailoverState::ALL`] order.
    pub fn failover_counts(&self) -> [u64; FailoverState::ALL.len()] {
        let mut counts = [0u64; FailoverState::ALL.len()];
        for r in self.records.values() {
            counts[FailoverState::ALL.iter().position(|s| *s == r.state).unwrap_or(0)] += 1;
        }
        counts
    }

    /// A failover record.
    pub fn record(&self, id: u64) -> Option<&FailoverRecord> {
        self.records.get(&id)
    }

    /// Every failover record, by id.
    pub fn records(&self) -> impl Iterator<Item = &FailoverRecord> {
        self.records.values()
    }

    /// Amphorae tracked by the liveness rules.
    pub fn tracked(&self) -> usize {
        self.live.tracked()
    }

    /// Counts by status and liveness, the index of those alive and not ONLINE, the transitions.
    pub fn census(&self) -> &Census {
        &self.census
    }

    /// The transitions since the last call, oldest first, and how many did not fit (for the
    /// published log).
    pub fn take_transitions(&mut self) -> (VecDeque<super::census::Transition>, u64) {
        self.census.take_transitions()
    }

    /// Stale amphorae.
    pub fn stale_count(&self) -> usize {
        self.live.stale_count()
    }
}
