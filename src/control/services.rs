//! The service registry and load-balancing pools on the control thread (OpenIO conscience):
//! registrations from service heartbeats and the admin API, score expiry every second, a new
//! [`World`] for polling every `world_refresh_interval` when the registry changed, and the
//! durable copies of services and pools.
//!
//! Reads of pools (`next`, `poll`) never reach the control thread: they use the published
//! snapshot's world and pools. Every method takes the time and queues its durable writes into
//! [`Writes`]: the host runs without threads, sockets or a store.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cluster::Relayed;
use super::command::{CommandError, RegistryCommand, Reply, ServiceOutcome};
use super::persist::Writes;
use crate::proto::service::{ServiceBeat, ServiceOp};
use crate::registry::lb::{Pool, World};
use crate::registry::{Deregistered, Registration, RegistryError, ScoreOp, Service, TagValue, TypeConfig};
use crate::store::{Key, Table};

/// `[registry]` settings (formerly `[services]`, still accepted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// Service types (`[[registry.types]]`); default: OpenIO's built-ins and `machine`.
    pub types: Vec<TypeConfig>,
    /// Seconds between rebuilds of the polling world (when the registry changed).
    pub world_refresh_interval: f64,
}

/// The relayed op and score of an accepted registration.
fn op_of(r: &Registration) -> (&'static str, Option<i32>) {
    match r.op {
        ScoreOp::Lock(v) => ("lock", Some(v)),
        ScoreOp::Unlock => ("unlock", None),
        _ => ("register", None),
    }
}

/// What a relayed copy of an accepted registration carries.
fn relayed_of(r: &Registration) -> Relayed {
    let (op, score) = op_of(r);
    Relayed { type_name: r.type_name.clone(), addr: r.addr.clone(), op: op.into(), score, tags: r.tags.clone() }
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

/// The service registry, its pools and the polling world.
#[derive(Debug)]
pub struct ServiceHost {
    cfg: ServicesConfig,
    registry: crate::registry::Registry,
    pools: Arc<BTreeMap<String, Pool>>,
    world: Arc<World>,
    world_generation: u64,
    scratch: Registration,
    rejected_types: rustc_hash::FxHashSet<String>,
    id_tag: TagValue,
    /// Service heartbeats the registry refused (unknown type, bad address).
    pub rejected: u64,
    changed: bool,
    /// Cluster mode: registrations accepted here are kept for the peers ([`Relayed`]).
    relaying: bool,
    /// The first `relayed_len` are the registrations to relay; the rest are kept for their
    /// allocations (a service's next heartbeat is copied into one without allocating).
    relayed: Vec<Relayed>,
    relayed_len: usize,
}

/// A lock as kept in etcd (`tables/locks/<type>|<addr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRow {
    /// The locked score.
    pub score: i32,
}

