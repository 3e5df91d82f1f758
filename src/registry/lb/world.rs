//! The [`World`]: an immutable picture of the registry for polling. Every service is an item
//! weighted by its score and fed to its type's slot and to one slot per `tag.slots` entry; each
//! slot keeps its items sorted by location with cumulative weights, per-level counts and a
//! coprime scan stride, so a poll draws and scans without allocating.

use rustc_hash::FxHashMap;

use super::location::{abs_max_dist, parse_location, slot_name};
use crate::registry::{Registry, SCORE_MAX};

/// One service fed to a [`World`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorldEntry {
    /// The service type (its main slot).
    pub type_name: String,
    /// `ip:port`.
    pub addr: String,
    /// The logical id (`tag.service_id` or the address).
    pub id: String,
    /// The score; the weight is the score clamped to 0..=100.
    pub score: i32,
    /// The location ([`parse_location`]).
    pub location: u64,
    /// The `tag.slots` entries (turned into slot names by [`slot_name`]).
    pub slots: Vec<String>,
}

/// An item of a [`World`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldItem {
    /// The logical id.
    pub id: String,
    /// `ip:port`.
    pub addr: String,
    /// The service type.
    pub type_name: String,
    /// The location.
    pub location: u64,
    /// The weight, 0..=100; 0 = never polled.
    pub weight: u32,
    /// Indices of the slots it is in.
    pub(super) slots: Vec<u32>,
}

/// A slot: the items of one type or one `<type>-<slot>`, sorted by location.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) name: String,
    /// Items of weight > 0, sorted by location.
    pub(super) items: Vec<u32>,
    /// Their locations (parallel to `items`).
    pub(super) locs: Vec<u64>,
    /// Cumulative weights: `acc[i]` = sum of the weights of `items[..=i]`.
    pub(super) acc: Vec<u64>,
    /// Locations of the weight-0 items, sorted (matchable as known, never polled).
    zero_locs: Vec<u64>,
    /// `items_by_loc[l - 1][loc >> 16 l]`: items under each prefix at levels 1 (host),
    /// 2 (rack), 3 (DC).
    pub(super) items_by_loc: [FxHashMap<u64, u32>; 3],
    /// Distinct `loc >> 16 k` values for k = 0..4 (locations, hosts, racks, DCs).
    pub(super) locs_by_level: [u32; 4],
    /// Scan stride, coprime with `items.len()`.
    pub(super) jump: usize,
}

impl Slot {
    pub(super) fn sum(&self) -> u64 {
        self.acc.last().copied().unwrap_or(0)
    }

    pub(super) fn has_location(&self, loc: u64) -> bool {
        self.locs.binary_search(&loc).is_ok() || self.zero_locs.binary_search(&loc).is_ok()
    }
}

pub(super) fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A stride in `(n/3, n - n/3)`, coprime with `n`, not 1 or `n - 1` when possible, so that
/// `i, i + s, i + 2s, …` visits every index of `0..n` in a scattered order.
pub(super) fn coprime_stride(n: usize) -> usize {
    if n <= 3 {
        return 1;
    }
    let (lo, hi) = (n / 3 + 1, n - n / 3);
    (n / 2..hi).chain(lo..n / 2).chain(2..n - 1).find(|&c| c > 1 && c < n - 1 && gcd(c, n) == 1).unwrap_or(1)
}

/// An immutable picture of the services for polling. Rebuild it periodically when the
/// registry's [`generation`](Registry::generation) has changed (the original refreshes every
/// 5 s): every heartbeat changes the generation, and a build over 10⁴ services costs
/// milliseconds (`benches/lb.rs`).
#[derive(Clone, Debug, Default)]
pub struct World {
    pub(super) items: Vec<WorldItem>,
    /// Id and address → items.
    pub(super) ids: FxHashMap<String, Vec<u32>>,
    pub(super) slots: Vec<Slot>,
    slot_index: FxHashMap<String, u32>,
    pub(super) abs_max_dist: u32,
    /// What it was built from, in order (a cluster leader ships these: the same entries build
    /// the same world).
    entries: Vec<WorldEntry>,
}

impl World {
    /// The world of every service in the registry: location from `tag.loc` (a string) and the
    /// address, slots from `tag.slots` (a comma-separated string).
    pub fn build(reg: &Registry) -> World {
        World::from_entries(reg.iter().map(|s| {
            WorldEntry {
                type_name: s.type_name.clone(),
                addr: s.addr.clone(),
                id: s.id().to_owned(),
                score: s.score,
                location: parse_location(s.tag("tag.loc").and_then(|v| v.as_str()), &s.addr),
                slots: s
                    .tag("tag.slots")
                    .and_then(|v| v.as_str())
                    .map(|l| l.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect())
                    .unwrap_or_default(),
            }
        }))
    }

