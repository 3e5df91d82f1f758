//! The confd responder. [`handle`] is the request handling, sans-IO: a datagram and the time
//! in, a signed reply (or a drop reason) out. [`Responder`] is the engine lane that runs it on
//! the workers, on batches from the confd socket's rx thread, and sends the replies with
//! `sendmmsg`; [`Confd`] holds what every worker's responder shares (keys, configuration,
//! counters).
//!
//! Ganeti's types 0–11 are answered from the loaded `config.data` ([`ConfigIndex`]) with its
//! serials; without one, every Ganeti type is answered `STATUS_ERROR` / `ERROR_INTERNAL`.
//! heartsink's own types (100–105) are answered from the control thread's [`Snapshot`], and
//! their serial is the snapshot's generation, so a client's serial filter prefers the freshest
//! heartsink; in cluster mode from the leader's view ([`crate::control::view`]) with its serial,
//! so that every member answers alike:
//!
//! | type | query | answer |
//! |---|---|---|
//! | 100 `AMPHORA_HEALTH` | amphora id | `{id, operating_status, liveness, last_refresh, load_balancer, failover}` |
//! | 101 `LB_STATUS` | load balancer id (or an amphora id) | `{load_balancer, operating_status, amphorae: [{id, operating_status, liveness}]}` |
//! | 102 `DOWN_SENDERS` | none, or the last id of the previous page | `{total, ids: [...≤ 150], next}` |
//! | 103 `ENGINE_COUNTERS` | none | `{received, accepted, dropped, drops: {reason: n}, kernel_drops, amphorae, down, suspended, generation}` |
//! | 104 `POOL_NEXT` | `NAME[?size=N&slot=S]`: a pool (one poll) or a service type | `{services: [{id, addr, location, ...}], flawed}` |
//! | 105 `POOL_POLL` | `POOL[?avoid=id,id&known=id,id]` | as 104; `ERROR_UNKNOWN_ENTRY` for an unknown pool, `ERROR_INTERNAL` when it cannot be satisfied |
//!
//! An unknown id is `STATUS_ERROR` with `ERROR_UNKNOWN_ENTRY`; a malformed query
//! `ERROR_ARGUMENT`, as Ganeti's own types do.
//!
//! Not a reflector: each signed request is answered once ([`ReplayCache`], shared by the
//! workers; a replay is dropped as `replay`), and reply bytes are bounded per source address and
//! in total ([`ReplyBudget`], one per worker; a reply over budget is not sent and counted as
//! `reply_budget`). A `DOWN_SENDERS` page holds at most [`DOWN_PAGE`] ids, so its reply stays
//! within [`DOWN_REPLY_MAX`] bytes plus the request's own `rsalt`.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::budget::{ReplyBudget, ReplyLimits};
use super::ganeti::ConfigIndex;
pub use super::heartsink::{answer_heartsink, HeartsinkScratch, DOWN_PAGE, DOWN_REPLY_MAX};
use super::proto::{
    encode_signed, Answered, HmacKey, ParseOptions, Reply, ReplyMsg, Request, RequestError, RequestScratch,
    RequestView, ERROR_INTERNAL, STATUS_ERROR,
};
use crate::control::{Published, Snapshot};
use crate::engine::counters::bump;
use crate::engine::{Batch, Clock, Lane, LaneFactory};

use super::replay::{ReplayCache, Seen};

/// The abuse bounds of a server: reloadable reply budget, and the replay cache's size (fixed at
/// start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfdLimits {
    /// Reply bytes per second, per source address and in total.
    pub reply: ReplyLimits,
    /// Replay cache entries (a restart applies a change).
    pub replay_cache: usize,
}

impl Default for ConfdLimits {
    fn default() -> ConfdLimits {
        ConfdLimits { reply: ReplyLimits::default(), replay_cache: super::replay::DEFAULT_CAPACITY }
    }
}

/// What the server answers with: keys and the Ganeti configuration. Swapped whole on reload.
#[derive(Debug, Default)]
pub struct ConfdState {
    /// Accepted keys, tried in order.
    pub keys: Vec<HmacKey>,
    /// The loaded `config.data`.
    pub index: Option<Arc<ConfigIndex>>,
    /// Where it was loaded from.
    pub config_path: Option<PathBuf>,
    /// Modification time and length of the file when loaded (change detection).
    pub config_stamp: Option<(SystemTime, u64)>,
    /// Reply budget and replay cache size.
    pub limits: ConfdLimits,
}

