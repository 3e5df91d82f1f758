//! The executor and the API-side operations over the volume set. See the [module docs](super)
//! for the rules and the decisions.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use super::volume::{Action, Machine, Report, SchedError, Spec, Volume, VolumeState};

/// The executor's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedConfig {
    /// Cobalt's `delay` (`context.timeout`): a placed `scheduling` volume whose node did not act
    /// within it is placed again, and a volume that could not move on (nothing fits, parent not
    /// usable) is retried after it. Default 10 s.
    pub delay_ns: u64,
    /// The most volumes one tick processes; the rest stay queued for the next tick
    /// ([`TickReport::backlog`]). Bounds a tick's latency after a restore or a mass failure.
    /// Default 50 000.
    pub max_work_per_tick: usize,
}

impl Default for SchedConfig {
    fn default() -> SchedConfig {
        SchedConfig { delay_ns: 10_000_000_000, max_work_per_tick: 50_000 }
    }
}

/// What one [`Scheduler::tick`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// The lease was held: the executor ran.
    pub leading: bool,
    /// Every `scheduling` and `pending` volume was queued (leadership gained, or a restore).
    pub rescanned: bool,
    /// Volumes taken from the work queue.
    pub processed: usize,
    /// Volumes given a node (first placement or re-placement).
    pub placed: usize,
    /// Placements that found no machine (the volume keeps or gets a `waiting_reason`).
    pub unplaceable: usize,
    /// `pending` volumes moved on by the engine.
    pub advanced: usize,
    /// Volumes taken off machines seen dying this tick.
    pub healed: usize,
    /// Machines seen dying (or disappearing) this tick.
    pub machines_died: usize,
    /// Volumes still queued after this tick (see [`SchedConfig::max_work_per_tick`]).
    pub backlog: usize,
}

/// Volumes changed since the last [`Scheduler::take_dirty`], for the caller's write-behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Write these records again (read them with [`Scheduler::get`]), in id order.
    pub changed: Vec<u64>,
    /// Delete these records, in id order.
    pub removed: Vec<u64>,
}

impl Dirty {
    /// True when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The machines seen at the last tick, with the placement order.
#[derive(Debug)]
struct View {
    /// The slice as given, to recognise an unchanged tick with one comparison.
    input: Vec<Machine>,
    /// Deduplicated by name (the last one listed wins), sorted by name.
    machines: Vec<Machine>,
    /// `input[i]` is `machines[pos[i]]` (when `unique`).
    pos: Vec<usize>,
    /// No name is listed twice in `input`.
    unique: bool,
    by_name: FxHashMap<String, usize>,
    /// Effective free space of each machine: `available − promised`.
    free: Vec<u64>,
    /// Alive machines by effective free space, largest first, then by name.
    order: BTreeSet<(Reverse<u64>, usize)>,
}

impl View {
    fn build(input: &[Machine], promised: &FxHashMap<String, u64>) -> View {
        let mut by_name_sorted: BTreeMap<&str, &Machine> = BTreeMap::new();
        for m in input {
            by_name_sorted.insert(&m.name, m);
        }
        let machines: Vec<Machine> = by_name_sorted.into_values().cloned().collect();
        let mut by_name = FxHashMap::default();
        let mut free = Vec::with_capacity(machines.len());
        let mut order = BTreeSet::new();
        for (i, m) in machines.iter().enumerate() {
            by_name.insert(m.name.clone(), i);
            let f = m.available.saturating_sub(promised.get(&m.name).copied().unwrap_or(0));
            free.push(f);
            if m.alive {
                order.insert((Reverse(f), i));
            }
        }
        let pos: Vec<usize> = input.iter().filter_map(|m| by_name.get(&m.name).copied()).collect();
        let unique = machines.len() == input.len();
        View { input: input.to_vec(), machines, pos, unique, by_name, free, order }
    }

    /// The positions in `input` that differ from the previous list, when it lists the same
    /// names in the same order; `None` when the view must be rebuilt.
    fn changes(&self, input: &[Machine]) -> Option<Vec<usize>> {
        if !self.unique || input.len() != self.input.len() {
            return None;
        }
        let mut changed = Vec::new();
        for (i, (old, new)) in self.input.iter().zip(input).enumerate() {
            if old != new {
                if old.name != new.name {
                    return None;
                }
                changed.push(i);
            }
        }
        Some(changed)
    }

