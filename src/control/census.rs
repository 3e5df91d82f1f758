//! The fleet's census for the status page: amphorae counted by operating status × liveness,
//! the index of the alive ones whose status is not `ONLINE` (with the fleet's stale set, the
//! unhealthy ones: a list puts them first without sorting the fleet), and the log of recent
//! transitions (an amphora's detail view shows its own).
//!
//! Memory: the counts are fixed; the index holds only amphorae alive and not `ONLINE` (a
//! persistent set shared with the published snapshot; an amphora going stale, the mass event,
//! touches no set here); the transitions are one bounded global
//! ring of the fleet's last [`LOG_CAPACITY`] transitions (32 bytes each, 4 MiB), nothing per
//! amphora. An amphora's recent changes are the newest [`PER_AMPHORA`] of its transitions still
//! in that ring: a fleet that churns faster than the ring turns over shows fewer.

use std::collections::VecDeque;

use serde::Serialize;

use super::liveness::Live;
use crate::proto::octavia::Uuid;
use crate::state::OperatingStatus;

/// Transitions the global log keeps (the fleet's newest).
pub const LOG_CAPACITY: usize = 1 << 17;
/// Transitions of one amphora shown by its detail view at most.
pub const PER_AMPHORA: usize = 16;

/// Operating statuses in the order the counts keep them.
pub const STATUSES: [OperatingStatus; 6] = [
    OperatingStatus::Online,
    OperatingStatus::Degraded,
    OperatingStatus::Error,
    OperatingStatus::Offline,
    OperatingStatus::Draining,
    OperatingStatus::NoMonitor,
];

/// The cell of [`crate::control::snapshot::CensusCounts`] an amphora in this state counts in.
pub fn cell(status: OperatingStatus, live: Live) -> (usize, usize) {
    (status_index(status), live_index(live))
}

fn status_index(s: OperatingStatus) -> usize {
    STATUSES.iter().position(|x| *x == s).unwrap_or(0)
}

fn live_index(l: Live) -> usize {
    match l {
        Live::Alive => 0,
        Live::Stale => 1,
    }
}

/// Whether an amphora in this state is unhealthy: stale, or alive with any status but `ONLINE`.
pub fn unhealthy(status: OperatingStatus, live: Live) -> bool {
    live != Live::Alive || status != OperatingStatus::Online
}

/// Whether an amphora in this state is alive with a status other than `ONLINE` (unhealthy and
/// not stale).
pub fn sick(status: OperatingStatus, live: Live) -> bool {
    live == Live::Alive && status != OperatingStatus::Online
}

/// What changed in one transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moved {
    /// The operating status, from → to.
    Status(OperatingStatus, OperatingStatus),
    /// Liveness, from → to.
    Liveness(Live, Live),
}

/// One transition of one amphora.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The amphora.
    pub id: Uuid,
    /// When, wall clock ns.
    pub at_ns: u64,
    /// What changed.
    pub moved: Moved,
}

/// A transition as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransitionView {
    /// When (RFC 3339).
    pub at: String,
    /// `operating_status` or `liveness`.
    pub what: &'static str,
    /// The state before.
    pub from: &'static str,
    /// The state after.
    pub to: &'static str,
}

fn live_str(l: Live) -> &'static str {
    match l {
        Live::Alive => "alive",
        Live::Stale => "stale",
    }
}

impl Transition {
    /// The API's view.
    pub fn view(&self) -> TransitionView {
        let (what, from, to) = match self.moved {
            Moved::Status(a, b) => ("operating_status", a.as_str(), b.as_str()),
            Moved::Liveness(a, b) => ("liveness", live_str(a), live_str(b)),
        };
        TransitionView { at: crate::util::rfc3339(self.at_ns), what, from, to }
    }
}

/// Counts, the index of the sick, and the transitions not yet handed to the log; kept by the
/// fleet, which reports every change of an amphora's (status, liveness) through [`Census::moved`].
#[derive(Debug, Default)]
pub struct Census {
    counts: [[u64; 2]; STATUSES.len()],
    sick: imbl::OrdSet<Uuid>,
    /// At most [`LOG_CAPACITY`] (a mass event keeps its newest, as the log would).
    pending: VecDeque<Transition>,
    /// Transitions dropped from `pending` since it was last taken.
    dropped: u64,
}

impl Census {
    /// Amphora `id` went from `before` to `after` (`None`: not tracked) at `now`; `record`:
    /// the change is a transition worth showing (not a restore or a forget).
    pub fn moved(
        &mut self,
        id: Uuid,
        before: Option<(OperatingStatus, Live)>,
        after: Option<(OperatingStatus, Live)>,
        now: u64,
        record: bool,
    ) {
        if before == after {
            return;
        }
        if let Some((s, l)) = before {
            let n = &mut self.counts[status_index(s)][live_index(l)];
            *n = n.saturating_sub(1);
        }
        if let Some((s, l)) = after {
            self.counts[status_index(s)][live_index(l)] += 1;
        }
        let now_sick = after.is_some_and(|(s, l)| sick(s, l));
        let was = before.is_some_and(|(s, l)| sick(s, l));
        if now_sick && !was {
            self.sick.insert(id);
        } else if was && !now_sick {
            self.sick.remove(&id);
        }
        if let (true, Some((s0, l0)), Some((s1, l1))) = (record, before, after) {
            if s0 != s1 {
                self.push(Transition { id, at_ns: now, moved: Moved::Status(s0, s1) });
            }
            if l0 != l1 {
                self.push(Transition { id, at_ns: now, moved: Moved::Liveness(l0, l1) });
            }
        }
    }