impl ConfdState {
    /// Keys and, when given, the configuration loaded from `path`.
    pub fn load(keys: Vec<HmacKey>, path: Option<PathBuf>) -> Result<ConfdState, String> {
        let (index, stamp) = match &path {
            Some(p) => {
                let stamp = stamp_of(p);
                let index = ConfigIndex::load(p).map_err(|e| format!("{}: {e}", p.display()))?;
                (Some(Arc::new(index)), stamp)
            }
            None => (None, None),
        };
        Ok(ConfdState { keys, index, config_path: path, config_stamp: stamp, limits: ConfdLimits::default() })
    }

    /// If the configuration file changed since it was loaded, a state with it reloaded (same
    /// keys). `Err` when it changed but does not load (the old one stays in use).
    pub fn reloaded_if_changed(&self) -> Option<Result<ConfdState, String>> {
        let path = self.config_path.as_ref()?;
        let stamp = stamp_of(path);
        if stamp == self.config_stamp || stamp.is_none() {
            return None;
        }
        Some(ConfdState::load(self.keys.clone(), Some(path.clone())).map(|mut s| {
            s.config_stamp = stamp;
            s.limits = self.limits;
            s
        }))
    }
}

fn stamp_of(p: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The buffers a responder answers with, kept from one request to the next: once they have
/// grown, [`handle`] allocates nothing for a dropped request, nor for the Ganeti types
/// answered from the index without building a value (see [`ConfigIndex::write_answer`]), nor
/// for heartsink's types (see [`answer_heartsink`]) but `DOWN_SENDERS`, which makes one
/// allocation per request (`imbl`'s range iterator).
#[derive(Clone, Debug, Default)]
pub struct ConfdScratch {
    request: RequestScratch,
    msg: ReplyMsg,
    heartsink: HeartsinkScratch,
}

/// Writes the answer to a verified request into `msg`; heartsink's types from `snap` (`None`:
/// a cluster member holding no view of the leader's yet), computed in `scratch` (kept between
/// calls).
pub fn answer_into(
    req: &RequestView<'_>,
    state: &ConfdState,
    snap: Option<&Snapshot>,
    msg: &mut ReplyMsg,
    scratch: &mut HeartsinkScratch,
) {
    if req.kind.is_heartsink() {
        // Cluster mode before a view of the leader's arrived: an error of serial 0, which any
        // member's real answer outranks.
        return match snap {
            Some(snap) => answer_heartsink(req, snap, msg, scratch),
            None => msg.write(&Answered {
                status: STATUS_ERROR,
                answer: super::proto::Answer::Int(ERROR_INTERNAL),
                serial: 0,
            }),
        };
    }
    match &state.index {
        Some(index) => index.write_answer(req, msg),
        None => msg.write_reply(&Reply::error(ERROR_INTERNAL)),
    }
}

/// The answer to a verified request, as a value ([`answer_into`], read back: allocates).
pub fn answer(req: &Request, state: &ConfdState, snap: Option<&Snapshot>) -> Reply {
    let mut msg = ReplyMsg::default();
    answer_into(&req.view(), state, snap, &mut msg, &mut HeartsinkScratch::default());
    msg.to_reply().unwrap_or_else(|| Reply::error(ERROR_INTERNAL))
}

/// Verifies one request datagram, checks it against the replay cache (when given), and writes
/// the signed reply into `out`. `now` is unix seconds. A dropped request returns its reason and
/// writes nothing. `scratch` is kept from one call to the next.
pub fn handle(
    datagram: &[u8],
    now: i64,
    state: &ConfdState,
    snap: Option<&Snapshot>,
    replay: Option<&ReplayCache>,
    scratch: &mut ConfdScratch,
    out: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let ConfdScratch { request, msg, heartsink } = scratch;
    let v = request.parse(datagram, &state.keys, now, ParseOptions::default())?;
    if let Some(cache) = replay {
        if cache.check(&v.mac, v.timestamp, now) == Seen::Replay {
            return Err(RequestError::Replay);
        }
    }
    answer_into(&v.request, state, snap, msg, heartsink);
    if let Some(key) = state.keys.get(v.key_index) {
        encode_signed(out, msg, v.request.rsalt, key);
    }
    Ok(())
}

/// The counters of one worker's responder.
#[derive(Debug, Default)]
pub struct ConfdCounters {
    /// Requests taken from the ring.
    pub requests: AtomicU64,
    /// Replies sent.
    pub replies: AtomicU64,
    /// Replies that could not be sent (socket buffer full, network error).
    pub send_errors: AtomicU64,
    /// Requests dropped, by [`RequestError::ALL`] index.
    pub drops: [AtomicU64; RequestError::ALL.len()],
}

/// What every worker's responder shares: keys and configuration (swapped whole on reload) and
/// the counters.
#[derive(Debug)]
pub struct Confd {
    /// Keys and the Ganeti configuration.
    pub state: ArcSwap<ConfdState>,
    /// One set of counters per worker.
    pub counters: Vec<Arc<ConfdCounters>>,
    /// Signatures of the requests answered, shared by the workers.
    pub replay: ReplayCache,
}

impl Confd {
    /// Shared state for `workers` responders.
    pub fn new(state: ConfdState, workers: usize) -> Confd {
        Confd {
            replay: ReplayCache::new(state.limits.replay_cache),
            state: ArcSwap::from_pointee(state),
            counters: (0..workers.max(1)).map(|_| Arc::new(ConfdCounters::default())).collect(),
        }
    }

    /// Summed counters: requests, replies, send errors, and drops in [`RequestError::ALL`] order.
    pub fn totals(&self) -> (u64, u64, u64, Vec<u64>) {
        let r = std::sync::atomic::Ordering::Relaxed;
        let mut drops = vec![0; RequestError::ALL.len()];
        let (mut req, mut rep, mut err) = (0, 0, 0);
        for c in &self.counters {
            req += c.requests.load(r);
            rep += c.replies.load(r);
            err += c.send_errors.load(r);
            for (d, x) in drops.iter_mut().zip(&c.drops) {
                *d += x.load(r);
            }
        }
        (req, rep, err, drops)
    }

    /// The engine lane factory: one [`Responder`] per worker, answering from `published`.
    pub fn lane(self: &Arc<Confd>, published: Arc<Published>, clock: Arc<dyn Clock>) -> LaneFactory {
        let confd = self.clone();
        Box::new(move |worker, socket| {
            let workers = confd.counters.len();
            Box::new(Responder {
                budget: ReplyBudget::new(workers),
                socket,
                confd: confd.clone(),
                counters: confd.counters[worker % confd.counters.len()].clone(),
                published: published.clone(),
                clock: clock.clone(),
                send: crate::io::SendBatch::new(64),
                scratch: ConfdScratch::default(),
                out: Vec::new(),
            })
        })
    }

    /// Reloads the configuration file when it changed (the confd watch task); a broken file is
    /// reported once per distinct error and the previous configuration stays in use.
    pub fn watch(self: &Arc<Confd>) -> impl FnMut(u64) -> Result<(), crate::control::TaskError> + Send + 'static {
        let confd = self.clone();
        let mut last_error: Option<String> = None;
        move |_now| {
            let current = confd.state.load();
            match current.reloaded_if_changed() {
                None => Ok(()),
                Some(Ok(new)) => {
                    let serial = new.index.as_ref().map(|i| i.serial_no());
                    confd.state.store(Arc::new(new));
                    last_error = None;
                    tracing::info!(serial = ?serial, "confd configuration reloaded (file changed)");
                    Ok(())
                }
                Some(Err(e)) if last_error.as_ref() == Some(&e) => Ok(()),
                Some(Err(e)) => {
                    last_error = Some(e.clone());
                    Err(crate::control::TaskError(format!("confd configuration not reloaded: {e}")))
                }
            }
        }
    }
}

