//! The service registry and load-balancing pools on the control thread (OpenIO conscience):
//! registrations from service heartbeats and the admin API, score expiry every second, a new
//! [`World`] for polling every `world_refresh_interval` when the registry changed, and the
//! durable copies of services and pools.
//!
//! Reads of pools (`next`, `poll`) never reach the control thread: they use the published
//! snapshot's world and pools.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{CommandError, CommandResult, Control};
use crate::proto::service::{ServiceBeat, ServiceOp};
use crate::registry::lb::{Pool, World};
use crate::registry::{Deregistered, Registration, RegistryError, ScoreOp, Service, TagValue, TypeConfig};
use crate::store::{Key, Table};

/// `[services]` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// Service types (`[[services.types]]`); default: OpenIO's built-ins and `machine`.
    pub types: Vec<TypeConfig>,
    /// Seconds between rebuilds of the polling world (when the registry changed).
    pub world_refresh_interval: f64,
}

/// The type machines (scheduler targets) register as, unless configured otherwise.
pub const MACHINE_TYPE: &str = "machine";

impl Default for ServicesConfig {
    fn default() -> ServicesConfig {
        let mut types = TypeConfig::builtins();
        let mut machine = TypeConfig::new(MACHINE_TYPE);
        // A machine is eligible by its liveness, not by a manual unlock.
        machine.lock_at_first_register = false;
        machine.score_variation_bound = 0;
        types.push(machine);
        ServicesConfig { types, world_refresh_interval: 1.0 }
    }
}

/// What a registration request does (the conscience proxy's actions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushAction {
    /// A heartbeat: tags merged, score recomputed unless locked.
    Register,
    /// Lock at the given score (0 when absent).
    Lock,
    /// Unlock and recompute.
    Unlock,
    /// Remove (guarded by `mtime` when given).
    Deregister,
}

/// One service in a registration request.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// Namespace (accepted and ignored: heartsink has one).
    #[serde(default)]
    pub ns: Option<String>,
    /// Service type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `ip:port`.
    pub addr: String,
    /// Lock score (lock only; a register's score is ignored, as by the conscience).
    #[serde(default)]
    pub score: Option<i32>,
    /// Tags and stats.
    #[serde(default)]
    pub tags: BTreeMap<String, TagValue>,
    /// Deregister only: keep the service if it changed after this time (µs since the epoch).
    #[serde(default)]
    pub mtime: Option<u64>,
}

fn reg_err(e: RegistryError) -> CommandError {
    match e {
        RegistryError::UnknownType(_) => CommandError::Invalid(format!("bad service type: {e}")),
        other => CommandError::Invalid(other.to_string()),
    }
}

impl Control {
    pub(super) fn now_us(&self) -> u64 {
        self.clock.now_ns() / 1000
    }

    /// Restores services and pools from the store.
    pub(super) fn restore_services(&mut self, loaded: &crate::store::Loaded) -> Result<(), String> {
        let services: Vec<(Key, Service)> = loaded.decode(Table::Services).map_err(|e| e.to_string())?;
        let report = self.registry.restore(services.into_iter().map(|(_, s)| s));
        let pools: Vec<(Key, Pool)> = loaded.decode(Table::Pools).map_err(|e| e.to_string())?;
        let map = Arc::make_mut(&mut self.pools);
        for (_, p) in pools {
            map.insert(p.name.clone(), p);
        }
        // Restored services are not dirty.
        let _ = self.registry.take_dirty();
        self.world = Arc::new(World::build(&self.registry));
        self.world_generation = self.registry.generation();
        tracing::info!(
            services = report.restored,
            skipped = report.skipped,
            pools = self.pools.len(),
            "restored registry"
        );
        Ok(())
    }

    /// Applies one registration (service heartbeat or API).
    pub fn register(&mut self, r: &Registration) -> Result<crate::registry::PushOutcome, RegistryError> {
        let now = self.now_us();
        let out = self.registry.push(r, now)?;
        if out.alert_down {
            tracing::warn!(service_type = %r.type_name, addr = %r.addr, "service reported down: score 0");
        }
        if out.locked_at_first_register {
            tracing::info!(service_type = %r.type_name, addr = %r.addr, "new service locked at 0 (lock_at_first_register)");
        }
        Ok(out)
    }

    /// Applies a batch of service heartbeats from the workers and returns the vector (with
    /// its beats, whose buffers the workers reuse) to the lane. The registration is filled
    /// into reused scratch: a known service's heartbeat allocates nothing here either.
    pub fn apply_services(&mut self, batch: Vec<ServiceBeat>) {
        use std::fmt::Write as _;
        for beat in &batch {
            let r = &mut self.scratch;
            r.type_name.clear();
            r.type_name.push_str(&beat.kind);
            r.addr.clear();
            let _ = write!(r.addr, "{}", beat.addr);
            let mut n = 0;
            let mut put = |name: &str, value: &TagValue| {
                match r.tags.get_mut(n) {
                    Some((k, v)) => {
                        if k != name {
                            k.clear();
                            k.push_str(name);
                        }
                        if v != value {
                            *v = value.clone();
                        }
                    }
                    None => r.tags.push((name.to_owned(), value.clone())),
                }
                n += 1;
            };
            for t in beat.tags() {
                put(&t.name, &t.value);
            }
            if let Some(id) = beat.id() {
                if self.id_tag.as_str() != Some(id) {
                    self.id_tag = TagValue::Str(id.to_owned());
                }
                let id_tag = self.id_tag.clone();
                put("tag.service_id", &id_tag);
            }
            r.tags.truncate(n);
            r.op = match beat.op {
                ServiceOp::Register => ScoreOp::Unset,
                ServiceOp::Lock => ScoreOp::Lock(beat.score.unwrap_or(0).clamp(0, 100) as i32),
                ServiceOp::Unlock => ScoreOp::Unlock,
            };
            let r = std::mem::replace(&mut self.scratch, Registration::empty());
            match self.register(&r) {
                Ok(_) => {}
                Err(e) => {
                    self.services_rejected += 1;
                    if self.rejected_types.insert(r.type_name.clone()) {
                        tracing::warn!(service_type = %r.type_name, addr = %r.addr, error = %e, "service heartbeat refused (reported once per type)");
                    }
                }
            }
            self.scratch = r;
        }
        // Nothing published changes here: the polling world is rebuilt by its own task.
        let lane = self.shared.pipeline.services.clone();
        let _ = lane.recycle.push(batch);
    }

