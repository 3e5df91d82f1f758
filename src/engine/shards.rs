//! The sharded map of amphora states.
//!
//! Workers take each shard lock once per batch (see [`super::pipeline`]); readers (admin API)
//! lock one shard briefly to copy one amphora out.

use std::collections::HashMap;
use std::hash::BuildHasher;

use crossbeam::utils::CachePadded;
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;

use crate::proto::octavia::Uuid;
use crate::state::AmphoraState;

/// One shard: a map from amphora id to state.
pub type Shard = HashMap<Uuid, AmphoraState, FxBuildHasher>;

/// The amphora states, split into a power-of-two number of independently locked shards.
#[derive(Debug)]
pub struct Shards {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    mask: usize,
}

impl Shards {
    /// `n` is rounded up to a power of two.
    pub fn new(n: usize) -> Shards {
        let n = n.max(1).next_power_of_two();
        let shards = (0..n).map(|_| CachePadded::new(Mutex::new(Shard::default()))).collect();
        Shards { shards, mask: n - 1 }
    }

    /// The shard index of an id.
    #[inline]
    pub fn index(&self, id: &Uuid) -> usize {
        (FxBuildHasher.hash_one(id) as usize >> 7) & self.mask
    }

    /// The shard holding `id`.
    #[inline]
    pub fn shard(&self, i: usize) -> &Mutex<Shard> {
        &self.shards[i & self.mask]
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// A copy of one amphora's state.
    pub fn get(&self, id: &Uuid) -> Option<AmphoraState> {
        self.shard(self.index(id)).lock().get(id).cloned()
    }

    /// Calls `f` with one amphora's state, under its shard lock.
    pub fn with<R>(&self, id: &Uuid, f: impl FnOnce(&AmphoraState) -> R) -> Option<R> {
        self.shard(self.index(id)).lock().get(id).map(f)
    }

    /// Calls `f` with one amphora's state, mutably, under its shard lock.
    pub fn with_mut<R>(&self, id: &Uuid, f: impl FnOnce(&mut AmphoraState) -> R) -> Option<R> {
        self.shard(self.index(id)).lock().get_mut(id).map(f)
    }

    /// Removes an amphora; its state if it was there.
    pub fn remove(&self, id: &Uuid) -> Option<AmphoraState> {
        self.shard(self.index(id)).lock().remove(id)
    }

    /// Inserts a state (restored from the store) unless the amphora is already there.
    pub fn insert_if_absent(&self, id: Uuid, state: AmphoraState) {
        self.shard(self.index(&id)).lock().entry(id).or_insert(state);
    }

    /// Total number of amphorae (locks each shard in turn).
    pub fn count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}
