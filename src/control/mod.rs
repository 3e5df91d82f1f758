//! The control thread: what heartsink does with the fleet's state, off the packet path.
//!
//! ```text
//! workers ─change log─▶ control thread ──▶ snapshot (ArcSwap, immutable) ──▶ admin API, confd
//!  admin API ─commands─▶      │ periodic tasks: health check, store flush, rates, self report
//!                             ├──▶ failover threads (log / command / HTTP)
//!                             └──▶ store writer thread (redb, one transaction per flush)
//! ```
//!
//! Workers tell the control thread only of transitions (a new amphora, a status change, a
//! stale amphora beating again); liveness deadlines ([`liveness`]) are checked lazily. Every
//! reader sees the fleet through the [`Snapshot`] the control thread publishes after each
//! round: persistent maps whose clone is O(1), so publishing never copies the fleet and a
//! reader never waits for a shard lock. The snapshot's `generation` is the confd serial.
//!
//! Periodic tasks follow Cinder's rules ([`periodic`]); the self report goes into the store
//! every `report_interval`, and `/healthz` turns unhealthy when the control thread misses its
//! ticks.

pub mod failover;
pub mod liveness;
pub mod periodic;
pub mod services;
pub mod volumes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::engine::{Change, Clock, DropReason, Rates, Shared, Totals};
use crate::proto::octavia::Uuid;
use crate::state::{AmphoraState, OperatingStatus};
use crate::store::{Job, Key, Store, Table, WriteBatch, Writer};
use failover::{Executor, FailoverConfig, FailoverReason, FailoverRecord, FailoverState};
use liveness::{secs_ns, Live, Liveness, LivenessConfig, Signals, SuspendReason};
use periodic::{Periodic, TaskId};

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
        }
    }
}

impl LifecycleConfig {
    /// Checks the values and applies Cinder's fix-up: `service_down_time` ≤ `report_interval`
    /// becomes 2.5 × `report_interval` (returned as a warning).
    pub fn validate(&mut self) -> Result<Option<String>, String> {
        for (name, v) in [
            ("report_interval", self.report_interval),
            ("periodic_interval", self.periodic_interval),
            ("store_flush_interval", self.store_flush_interval),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("service.{name} must be a positive number of seconds"));
            }
        }
        for (name, v) in [
            ("periodic_fuzzy_delay", self.periodic_fuzzy_delay),
            ("graceful_shutdown_timeout", self.graceful_shutdown_timeout),
            ("service_down_time", self.service_down_time),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("service.{name} must be a non-negative number of seconds"));
            }
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
    /// Service types and pool refresh.
    pub services: services::ServicesConfig,
    /// The volume scheduler.
    pub scheduler: volumes::SchedulerConfig,
}

/// One amphora in the snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AmphoraHealth {
    /// Rolled-up operating status.
    pub operating_status: OperatingStatus,
    /// Liveness.
    pub liveness: Live,
    /// Last liveness refresh known to the control thread (exact for stale amphorae; for live
    /// ones as of the latest deadline check, at most `heartbeat_timeout` old), ns.
    pub last_refresh_ns: u64,
    /// First heartbeat, ns.
    pub first_seen_ns: u64,
    /// The load balancer it serves (set through the API; `None`: itself).
    pub load_balancer: Option<Uuid>,
    /// Listeners a heartbeat must report to refresh liveness.
    pub expected_listeners: Option<u32>,
    /// Its latest failover record, with that record's state.
    pub failover: Option<(u64, FailoverState)>,
}

/// The control thread's published view: immutable, cheap to clone, read without locks.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases with every published change (the confd serial).
    pub generation: u64,
    /// When it was published, ns.
    pub taken_ns: u64,
    /// Every known amphora, in id order.
    pub amphorae: imbl::OrdMap<Uuid, AmphoraHealth>,
    /// Stale amphorae.
    pub down: imbl::OrdSet<Uuid>,
    /// Load balancer → its amphorae (only those configured with one).
    pub load_balancers: imbl::OrdMap<Uuid, imbl::OrdSet<Uuid>>,
    /// Engine counters at publication.
    pub totals: Totals,
    /// Why automatic failovers are suspended (empty: they are not).
    pub suspended: Vec<SuspendReason>,
    /// Failover records by state, in [`FailoverState::ALL`] order.
    pub failover_counts: [u64; 5],
    /// The periodic tasks.
    pub tasks: Vec<periodic::Task>,
    /// Durable store figures, when there is a store.
    pub store: Option<StoreStatus>,
    /// The services as polled by the pools (rebuilt when the registry changes).
    pub world: Arc<crate::registry::lb::World>,
    /// The pools, by name.
    pub pools: Arc<BTreeMap<String, crate::registry::lb::Pool>>,
    /// Whether this heartsink holds the scheduler's leader lease.
    pub leader: bool,
    /// Volumes known to the scheduler.
    pub volumes: usize,
    /// The scheduler's latest tick.
    pub scheduler: Option<crate::sched::TickReport>,
    /// Registered services.
    pub services: usize,
    /// Service heartbeats the registry refused (unknown type, bad address).
    pub services_rejected: u64,
}

/// Durable store figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStatus {
    /// Database file.
    pub path: String,
    /// Transactions committed.
    pub commits: u64,
    /// Writes committed.
    pub writes: u64,
    /// Failed transactions.
    pub failures: u64,
    /// Latest commit, ms.
    pub last_commit_ms: f64,
}

