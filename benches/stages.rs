//! Per-stage costs of the heartbeat path on real Octavia packets (`tests/data/octavia/`):
//! `verify` (HMAC-SHA256 tag), `inflate` (the three back-ends, reused or fresh decompressor),
//! `parse` (typed parse against a generic `serde_json::Value`), `pipeline` (a whole worker batch
//! of 64 distinct amphorae, also with 10% forged packets) and `ring` (hand-off of a boxed batch).
//!
//! Run with `cargo bench --bench stages`. Throughput is in elements: packets for the stage and
//! pipeline groups, batches for the ring group.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use heartsink::engine::{Batch, DropReason, ManualClock, Pipeline, PipelineShared, Settings, Shards, WorkerCounters};
use heartsink::proto::envelope::{self, TagForm};
use heartsink::proto::inflate::{Backend, Inflater, DEFAULT_MAX_INFLATED};
use heartsink::proto::keyring::{Key, Keyring};
use heartsink::proto::octavia::Heartbeat;

macro_rules! vector {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/octavia/", $name))
    };
}

/// `v3_small_hex`: 352-byte envelope, 485-byte JSON, key "insecure".
const SMALL_BIN: &[u8] = vector!("v3_small_hex.bin");
const SMALL_JSON: &[u8] = vector!("v3_small_hex.json");
const SMALL_KEY: &[u8] = vector!("v3_small_hex.key");
/// `v3_large_hex_utf8key`: 24,435-byte envelope, 51,943-byte JSON (1004 members).
const LARGE_BIN: &[u8] = vector!("v3_large_hex_utf8key.bin");
const LARGE_JSON: &[u8] = vector!("v3_large_hex_utf8key.json");
const LARGE_KEY: &[u8] = vector!("v3_large_hex_utf8key.key");
/// `v3_small_hex.bin` with the last tag digit changed: no key verifies it.
const FORGED_BIN: &[u8] = vector!("neg_v3_bad_hmac.bin");

/// Amphorae per pipeline batch.
const AMPHORAE: usize = 64;
/// Pre-built rounds per amphora (seq 0..ROUNDS-1, so every seq stays below the window width).
const ROUNDS: usize = 64;
/// Time between two rounds (an amphora's heartbeat interval); more than the 5 s restart gap.
const ROUND_NS: u64 = 10_000_000_000;

fn ring(keys: &[&[u8]]) -> Keyring {
    Keyring::from_bytes(keys.iter().copied(), 0)
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    let small = ring(&[SMALL_KEY]);
    let large = ring(&[LARGE_KEY]);
    let rotated = ring(&[b"old-key-1", b"old-key-2", SMALL_KEY]);
    assert_eq!(envelope::verify(SMALL_BIN, &small).unwrap().key_index(), 0);
    assert_eq!(envelope::verify(LARGE_BIN, &large).unwrap().key_index(), 0);
    assert_eq!(envelope::verify(SMALL_BIN, &rotated).unwrap().key_index(), 2);
    assert_eq!(envelope::verify(FORGED_BIN, &small).unwrap_err(), envelope::EnvelopeError::NoKeyMatched);
    assert_eq!(envelope::verify(FORGED_BIN, &rotated).unwrap_err(), envelope::EnvelopeError::NoKeyMatched);

    g.bench_function("small_352B/1key", |b| b.iter(|| envelope::verify(black_box(SMALL_BIN), &small).is_ok()));
    g.bench_function("large_24KB/1key", |b| b.iter(|| envelope::verify(black_box(LARGE_BIN), &large).is_ok()));
    g.bench_function("small_352B/3keys_match_last", |b| {
        b.iter(|| envelope::verify(black_box(SMALL_BIN), &rotated).is_ok())
    });
    g.bench_function("forged_small/1key", |b| b.iter(|| envelope::verify(black_box(FORGED_BIN), &small).is_ok()));
    g.bench_function("forged_small/3keys", |b| b.iter(|| envelope::verify(black_box(FORGED_BIN), &rotated).is_ok()));
    g.finish();
}

