//! The control plane's store in cluster mode: the local store, with the leader's shared state
//! also sent to etcd (fenced by its term) by the `cluster` thread.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam::channel::Sender;

use super::agent::record_key;
use super::{ClusterConfig, Shared};
use crate::control::cluster::{EtcdWrite, WriteDone};
use crate::control::persist::Durable;
use crate::control::StoreStatus;
use crate::store::{Done, Key, Loaded, StoreError, Table, WriteBatch};

/// The local store with the leader's shared state also sent to etcd by the `cluster`
/// thread, fenced by its term: failover records, volumes and the scheduler's id counter,
/// pools, and the registry's locks (derived from its service rows: only a change of a
/// service's lock is written, never a heartbeat).
pub(super) struct ClusterDurable {
    pub(super) local: Option<Box<dyn Durable>>,
    pub(super) fence: Sender<EtcdWrite>,
    pub(super) cfg: ClusterConfig,
    pub(super) shared: Arc<Shared>,
    /// The lock last written per service (`type|addr`) in the term `locks_term`. A new term
    /// starts empty, and a service not in it has its lock written (or its lock row deleted)
    /// once: what an earlier leader wrote is never assumed.
    pub(super) locks: HashMap<String, Option<i32>>,
    pub(super) locks_term: u64,
}

/// The etcd key (under the prefix) of a control-plane row, if it is kept in etcd.
fn table_key(table: Table, key: &Key) -> Option<String> {
    match (table, key) {
        (Table::Failovers, Key::Num(id)) => Some(record_key(*id)),
        (Table::Volumes, Key::Num(id)) => Some(format!("tables/volumes/{id:020}")),
        (Table::Pools, Key::Name(n)) => Some(format!("tables/pools/{n}")),
        (Table::Meta, Key::Name(n)) if n == "sched_next_id" => Some("tables/meta/sched_next_id".into()),
        _ => None,
    }
}

impl ClusterDurable {
    /// The etcd writes of `batch`: its control-plane rows, and the lock changes its service
    /// rows carry. `leading`: lock changes are only tracked (and written) by the leader.
    fn etcd_ops(&mut self, batch: &WriteBatch, leading: bool) -> Vec<(String, Option<Vec<u8>>)> {
        let term = self.shared.term();
        if term != self.locks_term {
            self.locks.clear();
            self.locks_term = term;
        }
        let mut ops = Vec::new();
        for op in &batch.ops {
            if let Some(k) = table_key(op.table, &op.key) {
                ops.push((k, op.value.clone()));
            } else if let (Table::Services, Key::Name(name), true) = (op.table, &op.key, leading) {
                let lock = op
                    .value
                    .as_ref()
                    .and_then(|v| serde_json::from_slice::<crate::registry::Service>(v).ok())
                    .and_then(|s| s.locked.then_some(s.score));
                let was = self.locks.get(name).copied();
                if was != Some(lock) {
                    let value = lock.map(|score| {
                        serde_json::to_vec(&crate::control::services::LockRow { score }).unwrap_or_default()
                    });
                    ops.push((format!("tables/locks/{name}"), value));
                }
                self.locks.insert(name.clone(), lock);
            }
        }
        ops
    }
}

/// Calls `done` once both the local store and etcd answered (the first error wins).
fn joint(done: Done) -> (Done, WriteDone) {
    type State = Arc<parking_lot::Mutex<(Option<Done>, u8, Option<String>)>>;
    fn finish(state: &State, err: Option<String>) {
        let mut g = state.lock();
        if g.2.is_none() {
            g.2 = err;
        }
        g.1 = g.1.saturating_sub(1);
        if g.1 == 0 {
            let (done, err) = (g.0.take(), g.2.take());
            drop(g);
            if let Some(done) = done {
                match err {
                    None => done(Ok(())),
                    Some(e) => done(Err(&StoreError::Transaction(e))),
                }
            }
        }
    }
    let state: State = Arc::new(parking_lot::Mutex::new((Some(done), 2, None)));
    let s1 = state.clone();
    let local: Done = Box::new(move |r: Result<(), &StoreError>| finish(&s1, r.err().map(|e| e.to_string())));
    let etcd: WriteDone = Box::new(move |r: Result<(), String>| finish(&state, r.err().map(|e| format!("etcd: {e}"))));
    (local, etcd)
}

impl Durable for ClusterDurable {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.local.as_ref().map_or_else(|| Ok(Loaded::default()), |l| l.load())
    }
    fn each_amphora(&self, f: &mut crate::store::RowVisitor<'_>) -> Result<(), StoreError> {
        self.local.as_ref().map_or(Ok(()), |l| l.each_amphora(f))
    }
    fn submit_local(&mut self, batch: WriteBatch) {
        if let Some(l) = self.local.as_mut() {
            l.submit(batch, None, false);
        }
    }
    fn submit(&mut self, batch: WriteBatch, done: Option<Done>, awaited: bool) {
        let leading = self.shared.is_leader();
        let ops = self.etcd_ops(&batch, leading);
        let mut done = done;
        if !ops.is_empty() {
            // An admin write is answered once etcd has it too (a member that does not lead is
            // refused by the fence, and its caller told so: retry on the leader).
            let etcd_done = match done.take() {
                Some(d) if awaited => {
                    let (local, etcd) = joint(d);
                    done = Some(local);
                    Some(etcd)
                }
                other => {
                    done = other;
                    None
                }
            };
            if let Err(e) = self.fence.send(EtcdWrite { ops, fenced: true, done: etcd_done }) {
                if let Some(d) = e.into_inner().done {
                    d(Err("the cluster thread has stopped".into()));
                }
            }
        }
        match self.local.as_mut() {
            Some(l) => l.submit(batch, done, awaited),
            None => {
                if let Some(done) = done {
                    done(Ok(()));
                }
            }
        }
    }
    fn status(&self) -> Option<StoreStatus> {
        self.local.as_ref().and_then(|l| l.status())
    }
    fn healthy(&self) -> bool {
        self.local.as_ref().is_none_or(|l| l.healthy())
    }
    fn take_spilled(&mut self) -> Vec<crate::proto::octavia::Uuid> {
        self.local.as_mut().map_or_else(Vec::new, |l| l.take_spilled())
    }
    fn finish(&mut self) {
        if let Some(l) = self.local.as_mut() {
            l.finish();
        }
    }
}

impl std::fmt::Debug for ClusterDurable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterDurable").field("prefix", &self.cfg.prefix).finish()
    }
}
