//! Load-balancing pools: locations, slots, and the weighted, distance-aware `poll`.
//!
//! The model is OpenIO SDS 5.x `core/lb.c` with the decisions of heartsink's reference (§7):
//!
//! * A **location** is a `u64` of four 16-bit levels, most significant first: DC, rack, host,
//!   volume ([`parse_location`]). The **distance** of a selection is the number of levels at
//!   which it must differ: 1 = not the same location, 2 = not the same host, 3 = not the same
//!   rack, 4 = not the same DC ([`too_close`]).
//! * A [`World`] is an immutable picture of the registry: every service is an item of weight
//!   = score clamped to 0..=100, fed to slot `<type>` and to `<type>-<s>` for each `s` in its
//!   `tag.slots`. Weight-0 items are never polled but still match as *known*.
//! * A [`Pool`] is a list of targets; each target is an ordered list of slots (primary first,
//!   then fallbacks) ([`Pool::parse`] reads `N,slotA,slotB;M,slotC;key=value`).
//! * [`poll`] picks one item per target: for each target, the **distance loop is outside and
//!   the slot-fallback loop inside**, so a far item in a fallback slot beats a close item in the
//!   primary slot. Within a slot: a few weighted random draws (weight ∝ score), then a
//!   deterministic scan with a stride **coprime** with the slot size (the original's stride was
//!   not guaranteed coprime and could miss items). An item is accepted when its location is not
//!   avoided, it is not too close to anything polled or known, and no level (host, rack, DC) gets
//!   more than its fair share of the targets (9 picks over 3 hosts → 3+3+3).
//! * `known` services (e.g. the healthy members of a set being repaired) occupy targets and
//!   constrain distance; they are matched to targets by **location and by id** (the original
//!   matched by location only). Nothing is returned on a partial failure.
//! * A selection is **flawed** when a fallback slot was used, when its distance is at or below
//!   the pool's `warn_dist`, or when a `fair_location_constraint` was exceeded.
//! * [`next_instances`] is `GET /lb/choose`: it returns **all** `size` instances and honours
//!   `slot` (the original Python client dropped both).
//!
//! The code follows those sections, one file each, re-exported here: `location.rs` (locations
//! and distances), `world.rs` (the immutable picture of the services and its slots), `pool.rs`
//! (pool definitions and their target strings) and `poll.rs` (the pick itself and
//! [`next_instances`]); the unit tests are in `tests.rs`.
#![forbid(unsafe_code)]

mod location;
mod poll;
mod pool;
mod world;

pub use location::{abs_max_dist, djb2, find_min_dist, parse_location, slot_name, slot_name_into, too_close, LEVELS};
pub use poll::{
    next_instances, poll, LbError, Picked, PollScratch, Refusal, Selected, SelectedRef, Selection, ServiceRef,
};
pub use pool::{Pool, PoolError, PoolOptions, Target, MAX_TARGETS};
pub use world::{World, WorldEntry, WorldItem};

#[cfg(test)]
mod tests;
