//! Answers to heartsink's own request types (100–105) from the control thread's [`Snapshot`]
//! (the table is in [`super::server`]'s documentation), written straight into the reply's
//! buffer: every type but one allocates nothing once the buffers of a [`HeartsinkScratch`] have
//! grown.
//!
//! * `DOWN_SENDERS` walks one page of the snapshot's `down` set from the request's cursor, so
//!   its cost grows with the page, not with the fleet. `imbl`'s range iterator allocates its
//!   path through a tree of more than one level: one allocation per request, which
//!   `tests/alloc.rs` pins. (A sorted copy of the set kept per worker would avoid it, at the
//!   price of copying the whole set, 16 MB at a million down, whenever it changes.)
//! * The pools' answers (104, 105) parse the query by borrowing it (percent-decoding into the
//!   scratch), poll into a [`PollScratch`] and write the picks from the world's strings.
//!
//! The bytes are those of the answers as `serde_json::Value` objects (whose members are sorted
//! by key), so every structure below declares its fields in key order.

use std::ops::Bound;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::json::Seq;
use super::proto::{
    Answer, Answered, QueryView, Reply, ReplyMsg, RequestType, RequestView, ERROR_ARGUMENT, ERROR_INTERNAL,
    ERROR_UNKNOWN_ENTRY, STATUS_ERROR, STATUS_OK,
};
use crate::control::liveness::Live;
use crate::control::{AmphoraHealth, Snapshot};
use crate::engine::DropReason;
use crate::proto::octavia::Uuid;
use crate::registry::lb::{PollScratch, Refusal, SelectedRef, ServiceRef};
use crate::state::OperatingStatus;

/// Most ids in one `DOWN_SENDERS` answer: 150 ids of 41 bytes each in the signed reply (36
/// characters, two escaped quotes, a comma) keep it within [`DOWN_REPLY_MAX`].
pub const DOWN_PAGE: usize = 150;

/// The largest `DOWN_SENDERS` reply, bytes, not counting the request's `rsalt` (echoed as the
/// reply's salt; the request carries it too, so it adds no amplification).
pub const DOWN_REPLY_MAX: usize = 8192;

/// An error reply (`STATUS_ERROR`) with an integer answer.
fn error(answer: i64, serial: i64) -> Answered<'static> {
    Answered { status: STATUS_ERROR, answer: Answer::Int(answer), serial }
}

fn id_query(q: &QueryView<'_>) -> Result<Uuid, Answered<'static>> {
    match q {
        QueryView::Plain(s) => Uuid::try_parse(s).map_err(|_| error(ERROR_ARGUMENT, 0)),
        _ => Err(error(ERROR_ARGUMENT, 0)),
    }
}

/// A timestamp in RFC 3339 with milliseconds, written without an intermediate `String`.
struct Rfc3339(u64);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&crate::util::rfc3339_display(self.0))
    }
}

#[derive(serde::Serialize)]
struct FailoverAnswer {
    id: u64,
    state: &'static str,
}

/// 100 `AMPHORA_HEALTH`.
#[derive(serde::Serialize)]
struct HealthAnswer {
    failover: Option<FailoverAnswer>,
    id: Uuid,
    last_refresh: Rfc3339,
    liveness: Live,
    load_balancer: Option<Uuid>,
    operating_status: OperatingStatus,
}

/// A member in a 101 `LB_STATUS` answer.
#[derive(serde::Serialize)]
struct MemberAnswer {
    id: Uuid,
    liveness: Live,
    operating_status: OperatingStatus,
}

/// 101 `LB_STATUS`.
#[derive(serde::Serialize)]
#[serde(bound(serialize = "Seq<I>: Serialize"))]
struct LbAnswer<I> {
    amphorae: Seq<I>,
    load_balancer: Uuid,
    operating_status: OperatingStatus,
}

/// 102 `DOWN_SENDERS`.
#[derive(serde::Serialize)]
struct DownAnswer<'a> {
    ids: &'a [Uuid],
    next: Option<Uuid>,
    total: usize,
}

/// The drop counters by label, in label order (as a sorted map holds them).
struct Drops<'a>(&'a crate::engine::Totals);

impl Serialize for Drops<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut order = DropReason::ALL;
        order.sort_unstable_by_key(|d| d.label());
        let mut map = s.serialize_map(Some(order.len()))?;
        for d in order {
            map.serialize_entry(d.label(), &self.0.drop_count(d))?;
        }
        map.end()
    }
}

