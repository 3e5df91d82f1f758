//! No heap allocation per packet in steady state: after a warm-up, the worker pipeline
//! processes batches of known amphorae (verify, inflate, parse, sequence window, apply) without
//! a single call to the allocator. Forged packets (rejected at the HMAC) allocate nothing either.
//! The same holds for service heartbeats parsed into a reused `ServiceBeat`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
/// The one thread whose allocations are counted (its mark's address), or 0: every thread. The
/// test harness's own threads allocate whenever a test ends or starts (its report, the next
/// test's thread), which a test counting on its own thread must not see.
static ONLY_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A per-thread address (const-initialised, no destructor: reading it never allocates).
    static MARK: u8 = const { 0 };
}

fn this_thread() -> usize {
    MARK.try_with(|m| std::ptr::from_ref(m) as usize).unwrap_or(usize::MAX)
}

fn counted() -> bool {
    COUNTING.load(Ordering::Relaxed) && {
        let only = ONLY_THREAD.load(Ordering::Relaxed);
        only == 0 || only == this_thread()
    }
}

/// Counts the calling thread's allocations (`true`) or stops counting.
fn count_here(on: bool) {
    ONLY_THREAD.store(if on { this_thread() } else { 0 }, Ordering::SeqCst);
    COUNTING.store(on, Ordering::SeqCst);
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counted() {
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
        if counted() {
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
        count_here(true);
        let mut accepted = 0;
        for (r, b) in batches.iter().enumerate().skip(5) {
            accepted += p.process(b.iter().map(|x| &x[..]), r as u64 * 1_000_000_000).accepted;
        }
        count_here(false);
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
    count_here(true);
    let mut ok = 0;
    for d in &docs {
        ok += usize::from(beat.parse(d).is_ok());
    }
    count_here(false);
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
    count_here(true);
    for i in 2..beats.len() {
        round(&mut host, &mut buf, i);
    }
    count_here(false);
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

/// A confd responder's request handling allocates nothing in steady state: the Ganeti mix of
/// `heartsink bench` against the test `config.data` and the Ganeti error answers (unknown
/// names, invalid queries), heartsink's types 100–105 from a populated snapshot (a `down` set
/// of 100,000 ids, whose `imbl` tree is several levels deep, and pools, polled from the thread
/// RNG and, in a cluster view, from a seeded one), with and without the replay cache, and
/// dropped requests (bad HMAC, replay, stale timestamp). Every request is signed beforehand with
/// a salt of its own.
#[test]
fn confd_requests_allocate_nothing() {
    use heartsink::confd::proto::{
        encode_request, parse_reply, DictQuery, HmacKey, Query, ReqField, Request, RequestType,
    };
    use heartsink::confd::replay::ReplayCache;
    use heartsink::confd::server::{handle, ConfdScratch, ConfdState};
    use heartsink::control::liveness::Live;
    use heartsink::control::{AmphoraHealth, Snapshot};
    use heartsink::proto::octavia::Uuid;
    use heartsink::state::OperatingStatus;
    use RequestType as T;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/confd");
    let key = HmacKey::from_file(data.join("hmac.key")).unwrap();
    let state = ConfdState::load(vec![key.clone()], Some(data.join("config.data.json"))).unwrap();

    let lb = Uuid::from_bytes([0xb0; 16]);
    let amphora = |i: u8| Uuid::from_bytes([i; 16]);
    let mut snap = Snapshot { generation: 42, ..Snapshot::default() };
    for i in 1..=40u8 {
        snap.amphorae.insert(
            amphora(i),
            AmphoraHealth {
                operating_status: OperatingStatus::Online,
                liveness: if i % 5 == 0 { Live::Stale } else { Live::Alive },
                last_refresh_ns: u64::from(i) * 1_000_000_000,
                first_seen_ns: 0,
                load_balancer: (i <= 4).then_some(lb),
                expected_listeners: None,
                zone: None,
                failover: None,
            },
        );
        if i <= 4 {
            snap.load_balancers.entry(lb).or_default().insert(amphora(i));
        }
        if i % 5 == 0 {
            snap.down.insert(amphora(i));
        }
    }
    let many = |i: u32| {
        let mut b = [0x7fu8; 16];
        b[..4].copy_from_slice(&i.to_be_bytes());
        Uuid::from_bytes(b)
    };
    for i in 0..100_000u32 {
        snap.down.insert(many(i));
    }
    snap.totals.received = 1000;
    let fixture = common::pools::snapshot(common::pools::rawx(), &common::pools::POOLS, false);
    (snap.world, snap.pools) = (fixture.world, fixture.pools);
    let view = Snapshot { cluster_view: true, generation: 7 << 32 | 42, ..snap.clone() };

    let plain = |s: &str| Query::Plain(s.to_owned());
    let dict = Query::Dict(DictQuery {
        link: Some("l\u{e4}nk".into()),
        ip: None,
        ip_list: vec!["198.51.100.11".into(), "\u{20ac}1".into()],
        fields: vec![],
    });
    let fields =
        Query::Dict(DictQuery { fields: vec![ReqField::MNodePip, ReqField::Ip, ReqField::Name], ..Default::default() });
    // (type, query, reply status)
    let mix = [
        (T::Ping, Query::Empty, 0),
        (T::ClusterMaster, Query::Empty, 0),
        (T::NodeRoleByName, plain("node1.example.com"), 0),
        (T::InstancesIpsList, Query::Empty, 0),
        (T::AmphoraHealth, plain(&amphora(7).to_string()), 0),
        (T::AmphoraHealth, plain(&amphora(99).to_string()), 1),
        (T::LbStatus, plain(&lb.to_string()), 0),
        (T::LbStatus, plain(&amphora(9).to_string()), 0),
        (T::DownSenders, Query::Empty, 0),
        (T::DownSenders, plain(&amphora(10).to_string()), 0),
        (T::DownSenders, plain(&many(54_321).to_string()), 0),
        (T::EngineCounters, Query::Empty, 0),
        (T::PoolNext, plain("rawx?size=2"), 0),
        (T::PoolNext, plain("rawx?size=3&slot=ssd"), 0),
        (T::PoolPoll, plain("two?avoid=rawx-1,rawx-2&known=rawx-4"), 0),
        (T::PoolPoll, plain("two?%61void=rawx-1+x,rawx-3&&known=10.0.0.7%3A6000"), 0),
        (T::PoolPoll, plain("t%77o?avoid=rawx-1"), 1),
        (T::PoolPoll, plain("ssd?known=rawx-0"), 0),
        (T::PoolPoll, plain("ssd?known=rawx-0,rawx-2,rawx-4"), 1),
        (T::PoolPoll, plain("far"), 1),
        (T::PoolPoll, plain("nope"), 1),
        (T::PoolNext, plain("rawx?size=0"), 1),
        (T::PoolNext, plain("rawx?size=300"), 1),
        (T::PoolNext, plain("rawx?what=1"), 1),
        (T::PoolNext, Query::Empty, 1),
        (T::NodeRoleByName, plain("n\u{f6}pe1"), 1),
        (T::NodeRoleByName, Query::Empty, 1),
        (T::NodeRoleByName, dict.clone(), 1),
        (T::NodeDrbd, plain("nope"), 1),
        (T::NodeDrbd, dict.clone(), 1),
        (T::NodeInstances, plain("node"), 1),
        (T::InstanceDisks, plain("nope"), 1),
        (T::InstancesIpsList, dict.clone(), 1),
        (T::ClusterMaster, plain("x"), 1),
        (T::NodePipByInstanceIp, Query::Empty, 1),
        (T::NodePipByInstanceIp, Query::Dict(DictQuery { ip: Some("198.51.100.11".into()), ..Default::default() }), 0),
        (T::NodePipByInstanceIp, dict.clone(), 0),
        (T::ClusterMaster, fields, 0),
        (T::NodePipList, Query::Empty, 0),
        (T::McPipList, Query::Empty, 0),
        (T::NodeDrbd, plain("node1.example.com"), 0),
        (T::NodeInstances, plain("node3"), 0),
        (T::InstanceDisks, plain("instance1"), 0),
        (T::ConfigQuery, plain("/cluster/cluster_name"), 0),
        (T::ConfigQuery, plain("/nodes"), 0),
        (T::ConfigQuery, plain("/cluster/x~1y"), 1),
        (T::DataCollectors, Query::Empty, 0),
    ];
    let now = 1_700_000_000;
    let rounds = 20;
    let signed = |tag: &str, at: i64, key: &HmacKey| -> Vec<Vec<u8>> {
        (0..rounds)
            .flat_map(|r| mix.iter().enumerate().map(move |(i, q)| (r, i, q)))
            .map(|(r, i, (kind, query, _))| {
                let rsalt = format!("{tag}-{r}-{i}-00000000-0000-4000-8000-000000000000");
                encode_request(&Request::new(*kind, query.clone(), rsalt), at, key)
            })
            .collect()
    };
    let warm = signed("warm", now, &key);
    let fresh = signed("fresh", now, &key);
    let viewed = signed("viewed", now, &key);
    let cached = signed("cached", now, &key);
    let forged = signed("forged", now, &HmacKey::new(b"another key\n"));
    let stale = signed("stale", now - 301, &key);

    let cache = ReplayCache::new(1 << 15);
    let mut scratch = ConfdScratch::default();
    let mut out = Vec::new();
    // Allocations counted per entry of the mix (the packets are in mix order).
    let mut per_entry = vec![0u64; mix.len()];
    let mut run = |packets: &[Vec<u8>], replay: Option<&ReplayCache>, snap: &Snapshot| -> (usize, usize) {
        let (mut ok, mut dropped) = (0, 0);
        for (k, p) in packets.iter().enumerate() {
            out.clear();
            let before = ALLOCS.load(Ordering::SeqCst);
            match handle(p, now, &state, Some(snap), replay, &mut scratch, &mut out) {
                Ok(()) => ok += 1,
                Err(_) => dropped += 1,
            }
            per_entry[k % mix.len()] += ALLOCS.load(Ordering::SeqCst) - before;
        }
        (ok, dropped)
    };
    // Warm-up: every buffer grows to the largest request and reply; the thread's first use
    // of anything lazily initialised happens here.
    assert_eq!(run(&warm, Some(&cache), &snap), (warm.len(), 0));
    assert_eq!(run(&warm, None, &snap), (warm.len(), 0));
    assert_eq!(run(&warm, None, &view), (warm.len(), 0));

    count_here(true);
    let answered = run(&fresh, None, &snap);
    let answered_view = run(&viewed, None, &view);
    let answered_cached = run(&cached, Some(&cache), &snap);
    let replayed = run(&cached, Some(&cache), &snap);
    let forged_out = run(&forged, Some(&cache), &snap);
    let stale_out = run(&stale, Some(&cache), &snap);
    count_here(false);
    let allocs = ALLOCS.swap(0, Ordering::SeqCst);

    assert_eq!(answered, (fresh.len(), 0));
    assert_eq!(answered_view, (viewed.len(), 0));
    assert_eq!(answered_cached, (cached.len(), 0));
    assert_eq!(replayed, (0, cached.len()), "replays dropped");
    assert_eq!(forged_out, (0, forged.len()), "bad HMAC dropped");
    assert_eq!(stale_out, (0, stale.len()), "stale timestamps dropped");
    // DOWN_SENDERS walks its page through imbl's range iterator, which allocates its path
    // stack through a tree of more than one level: at most one allocation per request.
    let (down, rest): (Vec<_>, Vec<_>) = mix.iter().zip(&per_entry).partition(|((t, _, _), _)| *t == T::DownSenders);
    let allocating: Vec<_> = rest.iter().filter(|(_, n)| **n > 0).collect();
    assert!(allocating.is_empty(), "allocations in steady state, by request: {allocating:?}");
    let down_requests = ((answered.0 + answered_view.0 + answered_cached.0) / mix.len()) as u64;
    for (q, n) in &down {
        assert!(**n <= down_requests, "{q:?}: {n} allocations in {down_requests} requests");
    }
    let down_allocs: u64 = down.iter().map(|(_, n)| **n).sum();
    assert_eq!(allocs, down_allocs, "allocations outside the per-request counts");

    // The counter sees this path: a responder's buffers allocate as they grow.
    count_here(true);
    out.clear();
    let first = handle(&fresh[0], now, &state, Some(&snap), None, &mut ConfdScratch::default(), &mut out);
    count_here(false);
    assert_eq!(first, Ok(()));
    assert!(ALLOCS.swap(0, Ordering::SeqCst) > 0, "the counting allocator counts the confd path");

    // The replies verify (outside the counted region), with the expected status.
    for (i, p) in fresh.iter().take(mix.len()).enumerate() {
        out.clear();
        let cache = ReplayCache::new(1 << 8);
        handle(p, now, &state, Some(&snap), Some(&cache), &mut ConfdScratch::default(), &mut out).unwrap();
        let (salt, reply) = parse_reply(&out, &key).unwrap();
        assert_eq!(salt, format!("fresh-0-{i}-00000000-0000-4000-8000-000000000000"));
        assert_eq!(reply.status, mix[i].2, "{:?}: {reply:?}", mix[i]);
        if mix[i].0 == T::DownSenders {
            assert_eq!(reply.answer["total"], 100_008, "{reply:?}");
            let full = mix[i].1 != plain(&amphora(10).to_string());
            assert_eq!(reply.answer["ids"].as_array().map(Vec::len), Some(if full { 150 } else { 6 }), "{reply:?}");
        }
    }
}
