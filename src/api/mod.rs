//! The admin HTTP API (JSON) and Prometheus metrics, served by `tiny_http` on one thread, off
//! the hot path. Every answer is built from the engine's counters and a short lock of one state
//! shard; nothing here can stall a worker for longer than copying one amphora.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `200 {"status":"ok"}`, or `503` when the control thread missed its ticks |
//! | `GET /v1/amphorae?limit=&marker=` | ids in order with operating status and liveness; `next_marker` when more |
//! | `GET /v1/amphorae/{id}` | the whole health and stats model of one amphora; `404` if unknown |
//! | `PATCH /v1/amphorae/{id}` | `{"expected_listeners": n\|null, "load_balancer": id\|null}` |
//! | `DELETE /v1/amphorae/{id}` | forget the amphora (it is new again if it beats) |
//! | `POST /v1/amphorae/{id}/failover` | start a manual failover; `409` while one is running |
//! | `GET /v1/failovers?limit=&marker=` | failover records in id order |
//! | `GET /v1/failovers/{id}` | one record |
//! | `GET /v1/stats` | received, accepted, dropped by reason, kernel drops, receive buffer, per-worker rates, ring fill |
//! | `GET /v1/latency` | raw counts of the send-to-applied latency histogram (for interval differences) |
//! | `GET /metrics` | the same counters as OpenMetrics text |

mod metrics;
mod plane;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::confd::server::Confd;
use crate::control::{Call, Command, CommandResult, Published};
use crate::engine::{histogram, DropReason, Shared};
use crate::proto::octavia::Uuid;
use crate::state::{AmphoraState, OperatingStatus};
use crate::util::rfc3339;

/// Largest `limit` of a list request.
pub const MAX_LIMIT: usize = 1000;
/// `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 100;
/// `/healthz` fails when the control thread's last tick is older than this.
pub const TICK_STALE: Duration = Duration::from_secs(5);

/// What the API reads and whom it asks.
#[derive(Debug)]
pub struct ApiContext {
    /// The data plane's counters and shards.
    pub engine: Arc<Shared>,
    /// What the control thread publishes (snapshot, rates, tick figures).
    pub control: Arc<Published>,
    /// Where commands go.
    pub commands: crossbeam::channel::Sender<Call>,
    /// The confd responder's keys, configuration and counters.
    pub confd: Arc<Confd>,
    /// Current keyring fingerprints and generation, updated on reload.
    pub keys: arc_swap::ArcSwap<KeysInfo>,
}

impl ApiContext {
    /// Asks the control thread and waits for its durable answer.
    pub fn call(&self, command: Command) -> CommandResult {
        crate::control::call(&self.commands, command)
    }
}

/// The keyring as the API shows it (fingerprints, never keys).
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeysInfo {
    /// Reload generation.
    pub generation: u64,
    /// Key fingerprints in the order they are tried.
    pub fingerprints: Vec<String>,
    /// True when running on the `insecure` default key.
    pub insecure_default: bool,
}

/// The running admin server.
pub struct AdminServer {
    server: Arc<Server>,
    local: SocketAddr,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer").field("local", &self.local).finish()
    }
}

