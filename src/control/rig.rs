//! `ControlRig`: the whole control plane on a manual clock, with no thread, socket or store,
//! as `quinn-proto/src/tests/util.rs`'s `Pair` does for a connection. Heartbeats go through a
//! real worker [`Pipeline`] (called inline), its change records into [`Control`], failover
//! actions into a [`ManualRunner`], and flushes into a [`MemoryDurable`] a second rig can
//! restore from.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::failover::{FailoverRecord, ManualRunner, Outcome};
use super::persist::MemoryDurable;
use super::{Command, CommandResult, Control, ControlConfig, Parts, Published, Snapshot};
use crate::engine::{ManualClock, Pipeline, PipelineShared, ServiceLane, Settings, Shards, WorkerCounters};
use crate::proto::envelope::{push_tag, TagForm};
use crate::proto::inflate::Backend;
use crate::proto::keyring::{Key, Keyring};
use crate::proto::octavia::Uuid;
use crate::state::AmphoraState;

/// One second, ns.
pub const S: u64 = 1_000_000_000;

const KEY: &str = "rig-key";

/// The control plane and a worker pipeline on one manual clock.
pub struct ControlRig {
    /// The clock every part reads.
    pub clock: Arc<ManualClock>,
    /// The data plane's shared state (counters, shards), without threads.
    pub engine: Arc<crate::engine::Shared>,
    /// What the control plane publishes.
    pub published: Arc<Published>,
    /// The control plane.
    pub control: Control,
    /// Where its flushes went.
    pub store: MemoryDurable,
    /// Its failover runner.
    pub runner: ManualRunner,
    pipeline: Pipeline,
    seq: rustc_hash::FxHashMap<u64, u64>,
    completed: rustc_hash::FxHashSet<u64>,
}

/// The amphora id of fleet member `n`.
pub fn amphora(n: u64) -> Uuid {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8] = 0xa5;
    Uuid::from_bytes(b)
}

/// `data` as a zlib stream of one stored (uncompressed) block: a valid envelope payload that
/// costs nothing to build (a level-9 encoder allocates and clears its tables per packet, which
/// dominates a large rig fleet in debug builds).
fn stored_zlib(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let data = &data[..usize::from(len)];
    let mut out = Vec::with_capacity(data.len() + 11);
    out.extend_from_slice(&[0x78, 0x01, 0x01]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

impl ControlRig {
    /// A rig at `start` ns with `cfg` (its data directory is ignored), restoring `restore_from`.
    pub fn with(cfg: ControlConfig, start: u64, restore_from: Option<&MemoryDurable>) -> ControlRig {
        let clock = Arc::new(ManualClock::new(start));
        let pipeline_shared = PipelineShared {
            keyring: Arc::new(ArcSwap::from_pointee(Keyring::from_strs(&[KEY], 0))),
            settings: Arc::new(ArcSwap::from_pointee(Settings { max_delay_ns: u64::MAX, ..Settings::default() })),
            shards: Arc::new(Shards::new(8)),
            clock: clock.clone(),
            services: Arc::new(ServiceLane::new(None)),
        };
        let engine = Arc::new(crate::engine::Shared::detached(pipeline_shared.clone(), 1, 8));
        // The engine's own worker counters: the control plane reads what the pipeline applied.
        let counters = engine.workers.first().cloned().unwrap_or_else(|| Arc::new(WorkerCounters::default()));
        let pipeline = Pipeline::new(pipeline_shared, Backend::default(), counters, None);
        let store = restore_from.cloned().unwrap_or_default();
        let runner = ManualRunner::default();
        let parts = Parts {
            durable: Some(Box::new(store.clone())),
            lease: Box::new(super::volumes::AlwaysLease),
            runner: Box::new(runner.clone()),
        };
        let published = Arc::new(Published::new(start));
        let cfg = ControlConfig { data_dir: None, seed: 7, ..cfg };
        let control = Control::new(cfg, clock.clone(), engine.clone(), published.clone(), parts).expect("control");
        ControlRig {
            clock,
            engine,
            published,
            control,
            store,
            runner,
            pipeline,
            seq: Default::default(),
            completed: Default::default(),
        }
    }

    /// Continues the heartbeat sequence numbers of `from` (a rig restored from its store: the
    /// amphorae go on counting rather than restarting).
    pub fn carry_seq(&mut self, from: &ControlRig) {
        self.seq.clone_from(&from.seq);
    }

    /// Now, ns.
    pub fn now(&self) -> u64 {
        crate::engine::Clock::now_ns(&*self.clock)
    }

    /// Amphorae `ids` each send one heartbeat now (through the worker pipeline); the control
    /// plane applies the change records.
    pub fn beat(&mut self, ids: impl IntoIterator<Item = u64>) {
        let key = Key::new(KEY.as_bytes());
        let packets: Vec<Vec<u8>> = ids
            .into_iter()
            .map(|n| {
                let seq = self.seq.entry(n).or_insert(0);
                *seq += 1;
                let json = format!(
                    r#"{{"id": "{}", "seq": {}, "listeners": {{}}, "pools": {{}}, "ver": 3}}"#,
                    amphora(n),
                    seq
                );
                let mut out = stored_zlib(json.as_bytes());
                push_tag(&mut out, 0, &key, TagForm::Hex);
                out
            })
            .collect();
        let now = self.now();
        for chunk in packets.chunks(128) {
            self.pipeline.process(chunk.iter().map(Vec::as_slice), now);
            let changes = self.pipeline.take_changes();
            self.control.apply_changes(std::iter::once(changes));
        }
    }

    /// Moves the clock by `ns` and runs one control round (due tasks, publish).
    pub fn advance(&mut self, ns: u64) {
        self.clock.advance(ns);
        self.control.run_due();
        self.control.publish();
    }

    /// Advances in steps of `step` ns for `total` ns; `each` runs before every step (beats).
    pub fn run_for(&mut self, total: u64, step: u64, mut each: impl FnMut(&mut ControlRig)) {
        let end = self.now() + total;
        while self.now() < end {
            each(self);
            self.advance(step.min(end - self.now()));
        }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.snapshot.load_full()
    }

    /// Executes a command as the API would (without waiting for durability).
    pub fn execute(&mut self, command: Command) -> CommandResult {
        let now = self.now();
        let r = self.control.execute(command, now);
        self.control.publish();
        r
    }

    /// Failovers handed to the runner so far.
    pub fn started(&self) -> Vec<FailoverRecord> {
        self.runner.runs().started.clone()
    }

    /// Completes every started failover not yet completed, as `ok` or failed.
    pub fn finish_failovers(&mut self, ok: bool) {
        let mut runs = self.runner.runs();
        let done: Vec<Outcome> = runs
            .started
            .iter()
            .filter(|s| self.completed.insert(s.id))
            .map(|s| Outcome { id: s.id, ok, attempts: 1, error: None, fenced: false })
            .collect();
        runs.finished.extend(done);
    }

    /// An amphora's state in the shards.
    pub fn state(&self, n: u64) -> Option<AmphoraState> {
        self.engine.pipeline.shards.get(&amphora(n))
    }
}
