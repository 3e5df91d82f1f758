//! The control plane: what heartsink does with the fleet's state, off the packet path, on one
//! thread.
//!
//! ```text
//! engine ─change records, service beats─▶ control thread ──▶ snapshot.rs (ArcSwap) ──▶ API, confd
//!  admin API ─command.rs calls─▶     │ periodic.rs tasks: health check, flush, rates, report…
//!                                   ├──▶ failover runner (log / command / HTTP threads)
//!                                   └──▶ persist.rs: store writer thread (one transaction a flush)
//! ```
//!
//! [`Control`] composes parts along their seams, each a plain struct that takes `now` and
//! queues its durable writes into [`persist::Writes`], so each runs without threads, sockets or
//! a store (the rig in this module's tests drives them on a manual clock):
//!
//! * [`fleet::Fleet`]: amphora liveness ([`liveness`]) and failovers ([`failover`]);
//! * [`services::ServiceHost`]: the service registry and pools;
//! * [`volumes::VolumeHost`]: the scheduler and its lease;
//! * [`persist`]: where flushes go ([`persist::Durable`]) and the restore at start;
//! * [`periodic`]: Cinder's task timing.
//!
//! The types that cross to the surfaces live in the leaf modules [`snapshot`] and
//! [`command`]. Workers tell the control thread only of transitions (a new amphora, a status
//! change, a stale amphora beating again); liveness deadlines are checked lazily.

pub mod census;
pub mod cluster;
mod cluster_part;
pub mod command;
pub mod failover;
pub mod fleet;
mod flush;
pub mod history;
pub mod liveness;
pub mod periodic;
pub mod persist;
mod publish;
pub mod services;
pub mod snapshot;
pub mod view;
pub mod volumes;

#[cfg(test)]
mod rig;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_mass;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use serde::{Deserialize, Serialize};

pub use command::{
    call, Call, Command, CommandError, CommandResult, FleetCommand, RegistryCommand, Reply, VolumeCommand,
};
pub use fleet::StoredAmphora;
pub use snapshot::{AmphoraHealth, Published, Rates, Snapshot, StoreStatus};

use crate::engine::{Clock, DropReason, Outputs, Totals};
use crate::proto::service::ServiceBeat;
use crate::store::{Key, StoreError, Table};
use cluster::{AmphoraSettings, EtcdWrite};
use cluster_part::ClusterPart;
use failover::{Executor, FailoverConfig, Runner};
use fleet::Fleet;
use liveness::{secs_ns, LivenessConfig, Signals, SuspendReason};
pub use periodic::TaskError;
use periodic::{Periodic, TaskId};
use persist::{Durable, StoreDurable, Writes};
use publish::FleetMaps;
pub use publish::{HOLD_FEW, HOLD_MANY_NS};
use services::ServiceHost;
use volumes::VolumeHost;

/// The shortest interval, timeout or task period accepted, seconds: shorter ones would keep the
/// control thread busy for nothing (and flood the log with overruns).
pub const MIN_INTERVAL_S: f64 = 0.01;

/// A setting the control plane cannot run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingError {
    /// The key, as written in the configuration file (`liveness.heartbeat_timeout`).
    pub key: String,
    /// What it must be.
    pub expected: String,
}

impl SettingError {
    /// `key` must be `expected`.
    pub fn new(key: impl Into<String>, expected: impl Into<String>) -> SettingError {
        SettingError { key: key.into(), expected: expected.into() }
    }
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} must be {}", self.key, self.expected)
    }
}

impl std::error::Error for SettingError {}

/// Why the control plane could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ControlError {
    /// A setting is out of range (validate the configuration first).
    Setting(SettingError),
    /// The data directory or the store could not be opened or read: the message names the
    /// file; fix or move it.
    Store(StoreError),
    /// The leader lease file could not be opened or locked (another daemon on this data
    /// directory?).
    Lease(String),
    /// The service types do not compile.
    Registry(crate::registry::RegistryError),
    /// A thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Setting(e) => write!(f, "invalid setting: {e}"),
            ControlError::Store(e) => write!(f, "store: {e}"),
            ControlError::Lease(e) => write!(f, "leader lease: {e}"),
            ControlError::Registry(e) => write!(f, "service types: {e}"),
            ControlError::Thread(e) => write!(f, "cannot start a control thread: {e}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// Cinder's service lifecycle settings (`[service]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Seconds between self reports into the store (Cinder: 10).
    pub report_interval: f64,
    /// Seconds between maintenance runs (Cinder: 60).
    pub periodic_interval: f64,
    /// Largest random delay of the first maintenance run, seconds (Cinder: 60; 0 = none).
    pub periodic_fuzzy_delay: f64,
    /// A reporter silent this long is down (Cinder: 60; forced above `report_interval`).
    pub service_down_time: f64,
    /// Seconds a graceful stop may take before the process exits with status 1 (0 = forever).
    pub graceful_shutdown_timeout: f64,
    /// Seconds between write-behind flushes to the store.
    pub store_flush_interval: f64,
    /// Failover records kept (oldest finished ones are pruned by maintenance).
    pub failover_records_max: usize,
    /// Amphora rows rewritten per second by the store sweep, in id order, so their heartbeat
    /// counts and statistics reach the store at a rate independent of the fleet's size
    /// (transitions are written at once regardless; 0: only transitions and the graceful
    /// stop).
    pub amphora_sweep_rate: f64,
}

