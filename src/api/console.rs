//! The status page and what it reads beyond the other routes.
//!
//! - `GET /` and `GET /ui/{file}`: the page's static files, built into the binary
//!   (`src/ui/`: plain HTML, CSS and JavaScript, no framework, no CDN); they hold no data and
//!   are served without a token (the page asks for one when the API answers `401`).
//! - `GET /v1/amphorae` with filters and the unhealthy-first order ([`list_amphorae`]).
//! - `GET /v1/whoami`: the caller's token name and role, so the page offers admin actions only
//!   to an admin token.
//!
//! A list page never sorts or counts the fleet: it walks one ordered index (every amphora, the
//! stale ones, the unhealthy ones, or one load balancer's) from the marker and stops once the
//! page is full. Unhealthy first walks the unhealthy ones (the stale set and the index of those
//! alive and not `ONLINE`, kept by the control thread, [`crate::control::census`], merged in id
//! order) and then the whole fleet, skipping the unhealthy ones.

use std::ops::Bound;

use serde::Serialize;
use serde_json::json;

use super::{error, json_response, paging_limit, ApiContext, Resp};
use crate::control::census::unhealthy;
use crate::control::liveness::Live;
use crate::control::{AmphoraHealth, Snapshot};
use crate::proto::octavia::Uuid;
use crate::state::OperatingStatus;
use crate::util::rfc3339;

/// The page's files: path under `/ui/`, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../ui/app.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_bytes!("../ui/charts.js")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("../ui/app.css")),
];

const INDEX: &[u8] = include_bytes!("../ui/index.html");

/// The page's own files only: scripts from this origin, no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn page_file(content_type: &'static str, bytes: &[u8]) -> Resp {
    Resp { status: 200, body: bytes.to_vec(), content_type, headers: Vec::new() }
        .with_header("cache-control", "no-cache")
        .with_header("x-content-type-options", "nosniff")
        .with_header("content-security-policy", CSP)
        .with_header("referrer-policy", "no-referrer")
}

/// `GET /` and `GET /ui/{file}`; `None` for any other path.
pub(super) fn static_file(segments: &[&str]) -> Option<Resp> {
    match segments {
        [""] | ["ui"] | ["ui", ""] => Some(page_file("text/html; charset=utf-8", INDEX)),
        ["ui", name] => Some(
            FILES
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or_else(|| error(404, &format!("no file {name:?} in the page")), |(_, ct, b)| page_file(ct, b)),
        ),
        _ => None,
    }
}

/// Which of the two runs of the unhealthy-first order an item is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Stale, or alive and not `ONLINE`.
    Unhealthy,
    /// Alive and `ONLINE`.
    Healthy,
    /// Plain id order (no phases).
    All,
}

impl Phase {
    fn tag(self) -> &'static str {
        match self {
            Phase::Unhealthy => "u.",
            Phase::Healthy => "h.",
            Phase::All => "",
        }
    }
}

/// An id prefix: hex digits (dashes ignored), as the canonical text form shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Prefix(Vec<u8>);

impl Prefix {
    fn parse(s: &str) -> Option<Prefix> {
        let nibbles: Option<Vec<u8>> =
            s.chars().filter(|c| *c != '-').map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok())).collect();
        nibbles.filter(|n| n.len() <= 32).map(Prefix)
    }

    /// The smallest id with this prefix.
    fn lowest(&self) -> Uuid {
        let mut b = [0u8; 16];
        for (i, n) in self.0.iter().enumerate() {
            b[i / 2] |= if i % 2 == 0 { n << 4 } else { *n };
        }
        Uuid::from_bytes(b)
    }

    fn matches(&self, id: &Uuid) -> bool {
        let b = id.as_bytes();
        self.0.iter().enumerate().all(|(i, n)| (if i % 2 == 0 { b[i / 2] >> 4 } else { b[i / 2] & 15 }) == *n)
    }
}

/// A list request's filters and position.
#[derive(Debug, Default)]
struct ListQuery {
    limit: usize,
    marker: Option<(Phase, Uuid)>,
    status: Option<OperatingStatus>,
    liveness: Option<Live>,
    load_balancer: Option<Uuid>,
    prefix: Option<Prefix>,
    unhealthy_first: bool,
    /// Amphorae examined at most ([`SCAN_BUDGET`]).
    budget: usize,
}

