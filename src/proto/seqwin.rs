//! The per-sender sequence window: heartsink's replay and reorder rule.
//!
//! Octavia never looks at `seq`, so a replayed or duplicated ver-3 datagram double-counts its
//! deltas. heartsink keeps, per amphora, the highest accepted `seq` and a 64-bit bitmap of the
//! 64 sequence numbers at and below it (the anti-replay window of RFC 4303 §3.4.3):
//!
//! * `seq > highest`: accepted; the window slides.
//! * `highest - 63 ≤ seq ≤ highest`: accepted once (a reordered datagram); a second time it is
//!   [`SeqError::Replay`].
//! * `seq < highest - 63`: [`SeqError::Stale`].
//!
//! **Agent restarts.** The amphora agent's counter starts again at 0 when it restarts. A packet
//! that would be dropped as a replay or as stale is instead accepted as a *restart* — the window
//! starts over at its `seq` — when both hold:
//!
//! * `seq < 64` (a new agent's first messages), and
//! * at least `restart_gap` has passed since this sender's last accepted packet (default 5 s;
//!   a real agent sends every 10 s and a restart takes seconds).
//!
//! The protocol carries no time or nonce, so no receiver can tell a restart from the replay of
//! an old low-`seq` packet; the gap rule bounds what such a replay can do to one packet per
//! `restart_gap` per sender, while a real agent's new sequence is picked up at its first packet
//! (or its second, if it restarted within `restart_gap` of its last beat). Messages without
//! `seq` bypass the window.

/// Width of the window.
pub const WINDOW: u64 = 64;

/// Why a sequence number was refused. Each variant is one drop reason (`replay`, `stale`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeqError {
    /// Already accepted inside the window: a duplicated or replayed datagram.
    Replay,
    /// Older than the window, and not a plausible agent restart: a late or replayed datagram.
    Stale,
}

/// What an accepted sequence number was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqOutcome {
    /// The first packet from this sender.
    First,
    /// Newer than anything before.
    Advanced,
    /// Inside the window, not seen before: a reordered packet.
    Reordered,
    /// A restarted agent: the window starts over.
    Restarted,
}

/// The window state of one sender (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqWindow {
    highest: u64,
    /// Bit `i` set = `highest - i` accepted. Zero means "no packet yet" (bit 0 is always set
    /// once a packet was accepted).
    bits: u64,
}

impl SeqWindow {
    /// The highest accepted sequence number, if any.
    pub fn highest(&self) -> Option<u64> {
        (self.bits != 0).then_some(self.highest)
    }

    /// Checks `seq` and records it when accepted. `since_last_ns` is the time since this sender's
    /// last accepted packet; `restart_gap_ns` the restart rule's minimum gap.
    pub fn check(&mut self, seq: u64, since_last_ns: u64, restart_gap_ns: u64) -> Result<SeqOutcome, SeqError> {
        if self.bits == 0 {
            *self = SeqWindow { highest: seq, bits: 1 };
            return Ok(SeqOutcome::First);
        }
        let refused = if seq > self.highest {
            let shift = seq - self.highest;
            self.bits = if shift >= WINDOW { 1 } else { (self.bits << shift) | 1 };
            self.highest = seq;
            return Ok(SeqOutcome::Advanced);
        } else {
            let back = self.highest - seq;
            if back >= WINDOW {
                SeqError::Stale
            } else if self.bits & (1 << back) == 0 {
                self.bits |= 1 << back;
                return Ok(SeqOutcome::Reordered);
            } else {
                SeqError::Replay
            }
        };
        if seq < WINDOW && since_last_ns >= restart_gap_ns {
            *self = SeqWindow { highest: seq, bits: 1 };
            return Ok(SeqOutcome::Restarted);
        }
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: u64 = 5_000_000_000;

    #[test]
    fn in_order_reordered_replayed_stale() {
        let mut w = SeqWindow::default();
        assert_eq!(w.highest(), None);
        assert_eq!(w.check(100, 0, GAP), Ok(SeqOutcome::First));
        assert_eq!(w.check(101, 0, GAP), Ok(SeqOutcome::Advanced));
        assert_eq!(w.check(103, 0, GAP), Ok(SeqOutcome::Advanced));
        assert_eq!(w.check(102, 0, GAP), Ok(SeqOutcome::Reordered));
        assert_eq!(w.check(102, 0, GAP), Err(SeqError::Replay));
        assert_eq!(w.check(103, 0, GAP), Err(SeqError::Replay));
        assert_eq!(w.check(103 - 63, 0, GAP), Ok(SeqOutcome::Reordered));
        assert_eq!(w.check(103 - 64, 0, GAP), Err(SeqError::Stale));
        assert_eq!(w.highest(), Some(103));
    }

    #[test]
    fn large_jump_resets_the_bitmap() {
        let mut w = SeqWindow::default();
        w.check(1, 0, GAP).expect("first");
        assert_eq!(w.check(1000, 0, GAP), Ok(SeqOutcome::Advanced));
        assert_eq!(w.check(999, 0, GAP), Ok(SeqOutcome::Reordered));
        assert_eq!(w.check(1000, 0, GAP), Err(SeqError::Replay));
    }

    #[test]
    fn restart_needs_low_seq_and_gap() {
        let mut w = SeqWindow::default();
        w.check(5000, 0, GAP).expect("first");
        // A low seq soon after the last packet: a replay, not a restart.
        assert_eq!(w.check(0, GAP - 1, GAP), Err(SeqError::Stale));
        // A high but old seq after the gap: still stale.
        assert_eq!(w.check(4000, GAP, GAP), Err(SeqError::Stale));
        // A low seq after the gap: a restart.
        assert_eq!(w.check(0, GAP, GAP), Ok(SeqOutcome::Restarted));
        assert_eq!(w.check(1, 0, GAP), Ok(SeqOutcome::Advanced));
        assert_eq!(w.check(0, 0, GAP), Err(SeqError::Replay));
    }

    #[test]
    fn restart_of_a_young_agent_inside_the_window() {
        let mut w = SeqWindow::default();
        for s in 0..10 {
            w.check(s, 0, GAP).expect("in order");
        }
        // seq 0 again, inside the window: a duplicate unless the gap says restart.
        assert_eq!(w.check(0, 1, GAP), Err(SeqError::Replay));
        assert_eq!(w.check(0, GAP, GAP), Ok(SeqOutcome::Restarted));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut w = SeqWindow::default();
        w.check(u64::MAX, 0, GAP).expect("first");
        assert_eq!(w.check(0, 0, 0), Ok(SeqOutcome::Restarted));
        assert_eq!(w.check(u64::MAX, 0, GAP), Ok(SeqOutcome::Advanced));
    }
}