impl Default for LifecycleConfig {
    fn default() -> LifecycleConfig {
        LifecycleConfig {
            report_interval: 10.0,
            periodic_interval: 60.0,
            periodic_fuzzy_delay: 60.0,
            service_down_time: 60.0,
            graceful_shutdown_timeout: 60.0,
            store_flush_interval: 1.0,
            failover_records_max: 10_000,
            amphora_sweep_rate: 100.0,
        }
    }
}

impl LifecycleConfig {
    /// Checks the values and applies Cinder's fix-up: `service_down_time` ≤ `report_interval`
    /// becomes 2.5 × `report_interval` (returned as a warning).
    pub fn validate(&mut self) -> Result<Option<String>, SettingError> {
        for (name, v) in [
            ("report_interval", self.report_interval),
            ("periodic_interval", self.periodic_interval),
            ("store_flush_interval", self.store_flush_interval),
        ] {
            if !(v.is_finite() && v >= MIN_INTERVAL_S) {
                return Err(SettingError::new(format!("service.{name}"), "a number of seconds, at least 0.01"));
            }
        }
        for (name, v) in [
            ("periodic_fuzzy_delay", self.periodic_fuzzy_delay),
            ("graceful_shutdown_timeout", self.graceful_shutdown_timeout),
            ("service_down_time", self.service_down_time),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(SettingError::new(format!("service.{name}"), "a non-negative number of seconds"));
            }
        }
        if !(self.amphora_sweep_rate.is_finite() && self.amphora_sweep_rate >= 0.0) {
            return Err(SettingError::new("service.amphora_sweep_rate", "a non-negative number of rows per second"));
        }
        if self.service_down_time <= self.report_interval {
            let fixed = (self.report_interval * 2.5).floor();
            let msg = format!(
                "service.service_down_time {} <= report_interval {}: using {}",
                self.service_down_time, self.report_interval, fixed
            );
            self.service_down_time = fixed;
            return Ok(Some(msg));
        }
        Ok(None)
    }
}

/// Everything the control thread is configured with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControlConfig {
    /// Liveness and failover rules.
    pub liveness: LivenessConfig,
    /// The failover action.
    pub failover: FailoverConfig,
    /// Lifecycle timing.
    pub lifecycle: LifecycleConfig,
    /// Data directory of the durable store; `None`: nothing is stored (benches, unit tests).
    pub data_dir: Option<PathBuf>,
    /// Seed of the periodic tasks' fuzz and jitter.
    pub seed: u64,
    /// Service types and pool refresh (`[registry]`).
    pub services: services::ServicesConfig,
    /// The volume scheduler.
    pub scheduler: volumes::SchedulerConfig,
    /// Start-up only (`--fresh-store`): move an unreadable or corrupt database aside and start
    /// empty instead of refusing to start.
    pub fresh_store: bool,
}

/// A task the layers above run on the control thread's schedule (the confd configuration
/// watch): its name, interval, and what it does. A failure is its message.
pub struct ExtraTask {
    /// Name (logs, `/v1/stats`).
    pub name: &'static str,
    /// Interval, ns.
    pub spacing_ns: u64,
    /// The work; an `Err` is counted and logged, and the task keeps its schedule.
    pub run: Box<dyn FnMut(u64) -> Result<(), TaskError> + Send>,
}

impl std::fmt::Debug for ExtraTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraTask").field("name", &self.name).finish()
    }
}

/// The pieces of the control plane that touch the outside world, chosen by the caller: the
/// daemon's come from [`Parts::open`], the tests' from memory.
pub struct Parts {
    /// Where flushes go (`None`: nowhere).
    pub durable: Option<Box<dyn Durable>>,
    /// The scheduler's leader lease.
    pub lease: Box<dyn crate::sched::lease::Lease + Send>,
    /// What runs failover actions.
    pub runner: Box<dyn Runner>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts").field("durable", &self.durable.is_some()).finish()
    }
}

