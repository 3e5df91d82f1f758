//! The per-sender sequence window: heartsink's replay and reorder rule.
//!
//! Octavia never looks at `seq`, so a replayed or duplicated ver-3 datagram double-counts its
//! deltas. heartsink keeps, per amphora, the highest accepted `seq` and a 64-bit bitmap of the
//! 64 sequence numbers at and below it (the anti-replay window of RFC 4303 §3.4.3):
//!
//! * `seq > highest`: accepted ([`SeqOutcome::Advanced`]); the window slides. Only such a
//!   packet is the sender's *newest* (the health model decides what that means).
//! * `highest - 63 ≤ seq ≤ highest`: accepted once ([`SeqOutcome::Reordered`]: an older packet
//!   never seen before); a second time it is [`SeqError::Replay`].
//! * `seq < highest - 63`: [`SeqError::Stale`].
//!
//! **Agent restarts.** The amphora agent's counter starts again at 0 when it restarts. A packet
//! that would be dropped as a replay or as stale is instead accepted as a *restart* — the window
//! starts over at its `seq` ([`SeqOutcome::Restarted`]) — when at least `restart_gap` has passed
//! since this sender's last accepted packet (default 5 s; a real agent sends every 10 s and a
//! restart takes seconds) and either
//!
//! * `seq < 64` (a new agent's first messages), or
//! * the sender's previous packet was refused too, also at least `restart_gap` after the last
//!   accepted one, and this `seq` is 1 to 63 above it: a counter that went on counting after a
//!   reset (two refused packets in rising order, both after the gap).
//!
//! A restart is the only way the highest `seq` goes down. The protocol carries no time or
//! nonce, so no receiver can tell a restart from the replay of old packets; the gap rule bounds
//! what such a replay can do to one restart per `restart_gap` per sender, while a single late or
//! duplicated datagram never restarts a window (unless its `seq` is below 64 and the sender was
//! silent for the gap).
//!
//! **A counter reset without the gap** (the agent restarted within `restart_gap` of its last
//! beat, or a sender that resets its counter while running): its packets are refused as
//! [`SeqError::Replay`] or [`SeqError::Stale`] until `restart_gap` has passed since its last
//! accepted packet; then its first packet restarts the window by the low-`seq` rule, or, if
//! its counter already passed 63, its second by the rising-pair rule. A resetting sender loses
//! at most `restart_gap` and one packet, and is never locked out. A packet refused inside the
//! gap changes nothing at all; one refused after it is noted for the rising-pair rule.
//!
//! **The end of the sequence space.** `seq` is an integer in `0..2⁶⁴` (the parsers refuse
//! anything else, see [`crate::proto::octavia`]). The window does not wrap: at `2⁶⁴ − 1`
//! nothing is newer, a repeat of it is a replay, and a sender that wraps to 0 (or any lower
//! number) is taken back only by the restart rule. At one beat a second the space lasts
//! 5.8 × 10¹¹ years; a sender that gets there is broken or hostile, and costs only itself.
//!
//! Messages without `seq` bypass the window.

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

/// The window state of one sender (32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqWindow {
    highest: u64,
    /// Bit `i` set = `highest - i` accepted. Zero means "no packet yet" (bit 0 is always set
    /// once a packet was accepted).
    bits: u64,
    /// `seq` of this sender's previous packet, if it was refused at least `restart_gap` after
    /// the last accepted one (the rising-pair restart rule).
    refused: Option<u64>,
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
            *self = SeqWindow::starting_at(seq);
            return Ok(SeqOutcome::First);
        }
        let refused = if seq > self.highest {
            let shift = seq - self.highest;
            self.bits = if shift >= WINDOW { 1 } else { (self.bits << shift) | 1 };
            self.highest = seq;
            self.refused = None;
            return Ok(SeqOutcome::Advanced);
        } else {
            let back = self.highest - seq;
            if back >= WINDOW {
                SeqError::Stale
            } else if self.bits & (1 << back) == 0 {
                self.bits |= 1 << back;
                self.refused = None;
                return Ok(SeqOutcome::Reordered);
            } else {
                SeqError::Replay
            }
        };
        let rising_pair = self.refused.is_some_and(|prev| seq > prev && seq - prev < WINDOW);
        if since_last_ns >= restart_gap_ns && (seq < WINDOW || rising_pair) {
            *self = SeqWindow::starting_at(seq);
            return Ok(SeqOutcome::Restarted);
        }
        if since_last_ns >= restart_gap_ns {
            self.refused = Some(seq);
        }
        Err(refused)
    }

    /// The window of a sender restored from the store at `seq`: every number at or below it
    /// inside the window counts as accepted, since the bitmap was not stored. A replay of a
    /// datagram accepted before the restart is then `replay`, never its deltas counted twice
    /// (a reordered one first seen after the restart loses its deltas instead).
    pub fn restored_at(seq: u64) -> SeqWindow {
        SeqWindow { highest: seq, bits: u64::MAX, refused: None }
    }

    fn starting_at(seq: u64) -> SeqWindow {
        SeqWindow { highest: seq, bits: 1, refused: None }
    }
}