impl ServiceHost {
    /// An empty registry of the configured types.
    pub fn new(cfg: ServicesConfig) -> Result<ServiceHost, RegistryError> {
        let registry = crate::registry::Registry::new(cfg.types.clone())?;
        Ok(ServiceHost {
            cfg,
            registry,
            pools: Arc::new(BTreeMap::new()),
            world: Arc::new(World::default()),
            world_generation: u64::MAX,
            scratch: Registration::empty(),
            rejected_types: Default::default(),
            id_tag: TagValue::Bool(false),
            rejected: 0,
            changed: true,
            relaying: false,
            relayed: Vec::new(),
            relayed_len: 0,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &ServicesConfig {
        &self.cfg
    }

    /// New settings (reload); changed service types need a restart and are kept.
    pub fn set_config(&mut self, mut cfg: ServicesConfig) {
        if cfg.types != self.cfg.types {
            tracing::warn!("changed service types take effect only after a restart");
            cfg.types = self.cfg.types.clone();
        }
        self.cfg = cfg;
    }

    /// Whether anything published changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The registry.
    pub fn registry(&self) -> &crate::registry::Registry {
        &self.registry
    }

    /// The published polling world.
    pub fn world(&self) -> &Arc<World> {
        &self.world
    }

    /// The pools, by name.
    pub fn pools(&self) -> &Arc<BTreeMap<String, Pool>> {
        &self.pools
    }

    /// The machines (services of `machine_type`) as the scheduler sees them at `now_ns`: alive
    /// when `tag.up` is not `false` and the last heartbeat is at most `timeout_s` old.
    pub fn machines(&self, machine_type: &str, timeout_s: f64, now_ns: u64) -> Vec<crate::sched::Machine> {
        // To the microsecond, as the registry keeps it: a machine is never declared dead early.
        let (now_us, timeout_us) = (now_ns / 1000, super::liveness::secs_ns(timeout_s) / 1000);
        self.registry
            .services(machine_type)
            .map(|s| {
                let labels = s
                    .tag("tag.labels")
                    .and_then(|v| v.as_str())
                    .map(|l| l.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect())
                    .unwrap_or_default();
                let available = s.tag("stat.free_bytes").and_then(|v| v.as_f64()).map_or(0, |f| f.max(0.0) as u64);
                let up = s.tag("tag.up").and_then(|v| v.as_bool()) != Some(false);
                let fresh = s.fresh_at(now_us, timeout_us);
                crate::sched::Machine { name: s.id().to_owned(), labels, available, alive: up && fresh }
            })
            .collect()
    }

    /// Restores services and pools.
    pub fn restore(&mut self, loaded: &crate::store::Loaded) -> Result<(), crate::store::StoreError> {
        let services: Vec<(Key, Service)> = loaded.decode(Table::Services)?;
        let report = self.registry.restore(services.into_iter().map(|(_, s)| s));
        let pools: Vec<(Key, Pool)> = loaded.decode(Table::Pools)?;
        let map = Arc::make_mut(&mut self.pools);
        for (_, p) in pools {
            map.insert(p.name.clone(), p);
        }
        // Restored services are not dirty.
        let _ = self.registry.take_dirty();
        self.world = Arc::new(World::build(&self.registry));
        self.world_generation = self.registry.generation();
        self.changed = true;
        tracing::info!(
            services = report.restored,
            skipped = report.skipped,
            pools = self.pools.len(),
            "restored registry"
        );
        Ok(())
    }

    /// Applies one registration (service heartbeat or API) at `now_us`.
    pub fn register(&mut self, r: &Registration, now_us: u64) -> Result<crate::registry::PushOutcome, RegistryError> {
        let out = self.registry.push(r, now_us)?;
        if out.alert_down {
            tracing::warn!(service_type = %r.type_name, addr = %r.addr, "service reported down: score 0");
        }
        if out.locked_at_first_register {
            tracing::info!(service_type = %r.type_name, addr = %r.addr, "new service locked at 0 (lock_at_first_register)");
        }
        Ok(out)
    }

    /// Applies a batch of service heartbeats from the workers at `now_us`. The registration is
    /// filled into reused scratch: a known service's heartbeat allocates nothing here. The
    /// caller returns the vector to the engine's lane.
    pub fn apply_beats(&mut self, batch: &[ServiceBeat], now_us: u64) {
        use std::fmt::Write as _;
        for beat in batch {
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
                        match (v, value) {
                            // In place: a string tag that changes allocates nothing.
                            (TagValue::Str(d), TagValue::Str(s)) if d != s => {
                                d.clear();
                                d.push_str(s);
                            }
                            (v, value) if v != value => *v = value.clone(),
                            _ => {}
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
            match self.register(&r, now_us) {
                Ok(_) if self.relaying => {
                    let (op, score) = op_of(&r);
                    match self.relayed.get_mut(self.relayed_len) {
                        Some(e) => e.assign(&r.type_name, &r.addr, op, score, &r.tags),
                        None => self.relayed.push(relayed_of(&r)),
                    }
                    self.relayed_len += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    self.rejected += 1;
                    if self.rejected_types.insert(r.type_name.clone()) {
                        tracing::warn!(service_type = %r.type_name, addr = %r.addr, error = %e, "service heartbeat refused (reported once per type)");
                    }
                }
            }
            self.scratch = r;
        }
        // Nothing published changes here: the polling world is rebuilt by its own task.
    }

    /// Cluster mode: keep what is accepted here for the peers.
    pub fn set_relaying(&mut self, on: bool) {
        self.relaying = on;
    }

    /// The registrations accepted here since [`ServiceHost::clear_relayed`] (cluster mode).
    pub fn relayed(&self) -> &[Relayed] {
        &self.relayed[..self.relayed_len]
    }

    /// Forgets the registrations relayed (keeping their allocations for the next ones).
    pub fn clear_relayed(&mut self) {
        self.relayed_len = 0;
    }

    fn push_relayed(&mut self, r: Relayed) {
        match self.relayed.get_mut(self.relayed_len) {
            Some(e) => *e = r,
            None => self.relayed.push(r),
        }
        self.relayed_len += 1;
    }

    /// Applies a registration a peer accepted at `at_us` (wall clock µs). A heartbeat older
    /// than the service's last one is ignored (digests from several members interleave);
    /// nothing is relayed again (no echo).
    pub fn apply_relayed(&mut self, at_us: u64, r: &Relayed) {
        use crate::proto::service::{MAX_TAGS, MAX_TAG_NAME, MAX_TAG_STR};
        // The bounds of a service heartbeat hold for a relayed one too.
        let oversized = r.tags.len() > MAX_TAGS
            || r.tags
                .iter()
                .any(|(k, v)| k.len() > MAX_TAG_NAME || matches!(v, TagValue::Str(s) if s.len() > MAX_TAG_STR));
        if oversized {
            self.rejected += 1;
            tracing::debug!(service_type = %r.type_name, addr = %r.addr, "relayed registration past the tag bounds refused");
            return;
        }
        let known = self.registry.get(&r.type_name, &r.addr);
        let result = match r.op.as_str() {
            "register" => {
                if known.is_some_and(|s| s.tags_mtime_us >= at_us) {
                    return;
                }
                let reg = Registration {
                    type_name: r.type_name.clone(),
                    addr: r.addr.clone(),
                    tags: r.tags.clone(),
                    op: ScoreOp::Unset,
                };
                self.register(&reg, at_us).map(|_| ())
            }
            "lock" => self.registry.lock(&r.type_name, &r.addr, Some(r.score.unwrap_or(0)), at_us).map(|_| ()),
            "unlock" => self.registry.unlock(&r.type_name, &r.addr, at_us).map(|_| ()),
            "deregister" => self.registry.deregister(&r.type_name, &r.addr, Some(at_us)).map(|_| ()),
            // A flush as of its time: a service heard since (here or elsewhere) stays.
            "flush" => {
                let addrs: Vec<String> = self.registry.services(&r.type_name).map(|s| s.addr.clone()).collect();
                for a in addrs {
                    let _ = self.registry.deregister(&r.type_name, &a, Some(at_us));
                }
                Ok(())
            }
            other => {
                tracing::warn!(op = other, "a relayed registration with an unknown op: ignored");
                return;
            }
        };
        if let Err(e) = result {
            self.rejected += 1;
            tracing::debug!(service_type = %r.type_name, addr = %r.addr, error = %e, "relayed registration refused");
        }
    }

    /// Applies the locks kept in etcd (`full`: `rows` are all of them, so a service locked
    /// here but not there is unlocked). Each row is `(type|addr, lock or None: unlocked)`.
    pub fn apply_locks(&mut self, full: bool, rows: &[(String, Option<LockRow>)], now_us: u64) {
        if full {
            let locked: Vec<(String, String)> = self
                .registry
                .iter()
                .filter(|s| s.locked)
                .map(|s| (s.type_name.clone(), s.addr.clone()))
                .filter(|(t, a)| !rows.iter().any(|(k, v)| v.is_some() && *k == format!("{t}|{a}")))
                .collect();
            for (t, a) in locked {
                let _ = self.registry.unlock(&t, &a, now_us);
            }
        }
        for (key, lock) in rows {
            let Some((t, a)) = key.split_once('|') else { continue };
            let have = self.registry.get(t, a).map(|s| (s.locked, s.score));
            let r = match lock {
                Some(l) if have != Some((true, l.score)) => self.registry.lock(t, a, Some(l.score), now_us).map(|_| ()),
                None if have.is_some_and(|(locked, _)| locked) => self.registry.unlock(t, a, now_us).map(|_| ()),
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(service = %key, error = %e, "a lock from etcd not applied");
            }
        }
        self.changed = true;
    }

    /// Applies the pools kept in etcd (`full`: `rows` are all of them).
    pub fn apply_pools(&mut self, full: bool, rows: Vec<(String, Option<Pool>)>) {
        let map = Arc::make_mut(&mut self.pools);
        if full {
            map.clear();
        }
        for (name, pool) in rows {
            match pool {
                Some(p) => {
                    map.insert(name, p);
                }
                None => {
                    map.remove(&name);
                }
            }
        }
        self.changed = true;
    }

    /// Queues the registry's changed services for the store.
    pub fn to_store(&mut self, out: &mut Writes) {
        for (t, addr) in self.registry.take_dirty() {
            let key = Key::Name(format!("{t}|{addr}"));
            match self.registry.get(&t, &addr) {
                Some(s) => out.batch.put_json(Table::Services, key, s),
                None => out.batch.delete(Table::Services, key),
            }
        }
    }

    /// The 1 s expiry task.
    pub fn expire(&mut self, now_us: u64, out: &mut Writes) {
        let expired = self.registry.expire(now_us);
        for (t, addr) in &expired {
            tracing::warn!(service_type = %t, addr = %addr, "service expired: no heartbeat within score_timeout, score 0");
        }
        self.to_store(out);
    }

    /// Rebuilds the polling world when the registry changed.
    pub fn refresh_world(&mut self) {
        if self.registry.generation() != self.world_generation {
            self.world = Arc::new(World::build(&self.registry));
            self.world_generation = self.registry.generation();
            self.changed = true;
        }
    }

    /// Executes a registry command at `now_us`.
    pub fn execute(&mut self, command: RegistryCommand, now_us: u64, out: &mut Writes) -> Result<Reply, CommandError> {
        use RegistryCommand as C;
        let result = match command {
            C::Push { action, entries } => {
                let mut services = Vec::with_capacity(entries.len());
                for e in entries {
                    let tags: Vec<(String, TagValue)> = e.tags.into_iter().collect();
                    let relay = Relayed {
                        type_name: e.type_name.clone(),
                        addr: e.addr.clone(),
                        op: match action {
                            PushAction::Register => "register",
                            PushAction::Lock => "lock",
                            PushAction::Unlock => "unlock",
                            PushAction::Deregister => "deregister",
                        }
                        .into(),
                        score: (action == PushAction::Lock).then(|| e.score.unwrap_or(0)),
                        tags: if action == PushAction::Register { tags.clone() } else { Vec::new() },
                    };
                    let base = ServiceOutcome {
                        type_name: e.type_name.clone(),
                        addr: e.addr.clone(),
                        score: None,
                        locked: None,
                        created: None,
                        applied: None,
                        result: None,
                    };
                    let r = match action {
                        PushAction::Register => self
                            .register(
                                &Registration { type_name: e.type_name, addr: e.addr, tags, op: ScoreOp::Unset },
                                now_us,
                            )
                            .map(|o| ServiceOutcome {
                                score: Some(o.score),
                                locked: Some(o.locked),
                                created: Some(o.created),
                                ..base
                            }),
                        PushAction::Lock => self
                            .registry
                            .lock(&e.type_name, &e.addr, Some(e.score.unwrap_or(0)), now_us)
                            .map(|o| ServiceOutcome { score: Some(o.score), locked: Some(o.locked), ..base }),
                        PushAction::Unlock => {
                            self.registry.unlock(&e.type_name, &e.addr, now_us).map(|o| ServiceOutcome {
                                score: Some(o.score),
                                locked: Some(o.locked),
                                applied: Some(o.applied),
                                ..base
                            })
                        }
                        PushAction::Deregister => {
                            self.registry.deregister(&e.type_name, &e.addr, e.mtime).map(|d| ServiceOutcome {
                                result: Some(match d {
                                    Deregistered::Removed => "removed",
                                    Deregistered::NotFound => "not_found",
                                    Deregistered::KeptNewer => "kept_newer",
                                }),
                                ..base
                            })
                        }
                    };
                    services.push(r.map_err(reg_err)?);
                    if self.relaying {
                        self.push_relayed(relay);
                    }
                }
                Ok(Reply::Services { services })
            }
            C::Flush(t) => {
                if self.relaying {
                    self.push_relayed(Relayed {
                        type_name: t.clone(),
                        addr: String::new(),
                        op: "flush".into(),
                        score: None,
                        tags: Vec::new(),
                    });
                }
                self.registry.flush(&t).map(|flushed| Reply::Flushed { type_name: t, flushed }).map_err(reg_err)
            }
            C::List { type_name, full } => {
                self.registry.list(&type_name, full).map(Reply::ServiceList).map_err(reg_err)
            }
            C::Types => Ok(Reply::ServiceTypes(self.registry.service_types())),
            C::Resolve { type_name, id } => {
                if self.registry.type_config(&type_name).is_none() {
                    return Err(CommandError::Invalid(format!("bad service type: {type_name:?}")));
                }
                match self.registry.resolve(&type_name, &id) {
                    Some(addr) => Ok(Reply::Resolved { addr: addr.to_string() }),
                    None => Err(CommandError::NotFound(format!("Service ID [{id}] not found"))),
                }
            }
            C::PoolCreate { name, targets, force } => {
                if self.pools.contains_key(&name) && !force {
                    return Err(CommandError::Conflict(format!("pool {name:?} exists (force to replace)")));
                }
                let pool =
                    Pool::parse(&name, &targets).map_err(|e| CommandError::Invalid(format!("pool {name:?}: {e}")))?;
                out.batch.put_json(Table::Pools, Key::Name(name.clone()), &pool);
                let targets = pool.to_target_string();
                Arc::make_mut(&mut self.pools).insert(name.clone(), pool);
                Ok(Reply::Pool { name, targets })
            }
            C::PoolDelete(name) => match Arc::make_mut(&mut self.pools).remove(&name) {
                Some(_) => {
                    out.batch.delete(Table::Pools, Key::Name(name.clone()));
                    Ok(Reply::PoolDeleted { deleted: name })
                }
                None => Err(CommandError::NotFound(format!("no pool {name:?}"))),
            },
        };
        self.to_store(out);
        self.changed = true;
        result
    }
}
