//! The pools fixture of confd's pool requests (104/105), one file for its users:
//! `tests/confd_pools.rs`, `tests/alloc.rs` and the `confd_pool` fuzz target (which includes it
//! with `#[path]`).

use std::collections::BTreeMap;
use std::sync::Arc;

use heartsink::control::Snapshot;
use heartsink::registry::lb::{Pool, World, WorldEntry};

/// 24 services of type `rawx` over 2 DCs, 3 racks, 2 hosts, 2 volumes; the even ones also in
/// slot `rawx-ssd`; `rawx-5` of score 0.
pub fn rawx() -> impl Iterator<Item = WorldEntry> {
    (0..24u64).map(|i| WorldEntry {
        type_name: "rawx".into(),
        addr: format!("10.0.{}.{}:6000", i / 8, i % 8),
        id: format!("rawx-{i}"),
        score: if i == 5 { 0 } else { 10 + i as i32 * 3 },
        location: ((i % 2) << 48) | ((i / 2 % 3) << 32) | ((i / 6 % 2) << 16) | (i / 12),
        slots: if i % 2 == 0 { vec!["ssd".into()] } else { vec![] },
    })
}

/// Pools over [`rawx`]: (name, targets).
pub const POOLS: [(&str, &str); 4] = [
    ("two", "2,rawx"),
    ("ssd", "3,rawx-ssd,rawx;warn_dist=2"),
    ("far", "3,rawx;min_dist=4"),
    ("mix", "1,rawx-ssd;2,rawx;fair_location_constraint=0.0.1.1"),
];

/// A snapshot of a world of `entries` and `pools`, at generation `9 << 32 | 4`; `cluster_view`
/// makes the picks seeded.
pub fn snapshot(entries: impl IntoIterator<Item = WorldEntry>, pools: &[(&str, &str)], cluster_view: bool) -> Snapshot {
    let pools: BTreeMap<String, Pool> =
        pools.iter().map(|(n, t)| ((*n).to_owned(), Pool::parse(n, t).expect("fixture pool"))).collect();
    Snapshot {
        generation: 9 << 32 | 4,
        cluster_view,
        world: Arc::new(World::from_entries(entries)),
        pools: Arc::new(pools),
        ..Snapshot::default()
    }
}