/// The rule as the module docs state it, kept with a set of numbers instead of a bitmap: the
/// reference the window is tested and fuzzed against (`fuzz/fuzz_targets/seqwin.rs`). Slow
/// (it allocates); not for the data path.
#[derive(Clone, Debug, Default)]
pub struct Model {
    highest: Option<u64>,
    /// Accepted numbers in `highest - 63 ..= highest` since the last (re)start.
    seen: std::collections::BTreeSet<u64>,
    /// The previous packet's number, if it was refused after the gap.
    refused: Option<u64>,
}

impl Model {
    /// The highest accepted number, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// [`SeqWindow::check`], by the rule's words.
    pub fn check(&mut self, seq: u64, since_last_ns: u64, restart_gap_ns: u64) -> Result<SeqOutcome, SeqError> {
        let Some(h) = self.highest else {
            self.restart(seq);
            return Ok(SeqOutcome::First);
        };
        let refused = if seq > h {
            self.highest = Some(seq);
            self.seen = self.seen.split_off(&seq.saturating_sub(WINDOW - 1));
            self.seen.insert(seq);
            self.refused = None;
            return Ok(SeqOutcome::Advanced);
        } else if h - seq >= WINDOW {
            SeqError::Stale
        } else if self.seen.insert(seq) {
            self.refused = None;
            return Ok(SeqOutcome::Reordered);
        } else {
            SeqError::Replay
        };
        let rising = self.refused.is_some_and(|p| seq > p && seq - p < WINDOW);
        if since_last_ns >= restart_gap_ns && (seq < WINDOW || rising) {
            self.restart(seq);
            return Ok(SeqOutcome::Restarted);
        }
        if since_last_ns >= restart_gap_ns {
            self.refused = Some(seq);
        }
        Err(refused)
    }