impl Snapshot {
    /// The rolled-up status of load balancer `lb`: the status of its live amphora refreshed
    /// most recently (Octavia: the last heartbeat written wins), `OFFLINE` when none is alive.
    /// An amphora configured with no load balancer is its own. `None` if unknown.
    pub fn load_balancer_status(&self, lb: &Uuid) -> Option<(OperatingStatus, Vec<(Uuid, &AmphoraHealth)>)> {
        let members: Vec<(Uuid, &AmphoraHealth)> = match self.load_balancers.get(lb) {
            Some(ids) => ids.iter().filter_map(|id| self.amphorae.get(id).map(|h| (*id, h))).collect(),
            None => match self.amphorae.get(lb) {
                Some(h) if h.load_balancer.is_none() => vec![(*lb, h)],
                _ => return None,
            },
        };
        let status = members
            .iter()
            .filter(|(_, h)| h.liveness == Live::Alive)
            .max_by_key(|(_, h)| h.last_refresh_ns)
            .map_or(OperatingStatus::Offline, |(_, h)| h.operating_status);
        Some((status, members))
    }
}

/// Why an admin command failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// No such amphora, record, or object.
    NotFound(String),
    /// The request is not acceptable (bad value).
    Invalid(String),
    /// The state does not allow it (e.g. an illegal transition).
    Conflict(String),
    /// The store did not confirm the write.
    Store(String),
    /// The control thread did not answer in time (stopping, or stalled).
    Unavailable,
    /// Nothing to change (HTTP 304).
    NotModified(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::NotFound(m)
            | CommandError::Invalid(m)
            | CommandError::Conflict(m)
            | CommandError::NotModified(m) => f.write_str(m),
            CommandError::Store(m) => write!(f, "the store did not confirm the write: {m}"),
            CommandError::Unavailable => f.write_str("the control thread is not answering"),
        }
    }
}

/// What a command answers: a JSON document, or an error.
pub type CommandResult = Result<serde_json::Value, CommandError>;

/// A request from the admin API to the control thread.
#[derive(Debug)]
pub enum Command {
    /// Start a failover of an amphora now.
    Failover(Uuid),
    /// Forget an amphora (it comes back as new if it beats again).
    Forget(Uuid),
    /// Set an amphora's expected listener count and load balancer (`None`: leave as is).
    Configure {
        /// Amphora.
        id: Uuid,
        /// `Some(None)` clears.
        expected_listeners: Option<Option<u32>>,
        /// `Some(None)` clears.
        load_balancer: Option<Option<Uuid>>,
    },
    /// List failover records after `marker`, newest last.
    Failovers {
        /// Records with an id above this.
        marker: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// One failover record.
    FailoverRecord(u64),
    /// New settings (SIGHUP).
    Reload(Box<ControlConfig>),
    /// Register, lock, unlock or deregister services.
    ServicePush {
        /// What to do.
        action: services::PushAction,
        /// The services.
        entries: Vec<services::ServiceEntry>,
    },
    /// Remove every service of a type.
    ServiceFlush(String),
    /// The services of a type.
    ServiceList {
        /// Type.
        type_name: String,
        /// With `stat.*` tags.
        full: bool,
    },
    /// The configured service types.
    ServiceTypes,
    /// The address of a service id.
    ServiceResolve {
        /// Type.
        type_name: String,
        /// Service id.
        id: String,
    },
    /// Create (or with `force` replace) a pool.
    PoolCreate {
        /// Name.
        name: String,
        /// Target string `N,slotA,slotB;M,slotC;key=value`.
        targets: String,
        /// Replace an existing pool.
        force: bool,
    },
    /// Delete a pool.
    PoolDelete(String),
    /// Create a volume.
    VolumeCreate(volumes::VolumeCreate),
    /// List volumes, optionally of one state.
    VolumeList(Option<crate::sched::VolumeState>),
    /// One volume.
    VolumeGet(u64),
    /// Resize or re-constrain a `ready` volume.
    VolumePatch(u64, volumes::VolumePatch),
    /// Delete a volume.
    VolumeDelete(u64),
    /// A machine-side agent's report.
    VolumeReport(u64, volumes::VolumeReport),
}

/// A command with its reply channel. The reply comes once the change is durable.
#[derive(Debug)]
pub struct Envelope {
    /// The command.
    pub command: Command,
    /// Where the answer goes.
    pub reply: Sender<CommandResult>,
}

/// Sends a command and waits (bounded) for its durable answer.
pub fn call(tx: &Sender<Envelope>, command: Command) -> CommandResult {
    let (reply, rx) = channel::bounded(1);
    tx.send(Envelope { command, reply }).map_err(|_| CommandError::Unavailable)?;
    rx.recv_timeout(Duration::from_secs(30)).map_err(|_| CommandError::Unavailable)?
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
}

const TICK: Duration = Duration::from_millis(250);

/// Amphorae logged one by one per event (stale, back) in one round; the rest are summed up.
const LOG_EACH: usize = 16;

/// Change batches (one per worker batch, ≤ 128 changes each) applied per control round.
const CHANGE_BATCHES_PER_ROUND: usize = 64;

/// Most amphora records written per flush.
pub const FLUSH_MAX: usize = 20_000;

struct Tasks {
    health: TaskId,
    flush: TaskId,
    rates: TaskId,
    summary: TaskId,
    report: TaskId,
    maintenance: TaskId,
    confd_watch: TaskId,
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
    writer_failures: u64,
}

/// The control thread's state.
pub struct Control {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    cfg: ControlConfig,
    live: Liveness,
    records: BTreeMap<u64, FailoverRecord>,
    latest_record: FxHashMap<Uuid, u64>,
    next_record: u64,
    queue: std::collections::VecDeque<u64>,
    executor: Executor,
    store: Option<Arc<Store>>,
    writer: Option<Writer>,
    pending: WriteBatch,
    dirty: FxHashSet<Uuid>,
    periodic: Periodic,
    tasks: Tasks,
    health: imbl::OrdMap<Uuid, AmphoraHealth>,
    down: imbl::OrdSet<Uuid>,
    lbs: imbl::OrdMap<Uuid, imbl::OrdSet<Uuid>>,
    suspended: Vec<SuspendReason>,
    generation: u64,
    changed: bool,
    prev: Prev,
    started_ns: u64,
    report_count: u64,
    model_disconnected: bool,
    confd_error: Option<String>,
    registry: crate::registry::Registry,
    pools: Arc<BTreeMap<String, crate::registry::lb::Pool>>,
    world: Arc<crate::registry::lb::World>,
    world_generation: u64,
    scratch: crate::registry::Registration,
    rejected_types: FxHashSet<String>,
    id_tag: crate::registry::TagValue,
    services_rejected: u64,
    sched: crate::sched::Scheduler,
    lease: Box<dyn crate::sched::lease::Lease + Send>,
    leading: bool,
    last_sched: Option<crate::sched::TickReport>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("tracked", &self.live.tracked()).finish()
    }
}

