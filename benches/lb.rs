//! Load-balancer costs over a realistic world: 10,000 services spread over 3 DCs × 10 racks ×
//! 30 hosts (~11 services a host), scores 1..=100.
//!
//! * `next_instances/3`: `GET /lb/choose?type=rawx&size=3` (3 picks, default pool).
//! * `poll/3_min_dist_2_known_1`: a 3-target pool with `min_dist=2` completing a set with one
//!   known service (2 picks).
//! * `world_build/10k`: [`World::build`] from the registry (once per LB refresh, every few s).
//! * `registry_push/refresh`: a heartbeat refreshing an existing service with the same tag
//!   names (no allocation on this path).
//!
//! Run with `cargo bench --bench lb`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use heartsink::registry::lb::{next_instances, poll, Pool, ServiceRef, World};
use heartsink::registry::{Registration, Registry, ScoreOp, TagValue, TypeConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SERVICES: usize = 10_000;
const DCS: usize = 3;
const RACKS: usize = 10;
const HOSTS: usize = 30;

fn registry() -> Registry {
    let mut cfg = TypeConfig::new("rawx").with_expr("num stat.cpu");
    cfg.lock_at_first_register = false;
    cfg.score_variation_bound = 0;
    let mut reg = Registry::new(vec![cfg]).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let hosts = DCS * RACKS * HOSTS;
    for n in 0..SERVICES {
        let h = n % hosts;
        let (dc, rack, host) = (h / (RACKS * HOSTS), (h / HOSTS) % RACKS, h % HOSTS);
        let vol = n / hosts;
        let addr = format!("10.{dc}.{}.{}:{}", rack, host + 1, 6000 + vol);
        let tags = vec![
            ("tag.loc".to_owned(), TagValue::Str(format!("dc{dc}.rack{rack}.host{host}.vol{vol}"))),
            ("stat.cpu".to_owned(), TagValue::Int(rng.random_range(1..=100))),
        ];
        let r = Registration { type_name: "rawx".into(), addr, tags, op: ScoreOp::Unset };
        reg.push(&r, 1_000_000).unwrap();
    }
    reg
}

fn bench(c: &mut Criterion) {
    let reg = registry();
    let world = World::build(&reg);
    assert_eq!(world.slot_len("rawx"), SERVICES);
    let mut rng = StdRng::seed_from_u64(2);

    let mut reg2 = registry();
    let mut beat = Registration {
        type_name: "rawx".into(),
        addr: "10.0.0.1:6000".into(),
        tags: vec![
            ("tag.loc".to_owned(), TagValue::Str("dc0.rack0.host0.vol0".into())),
            ("stat.cpu".to_owned(), TagValue::Int(50)),
        ],
        op: ScoreOp::Unset,
    };
    let mut now = 2_000_000u64;
    c.bench_function("registry_push/refresh", |b| {
        b.iter(|| {
            now += 1_000_000;
            beat.tags[1].1 = TagValue::Int((now / 1_000_000 % 100) as i64);
            black_box(reg2.push(&beat, now).unwrap())
        })
    });

    c.bench_function("world_build/10k", |b| b.iter(|| black_box(World::build(black_box(&reg)))));

    c.bench_function("next_instances/3", |b| {
        b.iter(|| {
            let s = next_instances(&world, "rawx", 3, None, &mut rng).unwrap();
            black_box(s)
        })
    });

    let pool = Pool::parse("three", "3,rawx;min_dist=2").unwrap();
    let known_ids: Vec<String> = world.items().iter().step_by(97).map(|i| i.id.clone()).collect();
    let mut k = 0;
    c.bench_function("poll/3_min_dist_2_known_1", |b| {
        b.iter(|| {
            k = (k + 1) % known_ids.len();
            let known = [ServiceRef::Id(&known_ids[k])];
            let s = poll(&world, &pool, &[], &known, &mut rng).unwrap();
            assert_eq!(s.items.len(), 2);
            black_box(s)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
