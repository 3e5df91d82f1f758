//! The admin HTTP API (JSON) and Prometheus metrics, served by hyper under axum on a small tokio
//! runtime of its own, off the hot path (limits, timeouts and connection handling: `server.rs`,
//! documented on [`AdminServer`]). Every answer is built from the engine's counters, the
//! published snapshot and a short lock of one state shard, or is a command to the control thread
//! run on a bounded blocking pool; nothing here can stall a worker for longer than copying one
//! amphora. Request bodies are checked against documented bounds ([`validate`]) before anything
//! changes.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `200 {"status":"ok"}`; `503` when the control thread missed its ticks, or `{"status":"degraded","reason":"store: …"}` while the store cannot write |
//! | `GET /`, `GET /ui/{file}` | the status page (`src/ui/`: HTML, CSS, JavaScript), built into the binary |
//! | `GET /v1/whoami` | the caller's token name and role (`read` or `admin`) |
//! | `GET /v1/amphorae?limit=&marker=&status=&liveness=&load_balancer=&prefix=&unhealthy_first=` | ids in order (or unhealthy first) with operating status and liveness, filtered; `next_marker` when more |
//! | `GET /v1/amphorae/{id}` | the whole health and stats model of one amphora and its recent transitions; `404` if unknown |
//! | `PATCH /v1/amphorae/{id}` | `{"expected_listeners": n\|null, "load_balancer": id\|null, "zone": name\|null}` |
//! | `DELETE /v1/amphorae/{id}` | forget the amphora (it is new again if it beats) |
//! | `POST /v1/amphorae/{id}/failover` | start a manual failover; `409` while one is running |
//! | `GET /v1/failovers?limit=&marker=` | failover records in id order |
//! | `GET /v1/failovers/{id}` | one record |
//! | `GET /v1/stats` | received, accepted, dropped by reason, kernel drops, receive buffer, per-worker rates, ring fill |
//! | `GET /v1/latency` | raw counts of the send-to-applied latency histogram (for interval differences) |
//! | `GET /v1/history?since=MS` | the last 15 minutes, a sample a second: received, accepted, dropped (by reason), kernel drops per second, p50/p99 receive-to-applied |
//! | `GET /metrics` | the same counters as OpenMetrics text |
//!
//! Every route is listed in [`routes::ROUTES`]. With tokens configured (`auth.rs`, documented
//! on [`auth`]), every route but `/healthz`, `/metrics` (unless `metrics_auth`), the status
//! page's static files (`/`, `/ui/…`) and peers' digests needs `Authorization: Bearer`, and
//! every route but `GET`/`HEAD` ones needs the `admin` role; each mutating request is logged on
//! the `audit` target. TLS: [`tls`].

pub mod auth;
mod cluster;
mod console;
mod forward;
pub mod metrics;
mod plane;
pub mod routes;
mod server;
pub mod tls;
pub mod validate;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::json;

pub use server::{
    AdminCounters, AdminLimits, AdminOptions, AdminServer, CONTROL_CALLS, MAX_HEADERS, MIN_HEADER_BYTES, STOP_GRACE,
};

use crate::confd::server::Confd;
use crate::control::{Call, Command, CommandResult, FleetCommand, Published};
use crate::engine::{histogram, DropReason, Shared};
use crate::proto::octavia::Uuid;
use crate::state::AmphoraState;
use crate::util::rfc3339;
use server::{BodyError, Shared as ServerShared};

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
    /// Cluster mode's state, and where peers' digests go (single mode: never used).
    pub cluster: ClusterLink,
}

/// What the API needs of cluster mode.
#[derive(Debug)]
pub struct ClusterLink {
    /// The shared cluster state.
    pub shared: Arc<crate::control::cluster::Shared>,
    /// The control thread's cluster input (digests from peers go there); `None` in single mode.
    pub input: Option<crossbeam::channel::Sender<crate::control::cluster::ClusterInput>>,
    /// The control clock (a digest's ages become times on it).
    pub clock: Arc<dyn crate::engine::Clock>,
}