/// 103 `ENGINE_COUNTERS`.
#[derive(serde::Serialize)]
#[serde(bound(serialize = "Seq<I>: Serialize"))]
struct CountersAnswer<'a, I> {
    accepted: u64,
    amphorae: usize,
    down: usize,
    dropped: u64,
    drops: Drops<'a>,
    generation: u64,
    kernel_drops: u64,
    received: u64,
    suspended: Seq<I>,
}

/// The buffers heartsink's answers are computed in, kept from one request to the next.
#[derive(Clone, Debug, Default)]
pub struct HeartsinkScratch {
    /// A `DOWN_SENDERS` page (walked from the set: its cost grows with the page, not with the
    /// fleet; imbl's range iterator allocates its path stack, one allocation per request).
    down: Vec<Uuid>,
    query: PoolQuery,
    poll: PollScratch,
}

/// Writes the answer to heartsink's request `req` from `snap` into `msg`, computed in
/// `scratch`.
pub fn answer_heartsink(req: &RequestView<'_>, snap: &Snapshot, msg: &mut ReplyMsg, scratch: &mut HeartsinkScratch) {
    let serial = snap.generation as i64;
    let unknown = error(ERROR_UNKNOWN_ENTRY, serial);
    match req.kind {
        RequestType::AmphoraHealth => {
            let id = match id_query(&req.query) {
                Ok(id) => id,
                Err(r) => return msg.write(&r),
            };
            match snap.amphorae.get(&id) {
                Some(h) => msg.write_json(STATUS_OK, &health(id, h), serial),
                None => msg.write(&unknown),
            }
        }
        RequestType::LbStatus => {
            let id = match id_query(&req.query) {
                Ok(id) => id,
                Err(r) => return msg.write(&r),
            };
            let Some(members) = snap.load_balancer_members(&id) else { return msg.write(&unknown) };
            let answer = LbAnswer {
                operating_status: Snapshot::rolled_up_status(members.clone()),
                amphorae: Seq(members.map(|(id, h)| MemberAnswer {
                    id,
                    liveness: h.liveness,
                    operating_status: h.operating_status,
                })),
                load_balancer: id,
            };
            msg.write_json(STATUS_OK, &answer, serial);
        }
        RequestType::DownSenders => {
            let after = match &req.query {
                QueryView::Empty | QueryView::Plain("") => None,
                q => match id_query(q) {
                    Ok(id) => Some(id),
                    Err(r) => return msg.write(&r),
                },
            };
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            let page = &mut scratch.down;
            page.clear();
            page.extend(snap.down.range((lower, Bound::Unbounded)).take(DOWN_PAGE + 1).copied());
            let next = if page.len() > DOWN_PAGE { page.get(DOWN_PAGE - 1).copied() } else { None };
            page.truncate(DOWN_PAGE);
            msg.write_json(STATUS_OK, &DownAnswer { ids: page, next, total: snap.down.len() }, serial);
        }
        RequestType::EngineCounters => {
            let t = &snap.totals;
            let answer = CountersAnswer {
                accepted: t.accepted,
                amphorae: snap.amphorae.len(),
                down: snap.down.len(),
                dropped: t.dropped(),
                drops: Drops(t),
                generation: snap.generation,
                kernel_drops: t.kernel_drops,
                received: t.received,
                suspended: Seq(snap.suspended.iter().map(|s| s.label())),
            };
            msg.write_json(STATUS_OK, &answer, serial);
        }
        RequestType::PoolNext | RequestType::PoolPoll => pool_answer(req, snap, msg, scratch),
        _ => msg.write(&error(ERROR_ARGUMENT, 0)),
    }
}

fn health(id: Uuid, h: &AmphoraHealth) -> HealthAnswer {
    HealthAnswer {
        failover: h.failover.map(|(id, st)| FailoverAnswer { id, state: st.as_str() }),
        id,
        last_refresh: Rfc3339(h.last_refresh_ns),
        liveness: h.liveness,
        load_balancer: h.load_balancer,
        operating_status: h.operating_status,
    }
}

