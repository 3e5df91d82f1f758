//! Writing behind, on the control thread: each flush hands the rows the parts queued, the
//! amphorae marked for rewriting (read from the shards, at most [`FLUSH_MAX`] a flush) and
//! the store sweep's share to the [`Durable`](super::persist::Durable); a backlog larger than
//! one flush is written a bounded flush per round.

use std::sync::atomic::Ordering;

use super::persist::Writes;
use super::{Control, BACKLOG_IN_FLIGHT, FLUSH_LOCK_ROWS, FLUSH_MAX};
use crate::store::{Key, Table};

impl Control {
    /// Flushes a backlog of marked amphorae larger than one flush (a fleet filling up) without
    /// waiting for the flush task, one bounded flush per round.
    pub fn flush_backlog(&mut self) {
        if self.store_backlog() {
            self.flush(None);
        }
    }

    /// Whether more amphorae are marked than one flush writes, and the writer keeps up.
    pub(super) fn store_backlog(&self) -> bool {
        self.writes.amphorae.len() >= FLUSH_MAX && self.unacked.load(Ordering::Relaxed) < BACKLOG_IN_FLIGHT
    }

    /// Whether a store backlog or passed deadlines beyond an expiry's budget wait: the control
    /// loop then comes round again at once rather than after an idle tick.
    pub fn has_backlog(&self) -> bool {
        self.expiry_behind || self.store_backlog()
    }

    /// The store sweep's share of this flush: `amphora_sweep_rate` rows a second, whatever the
    /// fleet's size.
    pub(super) fn sweep(&mut self, now: u64) {
        let rate = self.cfg.lifecycle.amphora_sweep_rate;
        let dt = now.saturating_sub(self.swept_ns) as f64 / 1e9;
        self.swept_ns = now;
        // Credit for at most one flush's worth beyond the interval (after a stall, no burst).
        let cap = rate * self.cfg.lifecycle.store_flush_interval.max(1.0) * 2.0;
        self.sweep_credit = (self.sweep_credit + rate * dt).min(cap);
        let n = self.sweep_credit.floor();
        if n >= 1.0 {
            let marked = self.fleet.sweep(n as usize, &mut self.writes);
            // A fleet smaller than the credit does not bank the rest.
            self.sweep_credit = if marked < n as usize { 0.0 } else { self.sweep_credit - n };
        }
    }

    /// Writes the queued rows and the marked amphorae (read from the shards, at most
    /// [`FLUSH_MAX`] a flush) behind; `done` is called once they are durable (at once when
    /// nothing is stored). Returns whether anything was submitted.
    pub(super) fn flush(&mut self, done: Option<crate::store::Done>) -> bool {
        self.services.to_store(&mut self.writes);
        self.volumes.to_store(&mut self.writes);
        let Some(durable) = self.durable.as_mut() else {
            self.writes = Writes::default();
            if let Some(done) = done {
                done(Ok(()));
            }
            return false;
        };
        if !self.writes.mirrored.is_empty() {
            durable.submit_local(std::mem::take(&mut self.writes.mirrored));
        }
        // Rows the writer let go of while failing (over its memory bound): read them again.
        self.writes.amphorae.extend(durable.take_spilled());
        let mut batch = std::mem::take(&mut self.writes.batch);
        let shards = &self.engine.pipeline.shards;
        // Bounded work per flush: a million new amphorae are written over several flushes
        // instead of stalling the control thread for seconds.
        let mut ids: Vec<(usize, crate::proto::octavia::Uuid)> =
            self.writes.amphorae.iter().take(FLUSH_MAX).map(|id| (shards.index(id), *id)).collect();
        // Grouped by shard, the lock taken once per FLUSH_LOCK_ROWS rows: a worker never waits
        // longer than that many clones for its shard.
        ids.sort_unstable();
        let mut states = Vec::with_capacity(ids.len());
        for run in ids.chunk_by(|a, b| a.0 == b.0) {
            for part in run.chunks(FLUSH_LOCK_ROWS) {
                let shard = shards.shard(part[0].0).lock();
                states.extend(part.iter().filter_map(|(_, id)| shard.get(id).map(|s| (*id, s.clone()))));
            }
        }
        for (_, id) in &ids {
            self.writes.amphorae.remove(id);
        }
        if self.writes.amphorae.is_empty() && self.writes.amphorae.capacity() > 4 * FLUSH_MAX {
            // A fill of new amphorae grew the set to the fleet's size: let it go.
            self.writes.amphorae.shrink_to(FLUSH_MAX);
        }
        for (id, state) in states {
            if let Some(stored) = self.fleet.stored(&id, state) {
                // Serialized by the store's writer thread (niced), not here.
                batch.put_json_deferred(Table::Amphorae, Key::Id(*id.as_bytes()), stored);
            }
        }
        if batch.is_empty() {
            if let Some(done) = done {
                done(Ok(()));
            }
            return false;
        }
        // Rows in flight to the writer, until their commit: the backlog flushes wait while
        // many are (a store slower than the control thread is not fed faster than it writes).
        // Only an admin write is awaited: other rows stay spillable under the writer's bound.
        let rows = batch.len();
        let unacked = self.unacked.clone();
        let awaited = done.is_some();
        unacked.fetch_add(rows, Ordering::Relaxed);
        durable.submit(
            batch,
            Some(Box::new(move |r| {
                unacked.fetch_sub(rows, Ordering::Relaxed);
                if let Some(done) = done {
                    done(r);
                }
            })),
            awaited,
        );
        true
    }
}