impl ClusterLink {
    /// Single mode.
    pub fn single(clock: Arc<dyn crate::engine::Clock>) -> ClusterLink {
        ClusterLink { shared: crate::control::cluster::Shared::single(), input: None, clock }
    }
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

/// An answer: status, body and its content type, extra headers.
#[derive(Debug)]
pub(crate) struct Resp {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

impl Resp {
    fn with_header(mut self, name: &'static str, value: &'static str) -> Resp {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for Resp {
    fn into_response(self) -> axum::response::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, self.body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        for (k, v) in self.headers {
            r.headers_mut().insert(k, HeaderValue::from_static(v));
        }
        r
    }
}

/// What a route decided: an answer now, or a command for the control thread (a blocking call,
/// run on the blocking pool) and the status of its success.
pub(crate) enum Outcome {
    Reply(Resp),
    Call(Command, u16),
}

impl From<Resp> for Outcome {
    fn from(r: Resp) -> Outcome {
        Outcome::Reply(r)
    }
}

fn json_response(status: u16, body: &impl Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Resp { status, body: bytes, content_type: "application/json", headers: Vec::new() }
}

fn error(status: u16, message: &str) -> Resp {
    json_response(status, &json!({ "error": message, "status": status }))
}

/// Largest request body accepted by any route, bytes (service pushes; the other routes have
/// smaller limits, see [`body_limit`]).
pub const MAX_BODY: u64 = 1 << 20;

/// The body limit of a route, bytes, and whether the route reads its body at all (a route that
/// does not still refuses a declared length above its limit).
pub fn body_limit(method: &Method, segments: &[&str]) -> (usize, bool) {
    const SMALL: usize = 4 << 10;
    const MEDIUM: usize = 64 << 10;
    let m = method;
    match segments {
        ["v1", "amphorae", _] if m == Method::PATCH || m == Method::PUT => (SMALL, true),
        ["v1", "services"] | ["v1", "services", "lock" | "unlock"] if m == Method::POST => (MAX_BODY as usize, true),
        ["v1", "pools"] if m == Method::POST => (16 << 10, true),
        ["v1", "pools", _, "poll"] if m == Method::POST => (MEDIUM, true),
        ["v1", "volumes"] | ["v1", "volumes", _, "state"] if m == Method::POST => (MEDIUM, true),
        ["v1", "cluster", "digest"] if m == Method::POST => (crate::cluster::digest::MAX_BYTES, true),
        ["v1", "cluster", "view"] if m == Method::POST => (crate::cluster::view::MAX_BYTES, true),
        ["v1", "volumes", _] if m == Method::PATCH => (MEDIUM, true),
        _ => (SMALL, false),
    }
}

fn read_json(body: &[u8]) -> Result<serde_json::Value, Resp> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| error(400, &format!("body is not JSON: {e}")))
}

fn command_response(r: CommandResult, ok: u16) -> Resp {
    use crate::control::CommandError;
    match r {
        Ok(v) => json_response(ok, &serde_json::to_value(&v).unwrap_or_default()),
        Err(e @ CommandError::NotFound(_)) => error(404, &e.to_string()),
        Err(e @ CommandError::Invalid(_)) => error(400, &e.to_string()),
        Err(e @ CommandError::Conflict(_)) => error(409, &e.to_string()),
        Err(e @ (CommandError::Store(_) | CommandError::Unavailable | CommandError::NotLeader(_))) => {
            error(503, &e.to_string()).with_header("retry-after", "1")
        }
        Err(e @ CommandError::NotModified(_)) => error(304, &e.to_string()),
    }
}

/// Why the store cannot write now (`None`: it can, or there is none).
fn store_failing(ctx: &ApiContext) -> Option<String> {
    let snap = ctx.control.snapshot.load();
    let st = snap.store.as_ref()?;
    (!st.healthy).then(|| st.error.clone().unwrap_or_else(|| "failing".into()))
}

fn parse_amphora_id(id: &str) -> Result<Uuid, Resp> {
    Uuid::try_parse(id).map_err(|_| error(404, &format!("no amphora {id:?} (not a UUID)")))
}

/// The router: every route goes through [`handle`], under the panic catcher, inside the
/// token check (outermost, so that it sees and audits every answer, a caught panic's too).
pub(crate) fn router(shared: Arc<ServerShared>, auth: Arc<auth::AdminAuth>) -> axum::Router {
    let counters = shared.counters.clone();
    // The default limit for any route that extracts its body (routes added later, e.g. the
    // console's); the routes here read theirs in `handle`, with the limit of `body_limit`.
    let router = axum::Router::new().fallback(handle).with_state(shared);
    let router =
        with_panic_catcher(router.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY as usize)), counters.clone());
    router.layer(axum::middleware::from_fn_with_state(auth::AuthLayer { auth, counters }, auth::layer))
}

/// Wraps `router` so that a panic in a handler is answered `500`, counted and logged.
pub(crate) fn with_panic_catcher(router: axum::Router, counters: Arc<AdminCounters>) -> axum::Router {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(move |p: Box<dyn std::any::Any + Send>| {
        counters.panicked("handler", &*p);
        error(500, "internal error").into_response()
    }))
}