impl AdminServer {
    /// Binds `addr` and serves on a new thread.
    pub fn start(addr: SocketAddr, ctx: Arc<ApiContext>) -> io::Result<AdminServer> {
        let server = Arc::new(Server::http(addr).map_err(io::Error::other)?);
        let local =
            server.server_addr().to_ip().ok_or_else(|| io::Error::other("admin server is not on an IP address"))?;
        let s = server.clone();
        let handle = std::thread::Builder::new().name("admin".into()).spawn(move || {
            let registry = metrics::registry(ctx.clone());
            for mut req in s.incoming_requests() {
                let resp = route(&ctx, &registry, &mut req);
                if let Err(e) = req.respond(resp) {
                    tracing::debug!(error = %e, "admin response not sent");
                }
            }
        })?;
        Ok(AdminServer { server, local, handle: Some(handle) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops serving.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

type Resp = Response<io::Cursor<Vec<u8>>>;

fn json_response(status: u16, body: &impl Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::from_data(bytes)
        .with_status_code(status)
        .with_header(Header::from_bytes("Content-Type", "application/json").unwrap_or_else(|_| unreachable!()))
}

fn error(status: u16, message: &str) -> Resp {
    json_response(status, &json!({ "error": message, "status": status }))
}

/// Largest request body accepted, bytes.
pub const MAX_BODY: u64 = 1 << 20;

fn read_json(req: &mut Request) -> Result<serde_json::Value, Resp> {
    let mut body = Vec::new();
    use std::io::Read;
    if let Err(e) = req.as_reader().take(MAX_BODY + 1).read_to_end(&mut body) {
        return Err(error(400, &format!("cannot read the body: {e}")));
    }
    if body.len() as u64 > MAX_BODY {
        return Err(error(413, "body too large"));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| error(400, &format!("body is not JSON: {e}")))
}

fn command_response(r: CommandResult, ok: u16) -> Resp {
    use crate::control::CommandError;
    match r {
        Ok(v) => json_response(ok, &serde_json::to_value(&v).unwrap_or_default()),
        Err(e @ CommandError::NotFound(_)) => error(404, &e.to_string()),
        Err(e @ CommandError::Invalid(_)) => error(400, &e.to_string()),
        Err(e @ CommandError::Conflict(_)) => error(409, &e.to_string()),
        Err(e @ (CommandError::Store(_) | CommandError::Unavailable)) => error(503, &e.to_string()),
        Err(e @ CommandError::NotModified(_)) => error(304, &e.to_string()),
    }
}

fn parse_amphora_id(id: &str) -> Result<Uuid, Resp> {
    Uuid::try_parse(id).map_err(|_| error(404, &format!("no amphora {id:?} (not a UUID)")))
}

fn route(ctx: &ApiContext, registry: &prometheus_client::registry::Registry, req: &mut Request) -> Resp {
    let url = req.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let get = method == Method::Get;
    if let Some(r) = plane::route(ctx, req, &method, &segments, query) {
        return r;
    }
    match segments.as_slice() {
        ["healthz"] if get => healthz(ctx),
        ["v1", "amphorae"] if get => list_amphorae(ctx, query),
        ["v1", "amphorae", id] if get => show_amphora(ctx, id),
        ["v1", "amphorae", id] if method == Method::Delete => match parse_amphora_id(id) {
            Ok(u) => command_response(ctx.call(Command::Forget(u)), 200),
            Err(r) => r,
        },
        ["v1", "amphorae", id] if method == Method::Patch || method == Method::Put => {
            let u = match parse_amphora_id(id) {
                Ok(u) => u,
                Err(r) => return r,
            };
            let body = match read_json(req) {
                Ok(b) => b,
                Err(r) => return r,
            };
            match configure_command(u, &body) {
                Ok(c) => command_response(ctx.call(c), 200),
                Err(m) => error(400, &m),
            }
        }
        ["v1", "amphorae", id, "failover"] if method == Method::Post => match parse_amphora_id(id) {
            Ok(u) => command_response(ctx.call(Command::Failover(u)), 202),
            Err(r) => r,
        },
        ["v1", "failovers"] if get => match paging::<u64>(query) {
            Ok((marker, limit)) => command_response(ctx.call(Command::Failovers { marker, limit }), 200),
            Err(r) => r,
        },
        ["v1", "failovers", id] if get => match id.parse::<u64>() {
            Ok(n) => command_response(ctx.call(Command::FailoverRecord(n)), 200),
            Err(_) => error(404, &format!("no failover record {id:?}")),
        },
        ["v1", "stats"] if get => json_response(200, &stats(ctx)),
        ["v1", "latency"] if get => json_response(
            200,
            &json!({
                "receive_to_applied": ctx.engine.rx_latency_counts(),
                "send_to_applied": ctx.engine.latency_counts(),
            }),
        ),
        ["metrics"] if get => metrics::render(registry),
        ["healthz"]
        | ["v1", "amphorae"]
        | ["v1", "amphorae", _]
        | ["v1", "amphorae", _, "failover"]
        | ["v1", "failovers"]
        | ["v1", "failovers", _]
        | ["v1", "stats"]
        | ["v1", "latency"]
        | ["metrics"] => error(405, "method not allowed"),
        _ => error(404, "no such resource"),
    }
}

fn healthz(ctx: &ApiContext) -> Resp {
    let now = ctx.engine.now_ns();
    let last = ctx.control.last_tick_ns.load(Ordering::Relaxed);
    let age = Duration::from_nanos(now.saturating_sub(last));
    if age > TICK_STALE {
        json_response(
            503,
            &json!({"status": "unhealthy", "reason": "control thread missed its ticks", "last_tick_age_s": age.as_secs_f64()}),
        )
    } else {
        json_response(200, &json!({"status": "ok"}))
    }
}

fn configure_command(id: Uuid, body: &serde_json::Value) -> Result<Command, String> {
    let Some(obj) = body.as_object() else { return Err("body must be a JSON object".into()) };
    let mut expected_listeners = None;
    let mut load_balancer = None;
    for (k, v) in obj {
        match k.as_str() {
            "expected_listeners" => {
                expected_listeners = Some(match v {
                    serde_json::Value::Null => None,
                    v => Some(
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or("expected_listeners must be a non-negative integer or null")?,
                    ),
                })
            }
            "load_balancer" => {
                load_balancer = Some(match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => {
                        Some(Uuid::try_parse(s).map_err(|_| "load_balancer must be a UUID or null".to_owned())?)
                    }
                    _ => return Err("load_balancer must be a UUID or null".into()),
                })
            }
            other => return Err(format!("unknown field {other:?}; expected_listeners, load_balancer")),
        }
    }
    Ok(Command::Configure { id, expected_listeners, load_balancer })
}

/// `limit` and `marker` of a list request.
fn paging<M: std::str::FromStr>(query: &str) -> Result<(Option<M>, usize), Resp> {
    let mut limit = DEFAULT_LIMIT;
    let mut marker = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => return Err(error(400, &format!("limit must be an integer in 1..={MAX_LIMIT}"))),
            },
            "marker" => match v.parse::<M>() {
                Ok(u) => marker = Some(u),
                Err(_) => return Err(error(400, "marker is not an id of this list")),
            },
            _ => return Err(error(400, &format!("unknown query parameter {k:?}"))),
        }
    }
    Ok((marker, limit))
}

