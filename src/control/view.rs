//! Cluster mode's answer view: the one picture of the fleet every member answers confd's
//! heartsink types (100–105) and `GET /v1/amphorae` from, so that equal serials mean equal
//! answers on every member.
//!
//! The leader cuts a view from its own [`Snapshot`] a few times a second while something
//! changed. A view's serial is `term << 32 | n` (`n` counts the leader's cuts in its term), so a
//! later view of the same leader and any view of a later leader have a higher serial, which is
//! what Ganeti's client filter prefers. The leader ships each view to every peer as a delta
//! from the view that peer holds (the changed, added and removed rows, and the small head:
//! counters, suspension reasons, services, pools), and every member, the leader included,
//! builds its view with the same [`Receiver`] from the same rows: the derived sets (stale
//! amphorae, alive but not `ONLINE`, load balancers, the counts by status and liveness) come
//! from the rows alike everywhere, and pool picks are a
//! function of the serial, the query and the request's salt. A member that holds no view
//! answers confd's heartsink types with an error of serial 0 (which any real answer outranks).
//!
//! A leader's cost follows changes: the delta is `imbl`'s diff of two cuts, which skips the
//! subtrees they share.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::liveness::{Live, SuspendReason};
use super::snapshot::{AmphoraHealth, Snapshot};
use crate::engine::Totals;
use crate::proto::octavia::Uuid;
use crate::registry::lb::{Pool, World, WorldEntry};

/// The serial of the `n`-th view cut by the leader of `term` (terms beyond 2³¹ saturate).
pub fn serial(term: u64, n: u64) -> u64 {
    (term.min(i32::MAX as u64) << 32) | (n & 0xffff_ffff)
}

/// The term a serial was cut in.
pub fn term_of(serial: u64) -> u64 {
    serial >> 32
}

/// What a view carries besides its rows: small, shipped whole with the last part of a view.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Head {
    /// When the leader cut it (its wall clock), ns.
    pub taken_ns: u64,
    /// Amphorae the leader tracked.
    pub tracked: u64,
    /// The leader's engine counters.
    pub totals: Totals,
    /// Why the leader holds failovers back.
    pub suspended: Vec<SuspendReason>,
    /// Failover records by state.
    pub failover_counts: Vec<u64>,
    /// The services as polled (`None`: unchanged since the base view).
    pub world: Option<Vec<WorldEntry>>,
    /// The pools (`None`: unchanged since the base view).
    pub pools: Option<BTreeMap<String, Pool>>,
}

/// One part of a view on its way to a member.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Part {
    /// The leader's term.
    pub term: u64,
    /// The serial of the view the rows apply to (0: an empty view).
    pub base: u64,
    /// The serial of the view they make.
    pub serial: u64,
    /// Rows added or changed.
    pub rows: Vec<(Uuid, AmphoraHealth)>,
    /// Rows removed.
    pub removed: Vec<Uuid>,
    /// The head, on the last part only: the view is complete once it is applied.
    pub head: Option<Head>,
}

/// Why a part was not applied; the sender starts again from the view held (`held`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The part's serial is below the view held (an earlier leader, or an old view).
    Stale {
        /// The serial held.
        held: u64,
    },
    /// The part builds on a view this member does not hold.
    BaseMismatch {
        /// The serial held.
        held: u64,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Stale { held } => write!(f, "view older than the one held ({held})"),
            Refused::BaseMismatch { held } => write!(f, "view built on one not held (holding {held})"),
        }
    }
}

struct Staging {
    base: u64,
    serial: u64,
    snap: Snapshot,
}

/// A member's views: the one it holds and the one being assembled from parts.
#[derive(Default)]
pub struct Receiver {
    held: Option<Arc<Snapshot>>,
    staging: Option<Staging>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("held", &self.held_serial()).finish()
    }
}

impl Receiver {
    /// The view held, if any.
    pub fn held(&self) -> Option<&Arc<Snapshot>> {
        self.held.as_ref()
    }

    /// The serial of the view held (0: none).
    pub fn held_serial(&self) -> u64 {
        self.held.as_ref().map_or(0, |s| s.generation)
    }

