//! Moving a data directory from single mode to cluster mode, explicitly and never half-done.
//!
//! In cluster mode the control plane's state (volumes, the scheduler's id counter, pools,
//! locked scores, amphora settings) lives in etcd; a member's local store keeps only a copy.
//! A data directory that holds such state from single mode is therefore **refused** at a
//! cluster start ([`check`]), with the way out in the message: import it once with
//! `heartsink cluster import --data-dir … --etcd …` ([`import`]), or start on an empty
//! directory. Failover records and amphora rows are history and liveness: they stay local.
//!
//! The import runs with every member stopped (a live member key refuses it: a running leader
//! would not see rows written under it) and into a cluster with no control-plane state (a
//! `tables/` key refuses it). It first writes a marker (`tables/meta/importing`), then the rows
//! in transactions of at most 100 keys and 512 KiB, then the id counter with the marker's
//! removal in one transaction; then it marks the local store as a cluster member's, so the
//! member starts. An import that stopped half-way leaves its marker, and running it again
//! resumes it (start the members only once it has reported success).

use std::path::Path;

use super::ClusterConfig;
use crate::control::cluster::AmphoraSettings;
use crate::control::services::LockRow;
use crate::etcd::{Client, Compare, CompareOp, Txn, TxnOp};
use crate::registry::lb::Pool;
use crate::registry::Service;
use crate::sched::Volume;
use crate::store::{Key, Loaded, Store, StoreError, Table, WriteBatch};

/// The local store's mark of a cluster member's data directory (`Meta`, the prefix as JSON).
pub const MARK: &str = "cluster_prefix";
/// The etcd key (under the prefix) of an import under way.
const IMPORTING: &str = "tables/meta/importing";

