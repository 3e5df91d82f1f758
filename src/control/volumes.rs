//! The scheduler on the control thread (Cobalt engine): volumes placed on the machines that
//! heartbeat as services of the machine type, healed when a machine stops beating, only while
//! this heartsink holds the leader lease.
//!
//! A machine is a registered service of type `machine_type` (default `machine`):
//!
//! | machine field | from the service |
//! |---|---|
//! | name | `tag.service_id`, else `ip:port` |
//! | labels | `tag.labels`, a comma-separated string |
//! | available (bytes) | `stat.free_bytes` (a number; absent or negative: 0) |
//! | alive | `tag.up` is not `false` and its last tagged heartbeat is at most `heartbeat_timeout` old |
//!
//! Every method takes the time and queues its durable writes into [`Writes`]: the host runs
//! without threads, sockets or a store.
//!
//! The lease is [`Lease`]: the embedded implementation is [`crate::sched::LocalLease`], a lock on
//! `<data_dir>/leader.lock` (two daemons on one data directory cannot both lead). Without a
//! data directory (benches) the lease is always held.

use serde::{Deserialize, Serialize};

use super::command::{CommandError, Reply, VolumeCommand};
use super::persist::Writes;
use crate::sched::lease::{Lease, LeaseState};
use crate::sched::{Machine, Report, SchedError, Spec, Volume, VolumeState};
use crate::store::{Key, Table};

/// `[scheduler]` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Seconds between executor ticks.
    pub tick_interval: f64,
    /// Cobalt's `delay`, seconds: a placed volume whose machine did not act within it is placed
    /// again; an unplaceable one is retried after it.
    pub delay: f64,
    /// The service type machines register as.
    pub machine_type: String,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig { tick_interval: 1.0, delay: 10.0, machine_type: super::services::MACHINE_TYPE.into() }
    }
}

/// The always-held lease of a daemon without a data directory.
#[derive(Debug, Default)]
pub struct AlwaysLease;

impl Lease for AlwaysLease {
    fn campaign(&mut self, _now_ns: u64) -> LeaseState {
        LeaseState::Held
    }
    fn is_held(&self, _now_ns: u64) -> bool {
        true
    }
    fn release(&mut self) {}
}

/// A volume create request.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    /// A name (free text).
    #[serde(default)]
    pub name: String,
    /// Requested size, bytes.
    pub size: u64,
    /// Labels the machine must carry.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Clone this volume.
    #[serde(default)]
    pub clone_of: Option<u64>,
}

/// A volume change request (only from `ready`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumePatch {
    /// New size, bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// New constraints.
    #[serde(default)]
    pub constraints: Option<Vec<String>>,
}

/// What a machine-side agent reports.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeReport {
    /// The reporting machine's name.
    pub machine: String,
    /// `ready`, `resized`, `removed` or `failed`.
    pub state: String,
    /// `failed`: what went wrong.
    #[serde(default)]
    pub message: String,
    /// `failed`: the agent will not retry (the volume goes to `error`).
    #[serde(default)]
    pub give_up: bool,
}

fn sched_err(e: SchedError) -> CommandError {
    let msg = e.to_string();
    match e {
        SchedError::NotFound { .. } | SchedError::ParentNotFound { .. } => CommandError::NotFound(msg),
        SchedError::IllegalTransition { .. }
        | SchedError::ClonesPending { .. }
        | SchedError::ParentUnusable { .. }
        | SchedError::NotOwner { .. } => CommandError::Conflict(msg),
        SchedError::InvalidSpec { .. } => CommandError::Invalid(msg),
        SchedError::NotModified { .. } => CommandError::NotModified(msg),
        SchedError::InvalidRestore { .. } | SchedError::IdsExhausted => CommandError::Store(msg),
    }
}

/// The scheduler, its lease, and the volumes' durable copies.
pub struct VolumeHost {
    cfg: SchedulerConfig,
    sched: crate::sched::Scheduler,
    lease: Box<dyn Lease + Send>,
    leading: bool,
    last: Option<crate::sched::TickReport>,
    changed: bool,
    /// The id counter as last queued for the store.
    next_id_written: Option<u64>,
}

