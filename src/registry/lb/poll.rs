//! The poll: one service per target of a [`Pool`] from a [`World`], with the distance loop
//! outside and the slot-fallback loop inside, weighted draws then a coprime scan within a
//! slot, `avoid` and `known` services honoured, and the quality of the selection (`flawed`)
//! reported. [`next_instances`] is the `GET /lb/choose` form on a temporary pool.

use std::fmt;

use rand::Rng;
use serde::Serialize;

use super::location::{find_min_dist, slot_name, slot_name_into, too_close, LEVELS};
use super::pool::{Pool, PoolError, PoolOptions, Target};
use super::world::{Slot, World};

/// A service named in `avoid` or `known`: by id (or address), or by raw location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceRef<'a> {
    /// A service id or `ip:port`; unknown ids are dropped silently.
    Id(&'a str),
    /// A raw location.
    Location(u64),
}

impl<'a> From<&'a str> for ServiceRef<'a> {
    fn from(s: &'a str) -> Self {
        ServiceRef::Id(s)
    }
}

impl From<u64> for ServiceRef<'_> {
    fn from(l: u64) -> Self {
        ServiceRef::Location(l)
    }
}

/// One picked service and the quality of the pick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selected {
    /// The logical id.
    pub id: String,
    /// `ip:port`.
    pub addr: String,
    /// Its location.
    pub location: u64,
    /// The distance the pool asked for (its `max_dist`, clamped to the world's).
    pub expected_dist: u32,
    /// Its distance to the other picks and the known services.
    pub final_dist: u32,
    /// The pool's `warn_dist`.
    pub warn_dist: u32,
    /// The target's primary slot.
    pub expected_slot: String,
    /// The slot it came from.
    pub final_slot: String,
    /// Picked from a fallback slot, at or below `warn_dist`, or beyond a fair constraint.
    pub flawed: bool,
}

/// The result of a poll: one item per target not covered by a known service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// The picks, in target order. Known services are never returned.
    pub items: Vec<Selected>,
    /// Any pick flawed, or the distance reached at or below `warn_dist`
    /// (`x-oio-lb-flawed: 1`).
    pub flawed: bool,
}

/// Why a poll failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LbError {
    /// No pool (or storage policy) of that name. HTTP 404.
    UnknownPool(String),
    /// The temporary pool of [`next_instances`] is invalid (size 0 or above 256, empty slot).
    /// HTTP 400.
    BadPool(PoolError),
    /// As many known services as targets, or more: nothing left to poll (HTTP 400). Often a
    /// set with duplicated positions; pass each known service once.
    TooManyKnown {
        /// Known services (after dropping unknown ids).
        known: usize,
        /// Targets of the pool.
        max: u32,
    },
    /// A target could not be filled at any distance down to `min_dist` in any of its slots:
    /// too few services up, too close together, avoided, or a `min_dist` the topology cannot
    /// meet. Nothing is returned. HTTP 503.
    NotSatisfiable {
        /// The target's primary slot.
        slot: String,
        /// Targets filled before this one.
        polled: usize,
        /// Targets of the pool.
        targets: u32,
        /// Known services.
        known: usize,
        /// Pollable services in the primary slot.
        in_slot: usize,
    },
}

impl fmt::Display for LbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LbError::UnknownPool(p) => write!(f, "unknown pool or policy {p:?}"),
            LbError::BadPool(e) => write!(f, "bad pool: {e}"),
            LbError::TooManyKnown { known, max } => {
                write!(f, "too many locations already known ({known}), maximum {max} locations for this pool")
            }
            LbError::NotSatisfiable { slot, polled, targets, known, in_slot } => write!(
                f,
                "found only {} services matching the criteria: no service polled from [{slot}], \
                 {polled}/{targets} services polled, {known} known services, {in_slot} services in slot",
                polled + known
            ),
        }
    }
}

impl std::error::Error for LbError {}

impl LbError {
    /// A short label for counters, one per variant.
    pub fn label(&self) -> &'static str {
        match self {
            LbError::UnknownPool(_) => "unknown_pool",
            LbError::BadPool(_) => "bad_pool",
            LbError::TooManyKnown { .. } => "too_many_known",
            LbError::NotSatisfiable { .. } => "not_satisfiable",
        }
    }
}

/// The state of one poll shared by its slot polls.
struct Ctx<'a> {
    opts: &'a PoolOptions,
    targets: u32,
    avoid: &'a [u64],
    /// Locations of the known services and of the picks so far.
    polled: &'a [u64],
}

