//! Answers to heartsink's own request types (100–105) from the control thread's [`Snapshot`]
//! (the table is in [`super::server`]'s documentation), written straight into the reply's
//! buffer: types 100–103 allocate nothing once the buffers have grown (an `imbl` set walked
//! across more than one tree level excepted: its iterator keeps its path). The pools' answers
//! (104, 105) are built as values.
//!
//! The bytes are those of the answers as `serde_json::Value` objects (whose members are sorted
//! by key), so every structure below declares its fields in key order.

use std::ops::Bound;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::json;

use super::proto::{
    Answer, Answered, QueryView, Reply, ReplyMsg, RequestType, RequestView, ERROR_ARGUMENT, ERROR_INTERNAL,
    ERROR_UNKNOWN_ENTRY, STATUS_ERROR, STATUS_OK,
};
use crate::control::liveness::Live;
use crate::control::{AmphoraHealth, Snapshot};
use crate::engine::DropReason;
use crate::proto::octavia::Uuid;
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

/// The items of an iterator as a JSON array (the iterator is cloned to be walked).
struct Seq<I>(I);

impl<I: Iterator + Clone> Serialize for Seq<I>
where
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
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

/// Writes the answer to heartsink's request `req` from `snap` into `msg`. `page` is a buffer
/// kept from one request to the next (a `DOWN_SENDERS` page).
pub fn answer_heartsink(req: &RequestView<'_>, snap: &Snapshot, msg: &mut ReplyMsg, page: &mut Vec<Uuid>) {
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
        RequestType::PoolNext | RequestType::PoolPoll => msg.write_reply(&pool_answer(req, snap)),
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

fn pool_answer(req: &RequestView<'_>, snap: &Snapshot) -> Reply {
    use crate::registry::lb::{next_instances, poll, LbError, ServiceRef};
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
    // A cluster view's picks are a function of its serial, the query and the request's salt
    // (which a client sends alike to every peer): equal serials give equal answers.
    let (mut seeded, mut thread);
    let rng: &mut dyn rand::RngCore = if snap.cluster_view {
        use rand::SeedableRng;
        use std::hash::BuildHasher;
        let seed = rustc_hash::FxBuildHasher.hash_one((snap.generation, q, req.rsalt));
        seeded = rand::rngs::StdRng::seed_from_u64(seed);
        &mut seeded
    } else {
        thread = rand::rng();
        &mut thread
    };
    let r = match (req.kind, snap.pools.get(name)) {
        (_, Some(pool)) => poll(&snap.world, pool, &avoid, &known, rng),
        (RequestType::PoolNext, None) => next_instances(&snap.world, name, size, slot.as_deref(), rng),
        (_, None) => Err(LbError::UnknownPool(name.to_owned())),
    };
    match r {
        Ok(sel) => Reply::ok(json!({"services": sel.items, "flawed": sel.flawed}), serial),
        Err(LbError::UnknownPool(_)) => Reply::new(STATUS_ERROR, json!(ERROR_UNKNOWN_ENTRY), serial),
        Err(LbError::BadPool(_) | LbError::TooManyKnown { .. }) => Reply::error(ERROR_ARGUMENT),
        Err(_) => Reply::new(STATUS_ERROR, json!(ERROR_INTERNAL), serial),
    }
}