    /// Applies one part: `Ok(Some(view))` when it completed a view (now held), `Ok(None)` when
    /// more parts are due (or the view is the one held already).
    pub fn apply(&mut self, part: Part) -> Result<Option<Arc<Snapshot>>, Refused> {
        let held = self.held_serial();
        if part.serial == held && held != 0 {
            return Ok(None);
        }
        if part.serial < held {
            return Err(Refused::Stale { held });
        }
        let continuing = self.staging.as_ref().is_some_and(|s| s.serial == part.serial && s.base == part.base);
        if !continuing {
            let start = match (part.base, &self.held) {
                (0, _) => Snapshot { cluster_view: true, ..Snapshot::default() },
                (b, Some(h)) if b == held => (**h).clone(),
                _ => {
                    self.staging = None;
                    return Err(Refused::BaseMismatch { held });
                }
            };
            self.staging = Some(Staging { base: part.base, serial: part.serial, snap: start });
        }
        let Some(st) = self.staging.as_mut() else { return Ok(None) };
        for id in &part.removed {
            if let Some(old) = st.snap.amphorae.remove(id) {
                unlink(&mut st.snap, id, &old);
            }
        }
        for (id, h) in part.rows {
            if let Some(old) = st.snap.amphorae.get(&id).cloned() {
                unlink(&mut st.snap, &id, &old);
            }
            link(&mut st.snap, &id, &h);
            st.snap.amphorae.insert(id, h);
        }
        let Some(head) = part.head else { return Ok(None) };
        let Some(mut st) = self.staging.take() else { return Ok(None) };
        let s = &mut st.snap;
        s.generation = st.serial;
        s.term = part.term;
        s.cluster_view = true;
        s.taken_ns = head.taken_ns;
        s.tracked = usize::try_from(head.tracked).unwrap_or(usize::MAX);
        s.totals = head.totals;
        s.suspended = head.suspended;
        for (slot, n) in s.failover_counts.iter_mut().zip(head.failover_counts.iter().chain(std::iter::repeat(&0))) {
            *slot = *n;
        }
        if let Some(w) = head.world {
            s.world = Arc::new(World::from_entries(w));
        }
        if let Some(p) = head.pools {
            s.pools = Arc::new(p);
        }
        let view = Arc::new(st.snap);
        self.held = Some(view.clone());
        Ok(Some(view))
    }
}

fn unlink(s: &mut Snapshot, id: &Uuid, h: &AmphoraHealth) {
    if h.liveness == Live::Stale {
        s.down.remove(id);
    }
    if super::census::sick(h.operating_status, h.liveness) {
        s.sick.remove(id);
    }
    let (i, j) = super::census::cell(h.operating_status, h.liveness);
    s.census[i][j] = s.census[i][j].saturating_sub(1);
    if let Some(lb) = h.load_balancer {
        if let Some(set) = s.load_balancers.get_mut(&lb) {
            set.remove(id);
            if set.is_empty() {
                s.load_balancers.remove(&lb);
            }
        }
    }
}

fn link(s: &mut Snapshot, id: &Uuid, h: &AmphoraHealth) {
    if h.liveness == Live::Stale {
        s.down.insert(*id);
    }
    if super::census::sick(h.operating_status, h.liveness) {
        s.sick.insert(*id);
    }
    let (i, j) = super::census::cell(h.operating_status, h.liveness);
    s.census[i][j] += 1;
    if let Some(lb) = h.load_balancer {
        s.load_balancers.entry(lb).or_default().insert(*id);
    }
}

/// The rows that turn `from`'s amphorae into `to`'s (all of `to`'s when `from` is `None`):
/// changed or added rows, and removed ids. Shared subtrees are skipped.
pub fn delta(from: Option<&Snapshot>, to: &Snapshot) -> (Vec<(Uuid, AmphoraHealth)>, Vec<Uuid>) {
    let Some(from) = from else {
        return (to.amphorae.iter().map(|(k, v)| (*k, v.clone())).collect(), Vec::new());
    };
    let (mut rows, mut removed) = (Vec::new(), Vec::new());
    for d in from.amphorae.diff(&to.amphorae) {
        match d {
            imbl::ordmap::DiffItem::Add(k, v) | imbl::ordmap::DiffItem::Update { new: (k, v), .. } => {
                rows.push((*k, v.clone()))
            }
            imbl::ordmap::DiffItem::Remove(k, _) => removed.push(*k),
        }
    }
    (rows, removed)
}