#[derive(Serialize)]
struct ListItem {
    id: Uuid,
    operating_status: OperatingStatus,
    liveness: crate::control::liveness::Live,
    last_refresh: String,
    load_balancer: Option<Uuid>,
    failover: Option<serde_json::Value>,
}

fn list_amphorae(ctx: &ApiContext, query: &str) -> Resp {
    let (marker, limit) = match paging::<Uuid>(query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    use std::ops::Bound;
    let snap = ctx.control.snapshot.load();
    let lower = marker.map_or(Bound::Unbounded, Bound::Excluded);
    let page: Vec<_> = snap.amphorae.range((lower, Bound::Unbounded)).take(limit + 1).collect();
    let more = page.len() > limit;
    let items: Vec<ListItem> = page
        .iter()
        .take(limit)
        .map(|(id, h)| ListItem {
            id: **id,
            operating_status: h.operating_status,
            liveness: h.liveness,
            last_refresh: rfc3339(h.last_refresh_ns),
            load_balancer: h.load_balancer,
            failover: h.failover.map(|(r, st)| json!({"id": r, "state": st.as_str()})),
        })
        .collect();
    let next = if more { items.last().map(|i| i.id) } else { None };
    json_response(200, &json!({ "amphorae": items, "next_marker": next, "generation": snap.generation }))
}

#[derive(Serialize)]
struct AmphoraView<'a> {
    id: Uuid,
    first_seen: String,
    last_seen: String,
    last_seen_age_s: f64,
    liveness: Option<crate::control::liveness::Live>,
    load_balancer: Option<Uuid>,
    failover: Option<serde_json::Value>,
    #[serde(flatten)]
    state: &'a AmphoraState,
}

fn show_amphora(ctx: &ApiContext, id: &str) -> Resp {
    let Ok(uuid) = Uuid::try_parse(id) else {
        return error(404, &format!("no amphora {id:?} (not a UUID)"));
    };
    match ctx.engine.pipeline.shards.get(&uuid) {
        Some(state) => {
            let now = ctx.engine.now_ns();
            let snap = ctx.control.snapshot.load();
            let h = snap.amphorae.get(&uuid);
            json_response(
                200,
                &AmphoraView {
                    id: uuid,
                    first_seen: rfc3339(state.first_seen_ns),
                    last_seen: rfc3339(state.last_seen_ns),
                    last_seen_age_s: now.saturating_sub(state.last_seen_ns) as f64 / 1e9,
                    liveness: h.map(|h| h.liveness),
                    load_balancer: h.and_then(|h| h.load_balancer),
                    failover: h.and_then(|h| h.failover).map(|(r, st)| json!({"id": r, "state": st.as_str()})),
                    state: &state,
                },
            )
        }
        None => error(404, &format!("no amphora {uuid}")),
    }
}