/// Whether item `k` (index in `slot.items`) may be picked at `dist`; `Some(fair_exceeded)`.
fn accept(ctx: &Ctx<'_>, slot: &Slot, k: usize, dist: u32) -> Option<bool> {
    let loc = slot.locs[k];
    if ctx.avoid.contains(&loc) || ctx.polled.iter().any(|&x| too_close(loc, x, dist)) {
        return None;
    }
    let mut fair_exceeded = false;
    for level in 1..LEVELS {
        let shift = 16 * level;
        let prefix = loc >> shift;
        let n_leafs = slot.items_by_loc[level as usize - 1].get(&prefix).copied().unwrap_or(1).max(1) as usize;
        let pop = ctx.polled.iter().filter(|&&x| x >> shift == prefix).count();
        // Constraint arrays are [DC, rack, host, volume]: level 3 → index 0.
        let ci = (LEVELS - 1 - level) as usize;
        let strict = ctx.opts.strict_location_constraint.map_or(0, |c| c[ci]);
        let max = if strict > 0 {
            strict as usize
        } else {
            let groups = (slot.items.len() / n_leafs).max(1);
            1 + (ctx.targets as usize - 1) / groups
        };
        if pop >= max {
            return None;
        }
        if let Some(c) = ctx.opts.fair_location_constraint {
            if c[ci] > 0 && pop >= c[ci] as usize {
                fair_exceeded = true;
            }
        }
    }
    Some(fair_exceeded)
}

/// One pick from `slot` at `dist`: weighted draws, then a coprime scan.
fn slot_poll<R: Rng + ?Sized>(
    ctx: &Ctx<'_>,
    slot: &Slot,
    mut dist: u32,
    n_same: u32,
    rng: &mut R,
) -> Option<(usize, bool)> {
    let len = slot.items.len();
    let sum = slot.sum();
    if len == 0 || sum == 0 {
        return None;
    }
    if ctx.opts.allow_distance_bypass && dist > 1 && n_same > slot.locs_by_level[dist as usize - 1] {
        dist = (dist - 1).max(ctx.opts.min_dist);
    }
    let mut i = 0;
    for _ in 0..ctx.opts.weighted_random_attempts {
        let r = rng.random_range(0..sum);
        i = slot.acc.partition_point(|&a| a <= r).min(len - 1);
        if let Some(f) = accept(ctx, slot, i, dist) {
            return Some((i, f));
        }
    }
    for _ in 0..len {
        i = (i + slot.jump) % len;
        if let Some(f) = accept(ctx, slot, i, dist) {
            return Some((i, f));
        }
    }
    None
}

