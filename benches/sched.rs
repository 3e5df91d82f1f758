//! Scheduler costs: placement throughput (100 000 volumes over 1 000 machines, created then
//! ticked until all are placed) and the cost of one tick with 100 000 volumes placed when
//! nothing changed (against the same tick with no volume: the cost is the comparison of the
//! 1 000-machine list), or when one machine's `available` changed.
//!
//! Run with `cargo bench --bench sched`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use heartsink::sched::{Machine, Report, SchedConfig, Scheduler, Spec};

const GIB: u64 = 1 << 30;
const SEC: u64 = 1_000_000_000;
const VOLUMES: u64 = 100_000;
const MACHINES: u64 = 1_000;

fn machines() -> Vec<Machine> {
    (0..MACHINES)
        .map(|i| {
            let mut labels = vec![format!("rack{}", i % 10)];
            if i % 2 == 0 {
                labels.push("ssd".into());
            }
            Machine::new(format!("m{i:04}"), 8192 * GIB + i * GIB, labels)
        })
        .collect()
}

/// 100 000 unplaced volumes of 1–100 GiB: 20 % need `ssd`, 10 % a given rack.
fn created() -> Scheduler {
    let mut s = Scheduler::new(SchedConfig { max_work_per_tick: usize::MAX, ..SchedConfig::default() });
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..VOLUMES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = (x % 100 + 1) * GIB;
        let constraints = match i % 10 {
            0 | 1 => vec!["ssd".to_owned()],
            2 => vec![format!("rack{}", x % 10)],
            _ => vec![],
        };
        s.create("v", Spec { reserved_size: size, constraints }, None, 0).unwrap();
    }
    s
}

fn place_all(s: &mut Scheduler, machines: &[Machine], now: u64) {
    loop {
        let rep = s.tick(now, machines, true);
        if rep.backlog == 0 {
            break;
        }
    }
}

/// 100 000 volumes placed; half reported ready, half still within `delay` of their placement.
fn placed(machines: &[Machine]) -> Scheduler {
    let mut s = created();
    place_all(&mut s, machines, 0);
    let ids: Vec<(u64, String)> =
        s.list(None).filter(|v| v.id % 2 == 0).map(|v| (v.id, v.node.clone().unwrap())).collect();
    for (id, node) in ids {
        s.report(id, &node, Report::Ready, 1).unwrap();
    }
    assert_eq!(s.list(None).filter(|v| v.node.is_none()).count(), 0);
    s.take_dirty();
    s
}

fn bench(c: &mut Criterion) {
    let ms = machines();
    let mut g = c.benchmark_group("sched");
    g.sample_size(10);
    g.throughput(Throughput::Elements(VOLUMES));
    g.bench_function("create_100k", |b| b.iter(|| black_box(created())));
    g.bench_function("place_100k_over_1k_machines", |b| {
        b.iter_batched(created, |mut s| place_all(&mut s, &ms, 0), BatchSize::PerIteration)
    });

    g.sample_size(100);
    g.throughput(Throughput::Elements(1));
    let mut empty = Scheduler::new(SchedConfig::default());
    empty.tick(0, &ms, true);
    g.bench_function("idle_tick_no_volumes", |b| b.iter(|| empty.tick(black_box(SEC), &ms, true)));
    let mut s = placed(&ms);
    s.tick(SEC, &ms, true);
    g.bench_function("idle_tick_100k_placed", |b| {
        b.iter(|| {
            let rep = s.tick(black_box(2 * SEC), &ms, true);
            assert_eq!(rep.processed, 0);
        })
    });
    let mut other = ms.clone();
    other[500].available -= GIB;
    let mut flip = false;
    g.bench_function("tick_one_machine_changed_100k_placed", |b| {
        b.iter(|| {
            flip = !flip;
            s.tick(black_box(2 * SEC), if flip { &other } else { &ms }, true)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