fn truthy(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "yes" => Some(true),
        "0" | "false" | "no" | "" => Some(false),
        _ => None,
    }
}

impl ListQuery {
    fn parse(query: &str) -> Result<ListQuery, Resp> {
        let mut q = ListQuery { limit: super::DEFAULT_LIMIT, budget: SCAN_BUDGET, ..ListQuery::default() };
        let mut marker = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "limit" => q.limit = paging_limit(&v)?,
                "marker" => marker = Some(v.into_owned()),
                "status" | "operating_status" => {
                    q.status = Some(OperatingStatus::parse(&v.to_ascii_uppercase()).ok_or_else(|| {
                        error(400, "status must be ONLINE, DEGRADED, ERROR, OFFLINE, DRAINING or NO_MONITOR")
                    })?)
                }
                "liveness" => {
                    q.liveness = Some(match &*v {
                        "alive" => Live::Alive,
                        "stale" => Live::Stale,
                        _ => return Err(error(400, "liveness must be alive or stale")),
                    })
                }
                "load_balancer" => {
                    q.load_balancer = Some(Uuid::try_parse(&v).map_err(|_| error(400, "load_balancer must be a UUID"))?)
                }
                "prefix" => {
                    q.prefix = Some(
                        Prefix::parse(&v).ok_or_else(|| error(400, "prefix must be at most 32 hex digits of an id"))?,
                    )
                }
                "unhealthy_first" => {
                    q.unhealthy_first = truthy(&v).ok_or_else(|| error(400, "unhealthy_first must be true or false"))?
                }
                _ => return Err(error(400, &format!("unknown query parameter {k:?}"))),
            }
        }
        if let Some(m) = marker {
            let bad = || error(400, "marker is not a next_marker of this list order");
            let (phase, id) = match (q.unhealthy_first, m.split_at_checked(2)) {
                (true, Some(("u.", id))) => (Phase::Unhealthy, id),
                (true, Some(("h.", id))) => (Phase::Healthy, id),
                (true, _) => return Err(bad()),
                (false, _) => (Phase::All, m.as_str()),
            };
            q.marker = Some((phase, Uuid::try_parse(id).map_err(|_| bad())?));
        }
        Ok(q)
    }

    /// Whether an amphora passes the filters (the prefix and the phase are the walk's).
    fn admits(&self, h: &AmphoraHealth) -> bool {
        self.status.is_none_or(|s| s == h.operating_status) && self.liveness.is_none_or(|l| l == h.liveness)
    }

    /// Whether a phase can hold any amphora these filters admit.
    fn may_match(&self, phase: Phase) -> bool {
        let online = self.status.is_none_or(|s| s == OperatingStatus::Online);
        let alive = self.liveness.is_none_or(|l| l == Live::Alive);
        match phase {
            Phase::Healthy => online && alive,
            Phase::Unhealthy => !(self.status == Some(OperatingStatus::Online) && self.liveness == Some(Live::Alive)),
            Phase::All => true,
        }
    }
}

/// An amphora of a walk and its health.
type Walked<'a> = (Uuid, Option<&'a AmphoraHealth>);

/// The amphorae of one phase in order from `start`: the smallest index that holds them all.
fn walk<'a>(
    snap: &'a Snapshot,
    q: &ListQuery,
    phase: Phase,
    start: Bound<Uuid>,
) -> Box<dyn Iterator<Item = Walked<'a>> + 'a> {
    let range = (start, Bound::Unbounded);
    let health = move |id: &Uuid| (*id, snap.amphorae.get(id));
    if let Some(lb) = &q.load_balancer {
        return match snap.load_balancers.get(lb) {
            Some(set) => Box::new(set.range(range).map(health)),
            None => Box::new(std::iter::empty()),
        };
    }
    // Every amphora a filter on a status other than ONLINE admits is unhealthy: stale, or alive
    // and sick; the two sets hold them all, in id order.
    let only_unhealthy = phase == Phase::Unhealthy || q.status.is_some_and(|s| s != OperatingStatus::Online);
    match q.liveness {
        Some(Live::Stale) if phase != Phase::Healthy => Box::new(snap.down.range(range).map(health)),
        Some(Live::Alive) if only_unhealthy => Box::new(snap.sick.range(range).map(health)),
        _ if only_unhealthy => Box::new(
            Merged::new(snap.down.range(range).copied(), snap.sick.range(range).copied()).map(move |id| health(&id)),
        ),
        _ => Box::new(snap.amphorae.range(range).map(|(id, h)| (*id, Some(h)))),
    }
}