/// Picks one service per target of `pool`, away from `avoid` (exact locations) and completing
/// `known` (which occupy targets and constrain distance). See the module documentation.
/// Allocates its [`Selection`]; [`PollScratch::poll`] is the same poll into reused buffers.
pub fn poll<R: Rng + ?Sized>(
    world: &World,
    pool: &Pool,
    avoid: &[ServiceRef<'_>],
    known: &[ServiceRef<'_>],
    rng: &mut R,
) -> Result<Selection, LbError> {
    let mut scratch = PollScratch::default();
    match scratch.poll(world, pool, avoid.iter().copied(), known.iter().copied(), rng) {
        Ok(picked) => Ok(picked.to_selection()),
        Err(r) => Err(r.to_error(&pool.targets)),
    }
}

/// `GET /lb/choose?type&size&slot`: `size` services of `type`, from `<type>-<slot>` first
/// with the whole type as fallback when `slot` is given. Returns all `size` picks.
pub fn next_instances<R: Rng + ?Sized>(
    world: &World,
    type_name: &str,
    size: u32,
    slot: Option<&str>,
    rng: &mut R,
) -> Result<Selection, LbError> {
    let mut slots = Vec::with_capacity(2);
    if let Some(s) = slot.filter(|s| !s.is_empty()) {
        slots.push(slot_name(type_name, s));
    }
    slots.push(type_name.to_owned());
    slots.dedup();
    let pool =
        Pool::new(type_name, vec![Target { count: size, slots }], PoolOptions::default()).map_err(LbError::BadPool)?;
    poll(world, &pool, &[], &[], rng)
}

/// Why a poll into a [`PollScratch`] failed: [`LbError`] without its strings (so that a
/// refusal allocates nothing either); [`Refusal::to_error`] gives the [`LbError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The temporary pool of [`PollScratch::next_instances`] is invalid: a size of 0 or above
    /// [`MAX_TARGETS`](super::MAX_TARGETS), or an empty type name ([`LbError::BadPool`]).
    BadPool,
    /// As many known services as targets, or more ([`LbError::TooManyKnown`]).
    TooManyKnown {
        /// Known services (after dropping unknown ids).
        known: usize,
        /// Targets of the pool.
        max: u32,
    },
    /// A target could not be filled ([`LbError::NotSatisfiable`]).
    NotSatisfiable {
        /// The index of the target's kind in the pool's targets.
        target: usize,
        /// Targets filled before this one.
        polled: usize,
        /// Targets of the pool.
        targets: u32,
        /// Known services.
        known: usize,
        /// Pollable services in the primary slot.
        in_slot: usize,
    },
}

impl Refusal {
    /// The [`LbError`] of a refused poll of `targets` (allocates). A [`Refusal::BadPool`]
    /// becomes an empty-slot error naming no slot: [`next_instances`] reports the real cause.
    pub fn to_error(self, targets: &[Target]) -> LbError {
        match self {
            Refusal::BadPool => LbError::BadPool(PoolError::EmptySlot(String::new())),
            Refusal::TooManyKnown { known, max } => LbError::TooManyKnown { known, max },
            Refusal::NotSatisfiable { target, polled, targets: n, known, in_slot } => LbError::NotSatisfiable {
                slot: targets.get(target).and_then(|t| t.slots.first()).cloned().unwrap_or_default(),
                polled,
                targets: n,
                known,
                in_slot,
            },
        }
    }
}

/// A known service in a [`PollScratch`]: its location and, if named by id, its items
/// (`items` is a range of `known_items`).
#[derive(Clone, Copy, Debug)]
struct KnownAt {
    loc: u64,
    items: (usize, usize),
    used: bool,
}

/// One pick of a poll: indices into the world and the pool's targets.
#[derive(Clone, Copy, Debug)]
struct Pick {
    item: u32,
    slot: u32,
    target: u32,
    final_dist: u32,
    flawed: bool,
    fair: bool,
}

/// The buffers of a poll, kept from one poll to the next: once they have grown,
/// [`PollScratch::poll`] and [`PollScratch::next_instances`] allocate nothing, and their
/// [`Picked`] borrows the world's strings.
#[derive(Clone, Debug, Default)]
pub struct PollScratch {
    known_items: Vec<u32>,
    knowns: Vec<KnownAt>,
    avoid: Vec<u64>,
    /// Unmatched targets, as indices into the pool's targets.
    unmatched: Vec<u32>,
    polled: Vec<u64>,
    picks: Vec<Pick>,
    /// The temporary target of [`PollScratch::next_instances`].
    choose: Vec<Target>,
    /// Slot names taken out of `choose`, kept for their buffers.
    spare: Vec<String>,
}

/// The picks of a successful poll, borrowed from its [`PollScratch`], its world and its targets.
#[derive(Clone, Copy, Debug)]
pub struct Picked<'a> {
    world: &'a World,
    targets: &'a [Target],
    picks: &'a [Pick],
    max_dist: u32,
    warn_dist: u32,
    /// Any pick flawed, or the distance reached at or below `warn_dist`.
    pub flawed: bool,
}

/// One pick of a [`Picked`]: a [`Selected`] whose strings are borrowed. Serialises as the
/// [`Selected`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SelectedRef<'a> {
    /// The logical id.
    pub id: &'a str,
    /// `ip:port`.
    pub addr: &'a str,
    /// Its location.
    pub location: u64,
    /// The distance the pool asked for.
    pub expected_dist: u32,
    /// Its distance to the other picks and the known services.
    pub final_dist: u32,
    /// The pool's `warn_dist`.
    pub warn_dist: u32,
    /// The target's primary slot.
    pub expected_slot: &'a str,
    /// The slot it came from.
    pub final_slot: &'a str,
    /// Picked from a fallback slot, at or below `warn_dist`, or beyond a fair constraint.
    pub flawed: bool,
}

impl<'a> SelectedRef<'a> {
    /// An owned copy.
    pub fn to_owned(&self) -> Selected {
        Selected {
            id: self.id.to_owned(),
            addr: self.addr.to_owned(),
            location: self.location,
            expected_dist: self.expected_dist,
            final_dist: self.final_dist,
            warn_dist: self.warn_dist,
            expected_slot: self.expected_slot.to_owned(),
            final_slot: self.final_slot.to_owned(),
            flawed: self.flawed,
        }
    }
}