    /// The services it was built from, in order.
    pub fn entries(&self) -> &[WorldEntry] {
        &self.entries
    }

    /// A world of these services.
    pub fn from_entries(entries: impl IntoIterator<Item = WorldEntry>) -> World {
        let mut w = World::default();
        let mut members: Vec<Vec<u32>> = Vec::new();
        let mut max_loc = 0u64;
        for e in entries {
            w.entries.push(e.clone());
            let idx = w.items.len() as u32;
            let mut slot_names = vec![e.type_name.clone()];
            for s in &e.slots {
                let n = slot_name(&e.type_name, s);
                if !slot_names.contains(&n) {
                    slot_names.push(n);
                }
            }
            let mut slots = Vec::with_capacity(slot_names.len());
            for n in slot_names {
                let next = w.slot_index.len() as u32;
                let si = *w.slot_index.entry(n).or_insert(next);
                if si == next {
                    members.push(Vec::new());
                }
                members[si as usize].push(idx);
                slots.push(si);
            }
            max_loc = max_loc.max(e.location);
            w.ids.entry(e.id.clone()).or_default().push(idx);
            if e.addr != e.id {
                w.ids.entry(e.addr.clone()).or_default().push(idx);
            }
            w.items.push(WorldItem {
                id: e.id,
                addr: e.addr,
                type_name: e.type_name,
                location: e.location,
                weight: e.score.clamp(0, SCORE_MAX) as u32,
                slots,
            });
        }
        w.abs_max_dist = abs_max_dist(max_loc);
        let mut names = vec![String::new(); w.slot_index.len()];
        for (n, &i) in &w.slot_index {
            names[i as usize].clone_from(n);
        }
        w.slots = members.into_iter().zip(names).map(|(m, name)| w.build_slot(name, m)).collect();
        w
    }

    fn build_slot(&self, name: String, mut members: Vec<u32>) -> Slot {
        let items = &self.items;
        members.sort_by(|&a, &b| {
            let (a, b) = (&items[a as usize], &items[b as usize]);
            (a.location, &a.id, &a.addr).cmp(&(b.location, &b.id, &b.addr))
        });
        let (pos, zero): (Vec<u32>, Vec<u32>) = members.into_iter().partition(|&i| items[i as usize].weight > 0);
        let locs: Vec<u64> = pos.iter().map(|&i| items[i as usize].location).collect();
        let mut sum = 0u64;
        let acc = pos
            .iter()
            .map(|&i| {
                sum += u64::from(items[i as usize].weight);
                sum
            })
            .collect();
        let mut items_by_loc: [FxHashMap<u64, u32>; 3] = Default::default();
        let mut locs_by_level = [0u32; 4];
        for (k, distinct) in locs_by_level.iter_mut().enumerate() {
            let shift = 16 * k as u32;
            // `locs` is sorted, so equal prefixes are adjacent.
            let mut last = None;
            for &l in &locs {
                let p = l >> shift;
                if last != Some(p) {
                    *distinct += 1;
                    last = Some(p);
                }
                if k > 0 {
                    *items_by_loc[k - 1].entry(p).or_insert(0) += 1;
                }
            }
        }
        let jump = coprime_stride(pos.len());
        Slot {
            name,
            items: pos,
            locs,
            acc,
            zero_locs: zero.iter().map(|&i| items[i as usize].location).collect(),
            items_by_loc,
            locs_by_level,
            jump,
        }
    }

    /// Every item.
    pub fn items(&self) -> &[WorldItem] {
        &self.items
    }

    /// The items with this id or address.
    pub fn items_by_id(&self, id: &str) -> impl Iterator<Item = &WorldItem> + '_ {
        self.ids.get(id).into_iter().flatten().map(|&i| &self.items[i as usize])
    }

    /// The slot names.
    pub fn slot_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Number of pollable (weight > 0) items in a slot; 0 for an unknown slot.
    pub fn slot_len(&self, name: &str) -> usize {
        self.slot(name).map_or(0, |s| s.items.len())
    }

    /// [`abs_max_dist`] of the highest location fed.
    pub fn abs_max_dist(&self) -> u32 {
        self.abs_max_dist
    }

    pub(super) fn slot_idx(&self, name: &str) -> Option<u32> {
        self.slot_index.get(name).copied()
    }

    pub(super) fn slot(&self, name: &str) -> Option<&Slot> {
        self.slot_idx(name).map(|i| &self.slots[i as usize])
    }
}
