//! No heap allocation per packet in steady state: after a warm-up, the worker pipeline
//! processes batches of known amphorae (verify, inflate, parse, sequence window, apply) without
//! a single call to the allocator. Forged packets (rejected at the HMAC) allocate nothing either.
//! The same holds for service heartbeats parsed into a reused `ServiceBeat`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use heartsink::engine::{ManualClock, Pipeline, PipelineShared, Settings, Shards, WorkerCounters};
use heartsink::proto::inflate::Backend;
use heartsink::proto::keyring::Keyring;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// The counter is global: tests that count take this lock so that they do not count each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_pipeline_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for backend in [Backend::Small, Backend::Libdeflate, Backend::ZlibRs] {
        let shared = PipelineShared {
            keyring: Arc::new(ArcSwap::from_pointee(Keyring::from_strs(&["k"], 0))),
            settings: Arc::new(ArcSwap::from_pointee(Settings::default())),
            shards: Arc::new(Shards::new(16)),
            clock: Arc::new(ManualClock::new(0)),
            services: Default::default(),
        };
        let mut p = Pipeline::new(shared, backend, Arc::new(WorkerCounters::default()), None);
        let amphorae = 64;
        let rounds = 30;
        let batches: Vec<Vec<Vec<u8>>> = (0..rounds)
            .map(|r| {
                let mut b: Vec<Vec<u8>> = (0..amphorae).map(|a| common::heartbeat(a, r, 7, "k")).collect();
                b.push(common::heartbeat(1, r + 1000, 7, "forged"));
                b
            })
            .collect();
        // Warm-up: new amphorae, scratch growth, change log.
        for (r, b) in batches.iter().take(5).enumerate() {
            p.process(b.iter().map(|x| &x[..]), r as u64 * 1_000_000_000);
            p.take_changes();
        }
        COUNTING.store(true, Ordering::SeqCst);
        let mut accepted = 0;
        for (r, b) in batches.iter().enumerate().skip(5) {
            accepted += p.process(b.iter().map(|x| &x[..]), r as u64 * 1_000_000_000).accepted;
        }
        COUNTING.store(false, Ordering::SeqCst);
        assert_eq!(accepted, (rounds - 5) * amphorae, "{backend:?}: every steady-state heartbeat applied");
        assert_eq!(ALLOCS.swap(0, Ordering::SeqCst), 0, "{backend:?}: allocations in steady state");
    }
}

#[test]
fn service_beat_reparse_allocates_nothing() {
    use heartsink::proto::service::{build_service_json, ServiceBeat, TagValue};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two senders of the same shape, different values (and one with an ignored tag).
    let docs: Vec<Vec<u8>> = (0..40u64)
        .map(|i| {
            let mut b = ServiceBeat::new("rawx", "127.0.0.1:6000".parse().unwrap(), i);
            b.set_id(Some("rawx-1"));
            b.set_tag("tag.up", TagValue::Bool(i % 3 != 0));
            b.set_tag("tag.loc", TagValue::Str(format!("dc1.rack{}.host1.vol1", i % 2)));
            b.set_tag("tag.slots", TagValue::Str("rawx-ssd,rawx-even".into()));
            b.set_tag("stat.cpu", TagValue::Float(97.5 - i as f64));
            b.set_tag("stat.io", TagValue::Int(88));
            b.set_tag("stat.space", TagValue::Float(42.1));
            b.set_tag("other", TagValue::Int(1));
            build_service_json(&b)
        })
        .collect();
    let mut beat = ServiceBeat::default();
    for d in docs.iter().take(2) {
        beat.parse(d).unwrap();
    }
    COUNTING.store(true, Ordering::SeqCst);
    let mut ok = 0;
    for d in &docs {
        ok += usize::from(beat.parse(d).is_ok());
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(ok, docs.len());
    assert_eq!(beat.tags().len(), 6);
    assert_eq!(beat.ignored_tags, 1);
    assert_eq!(ALLOCS.swap(0, Ordering::SeqCst), 0, "allocations in steady state");
}

/// A known service's heartbeat applied to the registry allocates nothing, a string tag that
/// changes value included; in cluster mode, neither does keeping it for the peers (the relay
/// buffer the digests read).
#[test]
fn relayed_service_beat_allocates_nothing() {
    use heartsink::control::cluster::RelayBuffer;
    use heartsink::control::services::{ServiceHost, ServicesConfig};
    use heartsink::proto::service::{build_service_json, ServiceBeat, TagValue};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let beats: Vec<ServiceBeat> = (0..40u64)
        .map(|i| {
            let mut b = ServiceBeat::new("rawx", "127.0.0.1:6000".parse().unwrap(), i);
            b.set_tag("tag.loc", TagValue::Str(format!("dc1.rack{}.host1.vol1", i % 2)));
            b.set_tag("stat.cpu", TagValue::Float(97.5 - i as f64));
            b.set_tag("stat.io", TagValue::Int(88));
            b.set_tag("stat.space", TagValue::Float(42.1));
            let mut parsed = ServiceBeat::default();
            parsed.parse(&build_service_json(&b)).unwrap();
            parsed
        })
        .collect();
    let mut host = ServiceHost::new(ServicesConfig::default()).unwrap();
    host.set_relaying(true);
    let mut buf = RelayBuffer::default();
    let mut key = String::new();
    let mut round = |host: &mut ServiceHost, buf: &mut RelayBuffer, i: usize| {
        host.apply_beats(&beats[i..=i], 1_000_000 + i as u64);
        for r in host.relayed() {
            buf.put(&mut key, i as u64, r);
        }
        host.clear_relayed();
    };
    for i in 0..2 {
        round(&mut host, &mut buf, i);
    }
    COUNTING.store(true, Ordering::SeqCst);
    for i in 2..beats.len() {
        round(&mut host, &mut buf, i);
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(buf.heard.len(), 1);
    let (at, r) = buf.heard.values().next().unwrap();
    assert_eq!((*at, r.tags.len() >= 4), (39, true), "{r:?}");
    assert_eq!(ALLOCS.swap(0, Ordering::SeqCst), 0, "allocations in steady state");
}

/// The load generator's send loop allocates nothing per packet, with one target or several:
/// a run of 10× the packets allocates as often as a short one (only the set-up allocates).
#[test]
fn load_sender_allocates_nothing_per_packet() {
    use heartsink::load::{run, LoadConfig};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sinks: Vec<std::net::UdpSocket> = (0..3).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<std::net::SocketAddr> = sinks.iter().map(|s| s.local_addr().unwrap()).collect();
    for targets in [vec![addrs[0]], addrs.clone()] {
        let allocs = |count: u64| {
            let cfg = LoadConfig {
                targets: targets.clone(),
                key: "k".into(),
                amphorae: 50,
                count: Some(count),
                duration: None,
                ..LoadConfig::default()
            };
            ALLOCS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            let report = run(&cfg, &AtomicBool::new(false), false).unwrap();
            COUNTING.store(false, Ordering::SeqCst);
            assert_eq!(report.total, count);
            assert_eq!(report.targets.iter().map(|t| t.sent + t.errors).sum::<u64>(), count);
            ALLOCS.swap(0, Ordering::SeqCst)
        };
        let (short, long) = (allocs(500), allocs(5000));
        assert!(long <= short + 2, "{} target(s): {short} allocations for 500 packets, {long} for 5000", targets.len());
    }
}