impl Parts {
    /// The daemon's parts: with a data directory, its lease file and redb store; the failover
    /// threads.
    pub fn open(cfg: &ControlConfig) -> Result<Parts, ControlError> {
        Parts::open_claiming(cfg, None)
    }

    /// [`Parts::open`] with failover threads that [`failover::Claim`] each record first
    /// (cluster mode).
    pub fn open_claiming(cfg: &ControlConfig, claim: Option<failover::Claim>) -> Result<Parts, ControlError> {
        // The lease first: its lock file tells a second daemon on this data directory who holds it.
        let (lease, durable): (Box<dyn crate::sched::lease::Lease + Send>, Option<Box<dyn Durable>>) =
            match &cfg.data_dir {
                Some(dir) => {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| ControlError::Store(StoreError::Dir(format!("{}: {e}", dir.display()))))?;
                    let lease =
                        crate::sched::lease::LocalLease::open(dir).map_err(|e| ControlError::Lease(e.to_string()))?;
                    let store = StoreDurable::open(dir, cfg.fresh_store).map_err(ControlError::Store)?;
                    (Box::new(lease), Some(Box::new(store)))
                }
                None => (Box::new(volumes::AlwaysLease), None),
            };
        let runner = Executor::spawn_claiming(cfg.failover.clone(), cfg.liveness.failover_threads, claim)
            .map_err(ControlError::Thread)?;
        Ok(Parts { durable, lease, runner: Box::new(runner) })
    }
}

const TICK: Duration = Duration::from_millis(250);

/// Change batches (one per worker batch, ≤ 128 changes each) applied per control round.
const CHANGE_BATCHES_PER_ROUND: usize = 32;

/// Most amphora records written per flush (a flush serializes them on the control thread: about
/// 5 ms at this size, so a round stays short). A larger backlog (a fleet filling up) is
/// flushed again every round until it is below this, not only every `store_flush_interval`.
pub const FLUSH_MAX: usize = 2_048;

/// Rows in flight to the store writer (submitted, not committed) above which a backlog waits
/// for the flush task instead of being flushed every round.
const BACKLOG_IN_FLIGHT: usize = 32_768;

/// Rows a graceful stop lets wait in the writer's queue before it waits for their commit.
const STOP_QUEUE_ROWS: usize = BACKLOG_IN_FLIGHT;

/// Most amphora rows read from one shard under one lock at a flush.
const FLUSH_LOCK_ROWS: usize = 64;

struct Tasks {
    health: TaskId,
    flush: TaskId,
    rates: TaskId,
    summary: TaskId,
    report: TaskId,
    maintenance: TaskId,
    expiry: TaskId,
    world: TaskId,
    scheduler: TaskId,
}

/// Previous counter values, for per-interval differences.
#[derive(Default)]
struct Prev {
    totals: Totals,
    summary_totals: Totals,
    rx: Vec<u64>,
    worker: Vec<u64>,
    accepted: Vec<u64>,
    rates_at: Option<Instant>,
}

/// The control plane: its parts, composed, and the round that drives them.
pub struct Control {
    cfg: ControlConfig,
    clock: Arc<dyn Clock>,
    engine: Arc<crate::engine::Shared>,
    published: Arc<Published>,
    fleet: Fleet,
    services: ServiceHost,
    volumes: VolumeHost,
    durable: Option<Box<dyn Durable>>,
    writes: Writes,
    periodic: Periodic,
    tasks: Tasks,
    extra: Vec<(TaskId, ExtraTask)>,
    generation: u64,
    /// When the latest snapshot was published, ns.
    published_ns: u64,
    /// The fleet's maps as last published (a figures-only snapshot reuses them), and when.
    fleet_maps: FleetMaps,
    fleet_published_ns: u64,
    changed: bool,
    prev: Prev,
    started_ns: u64,
    report_count: u64,
    store_failing: bool,
    /// Cluster mode's state in this thread.
    cluster: ClusterPart,
    /// The last expiry left passed deadlines beyond its budget: the loop comes round at once.
    expiry_behind: bool,
    /// Rows submitted to the store and not yet committed.
    unacked: Arc<std::sync::atomic::AtomicUsize>,
    /// Amphora rows the sweep may mark (fractional credit carried between flushes).
    sweep_credit: f64,
    swept_ns: u64,
    commands_tx: Sender<Call>,
    commands: Receiver<Call>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("tracked", &self.fleet.tracked()).finish()
    }
}