/// A response that also closes the connection (the request's body was not read).
fn closing(r: Resp) -> axum::response::Response {
    r.with_header("connection", "close").into_response()
}

async fn handle(State(sh): State<Arc<ServerShared>>, req: axum::extract::Request) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (limit, reads) = body_limit(&parts.method, &segments);
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let body = if reads || declared.is_some_and(|n| n > limit as u64) {
        match server::read_body(body, declared, limit, sh.limits.body_timeout).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return closing(error(413, &format!("body too large (limit {limit} bytes)"))),
            Err(BodyError::Timeout) => {
                sh.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                return closing(error(408, "request body not received in time"));
            }
            Err(BodyError::Read(e)) => return closing(error(400, &format!("cannot read the body: {e}"))),
        }
    } else {
        axum::body::Bytes::new()
    };
    if sh.ctx.cluster.shared.enabled
        && forward::leader_write(&parts.method, &segments, query)
        && !sh.ctx.cluster.shared.is_leader()
    {
        return forward::forward(&sh.ctx.cluster.shared, &parts, body).await;
    }
    let caller = parts.extensions.get::<auth::Caller>();
    match route(&sh.ctx, &sh.registry, caller, &parts.method, &segments, query, &body) {
        Outcome::Reply(r) => r.into_response(),
        Outcome::Call(c, ok) => {
            let commands = sh.ctx.commands.clone();
            match server::blocking(&sh, move || crate::control::call(&commands, c)).await {
                Some(Err(crate::control::CommandError::Unavailable)) if store_failing(&sh.ctx).is_some() => {
                    let why = store_failing(&sh.ctx).unwrap_or_default();
                    let msg = format!(
                        "the store is not writing ({why}): the change is queued and is stored once the store \
                         recovers; read it back or retry later"
                    );
                    error(503, &msg).into_response()
                }
                Some(r) => command_response(r, ok).into_response(),
                None => error(503, "the control thread did not answer").into_response(),
            }
        }
    }
}

/// What the admin API makes of one request before anything reaches the control thread.
#[derive(Debug)]
pub enum Routed {
    /// Answered at once with this status (a read, or a refusal: 400, 404, 405, 413, …).
    Answer(u16),
    /// The command it sends to the control thread, and the status of its success.
    Call(Command, u16),
}

/// The request handling, sans-IO: method, path, query and body in, the answer's status or the
/// command out. The server runs the same code on every request; the `admin` fuzz target runs it
/// on arbitrary ones (nothing a request carries may panic).
pub fn route_request(
    ctx: &ApiContext,
    registry: &prometheus_client::registry::Registry,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Routed {
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Routed::Answer(400) };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match route(ctx, registry, None, &method, &segments, query, body) {
        Outcome::Reply(r) => Routed::Answer(r.status),
        Outcome::Call(c, ok) => Routed::Call(c, ok),
    }
}

fn route(
    ctx: &ApiContext,
    registry: &prometheus_client::registry::Registry,
    caller: Option<&auth::Caller>,
    method: &Method,
    segments: &[&str],
    query: &str,
    body: &[u8],
) -> Outcome {
    let get = method == Method::GET;
    if let Some(r) = plane::route(ctx, method, segments, query, body) {
        return r;
    }
    if let Some(page) = console::static_file(segments).filter(|_| get) {
        return page.into();
    }
    let r = match segments {
        ["healthz"] if get => healthz(ctx),
        ["v1", "whoami"] if get => console::whoami(caller),
        ["v1", "amphorae"] if get => console::list_amphorae(ctx, query),
        ["v1", "history"] if get => history(ctx, query),
        ["v1", "amphorae", id] if get => show_amphora(ctx, id),
        ["v1", "amphorae", id] if method == Method::DELETE => match parse_amphora_id(id) {
            Ok(u) => return Outcome::Call(Command::Fleet(FleetCommand::Forget(u)), 200),
            Err(r) => r,
        },
        ["v1", "amphorae", id] if method == Method::PATCH || method == Method::PUT => {
            let u = match parse_amphora_id(id) {
                Ok(u) => u,
                Err(r) => return r.into(),
            };
            let body = match read_json(body) {
                Ok(b) => b,
                Err(r) => return r.into(),
            };
            match configure_command(u, &body) {
                Ok(c) => return Outcome::Call(c, 200),
                Err(m) => error(400, &m),
            }
        }
        ["v1", "amphorae", id, "failover"] if method == Method::POST => match parse_amphora_id(id) {
            Ok(u) => return Outcome::Call(Command::Fleet(FleetCommand::Failover(u)), 202),
            Err(r) => r,
        },
        ["v1", "failovers"] if get => match paging::<u64>(query) {
            Ok((marker, limit)) => {
                return Outcome::Call(Command::Fleet(FleetCommand::Failovers { marker, limit }), 200)
            }
            Err(r) => r,
        },
        ["v1", "failovers", id] if get => match id.parse::<u64>() {
            Ok(n) => return Outcome::Call(Command::Fleet(FleetCommand::Record(n)), 200),
            Err(_) => error(404, &format!("no failover record {id:?}")),
        },
        ["v1", "stats"] if get => json_response(200, &stats(ctx)),
        ["v1", "cluster"] if get => json_response(200, &cluster::cluster_view(ctx)),
        ["v1", "cluster", "digest"] if method == Method::POST => cluster::cluster_digest(ctx, body),
        ["v1", "cluster", "view"] if method == Method::POST => cluster::cluster_view_part(ctx, body),
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
    };
    r.into()
}