/// Two iterators of ids in increasing order, merged in increasing order.
struct Merged<A: Iterator<Item = Uuid>, B: Iterator<Item = Uuid>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = Uuid>, B: Iterator<Item = Uuid>> Merged<A, B> {
    fn new(a: A, b: B) -> Self {
        Merged { a: a.peekable(), b: b.peekable() }
    }
}

impl<A: Iterator<Item = Uuid>, B: Iterator<Item = Uuid>> Iterator for Merged<A, B> {
    type Item = Uuid;

    fn next(&mut self) -> Option<Uuid> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if x <= y => self.a.next(),
            (Some(_), Some(_)) | (None, _) => self.b.next(),
            (Some(_), None) => self.a.next(),
        }
    }
}

/// One list entry.
#[derive(Serialize)]
struct ListItem {
    id: Uuid,
    operating_status: OperatingStatus,
    liveness: Live,
    unhealthy: bool,
    last_refresh: String,
    load_balancer: Option<Uuid>,
    zone: Option<String>,
    failover: Option<serde_json::Value>,
}

/// Amphorae one list request examines at most. A filter that matches few of a large fleet
/// (or none) answers a short page, even an empty one, with a `next_marker` where the walk
/// stopped, instead of walking the whole fleet in one request: a million amphorae take about
/// 100–300 ms to walk, this about a fifth of that.
pub const SCAN_BUDGET: usize = 200_000;

/// One page: its items, the marker of the next (`None`: the last page), and how many amphorae
/// were examined (at most [`SCAN_BUDGET`]; the page may be short when it was reached).
fn page(snap: &Snapshot, q: &ListQuery) -> (Vec<(Uuid, Phase)>, Option<String>, usize) {
    let phases: &[Phase] = if q.unhealthy_first { &[Phase::Unhealthy, Phase::Healthy] } else { &[Phase::All] };
    let mut out: Vec<(Uuid, Phase)> = Vec::with_capacity(q.limit + 1);
    let mut scanned = 0;
    let mut stopped_at = None;
    'phases: for &phase in phases {
        if !q.may_match(phase) {
            continue;
        }
        let from = match q.marker {
            Some((p, _)) if phases.iter().position(|x| *x == p) > phases.iter().position(|x| *x == phase) => continue,
            Some((p, id)) if p == phase => Some(id),
            _ => None,
        };
        let low = q.prefix.as_ref().map(Prefix::lowest);
        let start = match (from, low) {
            (Some(m), Some(l)) if l > m => Bound::Included(l),
            (Some(m), _) => Bound::Excluded(m),
            (None, Some(l)) => Bound::Included(l),
            (None, None) => Bound::Unbounded,
        };
        for (id, health) in walk(snap, q, phase, start) {
            if q.prefix.as_ref().is_some_and(|p| !p.matches(&id)) {
                break;
            }
            scanned += 1;
            let admitted = health.is_some_and(|h| {
                q.admits(h)
                    && match phase {
                        Phase::Unhealthy => unhealthy(h.operating_status, h.liveness),
                        Phase::Healthy => !unhealthy(h.operating_status, h.liveness),
                        Phase::All => true,
                    }
            });
            if admitted {
                out.push((id, phase));
                if out.len() > q.limit {
                    break 'phases;
                }
            }
            if scanned >= q.budget {
                stopped_at = Some((id, phase));
                break 'phases;
            }
        }
    }
    let next = if out.len() > q.limit {
        out.truncate(q.limit);
        out.last().copied()
    } else {
        stopped_at
    };
    (out, next.map(|(id, p)| format!("{}{id}", p.tag())), scanned)
}