    /// Machine `j` is now `m`, with `promised` bytes promised on it.
    fn replace(&mut self, j: usize, m: &Machine, promised: u64) {
        if self.machines[j].alive {
            self.order.remove(&(Reverse(self.free[j]), j));
        }
        let f = m.available.saturating_sub(promised);
        self.free[j] = f;
        if m.alive {
            self.order.insert((Reverse(f), j));
        }
        self.machines[j].clone_from(m);
    }

    fn get(&self, name: &str) -> Option<&Machine> {
        self.by_name.get(name).map(|&i| &self.machines[i])
    }

    fn alive(&self, name: &str) -> bool {
        self.get(name).is_some_and(|m| m.alive)
    }

    /// The promise on `name` is now `promised`.
    fn refresh(&mut self, name: &str, promised: u64) {
        let Some(&i) = self.by_name.get(name) else { return };
        let m = &self.machines[i];
        let f = m.available.saturating_sub(promised);
        if m.alive && f != self.free[i] {
            self.order.remove(&(Reverse(self.free[i]), i));
            self.order.insert((Reverse(f), i));
        }
        self.free[i] = f;
    }
}

/// Space a volume has been promised on its node and the node has not confirmed yet: the
/// requested size while `scheduling` (placed) or `cloning`, the growth while `resizing`.
fn promise(v: &Volume) -> u64 {
    match v.state {
        VolumeState::Scheduling | VolumeState::Cloning if v.node.is_some() => v.requested.reserved_size,
        VolumeState::Resizing => {
            v.requested.reserved_size.saturating_sub(v.actual.as_ref().map_or(0, |a| a.reserved_size))
        }
        _ => 0,
    }
}

/// What the indexes need of a volume, so a record can be changed in place.
#[derive(Debug)]
struct Keys {
    id: u64,
    node: Option<String>,
    promise: u64,
    parent: Option<u64>,
    state: VolumeState,
    updated_ns: u64,
}

impl Keys {
    fn of(v: &Volume) -> Keys {
        Keys {
            id: v.id,
            node: v.node.clone(),
            promise: promise(v),
            parent: v.parent_id,
            state: v.state,
            updated_ns: v.updated_ns,
        }
    }
}

/// The Cobalt-style scheduler: owns the volumes, answers the API, and runs the executor on
/// [`tick`](Scheduler::tick). Sans-IO: times are passed in, machines are given each tick, and
/// the caller persists what [`take_dirty`](Scheduler::take_dirty) names.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    volumes: BTreeMap<u64, Volume>,
    next_id: u64,
    // Indexes derived from `volumes`, maintained by `index`/`unindex` on every change.
    promised: FxHashMap<String, u64>,
    by_node: FxHashMap<String, BTreeSet<u64>>,
    children: FxHashMap<u64, BTreeSet<u64>>,
    waiting: BTreeSet<u64>,
    // Executor state.
    leading: bool,
    rescan: bool,
    view: Option<View>,
    queue: BTreeSet<u64>,
    deadlines: BTreeSet<(u64, u64)>,
    deadline_of: FxHashMap<u64, u64>,
    // Write-behind.
    changed: BTreeSet<u64>,
    removed: BTreeSet<u64>,
}

impl Scheduler {
    /// An empty scheduler, not leading.
    pub fn new(cfg: SchedConfig) -> Scheduler {
        Scheduler {
            cfg,
            volumes: BTreeMap::new(),
            next_id: 1,
            promised: FxHashMap::default(),
            by_node: FxHashMap::default(),
            children: FxHashMap::default(),
            waiting: BTreeSet::new(),
            leading: false,
            rescan: false,
            view: None,
            queue: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            deadline_of: FxHashMap::default(),
            changed: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> SchedConfig {
        self.cfg
    }

    // ---- reads ----

    /// One volume.
    pub fn get(&self, id: u64) -> Option<&Volume> {
        self.volumes.get(&id)
    }

    /// The volumes in id order, only those in `state` when given.
    pub fn list(&self, state: Option<VolumeState>) -> impl Iterator<Item = &Volume> + '_ {
        self.volumes.values().filter(move |v| state.is_none_or(|s| v.state == s))
    }

    /// Number of volumes.
    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    /// True when there is no volume.
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }

    /// The id the next `create` will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Makes the next id at least `at_least` (a persisted [`next_id`](Scheduler::next_id)).
    pub fn ensure_next_id(&mut self, at_least: u64) {
        self.next_id = self.next_id.max(at_least);
    }

    /// True between a tick with the lease held and the next tick without it.
    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// Bytes promised on `node` and not yet confirmed by it (see the module docs).
    pub fn promised(&self, node: &str) -> u64 {
        self.promised.get(node).copied().unwrap_or(0)
    }

    /// `available − promised` of `node` as of the last tick; `None` when the executor has no
    /// view of it (not leading, or unknown machine).
    pub fn effective_free(&self, node: &str) -> Option<u64> {
        let view = self.view.as_ref()?;
        view.by_name.get(node).map(|&i| view.free[i])
    }

    /// Ids of the volumes whose `node` is `node`, in id order.
    pub fn volumes_on(&self, node: &str) -> impl Iterator<Item = u64> + '_ {
        self.by_node.get(node).into_iter().flatten().copied()
    }

    // ---- API-side operations ----

    /// Creates a volume: `scheduling` and unplaced, or, with `clone_of`, a `pending` clone of
    /// that parent (which must exist and not be `scheduling`, `deleting` or `error`).
    pub fn create(
        &mut self,
        name: &str,
        requested: Spec,
        clone_of: Option<u64>,
        now_ns: u64,
    ) -> Result<Volume, SchedError> {
        let requested = requested.normalised()?;
        if let Some(parent) = clone_of {
            let p = self.volumes.get(&parent).ok_or(SchedError::ParentNotFound { parent })?;
            if matches!(p.state, VolumeState::Scheduling | VolumeState::Deleting | VolumeState::Error) {
                return Err(SchedError::ParentUnusable { parent, state: p.state });
            }
        }
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(SchedError::IdsExhausted)?;
        let v = Volume {
            id,
            name: name.to_owned(),
            requested,
            actual: None,
            state: if clone_of.is_some() { VolumeState::Pending } else { VolumeState::Scheduling },
            node: None,
            parent_id: clone_of,
            error: String::new(),
            error_count: 0,
            created_ns: now_ns,
            updated_ns: now_ns,
            waiting_reason: None,
        };
        self.index(&Keys::of(&v));
        self.volumes.insert(id, v.clone());
        self.changed.insert(id);
        self.queue.insert(id);
        Ok(v)
    }

    /// Changes what a `ready` volume asks for; it becomes `pending` and the engine decides
    /// (table 4.2 and the module docs). The same spec (after normalisation) is
    /// [`SchedError::NotModified`].
    pub fn patch(&mut self, id: u64, requested: Spec, now_ns: u64) -> Result<Volume, SchedError> {
        let requested = requested.normalised()?;
        let v = self.volumes.get(&id).ok_or(SchedError::NotFound { id })?;
        if v.state != VolumeState::Ready {
            return Err(SchedError::IllegalTransition { id, from: v.state, action: Action::Patch });
        }
        if v.requested == requested {
            return Err(SchedError::NotModified { id });
        }
        self.queue.insert(id);
        self.modified(id, now_ns, |v| {
            v.requested = requested;
            v.state = VolumeState::Pending;
            v.waiting_reason = None;
        })
    }

    /// Deletes a volume: allowed from `ready`, `error`, `scheduling`, and `pending` while not on
    /// a node, and refused while clones of it are not made yet. A volume on a node becomes
    /// `deleting` (its agent removes it and reports [`Report::Removed`]); one on no node has
    /// nothing to remove anywhere and its record is removed at once (the returned copy says
    /// `deleting`).
    pub fn delete(&mut self, id: u64, now_ns: u64) -> Result<Volume, SchedError> {
        let v = self.volumes.get(&id).ok_or(SchedError::NotFound { id })?;
        let allowed = match v.state {
            VolumeState::Ready | VolumeState::Error | VolumeState::Scheduling => true,
            VolumeState::Pending => v.node.is_none(),
            VolumeState::Cloning | VolumeState::Resizing | VolumeState::Deleting => false,
        };
        if !allowed {
            return Err(SchedError::IllegalTransition { id, from: v.state, action: Action::Delete });
        }
        if let Some(c) = self.children.get(&id).filter(|c| !c.is_empty()) {
            return Err(SchedError::ClonesPending { id, clones: c.iter().copied().collect() });
        }
        if v.node.is_none() {
            let mut v = self.remove(id).ok_or(SchedError::NotFound { id })?;
            v.state = VolumeState::Deleting;
            v.updated_ns = now_ns;
            return Ok(v);
        }
        self.modified(id, now_ns, |v| {
            v.state = VolumeState::Deleting;
            v.waiting_reason = None;
        })
    }

    /// A node agent's report about a volume placed on `machine` (the "node = me" rows of
    /// table 4.2; see [`Report`]). Refused with [`SchedError::NotOwner`] when the volume is not
    /// on `machine`. Returns the volume after the change (for [`Report::Removed`], the removed
    /// record).
    pub fn report(&mut self, id: u64, machine: &str, report: Report, now_ns: u64) -> Result<Volume, SchedError> {
        use VolumeState as S;
        let v = self.volumes.get(&id).ok_or(SchedError::NotFound { id })?;
        if v.node.as_deref() != Some(machine) {
            return Err(SchedError::NotOwner { id, node: v.node.clone(), machine: machine.to_owned() });
        }
        let state = v.state;
        let node_free = self.view.as_ref().and_then(|view| view.get(machine)).map(|m| m.available);
        let change: Box<dyn FnOnce(&mut Volume)> = match (state, report) {
            (S::Scheduling, Report::Ready) => Box::new(|v: &mut Volume| {
                v.state = S::Ready;
                v.actual = Some(v.requested.clone());
                v.error_count = 0;
                v.error.clear();
                v.waiting_reason = None;
            }),
            (S::Cloning, Report::Ready) => Box::new(move |v: &mut Volume| {
                let size = node_free.map_or(v.requested.reserved_size, |f| f.min(v.requested.reserved_size));
                v.state = S::Ready;
                v.parent_id = None;
                v.actual = Some(Spec { reserved_size: size, constraints: v.requested.constraints.clone() });
                v.error_count = 0;
                v.error.clear();
                v.waiting_reason = None;
            }),
            (S::Resizing, Report::Resized) => {
                self.queue.insert(id);
                Box::new(|v: &mut Volume| {
                    v.state = S::Pending;
                    v.actual = Some(v.requested.clone());
                    v.error_count = 0;
                    v.error.clear();
                })
            }
            (S::Deleting, Report::Removed) => return self.remove(id).ok_or(SchedError::NotFound { id }),
            (S::Scheduling | S::Cloning | S::Resizing | S::Deleting, Report::Failed { message, give_up }) => {
                Box::new(move |v: &mut Volume| {
                    v.error_count = v.error_count.saturating_add(1);
                    v.error = message;
                    if give_up {
                        v.state = S::Error;
                    }
                })
            }
            (from, report) => return Err(SchedError::IllegalTransition { id, from, action: report.action() }),
        };
        self.modified(id, now_ns, change)
    }

    /// Replaces every volume with `volumes` (read back from the store at start-up). Ids continue
    /// after the highest restored one (or after [`next_id`](Scheduler::next_id) if higher); the
    /// next leading tick rescans everything. Nothing is marked dirty. Refuses id 0 and
    /// duplicate ids, changing nothing.
    pub fn restore(&mut self, volumes: impl IntoIterator<Item = Volume>) -> Result<(), SchedError> {
        let mut map = BTreeMap::new();
        for v in volumes {
            if v.id == 0 {
                return Err(SchedError::InvalidRestore { id: 0, reason: "id 0 is never allocated" });
            }
            let id = v.id;
            if map.insert(id, v).is_some() {
                return Err(SchedError::InvalidRestore { id, reason: "duplicate id" });
            }
        }
        let max = map.keys().next_back().copied().unwrap_or(0);
        let next_id = max.checked_add(1).ok_or(SchedError::IdsExhausted)?.max(self.next_id);
        let cfg = self.cfg;
        let leading = self.leading;
        *self = Scheduler::new(cfg);
        self.next_id = next_id;
        self.leading = leading;
        self.rescan = true;
        for v in map.values() {
            self.index(&Keys::of(v));
        }
        self.volumes = map;
        Ok(())
    }

    /// Puts one volume as the cluster's leader holds it (a member mirroring the leader's
    /// state from etcd): indexed, not dirty; ids continue after it.
    pub fn mirror_put(&mut self, v: Volume) {
        if v.id == 0 {
            return;
        }
        if let Some(old) = self.volumes.get(&v.id) {
            let k = Keys::of(old);
            self.unindex(&k);
        }
        self.index(&Keys::of(&v));
        self.next_id = self.next_id.max(v.id.saturating_add(1));
        self.volumes.insert(v.id, v);
        self.rescan = true;
    }

    /// Removes one volume the cluster's leader removed (mirroring, not dirty).
    pub fn mirror_remove(&mut self, id: u64) {
        if let Some(old) = self.volumes.remove(&id) {
            self.unindex(&Keys::of(&old));
        }
    }

    /// Ids changed (to write again) and removed (to delete) since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        Dirty {
            changed: std::mem::take(&mut self.changed).into_iter().collect(),
            removed: std::mem::take(&mut self.removed).into_iter().collect(),
        }
    }

    // ---- executor ----

    /// One executor step. `machines` is the caller's current machine list (from the agents'
    /// heartbeats, with `alive` from their TTL), `lease_held` the leader lease's
    /// [`is_held`](super::Lease::is_held). Without the lease nothing runs (and a leader that
    /// just lost it resets); the first tick with it rescans everything. Otherwise only queued
    /// volumes and due deadlines are processed: an idle tick costs one comparison of
    /// `machines` with the previous list.
    pub fn tick(&mut self, now_ns: u64, machines: &[Machine], lease_held: bool) -> TickReport {
        let mut rep = TickReport::default();
        if !lease_held {
            if self.leading {
                self.reset();
            }
            return rep;
        }
        rep.leading = true;
        if !self.leading {
            self.leading = true;
            self.rescan = true;
        }
        self.observe(machines, now_ns, &mut rep);
        if self.rescan {
            self.rescan = false;
            rep.rescanned = true;
            let todo =
                self.volumes.values().filter(|v| matches!(v.state, VolumeState::Scheduling | VolumeState::Pending));
            self.queue.extend(todo.map(|v| v.id));
        }
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now_ns {
                break;
            }
            self.deadlines.pop_first();
            self.deadline_of.remove(&id);
            self.queue.insert(id);
        }
        while rep.processed < self.cfg.max_work_per_tick {
            let Some(id) = self.queue.pop_first() else { break };
            rep.processed += 1;
            self.process(id, now_ns, &mut rep);
        }
        rep.backlog = self.queue.len();
        rep
    }

    /// Leadership lost: forget the machine view and the queue (Cobalt's `executor.reset()`).
    fn reset(&mut self) {
        self.leading = false;
        self.view = None;
        self.queue.clear();
    }

    /// Takes in this tick's machines: heals the volumes of machines that died and wakes the
    /// waiting volumes when placement may now succeed.
    fn observe(&mut self, machines: &[Machine], now_ns: u64, rep: &mut TickReport) {
        let mut dead = Vec::new();
        let mut wake = false;
        let promised = &self.promised;
        match self.view.as_mut().and_then(|view| view.changes(machines).map(|changed| (view, changed))) {
            // The same machines in the same order: one pass, and only the changed ones touched.
            Some((view, changed)) => {
                for i in changed {
                    let (m, j) = (&machines[i], view.pos[i]);
                    let old = &view.machines[j];
                    if old.alive && !m.alive {
                        dead.push(m.name.clone());
                    }
                    wake |= m.alive && (!old.alive || old.labels != m.labels || m.available > old.available);
                    view.replace(j, m, promised.get(&m.name).copied().unwrap_or(0));
                    view.input[i].clone_from(m);
                }
            }
            None => self.rebuild_view(machines, &mut dead, &mut wake),
        }
        for name in dead {
            rep.machines_died += 1;
            self.heal(&name, now_ns, &mut rep.healed);
        }
        if wake {
            self.queue.extend(self.waiting.iter().copied());
        }
    }

    /// A new machine view (leadership gained, machines added, removed or reordered).
    fn rebuild_view(&mut self, machines: &[Machine], dead: &mut Vec<String>, wake: &mut bool) {
        let new = View::build(machines, &self.promised);
        match &self.view {
            // Leadership gained (or restored): machines not listed yet are not presumed dead,
            // they may not have reported to this leader yet; those listed dead are.
            None => dead.extend(new.machines.iter().filter(|m| !m.alive).map(|m| m.name.clone())),
            Some(old) => {
                for m in old.machines.iter().filter(|m| m.alive) {
                    if !new.alive(&m.name) {
                        dead.push(m.name.clone());
                    }
                }
                *wake = new.machines.iter().filter(|m| m.alive).any(|m| match old.get(&m.name) {
                    None => true,
                    Some(o) => !o.alive || o.labels != m.labels || m.available > o.available,
                });
            }
        }
        self.view = Some(new);
    }

    /// Takes every volume off dead machine `name` (see the module docs for which ones).
    fn heal(&mut self, name: &str, now_ns: u64, healed: &mut usize) {
        let ids: Vec<u64> = self.volumes_on(name).collect();
        for id in ids {
            let Some(v) = self.volumes.get(&id) else { continue };
            let state = v.state;
            let to = match state {
                VolumeState::Scheduling | VolumeState::Ready | VolumeState::Resizing => VolumeState::Scheduling,
                VolumeState::Pending if v.parent_id.is_none() => VolumeState::Scheduling,
                VolumeState::Cloning => VolumeState::Pending,
                VolumeState::Pending | VolumeState::Deleting | VolumeState::Error => continue,
            };
            *healed += 1;
            self.queue.insert(id);
            self.modify(id, now_ns, |v| {
                v.state = to;
                v.node = None;
                if to == VolumeState::Scheduling {
                    v.actual = None;
                }
                v.waiting_reason = None;
            });
        }
    }

    fn process(&mut self, id: u64, now_ns: u64, rep: &mut TickReport) {
        let Some(v) = self.volumes.get(&id) else { return };
        match v.state {
            VolumeState::Scheduling => match &v.node {
                None => self.place(id, now_ns, rep),
                Some(_) if now_ns.saturating_sub(v.updated_ns) > self.cfg.delay_ns => self.place(id, now_ns, rep),
                // The node has `delay` to act: no write here (Cobalt's "snowball" fix).
                Some(_) => {
                    let at = v.updated_ns.saturating_add(self.cfg.delay_ns).saturating_add(1);
                    self.set_deadline(id, at);
                }
            },
            VolumeState::Pending => self.advance(id, now_ns, rep),
            _ => {}
        }
    }

    /// Places (or re-places, after `delay`) a `scheduling` volume.
    fn place(&mut self, id: u64, now_ns: u64, rep: &mut TickReport) {
        let Some(v) = self.volumes.get(&id) else { return };
        match self.find_machine(&v.requested, v.node.as_deref()) {
            Ok(i) => {
                let Some(name) = self.view.as_ref().map(|view| view.machines[i].name.clone()) else { return };
                rep.placed += 1;
                self.modify(id, now_ns, |v| {
                    v.node = Some(name);
                    v.waiting_reason = None;
                });
            }
            Err(reason) => {
                rep.unplaceable += 1;
                if v.node.is_none() {
                    self.wait(id, now_ns, reason);
                } else {
                    // Placed, its node no longer fits and no other does: it keeps its node.
                    self.set_deadline(id, now_ns.saturating_add(self.cfg.delay_ns));
                }
            }
        }
    }

    /// The engine's step for a `pending` volume (table 4.2 and the module docs).
    fn advance(&mut self, id: u64, now_ns: u64, rep: &mut TickReport) {
        use VolumeState as S;
        let Some(v) = self.volumes.get(&id) else { return };
        let Some(view) = self.view.as_ref() else { return };
        if let Some(parent) = v.parent_id {
            let source = self.volumes.get(&parent).map(|p| match (&p.node, p.state) {
                (Some(n), S::Ready | S::Resizing) if view.alive(n) => Ok(n.clone()),
                (Some(n), S::Ready | S::Resizing) => Err(format!("parent {parent}'s node {n} is not alive")),
                (_, state) => Err(format!("parent {parent} is {state}")),
            });
            rep.advanced += 1;
            match source {
                // The parent is gone: nothing to clone from (Cobalt: → deleting).
                None if v.node.is_none() => {
                    self.remove(id);
                }
                None => {
                    self.modify(id, now_ns, |v| v.state = S::Deleting);
                }
                Some(Ok(node)) => {
                    self.modify(id, now_ns, |v| {
                        v.state = S::Cloning;
                        v.node = Some(node);
                        v.waiting_reason = None;
                    });
                }
                Some(Err(reason)) => {
                    rep.advanced -= 1;
                    self.wait(id, now_ns, reason);
                }
            }
            return;
        }
        let node = match v.node.as_deref().map(|n| (n, view.get(n))) {
            None => None,
            Some((_, Some(m))) => Some(m).filter(|m| m.alive),
            // Not listed yet (a new leader): not presumed dead.
            Some((n, None)) => {
                let reason = format!("node {n} has not reported yet");
                return self.wait(id, now_ns, reason);
            }
        };
        rep.advanced += 1;
        let (Some(m), Some(actual)) = (node, v.actual.as_ref()) else {
            // On a dead node, or never made: place it afresh.
            self.queue.insert(id);
            self.modify(id, now_ns, |v| {
                v.waiting_reason = None;
                v.state = S::Scheduling;
                v.node = None;
                v.actual = None;
            });
            return;
        };
        let next = if v.requested == *actual {
            Ok(S::Ready)
        } else if !v.requested.fits_labels(&m.labels) {
            let missing: Vec<&str> =
                v.requested.constraints.iter().filter(|c| !m.labels.contains(*c)).map(String::as_str).collect();
            Err(format!(
                "node {} lacks labels [{}] now required; moving a volume is not supported",
                m.name,
                missing.join(", ")
            ))
        } else if v.requested.reserved_size != actual.reserved_size {
            Ok(S::Resizing)
        } else {
            // Only the constraints changed and the node carries them all: accepted in place.
            Ok(S::Ready)
        };
        self.modify(id, now_ns, |v| {
            v.waiting_reason = None;
            match next {
                Ok(S::Ready) => {
                    v.state = S::Ready;
                    v.actual = Some(v.requested.clone());
                }
                Ok(state) => v.state = state,
                Err(message) => {
                    v.state = S::Error;
                    v.error = message;
                }
            }
        });
    }

    /// Volume `id` cannot move on yet: shows `reason` (written only when it changed) and retries
    /// after `delay`.
    fn wait(&mut self, id: u64, now_ns: u64, reason: String) {
        if self.volumes.get(&id).is_some_and(|v| v.waiting_reason.as_deref() != Some(reason.as_str())) {
            self.modify(id, now_ns, |v| v.waiting_reason = Some(reason));
        }
        self.set_deadline(id, now_ns.saturating_add(self.cfg.delay_ns));
    }

    /// The alive machine carrying every constraint with the largest effective free space
    /// ≥ the requested size (ties: the lowest name), counting `own` (the volume's current node)
    /// without the volume's own promise. Otherwise why none fits.
    fn find_machine(&self, spec: &Spec, own: Option<&str>) -> Result<usize, String> {
        let Some(view) = self.view.as_ref() else { return Err("no machine view yet".into()) };
        let mut best = None;
        for &(Reverse(free), i) in &view.order {
            if free < spec.reserved_size {
                break;
            }
            if spec.fits_labels(&view.machines[i].labels) {
                best = Some((free, i));
                break;
            }
        }
        if let Some(&o) = own.and_then(|n| view.by_name.get(n)) {
            let m = &view.machines[o];
            let others = self.promised(&m.name).saturating_sub(spec.reserved_size);
            let free = m.available.saturating_sub(others);
            let better = best.is_none_or(|(bf, bi)| free > bf || (free == bf && o < bi));
            if m.alive && free >= spec.reserved_size && spec.fits_labels(&m.labels) && better {
                best = Some((free, o));
            }
        }
        best.map(|(_, i)| i).ok_or_else(|| self.why_not(view, spec))
    }

    fn why_not(&self, view: &View, spec: &Spec) -> String {
        let mut any_alive = false;
        let mut largest = None;
        for &(Reverse(free), i) in &view.order {
            any_alive = true;
            if spec.fits_labels(&view.machines[i].labels) {
                largest = Some(free);
                break;
            }
        }
        match largest {
            _ if !any_alive => "no alive machine".into(),
            None => format!("no alive machine carries labels [{}]", spec.constraints.join(", ")),
            Some(free) => format!("largest free space {free} < requested {}", spec.reserved_size),
        }
    }

    // ---- record changes and indexes ----

    /// Changes volume `id` through `f`: the one place a record is written (indexes updated,
    /// `updated_ns` set, marked dirty, clones woken when the state changed). `id` must exist.
    fn modify(&mut self, id: u64, now_ns: u64, f: impl FnOnce(&mut Volume)) -> bool {
        let Some(v) = self.volumes.get(&id) else { return false };
        let before = Keys::of(v);
        self.unindex(&before);
        let Some(v) = self.volumes.get_mut(&id) else { return false };
        f(v);
        v.updated_ns = v.updated_ns.max(now_ns);
        let after = Keys::of(v);
        self.index(&after);
        if after.state != before.state {
            self.wake_children(id);
        }
        self.changed.insert(id);
        true
    }

    /// [`modify`](Scheduler::modify) for the API: the volume after the change.
    fn modified(&mut self, id: u64, now_ns: u64, f: impl FnOnce(&mut Volume)) -> Result<Volume, SchedError> {
        if !self.modify(id, now_ns, f) {
            return Err(SchedError::NotFound { id });
        }
        self.volumes.get(&id).cloned().ok_or(SchedError::NotFound { id })
    }

    /// Removes volume `id`'s record.
    fn remove(&mut self, id: u64) -> Option<Volume> {
        let v = self.volumes.remove(&id)?;
        self.unindex(&Keys::of(&v));
        self.changed.remove(&id);
        self.removed.insert(id);
        self.queue.remove(&id);
        self.wake_children(id);
        Some(v)
    }

    fn wake_children(&mut self, id: u64) {
        if let Some(c) = self.children.get(&id) {
            self.queue.extend(c.iter().copied());
        }
    }

    fn index(&mut self, k: &Keys) {
        if let Some(n) = &k.node {
            match self.by_node.get_mut(n) {
                Some(ids) => {
                    ids.insert(k.id);
                }
                None => {
                    self.by_node.insert(n.clone(), BTreeSet::from([k.id]));
                }
            }
            if k.promise != 0 {
                let total = self.promised(n).saturating_add(k.promise);
                self.set_promised(n, total);
            }
            if k.state == VolumeState::Scheduling {
                self.set_deadline(k.id, k.updated_ns.saturating_add(self.cfg.delay_ns).saturating_add(1));
            }
        } else if k.state == VolumeState::Scheduling {
            self.waiting.insert(k.id);
        }
        if let Some(p) = k.parent {
            self.children.entry(p).or_default().insert(k.id);
        }
    }

    fn unindex(&mut self, k: &Keys) {
        if let Some(n) = &k.node {
            if let Some(ids) = self.by_node.get_mut(n) {
                ids.remove(&k.id);
                if ids.is_empty() {
                    self.by_node.remove(n);
                }
            }
            if k.promise != 0 {
                let total = self.promised(n).saturating_sub(k.promise);
                self.set_promised(n, total);
            }
        }
        self.waiting.remove(&k.id);
        if let Some(p) = k.parent {
            if let Some(c) = self.children.get_mut(&p) {
                c.remove(&k.id);
                if c.is_empty() {
                    self.children.remove(&p);
                }
            }
        }
        self.clear_deadline(k.id);
    }

    fn set_promised(&mut self, node: &str, total: u64) {
        if total == 0 {
            self.promised.remove(node);
        } else if let Some(p) = self.promised.get_mut(node) {
            *p = total;
        } else {
            self.promised.insert(node.to_owned(), total);
        }
        if let Some(view) = self.view.as_mut() {
            view.refresh(node, total);
        }
    }

    fn set_deadline(&mut self, id: u64, at: u64) {
        if let Some(old) = self.deadline_of.insert(id, at) {
            if old == at {
                return;
            }
            self.deadlines.remove(&(old, id));
        }
        self.deadlines.insert((at, id));
    }

    fn clear_deadline(&mut self, id: u64) {
        if let Some(old) = self.deadline_of.remove(&id) {
            self.deadlines.remove(&(old, id));
        }
    }
}
