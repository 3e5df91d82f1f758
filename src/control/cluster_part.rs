//! Cluster mode in the control thread: what the cluster's threads tell it (leadership,
//! records, digests, members, settings), and the reasons it holds failovers back for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam::channel::{Receiver, Sender};

use super::cluster::{AmphoraSettings, ClusterInput, EtcdWrite, Shared};
use super::liveness::{secs_ns, SuspendReason};
use super::{Control, FleetCommand};

/// Cluster mode's state in the control thread.
#[derive(Debug)]
pub(super) struct ClusterPart {
    pub(super) shared: Arc<Shared>,
    pub(super) input: Receiver<ClusterInput>,
    /// A new leader's grace ends here (control clock, ns).
    pub(super) grace_until: u64,
    /// Each peer's latest digest: when it arrived and whether the peer was impaired.
    pub(super) digests: rustc_hash::FxHashMap<String, (u64, bool)>,
    /// The live members.
    pub(super) members: Vec<String>,
    /// Refreshes taken from digests since the last health check.
    pub(super) remote_heard: u64,
    /// Writes to etcd (amphora settings).
    pub(super) writes: Option<Sender<EtcdWrite>>,
    /// When this member last began to lead (control clock, ns; 0: it does not).
    pub(super) leading_since: u64,
    /// The relay buffer's key of a service, rebuilt per registration without allocating.
    pub(super) relay_key: String,
}

impl Default for ClusterPart {
    fn default() -> ClusterPart {
        ClusterPart {
            shared: Shared::single(),
            input: crossbeam::channel::never(),
            grace_until: 0,
            digests: Default::default(),
            members: Vec::new(),
            remote_heard: 0,
            writes: None,
            leading_since: 0,
            relay_key: String::new(),
        }
    }
}

impl Control {
    /// Cluster mode: why this member may not fail anything over now, beyond its own signals.
    pub(super) fn cluster_reasons(&mut self, now: u64) -> Vec<SuspendReason> {
        let c = &self.cluster;
        let mut out = Vec::new();
        if !c.shared.etcd_ok() {
            out.push(SuspendReason::EtcdUnreachable);
        }
        if !c.shared.is_leader() {
            out.push(SuspendReason::NotLeader);
        }
        if now < c.grace_until {
            out.push(SuspendReason::LeaderGrace { remaining_s: (c.grace_until - now) as f64 / 1e9 });
        }
        let late = c.shared.digest_interval_ns.load(Ordering::Relaxed).saturating_mul(3);
        for node in c.members.iter().filter(|n| **n != c.shared.node) {
            match c.digests.get(node) {
                Some(&(_, true)) => out.push(SuspendReason::MemberImpaired { node: node.clone() }),
                Some(&(at, false)) if now.saturating_sub(at) > late => out.push(SuspendReason::MemberSilent {
                    node: node.clone(),
                    silent_s: Some(now.saturating_sub(at) as f64 / 1e9),
                }),
                Some(_) => {}
                None => out.push(SuspendReason::MemberSilent { node: node.clone(), silent_s: None }),
            }
        }
        out
    }

    /// Cluster mode: applies what the cluster's threads say.
    pub fn apply_cluster(&mut self, input: ClusterInput) {
        let now = self.clock.now_ns();
        match input {
            ClusterInput::Leading { term, records, tables } => {
                tracing::warn!(
                    term,
                    records = records.len(),
                    rows = tables.len(),
                    "this member leads the cluster: every amphora gets a full timeout before any failover"
                );
                self.fleet.mirror_records(records, true, now);
                // The control plane continues from exactly what etcd holds.
                self.apply_tables(true, tables, now);
                self.cluster.leading_since = now.max(1);
                self.fleet.set_leading(true);
                self.fleet.restart_grace(now);
                self.cluster.grace_until = now.saturating_add(secs_ns(self.cfg.liveness.heartbeat_timeout));
                self.changed = true;
            }
            ClusterInput::Following => {
                if self.fleet.leading() {
                    tracing::warn!("this member no longer leads the cluster: failovers stop here");
                }
                self.fleet.set_leading(false);
                self.cluster.leading_since = 0;
                self.cluster.shared.mirror_resync.store(true, Ordering::Release);
                self.changed = true;
            }
            ClusterInput::Tables { full, rows } => {
                // A leader is the state's only writer: it holds it already (its own writes
                // come back here); it read the whole state when it began to lead.
                if self.cluster.leading_since == 0 {
                    self.apply_tables(full, rows, now);
                }
            }
            ClusterInput::Records(records) => {
                if !self.fleet.leading() {
                    self.fleet.mirror_records(records, false, now);
                }
            }
            ClusterInput::Digest { node, impaired, heard, services } => {
                for (at, r) in &services {
                    self.services.apply_relayed(at / 1000, r);
                }
                let by = self.cluster.shared.node_index(&node);
                let taken = self.fleet.apply_remote(&heard, by, now, &self.engine.pipeline.shards, &mut self.writes);
                self.cluster.remote_heard += taken;
                let was = self.cluster.digests.insert(node.clone(), (now, impaired));
                if was.is_some_and(|(_, i)| i) != impaired {
                    tracing::warn!(member = %node, impaired, "a member's own self-awareness rules changed");
                }
            }
            ClusterInput::Settings(all) => {
                for (id, want) in all {
                    let have = self.fleet.health().get(&id).map(|h| AmphoraSettings {
                        expected_listeners: h.expected_listeners,
                        load_balancer: h.load_balancer,
                        zone: h.zone.clone(),
                    });
                    if have.as_ref().is_some_and(|h| *h != want) {
                        let command = FleetCommand::Configure {
                            id,
                            expected_listeners: Some(want.expected_listeners),
                            load_balancer: Some(want.load_balancer),
                            zone: Some(want.zone),
                        };
                        if let Err(e) = self.fleet.execute(command, now, &self.engine.pipeline.shards, &mut self.writes)
                        {
                            tracing::warn!(amphora = %id, error = %e, "amphora settings from etcd not applied");
                        }
                    }
                }
            }
            ClusterInput::Members(members) => {
                if members != self.cluster.members {
                    tracing::info!(?members, "cluster members");
                }
                self.cluster.digests.retain(|n, _| members.contains(n));
                self.cluster.members = members;
            }
        }
    }