/// `GET /v1/amphorae?limit=&marker=&status=&liveness=&load_balancer=&prefix=&unhealthy_first=`.
/// Cluster mode: from the leader's view, the same on every member (this member's own state
/// while no leader is heard from; `leader_view` says which).
pub(super) fn list_amphorae(ctx: &ApiContext, query: &str) -> Resp {
    let (snap, from_leader) = ctx.control.list_view(ctx.cluster.clock.now_ns());
    list(&snap, query, from_leader)
}

/// The list answer from one snapshot.
fn list(snap: &Snapshot, query: &str, from_leader: bool) -> Resp {
    let q = match ListQuery::parse(query) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (ids, next, scanned) = page(snap, &q);
    let items: Vec<ListItem> = ids
        .iter()
        .filter_map(|(id, _)| {
            let h = snap.amphorae.get(id)?;
            Some(ListItem {
                id: *id,
                operating_status: h.operating_status,
                liveness: h.liveness,
                unhealthy: unhealthy(h.operating_status, h.liveness),
                last_refresh: rfc3339(h.last_refresh_ns),
                load_balancer: h.load_balancer,
                zone: h.zone.clone(),
                failover: h.failover.map(|(r, st)| json!({"id": r, "state": st.as_str()})),
            })
        })
        .collect();
    json_response(
        200,
        &json!({
            "amphorae": items, "next_marker": next, "scanned": scanned, "generation": snap.generation,
            "leader_view": from_leader,
        }),
    )
}

/// The census part of `/v1/stats`: amphorae by operating status and by liveness, unhealthy.
pub(super) fn census(snap: &Snapshot) -> serde_json::Value {
    let by_status: serde_json::Map<String, serde_json::Value> = crate::control::census::STATUSES
        .iter()
        .zip(snap.census)
        .map(|(s, [alive, stale])| (s.as_str().to_owned(), json!(alive + stale)))
        .collect();
    let alive: u64 = snap.census.iter().map(|c| c[0]).sum();
    let stale: u64 = snap.census.iter().map(|c| c[1]).sum();
    json!({
        "by_status": by_status,
        "by_liveness": {"alive": alive, "stale": stale},
        "unhealthy": snap.unhealthy_count(),
    })
}

