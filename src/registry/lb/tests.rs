//! Unit tests of the load-balancing pools: location parsing and distances, world building,
//! pool parsing and round trips, and polls (distance, fallback slots, known and avoided
//! services, location constraints, nearby mode, weights).

use super::world::{coprime_stride, gcd};
use super::*;
use crate::registry::Registry;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rustc_hash::FxHashMap;

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn loc(dc: u64, rack: u64, host: u64, vol: u64) -> u64 {
    (dc << 48) | (rack << 32) | (host << 16) | vol
}

fn entry(ty: &str, n: usize, location: u64, score: i32, slots: &[&str]) -> WorldEntry {
    let addr = format!("10.0.{}.{}:6000", n / 250, n % 250 + 1);
    WorldEntry {
        type_name: ty.into(),
        id: addr.clone(),
        addr,
        score,
        location,
        slots: slots.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// `hosts` hosts in one DC and rack, `per_host` volumes each, all of weight 50.
fn hosts(hosts: u64, per_host: u64) -> World {
    let mut v = Vec::new();
    for h in 0..hosts {
        for d in 0..per_host {
            v.push(entry("rawx", v.len(), loc(1, 1, h + 1, d + 1), 50, &[]));
        }
    }
    World::from_entries(v)
}

fn pool(s: &str) -> Pool {
    Pool::parse("p", s).unwrap()
}

fn host_of(l: u64) -> u64 {
    l >> 16
}

#[test]
fn djb2_values() {
    assert_eq!(djb2(""), 5381);
    assert_eq!(djb2("a"), 5381 * 33 + 97);
    assert_eq!(djb2("dc1"), 193_489_213);
    assert_eq!(djb2("dc1") & 0xFFFF, 26_941);
}

#[test]
fn location_parsing() {
    // Hex.
    assert_eq!(parse_location(Some("0x0001000200030004"), "1.2.3.4:5"), 0x0001_0002_0003_0004);
    // "0x0" is not a hex location: hashed as one token.
    assert_eq!(parse_location(Some("0x0"), "1.2.3.4:5"), u64::from(djb2("0x0") & 0xFFFF));
    // Dotted, four levels.
    let h = |s: &str| u64::from(djb2(s) & 0xFFFF);
    assert_eq!(
        parse_location(Some("dc1.r2.h3.v4"), ""),
        (h("dc1") << 48) | (h("r2") << 32) | (h("h3") << 16) | h("v4")
    );
    // Fewer tokens: upper levels 0.
    assert_eq!(parse_location(Some("h3.v4"), ""), (h("h3") << 16) | h("v4"));
    assert_eq!(parse_location(Some("h3"), ""), h("h3"));
    // A fifth dot stays in the fourth token.
    assert_eq!(parse_location(Some("a.b.c.d.e"), ""), (h("a") << 48) | (h("b") << 32) | (h("c") << 16) | h("d.e"));
    // From the address.
    assert_eq!(parse_location(None, "10.1.2.3:6000"), (0x0A01_0203u64 << 16) | 6000);
    assert_eq!(parse_location(Some(""), "10.1.2.3:6000"), (0x0A01_0203u64 << 16) | 6000);
    assert_eq!(parse_location(None, "[2001:db8::a:b:c]:80"), (0x000a_000b_000cu64 << 16) | 80);
    assert_eq!(parse_location(None, "nonsense"), 0);
}

#[test]
fn distances() {
    let a = loc(1, 1, 1, 1);
    assert!(!too_close(a, a, 0));
    assert!(too_close(a, a, 1));
    assert!(!too_close(a, loc(1, 1, 1, 2), 1));
    assert!(too_close(a, loc(1, 1, 1, 2), 2), "same host");
    assert!(!too_close(a, loc(1, 1, 2, 1), 2));
    assert!(too_close(a, loc(1, 1, 2, 1), 3), "same rack");
    assert!(!too_close(a, loc(1, 2, 1, 1), 3));
    assert!(too_close(a, loc(1, 2, 1, 1), 4), "same DC");
    assert!(!too_close(a, loc(2, 1, 1, 1), 4));
    assert!(too_close(a, loc(2, 1, 1, 1), 5));

    assert_eq!(find_min_dist(&[], a, 4), 4);
    assert_eq!(find_min_dist(&[a], a, 4), 0);
    assert_eq!(find_min_dist(&[loc(1, 1, 1, 2)], a, 4), 1);
    assert_eq!(find_min_dist(&[loc(1, 1, 2, 1)], a, 4), 2);
    assert_eq!(find_min_dist(&[loc(1, 2, 1, 1), loc(2, 1, 1, 1)], a, 4), 3);
    assert_eq!(find_min_dist(&[loc(2, 1, 1, 1)], a, 4), 4);
    assert_eq!(find_min_dist(&[loc(2, 1, 1, 1)], a, 2), 2);

    assert_eq!(abs_max_dist(0), 1);
    assert_eq!(abs_max_dist(0xFFFF), 1);
    assert_eq!(abs_max_dist(0x1_0000), 2);
    assert_eq!(abs_max_dist((0x0A01_0203u64 << 16) | 6000), 3);
    assert_eq!(abs_max_dist(loc(1, 0, 0, 0)), 4);
}

#[test]
fn coprime_strides_visit_everything() {
    for n in 1..200 {
        let j = coprime_stride(n);
        assert_eq!(gcd(j, n), 1, "n={n} j={j}");
        let mut seen = vec![false; n];
        let mut i = 0;
        for _ in 0..n {
            i = (i + j) % n;
            seen[i] = true;
        }
        assert!(seen.iter().all(|&s| s), "n={n}");
        if (n / 3 + 1..n - n / 3).any(|c| c > 1 && gcd(c, n) == 1) {
            assert!(j > n / 3 && j < n - n / 3, "n={n} j={j}");
        }
    }
}

#[test]
fn pool_parsing() {
    let p = pool("2,rawx-ssd,rawx;rawx-usa;min_dist=2;warn_dist=3;nearby_mode=true");
    assert_eq!(
        p.targets,
        vec![
            Target { count: 2, slots: vec!["rawx-ssd".into(), "rawx".into()] },
            Target { count: 1, slots: vec!["rawx-usa".into()] }
        ]
    );
    assert_eq!(p.target_count(), 3);
    assert_eq!((p.options.min_dist, p.options.warn_dist, p.options.nearby_mode), (2, 3, true));
    let p = pool("3,rawx;strict_location_constraint=9.3.2.1;fair_location_constraint=0.0.1.1");
    assert_eq!(p.options.strict_location_constraint, Some([9, 3, 2, 1]));
    assert_eq!(p.options.fair_location_constraint, Some([0, 0, 1, 1]));
    // Round trip through the target string and through serde.
    let p = pool("2,a,b;1,c;min_dist=2;allow_distance_bypass=false;weighted_random_attempts=3");
    assert_eq!(Pool::parse("p", &p.to_target_string()).unwrap(), p);
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Pool>(&json).unwrap(), p);
    assert!(serde_json::from_str::<Pool>(r#"{"name":"x","targets":"0,a"}"#).is_err());

    let err = |s: &str| Pool::parse("p", s).unwrap_err();
    assert_eq!(err(""), PoolError::NoTargets);
    assert_eq!(err("min_dist=2"), PoolError::NoTargets);
    assert_eq!(err("0,rawx"), PoolError::BadCount("0".into()));
    assert_eq!(err("2x,rawx"), PoolError::BadCount("2x".into()));
    assert_eq!(err("99999999999,rawx"), PoolError::BadCount("99999999999".into()));
    assert_eq!(err("200,a;100,b"), PoolError::TooManyTargets(300));
    assert_eq!(err("2,"), PoolError::EmptySlot("2,".into()));
    assert_eq!(err("2"), PoolError::EmptySlot("2".into()));
    assert_eq!(err("2,a,,b"), PoolError::EmptySlot("2,a,,b".into()));
    assert_eq!(err("1,a;colour=blue"), PoolError::UnknownOption("colour".into()));
    assert_eq!(err("1,a;min_dist=1;min_dist=2"), PoolError::DuplicateOption("min_dist".into()));
    assert!(matches!(err("1,a;min_dist=5"), PoolError::BadOptionValue { .. }));
    assert!(matches!(err("1,a;max_dist=0"), PoolError::BadOptionValue { .. }));
    assert!(matches!(err("1,a;warn_dist=6"), PoolError::BadOptionValue { .. }));
    assert!(matches!(err("1,a;warn_dist=x"), PoolError::BadOptionValue { .. }));
    assert!(matches!(err("1,a;nearby_mode=maybe"), PoolError::BadOptionValue { .. }));
    assert!(matches!(err("1,a;weighted_random_attempts=0"), PoolError::BadOptionValue { .. }));
    assert!(matches!(err("1,a;strict_location_constraint=1.2.3"), PoolError::BadOptionValue { .. }));
    assert!(matches!(err("1,a;fair_location_constraint=1.2.3.4.5"), PoolError::BadOptionValue { .. }));
    assert_eq!(err("1,a;min_dist=3;max_dist=2"), PoolError::MinAboveMax { min_dist: 3, max_dist: 2 });
    assert!(err("1,a;min_dist=7").to_string().contains("min_dist=\"7\""));
}

#[test]
fn three_targets_over_three_hosts_land_on_three_hosts() {
    let w = hosts(3, 4);
    let p = pool("3,rawx");
    let mut r = rng();
    for _ in 0..200 {
        let s = poll(&w, &p, &[], &[], &mut r).unwrap();
        let mut hs: Vec<u64> = s.items.iter().map(|i| host_of(i.location)).collect();
        hs.sort_unstable();
        hs.dedup();
        assert_eq!(hs.len(), 3, "{s:?}");
        assert!(s.items.iter().all(|i| i.final_dist == 2 && i.expected_dist == 4));
        assert!(!s.flawed);
    }
}

#[test]
fn distance_prefers_other_dcs_then_relaxes() {
    // Two DCs: 2 targets must land in both.
    let mut v = Vec::new();
    for dc in 1..=2 {
        for h in 1..=3 {
            v.push(entry("rawx", v.len(), loc(dc, 1, h, 1), 50, &[]));
        }
    }
    let w = World::from_entries(v);
    let mut r = rng();
    for _ in 0..100 {
        let s = poll(&w, &pool("2,rawx"), &[], &[], &mut r).unwrap();
        assert_ne!(s.items[0].location >> 48, s.items[1].location >> 48);
        assert_eq!(s.items[0].final_dist, 4);
    }
}

#[test]
fn min_dist_floor_fails_rather_than_going_below() {
    // One host with 5 volumes: min_dist=2 (different hosts) cannot hold 2 targets.
    let w = hosts(1, 5);
    let e = poll(&w, &pool("2,rawx;min_dist=2"), &[], &[], &mut rng()).unwrap_err();
    assert_eq!(e, LbError::NotSatisfiable { slot: "rawx".into(), polled: 1, targets: 2, known: 0, in_slot: 5 });
    assert!(e.to_string().starts_with("found only 1 services matching the criteria"), "{e}");
    // Without the floor it fits at distance 1.
    let s = poll(&w, &pool("2,rawx"), &[], &[], &mut rng()).unwrap();
    assert_eq!(s.items.len(), 2);
    assert_eq!(s.items[0].final_dist, 1);
}

#[test]
fn warn_dist_marks_flawed() {
    let w = hosts(1, 5);
    let s = poll(&w, &pool("2,rawx;warn_dist=1"), &[], &[], &mut rng()).unwrap();
    assert!(s.flawed);
    assert!(s.items.iter().all(|i| i.flawed && i.final_dist == 1 && i.warn_dist == 1));
    let w = hosts(3, 2);
    let s = poll(&w, &pool("2,rawx;warn_dist=1"), &[], &[], &mut rng()).unwrap();
    assert!(!s.flawed, "{s:?}");
}

#[test]
fn fallback_slot_is_used_and_flawed() {
    // rawx-ssd is empty of live services (one at weight 0); rawx has three.
    let mut v = vec![entry("rawx", 0, loc(1, 1, 1, 1), 0, &["ssd"])];
    for h in 2..=4 {
        v.push(entry("rawx", v.len(), loc(1, 1, h, 1), 50, &[]));
    }
    let w = World::from_entries(v);
    assert_eq!(w.slot_len("rawx-ssd"), 0);
    let s = poll(&w, &pool("2,rawx-ssd,rawx"), &[], &[], &mut rng()).unwrap();
    assert!(s.flawed);
    for i in &s.items {
        assert_eq!((i.expected_slot.as_str(), i.final_slot.as_str(), i.flawed), ("rawx-ssd", "rawx", true));
    }
    // A non-empty primary wins and is not flawed.
    let mut v = vec![entry("rawx", 0, loc(1, 1, 1, 1), 50, &["ssd"])];
    v.push(entry("rawx", 1, loc(1, 1, 2, 1), 50, &[]));
    let w = World::from_entries(v);
    let s = poll(&w, &pool("1,rawx-ssd,rawx"), &[], &[], &mut rng()).unwrap();
    assert_eq!(s.items[0].final_slot, "rawx-ssd");
    assert!(!s.flawed);
    // An unknown slot with no fallback is not satisfiable.
    let e = poll(&w, &pool("1,nope"), &[], &[], &mut rng()).unwrap_err();
    assert!(matches!(e, LbError::NotSatisfiable { in_slot: 0, .. }));
}

#[test]
fn distance_wins_over_slot_preference() {
    // Primary slot "rawx-ssd" only on host 1; fallback rawx has host 2. Two targets at
    // distance 2 (different hosts): the second comes from the fallback.
    let v = vec![
        entry("rawx", 0, loc(1, 1, 1, 1), 50, &["ssd"]),
        entry("rawx", 1, loc(1, 1, 1, 2), 50, &["ssd"]),
        entry("rawx", 2, loc(1, 1, 2, 1), 50, &[]),
    ];
    let w = World::from_entries(v);
    let s = poll(&w, &pool("2,rawx-ssd,rawx;allow_distance_bypass=false"), &[], &[], &mut rng()).unwrap();
    let mut hs: Vec<u64> = s.items.iter().map(|i| host_of(i.location)).collect();
    hs.sort_unstable();
    assert_eq!(hs, vec![host_of(loc(1, 1, 1, 0)), host_of(loc(1, 1, 2, 0))]);
    assert!(s.flawed);
}

#[test]
fn avoid_by_id_and_location() {
    let w = hosts(3, 1);
    let ids: Vec<String> = w.items().iter().map(|i| i.id.clone()).collect();
    let mut r = rng();
    for _ in 0..50 {
        let avoid = [ServiceRef::Id(&ids[0]), ServiceRef::Location(w.items()[1].location)];
        let s = poll(&w, &pool("1,rawx"), &avoid, &[], &mut r).unwrap();
        assert_eq!(s.items[0].id, ids[2]);
    }
    let avoid: Vec<ServiceRef<'_>> = ids.iter().map(|i| ServiceRef::Id(i)).collect();
    assert!(poll(&w, &pool("1,rawx"), &avoid, &[], &mut r).is_err());
    // Unknown ids are dropped silently.
    assert!(poll(&w, &pool("1,rawx"), &[ServiceRef::Id("nope")], &[], &mut r).is_ok());
}

#[test]
fn known_by_id_and_by_location() {
    let w = hosts(3, 2);
    let first = w.items()[0].clone();
    let mut r = rng();
    for known in [ServiceRef::Id(first.id.as_str()), ServiceRef::Location(first.location)] {
        for _ in 0..50 {
            let s = poll(&w, &pool("3,rawx"), &[], &[known], &mut r).unwrap();
            // The known service occupies one target and is not returned.
            assert_eq!(s.items.len(), 2);
            let mut hs: Vec<u64> = s.items.iter().map(|i| host_of(i.location)).collect();
            hs.push(host_of(first.location));
            hs.sort_unstable();
            hs.dedup();
            assert_eq!(hs.len(), 3, "picks avoid the known service's host: {s:?}");
            assert!(s.items.iter().all(|i| i.final_dist == 2));
        }
    }
    // Known by id matches a weight-0 item (matchable, never polled).
    let v = vec![
        entry("rawx", 0, loc(1, 1, 1, 1), 0, &[]),
        entry("rawx", 1, loc(1, 1, 2, 1), 50, &[]),
        entry("rawx", 2, loc(1, 1, 3, 1), 50, &[]),
    ];
    let w = World::from_entries(v);
    let zero = w.items()[0].id.clone();
    let s = poll(&w, &pool("2,rawx"), &[], &[ServiceRef::Id(&zero)], &mut r).unwrap();
    assert_eq!(s.items.len(), 1);
    assert_ne!(s.items[0].id, zero);
    // Known by id in a fallback slot covers the target too.
    let s = poll(&w, &pool("2,rawx-none,rawx"), &[], &[ServiceRef::Id(&zero)], &mut r).unwrap();
    assert_eq!(s.items.len(), 1);
}

#[test]
fn too_many_known() {
    let w = hosts(3, 1);
    let ids: Vec<String> = w.items().iter().map(|i| i.id.clone()).collect();
    let known: Vec<ServiceRef<'_>> = ids.iter().take(2).map(|i| ServiceRef::Id(i)).collect();
    let e = poll(&w, &pool("2,rawx"), &[], &known, &mut rng()).unwrap_err();
    assert_eq!(e, LbError::TooManyKnown { known: 2, max: 2 });
    assert!(e.to_string().starts_with("too many locations already known (2)"));
    // Unknown ids do not count.
    let known = [ServiceRef::Id(&ids[0]), ServiceRef::Id("nope")];
    assert_eq!(poll(&w, &pool("2,rawx"), &[], &known, &mut rng()).unwrap().items.len(), 1);
}

#[test]
fn fair_share_spreads_nine_over_three_hosts() {
    // 3 hosts × 5 volumes, 9 targets at distance 1: 3 + 3 + 3.
    let w = hosts(3, 5);
    let mut r = rng();
    for _ in 0..100 {
        let s = poll(&w, &pool("9,rawx"), &[], &[], &mut r).unwrap();
        let mut per_host = FxHashMap::default();
        for i in &s.items {
            *per_host.entry(host_of(i.location)).or_insert(0) += 1;
        }
        let mut counts: Vec<i32> = per_host.into_values().collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![3, 3, 3]);
    }
}

#[test]
fn distance_bypass_on_and_off() {
    // 2 racks, 2 hosts each; 3 targets at max_dist 3 (different racks) cannot hold.
    let mut v = Vec::new();
    for rack in 1..=2 {
        for h in 1..=2 {
            v.push(entry("rawx", v.len(), loc(1, rack, h, 1), 50, &[]));
        }
    }
    let w = World::from_entries(v);
    // With the bypass the distance relaxes to hosts; without it, to hosts too but by the
    // outer loop, which still succeeds down to min_dist.
    let s = poll(&w, &pool("3,rawx;max_dist=3"), &[], &[], &mut rng()).unwrap();
    assert_eq!(s.items.len(), 3);
    // With min_dist = 3 the outer loop may not relax: the bypass may not go below min_dist
    // either, so both fail.
    for b in ["true", "false"] {
        let p = pool(&format!("3,rawx;max_dist=3;min_dist=3;allow_distance_bypass={b}"));
        assert!(poll(&w, &p, &[], &[], &mut rng()).is_err());
    }
    // min_dist = 2, max_dist = 3, 3 targets: the bypass relaxes inside slot_poll at dist 3
    // (3 targets > 2 racks); without it the first pick at dist 3 ... still ok by the outer
    // loop. What differs: with the bypass every pick is made at distance 2 at once, so the
    // first two picks may share a rack; without it the first two are on distinct racks.
    let mut r = rng();
    let p_off = pool("3,rawx;max_dist=3;min_dist=2;allow_distance_bypass=false");
    let p_on = pool("3,rawx;max_dist=3;min_dist=2");
    let mut same_rack_on = 0;
    for _ in 0..200 {
        let s = poll(&w, &p_off, &[], &[], &mut r).unwrap();
        assert_ne!(s.items[0].location >> 32, s.items[1].location >> 32, "no bypass: first two on two racks");
        let s = poll(&w, &p_on, &[], &[], &mut r).unwrap();
        if s.items[0].location >> 32 == s.items[1].location >> 32 {
            same_rack_on += 1;
        }
    }
    assert!(same_rack_on > 0, "the bypass relaxes the first picks too");
}

#[test]
fn strict_constraint_limits_per_host() {
    // 2 hosts × 4 volumes; 4 targets at distance 1; strict: at most 2 per host.
    let w = hosts(2, 4);
    let mut r = rng();
    for _ in 0..50 {
        let s = poll(&w, &pool("4,rawx;strict_location_constraint=0.0.2.1"), &[], &[], &mut r).unwrap();
        let on_first = s.items.iter().filter(|i| host_of(i.location) == host_of(loc(1, 1, 1, 0))).count();
        assert_eq!(on_first, 2);
    }
    // At most 1 per host: 3 targets over 2 hosts is not satisfiable.
    assert!(poll(&w, &pool("3,rawx;strict_location_constraint=0.0.1.1"), &[], &[], &mut r).is_err());
    // At most 3 per host (above the fair share of 2): the fair share still applies at
    // levels left at 0, and the host level allows 3.
    let s = poll(&w, &pool("4,rawx;strict_location_constraint=0.0.3.1"), &[], &[], &mut r).unwrap();
    assert_eq!(s.items.len(), 4);
}

#[test]
fn fair_constraint_exceeded_is_flawed() {
    let w = hosts(2, 4);
    let s = poll(&w, &pool("4,rawx;fair_location_constraint=0.0.1.0"), &[], &[], &mut rng()).unwrap();
    assert!(s.flawed);
    assert_eq!(s.items.iter().filter(|i| i.flawed).count(), 2, "the second pick on each host");
}

#[test]
fn nearby_mode_starts_close() {
    // 2 hosts × 3 volumes. Default: 2 picks on 2 hosts. Nearby: tries distance 1 first, so
    // some polls put both picks on one host.
    let w = hosts(2, 3);
    let mut r = rng();
    let (mut same_default, mut same_nearby) = (0, 0);
    for _ in 0..200 {
        let s = poll(&w, &pool("2,rawx"), &[], &[], &mut r).unwrap();
        same_default += usize::from(host_of(s.items[0].location) == host_of(s.items[1].location));
        let s =
            poll(&w, &pool("2,rawx;nearby_mode=true;strict_location_constraint=0.0.2.1"), &[], &[], &mut r).unwrap();
        same_nearby += usize::from(host_of(s.items[0].location) == host_of(s.items[1].location));
    }
    assert_eq!(same_default, 0);
    assert!(same_nearby > 0);
}

#[test]
fn weight_zero_is_never_polled() {
    let v = vec![entry("rawx", 0, loc(1, 1, 1, 1), 0, &[]), entry("rawx", 1, loc(1, 1, 2, 1), 1, &[])];
    let w = World::from_entries(v);
    let mut r = rng();
    for _ in 0..200 {
        let s = poll(&w, &pool("1,rawx"), &[], &[], &mut r).unwrap();
        assert_eq!(s.items[0].location, loc(1, 1, 2, 1));
    }
    assert!(poll(&w, &pool("2,rawx"), &[], &[], &mut r).is_err());
    // Negative scores (never computed) are weight 0 too.
    let w = World::from_entries(vec![entry("rawx", 0, loc(1, 1, 1, 1), -1, &[])]);
    assert_eq!(w.items()[0].weight, 0);
    assert!(poll(&w, &pool("1,rawx"), &[], &[], &mut r).is_err());
}

#[test]
fn weighted_choice_follows_scores() {
    let v = vec![
        entry("rawx", 0, loc(1, 1, 1, 1), 10, &[]),
        entry("rawx", 1, loc(1, 1, 2, 1), 30, &[]),
        entry("rawx", 2, loc(1, 1, 3, 1), 60, &[]),
    ];
    let w = World::from_entries(v);
    let p = pool("1,rawx");
    let mut r = StdRng::seed_from_u64(7);
    let mut counts = [0u32; 3];
    const N: u32 = 20_000;
    for _ in 0..N {
        let s = poll(&w, &p, &[], &[], &mut r).unwrap();
        let k = w.items().iter().position(|i| i.location == s.items[0].location).unwrap();
        counts[k] += 1;
    }
    for (c, want) in counts.iter().zip([10.0, 30.0, 60.0]) {
        let pct = f64::from(*c) * 100.0 / f64::from(N);
        assert!((pct - want).abs() < 2.0, "{counts:?}");
    }
}

#[test]
fn next_instances_returns_all_and_honours_slot() {
    let mut v = Vec::new();
    for h in 1..=6 {
        let slots: &[&str] = if h <= 3 { &["ssd"] } else { &[] };
        v.push(entry("rawx", v.len(), loc(1, 1, h, 1), 50, slots));
    }
    let w = World::from_entries(v);
    let mut r = rng();
    let s = next_instances(&w, "rawx", 3, None, &mut r).unwrap();
    assert_eq!(s.items.len(), 3);
    for _ in 0..20 {
        let s = next_instances(&w, "rawx", 3, Some("ssd"), &mut r).unwrap();
        assert_eq!(s.items.len(), 3);
        assert!(s.items.iter().all(|i| i.final_slot == "rawx-ssd"), "{s:?}");
        assert!(!s.flawed);
    }
    // More than the slot holds: the rest from the type, flawed.
    let s = next_instances(&w, "rawx", 5, Some("rawx-ssd"), &mut r).unwrap();
    assert_eq!(s.items.len(), 5);
    assert!(s.flawed);
    assert!(matches!(next_instances(&w, "rawx", 0, None, &mut r), Err(LbError::BadPool(_))));
}

#[test]
fn slots_from_tags() {
    let w = World::from_entries(vec![entry("rawx", 0, 1, 50, &["ssd", "rawx-usa", " "])]);
    let mut names: Vec<&str> = w.slot_names().collect();
    names.sort_unstable();
    assert_eq!(names, vec!["rawx", "rawx- ", "rawx-ssd", "rawx-usa"]);
}

#[test]
fn world_from_registry() {
    use crate::registry::{Registration, ScoreOp, TagValue, TypeConfig};
    let mut cfg = TypeConfig::new("rawx");
    cfg.lock_at_first_register = false;
    cfg.score_variation_bound = 0;
    let mut reg = Registry::new(vec![cfg]).unwrap();
    let tags = vec![
        ("tag.loc".to_owned(), TagValue::Str("dc1.r1.h1.v1".into())),
        ("tag.slots".to_owned(), TagValue::Str("ssd,rawx-eu".into())),
        ("tag.service_id".to_owned(), TagValue::Str("svc-1".into())),
    ];
    let r = Registration { type_name: "rawx".into(), addr: "10.0.0.1:6000".into(), tags, op: ScoreOp::Unset };
    reg.push(&r, 1_000_000).unwrap();
    let w = World::build(&reg);
    assert_eq!(w.items().len(), 1);
    let it = &w.items()[0];
    assert_eq!((it.id.as_str(), it.weight), ("svc-1", 100));
    assert_eq!(it.location, parse_location(Some("dc1.r1.h1.v1"), ""));
    assert_eq!(w.slot_len("rawx-ssd"), 1);
    assert_eq!(w.slot_len("rawx-eu"), 1);
    assert_eq!(w.items_by_id("10.0.0.1:6000").count(), 1);
    assert_eq!(w.abs_max_dist(), 4);
}

#[test]
fn lb_error_labels_are_unique() {
    let every = [
        LbError::UnknownPool("p".into()),
        LbError::BadPool(PoolError::NoTargets),
        LbError::TooManyKnown { known: 2, max: 2 },
        LbError::NotSatisfiable { slot: "rawx".into(), polled: 0, targets: 1, known: 0, in_slot: 0 },
    ];
    // An exhaustive match: a new variant does not compile until it is listed above.
    for e in &every {
        match e {
            LbError::UnknownPool(_)
            | LbError::BadPool(_)
            | LbError::TooManyKnown { .. }
            | LbError::NotSatisfiable { .. } => {}
        }
    }
    let labels: std::collections::BTreeSet<&str> = every.iter().map(LbError::label).collect();
    assert_eq!(labels.len(), every.len(), "{labels:?}");
}

/// A scratch kept across polls of different pools, and across `next_instances` with and
/// without a slot, picks what a fresh poll picks from the same draws; a refusal names what the
/// owned poll names.
#[test]
fn a_kept_scratch_polls_as_fresh_ones() {
    let mut v = Vec::new();
    for h in 0..6u64 {
        for d in 0..3u64 {
            let slots: &[&str] = if d == 0 { &["ssd"] } else { &[] };
            v.push(entry("rawx", v.len(), loc(1 + h % 2, 1 + h % 3, h + 1, d + 1), 20 + 5 * d as i32, slots));
        }
    }
    let w = World::from_entries(v);
    let ids: Vec<String> = w.items().iter().map(|i| i.id.clone()).collect();
    let mut scratch = PollScratch::default();
    for round in 0..3u64 {
        for (n, p) in
            ["2,rawx", "3,rawx-ssd,rawx;warn_dist=2", "1,rawx-ssd;2,rawx", "4,rawx;min_dist=4"].iter().enumerate()
        {
            let p = pool(p);
            let avoid = [ServiceRef::Id(&ids[n])];
            let known = [ServiceRef::Id(&ids[n + 3]), ServiceRef::Location(loc(9, 9, 9, 9))];
            let seed = round * 10 + n as u64;
            let owned = poll(&w, &p, &avoid, &known, &mut StdRng::seed_from_u64(seed));
            let kept = scratch
                .poll(&w, &p, avoid, known, &mut StdRng::seed_from_u64(seed))
                .map(|k| k.to_selection())
                .map_err(|r| r.to_error(&p.targets));
            assert_eq!(kept, owned, "{p:?}");
        }
        for (size, slot) in [(3, Some("ssd")), (2, None), (4, Some("rawx-ssd")), (1, Some(""))] {
            let seed = round * 10 + u64::from(size);
            let owned = next_instances(&w, "rawx", size, slot, &mut StdRng::seed_from_u64(seed));
            let kept = scratch
                .next_instances(&w, "rawx", size, slot, &mut StdRng::seed_from_u64(seed))
                .map(|k| k.to_selection());
            assert_eq!(kept.ok(), owned.ok(), "{size} {slot:?}");
        }
    }
    assert_eq!(scratch.next_instances(&w, "rawx", 0, None, &mut rng()).err(), Some(Refusal::BadPool));
    assert_eq!(scratch.next_instances(&w, "", 2, None, &mut rng()).err(), Some(Refusal::BadPool));
    assert!(next_instances(&w, "", 2, None, &mut rng()).is_err());
}