impl Control {
    /// Builds the control plane over the data plane `engine`, restores what `parts.durable`
    /// holds into the engine's shards (call before the engine's threads start), and publishes
    /// the first snapshot into `published`.
    pub fn new(
        mut cfg: ControlConfig,
        clock: Arc<dyn Clock>,
        engine: Arc<crate::engine::Shared>,
        published: Arc<Published>,
        parts: Parts,
    ) -> Result<Control, ControlError> {
        cfg.liveness.validate().map_err(ControlError::Setting)?;
        cfg.failover.validate().map_err(ControlError::Setting)?;
        cfg.lifecycle.validate().map_err(ControlError::Setting)?;
        let now = clock.now_ns();
        let mut periodic = Periodic::new(cfg.seed);
        let lc = &cfg.lifecycle;
        let every = |p: &mut Periodic, name, secs: f64| p.add(name, secs_ns(secs), now, secs_ns(secs), 0);
        let tasks = Tasks {
            health: every(&mut periodic, "health_check", cfg.liveness.health_check_interval),
            flush: every(&mut periodic, "store_flush", lc.store_flush_interval),
            rates: every(&mut periodic, "rates", 1.0),
            summary: every(&mut periodic, "drop_summary", 10.0),
            // Cinder: the first report after one report_interval.
            report: every(&mut periodic, "report_state", lc.report_interval),
            maintenance: periodic.add(
                "maintenance",
                secs_ns(lc.periodic_interval),
                now,
                0,
                secs_ns(lc.periodic_fuzzy_delay),
            ),
            expiry: every(&mut periodic, "service_expiry", 1.0),
            world: every(&mut periodic, "lb_world_refresh", cfg.services.world_refresh_interval),
            scheduler: every(&mut periodic, "scheduler", cfg.scheduler.tick_interval),
        };
        let services = ServiceHost::new(cfg.services.clone()).map_err(ControlError::Registry)?;
        let (commands_tx, commands) = channel::unbounded();
        let mut c = Control {
            fleet: Fleet::new(cfg.liveness.clone(), parts.runner, now),
            services,
            volumes: VolumeHost::new(cfg.scheduler.clone(), parts.lease),
            durable: parts.durable,
            writes: Writes::default(),
            periodic,
            tasks,
            extra: Vec::new(),
            generation: 0,
            published_ns: 0,
            fleet_maps: Default::default(),
            fleet_published_ns: 0,
            changed: true,
            prev: Prev::default(),
            started_ns: now,
            report_count: 0,
            store_failing: false,
            cluster: ClusterPart::default(),
            unacked: Arc::default(),
            expiry_behind: false,
            sweep_credit: 0.0,
            swept_ns: now,
            clock,
            engine,
            published,
            commands_tx,
            commands,
            cfg,
        };
        c.restore()?;
        // The grace counts from the end of the restore: the caller binds and reads the sockets
        // right after (a long restore must not eat it).
        let now = c.clock.now_ns();
        c.fleet.restart_grace(now);
        c.prev.totals = c.engine.totals();
        c.prev.summary_totals = c.prev.totals.clone();
        c.publish();
        Ok(c)
    }

    /// Where the admin API sends its calls.
    pub fn commands(&self) -> Sender<Call> {
        self.commands_tx.clone()
    }

    /// Adds a task run on the control thread's schedule, first due one interval from now.
    pub fn add_task(&mut self, task: ExtraTask) {
        let now = self.clock.now_ns();
        let id = self.periodic.add(task.name, task.spacing_ns, now, task.spacing_ns, 0);
        self.extra.push((id, task));
    }

    fn restore(&mut self) -> Result<(), ControlError> {
        let Some(durable) = &self.durable else { return Ok(()) };
        // A row that does not decode is a store this version cannot use: refused like a corrupt
        // file, naming it and what to do.
        let unusable = |e: StoreError| {
            let file = durable.status().map(|s| s.path).unwrap_or_default();
            ControlError::Store(StoreError::Decode(format!(
                "{file}: {e}; this version cannot read it: restore a backup, or move the file away to start empty"
            )))
        };
        let loaded = durable.load().map_err(ControlError::Store)?;
        let mut heard_at = None;
        if let Ok(meta) = loaded.decode::<serde_json::Value>(Table::Meta) {
            for (k, v) in meta {
                if k == Key::Name("service".into()) {
                    self.report_count = v.get("report_count").and_then(serde_json::Value::as_u64).unwrap_or(0);
                    heard_at = v.get("updated_at_ns").and_then(serde_json::Value::as_u64);
                }
            }
        }
        let shards = self.engine.pipeline.shards.clone();
        let r = self.fleet.restore(|f| durable.each_amphora(f), &loaded, heard_at, &shards).map_err(unusable)?;
        self.services.restore(&loaded).map_err(unusable)?;
        self.volumes.restore(&loaded).map_err(unusable)?;
        drop(loaded);
        // The restore's short-lived decode buffers are freed: hand their pages back, so a
        // restarted daemon is no larger than one that filled up live.
        crate::io::release_free_memory();
        tracing::info!(
            amphorae = r.amphorae,
            failovers = r.records,
            requeued = r.requeued,
            store = %durable.status().map(|s| s.path).unwrap_or_default(),
            "restored durable state"
        );
        Ok(())
    }

