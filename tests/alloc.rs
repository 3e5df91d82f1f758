//! No heap allocation per packet in steady state: after a warm-up, the worker pipeline
//! processes batches of known amphorae (verify, inflate, parse, sequence window, apply) without
//! a single call to the allocator. Forged packets (rejected at the HMAC) allocate nothing either.
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
    for backend in [Backend::Libdeflate, Backend::ZlibRs] {
        let shared = PipelineShared {
            keyring: Arc::new(ArcSwap::from_pointee(Keyring::from_strs(&["k"], 0))),
            settings: Arc::new(ArcSwap::from_pointee(Settings::default())),
            shards: Arc::new(Shards::new(16)),
            clock: Arc::new(ManualClock::new(0)),
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