/// The `/v1/stats` document.
pub fn stats(ctx: &ApiContext) -> serde_json::Value {
    let e = &ctx.engine;
    let t = e.totals();
    let r = Ordering::Relaxed;
    let rates = ctx.control.rates.load();
    let (fill, cap) = e.ring_fill();
    let dropped: serde_json::Map<String, serde_json::Value> =
        DropReason::ALL.iter().map(|d| (d.label().to_owned(), json!(t.drop_count(*d)))).collect();
    let workers: Vec<_> = e
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({
                "worker": i,
                "packets": w.packets.load(r),
                "accepted": w.accepted.load(r),
                "batches": w.batches.load(r),
                "rate_pps": rates.worker_pps.get(i).copied().unwrap_or(0.0),
                "accepted_pps": rates.worker_accepted_pps.get(i).copied().unwrap_or(0.0),
                "ring_len": fill.get(i).copied().unwrap_or(0),
                "ring_capacity": cap,
            })
        })
        .collect();
    let rx: Vec<_> =
        e.rx.iter()
            .enumerate()
            .map(|(i, x)| {
                json!({
                    "rx": i,
                    "socket": e.rx_names.get(i).copied().unwrap_or("heartbeat"),
                    "packets": x.packets.load(r),
                    "bytes": x.bytes.load(r),
                    "recv_calls": x.recv_calls.load(r),
                    "kernel_drops": x.kernel_drops.load(r),
                    "rate_pps": rates.rx_pps.get(i).copied().unwrap_or(0.0),
                })
            })
            .collect();
    let summary = |c: &[u64]| {
        let q = |x: f64| histogram::quantile(c, x).map(|ns| ns as f64 / 1000.0);
        json!({"count": c.iter().sum::<u64>(), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999)})
    };
    json!({
        "received": t.received,
        "accepted": t.accepted,
        "dropped_total": t.dropped(),
        "dropped": dropped,
        "kernel_drops": t.kernel_drops,
        "restarts": t.restarts,
        "amphorae": ctx.control.amphora_count(),
        "status_changes": ctx.control.status_changes.load(r),
        "control": {"tick_us_last": ctx.control.tick_ns_last.load(r) as f64 / 1000.0, "tick_us_max": ctx.control.tick_ns_max.load(r) as f64 / 1000.0},
        "rcvbuf": e.rcvbuf,
        "workers": workers,
        "rx": rx,
        "keys": &**ctx.keys.load(),
        "liveness": liveness_stats(ctx),
        "control_plane": plane_stats(ctx),
        "confd": confd_stats(ctx),
        "uptime_s": e.started.elapsed().as_secs_f64(),
        "latency_us": {
            "receive_to_applied": summary(&e.rx_latency_counts()),
            "send_to_applied": summary(&e.latency_counts()),
        },
    })
}

fn liveness_stats(ctx: &ApiContext) -> serde_json::Value {
    let snap = ctx.control.snapshot.load();
    let failovers: serde_json::Map<String, serde_json::Value> = crate::control::failover::FailoverState::ALL
        .iter()
        .zip(snap.failover_counts)
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    json!({
        "tracked": snap.amphorae.len(),
        "stale": snap.down.len(),
        "failovers_suspended": !snap.suspended.is_empty(),
        "suspended": snap.suspended,
        "failovers": failovers,
        "generation": snap.generation,
        "tasks": snap.tasks,
        "store": snap.store,
    })
}

fn confd_stats(ctx: &ApiContext) -> serde_json::Value {
    let (requests, replies, send_errors, counts) = ctx.confd.totals();
    let drops: serde_json::Map<String, serde_json::Value> = crate::confd::proto::RequestError::ALL
        .iter()
        .zip(counts)
        .map(|(reason, n)| (reason.label().to_owned(), json!(n)))
        .collect();
    let state = ctx.confd.state.load();
    json!({
        "requests": requests,
        "replies": replies,
        "send_errors": send_errors,
        "dropped": drops,
        "keys": state.keys.len(),
        "config_serial": state.index.as_ref().map(|i| i.serial_no()),
    })
}

fn plane_stats(ctx: &ApiContext) -> serde_json::Value {
    let snap = ctx.control.snapshot.load();
    let services: u64 = ctx.engine.workers.iter().map(|w| w.services.load(Ordering::Relaxed)).sum();
    json!({
        "services": snap.services,
        "service_heartbeats": services,
        "services_rejected": snap.services_rejected,
        "pools": snap.pools.len(),
        "leader": snap.leader,
        "volumes": snap.volumes,
        "scheduler": snap.scheduler.map(|r| json!({
            "leading": r.leading, "placed": r.placed, "unplaceable": r.unplaceable, "healed": r.healed,
            "machines_died": r.machines_died, "backlog": r.backlog,
        })),
    })
}
