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
            ClusterInput::Leading { term, records } => {
                tracing::warn!(
                    term,
                    records = records.len(),
                    "this member leads the cluster: every amphora gets a full timeout before any failover"
                );
                self.fleet.mirror_records(records, true, now);
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
                self.changed = true;
            }
            ClusterInput::Records(records) => {
                if !self.fleet.leading() {
                    self.fleet.mirror_records(records, false, now);
                }
            }
            ClusterInput::Digest { node, impaired, heard } => {
                let taken = self.fleet.apply_remote(&heard, now, &self.engine.pipeline.shards, &mut self.writes);
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
    }

    /// The cluster's shared state.
    pub fn cluster(&self) -> &Arc<Shared> {
        &self.cluster.shared
    }
}
