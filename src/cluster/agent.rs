//! The cluster's threads: `cluster` (etcd: the member lease and key, the leader campaign, the
//! members and records read back, fenced writes) and `cluster-digest` (this member's digests
//! to its peers). Both block on I/O with bounded timeouts; neither touches the packet path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::channel::{self, Receiver, Sender};

use super::digest::{self, Heard};
use super::{ClusterConfig, ClusterInput, ClusterView, Member, Shared, LEADER_MARGIN_NS};
use crate::control::cluster::{AmphoraSettings, EtcdView, EtcdWrite, TableRow};
use crate::control::failover::{Claim, FailoverRecord, FailoverState};
use crate::control::persist::Durable;
use crate::engine::Clock;
use crate::etcd::{Client, Compare, CompareOp, EtcdError, LeaseId, Txn, TxnOp};
use crate::proto::keyring::Keyring;

const S: u64 = 1_000_000_000;
/// How often a member that does not lead tries to become leader, and reads members and records.
const ROUND: Duration = Duration::from_millis(300);
/// Most operations in one etcd transaction (etcd's `--max-txn-ops` default is 128).
const TXN_OPS: usize = 100;
/// Most writes waiting to be tried again while etcd does not answer.
const RETRY_MAX: usize = 10_000;

/// Why a write to etcd did not happen.
#[derive(Debug)]
enum Failed {
    /// etcd did not answer (or has no leader): tried again next round.
    Retry,
    /// Refused: fenced out, or a request etcd will never take; the message says which.
    Refused(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Retry => f.write_str("etcd unreachable"),
            Failed::Refused(m) => f.write_str(m),
        }
    }
}

/// Cluster mode before its threads run: the etcd client, and the channel of leader writes
/// (the control plane's failover threads and store are wired to it before the sockets are
/// bound; the threads start once this member's addresses are known).
#[derive(Debug)]
pub struct Prepared {
    cfg: ClusterConfig,
    client: Arc<Client>,
    shared: Arc<Shared>,
    fence: Sender<EtcdWrite>,
    fenced: Receiver<EtcdWrite>,
}

/// The running cluster threads.
#[derive(Debug)]
pub struct Agent {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Why cluster mode could not start.
#[derive(Debug)]
pub enum ClusterError {
    /// The etcd endpoints are not usable URLs.
    Etcd(EtcdError),
    /// A thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Etcd(e) => write!(f, "cluster: etcd: {e}"),
            ClusterError::Thread(e) => write!(f, "cluster: thread: {e}"),
        }
    }
}

impl std::error::Error for ClusterError {}

/// What the cluster threads need from the daemon.
#[derive(Clone)]
pub struct Wiring {
    /// This member as its key says.
    pub me: Member,
    /// The control thread's cluster input.
    pub control: Sender<ClusterInput>,
    /// The control clock.
    pub clock: Arc<dyn Clock>,
    /// The data plane (its shards are scanned for digests).
    pub engine: Arc<crate::engine::Shared>,
    /// The heartbeat keys (digests are signed with the first).
    pub keys: Arc<ArcSwap<Keyring>>,
    /// What the control thread publishes (the leader cuts its answer views from it; every
    /// member holds the leader's there).
    pub published: Arc<crate::control::Published>,
}

impl Prepared {
    /// The etcd client for `cfg` (nothing is sent yet) and the leader-write channel.
    pub fn new(cfg: ClusterConfig, shared: Arc<Shared>) -> Result<Prepared, ClusterError> {
        let client = Arc::new(Client::new(cfg.etcd.clone(), cfg.timeout()).map_err(ClusterError::Etcd)?);
        shared.digest_interval_ns.store((cfg.digest_interval * 1e9) as u64, Ordering::Relaxed);
        let (fence, fenced) = channel::unbounded();
        Ok(Prepared { cfg, client, shared, fence, fenced })
    }