/// Why an import or a cluster start on a data directory failed.
#[derive(Debug)]
pub enum ImportError {
    /// The local store could not be opened or read (a running daemon holds it, or it is
    /// corrupt).
    Store(StoreError),
    /// etcd did not answer or refused a write.
    Etcd(crate::etcd::EtcdError),
    /// The import is not allowed as things are (members running, state already in etcd, a
    /// directory of another cluster); the message says what to do.
    Refused(String),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Store(e) => write!(f, "import: local store: {e}"),
            ImportError::Etcd(e) => write!(f, "import: etcd: {e}"),
            ImportError::Refused(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ImportError {}

/// What a data directory holds of the control plane's state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    /// Volumes.
    pub volumes: usize,
    /// Pools.
    pub pools: usize,
    /// Locked services.
    pub locks: usize,
    /// Amphorae with settings (imported only; [`check`] does not count them).
    pub settings: usize,
}

impl Found {
    fn any(&self) -> bool {
        self.volumes + self.pools + self.locks > 0
    }
}

fn mark_of(loaded: &Loaded) -> Option<String> {
    let meta = loaded.decode::<serde_json::Value>(Table::Meta).ok()?;
    meta.into_iter().find(|(k, _)| *k == Key::Name(MARK.into())).and_then(|(_, v)| v.as_str().map(str::to_owned))
}

/// The control plane's rows of a local store: volumes, pools, locked services, the
/// scheduler's next id.
type Rows = (Vec<Volume>, Vec<Pool>, Vec<Service>, Option<u64>);

fn rows(loaded: &Loaded) -> Result<Rows, StoreError> {
    let volumes: Vec<Volume> = loaded.decode(Table::Volumes)?.into_iter().map(|(_, v)| v).collect();
    let pools: Vec<Pool> = loaded.decode(Table::Pools)?.into_iter().map(|(_, p)| p).collect();
    let locked: Vec<Service> =
        loaded.decode::<Service>(Table::Services)?.into_iter().map(|(_, s)| s).filter(|s| s.locked).collect();
    let next = loaded
        .decode::<serde_json::Value>(Table::Meta)?
        .into_iter()
        .find(|(k, _)| *k == Key::Name("sched_next_id".into()))
        .and_then(|(_, v)| v.as_u64());
    Ok((volumes, pools, locked, next))
}

/// At a cluster start, on the local store's `loaded` rows: `Ok(Some(batch))` to mark a fresh
/// directory as this cluster's (submit it), `Ok(None)` when it is already marked, `Err` with
/// the reason (and the way out) when it holds single-mode state or another cluster's.
pub fn check(loaded: &Loaded, cfg: &ClusterConfig, dir: &Path) -> Result<Option<WriteBatch>, String> {
    match mark_of(loaded) {
        Some(p) if p == cfg.prefix => return Ok(None),
        Some(p) => {
            return Err(format!(
                "the data directory {} belongs to the cluster with prefix {p:?}, not {:?}: start with that prefix, or \
                 on another data directory",
                dir.display(),
                cfg.prefix
            ))
        }
        None => {}
    }
    let (volumes, pools, locks, _) = rows(loaded).map_err(|e| e.to_string())?;
    let found = Found { volumes: volumes.len(), pools: pools.len(), locks: locks.len(), settings: 0 };
    if found.any() {
        return Err(format!(
            "the data directory {} holds single-mode control-plane state ({} volumes, {} pools, {} locked services); \
             cluster mode keeps it in etcd: stop this daemon and import it once with `heartsink cluster import \
             --data-dir {} --etcd URL [--prefix {}]` (every member stopped), or start this member on an empty \
             data directory",
            dir.display(),
            found.volumes,
            found.pools,
            found.locks,
            dir.display(),
            cfg.prefix
        ));
    }
    let mut b = WriteBatch::default();
    b.put_json(Table::Meta, Key::Name(MARK.into()), &cfg.prefix);
    Ok(Some(b))
}

/// Imports the single-mode state of `dir` into the cluster of `cfg` and marks `dir` as that
/// cluster's. Refused while a member runs or once the cluster has control-plane state.
pub fn import(dir: &Path, cfg: &ClusterConfig) -> Result<Found, ImportError> {
    let store = Store::open(dir).map_err(ImportError::Store)?;
    let loaded = store.load().map_err(ImportError::Store)?;
    if let Some(p) = mark_of(&loaded) {
        return Err(ImportError::Refused(format!(
            "{} is already a cluster member's data directory (prefix {p:?}): nothing to import",
            dir.display()
        )));
    }
    let client = Client::new(cfg.etcd.clone(), cfg.timeout()).map_err(ImportError::Etcd)?;
    let (members, _) = client.range_prefix(cfg.key("members/")).map_err(ImportError::Etcd)?;
    if !members.is_empty() {
        let names: Vec<String> = members.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
        return Err(ImportError::Refused(format!(
            "members are running ({}): stop every member of the cluster, then import",
            names.join(", ")
        )));
    }
    let (existing, _) = client.range_prefix(cfg.key("tables/")).map_err(ImportError::Etcd)?;
    let importing_key = cfg.key(IMPORTING);
    // An import that stopped half-way (etcd lost, a timeout) left its marker: this one
    // resumes it (every put is idempotent).
    let marker = existing.iter().find(|kv| kv.key == importing_key.as_bytes());
    if let Some(kv) = marker {
        let from: Option<String> = serde_json::from_slice(&kv.value).ok();
        if from.as_deref() != Some(&*dir.display().to_string()) {
            return Err(ImportError::Refused(format!(
                "an import from {} was interrupted: run it again from that directory to finish it (this one is {})",
                from.unwrap_or_else(|| "another directory".into()),
                dir.display()
            )));
        }
    }
    let resuming = marker.is_some();
    if !existing.is_empty() && !resuming {
        return Err(ImportError::Refused(format!(
            "the cluster already holds control-plane state ({} keys under {}): import refused (it would mix two \
             states); if this directory's own import completed in etcd but was interrupted before it marked the \
             directory, start the member on an empty data directory instead",
            existing.len(),
            cfg.key("tables/")
        )));
    }
    let (volumes, pools, locks, next) = rows(&loaded).map_err(ImportError::Store)?;
    let max_id = volumes.iter().map(|v| v.id).max().unwrap_or(0);
    let next = next.unwrap_or(1).max(max_id.saturating_add(1));
    let mut ops: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    ops.extend(volumes.iter().map(|v| (format!("tables/volumes/{:020}", v.id), Some(json(v)))));
    ops.extend(pools.iter().map(|p| (format!("tables/pools/{}", p.name), Some(json(p)))));
    ops.extend(
        locks
            .iter()
            .map(|s| (format!("tables/locks/{}|{}", s.type_name, s.addr), Some(json(&LockRow { score: s.score })))),
    );
    let mut settings = 0;
    store
        .each_amphora(&mut |key, row| {
            let Key::Id(id) = key else { return Ok(()) };
            let Ok(a) = serde_json::from_slice::<crate::control::StoredAmphora>(row) else { return Ok(()) };
            let s = AmphoraSettings {
                expected_listeners: a.state.expected_listeners,
                load_balancer: a.load_balancer,
                zone: a.zone.clone(),
            };
            if s != AmphoraSettings::default() {
                settings += 1;
                ops.push((format!("amphorae/{}", crate::proto::octavia::Uuid::from_bytes(id)), Some(json(&s))));
            }
            Ok(())
        })
        .map_err(ImportError::Store)?;
    // First the marker, only if no state and no other import appeared meanwhile; then the
    // rows in transactions of at most 100 keys and 512 KiB; last, in one transaction, the id
    // counter and the marker's removal: the cluster's state is complete exactly when the
    // marker is gone. A failure on the way leaves the marker, and running the import again
    // resumes.
    if !resuming {
        let t = Txn::new()
            .when([
                Compare::create_revision(importing_key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(cfg.key("tables/meta/sched_next_id"), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(importing_key.clone(), json(&dir.display().to_string()), None)]);
        if !client.txn(&t).map_err(ImportError::Etcd)?.succeeded {
            return Err(ImportError::Refused("another import or a member wrote the cluster's state meanwhile".into()));
        }
    }
    let mut chunk: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.0.len() + op.1.as_ref().map_or(0, Vec::len);
        if !chunk.is_empty() && (chunk.len() == 100 || bytes + size > 512 << 10) {
            super::agent::txn(&client, cfg, None, std::mem::take(&mut chunk)).map_err(ImportError::Etcd)?;
            bytes = 0;
        }
        bytes += size;
        chunk.push(op);
    }
    if !chunk.is_empty() {
        super::agent::txn(&client, cfg, None, chunk).map_err(ImportError::Etcd)?;
    }
    let done = Txn::new()
        .and_then([TxnOp::put(cfg.key("tables/meta/sched_next_id"), json(&next), None), TxnOp::delete(importing_key)]);
    client.txn(&done).map_err(ImportError::Etcd)?;
    let mut b = WriteBatch::default();
    b.put_json(Table::Meta, Key::Name(MARK.into()), &cfg.prefix);
    store.commit(&b).map_err(ImportError::Store)?;
    Ok(Found { volumes: volumes.len(), pools: pools.len(), locks: locks.len(), settings })
}

/// JSON of a plain value written here (it cannot fail to encode).
fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}