/// The head of `to`, with the services and pools only when they differ from `from`'s.
pub fn head(from: Option<&Snapshot>, to: &Snapshot) -> Head {
    let world_same = from.is_some_and(|f| Arc::ptr_eq(&f.world, &to.world) || f.world.entries() == to.world.entries());
    let pools_same = from.is_some_and(|f| Arc::ptr_eq(&f.pools, &to.pools) || f.pools == to.pools);
    Head {
        taken_ns: to.taken_ns,
        tracked: to.tracked as u64,
        totals: to.totals.clone(),
        suspended: to.suspended.clone(),
        failover_counts: to.failover_counts.to_vec(),
        world: (!world_same).then(|| to.world.entries().to_vec()),
        pools: (!pools_same).then(|| (*to.pools).clone()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::state::OperatingStatus;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn row(live: Live, lb: Option<u8>) -> AmphoraHealth {
        AmphoraHealth {
            operating_status: OperatingStatus::Online,
            liveness: live,
            last_refresh_ns: 5,
            first_seen_ns: 1,
            load_balancer: lb.map(id),
            expected_listeners: None,
            zone: None,
            failover: None,
        }
    }

    fn snap(rows: &[(u8, Live, Option<u8>)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (n, l, lb) in rows {
            s.amphorae.insert(id(*n), row(*l, *lb));
        }
        s
    }

    fn part(term: u64, base: u64, n: u64, from: Option<&Snapshot>, to: &Snapshot) -> Part {
        let (rows, removed) = delta(from, to);
        Part { term, base, serial: serial(term, n), rows, removed, head: Some(head(from, to)) }
    }

    #[test]
    fn serials_order_by_term_then_cut() {
        assert!(serial(2, 0) > serial(1, u64::from(u32::MAX)));
        assert!(serial(1, 2) > serial(1, 1));
        assert_eq!(term_of(serial(7, 3)), 7);
        assert!(serial(u64::MAX, 1) <= i64::MAX as u64, "a serial fits confd's signed integer");
    }

    /// The same deltas give the same view whatever the path, with the derived sets of the rows.
    #[test]
    fn deltas_rebuild_the_leaders_view_and_its_derived_sets() {
        let a = snap(&[(1, Live::Alive, Some(9)), (2, Live::Alive, Some(9)), (3, Live::Stale, None)]);
        let mut b = a.clone();
        b.amphorae.insert(id(2), row(Live::Stale, None));
        b.amphorae.remove(&id(3));
        b.amphorae.insert(id(4), row(Live::Alive, Some(8)));

        let mut r = Receiver::default();
        let v1 = r.apply(part(1, 0, 1, None, &a)).unwrap().unwrap();
        assert_eq!(v1.generation, serial(1, 1));
        assert_eq!(v1.down.iter().copied().collect::<Vec<_>>(), vec![id(3)]);
        assert_eq!(v1.load_balancers.get(&id(9)).unwrap().len(), 2);
        let v2 = r.apply(part(1, serial(1, 1), 2, Some(&a), &b)).unwrap().unwrap();
        assert_eq!(v2.amphorae, b.amphorae);
        assert_eq!(v2.down.iter().copied().collect::<Vec<_>>(), vec![id(2)]);
        assert_eq!(v2.load_balancers.get(&id(9)).unwrap().iter().copied().collect::<Vec<_>>(), vec![id(1)]);
        assert!(v2.load_balancers.contains_key(&id(8)));

        // Another member built from scratch holds the same view.
        let mut other = Receiver::default();
        let w = other.apply(part(1, 0, 2, None, &b)).unwrap().unwrap();
        assert_eq!(
            (w.generation, &w.amphorae, &w.down, &w.load_balancers),
            (v2.generation, &v2.amphorae, &v2.down, &v2.load_balancers)
        );
        assert_eq!((&w.sick, w.census), (&v2.sick, v2.census));
        let counted: u64 = v2.census.iter().flatten().sum();
        assert_eq!(counted, 3, "the counts follow the rows: {:?}", v2.census);
    }

    #[test]
    fn old_views_and_unknown_bases_are_refused_and_parts_assemble() {
        let a = snap(&[(1, Live::Alive, None), (2, Live::Alive, None)]);
        let mut r = Receiver::default();
        r.apply(part(2, 0, 5, None, &a)).unwrap();
        // An earlier leader's view, and a delta on a view never held.
        assert_eq!(r.apply(part(1, 0, 9, None, &a)).err(), Some(Refused::Stale { held: serial(2, 5) }));
        assert_eq!(
            r.apply(part(2, serial(2, 3), 6, None, &a)).err(),
            Some(Refused::BaseMismatch { held: serial(2, 5) })
        );
        // The view held again: nothing to do.
        assert!(r.apply(part(2, 0, 5, None, &a)).unwrap().is_none());
        // A view in two parts: nothing changes before the last.
        let (rows, _) = delta(None, &a);
        let first =
            Part { term: 3, base: 0, serial: serial(3, 1), rows: rows[..1].to_vec(), removed: vec![], head: None };
        let last = Part { rows: rows[1..].to_vec(), head: Some(head(None, &a)), ..first.clone() };
        assert!(r.apply(first).unwrap().is_none());
        assert_eq!(r.held_serial(), serial(2, 5));
        let v = r.apply(last).unwrap().unwrap();
        assert_eq!((v.generation, v.amphorae.len(), v.term), (serial(3, 1), 2, 3));
    }
}