    /// The claim a failover thread makes before running a record's action: the record is put
    /// `in_progress` under this member's term, in one fenced transaction.
    pub fn claim(&self) -> Claim {
        let (client, cfg, shared) = (self.client.clone(), self.cfg.clone(), self.shared.clone());
        Arc::new(move |rec: &FailoverRecord| {
            let term = shared.term();
            if term == 0 {
                return Err("this member does not lead".into());
            }
            let mut rec = rec.clone();
            rec.state = FailoverState::InProgress;
            let value = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
            let bytes = value.len() as u64;
            match fenced_txn(&client, &cfg, term, vec![(record_key(rec.id), Some(value))]) {
                Ok(true) => {
                    shared.etcd_writes.fetch_add(1, Ordering::Relaxed);
                    shared.etcd_write_bytes.fetch_add(bytes, Ordering::Relaxed);
                    Ok(())
                }
                Ok(false) => {
                    shared.fenced_refused.fetch_add(1, Ordering::Relaxed);
                    Err(format!("fenced: term {term} is over"))
                }
                Err(e) => Err(format!("etcd: {e}")),
            }
        })
    }

    /// Wraps the local store: failover records also go to etcd, fenced by the term (the
    /// local store keeps everything, so a member restarts from its own rows).
    pub fn durable(&self, local: Option<Box<dyn Durable>>) -> Box<dyn Durable> {
        Box::new(super::durable::ClusterDurable {
            local,
            fence: self.fence.clone(),
            cfg: self.cfg.clone(),
            shared: self.shared.clone(),
            locks: std::collections::HashMap::new(),
            locks_term: 0,
        })
    }

    /// Where the control thread sends its other etcd writes (amphora settings).
    pub fn writes(&self) -> Sender<EtcdWrite> {
        self.fence.clone()
    }

    /// Starts the `cluster`, `cluster-digest`, `cluster-view` and `cluster-mirror` threads.
    pub fn start(self, w: Wiring) -> Result<Agent, ClusterError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (cfg, w, stop, shared) = (self.cfg.clone(), w.clone(), stop.clone(), self.shared.clone());
            let (client, fenced) = (self.client.clone(), self.fenced);
            threads.push(
                std::thread::Builder::new()
                    .name("cluster".into())
                    .spawn(move || Etcd::new(cfg, w, shared, client, fenced).run(&stop))
                    .map_err(ClusterError::Thread)?,
            );
        }
        {
            let (cfg, stop, client, control) = (self.cfg.clone(), stop.clone(), self.client.clone(), w.control.clone());
            let shared = self.shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-mirror".into())
                    .spawn(move || super::mirror::mirror(&cfg, &client, &control, &shared, &stop))
                    .map_err(ClusterError::Thread)?,
            );
        }
        {
            let (cfg, w, stop, shared) = (self.cfg.clone(), w.clone(), stop.clone(), self.shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-view".into())
                    .spawn(move || super::view::ship(&cfg, &w, &shared, &stop))
                    .map_err(ClusterError::Thread)?,
            );
        }
        {
            let (cfg, stop, shared) = (self.cfg, stop.clone(), self.shared);
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-digest".into())
                    .spawn(move || digests(&cfg, &w, &shared, &stop))
                    .map_err(ClusterError::Thread)?,
            );
        }
        Ok(Agent { stop, threads })
    }
}

impl Agent {
    /// Stops both threads; a leader first gives up its key and the lease (a successor within
    /// one campaign round).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(super) fn record_key(id: u64) -> String {
    format!("failovers/{id:020}")
}

/// One transaction of `ops` (keys under the prefix); with a `term`, fenced: the `leader` key's
/// create revision must still be it.
pub(super) fn txn(
    client: &Client,
    cfg: &ClusterConfig,
    term: Option<u64>,
    ops: Vec<(String, Option<Vec<u8>>)>,
) -> Result<bool, EtcdError> {
    let when: Vec<Compare> =
        term.map(|t| Compare::create_revision(cfg.key("leader"), CompareOp::Equal, t as i64)).into_iter().collect();
    // A write under `amphorae/` or `failovers/` also touches its marker, `changed/<prefix>`:
    // the members read a prefix back only when its marker moved (one small read a second
    // instead of the whole prefix).
    let mut ops = ops;
    for marked in ["amphorae/", "failovers/"] {
        if ops.iter().any(|(k, _)| k.starts_with(marked)) {
            ops.push((format!("changed/{}", marked.trim_end_matches('/')), Some(Vec::new())));
        }
    }
    let txn = Txn::new().when(when).and_then(ops.into_iter().map(|(k, v)| match v {
        Some(v) => TxnOp::put(cfg.key(&k), v, None),
        None => TxnOp::delete(cfg.key(&k)),
    }));
    Ok(client.txn(&txn)?.succeeded)
}