    /// Reload: new liveness, failover, lifecycle, registry and scheduler settings (the data
    /// directory and the service types need a restart). The caller validated `cfg`.
    pub fn reload(&mut self, mut cfg: ControlConfig) {
        let now = self.clock.now_ns();
        self.periodic.set_spacing(self.tasks.health, secs_ns(cfg.liveness.health_check_interval), now);
        self.periodic.set_spacing(self.tasks.flush, secs_ns(cfg.lifecycle.store_flush_interval), now);
        self.periodic.set_spacing(self.tasks.report, secs_ns(cfg.lifecycle.report_interval), now);
        self.periodic.set_spacing(self.tasks.maintenance, secs_ns(cfg.lifecycle.periodic_interval), now);
        self.periodic.set_spacing(self.tasks.world, secs_ns(cfg.services.world_refresh_interval), now);
        self.periodic.set_spacing(self.tasks.scheduler, secs_ns(cfg.scheduler.tick_interval), now);
        self.fleet.set_config(cfg.liveness.clone(), cfg.failover.clone());
        self.services.set_config(cfg.services.clone());
        self.volumes.set_config(cfg.scheduler.clone());
        cfg.data_dir = self.cfg.data_dir.clone();
        cfg.services.types = self.services.config().types.clone();
        self.cfg = cfg;
        self.changed = true;
    }

    /// Applies batches of change records from the workers.
    pub fn apply_changes(&mut self, batches: impl Iterator<Item = Vec<crate::engine::Change>>) {
        let now = self.clock.now_ns();
        let before = self.fleet.status_changes;
        self.fleet.apply_changes(batches, now, &mut self.writes);
        self.published.status_changes.fetch_add(self.fleet.status_changes - before, Ordering::Relaxed);
    }

    /// Applies a batch of service heartbeats and returns its vector to the engine's lane.
    pub fn apply_services(&mut self, batch: Vec<ServiceBeat>) {
        let now = self.clock.now_ns();
        self.services.apply_beats(&batch, now / 1000);
        self.relay_out(now);
        let _ = self.engine.pipeline.services.recycle.push(batch);
    }

    /// Runs the due periodic tasks and collects failover outcomes.
    pub fn run_due(&mut self) {
        let now = self.clock.now_ns();
        if self.cluster.shared.enabled {
            // Leadership is a deadline: past it, this member stops dispatching at once, before
            // the etcd thread has noticed anything.
            let leading = self.cluster.shared.is_leader();
            if leading != self.fleet.leading() && !leading {
                tracing::warn!("leader deadline passed: failovers stop here");
            }
            self.fleet.set_leading(leading);
        }
        self.fleet.collect_outcomes(now, &mut self.writes);
        // Deadlines that passed since the last round, a bounded number: the health check then
        // finds little left to expire, whatever the fleet's phase.
        self.expiry_behind =
            self.fleet.advance(now, liveness::EXPIRED_PER_CHECK, &self.engine.pipeline.shards, &mut self.writes);
        // The built-in tasks cannot fail: what goes wrong inside them (a store write) is
        // reported where it happens.
        type TaskFn = fn(&mut Control, u64);
        let builtin: [(TaskId, TaskFn); 9] = [
            (self.tasks.health, Control::health_check),
            (self.tasks.rates, Control::task_rates),
            (self.tasks.summary, Control::task_summary),
            (self.tasks.report, Control::task_report),
            (self.tasks.maintenance, |c, _| c.fleet.prune(c.cfg.lifecycle.failover_records_max, &mut c.writes)),
            (self.tasks.flush, |c, now| {
                c.sweep(now);
                c.flush(None);
            }),
            (self.tasks.expiry, |c, now| c.services.expire(now / 1000, &mut c.writes)),
            (self.tasks.world, |c, _| c.services.refresh_world()),
            (self.tasks.scheduler, Control::task_scheduler),
        ];
        for (id, f) in builtin {
            let now = self.clock.now_ns();
            if self.periodic.is_due(id, now) {
                f(self, now);
                let end = self.clock.now_ns();
                self.periodic.ran(id, now, end, Ok(()));
            }
        }
        for i in 0..self.extra.len() {
            let now = self.clock.now_ns();
            let id = self.extra[i].0;
            if self.periodic.is_due(id, now) {
                let r = (self.extra[i].1.run)(now);
                let end = self.clock.now_ns();
                self.periodic.ran(id, now, end, r);
            }
        }
        let now = self.clock.now_ns();
        self.fleet.dispatch(now, &mut self.writes);
    }

