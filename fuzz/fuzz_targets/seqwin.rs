//! `SeqWindow::check` driven by a sequence of `(seq, since_last_ns)` pairs decoded with
//! `arbitrary`, against the reference model of the window (`seqwin::Model`, a set of the
//! accepted numbers) and the invariants stated in `src/proto/seqwin.rs`:
//!
//! * a `seq` accepted twice with no `Restarted` in between is impossible;
//! * `highest()` never decreases except on `Restarted`.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use heartsink::proto::seqwin::{Model, SeqError, SeqOutcome, SeqWindow};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    restart_gap_ns: u64,
    steps: Vec<(u64, u64)>,
}

fuzz_target!(|input: Input| {
    let gap = input.restart_gap_ns;
    let mut w = SeqWindow::default();
    let mut model = Model::default();
    // Every number accepted since the last First/Restarted.
    let mut accepted: BTreeSet<u64> = BTreeSet::new();
    for (i, &(seq, since)) in input.steps.iter().enumerate() {
        let before = w.highest();
        let got = w.check(seq, since, gap);
        let want = model.check(seq, since, gap);
        assert_eq!(got, want, "step {i}: check({seq}, {since}, {gap}) after highest {before:?}");

        let after = w.highest();
        assert!(after.is_some(), "step {i}: no highest after a check");
        match got {
            Ok(SeqOutcome::First) => {
                assert_eq!(before, None, "step {i}: First on a window that had a packet");
                accepted.clear();
                accepted.insert(seq);
            }
            Ok(SeqOutcome::Restarted) => {
                assert!(before.is_some(), "step {i}: Restarted on an empty window");
                assert_eq!(after, Some(seq), "step {i}: a restart must start the window at seq");
                accepted.clear();
                accepted.insert(seq);
            }
            Ok(outcome) => {
                assert!(before.is_some(), "step {i}: {outcome:?} on an empty window");
                assert!(accepted.insert(seq), "step {i}: seq {seq} accepted twice ({outcome:?}) without a restart");
                assert!(after >= before, "step {i}: highest went from {before:?} to {after:?} on {outcome:?}");
                if outcome == SeqOutcome::Advanced {
                    assert_eq!(after, Some(seq), "step {i}: Advanced must move highest to seq");
                } else {
                    assert_eq!(after, before, "step {i}: Reordered must not move highest");
                }
            }
            Err(e) => {
                assert_eq!(after, before, "step {i}: a refused seq ({e:?}) changed highest");
                if e == SeqError::Replay {
                    assert!(accepted.contains(&seq), "step {i}: Replay of a seq never accepted");
                }
            }
        }
        assert_eq!(after, model.highest(), "step {i}: highest disagrees with the model");
    }
});