/// One fenced transaction: the `leader` key's create revision must still be `term`.
fn fenced_txn(
    client: &Client,
    cfg: &ClusterConfig,
    term: u64,
    ops: Vec<(String, Option<Vec<u8>>)>,
) -> Result<bool, EtcdError> {
    txn(client, cfg, Some(term), ops)
}

/// The `cluster` thread's state.
struct Etcd {
    cfg: ClusterConfig,
    w: Wiring,
    shared: Arc<Shared>,
    client: Arc<Client>,
    fenced: Receiver<EtcdWrite>,
    lease: Option<LeaseId>,
    /// Control-clock ns until which the lease is surely alive (send time of the last
    /// acknowledged keep-alive + TTL).
    lease_until: u64,
    next_keepalive: u64,
    /// The term this member leads in (0: it does not).
    term: u64,
    /// The leader as last read, and its term.
    leader: Option<(String, u64)>,
    members: Vec<Member>,
    /// The revision of the last failover records sent to the control thread.
    records_rev: i64,
    /// The revision of the last amphora settings sent to the control thread.
    settings_rev: i64,
    /// Writes waiting for etcd to answer again.
    retry: Vec<EtcdWrite>,
    /// When this member joined (Unix seconds).
    joined: u64,
    /// Another member holds this node name's key: this one does not campaign.
    duplicate: bool,
    next_read: u64,
    etcd_ok: Option<bool>,
    last_error: Option<String>,
}

impl Etcd {
    fn new(
        cfg: ClusterConfig,
        w: Wiring,
        shared: Arc<Shared>,
        client: Arc<Client>,
        fenced: Receiver<EtcdWrite>,
    ) -> Etcd {
        Etcd {
            cfg,
            w,
            shared,
            client,
            fenced,
            lease: None,
            lease_until: 0,
            next_keepalive: 0,
            term: 0,
            leader: None,
            members: Vec::new(),
            records_rev: -1,
            settings_rev: -1,
            retry: Vec::new(),
            joined: 0,
            duplicate: false,
            next_read: 0,
            etcd_ok: None,
            last_error: None,
        }
    }

