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
//! The lease is [`Lease`]: the embedded implementation is [`crate::sched::LocalLease`], a lock on
//! `<data_dir>/leader.lock` (two daemons on one data directory cannot both lead). Without a
//! data directory (benches) the lease is always held.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{CommandError, CommandResult, Control};
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
    match e.http_status() {
        404 => CommandError::NotFound(msg),
        409 => CommandError::Conflict(msg),
        400 => CommandError::Invalid(msg),
        304 => CommandError::NotModified(msg),
        _ => CommandError::Store(msg),
    }
}

fn view(v: &Volume) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

impl Control {
    /// The machines as the scheduler sees them now.
    pub fn machines(&self, now_ns: u64) -> Vec<Machine> {
        let timeout_s = self.cfg.liveness.heartbeat_timeout;
        let now_s = now_ns as f64 / 1e9;
        self.registry
            .services(&self.cfg.scheduler.machine_type)
            .map(|s| {
                let labels = s
                    .tag("tag.labels")
                    .and_then(|v| v.as_str())
                    .map(|l| l.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect())
                    .unwrap_or_default();
                let available = s.tag("stat.free_bytes").and_then(|v| v.as_f64()).map_or(0, |f| f.max(0.0) as u64);
                let up = s.tag("tag.up").and_then(|v| v.as_bool()) != Some(false);
                let fresh = now_s - s.score_timestamp_s as f64 <= timeout_s;
                Machine { name: s.id().to_owned(), labels, available, alive: up && fresh }
            })
            .collect()
    }

    /// Restores volumes and the id counter.
    pub(super) fn restore_volumes(&mut self, loaded: &crate::store::Loaded) -> Result<(), String> {
        let volumes: Vec<(Key, Volume)> = loaded.decode(Table::Volumes).map_err(|e| e.to_string())?;
        let n = volumes.len();
        self.sched.restore(volumes.into_iter().map(|(_, v)| v)).map_err(|e| e.to_string())?;
        if let Ok(meta) = loaded.decode::<u64>(Table::Meta) {
            for (k, v) in meta {
                if k == Key::Name("sched_next_id".into()) {
                    self.sched.ensure_next_id(v);
                }
            }
        }
        let _ = self.sched.take_dirty();
        tracing::info!(volumes = n, "restored volumes");
        Ok(())
    }

    /// Queues changed volumes for the store.
    pub(super) fn volumes_to_store(&mut self) {
        let dirty = self.sched.take_dirty();
        if dirty.is_empty() {
            return;
        }
        for id in dirty.changed {
            if let Some(v) = self.sched.get(id) {
                self.pending.put_json(Table::Volumes, Key::Num(id), v);
            }
        }
        for id in dirty.removed {
            self.pending.delete(Table::Volumes, Key::Num(id));
        }
        self.pending.put_json(Table::Meta, Key::Name("sched_next_id".into()), &self.sched.next_id());
        self.changed = true;
    }

    /// The executor tick: keep or win the lease, then place, advance and heal.
    pub(super) fn task_scheduler(&mut self, now: u64) -> Result<(), String> {
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
        let machines = self.machines(now);
        let r = self.sched.tick(now, &machines, held);
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
        self.last_sched = Some(r);
        self.volumes_to_store();
        Ok(())
    }

    pub(super) fn execute_volumes(&mut self, command: super::Command) -> CommandResult {
        use super::Command as C;
        let now = self.clock.now_ns();
        let result = match command {
            C::VolumeCreate(c) => {
                let spec = Spec::new(c.size, c.constraints);
                self.sched.create(&c.name, spec, c.clone_of, now).map(|v| view(&v)).map_err(sched_err)
            }
            C::VolumeList(state) => {
                let list: Vec<&Volume> = self.sched.list(state).collect();
                Ok(json!({"volumes": list}))
            }
            C::VolumeGet(id) => {
                self.sched.get(id).map(view).ok_or_else(|| CommandError::NotFound(format!("volume {id} not found")))
            }
            C::VolumePatch(id, p) => {
                let Some(cur) = self.sched.get(id) else {
                    return Err(CommandError::NotFound(format!("volume {id} not found")));
                };
                let spec = Spec::new(
                    p.size.unwrap_or(cur.requested.reserved_size),
                    p.constraints.unwrap_or_else(|| cur.requested.constraints.clone()),
                );
                self.sched.patch(id, spec, now).map(|v| view(&v)).map_err(sched_err)
            }
            C::VolumeDelete(id) => self.sched.delete(id, now).map(|v| view(&v)).map_err(sched_err),
            C::VolumeReport(id, r) => {
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
                self.sched.report(id, &r.machine, report, now).map(|v| view(&v)).map_err(sched_err)
            }
            _ => Err(CommandError::Invalid("not a volume command".into())),
        };
        self.volumes_to_store();
        result
    }
}

/// Parses a `state` filter.
pub fn parse_state(s: &str) -> Option<VolumeState> {
    serde_json::from_value(json!(s)).ok()
}