fn inflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("inflate");
    g.throughput(Throughput::Elements(1));
    let small = ring(&[SMALL_KEY]);
    let large = ring(&[LARGE_KEY]);
    let small_z = envelope::verify(SMALL_BIN, &small).unwrap().payload();
    let large_z = envelope::verify(LARGE_BIN, &large).unwrap().payload();
    for (backend, name) in
        [(Backend::Small, "small"), (Backend::Libdeflate, "libdeflate"), (Backend::ZlibRs, "zlib-rs")]
    {
        for (size, z, json) in [("small", small_z, SMALL_JSON), ("large", large_z, LARGE_JSON)] {
            let mut inf = Inflater::new(backend, DEFAULT_MAX_INFLATED);
            assert_eq!(inf.inflate_bytes(z).unwrap(), json, "{name} {size}");
            g.bench_function(BenchmarkId::new(format!("{name}/reused"), size), |b| {
                b.iter(|| inf.inflate_bytes(black_box(z)).map(<[u8]>::len))
            });
            g.bench_function(BenchmarkId::new(format!("{name}/new_per_packet"), size), |b| {
                b.iter(|| Inflater::new(backend, DEFAULT_MAX_INFLATED).inflate_bytes(black_box(z)).map(<[u8]>::len))
            });
        }
    }
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (size, json) in [("small", SMALL_JSON), ("large", LARGE_JSON)] {
        let mut hb = Heartbeat::default();
        hb.parse(json).unwrap();
        assert!(hb.member_count() > 0);
        g.bench_function(BenchmarkId::new("heartbeat_reused", size), |b| b.iter(|| hb.parse(black_box(json)).is_ok()));
        g.bench_function(BenchmarkId::new("serde_json_value", size), |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(json)).unwrap())
        });
    }
    g.finish();
}

/// A well-spread, deterministic amphora id.
fn amphora_id(i: usize) -> String {
    let mut x = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut bytes = [0u8; 16];
    for half in bytes.chunks_mut(8) {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        half.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string()
}

/// `ROUNDS` batches of `AMPHORAE` small heartbeats: batch `r` holds every amphora's `seq = r`.
/// Packet `k` (counted over all batches) is replaced by a forged one when `forged_every` divides
/// it. Returns the batches and the number of forged packets in each.
fn build_rounds(forged_every: Option<usize>) -> (Vec<Batch>, Vec<u64>) {
    let template = std::str::from_utf8(SMALL_JSON).unwrap();
    let template_id = "79c8c292-6b94-45b5-b498-82321e35049e";
    assert_eq!(template.matches(template_id).count(), 1);
    assert_eq!(template.matches("\"seq\": 1,").count(), 1);
    let key = Key::new(b"insecure");
    let ids: Vec<String> = (0..AMPHORAE).map(amphora_id).collect();
    let mut batches = Vec::new();
    let mut forged = Vec::new();
    for r in 0..ROUNDS {
        let mut batch = Batch::new(AMPHORAE, AMPHORAE * 1024);
        let mut n_forged = 0;
        for (i, id) in ids.iter().enumerate() {
            let json = template.replace(template_id, id).replace("\"seq\": 1,", &format!("\"seq\": {r},"));
            let mut env = envelope::wrap(json.as_bytes(), &key, TagForm::Hex);
            if forged_every.is_some_and(|n| (r * AMPHORAE + i).is_multiple_of(n)) {
                // A hex tag no key produces: the cheapest forgery still costs one HMAC per key.
                let last = env.len() - 1;
                env[last] = if env[last] == b'0' { b'1' } else { b'0' };
                n_forged += 1;
            }
            assert!(batch.push(&env, 0, 0));
        }
        batches.push(batch);
        forged.push(n_forged);
    }
    (batches, forged)
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(AMPHORAE as u64));
    for (name, forged_every) in [("64_amphorae", None), ("64_amphorae_10pct_forged", Some(10))] {
        let (batches, forged) = build_rounds(forged_every);
        let shared = PipelineShared {
            keyring: Arc::new(ArcSwap::from_pointee(ring(&[SMALL_KEY]))),
            settings: Arc::new(ArcSwap::from_pointee(Settings::default())),
            shards: Arc::new(Shards::new(64)),
            clock: Arc::new(ManualClock::new(0)),
            services: Default::default(),
        };
        let counters = Arc::new(WorkerCounters::default());
        let mut p = Pipeline::new(shared.clone(), Backend::default(), counters.clone(), None);
        // Rounds advance by 10 s and seq by 1 (every packet `Advanced`); when the cycle wraps
        // to seq 0 the amphorae are recognised as restarted (seq < 64 after ≥ 5 s), so every
        // genuine packet of every measured batch is accepted. Check one full cycle plus the wrap
        // here, and the counters of every measured batch after the bench.
        let mut now = 1_700_000_000_000_000_000u64;
        for (r, batch) in batches.iter().chain(&batches[..1]).enumerate() {
            now += ROUND_NS;
            let t = p.process(batch.packets(), now);
            let n_forged = forged[r % ROUNDS];
            assert_eq!(t.packets, AMPHORAE as u64, "round {r}");
            assert_eq!(t.accepted, AMPHORAE as u64 - n_forged, "round {r}: {t:?}");
            assert_eq!(t.drops[DropReason::NoKeyMatched as usize], n_forged, "round {r}");
        }
        assert_eq!(shared.shards.count(), AMPHORAE);
        let mut r = 1;
        g.bench_function(name, |b| {
            b.iter(|| {
                now += ROUND_NS;
                let t = p.process(batches[r].packets(), now);
                r = (r + 1) % ROUNDS;
                t.accepted
            })
        });
        let packets = counters.packets.load(Ordering::Relaxed);
        let accepted = counters.accepted.load(Ordering::Relaxed);
        let no_key = counters.drops[DropReason::NoKeyMatched as usize].load(Ordering::Relaxed);
        let other_drops: u64 = counters.drops.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>() - no_key;
        assert_eq!(accepted + no_key, packets, "{name}: every genuine packet accepted");
        assert_eq!(other_drops, 0, "{name}: no replay/stale/other drops");
        if forged_every.is_none() {
            assert_eq!(no_key, 0);
        } else {
            // ≈10% forged over the whole run.
            let share = no_key as f64 / packets as f64;
            assert!((0.09..0.11).contains(&share), "{name}: forged share {share}");
        }
    }
    g.finish();
}