    /// Monotonic ns: every lease and deadline time of this thread.
    fn now(&self) -> u64 {
        self.shared.mono_ns()
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            self.round();
            // Writes that failed on a transport error are tried again first, in order.
            let retry = std::mem::take(&mut self.retry);
            self.write_fenced(retry);
            // Writes as they come, otherwise a campaign round. While earlier writes wait for
            // etcd, new ones queue behind them: the order of writes to a key holds.
            if let Ok(first) = self.fenced.recv_timeout(ROUND) {
                let more: Vec<EtcdWrite> = std::iter::once(first).chain(self.fenced.try_iter()).collect();
                if self.retry.is_empty() {
                    self.write_fenced(more);
                } else {
                    self.retry.extend(more);
                    self.bound_retry();
                }
            }
        }
        // Writes queued before the stop (one try each), then give the lead and the lease up.
        let rest: Vec<EtcdWrite> = std::mem::take(&mut self.retry).into_iter().chain(self.fenced.try_iter()).collect();
        self.write_fenced(rest);
        self.retry.clear();
        self.release();
    }

    fn ok(&mut self, r: Result<(), EtcdError>) -> bool {
        let ok = r.is_ok();
        if let Err(e) = &r {
            self.last_error = Some(e.to_string());
        }
        if self.etcd_ok != Some(ok) {
            match &r {
                Ok(()) => tracing::info!(endpoint = self.client.endpoint(), "etcd reachable"),
                Err(e) => tracing::error!(error = %e, "etcd unreachable: this member takes no leader action"),
            }
            self.etcd_ok = Some(ok);
        }
        self.shared.set_etcd_ok(ok);
        ok
    }

    fn round(&mut self) {
        let now = self.now();
        // The lease and the member key.
        if self.lease.is_none() {
            let r = self.join();
            if !self.ok(r) {
                self.step_down("no lease");
                self.publish();
                return;
            }
        }
        if now >= self.next_keepalive {
            let r = self.keepalive(now);
            self.ok(r);
        }
        // Past the deadline: no longer leading, whatever etcd says later.
        if self.term != 0 && self.now() >= self.lease_until.saturating_sub(LEADER_MARGIN_NS) {
            self.step_down("lease deadline passed");
        }
        if self.lease.is_some() && !self.duplicate {
            let r = self.campaign();
            self.ok(r);
        } else if self.duplicate {
            let r = self.observe_leader();
            self.ok(r);
        }
        if self.now() >= self.next_read {
            self.next_read = self.now() + S;
            let r = self.read_back();
            self.ok(r);
        }
        self.publish();
    }

    fn join(&mut self) -> Result<(), EtcdError> {
        // The lease's life counts from before the grant was sent (a slow answer eats into it).
        let sent = self.now();
        let lease = self.client.lease_grant(self.cfg.lease_ttl as i64)?;
        self.joined = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.put_member(lease)?;
        self.lease = Some(lease);
        self.lease_until = sent + self.cfg.lease_ttl * S;
        self.next_keepalive = sent + self.cfg.lease_ttl * S / 3;
        tracing::info!(node = %self.w.me.node, lease = %lease, ttl_s = self.cfg.lease_ttl, "joined the cluster");
        Ok(())
    }

    /// Puts this member's key, bound to `lease`, only if no other lease holds it: a second
    /// member started with a node name in use is the one that waits (and says so), never the
    /// one already running. A member restarted after `kill -9` waits until its old key expires
    /// with its old lease (`lease_ttl`), then takes it.
    fn put_member(&mut self, lease: LeaseId) -> Result<(), EtcdError> {
        let mut me = self.w.me.clone();
        me.joined = self.joined;
        me.ready = true;
        let value = serde_json::to_vec(&me).unwrap_or_default();
        let key = self.cfg.key(&format!("members/{}", self.w.me.node));
        let bytes = (key.len() + value.len()) as u64;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.clone(), Some(lease))])
            .or_else([TxnOp::get(key.clone())]);
        let r = self.client.txn(&txn)?;
        let holder = r.responses.iter().find_map(|resp| match resp {
            crate::etcd::OpResponse::Range(rr) => rr.kvs.first().cloned(),
            _ => None,
        });
        if !r.succeeded && holder.as_ref().is_some_and(|kv| kv.lease != Some(lease)) {
            if !self.duplicate {
                tracing::error!(node = %self.w.me.node, "another member holds this node name in etcd: this one waits for the name and does not lead; give every member its own --node");
            }
            self.duplicate = true;
            return Ok(());
        }
        if !r.succeeded {
            // Ours already (same lease): refresh the addresses.
            self.client.put(key, value, Some(lease))?;
        }
        if self.duplicate {
            tracing::info!(node = %self.w.me.node, "this member's node name is free again: joined");
        }
        self.duplicate = false;
        self.shared.etcd_writes.fetch_add(1, Ordering::Relaxed);
        self.shared.etcd_write_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Reads who leads (a member that does not campaign still shows it).
    fn observe_leader(&mut self) -> Result<(), EtcdError> {
        let (kv, _) = self.client.get(self.cfg.key("leader"))?;
        self.leader = kv.map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.create_revision as u64));
        Ok(())
    }

    fn keepalive(&mut self, now: u64) -> Result<(), EtcdError> {
        let Some(lease) = self.lease else { return Ok(()) };
        // A failed keep-alive is retried at the next round; the deadline stays where the last
        // acknowledged one put it.
        self.next_keepalive = now + ROUND.as_nanos() as u64;
        match self.client.lease_keepalive(lease)? {
            Some(ttl) if ttl > 0 => {
                self.lease_until = now + ttl as u64 * S;
                self.next_keepalive = now + self.cfg.lease_ttl * S / 3;
                if self.term != 0 {
                    self.shared.set_leader(self.term, self.lease_until.saturating_sub(LEADER_MARGIN_NS));
                }
                Ok(())
            }
            _ => {
                tracing::warn!(lease = %lease, "the member lease expired: joining again");
                self.lease = None;
                self.step_down("lease expired");
                Ok(())
            }
        }
    }

    fn campaign(&mut self) -> Result<(), EtcdError> {
        let Some(lease) = self.lease else { return Ok(()) };
        let key = self.cfg.key("leader");
        if self.term != 0 {
            // Still ours? (A revoked lease or a deleted key ends the term.)
            let (kv, _) = self.client.get(&key)?;
            if kv.as_ref().is_none_or(|kv| kv.create_revision as u64 != self.term) {
                self.step_down("the leader key is gone");
            }
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), self.w.me.node.clone(), Some(lease))])
            .or_else([TxnOp::get(key)]);
        let sent = self.now();
        let r = self.client.txn(&txn)?;
        if r.succeeded {
            // The deadline is the lease's, from the last acknowledged keep-alive's send time:
            // binding the key to the lease does not renew it.
            let until = self.lease_until;
            self.shared.etcd_writes.fetch_add(1, Ordering::Relaxed);
            if sent >= until.saturating_sub(LEADER_MARGIN_NS) {
                // Held, but too close to the lease's end to act: the next keep-alive renews
                // it and the next round adopts the key (below).
                return Ok(());
            }
            // The records first: leading starts only once the control thread has them (a
            // failed read keeps the key; the next round adopts it and reads again).
            let records = self.records()?;
            let tables = self.tables()?;
            self.term = r.revision as u64;
            self.shared.set_leader(self.term, until.saturating_sub(LEADER_MARGIN_NS));
            self.shared.leader_changes.fetch_add(1, Ordering::Relaxed);
            self.leader = Some((self.w.me.node.clone(), self.term));
            tracing::warn!(term = self.term, "elected leader");
            let _ = self.w.control.send(ClusterInput::Leading { term: self.term, records, tables });
        } else {
            let holder = r.responses.iter().find_map(|resp| match resp {
                crate::etcd::OpResponse::Range(rr) => rr.kvs.first().cloned(),
                _ => None,
            });
            // Our own key on our own live lease (we stepped down on our deadline while etcd
            // could not be reached, and the lease outlived it): nobody else can have led
            // since; lead again, from the start (the grace applies again).
            if let Some(kv) =
                holder.as_ref().filter(|kv| kv.value == self.w.me.node.as_bytes() && kv.lease == Some(lease))
            {
                if sent < self.lease_until.saturating_sub(LEADER_MARGIN_NS) {
                    let records = self.records()?;
                    let tables = self.tables()?;
                    self.term = kv.create_revision as u64;
                    self.shared.set_leader(self.term, self.lease_until.saturating_sub(LEADER_MARGIN_NS));
                    self.shared.leader_changes.fetch_add(1, Ordering::Relaxed);
                    self.leader = Some((self.w.me.node.clone(), self.term));
                    tracing::warn!(term = self.term, "leading again (our key outlived the outage)");
                    let _ = self.w.control.send(ClusterInput::Leading { term: self.term, records, tables });
                    return Ok(());
                }
            }
            let now_leader =
                holder.map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.create_revision as u64));
            if now_leader != self.leader {
                match &now_leader {
                    Some((n, t)) => tracing::info!(leader = %n, term = t, "cluster leader"),
                    None => tracing::warn!("no cluster leader"),
                }
                self.leader = now_leader;
            }
        }
        Ok(())
    }

    fn step_down(&mut self, why: &str) {
        if self.term != 0 {
            tracing::warn!(term = self.term, why, "no longer the leader");
            self.shared.leader_changes.fetch_add(1, Ordering::Relaxed);
            self.term = 0;
            self.leader = None;
            let _ = self.w.control.send(ClusterInput::Following);
        }
        self.shared.set_leader(0, 0);
    }

    fn records(&mut self) -> Result<Vec<FailoverRecord>, EtcdError> {
        let (kvs, _) = self.client.range_prefix(self.cfg.key("failovers/"))?;
        // Read again once this member follows (its own writes moved the marker meanwhile).
        self.records_rev = -1;
        Ok(kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
    }

    /// The control plane's state: every key under `tables/`.
    fn tables(&mut self) -> Result<Vec<TableRow>, EtcdError> {
        let started = std::time::Instant::now();
        let (kvs, _) = self.client.range_prefix(self.cfg.key("tables/"))?;
        let prefix = self.cfg.key("tables/");
        let rows: Vec<TableRow> =
            kvs.into_iter().filter_map(|kv| super::mirror::row(&prefix, kv.key, Some(kv.value))).collect();
        tracing::info!(
            rows = rows.len(),
            ms = started.elapsed().as_millis() as u64,
            "read the control plane's state from etcd"
        );
        Ok(rows)
    }

    /// Members (everyone) and, for a member that does not lead, the failover records.
    fn read_back(&mut self) -> Result<(), EtcdError> {
        let (kvs, _) = self.client.range_prefix(self.cfg.key("members/"))?;
        // Our own key: gone (removed by hand, or the prefix wiped) → written again; held by
        // another lease (a second member started with our node name) → said once, loudly.
        let mine = self.cfg.key(&format!("members/{}", self.w.me.node));
        match kvs.iter().find(|kv| kv.key == mine.as_bytes()) {
            None => {
                if let Some(lease) = self.lease {
                    tracing::warn!(node = %self.w.me.node, "this member's key was gone from etcd: written again");
                    self.put_member(lease)?;
                }
            }
            Some(kv) if kv.lease != self.lease => {
                if !self.duplicate {
                    tracing::error!(node = %self.w.me.node, "another member holds this node name in etcd: this one waits for the name and does not lead; give every member its own --node");
                }
                self.duplicate = true;
            }
            Some(_) => {}
        }
        let mut members: Vec<Member> = kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
        members.sort_by(|a, b| a.node.cmp(&b.node));
        if members != self.members {
            let names: Vec<String> = members.iter().map(|m| m.node.clone()).collect();
            let _ = self.w.control.send(ClusterInput::Members(names));
            self.members = members;
        }
        // A prefix is read back only when its marker moved (see `txn`); a missing marker (a
        // fresh cluster, or keys removed by hand) reads as revision 0.
        let marker = self.marker("amphorae")?;
        if marker != self.settings_rev {
            let (kvs, _) = self.client.range_prefix(self.cfg.key("amphorae/"))?;
            self.settings_rev = marker;
            let settings: Vec<(crate::proto::octavia::Uuid, AmphoraSettings)> = kvs
                .iter()
                .filter_map(|kv| {
                    let key = std::str::from_utf8(&kv.key).ok()?;
                    let id = key.rsplit('/').next()?.parse().ok()?;
                    Some((id, serde_json::from_slice(&kv.value).ok()?))
                })
                .collect();
            let _ = self.w.control.send(ClusterInput::Settings(settings));
        }
        if self.term == 0 {
            let marker = self.marker("failovers")?;
            if marker != self.records_rev {
                let (kvs, _) = self.client.range_prefix(self.cfg.key("failovers/"))?;
                self.records_rev = marker;
                let records = kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
                let _ = self.w.control.send(ClusterInput::Records(records));
            }
        }
        Ok(())
    }

    /// The mod revision of `changed/<name>` (0: absent).
    fn marker(&self, name: &str) -> Result<i64, EtcdError> {
        let (kv, _) = self.client.get(self.cfg.key(&format!("changed/{name}")))?;
        Ok(kv.map_or(0, |kv| kv.mod_revision))
    }

    /// Writes each in order. One that failed on a transport error (etcd unreachable, no
    /// leader, a timeout) waits in `retry` for the next round, and the ones after it with it,
    /// so the order holds; a refused write (fenced out, or a bad request) is told at once.
    fn write_fenced(&mut self, batches: Vec<EtcdWrite>) {
        let mut batches = batches.into_iter();
        while let Some(w) = batches.next() {
            match self.write(&w.ops, w.fenced) {
                Err(Failed::Retry) if self.retry.len() < RETRY_MAX => {
                    self.retry.push(w);
                    self.retry.extend(batches.by_ref());
                    self.bound_retry();
                    return;
                }
                r => {
                    if let Some(done) = w.done {
                        done(r.map_err(|e| e.to_string()));
                    }
                }
            }
        }
    }

    /// Keeps at most [`RETRY_MAX`] writes waiting; the newest beyond are told they failed.
    fn bound_retry(&mut self) {
        if self.retry.len() > RETRY_MAX {
            tracing::error!(dropped = self.retry.len() - RETRY_MAX, "etcd writes dropped: too many waiting for etcd");
            for w in self.retry.drain(RETRY_MAX..) {
                if let Some(done) = w.done {
                    done(Err("etcd unreachable: too many writes waiting".into()));
                }
            }
        }
    }

    fn write(&mut self, ops: &[(String, Option<Vec<u8>>)], fenced: bool) -> Result<(), Failed> {
        if fenced && (self.term == 0 || !self.shared.is_leader()) {
            if self.term != 0 {
                // The deadline passed between rounds: this member stops leading now (the
                // control thread hears `Following` and reads the state again), whatever a
                // later keep-alive says.
                self.step_down("the lease deadline passed before a leader write");
            }
            self.shared.fenced_refused.fetch_add(ops.len() as u64, Ordering::Relaxed);
            tracing::warn!(writes = ops.len(), "leader writes dropped: this member does not lead");
            return Err(Failed::Refused("this member does not lead".into()));
        }
        // One transaction may not name a key twice (etcd refuses it): the last write of each
        // key wins, in the order of those last writes.
        let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, (k, _)) in ops.iter().enumerate() {
            last.insert(k.as_str(), i);
        }
        let ops: Vec<(String, Option<Vec<u8>>)> = ops
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| last.get(k.as_str()) == Some(i))
            .map(|(_, op)| op.clone())
            .collect();
        for chunk in ops.chunks(TXN_OPS) {
            let bytes: usize = chunk.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
            match txn(&self.client, &self.cfg, fenced.then_some(self.term), chunk.to_vec()) {
                Ok(true) => {
                    self.shared.etcd_writes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    self.shared.etcd_write_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                }
                Ok(false) => {
                    self.shared.fenced_refused.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    self.step_down("a fenced write was refused");
                    return Err(Failed::Refused("fenced: this member's term is over".into()));
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, writes = chunk.len(), "writes to etcd failed: tried again next round");
                    let _ = self.ok(Err(e));
                    return Err(Failed::Retry);
                }
                Err(e) => {
                    tracing::error!(error = %e, writes = chunk.len(), "etcd refused writes");
                    return Err(Failed::Refused(e.to_string()));
                }
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        if self.term != 0 {
            let _ = fenced_txn(&self.client, &self.cfg, self.term, vec![("leader".into(), None)]);
            self.step_down("graceful stop");
        }
        if let Some(lease) = self.lease.take() {
            let _ = self.client.lease_revoke(lease);
        }
        tracing::info!("left the cluster");
    }

    fn publish(&self) {
        let view = ClusterView {
            mode: "cluster",
            node: self.w.me.node.clone(),
            // Unknown while etcd does not answer (a stale name would mislead).
            leader: self.leader.as_ref().filter(|_| self.etcd_ok == Some(true)).map(|(n, _)| n.clone()),
            term: self.leader.as_ref().filter(|_| self.etcd_ok == Some(true)).map_or(0, |(_, t)| *t),
            members: self.members.clone(),
            etcd: EtcdView {
                endpoints: self.cfg.etcd.clone(),
                reachable: self.etcd_ok == Some(true),
                error: if self.etcd_ok == Some(true) { None } else { self.last_error.clone() },
            },
        };
        self.shared.view.store(Arc::new(view));
    }
}