    fn restart(&mut self, seq: u64) {
        self.highest = Some(seq);
        self.seen.clear();
        self.seen.insert(seq);
        self.refused = None;
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
    fn a_restored_window_takes_nothing_at_or_below_its_seq() {
        let mut w = SeqWindow::restored_at(100);
        assert_eq!(w.highest(), Some(100));
        for back in 0..WINDOW {
            assert_eq!(w.check(100 - back, 0, GAP), Err(SeqError::Replay), "{back}");
        }
        assert_eq!(w.check(100 - WINDOW, 0, GAP), Err(SeqError::Stale));
        assert_eq!(w.check(101, 0, GAP), Ok(SeqOutcome::Advanced));
        assert_eq!(w.check(0, GAP, GAP), Ok(SeqOutcome::Restarted), "the restart rule still holds");
        let mut w = SeqWindow::restored_at(u64::MAX);
        assert_eq!(w.check(u64::MAX - 1, 0, GAP), Err(SeqError::Replay));
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
    fn the_top_of_the_sequence_space_is_an_end() {
        let mut w = SeqWindow::default();
        w.check(u64::MAX - 2, 0, GAP).expect("first");
        assert_eq!(w.check(u64::MAX, 0, GAP), Ok(SeqOutcome::Advanced));
        assert_eq!(w.check(u64::MAX - 1, 0, GAP), Ok(SeqOutcome::Reordered));
        assert_eq!(w.check(u64::MAX - 63, 0, GAP), Ok(SeqOutcome::Reordered));
        assert_eq!(w.check(u64::MAX - 64, 0, GAP), Err(SeqError::Stale));
        // Nothing is newer than 2^64 - 1; a repeat of it is a replay, even after the gap (it is
        // neither low nor rising above a refused packet).
        assert_eq!(w.check(u64::MAX, GAP, GAP), Err(SeqError::Replay));
        assert_eq!(w.check(u64::MAX, GAP, GAP), Err(SeqError::Replay));
        assert_eq!(w.highest(), Some(u64::MAX));
        // A sender that wraps to 0 inside the gap is refused; after the gap, restarted.
        assert_eq!(w.check(0, 1, GAP), Err(SeqError::Stale));
        assert_eq!(w.highest(), Some(u64::MAX));
        assert_eq!(w.check(1, GAP, GAP), Ok(SeqOutcome::Restarted));
        assert_eq!(w.check(2, 0, GAP), Ok(SeqOutcome::Advanced));
        assert_eq!(w.highest(), Some(2));
    }

    #[test]
    fn a_reset_within_the_gap_is_refused_until_the_gap_then_restarts() {
        // A slow sender (one beat a second) resets at 1000 without a gap.
        let mut w = SeqWindow::default();
        for s in 990..=1000 {
            w.check(s, 0, GAP).expect("in order");
        }
        let second = GAP / 5;
        for (i, s) in (0..4).enumerate() {
            let since = (i as u64 + 1) * second;
            assert!(w.check(s, since, GAP).is_err(), "seq {s} {since} ns after the last accepted one");
        }
        assert_eq!(w.highest(), Some(1000));
        assert_eq!(w.check(4, GAP, GAP), Ok(SeqOutcome::Restarted));
        assert_eq!(w.check(5, second, GAP), Ok(SeqOutcome::Advanced));
    }

    #[test]
    fn a_fast_sender_that_resets_is_not_locked_out() {
        // 100 beats a second: its counter is past 63 when the gap has passed.
        let mut w = SeqWindow::default();
        w.check(100_000, 0, GAP).expect("first");
        let step = GAP / 500;
        let mut restarted_at = None;
        for s in 0..1000u64 {
            let since = (s + 1) * step;
            match w.check(s, since, GAP) {
                Ok(SeqOutcome::Restarted) => {
                    restarted_at = Some(s);
                    break;
                }
                Ok(other) => panic!("seq {s}: {other:?} before any restart"),
                Err(_) => assert!(since <= GAP, "seq {s} refused {since} ns after the last accepted packet"),
            }
        }
        assert_eq!(restarted_at, Some(500), "the second packet after the gap restarts the window");
        assert_eq!(w.check(501, 0, GAP), Ok(SeqOutcome::Advanced));
    }

    #[test]
    fn the_rising_pair_needs_the_gap_a_refused_predecessor_and_a_small_step() {
        let mut w = SeqWindow::default();
        w.check(10_000, 0, GAP).expect("first");
        // One late datagram after a silence: stale, not a restart.
        assert_eq!(w.check(5_000, GAP, GAP), Err(SeqError::Stale));
        // Its successor inside the gap: refused (and a pair needs both after the gap).
        assert_eq!(w.check(5_001, GAP - 1, GAP), Err(SeqError::Stale));
        let mut inside = SeqWindow::default();
        inside.check(10_000, 0, GAP).expect("first");
        let noted = inside;
        assert_eq!(inside.check(5_000, GAP - 1, GAP), Err(SeqError::Stale));
        assert_eq!(inside, noted, "a packet refused inside the gap changes nothing");
        assert_eq!(inside.check(5_001, GAP, GAP), Err(SeqError::Stale));
        assert_eq!(inside.check(5_002, GAP, GAP), Ok(SeqOutcome::Restarted));
        // A lower one after the gap: not rising.
        assert_eq!(w.check(5_000, GAP, GAP), Err(SeqError::Stale));
        // 64 above the refused one: too far.
        assert_eq!(w.check(5_064, GAP, GAP), Err(SeqError::Stale));
        // An accepted packet in between breaks the pair.
        assert_eq!(w.check(10_001, 1, GAP), Ok(SeqOutcome::Advanced));
        assert_eq!(w.check(5_065, GAP, GAP), Err(SeqError::Stale));
        // Two refused packets rising by less than 64, after the gap: a restart.
        assert_eq!(w.check(5_100, GAP, GAP), Ok(SeqOutcome::Restarted));
        assert_eq!(w.highest(), Some(5_100));
    }

    #[test]
    fn agrees_with_the_set_model_on_seeded_random_steps() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        for seed in 0..200u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let base = [0, 1000, u64::MAX - 200][(seed % 3) as usize];
            let (mut w, mut m) = (SeqWindow::default(), Model::default());
            let mut cursor = base;
            for step in 0..400 {
                cursor = match rng.random_range(0..10) {
                    0 => rng.random_range(0..80),
                    1 => cursor.saturating_sub(rng.random_range(0..130)),
                    _ => cursor.saturating_add(rng.random_range(0..4)),
                };
                let since = if rng.random_range(0..8) == 0 { GAP + rng.random_range(0..2) - 1 } else { 7 };
                let got = w.check(cursor, since, GAP);
                assert_eq!(got, m.check(cursor, since, GAP), "seed {seed} step {step}: seq {cursor}");
                assert_eq!(w.highest(), m.highest(), "seed {seed} step {step}");
            }
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut w = SeqWindow::default();
        w.check(u64::MAX, 0, GAP).expect("first");
        assert_eq!(w.check(0, 0, 0), Ok(SeqOutcome::Restarted));
        assert_eq!(w.check(u64::MAX, 0, GAP), Ok(SeqOutcome::Advanced));
    }
}