fn ring_handoff(c: &mut Criterion) {
    // Single thread: one push and one pop of the same boxed batch per iteration (the cost of
    // the operations themselves, without cross-core cache traffic or wake-ups).
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let new_batch = || Box::new(Batch::new(128, 256 << 10));
    {
        let (tx, rx) = crossbeam::channel::bounded::<Box<Batch>>(64);
        let mut slot = Some(new_batch());
        g.bench_function("channel_bounded/push_pop", |b| {
            b.iter(|| {
                tx.try_send(slot.take().unwrap()).unwrap();
                slot = Some(rx.try_recv().unwrap());
            })
        });
    }
    {
        let q = crossbeam::queue::ArrayQueue::<Box<Batch>>::new(64);
        let mut slot = Some(new_batch());
        g.bench_function("array_queue/push_pop", |b| {
            b.iter(|| {
                q.push(slot.take().unwrap()).unwrap();
                slot = Some(q.pop().unwrap());
            })
        });
    }
    g.finish();
}

/// Applying parsed heartbeats to the state: a batch of 64 known amphorae, each shard locked once
/// per run of its amphorae, as a worker does. The messages carry no `seq`, so the sequence
/// window lets the same parsed batch apply again and again.
fn apply(c: &mut Criterion) {
    use heartsink::state::AmphoraState;
    let template = std::str::from_utf8(SMALL_JSON).unwrap().replace("\"seq\": 1, ", "");
    let parsed: Vec<Heartbeat> = (0..AMPHORAE)
        .map(|i| {
            let mut hb = Heartbeat::default();
            hb.parse(template.replace("79c8c292-6b94-45b5-b498-82321e35049e", &amphora_id(i)).as_bytes()).unwrap();
            assert_eq!(hb.seq, None);
            hb
        })
        .collect();
    let shards = Shards::new(64);
    let mut order: Vec<(usize, usize)> = parsed.iter().enumerate().map(|(i, hb)| (shards.index(&hb.id), i)).collect();
    order.sort_unstable();
    let mut now = 1u64;
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(AMPHORAE as u64));
    g.bench_function("batch_64_known_amphorae", |b| {
        b.iter(|| {
            now += ROUND_NS;
            let mut i = 0;
            while i < order.len() {
                let s = order[i].0;
                let mut shard = shards.shard(s).lock();
                while i < order.len() && order[i].0 == s {
                    let hb = &parsed[order[i].1];
                    let st = shard.entry(hb.id).or_insert_with(|| AmphoraState::new(now));
                    black_box(st.apply(hb, now, 5_000_000_000).is_ok());
                    i += 1;
                }
            }
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20)
}

criterion_group! {
    name = stages;
    config = config();
    targets = verify, inflate, parse, apply, pipeline, ring_handoff
}
criterion_main!(stages);
