//! Shipping the leader's answer view ([`crate::control::view`]) to its peers.
//!
//! While this member leads (and its control thread has taken the lead), the `cluster-view`
//! thread cuts a view from the control thread's snapshot every [`VIEW_INTERVAL`] in which it
//! changed, applies it to this member's own view, and sends every peer the rows that turn the
//! view the peer holds into the new one (`POST /v1/cluster/view`, signed like a digest). Each
//! peer answers the serial it then holds; a peer holding a view this member no longer keeps
//! (it joined, restarted, or held the previous leader's) gets the whole view, in parts of at
//! most [`MAX_ROWS`] rows.
//!
//! Wire format (big-endian), signed with the first heartbeat key:
//!
//! ```text
//! "HSV1" | node length u8 | node (UTF-8) | term u64 | base u64 | serial u64 | flags u8
//!        | rows u32 | rows × row | removed u32 | removed × id [16]
//!        | head length u32 | head JSON (flags bit 0: the last part, which carries it)
//!        | HMAC-SHA256 [32]
//! row = id [16] | status u8 | liveness u8 | last refresh ns u64 | first seen ns u64 | has u8
//!        | [load balancer [16]] | [expected listeners u32] | [zone length u8 | zone]
//!        | [failover record u64 | state u8]       (has: bits 0–3 say which follow)
//! ```
//!
//! [`decode`] is pure and fuzzed (`fuzz/fuzz_targets/cluster_view.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::agent::Wiring;
use super::digest::{sign, status_code, status_from, verified};
use super::ClusterConfig;
use crate::control::cluster::{Member, Shared};
use crate::control::failover::FailoverState;
use crate::control::liveness::Live;
use crate::control::snapshot::{AmphoraHealth, Snapshot};
use crate::control::view::{self, Head, Part};
use crate::proto::keyring::Keyring;
use crate::proto::octavia::Uuid;

const MAGIC: &[u8; 4] = b"HSV1";
const TAG: usize = 32;
/// Most rows in one part.
pub const MAX_ROWS: usize = 50_000;
/// The largest row: id, status, liveness, two times, flags, load balancer, listeners, a
/// 255-byte zone, a failover.
const MAX_ROW: usize = 16 + 1 + 1 + 8 + 8 + 1 + 16 + 4 + 1 + 255 + 9;
/// Most bytes of a head (its services and pools).
pub const MAX_HEAD: usize = 8 << 20;
/// The largest part, bytes.
pub const MAX_BYTES: usize = 4 + 1 + 255 + 24 + 1 + 4 + MAX_ROWS * MAX_ROW + 4 + MAX_ROWS * 16 + 4 + MAX_HEAD + TAG;
/// How often the leader cuts a view while the fleet changes.
pub const VIEW_INTERVAL: Duration = Duration::from_millis(250);
/// Views the leader keeps to send deltas from.
const KEPT: usize = 16;
/// The longest a peer holding the current view goes without a part from the leader.
pub const KEEP_IN_TOUCH: Duration = Duration::from_secs(1);

/// Why a part was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// Shorter than its fields say, or longer.
    Truncated,
    /// Not `HSV1`.
    BadMagic,
    /// More than [`MAX_BYTES`], [`MAX_ROWS`] rows or a [`MAX_HEAD`] head.
    TooLarge,
    /// The node name is empty or not UTF-8.
    BadNode,
    /// An unknown status, liveness or failover state code, or a zone that is not UTF-8.
    BadRow,
    /// The head is not the JSON of one, or a part other than the last carries one.
    BadHead,
    /// No configured key signs it.
    BadTag,
}

impl ViewError {
    /// A short label (logs, metrics).
    pub fn label(self) -> &'static str {
        match self {
            ViewError::Truncated => "truncated",
            ViewError::BadMagic => "bad_magic",
            ViewError::TooLarge => "too_large",
            ViewError::BadNode => "bad_node",
            ViewError::BadRow => "bad_row",
            ViewError::BadHead => "bad_head",
            ViewError::BadTag => "bad_tag",
        }
    }
}

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "view refused: {}", self.label())
    }
}

impl std::error::Error for ViewError {}

fn live_code(l: Live) -> u8 {
    match l {
        Live::Alive => 0,
        Live::Stale => 1,
    }
}

fn live_from(c: u8) -> Option<Live> {
    match c {
        0 => Some(Live::Alive),
        1 => Some(Live::Stale),
        _ => None,
    }
}