    /// Queues the registry's changed services for the store.
    pub(super) fn services_to_store(&mut self) {
        for (t, addr) in self.registry.take_dirty() {
            let key = Key::Name(format!("{t}|{addr}"));
            match self.registry.get(&t, &addr) {
                Some(s) => self.pending.put_json(Table::Services, key, s),
                None => self.pending.delete(Table::Services, key),
            }
        }
    }

    /// The 1 s expiry task.
    pub(super) fn task_expiry(&mut self, _now: u64) -> Result<(), String> {
        let now = self.now_us();
        let expired = self.registry.expire(now);
        for (t, addr) in &expired {
            tracing::warn!(service_type = %t, addr = %addr, "service expired: no heartbeat within score_timeout, score 0");
        }
        self.services_to_store();
        Ok(())
    }

    /// Rebuilds the polling world when the registry changed.
    pub(super) fn task_world(&mut self, _now: u64) -> Result<(), String> {
        if self.registry.generation() != self.world_generation {
            self.world = Arc::new(World::build(&self.registry));
            self.world_generation = self.registry.generation();
            self.changed = true;
        }
        Ok(())
    }

    pub(super) fn execute_services(&mut self, command: super::Command) -> CommandResult {
        use super::Command as C;
        let now = self.now_us();
        let result = match command {
            C::ServicePush { action, entries } => {
                let mut out = Vec::new();
                for e in entries {
                    let tags: Vec<(String, TagValue)> = e.tags.into_iter().collect();
                    let r = match action {
                        PushAction::Register => self
                            .register(&Registration { type_name: e.type_name.clone(), addr: e.addr.clone(), tags, op: ScoreOp::Unset })
                            .map(|o| json!({"type": e.type_name, "addr": e.addr, "score": o.score, "locked": o.locked, "created": o.created})),
                        PushAction::Lock => self
                            .registry
                            .lock(&e.type_name, &e.addr, Some(e.score.unwrap_or(0)), now)
                            .map(|o| json!({"type": e.type_name, "addr": e.addr, "score": o.score, "locked": o.locked})),
                        PushAction::Unlock => self
                            .registry
                            .unlock(&e.type_name, &e.addr, now)
                            .map(|o| json!({"type": e.type_name, "addr": e.addr, "score": o.score, "locked": o.locked, "applied": o.applied})),
                        PushAction::Deregister => self.registry.deregister(&e.type_name, &e.addr, e.mtime).map(|d| {
                            let what = match d {
                                Deregistered::Removed => "removed",
                                Deregistered::NotFound => "not_found",
                                Deregistered::KeptNewer => "kept_newer",
                            };
                            json!({"type": e.type_name, "addr": e.addr, "result": what})
                        }),
                    };
                    out.push(r.map_err(reg_err)?);
                }
                Ok(json!({"services": out}))
            }
            C::ServiceFlush(t) => self.registry.flush(&t).map(|n| json!({"type": t, "flushed": n})).map_err(reg_err),
            C::ServiceList { type_name, full } => self
                .registry
                .list(&type_name, full)
                .map(|l| serde_json::to_value(l).unwrap_or_default())
                .map_err(reg_err),
            C::ServiceTypes => Ok(json!(self.registry.service_types())),
            C::ServiceResolve { type_name, id } => {
                if self.registry.type_config(&type_name).is_none() {
                    return Err(CommandError::Invalid(format!("bad service type: {type_name:?}")));
                }
                match self.registry.resolve(&type_name, &id) {
                    Some(addr) => Ok(json!({"addr": addr})),
                    None => Err(CommandError::NotFound(format!("Service ID [{id}] not found"))),
                }
            }
            C::PoolCreate { name, targets, force } => {
                if self.pools.contains_key(&name) && !force {
                    return Err(CommandError::Conflict(format!("pool {name:?} exists (force to replace)")));
                }
                let pool =
                    Pool::parse(&name, &targets).map_err(|e| CommandError::Invalid(format!("pool {name:?}: {e}")))?;
                self.pending.put_json(Table::Pools, Key::Name(name.clone()), &pool);
                let v = json!({"name": name, "targets": pool.to_target_string()});
                Arc::make_mut(&mut self.pools).insert(name, pool);
                Ok(v)
            }
            C::PoolDelete(name) => match Arc::make_mut(&mut self.pools).remove(&name) {
                Some(_) => {
                    self.pending.delete(Table::Pools, Key::Name(name.clone()));
                    Ok(json!({"deleted": name}))
                }
                None => Err(CommandError::NotFound(format!("no pool {name:?}"))),
            },
            _ => Err(CommandError::Invalid("not a registry command".into())),
        };
        self.services_to_store();
        self.changed = true;
        result
    }
}