    /// When the next task is due.
    pub fn next_due(&self) -> Option<u64> {
        self.periodic.next_due()
    }

    fn signals(&mut self) -> Signals {
        let t = self.engine.totals();
        let p = &self.prev.totals;
        let own = |t: &Totals| t.kernel_drops + t.drop_count(DropReason::RingFull);
        let (fill, cap) = self.engine.ring_fill();
        let ring_fill = fill.iter().copied().max().unwrap_or(0) as f64 / cap.max(1) as f64;
        let s = Signals {
            received: t.received.saturating_sub(p.received),
            accepted: t.accepted.saturating_sub(p.accepted),
            drops: own(&t).saturating_sub(own(p)),
            late: t.drop_count(DropReason::Late).saturating_sub(p.drop_count(DropReason::Late)),
            ring_fill,
        };
        self.prev.totals = t;
        s
    }

    /// One health check (public for deterministic tests).
    pub fn health_check(&mut self, now: u64) {
        let mut signals = self.signals();
        signals.accepted += std::mem::take(&mut self.cluster.remote_heard);
        if self.cluster.shared.enabled {
            let reasons = self.cluster_reasons(now);
            self.fleet.set_external(reasons);
        }
        self.fleet.health_check(now, signals, &self.engine.pipeline.shards, &mut self.writes);
        let impaired = self.fleet.suspended().iter().any(|s| {
            matches!(
                s,
                SuspendReason::Overloaded { .. }
                    | SuspendReason::WorkersLagging { .. }
                    | SuspendReason::ControlStalled { .. }
                    | SuspendReason::SinkBlind { .. }
            )
        });
        self.cluster.shared.impaired.store(impaired, Ordering::Relaxed);
    }

    fn task_scheduler(&mut self, now: u64) {
        if !self.scheduler_ready(now) {
            return;
        }
        let machines =
            self.services.machines(&self.cfg.scheduler.machine_type, self.cfg.liveness.heartbeat_timeout, now);
        self.volumes.tick(now, &machines, &mut self.writes);
    }