    /// Applies the control plane's state from etcd: volumes, the scheduler's id counter,
    /// pools and locks (`full`: the rows are all of it).
    fn apply_tables(&mut self, full: bool, rows: Vec<super::cluster::TableRow>, now: u64) {
        let bad = self.volumes.apply_rows(full, &rows, &mut self.writes);
        let mut pools = Vec::new();
        let mut locks = Vec::new();
        let mut bad_other = 0;
        for (k, v) in &rows {
            if let Some(name) = k.strip_prefix("pools/") {
                match v.as_ref().map(|v| serde_json::from_slice::<crate::registry::lb::Pool>(v)) {
                    Some(Ok(p)) => pools.push((name.to_owned(), Some(p))),
                    Some(Err(_)) => bad_other += 1,
                    None => pools.push((name.to_owned(), None)),
                }
                if let Some(v) = v {
                    self.writes.mirrored.put_raw(
                        crate::store::Table::Pools,
                        crate::store::Key::Name(name.into()),
                        v.clone(),
                    );
                } else {
                    self.writes.mirrored.delete(crate::store::Table::Pools, crate::store::Key::Name(name.into()));
                }
            } else if let Some(key) = k.strip_prefix("locks/") {
                match v.as_ref().map(|v| serde_json::from_slice::<super::services::LockRow>(v)) {
                    Some(Ok(l)) => locks.push((key.to_owned(), Some(l))),
                    Some(Err(_)) => bad_other += 1,
                    None => locks.push((key.to_owned(), None)),
                }
            }
        }
        if full || !pools.is_empty() {
            self.services.apply_pools(full, pools);
        }
        if full || !locks.is_empty() {
            self.services.apply_locks(full, &locks, now / 1000);
        }
        let bad = (bad + bad_other) as u64;
        if bad > 0 {
            self.cluster.shared.bad_rows.fetch_add(bad, Ordering::Relaxed);
            tracing::warn!(rows = bad, "control-plane rows in etcd that do not decode: ignored");
        }
        self.changed = true;
    }

    /// Cluster mode: whether the scheduler may act. A new leader first waits for a digest from
    /// every live peer (they carry the machines' heartbeats the peers heard; a peer's first
    /// digest to it holds everything), at most one `heartbeat_timeout`: a machine is dead only
    /// when no member heard it.
    pub(super) fn scheduler_ready(&self, now: u64) -> bool {
        let c = &self.cluster;
        if !c.shared.enabled {
            return true;
        }
        if c.leading_since == 0 {
            // Leading per the deadline but `Leading` not applied yet (the state from etcd not
            // read in): nothing moves; not leading: the tick only resets.
            return !c.shared.is_leader();
        }
        if now >= c.leading_since.saturating_add(secs_ns(self.cfg.liveness.heartbeat_timeout)) {
            return true;
        }
        c.members
            .iter()
            .filter(|n| **n != c.shared.node)
            .all(|n| c.digests.get(n).is_some_and(|&(at, _)| at > c.leading_since))
    }

    /// Cluster mode: hands the registrations accepted here to the digest thread.
    pub(super) fn relay_out(&mut self, now: u64) {
        let relayed = self.services.relayed();
        if relayed.is_empty() {
            return;
        }
        let c = &mut self.cluster;
        let mut buf = c.shared.relay.lock();
        // Stamped under the lock (the digest thread reads the buffer and its time under it).
        let now = self.clock.now_ns().max(now);
        for r in relayed {
            buf.put(&mut c.relay_key, now, r);
        }
        self.services.clear_relayed();
        // Bounded in time as well as by the registry: a deregistration, lock or flush is for
        // the members of its minute; a registration not renewed for an hour is dropped (a
        // member that joins later learns the service's state from the living agents).
        if now >= buf.pruned_ns.saturating_add(10_000_000_000) {
            buf.pruned_ns = now;
            buf.heard.retain(|_, (at, r)| {
                let keep_ns: u64 = if r.op == "register" { 3_600_000_000_000 } else { 60_000_000_000 };
                now.saturating_sub(*at) < keep_ns
            });
        }
    }

    /// Cluster mode: whether this member may execute a leader write now: it leads (the
    /// deadline) and has taken in the state from etcd (`Leading` applied).
    pub(super) fn leads(&self) -> bool {
        self.cluster.shared.is_leader() && self.cluster.leading_since != 0
    }

    /// Cluster mode: the shared state and the input the cluster's threads feed (set before the
    /// control thread starts).
    pub fn set_cluster(
        &mut self,
        shared: Arc<Shared>,
        input: Receiver<ClusterInput>,
        writes: Option<Sender<EtcdWrite>>,
    ) {
        let single = !shared.enabled;
        self.cluster.shared = shared;
        self.cluster.input = input;
        self.cluster.writes = writes;
        self.fleet.set_leading(single);
        self.services.set_relaying(!single);
    }

    /// The cluster's shared state.
    pub fn cluster(&self) -> &Arc<Shared> {
        &self.cluster.shared
    }
}