impl std::fmt::Debug for VolumeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeHost").field("volumes", &self.sched.len()).field("leading", &self.leading).finish()
    }
}

impl VolumeHost {
    /// A scheduler with no volumes, acting while `lease` is held.
    pub fn new(cfg: SchedulerConfig, lease: Box<dyn Lease + Send>) -> VolumeHost {
        let sched = crate::sched::Scheduler::new(crate::sched::SchedConfig {
            delay_ns: super::liveness::secs_ns(cfg.delay),
            ..crate::sched::SchedConfig::default()
        });
        VolumeHost { cfg, sched, lease, leading: false, last: None, changed: true, next_id_written: None }
    }

    /// The settings in force.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// New settings (reload).
    pub fn set_config(&mut self, cfg: SchedulerConfig) {
        self.cfg = cfg;
    }

    /// Whether anything published changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Whether this heartsink holds the leader lease.
    pub fn leading(&self) -> bool {
        self.leading
    }

    /// The latest executor tick.
    pub fn last_tick(&self) -> Option<crate::sched::TickReport> {
        self.last
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &crate::sched::Scheduler {
        &self.sched
    }

    /// Restores volumes and the id counter.
    pub fn restore(&mut self, loaded: &crate::store::Loaded) -> Result<(), crate::store::StoreError> {
        let volumes: Vec<(Key, Volume)> = loaded.decode(Table::Volumes)?;
        let n = volumes.len();
        self.sched
            .restore(volumes.into_iter().map(|(_, v)| v))
            .map_err(|e| crate::store::StoreError::Decode(format!("volumes: {e}")))?;
        if let Ok(meta) = loaded.decode::<u64>(Table::Meta) {
            for (k, v) in meta {
                if k == Key::Name("sched_next_id".into()) {
                    self.sched.ensure_next_id(v);
                }
            }
        }
        let _ = self.sched.take_dirty();
        self.changed = true;
        tracing::info!(volumes = n, "restored volumes");
        Ok(())
    }

    /// Applies the volumes kept in etcd: `full`, they are all of them (replacing what is
    /// held; the next leading tick rescans everything); otherwise the changed ones. Rows are
    /// `(key under tables/, JSON or None)`; `volumes/<id>` and `meta/sched_next_id` are read,
    /// others ignored. The local store gets the same rows, as they are, through
    /// [`Writes::mirrored`] (never written back to etcd). Returns the rows that did not decode.
    pub fn apply_rows(&mut self, full: bool, rows: &[(String, Option<Vec<u8>>)], out: &mut Writes) -> usize {
        let mut bad = 0;
        let mirrored = &mut out.mirrored;
        // Ids continue after every id named under volumes/, even a row that does not decode:
        // an id in etcd is never handed out again.
        let max_id = rows
            .iter()
            .filter_map(|(k, _)| k.strip_prefix("volumes/").and_then(|id| id.parse::<u64>().ok()))
            .filter(|id| *id != u64::MAX)
            .max()
            .unwrap_or(0);
        if full {
            // Bad rows are skipped one by one (counted): id 0 or 2⁶⁴−1, a value whose id is not
            // its key's, a second row of an id already read.
            let mut volumes = Vec::new();
            let mut kept = std::collections::BTreeSet::new();
            for (k, v) in rows {
                let Some(id) = k.strip_prefix("volumes/").and_then(|id| id.parse::<u64>().ok()) else { continue };
                match v.as_ref().map(|v| serde_json::from_slice::<Volume>(v)) {
                    Some(Ok(vol)) if vol.id == id && id != 0 && id != u64::MAX && kept.insert(id) => {
                        mirrored.put_raw(Table::Volumes, Key::Num(id), v.clone().unwrap_or_default());
                        volumes.push(vol);
                    }
                    _ => bad += 1,
                }
            }
            let removed: Vec<u64> = self.sched.list(None).map(|v| v.id).filter(|id| !kept.contains(id)).collect();
            if let Err(e) = self.sched.restore(volumes) {
                // Not reached with the rows filtered above; kept as a loud refusal.
                tracing::error!(error = %e, "the volumes in etcd could not be restored");
                return bad + 1;
            }
            for id in removed {
                mirrored.delete(Table::Volumes, Key::Num(id));
            }
        } else {
            for (k, v) in rows {
                let Some(id) = k.strip_prefix("volumes/").and_then(|id| id.parse::<u64>().ok()) else { continue };
                match v.as_ref().map(|v| serde_json::from_slice::<Volume>(v)) {
                    Some(Ok(vol)) if vol.id == id && id != u64::MAX => {
                        mirrored.put_raw(Table::Volumes, Key::Num(id), v.clone().unwrap_or_default());
                        self.sched.mirror_put(vol);
                    }
                    Some(_) => bad += 1,
                    None => {
                        self.sched.mirror_remove(id);
                        mirrored.delete(Table::Volumes, Key::Num(id));
                    }
                }
            }
        }
        self.sched.ensure_next_id(max_id.saturating_add(1));
        for (k, v) in rows {
            if k == "meta/sched_next_id" {
                if let Some(n) = v.as_ref().and_then(|v| serde_json::from_slice::<u64>(v).ok()) {
                    self.sched.ensure_next_id(n);
                    mirrored.put_json(Table::Meta, Key::Name("sched_next_id".into()), &self.sched.next_id());
                }
            }
        }
        let _ = self.sched.take_dirty();
        // The counter came from etcd: nothing to write back.
        self.next_id_written = Some(self.sched.next_id());
        self.changed = true;
        bad
    }

    /// Queues changed volumes for the store.
    pub fn to_store(&mut self, out: &mut Writes) {
        let dirty = self.sched.take_dirty();
        if dirty.is_empty() {
            return;
        }
        for id in dirty.changed {
            if let Some(v) = self.sched.get(id) {
                out.batch.put_json(Table::Volumes, Key::Num(id), v);
            }
        }
        for id in dirty.removed {
            out.batch.delete(Table::Volumes, Key::Num(id));
        }
        // The id counter only when it moved (in cluster mode every row is an etcd write).
        let next = self.sched.next_id();
        if self.next_id_written != Some(next) {
            out.batch.put_json(Table::Meta, Key::Name("sched_next_id".into()), &next);
            self.next_id_written = Some(next);
        }
        self.changed = true;
    }

    /// The executor tick on `machines`: keep or win the lease, then place, advance and heal.
    pub fn tick(&mut self, now: u64, machines: &[Machine], out: &mut Writes) {
        let state = self.lease.campaign(now);
        let held = state.is_leader();
        if held != self.leading {
            self.leading = held;
            self.changed = true;
            if held {
                tracing::info!("leader lease acquired: scheduling");
            } else {
                tracing::warn!(?state, "leader lease lost: scheduling stopped");
            }
        }
        let r = self.sched.tick(now, machines, held);
        if r.machines_died > 0 || r.healed > 0 {
            tracing::warn!(
                machines_died = r.machines_died,
                volumes_healed = r.healed,
                "machines died: their volumes are placed again"
            );
        }
        if r.placed > 0 {
            tracing::info!(placed = r.placed, unplaceable = r.unplaceable, "volumes placed");
        }
        self.last = Some(r);
        self.to_store(out);
    }

    /// Releases the lease (graceful stop).
    pub fn release(&mut self) {
        self.lease.release();
    }

    /// Executes a volume command at `now`.
    pub fn execute(&mut self, command: VolumeCommand, now: u64, out: &mut Writes) -> Result<Reply, CommandError> {
        use VolumeCommand as C;
        let one = |v: Volume| Reply::Volume(Box::new(v));
        let result = match command {
            C::Create(c) => {
                let spec = Spec::new(c.size, c.constraints);
                self.sched.create(&c.name, spec, c.clone_of, now).map(one).map_err(sched_err)
            }
            C::List(state) => Ok(Reply::Volumes { volumes: self.sched.list(state).cloned().collect() }),
            C::Get(id) => self
                .sched
                .get(id)
                .cloned()
                .map(one)
                .ok_or_else(|| CommandError::NotFound(format!("volume {id} not found"))),
            C::Patch(id, p) => {
                let Some(cur) = self.sched.get(id) else {
                    return Err(CommandError::NotFound(format!("volume {id} not found")));
                };
                let spec = Spec::new(
                    p.size.unwrap_or(cur.requested.reserved_size),
                    p.constraints.unwrap_or_else(|| cur.requested.constraints.clone()),
                );
                self.sched.patch(id, spec, now).map(one).map_err(sched_err)
            }
            C::Delete(id) => self.sched.delete(id, now).map(one).map_err(sched_err),
            C::Report(id, r) => {
                let report = match r.state.as_str() {
                    "ready" => Report::Ready,
                    "resized" => Report::Resized,
                    "removed" => Report::Removed,
                    "failed" => Report::Failed { message: r.message, give_up: r.give_up },
                    other => {
                        return Err(CommandError::Invalid(format!(
                            "state must be ready, resized, removed or failed, not {other:?}"
                        )))
                    }
                };
                self.sched.report(id, &r.machine, report, now).map(one).map_err(sched_err)
            }
        };
        self.to_store(out);
        self.changed = true;
        result
    }
}

/// Parses a `state` filter.
pub fn parse_state(s: &str) -> Option<VolumeState> {
    serde_json::from_value(serde_json::Value::from(s)).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vol(id: u64, name: &str) -> Vec<u8> {
        let v = Volume {
            id,
            name: name.into(),
            requested: Spec::new(1, Vec::<String>::new()),
            actual: None,
            state: VolumeState::Scheduling,
            node: None,
            parent_id: None,
            error: String::new(),
            error_count: 0,
            created_ns: 1,
            updated_ns: 1,
            waiting_reason: None,
        };
        serde_json::to_vec(&v).unwrap()
    }

    /// A full state from etcd with bad rows (id 0, a value whose id is not its key's, the
    /// same id twice, garbage): each is skipped and counted, the good ones are all kept, and
    /// ids continue after every id named under volumes/ (none is handed out twice).
    #[test]
    fn bad_rows_from_etcd_are_skipped_one_by_one_and_ids_are_never_reused() {
        let mut host = VolumeHost::new(SchedulerConfig::default(), Box::new(AlwaysLease));
        let rows: Vec<(String, Option<Vec<u8>>)> = vec![
            ("volumes/00000000000000000000".into(), Some(vol(0, "zero"))),
            ("volumes/00000000000000000001".into(), Some(vol(1, "one"))),
            ("volumes/00000000000000000002".into(), Some(vol(2, "two"))),
            ("volumes/2".into(), Some(vol(2, "two again"))),
            ("volumes/00000000000000000078".into(), Some(vol(5, "mismatch"))),
            ("volumes/00000000000000000090".into(), Some(b"{not json".to_vec())),
            ("meta/sched_next_id".into(), Some(b"3".to_vec())),
        ];
        let mut out = Writes::default();
        let bad = host.apply_rows(true, &rows, &mut out);
        assert_eq!(bad, 4);
        let names: Vec<&str> = host.scheduler().list(None).map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert_eq!(host.scheduler().next_id(), 91, "after the highest id named in etcd");
        // A delta removes and adds one by one.
        let bad = host.apply_rows(
            false,
            &[
                ("volumes/00000000000000000001".into(), None),
                ("volumes/00000000000000000095".into(), Some(vol(95, "new"))),
            ],
            &mut out,
        );
        assert_eq!(bad, 0);
        let ids: Vec<u64> = host.scheduler().list(None).map(|v| v.id).collect();
        assert_eq!(ids, [2, 95]);
        assert_eq!(host.scheduler().next_id(), 96);
    }
}