    fn task_rates(&mut self, _now: u64) {
        let r = Ordering::Relaxed;
        let s = &self.engine;
        let rx: Vec<u64> = s.rx.iter().map(|c| c.packets.load(r)).collect();
        let worker: Vec<u64> = s.workers.iter().map(|c| c.packets.load(r)).collect();
        let accepted: Vec<u64> = s.workers.iter().map(|c| c.accepted.load(r)).collect();
        if let Some(at) = self.prev.rates_at {
            let secs = at.elapsed().as_secs_f64().max(1e-3);
            let per_s = |a: &[u64], b: &[u64]| -> Vec<f64> {
                a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y) as f64 / secs).collect()
            };
            self.published.rates.store(Arc::new(Rates {
                rx_pps: per_s(&rx, &self.prev.rx),
                worker_pps: per_s(&worker, &self.prev.worker),
                worker_accepted_pps: per_s(&accepted, &self.prev.accepted),
            }));
        }
        self.prev.rx = rx;
        self.prev.worker = worker;
        self.prev.accepted = accepted;
        self.prev.rates_at = Some(Instant::now());
        // The console's charts: one sample a second, the last 15 minutes.
        let (totals, counts) = (self.engine.totals(), self.engine.rx_latency_counts());
        self.published.history.lock().sample(self.clock.now_ns(), totals, counts);
    }

    fn task_summary(&mut self, _now: u64) {
        let t = self.engine.totals();
        let p = &self.prev.summary_totals;
        let new_drops: Vec<String> = DropReason::ALL
            .iter()
            .filter(|d| t.drop_count(**d) > p.drop_count(**d))
            .map(|d| format!("{}={}", d.label(), t.drop_count(*d) - p.drop_count(*d)))
            .collect();
        if !new_drops.is_empty() || t.kernel_drops > p.kernel_drops {
            tracing::warn!(
                drops = %new_drops.join(" "),
                kernel_drops = t.kernel_drops - p.kernel_drops,
                "packets dropped in the last 10 s"
            );
        }
        self.prev.summary_totals = t;
    }

    /// Cinder's `report_state`: heartsink's own record in the store. A store failure never
    /// stops the task: the writer retries.
    fn task_report(&mut self, now: u64) {
        self.report_count += 1;
        let t = self.engine.totals();
        let rates = self.published.rates.load();
        let doc = serde_json::json!({
            "host": hostname(),
            "binary": "heartsink",
            "report_count": self.report_count,
            "created_at_ns": self.started_ns,
            "updated_at_ns": now,
            "uptime_s": now.saturating_sub(self.started_ns) as f64 / 1e9,
            "leader": true,
            "last_tick_ns": self.published.last_tick_ns.load(Ordering::Relaxed),
            "received": t.received,
            "accepted": t.accepted,
            "dropped": t.dropped(),
            "kernel_drops": t.kernel_drops,
            "rx_pps": rates.rx_pps.iter().sum::<f64>(),
            "tracked": self.fleet.tracked(),
            "stale": self.fleet.stale_count(),
            "suspended": self.fleet.suspended().iter().map(SuspendReason::label).collect::<Vec<_>>(),
        });
        // A failing store is logged by its writer thread, once per change, and published.
        self.writes.batch.put_json(Table::Meta, Key::Name("service".into()), &doc);
    }

    /// Handles an admin call; the reply is sent once its writes are durable (by the store's
    /// writer thread), a read's at once ([`Command::is_read`]).
    pub fn command(&mut self, call: Call) {
        let now = self.clock.now_ns();
        let read = call.command.is_read();
        let configured = match &call.command {
            Command::Fleet(FleetCommand::Configure { id, .. }) if self.cluster.writes.is_some() => Some(*id),
            _ => None,
        };
        match self.execute(call.command, now) {
            Ok(v) if read => {
                let _ = call.reply.send(Ok(v));
            }
            Ok(v) if configured.is_some() => {
                // Cluster mode: the settings live in etcd; answered once etcd has them.
                let settings = configured.and_then(|id| self.fleet.health().get(&id)).map(|h| AmphoraSettings {
                    expected_listeners: h.expected_listeners,
                    load_balancer: h.load_balancer,
                    zone: h.zone.clone(),
                });
                let id = configured.map(|id| id.to_string()).unwrap_or_default();
                let value = settings.and_then(|s| serde_json::to_vec(&s).ok());
                let reply = call.reply;
                let write = EtcdWrite {
                    ops: vec![(format!("amphorae/{id}"), value)],
                    fenced: false,
                    done: Some(Box::new(move |r: Result<(), String>| {
                        let _ = reply.send(r.map(|()| v).map_err(CommandError::Store));
                    })),
                };
                if let Some(w) = &self.cluster.writes {
                    if let Err(e) = w.send(write) {
                        if let Some(done) = e.into_inner().done {
                            done(Err("the cluster thread has stopped".into()));
                        }
                    }
                }
                self.flush(None);
            }
            Ok(v) => {
                let reply = call.reply;
                self.flush(Some(Box::new(move |r| {
                    let _ = reply.send(r.map(|()| v).map_err(|e| CommandError::Store(e.to_string())));
                })));
            }
            Err(e) => {
                let _ = call.reply.send(Err(e));
            }
        }
    }

    /// Executes a command against the part it is for.
    pub fn execute(&mut self, command: Command, now: u64) -> CommandResult {
        if self.cluster.shared.enabled && command.is_leader_write() && !self.leads() {
            // Refused before anything changes: a member that does not lead never holds state
            // etcd does not (its writes would be fenced out).
            let leader = self.cluster.shared.view.load().leader.clone();
            return Err(CommandError::NotLeader(match leader {
                Some(l) => format!("the leader is {l}; retry (a member forwards it there)"),
                None => "no leader is known right now; retry".into(),
            }));
        }
        self.changed |= !command.is_read();
        match command {
            Command::Fleet(c) => self.fleet.execute(c, now, &self.engine.pipeline.shards, &mut self.writes),
            Command::Registry(c) => {
                let r = self.services.execute(c, now / 1000, &mut self.writes);
                self.relay_out(now);
                r
            }
            Command::Volumes(c) => self.volumes.execute(c, now, &mut self.writes),
            Command::Reload(cfg) => {
                self.reload(*cfg);
                Ok(Reply::Reloaded { reloaded: true })
            }
        }
    }

    /// The last round at stop: flush everything, let running failovers finish.
    pub fn finish(mut self) {
        let now = self.clock.now_ns();
        self.fleet.collect_outcomes(now, &mut self.writes);
        // Every amphora's counts reach the store at a graceful stop (between transitions only
        // the sweep writes them), unless the store is failing: then only what was marked is
        // queued, within the writer's stop budget.
        if !self.store_failing {
            self.fleet.mark_all(&mut self.writes);
        }
        // Pending (not started) failovers stay pending in the store and run after a restart.
        // Everything marked is written at a graceful stop, FLUSH_MAX rows a flush, without
        // waiting for each commit: the writer merges what waits into one transaction. Only
        // when STOP_QUEUE_ROWS rows wait does the stop wait for them, which bounds the memory
        // of a million rows in flight. A failing store is given its writer's stop budget, not
        // the call timeout.
        let mut wait = if self.store_failing { crate::store::STOP_RETRY } else { Duration::from_secs(30) };
        let mut queued = 0usize;
        loop {
            let last = self.writes.amphorae.len() <= FLUSH_MAX;
            queued += self.writes.amphorae.len().min(FLUSH_MAX);
            if last || queued >= STOP_QUEUE_ROWS {
                let (tx, rx) = channel::bounded(1);
                let submitted = self.flush(Some(Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                })));
                if submitted && rx.recv_timeout(wait).is_err() {
                    // The store does not keep up (or fails): queue the rest without waiting,
                    // so the stop stays within its budget.
                    wait = Duration::ZERO;
                }
                queued = 0;
                if !submitted || self.writes.amphorae.is_empty() {
                    break;
                }
            } else if !self.flush(None) {
                break;
            }
        }
        self.fleet.stop(now, &mut self.writes);
        let (tx, rx) = channel::bounded(1);
        if self.flush(Some(Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }))) {
            let _ = rx.recv_timeout(wait);
        }
        self.publish();
        if let Some(mut d) = self.durable.take() {
            d.finish();
        }
        self.volumes.release();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Starts the control thread on the engine's `outputs`; it runs until the engine's workers are
