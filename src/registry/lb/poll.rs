//! The poll: one service per target of a [`Pool`] from a [`World`], with the distance loop
//! outside and the slot-fallback loop inside, weighted draws then a coprime scan within a
//! slot, `avoid` and `known` services honoured, and the quality of the selection (`flawed`)
//! reported. [`next_instances`] is the `GET /lb/choose` form on a temporary pool.

use std::fmt;

use rand::Rng;
use serde::Serialize;

use super::location::{find_min_dist, slot_name, too_close, LEVELS};
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

/// A known service: its location and, if named by id, its items.
struct Known<'w> {
    loc: u64,
    items: &'w [u32],
    used: bool,
}

impl Known<'_> {
    fn in_slot(&self, world: &World, si: u32) -> bool {
        self.items.iter().any(|&i| world.items[i as usize].slots.contains(&si))
            || world.slots[si as usize].has_location(self.loc)
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
pub fn poll<R: Rng + ?Sized>(
    world: &World,
    pool: &Pool,
    avoid: &[ServiceRef<'_>],
    known: &[ServiceRef<'_>],
    rng: &mut R,
) -> Result<Selection, LbError> {
    let t_count = pool.target_count();
    let mut knowns: Vec<Known<'_>> = Vec::with_capacity(known.len());
    for r in known {
        match *r {
            ServiceRef::Id(id) => {
                if let Some(items) = world.ids.get(id).filter(|v| !v.is_empty()) {
                    knowns.push(Known { loc: world.items[items[0] as usize].location, items, used: false });
                }
            }
            ServiceRef::Location(loc) => knowns.push(Known { loc, items: &[], used: false }),
        }
    }
    if knowns.len() >= t_count as usize {
        return Err(LbError::TooManyKnown { known: knowns.len(), max: t_count });
    }
    let mut avoid_locs = Vec::with_capacity(avoid.len());
    for r in avoid {
        match *r {
            ServiceRef::Id(id) => avoid_locs.extend(world.items_by_id(id).map(|i| i.location)),
            ServiceRef::Location(loc) => avoid_locs.push(loc),
        }
    }
    let opts = &pool.options;
    let max_dist = world.abs_max_dist.min(opts.max_dist);

    // 1. Strict match of known services against each target's primary slot.
    let expanded = pool.targets.iter().flat_map(|t| std::iter::repeat_n(t, t.count as usize));
    let mut unmatched: Vec<&Target> = Vec::with_capacity(t_count as usize);
    for t in expanded {
        let primary = t.slots.first().and_then(|s| world.slot_idx(s));
        match primary.and_then(|si| knowns.iter_mut().find(|k| !k.used && k.in_slot(world, si))) {
            Some(k) => k.used = true,
            None => unmatched.push(t),
        }
    }

    let mut polled: Vec<u64> = knowns.iter().map(|k| k.loc).collect();
    let n_known = polled.len();
    let mut out: Vec<Selected> = Vec::with_capacity(unmatched.len());
    let mut fair_flags: Vec<bool> = Vec::with_capacity(unmatched.len());
    let mut reached = max_dist;
    let mut fallback_used = false;
    'targets: for t in unmatched {
        let primary_name = t.slots.first().map_or("", String::as_str);
        // 2a. A known service in a fallback slot covers the target.
        for s in t.slots.iter().skip(1).filter_map(|s| world.slot_idx(s)) {
            if let Some(k) = knowns.iter_mut().find(|k| !k.used && k.in_slot(world, s)) {
                k.used = true;
                continue 'targets;
            }
        }
        let n_same: u32 = pool
            .targets
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
            let ctx = Ctx { opts, targets: t_count, avoid: &avoid_locs, polled: &polled };
            for (n, name) in t.slots.iter().enumerate() {
                let Some(slot) = world.slot(name) else { continue };
                if let Some((k, fair)) = slot_poll(&ctx, slot, dist, n_same, rng) {
                    found = Some((slot, k, fair, n > 0, dist));
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        let Some((slot, k, fair, fallback, dist)) = found else {
            return Err(LbError::NotSatisfiable {
                slot: primary_name.to_owned(),
                polled: out.len(),
                targets: t_count,
                known: n_known,
                in_slot: world.slot_len(primary_name),
            });
        };
        reached = reached.min(dist);
        fallback_used |= fallback;
        let item = &world.items[slot.items[k] as usize];
        polled.push(item.location);
        fair_flags.push(fair);
        out.push(Selected {
            id: item.id.clone(),
            addr: item.addr.clone(),
            location: item.location,
            expected_dist: max_dist,
            final_dist: 0,
            warn_dist: opts.warn_dist,
            expected_slot: primary_name.to_owned(),
            final_slot: slot.name.clone(),
            flawed: fallback,
        });
    }

    // 3. Quality: each pick's distance to everything else.
    let mut flawed = fallback_used || reached <= opts.warn_dist;
    for (j, s) in out.iter_mut().enumerate() {
        let mine = n_known + j;
        let mut d = max_dist;
        for (m, &x) in polled.iter().enumerate() {
            if m != mine {
                d = d.min(find_min_dist(&[x], s.location, max_dist));
            }
        }
        s.final_dist = d;
        s.flawed |= d <= opts.warn_dist || fair_flags[j];
        flawed |= s.flawed;
    }
    Ok(Selection { items: out, flawed })
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