/// The query of a pools' request, percent-decoded (as `form_urlencoded` decodes it) into
/// buffers kept from one request to the next. Spans are ranges of `text`.
#[derive(Clone, Debug, Default)]
struct PoolQuery {
    bytes: Vec<u8>,
    key: String,
    text: String,
    size: u32,
    slot: Option<(usize, usize)>,
    avoid: Vec<(usize, usize)>,
    known: Vec<(usize, usize)>,
}

/// Appends `input` decoded as `form_urlencoded` decodes a name or a value (`+` is a space,
/// `%XX` a byte, a lone `%` itself, invalid UTF-8 replaced) to `out`; `bytes` is scratch.
fn form_decode(input: &str, bytes: &mut Vec<u8>, out: &mut String) {
    if !input.bytes().any(|b| b == b'%' || b == b'+') {
        return out.push_str(input);
    }
    bytes.clear();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut rest = input.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => match (rest.first().copied().and_then(hex), rest.get(1).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    bytes.push(h << 4 | l);
                    rest = &rest[2..];
                }
                _ => bytes.push(b'%'),
            },
            b => bytes.push(b),
        }
    }
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

impl PoolQuery {
    /// Reads `size`, `slot`, `avoid` and `known` from `params` (the part after `?`), pairs
    /// split at `&` and `=`; `Err` for another key or a size that is not a positive integer.
    fn parse(&mut self, params: &str) -> Result<(), ()> {
        self.text.clear();
        self.size = 1;
        self.slot = None;
        self.avoid.clear();
        self.known.clear();
        for pair in params.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            self.key.clear();
            form_decode(k, &mut self.bytes, &mut self.key);
            let start = self.text.len();
            form_decode(v, &mut self.bytes, &mut self.text);
            let span = (start, self.text.len());
            match self.key.as_str() {
                "size" => match self.text[start..].parse::<u32>() {
                    Ok(n) if n > 0 => self.size = n,
                    _ => return Err(()),
                },
                "slot" => self.slot = Some(span),
                "avoid" => self.avoid.push(span),
                "known" => self.known.push(span),
                _ => return Err(()),
            }
        }
        Ok(())
    }

    fn slot(&self) -> Option<&str> {
        self.slot.and_then(|(a, b)| self.text.get(a..b))
    }

    /// The ids of the `avoid` (or `known`) lists, in order, empty entries skipped.
    fn ids<'a>(&'a self, spans: &'a [(usize, usize)]) -> impl Iterator<Item = ServiceRef<'a>> + 'a {
        spans
            .iter()
            .flat_map(|&(a, b)| self.text.get(a..b).unwrap_or("").split(','))
            .filter(|s| !s.is_empty())
            .map(ServiceRef::Id)
    }
}

/// A pick in a 104/105 answer: [`SelectedRef`]'s members in key order.
#[derive(serde::Serialize)]
struct ServiceAnswer<'a> {
    addr: &'a str,
    expected_dist: u32,
    expected_slot: &'a str,
    final_dist: u32,
    final_slot: &'a str,
    flawed: bool,
    id: &'a str,
    location: u64,
    warn_dist: u32,
}

impl<'a> From<SelectedRef<'a>> for ServiceAnswer<'a> {
    fn from(s: SelectedRef<'a>) -> Self {
        ServiceAnswer {
            addr: s.addr,
            expected_dist: s.expected_dist,
            expected_slot: s.expected_slot,
            final_dist: s.final_dist,
            final_slot: s.final_slot,
            flawed: s.flawed,
            id: s.id,
            location: s.location,
            warn_dist: s.warn_dist,
        }
    }
}

/// 104 `POOL_NEXT`, 105 `POOL_POLL`.
#[derive(serde::Serialize)]
#[serde(bound(serialize = "Seq<I>: Serialize"))]
struct PoolAnswer<I> {
    flawed: bool,
    services: Seq<I>,
}

/// Calls `f` with the generator of a pools' answer to the query `q` salted `rsalt`. A cluster
/// view's picks are a function of its serial, the query and the request's salt (which a client
/// sends alike to every peer): equal serials give equal answers. Otherwise the thread's
/// generator (neither allocates once the thread's is initialised).
fn with_pool_rng<T>(snap: &Snapshot, q: &str, rsalt: &str, f: impl FnOnce(&mut dyn rand::RngCore) -> T) -> T {
    if snap.cluster_view {
        use rand::SeedableRng;
        use std::hash::BuildHasher;
        let seed = rustc_hash::FxBuildHasher.hash_one((snap.generation, q, rsalt));
        f(&mut rand::rngs::StdRng::seed_from_u64(seed))
    } else {
        f(&mut rand::rng())
    }
}