/// gone, then applies what they sent last, answers waiting calls, flushes and exits.
pub fn spawn(ctl: Control, outputs: Outputs) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("control".into()).spawn(move || {
        if !crate::io::lower_thread_priority(CONTROL_NICE) {
            tracing::debug!("the control thread's priority could not be lowered");
        }
        run(ctl, &outputs)
    })
}

/// The control thread's nice value: below the data plane (rx, workers: 0), above the store
/// writer (10). When the cores are saturated (a fill of new amphorae at full rate), the
/// workers get the CPU first and the control thread lags instead (its change channel is
/// unbounded; a late health check reads as `control_stalled`, which suspends failovers); in a
/// fill of a million new senders at 150k/s this dropped 30-48 % fewer datagrams as
/// `ring_full` (three paired runs). When the cores are not saturated it changes nothing.
pub const CONTROL_NICE: i32 = 5;

/// The control thread's loop: changes and calls as they come, periodic tasks when due.
pub fn run(mut ctl: Control, outputs: &Outputs) {
    let published = ctl.published.clone();
    let commands = ctl.commands.clone();
    let (changes, services) = (&outputs.changes, &outputs.services);
    let cluster = ctl.cluster.input.clone();
    let r = Ordering::Relaxed;
    let elapsed = |start: Instant| start.elapsed().as_nanos() as u64;
    loop {
        let now = ctl.clock.now_ns();
        let wait = if ctl.has_backlog() {
            Duration::ZERO
        } else {
            let due = match (ctl.next_due(), ctl.publish_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            due.map_or(TICK, |due| Duration::from_nanos(due.saturating_sub(now)).min(TICK))
        };
        let mut stop = false;
        crossbeam::select! {
            recv(changes) -> msg => match msg {
                Ok(first) => {
                    // Bounded per round, so a million new senders at once do not hold up the
                    // health checks (their gap would read as a stall).
                    let start = Instant::now();
                    ctl.apply_changes(std::iter::once(first).chain(changes.try_iter().take(CHANGE_BATCHES_PER_ROUND)));
                    published.record_round(elapsed(start));
                }
                Err(_) => stop = true,
            },
            recv(commands) -> call => if let Ok(call) = call { ctl.command(call) },
            recv(cluster) -> input => if let Ok(input) = input { ctl.apply_cluster(input) },
            recv(services) -> batch => if let Ok(batch) = batch {
                let start = Instant::now();
                ctl.apply_services(batch);
                for more in services.try_iter() {
                    ctl.apply_services(more);
                }
                published.record_round(elapsed(start));
            },
            default(wait) => {},
        }
        if stop {
            break;
        }
        let start = Instant::now();
        published.last_tick_ns.store(ctl.clock.now_ns(), r);
        ctl.run_due();
        ctl.flush_backlog();
        ctl.publish_round();
        published.record_round(elapsed(start));
    }
    // Workers are gone: apply what they sent last, answer waiting calls, flush.
    ctl.apply_changes(changes.try_iter());
    for batch in services.try_iter() {
        ctl.apply_services(batch);
    }
    while let Ok(call) = commands.try_recv() {
        ctl.command(call);
    }
    ctl.finish();
}