impl<'a> Picked<'a> {
    /// The picks, in target order.
    pub fn items(&self) -> impl ExactSizeIterator<Item = SelectedRef<'a>> + Clone + 'a {
        let (world, targets, max_dist, warn_dist) = (self.world, self.targets, self.max_dist, self.warn_dist);
        self.picks.iter().map(move |p| {
            let item = &world.items[p.item as usize];
            SelectedRef {
                id: &item.id,
                addr: &item.addr,
                location: item.location,
                expected_dist: max_dist,
                final_dist: p.final_dist,
                warn_dist,
                expected_slot: targets[p.target as usize].slots.first().map_or("", String::as_str),
                final_slot: &world.slots[p.slot as usize].name,
                flawed: p.flawed,
            }
        })
    }

    /// As an owned [`Selection`] (allocates).
    pub fn to_selection(&self) -> Selection {
        Selection { items: self.items().map(|s| s.to_owned()).collect(), flawed: self.flawed }
    }
}

impl PollScratch {
    /// [`poll`] into these buffers: the same picks for the same random draws, borrowed.
    pub fn poll<'s, 'r, R: Rng + ?Sized>(
        &'s mut self,
        world: &'s World,
        pool: &'s Pool,
        avoid: impl IntoIterator<Item = ServiceRef<'r>>,
        known: impl IntoIterator<Item = ServiceRef<'r>>,
        rng: &mut R,
    ) -> Result<Picked<'s>, Refusal> {
        self.split().0.run(world, &pool.targets, &pool.options, avoid, known, rng)
    }

    /// [`next_instances`] into these buffers (the temporary pool too): the same picks for the
    /// same random draws, borrowed.
    pub fn next_instances<'s, R: Rng + ?Sized>(
        &'s mut self,
        world: &'s World,
        type_name: &str,
        size: u32,
        slot: Option<&str>,
        rng: &mut R,
    ) -> Result<Picked<'s>, Refusal> {
        if size == 0 || size > super::MAX_TARGETS || type_name.is_empty() {
            return Err(Refusal::BadPool);
        }
        let (work, choose, spare) = self.split();
        choose.resize_with(1, || Target { count: 0, slots: Vec::new() });
        let t = &mut choose[0];
        t.count = size;
        // Slot names dropped from the target wait in `spare`, so that their buffers are kept.
        while t.slots.len() < 2 {
            t.slots.push(spare.pop().unwrap_or_default());
        }
        let mut n = 0;
        if let Some(s) = slot.filter(|s| !s.is_empty()) {
            slot_name_into(&mut t.slots[0], type_name, s);
            n = 1;
        }
        if n == 0 || t.slots[0] != type_name {
            t.slots[n].clear();
            t.slots[n].push_str(type_name);
            n += 1;
        }
        while t.slots.len() > n {
            spare.extend(t.slots.pop());
        }
        let choose: &'s [Target] = choose;
        work.run(world, choose, &PoolOptions::default(), std::iter::empty(), std::iter::empty(), rng)
    }

    /// The buffers of a poll, the temporary target and the spare slot names.
    fn split(&mut self) -> (Work<'_>, &mut Vec<Target>, &mut Vec<String>) {
        let Self { known_items, knowns, avoid, unmatched, polled, picks, choose, spare } = self;
        (Work { known_items, knowns, avoid, unmatched, polled, picks }, choose, spare)
    }
}

/// The buffers of one poll, borrowed from a [`PollScratch`] (apart from its temporary target).
struct Work<'s> {
    known_items: &'s mut Vec<u32>,
    knowns: &'s mut Vec<KnownAt>,
    avoid: &'s mut Vec<u64>,
    unmatched: &'s mut Vec<u32>,
    polled: &'s mut Vec<u64>,
    picks: &'s mut Vec<Pick>,
}

impl<'s> Work<'s> {
    fn in_slot(known_items: &[u32], k: &KnownAt, world: &World, si: u32) -> bool {
        known_items[k.items.0..k.items.1].iter().any(|&i| world.items[i as usize].slots.contains(&si))
            || world.slots[si as usize].has_location(k.loc)
    }

    /// Marks the first unused known service in slot `si` used; whether there was one.
    fn use_known(&mut self, world: &World, si: u32) -> bool {
        let known_items = &*self.known_items;
        match self.knowns.iter_mut().find(|k| !k.used && Self::in_slot(known_items, k, world, si)) {
            Some(k) => {
                k.used = true;
                true
            }
            None => false,
        }
    }