fn pool_answer(req: &RequestView<'_>, snap: &Snapshot, msg: &mut ReplyMsg, scratch: &mut HeartsinkScratch) {
    let serial = snap.generation as i64;
    let QueryView::Plain(q) = req.query else { return msg.write(&error(ERROR_ARGUMENT, 0)) };
    let (name, params) = q.split_once('?').unwrap_or((q, ""));
    let HeartsinkScratch { query, poll, .. } = scratch;
    if query.parse(params).is_err() {
        return msg.write(&error(ERROR_ARGUMENT, 0));
    }
    let picked = with_pool_rng(snap, q, req.rsalt, |rng| match (req.kind, snap.pools.get(name)) {
        (_, Some(pool)) => Some(poll.poll(&snap.world, pool, query.ids(&query.avoid), query.ids(&query.known), rng)),
        (RequestType::PoolNext, None) => Some(poll.next_instances(&snap.world, name, query.size, query.slot(), rng)),
        (_, None) => None,
    });
    let Some(picked) = picked else { return msg.write(&error(ERROR_UNKNOWN_ENTRY, serial)) };
    match picked {
        Ok(p) => {
            let answer = PoolAnswer { flawed: p.flawed, services: Seq(p.items().map(ServiceAnswer::from)) };
            msg.write_json(STATUS_OK, &answer, serial);
        }
        Err(Refusal::BadPool | Refusal::TooManyKnown { .. }) => msg.write(&error(ERROR_ARGUMENT, 0)),
        Err(_) => msg.write(&error(ERROR_INTERNAL, serial)),
    }
}

/// The pools' answer (104, 105) as the owned API gives it, as it was built before it was
/// written in place: the query parsed by `form_urlencoded`, the picks of `registry::lb::poll`
/// or `next_instances` (owned, allocating), a built reply. The reference that
/// [`answer_heartsink`] is checked against (its unit tests, the `confd_pool` fuzz target): for
/// a cluster view (seeded picks) both write the same bytes.
pub fn pool_answer_built(req: &RequestView<'_>, snap: &Snapshot) -> Reply {
    use crate::registry::lb::{next_instances, poll, LbError};
    use serde_json::json;
    let serial = snap.generation as i64;
    let QueryView::Plain(q) = req.query else { return Reply::error(ERROR_ARGUMENT) };
    let (name, params) = q.split_once('?').unwrap_or((q, ""));
    let mut size = 1u32;
    let mut slot = None;
    let mut avoid = Vec::new();
    let mut known = Vec::new();
    for (k, v) in form_urlencoded::parse(params.as_bytes()) {
        match &*k {
            "size" => match v.parse::<u32>() {
                Ok(n) if n > 0 => size = n,
                _ => return Reply::error(ERROR_ARGUMENT),
            },
            "slot" => slot = Some(v.into_owned()),
            "avoid" => avoid.extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_owned)),
            "known" => known.extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_owned)),
            _ => return Reply::error(ERROR_ARGUMENT),
        }
    }
    let avoid: Vec<ServiceRef> = avoid.iter().map(|s| ServiceRef::Id(s)).collect();
    let known: Vec<ServiceRef> = known.iter().map(|s| ServiceRef::Id(s)).collect();
    let r = with_pool_rng(snap, q, req.rsalt, |rng| match (req.kind, snap.pools.get(name)) {
        (_, Some(pool)) => poll(&snap.world, pool, &avoid, &known, rng),
        (RequestType::PoolNext, None) => next_instances(&snap.world, name, size, slot.as_deref(), rng),
        (_, None) => Err(LbError::UnknownPool(name.to_owned())),
    });
    match r {
        Ok(sel) => Reply::ok(json!({"services": sel.items, "flawed": sel.flawed}), serial),
        Err(LbError::UnknownPool(_)) => Reply::new(STATUS_ERROR, json!(ERROR_UNKNOWN_ENTRY), serial),
        Err(LbError::BadPool(_) | LbError::TooManyKnown { .. }) => Reply::error(ERROR_ARGUMENT),
        Err(_) => Reply::new(STATUS_ERROR, json!(ERROR_INTERNAL), serial),
    }
}