/// One worker's confd lane: answers a batch of requests and sends the replies with `sendmmsg`.
pub struct Responder {
    socket: std::net::UdpSocket,
    confd: Arc<Confd>,
    counters: Arc<ConfdCounters>,
    published: Arc<Published>,
    clock: Arc<dyn Clock>,
    send: crate::io::SendBatch,
    scratch: ConfdScratch,
    out: Vec<u8>,
    budget: ReplyBudget,
}

impl Lane for Responder {
    fn process(&mut self, batch: &Batch) {
        let state = self.confd.state.load();
        let snap = self.published.answer_view();
        let now_ns = self.clock.now_ns();
        let now = (now_ns / 1_000_000_000) as i64;
        let mut replies = 0;
        for (data, src) in batch.sourced() {
            let Some(src) = src else { continue };
            self.out.clear();
            let replay = Some(&self.confd.replay);
            let handled = handle(data, now, &state, snap.as_deref(), replay, &mut self.scratch, &mut self.out)
                .and_then(|()| match self.budget.allow(state.limits.reply, &src, self.out.len(), now_ns) {
                    true => Ok(()),
                    false => Err(RequestError::ReplyBudget),
                });
            match handled {
                Ok(()) => {
                    if self.send.is_full() {
                        replies += self.flush();
                    }
                    let out = &self.out;
                    self.send.push(&src, |b| b.extend_from_slice(out));
                }
                Err(e) => {
                    let i = RequestError::ALL.iter().position(|x| *x == e).unwrap_or(0);
                    bump(&self.counters.drops[i], 1);
                    tracing::debug!(reason = e.label(), from = %src, "confd request dropped");
                }
            }
        }
        replies += self.flush();
        bump(&self.counters.requests, batch.len() as u64);
        bump(&self.counters.replies, replies);
    }
}

