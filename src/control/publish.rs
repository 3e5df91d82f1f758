//! Publication: when the control thread swaps in a new [`Snapshot`] for the readers, and
//! what it puts in it. Transitions go out in the round they happen; the fleet's bulk updates
//! are held back while many wait (see [`HOLD_MANY_NS`]); the figures at least every
//! [`FIGURES_EVERY_NS`].

use std::sync::Arc;

use super::{AmphoraHealth, Control, Snapshot};

/// The fleet's published maps: health, stale, load balancers, alive and not `ONLINE`, and the census
/// counts that go with them.
pub(super) type FleetMaps = (
    imbl::OrdMap<crate::proto::octavia::Uuid, AmphoraHealth>,
    imbl::OrdSet<crate::proto::octavia::Uuid>,
    imbl::OrdMap<crate::proto::octavia::Uuid, imbl::OrdSet<crate::proto::octavia::Uuid>>,
    imbl::OrdSet<crate::proto::octavia::Uuid>,
    super::snapshot::CensusCounts,
);

/// The longest a published snapshot's figures (counters, tasks, store) may lag, ns: one idle
/// tick (`TICK`).
pub(super) const FIGURES_EVERY_NS: u64 = 250_000_000;

/// How long the fleet's bulk updates (new amphorae, re-armed last refresh times) may wait
/// before they are published, ns, while more than [`HOLD_FEW`] wait (fewer are published in
/// the round). Transitions (stale, revived,
/// status, failovers, settings) are published in the round they happen.
///
/// Why: the published maps are persistent, so the first change to a node after a publication
/// copies its path (about 4 KB at a million amphorae). Publishing a fill of new amphorae every
/// round copied a path per new amphora, half of the control thread's work and enough, with
/// the rest, to starve the workers of the two cores and overflow their rings. Held for a
/// second, a fill copies each node about once a second instead.
pub const HOLD_MANY_NS: u64 = 1_000_000_000;
/// See [`HOLD_MANY_NS`].
pub const HOLD_FEW: usize = 1024;

impl Control {
    /// Publishes a new snapshot if anything changed.
    pub fn publish(&mut self) {
        self.publish_if(true);
    }

    /// When the fleet's bulk updates are due to be published: at once while few wait, else
    /// [`HOLD_MANY_NS`] after the last publication. The control loop wakes up for them.
    pub fn publish_due(&self) -> Option<u64> {
        let held = self.fleet.held();
        let hold = if held > HOLD_FEW { HOLD_MANY_NS } else { 0 };
        (held > 0).then(|| self.fleet_published_ns.saturating_add(hold))
    }

    /// Publishes a new snapshot if anything changed, the fleet's bulk updates when due
    /// ([`Control::publish_due`]); the control loop's rounds call this.
    pub fn publish_round(&mut self) {
        self.publish_if(false);
    }

    fn publish_if(&mut self, fleet_now: bool) {
        // The store's health is published as it changes, so `/healthz` reads it without locks.
        // While failing, every round republishes (its failure count and error move).
        let failing = self.durable.as_ref().is_some_and(|d| !d.healthy());
        if failing || failing != self.store_failing {
            self.store_failing = failing;
            self.changed = true;
        }
        let now = self.clock.now_ns();
        let (transitions, skipped) = self.fleet.take_transitions();
        if !transitions.is_empty() {
            self.published.transitions.lock().extend(transitions, skipped);
        }
        let held_due = self.publish_due().is_some_and(|due| fleet_now || now >= due);
        let fleet = self.fleet.is_changed() || held_due;
        let parts = [self.services.take_changed(), self.volumes.take_changed()];
        let changed = self.changed || fleet || parts.contains(&true);
        // The figures (counters, tasks, store commits) move without a change of state: they are
        // republished at least every tick (FIGURES_EVERY_NS), under the same generation.
        // So is the tracked count, whenever it moves (a cheap snapshot: the maps are shared).
        let figures_due = now >= self.published_ns.saturating_add(FIGURES_EVERY_NS)
            || self.fleet.health().len() != self.published.snapshot.load().tracked;
        if !(changed || figures_due) {
            return;
        }
        if fleet {
            self.fleet.take_changed();
            self.fleet_published_ns = now;
            self.fleet_maps = (
                self.fleet.health().clone(),
                self.fleet.down().clone(),
                self.fleet.load_balancers().clone(),
                self.fleet.census().sick().clone(),
                self.fleet.census().counts(),
            );
        }
        self.changed = false;
        self.published_ns = now;
        if changed {
            self.generation += 1;
        }
        let snap = Snapshot {
            generation: self.generation,
            taken_ns: now,
            amphorae: self.fleet_maps.0.clone(),
            down: self.fleet_maps.1.clone(),
            load_balancers: self.fleet_maps.2.clone(),
            sick: self.fleet_maps.3.clone(),
            census: self.fleet_maps.4,
            tracked: self.fleet.health().len(),
            totals: self.engine.totals(),
            suspended: self.fleet.suspended().to_vec(),
            failover_counts: self.fleet.failover_counts(),
            tasks: self.periodic.tasks().to_vec(),
            store: self.durable.as_ref().and_then(|d| d.status()),
            world: self.services.world().clone(),
            pools: self.services.pools().clone(),
            leader: self.volumes.leading(),
            volumes: self.volumes.scheduler().len(),
            scheduler: self.volumes.last_tick(),
            services: self.services.registry().len(),
            services_rejected: self.services.rejected,
            term: if self.leads() { self.cluster.shared.term() } else { 0 },
            cluster_view: false,
        };
        self.published.snapshot.store(Arc::new(snap));
    }
}