    fn run<'r, R: Rng + ?Sized>(
        mut self,
        world: &'s World,
        targets: &'s [Target],
        opts: &PoolOptions,
        avoid: impl IntoIterator<Item = ServiceRef<'r>>,
        known: impl IntoIterator<Item = ServiceRef<'r>>,
        rng: &mut R,
    ) -> Result<Picked<'s>, Refusal> {
        let t_count: u32 = targets.iter().map(|t| t.count).sum();
        self.known_items.clear();
        self.knowns.clear();
        for r in known {
            match r {
                ServiceRef::Id(id) => {
                    if let Some(items) = world.ids.get(id).filter(|v| !v.is_empty()) {
                        let start = self.known_items.len();
                        self.known_items.extend_from_slice(items);
                        let loc = world.items[items[0] as usize].location;
                        self.knowns.push(KnownAt { loc, items: (start, self.known_items.len()), used: false });
                    }
                }
                ServiceRef::Location(loc) => self.knowns.push(KnownAt { loc, items: (0, 0), used: false }),
            }
        }
        if self.knowns.len() >= t_count as usize {
            return Err(Refusal::TooManyKnown { known: self.knowns.len(), max: t_count });
        }
        self.avoid.clear();
        for r in avoid {
            match r {
                ServiceRef::Id(id) => self.avoid.extend(world.items_by_id(id).map(|i| i.location)),
                ServiceRef::Location(loc) => self.avoid.push(loc),
            }
        }
        let max_dist = world.abs_max_dist.min(opts.max_dist);

        // 1. Strict match of known services against each target's primary slot.
        self.unmatched.clear();
        for (ti, t) in targets.iter().enumerate() {
            for _ in 0..t.count {
                let primary = t.slots.first().and_then(|s| world.slot_idx(s));
                if !primary.is_some_and(|si| self.use_known(world, si)) {
                    self.unmatched.push(ti as u32);
                }
            }
        }

        self.polled.clear();
        self.polled.extend(self.knowns.iter().map(|k| k.loc));
        let n_known = self.polled.len();
        self.picks.clear();
        let mut reached = max_dist;
        let mut fallback_used = false;
        'targets: for u in 0..self.unmatched.len() {
            let ti = self.unmatched[u];
            let t = &targets[ti as usize];
            let primary_name = t.slots.first().map_or("", String::as_str);
            // 2a. A known service in a fallback slot covers the target.
            for s in t.slots.iter().skip(1).filter_map(|s| world.slot_idx(s)) {
                if self.use_known(world, s) {
                    continue 'targets;
                }
            }
            let n_same: u32 = targets
                .iter()
                .filter(|o| o.slots.first().map(String::as_str) == Some(primary_name))
                .map(|o| o.count)
                .sum();
            // 2b. Distance outside, slot fallback inside.
            let mut found = None;
            // Downward from max_dist, or upward from min_dist in nearby mode.
            let steps = (max_dist + 1).saturating_sub(opts.min_dist);
            for step in 0..steps {
                let dist = if opts.nearby_mode { opts.min_dist + step } else { max_dist - step };
                let ctx = Ctx { opts, targets: t_count, avoid: self.avoid.as_slice(), polled: self.polled.as_slice() };
                for (n, name) in t.slots.iter().enumerate() {
                    let Some(si) = world.slot_idx(name) else { continue };
                    if let Some((k, fair)) = slot_poll(&ctx, &world.slots[si as usize], dist, n_same, rng) {
                        found = Some((si, k, fair, n > 0, dist));
                        break;
                    }
                }
                if found.is_some() {
                    break;
                }
            }
            let Some((si, k, fair, fallback, dist)) = found else {
                return Err(Refusal::NotSatisfiable {
                    target: ti as usize,
                    polled: self.picks.len(),
                    targets: t_count,
                    known: n_known,
                    in_slot: world.slot_len(primary_name),
                });
            };
            reached = reached.min(dist);
            fallback_used |= fallback;
            let item = world.slots[si as usize].items[k];
            self.polled.push(world.items[item as usize].location);
            self.picks.push(Pick { item, slot: si, target: ti, final_dist: 0, flawed: fallback, fair });
        }

        // 3. Quality: each pick's distance to everything else.
        let mut flawed = fallback_used || reached <= opts.warn_dist;
        for (j, p) in self.picks.iter_mut().enumerate() {
            let mine = n_known + j;
            let location = world.items[p.item as usize].location;
            let mut d = max_dist;
            for (m, &x) in self.polled.iter().enumerate() {
                if m != mine {
                    d = d.min(find_min_dist(&[x], location, max_dist));
                }
            }
            p.final_dist = d;
            p.flawed |= d <= opts.warn_dist || p.fair;
            flawed |= p.flawed;
        }
        let picks: &'s [Pick] = self.picks;
        Ok(Picked { world, targets, picks, max_dist, warn_dist: opts.warn_dist, flawed })
    }
}