impl Responder {
    fn flush(&mut self) -> u64 {
        let queued = self.send.len() as u64;
        let sent = match self.send.flush(&self.socket) {
            Ok(n) => n as u64,
            Err(e) => {
                tracing::debug!(error = %e, "confd replies not sent");
                0
            }
        };
        self.send.clear();
        bump(&self.counters.send_errors, queued.saturating_sub(sent));
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confd::proto::{
        encode_request, parse_reply, Query, RequestType, ERROR_ARGUMENT, ERROR_UNKNOWN_ENTRY, STATUS_OK,
    };
    use crate::control::liveness::Live;
    use crate::control::AmphoraHealth;
    use crate::proto::octavia::Uuid;
    use crate::state::OperatingStatus;
    use serde_json::json;

    fn snap() -> Snapshot {
        let mut s = Snapshot { generation: 42, ..Snapshot::default() };
        for i in 1..=3u8 {
            s.amphorae.insert(
                Uuid::from_bytes([i; 16]),
                AmphoraHealth {
                    operating_status: OperatingStatus::Online,
                    liveness: if i == 3 { Live::Stale } else { Live::Alive },
                    last_refresh_ns: u64::from(i) * 1_000_000_000,
                    first_seen_ns: 0,
                    load_balancer: Some(Uuid::from_bytes([9; 16])),
                    expected_listeners: None,
                    zone: None,
                    failover: None,
                },
            );
            s.load_balancers.entry(Uuid::from_bytes([9; 16])).or_default().insert(Uuid::from_bytes([i; 16]));
        }
        s.down.insert(Uuid::from_bytes([3; 16]));
        s
    }

    fn ask(kind: RequestType, query: Query, state: &ConfdState) -> Reply {
        let key = HmacKey::new(b"k\n");
        let req = Request::new(kind, query, "salty");
        let packet = encode_request(&req, 1000, &key);
        let mut out = Vec::new();
        handle(&packet, 1000, state, Some(&snap()), None, &mut ConfdScratch::default(), &mut out).expect("answered");
        let (rsalt, reply) = parse_reply(&out, &key).expect("signed reply");
        assert_eq!(rsalt, "salty");
        assert!(out.is_ascii());
        reply
    }

    fn state() -> ConfdState {
        ConfdState { keys: vec![HmacKey::new(b"k\n")], ..ConfdState::default() }
    }

    /// Cluster mode: no view held yet gives an error of serial 0; in a view, pool picks are a
    /// function of (serial, query, rsalt), so members holding the same view pick alike.
    #[test]
    fn cluster_views_answer_alike_and_no_view_is_an_error_of_serial_0() {
        let none = answer(&Request::new(RequestType::EngineCounters, Query::Empty, "s"), &state(), None);
        assert_eq!((none.status, none.answer.clone(), none.serial), (STATUS_ERROR, json!(ERROR_INTERNAL), 0));
        let entries = (0..20).map(|i| crate::registry::lb::WorldEntry {
            type_name: "rawx".into(),
            addr: format!("10.0.0.{i}:1"),
            id: format!("10.0.0.{i}:1"),
            score: 50,
            location: i,
            slots: vec![],
        });
        let world = Arc::new(crate::registry::lb::World::from_entries(entries));
        let view = Snapshot { generation: 7 << 32 | 3, cluster_view: true, world, ..Snapshot::default() };
        let pick = |salt: &str| {
            let r = answer(
                &Request::new(RequestType::PoolNext, Query::Plain("rawx?size=3".into()), salt),
                &state(),
                Some(&view),
            );
            assert_eq!((r.status, r.serial), (0, 7 << 32 | 3));
            r.answer
        };
        assert_eq!(pick("one"), pick("one"), "the same request on the same view");
        let picks: std::collections::BTreeSet<String> =
            (0..20).map(|i| pick(&format!("salt{i}")).to_string()).collect();
        assert!(picks.len() > 1, "different requests spread over the services");
    }

    #[test]
    fn amphora_health_and_unknown_and_bad_query() {
        let r = ask(RequestType::AmphoraHealth, Query::Plain(Uuid::from_bytes([1; 16]).to_string()), &state());
        assert_eq!((r.status, r.serial), (0, 42));
        assert_eq!(r.answer["operating_status"], "ONLINE");
        assert_eq!(r.answer["liveness"], "alive");
        let r = ask(RequestType::AmphoraHealth, Query::Plain(Uuid::from_bytes([7; 16]).to_string()), &state());
        assert_eq!((r.status, r.answer.clone()), (1, json!(ERROR_UNKNOWN_ENTRY)));
        let r = ask(RequestType::AmphoraHealth, Query::Plain("nope".into()), &state());
        assert_eq!((r.status, r.answer.clone()), (1, json!(ERROR_ARGUMENT)));
    }

    #[test]
    fn lb_status_uses_the_freshest_live_amphora() {
        let r = ask(RequestType::LbStatus, Query::Plain(Uuid::from_bytes([9; 16]).to_string()), &state());
        assert_eq!(r.answer["operating_status"], "ONLINE");
        assert_eq!(r.answer["amphorae"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn down_senders_and_counters() {
        let r = ask(RequestType::DownSenders, Query::Empty, &state());
        assert_eq!(r.answer["total"], 1);
        assert_eq!(r.answer["ids"][0], Uuid::from_bytes([3; 16]).to_string());
        let r = ask(RequestType::EngineCounters, Query::Empty, &state());
        assert_eq!(r.answer["down"], 1);
        assert_eq!(r.answer["generation"], 42);
    }

    #[test]
    fn ganeti_types_without_config_are_internal_errors() {
        let r = ask(RequestType::Ping, Query::Empty, &state());
        assert_eq!((r.status, r.answer.clone()), (1, json!(ERROR_INTERNAL)));
    }

    #[test]
    fn down_senders_pages_stay_within_the_bound() {
        let mut big = snap();
        for i in 0..1000u32 {
            let mut b = [0xffu8; 16];
            b[..4].copy_from_slice(&i.to_be_bytes());
            big.down.insert(Uuid::from_bytes(b));
        }
        let key = HmacKey::new(b"k\n");
        let (mut seen, mut after, mut pages) = (0, Query::Empty, 0);
        loop {
            let rsalt = "00000000-0000-4000-8000-000000000001";
            let packet = encode_request(&Request::new(RequestType::DownSenders, after.clone(), rsalt), 1000, &key);
            let mut out = Vec::new();
            handle(&packet, 1000, &state(), Some(&big), None, &mut ConfdScratch::default(), &mut out)
                .expect("answered");
            assert!(out.len() <= DOWN_REPLY_MAX + rsalt.len(), "{} bytes", out.len());
            let (_, r) = parse_reply(&out, &key).expect("signed");
            assert_eq!(r.answer["total"], 1001);
            seen += r.answer["ids"].as_array().map_or(0, Vec::len);
            pages += 1;
            match r.answer["next"].as_str() {
                Some(n) => after = Query::Plain(n.to_owned()),
                None => break,
            }
        }
        assert_eq!((seen, pages), (1001, 1001usize.div_ceil(DOWN_PAGE)));
    }

    #[test]
    fn a_replayed_request_is_answered_once() {
        let key = HmacKey::new(b"k\n");
        let cache = ReplayCache::new(1024);
        let packet = encode_request(&Request::new(RequestType::Ping, Query::Empty, "once"), 1000, &key);
        let mut out = Vec::new();
        assert_eq!(
            handle(&packet, 1000, &state(), Some(&snap()), Some(&cache), &mut ConfdScratch::default(), &mut out),
            Ok(())
        );
        for now in [1000, 1100, 1300] {
            out.clear();
            assert_eq!(
                handle(&packet, now, &state(), Some(&snap()), Some(&cache), &mut ConfdScratch::default(), &mut out),
                Err(RequestError::Replay)
            );
            assert!(out.is_empty());
        }
        // The same signature with its hex digits in upper case is the same request.
        let text = String::from_utf8(packet.clone()).expect("ascii");
        let at = text.find("\"hmac\": \"").expect("hmac") + 10;
        let upper = format!("{}{}{}", &text[..at], text[at..at + 40].to_uppercase(), &text[at + 40..]);
        assert_ne!(upper.as_bytes(), &packet[..]);
        assert_eq!(
            handle(
                upper.as_bytes(),
                1000,
                &state(),
                Some(&snap()),
                Some(&cache),
                &mut ConfdScratch::default(),
                &mut out
            ),
            Err(RequestError::Replay)
        );
        // Another request is answered.
        let other = encode_request(&Request::new(RequestType::Ping, Query::Empty, "twice"), 1000, &key);
        assert_eq!(
            handle(&other, 1000, &state(), Some(&snap()), Some(&cache), &mut ConfdScratch::default(), &mut out),
            Ok(())
        );
    }

    #[test]
    fn bad_hmac_is_dropped_without_reply() {
        let req = Request::new(RequestType::Ping, Query::Empty, "s");
        let packet = encode_request(&req, 1000, &HmacKey::new(b"other"));
        let mut out = Vec::new();
        assert_eq!(
            handle(&packet, 1000, &state(), Some(&snap()), None, &mut ConfdScratch::default(), &mut out),
            Err(RequestError::BadHmac)
        );
        assert!(out.is_empty());
    }

    /// The answers of types 100–105 as they were built before they were written in place
    /// (`serde_json::Value`s, whose objects are sorted by key): the bytes must not change.
    fn built_heartsink_answer(req: &Request, snap: &Snapshot) -> Reply {
        use crate::engine::DropReason;
        use crate::util::rfc3339;
        let serial = snap.generation as i64;
        let id = |q: &Query| match q {
            Query::Plain(s) => Uuid::try_parse(s).ok(),
            _ => None,
        };
        let bad = Reply::error(ERROR_ARGUMENT);
        let unknown = Reply::new(STATUS_ERROR, json!(ERROR_UNKNOWN_ENTRY), serial);
        match req.kind {
            RequestType::AmphoraHealth => {
                let Some(id) = id(&req.query) else { return bad };
                let Some(h) = snap.amphorae.get(&id) else { return unknown };
                Reply::ok(
                    json!({
                        "id": id,
                        "operating_status": h.operating_status,
                        "liveness": h.liveness,
                        "last_refresh": rfc3339(h.last_refresh_ns),
                        "load_balancer": h.load_balancer,
                        "failover": h.failover.map(|(r, st)| json!({"id": r, "state": st.as_str()})),
                    }),
                    serial,
                )
            }
            RequestType::LbStatus => {
                let Some(id) = id(&req.query) else { return bad };
                let Some((status, members)) = snap.load_balancer_status(&id) else { return unknown };
                Reply::ok(
                    json!({
                        "load_balancer": id,
                        "operating_status": status,
                        "amphorae": members.iter().map(|(a, h)| json!({
                            "id": a, "operating_status": h.operating_status, "liveness": h.liveness,
                        })).collect::<Vec<_>>(),
                    }),
                    serial,
                )
            }
            RequestType::DownSenders => {
                let after = match &req.query {
                    Query::Empty => None,
                    Query::Plain(s) if s.is_empty() => None,
                    q => match id(q) {
                        Some(id) => Some(id),
                        None => return bad,
                    },
                };
                use std::ops::Bound;
                let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
                let ids: Vec<Uuid> = snap.down.range((lower, Bound::Unbounded)).take(DOWN_PAGE + 1).copied().collect();
                let next = if ids.len() > DOWN_PAGE { ids.get(DOWN_PAGE - 1).copied() } else { None };
                let page: Vec<String> = ids.iter().take(DOWN_PAGE).map(Uuid::to_string).collect();
                Reply::ok(json!({"total": snap.down.len(), "ids": page, "next": next}), serial)
            }
            RequestType::EngineCounters => {
                let t = &snap.totals;
                let drops: serde_json::Map<String, serde_json::Value> =
                    DropReason::ALL.iter().map(|d| (d.label().to_owned(), json!(t.drop_count(*d)))).collect();
                Reply::ok(
                    json!({
                        "received": t.received,
                        "accepted": t.accepted,
                        "dropped": t.dropped(),
                        "drops": drops,
                        "kernel_drops": t.kernel_drops,
                        "amphorae": snap.amphorae.len(),
                        "down": snap.down.len(),
                        "suspended": snap.suspended.iter().map(|s| s.label()).collect::<Vec<_>>(),
                        "generation": snap.generation,
                    }),
                    serial,
                )
            }
            _ => bad,
        }
    }

    #[test]
    fn heartsink_answers_are_byte_identical_to_the_built_ones() {
        use crate::control::failover::FailoverState;
        let mut s = snap();
        s.totals.received = 12345;
        s.totals.accepted = 12000;
        s.totals.drops[1] = 7;
        s.totals.kernel_drops = 3;
        if let Some(h) = s.amphorae.get_mut(&Uuid::from_bytes([2; 16])) {
            h.failover = Some((17, FailoverState::InProgress));
            h.load_balancer = None;
        }
        for i in 0..400u32 {
            let mut b = [0xeeu8; 16];
            b[..4].copy_from_slice(&i.to_be_bytes());
            s.down.insert(Uuid::from_bytes(b));
        }
        let plain = |u: [u8; 16]| Query::Plain(Uuid::from_bytes(u).to_string());
        let mut cases = vec![
            (RequestType::EngineCounters, Query::Empty),
            (RequestType::DownSenders, Query::Empty),
            (RequestType::DownSenders, Query::Plain(String::new())),
            (RequestType::DownSenders, plain([3; 16])),
            (RequestType::DownSenders, Query::Plain("not an id".into())),
            (RequestType::AmphoraHealth, Query::Empty),
            (RequestType::AmphoraHealth, Query::Plain("nope".into())),
            (RequestType::LbStatus, Query::Empty),
        ];
        for u in [[1; 16], [2; 16], [3; 16], [7; 16], [9; 16]] {
            cases.push((RequestType::AmphoraHealth, plain(u)));
            cases.push((RequestType::LbStatus, plain(u)));
        }
        let (mut msg, mut page, mut built) = (ReplyMsg::default(), HeartsinkScratch::default(), ReplyMsg::default());
        for (kind, query) in cases {
            let req = Request::new(kind, query, "salt");
            answer_heartsink(&req.view(), &s, &mut msg, &mut page);
            built.write_reply(&built_heartsink_answer(&req, &s));
            assert_eq!(msg.as_str(), built.as_str(), "{req:?}");
        }
        s.suspended.clear();
        answer_heartsink(&Request::new(RequestType::EngineCounters, Query::Empty, "s").view(), &s, &mut msg, &mut page);
        let r = msg.to_reply().expect("reads back");
        assert_eq!(
            (r.status, r.answer["drops"].as_object().map(|m| m.len())),
            (STATUS_OK, Some(crate::engine::DropReason::ALL.len()))
        );
    }
}