/// `GET /v1/history[?since=MS]`: the data plane's last 15 minutes, a sample a second, oldest
/// first (only those ending after `since`, wall clock ms, when given).
fn history(ctx: &ApiContext, query: &str) -> Resp {
    let mut since = 0;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match (&*k, v.parse::<u64>()) {
            ("since", Ok(ms)) => since = ms,
            ("since", Err(_)) => return error(400, "since must be wall clock ms since the Unix epoch"),
            _ => return error(400, &format!("unknown query parameter {k:?}")),
        }
    }
    let samples = ctx.control.history.lock().since(since);
    json_response(200, &json!({"capacity": crate::control::history::CAPACITY, "interval_s": 1.0, "samples": samples}))
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
    } else if let Some(e) = ctx.control.snapshot.load().store.as_ref().filter(|s| !s.healthy) {
        let reason = format!("store: {}", e.error.as_deref().unwrap_or("writes are failing"));
        json_response(503, &json!({"status": "degraded", "reason": reason}))
    } else {
        json_response(200, &json!({"status": "ok"}))
    }
}

fn configure_command(id: Uuid, body: &serde_json::Value) -> Result<Command, String> {
    let Some(obj) = body.as_object() else { return Err("body must be a JSON object".into()) };
    let mut expected_listeners = None;
    let mut load_balancer = None;
    let mut zone = None;
    for (k, v) in obj {
        match k.as_str() {
            "expected_listeners" => {
                expected_listeners = Some(match v {
                    serde_json::Value::Null => None,
                    v => Some(
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| "expected_listeners must be a non-negative integer or null".to_owned())
                            .and_then(|n| validate::expected_listeners(n).map(|()| n))?,
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
            "zone" => {
                zone = Some(match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(validate::zone(s).map(|()| s.clone())?),
                    _ => return Err("zone must be a string or null".into()),
                })
            }
            other => return Err(format!("unknown field {other:?}; expected_listeners, load_balancer, zone")),
        }
    }
    Ok(Command::Fleet(FleetCommand::Configure { id, expected_listeners, load_balancer, zone }))
}

/// The `limit` of a list request.
fn paging_limit(v: &str) -> Result<usize, Resp> {
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(error(400, &format!("limit must be an integer in 1..={MAX_LIMIT}"))),
    }
}

/// `limit` and `marker` of a list request.
fn paging<M: std::str::FromStr>(query: &str) -> Result<(Option<M>, usize), Resp> {
    let mut limit = DEFAULT_LIMIT;
    let mut marker = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "limit" => limit = paging_limit(&v)?,
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
struct AmphoraView<'a> {
    id: Uuid,
    first_seen: String,
    last_seen: String,
    last_seen_age_s: f64,
    liveness: Option<crate::control::liveness::Live>,
    load_balancer: Option<Uuid>,
    zone: Option<String>,
    failover: Option<serde_json::Value>,
    /// Cluster mode: the member that heard its newest liveness refresh, and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    heard_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heard_at: Option<String>,
    /// Its newest transitions (status, liveness), newest first ([`crate::control::census`]).
    recent_transitions: Vec<crate::control::census::TransitionView>,
    #[serde(flatten)]
    state: &'a AmphoraState,
}

fn show_amphora(ctx: &ApiContext, id: &str) -> Resp {
    let Ok(uuid) = Uuid::try_parse(id) else {
        return error(404, &format!("no amphora {id:?} (not a UUID)"));
    };
    match ctx.engine.pipeline.shards.get(&uuid) {
        Some(mut state) => {
            // Scanned after the shard's copy is taken (a worker never waits for it), for a
            // known amphora only, and only this life's (a forgotten amphora that came back
            // starts afresh).
            let mut recent = ctx.control.transitions.lock().of(&uuid);
            recent.retain(|t| t.at_ns >= state.first_seen_ns);
            let now = ctx.engine.now_ns();
            let snap = ctx.control.snapshot.load();
            let h = snap.amphorae.get(&uuid);
            // The shard's flag also watches overdue amphorae: show staleness as published.
            state.stale = h.is_some_and(|h| h.liveness == crate::control::liveness::Live::Stale);
            json_response(
                200,
                &AmphoraView {
                    id: uuid,
                    first_seen: rfc3339(state.first_seen_ns),
                    last_seen: rfc3339(state.last_seen_ns),
                    last_seen_age_s: now.saturating_sub(state.last_seen_ns) as f64 / 1e9,
                    liveness: h.map(|h| h.liveness),
                    load_balancer: h.and_then(|h| h.load_balancer),
                    zone: h.and_then(|h| h.zone.clone()),
                    failover: h.and_then(|h| h.failover).map(|(r, st)| json!({"id": r, "state": st.as_str()})),
                    heard_by: ctx.cluster.shared.enabled.then(|| {
                        if state.remote_refresh_ns > state.last_refresh_ns {
                            ctx.cluster.shared.node_name(state.remote_by)
                        } else {
                            ctx.cluster.shared.node.clone()
                        }
                    }),
                    heard_at: ctx.cluster.shared.enabled.then(|| rfc3339(state.refreshed_ns())),
                    recent_transitions: recent.iter().map(|t| t.view()).collect(),
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
        "control": {
            "tick_us_last": ctx.control.tick_ns_last.load(r) as f64 / 1000.0,
            "tick_us_max": ctx.control.tick_ns_max.load(r) as f64 / 1000.0,
            "tick_age_s": e.now_ns().saturating_sub(ctx.control.last_tick_ns.load(r)) as f64 / 1e9,
        },
        "rcvbuf": e.rcvbuf(),
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
        "census": console::census(&snap),
        "transitions": ctx.control.transitions.lock().total(),
        "tracked": snap.amphorae.len(),
        "stale": snap.down.len(),
        "failovers_suspended": snap.suspended.iter().any(|s| s.group().is_none()),
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
        "replay_cache": {"capacity": ctx.confd.replay.capacity(), "evictions": ctx.confd.replay.evictions()},
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[test]
    fn a_panicking_handler_is_answered_500_counted_and_the_router_keeps_serving() {
        let counters = Arc::new(AdminCounters::default());
        let app = with_panic_catcher(
            axum::Router::new()
                .route("/boom", axum::routing::get(|| async { panic!("boom") as &str }))
                .route("/ok", axum::routing::get(|| async { "ok" })),
            counters.clone(),
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let get = |p: &str| axum::http::Request::get(p).body(Body::empty()).unwrap();
            let r = app.clone().oneshot(get("/boom")).await.unwrap();
            assert_eq!(r.status(), 500);
            let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v, json!({"error": "internal error", "status": 500}));
            assert_eq!(app.oneshot(get("/ok")).await.unwrap().status(), 200);
        });
        assert_eq!(counters.panics.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn patch_sets_and_clears_the_zone_and_refuses_a_bad_one() {
        let id = Uuid::from_bytes([1; 16]);
        let zone = |body: serde_json::Value| match configure_command(id, &body) {
            Ok(Command::Fleet(FleetCommand::Configure { zone, .. })) => Ok(zone),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(zone(json!({"zone": "rack-1"})), Ok(Some(Some("rack-1".to_owned()))));
        assert_eq!(zone(json!({"zone": null})), Ok(Some(None)));
        assert_eq!(zone(json!({"expected_listeners": 1})), Ok(None));
        for bad in [json!({"zone": ""}), json!({"zone": "a b"}), json!({"zone": 3}), json!({"zone": "x".repeat(65)})] {
            assert!(zone(bad).is_err_and(|e| e.contains("zone")));
        }
    }

    #[test]
    fn body_limits_per_route() {
        let seg = |p: &'static str| p.split('/').collect::<Vec<_>>();
        assert_eq!(body_limit(&Method::POST, &seg("v1/services")), (MAX_BODY as usize, true));
        assert_eq!(body_limit(&Method::PATCH, &seg("v1/amphorae/x")), (4 << 10, true));
        assert_eq!(body_limit(&Method::POST, &seg("v1/volumes")), (64 << 10, true));
        assert_eq!(body_limit(&Method::GET, &seg("healthz")), (4 << 10, false));
    }
}