/// The `cluster-digest` thread: every `digest_interval`, each peer gets the amphorae whose
/// liveness this member refreshed since that peer's last delivered digest. A peer seen for the
/// first time (a member that joined, or one this member just learned of) gets everything this
/// member heard; a peer that could not be reached gets what it missed at the next interval.
fn digests(cfg: &ClusterConfig, w: &Wiring, shared: &Shared, stop: &AtomicBool) {
    let every = Duration::from_secs_f64(cfg.digest_interval);
    // A peer that hangs delays neither the others (each peer has its own sender, in
    // parallel) nor the next round by more than one interval.
    let agent: ureq::Agent =
        ureq::AgentBuilder::new().timeout(cfg.timeout().min(every.max(Duration::from_millis(200)))).build();
    // Per peer: the scan time of its last delivered digest (0: never).
    let mut since: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    // Per peer: the relay buffer's time at its last delivered digest (0: never).
    let mut svc_since: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut heard: Vec<(Heard, u64)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(every);
        let view = shared.view.load();
        let peers: Vec<&Member> = view.members.iter().filter(|m| m.node != w.me.node).collect();
        since.retain(|node, _| peers.iter().any(|p| p.node == *node));
        svc_since.retain(|node, _| peers.iter().any(|p| p.node == *node));
        if peers.is_empty() {
            continue;
        }
        let floor = peers.iter().map(|p| since.get(&p.node).copied().unwrap_or(0)).min().unwrap_or(0);
        let now = w.clock.now_ns();
        heard.clear();
        let shards = &w.engine.pipeline.shards;
        for i in 0..shards.len() {
            let shard = shards.shard(i).lock();
            for (id, s) in shard.iter() {
                if s.last_refresh_ns > floor {
                    let age_ms = (now.saturating_sub(s.last_refresh_ns) / 1_000_000).min(u64::from(u32::MAX)) as u32;
                    heard.push((Heard { id: *id, age_ms, status: s.operating_status }, s.last_refresh_ns));
                }
            }
        }
        // The registrations this member accepted itself since the oldest peer's last digest,
        // encoded once for every peer.
        // Read with its own time under the relay lock (entries are stamped under it too): an
        // entry put after this read is stamped later, so the next digest carries it.
        let svc_floor = peers.iter().map(|p| svc_since.get(&p.node).copied().unwrap_or(0)).min().unwrap_or(0);
        let (services, svc_now): (Vec<(u64, u32, Vec<u8>)>, u64) = {
            let buf = shared.relay.lock();
            let t = w.clock.now_ns();
            let picked = buf
                .heard
                .values()
                .filter(|(at, _)| *at > svc_floor)
                .map(|(at, r)| {
                    let age_ms = (t.saturating_sub(*at) / 1_000_000).min(u64::from(u32::MAX)) as u32;
                    (*at, age_ms, serde_json::to_vec(r).unwrap_or_default())
                })
                .collect();
            (picked, t)
        };
        let impaired = shared.impaired.load(Ordering::Relaxed);
        let keys = w.keys.load();
        let results: Vec<(String, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = peers
                .iter()
                .map(|p| {
                    let from = since.get(&p.node).copied().unwrap_or(0);
                    let svc_from = svc_since.get(&p.node).copied().unwrap_or(0);
                    let (heard, agent, keys, services) = (&heard, &agent, &keys, &services);
                    scope.spawn(move || {
                        let picked: Vec<Heard> = heard.iter().filter(|(_, at)| *at > from).map(|(h, _)| *h).collect();
                        let relayed: Vec<(u32, &[u8])> = services
                            .iter()
                            .filter(|(at, _, _)| *at > svc_from)
                            .map(|(_, age, j)| (*age, &j[..]))
                            .collect();
                        let url = format!("http://{}/v1/cluster/digest", p.admin);
                        let mut body = Vec::new();
                        // One message at least (a peer learns this member is alive from it),
                        // as many as the amphorae and registrations need.
                        let (mut a, mut r) = (&picked[..], &relayed[..]);
                        loop {
                            let (chunk, rest) = a.split_at(a.len().min(digest::MAX_ENTRIES));
                            let fit = digest::services_fitting(r);
                            digest::encode(&w.me.node, impaired, chunk, &r[..fit], keys, &mut body);
                            a = rest;
                            r = &r[fit..];
                            match agent.post(&url).set("content-type", "application/octet-stream").send_bytes(&body) {
                                Ok(_) => {
                                    shared.digests_sent.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    tracing::debug!(peer = %p.node, error = %e, "digest not delivered");
                                    return (p.node.clone(), false);
                                }
                            }
                            if a.is_empty() && r.is_empty() {
                                break;
                            }
                        }
                        (p.node.clone(), true)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (node, delivered) in results {
            // The next digest to this peer starts where this scan started: a refresh during
            // the scan comes again (harmless: an older or equal refresh changes nothing).
            if delivered {
                since.insert(node.clone(), now);
                svc_since.insert(node, svc_now);
            }
        }
    }
}