/// `GET /v1/whoami`: the token's name and role (`admin` for everyone when no token is
/// configured: authentication is off).
pub(super) fn whoami(who: Option<&super::auth::Caller>) -> Resp {
    match who {
        Some(c) => json_response(200, &json!({"name": c.name, "role": c.role.as_str(), "auth": c.auth})),
        None => json_response(200, &json!({"name": "-", "role": "admin", "auth": false})),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn h(status: OperatingStatus, liveness: Live) -> AmphoraHealth {
        AmphoraHealth {
            operating_status: status,
            liveness,
            last_refresh_ns: 0,
            first_seen_ns: 0,
            load_balancer: None,
            expected_listeners: None,
            zone: None,
            failover: None,
        }
    }

    /// 20 amphorae: ids 0..20 (first byte); every fifth stale, every seventh in ERROR.
    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        for i in 0u8..20 {
            let id = Uuid::from_bytes([i; 16]);
            let live = if i % 5 == 0 { Live::Stale } else { Live::Alive };
            let st = if i % 7 == 0 { OperatingStatus::Error } else { OperatingStatus::Online };
            s.amphorae.insert(id, h(st, live));
            if live == Live::Stale {
                s.down.insert(id);
            }
            if crate::control::census::sick(st, live) {
                s.sick.insert(id);
            }
        }
        s
    }

    fn all_pages(s: &Snapshot, query: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let q = match &marker {
                Some(m) => format!("{query}&marker={m}"),
                None => query.to_owned(),
            };
            let (ids, next, _) = page(s, &ListQuery::parse(&q).unwrap());
            out.extend(ids.iter().map(|(id, _)| id.as_bytes()[0]));
            match next {
                Some(m) => marker = Some(m),
                None => return out,
            }
        }
    }

    #[test]
    fn unhealthy_first_pages_through_both_runs_once() {
        let s = snap();
        // Unhealthy: 0 (stale, error), 5, 7 (error), 10, 14 (error), 15.
        let want: Vec<u8> = vec![0, 5, 7, 10, 14, 15, 1, 2, 3, 4, 6, 8, 9, 11, 12, 13, 16, 17, 18, 19];
        for limit in [1, 2, 3, 6, 7, 100] {
            assert_eq!(all_pages(&s, &format!("limit={limit}&unhealthy_first=1")), want, "limit {limit}");
        }
        assert_eq!(all_pages(&s, "limit=3"), (0..20).collect::<Vec<u8>>());
    }

    #[test]
    fn filters_by_liveness_status_and_prefix() {
        let s = snap();
        assert_eq!(all_pages(&s, "limit=2&liveness=stale"), vec![0, 5, 10, 15]);
        assert_eq!(all_pages(&s, "limit=2&liveness=stale&unhealthy_first=1"), vec![0, 5, 10, 15]);
        assert_eq!(all_pages(&s, "limit=2&status=ERROR&unhealthy_first=true"), vec![0, 7, 14]);
        assert_eq!(
            all_pages(&s, "limit=4&status=online&liveness=alive"),
            vec![1, 2, 3, 4, 6, 8, 9, 11, 12, 13, 16, 17, 18, 19]
        );
        // Ids of byte 0x0e and 0x0f: prefix "0e" and "0f".
        assert_eq!(all_pages(&s, "limit=1&prefix=0e"), vec![14]);
        assert_eq!(all_pages(&s, "limit=1&prefix=0e0e0e0e-0e"), vec![14]);
        assert_eq!(all_pages(&s, "limit=1&prefix=1&unhealthy_first=1"), vec![16, 17, 18, 19]);
        assert_eq!(all_pages(&s, "limit=5&prefix=ff"), Vec::<u8>::new());
        let unknown_lb = format!("load_balancer={}", Uuid::from_bytes([9; 16]));
        assert_eq!(all_pages(&s, &unknown_lb), Vec::<u8>::new());
    }

    #[test]
    fn a_walk_stops_at_its_budget_and_the_next_page_goes_on_from_there() {
        let s = snap();
        let mut pages = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let m = marker.as_ref().map_or(String::new(), |m| format!("&marker={m}"));
            let mut q = ListQuery::parse(&format!("limit=10&status=ERROR&unhealthy_first=1{m}")).unwrap();
            q.budget = 2;
            let (ids, next, scanned) = page(&s, &q);
            assert!(scanned <= 2);
            pages.push(ids.iter().map(|(id, _)| id.as_bytes()[0]).collect::<Vec<u8>>());
            match next {
                Some(n) => marker = Some(n),
                None => break,
            }
        }
        // The unhealthy run (0, 5, 7, 10, 14, 15) two at a time; 0, 7 and 14 are in ERROR.
        assert_eq!(pages, vec![vec![0], vec![7], vec![14], vec![]]);
    }

    #[test]
    fn bad_queries_are_refused() {
        for q in [
            "status=UP",
            "liveness=dead",
            "prefix=xyz",
            "load_balancer=1",
            "unhealthy_first=2",
            "marker=u.zz&unhealthy_first=1",
            "limit=0",
            "nope=1",
        ] {
            assert!(ListQuery::parse(q).is_err(), "{q}");
        }
        let m = Uuid::from_bytes([1; 16]);
        assert!(
            ListQuery::parse(&format!("unhealthy_first=1&marker={m}")).is_err(),
            "a plain marker in the other order"
        );
        assert!(ListQuery::parse(&format!("marker={m}")).is_ok());
    }

    #[test]
    fn whoami_without_tokens_is_admin() {
        let v: serde_json::Value = serde_json::from_slice(&whoami(None).body).unwrap();
        assert_eq!(v, json!({"name": "-", "role": "admin", "auth": false}));
        let read = super::super::auth::Caller { name: "v".into(), role: super::super::auth::Role::Read, auth: true };
        let v: serde_json::Value = serde_json::from_slice(&whoami(Some(&read)).body).unwrap();
        assert_eq!(v, json!({"name": "v", "role": "read", "auth": true}));
    }

    #[test]
    fn the_page_files_are_served_and_nothing_else() {
        assert_eq!(static_file(&[""]).unwrap().content_type, "text/html; charset=utf-8");
        assert_eq!(static_file(&["ui", "app.js"]).unwrap().status, 200);
        assert_eq!(static_file(&["ui", "../Cargo.toml"]).unwrap().status, 404);
        assert!(static_file(&["v1", "stats"]).is_none());
    }

    /// A snapshot of a million amphorae with random ids: every `stale_every`-th stale, every
    /// `error_every`-th (0: none) alive in ERROR, every tenth on one of 50,000 load balancers.
    fn million(stale_every: usize, error_every: usize) -> (Snapshot, Vec<Uuid>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mut s = Snapshot::default();
        let lbs: Vec<Uuid> = (0..50_000).map(|_| Uuid::from_bytes(rng.random())).collect();
        let mut ids = Vec::with_capacity(1_000_000);
        for i in 0..1_000_000usize {
            let id = Uuid::from_bytes(rng.random());
            let live = if i % stale_every == 0 { Live::Stale } else { Live::Alive };
            let st =
                if error_every > 0 && i % error_every == 1 { OperatingStatus::Error } else { OperatingStatus::Online };
            let mut health = h(st, live);
            if i % 10 == 3 {
                let lb = lbs[i / 10 % lbs.len()];
                health.load_balancer = Some(lb);
                s.load_balancers.entry(lb).or_default().insert(id);
            }
            s.amphorae.insert(id, health);
            if live == Live::Stale {
                s.down.insert(id);
            }
            if crate::control::census::sick(st, live) {
                s.sick.insert(id);
            }
            ids.push(id);
        }
        ids.sort_unstable();
        (s, ids)
    }

    /// Issue 15: with 1,000,000 amphorae tracked, a list page (the route's whole work on the
    /// published snapshot: parse, walk, build and serialize the JSON) within 200 ms p95, for
    /// every filter and order, on a typical fleet (0.5 % stale, 1 % in ERROR) and on one where
    /// every amphora is stale. The README has the figures. Run:
    /// `cargo test --release --lib -- --ignored a_list_page_of_a_million --nocapture`.
    #[test]
    #[ignore = "builds million-amphora snapshots; run with --release (README: status page)"]
    fn a_list_page_of_a_million_amphorae_within_200_ms_p95() {
        for (fleet, stale_every, error_every) in [("typical", 200, 100), ("all stale", 1, 0)] {
            let built = std::time::Instant::now();
            let (snap, ids) = million(stale_every, error_every);
            let lb = *snap.load_balancers.keys().next().unwrap();
            let mid = ids[ids.len() / 2];
            eprintln!(
                "{fleet}: 1,000,000 amphorae ({} unhealthy) built in {:?}",
                snap.unhealthy_count(),
                built.elapsed()
            );
            let queries = [
                "limit=100".to_owned(),
                "limit=1000".to_owned(),
                format!("limit=100&marker={mid}"),
                "limit=100&unhealthy_first=1".to_owned(),
                "limit=1000&unhealthy_first=1".to_owned(),
                format!("limit=100&unhealthy_first=1&marker=h.{mid}"),
                "limit=100&liveness=stale".to_owned(),
                "limit=100&liveness=alive&unhealthy_first=1".to_owned(),
                "limit=100&status=ERROR".to_owned(),
                "limit=100&status=DEGRADED".to_owned(),
                "limit=100&status=ONLINE&liveness=alive".to_owned(),
                "limit=100&prefix=8f3".to_owned(),
                format!("limit=100&load_balancer={lb}&unhealthy_first=1"),
            ];
            let mut worst = std::time::Duration::ZERO;
            for q in &queries {
                let mut times: Vec<std::time::Duration> = (0..60)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        let r = list(&snap, q, false);
                        let spent = t.elapsed();
                        assert_eq!(r.status, 200, "{q}");
                        assert!(r.body.len() > 40, "{q}");
                        spent
                    })
                    .collect();
                times.sort_unstable();
                let p95 = times[times.len() * 95 / 100];
                worst = worst.max(p95);
                eprintln!("  {q:<64} p50 {:>9.3?}  p95 {:>9.3?}", times[times.len() / 2], p95);
            }
            eprintln!("{fleet}: worst p95 {worst:?}");
            assert!(worst <= std::time::Duration::from_millis(200), "{fleet}: p95 {worst:?} > 200 ms");
        }
    }
}