fn state_code(s: FailoverState) -> u8 {
    FailoverState::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// Encodes and signs one part from `node` into `out` (cleared first) with the first key of
/// `keys`. A zone longer than 255 bytes is cut at a character boundary (zones are far
/// shorter).
pub fn encode(node: &str, part: &Part, keys: &Keyring, out: &mut Vec<u8>) {
    let node = &node.as_bytes()[..node.len().min(255)];
    out.clear();
    out.extend_from_slice(MAGIC);
    out.push(node.len() as u8);
    out.extend_from_slice(node);
    for n in [part.term, part.base, part.serial] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.push(u8::from(part.head.is_some()));
    let rows = &part.rows[..part.rows.len().min(MAX_ROWS)];
    out.extend_from_slice(&(rows.len() as u32).to_be_bytes());
    for (id, h) in rows {
        out.extend_from_slice(id.as_bytes());
        out.push(status_code(h.operating_status));
        out.push(live_code(h.liveness));
        out.extend_from_slice(&h.last_refresh_ns.to_be_bytes());
        out.extend_from_slice(&h.first_seen_ns.to_be_bytes());
        let has = u8::from(h.load_balancer.is_some())
            | u8::from(h.expected_listeners.is_some()) << 1
            | u8::from(h.zone.is_some()) << 2
            | u8::from(h.failover.is_some()) << 3;
        out.push(has);
        if let Some(lb) = h.load_balancer {
            out.extend_from_slice(lb.as_bytes());
        }
        if let Some(n) = h.expected_listeners {
            out.extend_from_slice(&n.to_be_bytes());
        }
        if let Some(z) = &h.zone {
            let mut end = z.len().min(255);
            while !z.is_char_boundary(end) {
                end -= 1;
            }
            out.push(end as u8);
            out.extend_from_slice(&z.as_bytes()[..end]);
        }
        if let Some((rec, st)) = h.failover {
            out.extend_from_slice(&rec.to_be_bytes());
            out.push(state_code(st));
        }
    }
    let removed = &part.removed[..part.removed.len().min(MAX_ROWS)];
    out.extend_from_slice(&(removed.len() as u32).to_be_bytes());
    for id in removed {
        out.extend_from_slice(id.as_bytes());
    }
    let head = part.head.as_ref().and_then(|h| serde_json::to_vec(h).ok()).unwrap_or_default();
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    sign(keys, out);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ViewError> {
        if self.0.len() < n {
            return Err(ViewError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ViewError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ViewError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ViewError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn id(&mut self) -> Result<Uuid, ViewError> {
        let mut a = [0; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(Uuid::from_bytes(a))
    }
}

/// Decodes and verifies a part against every key of `keys`: the sending node and the part.
pub fn decode(bytes: &[u8], keys: &Keyring) -> Result<(String, Part), ViewError> {
    if bytes.len() > MAX_BYTES {
        return Err(ViewError::TooLarge);
    }
    if bytes.len() < 4 + TAG {
        return Err(ViewError::Truncated);
    }
    if &bytes[..4] != MAGIC {
        return Err(ViewError::BadMagic);
    }
    let body = verified(bytes, keys).ok_or(ViewError::BadTag)?;
    let mut r = Reader(&body[4..]);
    let node_len = usize::from(r.u8()?);
    let node = std::str::from_utf8(r.take(node_len)?).map_err(|_| ViewError::BadNode)?;
    if node.is_empty() {
        return Err(ViewError::BadNode);
    }
    let (term, base, serial) = (r.u64()?, r.u64()?, r.u64()?);
    let last = r.u8()? & 1 == 1;
    let count = r.u32()? as usize;
    if count > MAX_ROWS {
        return Err(ViewError::TooLarge);
    }
    // Each row is at least 35 bytes: a count the body cannot hold allocates nothing.
    let mut rows = Vec::with_capacity(count.min(r.0.len() / 35));
    for _ in 0..count {
        let id = r.id()?;
        let operating_status = status_from(r.u8()?).ok_or(ViewError::BadRow)?;
        let liveness = live_from(r.u8()?).ok_or(ViewError::BadRow)?;
        let (last_refresh_ns, first_seen_ns) = (r.u64()?, r.u64()?);
        let has = r.u8()?;
        if has & !0b1111 != 0 {
            return Err(ViewError::BadRow);
        }
        let load_balancer = if has & 1 != 0 { Some(r.id()?) } else { None };
        let expected_listeners = if has & 2 != 0 { Some(r.u32()?) } else { None };
        let zone = if has & 4 != 0 {
            let n = usize::from(r.u8()?);
            Some(std::str::from_utf8(r.take(n)?).map_err(|_| ViewError::BadRow)?.to_owned())
        } else {
            None
        };
        let failover = if has & 8 != 0 {
            let rec = r.u64()?;
            let st = *FailoverState::ALL.get(usize::from(r.u8()?)).ok_or(ViewError::BadRow)?;
            Some((rec, st))
        } else {
            None
        };
        let h = AmphoraHealth {
            operating_status,
            liveness,
            last_refresh_ns,
            first_seen_ns,
            load_balancer,
            expected_listeners,
            zone,
            failover,
        };
        rows.push((id, h));
    }
    let count = r.u32()? as usize;
    if count > MAX_ROWS {
        return Err(ViewError::TooLarge);
    }
    let mut removed = Vec::with_capacity(count.min(r.0.len() / 16));
    for _ in 0..count {
        removed.push(r.id()?);
    }
    let head_len = r.u32()? as usize;
    if head_len > MAX_HEAD {
        return Err(ViewError::TooLarge);
    }
    let head_bytes = r.take(head_len)?;
    if !r.0.is_empty() {
        return Err(ViewError::Truncated);
    }
    let head = match (last, head_len) {
        (true, _) => Some(serde_json::from_slice::<Head>(head_bytes).map_err(|_| ViewError::BadHead)?),
        (false, 0) => None,
        (false, _) => return Err(ViewError::BadHead),
    };
    Ok((node.to_owned(), Part { term, base, serial, rows, removed, head }))
}

/// The parts that turn `from` (a view the peer holds; `None`: nothing) into `to`.
fn parts(term: u64, from: Option<&Snapshot>, to: &Snapshot) -> Vec<Part> {
    let (rows, removed) = view::delta(from, to);
    let head = view::head(from, to);
    let base = from.map_or(0, |f| f.generation);
    let mut out = Vec::new();
    let (mut rows, mut removed) = (&rows[..], &removed[..]);
    loop {
        let (r, rest_r) = rows.split_at(rows.len().min(MAX_ROWS));
        let (d, rest_d) = removed.split_at(removed.len().min(MAX_ROWS));
        let last = rest_r.is_empty() && rest_d.is_empty();
        out.push(Part {
            term,
            base,
            serial: to.generation,
            rows: r.to_vec(),
            removed: d.to_vec(),
            head: last.then(|| head.clone()),
        });
        if last {
            return out;
        }
        (rows, removed) = (rest_r, rest_d);
    }
}

/// The `cluster-view` thread: cuts and ships views while this member leads.
pub(super) fn ship(cfg: &ClusterConfig, w: &Wiring, shared: &Shared, stop: &AtomicBool) {
    let agent: ureq::Agent = ureq::AgentBuilder::new().timeout(cfg.timeout().max(Duration::from_secs(1))).build();
    let published = &w.published;
    // This term's cuts: the term, how many, the control snapshot of the latest cut.
    let mut term = 0;
    let mut cuts = 0;
    let mut cut_from: Option<Arc<Snapshot>> = None;
    // Views held here, newest last: what peers' deltas are built from.
    let mut kept: VecDeque<Arc<Snapshot>> = VecDeque::new();
    // The serial each peer said it holds.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut last_touch = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(VIEW_INTERVAL);
        let snap = published.snapshot.load_full();
        if !(shared.is_leader() && snap.term != 0 && snap.term == shared.term()) {
            term = 0;
            continue;
        }
        if term != snap.term {
            (term, cuts, cut_from) = (snap.term, 0, None);
            kept.clear();
            acked.clear();
        }
        if cut_from.as_ref().is_none_or(|c| c.generation != snap.generation) {
            cuts += 1;
            let mut to = (*snap).clone();
            to.generation = view::serial(term, cuts);
            // The first cut of a term is whole (this member's own view may be an earlier
            // leader's); later ones are the change since the previous cut, while that is the
            // view held here.
            let held = published.views.lock().held_serial();
            let from = cut_from.as_deref().filter(|_| held == view::serial(term, cuts - 1));
            let base = if from.is_some() { held } else { 0 };
            let mut own = parts(term, from, &to);
            for p in &mut own {
                p.base = base;
            }
            for p in own {
                if let Err(e) = published.apply_view(p, w.clock.now_ns()) {
                    tracing::warn!(error = %e, "this leader's own view was refused");
                }
            }
            cut_from = Some(snap);
            // Only this term's views are shipped (a member deposed meanwhile may hold a later
            // leader's).
            if let Some(v) = published.cluster_view.load_full().filter(|v| view::term_of(v.generation) == term) {
                kept.push_back(v);
                if kept.len() > KEPT {
                    kept.pop_front();
                }
            }
        }
        let Some(current) = kept.back().cloned() else { continue };
        // Leading: this member's own view is current.
        published.view_contact_ns.store(w.clock.now_ns(), Ordering::Relaxed);
        // Peers holding the current view hear from the leader at least every KEEP_IN_TOUCH
        // (an empty part of the view they hold), so their lists keep to the leader's view.
        let touch = last_touch.elapsed() >= KEEP_IN_TOUCH;
        if touch {
            last_touch = std::time::Instant::now();
        }
        let members = shared.view.load();
        let peers: Vec<&Member> = members.members.iter().filter(|m| m.node != w.me.node).collect();
        acked.retain(|node, _| peers.iter().any(|p| p.node == *node));
        let keys = w.keys.load();
        let results: Vec<(String, Option<u64>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = peers
                .iter()
                .filter(|p| touch || acked.get(&p.node) != Some(&current.generation))
                .map(|p| {
                    // From the view the peer holds when kept here, else the previous cut (a
                    // peer not heard from yet most likely holds it), else whole.
                    let from = match acked.get(&p.node) {
                        Some(s) => kept.iter().find(|k| k.generation == *s).cloned(),
                        None => kept.iter().rev().nth(1).cloned(),
                    };
                    let acked_now = acked.get(&p.node).copied();
                    let (agent, keys, current) = (&agent, &keys, &current);
                    scope.spawn(move || {
                        let url = format!("http://{}/v1/cluster/view", p.admin);
                        let mut body = Vec::new();
                        let mut held = None;
                        let todo = match from.as_deref() {
                            // Up to date: an empty part of the view it holds.
                            _ if acked_now == Some(current.generation) => vec![Part {
                                term,
                                base: current.generation,
                                serial: current.generation,
                                ..Part::default()
                            }],
                            f => parts(term, f, current),
                        };
                        for part in todo {
                            encode(&w.me.node, &part, keys, &mut body);
                            let r = agent.post(&url).set("content-type", "application/octet-stream").send_bytes(&body);
                            let answer = match r {
                                Ok(r) => r.into_json::<serde_json::Value>().ok(),
                                Err(ureq::Error::Status(409, r)) => {
                                    // It holds another view: start from that one next time.
                                    held = r.into_json::<serde_json::Value>().ok().and_then(|v| v["held"].as_u64());
                                    break;
                                }
                                Err(e) => {
                                    tracing::debug!(peer = %p.node, error = %e, "view not delivered");
                                    held = None;
                                    break;
                                }
                            };
                            held = answer.and_then(|v| v["held"].as_u64());
                        }
                        (p.node.clone(), held)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (node, held) in results {
            match held {
                Some(s) => acked.insert(node, s),
                None => acked.remove(&node),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::state::OperatingStatus;
    use hmac::Mac;

    fn keys() -> Keyring {
        Keyring::from_strs(&["k"], 0)
    }

    fn view(n: u8) -> Snapshot {
        let mut s = Snapshot::default();
        for i in 0..n {
            s.amphorae.insert(
                Uuid::from_bytes([i; 16]),
                AmphoraHealth {
                    operating_status: OperatingStatus::Degraded,
                    liveness: if i % 2 == 0 { Live::Alive } else { Live::Stale },
                    last_refresh_ns: u64::from(i) * 7,
                    first_seen_ns: 3,
                    load_balancer: (i % 3 == 0).then(|| Uuid::from_bytes([200; 16])),
                    expected_listeners: (i % 4 == 0).then_some(2),
                    zone: (i % 5 == 0).then(|| "rack-é".to_owned()),
                    failover: (i % 6 == 0).then_some((u64::from(i), FailoverState::Done)),
                },
            );
        }
        s.generation = view::serial(4, 2);
        s
    }

    #[test]
    fn parts_round_trip_and_rebuild_the_view() {
        let to = view(20);
        let mut rx = crate::control::view::Receiver::default();
        let mut got = None;
        for p in parts(4, None, &to) {
            let mut b = Vec::new();
            encode("a", &p, &keys(), &mut b);
            let (node, d) = decode(&b, &keys()).unwrap();
            assert_eq!((node.as_str(), &d), ("a", &p));
            got = rx.apply(d).unwrap();
        }
        let v = got.unwrap();
        assert_eq!((v.amphorae.clone(), v.generation, v.down.len()), (to.amphorae, to.generation, 10));
    }

    #[test]
    fn bad_parts_are_refused() {
        let p = parts(4, None, &view(3)).remove(0);
        let mut b = Vec::new();
        encode("a", &p, &keys(), &mut b);
        assert_eq!(decode(&b, &Keyring::from_strs(&["other"], 0)), Err(ViewError::BadTag));
        assert_eq!(decode(&b[..b.len() - 1], &keys()), Err(ViewError::BadTag));
        let mut bad = b.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, &keys()), Err(ViewError::BadMagic));
        // A signed part with an unknown liveness code: the first row's liveness byte.
        let mut body = b[..b.len() - TAG].to_vec();
        body[4 + 1 + 1 + 24 + 1 + 4 + 16 + 1] = 9;
        let k = keys();
        let mut mac = k.keys()[0].mac();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(decode(&body, &keys()), Err(ViewError::BadRow));
    }
}