    fn push(&mut self, t: Transition) {
        if self.pending.len() == LOG_CAPACITY {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(t);
    }

    /// Amphorae by operating status (in [`STATUSES`] order) × liveness (alive, stale).
    pub fn counts(&self) -> [[u64; 2]; STATUSES.len()] {
        self.counts
    }

    /// The amphorae alive with a status other than `ONLINE` (see [`sick`]), in id order.
    pub fn sick(&self) -> &imbl::OrdSet<Uuid> {
        &self.sick
    }

    /// The transitions since the last call, oldest first, and how many older ones did not
    /// fit (a mass event beyond [`LOG_CAPACITY`] in one round).
    pub fn take_transitions(&mut self) -> (VecDeque<Transition>, u64) {
        (std::mem::take(&mut self.pending), std::mem::take(&mut self.dropped))
    }
}

/// The fleet's newest transitions, a bounded ring (see the module documentation).
#[derive(Debug, Default)]
pub struct TransitionLog {
    ring: VecDeque<Transition>,
    total: u64,
}

impl TransitionLog {
    /// Appends `transitions` (oldest first), dropping the oldest beyond [`LOG_CAPACITY`];
    /// `skipped` more happened before them that never reached the log.
    pub fn extend(&mut self, transitions: impl IntoIterator<Item = Transition>, skipped: u64) {
        for t in transitions {
            if self.ring.len() == LOG_CAPACITY {
                self.ring.pop_front();
            }
            self.ring.push_back(t);
            self.total += 1;
        }
        self.total += skipped;
    }

    /// Transitions recorded since start (including those the ring no longer holds).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The newest transitions of `id` still held, newest first, at most [`PER_AMPHORA`].
    pub fn of(&self, id: &Uuid) -> Vec<Transition> {
        self.ring.iter().rev().filter(|t| t.id == *id).take(PER_AMPHORA).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ON: OperatingStatus = OperatingStatus::Online;
    const ERR: OperatingStatus = OperatingStatus::Error;

    #[test]
    fn counts_the_sick_index_and_transitions_follow_each_move() {
        let mut c = Census::default();
        let (a, b) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]));
        c.moved(a, None, Some((ON, Live::Alive)), 1, true);
        c.moved(b, None, Some((ERR, Live::Alive)), 1, true);
        assert_eq!(c.counts()[0], [1, 0]);
        assert_eq!(c.counts()[2], [1, 0]);
        assert_eq!(c.sick().iter().copied().collect::<Vec<_>>(), vec![b]);
        assert!(c.take_transitions().0.is_empty(), "a new amphora is no transition");
        c.moved(a, Some((ON, Live::Alive)), Some((ON, Live::Stale)), 5, true);
        c.moved(b, Some((ERR, Live::Alive)), Some((ON, Live::Alive)), 6, true);
        assert!(c.sick().is_empty(), "a is stale (not sick), b is ONLINE again");
        assert_eq!(c.counts()[0], [1, 1]);
        assert_eq!(c.counts()[2], [0, 0]);
        let (t, _) = c.take_transitions();
        assert_eq!(t[0], Transition { id: a, at_ns: 5, moved: Moved::Liveness(Live::Alive, Live::Stale) });
        assert_eq!(t[1], Transition { id: b, at_ns: 6, moved: Moved::Status(ERR, ON) });
        c.moved(a, Some((ON, Live::Stale)), None, 7, false);
        assert!(c.sick().is_empty());
        assert_eq!(c.counts().iter().flatten().sum::<u64>(), 1);
    }

    #[test]
    fn a_mass_event_keeps_the_newest_transitions_and_counts_the_rest() {
        let mut c = Census::default();
        let a = Uuid::from_bytes([1; 16]);
        let (up, down) = ((ON, Live::Alive), (ON, Live::Stale));
        c.moved(a, None, Some(up), 0, true);
        for i in 0..LOG_CAPACITY as u64 + 5 {
            let (from, to) = if i % 2 == 0 { (up, down) } else { (down, up) };
            c.moved(a, Some(from), Some(to), i, true);
        }
        let (t, dropped) = c.take_transitions();
        assert_eq!((t.len(), dropped), (LOG_CAPACITY, 5));
        assert_eq!(t.back().map(|t| t.at_ns), Some(LOG_CAPACITY as u64 + 4));
        let mut log = TransitionLog::default();
        log.extend(t, dropped);
        assert_eq!(log.total(), LOG_CAPACITY as u64 + 5);
    }

    #[test]
    fn the_log_is_bounded_and_finds_one_amphoras_newest_first() {
        let mut log = TransitionLog::default();
        let (a, b) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]));
        let t = |id, at| Transition { id, at_ns: at, moved: Moved::Status(ON, ERR) };
        let many: Vec<Transition> =
            (0..LOG_CAPACITY as u64 + 10).map(|i| t(if i % 2 == 0 { a } else { b }, i)).collect();
        log.extend(many, 0);
        assert_eq!(log.total(), LOG_CAPACITY as u64 + 10);
        let of_a = log.of(&a);
        assert_eq!(of_a.len(), PER_AMPHORA);
        assert_eq!(of_a[0].at_ns, LOG_CAPACITY as u64 + 8);
        assert!(of_a.windows(2).all(|w| w[0].at_ns > w[1].at_ns));
        assert_eq!(log.of(&Uuid::from_bytes([3; 16])), vec![]);
        let v = of_a[0].view();
        assert_eq!((v.what, v.from, v.to), ("operating_status", "ONLINE", "ERROR"));
    }
}