impl Control {
    /// Opens the store (if configured), restores what it holds into the shards, and prepares
    /// the control state. Called before any packet is processed.
    pub fn new(shared: Arc<Shared>, clock: Arc<dyn Clock>, mut cfg: ControlConfig) -> Result<Control, String> {
        cfg.liveness.validate()?;
        cfg.failover.validate()?;
        if let Some(w) = cfg.lifecycle.validate()? {
            tracing::warn!("{w}");
        }
        let now = clock.now_ns();
        // The lease first: its lock file tells a second daemon on this data directory who holds it.
        let lease: Box<dyn crate::sched::lease::Lease + Send> = match &cfg.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("data directory {}: {e}", dir.display()))?;
                Box::new(crate::sched::lease::LocalLease::open(dir).map_err(|e| e.to_string())?)
            }
            None => Box::new(volumes::AlwaysLease),
        };
        let store = match &cfg.data_dir {
            Some(dir) => Some(Arc::new(Store::open(dir).map_err(|e| e.to_string())?)),
            None => None,
        };
        let writer = match &store {
            Some(s) => Some(Writer::spawn(s.clone()).map_err(|e| e.to_string())?),
            None => None,
        };
        let executor =
            Executor::spawn(cfg.failover.clone(), cfg.liveness.failover_threads).map_err(|e| e.to_string())?;
        let mut periodic = Periodic::new(cfg.seed);
        let lc = &cfg.lifecycle;
        let check = secs_ns(cfg.liveness.health_check_interval);
        let tasks = Tasks {
            health: periodic.add("health_check", check, now, check, 0),
            flush: periodic.add(
                "store_flush",
                secs_ns(lc.store_flush_interval),
                now,
                secs_ns(lc.store_flush_interval),
                0,
            ),
            rates: periodic.add("rates", 1_000_000_000, now, 1_000_000_000, 0),
            summary: periodic.add("drop_summary", 10_000_000_000, now, 10_000_000_000, 0),
            // Cinder: the first report after one report_interval.
            report: periodic.add("report_state", secs_ns(lc.report_interval), now, secs_ns(lc.report_interval), 0),
            maintenance: periodic.add(
                "maintenance",
                secs_ns(lc.periodic_interval),
                now,
                0,
                secs_ns(lc.periodic_fuzzy_delay),
            ),
            confd_watch: periodic.add("confd_config_watch", 1_000_000_000, now, 1_000_000_000, 0),
            expiry: periodic.add("service_expiry", 1_000_000_000, now, 1_000_000_000, 0),
            scheduler: 0,
            world: periodic.add(
                "lb_world_refresh",
                secs_ns(cfg.services.world_refresh_interval),
                now,
                secs_ns(cfg.services.world_refresh_interval),
                0,
            ),
        };
        let tasks = Tasks {
            scheduler: periodic.add(
                "scheduler",
                secs_ns(cfg.scheduler.tick_interval),
                now,
                secs_ns(cfg.scheduler.tick_interval),
                0,
            ),
            ..tasks
        };
        let registry = crate::registry::Registry::new(cfg.services.types.clone()).map_err(|e| e.to_string())?;
        let sched = crate::sched::Scheduler::new(crate::sched::SchedConfig {
            delay_ns: secs_ns(cfg.scheduler.delay),
            ..crate::sched::SchedConfig::default()
        });
        let mut c = Control {
            live: Liveness::new(cfg.liveness.clone(), now),
            shared,
            clock,
            records: BTreeMap::new(),
            latest_record: FxHashMap::default(),
            next_record: 1,
            queue: Default::default(),
            executor,
            store,
            writer,
            pending: WriteBatch::default(),
            dirty: FxHashSet::default(),
            periodic,
            tasks,
            health: imbl::OrdMap::new(),
            down: imbl::OrdSet::new(),
            lbs: imbl::OrdMap::new(),
            suspended: Vec::new(),
            generation: 0,
            changed: true,
            prev: Prev::default(),
            started_ns: now,
            report_count: 0,
            model_disconnected: false,
            confd_error: None,
            registry,
            pools: Arc::new(BTreeMap::new()),
            world: Arc::new(crate::registry::lb::World::default()),
            world_generation: u64::MAX,
            scratch: crate::registry::Registration::empty(),
            rejected_types: FxHashSet::default(),
            id_tag: crate::registry::TagValue::Bool(false),
            services_rejected: 0,
            sched,
            lease,
            leading: false,
            last_sched: None,
            cfg,
        };
        c.restore()?;
        c.prev.totals = c.shared.totals();
        c.prev.summary_totals = c.prev.totals.clone();
        c.suspended = c.live.suspension(now);
        c.publish();
        Ok(c)
    }

    fn restore(&mut self) -> Result<(), String> {
        let Some(store) = self.store.clone() else { return Ok(()) };
        let loaded = store.load().map_err(|e| e.to_string())?;
        let amphorae: Vec<(Key, StoredAmphora)> = loaded.decode(Table::Amphorae).map_err(|e| e.to_string())?;
        let n = amphorae.len();
        for (key, stored) in amphorae {
            let Key::Id(bytes) = key else { continue };
            let id = Uuid::from_bytes(bytes);
            let mut state = stored.state.restored();
            state.stale = stored.stale_since_ns.is_some();
            let health = AmphoraHealth {
                operating_status: state.operating_status,
                liveness: if state.stale { Live::Stale } else { Live::Alive },
                last_refresh_ns: state.last_refresh_ns,
                first_seen_ns: state.first_seen_ns,
                load_balancer: stored.load_balancer,
                expected_listeners: state.expected_listeners,
                failover: None,
            };
            self.live.track(id, state.last_refresh_ns, stored.stale_since_ns, stored.handled);
            if stored.stale_since_ns.is_some() {
                self.down.insert(id);
            }
            if let Some(lb) = stored.load_balancer {
                self.lbs.entry(lb).or_default().insert(id);
            }
            self.health.insert(id, health);
            self.shared.pipeline.shards.insert_if_absent(id, state);
        }
        let records: Vec<(Key, FailoverRecord)> = loaded.decode(Table::Failovers).map_err(|e| e.to_string())?;
        let mut requeued = 0;
        for (_, mut r) in records {
            self.next_record = self.next_record.max(r.id + 1);
            if matches!(r.state, FailoverState::Pending | FailoverState::InProgress) {
                // Decided before the restart and maybe not carried out: run again (at least once).
                r.state = FailoverState::Pending;
                self.queue.push_back(r.id);
                requeued += 1;
            }
            self.latest_record.insert(r.amphora, r.id);
            if let Some(h) = self.health.get_mut(&r.amphora) {
                h.failover = Some((r.id, r.state));
            }
            self.records.insert(r.id, r);
        }
        self.restore_services(&loaded)?;
        self.restore_volumes(&loaded)?;
        if let Ok(meta) = loaded.decode::<serde_json::Value>(Table::Meta) {
            for (k, v) in meta {
                if k == Key::Name("service".into()) {
                    self.report_count = v.get("report_count").and_then(serde_json::Value::as_u64).unwrap_or(0);
                }
            }
        }
        tracing::info!(
            amphorae = n,
            failovers = self.records.len(),
            requeued,
            path = %store.path().display(),
            "restored durable state"
        );
        Ok(())
    }

    /// Reload: new liveness, failover and lifecycle settings (the data directory needs a restart).
    pub fn reload(&mut self, mut cfg: ControlConfig) {
        if let Err(e) = cfg.liveness.validate().and_then(|_| cfg.failover.validate()) {
            tracing::error!(error = %e, "control settings not reloaded");
            return;
        }
        if let Ok(Some(w)) = cfg.lifecycle.validate() {
            tracing::warn!("{w}");
        }
        let now = self.clock.now_ns();
        self.periodic.set_spacing(self.tasks.health, secs_ns(cfg.liveness.health_check_interval), now);
        self.periodic.set_spacing(self.tasks.flush, secs_ns(cfg.lifecycle.store_flush_interval), now);
        self.periodic.set_spacing(self.tasks.report, secs_ns(cfg.lifecycle.report_interval), now);
        self.periodic.set_spacing(self.tasks.maintenance, secs_ns(cfg.lifecycle.periodic_interval), now);
        self.live.set_config(cfg.liveness.clone());
        self.executor.set_config(cfg.failover.clone());
        cfg.data_dir = self.cfg.data_dir.clone();
        if cfg.services.types != self.cfg.services.types {
            tracing::warn!("changed service types take effect only after a restart");
            cfg.services.types = self.cfg.services.types.clone();
        }
        self.periodic.set_spacing(self.tasks.world, secs_ns(cfg.services.world_refresh_interval), now);
        self.cfg = cfg;
    }

    /// Applies batches of changes from the workers.
    pub fn apply_changes(&mut self, batches: impl Iterator<Item = Vec<Change>>) {
        let now = self.clock.now_ns();
        let mut revived = 0usize;
        for batch in batches {
            for c in batch {
                self.changed = true;
                match c {
                    Change::New(id) => {
                        self.live.track(id, now, None, false);
                        self.health.insert(
                            id,
                            AmphoraHealth {
                                operating_status: OperatingStatus::Offline,
                                liveness: Live::Alive,
                                last_refresh_ns: now,
                                first_seen_ns: now,
                                load_balancer: None,
                                expected_listeners: None,
                                failover: None,
                            },
                        );
                        // The first heartbeat's status comes with it; read it once.
                        if let Some(st) = self.shared.pipeline.shards.with(&id, |s| s.operating_status) {
                            if let Some(h) = self.health.get_mut(&id) {
                                h.operating_status = st;
                            }
                        }
                        self.dirty.insert(id);
                        tracing::debug!(amphora = %id, "new amphora");
                    }
                    Change::Status { id, from, to } => {
                        self.shared.status_changes.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = self.health.get_mut(&id) {
                            h.operating_status = to;
                        }
                        self.dirty.insert(id);
                        if to == OperatingStatus::Online {
                            tracing::debug!(amphora = %id, from = from.as_str(), to = to.as_str(), "amphora status changed");
                        } else {
                            tracing::info!(amphora = %id, from = from.as_str(), to = to.as_str(), "amphora status changed");
                        }
                    }
                    Change::Revived(id) => {
                        if self.live.revived(id, now) {
                            if let Some(h) = self.health.get_mut(&id) {
                                h.liveness = Live::Alive;
                                h.last_refresh_ns = now;
                            }
                            self.down.remove(&id);
                            self.dirty.insert(id);
                            revived += 1;
                            if revived <= LOG_EACH {
                                tracing::info!(amphora = %id, "stale amphora is beating again");
                            }
                        }
                    }
                }
            }
        }
        if revived > LOG_EACH {
            tracing::info!(more = revived - LOG_EACH, "more stale amphorae are beating again (not logged one by one)");
        }
    }

    /// Runs the due periodic tasks and collects failover outcomes.
    pub fn run_due(&mut self) {
        let now = self.clock.now_ns();
        self.collect_outcomes(now);
        let t = self.tasks.health;
        if self.periodic.is_due(t, now) {
            self.health_check(now);
            let end = self.clock.now_ns();
            self.periodic.ran(t, now, end, Ok(()));
        }
        for (id, f) in [
            (self.tasks.rates, Control::task_rates as fn(&mut Control, u64) -> Result<(), String>),
            (self.tasks.summary, Control::task_summary),
            (self.tasks.report, Control::task_report),
            (self.tasks.maintenance, Control::task_maintenance),
            (self.tasks.flush, Control::task_flush),
            (self.tasks.confd_watch, Control::task_confd_watch),
            (self.tasks.expiry, Control::task_expiry),
            (self.tasks.world, Control::task_world),
            (self.tasks.scheduler, Control::task_scheduler),
        ] {
            let now = self.clock.now_ns();
            if self.periodic.is_due(id, now) {
                let r = f(self, now);
                let end = self.clock.now_ns();
                self.periodic.ran(id, now, end, r);
            }
        }
        self.dispatch(self.clock.now_ns());
    }

    /// When the next task is due.
    pub fn next_due(&self) -> Option<u64> {
        self.periodic.next_due()
    }

    fn signals(&mut self) -> Signals {
        let t = self.shared.totals();
        let p = &self.prev.totals;
        let own = |t: &Totals| t.kernel_drops + t.drop_count(DropReason::RingFull);
        let (fill, cap) = self.shared.ring_fill();
        let ring_fill = fill.iter().copied().max().unwrap_or(0) as f64 / cap.max(1) as f64;
        let s = Signals {
            received: t.received.saturating_sub(p.received),
            drops: own(&t).saturating_sub(own(p)),
            late: t.drop_count(DropReason::Late).saturating_sub(p.drop_count(DropReason::Late)),
            ring_fill,
        };
        self.prev.totals = t;
        s
    }

    /// One health check (public for deterministic tests).
    pub fn health_check(&mut self, now: u64) {
        let signals = self.signals();
        let shards = self.shared.pipeline.shards.clone();
        let timeout = secs_ns(self.cfg.liveness.heartbeat_timeout);
        // Probe and mark stale under the shard lock, so a heartbeat refreshing concurrently
        // either moves last_refresh (re-armed) or sees the flag (revived).
        let check = self.live.check(now, signals, |id| {
            shards.with_mut(id, |s| {
                if s.last_refresh_ns.saturating_add(timeout) <= now {
                    s.stale = true;
                }
                s.last_refresh_ns
            })
        });
        let was = std::mem::take(&mut self.suspended);
        self.suspended = check.suspended.clone();
        let labels = |v: &[SuspendReason]| v.iter().map(SuspendReason::label).collect::<Vec<_>>();
        if labels(&was) != labels(&self.suspended) {
            self.changed = true;
            if self.suspended.is_empty() {
                tracing::info!("automatic failovers resumed");
            } else {
                tracing::warn!(reasons = ?labels(&self.suspended), detail = ?self.suspended, "automatic failovers suspended");
            }
        }
        for (id, last) in &check.rearmed {
            if let Some(h) = self.health.get_mut(id) {
                h.last_refresh_ns = *last;
            }
            self.dirty.insert(*id);
            self.changed = true;
        }
        for (i, (id, last)) in check.newly_stale.iter().enumerate() {
            if let Some(h) = self.health.get_mut(id) {
                h.liveness = Live::Stale;
                h.last_refresh_ns = *last;
            }
            self.down.insert(*id);
            self.dirty.insert(*id);
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
        if !check.stopped.is_empty() {
            tracing::error!(
                stale = check.stopped.len(),
                threshold = ?self.cfg.liveness.failover_threshold,
                "stale amphora count reached the failover threshold: failovers stopped"
            );
        }
        for (id, last, since) in check.stopped {
            let rec = self.record_for_episode(id, since);
            match rec {
                Some(r) if self.records.get(&r).is_some_and(|r| r.state == FailoverState::Stopped) => {}
                _ => {
                    self.new_record(id, FailoverReason::Stale, FailoverState::Stopped, last, since, now);
                }
            }
        }
        for (id, last, since) in check.start {
            let existing = self
                .record_for_episode(id, since)
                .filter(|r| self.records.get(r).is_some_and(|r| r.state == FailoverState::Stopped));
            let rid = match existing {
                Some(r) => {
                    if let Some(rec) = self.records.get_mut(&r) {
                        rec.state = FailoverState::Pending;
                        rec.updated_ns = now;
                    }
                    self.touch_record(r);
                    r
                }
                None => self.new_record(id, FailoverReason::Stale, FailoverState::Pending, last, since, now),
            };
            self.queue.push_back(rid);
        }
    }

    fn record_for_episode(&self, id: Uuid, since: u64) -> Option<u64> {
        self.latest_record.get(&id).copied().filter(|r| self.records.get(r).is_some_and(|r| r.stale_since_ns == since))
    }

    fn new_record(
        &mut self,
        amphora: Uuid,
        reason: FailoverReason,
        state: FailoverState,
        last: u64,
        since: u64,
        now: u64,
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
            action: self.executor.action(),
            error: None,
        };
        self.records.insert(id, rec);
        self.latest_record.insert(amphora, id);
        self.touch_record(id);
        id
    }

    fn touch_record(&mut self, id: u64) {
        self.changed = true;
        if let Some(r) = self.records.get(&id) {
            if let Some(h) = self.health.get_mut(&r.amphora) {
                if self.latest_record.get(&r.amphora) == Some(&id) {
                    h.failover = Some((id, r.state));
                }
            }
            self.pending.put_json(Table::Failovers, Key::Num(id), r);
            // The amphora's `handled` flag changed with it.
            self.dirty.insert(r.amphora);
        }
    }

    /// Starts queued failovers while threads are free.
    fn dispatch(&mut self, now: u64) {
        while self.live.in_flight() < self.cfg.liveness.failover_threads.max(1) {
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
            self.executor.run(copy);
            self.touch_record(id);
        }
    }

    fn collect_outcomes(&mut self, now: u64) {
        let outcomes: Vec<_> = self.executor.outcomes().collect();
        for o in outcomes {
            self.live.failover_finished();
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
            self.touch_record(o.id);
        }
    }

    fn task_rates(&mut self, _now: u64) -> Result<(), String> {
        let r = Ordering::Relaxed;
        let s = &self.shared;
        let rx: Vec<u64> = s.rx.iter().map(|c| c.packets.load(r)).collect();
        let worker: Vec<u64> = s.workers.iter().map(|c| c.packets.load(r)).collect();
        let accepted: Vec<u64> = s.workers.iter().map(|c| c.accepted.load(r)).collect();
        if let Some(at) = self.prev.rates_at {
            let secs = at.elapsed().as_secs_f64().max(1e-3);
            let per_s = |a: &[u64], b: &[u64]| -> Vec<f64> {
                a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y) as f64 / secs).collect()
            };
            s.rates.store(Arc::new(Rates {
                rx_pps: per_s(&rx, &self.prev.rx),
                worker_pps: per_s(&worker, &self.prev.worker),
                worker_accepted_pps: per_s(&accepted, &self.prev.accepted),
            }));
        }
        self.prev.rx = rx;
        self.prev.worker = worker;
        self.prev.accepted = accepted;
        self.prev.rates_at = Some(Instant::now());
        Ok(())
    }

    fn task_summary(&mut self, _now: u64) -> Result<(), String> {
        let t = self.shared.totals();
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
        Ok(())
    }

    /// Cinder's `report_state`: heartsink's own record in the store. A failure is logged once
    /// and never stops the task.
    fn task_report(&mut self, now: u64) -> Result<(), String> {
        self.report_count += 1;
        let t = self.shared.totals();
        let rates = self.shared.rates.load();
        let doc = serde_json::json!({
            "host": hostname(),
            "binary": "heartsink",
            "report_count": self.report_count,
            "created_at_ns": self.started_ns,
            "updated_at_ns": now,
            "uptime_s": now.saturating_sub(self.started_ns) as f64 / 1e9,
            "leader": true,
            "last_tick_ns": self.shared.last_tick_ns.load(Ordering::Relaxed),
            "received": t.received,
            "accepted": t.accepted,
            "dropped": t.dropped(),
            "kernel_drops": t.kernel_drops,
            "rx_pps": rates.rx_pps.iter().sum::<f64>(),
            "tracked": self.live.tracked(),
            "stale": self.live.stale_count(),
            "suspended": self.suspended.iter().map(SuspendReason::label).collect::<Vec<_>>(),
        });
        self.pending.put_json(Table::Meta, Key::Name("service".into()), &doc);
        if let Some(w) = &self.writer {
            let failures = w.stats.failures.load(Ordering::Relaxed);
            if failures > self.prev.writer_failures && !self.model_disconnected {
                self.model_disconnected = true;
                tracing::error!("store writes are failing; reports and state are not being saved");
            } else if failures == self.prev.writer_failures && self.model_disconnected {
                self.model_disconnected = false;
                tracing::info!("store writes recovered");
            }
            self.prev.writer_failures = failures;
        }
        Ok(())
    }

    fn task_maintenance(&mut self, _now: u64) -> Result<(), String> {
        let max = self.cfg.lifecycle.failover_records_max.max(1);
        let finished: Vec<u64> = self
            .records
            .values()
            .filter(|r| matches!(r.state, FailoverState::Done | FailoverState::Failed))
            .map(|r| r.id)
            .collect();
        let excess = self.records.len().saturating_sub(max).min(finished.len());
        for id in finished.into_iter().take(excess) {
            if let Some(r) = self.records.remove(&id) {
                if self.latest_record.get(&r.amphora) == Some(&id) {
                    self.latest_record.remove(&r.amphora);
                }
            }
            self.pending.delete(Table::Failovers, Key::Num(id));
        }
        Ok(())
    }

    /// Writes the dirty amphorae and the pending writes behind; returns a channel told when
    /// they are durable (None without a store).
    fn flush(&mut self) -> Option<Receiver<Result<(), String>>> {
        self.services_to_store();
        self.volumes_to_store();
        let writer = self.writer.as_ref()?;
        let mut batch = std::mem::take(&mut self.pending);
        let shards = &self.shared.pipeline.shards;
        // Bounded work per flush: a million new amphorae are written over several flushes
        // instead of stalling the control thread for seconds.
        let mut ids: Vec<(usize, Uuid)> = self.dirty.iter().take(FLUSH_MAX).map(|id| (shards.index(id), *id)).collect();
        // One lock per shard, as the workers take them, instead of one per amphora.
        ids.sort_unstable();
        let mut states: Vec<(Uuid, AmphoraState)> = Vec::with_capacity(ids.len());
        for run in ids.chunk_by(|a, b| a.0 == b.0) {
            let shard = shards.shard(run[0].0).lock();
            states.extend(run.iter().filter_map(|(_, id)| shard.get(id).map(|s| (*id, s.clone()))));
        }
        for (_, id) in &ids {
            self.dirty.remove(id);
        }
        for (id, state) in states {
            let Some(h) = self.health.get(&id) else { continue };
            let stale_since_ns = self.live.stale_since(&id);
            let stored = StoredAmphora {
                state,
                load_balancer: h.load_balancer,
                stale_since_ns,
                handled: self.live.handled(&id),
            };
            batch.put_json(Table::Amphorae, Key::Id(*id.as_bytes()), &stored);
        }
        if batch.is_empty() {
            return None;
        }
        let (tx, rx) = channel::bounded(1);
        let _ = writer.sender()?.send(Job { batch, done: Some(tx) });
        Some(rx)
    }

    /// Reloads the confd `config.data` when the file changed (a broken file is reported once
    /// and the previous configuration stays in use).
    fn task_confd_watch(&mut self, _now: u64) -> Result<(), String> {
        let current = self.shared.confd.load();
        match current.reloaded_if_changed() {
            None => Ok(()),
            Some(Ok(new)) => {
                let serial = new.index.as_ref().map(|i| i.serial_no());
                self.shared.confd.store(Arc::new(new));
                self.confd_error = None;
                tracing::info!(serial = ?serial, "confd configuration reloaded (file changed)");
                Ok(())
            }
            Some(Err(e)) if self.confd_error.as_ref() == Some(&e) => Ok(()),
            Some(Err(e)) => {
                self.confd_error = Some(e.clone());
                Err(format!("confd configuration not reloaded: {e}"))
            }
        }
    }

    fn task_flush(&mut self, _now: u64) -> Result<(), String> {
        self.flush();
        Ok(())
    }

    /// Handles an admin command; the reply is sent once its writes are durable.
    pub fn command(&mut self, env: Envelope) {
        let now = self.clock.now_ns();
        let result = self.execute(env.command, now);
        match result {
            Ok(v) => {
                let durable = self.flush();
                // Wait off the control thread: a helper thread forwards the durable answer.
                match durable {
                    Some(rx) => {
                        let reply = env.reply;
                        let _ = std::thread::Builder::new().name("ack".into()).spawn(move || {
                            let r = match rx.recv_timeout(Duration::from_secs(30)) {
                                Ok(Ok(())) => Ok(v),
                                Ok(Err(e)) => Err(CommandError::Store(e)),
                                Err(_) => Err(CommandError::Store("no answer from the writer".into())),
                            };
                            let _ = reply.send(r);
                        });
                    }
                    None => {
                        let _ = env.reply.send(Ok(v));
                    }
                }
            }
            Err(e) => {
                let _ = env.reply.send(Err(e));
            }
        }
    }

    fn execute(&mut self, command: Command, now: u64) -> CommandResult {
        self.changed = true;
        match command {
            Command::Failover(id) => {
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
                let rid = self.new_record(id, FailoverReason::Manual, FailoverState::Pending, last, now, now);
                self.queue.push_back(rid);
                self.dispatch(now);
                Ok(serde_json::to_value(&self.records[&rid]).unwrap_or_default())
            }
            Command::Forget(id) => {
                let Some(h) = self.health.remove(&id) else {
                    return Err(CommandError::NotFound(format!("no amphora {id}")));
                };
                self.shared.pipeline.shards.remove(&id);
                self.live.forget(&id);
                self.down.remove(&id);
                if let Some(lb) = h.load_balancer {
                    if let Some(set) = self.lbs.get_mut(&lb) {
                        set.remove(&id);
                        if set.is_empty() {
                            self.lbs.remove(&lb);
                        }
                    }
                }
                self.dirty.remove(&id);
                self.pending.delete(Table::Amphorae, Key::Id(*id.as_bytes()));
                tracing::info!(amphora = %id, "amphora forgotten");
                Ok(serde_json::json!({"forgotten": id}))
            }
            Command::Configure { id, expected_listeners, load_balancer } => {
                let Some(h) = self.health.get_mut(&id) else {
                    return Err(CommandError::NotFound(format!("no amphora {id}")));
                };
                if let Some(e) = expected_listeners {
                    h.expected_listeners = e;
                    self.shared.pipeline.shards.with_mut(&id, |s| s.expected_listeners = e);
                }
                if let Some(lb) = load_balancer {
                    if let Some(old) = h.load_balancer {
                        if let Some(set) = self.lbs.get_mut(&old) {
                            set.remove(&id);
                            if set.is_empty() {
                                self.lbs.remove(&old);
                            }
                        }
                    }
                    h.load_balancer = lb;
                    if let Some(new) = lb {
                        self.lbs.entry(new).or_default().insert(id);
                    }
                }
                let v = serde_json::to_value(&*h).unwrap_or_default();
                self.dirty.insert(id);
                Ok(v)
            }
            Command::Failovers { marker, limit } => {
                let lower = marker.map_or(0, |m| m + 1);
                let items: Vec<&FailoverRecord> = self.records.range(lower..).take(limit).map(|(_, r)| r).collect();
                let next = if items.len() == limit { items.last().map(|r| r.id) } else { None };
                Ok(serde_json::json!({"failovers": items, "next_marker": next}))
            }
            Command::Reload(cfg) => {
                self.reload(*cfg);
                Ok(serde_json::json!({"reloaded": true}))
            }
            c @ (Command::ServicePush { .. }
            | Command::ServiceFlush(_)
            | Command::ServiceList { .. }
            | Command::ServiceTypes
            | Command::ServiceResolve { .. }
            | Command::PoolCreate { .. }
            | Command::PoolDelete(_)) => self.execute_services(c),
            c @ (Command::VolumeCreate(_)
            | Command::VolumeList(_)
            | Command::VolumeGet(_)
            | Command::VolumePatch(..)
            | Command::VolumeDelete(_)
            | Command::VolumeReport(..)) => self.execute_volumes(c),
            Command::FailoverRecord(id) => self
                .records
                .get(&id)
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .ok_or_else(|| CommandError::NotFound(format!("no failover record {id}"))),
        }
    }

    /// Publishes a new snapshot if anything changed.
    pub fn publish(&mut self) {
        if !self.changed {
            return;
        }
        self.changed = false;
        self.generation += 1;
        let mut counts = [0u64; 5];
        for r in self.records.values() {
            counts[FailoverState::ALL.iter().position(|s| *s == r.state).unwrap_or(0)] += 1;
        }
        let store = match (&self.store, &self.writer) {
            (Some(s), Some(w)) => {
                let r = Ordering::Relaxed;
                Some(StoreStatus {
                    path: s.path().display().to_string(),
                    commits: w.stats.commits.load(r),
                    writes: w.stats.writes.load(r),
                    failures: w.stats.failures.load(r),
                    last_commit_ms: w.stats.last_commit_ns.load(r) as f64 / 1e6,
                })
            }
            _ => None,
        };
        let snap = Snapshot {
            generation: self.generation,
            taken_ns: self.clock.now_ns(),
            amphorae: self.health.clone(),
            down: self.down.clone(),
            load_balancers: self.lbs.clone(),
            totals: self.shared.totals(),
            suspended: self.suspended.clone(),
            failover_counts: counts,
            tasks: self.periodic.tasks().to_vec(),
            store,
            world: self.world.clone(),
            pools: self.pools.clone(),
            leader: self.leading,
            volumes: self.sched.len(),
            scheduler: self.last_sched,
            services: self.registry.len(),
            services_rejected: self.services_rejected,
        };
        self.shared.snapshot.store(Arc::new(snap));
    }

    /// The last round at stop: flush everything, let running failovers finish.
    pub fn finish(mut self) {
        let now = self.clock.now_ns();
        self.collect_outcomes(now);
        // Pending (not started) failovers stay pending in the store and run after a restart.
        // Everything dirty is written at a graceful stop.
        loop {
            match self.flush() {
                Some(rx) => {
                    let _ = rx.recv_timeout(Duration::from_secs(30));
                }
                None => break,
            }
            if self.dirty.is_empty() {
                break;
            }
        }
        let outcomes = self.executor.stop();
        if !outcomes.is_empty() {
            for o in outcomes {
                if let Some(rec) = self.records.get_mut(&o.id) {
                    rec.state = if o.ok { FailoverState::Done } else { FailoverState::Failed };
                    rec.attempts = o.attempts;
                    rec.error = o.error;
                    rec.updated_ns = now;
                }
                self.touch_record(o.id);
            }
            if let Some(rx) = self.flush() {
                let _ = rx.recv_timeout(Duration::from_secs(30));
            }
        }
        self.publish();
        if let Some(w) = self.writer.take() {
            w.finish();
        }
        self.lease.release();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// The control thread's loop: changes and commands as they come, periodic tasks when due.
pub fn run(
    mut ctl: Control,
    changes: &Receiver<Vec<Change>>,
    commands: &Receiver<Envelope>,
    services: &Receiver<Vec<crate::proto::service::ServiceBeat>>,
) {
    let shared = ctl.shared.clone();
    let r = Ordering::Relaxed;
    loop {
        let now = ctl.clock.now_ns();
        let wait = ctl.next_due().map_or(TICK, |due| Duration::from_nanos(due.saturating_sub(now)).min(TICK));
        let mut stop = false;
        crossbeam::select! {
            recv(changes) -> msg => match msg {
                Ok(first) => {
                    // Bounded per round, so a million new senders at once do not hold up the
                    // health checks (their gap would read as a stall).
                    let start = Instant::now();
                    ctl.apply_changes(std::iter::once(first).chain(changes.try_iter().take(CHANGE_BATCHES_PER_ROUND)));
                    record_tick(&shared, start);
                }
                Err(_) => stop = true,
            },
            recv(commands) -> cmd => if let Ok(cmd) = cmd { ctl.command(cmd) },
            recv(services) -> batch => if let Ok(batch) = batch {
                let start = Instant::now();
                ctl.apply_services(batch);
                for more in services.try_iter() {
                    ctl.apply_services(more);
                }
                record_tick(&shared, start);
            },
            default(wait) => {},
        }
        if stop {
            break;
        }
        let start = Instant::now();
        shared.last_tick_ns.store(ctl.clock.now_ns(), r);
        ctl.run_due();
        ctl.publish();
        record_tick(&shared, start);
    }
    // Workers are gone: apply what they sent last, answer waiting commands, flush.
    ctl.apply_changes(changes.try_iter());
    for batch in services.try_iter() {
        ctl.apply_services(batch);
    }
    while let Ok(cmd) = commands.try_recv() {
        ctl.command(cmd);
    }
    ctl.finish();
}

fn record_tick(shared: &Shared, start: Instant) {
    let spent = start.elapsed().as_nanos() as u64;
    shared.tick_ns_last.store(spent, Ordering::Relaxed);
    shared.tick_ns_max.fetch_max(spent, Ordering::Relaxed);
}
