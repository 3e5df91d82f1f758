//! A coarse timer wheel of liveness deadlines, re-armed lazily.
//!
//! Time is cut into slots of `width` ns; slot `a` holds the ids whose deadline falls in
//! `[a·width, (a+1)·width)`, in a ring of `len` slots (a power of two, at least the longest
//! deadline ahead, so a deadline rarely laps the ring). Arming is a push onto one slot's
//! vector: O(1), no ordering, no search. Nothing is ever removed from a slot but by expiry: a
//! re-armed or forgotten amphora leaves its old entry behind, and the owner (the liveness
//! machine) skips an entry whose amphora's current deadline is not in the slot being expired.
//! An entry whose deadline is a full lap ahead is put back for the next lap.
//!
//! The cost of a health check is therefore the number of entries in the slots it expires —
//! deadlines that passed, plus the stale leftovers of re-arms — never the size of the fleet.

use crate::proto::octavia::Uuid;

/// Most slots in the ring (a power of two): 65,536 slots of 10 ms is 11 minutes.
const MAX_SLOTS: u64 = 1 << 16;

/// The wheel.
#[derive(Debug)]
pub struct Wheel {
    width: u64,
    slots: Vec<Vec<Uuid>>,
    /// The next absolute slot to expire: every slot before it was expired.
    cursor: u64,
    entries: usize,
}

impl Wheel {
    /// A wheel of slots `width` ns wide, long enough for deadlines `horizon` ns ahead, whose
    /// first slot to expire is the one holding `now`.
    pub fn new(width: u64, horizon: u64, now: u64) -> Wheel {
        let width = width.max(1);
        let len = (horizon / width + 2).clamp(8, MAX_SLOTS).next_power_of_two();
        Wheel { width, slots: (0..len).map(|_| Vec::new()).collect(), cursor: now / width, entries: 0 }
    }

    /// Entries held (live and left behind).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The absolute slot of a deadline.
    pub fn slot_of(&self, deadline: u64) -> u64 {
        deadline / self.width
    }

    /// Arms `id` at `deadline`. A deadline in a slot already expired goes into the next slot
    /// to expire.
    pub fn arm(&mut self, id: Uuid, deadline: u64) {
        let slot = self.slot_of(deadline).max(self.cursor);
        let len = self.slots.len() as u64;
        if let Some(v) = self.slots.get_mut((slot % len) as usize) {
            v.push(id);
            self.entries += 1;
        }
    }

    /// The next slot that began at or before `now`, taken out of the ring with its absolute
    /// index; the cursor moves past it. Its entries whose deadline is still ahead (the slot
    /// holding `now`) are the caller's to [`Wheel::arm`] again: they go into the next slot,
    /// which begins after their deadline. `None`: no such slot (the rest wait for a later
    /// check).
    pub fn expire_next(&mut self, now: u64) -> Option<(u64, Vec<Uuid>)> {
        if self.cursor.saturating_mul(self.width) > now {
            return None;
        }
        let slot = self.cursor;
        self.cursor += 1;
        let len = self.slots.len() as u64;
        let ids = self.slots.get_mut((slot % len) as usize).map(std::mem::take).unwrap_or_default();
        self.entries = self.entries.saturating_sub(ids.len());
        Some((slot, ids))
    }

    /// Jumps the cursor over empty slots up to the one holding `now` (after a long idle gap,
    /// so a check never walks thousands of empty slots one by one).
    pub fn skip_empty(&mut self, now: u64) {
        if self.entries == 0 {
            self.cursor = self.cursor.max(now / self.width);
        }
    }

    /// Puts back ids (a slot's unfinished remainder) so that they are expired first next time.
    pub fn put_back(&mut self, slot: u64, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        self.cursor = self.cursor.min(slot);
        let len = self.slots.len() as u64;
        if let Some(v) = self.slots.get_mut((slot % len) as usize) {
            self.entries += ids.len();
            if v.is_empty() {
                *v = ids;
            } else {
                v.extend(ids);
            }
        }
    }

    /// Whether an entry found in absolute slot `slot` is a deadline one or more laps ahead
    /// (it stays armed) rather than one left behind by a re-arm.
    pub fn laps_ahead(&self, slot: u64, deadline: u64) -> bool {
        let d = self.slot_of(deadline);
        d > slot && (d - slot).is_multiple_of(self.slots.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    #[test]
    fn a_slot_is_expired_once_it_began_and_its_early_entries_move_on() {
        let mut w = Wheel::new(100, 1_000, 0);
        w.arm(id(1), 150);
        assert_eq!(w.expire_next(99).map(|(s, v)| (s, v.len())), Some((0, 0)));
        assert!(w.expire_next(99).is_none(), "slot 1 begins at 100");
        let (slot, v) = w.expire_next(120).expect("slot 1 began at 100");
        assert_eq!((slot, v), (1, vec![id(1)]));
        // Not due at 120: armed again, it lands in slot 2, which begins after 150.
        w.arm(id(1), 150);
        assert!(w.expire_next(199).is_none());
        assert_eq!(w.expire_next(200), Some((2, vec![id(1)])));
        assert_eq!(w.entries(), 0);
    }

    #[test]
    fn a_deadline_in_the_past_goes_to_the_next_slot_to_expire() {
        let mut w = Wheel::new(100, 1_000, 1_000);
        w.arm(id(2), 5);
        let (slot, v) = w.expire_next(1_000).expect("due");
        assert_eq!((slot, v), (10, vec![id(2)]));
    }

    #[test]
    fn a_deadline_laps_ahead_is_recognised() {
        let w = Wheel::new(100, 700, 0);
        let len = w.slots.len() as u64;
        assert!(w.laps_ahead(3, (3 + len) * 100 + 5));
        assert!(!w.laps_ahead(3, 3 * 100 + 5));
        assert!(!w.laps_ahead(3, (3 + len + 1) * 100));
    }

    #[test]
    fn put_back_is_expired_first() {
        let mut w = Wheel::new(10, 100, 0);
        w.arm(id(1), 5);
        w.arm(id(2), 15);
        let (s, v) = w.expire_next(100).expect("slot 0");
        w.put_back(s, v);
        assert_eq!(w.expire_next(100).map(|(s, _)| s), Some(0));
        assert_eq!(w.expire_next(100), Some((1, vec![id(2)])));
    }

    #[test]
    fn skip_empty_jumps_an_idle_gap() {
        let mut w = Wheel::new(10, 100, 0);
        w.skip_empty(1_000_000);
        assert_eq!(w.expire_next(1_000_000), Some((100_000, Vec::new())), "one slot, not 100,000");
        w.arm(id(1), 1_000_000);
        assert_eq!(w.expire_next(1_000_010), Some((100_001, vec![id(1)])));
    }
}
